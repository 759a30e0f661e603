"""Statistics correction: give each pruned layer's output channels the original's mean and spread.

Pruning (even after the re-fit) leaves each later layer's output per channel with
a shifted mean and a narrower or wider spread, which every layer after it sees.
Re-estimating BatchNorm statistics after pruning (adaptive BN) recovers much of
that accuracy; BN is folded into the layers here, so the same correction is
written into the layer itself: y' = s (y - mu_p) + mu_o with s = sigma_o / sigma_p
per output channel, i.e. the channel's weights scaled by s and its bias set to
s (b - mu_p) + mu_o. The statistics are those of the layer's output before any
activation (a MatMul's after its bias Add), over the whole calibration set.

Every weight-bearing layer that pruning can change is a candidate: the consumers,
the depthwise convs and every layer after them. Layers are corrected in depth
order, one pass per depth level (at most `max_passes`; deeper models merge
consecutive levels), each pass running the pruned model, cut after that level,
with every earlier level already corrected. Each layer keeps the best of three
candidates by its error against the original's output on held-out rows (sampled
in one pass of the original and left out of the statistics that choose): as it
is, the mean shift alone, or mean and spread. So a correction never makes a
layer's held-out calibration error worse. Layers whose weights are shared (an
unrolled recurrent cell) are left alone: one correction per copy would unshare them.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_slim.apply.layers import UNUSABLE_BIAS, bias_target, cut_after, initializer, kept_outputs
from onnx_slim.channels.groups import ChannelAnalysis
from onnx_slim.data.activations import ActivationCapture
from onnx_slim.data.calibration import CalibrationSet
from onnx_slim.data.statistics import ChannelStats
from onnx_slim.ir.graph import attr, readers_of
from onnx_slim.ir.runtime import SessionSpec
from onnx_slim.ops.specs import WEIGHT_OPS

DEFAULT_MAX_PASSES = 24
HOLDOUT_EVERY = 5  # about one row in 5 of each batch is held out to choose between candidates
HOLDOUT_ROWS = 2048  # held-out rows per layer, over the whole calibration set
SCALE_RANGE = (0.5, 2.0)  # a spread correction beyond this is more likely noise than drift
MIN_GAIN = 1e-3  # a candidate must lower the held-out error by this fraction to replace "none"
METHODS = ("none", "mean", "mean+std")


@dataclass
class LayerCorrection:
    """What happened to one layer: the chosen method and its held-out relative errors."""

    node: str
    op_type: str
    method: str  # one of METHODS
    channels: int
    error_before: float  # ||y_pruned - y_original||^2 / ||y_original||^2 on the held-out rows
    error_after: float


@dataclass
class StatisticsReport:
    layers: list = field(default_factory=list)
    passes: int = 0
    shared_weights_skipped: int = 0
    seconds: float = 0.0

    def summary(self) -> dict:
        methods = dict(Counter(layer.method for layer in self.layers))
        corrected = sum(layer.method != "none" for layer in self.layers)
        return {"layers": len(self.layers), "corrected": corrected, "unchanged": len(self.layers) - corrected,
                "methods": methods, "passes": self.passes}

    def to_dict(self) -> dict:
        return {**self.summary(), "shared_weights_skipped": self.shared_weights_skipped, "seconds": self.seconds,
                "per_layer": [asdict(layer) for layer in self.layers]}


@dataclass
class _Layer:
    """One layer to correct: where its output is measured and where the correction is written."""

    node: onnx.NodeProto
    weight: str
    kept_out: list  # original output-channel indices, in the pruned layer's order
    bias_tensor: str | None  # the node's bias (created when missing) or the following Add's constant
    bias_is_following_add: bool
    tensor: str  # the measured output: the node's, or the following Add's for a MatMul
    axis: int  # its channel axis
    level: int  # 1 + the deepest candidate layer upstream
    original: ChannelStats | None = None
    positions: list = field(default_factory=list)  # per batch: held-out row indices
    held_original: list = field(default_factory=list)  # per batch: [rows, kept channels]


def correct_statistics(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    analysis: ChannelAnalysis,
    plan: dict,
    calibration: CalibrationSet,
    *,
    batch_size: int = 8,
    max_passes: int = DEFAULT_MAX_PASSES,
    seed: int = 0,
    session: SessionSpec = SessionSpec(),
    progress: Callable[[str], None] | None = None,
) -> StatisticsReport:
    """Correct, in `pruned` (modified in place), every layer `plan` can change.

    `original` is the normalized model before surgery (same names as `pruned`).
    """
    started = time.perf_counter()
    say = progress or (lambda message: None)
    report = StatisticsReport()
    layers, report.shared_weights_skipped = _layers(original, pruned, analysis, plan)
    if not layers:
        return report
    say(f"statistics correction: measuring {len(layers)} layers in the original model")
    _measure_original(original, layers, calibration, batch_size, np.random.default_rng(seed), session)
    chunks = _chunks_by_level(layers, max_passes)
    report.passes = len(chunks)
    for index, chunk in enumerate(chunks, 1):
        say(f"statistics correction pass {index}/{len(chunks)}: {len(chunk)} layers")
        measured = _measure_pruned(pruned, chunk, calibration, batch_size, session)
        for layer in chunk:
            report.layers.append(_correct(pruned, layer, *measured[id(layer)]))
            layer.held_original.clear()
    report.seconds = round(time.perf_counter() - started, 2)
    return report


# -- which layers ------------------------------------------------------------------------


def _layers(original, pruned, analysis: ChannelAnalysis, plan: dict) -> tuple[list[_Layer], int]:
    """The weight-bearing layers downstream of a pruned tensor, with their depth levels; and how many
    were skipped for sharing their weights."""
    atoms, touched = analysis.atoms, set(plan)
    constants = {init.name for init in pruned.graph.initializer}
    shrunk = {name for name, tracked in analysis.context.tracked.items()
              if name not in constants and touched.intersection(atoms.classes_in(tracked.layout))}
    shared = _shared_weights(original)
    readers = readers_of(pruned)
    original_tensors = {output for node in original.graph.node for output in node.output}
    changed: set[str] = set()  # tensors whose values may differ from the original's
    depth: dict[str, int] = {}  # tensor -> level of the deepest candidate layer upstream
    layers, skipped = [], 0
    for node in pruned.graph.node:  # topological, as ONNX requires
        inputs = [name for name in node.input if name]
        level = max((depth.get(name, 0) for name in inputs), default=0)
        if any(name in changed or name in shrunk for name in inputs):
            changed.update(node.output)
            layer = _layer(node, original, pruned, analysis, plan, readers, original_tensors, level + 1)
            if layer is not None and node.input[1] in shared:
                skipped += 1
            elif layer is not None:
                layers.append(layer)
                level += 1
        for name in node.output:
            depth[name] = level
    return layers, skipped


def _layer(node, original, pruned, analysis, plan, readers, original_tensors, level) -> _Layer | None:
    spec = WEIGHT_OPS.get(node.op_type)
    constants = {init.name for init in pruned.graph.initializer}
    if spec is None or len(node.input) < 2 or node.input[1] not in constants:
        return None
    if node.op_type == "ConvTranspose" and attr(node, "group", 1) != 1:
        return None  # a grouped transpose spreads each output channel over a block of the weight
    if node.op_type == "Gemm" and attr(node, "beta", 1.0) == 0:
        return None  # the bias is ignored: nowhere to write the shift
    weight = node.input[1]
    kept_out = kept_outputs(analysis, node.name, weight, plan, original)
    if len(kept_out) != initializer(pruned, weight).dims[spec.out_axis(node)]:
        return None
    bias, following = bias_target(node, pruned, readers)
    if bias is None or bias == UNUSABLE_BIAS:
        return None
    tensor = readers[node.output[0]][0].output[0] if following else node.output[0]
    if tensor not in original_tensors:
        return None
    axis = 1 if node.op_type in ("Conv", "ConvTranspose") else -1
    return _Layer(node, weight, kept_out, bias, following, tensor, axis, level)


def _shared_weights(model) -> set[str]:
    """Weights whose values another weight-bearing layer also holds (unshared copies of one tensor)."""
    initializers = {init.name: init for init in model.graph.initializer}
    holders: dict[str, list] = {}
    for node in model.graph.node:
        if node.op_type in WEIGHT_OPS and len(node.input) > 1 and node.input[1] in initializers:
            init = initializers[node.input[1]]
            key = hashlib.sha1(numpy_helper.to_array(init).tobytes()).hexdigest() + str(list(init.dims))
            holders.setdefault(key, []).append(init.name)
    return {name for names in holders.values() if len(names) > 1 for name in names}


def _chunks_by_level(layers: list[_Layer], max_passes: int) -> list[list[_Layer]]:
    """One chunk per depth level; consecutive levels merged when there are more than `max_passes`."""
    levels = sorted({layer.level for layer in layers})
    per_chunk = math.ceil(len(levels) / max(1, min(max_passes, len(levels))))
    chunk_of = {level: index // per_chunk for index, level in enumerate(levels)}
    chunks: dict[int, list] = {}
    for layer in layers:
        chunks.setdefault(chunk_of[layer.level], []).append(layer)
    return [chunks[index] for index in sorted(chunks)]


# -- measuring -------------------------------------------------------------------------


def _rows(values: np.ndarray, axis: int) -> np.ndarray:
    """[rows, channels] view of a layer output."""
    return np.moveaxis(values, axis, -1).reshape(-1, values.shape[axis])


def _measure_original(original, layers, calibration, batch_size, rng, session) -> None:
    """One pass of the original: each layer's channel statistics and its held-out rows."""
    capture = ActivationCapture(original, sorted({layer.tensor for layer in layers}), session=session)
    n_batches = max(1, len(list(calibration.batch_ranges(batch_size))))
    for layer in layers:
        layer.original = ChannelStats(axis=layer.axis)
    for batch in calibration.batches(batch_size):
        values = capture.run(batch)
        for layer in layers:
            output = values[layer.tensor]
            layer.original.update(output)
            rows = _rows(output, layer.axis)
            count = min(math.ceil(HOLDOUT_ROWS / n_batches), max(1, rows.shape[0] // HOLDOUT_EVERY))
            picked = np.sort(rng.choice(rows.shape[0], size=min(count, rows.shape[0]), replace=False))
            layer.positions.append(picked)
            layer.held_original.append(rows[picked][:, layer.kept_out].astype(np.float64))


def _measure_pruned(pruned, chunk, calibration, batch_size, session) -> dict:
    """Per layer of `chunk`: its channel statistics in the pruned model and its held-out rows."""
    capture = ActivationCapture(cut_after(pruned, [layer.tensor for layer in chunk]),
                                sorted({layer.tensor for layer in chunk}), session=session)
    stats = {id(layer): ChannelStats(axis=layer.axis) for layer in chunk}
    held = {id(layer): [] for layer in chunk}
    for batch_index, batch in enumerate(calibration.batches(batch_size)):
        values = capture.run(batch)
        for layer in chunk:
            output = values[layer.tensor]
            stats[id(layer)].update(output)
            held[id(layer)].append(_rows(output, layer.axis)[layer.positions[batch_index]].astype(np.float64))
    return {key: (stats[key], np.concatenate(held[key])) for key in stats}


# -- choosing and writing ------------------------------------------------------------------


def _affine(method, mean_p, var_p, mean_o, var_o) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, shift) taking the pruned statistics to the original's."""
    if method == "none":
        return np.ones_like(mean_p), np.zeros_like(mean_p)
    scale = np.ones_like(mean_p)
    if method == "mean+std":
        sigma_p, sigma_o = np.sqrt(var_p), np.sqrt(var_o)
        usable = sigma_p > np.maximum(1e-3 * sigma_o, 1e-8)  # a constant channel only gets its mean back
        scale[usable] = np.clip(sigma_o[usable] / sigma_p[usable], *SCALE_RANGE)
    return scale, mean_o - scale * mean_p


def _without(stats: ChannelStats, held: np.ndarray, channels=slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the rows `stats` saw, leaving out the held-out ones."""
    count = stats.count - held.shape[0]
    total = stats.mean[channels] * stats.count - held.sum(axis=0)
    squares = (stats.variance[channels] + np.square(stats.mean[channels])) * stats.count - np.square(held).sum(axis=0)
    mean = total / count
    return mean, np.maximum(squares / count - np.square(mean), 0.0)


def _correct(pruned, layer: _Layer, stats: ChannelStats, held_pruned: np.ndarray) -> LayerCorrection:
    held_original = np.concatenate(layer.held_original)
    energy = max(float(np.square(held_original).sum()), 1e-30)

    def error(scale, shift):
        return float(np.square(held_pruned * scale + shift - held_original).sum()) / energy

    result = LayerCorrection(layer.node.name, layer.node.op_type, "none", len(layer.kept_out), 0.0, 0.0)
    if held_original.shape[0] == 0 or stats.count <= held_original.shape[0]:
        return result
    train_p = _without(stats, held_pruned)
    train_o = _without(layer.original, held_original, layer.kept_out)
    errors = {method: error(*_affine(method, *train_p, *train_o)) for method in METHODS}
    best = min(METHODS, key=lambda method: errors[method])
    if errors[best] > errors["none"] * (1 - MIN_GAIN) or errors["none"] - errors[best] < 1e-9:
        best = "none"
    result.method, result.error_before, result.error_after = best, errors["none"], errors[best]
    if best != "none":  # chosen on held-out rows, then computed from every row
        original_mean, original_var = layer.original.mean[layer.kept_out], layer.original.variance[layer.kept_out]
        _write(pruned, layer, *_affine(best, stats.mean, stats.variance, original_mean, original_var))
    return result


def _write(pruned, layer: _Layer, scale: np.ndarray, shift: np.ndarray) -> None:
    """y' = scale * y + shift per output channel: the weight's channels scaled, the bias moved."""
    node = layer.node
    spec = WEIGHT_OPS[node.op_type]
    weight_init = initializer(pruned, layer.weight)
    weight = numpy_helper.to_array(weight_init)
    out_axis = spec.out_axis(node)
    shape = [1] * weight.ndim
    shape[out_axis] = -1
    weight_init.CopyFrom(numpy_helper.from_array(
        (weight * scale.reshape(shape)).astype(weight.dtype), layer.weight))
    # The layer adds beta * C (Gemm) or its bias; the new bias must add scale * that + shift.
    beta = attr(node, "beta", 1.0) if node.op_type == "Gemm" else 1.0
    names = {init.name for init in pruned.graph.initializer}
    if layer.bias_tensor in names:
        init = initializer(pruned, layer.bias_tensor)
        bias = numpy_helper.to_array(init)
        new = bias.astype(np.float64).reshape(-1) * scale + shift / beta
        init.CopyFrom(numpy_helper.from_array(new.reshape(bias.shape).astype(bias.dtype), init.name))
        return
    pruned.graph.initializer.append(numpy_helper.from_array((shift / beta).astype(weight.dtype), layer.bias_tensor))
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = layer.bias_tensor
