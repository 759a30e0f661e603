"""The entries of a small computed tensor that are the same whatever the input: partly known values.

PyTorch's `F.pad` with pads computed at run time (TF-style "same" padding in timm's `tf_*`
models, Swin's window padding) exports as a pad list computed from Shape, concatenated with
zeros for the untouched axes, then reshaped, reversed and transposed into ONNX's order. Whether
the channel axis is padded is decided by the zeros, which are constants: following them through
those reshuffles tells it without evaluating the run-time part. Entries are numbers where they
are constants and UNKNOWN where they are computed at run time; lengths come from the static
shapes of the analysis (a pads or shape tensor's length does not depend on the input's size).
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from onnx_slim.ir.graph import attr

UNKNOWN = None
MAX_ENTRIES = 64  # shape-like tensors only
_DEPTH = 16


def known_entries(ctx, name: str, depth: int = 0) -> np.ndarray | None:
    """An object array of `name`'s values, UNKNOWN where computed at run time; None when even its
    shape is unknown or it is not a small tensor. `ctx` is the channel rules' context."""
    value = ctx.const(name)
    if value is not None:
        return value.astype(object) if value.size <= MAX_ENTRIES else None
    shape = ctx.static_shape(name)
    if shape is None or int(np.prod(shape)) > MAX_ENTRIES:
        return None
    node = ctx.producer(name)
    result = _evaluate(ctx, node, depth) if node is not None and depth < _DEPTH else None
    if result is None or tuple(result.shape) != tuple(shape):
        return np.full(shape, UNKNOWN, dtype=object)
    return result


def _evaluate(ctx, node, depth) -> np.ndarray | None:
    def entries(position: int) -> np.ndarray | None:
        return known_entries(ctx, node.input[position], depth + 1) if len(node.input) > position else None

    def given(position: int) -> bool:
        return len(node.input) > position and bool(node.input[position])

    def constant(position: int) -> np.ndarray | None:
        return ctx.const(node.input[position]) if given(position) else None

    op = node.op_type
    if op in ("Cast", "Identity"):
        return entries(0)
    if op == "ConstantOfShape":
        shape = ctx.static_shape(node.output[0])
        fill = attr(node, "value")
        fill = numpy_helper.to_array(fill).reshape(-1)[0] if fill is not None else 0
        return None if shape is None else np.full(shape, fill, dtype=object)
    if op == "Concat":
        parts = [known_entries(ctx, part, depth + 1) for part in node.input]
        return None if any(part is None for part in parts) else np.concatenate(parts, axis=attr(node, "axis"))
    source = entries(0)
    if source is None:
        return None
    if op == "Reshape":
        target = constant(1)
        return None if target is None or 0 in target else source.reshape([int(d) for d in target])
    if op == "Transpose":
        return np.transpose(source, attr(node, "perm"))
    if op in ("Unsqueeze", "Squeeze"):
        shape = ctx.static_shape(node.output[0])
        return None if shape is None else source.reshape(shape)
    if op == "Slice":
        arguments = [constant(i) for i in range(1, 5)]
        # An axes or steps input computed at run time is not "every axis, step 1".
        if any(given(i) and arguments[i - 1] is None for i in range(1, 5)):
            return None
        return _slice(source, arguments)
    return None


def _slice(source: np.ndarray, arguments) -> np.ndarray | None:
    """ONNX Slice on an object array: bounds clamped as the operator's definition says (negative
    ones count from the end; INT64 min/max mean "from the start" and "to the end")."""
    starts, ends, axes, steps = arguments
    if starts is None or ends is None:
        return None
    axes = range(len(starts)) if axes is None else [int(a) % source.ndim for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * source.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps):
        length, start, end, step = source.shape[axis], int(start), int(end), int(step)
        if step == 0:
            return None
        start, end = (value + length if value < 0 else value for value in (start, end))
        if step > 0:
            start, end = min(max(start, 0), length), min(max(end, 0), length)
            index[axis] = slice(start, end, step)
        else:
            start, end = min(max(start, 0), length - 1), min(max(end, -1), length - 1)
            index[axis] = slice(start, None if end == -1 else end, step)
    return source[tuple(index)]
