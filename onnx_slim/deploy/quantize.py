"""Post-training int8 quantization with `onnxruntime.quantization`, with defaults for this CPU.

The float model is pre-processed as onnxruntime recommends (symbolic shape
inference + basic graph optimization), quantized in a scratch folder, checked
to load in onnxruntime, and only then written to the output atomically.

Defaults follow the guidance in onnxruntime's `quantize_static` docstring
(1.32): QDQ format; on x86-64 uint8 activations with int8 weights (U8S8) and
7-bit weights (`reduce_range`) when the CPU lacks VNNI, on ARM int8 for both;
per-channel weights for Conv-heavy static models.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from onnx_slim.errors import InvalidModelError, OnnxSlimError, UsageError, first_line
from onnx_slim.ir.hardware import cpu_info
from onnx_slim.ir.model import (
    InputSpec,
    ModelSource,
    check_output_path,
    fixed_batch_size,
    graph_inputs,
    leading_dim,
    load_model,
    random_inputs,
    save_model,
)
from onnx_slim.ir.runtime import create_session
from onnx_slim.ops import cost as cost_module

logger = logging.getLogger(__name__)

RANDOM_CALIBRATION = "random (structure-only)"
RANDOM_CALIBRATION_SAMPLES = 16
# MinMax calibration folds collected activations into running ranges every this
# many batches, so calibration memory does not grow with the data set.
_MINMAX_BATCHES_PER_MERGE = 8

_MODES = ("auto", "static", "dynamic")
_FORMATS = ("qdq", "qoperator")
_METHODS = ("minmax", "entropy", "percentile")
_ACTIVATION_TYPES = ("int8", "uint8")
_CONV_OPS = {"Conv", "ConvTranspose"}
_MATMUL_OPS = {"MatMul", "Gemm"}
_QUANTIZED_OP_NAMES = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
    "QGemm", "QAttention", "QEmbedLayerNormalization", "MatMulIntegerToFloat",
}


@dataclass
class QuantizeReport:
    """What `quantize_model` did. Sizes are serialized bytes."""

    output_path: str
    mode: str  # "static" or "dynamic"
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
    excluded_nodes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def quantize_model(
    model: ModelSource,
    output_path: str | os.PathLike,
    *,
    mode: str = "auto",
    calibration: Iterable[Mapping[str, np.ndarray]] | None = None,
    quant_format: str = "qdq",
    per_channel: bool | None = None,
    method: str = "minmax",
    reduce_range: bool | None = None,
    exclude: Sequence[str] = (),
    calibration_batch_size: int = 8,
    force: bool = False,
    activation_type: str | None = None,
) -> QuantizeReport:
    """Quantize a float model to int8 and write it to `output_path` atomically.

    `mode`: "static" (activation ranges calibrated ahead), "dynamic" (ranges at
    run time; QOperator integer ops, `quant_format`, `method` and calibration
    do not apply) or "auto" (dynamic for MatMul/Gemm models without Conv,
    static otherwise). `calibration`: an iterable of feed dicts
    `{input_name: array [B, ...]}`, pulled lazily and re-batched to
    `calibration_batch_size` (or the model's fixed batch size); without it,
    static mode calibrates on random inputs and says so in the report.
    `per_channel`, `reduce_range`, `activation_type` ("int8"/"uint8"): None
    picks the default for this CPU (see the module docstring). `exclude`:
    fnmatch globs on node names kept in float.
    """
    _check_options(mode, quant_format, method, calibration_batch_size, activation_type)
    output = Path(output_path)
    check_output_path(model, output, force)
    float_model = load_model(model, copy=False)
    _refuse_quantized(float_model)

    cpu = cpu_info()
    report_warnings: list[str] = []
    chosen_mode, mode_reason = choose_mode(float_model) if mode == "auto" else (mode, "requested")
    settings = _settings(
        float_model, chosen_mode, quant_format, per_channel, reduce_range, activation_type, method, cpu,
    )
    report_warnings += _ignored_option_warnings(chosen_mode, calibration, activation_type, method)

    with tempfile.TemporaryDirectory(prefix="onnx_slim_quantize.") as scratch:
        outcome = _quantize_in_scratch(
            float_model, Path(scratch), settings, exclude, calibration, calibration_batch_size, report_warnings,
        )
    if not outcome.counts:
        report_warnings.append("no node was quantized: the model has no op that onnxruntime quantizes in this mode")
    save_model(outcome.model, output, force=force)
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
        size_after=outcome.model.ByteSize(),
        quantized_ops=outcome.counts,
        excluded_nodes=outcome.excluded,
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


def quantized_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Nodes by op type that belong to quantization: Q/DQ pairs, QLinear*, *Integer, dynamic quantization."""
    counts = Counter(node.op_type for node in model.graph.node if is_quantized_op(node.op_type))
    return dict(sorted(counts.items()))


def is_quantized_op(op_type: str) -> bool:
    return op_type in _QUANTIZED_OP_NAMES or op_type.startswith("QLinear") or op_type.endswith("Integer")


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


def _refuse_quantized(model: onnx.ModelProto) -> None:
    found = quantized_op_counts(model)
    if found:
        raise InvalidModelError(
            f"model is already quantized ({', '.join(found)}); quantize the float model instead"
        )


@dataclass(frozen=True)
class _Settings:
    mode: str  # "static" or "dynamic"
    format: str  # "qdq" or "qoperator"
    activation_type: str  # "int8" or "uint8"
    per_channel: bool
    reduce_range: bool
    method: str


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
        per_channel = mode == "static" and quant_format == "qdq" and _conv_heavy(model)
    return _Settings(mode, quant_format, activation_type, bool(per_channel), bool(reduce_range), method)


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


def _quantize_in_scratch(
    float_model, scratch: Path, settings: _Settings, exclude, calibration, calibration_batch_size, report_warnings,
) -> _Outcome:
    """Pre-process, quantize and check inside `scratch`; nothing is written elsewhere."""
    prepared_path, preprocessed = _preprocess(float_model, scratch, report_warnings)
    prepared = onnx.load(str(prepared_path))
    # Match after pre-processing: its fusions can remove nodes the patterns name.
    excluded = _excluded_nodes(prepared, exclude, report_warnings)
    quantized_path = scratch / "quantized.onnx"
    if settings.mode == "dynamic":
        _quantize_dynamic(prepared_path, quantized_path, settings, excluded)
        calibration_note = "none (dynamic: activation ranges computed at run time)"
    else:
        reader = _calibration_reader(prepared, calibration, calibration_batch_size)
        _quantize_static(prepared_path, quantized_path, settings, excluded, reader)
        calibration_note = RANDOM_CALIBRATION if calibration is None else reader.describe()
        if settings.method != "minmax":
            report_warnings.append(
                f"{settings.method} calibration keeps every calibration activation in memory (onnxruntime); "
                "use minmax for large calibration sets"
            )
    quantized = _load_and_check(quantized_path)
    return _Outcome(quantized, quantized_op_counts(quantized), calibration_note, preprocessed, excluded)


def _preprocess(model: onnx.ModelProto, scratch: Path, report_warnings: list[str]) -> tuple[Path, bool]:
    """Shape inference + basic optimization as onnxruntime recommends; the float model if that fails."""
    float_path = scratch / "float.onnx"
    save_model(model, float_path)
    preprocessed_path = scratch / "preprocessed.onnx"
    # Symbolic shape inference needs sympy (not one of our dependencies) and rejects some
    # exotic graphs; onnx's own shape inference plus the optimization still helps then.
    failure = None
    for skip_symbolic in (False, True):
        try:
            quant_pre_process(str(float_path), str(preprocessed_path), skip_symbolic_shape=skip_symbolic)
            onnx.load(str(preprocessed_path), load_external_data=False)
        except Exception as exc:
            failure = failure or exc
            continue
        if skip_symbolic:
            logger.info("symbolic shape inference skipped: %s", first_line(failure))
        return preprocessed_path, True
    report_warnings.append(f"pre-processing failed, quantizing the model as given: {first_line(failure)}")
    return float_path, False


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
    _run_quantizer(
        quantize_dynamic, source, target,
        per_channel=settings.per_channel, reduce_range=settings.reduce_range,
        weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
    )


def _quantize_static(source: Path, target: Path, settings: _Settings, excluded: list[str], reader) -> None:
    calibration_methods = {
        "minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    quant_types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    extra_options = {"CalibMaxIntermediateOutputs": _MINMAX_BATCHES_PER_MERGE} if settings.method == "minmax" else {}
    _run_quantizer(
        quantize_static, source, target,
        calibration_data_reader=reader,
        quant_format=QuantFormat.QDQ if settings.format == "qdq" else QuantFormat.QOperator,
        per_channel=settings.per_channel, reduce_range=settings.reduce_range,
        activation_type=quant_types[settings.activation_type], weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded, calibrate_method=calibration_methods[settings.method],
        extra_options=extra_options,
    )


def _run_quantizer(quantizer, source: Path, target: Path, **options) -> None:
    try:
        quantizer(str(source), str(target), **options)
    except OnnxSlimError:
        raise
    except Exception as exc:
        reader = options.get("calibration_data_reader")
        if reader is not None and reader.was_empty():
            raise UsageError("the calibration data is empty: give at least one batch") from None
        raise OnnxSlimError(f"quantization failed: {first_line(exc)}") from None


def _load_and_check(path: Path) -> onnx.ModelProto:
    """The quantized model, refused unless onnxruntime can load it."""
    quantized = onnx.load(str(path))
    try:
        create_session(quantized, optimize=False)
    except OnnxSlimError as exc:
        raise OnnxSlimError(f"the quantized model does not load in onnxruntime: {exc}") from None
    return quantized


# --- calibration data ---------------------------------------------------------


def _calibration_reader(model: onnx.ModelProto, calibration, batch_size: int):
    specs = graph_inputs(model)
    size = fixed_batch_size(specs) or batch_size
    source = calibration if calibration is not None else _random_samples(model)
    return _LazyCalibrationReader(_rebatched(source, specs, size, exact=fixed_batch_size(specs) is not None), size)


def _random_samples(model: onnx.ModelProto) -> Iterator[dict[str, np.ndarray]]:
    for seed in range(RANDOM_CALIBRATION_SAMPLES):
        yield random_inputs(model, batch=1, seed=seed)


class _LazyCalibrationReader(CalibrationDataReader):
    """Hands onnxruntime's calibrator one batch at a time, pulled from an iterator."""

    def __init__(self, batches: Iterator[dict[str, np.ndarray]], batch_size: int) -> None:
        self._batches = batches
        self.batch_size = batch_size
        self.samples = 0
        self.batches_read = 0
        self.exhausted = False

    def get_next(self) -> dict[str, np.ndarray] | None:
        feeds = next(self._batches, None)
        if feeds is None:
            self.exhausted = True
        else:
            self.batches_read += 1
            self.samples += leading_dim(feeds)
        return feeds

    def was_empty(self) -> bool:
        return self.exhausted and self.samples == 0

    def describe(self) -> str:
        return f"{self.samples} samples in {self.batches_read} batches of up to {self.batch_size}"


def _rebatched(
    batches: Iterable[Mapping[str, np.ndarray]],
    specs: Sequence[InputSpec],
    size: int | None,
    *,
    exact: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Feed dicts with the model's inputs only, cast to its dtypes, `size` samples each.

    `size=None` passes batches through. Holds at most one incoming batch plus
    one outgoing. With `exact`, a final short batch is dropped (the model takes
    only `size`), otherwise it is yielded.
    """
    pending: list[dict[str, np.ndarray]] = []
    pending_samples = 0
    for batch in batches:
        feeds = _model_feeds(batch, specs)
        if size is None:
            yield feeds
            continue
        pending.append(feeds)
        pending_samples += leading_dim(feeds)
        while pending_samples >= size:
            merged = _concatenate(pending)
            yield {name: array[:size] for name, array in merged.items()}
            rest = {name: array[size:] for name, array in merged.items()}
            pending_samples -= size
            pending = [rest] if pending_samples else []
    if pending_samples and not exact:
        yield _concatenate(pending)
    elif pending_samples:
        logger.warning("dropped the last %d calibration samples: the model takes batches of %d", pending_samples, size)


def _model_feeds(batch: Mapping[str, np.ndarray], specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    missing = [spec.name for spec in specs if spec.name not in batch]
    if missing:
        raise UsageError(f"a calibration batch lacks model inputs {missing} (it has {sorted(batch)})")
    return {spec.name: np.asarray(batch[spec.name]).astype(spec.dtype, copy=False) for spec in specs}


def _concatenate(feeds_list: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(feeds_list) == 1:
        return feeds_list[0]
    return {name: np.concatenate([feeds[name] for feeds in feeds_list]) for name in feeds_list[0]}






# --- small helpers --------------------------------------------------------------


def _session_source(model: ModelSource):
    return model if isinstance(model, onnx.ModelProto) else os.fspath(model)


def _session_input_specs(session) -> list[InputSpec]:
    """Input specs read from a session, so the model is not loaded a second time."""
    specs = []
    for item in session.get_inputs():
        # onnxruntime names types "tensor(float)", "tensor(int64)"...; onnx calls them FLOAT, INT64...
        elem_type = onnx.TensorProto.DataType.Value(item.type[len("tensor("):-1].upper())
        specs.append(InputSpec(item.name, tuple(item.shape), np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))))
    return specs
