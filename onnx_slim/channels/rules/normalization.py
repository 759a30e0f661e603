"""Normalizations: BatchNorm, InstanceNorm and LayerNorm carry per-channel parameters."""

from __future__ import annotations

from onnx_slim.channels.context import PARAM
from onnx_slim.channels.rules.registry import rule
from onnx_slim.ir.graph import attr


@rule("BatchNormalization")
def batch_norm(ctx, node):
    tracked = ctx.get(node.input[0])
    if tracked is None:
        return
    if attr(node, "training_mode", 0) or len([o for o in node.output if o]) > 1:
        ctx.freeze(tracked.layout, node, "BatchNormalization in training mode")
        return
    _per_channel_normalization(ctx, node, tracked, node.input[1:5], channel_axis=1)


@rule("InstanceNormalization")
def instance_norm(ctx, node):
    tracked = ctx.get(node.input[0])
    if tracked is not None:
        _per_channel_normalization(ctx, node, tracked, node.input[1:3], channel_axis=1)


@rule("LayerNormalization")
def layer_norm(ctx, node):
    """Normalizing over the channel axis alone can ride along (scale and bias sliced), but
    only on request: its mean and variance then cover the kept channels only, so even
    removing all-zero channels changes the outputs (a transformer's residual stream).
    """
    tracked = ctx.get(node.input[0])
    rank = ctx.rank(node.input[0])
    if tracked is None or rank is None:
        return
    axis = attr(node, "axis", -1) % rank
    if axis != rank - 1 or tracked.axis != rank - 1:
        ctx.freeze(tracked.layout, node, "normalizes over more than the channel axis")
        return
    if not ctx.prune_layernorm:
        ctx.freeze(tracked.layout, node, "LayerNormalization statistics span these channels "
                                         "(--prune-layernorm allows it)")
        return
    _per_channel_normalization(ctx, node, tracked, node.input[1:3], channel_axis=rank - 1)


def _per_channel_normalization(ctx, node, tracked, params, channel_axis):
    if tracked.axis != channel_axis:
        ctx.freeze(tracked.layout, node, "channels on an unexpected axis")
        return
    for name in params:
        if not name:
            continue
        if not ctx.is_const(name):
            ctx.freeze(tracked.layout, node, f"parameter {name} is computed at run time")
            return
    for name in params:
        if name:
            ctx.use(PARAM, node, name, 0, tracked.layout)
    ctx.track(node.output[0], tracked.axis, tracked.layout)
