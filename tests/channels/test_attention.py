"""Whole attention heads: q, k and v lose the same heads, the output projection the matching
inputs, every head count in a Reshape target follows; batch and sequence stay symbolic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import group_with, run, weight_dims
from graphs import Graph
from onnx import TensorProto, helper, numpy_helper

from onnx_slim.apply.surgery import apply_plan, refresh_shapes
from onnx_slim.channels.analysis import analyze
from onnx_slim.data.masking import MaskedModel
from onnx_slim.pipeline.prune import prune
from onnx_slim.plan.planner import CostModel

WIDTH, HEADS, HEAD_DIM = 32, 4, 8


def _dim(g: Graph, tensor: str, index: int) -> str:
    """Unsqueeze(Gather(Shape(tensor), index)): one dim read at run time, as the TorchScript exporter writes it."""
    name = f"{tensor}_dim{index}_{g._count}"
    gathered = g.node("Gather", [g.node("Shape", [tensor]), g.ints(f"{name}_index", index)], axis=0)
    return g.node("Unsqueeze", [gathered, g.ints(f"{name}_axes", [0])])


def _target(g: Graph, x: str, name: str, dims) -> str:
    """[batch, sequence, *dims], batch and sequence read from `x` at run time."""
    return g.concat([_dim(g, x, 0), _dim(g, x, 1), g.ints(f"{name}_dims", dims)], axis=0, name=name)


def _linear(g: Graph, x: str, features: int, name: str, in_features: int = WIDTH) -> str:
    """MatMul + Add, as the exporters write a Linear on 3-D input (sizes given: inference
    cannot see through the computed targets)."""
    projected = g.node("MatMul", [x, g.weight(f"{name}_w", (in_features, features))], name)
    return g.node("Add", [projected, g.weight(f"{name}_bias_b", (features,))], f"{name}_bias")


def _attention(g: Graph, q: str, k: str, v: str, x: str, name: str = "attn", bias: str | None = None) -> str:
    """softmax(q kᵀ / sqrt(D) [+ bias]) v on [B, H, S, D] inputs, heads merged back to [B, S, H*D]."""
    scores = g.node("MatMul", [q, g.node("Transpose", [k], f"{name}_kt", perm=[0, 1, 3, 2])], f"{name}_scores")
    scaled = g.node("Mul", [scores, g.const(f"{name}_scale_value", np.float32(HEAD_DIM ** -0.5))], f"{name}_scale")
    if bias is not None:
        scaled = g.node("Add", [scaled, bias], f"{name}_bias_add")
    probabilities = g.node("Softmax", [scaled], f"{name}_softmax", axis=-1)
    context = g.node("MatMul", [probabilities, v], f"{name}_context")
    merged = g.node("Transpose", [context], f"{name}_merge_t", perm=[0, 2, 1, 3])
    return g.node("Reshape", [merged, _target(g, x, f"{name}_merge_shape", [HEADS * HEAD_DIM])], f"{name}_merge")


def _qkv_heads(g: Graph, x: str, prefix: str = "") -> list[str]:
    """q, k, v projections of `x`, each viewed as [B, S, H, D] (a target computed from Shape) and
    transposed to [B, H, S, D]."""
    heads = []
    for part in (f"{prefix}q", f"{prefix}k", f"{prefix}v"):
        projected = _linear(g, x, HEADS * HEAD_DIM, part)
        split = g.node("Reshape", [projected, _target(g, x, f"{part}_shape", [HEADS, HEAD_DIM])], f"{part}_heads")
        heads.append(g.node("Transpose", [split], f"{part}_t", perm=[0, 2, 1, 3]))
    return heads


def _model(g: Graph, y: str) -> onnx.ModelProto:
    """Static inference cannot follow the computed targets: the output is declared."""
    output = helper.make_tensor_value_info(y, TensorProto.FLOAT, ["batch", "sequence", WIDTH])
    model = g._model([output])
    onnx.checker.check_model(model, full_check=True)
    return model


def bert_attention() -> onnx.ModelProto:
    """BERT self-attention as TorchScript exports it: separate q, k, v projections (MatMul + Add),
    each viewed as [B, S, H, D] through a target computed from Shape, then the output projection
    and the residual."""
    g = Graph(seed=4)
    x = g.input("x", ["batch", "sequence", WIDTH])
    heads = _qkv_heads(g, x)
    out = _linear(g, _attention(g, *heads, x), WIDTH, "out")
    return _model(g, g.add(out, x, name="residual"))


def shared_bias_encoder() -> onnx.ModelProto:
    """Two BERT-style attention blocks whose scores both add one relative-position bias
    [1, H, S, S], computed once from the sequence length (MPNet, T5 and DeBERTa-style exports):
    a table sliced to the length read through Shape."""
    g = Graph(seed=5)
    x = g.input("x", ["batch", "sequence", WIDTH])
    length = _dim(g, x, 1)
    bias = g.node("Slice", [g.weight("bias_table", (1, HEADS, 64, 64)), g.ints("bias_starts", [0, 0]),
                            g.concat([length, length], axis=0, name="bias_ends"), g.ints("bias_axes", [2, 3])],
                  "position_bias")
    h = x
    for block in ("b1", "b2"):
        heads = _qkv_heads(g, h, prefix=f"{block}_")
        out = _linear(g, _attention(g, *heads, h, name=f"{block}_attn", bias=bias), WIDTH, f"{block}_out")
        h = g.add(out, h, name=f"{block}_residual")
    return _model(g, g.node("Identity", [h], "residual"))


def fused_qkv_attention(style: str) -> onnx.ModelProto:
    """One qkv projection [3*H*D], split into q, k, v either as timm does (a 5-D view
    [B, S, 3, H, D], permuted, then a Gather per part) or by a Split of the features, each
    part viewed as [B, S, H, D] with a constant target (0 copies batch and sequence)."""
    g = Graph(seed=6)
    x = g.input("x", ["batch", "sequence", WIDTH])
    qkv = _linear(g, x, 3 * HEADS * HEAD_DIM, "qkv")
    if style == "timm":
        split = g.node("Reshape", [qkv, _target(g, x, "qkv_shape", [3, HEADS, HEAD_DIM])], "qkv_heads")
        parts = g.node("Transpose", [split], "qkv_t", perm=[2, 0, 3, 1, 4])  # [3, B, H, S, D]
        heads = [g.node("Gather", [parts, g.ints(f"pick{i}_index", i)], f"pick{i}", axis=0) for i in range(3)]
    else:
        thirds = g.split(qkv, [HEADS * HEAD_DIM] * 3, axis=2, name="qkv_split")
        shape = [0, 0, HEADS, HEAD_DIM]
        heads = [g.node("Transpose", [g.reshape(part, shape, name=f"{p}_heads")], f"{p}_t", perm=[0, 2, 1, 3])
                 for p, part in zip("qkv", thirds)]
    out = _linear(g, _attention(g, *heads, x), WIDTH, "out")
    return _model(g, g.add(out, x, name="residual"))


def _feeds(batch: int, sequence: int, seed: int = 0) -> dict:
    return {"x": np.random.default_rng(seed).standard_normal((batch, sequence, WIDTH)).astype(np.float32)}


def _prune_heads(model: onnx.ModelProto, producer: str, heads: list[int]):
    """(pruned model, masked model with the same plan, plan): `heads` removed from `producer`'s group."""
    analysis = analyze(model)
    group = group_with(analysis.channels, producer)
    plan = {group.root: heads}
    masked = MaskedModel(analysis, [group])  # built before surgery edits the analyzed model
    apply_plan(analysis.model, analysis.channels, plan)
    refresh_shapes(analysis.model)
    onnx.checker.check_model(analysis.model, full_check=True)
    return analysis.model, masked, plan


def _assert_equals_masked(pruned: onnx.ModelProto, masked: MaskedModel, plan: dict) -> None:
    """At two batch sizes and sequence lengths, the pruned model gives the original's outputs
    with the removed heads zeroed in front of the output projection."""
    for batch, sequence in ((1, 7), (3, 20)):
        feeds = _feeds(batch, sequence)
        actual = run(pruned, feeds)["residual"]
        assert actual.shape == (batch, sequence, WIDTH)
        np.testing.assert_allclose(actual, masked.run(feeds, plan)["residual"], rtol=1e-5, atol=1e-5)


def _constant_of(model: onnx.ModelProto, node_name: str) -> list:
    """The constant input values of a Concat (the computed target's fixed entries) or a Reshape."""
    node = next(n for n in model.graph.node if n.name == node_name)
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return [values[name].tolist() for name in node.input if name in values]


def test_q_k_v_and_the_output_projection_form_one_group_of_heads():
    analysis = analyze(bert_attention())
    group = group_with(analysis.channels, "q")
    assert group.prunable, [str(reason) for reason in group.frozen]
    assert (group.channels, group.unit) == (HEADS, HEAD_DIM)
    assert analysis.to_dict()["groups"][group.id]["unit"] == HEAD_DIM  # inspect --json says so
    assert {m.use.node for m in group.producers} == {"q", "k", "v"}
    assert {m.use.node for m in group.consumers} == {"out"}
    assert {m.use.node for m in group.params} == {"q_bias", "k_bias", "v_bias"}
    # The attention MatMuls shrink with the heads too: their MACs are the group's.
    shrinking = analysis.group_macs(group)
    weights = 4 * 64 * WIDTH * WIDTH  # q, k, v, out at the default sequence of 64
    assert shrinking == weights + 2 * 64 * 64 * WIDTH
    cost = CostModel.of(analysis)
    assert cost.macs - cost.macs_after({group.root: [0, 1]}) == shrinking // 2


def test_pruned_heads_equal_the_masked_original_at_any_batch_and_sequence():
    pruned, masked, plan = _prune_heads(bert_attention(), "q", [1, 3])
    kept = 2 * HEAD_DIM
    assert weight_dims(pruned, "q") == weight_dims(pruned, "k") == weight_dims(pruned, "v") == (WIDTH, kept)
    assert weight_dims(pruned, "q_bias") == (kept,)
    assert weight_dims(pruned, "out") == (kept, WIDTH)
    for part in "qkv":  # the head count of every computed target follows; D stays
        assert _constant_of(pruned, f"{part}_shape") == [[2, HEAD_DIM]]
    assert _constant_of(pruned, "attn_merge_shape") == [[kept]]
    assert [d.dim_param for d in pruned.graph.input[0].type.tensor_type.shape.dim[:2]] == ["batch", "sequence"]
    _assert_equals_masked(pruned, masked, plan)


def test_the_removed_heads_are_whole_heads_of_q_k_and_v():
    model = bert_attention()
    pruned, _, _ = _prune_heads(model, "q", [1, 3])
    original = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    after = {init.name: numpy_helper.to_array(init) for init in pruned.graph.initializer}
    kept = list(range(0, HEAD_DIM)) + list(range(2 * HEAD_DIM, 3 * HEAD_DIM))
    np.testing.assert_array_equal(after["k_w"], original["k_w"][:, kept])
    np.testing.assert_array_equal(after["out_w"], original["out_w"][kept, :])


@pytest.mark.parametrize("style", ["timm", "split"])
def test_fused_qkv_loses_the_same_heads_in_each_third(style):
    model = fused_qkv_attention(style)
    analysis = analyze(model)
    group = group_with(analysis.channels, "qkv")
    assert group.prunable, [str(reason) for reason in group.frozen]
    assert (group.channels, group.unit) == (HEADS, HEAD_DIM)
    pruned, masked, plan = _prune_heads(model, "qkv", [0, 2])
    assert weight_dims(pruned, "qkv") == (WIDTH, 3 * 2 * HEAD_DIM)
    assert weight_dims(pruned, "out") == (2 * HEAD_DIM, WIDTH)
    if style == "timm":
        assert _constant_of(pruned, "qkv_shape") == [[3, 2, HEAD_DIM]]
    else:
        assert _constant_of(pruned, "q_heads") == [[0, 0, 2, HEAD_DIM]]
    _assert_equals_masked(pruned, masked, plan)


def test_heads_that_straddle_a_slice_of_the_projection_stay_frozen():
    """12 of q's 32 features are also read by a Slice: a head of 8 cannot follow that cut."""
    g = Graph(seed=4)
    x = g.input("x", ["batch", "sequence", WIDTH])
    heads = []
    for part in ("q", "k", "v"):
        projected = _linear(g, x, HEADS * HEAD_DIM, part)
        if part == "q":
            side = g.node("Slice", [projected, g.ints("side_start", [0]), g.ints("side_end", [12]),
                                    g.ints("side_axes", [2])], "side")
        split = g.node("Reshape", [projected, _target(g, x, f"{part}_shape", [HEADS, HEAD_DIM])], f"{part}_heads")
        heads.append(g.node("Transpose", [split], f"{part}_t", perm=[0, 2, 1, 3]))
    out = _linear(g, _attention(g, *heads, x), WIDTH, "out")
    side_out = _linear(g, side, WIDTH, "side_proj", in_features=12)
    model = _model(g, g.add(g.add(out, side_out, name="join"), x, name="residual"))
    analysis = analyze(model)
    frozen = [group for group in analysis.groups if any(m.use.node == "q" for m in group.producers)]
    reasons = [str(reason) for group in frozen for reason in group.frozen]
    assert any("q_heads" in reason and "do not line up" in reason for reason in reasons), reasons
    pruned, report = prune(model, ratio=0.5)
    assert weight_dims(pruned, "q") == (WIDTH, WIDTH)
    assert weight_dims(pruned, "out") == (WIDTH, WIDTH)


MODELS = Path(__file__).parent.parent.parent / "models"


@pytest.mark.parametrize("name", ["transformer_torchscript", "transformer_dynamo", "vit_torchscript", "vit_dynamo"])
def test_heads_of_both_exporters_prune_and_equal_the_masked_original(name):
    """Hand-written attention and timm's fused qkv with scaled_dot_product_attention, as
    TorchScript and dynamo export them (scripts/make_models.py): every block's heads are one
    prunable group, and removing heads 0 and 2 gives the masked original's outputs."""
    model = onnx.load(str(MODELS / f"{name}.onnx"))
    analysis = analyze(model)
    heads = [group for group in analysis.channels.prunable_groups() if group.unit > 1]
    assert [(group.channels, group.unit) for group in heads] == [(4, 8), (4, 8)]
    plan = {group.root: [0, 2] for group in heads}
    masked = MaskedModel(analysis, heads)
    apply_plan(analysis.model, analysis.channels, plan)
    refresh_shapes(analysis.model)
    onnx.checker.check_model(analysis.model, full_check=True)
    rng = np.random.default_rng(0)
    (tokens,) = [value for value in model.graph.input]
    fixed = [d.dim_value for d in tokens.type.tensor_type.shape.dim[1:]]
    for batch in (1, 3):
        feeds = {tokens.name: rng.standard_normal((batch, *fixed)).astype(np.float32)}
        (actual,) = run(analysis.model, feeds).values()
        (expected,) = masked.run(feeds, plan).values()
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_a_channel_count_carried_into_another_tensors_target_freezes():
    """Shape(q)[2:] concatenated into the Reshape target of the input would resize the input
    after pruning: the count may only come back to q's own channels."""
    g = Graph(seed=2)
    x = g.input("x", ["batch", "sequence", WIDTH])
    q = _linear(g, x, WIDTH, "q")
    count = g.node("Slice", [g.node("Shape", [q], "q_shape"), g.ints("from", [2]), g.ints("to", [3])], "q_count")
    flat = g.node("Reshape", [x, g.concat([g.ints("rows", [-1]), count], axis=0, name="flat_shape")], "flat")
    back = g.node("Reshape", [flat, _target(g, x, "back_shape", [WIDTH])], "back")
    model = _model(g, g.add(_linear(g, q, WIDTH, "out"), back, name="residual"))
    group = group_with(analyze(model).channels, "q")
    assert any(reason.node == "flat" and "through Shape" in reason.reason for reason in group.frozen), group.frozen


def test_heads_reading_a_shared_computed_position_bias_prune_layer_by_layer():
    """The bias is computed from nothing pruning resizes: each block keeps its own heads of it
    through a Gather, so the two blocks lose different heads and the bias stays whole."""
    model = shared_bias_encoder()
    analysis = analyze(model)
    first, second = group_with(analysis.channels, "b1_q"), group_with(analysis.channels, "b2_q")
    assert first.prunable and second.prunable, [str(r) for r in first.frozen + second.frozen]
    assert first.root != second.root
    plan = {first.root: [1], second.root: [0, 2]}
    masked = MaskedModel(analysis, [first, second])
    apply_plan(analysis.model, analysis.channels, plan)
    refresh_shapes(analysis.model)
    onnx.checker.check_model(analysis.model, full_check=True)
    pruned = analysis.model
    gathers = {n.name: n for n in pruned.graph.node if n.op_type == "Gather" and n.input[0] == "position_bias"}
    kept = {name: numpy_helper.to_array(next(i for i in pruned.graph.initializer if i.name == n.input[1])).tolist()
            for name, n in gathers.items()}
    assert sorted(kept.values()) == [[0, 2, 3], [1, 3]]
    assert weight_dims(pruned, "position_bias", 0) == (1, HEADS, 64, 64)  # the table itself is not sliced
    _assert_equals_masked(pruned, masked, plan)


def test_a_side_input_computed_from_pruned_channels_still_freezes():
    """An Add partner that spans the heads but comes from the heads' own values (here through
    an op with no channel rule) cannot be sliced by index: the heads stay whole, with the reason."""
    g = Graph(seed=5)
    x = g.input("x", ["batch", "sequence", WIDTH])
    heads = _qkv_heads(g, x)
    scores = g.node("MatMul", [heads[0], g.node("Transpose", [heads[1]], "kt", perm=[0, 1, 3, 2])], "scores")
    odd = g.node("Atan", [scores], "odd")  # no channel rule: its input freezes
    probabilities = g.node("Softmax", [g.node("Add", [scores, odd], "with_odd")], "softmax", axis=-1)
    merged = g.node("Transpose", [g.node("MatMul", [probabilities, heads[2]], "context")], "merge_t", perm=[0, 2, 1, 3])
    out = _linear(g, g.node("Reshape", [merged, _target(g, x, "merge_shape", [HEADS * HEAD_DIM])], "merge"),
                  WIDTH, "out")
    analysis = analyze(_model(g, g.add(out, x, name="residual")))
    group = group_with(analysis.channels, "q")
    assert not group.prunable
    assert any("Atan" in str(reason) for reason in group.frozen), [str(r) for r in group.frozen]
    assert any("with_odd" in str(reason) and "not tracked" in str(reason) for reason in group.frozen)


KV_HEADS, REPEATS = 2, 2  # grouped-query attention: each k/v head serves REPEATS query heads


def _repeat_kv(g: Graph, h: str, name: str, style: str, kv_heads: int = KV_HEADS) -> str:
    """transformers' repeat_kv on [B, KV, S, D]: h[:, :, None].expand(B, KV, REPEATS, S, D)
    .reshape(B, KV * REPEATS, S, D). TorchScript reads KV from h's shape (a scalar Gather),
    normalizes the expand sizes with Where(Equal(sizes, -1), 1, sizes) and multiplies the count
    by REPEATS for the reshape; dynamo writes both counts as constants."""
    repeats = HEADS // kv_heads
    unsqueezed = g.node("Unsqueeze", [h, g.ints(f"{name}_new_axis", [2])], f"{name}_unsqueeze")
    batch, sequence = _dim(g, h, 0), _dim(g, h, 2)
    if style == "torchscript":
        count = g.node("Gather", [g.node("Shape", [h], f"{name}_shape_of"), g.ints(f"{name}_kv_index", 1)],
                       f"{name}_kv_count", axis=0)
        kv = g.node("Unsqueeze", [count, g.ints(f"{name}_kv_axes", [0])])
        sizes = g.node("Reshape", [g.concat([batch, kv, g.ints(f"{name}_rep", [repeats]), sequence,
                                             g.ints(f"{name}_d", [HEAD_DIM])], axis=0), g.ints(f"{name}_flat", [-1])])
        unset = g.node("Equal", [sizes, g.ints(f"{name}_minus_ones", [-1] * 5)])
        shape = g.node("Where", [unset, g.ints(f"{name}_ones", [1] * 5), sizes], f"{name}_expand_shape")
        repeated = g.node("Mul", [count, g.ints(f"{name}_times", repeats)], f"{name}_rep_count")
        heads = g.node("Unsqueeze", [repeated, g.ints(f"{name}_heads_axes", [0])])
    else:
        shape = g.concat([batch, g.ints(f"{name}_kv", [kv_heads]), g.ints(f"{name}_rep", [repeats]), sequence,
                          g.ints(f"{name}_d", [HEAD_DIM])], axis=0, name=f"{name}_expand_shape")
        heads = g.ints(f"{name}_all_heads", [HEADS])
    expanded = g.node("Expand", [unsqueezed, shape], f"{name}_expand")
    target = g.concat([batch, heads, sequence, g.ints(f"{name}_target_d", [HEAD_DIM])], axis=0,
                      name=f"{name}_merge_shape")
    return g.node("Reshape", [expanded, target], f"{name}_repeated")


def gqa_attention(style: str, kv_heads: int = KV_HEADS) -> onnx.ModelProto:
    """LLaMA-style grouped-query attention: HEADS query heads, `kv_heads` key/value heads repeated
    (one: multi-query attention)."""
    g = Graph(seed=8)
    x = g.input("x", ["batch", "sequence", WIDTH])
    q = _linear(g, x, HEADS * HEAD_DIM, "q")
    heads = [g.node("Transpose", [g.node("Reshape", [q, _target(g, x, "q_shape", [HEADS, HEAD_DIM])], "q_heads")],
                    "q_t", perm=[0, 2, 1, 3])]
    for part in "kv":
        projected = _linear(g, x, kv_heads * HEAD_DIM, part)
        # view(*input_shape, -1, head_dim): the head count is left to the Reshape, so static inference
        # loses it, and TorchScript's repeat_kv reads it back through Shape at run time
        split = g.node("Reshape", [projected, _target(g, x, f"{part}_shape", [-1, HEAD_DIM])], f"{part}_heads")
        heads.append(_repeat_kv(g, g.node("Transpose", [split], f"{part}_t", perm=[0, 2, 1, 3]), part, style,
                                kv_heads))
    out = _linear(g, _attention(g, *heads, x), WIDTH, "out")
    return _model(g, g.add(out, x, name="residual"))


@pytest.mark.parametrize("style", ["torchscript", "dynamo"])
def test_grouped_query_attention_loses_a_kv_head_with_the_query_heads_it_serves(style):
    analysis = analyze(gqa_attention(style))
    group = group_with(analysis.channels, "k")
    assert group.prunable, [str(reason) for reason in group.frozen]
    assert group.channels == KV_HEADS
    assert {m.use.node for m in group.producers} == {"q", "k", "v"}
    pruned, masked, plan = _prune_heads(gqa_attention(style), "k", [1])
    assert weight_dims(pruned, "k") == weight_dims(pruned, "v") == (WIDTH, HEAD_DIM)
    assert weight_dims(pruned, "q") == (WIDTH, REPEATS * HEAD_DIM)  # query heads 2 and 3 went with kv head 1
    assert weight_dims(pruned, "out") == (REPEATS * HEAD_DIM, WIDTH)
    if style == "torchscript":  # the repeated count is still read at run time, now from the pruned k
        assert any(node.name == "k_rep_count" for node in pruned.graph.node)
    else:
        assert _constant_of(pruned, "k_merge_shape") == [[REPEATS], [HEAD_DIM]]
    _assert_equals_masked(pruned, masked, plan)


@pytest.mark.parametrize("style", ["torchscript", "dynamo"])
def test_multi_query_attention_prunes_query_heads_and_gathers_the_shared_key_and_value(style):
    """One k/v head (Gemma-2B, Falcon): k and v are viewed with their head_dim features as channels,
    which stay; the query heads prune alone, and the repeated k and v are cut to the kept heads."""
    analysis = analyze(gqa_attention(style, kv_heads=1))
    group = group_with(analysis.channels, "q")
    assert group.prunable, [str(reason) for reason in group.frozen]
    assert (group.channels, group.unit) == (HEADS, HEAD_DIM)
    assert not group_with(analysis.channels, "k").prunable
    pruned, masked, plan = _prune_heads(gqa_attention(style, kv_heads=1), "q", [0, 3])
    assert weight_dims(pruned, "q") == (WIDTH, 2 * HEAD_DIM)
    assert weight_dims(pruned, "k") == weight_dims(pruned, "v") == (WIDTH, HEAD_DIM)
    assert weight_dims(pruned, "out") == (2 * HEAD_DIM, WIDTH)
    _assert_equals_masked(pruned, masked, plan)


def falcon_attention(style: str) -> onnx.ModelProto:
    """Falcon's multi-query attention as both exporters write it: one fused projection viewed as
    [B, S, -1, D] (HEADS + 2 heads) and split into HEADS query heads, one k head and one v head, each repeated
    by repeat_kv (its count read through Shape)."""
    g = Graph(seed=14)
    x = g.input("x", ["batch", "sequence", WIDTH])
    fused = _linear(g, x, (HEADS + 2) * HEAD_DIM, "qkv")
    split = g.node("Reshape", [fused, _target(g, x, "qkv_shape", [-1, HEAD_DIM])], "qkv_heads")  # as Falcon: -1
    q, k, v = g.split(split, [HEADS, 1, 1], axis=2, name="qkv_split")
    q, k, v = (g.node("Transpose", [part], f"{name}_t", perm=[0, 2, 1, 3]) for name, part in zip("qkv", (q, k, v)))
    k, v = (_repeat_kv(g, part, name, style, kv_heads=1) for name, part in zip("kv", (k, v)))
    out = _linear(g, _attention(g, q, k, v, x), WIDTH, "out")
    return _model(g, g.add(out, x, name="residual"))


@pytest.mark.parametrize("style", ["torchscript", "dynamo"])
def test_a_fused_multi_query_projection_prunes_its_query_heads(style):
    analysis = analyze(falcon_attention(style))
    group = group_with(analysis.channels, "qkv")
    assert group.prunable and (group.channels, group.unit) == (HEADS, HEAD_DIM), [str(r) for r in group.frozen]
    pruned, masked, plan = _prune_heads(falcon_attention(style), "qkv", [1, 2])
    assert weight_dims(pruned, "qkv") == (WIDTH, 4 * HEAD_DIM)  # two query heads, the k head, the v head
    assert weight_dims(pruned, "out") == (2 * HEAD_DIM, WIDTH)
    _assert_equals_masked(pruned, masked, plan)


def test_an_expand_reading_the_count_into_another_axis_freezes():
    """A count read from k's shape sizes a new axis of an Expand: pruning would resize that axis."""
    g = Graph(seed=9)
    x = g.input("x", ["batch", "sequence", WIDTH])
    # viewed as [B, S, -1]: static inference loses the width, so Shape reads it at run time
    k = g.node("Reshape", [_linear(g, x, WIDTH, "k"), _target(g, x, "k_view", [-1])], "k_viewed")
    count = g.node("Gather", [g.node("Shape", [k], "k_shape_of"), g.ints("k_count_index", 2)], "k_count", axis=0)
    shape = g.concat([_dim(g, x, 0), g.node("Unsqueeze", [count, g.ints("count_axes", [0])]), _dim(g, x, 1),
                      g.ints("width", [WIDTH])], axis=0, name="tile_shape")
    tiled = g.node("Expand", [g.node("Unsqueeze", [k, g.ints("k_new_axis", [1])], "k_unsqueeze"), shape], "tile")
    summed = g.node("ReduceMean", [tiled], "collapse", axes=[1], keepdims=0)
    model = _model(g, g.add(_linear(g, summed, WIDTH, "out"), x, name="residual"))
    group = group_with(analyze(model).channels, "k")
    assert any(reason.node == "tile" and "another axis" in reason.reason for reason in group.frozen), group.frozen


def test_keys_viewed_with_a_fixed_batch_merged_in_prune_with_their_heads():
    """The dynamo exporter's kᵀ for a fixed batch B > 1 (MobileViT's patches): [B, H, S, D] viewed
    as [B*H, S, D], transposed, viewed back as [B, H, D, S], both targets constant."""
    batch, sequence = 2, 6
    g = Graph(seed=10)
    x = g.input("x", [batch, sequence, WIDTH])
    q, k, v = (g.node("Transpose", [g.reshape(_linear(g, x, HEADS * HEAD_DIM, part), [batch, sequence, HEADS, HEAD_DIM],
                                              name=f"{part}_heads")], f"{part}_t", perm=[0, 2, 1, 3]) for part in "qkv")
    flat = g.reshape(k, [-1, sequence, HEAD_DIM], name="k_flat")  # [B*H, S, D]: heads tiled B times
    kt = g.reshape(g.node("Transpose", [flat], "k_flat_t", perm=[0, 2, 1]), [batch, HEADS, HEAD_DIM, sequence],
                   name="k_back")
    probabilities = g.node("Softmax", [g.node("MatMul", [q, kt], "scores")], "softmax", axis=-1)
    merged = g.node("Transpose", [g.node("MatMul", [probabilities, v], "context")], "merge_t", perm=[0, 2, 1, 3])
    out = _linear(g, g.reshape(merged, [batch, sequence, WIDTH], name="merge"), WIDTH, "out")
    model = g.build(g.add(out, x, name="residual"))
    analysis = analyze(model)
    group = group_with(analysis.channels, "k")
    assert group.prunable, [str(reason) for reason in group.frozen]
    assert (group.channels, group.unit) == (HEADS, HEAD_DIM)
    plan = {group.root: [0, 3]}
    masked = MaskedModel(analysis, [group])
    apply_plan(analysis.model, analysis.channels, plan)
    refresh_shapes(analysis.model)
    onnx.checker.check_model(analysis.model, full_check=True)
    assert _constant_of(analysis.model, "k_back") == [[batch, 2, HEAD_DIM, sequence]]
    feeds = _feeds(batch, sequence)
    np.testing.assert_allclose(run(analysis.model, feeds)["residual"], masked.run(feeds, plan)["residual"],
                               rtol=1e-5, atol=1e-5)


SPAN = 4  # relative positions -SPAN..SPAN-1


def _scalar_dim(g: Graph, tensor: str, index: int, name: str) -> str:
    return g.node("Gather", [g.node("Shape", [tensor], f"{name}_shape"), g.ints(f"{name}_index", index)], name, axis=0)


def _batch_heads_view(g: Graph, projected: str, x: str, name: str) -> str:
    """DeBERTa's transpose_for_scores: [B, S, H*D] -> [B, S, H, D] -> [B, H, S, D] -> [B*H, S, D]."""
    split = g.node("Reshape", [projected, _target(g, x, f"{name}_split_shape", [HEADS, -1])], f"{name}_split")
    heads = g.node("Transpose", [split], f"{name}_t", perm=[0, 2, 1, 3])
    sequence = g.node("Unsqueeze", [_scalar_dim(g, heads, 2, f"{name}_len"), g.ints(f"{name}_len_axes", [0])])
    target = g.concat([g.ints(f"{name}_rows", [-1]), sequence, g.ints(f"{name}_d", [HEAD_DIM])], axis=0,
                      name=f"{name}_merge_shape")
    return g.node("Reshape", [heads, target], f"{name}_bh")


def deberta_attention() -> onnx.ModelProto:
    """DeBERTa-v2's disentangled attention as TorchScript exports it: q, k, v viewed as [B*H, S, D];
    positional keys projected from a relative-embedding table, tiled by the batch (read back as
    Shape(q)[0] // H); content-to-position scores picked by GatherElements with relative-position
    indices expanded to [B*H, S, S] through q's shape."""
    g = Graph(seed=11)
    x = g.input("x", ["batch", "sequence", WIDTH])
    q, k, v = (_batch_heads_view(g, _linear(g, x, HEADS * HEAD_DIM, part), x, part) for part in "qkv")
    table = g.weight("rel_table", (1, 2 * SPAN, WIDTH))
    pos = g.node("MatMul", [table, g.weight("pos_k_w", (WIDTH, HEADS * HEAD_DIM))], "pos_k")
    pos = g.reshape(pos, [1, 2 * SPAN, HEADS, -1], name="pos_k_split")
    pos = g.node("Transpose", [pos], "pos_k_t", perm=[0, 2, 1, 3])
    pos = g.reshape(pos, [-1, 2 * SPAN, HEAD_DIM], name="pos_k_bh")
    rows = _scalar_dim(g, q, 0, "rows_of_q")  # B*H
    batch = g.node("Div", [rows, g.ints("heads_count", HEADS)], "batch_of_rows")
    repeats = g.concat([g.node("Unsqueeze", [batch, g.ints("batch_axes", [0])]), g.ints("tile_rest", [1, 1])],
                       axis=0, name="tile_repeats")
    pos = g.node("Tile", [pos, repeats], "pos_k_tiled")
    c2p = g.node("MatMul", [q, g.node("Transpose", [pos], "pos_k_kt", perm=[0, 2, 1])], "c2p")
    length = _scalar_dim(g, x, 1, "seq")
    positions = g.node("Range", [g.ints("zero", 0), length, g.ints("one", 1)], "positions")
    relative = g.node("Sub", [g.node("Unsqueeze", [positions, g.ints("col_axes", [1])]),
                              g.node("Unsqueeze", [positions, g.ints("row_axes", [0])])], "relative")
    shifted = g.node("Add", [relative, g.ints("span", SPAN)])
    index = g.node("Clip", [shifted, g.ints("lo", 0), g.ints("hi", 2 * SPAN - 1)])
    square = g.node("Unsqueeze", [length, g.ints("square_axes", [0])])
    expanded = g.node("Expand", [g.node("Unsqueeze", [index, g.ints("index_axes", [0])]),
                                 g.concat([g.node("Unsqueeze", [rows, g.ints("rows_axes", [0])]), square, square],
                                          axis=0, name="index_shape")], "index_expand")
    picked = g.node("GatherElements", [c2p, expanded], "c2p_picked", axis=-1)
    scores = g.node("MatMul", [q, g.node("Transpose", [k], "kt", perm=[0, 2, 1])], "scores")
    scaled = g.node("Mul", [scores, g.const("scale", np.float32(HEAD_DIM ** -0.5))])
    scores = g.node("Add", [scaled, picked], "scores_all")
    probabilities = g.node("Softmax", [scores], "softmax", axis=-1)
    context = g.node("MatMul", [probabilities, v], "context")  # [B*H, S, D]
    split_shape = g.concat([g.ints("ctx_rows", [-1]), g.ints("ctx_heads", [HEADS]), square, g.ints("ctx_d", [HEAD_DIM])],
                           axis=0, name="ctx_shape")
    context = g.node("Reshape", [context, split_shape], "ctx_split")
    merged = g.node("Transpose", [context], "merge_t", perm=[0, 2, 1, 3])
    merged = g.node("Reshape", [merged, _target(g, x, "merge_shape", [HEADS * HEAD_DIM])], "merge")
    return _model(g, g.add(_linear(g, merged, WIDTH, "out"), x, name="residual"))


def test_deberta_style_disentangled_attention_prunes_heads_at_any_batch():
    """Heads merged with the batch, positional keys tiled by B = Shape(q)[0] // H (the divisor
    becomes the kept head count), relative-position indices expanded through q's shape and
    picked with GatherElements: all follow the kept heads, at batch 1 and 3."""
    analysis = analyze(deberta_attention())
    group = group_with(analysis.channels, "q")
    assert group.prunable, [str(reason) for reason in group.frozen]
    assert {m.use.node for m in group.producers} == {"q", "k", "v", "pos_k"}
    pruned, masked, plan = _prune_heads(deberta_attention(), "q", [1, 2])
    assert weight_dims(pruned, "pos_k") == (WIDTH, 2 * HEAD_DIM)
    assert _constant_of(pruned, "batch_of_rows") == [2]
    _assert_equals_masked(pruned, masked, plan)


def test_a_tile_by_the_channel_count_freezes():
    """Repeats read from k's own width would change with pruning: the Tile keeps k's channels whole."""
    g = Graph(seed=12)
    x = g.input("x", ["batch", "sequence", WIDTH])
    # viewed as [B, S, -1]: static inference loses the width, so Shape reads it at run time
    k = g.node("Reshape", [_linear(g, x, WIDTH, "k"), _target(g, x, "k_view", [-1])], "k_viewed")
    count = g.node("Unsqueeze", [_scalar_dim(g, k, 2, "k_width"), g.ints("width_axes", [0])])
    tiled = g.node("Tile", [k, g.concat([g.ints("keep_batch", [1]), count, g.ints("keep_width", [1])], axis=0,
                                        name="repeats")], "tile")
    pooled = g.node("ReduceMean", [tiled], "pool", axes=[1], keepdims=1)
    model = _model(g, g.add(_linear(g, pooled, WIDTH, "out"), x, name="residual"))
    group = group_with(analyze(model).channels, "k")
    assert any(reason.node == "tile" and "channel count" in reason.reason for reason in group.frozen), group.frozen


def funnel_attention(contract_heads: bool = False) -> onnx.ModelProto:
    """Attention written with Einsum, as Funnel exports it: q, k, v viewed as [B, S, H, D] and never
    transposed; a per-head constant (content bias) and a per-head tensor computed from constants
    (relative positions projected per head) enter the scores through Einsums of their own."""
    sequence = 6
    g = Graph(seed=13)
    x = g.input("x", ["batch", sequence, WIDTH])
    q, k, v = (g.reshape(_linear(g, x, HEADS * HEAD_DIM, part), [0, 0, HEADS, HEAD_DIM], name=f"{part}_heads")
               for part in "qkv")
    scores = g.node("Einsum", [q, k], "scores", equation="bind,bjnd->bij" if contract_heads else "bind,bjnd->bnij")
    if contract_heads:
        scores = g.node("Unsqueeze", [scores, g.ints("heads_axis", [1])])
    content = g.node("Einsum", [q, g.weight("content_bias", (HEADS, HEAD_DIM))], "content", equation="bind,nd->bni")
    positions = g.node("Einsum", [g.weight("position_table", (sequence, WIDTH)),
                                  g.weight("position_w", (WIDTH, HEADS, HEAD_DIM))], "positions", equation="td,dnh->tnh")
    relative = g.node("Einsum", [q, positions], "relative", equation="binh,tnh->bnit")
    scores = g.node("Add", [g.node("Add", [scores, relative]), g.node("Unsqueeze", [content, g.ints("last", [-1])])])
    probabilities = g.node("Softmax", [scores], "softmax", axis=-1)
    context = g.node("Einsum", [probabilities, v], "context", equation="bnij,bjnd->bind")
    merged = g.reshape(context, [0, 0, HEADS * HEAD_DIM], name="merge")
    out = g.node("Add", [_linear(g, merged, WIDTH, "out"), x], "residual")
    model = g._model([helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", sequence, WIDTH])])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_einsum_attention_prunes_heads_with_its_per_head_constants():
    analysis = analyze(funnel_attention())
    group = group_with(analysis.channels, "q")
    assert group.prunable, [str(reason) for reason in group.frozen]
    assert (group.channels, group.unit) == (HEADS, HEAD_DIM)
    assert {m.use.node for m in group.params} >= {"content"}  # the content bias is sliced with the heads
    pruned, masked, plan = _prune_heads(funnel_attention(), "q", [0, 2])
    assert weight_dims(pruned, "content", 1) == (2, HEAD_DIM)
    for batch in (1, 3):
        feeds = {"x": np.random.default_rng(batch).standard_normal((batch, 6, WIDTH)).astype(np.float32)}
        np.testing.assert_allclose(run(pruned, feeds)["residual"], masked.run(feeds, plan)["residual"],
                                   rtol=1e-5, atol=1e-5)


def test_an_einsum_summing_over_the_heads_freezes_them():
    group = group_with(analyze(funnel_attention(contract_heads=True)).channels, "q")
    assert any(reason.node == "scores" and "sums over the channel axis" in reason.reason for reason in group.frozen)
