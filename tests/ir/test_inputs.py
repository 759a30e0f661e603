"""Concrete shapes for a model's symbolic input dims (ir/inputs.py)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnx_slim.ir.inputs import InputSpec, concrete_dims, random_inputs
from onnx_slim.ops.cost import concrete_input_shapes

AUDIO = InputSpec("input", ("batch", "sequence"), np.dtype(np.float32))
STATE = InputSpec("state", (2, "batch", 128), np.dtype(np.float32))  # a recurrent state, batch on axis 1


def test_a_symbolic_name_takes_one_size_on_every_input():
    assert concrete_dims([STATE, AUDIO]) == {"state": (2, 1, 128), "input": (1, 64)}
    assert concrete_dims([STATE, AUDIO], {"input": [3, 512]}) == {"state": (2, 3, 128), "input": (3, 512)}
    assert concrete_dims([AUDIO, STATE], default_batch=4)["state"] == (2, 4, 128)


def test_unnamed_dims_keep_the_positional_defaults():
    unnamed = InputSpec("x", (None, 3, None, None), np.dtype(np.float32))
    assert concrete_dims([unnamed]) == {"x": (1, 3, 64, 64)}


def test_random_feeds_and_analysis_shapes_agree_on_shared_names():
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["state", "axes"], ["pooled"], keepdims=0),
         helper.make_node("Add", ["input", "pooled"], ["out"])],
        "vad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 128]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 128])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 128])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    feeds = random_inputs(model, batch=3)
    assert feeds["input"].shape == (3, 128) and feeds["state"].shape == (2, 3, 128)
    assert concrete_input_shapes(model, {"input": [5, 128]}) == {"input": (5, 128), "state": (2, 5, 128)}


def test_a_name_repeated_within_one_input_is_a_placeholder():
    """Some exporters write every dynamic axis as "?": batch, height and width are not one size."""
    image = InputSpec("x", ("?", 3, "?", "?"), np.dtype(np.float32))
    assert concrete_dims([image]) == {"x": (1, 3, 64, 64)}
    assert concrete_dims([image], default_batch=2) == {"x": (2, 3, 64, 64)}


def test_sample_shapes_complete_the_given_shapes_and_keep_their_batch():
    """An input the calibration covers takes its samples' sizes; its symbolic batch, shared with a
    given input, takes the given size (not 1); a static batch stays; given shapes are kept."""
    from onnx_slim.ir.inputs import shapes_from_samples

    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"]),
              helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", "L"]),
              helper.make_tensor_value_info("fixed", TensorProto.FLOAT, [2, "K"])]
    graph = helper.make_graph([], "g", inputs, [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    samples = {"x": (1, 3, 40, 96), "s": (1, 8), "fixed": (1, 5)}
    assert shapes_from_samples(model, samples, {"x": [4, 3, 32, 32]}) == {
        "x": (4, 3, 32, 32), "s": (4, 8), "fixed": (2, 5)}
    assert shapes_from_samples(model, samples, None)["x"] == (1, 3, 40, 96)
