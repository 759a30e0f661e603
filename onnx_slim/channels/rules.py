"""Channel rules: op type -> how that op moves, ties, creates or consumes channels.

One small function per op family, registered in `RULES`. A node whose op has no
rule freezes every tracked layout it reads (see `unknown_op`): a channel group we
do not understand is left alone, never guessed.

Fix callbacks receive a `GraphEditor` (see surgery.py) and `kept_length`, a
function giving the size a layout keeps after pruning.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import onnx
from onnx import helper

from onnx_slim.channels.context import CONSUMER, PARAM, PRODUCER, AnalysisContext
from onnx_slim.channels.space import Layout, repeat_layout
from onnx_slim.ir.graph import attr

Rule = Callable[[AnalysisContext, onnx.NodeProto], None]
RULES: dict[str, Rule] = {}


def rule(*op_types: str):
    def register(function: Rule) -> Rule:
        for op_type in op_types:
            RULES[op_type] = function
        return function
    return register


def input_at(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def unknown_op(ctx: AnalysisContext, node: onnx.NodeProto) -> None:
    ctx.freeze_inputs(node, f"op {node.op_type} is not understood")


def _pass_through(ctx: AnalysisContext, node: onnx.NodeProto, outputs=None) -> None:
    """Output channels are input 0's channels, same axis."""
    tracked = ctx.get(input_at(node, 0))
    if tracked is None:
        return
    for name in outputs if outputs is not None else node.output[:1]:
        ctx.track(name, tracked.axis, tracked.layout)


# -- element-wise -------------------------------------------------------------

rule(
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Neg",
    "Abs", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "ThresholdedRelu",
    "Shrink", "Identity", "Cast", "CastLike", "Clip", "Not", "IsNaN", "IsInf",
)(_pass_through)


@rule("Dropout")
def dropout(ctx, node):
    _pass_through(ctx, node, outputs=node.output)  # the mask has the data's shape


@rule("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu",
      "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod")
def elementwise(ctx, node):
    """Broadcasting ops: tracked inputs tie channel by channel; constants may be per-channel."""
    found = _joined_inputs(ctx, node)
    if found is None:
        return
    output, out_rank, inputs, tracked = found
    out_axes = {t.axis + out_rank - ctx.rank(name) for name, t in tracked.items()}
    if len(out_axes) != 1:
        ctx.freeze_inputs(node, "inputs carry channels on different axes")
        return
    out_axis = out_axes.pop()
    layouts = [t.layout for t in tracked.values()]
    channels = ctx.length(layouts[0])
    per_channel_params = []
    for name in inputs:
        if name in tracked:
            continue
        shape = ctx.shape(name)
        if shape is None:
            ctx.freeze_inputs(node, f"shape of input {name} unknown")
            return
        axis = out_axis - (out_rank - len(shape))
        if axis < 0 or shape[axis] == 1:
            continue  # broadcast along the channel axis
        if ctx.is_const(name) and shape[axis] == channels:
            per_channel_params.append((name, axis))
            continue
        ctx.freeze_inputs(node, f"input {name} spans the channel axis but is not tracked")
        return
    for other in layouts[1:]:
        if not ctx.atoms.unify(layouts[0], other):
            ctx.freeze_inputs(node, "inputs' channel layouts cannot be aligned")
            return
    for name, axis in per_channel_params:
        ctx.use(PARAM, node, name, axis, layouts[0])
    ctx.track(output, out_axis, layouts[0])


# -- producers and consumers ------------------------------------------------------


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
    else:
        if tracked is not None:
            ctx.freeze(tracked.layout, node, f"grouped convolution (group={group})")
        return
    ctx.use(PRODUCER, node, weight, 0, layout)
    if bias and ctx.is_const(bias):
        ctx.use(PARAM, node, bias, 0, layout)
    elif bias:
        ctx.freeze(layout, node, "bias is computed at run time")
    ctx.track(node.output[0], 1, layout)


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
    ctx.use(PRODUCER, node, weight, 1, layout)
    if bias and ctx.is_const(bias):
        ctx.use(PARAM, node, bias, 0, layout)
    elif bias:
        ctx.freeze(layout, node, "bias is computed at run time")
    ctx.track(node.output[0], 1, layout)


@rule("Gemm")
def gemm(ctx, node):
    data, weight, bias = node.input[0], node.input[1], input_at(node, 2)
    if not ctx.is_const(weight):
        ctx.freeze_inputs(node, "weights are computed at run time")
        return
    trans_a, trans_b = attr(node, "transA", 0), attr(node, "transB", 0)
    tracked = ctx.get(data)
    if tracked is not None and tracked.axis != (0 if trans_a else 1):
        ctx.freeze(tracked.layout, node, "channels are not the contracted axis")
        tracked = None
    if tracked is not None:
        ctx.use(CONSUMER, node, weight, 1 if trans_b else 0, tracked.layout)
    features = ctx.initializers[weight].dims[0 if trans_b else 1]
    layout = ctx.new_layout(features, node)
    ctx.use(PRODUCER, node, weight, 0 if trans_b else 1, layout)
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
    if not ctx.is_const(weight) or len(ctx.initializers[weight].dims) != 2 or data_rank is None:
        ctx.freeze_inputs(node, "MatMul without a constant 2-D weight (e.g. between activations)")
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


# -- normalizations ------------------------------------------------------------------


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


# -- spatial ops: channels pass through ---------------------------------------------


@rule("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
      "MaxRoiPool", "LRN")
def pooling(ctx, node):
    tracked = ctx.get(node.input[0])
    if tracked is None:
        return
    if tracked.axis != 1 or (node.op_type == "LRN"):
        reason = "LRN mixes neighbouring channels" if node.op_type == "LRN" else "channel axis is not 1"
        ctx.freeze(tracked.layout, node, reason)
        return
    if len(node.output) > 1 and node.output[1]:
        ctx.freeze(tracked.layout, node, "MaxPool indices encode the channel")
        return
    ctx.track(node.output[0], 1, tracked.layout)


@rule("Pad")
def pad(ctx, node):
    tracked = ctx.get(node.input[0])
    rank = ctx.rank(node.input[0])
    if tracked is None:
        return
    pads = ctx.const(input_at(node, 1)) if ctx.opset >= 11 else np.array(attr(node, "pads", []))
    axes_input = input_at(node, 3)
    axes = ctx.const(axes_input) if axes_input else np.arange(rank or 0)
    if pads is None or axes is None or rank is None:
        ctx.freeze(tracked.layout, node, "pads are computed at run time")
        return
    axes = [int(a) % rank for a in axes]
    if tracked.axis in axes:
        index = axes.index(tracked.axis)
        if pads[index] != 0 or pads[index + len(axes)] != 0:
            ctx.freeze(tracked.layout, node, "pads the channel axis")
            return
    ctx.track(node.output[0], tracked.axis, tracked.layout)


@rule("Resize", "Upsample")
def resize(ctx, node):
    tracked = ctx.get(node.input[0])
    if tracked is None:
        return
    if node.op_type == "Upsample":
        scales_name, sizes_name = input_at(node, 1), ""
    else:
        scales_name, sizes_name = input_at(node, 2), input_at(node, 3)
    # Opset 18 `axes`: scales and sizes then cover only the listed axes.
    axes = attr(node, "axes")
    rank = ctx.rank(node.input[0])
    index = tracked.axis
    if axes is not None:
        if rank is None:
            ctx.freeze(tracked.layout, node, "rank unknown")
            return
        axes = [int(a) % rank for a in axes]
        if tracked.axis not in axes:
            ctx.track(node.output[0], tracked.axis, tracked.layout)
            return
        index = axes.index(tracked.axis)
    scales, sizes = ctx.const(scales_name), ctx.const(sizes_name)
    if sizes_name:
        if sizes is None:
            ctx.freeze(tracked.layout, node, "output sizes are computed at run time")
            return
        ctx.fix(node, [tracked.layout], _set_const_entry(sizes_name, index, tracked.layout))
    elif scales is None or scales.size <= index:
        ctx.freeze(tracked.layout, node, "scales are computed at run time")
        return
    elif scales[index] != 1:
        ctx.freeze(tracked.layout, node, "resizes the channel axis")
        return
    ctx.track(node.output[0], tracked.axis, tracked.layout)


def _set_const_entry(tensor_name: str, index: int, layout: Layout):
    def apply(editor, kept_length):
        values = editor.value(tensor_name).copy()
        values[index] = kept_length(layout)
        editor.set_value(tensor_name, values)
    return apply


# -- layout ops ---------------------------------------------------------------------


@rule("Transpose")
def transpose(ctx, node):
    tracked = ctx.get(node.input[0])
    rank = ctx.rank(node.input[0])
    if tracked is None or rank is None:
        return
    perm = list(attr(node, "perm", list(reversed(range(rank)))))
    ctx.track(node.output[0], perm.index(tracked.axis), tracked.layout)


@rule("Squeeze", "Unsqueeze")
def squeeze_unsqueeze(ctx, node):
    tracked = ctx.get(node.input[0])
    in_rank, out_rank = ctx.rank(node.input[0]), ctx.rank(node.output[0])
    if tracked is None:
        return
    axes = _axes(ctx, node, 1)
    if in_rank is None or out_rank is None:
        ctx.freeze(tracked.layout, node, "rank unknown")
        return
    if node.op_type == "Squeeze":
        shape = ctx.shape(node.input[0])
        if axes is None:
            axes = [i for i, d in enumerate(shape) if d == 1]
        axes = sorted(int(a) % in_rank for a in axes)
        if tracked.axis in axes:
            ctx.freeze(tracked.layout, node, "squeezes the channel axis")
            return
        new_axis = tracked.axis - sum(1 for a in axes if a < tracked.axis)
    else:
        if axes is None:
            ctx.freeze(tracked.layout, node, "axes computed at run time")
            return
        inserted = {int(a) % out_rank for a in axes}
        kept_positions = [i for i in range(out_rank) if i not in inserted]
        new_axis = kept_positions[tracked.axis]
    ctx.track(node.output[0], new_axis, tracked.layout)


def _axes(ctx, node, input_index):
    """Axes from the attribute (older opsets) or a constant input (newer); None if absent."""
    value = attr(node, "axes")
    if value is not None:
        return list(value)
    name = input_at(node, input_index)
    if not name:
        return None
    const = ctx.const(name)
    return None if const is None else [int(a) for a in np.atleast_1d(const)]


@rule("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
      "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
def reduce(ctx, node):
    """Reductions over spatial axes keep the channel (squeeze-excite); over channels they freeze."""
    tracked = ctx.get(node.input[0])
    rank = ctx.rank(node.input[0])
    if tracked is None:
        return
    axes = _axes(ctx, node, 1)
    if rank is None or (axes is None and input_at(node, 1)):
        ctx.freeze(tracked.layout, node, "reduction axes unknown")
        return
    if not axes:
        if attr(node, "noop_with_empty_axes", 0):
            ctx.track(node.output[0], tracked.axis, tracked.layout)
        else:
            ctx.freeze(tracked.layout, node, "reduces over every axis")
        return
    axes = [int(a) % rank for a in axes]
    if tracked.axis in axes:
        ctx.freeze(tracked.layout, node, "reduces over the channel axis")
        return
    keepdims = attr(node, "keepdims", 1)
    new_axis = tracked.axis if keepdims else tracked.axis - sum(1 for a in axes if a < tracked.axis)
    ctx.track(node.output[0], new_axis, tracked.layout)


@rule("Softmax", "LogSoftmax", "Hardmax", "LpNormalization", "CumSum")
def along_axis(ctx, node):
    """Ops that mix values along one axis: harmless unless that axis is the channel axis."""
    tracked = ctx.get(node.input[0])
    rank = ctx.rank(node.input[0])
    if tracked is None:
        return
    if rank is None:
        ctx.freeze(tracked.layout, node, "rank unknown")
        return
    if node.op_type == "CumSum":
        axis_value = ctx.const(input_at(node, 1))
        axes = None if axis_value is None else [int(np.atleast_1d(axis_value)[0]) % rank]
    elif node.op_type in ("Softmax", "LogSoftmax", "Hardmax") and ctx.opset < 13:
        # Before opset 13 these flatten every axis from `axis` on into one.
        axes = list(range(attr(node, "axis", 1) % rank, rank))
    else:
        axes = [attr(node, "axis", -1) % rank]
    if axes is None or tracked.axis in axes:
        ctx.freeze(tracked.layout, node, "mixes values along the channel axis")
        return
    ctx.track(node.output[0], tracked.axis, tracked.layout)


@rule("Flatten")
def flatten(ctx, node):
    tracked = ctx.get(node.input[0])
    shape = ctx.static_shape(node.input[0])
    if tracked is None:
        return
    if shape is None:
        ctx.freeze(tracked.layout, node, "input shape not static")
        return
    axis = attr(node, "axis", 1)
    split = axis + len(shape) if axis < 0 else axis  # axis is in [-rank, rank]
    if tracked.axis >= split:
        outer, inner, out_axis = shape[split:tracked.axis], shape[tracked.axis + 1:], 1
    else:
        outer, inner, out_axis = shape[:tracked.axis], shape[tracked.axis + 1:split], 0
    if math.prod(outer) != 1:
        ctx.freeze(tracked.layout, node, "flattens the channel axis after other axes")
        return
    ctx.track(node.output[0], out_axis, repeat_layout(tracked.layout, math.prod(inner)))


@rule("Reshape")
def reshape(ctx, node):
    tracked = ctx.get(node.input[0])
    if tracked is None:
        return
    in_shape, out_shape = ctx.static_shape(node.input[0]), ctx.static_shape(node.output[0])
    target = ctx.const(node.input[1])
    if target is None:
        ctx.freeze(tracked.layout, node, "target shape is computed at run time")
        return
    if in_shape is None or out_shape is None:
        ctx.freeze(tracked.layout, node, "shapes not static")
        return
    mapped = reshape_channel_axis(in_shape, out_shape, tracked.axis)
    if mapped is None:
        ctx.freeze(tracked.layout, node, f"reshape {list(in_shape)} -> {list(out_shape)} splits or mixes channels")
        return
    out_axis, repeat = mapped
    layout = repeat_layout(tracked.layout, repeat)
    entry = int(target[out_axis]) if out_axis < target.size else -1
    if entry > 0:
        ctx.fix(node, [layout], _set_const_entry(node.input[1], out_axis, layout))
    elif entry == 0 and out_axis != tracked.axis:
        ctx.freeze(tracked.layout, node, "target copies a dimension from another position")
        return
    ctx.track(node.output[0], out_axis, layout)


def reshape_channel_axis(in_shape, out_shape, axis) -> tuple[int, int] | None:
    """Where channel axis `axis` lands in a reshape, and how many indices each channel covers.

    None unless the reshape keeps the channel whole and first in its output axis:
    either it stays an axis of its own, or it is merged with the axes right after it
    (a flatten, `repeat` = their product).
    """
    outer, channels = math.prod(in_shape[:axis]), in_shape[axis]
    out_axis, accumulated = 0, 1
    while out_axis < len(out_shape) and accumulated < outer:
        accumulated *= out_shape[out_axis]
        out_axis += 1
    if accumulated != outer:
        return None
    while out_axis < len(out_shape) and out_shape[out_axis] == 1 and channels != 1:
        out_axis += 1
    if out_axis == len(out_shape) or out_shape[out_axis] % channels:
        return None
    repeat = out_shape[out_axis] // channels
    merged, position = 1, axis + 1
    while merged < repeat and position < len(in_shape):
        merged *= in_shape[position]
        position += 1
    return (out_axis, repeat) if merged == repeat else None


@rule("Concat")
def concat(ctx, node):
    found = _joined_inputs(ctx, node)
    if found is None:
        return
    output, rank, inputs, tracked = found
    axis = attr(node, "axis") % rank
    if all(t.axis == axis for t in tracked.values()):
        blocks = []
        for name in inputs:
            if name in tracked:
                blocks.extend(tracked[name].layout)
                continue
            shape = ctx.static_shape(name)
            if shape is None:
                ctx.freeze_inputs(node, f"size of input {name} unknown")
                return
            # An untracked part keeps its place in the index map, never pruned.
            part = ctx.new_layout(shape[axis], node)
            ctx.freeze(part, node, f"concatenated input {name} is not prunable")
            blocks.extend(part)
        ctx.track(output, axis, tuple(blocks))
    elif any(t.axis == axis for t in tracked.values()) or len(tracked) != len(inputs):
        ctx.freeze_inputs(node, "concatenates tensors whose channels do not line up")
    else:
        elementwise_same_axis(ctx, node, list(tracked.values()))


def _joined_inputs(ctx, node):
    """(output, its rank, the inputs, the tracked ones) of a node joining several inputs;
    None when nothing is tracked or (after freezing the inputs) the rank is unknown."""
    output = node.output[0]
    rank = ctx.rank(output)
    inputs = [name for name in node.input if name]
    tracked = {name: ctx.get(name) for name in inputs if ctx.get(name) is not None}
    if not tracked:
        return None
    if rank is None:
        ctx.freeze_inputs(node, "output rank unknown")
        return None
    return output, rank, inputs, tracked


def elementwise_same_axis(ctx, node, tracked_list):
    """Tie the channel layouts of inputs that are joined along another axis."""
    axes = {t.axis for t in tracked_list}
    if len(axes) != 1:
        ctx.freeze_inputs(node, "inputs carry channels on different axes")
        return
    first = tracked_list[0].layout
    for other in tracked_list[1:]:
        if not ctx.atoms.unify(first, other.layout):
            ctx.freeze_inputs(node, "inputs' channel layouts cannot be aligned")
            return
    ctx.track(node.output[0], tracked_list[0].axis, first)


@rule("Split")
def split(ctx, node):
    tracked = ctx.get(node.input[0])
    rank = ctx.rank(node.input[0])
    if tracked is None:
        return
    if rank is None:
        ctx.freeze(tracked.layout, node, "rank unknown")
        return
    axis = attr(node, "axis", 0) % rank
    if axis != tracked.axis:
        for output in node.output:
            ctx.track(output, tracked.axis, tracked.layout)
        return
    total = ctx.length(tracked.layout)
    sizes = _split_sizes(ctx, node, total)
    if sizes is None:
        ctx.freeze(tracked.layout, node, "split sizes are computed at run time")
        return
    parts, start = [], 0
    for size in sizes:
        part = ctx.atoms.sub_layout(tracked.layout, start, start + size)
        if part is None:
            ctx.freeze(tracked.layout, node, "splits inside a flattened channel")
            return
        parts.append(part)
        start += size
    for output, part in zip(node.output, parts):
        ctx.track(output, axis, part)
    ctx.fix(node, parts, _set_split_sizes(node.name, parts, ctx.opset))


def _split_sizes(ctx, node, total):
    if input_at(node, 1):
        sizes = ctx.const(node.input[1])
        return None if sizes is None else [int(s) for s in sizes]
    if attr(node, "split") is not None:
        return list(attr(node, "split"))
    count = attr(node, "num_outputs", len(node.output))
    chunk = -(-total // count)  # the last part is smaller when it does not divide
    return [min(chunk, total - i * chunk) for i in range(count)]


def _set_split_sizes(node_name: str, parts, opset: int):
    def apply(editor, kept_length):
        node = editor.node(node_name)
        sizes = np.array([kept_length(part) for part in parts], dtype=np.int64)
        kept = [a for a in node.attribute if a.name not in ("split", "num_outputs")]
        del node.attribute[:]
        node.attribute.extend(kept)
        if opset < 13:
            node.attribute.append(helper.make_attribute("split", sizes.tolist()))
        elif input_at(node, 1):
            editor.set_value(node.input[1], sizes)
        else:
            node.input.append(editor.add_initializer(f"{node_name}_split_sizes", sizes))
    return apply


@rule("Slice")
def slice_(ctx, node):
    tracked = ctx.get(node.input[0])
    rank = ctx.rank(node.input[0])
    if tracked is None:
        return
    starts, ends = ctx.const(input_at(node, 1)), ctx.const(input_at(node, 2))
    axes_name, steps_name = input_at(node, 3), input_at(node, 4)
    axes = ctx.const(axes_name) if axes_name else None
    steps = ctx.const(steps_name) if steps_name else None
    if rank is None or (axes_name and axes is None):
        ctx.freeze(tracked.layout, node, "slice axes unknown")
        return
    if axes is None:  # absent: starts and ends cover the leading axes
        axes = range(0 if starts is None else starts.size)
    axes = [int(a) % rank for a in axes]
    if starts is None or ends is None:
        if axes_name and tracked.axis not in axes:
            ctx.track(node.output[0], tracked.axis, tracked.layout)
        else:
            ctx.freeze(tracked.layout, node, "slice bounds are computed at run time")
        return
    if tracked.axis not in axes:
        ctx.track(node.output[0], tracked.axis, tracked.layout)
        return
    index = axes.index(tracked.axis)
    if steps is not None and int(steps[index]) != 1:
        ctx.freeze(tracked.layout, node, "strided slice of the channel axis")
        return
    length = ctx.length(tracked.layout)
    start, stop, _ = slice(int(starts[index]), int(ends[index])).indices(length)
    stop = max(stop, start)
    if (start, stop) == (0, length):
        ctx.track(node.output[0], tracked.axis, tracked.layout)
        return
    before = ctx.atoms.sub_layout(tracked.layout, 0, start)
    part = ctx.atoms.sub_layout(tracked.layout, start, stop)
    if before is None or part is None:
        ctx.freeze(tracked.layout, node, "slices inside a flattened channel")
        return
    ctx.track(node.output[0], tracked.axis, part)
    ctx.fix(node, [before, part], _set_slice_bounds(node.input[1], node.input[2], index, before, part))


def _set_slice_bounds(starts_name, ends_name, index, before, part):
    def apply(editor, kept_length):
        starts, ends = editor.value(starts_name).copy(), editor.value(ends_name).copy()
        starts[index] = kept_length(before)
        ends[index] = kept_length(before) + kept_length(part)
        editor.set_value(starts_name, starts)
        editor.set_value(ends_name, ends)
    return apply


@rule("Gather")
def gather(ctx, node):
    tracked = ctx.get(node.input[0])
    rank = ctx.rank(node.input[0])
    indices_rank = ctx.rank(node.input[1])
    if tracked is None:
        return
    if rank is None or indices_rank is None:
        ctx.freeze(tracked.layout, node, "rank unknown")
        return
    axis = attr(node, "axis", 0) % rank
    if axis == tracked.axis:
        ctx.freeze(tracked.layout, node, "gathers along the channel axis")
        return
    new_axis = tracked.axis + (indices_rank - 1 if axis < tracked.axis else 0)
    ctx.track(node.output[0], new_axis, tracked.layout)


@rule("Tile", "Expand")
def tile_expand(ctx, node):
    tracked = ctx.get(node.input[0])
    in_rank, out_rank = ctx.rank(node.input[0]), ctx.rank(node.output[0])
    if tracked is None:
        return
    values = ctx.const(input_at(node, 1))
    if values is None or in_rank is None or out_rank is None:
        ctx.freeze(tracked.layout, node, "repeats or shape computed at run time")
        return
    out_axis = tracked.axis + out_rank - in_rank
    # Tile's repeats match the input rank; Expand's shape is right-aligned with the output.
    index = tracked.axis if node.op_type == "Tile" else out_axis - (out_rank - values.size)
    entry = int(values[index]) if 0 <= index < values.size else 1
    channels = ctx.length(tracked.layout)
    if node.op_type == "Tile" and entry != 1:
        ctx.freeze(tracked.layout, node, "tiles the channel axis")
        return
    if node.op_type == "Expand" and entry not in (1, channels):
        ctx.freeze(tracked.layout, node, "expands the channel axis")
        return
    if node.op_type == "Expand" and entry == channels and channels != 1:
        ctx.fix(node, [tracked.layout], _set_const_entry(node.input[1], index, tracked.layout))
    ctx.track(node.output[0], out_axis, tracked.layout)


@rule("Shape")
def shape_of(ctx, node):
    """The sizes it returns follow the pruned tensor, so the channel count it reads is
    safe only where nothing uses it: it is tracked as a size carrier (see groups.py)."""
    tracked = ctx.get(node.input[0])
    rank = ctx.rank(node.input[0])
    if tracked is None:
        return
    if rank is None:
        ctx.freeze(tracked.layout, node, "rank unknown")
        return
    start, end = attr(node, "start", 0), attr(node, "end", rank)
    start, end = (start % rank if start < 0 else start), (end % rank if end < 0 else min(end, rank))
    if start <= tracked.axis < end:
        ctx.size_carriers[node.output[0]] = (tracked.layout, tracked.axis - start)


@rule("Size")
def size_of(ctx, node):
    ctx.freeze_inputs(node, "the element count depends on the channel count")
