"""How many channels, and which, each group loses.

A plan maps a class root (see channels.space) to the sorted channel indices it
removes. The planner works on scores only; `CostModel` predicts the MACs and
parameters a plan leaves, so `--target-macs` can search for the ratio that hits
the target without touching the model.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from onnx_slim.channels.analysis import ModelAnalysis
from onnx_slim.channels.groups import ChannelAnalysis, ChannelGroup
from onnx_slim.errors import OnnxSlimError
from onnx_slim.ops.specs import scaling_weights

Plan = dict  # class root -> list[int] of removed channels


@dataclass(frozen=True)
class PlanOptions:
    round_to: int = 1
    min_channels: int = 1


def kept_count(channels: int, remove: int, options: PlanOptions) -> int:
    """Channels a group keeps when asked to remove `remove` of `channels`, after rounding. A
    group asked to lose nothing keeps everything: rounding 40 channels to 32 at `--ratio 0`
    would change the model nobody asked to change."""
    if remove <= 0:
        return channels
    step, floor_keep = _rounding_step(options)
    keep = max(channels - remove, floor_keep)
    if step > 1:
        keep = max(step * math.floor(keep / step + 0.5), floor_keep)  # halves round up
    return min(keep, channels)


def _rounding_step(options: PlanOptions) -> tuple[int, int]:
    """(step between allowed kept counts, fewest channels to keep)."""
    floor_keep = max(options.min_channels, 1)
    if options.round_to > 1:
        floor_keep = options.round_to * math.ceil(floor_keep / options.round_to)
    return max(options.round_to, 1), floor_keep


def group_options(options: PlanOptions, group: ChannelGroup) -> PlanOptions:
    """`options` for one group: `round_to` and `min_channels` count the channels of the
    producers' outputs, so where one group channel is several of them (a grouped Conv's
    groups lose the same channels each; an attention head is D of them), a finer step on
    the group already satisfies them."""
    width = group.blocks * group.unit
    if width == 1:
        return options
    return PlanOptions(round_to=options.round_to // math.gcd(options.round_to, width),
                       min_channels=math.ceil(options.min_channels / width))


def removed_for_ratio(group: ChannelGroup, ratio: float) -> int:
    """Group channels to remove for `ratio`: plain channels round down; whole units (attention
    heads) round to the nearest, a half kept, as `--round-to` rounds (one head of two is 50%:
    rounding 30% down would never remove a head)."""
    if group.unit == 1:
        return int(group.channels * ratio + 1e-9)
    return max(math.ceil(group.channels * ratio - 0.5 - 1e-9), 0)


def _lowest(scores: np.ndarray, count: int) -> list[int]:
    # A stable sort keeps ties deterministic: the earlier channel goes first.
    return sorted(np.argsort(scores, kind="stable")[:count].tolist())


def uniform_plan(groups: list[ChannelGroup], scores: dict, ratio: float, options: PlanOptions) -> Plan:
    """Remove the same fraction of channels from every group."""
    plan = {}
    for group in groups:
        keep = kept_count(group.channels, removed_for_ratio(group, ratio), group_options(options, group))
        if keep < group.channels:
            plan[group.root] = _lowest(scores[group.id], group.channels - keep)
    return plan


def global_plan(groups: list[ChannelGroup], scores: dict, ratio: float, options: PlanOptions) -> Plan:
    """Remove the lowest-scoring `ratio` of all channels, wherever they are."""
    if not groups:
        return {}
    pooled = np.concatenate([scores[group.id] for group in groups])
    count = int(pooled.size * ratio + 1e-9)
    if count == 0:
        return {}
    threshold = np.sort(pooled, kind="stable")[count - 1]
    plan = {}
    for group in groups:
        below = int((scores[group.id] <= threshold).sum())
        keep = kept_count(group.channels, below, group_options(options, group))
        if keep < group.channels:
            plan[group.root] = _lowest(scores[group.id], group.channels - keep)
    return plan


class CostModel:
    """Predicts the MACs a plan leaves: each node's MACs shrink with the kept fraction of
    its weight's sliced axes, or of the heads it carries (attention's MatMuls between
    activations); reports count the pruned model itself afterwards."""

    def __init__(self, analysis: ChannelAnalysis, node_macs: dict) -> None:
        self.atoms = analysis.atoms
        self.node_macs = node_macs  # node name -> MACs
        self.axis_layouts = defaultdict(dict)  # tensor -> axis -> layout
        for use in analysis.context.uses:
            self.axis_layouts[use.tensor][use.axis] = use.layout
        self.node_weight = {}  # node_macs key (a compute node, or a part of it) -> the weight that scales it
        for node in analysis.context.model.graph.node:
            for suffix, weight in scaling_weights(node).items():
                if node.name + suffix in node_macs and weight in self.axis_layouts:
                    self.node_weight[node.name + suffix] = weight
        # Attention's MatMuls between activations shrink with the heads they keep.
        self.node_layouts = {name: layout for name, layout in analysis.context.scaled.items() if name in node_macs}
        self.macs = sum(node_macs.values())

    @classmethod
    def of(cls, analysis: ModelAnalysis) -> CostModel:
        """The cost model of an analyzed model (before surgery)."""
        return cls(analysis.channels, analysis.cost.node_macs)

    def _fraction(self, tensor: str, plan: Plan) -> float:
        fraction = 1.0
        for layout in self.axis_layouts.get(tensor, {}).values():
            fraction *= self.atoms.kept_length(layout, plan) / self.atoms.length(layout)
        return fraction

    def macs_after(self, plan: Plan) -> int:
        removed = sum(
            macs * (1 - self._fraction(self.node_weight[name], plan))
            for name, macs in self.node_macs.items() if name in self.node_weight
        ) + sum(
            self.node_macs[name] * (1 - self.atoms.kept_length(layout, plan) / self.atoms.length(layout))
            for name, layout in self.node_layouts.items()
        )
        return int(round(self.macs - removed))


def plan_for_ratio(groups, scores, ratio, options, global_ranking=False) -> Plan:
    make = global_plan if global_ranking else uniform_plan
    return make(groups, scores, ratio, options)


def plan_for_target_macs(
    groups, scores, target: float, options: PlanOptions, cost: CostModel, global_ranking=False,
    tolerance: float = 0.02,
) -> tuple[Plan, float]:
    """The plan whose predicted MACs fraction is closest to `target`; returns (plan, ratio).

    Bisection on the ratio: MACs fall (weakly) as the ratio grows. With coarse
    rounding (`--round-to 8` on small groups) no single ratio may land within
    `tolerance`; single groups then move by one rounding step at a time.
    """
    if cost.macs == 0:
        raise OnnxSlimError("the model has no countable MACs (Conv/Gemm/MatMul with known shapes)")
    # A group no per-sample MAC depends on (a layer computed from constants only, as Swin-V2's
    # position-bias MLP) would only lose accuracy: a MACs target leaves it whole.
    groups = [group for group in groups if cost.macs_after({group.root: range(group.channels)}) < cost.macs]

    def fraction(ratio):
        plan = plan_for_ratio(groups, scores, ratio, options, global_ranking)
        return plan, cost.macs_after(plan) / cost.macs

    low, high = 0.0, 0.99
    best_plan, best_fraction = fraction(0.0)
    best_ratio = 0.0
    plan, smallest = fraction(high)
    if smallest > target + tolerance:
        # Rounding to 1 is no limit (it is also where --round-to auto starts): name only what limits.
        rounding = [f"--round-to {options.round_to}"] if options.round_to > 1 else []
        limits = " and ".join(rounding + [f"--min-channels {options.min_channels}"])
        raise OnnxSlimError(
            f"target {target:.2f} of MACs is out of reach: pruning every prunable group as far as "
            f"{limits} {'allow' if rounding else 'allows'} keeps {smallest:.2f} (frozen groups hold the rest: "
            f"see `onnx-slim inspect`)"
        )
    for _ in range(40):
        middle = (low + high) / 2
        plan, value = fraction(middle)
        if abs(value - target) < abs(best_fraction - target):
            best_plan, best_fraction, best_ratio = plan, value, middle
        if value > target:
            low = middle
        else:
            high = middle
    if abs(smallest - target) < abs(best_fraction - target):
        best_plan, best_fraction, best_ratio = fraction(0.99)[0], smallest, 0.99
    if abs(best_fraction - target) > tolerance:
        best_plan = _step_towards(groups, scores, best_plan, target, options, cost)
    return best_plan, best_ratio


def _step_towards(groups, scores, plan: Plan, target: float, options: PlanOptions, cost: CostModel) -> Plan:
    """Greedily move single groups by one rounding step while that brings the MACs closer to target."""
    plan = dict(plan)
    current = abs(cost.macs_after(plan) / cost.macs - target)
    for _ in range(4 * len(groups) + 8):
        candidates = []
        for group in groups:
            step, floor_keep = _rounding_step(group_options(options, group))
            removed = len(plan.get(group.root, ()))
            for change in (step, -step):
                count = removed + change
                if 0 <= count <= group.channels - floor_keep:
                    trial = dict(plan)
                    trial[group.root] = _lowest(scores[group.id], count)
                    if not trial[group.root]:
                        del trial[group.root]
                    candidates.append((abs(cost.macs_after(trial) / cost.macs - target), group.id, change, trial))
        if not candidates:
            break
        distance, _, _, trial = min(candidates, key=lambda c: c[:3])
        if distance >= current:
            break
        plan, current = trial, distance
    return plan
