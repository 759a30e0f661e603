"""Build channel groups: walk the graph once, apply each node's rule, read out the classes."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import onnx

from onnx_slim.channels.context import CONSUMER, PARAM, PRODUCER, AnalysisContext, Use
from onnx_slim.channels.rules import RULES, unknown_op
from onnx_slim.channels.space import FreezeReason
from onnx_slim.ir.graph import names_read_in_subgraphs, subgraphs


@dataclass(frozen=True)
class Member:
    """One use of a group: indices `offset + channel * repeat + k` (k < repeat) of `use.tensor`."""

    use: Use
    offset: int
    repeat: int

    def indices(self, channel: int) -> range:
        start = self.offset + channel * self.repeat
        return range(start, start + self.repeat)


@dataclass
class ChannelGroup:
    """Tied channel spaces: removing channel i removes index i from every member at once."""

    id: int
    root: int
    channels: int
    producers: list[Member] = field(default_factory=list)
    consumers: list[Member] = field(default_factory=list)
    params: list[Member] = field(default_factory=list)
    frozen: list[FreezeReason] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return not self.frozen and bool(self.producers) and self.channels > 1

    @property
    def blocks(self) -> int:
        """How many channels of a producer's output one channel of the group is: `group`
        for the channels a grouped Conv ties across its groups, else 1 (the gcd of the
        producers' counts, should they differ: every count is a multiple of it)."""
        return math.gcd(*Counter(member.use for member in self.producers).values()) or 1

    @property
    def unit(self) -> int:
        """How many consecutive channels of a producer's output one channel of the group is:
        a head's D features for attention heads, else 1."""
        return math.gcd(*(member.repeat for member in self.producers)) or 1

    @property
    def nodes(self) -> list[str]:
        seen = {}
        for member in self.producers + self.consumers + self.params:
            seen.setdefault(member.use.node, None)
        return list(seen)

    @property
    def status(self) -> str:
        if self.frozen:
            return "frozen"
        if not self.producers:
            return "no producer"
        return "prunable" if self.channels > 1 else "single channel"


@dataclass
class ChannelAnalysis:
    context: AnalysisContext
    groups: list[ChannelGroup]

    @property
    def atoms(self):
        return self.context.atoms

    def prunable_groups(self) -> list[ChannelGroup]:
        return [group for group in self.groups if group.prunable]


def analyze_channels(model: onnx.ModelProto, shapes: dict, *, prune_layernorm: bool = False,
                     whole_conv_groups: bool = False) -> ChannelAnalysis:
    """Channel groups of a normalized model, given concrete inferred shapes."""
    ctx = AnalysisContext(model, shapes, prune_layernorm=prune_layernorm, whole_conv_groups=whole_conv_groups)
    for node in model.graph.node:
        _check_size_carriers(ctx, node)
        RULES.get(node.op_type, unknown_op)(ctx, node)
        _freeze_subgraph_reads(ctx, node)
    for output in model.graph.output:
        tracked = ctx.get(output.name)
        if tracked is not None:
            ctx.freeze(tracked.layout, f"output {output.name}", "feeds a model output")
        if output.name in ctx.size_carriers:
            ctx.freeze(ctx.size_carriers[output.name][0], f"output {output.name}", "the output holds the channel count")
    return ChannelAnalysis(ctx, _collect_groups(ctx))


def _check_size_carriers(ctx: AnalysisContext, node: onnx.NodeProto) -> None:
    """A channel count read through Shape must not flow anywhere (e.g. into a Reshape
    target for another tensor): after pruning it would carry the new count there.
    Gathering only other entries (the batch size, the sequence length) is harmless.
    Slices and Concats of shape tensors carry the count along to a Reshape target, which
    the Reshape rule accepts where the count lands on the same channels (the dynamo
    exporter's kᵀ in scaled_dot_product_attention: [B, H] read back from k's shape)."""
    for name in node.input:
        carrier = ctx.size_carriers.get(name)
        if carrier is None:
            continue
        layout, index = carrier
        if node.op_type == "Gather" and name == node.input[0]:
            indices = ctx.const(node.input[1])
            picked = [] if indices is None else [int(i) for i in indices.reshape(-1)]
            if indices is not None and index not in picked:
                continue
            if indices is not None and indices.ndim == 1 and picked.count(index) == 1:
                # A permuted read (tf2onnx reads an NHWC shape as Shape(NCHW)[0, 2, 3, 1]): the
                # count moves to its new position, where the readers are checked in turn.
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
            ctx.size_carriers[node.output[0]] = (layout, index if node.op_type in ("Identity", "Cast") else 0)
            continue
        if node.op_type == "Reshape" and name == node.input[1]:
            continue  # the Reshape rule checks where the count lands
        if node.op_type == "Resize" and len(node.input) > 3 and name == node.input[3]:
            continue  # so does the Resize rule (sizes read from its own input's shape)
        ctx.freeze(layout, node, "reads the channel count through Shape")


def _carry_as_is(ctx: AnalysisContext, node: onnx.NodeProto, name: str, index: int) -> bool:
    """Identity and Cast pass a shape tensor on unchanged; Squeeze, Unsqueeze and Reshape turn the
    count alone (one element) into a scalar and back (paddle2onnx writes Shape -> Slice -> Squeeze
    -> Unsqueeze or Reshape -> Concat, with Identity nodes in between)."""
    if name != node.input[0]:
        return False
    if node.op_type in ("Identity", "Cast"):
        return True
    shape = ctx.static_shape(name)
    one_element = shape is not None and math.prod(shape) == 1 and index == 0
    return node.op_type in ("Squeeze", "Unsqueeze", "Reshape") and one_element


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


def _freeze_subgraph_reads(ctx: AnalysisContext, node: onnx.NodeProto) -> None:
    """Tensors that a subgraph (If/Loop/Scan body) reads from outside are not visible
    as node inputs; whatever they carry must stay as it is."""
    for body in subgraphs(node):
        for name in {name for inner in body.node for name in inner.input} | names_read_in_subgraphs(body):
            tracked = ctx.get(name)
            if tracked is not None:
                ctx.freeze(tracked.layout, node, "read inside a subgraph")


def _collect_groups(ctx: AnalysisContext) -> list[ChannelGroup]:
    atoms = ctx.atoms
    by_root: dict[int, ChannelGroup] = {}

    def group_of(root: int) -> ChannelGroup:
        if root not in by_root:
            by_root[root] = ChannelGroup(id=-1, root=root, channels=atoms.sizes[atoms.members(root)[0]])
        return by_root[root]

    for use in ctx.uses:
        offset = 0
        for block in atoms.expand(use.layout):
            group = group_of(atoms.find(block.atom))
            member = Member(use, offset, block.repeat)
            {PRODUCER: group.producers, CONSUMER: group.consumers, PARAM: group.params}[use.kind].append(member)
            offset += atoms.sizes[block.atom] * block.repeat
    # Classes seen only in tracked tensors (e.g. a frozen Concat part) still matter for inspect.
    for tracked in ctx.tracked.values():
        for root in atoms.classes_in(tracked.layout):
            group_of(root)
    groups = sorted(by_root.values(), key=_creation_order(ctx))
    for index, group in enumerate(groups):
        group.id = index
        group.frozen = list(atoms.frozen_reasons(group.root))
    return groups


def _creation_order(ctx: AnalysisContext):
    """Order groups by their first producer's position in the graph (stable ids)."""
    position = {node.name: i for i, node in enumerate(ctx.model.graph.node)}

    def key(group: ChannelGroup):
        members = group.producers or group.consumers or group.params
        first = min((position.get(m.use.node, 0) for m in members), default=len(position))
        return (first, min(ctx.atoms.members(group.root)))
    return key
