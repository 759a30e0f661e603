"""Channels through Reshape targets computed at run time (Shape + constants), at symbolic batch and sequence."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import assert_lossless, assert_same_outputs, assert_valid, group_with, run, zeroed_for_lossless
from graphs import Graph, computed_reshape_encoder
from onnx import numpy_helper

from onnx_slim.channels.analysis import analyze
from onnx_slim.pipeline.prune import prune


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_macs_are_counted_at_the_analysis_shapes():
    analysis = analyze(computed_reshape_encoder(width=16, hidden=32, out=8))
    assert analysis.shapes_measured
    assert not analysis.cost.uncounted
    sequence = 64  # symbolic dims other than the batch default to 64
    assert analysis.cost.macs == sequence * 16 * 32 + sequence * 32 * 8
    assert "onnxruntime" in analysis.shapes_note


def test_group_follows_a_computed_reshape_and_its_channel_count_is_rewritten():
    model = computed_reshape_encoder(width=16, hidden=32, out=8)
    analysis = analyze(model)
    group = group_with(analysis, "fc1")
    assert group.prunable, [str(r) for r in group.frozen]
    assert {"fc1", "fc1_bias", "fc2"} <= set(group.nodes)
    pruned, _ = prune(model, ratio=0.5)
    assert_valid(pruned, model)
    concat = next(node for node in pruned.graph.node if node.name == "flat_shape")
    values = {init.name: numpy_helper.to_array(init) for init in pruned.graph.initializer}
    assert [values[name].tolist() for name in concat.input if name in values] == [[16]]
    # The dynamic parts are still read at run time.
    assert sum(node.op_type == "Shape" for node in pruned.graph.node) >= 2
    assert_lossless(model, 0.5)


def test_pruned_model_keeps_symbolic_dims_and_runs_at_other_lengths():
    model = computed_reshape_encoder(width=16, hidden=32, out=8)
    zeroed, chosen = zeroed_for_lossless(model, 0.5)
    assert chosen
    pruned, _ = prune(zeroed, ratio=0.5, criterion="l1")
    assert _dims(pruned.graph.input[0]) == ["batch", "sequence", 16]
    assert _dims(pruned.graph.output[0]) == ["batch", "sequence", 8]
    rng = np.random.default_rng(0)
    for batch, sequence in ((1, 7), (2, 33)):
        feeds = {"x": rng.standard_normal((batch, sequence, 16)).astype(np.float32)}
        expected, actual = run(zeroed, feeds)["unflat"], run(pruned, feeds)["unflat"]
        assert actual.shape == (batch, sequence, 8)
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def _build(g: Graph, output: str, dims) -> onnx.ModelProto:
    """The model with `output` declared as `dims` (inference cannot see through computed targets)."""
    model = g._model([onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, dims)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_channel_count_computed_at_run_time_freezes():
    """When the channel entry of the target is itself read through Shape, nothing can rewrite it."""
    g = Graph()
    x = g.input("x", ["batch", 4, 16])
    h = g.relu(g.add_bias(g.matmul(x, 32, name="fc1"), name="fc1_bias"))
    other = g.input("other", ["batch", 4, 32])
    read = g.node("Slice", [g.node("Shape", [other]), g.ints("from", [1]), g.ints("to", [3])])
    target = g.concat([g.ints("one", [1]), read], axis=0, name="target")
    y = g.node("Reshape", [h, target], "reshape")
    model = _build(g, g.node("MatMul", [y, g.weight("fc2_w", (32, 2))], "fc2"), [1, 4, 2])
    group = group_with(analyze(model, input_shapes={"x": [1, 4, 16], "other": [1, 4, 32]}), "fc1")
    assert any("channel count is computed at run time" in reason.reason for reason in group.frozen), group.frozen


def _shared_target_model(through_identity: bool, shared_with_output: bool = False) -> onnx.ModelProto:
    """One Concat target [batch, 8] read by two Reshapes (as the dynamo exporter shares one view target
    between a block's projections), one of them maybe through an Identity (paddle2onnx style);
    `shared_with_output`: the target is also a graph output."""
    g = Graph()
    x = g.input("x", ["batch", 16])
    a = g.relu(g.gemm(x, 8, name="fc_a"))
    b = g.relu(g.gemm(x, 8, name="fc_b"))
    batch = g.node("Unsqueeze", [g.node("Gather", [g.node("Shape", [x]), g.ints("zero", 0)], axis=0),
                                 g.ints("axes", [0])])
    target = g.concat([batch, g.ints("width", [8])], axis=0, name="target")
    target_a = g.node("Identity", [target], "target_identity") if through_identity else target
    ra, rb = g.node("Reshape", [a, target_a], "reshape_a"), g.node("Reshape", [b, target], "reshape_b")
    head = g.node("Gemm", [g.concat([ra, rb], axis=1), g.weight("head_w", (2, 16))], "head", transB=1)
    outputs = [onnx.helper.make_tensor_value_info(head, onnx.TensorProto.FLOAT, ["batch", 2])]
    if shared_with_output:
        outputs.append(onnx.helper.make_tensor_value_info(target, onnx.TensorProto.INT64, [2]))
    model = g._model(outputs)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("through_identity, shared_with_output", [(False, False), (True, False), (False, True)])
def test_a_shared_computed_target_is_copied_for_each_reshape(through_identity, shared_with_output):
    """Each Reshape gets its own copy of the target, so the two groups prune apart; removing
    zeroed channels, 2 from one branch and 6 from the other, changes nothing."""
    model = _shared_target_model(through_identity, shared_with_output)
    analysis = analyze(model)
    assert analysis.normalize_info.targets_unshared == (2 if shared_with_output else 1)
    for name in ("fc_a", "fc_b"):
        assert group_with(analysis, name).prunable, group_with(analysis, name).frozen
    zeroed = analysis.model  # normalized: each branch reads its own weights
    weights = {init.name: init for init in zeroed.graph.initializer}
    for layer, count in (("fc_a", 2), ("fc_b", 6)):
        gemm = next(node for node in zeroed.graph.node if node.name == layer)
        for position in (1, 2):
            value = numpy_helper.to_array(weights[gemm.input[position]]).copy()
            value[:count] = 0.0
            weights[gemm.input[position]].CopyFrom(numpy_helper.from_array(value, gemm.input[position]))
    pruned, report = prune(zeroed, ratio=0.5, criterion="l1", global_ranking=True)
    assert report.channels_removed == 8
    assert sorted(group["kept"] for group in report.groups) == [2, 6]
    assert_valid(pruned, zeroed)
    assert_same_outputs(pruned, zeroed)
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((5, 16)).astype(np.float32)}
    np.testing.assert_allclose(run(pruned, feeds)[pruned.graph.output[0].name],
                               run(zeroed, feeds)[zeroed.graph.output[0].name], rtol=1e-5, atol=1e-6)


def _computed_pad_model(channel_pads_computed: bool = False, axes_fed: bool = False) -> onnx.ModelProto:
    """Conv -> Relu -> Pad -> stride-2 Conv, the pads computed as PyTorch exports `F.pad` of sizes
    read through Shape (timm's TF "same" padding): a pad list [w_l, w_r, h_t, h_b] from the input's
    width, zeros for the channel and batch axes, reshaped to pairs, reversed, transposed and flattened
    into ONNX's order. `channel_pads_computed`: the channel pair is computed too; `axes_fed`: the
    reversing Slice's axes are a graph input (0 when fed, but nothing says so before run time)."""
    g = Graph()
    x = g.input("x", ["batch", 3, "height", "width"])
    h = g.relu(g.conv(x, 8, name="conv1"), name="relu1")
    width = g.node("Gather", [g.node("Shape", [h]), g.ints("w_axis", 3)], axis=0)
    odd = g.node("Unsqueeze", [g.node("Mod", [width, g.ints("two", 2)]), g.ints("unsq", [0])])
    listed = g.concat([odd, odd, odd, odd] + ([odd, odd] if channel_pads_computed else []), axis=0)
    zeros = g.node("ConstantOfShape", [g.ints("zero_count", [2 if channel_pads_computed else 4])],
                   value=numpy_helper.from_array(np.array([0], np.int64)))
    pairs = g.node("Reshape", [g.concat([listed, zeros], axis=0), g.ints("pairs", [-1, 2])])
    if axes_fed:
        g.inputs.append(onnx.helper.make_tensor_value_info("slice_axes", onnx.TensorProto.INT64, [1]))
    reversed_pairs = g.node("Slice", [pairs, g.ints("rs", [-1]), g.ints("re", [-(2 ** 63) + 1]),
                                      "slice_axes" if axes_fed else g.ints("ra", [0]), g.ints("rstep", [-1])])
    pads = g.node("Reshape", [g.node("Transpose", [reversed_pairs], perm=[1, 0]), g.ints("flat", [-1])])
    padded = g.node("Pad", [h, pads], "pad")
    y = g.node("Conv", [padded, g.weight("conv2_w", (4, 8, 3, 3)), g.weight("conv2_b", (4,))], "conv2",
               strides=[2, 2])  # shape inference cannot see through the computed pads: weights by hand
    return _build(g, y, ["batch", 4, "h2", "w2"])


def test_pads_computed_at_run_time_keep_the_channels_when_their_channel_entries_are_constant_zeros():
    model = _computed_pad_model()
    shapes = {"x": [1, 3, 9, 9]}
    group = group_with(analyze(model, input_shapes=shapes), "conv1")
    assert group.prunable, group.frozen
    zeroed, chosen = zeroed_for_lossless(model, 0.5)
    assert chosen
    pruned, report = prune(zeroed, ratio=0.5, criterion="l1", input_shapes=shapes)
    assert report.channels_removed == 4
    rng = np.random.default_rng(0)
    for size in (9, 12):  # an odd width pads one column, an even one none
        feeds = {"x": rng.standard_normal((2, 3, size, size)).astype(np.float32)}
        np.testing.assert_allclose(run(pruned, feeds)["conv2"], run(zeroed, feeds)["conv2"], rtol=1e-5, atol=1e-5)


def test_pads_of_the_channel_axis_computed_at_run_time_freeze():
    group = group_with(analyze(_computed_pad_model(channel_pads_computed=True), input_shapes={"x": [1, 3, 9, 9]}),
                       "conv1")
    assert any("pads of the channel axis are computed at run time" in r.reason for r in group.frozen), group.frozen


def test_reshape_as_a_tensor_of_the_same_channels_follows_them():
    """timm's LeViT normalizes a Linear's output with BatchNorm1d on [B*N, C], then `reshape_as` the
    Linear's output: the target is Shape of that tensor, whose channel count shrinks with it."""
    g = Graph()
    x = g.input("x", ["batch", 4, 8])
    h = g.matmul(x, 16, name="fc1")
    flat = g.node("Reshape", [h, g.ints("flat", [-1, 16])], "flatten")
    normed = g.node("BatchNormalization", [flat, g.const("bn_scale", np.linspace(0.5, 2, 16).astype(np.float32)),
                                          g.weight("bn_bias", (16,)), g.weight("bn_mean", (16,)),
                                          g.const("bn_var", np.linspace(1, 3, 16).astype(np.float32))], "bn")
    back = g.node("Reshape", [normed, g.node("Shape", [h])], "reshape_as")
    y = g.node("MatMul", [g.relu(back), g.weight("fc2_w", (16, 4))], "fc2")
    model = _build(g, y, ["batch", 4, 4])
    group = group_with(analyze(model), "fc1")
    assert group.prunable, group.frozen
    pruned = assert_lossless(model, 0.5)
    feeds = {"x": np.random.default_rng(2).standard_normal((3, 4, 8)).astype(np.float32)}
    assert run(pruned, feeds)["fc2"].shape == (3, 4, 4)


def test_pads_reshuffled_by_a_slice_with_run_time_axes_freeze():
    """Which axis the Slice reverses decides where the zeros land: unknown axes are not "every axis"."""
    model = _computed_pad_model(axes_fed=True)
    group = group_with(analyze(model, input_shapes={"x": [1, 3, 9, 9], "slice_axes": [1]}), "conv1")
    assert not group.prunable
    assert any(r.op_type == "Pad" and "computed at run time" in r.reason for r in group.frozen), group.frozen


def test_a_target_copy_never_takes_a_name_the_graph_already_uses():
    model = _shared_target_model(through_identity=False)
    model.graph.input.append(onnx.helper.make_tensor_value_info("target__for_reshape_a", onnx.TensorProto.FLOAT, [1]))
    analysis = analyze(model)
    onnx.checker.check_model(analysis.model, full_check=True)
    assert analysis.normalize_info.targets_unshared == 1
