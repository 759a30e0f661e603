"""Post-training int8 with `onnxruntime.quantization`: the settings for this model and CPU, and the quantization.

Defaults follow the guidance in onnxruntime's `quantize_static` docstring
(1.32): QDQ format; on x86-64 uint8 activations with int8 weights (U8S8) and
7-bit weights (`reduce_range`) when the CPU lacks VNNI, on ARM int8 for both;
per-channel weights for Conv-heavy static models and for dynamic models
(per-tensor dynamic weights lost accuracy on sentence encoders at the same speed).
The float model is pre-processed as onnxruntime recommends (symbolic shape
inference + basic graph optimization) and quantized in a scratch folder.
Static models get bias correction (`quant_bias`) when the calibration data can
be read twice. Models whose MACs sit in MatMul/Gemm (transformers) get their
activation outliers handled first when there is real calibration data
(`quant_outliers`: SmoothQuant scales, float for layers it cannot save), and
static int8 quantizes only their MAC-carrying ops: the residual-stream Adds,
Softmax and scaling Mul/Div carry the same outliers and attention-mask values,
and quantizing them too took all-mpnet-base-v2 from cosine 0.99 to 0.12 while
saving 5% of the time. Static int8 leaves float the weightless ops that write a model
output (a final Softmax over thousands of classes: one int8 step of 1/255 rounded every
probability of a 6625-class text recognizer to 0).
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from onnx_slim.deploy.int8_simulation import Int8Simulation
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
from onnx_slim.deploy.quant_outliers import MAX_LAYER_ERROR, OutlierReport, prepare_for_int8
from onnx_slim.errors import OnnxSlimError, RuntimeCrash, first_line
from onnx_slim.ir.graph import opset_version
from onnx_slim.ir.inputs import MadeUpInputs
from onnx_slim.ir.isolated import check_survives_a_run
from onnx_slim.ir.model import is_quantized_op, save_model
from onnx_slim.ir.runtime import CHECK, SessionSpec, create_session, run_session
from onnx_slim.ops import cost as cost_module
from onnx_slim.ops.specs import WEIGHT_OPS

logger = logging.getLogger(__name__)

CONV_OPS = {"Conv", "ConvTranspose"}
MATMUL_OPS = {"MatMul", "Gemm"}
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")  # what static int8 quantizes in MatMul-heavy models


@dataclass(frozen=True)
class Int8Settings:
    mode: str  # "static" or "dynamic"
    format: str  # "qdq" or "qoperator"
    activation_type: str  # "int8" or "uint8"
    per_channel: bool
    reduce_range: bool
    method: str
    bias_correction: bool = False
    matmul_heavy: bool = False  # MatMul/Gemm carry the MACs (transformer-like): see the module's docstring
    smooth_outliers: bool = False
    max_layer_error: float = MAX_LAYER_ERROR  # above it a smoothed layer stays float


def int8_settings(model, mode, quant_format, per_channel, reduce_range, activation_type, method, cpu,
                  inputs: MadeUpInputs = MadeUpInputs()) -> Int8Settings:
    """The effective format, types, per-channel and reduce-range for this model, mode and CPU
    (`inputs` size the MACs that tell a conv model)."""
    is_x86 = cpu["machine"].lower() in ("x86_64", "amd64", "i386", "i686", "x86")
    if mode == "dynamic":
        quant_format, activation_type = "qoperator", "uint8"  # onnxruntime's dynamic mode: U8S8 integer ops
    elif activation_type is None:
        activation_type = "uint8" if is_x86 else "int8"
    if reduce_range is None:
        # 7-bit weights avoid the int16 saturation of 8-bit products on x86 without VNNI
        # (onnxruntime runs QDQ int8 activations through the same u8s8 kernels there).
        reduce_range = is_x86 and not cpu["vnni"]
    heavy = conv_heavy(model, inputs)
    matmul_heavy = not heavy and any(node.op_type in MATMUL_OPS for node in model.graph.node)
    if per_channel is None:
        # Dynamic: onnxruntime's integer ops take per-channel weights at no cost in speed. Static MatMul
        # models: SmoothQuant scales weight rows up, and per-tensor weights then left 19 layers of
        # all-mpnet-base-v2 too coarse for int8 against 11 per channel.
        per_channel = mode == "dynamic" or (quant_format == "qdq" and (heavy or matmul_heavy))
    return Int8Settings(mode, quant_format, activation_type, bool(per_channel), bool(reduce_range), method,
                        matmul_heavy=matmul_heavy)


def bias_correction_applies(settings: Int8Settings, calibration, requested: bool, report_warnings: list[str]) -> bool:
    """Whether to correct biases: static QDQ on real calibration data that can be read a second time."""
    if not requested or settings.mode != "static" or settings.format != "qdq" or calibration == RANDOM:
        return False
    if iter(calibration) is calibration:  # a one-shot iterator: calibrating consumes it
        report_warnings.append("bias correction skipped: it reads the calibration data a second time, and this "
                               "calibration is a one-shot iterator; give a list or a re-iterable stream")
        return False
    return True


def smoothing_applies(settings: Int8Settings, calibration, requested: bool, report_warnings: list[str]) -> bool:
    """Whether to handle activation outliers: MatMul-heavy models with real calibration data readable twice."""
    if not requested or not settings.matmul_heavy or calibration is None or calibration == RANDOM:
        return False
    if iter(calibration) is calibration:
        report_warnings.append("activation outliers not handled: that reads the calibration data a second time, "
                               "and this calibration is a one-shot iterator; give a list or a re-iterable stream")
        return False
    return True


def ignored_option_warnings(settings: Int8Settings, calibration, activation_type: str | None,
                            method: str) -> list[str]:
    if settings.mode != "dynamic":
        return []
    warnings = []
    if calibration is not None and not settings.smooth_outliers:
        warnings.append("calibration data not used: dynamic quantization computes activation ranges at run time")
    if activation_type == "int8":
        warnings.append("activation_type int8 not used: onnxruntime's dynamic quantization uses uint8 activations")
    if method != "minmax":
        warnings.append(f"method {method} not used: dynamic quantization does not calibrate")
    return warnings


def opset_for_per_channel(model: onnx.ModelProto, settings: Int8Settings, report_warnings: list[str],
                          inputs: MadeUpInputs = MadeUpInputs()):
    """(model to quantize, settings): per-channel QDQ below opset 13 converts the model, or goes per-tensor."""
    opset = opset_version(model)
    if not (settings.per_channel and settings.format == "qdq" and opset < PER_CHANNEL_OPSET):
        return model, settings
    converted, note = convert_for_per_channel(model, inputs)
    if converted is not None:
        report_warnings.append(note)
        return converted, settings
    report_warnings.append(f"per-tensor weights: per-channel needs opset {PER_CHANNEL_OPSET} and {note}")
    return model, replace(settings, per_channel=False)


def conv_heavy(model: onnx.ModelProto, inputs: MadeUpInputs = MadeUpInputs()) -> bool:
    """Conv layers carry at least half of the counted MACs (or, if none count, the model has Conv)."""
    has_conv = any(node.op_type in CONV_OPS for node in model.graph.node)
    if not has_conv:
        return False
    try:
        model_cost = cost_module.model_cost(model, input_shapes=inputs.shapes, input_values=inputs.values)
    except Exception:  # shape inference failed: fall back to the presence of Conv
        return True
    conv_names = {node.name for node in model.graph.node if node.op_type in CONV_OPS}
    conv_macs = sum(macs for name, macs in model_cost.node_macs.items() if name in conv_names)
    return model_cost.macs == 0 or conv_macs * 2 >= model_cost.macs


# --- pre-processing and quantization ------------------------------------------


@dataclass
class Int8Outcome:
    model: onnx.ModelProto  # the quantized model, checked to load in onnxruntime
    counts: dict[str, int]
    calibration: str
    preprocessed: bool
    excluded: list[str]
    example: dict[str, np.ndarray] | None  # the first calibration batch, to time the models on real inputs
    bias_corrected: int = 0
    outliers: OutlierReport | None = None


def quantize_int8(
    float_model, scratch: Path, settings: Int8Settings, exclude, calibration, calibration_batch_size, report_warnings,
    session: SessionSpec, inputs: MadeUpInputs = MadeUpInputs(),
) -> Int8Outcome:
    """Pre-process, quantize and check inside `scratch`; nothing is written elsewhere. `inputs`
    (--input-shape, --input-value) makes up random inputs."""
    outliers = None
    if settings.smooth_outliers:
        batches = calibration_reader(float_model, calibration, calibration_batch_size, inputs)
        simulation = Int8Simulation(weight_levels=63 if settings.reduce_range else 127,
                                    per_channel=settings.per_channel)
        float_model, outliers = guarded(prepare_for_int8, float_model, iter(batches.get_next, None), simulation,
                                        session, settings.max_layer_error)
    prepared_path, prepared, preprocessed = _preprocess(float_model, scratch, report_warnings, inputs)
    # Match after pre-processing: its fusions can remove nodes the patterns name.
    excluded = excluded_nodes(prepared, exclude, report_warnings)
    if outliers is not None:
        excluded += _outlier_exclusions(prepared, outliers, excluded, report_warnings)
    quantized_path = scratch / "quantized.onnx"
    example = None
    if settings.mode == "dynamic":
        _quantize_dynamic(prepared_path, quantized_path, settings, excluded)
        calibration_note = "none (dynamic: activation ranges computed at run time)"
    else:
        excluded += [name for name in _output_ops(prepared) if name not in excluded]
        reader = calibration_reader(prepared, calibration, calibration_batch_size, inputs)
        cache_path = scratch / "calibration.json"
        guarded(calibrate, prepared_path, reader, settings.method, cache_path)
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
    # Its first run is in a child process: onnxruntime 1.32 segfaulted in its fused QLinearConcat on one
    # such model (a pruned EEG detector), and the bias correction below runs it here.
    feeds = example if example is not None else inputs.feeds(prepared)
    try:
        guarded(check_survives_a_run, quantized_path, feeds, session, scratch)  # the file quantize wrote
    except RuntimeCrash as exc:
        raise RuntimeCrash(f"{exc} (the {settings.mode} int8 model; another --mode, or --exclude of the layers "
                           "around the fault, may avoid it)") from None
    corrected = {}
    if settings.bias_correction:
        again = calibration_reader(prepared, calibration, calibration_batch_size, inputs)
        corrected = guarded(correct_biases, quantized, prepared, iter(again.get_next, None), session)
    check_loads(quantized)
    return Int8Outcome(quantized, quantized_op_counts(quantized), calibration_note, preprocessed, excluded, example,
                       len(corrected), outliers)


def _outlier_exclusions(prepared: onnx.ModelProto, outliers: OutlierReport, excluded: list[str],
                        report_warnings: list[str]) -> list[str]:
    """The layers to keep float and the smoothing Muls, as named after pre-processing."""
    names = {node.name for node in prepared.graph.node}
    lost = [name for name in outliers.float_layers if name not in names]
    if lost:
        report_warnings.append(f"{len(lost)} layer(s) to keep float were renamed or fused by pre-processing and "
                               f"are quantized: {', '.join(lost[:3])}")
    return [name for name in outliers.excluded() if name in names and name not in excluded]


def _output_ops(model: onnx.ModelProto) -> list[str]:
    """Nodes without weights (Softmax, Sigmoid, Add, ...) that write a model output: quantizing
    their output only rounds what the user reads, and saves next to nothing."""
    outputs = {output.name for output in model.graph.output}
    return [node.name for node in model.graph.node
            if node.name and outputs.intersection(node.output) and node.op_type not in WEIGHT_OPS]


def quantized_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Nodes by op type that belong to quantization: Q/DQ pairs, QLinear*, *Integer, dynamic quantization."""
    counts = Counter(node.op_type for node in model.graph.node if is_quantized_op(node.op_type))
    return dict(sorted(counts.items()))


def _preprocess(
    model: onnx.ModelProto, scratch: Path, report_warnings: list[str],
    inputs: MadeUpInputs = MadeUpInputs(),
) -> tuple[Path, onnx.ModelProto, bool]:
    """Shape inference + basic optimization as onnxruntime recommends; the float model if that fails.

    Returns where the model to quantize is, the model itself, and whether it was pre-processed."""
    scratch = scratch.resolve()  # absolute: the step runs inside the folder
    float_path = scratch / "float.onnx"
    save_model(model, float_path)
    preprocessed_path = scratch / "preprocessed.onnx"
    # Symbolic shape inference needs sympy (not one of our dependencies) and rejects some
    # exotic graphs; onnx's own shape inference plus the optimization still helps then.
    failure = None
    for skip_symbolic in (False, True):
        try:
            with working_directory(scratch):  # where onnxruntime dumps a failed symbolic inference's model
                quant_pre_process(str(float_path), str(preprocessed_path), skip_symbolic_shape=skip_symbolic)
            prepared = onnx.load(str(preprocessed_path))
            _check_preprocessed(float_path, preprocessed_path, model, inputs)
        except Exception as exc:
            failure = failure or exc
            continue
        if skip_symbolic:
            logger.info("symbolic shape inference skipped: %s", first_line(failure))
        return preprocessed_path, prepared, True
    report_warnings.append(f"pre-processing failed, quantizing the model as given: {first_line(failure)}")
    return float_path, model, False


def _check_preprocessed(float_path: Path, preprocessed_path: Path, model: onnx.ModelProto,
                        inputs: MadeUpInputs = MadeUpInputs()) -> None:
    """Raise unless the pre-processed model computes what the float model does at batch 1 and 2.

    Symbolic shape inference can get a shape wrong where the model states none (a paddle2onnx
    flatten whose target is computed from Shape, once pruning dropped its annotations: a rank-1
    [200] for [N, 200]); the optimization then fuses a MatMul + Add into a Gemm between Reshapes
    to the batch it saw, and calibration fails at any other batch."""
    float_session = create_session(str(float_path), CHECK)
    prepared_session = create_session(str(preprocessed_path), CHECK)
    for batch in (1, 2):
        feeds = inputs.feeds(model, batch=batch, seed=batch)
        try:
            expected = run_session(float_session, feeds)
        except OnnxSlimError:
            return  # random inputs the model cannot take (token ids out of range): nothing to compare
        got = run_session(prepared_session, feeds)
        for name, value in expected.items():
            if got[name].shape != value.shape or not _close(got[name], value):
                raise OnnxSlimError(f"pre-processing changed output {name} at batch {batch}")


def _close(got: np.ndarray, expected: np.ndarray) -> bool:
    """Within 1% of the output's range: the optimizer's BatchNorm folding and fusions move random-input
    outputs by float rounding (8e-3 on PicoDet box logits of +-184); a broken rewrite moves them by far
    more. NaN (random inputs through Log) counts as equal to NaN."""
    got, expected = got.astype(np.float64), expected.astype(np.float64)
    if not np.array_equal(np.isnan(got), np.isnan(expected)):
        return False
    finite = ~np.isnan(expected)
    if not finite.any():
        return True
    error = np.abs(got[finite] - expected[finite]).max()
    return bool(error <= 1e-2 * np.abs(expected[finite]).max() + 1e-5)


@contextlib.contextmanager
def working_directory(folder: Path):
    """Run a step inside `folder`: onnxruntime's symbolic shape inference, when it cannot finish, saves
    sym_shape_infer_temp.onnx and uuid-named .data files into the current directory before it raises, which
    would litter the user's. The process's directory is restored however the step ends."""
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def excluded_nodes(model: onnx.ModelProto, patterns: Sequence[str], report_warnings: list[str]) -> list[str]:
    names = [node.name for node in model.graph.node if node.name]
    excluded = []
    for pattern in patterns:
        matches = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not matches:
            report_warnings.append(f"exclude pattern {pattern!r} matches no node")
        excluded.extend(name for name in matches if name not in excluded)
    return excluded


def _quantize_dynamic(source: Path, target: Path, settings: Int8Settings, excluded: list[str]) -> None:
    guarded(
        quantize_dynamic, str(source), str(target),
        per_channel=settings.per_channel, reduce_range=settings.reduce_range,
        weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
    )


def _quantize_static(source: Path, target: Path, settings: Int8Settings, excluded: list[str], cache_path: Path) -> None:
    """quantize_static with the ranges `calibrate` saved (it reads the cache instead of calibrating)."""
    quant_types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    guarded(
        quantize_static, str(source), str(target),
        calibration_cache_path=str(cache_path),
        quant_format=QuantFormat.QDQ if settings.format == "qdq" else QuantFormat.QOperator,
        per_channel=settings.per_channel, reduce_range=settings.reduce_range,
        activation_type=quant_types[settings.activation_type], weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded, calibrate_method=CALIBRATION_METHODS[settings.method],
        op_types_to_quantize=list(COMPUTE_OPS) if settings.matmul_heavy else None,
        # Their outputs stay float too (onnxruntime's QDQ MatMul quantizes its output by default).
        extra_options={"OpTypesToExcludeOutputQuantization": list(COMPUTE_OPS)} if settings.matmul_heavy else None,
    )


def guarded(step, *args, **kwargs):
    """Run a quantization step; anything but our own errors becomes one "quantization failed" line."""
    try:
        return step(*args, **kwargs)
    except OnnxSlimError:
        raise
    except Exception as exc:
        raise OnnxSlimError(f"quantization failed: {first_line(exc)}") from None


def check_loads(quantized: onnx.ModelProto) -> None:
    """Refuse the quantized model unless onnxruntime can load it."""
    try:
        create_session(quantized, CHECK)
    except OnnxSlimError as exc:
        raise OnnxSlimError(f"the quantized model does not load in onnxruntime: {exc}") from None
