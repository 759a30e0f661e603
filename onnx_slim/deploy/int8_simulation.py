"""What int8 will do to a MatMul layer, simulated in numpy on calibration rows, as onnxruntime quantizes.

Activations: asymmetric 8-bit over their calibrated range, one scale per tensor
(dynamic int8 takes the range of each batch at run time, a little narrower:
the simulation errs on the safe side). Weights: symmetric, per output column
or per tensor, 7-bit with reduce_range. The error of a layer is the mean
relative error of its output rows (a token's or a sample's vector): the
LayerNorm after a transformer layer sees each row on its own scale, so a row
of small values ruined matters as much as a row of large ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Int8Simulation:
    """How the quantizer will round: weight levels (127, or 63 with reduce_range) and per-column weight scales."""

    weight_levels: int = 127
    per_channel: bool = True


def round_activation(rows: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Asymmetric 8-bit over [min(low, 0), max(high, 0)], one scale for the tensor."""
    low, high = min(float(low.min()), 0.0), max(float(high.max()), 0.0)
    step = (high - low) / 255 or 1.0
    zero_point = np.round(-low / step)
    return (np.clip(np.round(rows / step) + zero_point, 0, 255) - zero_point) * step


def round_weight(weight: np.ndarray, simulation: Int8Simulation) -> np.ndarray:
    """Symmetric int8 (or 7-bit), one scale per output column or for the whole weight."""
    levels = simulation.weight_levels
    peak = np.abs(weight).max(0, keepdims=True) if simulation.per_channel else np.abs(weight).max()
    step = np.maximum(peak, 1e-12) / levels
    return np.clip(np.round(weight / step), -levels, levels) * step


def row_error(approximate: np.ndarray, reference: np.ndarray) -> float:
    """Mean over rows of |approximate - reference| / |reference|, rows whose reference is ~0 left out."""
    norms = np.linalg.norm(reference, axis=1)
    kept = norms > 1e-6 * max(float(norms.max()), 1e-30)
    if not kept.any():
        return 0.0
    return float((np.linalg.norm(approximate[kept] - reference[kept], axis=1) / norms[kept]).mean())
