"""Spatial ops (pooling, Pad, Resize): channels pass through, constants may name a channel count."""

from __future__ import annotations

import numpy as np

from onnx_slim.channels.partial import UNKNOWN, known_entries
from onnx_slim.channels.rules.registry import input_at, rule, set_const_entry
from onnx_slim.ir.graph import attr


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
    # Pads computed at run time (F.pad of sizes read through Shape) still keep constant zeros on the
    # axes they leave alone: those entries are enough (`partial`).
    pads = known_entries(ctx, input_at(node, 1)) if ctx.opset >= 11 else np.array(attr(node, "pads", []))
    axes_input = input_at(node, 3)
    axes = ctx.const(axes_input) if axes_input else np.arange(rank or 0)
    if pads is None or axes is None or rank is None:
        ctx.freeze(tracked.layout, node, "pads are computed at run time")
        return
    if pads.size != 2 * len(axes):
        ctx.freeze(tracked.layout, node, f"{pads.size} pads for {len(axes)} axes")
        return
    axes, pads = [int(a) % rank for a in axes], pads.reshape(-1)
    if tracked.axis in axes:
        index = axes.index(tracked.axis)
        if UNKNOWN in (pads[index], pads[index + len(axes)]):
            ctx.freeze(tracked.layout, node, "pads of the channel axis are computed at run time")
            return
        if pads[index] != 0 or pads[index + len(axes)] != 0:
            ctx.freeze(tracked.layout, node, "pads the channel axis")
            return
    ctx.track(node.output[0], tracked.axis, tracked.layout)


@rule("Resize", "Upsample")
def resize(ctx, node):
    """Sizes read from the input's own shape (tf2onnx) are accepted where the count lands on its
    channel axis (checked in `_resize`); on every other path the count would resize another axis."""
    sizes_name = input_at(node, 3) if node.op_type == "Resize" else ""
    carrier = ctx.size_carriers.get(sizes_name) if sizes_name else None
    if not _resize(ctx, node, carrier) and carrier is not None:
        ctx.freeze(carrier[0], node, "reads the channel count through Shape")


def _resize(ctx, node, carrier) -> bool:
    """Track the channels (or freeze them); True when a carrier in the sizes was checked."""
    tracked = ctx.get(node.input[0])
    if tracked is None:
        return False
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
            return False
        axes = [int(a) % rank for a in axes]
        if tracked.axis not in axes:
            ctx.track(node.output[0], tracked.axis, tracked.layout)
            return False
        index = axes.index(tracked.axis)
    scales, sizes = ctx.const(scales_name), ctx.const(sizes_name)
    checked = carrier is not None and carrier[1] == index and ctx.atoms.unify(carrier[0], tracked.layout)
    if checked:
        pass  # sizes = [N, C] read from the input's own shape + new H, W (tf2onnx): C follows by itself
    elif sizes_name:
        if sizes is None:
            ctx.freeze(tracked.layout, node, "output sizes are computed at run time")
            return False
        ctx.fix(node, [tracked.layout], set_const_entry(sizes_name, index, tracked.layout))
    elif scales is None or scales.size <= index:
        ctx.freeze(tracked.layout, node, "scales are computed at run time")
        return False
    elif scales[index] != 1:
        ctx.freeze(tracked.layout, node, "resizes the channel axis")
        return False
    ctx.track(node.output[0], tracked.axis, tracked.layout)
    return checked

