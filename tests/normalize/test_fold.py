"""Folding static shape computations into constants (normalize/fold.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import assert_valid
from graphs import Graph

from onnx_slim.channels.analysis import analyze
from onnx_slim.normalize.fold import fold_shape_computations
from onnx_slim.pipeline.prune import prune


def _flatten_by_shape(opset: int, batch) -> onnx.ModelProto:
    """Conv -> Reshape(y, Concat(Unsqueeze(Gather(Shape(y), 0)), [-1])) -> MatMul, as exporters write `view(n, -1)`."""
    g = Graph(opset=opset)
    x = g.input("x", [batch, 3, 6, 6])
    y = g.relu(g.conv(x, 8, name="conv"))
    batch_dim = g.node("Gather", [g.node("Shape", [y]), g.ints("zero", 0)], axis=0)
    if opset < 13:
        batch_vec = g.node("Unsqueeze", [batch_dim], axes=[0])
    else:
        batch_vec = g.node("Unsqueeze", [batch_dim, g.ints("axes", [0])])
    target = g.node("Concat", [batch_vec, g.ints("rest", [-1])], axis=0)
    flat = g.node("Reshape", [y, target], name="flatten")
    logits = g.node("MatMul", [flat, g.weight("fc_w", (8 * 6 * 6, 5))], name="fc")
    model = g.build(logits)
    # Inference cannot see through the computed target; declare the output as the exporter would.
    model.graph.output[0].CopyFrom(onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, [batch, 5]))
    return model


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_static_shape_reads_fold_at_the_models_own_opset(opset):
    """Unsqueeze takes `axes` as an attribute before opset 13: folding must evaluate it at that opset."""
    model = _flatten_by_shape(opset, batch=2)
    folded = fold_shape_computations(model)
    assert folded == 4  # Shape, Gather, Unsqueeze, Concat
    reshape = next(node for node in model.graph.node if node.op_type == "Reshape")
    target = next(init for init in model.graph.initializer if init.name == reshape.input[1])
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(target), [2, -1])


@pytest.mark.parametrize("opset", [11, 17])
def test_folded_reshape_target_lets_the_group_prune(opset):
    model = _flatten_by_shape(opset, batch=2)
    conv_group = next(g for g in analyze(model).groups if "conv" in {m.use.node for m in g.producers})
    assert conv_group.prunable, conv_group.frozen
    pruned, _ = prune(model, ratio=0.5)
    assert_valid(pruned, model)


def test_symbolic_batch_is_never_folded():
    model = _flatten_by_shape(17, batch="N")
    fold_shape_computations(model)
    assert any(node.op_type == "Shape" for node in model.graph.node)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
