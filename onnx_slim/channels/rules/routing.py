"""Routing ops: Concat, Split, Slice, Gather, GatherElements, GatherND, ScatterND, Tile/Expand, Shape/Size."""

from __future__ import annotations

import numpy as np
from onnx import helper

from onnx_slim.channels.context import PARAM
from onnx_slim.channels.partial import UNKNOWN, known_entries
from onnx_slim.channels.rules.registry import (
    elementwise_same_axis,
    input_at,
    join_channels,
    joined_inputs,
    rule,
    set_const_entry,
    tracked_with_rank,
)
from onnx_slim.ir.graph import attr


@rule("Concat")
def concat(ctx, node):
    found = joined_inputs(ctx, node)
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
    elif any(t.axis == axis for t in tracked.values()) or not _constant_parts_follow(ctx, node, inputs, tracked):
        ctx.freeze_inputs(node, "concatenates tensors whose channels do not line up")
    else:
        elementwise_same_axis(ctx, node, [ctx.get(name) for name in inputs])


def _constant_parts_follow(ctx, node, inputs, tracked) -> bool:
    """Whether every untracked part of a Concat along another axis is a constant whose channel
    axis can be sliced with the tracked parts' channels: a ViT's class token ([1, 1, D],
    expanded to the batch) joined to the patch tokens on the sequence axis. Such a constant
    is tracked with the channels it joins (sliced as a per-channel parameter)."""
    first = next(iter(tracked.values()))
    for name in inputs:
        if name not in tracked and not _track_constant(ctx, node, name, first.axis, first.layout):
            return False
    return True


def _track_constant(ctx, node, name, axis: int, layout) -> bool:
    """Track `axis` of `name` as `layout`: `name` is a constant, or an Expand of a constant read
    only by `node` (the Expand rule then runs on it again, now that its input is tracked)."""
    source, expand = name, None
    if not ctx.is_const(name):
        expand = ctx.producer(name)
        if expand is None or expand.op_type != "Expand" or not ctx.is_const(expand.input[0]) \
                or ctx.readers(name) != 1:
            return False
        source = expand.input[0]
    shape, rank = ctx.static_shape(source), ctx.rank(name)
    if shape is None or rank is None:
        return False
    source_axis = axis - (rank - len(shape))  # Expand aligns its input's axes from the right
    if source_axis < 0 or shape[source_axis] != ctx.length(layout):
        return False
    ctx.use(PARAM, node if expand is None else expand, source, source_axis, layout)
    ctx.track(source, source_axis, layout)
    if expand is not None:
        tile_expand(ctx, expand)
    found = ctx.get(name)
    return found is not None and found.axis == axis


@rule("Split")
def split(ctx, node):
    found = tracked_with_rank(ctx, node)
    if found is None:
        return
    tracked, rank = found
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
        _gather_every_channel(ctx, node, tracked)
        return
    new_axis = tracked.axis + (indices_rank - 1 if axis < tracked.axis else 0)
    ctx.track(node.output[0], new_axis, tracked.layout)


@rule("GatherND")
def gather_nd(ctx, node):
    """Rows picked by index tuples over the leading axes (Swin-V2's relative-position table, as the
    dynamo exporter writes `table[index]`): channels on a trailing axis the tuples do not index
    pass through, after the index tensor's own leading axes."""
    tracked = ctx.get(node.input[0])
    if tracked is None:
        ctx.freeze_inputs(node, "op GatherND is not understood for these inputs")
        return
    indices = ctx.static_shape(node.input[1])
    first_kept = None if indices is None else attr(node, "batch_dims", 0) + indices[-1]
    if ctx.get(node.input[1]) is not None or first_kept is None or tracked.axis < first_kept:
        ctx.freeze_inputs(node, "gathers index tuples over the channel axis")
        return
    ctx.track(node.output[0], len(indices) - 1 + tracked.axis - first_kept, tracked.layout)


@rule("ScatterND")
def scatter_nd(ctx, node):
    """Slices written by index tuples over the leading axes (the dynamo exporter's `x[..., :1] = y`
    after moving the indexed axes to the front, as in Funnel's attention): channels on an axis the
    tuples do not reach pass through, tied with the same axis of the written values."""
    data, updates = ctx.get(node.input[0]), ctx.get(node.input[2])
    indices = ctx.static_shape(node.input[1])
    updates_rank = ctx.rank(node.input[2])
    if data is None and updates is None:
        return
    reached = None if indices is None else indices[-1]
    if (data is None or updates is None or reached is None or updates_rank is None or data.axis < reached
            or ctx.get(node.input[1]) is not None or updates.axis != len(indices) - 1 + data.axis - reached):
        ctx.freeze_inputs(node, "scatters along the channel axis, or values that do not carry the same channels")
        return
    join_channels(ctx, node, [data.layout, updates.layout], data.axis)


@rule("GatherElements")
def gather_elements(ctx, node):
    """Picks along one axis with an index tensor of the data's rank (DeBERTa's relative-position
    scores): channels on another axis pass through when data and indices carry the same ones."""
    data, indices = ctx.get(node.input[0]), ctx.get(node.input[1])
    rank = ctx.rank(node.input[0])
    if data is None and indices is None:
        return
    axis = None if rank is None else attr(node, "axis", 0) % rank
    if data is None or indices is None or data.axis != indices.axis or axis == data.axis:
        ctx.freeze_inputs(node, "gathers elements along the channels, or from tensors that do not both carry them")
        return
    join_channels(ctx, node, [data.layout, indices.layout], data.axis)


def _gather_every_channel(ctx, node, tracked) -> None:
    """Gathering along the channel axis with constant indices 0, 1, ..., C-1 along one axis of
    the indices (the dynamo exporter's `as_strided` of a [C] tensor to [1, C, 1, 1]) moves the
    channels to that axis; after pruning the indices count the kept channels. Any other
    gather along the channels picks or reorders them: frozen."""
    indices = ctx.const(node.input[1])
    channels = ctx.length(tracked.layout)
    spanned = [] if indices is None else [i for i, size in enumerate(indices.shape) if size != 1]
    if len(spanned) != 1 or not np.array_equal(indices.reshape(-1), np.arange(channels)):
        ctx.freeze(tracked.layout, node, "gathers along the channel axis")
        return
    ctx.fix(node, [tracked.layout], _count_kept(node.input[1], spanned[0], tracked.layout))
    ctx.track(node.output[0], tracked.axis + spanned[0], tracked.layout)


def _count_kept(indices_name: str, axis: int, layout):
    def apply(editor, kept_length):
        shape = list(editor.value(indices_name).shape)
        shape[axis] = kept_length(layout)
        editor.set_value(indices_name, np.arange(kept_length(layout)).reshape(shape))
    return apply


@rule("Tile", "Expand")
def tile_expand(ctx, node):
    tracked = ctx.get(node.input[0])
    in_rank, out_rank = ctx.rank(node.input[0]), ctx.rank(node.output[0])
    carrier = ctx.size_carriers.get(input_at(node, 1)) if node.op_type == "Expand" else None
    if tracked is None:
        if carrier is not None:
            _expand_to_channel_count(ctx, node, carrier)
        return
    if carrier is not None and not _count_at_channel_entry(ctx, node, tracked, carrier):
        ctx.freeze(carrier[0], node, "reads the channel count through Shape into another axis")
    if in_rank is None or out_rank is None:
        ctx.freeze(tracked.layout, node, "rank unknown")
        return
    out_axis = tracked.axis + out_rank - in_rank
    if node.op_type == "Tile":
        _tile(ctx, node, tracked)
        return
    if ctx.const(node.input[1]) is None:
        _expand_to_computed_shape(ctx, node, tracked, out_axis)
        return
    values = ctx.const(node.input[1])
    index = out_axis - (out_rank - values.size)  # Expand's shape is right-aligned with the output
    entry = int(values[index]) if 0 <= index < values.size else 1
    channels = ctx.length(tracked.layout)
    if entry not in (1, channels):
        ctx.freeze(tracked.layout, node, "expands the channel axis")
        return
    if entry == channels and channels != 1:
        ctx.fix(node, [tracked.layout], set_const_entry(node.input[1], index, tracked.layout))
    ctx.track(node.output[0], out_axis, tracked.layout)


def _tile(ctx, node, tracked) -> None:
    """Tiling the channel axis r times makes r copies of its layout; the repeats stay as they are,
    so they must not depend on the channels (DeBERTa tiles its relative-position heads by the
    batch, computed as Shape(q)[0] // heads). r is read from the shapes when computed."""
    values = ctx.const(node.input[1])
    in_shape, out_shape = ctx.static_shape(node.input[0]), ctx.static_shape(node.output[0])
    if values is not None:
        tiles = int(values[tracked.axis])
    elif not ctx.independent_of_channels(node.input[1]):
        ctx.freeze(tracked.layout, node, "repeats computed from the channel count")
        return
    elif in_shape is None or out_shape is None or out_shape[tracked.axis] != in_shape[tracked.axis]:
        # Copies counted at the analysis sizes (a sequence length) would be wrong at others.
        ctx.freeze(tracked.layout, node, "tiles the channel axis by a count computed at run time")
        return
    else:
        tiles = 1  # the batch of 1 the analysis runs at (DeBERTa); other batches tile the kept channels alike
    ctx.track(node.output[0], tracked.axis, tracked.layout * tiles)


def _expand_to_channel_count(ctx, node, carrier) -> None:
    """Expand of a tensor without channels to a shape holding a channel count read through Shape
    (DeBERTa's relative-position indices expanded to [B*H, S, S]): the copies along that axis are
    all equal, so the output carries those channels, and after pruning it reads the kept count."""
    layout, index = carrier
    shape, size = ctx.static_shape(node.input[0]), (ctx.static_shape(node.input[1]) or (None,))[0]
    out_rank = ctx.rank(node.output[0])
    if shape is None or size is None or out_rank is None:
        ctx.freeze(layout, node, "reads the channel count through Shape")
        return
    out_axis = index + out_rank - size
    source_axis = out_axis - (out_rank - len(shape))
    if source_axis >= 0 and shape[source_axis] != 1:
        ctx.freeze(layout, node, "reads the channel count through Shape")
        return
    ctx.track(node.output[0], out_axis, layout)


def _count_at_channel_entry(ctx, node, tracked, carrier) -> bool:
    """Whether a count read through Shape sits at the shape entry of the input's channel axis,
    which `_expand_to_computed_shape` replaces by 1 (repeat_kv's expand(b, kv_heads, n_rep, t, d)):
    whatever it holds after pruning is then never read."""
    in_rank, out_rank = ctx.rank(node.input[0]), ctx.rank(node.output[0])
    shape_size = (ctx.static_shape(node.input[1]) or (None,))[0]
    if in_rank is None or out_rank is None or shape_size is None or ctx.length(tracked.layout) == 1:
        return False
    return carrier[1] == tracked.axis + out_rank - in_rank - (out_rank - shape_size) >= 0


def _expand_to_computed_shape(ctx, node, tracked, out_axis: int) -> None:
    """An Expand whose shape is computed at run time (`cls_token.expand(B, -1, -1)`). The input
    has C > 1 channels, so the shape's channel entry can only be 1 or C (anything else fails to
    broadcast); after pruning, that entry is replaced by 1 so the output takes the kept count
    from the input, whatever the shape computation gives."""
    shape_size = (ctx.static_shape(node.input[1]) or (None,))[0]
    channels = ctx.length(tracked.layout)
    if shape_size is not None and channels == 1 and _keeps_one_channel(ctx, node, out_axis, shape_size):
        ctx.track(node.output[0], out_axis, tracked.layout)  # one channel, never pruned: nothing to rewrite
        return
    if shape_size is None or channels == 1:
        ctx.freeze(tracked.layout, node, "shape computed at run time, of unknown length")
        return
    index = out_axis - (ctx.rank(node.output[0]) - shape_size)
    if index >= 0:
        ctx.fix(node, [tracked.layout], _broadcast_shape_entry(node.name, index, shape_size))
    ctx.track(node.output[0], out_axis, tracked.layout)


def _keeps_one_channel(ctx, node, out_axis: int, shape_size: int) -> bool:
    """Whether an Expand of a one-channel axis leaves it one channel at any input size: the shape's
    entry there is a constant 1, or the count of a one-channel class (never pruned) read through
    Shape (Falcon's repeat_kv of its single k/v head, as dynamo and TorchScript export it)."""
    carrier = ctx.size_carriers.get(node.input[1])
    out_shape = ctx.static_shape(node.output[0])
    if out_shape is None or out_shape[out_axis] != 1:
        return False
    index = out_axis - (len(out_shape) - shape_size)
    if carrier is not None and carrier[1] == index:
        return ctx.length(carrier[0]) == 1
    entries = known_entries(ctx, node.input[1])
    return entries is not None and 0 <= index < len(entries) and entries[index] is not UNKNOWN and entries[index] == 1


def _broadcast_shape_entry(node_name: str, index: int, size: int):
    """Put Where(keep, shape, 1) in front of the Expand: entry `index` of its shape becomes 1."""
    def apply(editor, kept_length):
        expand = editor.node(node_name)
        keep = editor.add_initializer(f"{node_name}_keep_entries", np.arange(size) != index)
        one = editor.add_initializer(f"{node_name}_one", np.ones(1, dtype=np.int64))
        shape = f"{node_name}_broadcast_shape"
        editor.insert_before(node_name, helper.make_node("Where", [keep, expand.input[1], one], [shape], name=shape))
        editor.node(node_name).input[1] = shape
    return apply


@rule("Shape")
def shape_of(ctx, node):
    """The sizes it returns follow the pruned tensor, so the channel count it reads is
    safe only where nothing uses it: it is tracked as a size carrier (see groups.py)."""
    found = tracked_with_rank(ctx, node)
    if found is None:
        return
    tracked, rank = found
    start, end = attr(node, "start", 0), attr(node, "end", rank)
    start, end = (start % rank if start < 0 else start), (end % rank if end < 0 else min(end, rank))
    if start <= tracked.axis < end:
        ctx.size_carriers[node.output[0]] = (tracked.layout, tracked.axis - start)


@rule("Size")
def size_of(ctx, node):
    ctx.freeze_inputs(node, "the element count depends on the channel count")
