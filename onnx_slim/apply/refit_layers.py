"""Which layers the re-fit visits, in which passes, and which of them share one weight.

A consumer of a pruned group is re-fitted; consumers are visited by depth level (1 + the
deepest consumer upstream), and a level never holds a layer downstream of another one of
it (see reconstruct.py). Layers that held copies of one weight before normalization gave
each reader its own (an unrolled recurrent cell: the same input projection at every time
step; weight-shared transformer layers) form a *family*: one fit over the rows of every
member, written to each, so the weight stays shared (the copies are merged again when the
model is saved) and one least-squares solve serves them all. A family is fitted in the pass
of its deepest member, where every member's input is known; copies of which a shallower one
feeds another layer fitted before that pass are fitted apart (that layer would see the copy
change after its own fit).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_slim.apply.layers import UNUSABLE_BIAS, bias_target, initializer, kept_outputs
from onnx_slim.apply.least_squares import FitStats
from onnx_slim.channels.context import CONSUMER
from onnx_slim.channels.groups import ChannelAnalysis
from onnx_slim.ir.graph import readers_of
from onnx_slim.ops.specs import CONV_PATCHES, REFIT_SPECS

# Gram statistics one pass may hold (float64, training and held-out parts): a level wider than
# this is split into several passes (an unrolled LSTM has 40 MatMuls of 3336 inputs on one level).
PASS_STATISTICS_BYTES = 1 << 30


@dataclass
class Consumer:
    """One layer to re-fit, with its geometry and its running statistics."""

    node: onnx.NodeProto
    weight: str
    kept_in: list  # original input-axis indices kept
    removed_in: list
    kept_out: list  # original output-channel indices kept
    bias_tensor: str | None  # where the fitted intercept goes (None: no intercept)
    bias_is_following_add: bool  # MatMul: the intercept is added to the next Add's constant
    kind: str  # CONV_PATCHES or MATRIX_ROWS (ops.specs)
    features: int  # columns of the least-squares system (without the intercept)
    kernel: list  # Conv kernel (from the weight: the attribute is optional)
    # With a residual connection: the Add's output (whose original values are the targets) and the
    # other addend (whose pruned values are taken off them), so the fit also absorbs the stream's drift.
    residual: tuple[str, str] | None = None
    targets: list = field(default_factory=list)  # per batch: [S, out] original outputs
    positions: list = field(default_factory=list)  # per batch: conv positions or row indices
    held: list = field(default_factory=list)  # per batch: which of those rows are held out
    input_mean: np.ndarray | None = None  # original input channel means (bias correction)
    # Per batch: 1 / sigma of each sampled row of the LayerNorm input the layer's residual sum is
    # (`reconstruct.LAYER_NORM_ROWS`); empty when its rows are not weighted.
    row_weights: list = field(default_factory=list)
    stats: FitStats = field(default_factory=FitStats)  # one object for every member of a family
    family: list = field(default_factory=list)  # the layers fitted with this one (itself first); [] alone

    @property
    def members(self) -> list:
        return self.family or [self]

    @property
    def leads(self) -> bool:
        """Whether this layer is fitted (alone, or for its family)."""
        return not self.family or self.family[0] is self

    def reset_statistics(self) -> None:
        stats = FitStats()
        for member in self.members:
            member.stats = stats
            member.targets.clear()
            member.held.clear()
            member.row_weights.clear()


def find_consumers(original, pruned, analysis: ChannelAnalysis, plan: dict) -> list[Consumer]:
    """The layers whose inputs `plan` sliced, in graph order, with their families linked."""
    atoms = analysis.atoms
    touched = set(plan)
    nodes = {node.name: node for node in pruned.graph.node}
    readers = readers_of(pruned)
    found: dict[str, Consumer] = {}
    for use in analysis.context.uses:
        if use.kind != CONSUMER or not touched.intersection(atoms.classes_in(use.layout)):
            continue
        node = nodes[use.node]
        spec = REFIT_SPECS.get(node.op_type)
        kind = spec.refit_kind(node) if spec is not None else None
        if kind is None or use.node in found:
            continue
        full = atoms.length(use.layout)
        kept_in = atoms.kept_indices(use.layout, plan)
        removed_in = sorted(set(range(full)) - set(kept_in))
        kept_out = kept_outputs(analysis, use.node, use.tensor, plan, original)
        bias, following = bias_target(node, pruned, readers)
        if bias == UNUSABLE_BIAS:
            continue
        dims = list(initializer(original, use.tensor).dims)
        if kind == CONV_PATCHES and len(dims) not in (3, 4):
            continue  # patches are implemented for 1-D and 2-D convolutions; others keep the slice
        kernel = dims[2:] if kind == CONV_PATCHES else []
        found[use.node] = Consumer(node, use.tensor, kept_in, removed_in, kept_out, bias, following, kind,
                                   features=len(kept_in) * math.prod(kernel), kernel=kernel)
    order = {node.name: i for i, node in enumerate(pruned.graph.node)}
    consumers = sorted(found.values(), key=lambda c: order[c.node.name])
    _link_families(original, consumers)
    return consumers


def _link_families(original, consumers: list[Consumer]) -> None:
    """Link the layers that are copies of one layer: same op, same weight and bias values, same
    kept inputs and outputs (so one fitted matrix is right for each)."""
    by_key: dict[tuple, list[Consumer]] = {}
    names = {init.name for init in original.graph.initializer}
    for consumer in consumers:
        by_key.setdefault(_family_key(original, consumer, names), []).append(consumer)
    for members in by_key.values():
        if len(members) > 1:
            for member in members:
                member.family = members
                member.stats = members[0].stats


def _unlink(family: list[Consumer]) -> None:
    for member in family:
        member.family = []
        member.stats = FitStats()


def _family_key(original, consumer: Consumer, names: set) -> tuple:
    def digest(name):
        if not name or name not in names:
            return None  # no bias, or one the re-fit creates
        init = initializer(original, name)
        return hashlib.sha1(numpy_helper.to_array(init).tobytes()).hexdigest(), tuple(init.dims)

    node = consumer.node
    return (node.op_type, digest(consumer.weight), digest(consumer.bias_tensor), consumer.bias_is_following_add,
            consumer.bias_tensor is None, tuple(consumer.kept_in), tuple(consumer.kept_out), consumer.kind,
            tuple(onnx.helper.printable_attribute(a) for a in node.attribute))


def chunks_by_depth(pruned: onnx.ModelProto, consumers: list[Consumer]) -> list[list[Consumer]]:
    """Consumers grouped by depth level, shallowest first: no chunk holds two layers one of which
    reads the other's output, directly or not (but for the members of a family, which share the
    level of their deepest one); a level whose statistics would pass PASS_STATISTICS_BYTES is
    split, never inside a family."""
    names = {consumer.node.name for consumer in consumers}
    depth: dict[str, int] = {}  # tensor -> level of the deepest consumer upstream
    level_of: dict[str, int] = {}
    for node in pruned.graph.node:  # topological, as ONNX requires
        level = max((depth.get(name, 0) for name in node.input if name), default=0)
        if node.name in names:
            level += 1
            level_of[node.name] = level
        for name in node.output:
            depth[name] = level
    readers = readers_of(pruned)
    for consumer in consumers:
        if consumer.family and consumer.leads and _fitted_after_its_readers(readers, consumer.family, level_of, names):
            _unlink(consumer.family)
    levels: dict[int, list] = {}
    for consumer in consumers:
        if consumer.leads:
            level = max(level_of[member.node.name] for member in consumer.members)
            levels.setdefault(level, []).append(consumer)
    chunks = []
    for level in sorted(levels):
        chunk, held = [], 0
        for leader in levels[level]:
            size = 2 * 8 * (leader.features + 1) ** 2
            if chunk and held + size > PASS_STATISTICS_BYTES:
                chunks.append(chunk)
                chunk, held = [], 0
            chunk.extend(leader.members)
            held += size
        chunks.append(chunk)
    return chunks


def _fitted_after_its_readers(readers: dict, family: list[Consumer], level_of: dict, names: set) -> bool:
    """Whether a family, fitted at its deepest member's level, would come after a layer (not of the
    family) that reads a shallower member's output: that layer would be fitted to the member's
    sliced output, which the family's fit then changes. Such copies are fitted apart."""
    deepest = max(level_of[member.node.name] for member in family)
    members = {member.node.name for member in family}
    stack = [output for member in family if level_of[member.node.name] < deepest for output in member.node.output]
    seen = set()
    while stack:
        for node in readers.get(stack.pop(), []):
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.name in names and node.name not in members and level_of[node.name] <= deepest:
                return True
            stack.extend(node.output)
    return False
