"""Per-group sensitivity analysis, and ratios allocated from it to hit a MACs target.

`measure_sensitivity` prunes one group at a time at a few ratios (channels chosen
by a criterion) and measures how far the model outputs move, with one
masked-model session for everything (see `masking`). `allocate_ratios` then
gives each group its own ratio: the groups whose channels cost little output
error per MAC saved are pruned further.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np

from onnx_slim.channels.analysis import ModelAnalysis
from onnx_slim.channels.groups import ChannelGroup
from onnx_slim.criteria import ScoringContext, score_groups
from onnx_slim.data.calibration import CalibrationSet
from onnx_slim.data.masking import MaskedModel
from onnx_slim.data.trials import GroupTrials
from onnx_slim.errors import OnnxSlimError, UsageError
from onnx_slim.formatting import table
from onnx_slim.ir.model import Progress
from onnx_slim.ir.progress import counted
from onnx_slim.ir.runtime import SessionSpec
from onnx_slim.plan.planner import CostModel, Plan, PlanOptions, uniform_plan

DEFAULT_RATIOS = (0.1, 0.3, 0.5)
DEFAULT_SAMPLES = 32
ALLOCATION_FRACTIONS = tuple(round(0.1 * step, 1) for step in range(1, 10))  # levels the allocator picks from
COARSE_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
# The fewest samples a trial runs on, whatever the budget. 8 made a ResNet-50's trials (37 groups at 5
# ratios) twice the budget: 42 s, the part of `--allocate auto` that put it over 2 minutes.
MIN_SAMPLES = 4
# Multiply-accumulates the trials of an allocation may cost: about 30 s on 2 cores. EfficientNet-Lite0
# (0.4 GMACs, 24 groups) gets 32 samples at 9 ratios; a ResNet-50 (4.1 GMACs, 37 groups) 4 samples at 5.
SENSITIVITY_BUDGET_MACS = 3e12


def sensitivity_budget(macs_per_sample: int, groups: int, available: int) -> tuple[int, tuple]:
    """(samples, ratios) for the trials of a sensitivity allocation, within SENSITIVITY_BUDGET_MACS:
    fewer samples first (down to MIN_SAMPLES), then the coarse levels."""
    trial = max(macs_per_sample, 1) * max(groups, 1)
    for fractions in (ALLOCATION_FRACTIONS, COARSE_FRACTIONS):
        samples = int(SENSITIVITY_BUDGET_MACS // (trial * len(fractions)))
        if samples >= MIN_SAMPLES:
            return min(samples, DEFAULT_SAMPLES, available), fractions
    return min(MIN_SAMPLES, available), COARSE_FRACTIONS
TARGET_TOLERANCE = 0.02  # MACs fraction: how close an allocation must land to its target


# --------------------------------------------------------------------------- the report


@dataclass
class SensitivityEntry:
    """One group pruned alone at one ratio."""

    ratio: float
    removed: int  # channels removed (after rounding)
    rel_l2: float
    cosine: float | None
    top1: float | None
    macs_saved: float  # fraction of the whole model's MACs


@dataclass
class GroupSensitivity:
    group_id: int
    root: int
    channels: int
    producers: list[str]
    entries: list[SensitivityEntry] = field(default_factory=list)


@dataclass
class SensitivityReport:
    criterion: str
    ratios: list[float]
    samples: int
    macs: int
    groups: list[GroupSensitivity] = field(default_factory=list)

    def group(self, group_id: int) -> GroupSensitivity:
        return next(entry for entry in self.groups if entry.group_id == group_id)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_table(self, markdown: bool = False) -> str:
        """Rows: group id, channels, producers, then per ratio the output error and MACs saved."""
        headers = ["group", "channels", "producers"]
        for ratio in self.ratios:
            headers += [f"rel_l2@{ratio:g}", f"MACs-@{ratio:g}"]
        rows = []
        for group in self.groups:
            row = [group.group_id, group.channels, _short_list(group.producers)]
            for entry in group.entries:
                row += [f"{entry.rel_l2:.4f}", f"{entry.macs_saved * 100:.1f}%"]
            rows.append(row)
        return table(headers, rows, markdown)


def _short_list(names: Sequence[str], limit: int = 2) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" +{len(names) - limit}" if len(names) > limit else "")


# --------------------------------------------------------------------------- measuring


def measure_sensitivity(
    analysis: ModelAnalysis,
    calibration: CalibrationSet,
    *,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    criterion: str = "l1",
    samples: int = DEFAULT_SAMPLES,
    scores: Mapping[int, np.ndarray] | None = None,
    seed: int = 0,
    session: SessionSpec = SessionSpec(),
    progress: Progress | None = None,
    mean_fill: bool = True,
    batch_size: int | None = None,
) -> SensitivityReport:
    """Output error of pruning each prunable group alone at each ratio.

    Runs on the first `samples` samples. Within a group the channels with the
    lowest `criterion` scores go first (`scores` when the caller has them, else
    scored here with `seed`); the count follows `plan.kept_count`. With `mean_fill` a
    removed channel reads as its mean on those samples (masking.py): the error priced is
    the one left after the re-fit's cheapest compensation (EfficientNet-Lite0 at 60% of the
    MACs, obs + re-fit: top-1 4.8% with zeroed channels, 61.9% with mean fill). The samples run
    together, or `batch_size` at a time.
    """
    ratios = _checked_ratios(ratios)
    if calibration is None:
        raise UsageError("sensitivity needs calibration data: pass --calib PATH (or --calib random)")
    if samples < 1:
        raise UsageError(f"samples must be at least 1, got {samples}")
    say = progress or (lambda message: None)
    groups = analysis.channels.prunable_groups()
    if scores is None:
        say(f"scoring {len(groups)} prunable groups by {criterion}")
        context = ScoringContext(analysis.model, analysis.channels, analysis.normalize_info.bn_scales, seed,
                                 calibration=calibration, session=session, progress=progress,
                                 **({"batch_size": batch_size} if batch_size else {}))
        scores = score_groups(context, criterion, groups)
    cost_model = CostModel.of(analysis)
    batches = list(calibration.take(samples).batches(batch_size or samples))
    masked = MaskedModel(analysis, groups, session=session, fill_from=batches if mean_fill else None)
    reference = [masked.run(batch) for batch in batches]
    report = SensitivityReport(criterion, list(ratios), sum(len(next(iter(b.values()))) for b in batches),
                               cost_model.macs)
    trials = GroupTrials(masked, batches, reference, session=session)
    by_root = {group.root: group for group in groups}
    measured = {}
    for index, (root, trial) in enumerate(counted(progress, "sensitivity trials", trials.each(list(by_root)),
                                                  total=len(groups)), 1):
        group = by_root[root]
        say(f"sensitivity of group {group.id} ({index}/{len(groups)})")
        measured[root] = _group_sensitivity(group, scores, ratios, trial, cost_model)
    report.groups.extend(measured[group.root] for group in groups)
    return report


def _checked_ratios(ratios: Sequence[float]) -> list[float]:
    ratios = sorted({float(ratio) for ratio in ratios})
    if not ratios or any(not 0 < ratio < 1 for ratio in ratios):
        raise UsageError(f"sensitivity ratios must be in (0, 1), got {list(ratios)}")
    return ratios


def _group_sensitivity(group, scores, ratios, trial, cost_model) -> GroupSensitivity:
    result = GroupSensitivity(group.id, group.root, group.channels, sorted({m.use.node for m in group.producers}))
    for ratio in ratios:
        plan = uniform_plan([group], scores, ratio, PlanOptions())
        metrics = trial(plan)
        result.entries.append(SensitivityEntry(
            ratio=ratio,
            removed=len(plan.get(group.root, ())),
            rel_l2=metrics["rel_l2"],
            cosine=metrics["cosine"],
            top1=metrics["top1"],
            macs_saved=1 - cost_model.macs_after(plan) / cost_model.macs if cost_model.macs else 0.0,
        ))
    return result


# --------------------------------------------------------------------------- allocating


def plan_from_ratios(
    groups: list[ChannelGroup], scores: Mapping[int, np.ndarray], ratios: Mapping[int, float], options: PlanOptions
) -> Plan:
    """Each group loses its own ratio (group id -> ratio; missing = 0) of lowest-scoring channels."""
    plan = {}
    for group in groups:
        plan.update(uniform_plan([group], scores, ratios.get(group.id, 0.0), options))
    return plan


def allocate_ratios(
    report: SensitivityReport,
    cost_model: CostModel,
    groups: list[ChannelGroup],
    scores: Mapping[int, np.ndarray],
    target_macs: float,
    options: PlanOptions,
) -> dict[int, float]:
    """Per-group ratios whose combined plan keeps about `target_macs` of the MACs.

    Greedy on the measured levels: from all ratios at 0, repeatedly move one group
    to its next measured ratio, the one adding the least output error per MAC
    saved (the MACs of the combined plan, from `cost_model`), until the predicted
    MACs reach the target. A step costs its increase of the measured rel_l2: the
    errors of different groups are taken to add up (on digits_cnn this allocates
    better than adding them in squares, as independent errors would). The last
    step usually overshoots: it is then replaced by a partial
    step, channel by channel, of the group (among the cheapest) that lands
    closest to the target, within 2% when the channel granularity allows.
    """
    if not 0 < target_macs <= 1:
        raise UsageError(f"target MACs fraction must be in (0, 1], got {target_macs}")
    if cost_model.macs == 0:
        raise OnnxSlimError("the model has no countable MACs (Conv/Gemm/MatMul with known shapes)")
    allocator = _Allocator(report, cost_model, groups, scores, options)
    return allocator.allocate(target_macs)


class _Allocator:
    """The state of a greedy allocation: each group's position on its measured levels."""

    def __init__(self, report, cost_model, groups, scores, options):
        self.cost_model = cost_model
        self.scores = scores
        self.options = options
        measured = {entry.group_id: entry for entry in report.groups}
        self.groups = {group.id: group for group in groups if group.id in measured}
        # Levels per group: (ratio, output error), starting at the unpruned model.
        self.levels = {
            gid: [(0.0, 0.0)] + [(e.ratio, e.rel_l2) for e in measured[gid].entries]
            for gid in self.groups
        }
        self.position = {gid: 0 for gid in self.groups}
        self.ratios = {gid: 0.0 for gid in self.groups}
        self._pieces: dict[tuple, Plan] = {}  # (group id, ratio) -> that group's part of a plan

    def fraction(self, ratios: Mapping[int, float]) -> float:
        """Predicted MACs fraction of the plan made of every group's ratio."""
        plan = {}
        for gid, ratio in ratios.items():
            plan.update(self._piece(gid, ratio))
        return self.cost_model.macs_after(plan) / self.cost_model.macs

    def _piece(self, gid: int, ratio: float) -> Plan:
        key = (gid, ratio)
        if key not in self._pieces:
            self._pieces[key] = uniform_plan([self.groups[gid]], self.scores, ratio, self.options)
        return self._pieces[key]

    def allocate(self, target: float) -> dict[int, float]:
        current = self.fraction(self.ratios)
        last_step = None  # (ratios before it, the alternatives it was chosen from)
        while current > target:
            steps = self._steps(current)
            if not steps:
                raise OnnxSlimError(
                    f"target {target:.2f} of MACs is out of reach with the measured ratios (up to "
                    f"{max(r for levels in self.levels.values() for r, _ in levels):g} per group): the allocation "
                    f"keeps {current:.2f}; measure larger ratios (--ratios) or lower the target"
                )
            last_step = (dict(self.ratios), steps)
            _, gid, level, current = steps[0]
            self.position[gid], self.ratios[gid] = level, self.levels[gid][level][0]
        if last_step is not None and current < target:
            self._finish(target, *last_step, overshot=current)
        return dict(self.ratios)

    def _steps(self, current: float) -> list[tuple]:
        """(error added per MACs fraction saved, group id, next level, fraction after), cheapest first.

        A group's next level is the next measured ratio that saves MACs at all (a small
        ratio of a small group may remove nothing)."""
        steps = []
        for gid, levels in self.levels.items():
            error_now = levels[self.position[gid]][1]
            for level in range(self.position[gid] + 1, len(levels)):
                after = self.fraction({**self.ratios, gid: levels[level][0]})
                if after < current - 1e-12:
                    cost = max(levels[level][1] - error_now, 0.0) / (current - after)
                    steps.append((cost, gid, level, after))
                    break
        return sorted(steps)

    def _finish(self, target: float, before: dict, steps: list, overshot: float) -> None:
        """Replace the overshooting last step by the partial step, of the cheapest group that
        can, that lands closest to the target."""
        best_distance, best_ratios = abs(overshot - target), dict(self.ratios)
        for _, gid, level, _ in steps:
            ratio, fraction = self._closest_partial(before, gid, before[gid], self.levels[gid][level][0], target)
            if abs(fraction - target) < best_distance - 1e-12:
                best_distance, best_ratios = abs(fraction - target), {**before, gid: ratio}
            if best_distance <= TARGET_TOLERANCE / 2:
                break
        self.ratios = best_ratios

    def _closest_partial(self, ratios, gid, low, high, target) -> tuple[float, float]:
        """The ratio in [low, high] of group `gid`, at channel resolution, whose fraction is
        closest to `target` (bisection: MACs fall as the ratio grows)."""
        channels = self.groups[gid].channels

        def fraction_at(count: int) -> float:
            return self.fraction({**ratios, gid: count / channels})

        lo, hi = int(channels * low + 1e-9), int(channels * high + 1e-9)
        while hi - lo > 1:
            middle = (lo + hi) // 2
            if fraction_at(middle) > target:
                lo = middle
            else:
                hi = middle
        count = min((lo, hi), key=lambda c: abs(fraction_at(c) - target))
        return count / channels, fraction_at(count)
