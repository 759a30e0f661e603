"""A transformer's residual stream (hidden size D) under --prune-layernorm: the patch embedding,
the class token joined on the sequence axis, the position embedding, the residual Adds, every
LayerNorm's scale and bias and the classifier all lose the same channels."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import assert_lossless, assert_valid, group_with, run, weight_dims
from graphs import Graph
from onnx import TensorProto, helper, numpy_helper

from onnx_slim.apply.surgery import apply_plan, refresh_shapes
from onnx_slim.channels.analysis import analyze
from onnx_slim.data.masking import MaskedModel

WIDTH, TOKENS, CLASSES = 16, 4, 3  # a 4x4-patch Conv on 8x8 images: 4 patch tokens + the class token


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(init for init in model.graph.initializer if init.name == name))


def _expanded_class_token(g: Graph, x: str) -> str:
    """`cls_token.expand(B, -1, -1)` as TorchScript writes it: the shape is computed at run time
    from the batch, its -1 entries replaced by 1 through Equal/Where."""
    batch = g.node("Unsqueeze", [g.node("Gather", [g.node("Shape", [x]), g.ints("batch_index", 0)], axis=0),
                                 g.ints("batch_axes", [0])])
    wanted = g.concat([batch, g.ints("keep_tokens", [-1]), g.ints("keep_width", [-1])], axis=0, name="wanted")
    is_kept = g.node("Equal", [wanted, g.ints("minus_ones", [-1, -1, -1])])
    shape = g.node("Where", [is_kept, g.ints("ones", [1, 1, 1]), wanted], "expand_shape")
    return g.node("Expand", [g.weight("cls_token", (1, 1, WIDTH)), shape], "cls_expand")


def vit(layer_norm: bool = True) -> onnx.ModelProto:
    """timm's ViT in miniature: patch Conv -> [B, D, N] through a target read from Shape ->
    [B, N, D]; class token concatenated on the sequence axis; + position embedding; one pre-norm
    MLP block with its residual; final LayerNorm, the class token gathered, Linear. Without
    `layer_norm` the LayerNorms are left out (pruning is then exact)."""
    g = Graph(seed=7)
    x = g.input("x", ["batch", 3, 8, 8])
    patches = g.node("Conv", [x, g.weight("patch_w", (WIDTH, 3, 4, 4)), g.weight("patch_b", (WIDTH,))],
                     "patch", strides=[4, 4])
    leading = g.node("Slice", [g.node("Shape", [patches]), g.ints("from", [0]), g.ints("to", [2])])
    flat = g.node("Reshape", [patches, g.concat([leading, g.ints("rest", [-1])], axis=0)], "flatten")
    tokens = g.node("Transpose", [flat], "tokens", perm=[0, 2, 1])
    h = g.concat([_expanded_class_token(g, x), tokens], axis=1, name="with_cls")
    h = g.node("Add", [h, g.weight("pos_embed", (1, TOKENS + 1, WIDTH))], "pos")

    def norm(tensor, name):
        if not layer_norm:
            return tensor
        return g.node("LayerNormalization", [tensor, g.weight(f"{name}_scale", (WIDTH,)),
                                             g.weight(f"{name}_bias", (WIDTH,))], name, axis=-1)

    def linear(tensor, features, name, in_features=WIDTH):
        """MatMul + Add (sizes given: inference cannot see through the computed targets)."""
        weight = g.weight(f"{name}_w", (in_features, features))
        return g.node("Add", [g.node("MatMul", [tensor, weight], name), g.weight(f"{name}_bias_b", (features,))],
                      f"{name}_bias")

    hidden = g.relu(linear(norm(h, "norm1"), 32, "fc1"))
    h = g.add(h, linear(hidden, WIDTH, "fc2", in_features=32), name="residual")
    cls = g.node("Gather", [norm(h, "norm"), g.ints("cls_index", 0)], "cls", axis=1)
    logits = g.node("Gemm", [cls, g.weight("head_w", (CLASSES, WIDTH)), g.weight("head_b", (CLASSES,))],
                    "head", transB=1)
    output = helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["batch", CLASSES])
    model = g._model([output])
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(batch: int) -> dict:
    return {"x": np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)}


def test_without_the_flag_only_layernorm_freezes_the_stream():
    group = group_with(analyze(vit()).channels, "patch")
    assert group.frozen and all("LayerNormalization statistics" in reason.reason for reason in group.frozen)


def test_the_stream_is_one_prunable_group_from_the_patch_conv_to_the_head():
    analysis = analyze(vit(), prune_layernorm=True)
    group = group_with(analysis.channels, "patch")
    assert group.prunable and group.channels == WIDTH
    params = {member.use.tensor for member in group.params}
    assert {"cls_token", "pos_embed", "patch_b", "norm1_scale", "norm_bias", "fc2_bias_b"} <= params
    assert {member.use.node for member in group.consumers} == {"fc1", "head"}


def test_pruned_stream_equals_the_masked_original_at_two_batch_sizes():
    """The masked model computes each LayerNorm over the kept channels, as the pruned one does."""
    analysis = analyze(vit(), prune_layernorm=True)
    group = group_with(analysis.channels, "patch")
    plan = {group.root: [0, 3, 4, 9, 15]}
    masked = MaskedModel(analysis, [group])
    apply_plan(analysis.model, analysis.channels, plan)
    refresh_shapes(analysis.model)
    onnx.checker.check_model(analysis.model, full_check=True)
    dims = analysis.model.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", CLASSES]
    for batch in (1, 3):
        (actual,) = run(analysis.model, _feeds(batch)).values()
        (expected,) = masked.run(_feeds(batch), plan).values()
        assert actual.shape == (batch, CLASSES)
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_every_tensor_of_the_stream_keeps_the_same_channels():
    original = vit()
    analysis = analyze(original, prune_layernorm=True)
    removed = [1, 2, 7]
    kept = [c for c in range(WIDTH) if c not in removed]
    apply_plan(analysis.model, analysis.channels, {group_with(analysis.channels, "patch").root: removed})
    pruned = analysis.model
    for name, axis in [("patch_w", 0), ("patch_b", 0), ("cls_token", 2), ("pos_embed", 2), ("norm1_scale", 0),
                       ("norm1_bias", 0), ("norm_scale", 0), ("fc1_w", 0), ("fc2_w", 1), ("fc2_bias_b", 0),
                       ("head_w", 1)]:
        np.testing.assert_array_equal(_initializer(pruned, name),
                                      np.take(_initializer(original, name), kept, axis=axis), err_msg=name)
    assert weight_dims(pruned, "head") == (CLASSES, WIDTH - len(removed))


def test_without_layernorm_the_stream_prunes_losslessly():
    """Zeroed channels of the stream (patch filters, class token, position embedding, fc2
    outputs) removed: outputs unchanged."""
    model = vit(layer_norm=False)
    assert group_with(analyze(model).channels, "patch").prunable
    assert_lossless(model, 0.25)


@pytest.mark.parametrize("entry", ["computed", "constant"])
def test_expand_to_the_channel_count_follows_the_kept_channels(entry):
    """Expand of a tracked tensor whose target states the channel count, as a constant or
    computed at run time: after pruning the output has the kept channels."""
    g = Graph(seed=1)
    x = g.input("x", ["batch", 6, 4, 4])
    h = g.conv(x, 8, kernel=1, name="conv")
    pooled = g.gap(h, name="gap")
    if entry == "constant":
        shape = g.ints("shape", [1, 8, 4, 4])
    else:
        shape = g.concat([g.node("Shape", [x], "x_shape", start=0, end=1), g.ints("rest", [8, 4, 4])], axis=0)
    out = g.add(h, g.node("Expand", [pooled, shape], "expand"), name="sum")
    model = g.build(g.conv(out, 5, kernel=1, name="out"))
    pruned = assert_lossless(model, 0.25)
    assert weight_dims(pruned, "conv")[0] == 6
    assert_valid(pruned, model)
