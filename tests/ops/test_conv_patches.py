"""Conv geometry at sampled positions: patches, pads, output gathers."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import conv_model

from onnx_slim.ir.runtime import create_session, run_session
from onnx_slim.ops.conv_patches import conv_input_patches, conv_output_at, sample_positions


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


@pytest.mark.parametrize("attributes", [dict(kernel_shape=[3], pads=[2, 2], dilations=[2]),
                                        dict(kernel_shape=[5], strides=[2], pads=[1, 3]),
                                        dict(kernel_shape=[4], auto_pad="SAME_LOWER"),
                                        dict(kernel_shape=[3], strides=[3], auto_pad="VALID")])
def test_a_1d_conv_as_height_one_reproduces_onnxruntime(attributes):
    from onnx import TensorProto, helper, numpy_helper

    from onnx_slim.ops.conv_patches import ConvGeometry, as_nchw

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((6, 3, attributes["kernel_shape"][0])).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attributes)
    graph = helper.make_graph([node], "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 17])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w")])
    x = rng.standard_normal((2, 3, 17)).astype(np.float32)
    y = run_session(create_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])), {"x": x})["y"]

    geometry = ConvGeometry.of(node, weight.shape[2:], as_nchw(x).shape[2:])
    assert geometry.output_size(as_nchw(x).shape[2:]) == as_nchw(y).shape[2:]
    positions = sample_positions(rng, 2, *as_nchw(y).shape[2:], per_image=100)
    patches = geometry.patches(as_nchw(x), positions)
    np.testing.assert_allclose(patches @ weight.reshape(6, -1).T, conv_output_at(as_nchw(y), positions), atol=1e-5)
