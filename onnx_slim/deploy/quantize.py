"""Post-training quantization with onnxruntime: int8 (static or dynamic), int4 MatMul weights, float16.

Each mode makes a candidate model in a scratch folder beside the output
(`quant_int8`, `quant_int4`, `quant_fp16`), cleaned up (`cleanup`), checked to
load, run and keep the output names and shapes, compared with the float model
on one batch of calibration data (random inputs without it) and timed against
it. "auto" tries every mode that applies and keeps the fastest that agrees
(`quant_auto`), or the float model when none is faster; an explicit mode keeps
its model and warns when it measured slower or disagrees. Only the model kept
is written to the output, atomically.

Static int8 needs calibration data: without any, auto leaves it out, and
random data (`calibration="random"`) only makes a structure-only smoke test.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx

from onnx_slim.deploy import quant_speed
from onnx_slim.deploy.cleanup import clean_model
from onnx_slim.deploy.quant_auto import Candidate, candidate_modes, check_and_score, decide
from onnx_slim.deploy.quant_calibration import RANDOM, RANDOM_CALIBRATION
from onnx_slim.deploy.quant_fp16 import convert_to_fp16, float16_layers
from onnx_slim.deploy.quant_int4 import DEFAULT_BLOCK_SIZE, check_block_size, quantize_int4
from onnx_slim.deploy.quant_int8 import (
    CONV_OPS,
    bias_correction_applies,
    excluded_nodes,
    ignored_option_warnings,
    int8_settings,
    opset_for_per_channel,
    quantize_int8,
    quantized_op_counts,
    smoothing_applies,
)
from onnx_slim.deploy.quant_outliers import MAX_LAYER_ERROR
from onnx_slim.deploy.timing import noise_caveat
from onnx_slim.errors import OnnxSlimError, RuntimeCrash, UsageError
from onnx_slim.ir.files import scratch_folder
from onnx_slim.ir.graph import sort_topologically
from onnx_slim.ir.hardware import cpu_info
from onnx_slim.ir.inputs import (InputShapes, InputValues, MadeUpInputs, check_input_shapes, check_input_values,
                                feeds_for, fixed_batch_size, graph_inputs, shapes_at_batch, with_values)
from onnx_slim.ir.isolated import check_survives_a_run
from onnx_slim.ir.model import ModelSource, check_not_quantized, check_output_path, load_model, save_model
from onnx_slim.ir.runtime import SessionSpec, create_session, run_session

__all__ = ["RANDOM", "RANDOM_CALIBRATION", "QuantizeReport", "choose_mode", "quantize_model", "quantized_op_counts"]

logger = logging.getLogger(__name__)

MODES = ("auto", "static", "dynamic", "int4", "fp16")
_FORMATS = ("qdq", "qoperator")
_METHODS = ("minmax", "entropy", "percentile")
_ACTIVATION_TYPES = ("int8", "uint8")
_MATMUL_OPS = {"MatMul", "Gemm"}
_AGREEMENT_SAMPLES = 8  # random inputs compared when there is no calibration batch


@dataclass
class QuantizeReport:
    """What `quantize_model` did. Sizes are serialized bytes; `size_after` and `quantized_ops` describe the output.

    The settings fields (mode .. preprocessed) describe the candidate kept, or, when the
    float model was kept, the best candidate that lost to it.
    """

    output_path: str
    mode: str  # "static", "dynamic", "int4" or "fp16": how that candidate was made
    mode_reason: str
    format: str  # "qdq" or "qoperator"; "float16" for fp16
    activation_type: str
    weight_type: str
    per_channel: bool
    reduce_range: bool
    method: str | None  # calibration method; None when nothing was calibrated
    calibration: str  # what the ranges were calibrated on
    cpu_flags: list[str]
    preprocessed: bool
    size_before: int
    size_after: int
    quantized_ops: dict[str, int]  # quantization nodes; for fp16 the nodes that run in float16
    kept: str = "int8"  # "int8", "int4", "fp16", or "float" when no candidate was faster (auto)
    decision: str = ""  # why that model was kept
    latency_ms: dict | None = None  # {"float": stats, kind: stats} as timed, None when not measured
    agreement: dict | None = None  # the described candidate against the float model (cosine, top1, ...)
    candidates: list[dict] = field(default_factory=list)  # every candidate made: latency, agreement, size
    skipped: list[str] = field(default_factory=list)  # modes auto did not try, and why
    block_size: int | None = None  # int4 rows per scale
    cleanup: dict | None = None  # what the clean-up removed from the output (`cleanup.CleanupReport`)
    excluded_nodes: list[str] = field(default_factory=list)
    bias_corrected: int = 0  # layers whose int32 bias was shifted (`quant_bias`)
    smoothed: dict[str, float] = field(default_factory=dict)  # activation -> SmoothQuant strength (`quant_outliers`)
    float_layers: list[str] = field(default_factory=list)  # layers kept float for their activation outliers
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Options:
    """How to make each candidate: the keyword arguments of `quantize_model`."""

    calibration: object
    quant_format: str
    per_channel: bool | None
    method: str
    reduce_range: bool | None
    exclude: Sequence[str]
    calibration_batch_size: int
    activation_type: str | None
    session: SessionSpec
    bias_correction: bool
    smooth_outliers: bool
    max_layer_error: float
    block_size: int
    symmetric: bool
    keep_io_types: bool
    cleanup: bool
    inputs: MadeUpInputs


def quantize_model(
    model: ModelSource,
    output_path: str | os.PathLike,
    *,
    mode: str = "auto",
    calibration: Iterable[Mapping[str, np.ndarray]] | str | None = None,
    quant_format: str = "qdq",
    per_channel: bool | None = None,
    method: str = "minmax",
    reduce_range: bool | None = None,
    exclude: Sequence[str] = (),
    calibration_batch_size: int = 8,
    force: bool = False,
    activation_type: str | None = None,
    measure: bool = True,
    session: SessionSpec = SessionSpec(),
    bias_correction: bool = True,
    smooth_outliers: bool = True,
    max_layer_error: float | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    symmetric: bool = True,
    keep_io_types: bool = True,
    cleanup: bool = True,
    input_shapes: InputShapes | None = None,
    input_values: InputValues | None = None,
) -> QuantizeReport:
    """Quantize a float model and write it (or the float model, if faster) to `output_path` atomically.

    `mode`: "static" int8 (activation ranges calibrated ahead), "dynamic" int8
    (ranges at run time; QOperator integer ops, `quant_format`, `method` and
    calibration do not apply), "int4" (MatMul weights in blocks of `block_size`
    rows, `symmetric` or with zero points), "fp16" (float16 except ops without
    float16 kernels on `session.providers[0]`; inputs and outputs stay float32
    with `keep_io_types`) or "auto" (every mode that applies, the fastest that
    agrees with the float model kept, see `quant_auto`; with `measure` off, the
    rule of `choose_mode`). `calibration`: an iterable of feed dicts
    `{input_name: array [B, ...]}`, pulled lazily and re-batched to
    `calibration_batch_size` (or the model's fixed batch size), every sample
    counting; or "random" for a structure-only static smoke test (flagged
    as not for deployment). Static mode without calibration is refused.
    `per_channel`, `reduce_range`, `activation_type` ("int8"/"uint8"): None
    picks the default for this CPU (see `quant_int8`). `exclude`: fnmatch
    globs on node names kept in float. `measure`: time the candidates against
    the float model (run as `session` says) and report both; False skips it.
    `bias_correction` (static QDQ, real calibration data that can be iterated
    twice, e.g. a list or a `BatchStream`): shift each Conv/Gemm bias so its
    mean output on the calibration data matches the float layer's.
    `smooth_outliers` (int8 of MatMul-heavy models, real calibration data that
    can be iterated twice): SmoothQuant scales per activation, and float for
    layers whose simulated int8 error (mean relative error of an output row)
    stays above `max_layer_error` (None: `MAX_LAYER_ERROR`; see `quant_outliers`).
    `cleanup`: run `cleanup.clean_model` on each candidate. `input_shapes` (NAME -> dims, --input-shape)
    sizes the symbolic dims of random inputs (checks, timing, "random" calibration): a raw audio input
    [batch, samples] cannot run at the default guess; `input_values` (NAME -> number, --input-value)
    fixes inputs there and in every calibration batch.
    """
    max_layer_error = MAX_LAYER_ERROR if max_layer_error is None else max_layer_error
    _check_options(mode, quant_format, method, calibration_batch_size, activation_type, max_layer_error)
    check_block_size(block_size)
    output = Path(output_path)
    check_output_path(model, output, force)
    float_model = load_model(model, copy=False)
    check_input_shapes(float_model, input_shapes)
    check_input_values(float_model, input_values)
    first = _first_batch(calibration)
    if first is not None and not input_shapes:  # made-up inputs (checks, timing) at the data's sizes, not guessed
        input_shapes = shapes_at_batch(float_model, {name: np.shape(value) for name, value in first.items()
                                                     if name not in (input_values or {})}, 1)
    inputs = MadeUpInputs(input_shapes, input_values)
    check_not_quantized(float_model, advice="quantize the float model instead")
    _check_float32(float_model, mode)
    options = _Options(calibration, quant_format, per_channel, method, reduce_range, exclude, calibration_batch_size,
                       activation_type, session, bias_correction, smooth_outliers, max_layer_error, block_size,
                       symmetric, keep_io_types, cleanup, inputs)

    skipped: list[str] = []
    if mode == "auto" and measure:
        modes, skipped = candidate_modes(float_model, calibration, session.providers)
        mode_reason = f"auto: measured {', '.join(modes)}" + (f"; not tried: {'; '.join(skipped)}" if skipped else "")
    else:
        chosen, mode_reason = _resolve_mode(float_model, mode, calibration)
        modes = [chosen]
    not_tried = len(skipped)
    # Beside the output (not /tmp): the same filesystem, and cleaned up on a signal like every scratch folder.
    with scratch_folder(output.parent) as scratch:
        candidates, example = [], None
        for candidate_mode in modes:
            try:
                candidate, batch = _make_candidate(candidate_mode, float_model, scratch / candidate_mode, options,
                                                   requested=mode != "auto")
            except UsageError:
                raise
            except OnnxSlimError as exc:
                # int8 failures stop auto as they always did (a broken calibration source must not pass
                # unseen); int4 and fp16 are extra candidates whose converters refuse some graphs.
                # A crash of onnxruntime on the int8 model is its fault, not the data's: auto tries the others.
                if mode != "auto" or candidate_mode in ("static", "dynamic") and not isinstance(exc, RuntimeCrash):
                    raise
                skipped.append(f"{candidate_mode}: {exc}")
                continue
            if mode == "auto" and not candidate.quantized_ops and len(modes) > 1:
                skipped.append(f"{candidate_mode}: quantized no node")
                continue
            candidates.append(candidate)
            example = example if example is not None else batch
        example = example if example is not None else first  # dynamic reads no data: checked on it anyway
        candidates = _score(float_model, candidates, example, session, mode == "auto", skipped, scratch, inputs)
    if len(skipped) > not_tried:  # tried and dropped (a crash, a failed check): said where the mode is
        mode_reason += f"; dropped: {'; '.join(skipped[not_tried:])}"
    if not candidates:
        raise OnnxSlimError("no quantization applies to this model: " + "; ".join(skipped))
    latency = _measure(float_model, candidates, example, session, inputs) if measure else None
    decision = decide(mode, candidates, latency["float"] if latency else None)
    described = decision.described
    report_warnings = list(described.warnings)
    if not described.quantized_ops:
        report_warnings.append("no node was quantized: the model has no op that onnxruntime quantizes in this mode")
    if decision.warning:
        report_warnings.append(decision.warning)
    if latency and latency["noise"]:
        report_warnings.append(latency["noise"])
    written = decision.kept.model if decision.kept is not None else float_model
    save_model(written, output, force=force)
    for message in report_warnings:
        logger.warning("%s", message)
    return QuantizeReport(
        output_path=str(output), mode=described.mode, mode_reason=mode_reason, **described.details,
        cpu_flags=cpu_info()["int8_flags"], size_before=float_model.ByteSize(), size_after=written.ByteSize(),
        quantized_ops=described.quantized_ops if decision.kept is not None else quantized_op_counts(written),
        kept=decision.kept.kind if decision.kept is not None else "float", decision=decision.reason,
        latency_ms={"float": latency["float"], described.kind: described.latency_ms} if latency else None,
        agreement=described.agreement, candidates=[candidate.summary() for candidate in candidates],
        skipped=skipped, block_size=block_size if described.mode == "int4" else None,
        cleanup=described.cleanup.to_dict() if described.cleanup and decision.kept is not None else None,
        warnings=report_warnings,
    )


def _first_batch(calibration) -> dict[str, np.ndarray] | None:
    """The first batch of calibration data that can be read again (a list, a `BatchStream`); None for
    none, random data or a one-pass iterator (peeking would use up a batch of it)."""
    if calibration is None or isinstance(calibration, str) or not hasattr(calibration, "__len__"):
        return None
    return next(iter(calibration), None)


def calibration_source(calibration, batch_size: int):
    """What `quantize_model` takes for a `CalibrationSet` (or None): RANDOM for random data, which only
    smoke-tests static int8 and is flagged so, else its batches."""
    if calibration is None:
        return None
    return RANDOM if calibration.is_random else calibration.batch_stream(batch_size)


def _check_float32(model: onnx.ModelProto, mode: str) -> None:
    """int8 and int4 start from float32 weights; a half-precision export is refused in one line (onnxruntime's
    quantizer would fail on the Casts its optimizer puts in front of float16 weights)."""
    halves = float16_layers(model)
    if halves and mode != "fp16":
        raise OnnxSlimError(f"the model computes in float16 ({len(halves)} layers have float16 weights, e.g. "
                            f"{halves[0]}): int8 and int4 quantization start from float32; quantize its float32 "
                            f"export")


def choose_mode(model: onnx.ModelProto) -> tuple[str, str]:
    """("dynamic" | "static", reason) by rule, for auto without measurement: dynamic for MatMul/Gemm without Conv."""
    op_types = {node.op_type for node in model.graph.node}
    if op_types & CONV_OPS:
        return "static", "auto: the model has Conv layers"
    if op_types & _MATMUL_OPS:
        # Without Conv, MatMul/Gemm carry every MAC that cost.py counts.
        return "dynamic", "auto: MatMul/Gemm carry the MACs and there is no Conv (transformer-like)"
    return "static", "auto: no Conv, MatMul or Gemm"


def _resolve_mode(model: onnx.ModelProto, mode: str, calibration) -> tuple[str, str]:
    """The one mode to quantize in and why; static only with calibration data (real, or random when asked)."""
    if mode != "auto":
        if mode == "static" and calibration is None:
            raise UsageError(
                "static quantization needs calibration data: give it (--calib PATH), use dynamic mode, "
                "or --calib random for a structure-only smoke test that is not for deployment"
            )
        return mode, "requested"
    chosen, reason = choose_mode(model)
    if chosen == "static" and calibration is None:
        return "dynamic", ("auto: no calibration data, so dynamic (activation ranges computed at run time); "
                           "give calibration data for static int8")
    return chosen, reason + " (chosen by rule: measurement switched off)"


def _check_options(mode, quant_format, method, calibration_batch_size, activation_type, max_layer_error) -> None:
    for name, value, allowed in (
        ("mode", mode, MODES), ("quant_format", quant_format, _FORMATS), ("method", method, _METHODS),
    ):
        if value not in allowed:
            raise UsageError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    if activation_type is not None and activation_type not in _ACTIVATION_TYPES:
        raise UsageError(f"activation_type must be one of {', '.join(_ACTIVATION_TYPES)}; got {activation_type!r}")
    if calibration_batch_size < 1:
        raise UsageError(f"calibration_batch_size must be at least 1, got {calibration_batch_size}")
    if not max_layer_error >= 0:  # also refuses NaN
        raise UsageError(f"max_layer_error must be at least 0, got {max_layer_error}")


# --- candidates ----------------------------------------------------------------


def _make_candidate(mode: str, float_model: onnx.ModelProto, folder: Path, options: _Options, requested: bool):
    """(the candidate made in `folder`, the first calibration batch it read or None)."""
    folder.mkdir()
    warnings: list[str] = []
    example = None
    unquantized = dict(per_channel=False, reduce_range=False, method=None, preprocessed=False, bias_corrected=0,
                       smoothed={}, float_layers=[])
    if mode in ("static", "dynamic"):
        model, details, counts, example = _make_int8(mode, float_model, folder, options, requested, warnings)
    elif mode == "int4":
        excluded = excluded_nodes(float_model, options.exclude, warnings)
        model = quantize_int4(float_model, block_size=options.block_size, symmetric=options.symmetric,
                              excluded=excluded)
        counts = quantized_op_counts(model)
        details = dict(unquantized, format="qoperator", activation_type="float32", weight_type="int4",
                       calibration="none (weight-only)", excluded_nodes=excluded)
    else:
        excluded = excluded_nodes(float_model, options.exclude, warnings)
        result = convert_to_fp16(float_model, options.session.providers, keep_io_types=options.keep_io_types,
                                 exclude=excluded)
        model = result.model
        warnings += result.warnings
        counts = dict(sorted(Counter(node.op_type for node in float_model.graph.node
                                     if node.op_type not in result.blocked_ops and node.name not in excluded).items()))
        details = dict(unquantized, format="float16", activation_type="float16", weight_type="float16",
                       calibration="none (float16 conversion)", excluded_nodes=excluded)
    cleaned = None
    if options.cleanup:
        model, cleaned = clean_model(model)
    else:  # onnxruntime's quantizers can write a node before a producer it reads (silero-vad's decoder)
        sort_topologically(model.graph)
    return Candidate(mode, model, details, counts, warnings, cleaned), example


def _make_int8(mode, float_model, folder: Path, options: _Options, requested: bool, warnings: list[str]):
    settings = int8_settings(float_model, mode, options.quant_format, options.per_channel, options.reduce_range,
                             options.activation_type, options.method, cpu_info(), options.inputs)
    settings = replace(
        settings,
        bias_correction=bias_correction_applies(settings, options.calibration, options.bias_correction, warnings),
        smooth_outliers=smoothing_applies(settings, options.calibration, options.smooth_outliers, warnings),
        max_layer_error=options.max_layer_error,
    )
    if requested:  # under auto, dynamic is one candidate among others: the options meant for static are not ignored
        warnings += ignored_option_warnings(settings, options.calibration, options.activation_type, options.method)
    to_quantize, settings = opset_for_per_channel(float_model, settings, warnings, options.inputs)
    outcome = quantize_int8(to_quantize, folder, settings, options.exclude, options.calibration,
                            options.calibration_batch_size, warnings, options.session, options.inputs)
    details = dict(
        format=settings.format, activation_type=settings.activation_type, weight_type="int8",
        per_channel=settings.per_channel, reduce_range=settings.reduce_range,
        method=settings.method if mode == "static" else None, calibration=outcome.calibration,
        preprocessed=outcome.preprocessed, excluded_nodes=outcome.excluded, bias_corrected=outcome.bias_corrected,
        smoothed=outcome.outliers.smoothed if outcome.outliers else {},
        float_layers=outcome.outliers.float_layers if outcome.outliers else [],
    )
    return outcome.model, details, outcome.counts, outcome.example


def _score(float_model, candidates: list[Candidate], example, session: SessionSpec, auto: bool, skipped: list[str],
           scratch: Path, inputs: MadeUpInputs = MadeUpInputs()):
    """Run every candidate once beside the float model: it must load, run and keep the outputs; record agreement.
    Each candidate runs first in a child process (`ir.isolated`): onnxruntime crashed on one int8 model.

    A candidate that fails is dropped under auto (and said so in `skipped`) and refused otherwise.
    Without data, random inputs: at the sizes given (`--input-shape`, its batch too: a model may run at
    no other), else _AGREEMENT_SAMPLES of them."""
    if example is not None:
        feeds = example
    elif inputs.shapes:
        feeds = inputs.feeds(float_model, batch=None)
    else:
        feeds = inputs.feeds(float_model, batch=_AGREEMENT_SAMPLES)
    float_session = create_session(float_model, session)
    try:
        reference = run_session(float_session, feeds)
    except OnnxSlimError:
        if example is not None or inputs.shapes:
            raise
        feeds = inputs.feeds(float_model)  # an export that fixed batch 1 inside (as inspect guesses)
        reference = run_session(float_session, feeds)
    kept = []
    for candidate in candidates:
        try:
            candidate_feeds = feeds_for(candidate.model, feeds)
            folder = scratch / f"check-{candidate.mode}"
            folder.mkdir(exist_ok=True)
            check_survives_a_run(candidate.model, candidate_feeds, session, folder)
            outputs = run_session(create_session(candidate.model, session), candidate_feeds)
            check_and_score(candidate, reference, outputs)
        except OnnxSlimError as exc:
            if not auto:
                raise OnnxSlimError(f"the quantized model ({candidate.label}) fails its check: {exc}") from None
            skipped.append(f"{candidate.mode}: {exc}")
            continue
        kept.append(candidate)
    return kept


def _measure(float_model, candidates: list[Candidate], example, session: SessionSpec,
             inputs: MadeUpInputs = MadeUpInputs()) -> dict:
    """Time the float model and every candidate interleaved; returns {"float": stats, "noise": a caveat
    or None} and fills each candidate's."""
    feeds = _timing_feeds(float_model, example, inputs)
    models = {"float": float_model, **{candidate.mode: candidate.model for candidate in candidates}}
    latency = quant_speed.measure_latencies(models, feeds, session=session)
    for candidate in candidates:
        candidate.latency_ms = latency[candidate.mode]
    return {"float": latency["float"], "noise": noise_caveat(list(latency.values()))}


def _timing_feeds(model: onnx.ModelProto, example: dict[str, np.ndarray] | None,
                  inputs: MadeUpInputs = MadeUpInputs()) -> dict[str, np.ndarray]:
    """One sample of the calibration data (the model's fixed batch, if it has one), else random inputs."""
    if example is None:
        return inputs.feeds(model)
    values = inputs.values or {}
    specs = graph_inputs(model)
    if fixed_batch_size(specs, values) is not None:
        return example
    # A fixed input has no samples to cut (a scalar, a state [2, batch, 128]): filled again at batch 1.
    return with_values({name: array[:1] for name, array in example.items() if name not in values}, specs, values,
                       inputs.shapes)
