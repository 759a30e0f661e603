"""Activation capture with onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import conv_model, conv_relu_model, random_images
from recording import RecordingProgress

from onnx_slim.data import activations as activations_module
from onnx_slim.data.activations import ActivationCapture
from onnx_slim.data.calibration import CalibrationSet
from onnx_slim.errors import OnnxSlimError
from onnx_slim.ir.runtime import SessionSpec, create_session, run_session


def test_capture_returns_outputs_and_intermediates():
    model = conv_relu_model()
    x = random_images()
    capture = ActivationCapture(model, ["conv1", "relu1"], session=SessionSpec(threads=1))
    result = capture.run({"x": x})

    reference = run_session(create_session(model), {"x": x})
    assert set(result) == {"y", "shape_float", "conv1", "relu1"}
    np.testing.assert_allclose(result["y"], reference["y"], atol=1e-5)
    assert result["conv1"].shape == (3, 4, 8, 8) and (result["conv1"] < 0).any()
    np.testing.assert_array_equal(result["relu1"], np.maximum(result["conv1"], 0))  # Conv+Relu not fused away
    first_conv = conv_model(3, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))[0]
    for index, name in enumerate(("w", "b")):  # same weights as the model's first Conv
        first_conv.graph.initializer[index].CopyFrom(model.graph.initializer[index])
        first_conv.graph.initializer[index].name = name
    np.testing.assert_allclose(result["conv1"], run_session(create_session(first_conv), {"x": x})["y"], atol=1e-5)


def test_capture_does_not_modify_the_callers_model():
    model = conv_relu_model()
    before = model.SerializeToString()
    ActivationCapture(model, ["conv1", "relu_shape"])
    assert model.SerializeToString() == before


def test_capture_gives_extra_outputs_their_element_type():
    capture = ActivationCapture(conv_relu_model(), ["relu_shape", "conv1"])
    types = {output.name: output.type for output in capture.session.get_outputs()}
    assert types["relu_shape"] == "tensor(int64)" and types["conv1"] == "tensor(float)"
    result = capture.run({"x": random_images(2)})
    assert result["relu_shape"].dtype == np.int64 and result["relu_shape"].tolist() == [2, 4, 8, 8]


def test_capture_works_untyped_when_shape_inference_fails(monkeypatch):
    def failing_inference(model):
        raise RuntimeError("custom op")

    monkeypatch.setattr(activations_module.onnx.shape_inference, "infer_shapes", failing_inference)
    result = ActivationCapture(conv_relu_model(), ["relu1", "relu_shape"]).run({"x": random_images(1)})
    assert result["relu1"].dtype == np.float32 and result["relu_shape"].dtype == np.int64


def test_capture_of_graph_input_and_output_names():
    x = random_images(2)
    capture = ActivationCapture(conv_relu_model(), ["x", "y", "y"])
    assert capture.tensor_names == ["x", "y"]
    assert [output.name for output in capture.session.get_outputs()] == ["y", "shape_float"]
    result = capture.run({"x": x})
    np.testing.assert_array_equal(result["x"], x)


def test_capture_unknown_tensor_is_a_clear_error():
    with pytest.raises(OnnxSlimError, match=r"tensor 'conv9' is not in the model's main graph"):
        ActivationCapture(conv_relu_model(), ["relu1", "conv9"])


def test_capture_of_a_constant_is_refused():
    with pytest.raises(OnnxSlimError, match=r"tensor 'w1' is a constant \(initializer\), not an activation"):
        ActivationCapture(conv_relu_model(), ["w1"])


def test_capture_streams_one_batch_at_a_time():
    calib = CalibrationSet({"x": random_images(5)})
    consumed = []

    def recording_batches():
        for batch in calib.batches(2):
            consumed.append(len(batch["x"]))
            yield batch

    results = ActivationCapture(conv_relu_model(), ["relu1"]).iter(recording_batches())
    first = next(results)
    assert consumed == [2] and first["relu1"].shape[0] == 2
    assert [result["relu1"].shape[0] for result in results] == [2, 1]
    assert consumed == [2, 2, 1]




def test_iterating_a_batch_stream_counts_its_batches():
    calibration = CalibrationSet({"x": random_images(n=10)})
    recorder = RecordingProgress()

    results = list(ActivationCapture(conv_relu_model(), ["relu1"]).iter(calibration.batch_stream(4), recorder))

    assert len(results) == 3 and calibration.batch_count(4) == 3
    assert recorder.steps_done == {"calibration batches": [3, 3]}
