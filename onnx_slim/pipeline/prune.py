"""The pruning step as library calls: `prune` and `prune_file`.

load -> normalize -> analyze (channel groups) -> score -> plan -> apply -> verify.
"""

from __future__ import annotations

import fnmatch
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import onnx

from onnx_slim.apply.reconstruct import reconstruct
from onnx_slim.apply.statistics_correction import correct_statistics
from onnx_slim.apply.surgery import apply_plan, deduplicate_initializers, refresh_shapes
from onnx_slim.apply.verify import reference_output_shapes, verify_model
from onnx_slim.channels.analysis import ModelAnalysis, analyze
from onnx_slim.criteria import ScoringContext, score_groups
from onnx_slim.criteria.data import SENSITIVITY_FRACTIONS
from onnx_slim.data.evaluate import evaluate
from onnx_slim.deploy.cleanup import clean_model
from onnx_slim.errors import UsageError
from onnx_slim.ir.files import publish, scratch_folder
from onnx_slim.ir.inputs import random_inputs
from onnx_slim.ir.model import ModelSource, Progress, check_output_path, load_model, model_file_size, write_model_files
from onnx_slim.ir.runtime import SessionSpec
from onnx_slim.ops.cost import model_cost
from onnx_slim.plan.planner import CostModel, PlanOptions, plan_for_ratio, plan_for_target_macs
from onnx_slim.plan.sensitivity import allocate_ratios, measure_sensitivity, plan_from_ratios


@dataclass
class PruneReport:
    criterion: str
    ratio: float | None
    target_macs: float | None
    global_ranking: bool
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    size_before: int
    size_after: int
    groups_total: int
    groups_prunable: int
    groups_pruned: int
    channels_removed: int
    seconds: float
    output: str | None = None
    groups: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    allocate: str = "uniform"
    calibration: str | None = None
    reconstruction: dict | None = None
    statistics: dict | None = None  # statistics correction: layers corrected / kept as they were
    evaluation: dict | None = None
    cleanup: dict | None = None  # what the final clean-up removed (`deploy.cleanup`)

    @property
    def macs_fraction(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    def to_dict(self) -> dict:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["macs_fraction"] = round(self.macs_fraction, 4)
        return data


@dataclass(frozen=True)
class PruneOptions:
    """Everything that decides which channels go; the keyword arguments of `prune`."""

    ratio: float | None = None
    target_macs: float | None = None
    criterion: str = "l1"
    global_ranking: bool = False
    allocate: str = "uniform"  # "uniform" or "sensitivity" (per-group ratios, needs calibration)
    round_to: int = 1
    min_channels: int = 1
    exclude: tuple = ()
    prune_layernorm: bool = False  # prune groups a LayerNormalization spans (not lossless)
    seed: int = 0
    input_shapes: Mapping[str, Sequence[int]] | None = None
    calibration: object = None  # a CalibrationSet; data-driven criteria and reconstruction need it
    session: SessionSpec = SessionSpec()  # how calibration passes and evaluation run the model
    reconstruct: bool = False
    # After surgery and re-fit: match each later layer's per-channel output mean and spread to the original's.
    correct_statistics: bool = False
    batch_size: int = 8
    cleanup: bool = True  # the final clean-up pass (`deploy.cleanup`): Identity chains, constant subgraphs...

    def validate(self) -> None:
        if (self.ratio is None) == (self.target_macs is None):
            raise UsageError("give exactly one of ratio (--ratio) or target MACs (--target-macs)")
        if self.ratio is not None and not 0 <= self.ratio < 1:
            raise UsageError(f"ratio must be in [0, 1), got {self.ratio}")
        if self.target_macs is not None and not 0 < self.target_macs <= 1:
            raise UsageError(f"target MACs fraction must be in (0, 1], got {self.target_macs}")
        if self.round_to < 1:
            raise UsageError(f"round-to must be at least 1, got {self.round_to}")
        if self.min_channels < 1:
            raise UsageError(f"min-channels must be at least 1, got {self.min_channels}")
        if self.batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {self.batch_size}")
        if self.allocate not in ("uniform", "sensitivity"):
            raise UsageError(f"allocate must be uniform or sensitivity, got {self.allocate!r}")
        if self.allocate == "sensitivity" and self.target_macs is None:
            raise UsageError("--allocate sensitivity needs --target-macs")
        if (self.reconstruct or self.correct_statistics or self.allocate == "sensitivity") \
                and self.calibration is None:
            what = ("--reconstruct" if self.reconstruct else "--correct-statistics" if self.correct_statistics
                    else "--allocate sensitivity")
            raise UsageError(f"{what} needs calibration data: pass --calib PATH (or --calib random)")


def prune(
    model: ModelSource,
    *,
    verify: bool = True,
    progress: Progress | None = None,
    copy: bool = True,
    **options,
) -> tuple[onnx.ModelProto, PruneReport]:
    """Remove channels from `model`; returns the pruned model and a report.

    Options are the fields of `PruneOptions` (ratio=..., target_macs=...,
    criterion=..., calibration=..., reconstruct=...). The input is never
    modified (a ModelProto is copied unless copy=False). With `verify`, the
    result must pass the full ONNX checker and run in onnxruntime with the
    original output names and shapes.
    """
    settings = _options(options)
    proto, report, feeds, expected = _prune(model, settings, progress, copy)
    if verify:
        (progress or (lambda message: None))("verifying the pruned model")
        verify_model(proto, feeds, expected)
    return proto, report


def _options(options: dict) -> PruneOptions:
    unknown = set(options) - set(PruneOptions.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown prune option(s): {', '.join(sorted(unknown))}")
    settings = PruneOptions(**{**options, "exclude": tuple(options.get("exclude", ()))})
    settings.validate()
    return settings


def _prune(model, settings: PruneOptions, progress, copy):
    """prune() without the final check; also returns the feeds and expected output shapes."""
    started = time.perf_counter()
    say = progress or (lambda message: None)
    say("analyzing channel groups")
    size_before = model.ByteSize() if isinstance(model, onnx.ModelProto) else None
    analysis = analyze(model, input_shapes=settings.input_shapes, exclude=settings.exclude,
                       prune_layernorm=settings.prune_layernorm, copy=copy)
    if size_before is None:  # a file, known to load now
        size_before = model_file_size(model)
    proto, channels = analysis.model, analysis.channels
    groups = channels.prunable_groups()
    feeds = random_inputs(proto, shapes=analysis.input_shapes, seed=settings.seed)
    expected = reference_output_shapes(proto, feeds, analysis.shapes)

    say(f"scoring {len(groups)} prunable groups by {settings.criterion}")
    context = ScoringContext(proto, channels, analysis.normalize_info.bn_scales, settings.seed,
                             calibration=settings.calibration, batch_size=settings.batch_size,
                             session=settings.session, progress=say)
    scores = score_groups(context, settings.criterion, groups)
    plan, ratio_used = _plan(analysis, groups, scores, settings, say)
    warnings = _warnings(proto, settings.exclude, groups, plan)
    for warning in warnings:
        say(f"warning: {warning}")

    # a copy: surgery edits proto
    original = load_model(proto) if settings.reconstruct or settings.correct_statistics else None
    say(f"removing channels from {len(plan)} groups")
    apply_plan(proto, channels, plan)
    reconstruction = None
    if settings.reconstruct and plan:
        reconstruction = reconstruct(original, proto, channels, plan, settings.calibration,
                                     batch_size=settings.batch_size, seed=settings.seed, session=settings.session,
                                     progress=say)
    statistics = None
    if settings.correct_statistics and plan:
        statistics = correct_statistics(original, proto, channels, plan, settings.calibration,
                                        batch_size=settings.batch_size, seed=settings.seed,
                                        session=settings.session, progress=say)
    del original
    refresh_shapes(proto)
    deduplicate_initializers(proto)
    cleaned = None
    if settings.cleanup:
        proto, cleaned = clean_model(proto)
    after = model_cost(proto, input_shapes=analysis.input_shapes)
    report = PruneReport(
        criterion=settings.criterion, ratio=ratio_used if settings.target_macs is None else round(ratio_used, 4),
        target_macs=settings.target_macs, global_ranking=settings.global_ranking,
        params_before=analysis.cost.params, params_after=after.params,
        macs_before=analysis.cost.macs, macs_after=after.macs,
        size_before=size_before, size_after=proto.ByteSize(),
        groups_total=len(channels.groups), groups_prunable=len(groups), groups_pruned=len(plan),
        channels_removed=sum(len(removed) for removed in plan.values()),
        seconds=0.0, notes=warnings + list(context.notes),
        groups=[
            {"id": g.id, "channels": g.channels, "kept": g.channels - len(plan.get(g.root, ()))}
            for g in groups
        ],
        allocate=settings.allocate,
        calibration=settings.calibration.description if settings.calibration is not None else None,
        reconstruction=reconstruction.to_dict() if reconstruction is not None else None,
        statistics=statistics.to_dict() if statistics is not None else None,
        cleanup=cleaned.to_dict() if cleaned is not None else None,
    )
    report.seconds = round(time.perf_counter() - started, 3)
    return proto, report, feeds, expected


def _warnings(proto: onnx.ModelProto, exclude: Sequence[str], groups, plan: dict) -> list[str]:
    """What the user asked for that had no effect: an --exclude that matches no node, a prune that removes nothing."""
    names = [node.name for node in proto.graph.node]
    warnings = [f"--exclude {pattern!r} matches no node" for pattern in exclude
                if not any(fnmatch.fnmatchcase(name, pattern) for name in names)]
    if not plan:
        why = ("no channel group is prunable (`onnx-slim inspect` says why)" if not groups
               else "the ratio or target, --round-to and --min-channels leave every group whole")
        warnings.append(f"nothing was removed: {why}; the model keeps all its channels")
    return warnings


def _plan(analysis: ModelAnalysis, groups, scores, settings: PruneOptions, say) -> tuple[dict, float]:
    """Which channels each group loses, and the (uniform or effective) ratio behind it."""
    options = PlanOptions(round_to=settings.round_to, min_channels=settings.min_channels)
    cost_model = CostModel.of(analysis)
    if settings.allocate == "sensitivity":
        say("measuring per-group sensitivity on the calibration data")
        sensitivity = measure_sensitivity(analysis, settings.calibration, ratios=SENSITIVITY_FRACTIONS,
                                          criterion=settings.criterion, scores=scores, session=settings.session,
                                          progress=say)
        ratios = allocate_ratios(sensitivity, cost_model, groups, scores, settings.target_macs, options)
        plan = plan_from_ratios(groups, scores, ratios, options)
        kept = sum(g.channels - len(plan.get(g.root, ())) for g in groups)
        return plan, 1 - kept / max(sum(g.channels for g in groups), 1)
    if settings.target_macs is not None:
        return plan_for_target_macs(groups, scores, settings.target_macs, options, cost_model,
                                    settings.global_ranking)
    return plan_for_ratio(groups, scores, settings.ratio, options, settings.global_ranking), settings.ratio


def prune_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    force: bool = False,
    progress: Progress | None = None,
    evaluation=None,
    **options,
) -> PruneReport:
    """Prune a model file into `output_path`, verifying the written files before they appear.

    The output (with data files named after it when the input kept its weights
    in external files) is written to a scratch folder next to it, checked (full
    ONNX checker, onnxruntime, output shapes) and only then renamed into place:
    an existing output is replaced with `force`, otherwise refused, even one
    that appeared while pruning. With `evaluation` (a CalibrationSet of
    held-out samples) the report gets the pruned model's agreement with the
    original, and accuracy when labels exist.
    """
    layout = check_output_path(input_path, output_path, force)
    settings = _options(options)
    output_path = Path(output_path)
    proto, report, feeds, expected = _prune(input_path, settings, progress, copy=False)
    say = progress or (lambda message: None)
    with scratch_folder(output_path.parent) as scratch:
        files = write_model_files(proto, scratch / output_path.name, layout)
        del proto
        candidate = files[-1]
        say("verifying the written model")
        verify_model(candidate, feeds, expected)
        if evaluation is not None:
            say(f"evaluating against the original on {evaluation.description}")
            report.evaluation = evaluate(str(input_path), str(candidate), evaluation,
                                         batch_size=max(settings.batch_size, 32), session=settings.session)
        report.size_after = sum(file.stat().st_size for file in files)
        publish(files, output_path.parent, force=force)
    report.output = str(output_path)
    return report
