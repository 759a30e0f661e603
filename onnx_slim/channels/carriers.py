"""Size carriers: channel counts read through Shape, followed through the shape arithmetic.

A count read from a tracked tensor's shape changes when its group is pruned. Where it ends
up in a Reshape target (or a Resize's sizes, or an Expand's shape) for the same channels, the
owning rule accepts it: after pruning it reads the kept count, which is what that node needs.
Anywhere else it would carry the new count into a tensor that does not shrink, so the group
freezes. `ctx.size_carriers` maps a shape tensor to (layout, index): entry `index` of the
tensor equals the count of `layout`.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from onnx_slim.channels.context import AnalysisContext
from onnx_slim.channels.space import repeat_layout


def follow_size_carriers(ctx: AnalysisContext, node: onnx.NodeProto) -> None:
    """Carry the counts `node` reads to its output, leave them where they are harmless, or freeze.

    Gathering only other entries (the batch size, the sequence length) is harmless. Slices and
    Concats of shape tensors carry the count along to a Reshape target, which the Reshape rule
    accepts where the count lands on the same channels (the dynamo exporter's kᵀ in
    scaled_dot_product_attention: [B, H] read back from k's shape)."""
    for name in node.input:
        carrier = ctx.size_carriers.get(name)
        if carrier is None:
            continue
        layout, index = carrier
        if node.op_type == "Gather" and name == node.input[0]:
            indices, length = ctx.const(node.input[1]), (ctx.static_shape(name) or (None,))[0]
            if length is None:
                indices = None  # negative indices cannot be told apart: the count may be read
            picked = [] if indices is None else [int(i) % length for i in indices.reshape(-1)]
            if indices is not None and index not in picked:
                continue
            if indices is not None and indices.ndim <= 1 and picked.count(index) == 1:
                # A permuted read (tf2onnx reads an NHWC shape as Shape(NCHW)[0, 2, 3, 1]), or the
                # count alone as a scalar: it moves to its new position, whose readers are checked in turn.
                ctx.size_carriers[node.output[0]] = (layout, picked.index(index))
                continue
        if node.op_type == "Slice" and name == node.input[0]:
            bounds = _slice_bounds(ctx, node)
            if bounds is not None and not bounds[0] <= index < bounds[1]:
                continue
            if bounds is not None:
                ctx.size_carriers[node.output[0]] = (layout, index - bounds[0])
                continue
        if node.op_type == "Concat" and _carry_through_concat(ctx, node, name, carrier):
            continue
        if _carry_as_is(ctx, node, name, index):
            continue
        if node.op_type == "Mul" and _carry_multiple(ctx, node, name, carrier):
            continue
        if node.op_type == "Div" and _divide_out(ctx, node, name, carrier):
            continue
        if node.op_type == "Shape" or node.op_type == "Equal" and _never_equal(ctx, node, name, index):
            continue  # a shape tensor's own shape, or a comparison no count can satisfy
        if node.op_type == "Where" and _carry_unless_equal(ctx, node, name, index):
            continue
        if node.op_type == "Reshape" and name == node.input[1]:
            continue  # the Reshape rule checks where the count lands
        if node.op_type == "Resize" and len(node.input) > 3 and name == node.input[3]:
            continue  # so does the Resize rule (sizes read from its own input's shape)
        if node.op_type == "Expand" and name == node.input[1]:
            continue  # and the Expand rule (repeat_kv's expand(b, kv_heads, n_rep, t, d))
        ctx.freeze(layout, node, "reads the channel count through Shape")


def _carry_as_is(ctx: AnalysisContext, node: onnx.NodeProto, name: str, index: int) -> bool:
    """Identity and Cast pass a shape tensor on unchanged, as does a Reshape of a 1-D shape tensor
    to its own length; Squeeze, Unsqueeze and Reshape turn the count alone (one element) into a
    scalar and back (paddle2onnx writes Shape -> Slice -> Squeeze -> Unsqueeze or Reshape ->
    Concat, with Identity nodes in between)."""
    if name != node.input[0]:
        return False
    shape, out_shape = ctx.static_shape(name), ctx.static_shape(node.output[0])
    unchanged = node.op_type in ("Identity", "Cast") or (
        node.op_type == "Reshape" and shape is not None and len(shape) == 1 and out_shape == shape)
    one_element = shape is not None and math.prod(shape) == 1 and index == 0
    if unchanged or node.op_type in ("Squeeze", "Unsqueeze", "Reshape") and one_element:
        ctx.size_carriers[node.output[0]] = (ctx.size_carriers[name][0], index if unchanged else 0)
        return True
    return False


def _carry_multiple(ctx: AnalysisContext, node: onnx.NodeProto, name: str, carrier) -> bool:
    """The count alone times a constant integer n >= 1 (repeat_kv's `kv_heads * n_rep`): the count
    of the same channels, each now covering n indices."""
    layout, index = carrier
    other = node.input[1] if name == node.input[0] else node.input[0]
    factor, shape = ctx.const(other), ctx.static_shape(name)
    if factor is None or factor.size != 1 or shape is None or math.prod(shape) != 1 or other == name:
        return False
    value = factor.reshape(-1)[0]
    if not np.issubdtype(factor.dtype, np.integer) or value < 1:
        return False
    ctx.size_carriers[node.output[0]] = (repeat_layout(layout, int(value)), index)
    return True


def _divide_out(ctx: AnalysisContext, node: onnx.NodeProto, name: str, carrier) -> bool:
    """The count alone divided by a constant equal to it: DeBERTa reads the batch back as
    Shape(q)[0] // heads from q viewed as [B*H, S, D]. The constant is rewritten to the kept
    count, so the quotient stays the batch and no longer depends on the channels."""
    layout, _ = carrier
    divisor, shape = ctx.const(node.input[1]), ctx.static_shape(name)
    if (name != node.input[0] or divisor is None or divisor.size != 1 or shape is None or math.prod(shape) != 1
            or int(divisor.reshape(-1)[0]) != ctx.length(layout) or ctx.readers(node.input[1]) != 1):
        return False
    ctx.fix(node, [layout], _set_count(node.input[1], layout))
    ctx.counts_divided_out.add(node.output[0])
    return True


def _set_count(tensor_name: str, layout):
    def apply(editor, kept_length):
        values = editor.value(tensor_name)
        editor.set_value(tensor_name, np.full_like(values, kept_length(layout)))
    return apply


def _never_equal(ctx: AnalysisContext, node: onnx.NodeProto, name: str, index: int) -> bool:
    """Equal(shape, c) with c < 1 at the count's entry (TorchScript's `expand` compares its sizes
    with -1): false there for any count, so the result does not depend on it."""
    other = node.input[1] if name == node.input[0] else node.input[0]
    values, shape = ctx.const(other), ctx.static_shape(name)
    if values is None or other == name or values.ndim > 1 or shape is None or len(shape) > 1:
        return False
    if values.size != 1 and (len(shape) != 1 or values.size != shape[0]):
        return False  # broadcasting would compare the count with every entry of c
    return values.reshape(-1)[0 if values.size == 1 else index] < 1


def _carry_unless_equal(ctx: AnalysisContext, node: onnx.NodeProto, name: str, index: int) -> bool:
    """Where(Equal(s, c), fill, s) with c < 1 at the count's entry: that entry is s's, the count."""
    condition = ctx.producer(node.input[0])
    if (name != node.input[2] or condition is None or condition.op_type != "Equal"
            or name not in condition.input or not _never_equal(ctx, condition, name, index)
            or ctx.static_shape(node.output[0]) != ctx.static_shape(name)):
        return False
    ctx.size_carriers[node.output[0]] = ctx.size_carriers[name]
    return True


def _slice_bounds(ctx: AnalysisContext, node: onnx.NodeProto) -> tuple[int, int] | None:
    """[start, stop) of a Slice of a 1-D shape tensor with constant bounds and no step."""
    starts, ends = ctx.const(node.input[1]), ctx.const(node.input[2])
    length = (ctx.static_shape(node.input[0]) or (None,))[0]
    stepped = len(node.input) > 4 and bool(node.input[4])
    steps = ctx.const(node.input[4]) if stepped else None
    if starts is None or ends is None or length is None or stepped and (steps is None or int(steps[0]) != 1):
        return None
    start, stop, _ = slice(int(starts[0]), int(ends[0])).indices(length)
    return start, stop


def _carry_through_concat(ctx: AnalysisContext, node: onnx.NodeProto, name: str, carrier) -> bool:
    """Carry a channel count into a Concat of 1-D shape tensors; False when it cannot follow
    (several counts in one Concat, or a part of unknown length before it)."""
    layout, index = carrier
    if sum(1 for part in node.input if part in ctx.size_carriers) > 1:
        return False
    offset = 0
    for part in node.input:
        if part == name:
            ctx.size_carriers[node.output[0]] = (layout, offset + index)
            return True
        shape = ctx.static_shape(part)
        if shape is None or len(shape) != 1:
            return False
        offset += shape[0]
    return False
