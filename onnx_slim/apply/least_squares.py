"""Least-squares statistics of a layer's re-fit and the candidate solutions they give.

Only sufficient statistics are kept (A^T A, A^T Y, ||Y||^2), split into training rows and
held-out rows; the candidates are the ridge fit and fits shrunk toward the sliced weights,
all from one eigen-decomposition, and the chosen one is solved again on every row.
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
    argmin ||A W - Y||^2 + s ||W - W_slice||^2 for each level s of SHRINK_LEVELS. One
    eigen-decomposition of the Gram serves every level."""
    gram, cross = train.gram, train.cross
    mean_diagonal = max(float(np.trace(gram)) / gram.shape[0], 1e-12)
    try:
        values, vectors = np.linalg.eigh(gram)
    except np.linalg.LinAlgError:
        log.debug("eigen-decomposition failed for %s", name)
        return {}
    cross_in_basis, sliced_in_basis = vectors.T @ cross, vectors.T @ sliced  # shared by every level
    fits = {"fit": vectors @ (cross_in_basis / (values + ridge * mean_diagonal)[:, None])}
    for name, level in SHRINK_NAMES.items():
        scale = level * mean_diagonal
        fits[name] = vectors @ ((cross_in_basis + scale * sliced_in_basis) / (values + scale)[:, None])
    return fits


def refit_on_all(train: GramStats, holdout: GramStats, sliced: np.ndarray, ridge: float,
                  shrink: float | None) -> np.ndarray | None:
    """The chosen fit (`shrink` toward the slice, or plain `ridge`) again on training and
    held-out rows together (None if the solve fails)."""
    gram, cross = train.gram + holdout.gram, train.cross + holdout.cross  # new arrays: changed in place
    scale = (ridge if shrink is None else shrink) * max(float(np.trace(gram)) / gram.shape[0], 1e-12)
    gram[np.diag_indices_from(gram)] += scale
    try:
        right = cross if shrink is None else cross + scale * sliced
        return np.linalg.solve(gram, right)
    except np.linalg.LinAlgError:
        return None
