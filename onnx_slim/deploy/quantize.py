"""Post-training int8 quantization with `onnxruntime.quantization`, with defaults for this CPU.

The float model is pre-processed as onnxruntime recommends (symbolic shape
inference + basic graph optimization), quantized in a scratch folder, checked
to load in onnxruntime, timed against the float model, and only then the
model kept is written to the output atomically.

Defaults follow the guidance in onnxruntime's `quantize_static` docstring
(1.32): QDQ format; on x86-64 uint8 activations with int8 weights (U8S8) and
7-bit weights (`reduce_range`) when the CPU lacks VNNI, on ARM int8 for both;
per-channel weights for Conv-heavy static models and for dynamic models
(per-tensor dynamic weights lost accuracy on sentence encoders at the same speed).
Static quantization needs calibration data: without any, "auto" picks dynamic,
and random data (`calibration="random"`) only makes a structure-only smoke test.
Static models get bias correction (`quant_bias`) when the calibration data can
be read twice.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from onnx_slim.deploy import quant_speed
from onnx_slim.deploy.quant_bias import correct_biases
from onnx_slim.deploy.quant_calibration import (
    CALIBRATION_METHODS,
    RANDOM,
    RANDOM_CALIBRATION,
    RANDOM_CALIBRATION_WARNING,
    calibrate,
    calibration_reader,
)
from onnx_slim.deploy.quant_opset import PER_CHANNEL_OPSET, convert_for_per_channel
from onnx_slim.errors import OnnxSlimError, UsageError, first_line
from onnx_slim.ir.files import scratch_folder
from onnx_slim.ir.graph import opset_version
from onnx_slim.ir.hardware import cpu_info
from onnx_slim.ir.inputs import fixed_batch_size, graph_inputs, random_inputs
from onnx_slim.ir.model import (
    ModelSource,
    check_not_quantized,
    check_output_path,
    is_quantized_op,
    load_model,
    save_model,
)
from onnx_slim.ir.runtime import CHECK, SessionSpec, create_session
from onnx_slim.ops import cost as cost_module

logger = logging.getLogger(__name__)

_MODES = ("auto", "static", "dynamic")
_FORMATS = ("qdq", "qoperator")
_METHODS = ("minmax", "entropy", "percentile")
_ACTIVATION_TYPES = ("int8", "uint8")
_CONV_OPS = {"Conv", "ConvTranspose"}
_MATMUL_OPS = {"MatMul", "Gemm"}


@dataclass
class QuantizeReport:
    """What `quantize_model` did. Sizes are serialized bytes; `size_after` and `quantized_ops` describe the output."""

    output_path: str
    mode: str  # "static" or "dynamic": how the int8 candidate was made
    mode_reason: str
    format: str  # "qdq" or "qoperator"
    activation_type: str
    weight_type: str
    per_channel: bool
    reduce_range: bool
    method: str | None  # calibration method; None for dynamic
    calibration: str  # what the ranges were calibrated on
    cpu_flags: list[str]
    preprocessed: bool
    size_before: int
    size_after: int
    quantized_ops: dict[str, int]
    kept: str = "int8"  # "int8", or "float" when the int8 candidate was slower (mode auto)
    decision: str = ""  # why that model was kept
    latency_ms: dict | None = None  # {"float": stats, "int8": stats} as timed, None when not measured
    excluded_nodes: list[str] = field(default_factory=list)
    bias_corrected: int = 0  # layers whose int32 bias was shifted (`quant_bias`)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


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
) -> QuantizeReport:
    """Quantize a float model to int8 and write it (or the float model, if faster) to `output_path` atomically.

    `mode`: "static" (activation ranges calibrated ahead), "dynamic" (ranges at
    run time; QOperator integer ops, `quant_format`, `method` and calibration
    do not apply) or "auto" (dynamic for MatMul/Gemm models without Conv or
    without calibration data, static otherwise; and the float model is kept
    when int8 measures slower). `calibration`: an iterable of feed dicts
    `{input_name: array [B, ...]}`, pulled lazily and re-batched to
    `calibration_batch_size` (or the model's fixed batch size), every sample
    counting; or "random" for a structure-only static smoke test (flagged
    as not for deployment). Static mode without calibration is refused.
    `per_channel`, `reduce_range`, `activation_type` ("int8"/"uint8"): None
    picks the default for this CPU (see the module docstring). `exclude`:
    fnmatch globs on node names kept in float. `measure`: time int8 against
    the float model (run as `session` says) and report both; False skips it.
    `bias_correction` (static QDQ, real calibration data that can be iterated
    twice, e.g. a list or a `BatchStream`): shift each Conv/Gemm bias so its
    mean output on the calibration data matches the float layer's.
    """
    _check_options(mode, quant_format, method, calibration_batch_size, activation_type)
    output = Path(output_path)
    check_output_path(model, output, force)
    float_model = load_model(model, copy=False)
    check_not_quantized(float_model, advice="quantize the float model instead")

    cpu = cpu_info()
    report_warnings: list[str] = []
    chosen_mode, mode_reason = _resolve_mode(float_model, mode, calibration)
    settings = _settings(
        float_model, chosen_mode, quant_format, per_channel, reduce_range, activation_type, method, cpu,
    )
    settings = replace(settings, bias_correction=_bias_correction(settings, calibration, bias_correction,
                                                                  report_warnings))
    report_warnings += _ignored_option_warnings(chosen_mode, calibration, activation_type, method)
    to_quantize, settings = _opset_for_per_channel(float_model, settings, report_warnings)

    # Beside the output (not /tmp): the same filesystem, and cleaned up on a signal like every scratch folder.
    with scratch_folder(output.parent) as scratch:
        outcome = _quantize_in_scratch(
            to_quantize, scratch, settings, exclude, calibration, calibration_batch_size, report_warnings,
            session,
        )
    if not outcome.counts:
        report_warnings.append("no node was quantized: the model has no op that onnxruntime quantizes in this mode")
    latency = None
    if measure:
        feeds = _timing_feeds(float_model, outcome.example)
        latency = quant_speed.measure_latency(float_model, outcome.model, feeds, session=session)
    decision = quant_speed.decide(mode, latency)
    if decision.warning:
        report_warnings.append(decision.warning)
    written = outcome.model if decision.kept == "int8" else float_model
    save_model(written, output, force=force)
    for message in report_warnings:
        logger.warning("%s", message)
    return QuantizeReport(
        output_path=str(output),
        mode=settings.mode,
        mode_reason=mode_reason,
        format=settings.format,
        activation_type=settings.activation_type,
        weight_type="int8",
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        method=method if settings.mode == "static" else None,
        calibration=outcome.calibration,
        cpu_flags=cpu["int8_flags"],
        preprocessed=outcome.preprocessed,
        size_before=float_model.ByteSize(),
        size_after=written.ByteSize(),
        quantized_ops=quantized_op_counts(written),
        kept=decision.kept,
        decision=decision.reason,
        latency_ms=latency,
        excluded_nodes=outcome.excluded,
        bias_corrected=outcome.bias_corrected,
        warnings=report_warnings,
    )


def choose_mode(model: onnx.ModelProto) -> tuple[str, str]:
    """("dynamic" | "static", reason): dynamic for MatMul/Gemm networks without Conv (transformer-like)."""
    op_types = {node.op_type for node in model.graph.node}
    if op_types & _CONV_OPS:
        return "static", "auto: the model has Conv layers"
    if op_types & _MATMUL_OPS:
        # Without Conv, MatMul/Gemm carry every MAC that cost.py counts.
        return "dynamic", "auto: MatMul/Gemm carry the MACs and there is no Conv (transformer-like)"
    return "static", "auto: no Conv, MatMul or Gemm"


def _resolve_mode(model: onnx.ModelProto, mode: str, calibration) -> tuple[str, str]:
    """The mode to quantize in and why; static only with calibration data (real, or random when asked)."""
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
    return chosen, reason


def quantized_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Nodes by op type that belong to quantization: Q/DQ pairs, QLinear*, *Integer, dynamic quantization."""
    counts = Counter(node.op_type for node in model.graph.node if is_quantized_op(node.op_type))
    return dict(sorted(counts.items()))


# --- options and defaults ----------------------------------------------------


def _check_options(mode, quant_format, method, calibration_batch_size, activation_type) -> None:
    for name, value, allowed in (
        ("mode", mode, _MODES), ("quant_format", quant_format, _FORMATS), ("method", method, _METHODS),
    ):
        if value not in allowed:
            raise UsageError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    if activation_type is not None and activation_type not in _ACTIVATION_TYPES:
        raise UsageError(f"activation_type must be one of {', '.join(_ACTIVATION_TYPES)}; got {activation_type!r}")
    if calibration_batch_size < 1:
        raise UsageError(f"calibration_batch_size must be at least 1, got {calibration_batch_size}")


@dataclass(frozen=True)
class _Settings:
    mode: str  # "static" or "dynamic"
    format: str  # "qdq" or "qoperator"
    activation_type: str  # "int8" or "uint8"
    per_channel: bool
    reduce_range: bool
    method: str
    bias_correction: bool = False


def _settings(model, mode, quant_format, per_channel, reduce_range, activation_type, method, cpu) -> _Settings:
    """The effective format, types, per-channel and reduce-range for this model, mode and CPU."""
    is_x86 = cpu["machine"].lower() in ("x86_64", "amd64", "i386", "i686", "x86")
    if mode == "dynamic":
        quant_format, activation_type = "qoperator", "uint8"  # onnxruntime's dynamic mode: U8S8 integer ops
    elif activation_type is None:
        activation_type = "uint8" if is_x86 else "int8"
    if reduce_range is None:
        # 7-bit weights avoid the int16 saturation of 8-bit products on x86 without VNNI
        # (onnxruntime runs QDQ int8 activations through the same u8s8 kernels there).
        reduce_range = is_x86 and not cpu["vnni"]
    if per_channel is None:
        # Dynamic: onnxruntime's integer ops take per-channel weights at no cost in speed.
        per_channel = mode == "dynamic" or (quant_format == "qdq" and _conv_heavy(model))
    return _Settings(mode, quant_format, activation_type, bool(per_channel), bool(reduce_range), method)


def _bias_correction(settings: _Settings, calibration, requested: bool, report_warnings: list[str]) -> bool:
    """Whether to correct biases: static QDQ on real calibration data that can be read a second time."""
    if not requested or settings.mode != "static" or settings.format != "qdq" or calibration == RANDOM:
        return False
    if iter(calibration) is calibration:  # a one-shot iterator: calibrating consumes it
        report_warnings.append("bias correction skipped: it reads the calibration data a second time, and this "
                               "calibration is a one-shot iterator; give a list or a re-iterable stream")
        return False
    return True


def _ignored_option_warnings(mode: str, calibration, activation_type: str | None, method: str) -> list[str]:
    if mode != "dynamic":
        return []
    warnings = []
    if calibration is not None:
        warnings.append("calibration data not used: dynamic quantization computes activation ranges at run time")
    if activation_type == "int8":
        warnings.append("activation_type int8 not used: onnxruntime's dynamic quantization uses uint8 activations")
    if method != "minmax":
        warnings.append(f"method {method} not used: dynamic quantization does not calibrate")
    return warnings


def _opset_for_per_channel(model: onnx.ModelProto, settings: _Settings, report_warnings: list[str]):
    """(model to quantize, settings): per-channel QDQ below opset 13 converts the model, or goes per-tensor."""
    opset = opset_version(model)
    if not (settings.per_channel and settings.format == "qdq" and opset < PER_CHANNEL_OPSET):
        return model, settings
    converted, note = convert_for_per_channel(model)
    if converted is not None:
        report_warnings.append(note)
        return converted, settings
    report_warnings.append(f"per-tensor weights: per-channel needs opset {PER_CHANNEL_OPSET} and {note}")
    return model, replace(settings, per_channel=False)


def _conv_heavy(model: onnx.ModelProto) -> bool:
    """Conv layers carry at least half of the counted MACs (or, if none count, the model has Conv)."""
    has_conv = any(node.op_type in _CONV_OPS for node in model.graph.node)
    if not has_conv:
        return False
    try:
        model_cost = cost_module.model_cost(model)
    except Exception:  # shape inference failed: fall back to the presence of Conv
        return True
    conv_names = {node.name for node in model.graph.node if node.op_type in _CONV_OPS}
    conv_macs = sum(macs for name, macs in model_cost.node_macs.items() if name in conv_names)
    return model_cost.macs == 0 or conv_macs * 2 >= model_cost.macs


# --- pre-processing and quantization ------------------------------------------


@dataclass
class _Outcome:
    model: onnx.ModelProto  # the quantized model, checked to load in onnxruntime
    counts: dict[str, int]
    calibration: str
    preprocessed: bool
    excluded: list[str]
    example: dict[str, np.ndarray] | None  # the first calibration batch, to time the models on real inputs
    bias_corrected: int = 0


def _quantize_in_scratch(
    float_model, scratch: Path, settings: _Settings, exclude, calibration, calibration_batch_size, report_warnings,
    session: SessionSpec,
) -> _Outcome:
    """Pre-process, quantize and check inside `scratch`; nothing is written elsewhere."""
    prepared_path, prepared, preprocessed = _preprocess(float_model, scratch, report_warnings)
    # Match after pre-processing: its fusions can remove nodes the patterns name.
    excluded = _excluded_nodes(prepared, exclude, report_warnings)
    quantized_path = scratch / "quantized.onnx"
    example = None
    if settings.mode == "dynamic":
        _quantize_dynamic(prepared_path, quantized_path, settings, excluded)
        calibration_note = "none (dynamic: activation ranges computed at run time)"
    else:
        reader = calibration_reader(prepared, calibration, calibration_batch_size)
        cache_path = scratch / "calibration.json"
        _guarded(calibrate, prepared_path, reader, settings.method, cache_path)
        _quantize_static(prepared_path, quantized_path, settings, excluded, cache_path)
        if calibration == RANDOM:
            calibration_note = RANDOM_CALIBRATION
            report_warnings.append(RANDOM_CALIBRATION_WARNING)
        else:
            calibration_note, example = reader.describe(), reader.first_batch
        if settings.method != "minmax":
            report_warnings.append(
                f"{settings.method} calibration keeps every calibration activation in memory (onnxruntime); "
                "use minmax for large calibration sets"
            )
    quantized = onnx.load(str(quantized_path))
    corrected = {}
    if settings.bias_correction:
        again = calibration_reader(prepared, calibration, calibration_batch_size)
        corrected = _guarded(correct_biases, quantized, prepared, iter(again.get_next, None), session)
    _check_loads(quantized)
    return _Outcome(quantized, quantized_op_counts(quantized), calibration_note, preprocessed, excluded, example,
                    len(corrected))


def _timing_feeds(model: onnx.ModelProto, example: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """One sample of the calibration data (the model's fixed batch, if it has one), else random inputs."""
    if example is None:
        return random_inputs(model, batch=1)
    if fixed_batch_size(graph_inputs(model)) is not None:
        return example
    return {name: array[:1] for name, array in example.items()}


def _preprocess(
    model: onnx.ModelProto, scratch: Path, report_warnings: list[str]
) -> tuple[Path, onnx.ModelProto, bool]:
    """Shape inference + basic optimization as onnxruntime recommends; the float model if that fails.

    Returns where the model to quantize is, the model itself, and whether it was pre-processed."""
    float_path = scratch / "float.onnx"
    save_model(model, float_path)
    preprocessed_path = scratch / "preprocessed.onnx"
    # Symbolic shape inference needs sympy (not one of our dependencies) and rejects some
    # exotic graphs; onnx's own shape inference plus the optimization still helps then.
    failure = None
    for skip_symbolic in (False, True):
        try:
            quant_pre_process(str(float_path), str(preprocessed_path), skip_symbolic_shape=skip_symbolic)
            prepared = onnx.load(str(preprocessed_path))
        except Exception as exc:
            failure = failure or exc
            continue
        if skip_symbolic:
            logger.info("symbolic shape inference skipped: %s", first_line(failure))
        return preprocessed_path, prepared, True
    report_warnings.append(f"pre-processing failed, quantizing the model as given: {first_line(failure)}")
    return float_path, model, False


def _excluded_nodes(model: onnx.ModelProto, patterns: Sequence[str], report_warnings: list[str]) -> list[str]:
    names = [node.name for node in model.graph.node if node.name]
    excluded = []
    for pattern in patterns:
        matches = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not matches:
            report_warnings.append(f"exclude pattern {pattern!r} matches no node")
        excluded.extend(name for name in matches if name not in excluded)
    return excluded


def _quantize_dynamic(source: Path, target: Path, settings: _Settings, excluded: list[str]) -> None:
    _guarded(
        quantize_dynamic, str(source), str(target),
        per_channel=settings.per_channel, reduce_range=settings.reduce_range,
        weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
    )


def _quantize_static(source: Path, target: Path, settings: _Settings, excluded: list[str], cache_path: Path) -> None:
    """quantize_static with the ranges `calibrate` saved (it reads the cache instead of calibrating)."""
    quant_types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    _guarded(
        quantize_static, str(source), str(target),
        calibration_cache_path=str(cache_path),
        quant_format=QuantFormat.QDQ if settings.format == "qdq" else QuantFormat.QOperator,
        per_channel=settings.per_channel, reduce_range=settings.reduce_range,
        activation_type=quant_types[settings.activation_type], weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded, calibrate_method=CALIBRATION_METHODS[settings.method],
    )


def _guarded(step, *args, **kwargs):
    """Run a quantization step; anything but our own errors becomes one "quantization failed" line."""
    try:
        return step(*args, **kwargs)
    except OnnxSlimError:
        raise
    except Exception as exc:
        raise OnnxSlimError(f"quantization failed: {first_line(exc)}") from None


def _check_loads(quantized: onnx.ModelProto) -> None:
    """Refuse the quantized model unless onnxruntime can load it."""
    try:
        create_session(quantized, CHECK)
    except OnnxSlimError as exc:
        raise OnnxSlimError(f"the quantized model does not load in onnxruntime: {exc}") from None
