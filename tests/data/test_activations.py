"""Activation capture with onnxruntime, streaming channel statistics, Conv patches."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_slim.data import activations as activations_module
from onnx_slim.data.activations import (
    ActivationCapture,
    ChannelStats,
    conv_input_patches,
    conv_output_at,
    sample_positions,
)
from onnx_slim.data.calibration import CalibrationSet
from onnx_slim.errors import OnnxSlimError
from onnx_slim.ir.runtime import create_session, run_session


def conv_relu_model(seed: int = 0) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv(4, 3x3, pad 1) -> Relu -> Conv(2, 1x1) -> y; plus Shape(x) -> shape (int64)."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["conv1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("Conv", ["relu1", "w2"], ["y"]),
        helper.make_node("Shape", ["relu1"], ["relu_shape"]),
        helper.make_node("Cast", ["relu_shape"], ["shape_float"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 8, 8]),
            helper.make_tensor_value_info("shape_float", TensorProto.FLOAT, [4]),
        ],
        [w1, b1, w2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_model(in_channels, out_channels, kernel, strides, pads, dilations, seed=0):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((out_channels, in_channels, *kernel)).astype(np.float32)
    bias = rng.standard_normal(out_channels).astype(np.float32)
    node = helper.make_node(
        "Conv", ["x", "w", "b"], ["y"], kernel_shape=list(kernel), strides=list(strides),
        pads=list(pads), dilations=list(dilations),
    )
    graph = helper.make_graph(
        [node], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weight, bias


def random_images(n=3, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


# --------------------------------------------------------------------------- capture


def test_capture_returns_outputs_and_intermediates():
    model = conv_relu_model()
    x = random_images()
    capture = ActivationCapture(model, ["conv1", "relu1"], threads=1)
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


# --------------------------------------------------------------------------- ChannelStats


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


# --------------------------------------------------------------------------- positions and patches


def test_sample_positions_are_distinct_per_image_and_in_range():
    positions = sample_positions(np.random.default_rng(0), 4, 5, 6, per_image=7)
    assert positions.shape == (28, 3) and positions.dtype == np.int64
    for image in range(4):
        mine = positions[positions[:, 0] == image]
        assert len(mine) == 7 and len({(y, x) for _, y, x in mine}) == 7
    assert positions[:, 1].max() < 5 and positions[:, 2].max() < 6 and positions.min() >= 0
    again = sample_positions(np.random.default_rng(0), 4, 5, 6, per_image=7)
    np.testing.assert_array_equal(positions, again)


def test_sample_positions_takes_all_when_asked_for_more():
    positions = sample_positions(np.random.default_rng(0), 2, 2, 3, per_image=100)
    assert positions.shape == (12, 3)
    expected_first_image = [(0, y, x) for y in range(2) for x in range(3)]
    assert [tuple(p) for p in positions[:6]] == expected_first_image


@pytest.mark.parametrize(
    "kernel, strides, pads, dilations",
    [
        ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
        ((1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
        ((3, 3), (2, 2), (0, 1, 1, 0), (1, 1)),
        ((3, 2), (2, 1), (1, 0, 2, 1), (2, 1)),
        ((5, 5), (3, 3), (2, 2, 2, 2), (1, 1)),
        ((2, 3), (1, 2), (0, 0, 0, 0), (3, 2)),
    ],
)
def test_conv_input_patches_reproduce_onnxruntime_conv(kernel, strides, pads, dilations):
    model, weight, bias = conv_model(3, 4, kernel, strides, pads, dilations)
    x = np.random.default_rng(2).standard_normal((2, 3, 11, 10)).astype(np.float32)
    y = run_session(create_session(model), {"x": x})["y"]

    positions = sample_positions(np.random.default_rng(3), 2, y.shape[2], y.shape[3], per_image=10_000)
    patches = conv_input_patches(x, positions, kernel, strides, pads, dilations)
    assert patches.shape == (len(positions), 3, *kernel)
    predicted = patches.reshape(len(positions), -1) @ weight.reshape(4, -1).T + bias
    assert np.abs(predicted - conv_output_at(y, positions)).max() < 1e-4


def test_conv_input_patches_zero_padding_and_output_gather():
    x = np.ones((1, 2, 4, 4), np.float32)
    patches = conv_input_patches(x, np.array([[0, 0, 0]]), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    expected = np.ones((3, 3), np.float32)
    expected[0, :] = 0
    expected[:, 0] = 0
    np.testing.assert_array_equal(patches[0, 0], expected)
    np.testing.assert_array_equal(patches[0, 1], expected)

    y = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    gathered = conv_output_at(y, np.array([[1, 2, 3], [0, 0, 0]]))
    np.testing.assert_array_equal(gathered, [y[1, :, 2, 3], y[0, :, 0, 0]])


def test_positions_out_of_range_are_refused():
    x = np.zeros((1, 2, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"position y out of range 0\.\.1"):
        conv_input_patches(x, np.array([[0, 2, 0]]), (3, 3), (1, 1), (0, 0, 0, 0), (1, 1))
    with pytest.raises(ValueError, match=r"position image out of range"):
        conv_output_at(np.zeros((1, 2, 3, 3)), np.array([[1, 0, 0]]))
