"""Concrete shapes for analysis (ir/shapes.py): static inference, then one onnxruntime run where it falls short."""

from __future__ import annotations

import numpy as np
from graphs import computed_reshape_encoder, conv_chain
from onnx import TensorProto, helper, numpy_helper

from onnx_slim.ir.shapes import concrete_shapes, infer_shapes, is_static


def test_static_models_are_not_run():
    model = conv_chain()
    found = concrete_shapes(model, {"x": (1, 3, 8, 8)})
    assert not found.measured
    assert found.shapes["conv1"] == (1, 8, 8, 8)


def test_sizes_computed_at_run_time_are_measured():
    """A Slice whose end is read through Shape defeats static inference; one run measures every tensor."""
    model = computed_reshape_encoder(width=16, hidden=32, out=8)
    inferred, _ = infer_shapes(model, {"x": (1, 5, 16)})
    assert not is_static(inferred.get("fc1"))  # what the fallback is for
    found = concrete_shapes(model, {"x": (1, 5, 16)})
    assert found.measured
    assert found.shapes["fc1"] == (1, 5, 32)
    assert found.shapes["flat"] == (5, 32)
    assert found.shapes["unflat"] == (1, 5, 8)
    assert found.types["fc2"] == 1  # float
    # The model itself is untouched: no extra outputs left behind.
    assert [output.name for output in model.graph.output] == ["unflat"]


def test_sequence_values_are_skipped_when_measuring():
    """Only tensors have shapes: a sequence made along the way must not break the measurement."""
    nodes = [helper.make_node("SplitToSequence", ["x"], ["pieces"], axis=0),
             helper.make_node("SequenceAt", ["pieces", "first"], ["y"])]
    graph = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array(0, dtype=np.int64), "first")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    found = concrete_shapes(model, {"x": (4, 3)})
    assert found.measured
    assert found.shapes["y"] == (1, 3)
    assert "pieces" not in found.shapes
