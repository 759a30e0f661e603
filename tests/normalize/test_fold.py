"""Folding static shape computations into constants (normalize/fold.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import assert_lossless, assert_valid
from graphs import Graph

from onnx_slim.channels.analysis import analyze
from onnx_slim.normalize.fold import fold_shape_computations
from onnx_slim.normalize.passes import normalize
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


def _torchscript_same_padding(g: Graph, x: str, pads, name: str) -> str:
    """`F.pad(x, pads)` as the TorchScript exporter writes it: Constant nodes feeding
    ConstantOfShape -> Concat -> Reshape -> Slice(reversed) -> Transpose -> Reshape -> Cast -> Pad."""

    def constant(suffix, value):
        tensor = onnx.numpy_helper.from_array(np.asarray(value), f"{name}_{suffix}")
        return g.node("Constant", [], f"{name}_{suffix}", value=tensor)

    zeros = g.node("ConstantOfShape", [constant("c0", np.array([4], dtype=np.int64))], f"{name}_zeros",
                   value=onnx.numpy_helper.from_array(np.zeros(1, dtype=np.int64)))
    both = g.node("Concat", [constant("c1", np.array(pads, dtype=np.int64)), zeros], f"{name}_concat", axis=0)
    pairs = g.node("Reshape", [both, constant("c2", np.array([-1, 2], dtype=np.int64))], f"{name}_pairs")
    reversed_pairs = g.node("Slice", [pairs, constant("c4", np.array([-1], dtype=np.int64)),
                                      constant("c5", np.array([-(2 ** 63) + 1], dtype=np.int64)),
                                      constant("c3", np.array([0], dtype=np.int64)),
                                      constant("c6", np.array([-1], dtype=np.int64))], f"{name}_slice")
    transposed = g.node("Transpose", [reversed_pairs], f"{name}_transpose", perm=[1, 0])
    flat = g.node("Reshape", [transposed, constant("c7", np.array([-1], dtype=np.int64))], f"{name}_flat")
    onnx_pads = g.node("Cast", [flat], f"{name}_cast", to=onnx.TensorProto.INT64)
    return g.node("Pad", [x, onnx_pads, constant("c8", np.array(0.0, dtype=np.float32))], name, mode="constant")


def _same_padding_convs(batch) -> onnx.ModelProto:
    """conv1 -> Pad (TorchScript chain, pads [0, 1, 0, 1]) -> depthwise 3x3 stride 2 -> conv_out."""
    g = Graph()
    x = g.input("x", [batch, 3, 8, 8])
    h = g.relu(g.conv(x, 8, kernel=1, name="conv1"))
    padded = _torchscript_same_padding(g, h, [0, 1, 0, 1], "pad")
    weight = g.weight("dw_w", (8, 1, 3, 3))
    dw = g.relu(g.node("Conv", [padded, weight, g.weight("dw_b", (8,))], "dw", group=8, strides=[2, 2]))
    y = g.conv(dw, 4, kernel=1, name="conv_out")
    model = g._model([onnx.helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, [batch, 4, 4, 4])])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_torchscript_padding_chain_folds_to_constant_pads():
    model = _same_padding_convs("N")
    normalize(model)
    pad = next(node for node in model.graph.node if node.op_type == "Pad")
    pads = next(init for init in model.graph.initializer if init.name == pad.input[1])
    # ONNX order: begins of every axis, then ends: W and H get one extra column/row at the end.
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(pads), [0, 0, 0, 0, 0, 0, 1, 1])
    assert [node.op_type for node in model.graph.node] == ["Conv", "Relu", "Pad", "Conv", "Relu", "Conv"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_torchscript_padding_chain_counts_macs_and_prunes():
    model = _same_padding_convs("N")
    analysis = analyze(model)
    # conv1 1x1 on 8x8, depthwise 3x3 stride 2 on the padded 9x9 -> 4x4, conv_out 1x1 on 4x4.
    assert analysis.cost.macs == 8 * 3 * 64 + 8 * 9 * 16 + 4 * 8 * 16
    assert not analysis.cost.uncounted
    group = next(g for g in analysis.groups if "conv1" in {m.use.node for m in g.producers})
    assert group.prunable, group.frozen
    assert {"dw", "conv_out"} <= set(group.nodes)
    pruned, _ = prune(model, ratio=0.5)
    assert_valid(pruned, model)
    assert_lossless(model, 0.5)


def test_large_constant_of_shape_is_not_folded():
    """The size limit is checked before evaluating: a big constant stays a node, never allocated."""
    g = Graph()
    x = g.input("x", [1, 4])
    big = g.node("ConstantOfShape", [g.ints("dims", [1, 100_000])], "big")
    y = g.node("Add", [x, g.node("Slice", [big, g.ints("s", [0]), g.ints("e", [4]), g.ints("a", [1])])])
    model = g.build(y)
    assert fold_shape_computations(model) == 0
    assert [node.op_type for node in model.graph.node] == ["ConstantOfShape", "Slice", "Add"]
