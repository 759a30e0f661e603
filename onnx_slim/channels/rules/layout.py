"""Layout ops: Transpose, Squeeze/Unsqueeze, reductions, Flatten and Reshape move the channel axis."""

from __future__ import annotations

import math

import numpy as np

from onnx_slim.channels.rules.registry import input_at, rule, set_const_entry, tracked_with_rank
from onnx_slim.channels.space import repeat_layout
from onnx_slim.ir.graph import attr


@rule("Transpose")
def transpose(ctx, node):
    found = tracked_with_rank(ctx, node)
    if found is None:
        return
    tracked, rank = found
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
    """Reductions over spatial axes keep the channel (squeeze-excite); over channels they freeze,
    but for a mean over the channels alone with --prune-layernorm (a LayerNorm written out as
    ReduceMean, Sub, Pow, ReduceMean, Sqrt, Div, or GRN's mean of the channels' norms): its output
    broadcasts over the kept channels."""
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
    keepdims = attr(node, "keepdims", 1)
    if axes == [tracked.axis] and keepdims and node.op_type == "ReduceMean" and ctx.prune_layernorm:
        return  # a LayerNorm's statistics, written out (exports before opset 17): a broadcast value
    if tracked.axis in axes:
        statistic = axes == [tracked.axis] and keepdims and node.op_type == "ReduceMean"
        ctx.freeze(tracked.layout, node, "reduces over the channel axis" + (
            " (a statistic over the channels, as a decomposed LayerNorm or ConvNeXt-V2's GRN takes: "
            "--prune-layernorm allows it)" if statistic else ""))
        return
    new_axis = tracked.axis if keepdims else tracked.axis - sum(1 for a in axes if a < tracked.axis)
    ctx.track(node.output[0], new_axis, tracked.layout)


@rule("Softmax", "LogSoftmax", "Hardmax", "LpNormalization", "CumSum")
def along_axis(ctx, node):
    """Ops that mix values along one axis: harmless unless that axis is the channel axis."""
    found = tracked_with_rank(ctx, node)
    if found is None:
        return
    tracked, rank = found
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
    if out_axis == 0 and math.prod(outer) != 1:
        ctx.freeze(tracked.layout, node, "flattens the channel axis with the batch")
        return
    # Axes merged before the channel (channels-last) tile it: channel c recurs every
    # prod(inner) indices, once per outer position.
    ctx.track(node.output[0], out_axis, repeat_layout(tracked.layout, math.prod(inner)) * math.prod(outer))


@rule("Reshape")
def reshape(ctx, node):
    """A channel count read through Shape into the target must land on these same channels
    (checked in `_reshape`); on every other path it would resize something that does not shrink."""
    carrier = ctx.size_carriers.get(input_at(node, 1))
    if not _reshape(ctx, node, carrier) and carrier is not None:
        ctx.freeze(carrier[0], node, "reads the channel count through Shape")


def _reshape(ctx, node, carrier) -> bool:
    """Track the channels through the reshape (or freeze them); True when a carrier in the target
    was checked to carry these channels' own count."""
    tracked = ctx.get(node.input[0])
    if tracked is None:
        return False
    in_shape, out_shape = ctx.static_shape(node.input[0]), ctx.static_shape(node.output[0])
    target = _target_entries(ctx, node.input[1])
    if target is None:
        ctx.freeze(tracked.layout, node, "target shape is computed at run time")
        return False
    if in_shape is None or out_shape is None:
        ctx.freeze(tracked.layout, node, "shapes not static")
        return False
    if _channel_shuffle(ctx, node, tracked, in_shape, out_shape):
        return False
    mapped = reshape_channel_axis(in_shape, out_shape, tracked.axis)
    tiled = tiled_channel_axis(in_shape, out_shape, tracked.axis) if mapped is None else None
    untiled = None
    if mapped is None and tiled is None:
        untiled = untiled_channel_axis(tracked.layout, in_shape, out_shape, tracked.axis)
    if mapped is not None:
        out_axis, repeat = mapped
        layout = repeat_layout(tracked.layout, repeat)
    elif tiled is not None:
        out_axis, tiles, repeat = tiled
        layout = repeat_layout(tracked.layout, repeat) * tiles
    elif untiled is not None:
        out_axis, layout = untiled
    else:
        heads = split_heads(ctx, node, tracked, in_shape, out_shape)
        if heads is None:
            return False
        out_axis, layout = heads
    if carrier is not None and not _carries_own_count(ctx, carrier, out_axis, layout):
        ctx.freeze(tracked.layout, node, "the target's channel count is read from another tensor")
        return False
    entry, source = target[out_axis] if out_axis < len(target) else (-1, None)
    if entry is None and carrier is None:
        ctx.freeze(tracked.layout, node, "the target's channel count is computed at run time")
        return False
    if entry is not None and entry > 0:
        if source != node.input[1] and any(ctx.readers(name) > 1 for name in _target_chain(ctx, node.input[1])):
            # Rewriting the shared Concat's constant would resize the other readers too.
            ctx.freeze(tracked.layout, node, "the computed target shape is shared with other nodes")
            return False
        ctx.fix(node, [layout], set_const_entry(source, _index_in(target, out_axis), layout))
    elif entry == 0 and out_axis != tracked.axis:
        ctx.freeze(tracked.layout, node, "target copies a dimension from another position")
        return False
    ctx.track(node.output[0], out_axis, layout)
    return carrier is not None


def _channel_shuffle(ctx, node, tracked, in_shape, out_shape) -> bool:
    """ShuffleNet's channel shuffle, handled at its first Reshape: [.., C, ..] -> [.., g, C/g, ..],
    a Transpose swapping those two axes, a Reshape back to [.., C, ..]. Output channel i*g + j is
    part j's channel i: the g parts are tied channel by channel, so each class channel covers g
    consecutive outputs. Both targets' counts are rewritten. False when the three nodes are not
    this pattern (the Reshape is then handled as any other)."""
    axis = tracked.axis
    split = list(out_shape[axis:axis + 2]) if len(out_shape) == len(in_shape) + 1 else []
    if (len(split) != 2 or split[0] < 2 or split[0] * split[1] != in_shape[axis]
            or list(out_shape[:axis]) + list(out_shape[axis + 2:]) != list(in_shape[:axis]) + list(in_shape[axis + 1:])):
        return False
    groups, per_group = split
    transposes = ctx.reader_nodes(node.output[0])
    if len(transposes) != 1 or transposes[0].op_type != "Transpose":
        return False
    swap = list(range(len(out_shape)))
    swap[axis], swap[axis + 1] = axis + 1, axis
    merges = ctx.reader_nodes(transposes[0].output[0])
    if (list(attr(transposes[0], "perm", [])) != swap or len(merges) != 1 or merges[0].op_type != "Reshape"
            or list(ctx.static_shape(merges[0].output[0]) or ()) != list(in_shape)):
        return False
    merge = merges[0]
    first, second = _target_entries(ctx, node.input[1]), _target_entries(ctx, merge.input[1])
    if (first is None or second is None or first[axis + 1][0] not in (per_group, -1)
            or second[axis][0] not in (in_shape[axis], -1)
            or any(ctx.readers(name) > 1 for target in (node.input[1], merge.input[1])
                   for name in _target_chain(ctx, target))):
        ctx.freeze(tracked.layout, node, "channel shuffle whose target shapes cannot be rewritten")
        return True
    parts = [ctx.atoms.sub_layout(tracked.layout, j * per_group, (j + 1) * per_group) for j in range(groups)]
    if None in parts or not all(ctx.atoms.unify(parts[0], part, coarsen=True) for part in parts[1:]):
        ctx.freeze(tracked.layout, node, "channel shuffle of parts that cannot be tied channel by channel")
        return True
    shuffled = repeat_layout(parts[0], groups)
    if first[axis + 1][0] > 0:
        ctx.fix(node, [parts[0]], set_const_entry(first[axis + 1][1], _index_in(first, axis + 1), parts[0]))
    if second[axis][0] > 0:
        ctx.fix(merge, [shuffled], set_const_entry(second[axis][1], _index_in(second, axis), shuffled))
    ctx.track(merge.output[0], axis, shuffled)
    return True


def _carries_own_count(ctx, carrier, out_axis: int, layout) -> bool:
    """Whether a target read through Shape puts the channel count exactly where this reshape's
    channels land, and of the same channels: after pruning it then reads the kept count."""
    carried, index = carrier
    return index == out_axis and ctx.atoms.unify(carried, layout)


def split_heads(ctx, node, tracked, in_shape, out_shape):
    """(heads axis, its layout) of a reshape that splits the channel axis into [..., heads, D]
    (attention's view(b, t, heads, head_dim), or timm's (b, t, 3, heads, head_dim) of a fused qkv).

    Heads are the unit: the channels' classes are coarsened so that the D features of a head
    go together. Axes before the heads axis (the 3 of q, k, v) cut the channels into parts
    that are tied head by head, so each part loses the same heads. None, after freezing, when
    the reshape is not such a split or the heads do not line up with the channels' classes.
    """
    split = reshape_split_axes(in_shape, out_shape, tracked.axis)
    if split is None:
        ctx.freeze(tracked.layout, node, f"reshape {list(in_shape)} -> {list(out_shape)} splits or mixes channels")
        return None
    heads_axis, parts, unit = split
    size = ctx.length(tracked.layout) // parts
    pieces = [ctx.atoms.sub_layout(tracked.layout, i * size, (i + 1) * size) for i in range(parts)]
    outer = None if None in pieces else [ctx.atoms.split_units(piece, unit, node.name) for piece in pieces]
    if outer is None or None in outer:
        ctx.freeze(tracked.layout, node, f"heads of {unit} channels do not line up with the channel groups")
        return None
    if not all(ctx.atoms.unify(outer[0], other) for other in outer[1:]):
        ctx.freeze(tracked.layout, node, f"the {parts} parts split into heads cannot be tied head by head")
        return None
    return heads_axis, outer[0]


def reshape_split_axes(in_shape, out_shape, axis) -> tuple[int, int, int] | None:
    """(heads axis, parts, D) when a reshape splits channel axis `axis` into consecutive output
    axes [parts..., heads, D]: the last of them is one head's D features, the one before it the
    heads, any before that (the 3 of a fused qkv) parts. None for any other reshape."""
    outer, channels = math.prod(in_shape[:axis]), in_shape[axis]
    first, accumulated = 0, 1
    while first < len(out_shape) and accumulated < outer:
        accumulated *= out_shape[first]
        first += 1
    if accumulated != outer or channels <= 1:
        return None
    while first < len(out_shape) and out_shape[first] == 1:
        first += 1
    last, covered = first, 1
    while last < len(out_shape) and covered < channels:
        covered *= out_shape[last]
        last += 1
    if covered != channels or last - first < 2:
        return None
    heads_axis = last - 2
    return heads_axis, math.prod(out_shape[first:heads_axis]), out_shape[last - 1]


def _target_entries(ctx, name):
    """A Reshape target entry by entry: (value, constant holding it), value None where it is
    computed at run time; None when the entries cannot be told apart.

    Exporters write `view(b, t, c)` as Concat(Gather(Shape(x), 0), Gather(Shape(x), 1), [c]):
    the channel count sits in a constant input of the Concat, which the rule can rewrite
    while the batch and sequence stay computed at run time.
    """
    value = ctx.const(name)
    if value is not None:
        return [(int(v), name) for v in value.reshape(-1)]
    producer = ctx.producer(_target_chain(ctx, name)[-1])
    shape = ctx.static_shape(name)
    if producer is not None and producer.op_type == "Shape" and shape is not None and len(shape) == 1:
        # `y.reshape_as(x)` (timm's LeViT: BatchNorm1d on a flattened Linear output): every entry is
        # read at run time; the channel count follows when it is x's own (the rule's size carrier).
        return [(None, None)] * shape[0]
    if producer is None or producer.op_type != "Concat":
        return None
    entries = []
    for part in producer.input:
        value = ctx.const(part)
        shape = ctx.static_shape(part)
        if value is not None:
            entries += [(int(v), part) for v in value.reshape(-1)]
        elif shape is not None and len(shape) == 1:
            entries += [(None, None)] * shape[0]
        else:
            return None
    return entries


def _target_chain(ctx, name) -> list[str]:
    """`name`, then the inputs of the Identity or Cast nodes it comes through (paddle2onnx puts
    them between a target's Concat and its Reshape), up to the tensor the Concat makes."""
    chain = [name]
    producer = ctx.producer(name)
    while producer is not None and producer.op_type in ("Identity", "Cast"):
        chain.append(producer.input[0])
        producer = ctx.producer(producer.input[0])
    return chain


def _index_in(target, position: int) -> int:
    """The index of target entry `position` within the constant that holds it."""
    source = target[position][1]
    return sum(1 for _, other in target[:position] if other == source)


def tiled_channel_axis(in_shape, out_shape, axis) -> tuple[int, int, int] | None:
    """(output axis, tiles, repeat) when the reshape merges the channel axis with axes before it
    (and maybe after it) into one: a channels-last flatten ([N, H, W, C] -> [N, H*W*C], as Keras
    models feed a Dense) puts channel c at every `tiles`-th block of `repeat` indices. None
    when no output axis is exactly such a merge, or no axis before the channel is merged."""
    before_in = [math.prod(in_shape[:index]) for index in range(len(in_shape) + 1)]
    before_out = [math.prod(out_shape[:index]) for index in range(len(out_shape) + 1)]
    for out_axis in range(len(out_shape)):
        starts = [k for k in range(axis + 1) if before_in[k] == before_out[out_axis]]
        stops = [m for m in range(axis, len(in_shape)) if before_in[m + 1] == before_out[out_axis + 1]]
        if starts and stops:
            start, stop = max(starts), min(stops)  # leading and trailing size-1 axes stay out
            tiles = math.prod(in_shape[start:axis])
            return (out_axis, tiles, math.prod(in_shape[axis + 1:stop + 1])) if tiles > 1 else None
    return None


def untiled_channel_axis(layout, in_shape, out_shape, axis) -> tuple[int, tuple] | None:
    """(output axis, layout) when the reshape splits a tiled channel axis back into [tiles, C]: the
    dynamo exporter's kᵀ in attention over a fixed batch B > 1 (MobileViT's patches) views k
    [B, H, N, D] as [B*H, N, D], transposes it and views it back as [B, H, D, N]. None unless the
    channel axis holds `tiles` copies of one layout and the reshape cuts it exactly there."""
    for tiles in range(2, len(layout) + 1):
        base = layout[:len(layout) // tiles]
        if len(layout) % tiles or base * tiles != tuple(layout):
            continue
        split = list(in_shape[:axis]) + [tiles, in_shape[axis] // tiles] + list(in_shape[axis + 1:])
        if in_shape[axis] % tiles == 0 and list(out_shape) == split:
            return axis + 1, base
    return None


def reshape_channel_axis(in_shape, out_shape, axis) -> tuple[int, int] | None:
    """Where channel axis `axis` lands in a reshape, and how many indices each channel covers.

    None unless the reshape keeps the channel whole and first in its output axis:
    either it stays an axis of its own, or it is merged with the axes right after it
    (a flatten, `repeat` = their product).
    """
    outer, channels = math.prod(in_shape[:axis]), in_shape[axis]
    out_axis, accumulated = 0, 1
    if channels == 1 and list(out_shape[:axis]) == list(in_shape[:axis]):
        out_axis, accumulated = axis, outer  # one channel beside size-1 axes: the same place, not the first 1
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
