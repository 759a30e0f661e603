"""Per-channel statistics streamed over batches."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import conv_relu_model, random_images

from onnx_slim.data.activations import ActivationCapture
from onnx_slim.data.calibration import CalibrationSet
from onnx_slim.data.statistics import ChannelStats, gram_matrix


def test_channel_stats_nchw_over_batches_matches_numpy():
    rng = np.random.default_rng(0)
    batches = [np.maximum(rng.standard_normal((n, 5, 4, 3)), 0).astype(np.float32) for n in (3, 2, 4)]
    batches[0][:, 2] = 0  # one channel dead in part of the data
    stats = ChannelStats(axis=1)
    for batch in batches:
        stats.update(batch)

    everything = np.concatenate(batches)
    np.testing.assert_allclose(stats.mean_abs, np.abs(everything).mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(stats.mean, everything.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(stats.variance, everything.var(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(stats.apoz, (everything == 0).mean(axis=(0, 2, 3)))
    assert stats.count == 9 * 4 * 3
    assert stats.apoz[2] > stats.apoz[0]


@pytest.mark.parametrize("shape", [(4, 6, 7), (10, 7)])
def test_channel_stats_channels_last(shape):
    rng = np.random.default_rng(1)
    first, second = rng.standard_normal(shape), rng.standard_normal(shape)
    first[..., 3] = 0
    stats = ChannelStats(axis=-1)
    stats.update(first)
    stats.update(second)
    everything = np.concatenate([first, second]).reshape(-1, 7)
    np.testing.assert_allclose(stats.mean_abs, np.abs(everything).mean(axis=0))
    np.testing.assert_allclose(stats.mean, everything.mean(axis=0))
    np.testing.assert_allclose(stats.apoz, (everything == 0).mean(axis=0))
    assert stats.count == everything.shape[0]


def test_channel_stats_errors():
    stats = ChannelStats()
    with pytest.raises(ValueError, match="no values yet"):
        stats.mean_abs
    stats.update(np.ones((2, 3, 4, 4)))
    with pytest.raises(ValueError, match="got 5 channels on axis 1, earlier 3"):
        stats.update(np.ones((2, 5, 4, 4)))


def test_channel_stats_from_captured_batches():
    calib = CalibrationSet({"x": random_images(7)})
    capture = ActivationCapture(conv_relu_model(), ["relu1"])
    stats = ChannelStats(axis=1)
    for result in capture.iter(calib.batches(3)):
        stats.update(result["relu1"])
    whole = capture.run(calib.arrays)["relu1"]
    np.testing.assert_allclose(stats.mean_abs, np.abs(whole).mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(stats.apoz, (whole == 0).mean(axis=(0, 2, 3)))




@pytest.mark.parametrize("intercept", [False, True])
def test_gram_matrix_is_the_float64_gram_of_the_rows_with_a_ones_column_when_asked(intercept):
    rows = np.random.default_rng(0).standard_normal((500, 7)).astype(np.float32) + 2.0
    full = np.hstack([rows, np.ones((500, 1), np.float32)]) if intercept else rows
    expected = full.astype(np.float64).T @ full.astype(np.float64)

    gram = gram_matrix(rows, intercept=intercept)

    assert gram.dtype == np.float64 and gram.shape == expected.shape
    np.testing.assert_allclose(gram, expected, rtol=1e-5)  # float32 products: rounding only
    if intercept:
        assert gram[-1, -1] == 500 and np.array_equal(gram[-1, :-1], gram[:-1, -1])
