"""Prune options and report, and the `Pruner`: a model analyzed and scored once, then planned and
built as often as a search needs (candidates differ only in target MACs or rounding).

analyze -> score (once) -> plan -> surgery (-> re-fit) per candidate.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import time
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import onnx

from onnx_slim.apply.reconstruct import reconstruct
from onnx_slim.apply.statistics_correction import correct_statistics
from onnx_slim.apply.surgery import apply_plan, deduplicate_initializers, refresh_shapes
from onnx_slim.apply.verify import reference_output_shapes
from onnx_slim.channels.analysis import analyze
from onnx_slim.channels.streams import stream_roots
from onnx_slim.criteria import ScoringContext, score_groups
from onnx_slim.deploy.cleanup import clean_model
from onnx_slim.errors import OnnxSlimError, UsageError
from onnx_slim.formatting import table
from onnx_slim.ir.inputs import random_inputs
from onnx_slim.ir.model import load_model, model_file_size
from onnx_slim.ir.runtime import SessionSpec
from onnx_slim.ops.cost import model_cost
from onnx_slim.plan.planner import CostModel, PlanOptions, plan_for_ratio, plan_for_target_macs
from onnx_slim.plan.sensitivity import allocate_ratios, measure_sensitivity, plan_from_ratios, sensitivity_budget

AUTO = "auto"
ALLOCATIONS = ("uniform", "interior", "sensitivity")  # and AUTO: each built, the closest to the original kept
CALIBRATION_BATCH = 8  # samples per run of the calibration passes (scoring, re-fit), unless --batch-size
EVALUATION_BATCH = 32  # samples per run when candidates are compared with the original, unless --batch-size
CHECK_SHARE = 0.2  # of the calibration samples, held out to compare allocations (allocate="auto")
MIN_CHECK_SAMPLES, MIN_FIT_SAMPLES = 8, 16


def batch_sizes(batch_size: int | None) -> tuple[int, int]:
    """(calibration, evaluation) samples per run: `batch_size` (--batch-size) for both when given,
    else each stage's default."""
    return batch_size or CALIBRATION_BATCH, batch_size or EVALUATION_BATCH


def default_criterion(has_data: bool) -> str:
    """The criterion when none is given: `thinet` on calibration data (real, or synthetic images,
    which make the data-driven path worth running: README, "Without data"; not random values),
    else `consumer_l1`.
    Not `l1`: with BatchNorm folded into the filters it keeps the wrong channels on real CNNs (at 95%
    of the MACs, without data: EfficientNet-Lite0 0.4% top-1 against 75.6%, MobileNetV2 8.1% against
    69.3%; all-mpnet-base-v2's language ID 62.3% against 64.3%, its embedding cosine 0.887 against
    0.915: reports/bench_real_light.md); it wins on the captcha reader at 90% (79.7% against 74.0%)
    and MTCNN at 60% (99.5% against 87.5%)."""
    return "thinet" if has_data else "consumer_l1"


def default_allocation(real_data: bool, target_macs) -> str:
    """The CLI's and config's allocation when none is given: auto where it can run (real calibration
    data and a MACs fraction), else uniform. No single allocation wins on the real models (thinet +
    re-fit at 60% of the MACs: uniform trails sensitivity by 42 points on EfficientNet-Lite0,
    sensitivity trails uniform by 70 on the captcha reader); how often auto keeps the best of the
    three is measured by scripts/bench_allocation_choice.py."""
    fraction = isinstance(target_macs, float | int) and not isinstance(target_macs, bool)
    return AUTO if real_data and fraction else "uniform"


@dataclass
class PruneReport:
    criterion: str
    ratio: float | None
    target_macs: float | str | None
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
    round_to: int = 1  # the rounding used (chosen by timing with round_to="auto")
    rounding: dict | None = None  # with round_to="auto": the roundings timed and the one kept
    search: dict | None = None  # with target_latency or target_macs="auto": every candidate measured
    latency_ms: dict | None = None  # p50 of the original and the result, when a choice timed them
    cleanup: dict | None = None  # what the final clean-up removed (`deploy.cleanup`)

    @property
    def macs_fraction(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    def to_dict(self) -> dict:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["macs_fraction"] = round(self.macs_fraction, 4)
        return data

    def choice_lines(self, speedup: bool = True) -> list[str]:
        """What was measured to choose the model: the rounding, the search and, with `speedup`, the
        speedup next to the MACs (`run` leaves it to its benchmark: one figure per report)."""
        lines = []
        if self.rounding and self.rounding["candidates"]:
            timed = ", ".join(f"{c['round_to']}: {c['latency_ms']:.3g} ms" for c in self.rounding["candidates"])
            why = self.rounding.get("why", "the fastest of those timed")
            lines.append(f"rounding: round-to {self.rounding['chosen']}, {why} ({timed}; "
                         f"original {self.rounding['original_ms']:.3g} ms; p50 of {self.rounding['runs']} runs)")
        search = self.search
        if search and search["kind"] == "latency":
            lines.append(f"latency search: budget {search['budget_ms']:g} ms, original {search['original_ms']:.3g} ms, "
                         f"{len(search['candidates'])} candidates timed"
                         + (f", kept MACs {search['chosen_macs_fraction']:.3f} at {search['chosen_ms']:.3g} ms"
                            if "chosen_ms" in search else ""))
        elif search and search["kind"] == "allocation":
            built = [c for c in search["candidates"] if "skipped" not in c]
            chosen = next(c for c in built if c["chosen"])
            lines.append(f"allocation: {chosen['allocate']}, the closest to the original of {len(built)} built on "
                         f"{search['data']} (" + "; ".join(f"{c['allocate']}: {_closeness(c)}" for c in built) + ")")
        elif search:
            chosen = next(c for c in search["candidates"] if c["chosen"])
            lines.append(f"quality search: max drop {search['max_drop']:g} points, {len(search['candidates'])} "
                         f"candidates evaluated, kept MACs {chosen['macs_fraction']:.3f} (drop {chosen['drop']:.2f})")
        if search and search.get("note"):
            lines.append(f"search: {search['note']}")
        noise = [part.get("noise") for part in (self.rounding, search) if part and part.get("noise")]
        lines += [f"timing: {noise[0]}"] if noise else []
        if self.latency_ms and speedup:
            lines.append(f"measured p50 {self.latency_ms['pruned']:.3g} ms against {self.latency_ms['original']:.3g} ms "
                         f"for the original: {self.latency_ms['speedup']:.2f}x faster at "
                         f"{self.macs_fraction * 100:.1f}% of the MACs")
        return lines

    def search_markdown(self) -> str:
        """The candidates a search measured, one row each ("" without a search)."""
        if not self.search:
            return ""  # a search that measured nothing (the original already met the budget) has no rows too
        rows = self.search["candidates"]
        if self.search["kind"] == "latency":
            header = ["target MACs", "MACs kept", "round-to", "p50 ms", "in budget window", "chosen"]
            cells = [(f"{r['target_macs']:.3f}", f"{r['macs_fraction']:.3f}", r["round_to"], f"{r['latency_ms']:.4g}",
                      "yes" if r["within_budget"] else "no", "yes" if r["chosen"] else "") for r in rows]
        elif self.search["kind"] == "allocation":
            header = ["allocation", "MACs kept", "agreement with the original", "chosen"]
            cells = [(r["allocate"], "-", f"skipped: {r['skipped']}", "") if "skipped" in r else
                     (r["allocate"], f"{r['macs_fraction']:.3f}", _closeness(r), "yes" if r["chosen"] else "")
                     for r in rows]
        else:
            header = ["target MACs", "MACs kept", "metric", "drop (points)", "within max drop", "chosen"]
            cells = [(f"{r['target_macs']:.3f}", f"{r['macs_fraction']:.3f}",
                      f"{r['metric']['name']} {r['metric']['value']:.4f}", f"{r['drop']:.2f}",
                      "yes" if r["passed"] else "no", "yes" if r["chosen"] else "") for r in rows]
        return table(header, cells, markdown=True) if cells else ""


def _closeness(row: dict) -> str:
    top1 = f", top-1 {row['top1_agreement']:.4f}" if row["top1_agreement"] is not None else ""
    cosine = f", cosine {row['cosine']:.4f}" if row["cosine"] is not None else ""
    return f"rel. L2 {row['rel_l2']:.4f}{top1}{cosine}"


@dataclass(frozen=True)
class PruneOptions:
    """Everything that decides which channels go; the keyword arguments of `prune`."""

    ratio: float | None = None
    # A fraction of the MACs to keep, or "auto": the smallest model whose drop on eval_data stays within max_drop.
    target_macs: float | str | None = None
    target_latency: float | None = None  # milliseconds: search for the model that runs this fast on `session`
    max_drop: float | None = None  # with target_macs="auto": the largest quality drop allowed, in points
    eval_data: object = None  # held-out CalibrationSet the target_macs="auto" search measures the drop on
    timing_inputs: Mapping | None = None  # feeds candidates are timed on (default: random, at the analysis shapes)
    criterion: str | None = None  # None: `default_criterion` of the calibration data
    global_ranking: bool = False
    # "uniform": one ratio everywhere; "interior": one ratio on every group but the residual streams;
    # "sensitivity": per-group ratios from each group's measured output error per MAC saved (needs
    # calibration); "auto": each of them built and the one closest to the original on held-out
    # calibration samples kept. None of the three wins on every real model (README, Results).
    allocate: str = "uniform"
    round_to: int | str = 1  # or "auto": time the plan's roundings on `session` and keep the fastest
    min_channels: int = 1
    exclude: tuple = ()
    prune_layernorm: bool = False  # prune groups a LayerNormalization spans (not lossless)
    whole_conv_groups: bool = False  # grouped convs lose whole groups, not the same channels of every group
    seed: int = 0
    input_shapes: Mapping[str, Sequence[int]] | None = None
    input_values: Mapping[str, float] | None = None  # inputs fed one value in every made-up feed (--input-value)
    calibration: object = None  # a CalibrationSet; data-driven criteria and reconstruction need it
    session: SessionSpec = SessionSpec()  # how calibration passes, evaluation and timing run the model
    reconstruct: bool = False
    # After surgery and re-fit: match each later layer's per-channel output mean and spread to the original's.
    correct_statistics: bool = False
    # Samples per onnxruntime run of every pass over the data; None: CALIBRATION_BATCH for calibration
    # passes, EVALUATION_BATCH for evaluation, the sensitivity trials' samples at once. A model that
    # only runs at batch 1 needs 1 everywhere.
    batch_size: int | None = None
    cleanup: bool = True  # the final clean-up pass (`deploy.cleanup`): Identity chains, constant subgraphs...

    @property
    def calibration_batch_size(self) -> int:
        return batch_sizes(self.batch_size)[0]

    @property
    def evaluation_batch_size(self) -> int:
        return batch_sizes(self.batch_size)[1]

    def validate(self) -> None:
        given = [flag for flag, value in (("--ratio", self.ratio), ("--target-macs", self.target_macs),
                                          ("--target-latency", self.target_latency)) if value is not None]
        if len(given) != 1:
            raise UsageError("give exactly one of --ratio, --target-macs or --target-latency"
                             + (f" (got {' and '.join(given)})" if given else ""))
        if self.ratio is not None and not 0 <= self.ratio < 1:
            raise UsageError(f"ratio must be in [0, 1), got {self.ratio}")
        self._validate_targets()
        if self.round_to != AUTO and (isinstance(self.round_to, bool) or not isinstance(self.round_to, int)
                                      or self.round_to < 1):
            raise UsageError(f"round-to must be a whole number of at least 1 or 'auto', got {self.round_to!r}")
        if self.min_channels < 1:
            raise UsageError(f"min-channels must be at least 1, got {self.min_channels}")
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {self.batch_size}")
        if self.allocate not in ALLOCATIONS + (AUTO,):
            raise UsageError(f"allocate must be one of {', '.join(ALLOCATIONS + (AUTO,))}, got {self.allocate!r}")
        if self.allocate == "sensitivity" and self.ratio is not None:
            raise UsageError("--allocate sensitivity needs --target-macs (or --target-latency)")
        if self.allocate == AUTO and not isinstance(self.target_macs, float | int):
            raise UsageError("--allocate auto needs --target-macs F: it compares allocations at one MACs fraction")
        if (self.reconstruct or self.correct_statistics or self.allocate in ("sensitivity", AUTO)) \
                and self.calibration is None:
            what = ("--reconstruct" if self.reconstruct else "--correct-statistics" if self.correct_statistics
                    else f"--allocate {self.allocate}")
            raise UsageError(f"{what} needs calibration data: pass --calib PATH (or --calib random)")

    def _validate_targets(self) -> None:
        if self.target_macs == AUTO:
            if self.max_drop is None:
                raise UsageError("--target-macs auto needs --max-drop X: the largest drop allowed, in points")
            if self.eval_data is None:
                raise UsageError("--target-macs auto needs --eval PATH: held-out data to measure each candidate on")
        elif isinstance(self.target_macs, str):
            raise UsageError(f"target MACs must be a fraction in (0, 1] or 'auto', got {self.target_macs!r}")
        elif self.target_macs is not None and not 0 < self.target_macs <= 1:
            raise UsageError(f"target MACs fraction must be in (0, 1], got {self.target_macs}")
        elif self.max_drop is not None:
            raise UsageError("--max-drop chooses the model only with --target-macs auto")
        if self.max_drop is not None and not (math.isfinite(self.max_drop) and self.max_drop >= 0):
            raise UsageError(f"max-drop must be a number of points, 0 or more, got {self.max_drop}")
        if self.target_latency is not None and not (math.isfinite(self.target_latency) and self.target_latency > 0):
            raise UsageError(f"target latency must be a positive number of milliseconds, got {self.target_latency}")


@dataclass
class Candidate:
    """One plan: which channels go, and the MACs fraction the cost model predicts it keeps."""

    plan: dict
    ratio: float  # the uniform (or effective) ratio behind it
    round_to: int
    macs_fraction: float
    allocate: str = "uniform"  # how the channels to remove were spread over the groups


@dataclass
class Built:
    """A candidate after surgery and, when asked, re-fit and statistics correction."""

    model: onnx.ModelProto
    reconstruction: object = None
    statistics: object = None
    cleanup: object = None


@dataclass
class Choice:
    """The candidate a search or a rounding measurement settled on, and what it measured."""

    candidate: Candidate
    built: Built | None = None  # already re-fitted by the search: build it again for nothing
    search: dict | None = None
    rounding: dict | None = None
    latency_ms: dict | None = None


class Pruner:
    """A model analyzed and its channels scored once; `plan` and `build` make any number of candidates.

    `model` (the normalized original) is never edited, except by `build(..., last=True)`
    without re-fitting, which saves a copy of a large model.
    """

    def __init__(self, model, settings: PruneOptions, progress=None, copy: bool = True) -> None:
        self.started = time.perf_counter()
        if settings.criterion is None:
            data = settings.calibration
            settings = replace(settings, criterion=default_criterion(
                data is not None and (not data.is_random or data.is_synthetic)))
        self.settings = settings
        self.say = progress or (lambda message: None)
        self.say("analyzing channel groups")
        size_before = model.ByteSize() if isinstance(model, onnx.ModelProto) else None
        # Real data sizes the symbolic dims (a detector's H and W) for the cost, the timing and the checks.
        samples = settings.calibration.sample_shapes() if settings.calibration is not None else None
        self.analysis = analyze(model, input_shapes=settings.input_shapes, exclude=settings.exclude,
                                prune_layernorm=settings.prune_layernorm,
                                whole_conv_groups=settings.whole_conv_groups, copy=copy, sample_shapes=samples,
                                input_values=settings.input_values)
        if self.analysis.run_failure:
            raise OnnxSlimError(_does_not_run(self.analysis.input_shapes, self.analysis.run_failure))
        inside = self.analysis.layers_in_subgraphs
        if not self.analysis.cost.macs and inside and settings.ratio is None:
            raise OnnxSlimError(f"the model has no countable MACs: its {inside} weight layers sit inside If / Loop / "
                                "Scan bodies, which onnx-slim does not analyze or prune")
        self.size_before = model_file_size(model) if size_before is None else size_before  # a file, loaded now
        self.groups = self.analysis.channels.prunable_groups()
        self.calibration, self.check_data = _held_out_check(settings)
        self.feeds = random_inputs(self.model, shapes=self.analysis.input_shapes, seed=settings.seed,
                                   values=self.analysis.input_values)
        self.expected = reference_output_shapes(self.model, self.feeds, self.analysis.shapes)
        self.say(f"scoring {len(self.groups)} prunable groups by {settings.criterion}")
        self.context = ScoringContext(self.model, self.analysis.channels, self.analysis.normalize_info.bn_scales,
                                      settings.seed, calibration=self.calibration,
                                      batch_size=settings.calibration_batch_size, session=settings.session,
                                      progress=self.say)
        self.scores = score_groups(self.context, settings.criterion, self.groups)
        self.cost_model = CostModel.of(self.analysis)
        self._sensitivity = None

    @property
    def model(self) -> onnx.ModelProto:
        return self.analysis.model

    @functools.cached_property
    def streams(self) -> set[int]:
        """Class roots of the residual streams ("interior" spares them)."""
        return stream_roots(self.analysis.channels)

    @property
    def timing_inputs(self) -> Mapping:
        return self.settings.timing_inputs if self.settings.timing_inputs is not None else self.feeds

    def plan(self, *, target_macs: float | None = None, ratio: float | None = None, round_to: int = 1,
             allocate: str | None = None) -> Candidate:
        """The plan for a MACs fraction or a ratio at one rounding (the scores are reused), allocated
        as `allocate` says (default: the settings'; their "auto" plans uniformly here)."""
        settings = self.settings
        allocate = allocate or (settings.allocate if settings.allocate != AUTO else "uniform")
        options = PlanOptions(round_to=round_to, min_channels=settings.min_channels)
        groups = self.groups
        if allocate == "interior":
            groups = [group for group in self.groups if group.root not in self.streams]
        if allocate == "sensitivity" and target_macs is not None:
            if self._sensitivity is None:  # measured once, whatever the candidates
                samples, fractions = sensitivity_budget(self.cost_model.macs, len(self.groups), len(self.calibration))
                self.say(f"measuring per-group sensitivity on {samples} calibration samples at {len(fractions)} ratios")
                self._sensitivity = measure_sensitivity(
                    self.analysis, self.calibration, ratios=fractions, criterion=settings.criterion,
                    samples=samples, scores=self.scores, session=settings.session, progress=self.say,
                    batch_size=settings.batch_size)
            ratios = allocate_ratios(self._sensitivity, self.cost_model, self.groups, self.scores, target_macs,
                                     options)
            plan = plan_from_ratios(self.groups, self.scores, ratios, options)
            kept = sum(g.channels - len(plan.get(g.root, ())) for g in self.groups)
            used = round(1 - kept / max(sum(g.channels for g in self.groups), 1), 4)
        elif target_macs is not None:
            plan, used = plan_for_target_macs(groups, self.scores, target_macs, options, self.cost_model,
                                              settings.global_ranking)
            used = round(used, 4)
        else:
            plan, used = plan_for_ratio(groups, self.scores, ratio, options, settings.global_ranking), ratio
        return Candidate(plan, used, round_to, self.predicted_fraction(plan), allocate)

    def predicted_fraction(self, plan: dict) -> float:
        return self.cost_model.macs_after(plan) / self.cost_model.macs if self.cost_model.macs else 1.0

    def smallest_fraction(self, round_to: int) -> float:
        """The fewest MACs (a fraction) any plan at this rounding keeps: every group pruned as far as allowed."""
        options = PlanOptions(round_to=round_to, min_channels=self.settings.min_channels)
        return self.predicted_fraction(plan_for_ratio(self.groups, self.scores, 0.99, options,
                                                      self.settings.global_ranking))

    def pruned_copy(self, candidate: Candidate) -> onnx.ModelProto:
        """The candidate after surgery only, on a copy: enough to time it (latency does not
        depend on the weights' values)."""
        proto = load_model(self.model)  # a copy
        apply_plan(proto, self.analysis.channels, candidate.plan)
        refresh_shapes(proto)
        return proto

    def build(self, candidate: Candidate, *, last: bool = False, calibration=None,
              choices_from: Built | None = None, fitted_again: bool = False) -> Built:
        """Surgery, then re-fit and statistics correction as the settings ask, on `calibration`
        (default: the samples the channels were scored on); `choices_from`, an earlier build of
        the same candidate, gives each layer's re-fit method; `fitted_again`: a candidate that is
        built again if kept (its layers keep their fits on the re-fit's training rows). With
        `last` and no re-fit, surgery edits the analyzed model itself (no further candidate can
        be built)."""
        settings = self.settings
        calibration = calibration if calibration is not None else self.calibration
        refit = (settings.reconstruct or settings.correct_statistics) and candidate.plan
        proto = self.model if last and not refit else load_model(self.model)
        channels, plan = self.analysis.channels, candidate.plan
        self.say(f"removing channels from {len(plan)} groups")
        apply_plan(proto, channels, plan)
        built = Built(proto)
        if settings.reconstruct and plan:
            built.reconstruction = reconstruct(self.model, proto, channels, plan, calibration,
                                               batch_size=settings.calibration_batch_size, seed=settings.seed,
                                               session=settings.session, progress=self.say,
                                               chosen=choices_from.reconstruction if choices_from else None,
                                               on_all_rows=not fitted_again)
        if settings.correct_statistics and plan:
            built.statistics = correct_statistics(self.model, proto, channels, plan, calibration,
                                                  batch_size=settings.calibration_batch_size, seed=settings.seed,
                                                  session=settings.session, progress=self.say)
        refresh_shapes(proto)
        deduplicate_initializers(proto)
        if settings.cleanup:
            built.model, built.cleanup = clean_model(proto)
        return built

    def report(self, choice: Choice, built: Built) -> PruneReport:
        settings, candidate, proto = self.settings, choice.candidate, built.model
        warnings = _warnings(proto, settings.exclude, self.groups, candidate.plan)
        for warning in warnings:
            self.say(f"warning: {warning}")
        after = model_cost(proto, input_shapes=self.analysis.input_shapes, input_values=self.analysis.input_values)
        report = PruneReport(
            criterion=settings.criterion, ratio=candidate.ratio, target_macs=settings.target_macs,
            global_ranking=settings.global_ranking,
            params_before=self.analysis.cost.params, params_after=after.params,
            macs_before=self.analysis.cost.macs, macs_after=after.macs,
            size_before=self.size_before, size_after=proto.ByteSize(),
            groups_total=len(self.analysis.channels.groups), groups_prunable=len(self.groups),
            groups_pruned=len(candidate.plan),
            channels_removed=sum(len(removed) for removed in candidate.plan.values()),
            seconds=0.0, notes=warnings + self.analysis.normalize_info.notes + list(self.context.notes),
            groups=[{"id": g.id, "channels": g.channels, "kept": g.channels - len(candidate.plan.get(g.root, ()))}
                    for g in self.groups],
            allocate=candidate.allocate if settings.allocate != AUTO else f"auto: {candidate.allocate}",
            calibration=self.calibration.description if self.calibration is not None else None,
            reconstruction=built.reconstruction.to_dict() if built.reconstruction is not None else None,
            statistics=built.statistics.to_dict() if built.statistics is not None else None,
            round_to=candidate.round_to, rounding=choice.rounding, search=choice.search,
            latency_ms=choice.latency_ms,
            cleanup=built.cleanup.to_dict() if built.cleanup is not None else None,
        )
        report.seconds = round(time.perf_counter() - self.started, 3)
        return report


def _does_not_run(input_shapes: Mapping, failure: str) -> str:
    """The error for a model that fails at the sizes the analysis runs it at (an export that fixed
    the traced sequence length while declaring it symbolic): which sizes, and what to give."""
    sizes = " ".join(f"{name}={','.join(str(d) for d in shape) or '(scalar)'}" for name, shape in input_shapes.items())
    hint = "" if "--input-shape" in failure else "; give the sizes it runs at with --input-shape NAME=DIMS"
    return f"the original model does not run at the input sizes used ({sizes}): {failure}{hint}"


def _held_out_check(settings: PruneOptions):
    """(the calibration samples the model is scored and re-fitted on, the ones held out to compare
    allocations or None): with allocate="auto", CHECK_SHARE of the samples spread over the set
    when both parts keep enough (else every sample does both, and the comparison is on fitted data)."""
    data = settings.calibration
    if settings.allocate != AUTO or data is None:
        return data, None
    check = max(MIN_CHECK_SAMPLES, round(len(data) * CHECK_SHARE))
    if data.fixed_batch:
        check = -(-check // data.fixed_batch) * data.fixed_batch
    if len(data) - check < max(MIN_FIT_SAMPLES, data.fixed_batch or 0):
        return data, data
    return data.hold_out(check)


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
