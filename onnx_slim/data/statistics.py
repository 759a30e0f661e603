"""Per-channel statistics accumulated over batches, so memory stays bounded whatever the
number of calibration samples."""

from __future__ import annotations

import numpy as np


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
