"""Per-channel statistics accumulated over batches, so memory stays bounded whatever the
number of calibration samples."""

from __future__ import annotations

import numpy as np


def gram_matrix(rows: np.ndarray, intercept: bool = False, intercept_column: np.ndarray | None = None) -> np.ndarray:
    """rows^T rows [F, F] in float64; with `intercept`, the Gram [F + 1, F + 1] of the rows with a
    last column of ones (the bias a fit solves with the weights), without building that copy;
    `intercept_column` [rows] replaces the ones (rows scaled by weights: the bias is scaled too).

    The product runs in float32, twice as fast as in float64 (a ResNet-50 re-fit spent 12 of its
    59 s on it): its rounding is far below the sampling noise of a few thousand calibration rows.
    Callers sum the returned blocks in float64."""
    rows = rows.astype(np.float32, copy=False)
    count, features = rows.shape
    gram = np.empty((features + intercept, features + intercept))
    gram[:features, :features] = rows.T @ rows
    if intercept and intercept_column is None:
        gram[features, :features] = gram[:features, features] = rows.sum(axis=0, dtype=np.float64)
        gram[features, features] = count
    elif intercept:
        column = intercept_column.astype(np.float64)
        gram[features, :features] = gram[:features, features] = column @ rows
        gram[features, features] = column @ column
    return gram


class ChannelStats:
    """Per-channel mean, variance, mean |x| and fraction of zeros (APoZ), accumulated over batches.

    `axis` is the channel axis: 1 for NCHW, -1 for [N, T, C] or [N, C].
    `count` is how many values each channel has seen.
    """

    def __init__(self, axis: int = 1):
        self.axis = axis
        self.count = 0
        self._sum = None
        self._sum_abs = None
        self._sum_sq = None
        self._zeros = None

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        axis = self.axis % x.ndim
        reduce_axes = tuple(a for a in range(x.ndim) if a != axis)
        channels = x.shape[axis]
        if self._sum is None:
            self._sum = np.zeros(channels, dtype=np.float64)
            self._sum_abs = np.zeros(channels, dtype=np.float64)
            self._sum_sq = np.zeros(channels, dtype=np.float64)
            self._zeros = np.zeros(channels, dtype=np.int64)
        elif channels != self._sum.shape[0]:
            raise ValueError(f"ChannelStats: got {channels} channels on axis {self.axis}, earlier {self._sum.shape[0]}")
        # float64 accumulators: sums over millions of values would drift in float32.
        self._sum += x.sum(axis=reduce_axes, dtype=np.float64)
        self._sum_abs += np.abs(x).sum(axis=reduce_axes, dtype=np.float64)
        self._sum_sq += np.square(x, dtype=np.float64).sum(axis=reduce_axes)
        self._zeros += np.count_nonzero(x == 0, axis=reduce_axes)
        self.count += x.size // channels

    @property
    def mean(self) -> np.ndarray:
        return self._checked(self._sum) / self.count

    @property
    def variance(self) -> np.ndarray:
        """Population variance per channel (E[x^2] - E[x]^2, from float64 sums)."""
        return np.maximum(self._checked(self._sum_sq) / self.count - np.square(self.mean), 0.0)

    @property
    def mean_abs(self) -> np.ndarray:
        return self._checked(self._sum_abs) / self.count

    @property
    def apoz(self) -> np.ndarray:
        return self._checked(self._zeros) / self.count

    def _checked(self, total: np.ndarray | None) -> np.ndarray:
        if total is None or self.count == 0:
            raise ValueError("ChannelStats: no values yet; call update() first")
        return total
