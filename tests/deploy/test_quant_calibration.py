"""Static calibration uses every sample: the ranges equal those of one pass over all of them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader
from onnxruntime.quantization.calibrate import create_calibrator, load_tensors_data
from test_quantize import conv_net

from onnx_slim.deploy.quant_calibration import (
    _CALIBRATED_OP_TYPES,
    CALIBRATION_METHODS,
    calibrate,
    calibration_reader,
)
from onnx_slim.deploy.quantize import quantize_model


def shrinking_samples(count: int, seed: int = 0) -> np.ndarray:
    """[count, 3, 16, 16] images whose spread shrinks with the index: the extremes sit in the first samples."""
    rng = np.random.default_rng(seed)
    scales = np.linspace(4.0, 0.5, count).reshape(count, 1, 1, 1)
    return (rng.standard_normal((count, 3, 16, 16)) * scales).astype(np.float32)


class ListReader(CalibrationDataReader):
    def __init__(self, batches):
        self._batches = iter(batches)

    def get_next(self):
        return next(self._batches, None)


def one_pass_ranges(model_path, batches, method: str, scratch) -> dict:
    """onnxruntime's calibrator over all batches in a single collect_data call (no chunking)."""
    calibrator = create_calibrator(
        model_path, _CALIBRATED_OP_TYPES, augmented_model_path=str(scratch / "one_pass.onnx"),
        calibrate_method=CALIBRATION_METHODS[method],
    )
    calibrator.collect_data(ListReader(batches))
    return {name: data.range_value for name, data in calibrator.compute_data().items()}


def model_file(tmp_path, batch):
    path = tmp_path / "model.onnx"
    onnx.save(conv_net(batch=batch), str(path))
    return path


@pytest.mark.parametrize("samples, batch, model_batch", [
    (64, 1, 1),  # a fixed batch of 1: 64 batches, a multiple of 8
    (192, 8, "batch"),  # 24 batches of 8, a multiple of 8
    (300, 8, "batch"),  # 38 batches: the old calibrator kept the last 6
])
def test_minmax_ranges_equal_one_pass_over_all_samples(tmp_path, samples, batch, model_batch):
    path = model_file(tmp_path, model_batch)
    images = shrinking_samples(samples)
    batches = [{"image": images[start:start + batch]} for start in range(0, samples, batch)]

    reader = calibration_reader(conv_net(batch=model_batch), [{"image": images}], batch)
    calibrate(path, reader, "minmax", tmp_path / "cache.json")

    ours = {name: data.range_value for name, data in load_tensors_data(tmp_path / "cache.json").items()}
    expected = one_pass_ranges(path, batches, "minmax", tmp_path)
    assert ours.keys() == expected.keys()
    for name, (low, high) in expected.items():
        assert ours[name][0] == low and ours[name][1] == high, name
    assert ours["image"] == (images.min(), images.max())
    assert reader.samples == samples and reader.describe().startswith(f"{samples} samples")


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_methods_equal_one_pass(tmp_path, method):
    path = model_file(tmp_path, "batch")
    images = shrinking_samples(64)
    batches = [{"image": images[start:start + 8]} for start in range(0, 64, 8)]

    reader = calibration_reader(conv_net(), [{"image": images}], 8)
    calibrate(path, reader, method, tmp_path / "cache.json")

    ours = {name: data.range_value for name, data in load_tensors_data(tmp_path / "cache.json").items()}
    expected = one_pass_ranges(path, batches, method, tmp_path)
    assert ours.keys() == expected.keys()
    for name, (low, high) in expected.items():
        np.testing.assert_array_equal(ours[name], (low, high), err_msg=name)


@pytest.mark.parametrize("samples, batch, model_batch", [(64, 1, 1), (192, 8, "batch"), (300, 8, "batch")])
def test_quantized_input_scale_covers_every_sample(tmp_path, samples, batch, model_batch):
    path = model_file(tmp_path, model_batch)
    images = shrinking_samples(samples)
    feeds = ({"image": images[start:start + 50]} for start in range(0, samples, 50))

    report = quantize_model(path, tmp_path / "q.onnx", mode="static", calibration=feeds,
                            calibration_batch_size=batch, per_channel=False, measure=False)

    assert report.calibration.startswith(f"{samples} samples in {-(-samples // batch)} batches")
    quantized = onnx.load(str(tmp_path / "q.onnx"))
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in quantized.graph.initializer}
    # Asymmetric 8-bit activations: the input's range over all samples, widened to hold 0, in 255 steps.
    low, high = min(float(images.min()), 0.0), max(float(images.max()), 0.0)
    np.testing.assert_allclose(initializers["image_scale"], (high - low) / 255, rtol=1e-6)
