"""Every channel rule on a small graph: group structure, pruned shapes, validity, losslessness.

Each case builds a graph with `graphs.Graph`, then `check_rule` asserts the groups
(`analyze(model).groups`), prunes at ratio 0.5, asserts the pruned initializer
shapes and invariant 1 (checker, onnxruntime, output shapes), and, where every op
maps 0 to 0, invariant 2: channels zeroed in the producers are pruned losslessly.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import (
    assert_frozen_groups_kept,
    assert_lossless,
    assert_valid,
    group_with,
    random_feeds,
    run,
    weight_dims,
)
from graphs import Graph
from onnx import numpy_helper

from onnx_slim.channels.analysis import analyze
from onnx_slim.pipeline.prune import prune

PRUNABLE = None


def expect_group(analysis, node: str, channels: int, frozen_by: str | None = PRUNABLE, reason: str = ""):
    """The group `node` produces into has `channels` channels and is prunable, or frozen
    by a node whose name is `frozen_by` with a reason containing `reason`."""
    group = group_with(analysis, node)
    assert group.channels == channels, (node, group.channels)
    if frozen_by is PRUNABLE:
        assert group.prunable, (node, [str(r) for r in group.frozen])
        return group
    assert not group.prunable
    reasons = [str(r) for r in group.frozen]
    assert any(r.node == frozen_by and reason in r.reason and frozen_by in str(r) for r in group.frozen), reasons
    return group


def check_frozen(model, node: str, channels: int, frozen_by: str, reason: str, runs: bool = True):
    """The group of `node` is frozen as expected and pruning at 0.5 leaves it whole
    (invariant 4); with `runs`, the pruned model is also valid (invariant 1)."""
    analysis = analyze(model)
    expect_group(analysis, node, channels, frozen_by, reason)
    if runs:
        pruned, _ = prune(model, ratio=0.5)
        assert_frozen_groups_kept(analysis, pruned)
        assert_valid(pruned, model)


def producer_groups(analysis, node: str):
    """The groups `node` produces into, in output-channel order."""
    found = []
    for group in analysis.groups:
        for member in group.producers:
            if member.use.node == node:
                found.append((member.offset, group))
    return [group for _, group in sorted(found, key=lambda pair: pair[0])]


def const_value(model: onnx.ModelProto, node_name: str, input_index: int) -> list:
    node = next(n for n in model.graph.node if n.name == node_name)
    init = next(i for i in model.graph.initializer if i.name == node.input[input_index])
    return numpy_helper.to_array(init).tolist()


def check_rule(model, groups, shapes=None, lossless=True, ratio=0.5, **options):
    """Groups as expected; prune; pruned shapes as expected; frozen groups whole; valid;
    lossless if asked.

    groups: [(node, channels, frozen_by or PRUNABLE, reason)], shapes: {(node, input index): dims}.
    """
    analysis = analyze(model, prune_layernorm=options.get("prune_layernorm", False))
    for node, channels, *frozen in groups:
        expect_group(analysis, node, channels, *frozen)
    pruned, report = prune(model, ratio=ratio, **options)
    for (node, index), dims in (shapes or {}).items():
        assert weight_dims(pruned, node, index) == tuple(dims), (node, index)
    assert_frozen_groups_kept(analysis, pruned)
    assert_valid(pruned, model)
    if lossless:
        assert_lossless(model, ratio, **options)
    return pruned, report


def trunk(g: Graph, width: int = 8, size: int = 8, name: str = "conv1") -> str:
    """x[1,3,size,size] -> conv1(width) -> relu."""
    return g.relu(g.conv(g.input("x", [1, 3, size, size]), width, name=name), name=f"{name}_relu")


def finish(g: Graph, h: str, name: str = "conv_out") -> onnx.ModelProto:
    """h -> conv_out(2 channels) -> y: a frozen output group that consumes h."""
    return g.build(g.conv(h, 2, name=name))


# -- Conv family ---------------------------------------------------------------------------


def test_conv_group_1_slices_producer_and_consumer():
    g = Graph()
    h = trunk(g)
    h = g.relu(g.conv(h, 4, name="conv2"))
    model = finish(g, h)
    check_rule(
        model,
        [("conv1", 8), ("conv2", 4), ("conv_out", 2, "output conv_out", "model output")],
        {("conv1", 1): (4, 3, 3, 3), ("conv1", 2): (4,), ("conv2", 1): (2, 4, 3, 3), ("conv_out", 1): (2, 2, 3, 3)},
    )


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_conv_passes_the_group_through(multiplier):
    g = Graph()
    h = trunk(g)
    h = g.relu(g.depthwise(h, multiplier, name="dw"))
    model = finish(g, h)
    analysis = analyze(model)
    group = expect_group(analysis, "conv1", 8)
    assert {m.use.node for m in group.producers} == {"conv1", "dw"}
    assert {m.repeat for m in group.producers if m.use.node == "dw"} == {multiplier}
    expected = {("dw", 1): (4 * multiplier, 1, 3, 3), ("conv_out", 1): (2, 4 * multiplier, 3, 3)}
    pruned, _ = check_rule(model, [], expected)
    dw = next(n for n in pruned.graph.node if n.name == "dw")
    assert onnx.helper.get_attribute_value(next(a for a in dw.attribute if a.name == "group")) == 4


def test_general_grouped_conv_removes_the_same_channels_from_each_group():
    # One group channel is one channel of each conv group (tests/channels/test_grouped.py).
    g = Graph()
    h = trunk(g)
    h = g.relu(g.conv(h, 8, group=2, name="grouped"))
    h = g.relu(g.conv(h, 8, name="conv3"))
    model = finish(g, h)
    check_rule(
        model,
        [("conv1", 4), ("grouped", 4), ("conv3", 8)],
        {("conv1", 1): (4, 3, 3, 3), ("grouped", 1): (4, 2, 3, 3), ("conv3", 1): (4, 4, 3, 3)},
    )


def test_conv_with_runtime_weight_freezes():
    g = Graph()
    h = trunk(g)
    w = g.input("w", [2, 8, 3, 3])
    model = g.build(g.node("Conv", [h, w], "dynamic_conv", pads=[1] * 4))
    check_frozen(model, "conv1", 8, "dynamic_conv", "computed at run time")


def test_conv_1d():
    g = Graph()
    x = g.input("x", [1, 3, 16])
    h = g.relu(g.node("Conv", [x, g.weight("conv1_w", (8, 3, 3)), g.weight("conv1_b", (8,))], "conv1", pads=[1, 1]))
    model = g.build(g.node("Conv", [h, g.weight("conv_out_w", (2, 8, 3))], "conv_out", pads=[1, 1]))
    check_rule(model, [("conv1", 8)], {("conv1", 1): (4, 3, 3), ("conv_out", 1): (2, 4, 3)})


def test_conv_with_runtime_bias_freezes_its_output():
    g = Graph()
    x, bias = g.input("x", [1, 3, 8, 8]), g.input("bias", [8])
    h = g.relu(g.node("Conv", [x, g.weight("conv1_w", (8, 3, 3, 3)), bias], "conv1", pads=[1] * 4))
    check_frozen(finish(g, h), "conv1", 8, "conv1", "bias is computed at run time")


def test_conv_transpose():
    g = Graph()
    h = trunk(g)
    h = g.relu(g.conv_transpose(h, 6, name="up"))
    model = finish(g, h)
    check_rule(
        model,
        [("conv1", 8), ("up", 6)],
        {("up", 1): (4, 3, 2, 2), ("up", 2): (3,), ("conv_out", 1): (2, 3, 3, 3)},
    )


# -- Gemm and MatMul --------------------------------------------------------------------------


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_vector_bias(trans_b):
    g = Graph()
    h = g.flatten(g.gap(trunk(g)))
    h = g.relu(g.gemm(h, 16, trans_b=trans_b, name="fc1"))
    model = g.build(g.gemm(h, 3, trans_b=trans_b, name="fc2"))
    fc1, fc2 = ((8, 4), (3, 8)) if trans_b else ((4, 8), (8, 3))
    check_rule(
        model,
        [("conv1", 8), ("fc1", 16), ("fc2", 3, "output fc2", "model output")],
        {("fc1", 1): fc1, ("fc1", 2): (8,), ("fc2", 1): fc2},
    )


def test_gemm_with_trans_a():
    g = Graph()
    h = g.node("Transpose", [g.relu(g.gemm(g.flatten(g.gap(trunk(g))), 16, name="fc1"))], "t", perm=[1, 0])
    model = g.build(g.node("Gemm", [h, g.weight("fc2_w", (16, 3))], "fc2", transA=1))
    check_rule(model, [("fc1", 16)], {("fc1", 1): (8, 4), ("fc2", 1): (8, 3)})


def test_gemm_row_bias_is_per_feature():
    g = Graph()
    h = g.flatten(g.gap(trunk(g)))
    fc1 = g.node("Gemm", [h, g.weight("fc1_w", (16, 8)), g.weight("fc1_b", (1, 16))], "fc1", transB=1)
    model = g.build(g.gemm(g.relu(fc1), 3, name="fc2"))
    check_rule(model, [("fc1", 16)], {("fc1", 1): (8, 4), ("fc1", 2): (1, 8), ("fc2", 1): (3, 8)})


def test_gemm_scalar_bias_is_kept_whole():
    g = Graph()
    h = g.flatten(g.gap(trunk(g)))
    h = g.relu(g.gemm(h, 16, bias="scalar", name="fc1"))
    model = g.build(g.gemm(h, 3, name="fc2"))
    # A zeroed feature still gets the scalar bias, so pruning it is not lossless.
    check_rule(model, [("fc1", 16)], {("fc1", 1): (8, 4), ("fc1", 2): (1,), ("fc2", 1): (3, 8)}, lossless=False)


def transformer_mlp(gelu: str = "op") -> onnx.ModelProto:
    """x[1,5,8] -> MatMul(16) -> Add -> GELU -> MatMul(8) -> Add -> y (dynamo-style MLP)."""
    g = Graph(opset=20)
    x = g.input("x", [1, 5, 8])
    h = g.add_bias(g.matmul(x, 16, name="fc1"), name="fc1_bias")
    if gelu == "op":
        h = g.act("Gelu", h, name="gelu")
    else:  # x * 0.5 * (1 + erf(x / sqrt(2))), as exported before opset 20
        erf = g.act("Erf", g.scalar("Div", h, np.sqrt(2.0), name="gelu_div"), name="gelu_erf")
        h = g.scalar("Mul", g.node("Mul", [h, g.scalar("Add", erf, 1.0, name="gelu_add")], "gelu_mul"), 0.5)
    return g.build(g.add_bias(g.matmul(h, 8, name="fc2"), name="fc2_bias"))


@pytest.mark.parametrize("gelu", ["op", "erf"])
def test_matmul_mlp_hidden_group(gelu):
    model = transformer_mlp(gelu)
    analysis = analyze(model)
    group = expect_group(analysis, "fc1", 16)
    assert {m.use.node for m in group.params} == {"fc1_bias"}
    assert {m.use.node for m in group.consumers} == {"fc2"}
    check_rule(model, [], {("fc1", 1): (8, 8), ("fc1_bias", 1): (8,), ("fc2", 1): (8, 8)})


def test_matmul_between_activations_freezes_both():
    g = Graph()
    x = g.input("x", [1, 5, 8])
    q, k = g.matmul(x, 8, name="q"), g.matmul(x, 8, name="k")
    scores = g.node("MatMul", [q, g.node("Transpose", [k], "k_t", perm=[0, 2, 1])], "attention")
    model = g.build(g.matmul(scores, 4, name="out"))
    analysis = analyze(model)
    expect_group(analysis, "q", 8, "attention", "between activations")
    expect_group(analysis, "k", 8, "attention", "between activations")
    pruned, report = prune(model, ratio=0.5)
    assert report.groups_pruned == 0
    assert weight_dims(pruned, "q") == (8, 8)


# -- Normalizations -------------------------------------------------------------------------


def test_batchnorm_after_add_is_kept_and_sliced():
    g = Graph()
    h = trunk(g)
    h = g.add(g.conv(h, 8, name="conv2a"), g.conv(h, 8, name="conv2b"), name="residual")
    h = g.relu(g.bn(h, name="bn"))
    model = finish(g, h)
    analysis = analyze(model)
    assert analysis.normalize_info.folded_batchnorms == 0
    group = expect_group(analysis, "conv2a", 8)
    assert {m.use.node for m in group.params} >= {"bn"}
    check_rule(model, [], {("bn", i): (4,) for i in range(1, 5)} | {("conv2b", 1): (4, 4, 3, 3)})


def test_batchnorm_on_a_shared_conv_output_is_kept():
    g = Graph()
    c = g.conv(g.input("x", [1, 3, 8, 8]), 8, name="conv1")
    left = g.conv(g.relu(g.bn(c, name="bn")), 8, name="conv2")
    right = g.conv(c, 8, name="conv3")
    model = finish(g, g.relu(g.add(left, right)))
    analysis = analyze(model)
    assert analysis.normalize_info.folded_batchnorms == 0
    check_rule(model, [("conv1", 8), ("conv2", 8)], {("bn", 1): (4,), ("conv3", 1): (4, 4, 3, 3)})


def test_batchnorm_in_training_mode_freezes():
    g = Graph()
    h = trunk(g)
    params = [g.const(f"bn_{n}", np.full(8, v, np.float32)) for n, v in (("s", 1), ("b", 0), ("m", 0), ("v", 1))]
    normed = g.node("BatchNormalization", [h] + params, "bn_train", outputs=3, training_mode=1)[0]
    check_frozen(finish(g, normed), "conv1", 8, "bn_train", "training mode")


def test_instance_norm():
    g = Graph()
    h = g.relu(g.instance_norm(g.conv(g.input("x", [1, 3, 8, 8]), 8, name="conv1"), name="norm"))
    model = finish(g, h)
    check_rule(model, [("conv1", 8)], {("norm", 1): (4,), ("norm", 2): (4,)})


def test_layer_norm_over_last_axis_rides_along():
    g = Graph()
    h = g.matmul(g.input("x", [1, 5, 8]), 16, name="fc1")
    h = g.relu(g.layer_norm(h, name="ln"))
    model = g.build(g.matmul(h, 8, name="fc2"))
    # Statistics over fewer channels change: structural only, and only on request.
    check_rule(model, [("fc1", 16)], {("ln", 1): (8,), ("ln", 2): (8,), ("fc2", 1): (8, 8)}, lossless=False,
               prune_layernorm=True)


def test_layer_norm_freezes_by_default():
    g = Graph()
    h = g.matmul(g.input("x", [1, 5, 8]), 16, name="fc1")
    model = g.build(g.matmul(g.relu(g.layer_norm(h, name="ln")), 8, name="fc2"))
    check_frozen(model, "fc1", 16, "ln", "--prune-layernorm")


def test_layer_norm_over_another_axis_freezes():
    g = Graph()
    h = g.layer_norm(g.conv(g.input("x", [1, 3, 8, 8]), 8, name="conv1"), name="ln")
    model = finish(g, h)
    check_frozen(model, "conv1", 8, "ln", "more than the channel axis")


def test_channel_shuffle_ties_its_parts_and_rewrites_both_targets():
    """ShuffleNet: Reshape [1, 8, H, W] -> [1, 2, 4, H, W], Transpose (0, 2, 1, 3, 4), Reshape back:
    output channel 2i + j is part j's channel i, so the two halves lose the same channels."""
    g = Graph()
    h = g.relu(g.conv(g.input("x", [1, 3, 6, 6]), 8, name="conv1"))
    parts = g.node("Reshape", [h, g.ints("split_target", [1, 2, 4, 6, 6])], "split")
    swapped = g.node("Transpose", [parts], "swap", perm=[0, 2, 1, 3, 4])
    shuffled = g.node("Reshape", [swapped, g.ints("merge_target", [1, 8, 6, 6])], "merge")
    model = finish(g, shuffled)
    group = expect_group(analyze(model), "conv1", 4)  # a class channel is one filter of each half
    assert group.prunable
    pruned, _ = check_rule(model, [], {("conv1", 1): (4, 3, 3, 3), ("conv_out", 1): (2, 4, 3, 3)})
    assert const_value(pruned, "split", 1) == [1, 2, 2, 6, 6] and const_value(pruned, "merge", 1) == [1, 4, 6, 6]


def decomposed_layer_norm_model(opset: int = 11):
    """fc1 -> LayerNorm written out as exports before opset 17 do (ReduceMean, Sub, Pow,
    ReduceMean, Add eps, Sqrt, Div, Mul gamma, Add beta) -> fc2."""
    g = Graph(opset=opset)
    h = g.matmul(g.input("x", [1, 5, 8]), 16, name="fc1")
    mean = g.node("ReduceMean", [h], "mean", axes=[-1], keepdims=1)
    centred = g.node("Sub", [h, mean], "centred")
    variance = g.node("ReduceMean", [g.node("Pow", [centred, g.const("two", np.float32(2.0))], "square")],
                      "variance", axes=[-1], keepdims=1)
    spread = g.node("Sqrt", [g.scalar("Add", variance, 1e-5, name="eps")], "spread")
    normed = g.node("Div", [centred, spread], "normed")
    h = g.node("Add", [g.node("Mul", [normed, g.weight("gamma", [16])], "scale"), g.weight("beta", [16])], "shift")
    return g.build(g.matmul(g.relu(h), 8, name="fc2"))


def test_decomposed_layer_norm_freezes_by_default_and_says_why():
    check_frozen(decomposed_layer_norm_model(), "fc1", 16, "mean", "--prune-layernorm")


def test_decomposed_layer_norm_rides_along_on_request():
    check_rule(decomposed_layer_norm_model(), [("fc1", 16)],
               {("scale", 1): (8,), ("shift", 1): (8,), ("fc2", 1): (8, 8)}, lossless=False, prune_layernorm=True)


# -- Element-wise ------------------------------------------------------------------------------

# (op type, attributes, opset, f(0) == 0)
ACTIVATIONS = [
    ("Relu", {}, 17, True),
    ("Sigmoid", {}, 17, False),
    ("HardSigmoid", {"alpha": 0.2, "beta": 0.5}, 17, False),
    ("HardSwish", {}, 17, True),
    ("LeakyRelu", {"alpha": 0.1}, 17, True),
    ("Selu", {}, 17, True),
    ("Elu", {}, 17, True),
    ("Gelu", {}, 20, True),
    ("Tanh", {}, 17, True),
    ("Mish", {}, 18, True),
    ("Softplus", {}, 17, False),
    ("Softsign", {}, 17, True),
    ("Celu", {}, 17, True),
    ("Neg", {}, 17, True),
    ("Abs", {}, 17, True),
    ("Sin", {}, 17, True),
    ("ThresholdedRelu", {"alpha": 0.1}, 17, True),
    ("Shrink", {"lambd": 0.1}, 17, True),
    ("Floor", {}, 17, True),
    ("Exp", {}, 17, False),
]


@pytest.mark.parametrize("op_type, attributes, opset, zero_to_zero", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_passes_channels_through(op_type, attributes, opset, zero_to_zero):
    g = Graph(opset=opset)
    h = g.act(op_type, g.conv(g.input("x", [1, 3, 8, 8]), 8, name="conv1"), name="act", **attributes)
    model = finish(g, h)
    check_rule(model, [("conv1", 8)], {("conv1", 1): (4, 3, 3, 3), ("conv_out", 1): (2, 4, 3, 3)},
               lossless=zero_to_zero)


def test_clip_with_bound_inputs():
    g = Graph()
    c = g.conv(g.input("x", [1, 3, 8, 8]), 8, name="conv1")
    h = g.node("Clip", [c, g.const("low", np.float32(0)), g.const("high", np.float32(6))], "relu6")
    check_rule(finish(g, h), [("conv1", 8)], {("conv_out", 1): (2, 4, 3, 3)})


def test_mish_and_softplus_decomposed():
    """x * tanh(softplus(x)): the Mul ties a tensor with a function of itself."""
    g = Graph()
    c = g.conv(g.input("x", [1, 3, 8, 8]), 8, name="conv1")
    h = g.node("Mul", [c, g.act("Tanh", g.act("Softplus", c, name="softplus"))], "mish")
    check_rule(finish(g, h), [("conv1", 8)], {("conv_out", 1): (2, 4, 3, 3)})


def test_prelu_slope_is_sliced():
    g = Graph()
    h = g.prelu(g.conv(g.input("x", [1, 3, 8, 8]), 8, name="conv1"), name="prelu")
    check_rule(finish(g, h), [("conv1", 8)], {("prelu", 1): (4, 1, 1)})


def residual(op_type: str) -> onnx.ModelProto:
    g = Graph()
    h = trunk(g)
    joined = g.node(op_type, [g.conv(h, 8, name="left"), g.conv(h, 8, name="right")], "join")
    return finish(g, g.relu(joined))


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean"])
def test_two_branches_join_one_group(op_type):
    model = residual(op_type)
    group = expect_group(analyze(model), "left", 8)
    assert {m.use.node for m in group.producers} == {"left", "right"}
    # 0 / 0 is NaN: a Div of two zeroed branches is not lossless.
    check_rule(model, [], {("left", 1): (4, 4, 3, 3), ("right", 1): (4, 4, 3, 3), ("conv_out", 1): (2, 4, 3, 3)},
               lossless=op_type != "Div")


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div"])
def test_per_channel_constant_is_sliced(op_type):
    g = Graph()  # (right after the conv, an Add would fold into its bias: see test_normalize)
    h = g.per_channel(op_type, g.relu(g.conv(g.input("x", [1, 3, 8, 8]), 8, name="conv1")), name="scale")
    model = finish(g, h)
    group = expect_group(analyze(model), "conv1", 8)
    assert [m.use.tensor for m in group.params if m.use.node == "scale"] == ["scale_c"]
    check_rule(model, [], {("scale", 1): (4, 1, 1)})


@pytest.mark.parametrize("op_type, zero_to_zero", [("Add", False), ("Sub", False), ("Mul", True), ("Div", True)])
def test_scalar_constant_broadcasts(op_type, zero_to_zero):
    g = Graph()
    h = g.scalar(op_type, g.relu(g.conv(g.input("x", [1, 3, 8, 8]), 8, name="conv1")), name="scale")
    check_rule(finish(g, h), [("conv1", 8)], {("scale", 1): ()}, lossless=zero_to_zero)


def test_pow_by_a_scalar():
    g = Graph()
    h = g.node("Pow", [trunk(g), g.const("two", np.float32(2))], "square")
    check_rule(finish(g, h), [("conv1", 8)], {("conv_out", 1): (2, 4, 3, 3)})


def test_where_with_a_tracked_condition():
    """Where(Greater(a, 0), a, 0): the comparison carries a's channels into the condition."""
    g = Graph()
    a = g.conv(trunk(g), 8, name="conv2")
    positive = g.node("Greater", [a, g.const("zero", np.float32(0))], "positive")
    model = finish(g, g.node("Where", [positive, a, g.const("fill", np.float32(0))], "where"))
    check_rule(model, [("conv1", 8), ("conv2", 8)], {("conv2", 1): (4, 4, 3, 3), ("conv_out", 1): (2, 4, 3, 3)})


def test_a_tensor_joined_with_itself():
    """Concat([h, h]) and Add(h, h): one group, its channels at two places."""
    g = Graph()
    h = trunk(g)
    model = finish(g, g.concat([g.add(h, h, name="double"), h], name="cat"))
    group = expect_group(analyze(model), "conv1", 8)
    assert [m.offset for m in group.consumers] == [0, 8]
    check_rule(model, [], {("conv_out", 1): (2, 8, 3, 3)})


def test_where_with_a_broadcast_condition():
    g = Graph()
    h = trunk(g)
    condition = g.const("cond", np.random.default_rng(0).random((1, 1, 8, 8)) > 0.5)
    joined = g.node("Where", [condition, g.conv(h, 8, name="left"), g.conv(h, 8, name="right")], "where")
    model = finish(g, joined)
    group = expect_group(analyze(model), "left", 8)
    assert {m.use.node for m in group.producers} == {"left", "right"}
    check_rule(model, [], {("right", 1): (4, 4, 3, 3)})


def test_untracked_full_width_operand_from_an_input_is_gathered():
    """A full-width operand computed from no pruned channel (here a second input) is sliced by a
    Gather where it is read (tests/channels/test_side_inputs.py has the computed cases)."""
    g = Graph()
    c = g.conv(g.input("x", [1, 3, 8, 8]), 8, name="conv1")
    other = g.input("z", [1, 8, 8, 8])
    model = finish(g, g.node("Add", [c, other], "add_input"))
    expect_group(analyze(model), "conv1", 8)
    pruned, _ = prune(model, ratio=0.5)
    assert_valid(pruned, model)  # exactness against the masked original: test_side_inputs.py
    assert [n.input[0] for n in pruned.graph.node if n.op_type == "Gather"] == ["z"]


# -- Concat, Split, Slice ---------------------------------------------------------------------


def test_concat_on_channel_axis_is_an_index_map():
    g = Graph()
    x = g.input("x", [1, 3, 8, 8])
    a = g.relu(g.conv(x, 4, name="conv_a"))
    b = g.relu(g.conv(x, 6, name="conv_b"))
    h = g.relu(g.conv(g.concat([a, b], name="cat"), 8, name="conv_c"))
    model = finish(g, h)
    analysis = analyze(model)
    group_a, group_b = expect_group(analysis, "conv_a", 4), expect_group(analysis, "conv_b", 6)
    assert group_a is not group_b
    assert [(m.use.node, m.offset) for m in group_a.consumers] == [("conv_c", 0)]
    assert [(m.use.node, m.offset) for m in group_b.consumers] == [("conv_c", 4)]
    check_rule(model, [], {("conv_a", 1): (2, 3, 3, 3), ("conv_b", 1): (3, 3, 3, 3), ("conv_c", 1): (4, 5, 3, 3)})


def test_concat_on_another_axis_ties_the_inputs():
    g = Graph()
    h = trunk(g)
    joined = g.concat([g.conv(h, 8, name="top"), g.conv(h, 8, name="bottom")], axis=2, name="cat_h")
    model = finish(g, g.relu(joined))
    group = expect_group(analyze(model), "top", 8)
    assert {m.use.node for m in group.producers} == {"top", "bottom"}
    check_rule(model, [], {("top", 1): (4, 4, 3, 3), ("bottom", 1): (4, 4, 3, 3), ("conv_out", 1): (2, 4, 3, 3)})


def test_concat_with_a_model_input_freezes_that_part_only():
    g = Graph()
    x = g.input("x", [1, 3, 8, 8])
    h = g.concat([x, g.relu(g.conv(x, 8, name="conv1"))], name="cat")
    model = finish(g, h)
    analysis = analyze(model)
    expect_group(analysis, "conv1", 8)
    frozen = [group for group in analysis.groups if any("concatenated input x" in r.reason for r in group.frozen)]
    assert len(frozen) == 1 and frozen[0].channels == 3
    check_rule(model, [], {("conv_out", 1): (2, 7, 3, 3)})


def c2f(style: str, opset: int, sizes=(2, 6)) -> onnx.ModelProto:
    """YOLOv8 C2f: conv1 -> Split -> (part 0, part 1 -> conv_m) -> Concat -> conv_out."""
    g = Graph(opset=opset)
    h = trunk(g)
    first, second = g.split(h, list(sizes), name="split", style=style)
    inner = g.relu(g.conv(second, 4, name="conv_m"))
    return finish(g, g.concat([first, second, inner], name="cat"))


@pytest.mark.parametrize("style, opset, sizes, kept", [
    ("input", 17, (2, 6), (1, 3)),
    ("attribute", 11, (2, 6), (1, 3)),
    ("num_outputs", 18, (4, 4), (2, 2)),
])
def test_split_on_channel_axis_cuts_the_producer(style, opset, sizes, kept):
    model = c2f(style, opset, sizes)
    analysis = analyze(model)
    parts = producer_groups(analysis, "conv1")
    assert [group.channels for group in parts] == list(sizes)
    assert all(group.prunable for group in parts)
    pruned, _ = check_rule(model, [], {("conv1", 1): (sum(kept), 3, 3, 3), ("conv_m", 1): (2, kept[1], 3, 3),
                                       ("conv_out", 1): (2, sum(kept) + 2, 3, 3)})
    split = next(n for n in pruned.graph.node if n.name == "split")
    if opset < 13:
        assert list(next(a for a in split.attribute if a.name == "split").ints) == list(kept)
    else:
        assert const_value(pruned, "split", 1) == list(kept)


def test_split_on_another_axis_passes_channels():
    g = Graph()
    h = trunk(g)
    top, bottom = g.split(h, [4, 4], axis=2, name="split_h")
    model = finish(g, g.concat([top, g.relu(bottom)], axis=2))
    check_rule(model, [("conv1", 8)], {("conv_out", 1): (2, 4, 3, 3)})


def test_slice_chunks_on_channel_axis():
    g = Graph()
    h = trunk(g)
    first, second = g.slice(h, 0, 4, name="chunk0"), g.slice(h, 4, 8, name="chunk1")
    inner = g.relu(g.conv(second, 4, name="conv_m"))
    model = finish(g, g.concat([first, inner]))
    analysis = analyze(model)
    assert [group.channels for group in producer_groups(analysis, "conv1")] == [4, 4]
    pruned, _ = check_rule(model, [], {("conv1", 1): (4, 3, 3, 3), ("conv_m", 1): (2, 2, 3, 3)})
    assert (const_value(pruned, "chunk0", 1), const_value(pruned, "chunk0", 2)) == ([0], [2])
    assert (const_value(pruned, "chunk1", 1), const_value(pruned, "chunk1", 2)) == ([2], [4])


def test_slice_on_another_axis_passes_channels():
    g = Graph()
    h = g.slice(trunk(g), 0, 4, axis=3, name="crop")
    check_rule(finish(g, h), [("conv1", 8)], {("conv_out", 1): (2, 4, 3, 3)})


def test_slice_without_axes_input_covers_leading_axes():
    g = Graph()
    h = g.node("Slice", [trunk(g), g.ints("starts", [0, 0, 0, 0]), g.ints("ends", [1, 8, 4, 4])], "crop")
    check_rule(finish(g, h), [("conv1", 8)], {("conv_out", 1): (2, 4, 3, 3)})


def test_slice_without_axes_input_on_a_leading_channel_axis():
    """Gemm features transposed to axis 0, then sliced by starts/ends alone."""
    g = Graph()
    h = g.relu(g.gemm(g.flatten(g.gap(trunk(g))), 8, name="fc1"))
    taken = g.node("Slice", [g.node("Transpose", [h], "t", perm=[1, 0]), g.ints("s", [0]), g.ints("e", [4])], "take")
    model = g.build(g.gemm(g.node("Transpose", [taken], "t_back", perm=[1, 0]), 3, name="fc2"))
    assert [group.channels for group in producer_groups(analyze(model), "fc1")] == [4, 4]
    pruned, _ = check_rule(model, [], {("fc1", 1): (4, 4), ("fc2", 1): (3, 2)})
    assert const_value(pruned, "take", 2) == [2]


def test_strided_slice_of_channels_freezes():
    g = Graph()
    h = trunk(g)
    inputs = [h, g.ints("s", [0]), g.ints("e", [8]), g.ints("a", [1]), g.ints("st", [2])]
    model = finish(g, g.node("Slice", inputs, "every_other"))
    check_frozen(model, "conv1", 8, "every_other", "strided")


# -- Spatial ops -----------------------------------------------------------------------------


@pytest.mark.parametrize("op_type, attributes", [
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    ("LpPool", {"kernel_shape": [2, 2]}),
    ("GlobalAveragePool", {}),
    ("GlobalMaxPool", {}),
    ("GlobalLpPool", {}),
])
def test_pooling_passes_channels(op_type, attributes):
    g = Graph()
    h = g.node(op_type, [trunk(g)], "pool", **attributes)
    check_rule(finish(g, h), [("conv1", 8)], {("conv_out", 1): (2, 4, 3, 3)})


def test_maxpool_indices_and_lrn_freeze():
    g = Graph()
    h = trunk(g)
    pooled, _ = g.node("MaxPool", [h], "pool_idx", outputs=2, kernel_shape=[2, 2])
    h2 = g.node("LRN", [g.relu(g.conv(pooled, 8, name="conv2"))], "lrn", size=3)
    model = finish(g, h2)
    analysis = analyze(model)
    expect_group(analysis, "conv1", 8, "pool_idx", "indices")
    expect_group(analysis, "conv2", 8, "lrn", "neighbouring")


def test_pad_spatial_only():
    g = Graph()
    pads = g.ints("pads", [0, 0, 1, 1, 0, 0, 1, 1])
    h = g.node("Pad", [trunk(g), pads], "pad")
    check_rule(finish(g, h), [("conv1", 8)], {("conv_out", 1): (2, 4, 3, 3)})


def test_pad_on_channel_axis_freezes():
    g = Graph()
    pads = g.ints("pads", [0, 1, 0, 0, 0, 1, 0, 0])
    h = g.node("Pad", [trunk(g), pads], "pad_c")
    model = finish(g, h)
    check_frozen(model, "conv1", 8, "pad_c", "pads the channel axis")
    pruned, report = prune(model, ratio=0.5)
    assert report.groups_pruned == 0 and weight_dims(pruned, "conv1") == (8, 3, 3, 3)


def test_resize_with_scales():
    g = Graph()
    scales = g.const("scales", np.array([1, 1, 2, 2], dtype=np.float32))
    h = g.node("Resize", [trunk(g), "", scales], "up", mode="nearest")
    check_rule(finish(g, h), [("conv1", 8)], {("conv_out", 1): (2, 4, 3, 3)})


def test_resize_with_sizes_rewrites_the_channel_count():
    g = Graph()
    sizes = g.ints("sizes", [1, 8, 16, 16])
    h = g.node("Resize", [trunk(g), "", "", sizes], "up", mode="nearest")
    pruned, _ = check_rule(finish(g, h), [("conv1", 8)], {("conv_out", 1): (2, 4, 3, 3)})
    assert const_value(pruned, "up", 3) == [1, 4, 16, 16]


def test_resize_with_sizes_read_from_its_own_input_follows_the_channels():
    """tf2onnx: sizes = Concat(Slice(Shape(x), 0, 2), [2H, 2W]): the count is read at run time
    from the pruned input itself, so nothing needs rewriting."""
    g = Graph()  # a symbolic batch: the shape read is not folded away
    x = g.relu(g.conv(g.input("x", ["batch", 3, 8, 8]), 8, name="conv1"), name="conv1_relu")
    batch_and_channels = g.node("Slice", [g.node("Shape", [x], "shape"), g.ints("start", [0]), g.ints("stop", [2])],
                                "n_c")
    sizes = g.concat([batch_and_channels, g.ints("hw", [16, 16])], axis=0, name="sizes")
    h = g.node("Resize", [x, "", "", sizes], "up", mode="nearest")
    model = g.build(g.node("Conv", [h, g.weight("conv_out_w", (2, 8, 3, 3))], "conv_out", pads=[1] * 4))
    check_rule(model, [("conv1", 8)], {("conv_out", 1): (2, 4, 3, 3)})


def test_resize_of_channel_axis_freezes():
    g = Graph()
    scales = g.const("scales", np.array([1, 2, 1, 1], dtype=np.float32))
    h = g.node("Resize", [trunk(g), "", scales], "up_c", mode="nearest")
    check_frozen(finish(g, h), "conv1", 8, "up_c", "resizes the channel axis")


@pytest.mark.parametrize("given", ["sizes", "scales"])
def test_resize_with_axes_attribute(given):
    """Opset 18: sizes/scales list only `axes`; the channel axis is not among them."""
    g = Graph(opset=18)
    values = g.ints("sizes", [16, 16]) if given == "sizes" else g.const("scales", np.array([2, 2], np.float32))
    inputs = [trunk(g), "", "", values] if given == "sizes" else [trunk(g), "", values]
    h = g.node("Resize", inputs, "up", mode="nearest", axes=[2, 3])
    pruned, _ = check_rule(finish(g, h), [("conv1", 8)], {("conv_out", 1): (2, 4, 3, 3)})
    if given == "sizes":
        assert const_value(pruned, "up", 3) == [16, 16]


def test_pad_with_axes_input():
    g = Graph(opset=18)
    h = g.node("Pad", [trunk(g), g.ints("pads", [1, 1, 1, 1]), "", g.ints("pad_axes", [2, 3])], "pad")
    check_rule(finish(g, h), [("conv1", 8)], {("conv_out", 1): (2, 4, 3, 3)})


@pytest.mark.parametrize("squeeze", ["gap", "reduce_mean"])
def test_squeeze_excite(squeeze):
    g = Graph()
    h = trunk(g)
    if squeeze == "gap":
        h = g.se_block(h, 4)
    else:
        pooled = g.reduce_mean(h, [2, 3], name="se_mean")
        inner = g.relu(g.conv(pooled, 4, kernel=1, name="se_conv1"))
        gate = g.act("Sigmoid", g.conv(inner, 8, kernel=1, name="se_conv2"))
        h = g.node("Mul", [h, gate], "se_mul")
    model = finish(g, h)
    analysis = analyze(model)
    trunk_group = expect_group(analysis, "conv1", 8)
    assert {m.use.node for m in trunk_group.producers} == {"conv1", "se_conv2"}
    assert {m.use.node for m in trunk_group.consumers} == {"se_conv1", "conv_out"}
    expect_group(analysis, "se_conv1", 4)
    check_rule(model, [], {("se_conv1", 1): (2, 4, 1, 1), ("se_conv2", 1): (4, 2, 1, 1),
                           ("conv_out", 1): (2, 4, 3, 3)})


def test_squeeze_excite_with_gemm_after_reduce_mean_without_keepdims():
    """timm-style SE: ReduceMean(keepdims=0) -> Gemm -> Relu -> Gemm -> HardSigmoid -> Unsqueeze -> Mul."""
    g = Graph()
    h = trunk(g)
    pooled = g.reduce_mean(h, [2, 3], keepdims=0, name="se_mean")
    gate = g.act("HardSigmoid", g.gemm(g.relu(g.gemm(pooled, 4, name="se_fc1")), 8, name="se_fc2"))
    gate = g.node("Unsqueeze", [gate, g.ints("se_axes", [2, 3])], "se_unsqueeze")
    model = finish(g, g.node("Mul", [h, gate], "se_mul"))
    group = expect_group(analyze(model), "conv1", 8)
    assert {m.use.node for m in group.producers} == {"conv1", "se_fc2"}
    check_rule(model, [("se_fc1", 4)], {("se_fc1", 1): (2, 4), ("se_fc2", 1): (4, 2)})


@pytest.mark.parametrize("opset", [17, 18])
def test_reduce_over_channel_axis_freezes(opset):
    g = Graph(opset=opset)
    h = trunk(g)
    mean = g.reduce_mean(h, [1], name="channel_mean")
    model = finish(g, g.node("Mul", [h, mean], "scale"))
    check_frozen(model, "conv1", 8, "channel_mean", "reduces over the channel axis")


@pytest.mark.parametrize("op_type, axis, frozen", [
    ("Softmax", 1, True), ("Softmax", 3, False), ("LogSoftmax", 1, True), ("Hardmax", 2, False),
    ("LpNormalization", 1, True), ("LpNormalization", 3, False), ("CumSum", 1, True), ("CumSum", 2, False),
])
def test_ops_along_one_axis_freeze_only_along_channels(op_type, axis, frozen):
    g = Graph()
    if op_type == "CumSum":
        h = g.node(op_type, [trunk(g), g.ints("cumsum_axis", axis)], "norm")
    else:
        h = g.node(op_type, [trunk(g)], "norm", axis=axis)
    model = finish(g, h)
    if frozen:
        check_frozen(model, "conv1", 8, "norm", "along the channel axis")
    else:  # (hard)max of an all-zero row is not 0: lossless only for the sums and norms
        check_rule(model, [("conv1", 8)], {("conv_out", 1): (2, 4, 3, 3)},
                   lossless=op_type not in ("Softmax", "Hardmax"))


# -- Flatten, Reshape, Transpose, Squeeze -------------------------------------------------------


def test_flatten_into_gemm_slices_runs_of_features():
    g = Graph()
    h = g.flatten(trunk(g, size=4), name="flatten")
    model = g.build(g.gemm(h, 3, name="fc"))
    group = expect_group(analyze(model), "conv1", 8)
    assert [(m.use.node, m.repeat) for m in group.consumers] == [("fc", 16)]
    check_rule(model, [], {("fc", 1): (3, 64)})


@pytest.mark.parametrize("target", [[1, 128], [1, -1]])
def test_reshape_flatten_into_gemm_rewrites_the_shape(target):
    g = Graph()
    h = g.reshape(trunk(g, size=4), target, name="flat")
    model = g.build(g.gemm(h, 3, name="fc"))
    pruned, _ = check_rule(model, [("conv1", 8)], {("fc", 1): (3, 64)})
    assert const_value(pruned, "flat", 1) == ([1, 64] if target[1] > 0 else [1, -1])


@pytest.mark.parametrize("flatten", ["reshape", "reshape-1", "flatten"])
def test_channels_last_flatten_tiles_the_channels(flatten):
    """Keras / tf2onnx: [N, H, W, C] flattened into a Dense: channel c is every C-th feature."""
    g = Graph()
    nhwc = g.node("Transpose", [trunk(g, size=4)], "to_nhwc", perm=[0, 2, 3, 1])  # [1, 4, 4, 8]
    if flatten == "flatten":
        h = g.node("Flatten", [nhwc], "flat", axis=1)
    else:
        h = g.reshape(nhwc, [1, 128] if flatten == "reshape" else [-1, 128], name="flat")
    model = g.build(g.gemm(h, 3, name="fc"))
    group = expect_group(analyze(model), "conv1", 8)
    assert [(m.use.node, m.offset, m.repeat) for m in group.consumers] == [("fc", 8 * i, 1) for i in range(16)]
    pruned, _ = check_rule(model, [], {("fc", 1): (3, 64)})
    if flatten != "flatten":
        assert const_value(pruned, "flat", 1) == [1 if flatten == "reshape" else -1, 64]


def test_permuted_shape_read_carries_the_count_to_its_new_position():
    """tf2onnx reads an NHWC shape as Gather(Shape(nchw), [0, 2, 3, 1]); keeping only the batch
    entry of it (for a flatten's target) leaves the channel count behind."""
    g = Graph()  # a symbolic batch: the shape read is not folded away
    conv = g.relu(g.conv(g.input("x", ["batch", 3, 4, 4]), 8, name="conv1"), name="conv1_relu")
    nhwc = g.node("Transpose", [conv], "to_nhwc", perm=[0, 2, 3, 1])
    permuted = g.node("Gather", [g.node("Shape", [conv], "shape"), g.ints("perm", [0, 2, 3, 1])], "permuted", axis=0)
    batch = g.node("Slice", [permuted, g.ints("start", [0]), g.ints("stop", [1])], "batch")
    target = g.concat([batch, g.ints("features", [128])], axis=0, name="target")
    flat = g.node("Reshape", [nhwc, target], "flat")
    model = g.build(g.node("Gemm", [flat, g.weight("fc_w", (3, 128))], "fc", transB=1))
    check_rule(model, [("conv1", 8)], {("fc", 1): (3, 64)})


def test_flatten_with_negative_axis_into_transposed_gemm():
    """Flatten(axis=-1) of [1,8,4,4] is [32,4]: channel c owns rows 4c..4c+3."""
    g = Graph()
    h = g.node("Flatten", [trunk(g, size=4)], "flat", axis=-1)
    model = g.build(g.node("Gemm", [h, g.weight("fc_w", (32, 5))], "fc", transA=1))
    group = expect_group(analyze(model), "conv1", 8)
    assert [(m.use.node, m.use.axis, m.repeat) for m in group.consumers] == [("fc", 0, 4)]
    check_rule(model, [], {("fc", 1): (16, 5)})


def test_reshape_that_mixes_channels_freezes():
    g = Graph()
    h = g.reshape(trunk(g), [1, 4, 128], name="regroup")  # rows of two channels' pixels each
    model = g.build(g.reshape(h, [1, 512], name="back"))
    check_frozen(model, "conv1", 8, "regroup", "splits or mixes channels")


def test_reshape_that_splits_channels_into_units_prunes_whole_units():
    """[1, 8, 8, 8] -> [1, 2, 4, 64] splits the 8 channels into 2 units of 4 (as heads of a
    transformer): the units are the group's channels, removed 4 channels at a time."""
    g = Graph()
    h = g.reshape(trunk(g), [1, 2, 4, 64], name="regroup")
    model = g.build(g.conv(g.reshape(h, [1, 8, 8, 8], name="back"), 3, name="conv_out"))
    group = expect_group(analyze(model), "conv1", 2)
    assert group.unit == 4
    pruned = assert_lossless(model, 0.5)
    assert weight_dims(pruned, "conv1")[0] == weight_dims(pruned, "conv_out")[1] == 4


def test_transpose_to_nhwc_then_matmul():
    g = Graph()
    h = g.node("Transpose", [trunk(g)], "to_nhwc", perm=[0, 2, 3, 1])
    model = g.build(g.matmul(h, 5, name="proj"))
    group = expect_group(analyze(model), "conv1", 8)
    assert [(m.use.node, m.use.axis) for m in group.consumers] == [("proj", 0)]
    check_rule(model, [], {("proj", 1): (4, 5)})


def test_squeeze_then_gemm_and_unsqueeze_then_conv():
    g = Graph()
    pooled = g.gap(trunk(g))
    flat = g.node("Squeeze", [pooled, g.ints("sq_axes", [2, 3])], "squeeze")
    hidden = g.relu(g.gemm(flat, 6, name="fc"))
    h = g.node("Unsqueeze", [hidden, g.ints("unsq_axes", [2, 3])], "unsqueeze")
    model = g.build(g.conv(h, 2, kernel=1, name="conv_out"))
    check_rule(model, [("conv1", 8), ("fc", 6)], {("fc", 1): (3, 4), ("conv_out", 1): (2, 3, 1, 1)})


def test_squeezing_the_channel_axis_freezes():
    g = Graph()
    h = g.conv(g.input("x", [1, 3, 8, 8]), 1, name="conv1")
    model = g.build(g.node("Squeeze", [h, g.ints("axes", [1])], "squeeze_c"))
    group = group_with(analyze(model), "conv1")
    assert any(r.node == "squeeze_c" for r in group.frozen)


def test_dropout_identity_cast_pass_through():
    g = Graph()
    h = g.node("Dropout", [trunk(g)], "dropout", outputs=2)[0]
    h = g.node("Identity", [h], "identity")
    h = g.node("Cast", [h], "cast", to=onnx.TensorProto.FLOAT)
    check_rule(finish(g, h), [("conv1", 8)], {("conv_out", 1): (2, 4, 3, 3)})


# -- Gather, Tile, Expand, Shape -----------------------------------------------------------------


def test_gather_along_channels_freezes_and_along_space_passes():
    g = Graph()
    h = trunk(g)
    rows = g.node("Gather", [h, g.ints("rows", [0, 2, 4, 6])], "gather_rows", axis=2)
    picked = g.node("Gather", [g.relu(g.conv(rows, 8, name="conv2")), g.ints("chans", [0, 1])], "gather_c", axis=1)
    model = g.build(picked)
    analysis = analyze(model)
    expect_group(analysis, "conv1", 8)
    expect_group(analysis, "conv2", 8, "gather_c", "gathers along the channel axis")
    check_rule(model, [], {("conv2", 1): (8, 4, 3, 3)})


def test_gather_of_every_channel_in_order_moves_them_and_counts_the_kept_ones():
    """The dynamo exporter's `as_strided` of pooled [C] features to [1, C, 1, 1] (ConvNeXt's
    head): a Gather with indices 0..C-1 along axis 1 of the indices."""
    g = Graph()
    h = trunk(g)
    pooled = g.reshape(g.gap(h), [-1], name="pooled")
    identity = g.ints("every_channel", np.arange(8).reshape(1, 8, 1, 1))
    strided = g.node("Gather", [pooled, identity], "as_strided", axis=0)
    pruned, _ = check_rule(finish(g, g.node("Mul", [h, strided], "scale")), [("conv1", 8)],
                           {("conv_out", 1): (2, 4, 3, 3)})
    assert const_value(pruned, "as_strided", 1) == np.arange(4).reshape(1, 4, 1, 1).tolist()

    g = Graph()
    h = trunk(g)
    reordered = g.ints("reordered", np.arange(8)[::-1].reshape(1, 8, 1, 1))
    strided = g.node("Gather", [g.reshape(g.gap(h), [-1]), reordered], "reorder", axis=0)
    check_frozen(finish(g, g.node("Mul", [h, strided], "scale")), "conv1", 8, "reorder",
                 "gathers along the channel axis")


def test_expand_rewrites_its_shape_and_tile_of_channels_copies_them():
    g = Graph()
    h = trunk(g)
    gate = g.node("Expand", [g.gap(h), g.ints("shape", [1, 8, 8, 8])], "expand")
    model = finish(g, g.node("Mul", [h, gate], "mul"))
    pruned, _ = check_rule(model, [("conv1", 8)], {("conv_out", 1): (2, 4, 3, 3)})
    assert const_value(pruned, "expand", 1) == [1, 4, 8, 8]

    g = Graph()  # two copies of the channels: the next conv reads each kept channel twice
    h = g.node("Tile", [trunk(g), g.ints("repeats", [1, 2, 1, 1])], "tile_c")
    pruned, _ = check_rule(finish(g, h), [("conv1", 8)], {("conv_out", 1): (2, 8, 3, 3)})
    assert const_value(pruned, "tile_c", 1) == [1, 2, 1, 1]


def symbolic_batch_trunk(g: Graph) -> str:
    """trunk() on x[N,3,8,8]: Shape reads stay in the graph (static ones are folded)."""
    return g.relu(g.conv(g.input("x", ["N", 3, 8, 8]), 8, name="conv1"))


def test_shape_reading_only_the_batch_size_does_not_freeze():
    g = Graph()
    h = symbolic_batch_trunk(g)
    batch = g.node("Gather", [g.node("Shape", [h], "shape"), g.ints("batch_index", [0])], "batch")
    size = g.node("Cast", [batch], "batch_float", to=onnx.TensorProto.FLOAT)
    model = g.build(g.conv(h, 2, name="conv_out"), size)
    pruned, _ = check_rule(model, [("conv1", 8)], {("conv1", 1): (4, 3, 3, 3)})
    assert run(pruned, random_feeds(model))["batch_float"].tolist() == [1]


@pytest.mark.parametrize("op_type", ["Shape", "Size"])
def test_channel_count_read_through_shape_or_size_freezes(op_type):
    g = Graph()
    h = symbolic_batch_trunk(g)
    if op_type == "Shape":
        read = g.node("ConstantOfShape", [g.node("Shape", [h], "shape")], "zeros_like")
    else:
        read = g.node("Cast", [g.node("Size", [h], "zeros_like")], "size_float", to=onnx.TensorProto.FLOAT)
    model = g.build(g.conv(h, 2, name="conv_out"), read)
    check_frozen(model, "conv1", 8, "zeros_like", "channel count")


# -- Unknown ops and outputs -------------------------------------------------------------------


def test_unknown_op_freezes_with_its_name():
    g = Graph()
    h = g.node("DepthToSpace", [trunk(g)], "d2s", blocksize=2)
    model = finish(g, h)
    check_frozen(model, "conv1", 8, "d2s", "DepthToSpace is not understood")
    pruned, report = prune(model, ratio=0.5)
    assert report.groups_pruned == 0 and weight_dims(pruned, "conv1") == (8, 3, 3, 3)


def test_custom_domain_op_freezes():
    g = Graph()
    g.extra_opsets["com.example"] = 1
    h = trunk(g)
    g.nodes.append(onnx.helper.make_node("Mystery", [h], ["mystery"], name="mystery", domain="com.example"))
    graph_output = onnx.helper.make_tensor_value_info("mystery", onnx.TensorProto.FLOAT, None)
    model = g._model([graph_output])
    check_frozen(model, "conv1", 8, "mystery", "Mystery is not understood", runs=False)  # no kernel


def test_conv_feeding_a_model_output_is_frozen():
    g = Graph()
    c1 = g.conv(g.input("x", [1, 3, 8, 8]), 8, name="conv1")
    model = g.build(g.conv(g.relu(c1), 2, name="conv_out"), c1)
    check_frozen(model, "conv1", 8, f"output {c1}", "feeds a model output")
    pruned, report = prune(model, ratio=0.5)
    assert report.groups_prunable == 0
    assert weight_dims(pruned, "conv1") == (8, 3, 3, 3)
    assert_valid(pruned, model)


# -- Frozen groups ---------------------------------------------------------------------------


def test_frozen_group_is_never_pruned():
    g = Graph()
    h = trunk(g)
    d2s = g.node("DepthToSpace", [g.relu(g.conv(h, 8, name="conv2"))], "d2s", blocksize=2)
    model = finish(g, g.relu(g.conv(d2s, 8, name="conv3")))
    for ratio, kept in ((0.5, 4), (0.75, 2)):
        pruned, _ = prune(model, ratio=ratio)
        assert weight_dims(pruned, "conv1")[0] == kept
        assert weight_dims(pruned, "conv2") == (8, kept, 3, 3)
        assert weight_dims(pruned, "conv3")[:2] == (kept, 2)


def test_gather_nd_keeps_channels_on_an_axis_its_index_tuples_do_not_reach():
    """Swin-V2's position bias as dynamo exports it: rows of a projected table picked with GatherND;
    the projection's output features follow the channels they are added to."""
    g = Graph()
    h = trunk(g)
    table = g.node("MatMul", [g.weight("table", (5, 2)), g.weight("table_proj_w", (2, 8))], "table_proj")
    row = g.node("GatherND", [table, g.ints("row_index", [[2]])], "pick_row")  # [1, 8]
    model = finish(g, g.add(h, g.reshape(row, [1, 8, 1, 1], name="row_4d"), name="with_bias"))
    # (the clean-up folds the table's constant-only projection into the picked row: no weight to look at)
    check_rule(model, [("conv1", 8), ("table_proj", 8)], {("conv_out", 1): (2, 4, 3, 3)})

    g = Graph()  # the index tuples run over the channels: they pick some of them
    h = trunk(g)
    table = g.node("Transpose", [g.node("MatMul", [g.weight("table", (5, 2)), g.weight("table_proj_w", (2, 8))],
                                        "table_proj")], "by_channel", perm=[1, 0])
    picked = g.node("GatherND", [table, g.ints("channel_index", [[1], [3]])], "pick_channels")  # [2, 5]
    model = g.build(g.conv(h, 2, name="conv_out"), picked)
    check_frozen(model, "table_proj", 8, "pick_channels", "index tuples over the channel axis", runs=False)


def test_scatter_nd_keeps_channels_on_an_axis_its_index_tuples_do_not_reach():
    """x[0] = 2 * x written as ScatterND (the dynamo exporter's slice assignment): the written
    values carry the same channels, tied with the data's."""
    g = Graph()
    h = trunk(g)
    written = g.node("ScatterND", [h, g.ints("first_sample", [[0]]), g.scalar("Mul", h, 2.0, name="doubled")],
                     "assign")
    check_rule(finish(g, written), [("conv1", 8)], {("conv_out", 1): (2, 4, 3, 3)})

    g = Graph()  # the index tuples reach the channel axis: they write single channels
    h = trunk(g)
    written = g.node("ScatterND", [h, g.ints("one_channel", [[0, 3]]), g.weight("row", (1, 8, 8), scale=1.0)],
                     "assign_channel")
    check_frozen(finish(g, written), "conv1", 8, "assign_channel", "scatters along the channel axis")
