"""Build channel groups: walk the graph once, apply each node's rule, read out the classes."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import onnx

from onnx_slim.channels.carriers import follow_size_carriers
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
        follow_size_carriers(ctx, node)
        RULES.get(node.op_type, unknown_op)(ctx, node)
        _freeze_subgraph_reads(ctx, node)
    for output in model.graph.output:
        tracked = ctx.get(output.name)
        if tracked is not None:
            ctx.freeze(tracked.layout, f"output {output.name}", "feeds a model output")
        if output.name in ctx.size_carriers:
            ctx.freeze(ctx.size_carriers[output.name][0], f"output {output.name}", "the output holds the channel count")
    return ChannelAnalysis(ctx, _collect_groups(ctx))


def _freeze_subgraph_reads(ctx: AnalysisContext, node: onnx.NodeProto) -> None:
    """Tensors that a subgraph (If/Loop/Scan body) reads from outside are not visible
    as node inputs; whatever they carry must stay as it is."""
    for body in subgraphs(node):
        for name in {name for inner in body.node for name in inner.input} | names_read_in_subgraphs(body):
            tracked = ctx.get(name)
            if tracked is not None:
                ctx.freeze(tracked.layout, node, "read inside a subgraph")
            if name in ctx.size_carriers:
                ctx.freeze(ctx.size_carriers[name][0], node, "its channel count is read inside a subgraph")


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
