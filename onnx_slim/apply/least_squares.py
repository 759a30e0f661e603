"""Least-squares statistics of a layer's re-fit and the candidate solutions they give.

Only sufficient statistics are kept (A^T A, A^T Y, ||Y||^2), split into training rows and
held-out rows; the candidates are the ridge fit and fits shrunk toward the sliced weights,
one solve each, and the chosen one is solved again on every row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from onnx_slim.data.statistics import gram_matrix

log = logging.getLogger(__name__)

# Shrinkage toward the sliced weights, relative to the Gram's mean diagonal; the held-out
# samples pick one per layer (0 = plain least squares, up to the slice itself).
SHRINK_LEVELS = (1e-3, 1e-2, 1e-1, 1.0)
SHRINK_NAMES = {f"fit-shrink-{level:g}": level for level in SHRINK_LEVELS}

@dataclass
class GramStats:
    """Least-squares statistics of a set of rows: A^T A, A^T Y, ||Y||^2 and how many rows."""

    gram: np.ndarray
    cross: np.ndarray
    energy: float = 0.0
    rows: int = 0

    @classmethod
    def of(cls, design: np.ndarray, targets: np.ndarray, intercept: bool = False,
           row_weights: np.ndarray | None = None) -> GramStats:
        """Statistics of float32 rows, kept in float64; with `intercept`, of the rows with a
        column of ones appended (the bias). Products in float32, as `gram_matrix` says why.
        `row_weights` [rows] scale each row's error: rows and targets are multiplied by them
        (and the bias's column of ones becomes the weights), so fits minimize the weighted error."""
        design, targets = design.astype(np.float32, copy=False), targets.astype(np.float32, copy=False)
        column = None
        if row_weights is not None:
            column = row_weights.astype(np.float32)
            design, targets = design * column[:, None], targets * column[:, None]
        cross = np.empty((design.shape[1] + intercept, targets.shape[1]))
        cross[:design.shape[1]] = design.T @ targets
        if intercept:
            cross[-1] = targets.sum(axis=0, dtype=np.float64) if column is None else column.astype(np.float64) @ targets
        energy = float(np.square(targets, dtype=np.float64).sum())
        return cls(gram_matrix(design, intercept, column), cross, energy, design.shape[0])

    def __iadd__(self, other: GramStats) -> GramStats:
        self.gram += other.gram
        self.cross += other.cross
        self.energy += other.energy
        self.rows += other.rows
        return self

    def relative_error(self, matrix: np.ndarray) -> float:
        """||A W - Y||^2 / ||Y||^2 over these rows."""
        value = np.sum(matrix * (self.gram @ matrix)) - 2 * np.sum(matrix * self.cross) + self.energy
        return float(max(value, 0.0) / self.energy)


@dataclass
class FitStats:
    """A layer's statistics, split into training rows and held-out rows that choose among the candidates.

    Rows are held out by calibration sample, not one by one: rows of one image are alike, so a
    row-wise hold-out cannot see a fit that learned the calibration images rather than the layer.
    """

    train: GramStats | None = None
    holdout: GramStats | None = None
    rows_seen: int = 0

    def add(self, design: np.ndarray, targets: np.ndarray, held: np.ndarray, intercept: bool = False,
            row_weights: np.ndarray | None = None) -> None:
        """Rows `design` -> `targets` (`held`: the held-out ones); `intercept`: the layer has a bias;
        `row_weights`: how much each row's error counts (`GramStats.of`)."""
        self.rows_seen += design.shape[0]
        for part, rows in (("train", ~held), ("holdout", held)):
            weights = row_weights[rows] if row_weights is not None else None
            setattr(self, part, summed(getattr(self, part), GramStats.of(design[rows], targets[rows], intercept,
                                                                         weights)))


def summed(total: GramStats | None, part: GramStats) -> GramStats:
    if total is None:
        return part
    total += part
    return total


def shrunk_fits(train: GramStats, sliced: np.ndarray, ridge: float, name: str) -> dict[str, np.ndarray]:
    """Least squares with a small ridge, and fits shrunk toward the sliced weights:
    argmin ||A W - Y||^2 + s ||W - W_slice||^2 for each level s of SHRINK_LEVELS.

    One linear solve per level, not one eigen-decomposition shared by all: on this 2-core
    machine `eigh` of a 4608-feature Gram takes 10.4 s and the five solves 6.9 s (at 2304
    features 1.2 s and 1.3 s); the ResNet-50-sized `auto` prune of bench_reconstruct.py took
    115.0 s against 118.7 s (two runs each)."""
    mean_diagonal = _mean_diagonal(train.gram)
    levels = {"fit": (ridge, False), **{level_name: (level, True) for level_name, level in SHRINK_NAMES.items()}}
    fits = {}
    for level_name, (level, toward_slice) in levels.items():
        fit = _solve_shrunk(train.gram, train.cross, sliced, level * mean_diagonal, toward_slice)
        if fit is None:
            log.debug("least-squares solve failed for %s (%s)", name, level_name)
            continue
        fits[level_name] = fit
    return fits


def refit_on_all(train: GramStats, holdout: GramStats, sliced: np.ndarray, ridge: float,
                  shrink: float | None) -> np.ndarray | None:
    """The chosen fit (`shrink` toward the slice, or plain `ridge`) again on training and
    held-out rows together (None if the solve fails)."""
    gram, cross = train.gram + holdout.gram, train.cross + holdout.cross
    level = ridge if shrink is None else shrink
    return _solve_shrunk(gram, cross, sliced, level * _mean_diagonal(gram), toward_slice=shrink is not None)


def _mean_diagonal(gram: np.ndarray) -> float:
    return max(float(np.trace(gram)) / gram.shape[0], 1e-12)


def _solve_shrunk(gram: np.ndarray, cross: np.ndarray, sliced: np.ndarray, scale: float,
                  toward_slice: bool) -> np.ndarray | None:
    """(G + scale I)^-1 (C + scale W_slice), or (G + scale I)^-1 C without `toward_slice`; None if
    singular. `gram` gets its diagonal back exactly (a copy of it would double the peak memory)."""
    diagonal = gram.diagonal().copy()
    gram[np.diag_indices_from(gram)] = diagonal + scale
    try:
        return np.linalg.solve(gram, cross + scale * sliced if toward_slice else cross)
    except np.linalg.LinAlgError:
        return None
    finally:
        gram[np.diag_indices_from(gram)] = diagonal
