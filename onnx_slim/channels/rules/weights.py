"""Weight-bearing ops: Conv, ConvTranspose, Gemm and MatMul produce and consume channels
(the recurrent layers are in `recurrent.py`)."""

from __future__ import annotations

import math

from onnx_slim.channels.context import CONSUMER, PARAM, PRODUCER
from onnx_slim.channels.rules.attention import matmul_of_activations
from onnx_slim.channels.rules.registry import input_at, rule
from onnx_slim.channels.space import Block, Layout, repeat_layout
from onnx_slim.ir.graph import attr
from onnx_slim.ops.specs import WEIGHT_OPS


@rule("Conv")
def conv(ctx, node):
    data, weight, bias = node.input[0], node.input[1], input_at(node, 2)
    tracked = ctx.get(data)
    if not ctx.is_const(weight):
        ctx.freeze_inputs(node, "weights are computed at run time")
        return
    if tracked is not None and tracked.axis != 1:
        ctx.freeze(tracked.layout, node, "channels on an axis other than 1")
        tracked = None
    out_channels, in_per_group = ctx.initializers[weight].dims[:2]
    group = attr(node, "group", 1)
    if group == 1:
        if tracked is not None:
            ctx.use(CONSUMER, node, weight, 1, tracked.layout)
        layout = ctx.new_layout(out_channels, node)
    elif in_per_group == 1 and out_channels % group == 0:
        # Depthwise: output channel c*m + j reads input channel c only.
        if tracked is None:
            return
        layout = repeat_layout(tracked.layout, out_channels // group)
        ctx.fix(node, [tracked.layout], _set_group_attribute(node.name, tracked.layout))
    elif out_channels % group == 0:
        whole = _whole_groups(ctx, node, tracked, weight, group) if ctx.whole_conv_groups else None
        layout = whole or _grouped_conv(ctx, node, tracked, weight, group)
    else:
        if tracked is not None:
            ctx.freeze(tracked.layout, node, f"{out_channels} filters do not divide into group={group}")
        return
    _produce_channels(ctx, node, weight, 0, bias, layout)


def _produce_channels(ctx, node, weight: str, axis: int, bias: str, layout: Layout) -> None:
    """The node's filters (weight `axis`) and bias make `layout`, on axis 1 of its output."""
    ctx.use(PRODUCER, node, weight, axis, layout)
    if bias and ctx.is_const(bias):
        ctx.use(PARAM, node, bias, 0, layout)
    elif bias:
        ctx.freeze(layout, node, "bias is computed at run time")
    ctx.track(node.output[0], 1, layout)


def _grouped_conv(ctx, node, tracked, weight, group: int) -> Layout:
    """A grouped Conv (1 < group < channels): input block g feeds output block g only, and
    the weight's input axis holds one block. `group` stays, so every group must keep as
    many channels as the others: the G input blocks are tied channel by channel (one
    class channel is G tensor channels), and the output is G new atoms tied the same way.
    The returned layout is the output's."""
    out_channels = ctx.initializers[weight].dims[0]
    if tracked is not None:
        _tie_input_groups(ctx, node, tracked.layout, weight, group)
    first = ctx.new_layout(out_channels // group, node)
    layout = first
    for _ in range(1, group):
        block = ctx.new_layout(out_channels // group, node)
        ctx.atoms.unify(first, block)
        layout += block
    return layout


def _whole_groups(ctx, node, tracked, weight, group: int) -> Layout | None:
    """A grouped Conv that loses whole groups: one class channel is one group, i.e. its
    `in_channels / group` input channels and `out_channels / group` filters; the weight's input
    axis stays whole and `group` counts the kept groups. The output's layout, or None when
    the input's channels do not come in whole groups (the caller then ties the groups instead)."""
    if tracked is None:
        return None
    out_channels, in_per_group = ctx.initializers[weight].dims[:2]
    if ctx.length(tracked.layout) != group * in_per_group:
        return None
    atoms = ctx.atoms
    groups = ctx.new_layout(group, node)  # channel g: group g
    outer = atoms.split_units(tracked.layout, in_per_group, node.name)
    if outer is None or not atoms.unify(groups, outer):
        return None
    blocks = []
    for block in atoms.expand(groups):
        atom = atoms.new_atom(atoms.sizes[block.atom], node.name, unit=block.repeat * (out_channels // group))
        atoms.union(atom, block.atom)
        blocks.append(Block(atom))
    ctx.fix(node, [groups], _set_group_attribute(node.name, groups))
    return tuple(blocks)


def _tie_input_groups(ctx, node, layout: Layout, weight: str, group: int) -> None:
    in_per_group = ctx.initializers[weight].dims[1]
    why = f"grouped convolution (group={group})"
    blocks = None
    if ctx.length(layout) == group * in_per_group:
        blocks = [ctx.atoms.sub_layout(layout, g * in_per_group, (g + 1) * in_per_group) for g in range(group)]
    if blocks is None or None in blocks:
        ctx.freeze(layout, node, f"{why}: input groups are not whole channels")
    elif not all(ctx.atoms.unify(blocks[0], block) for block in blocks[1:]):
        ctx.freeze(layout, node, f"{why}: input groups cannot be tied")
    else:
        ctx.use(CONSUMER, node, weight, 1, layout, blocks=group)


def _set_group_attribute(node_name: str, layout: Layout):
    def apply(editor, kept_length):
        node = editor.node(node_name)
        for attribute in node.attribute:
            if attribute.name == "group":
                attribute.i = kept_length(layout)
    return apply


@rule("ConvTranspose")
def conv_transpose(ctx, node):
    data, weight, bias = node.input[0], node.input[1], input_at(node, 2)
    tracked = ctx.get(data)
    if not ctx.is_const(weight) or attr(node, "group", 1) != 1:
        ctx.freeze_inputs(node, "grouped or run-time weights")
        return
    if tracked is not None and tracked.axis != 1:
        ctx.freeze(tracked.layout, node, "channels on an axis other than 1")
        tracked = None
    if tracked is not None:
        ctx.use(CONSUMER, node, weight, 0, tracked.layout)
    layout = ctx.new_layout(ctx.initializers[weight].dims[1], node)
    _produce_channels(ctx, node, weight, 1, bias, layout)


@rule("Gemm")
def gemm(ctx, node):
    data, weight, bias = node.input[0], node.input[1], input_at(node, 2)
    if not ctx.is_const(weight):
        ctx.freeze_inputs(node, "weights are computed at run time")
        return
    spec = WEIGHT_OPS["Gemm"]
    tracked = ctx.get(data)
    if tracked is not None and tracked.axis != spec.data_channel_axis(node, 2):
        ctx.freeze(tracked.layout, node, "channels are not the contracted axis")
        tracked = None
    if tracked is not None:
        ctx.use(CONSUMER, node, weight, spec.in_axis(node), tracked.layout)
    features = ctx.initializers[weight].dims[spec.out_axis(node)]
    layout = ctx.new_layout(features, node)
    ctx.use(PRODUCER, node, weight, spec.out_axis(node), layout)
    if bias:
        _gemm_bias(ctx, node, bias, features, layout)
    ctx.track(node.output[0], 1, layout)


def _gemm_bias(ctx, node, bias, features, layout):
    shape = ctx.static_shape(bias)
    if not ctx.is_const(bias) or shape is None:
        ctx.freeze(layout, node, "bias is computed at run time")
    elif len(shape) >= 1 and shape[-1] == features and math.prod(shape) == features:
        ctx.use(PARAM, node, bias, len(shape) - 1, layout)
    elif math.prod(shape) != 1:
        ctx.freeze(layout, node, f"bias of shape {list(shape)} is not per-feature")


@rule("MatMul")
def matmul(ctx, node):
    data, weight = node.input
    data_rank = ctx.rank(data)
    if not ctx.is_const(weight) and not ctx.is_const(data):
        matmul_of_activations(ctx, node)
        return
    if not ctx.is_const(weight) or len(ctx.initializers[weight].dims) != 2 or data_rank is None:
        ctx.freeze_inputs(node, "MatMul without a constant 2-D weight")
        return
    tracked = ctx.get(data)
    if tracked is not None and tracked.axis != data_rank - 1:
        ctx.freeze(tracked.layout, node, "channels are not the contracted axis")
        tracked = None
    if tracked is not None:
        ctx.use(CONSUMER, node, weight, 0, tracked.layout)
    layout = ctx.new_layout(ctx.initializers[weight].dims[1], node)
    ctx.use(PRODUCER, node, weight, 1, layout)
    ctx.track(node.output[0], max(data_rank, 2) - 1, layout)

