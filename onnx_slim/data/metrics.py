"""How closely a candidate model's outputs follow a reference model's.

Outputs are compared per output name. Axis 0 of every output is the sample
axis. The accumulator keeps running sums only, so an evaluation set of any size
is compared batch by batch in constant memory.

With several outputs, the headline numbers are the *worst* over the outputs
(lowest top-1 and cosine, highest relative L2 and absolute difference): a
quality gate must not pass because a good output hides a broken one. The
per-output numbers are reported alongside.

An output with one value per sample (a detector's score, a voice-activity
probability) has no cosine: the cosine of two one-value rows is only their
sign (1 for any two positive numbers). Gates read `agreement_score`, which
counts such an output by its relative L2 error instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence, Union

import numpy as np

from onnx_slim.errors import OnnxSlimError

Outputs = Mapping[str, np.ndarray]
OutputBatches = Union[Outputs, Sequence[Outputs]]


@dataclass
class _OutputTally:
    """Running sums for one output name."""

    samples: int = 0
    values_per_sample: int = 0
    cosine_sum: float = 0.0
    top1_matches: int = 0
    top1_samples: int = 0
    looks_like_scores: bool = True
    squared_diff_sum: float = 0.0
    squared_reference_sum: float = 0.0
    max_abs_diff: float = 0.0

    def update(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        reference_rows = _per_sample_rows(reference)
        candidate_rows = _per_sample_rows(candidate)
        diff = candidate_rows - reference_rows
        self.samples += reference_rows.shape[0]
        self.values_per_sample = max(self.values_per_sample, reference_rows.shape[1])
        self.cosine_sum += float(np.sum(_row_cosines(reference_rows, candidate_rows)))
        self.squared_diff_sum += float(np.sum(diff * diff))
        self.squared_reference_sum += float(np.sum(reference_rows * reference_rows))
        if diff.size:
            # NaN must surface (a broken quantized model), so no nanmax.
            self.max_abs_diff = max(self.max_abs_diff, float(np.max(np.abs(diff))))
        if looks_like_class_scores(reference):
            self.top1_matches += int(np.sum(np.argmax(reference, axis=-1) == np.argmax(candidate, axis=-1)))
            self.top1_samples += reference.shape[0]
        else:
            self.looks_like_scores = False

    def result(self) -> dict:
        return {
            "top1": self.top1_matches / self.top1_samples if self.looks_like_scores and self.top1_samples else None,
            "cosine": self.cosine_sum / self.samples if self.samples and self.values_per_sample > 1 else None,
            "rel_l2": _relative_l2(self.squared_diff_sum, self.squared_reference_sum),
            "max_abs_diff": self.max_abs_diff,
            "samples": self.samples,
        }


class AgreementAccumulator:
    """Compare reference and candidate outputs batch by batch, keeping only running sums.

    >>> acc = AgreementAccumulator()
    >>> for ref, cand in zip(reference_batches, candidate_batches):
    ...     acc.update(ref, cand)
    >>> acc.result()["cosine"]
    """

    def __init__(self) -> None:
        self._tallies: dict[str, _OutputTally] = {}

    def update(self, reference_batch: Outputs, candidate_batch: Outputs) -> None:
        """Add one batch: dicts from output name to array, the same names on both sides."""
        _check_same_names(reference_batch, candidate_batch)
        for name in reference_batch:
            reference = np.asarray(reference_batch[name])
            candidate = np.asarray(candidate_batch[name])
            if reference.shape != candidate.shape:
                raise OnnxSlimError(
                    f"output {name!r}: shapes differ (reference {reference.shape}, candidate {candidate.shape})"
                )
            self._tallies.setdefault(name, _OutputTally()).update(reference, candidate)

    def result(self) -> dict:
        """Headline metrics (worst over outputs) plus `outputs`: the same metrics per output name."""
        if not self._tallies:
            raise OnnxSlimError("no outputs were compared: give at least one batch")
        per_output = {name: tally.result() for name, tally in self._tallies.items()}
        return {**_worst_over_outputs(per_output.values()), "outputs": per_output}


def agreement(reference: OutputBatches, candidate: OutputBatches) -> dict:
    """Agreement of `candidate` with `reference`: one output dict each, or lists of them (batches).

    Keys: `top1` (fraction of samples with the same argmax over the last axis,
    for [N, K>1] outputs only, else None), `cosine` (mean per-sample cosine
    similarity of the flattened outputs; None for outputs with one value per
    sample), `rel_l2` (||cand - ref|| / ||ref||),
    `max_abs_diff`, `samples`, and `outputs` (the same per output name).
    """
    reference_batches = _as_batches(reference)
    candidate_batches = _as_batches(candidate)
    if len(reference_batches) != len(candidate_batches):
        raise OnnxSlimError(
            f"reference has {len(reference_batches)} batches, candidate {len(candidate_batches)}: give the same count"
        )
    accumulator = AgreementAccumulator()
    for reference_batch, candidate_batch in zip(reference_batches, candidate_batches):
        accumulator.update(reference_batch, candidate_batch)
    return accumulator.result()


def agreement_score(result: dict) -> float:
    """The cosine a gate compares: the worst over the outputs of each one's cosine, where an output
    without one (one value per sample) counts as the cosine two rows of equal norm have at its
    relative L2 error e (1 - e**2 / 2), so a score that moved by 14% reads 0.99. NaN if any is NaN."""
    one_value = [row["rel_l2"] for row in (result.get("outputs") or {"": result}).values() if row["cosine"] is None]
    scores = [max(-1.0, 1 - error ** 2 / 2) if not math.isnan(error) else math.nan for error in one_value]
    return _nan_aware(min, scores + ([result["cosine"]] if result["cosine"] is not None else []))


def accuracy(outputs: np.ndarray, labels: np.ndarray | Sequence[int]) -> float:
    """Top-1 accuracy of class scores [N, K] against labels: class indices [N] or one-hot [N, K]."""
    scores = np.asarray(outputs)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise OnnxSlimError(f"accuracy needs class scores shaped [N, K] with N > 0, got {scores.shape}")
    if labels.ndim == 2:
        labels = np.argmax(labels, axis=-1)
    if labels.shape != (scores.shape[0],):
        raise OnnxSlimError(f"labels shaped {labels.shape} do not match {scores.shape[0]} samples of scores")
    return float(np.mean(np.argmax(scores, axis=-1) == labels))


def looks_like_class_scores(array: np.ndarray) -> bool:
    """[N, K] with K > 1: the only shape where top-1 agreement can mean something; but not rows of
    unit length with negative entries, an L2-normalised embedding (sentence-transformers' output),
    whose argmax over its dimensions means nothing (probabilities are never negative)."""
    if array.ndim != 2 or array.shape[1] <= 1:
        return False
    rows = np.asarray(array, dtype=np.float64)
    unit = bool(np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-3))
    return not (unit and bool((rows < 0).any()))


def _per_sample_rows(array: np.ndarray) -> np.ndarray:
    """float64 [N, features]; a 0-D output counts as one sample."""
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 0:
        return array.reshape(1, 1)
    return array.reshape(array.shape[0], -1)


def _row_cosines(reference_rows: np.ndarray, candidate_rows: np.ndarray) -> np.ndarray:
    dots = np.sum(reference_rows * candidate_rows, axis=1)
    reference_norms = np.linalg.norm(reference_rows, axis=1)
    candidate_norms = np.linalg.norm(candidate_rows, axis=1)
    norm_products = reference_norms * candidate_norms
    with np.errstate(invalid="ignore", divide="ignore"):
        cosines = np.where(norm_products > 0, dots / np.where(norm_products > 0, norm_products, 1.0), 0.0)
    # Two all-zero rows agree perfectly; one zero row against a non-zero one does not.
    both_zero = (reference_norms == 0) & (candidate_norms == 0)
    # Rounding can push a cosine a hair past 1.
    return np.clip(np.where(both_zero, 1.0, cosines), -1.0, 1.0)


def _relative_l2(squared_diff_sum: float, squared_reference_sum: float) -> float:
    if squared_reference_sum > 0:
        return math.sqrt(squared_diff_sum) / math.sqrt(squared_reference_sum)
    return 0.0 if squared_diff_sum == 0 else math.inf


def _worst_over_outputs(results: Iterable[dict]) -> dict:
    results = list(results)
    top1_values = [r["top1"] for r in results if r["top1"] is not None]
    cosine_values = [r["cosine"] for r in results if r["cosine"] is not None]
    return {
        "top1": min(top1_values) if top1_values else None,
        "cosine": _nan_aware(min, cosine_values),
        "rel_l2": _nan_aware(max, [r["rel_l2"] for r in results]),
        "max_abs_diff": _nan_aware(max, [r["max_abs_diff"] for r in results]),
        "samples": max(r["samples"] for r in results),
    }


def _nan_aware(pick, values: list[float]) -> float | None:
    """min/max that returns NaN when any value is NaN (Python's min/max would skip it by accident)."""
    if not values:
        return None
    if any(math.isnan(value) for value in values):
        return math.nan
    return pick(values)


def _as_batches(outputs: OutputBatches) -> list[Outputs]:
    if isinstance(outputs, Mapping):
        return [outputs]
    return list(outputs)


def _check_same_names(reference: Outputs, candidate: Outputs) -> None:
    if set(reference) != set(candidate):
        raise OnnxSlimError(
            f"output names differ: reference {sorted(reference)}, candidate {sorted(candidate)}"
        )
