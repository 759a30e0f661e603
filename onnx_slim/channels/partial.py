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

    def constant(position: int) -> np.ndarray | None:
        return ctx.const(node.input[position]) if len(node.input) > position and node.input[position] else None

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
        return _slice(source, [constant(i) for i in range(1, 5)])
    return None


def _slice(source: np.ndarray, arguments) -> np.ndarray | None:
    starts, ends, axes, steps = arguments
    if starts is None or ends is None:
        return None
    axes = range(len(starts)) if axes is None else [int(a) % source.ndim for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * source.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps):
        length = source.shape[axis]
        # ONNX clamps out-of-range bounds (INT64 min/max mark "to the end"), as Python slices do
        # once brought into range.
        start, end = (max(min(int(v), length + 1), -length - 1) for v in (start, end))
        index[axis] = slice(start, end if end >= -length else None, int(step))
    return source[tuple(index)]
