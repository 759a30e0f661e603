"""Re-fit the layers that lost input channels, by ridge least squares on calibration data.

For every consumer of a pruned group (a Conv, Gemm or MatMul whose input
channels were sliced) we want its output on the kept channels to match the
ORIGINAL model's output of that layer (He et al. 2017; ThiNet 2017). A recurrent
layer's target is its input projection x @ W, computed from the original's input. The
targets come from one pass of the original model at sampled positions; the
features come from the pruned model itself, so each fit also absorbs what
pruning changed upstream. Consumers are re-fitted by depth level (1 + the
deepest consumer upstream), one pass per level over the pruned model cut after
that level, with every earlier level already re-fitted. A level never holds a
layer downstream of another one of it: that layer's fit would compensate an
upstream error the upstream fit then removes (on MobileNetV2, merging levels
into 12 passes took top-1 from 79% to 8% at 2% of the channels removed). Copies of one
weight (an unrolled recurrent cell) are fitted together, as one layer (refit_layers.py).

Only sufficient statistics are kept: per layer the Gram matrix of its features
and their product with the targets (a training and a held-out part), so memory
does not grow with the calibration set. Each layer then takes whichever
candidate has the lowest error on held-out calibration samples: the plain slice,
the slice plus the removed channels' mean contribution folded into the bias, the
ridge fit, or fits shrunk toward the sliced weights; a chosen fit is then solved
again on all samples. The fit therefore never makes a layer's held-out error
worse than slicing. A few hundred calibration images over-fit easily (rows of one
image are alike): rows are sampled generously (ROWS_PER_FEATURE) and held out by
sample, and the shrinkage levels let the held-out samples decide how far to trust
the data over the original weights. A layer whose residual sum a LayerNorm reads is fitted with
each row weighted by 1 / that LayerNorm's sigma for the row (LAYER_NORM_ROWS): the error that
reaches the next layer.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_slim.apply.layers import initializer, mark_residuals, out_channels
from onnx_slim.apply.least_squares import SHRINK_NAMES, refit_on_all, shrunk_fits
from onnx_slim.apply.refit_layers import Consumer, chunks_by_depth, find_consumers
from onnx_slim.channels.groups import ChannelAnalysis
from onnx_slim.data.calibration import CalibrationSet
from onnx_slim.data.staged import DEFAULT_BUDGET_BYTES, StagedCapture
from onnx_slim.data.tokens import TokenMask, padding_to_leave_out
from onnx_slim.ir.graph import readers_of
from onnx_slim.ir.progress import counted
from onnx_slim.ir.runtime import SessionSpec
from onnx_slim.ops.conv_patches import ConvGeometry, as_nchw, conv_output_at, sample_positions
from onnx_slim.ops.layer_norm import inverse_sigma, layer_norm_scale
from onnx_slim.ops.specs import CONV_PATCHES, RECURRENT_OPS, REFIT_SPECS

log = logging.getLogger(__name__)

# Least-squares systems larger than this many features fall back to bias correction.
MAX_FEATURES = 8192
HOLDOUT_EVERY = 5  # every 5th calibration sample is held out to choose between candidates
# Rows sampled per least-squares unknown. 4 over-fitted the calibration set: on MobileNetV2
# (expansion channels -30%) calibration agreement 80% but test top-1 27%; 32 gives 58%.
ROWS_PER_FEATURE = 32
# Original-model tensors captured in one run, per calibration batch: a few passes' worth.
TARGET_CAPTURE_BYTES = 64 << 20
# Fit a layer that feeds a residual Add to the original sum minus the pruned stream. bench_real, thinet +
# re-fit: MobileNetV2 at 60% MACs 27.3% -> 35.5% top-1 (interior), all-mpnet-base-v2 at 70% embedding
# cosine 0.892 -> 0.919; EfficientNet-Lite0 (sensitivity) 61.9% -> 60.4%, within a few photos.
RESIDUAL_TARGETS = True
# A residual sum that a LayerNorm reads reaches the next layer divided by its token's sigma: rows are
# weighted by 1 / sigma of the original sum, so the fit minimizes what the LayerNorm passes on.
# all-mpnet-base-v2 at 70% MACs (obs, uniform): embedding cosine 0.928 -> 0.939.
LAYER_NORM_ROWS = True


@dataclass
class LayerFit:
    """What happened to one consumer layer."""

    node: str
    op_type: str
    method: str  # "fit", "bias" or "slice"
    features: int
    samples: int
    # Held-out relative error of each candidate: 0 when nothing was fitted, None when the method
    # came from an earlier re-fit (`chosen_before`).
    error_slice: float | None
    error_bias: float | None = None
    error_fit: float | None = None  # the best of the fits
    shrink: float | None = None  # with "fit": the shrinkage toward the slice chosen (None: plain ridge)
    residual: bool = False  # fitted so that its residual sum, not its own output, matches the original
    copies: int = 1  # layers sharing this fit (copies of one weight, e.g. an unrolled recurrent cell)
    rows_weighted: bool = False  # rows weighted by 1 / sigma of the LayerNorm its residual sum feeds
    chosen_before: bool = False  # method and shrinkage as an earlier re-fit chose them (`reconstruct(chosen=)`)


@dataclass
class ReconstructReport:
    layers: list = field(default_factory=list)
    passes: int = 0
    calibration: str = ""
    padding: str | None = None  # when token rows at padding were left out (data.tokens)
    seconds: float = 0.0

    def summary(self) -> dict:
        methods = dict(Counter(layer.method for layer in self.layers))
        return {"layers": len(self.layers), "methods": methods, "passes": self.passes}

    def to_dict(self) -> dict:
        return {**self.summary(), "calibration": self.calibration, "padding": self.padding, "seconds": self.seconds,
                "per_layer": [asdict(layer) for layer in self.layers]}


def reconstruct(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    analysis: ChannelAnalysis,
    plan: dict,
    calibration: CalibrationSet,
    *,
    batch_size: int = 8,
    ridge: float = 1e-3,
    max_samples: int = 16384,
    seed: int = 0,
    session: SessionSpec = SessionSpec(),
    progress: Callable[[str], None] | None = None,
    residual_targets: bool | None = None,
    chosen: ReconstructReport | None = None,
    on_all_rows: bool = True,
) -> ReconstructReport:
    """Re-fit, in `pruned` (modified in place), every consumer whose inputs `plan` sliced.

    `original` is the normalized model before surgery (same names as `pruned`). With
    `residual_targets` (default RESIDUAL_TARGETS), a layer whose output is added to a residual
    stream is fitted so that the sum matches the original's sum: the stream's upstream drift is
    compensated too. With `chosen`, the report of an earlier re-fit of the same plan, each layer
    takes the method and shrinkage chosen there on held-out samples and is solved on all its rows,
    without comparing candidates again (`allocate="auto"` re-fits the kept model so, on more data).
    Without `on_all_rows`, a fitted layer keeps its fit on the training rows: enough for a
    candidate that is compared, then fitted again if kept (one solve per layer less).
    """
    started = time.perf_counter()
    say = progress or (lambda message: None)
    report = ReconstructReport(calibration=calibration.description)
    consumers = find_consumers(original, pruned, analysis, plan)
    if not consumers:
        return report
    if calibration.is_synthetic:
        say("note: calibration data is synthetic: the re-fit matches the layers on images unlike the real ones")
    elif calibration.is_random:
        say("note: calibration data is random: the re-fit only matches structure, not real statistics")
    tokens = padding_to_leave_out(original, analysis.context.shapes, calibration.token_mask())
    if tokens is not None:
        report.padding = tokens.description
        say(f"re-fit: rows at padding left out: {report.padding}")
    rng = np.random.default_rng(seed)
    chunks = chunks_by_depth(pruned, consumers)
    if RESIDUAL_TARGETS if residual_targets is None else residual_targets:
        mark_residuals(pruned, chunks)
    normalized = _normalized_sums(original, consumers) if LAYER_NORM_ROWS else set()
    report.passes = len(chunks)
    original_weights = {c.weight: numpy_helper.to_array(initializer(original, c.weight)) for c in consumers}
    chosen_by_node = {layer.node: layer for layer in chosen.layers} if chosen is not None else {}
    # Both models run part by part: the original's tensors are captured a few passes ahead, as
    # many as fit TARGET_CAPTURE_BYTES a batch (all layers' at once held a ResNet-50's whole
    # activations; one pass at a time made a session per pass of an unrolled LSTM). The two
    # captures share the frontier budget one capture had.
    budget = DEFAULT_BUDGET_BYTES // 2
    targets_from = StagedCapture(calibration, batch_size, session=session, budget_bytes=budget)
    staged = StagedCapture(calibration, batch_size, session=session, budget_bytes=budget)
    collected = 0  # chunks whose targets are in
    for index, chunk in enumerate(counted(progress, "re-fit layers", chunks, size=len), 1):
        say(f"re-fit pass {index}/{len(chunks)}: {len(chunk)} layers")
        if collected < index:
            ahead = _capture_group(chunks, index - 1, analysis.context.shapes, batch_size)
            _collect_targets(original, [c for group in ahead for c in group], targets_from, calibration, tokens,
                             max_samples, rng, normalized)
            collected = index - 1 + len(ahead)
        _accumulate_features(pruned, chunk, staged)
        for consumer in chunk:
            if consumer.leads:
                report.layers.append(_refit(pruned, consumer, original_weights[consumer.weight], ridge,
                                            chosen_by_node.get(consumer.node.name), on_all_rows))
                report.layers[-1].rows_weighted = consumer.node.name in normalized
                for member in consumer.members:
                    staged.rewritten(pruned, [name for name in (member.weight, member.bias_tensor) if name])
                consumer.reset_statistics()
    report.seconds = round(time.perf_counter() - started, 2)
    return report


# -- statistics ------------------------------------------------------------------------


def _capture_group(chunks: list, start: int, shapes: dict, batch_size: int) -> list:
    """chunks[start:] up to TARGET_CAPTURE_BYTES of captured tensors a batch (at least one chunk)."""
    group, held = [], 0
    for chunk in chunks[start:]:
        size = sum(_bytes_per_batch(shapes.get(name), batch_size) for name in _original_tensors(chunk))
        if group and held + size > TARGET_CAPTURE_BYTES:
            break
        group.append(chunk)
        held += size
    return group


def _original_tensors(consumers) -> set[str]:
    """What the targets of `consumers` are read from: each layer's input, output and residual sum."""
    return ({c.node.output[0] for c in consumers if c.node.op_type not in RECURRENT_OPS}
            | {c.node.input[0] for c in consumers} | {c.residual[0] for c in consumers if c.residual})


def _bytes_per_batch(shape, batch_size: int) -> int:
    """float32 bytes of a tensor of analysis `shape` (batch first) at `batch_size`; 0 if unknown."""
    if not shape or not all(isinstance(dim, int) for dim in shape):
        return 0
    return 4 * batch_size * math.prod(shape[1:])


def _normalized_sums(original, consumers) -> set[str]:
    """Names of the consumers whose residual sum a LayerNorm alone reads (`LAYER_NORM_ROWS`)."""
    readers = readers_of(original)
    return {c.node.name for c in consumers if c.residual
            and layer_norm_scale(original, c.node, out_channels(c.node, initializer(original, c.weight).dims),
                                 readers) is not None}


def _collect_targets(original, consumers, staged: StagedCapture, calibration, tokens: TokenMask | None,
                     max_samples, rng, normalized: set = frozenset()) -> None:
    """From the original model: sampled outputs of each layer (or of its residual sum), mean of its inputs.
    Rows of token-shaped tensors are sampled at real tokens only, given `tokens`. For the layers
    in `normalized`, each row's weight: 1 / sigma of the original sum (the LayerNorm's scale)."""
    names = sorted(_original_tensors(consumers) | ({tokens.input_name} if tokens else set()))
    batches = list(calibration.batch_ranges(staged.batch_size))
    samples = len(calibration)
    sums = {c.node.name: None for c in consumers}
    counts = {c.node.name: 0 for c in consumers}
    projections = {c.node.name: REFIT_SPECS[c.node.op_type].as_matrix(c.node, numpy_helper.to_array(
        initializer(original, c.weight))) for c in consumers if c.node.op_type in RECURRENT_OPS}
    for (start, _), values in zip(batches, staged.run(original, names)):
        for consumer in consumers:
            x = values[consumer.node.input[0]]
            if consumer.node.name in projections:  # what the gates read of the input, [..., outputs]
                y = (x.astype(np.float64) @ projections[consumer.node.name]).astype(np.float32)
            else:
                y = values[consumer.node.output[0]]
            if consumer.residual and values[consumer.residual[0]].shape != y.shape:
                consumer.residual = None  # the other addend broadcasts: fit the layer's own output
            if consumer.residual:
                y = values[consumer.residual[0]]
            _accumulate_input_mean(consumer, x, sums, counts)
            # A family's rows come from all its members: each samples its share.
            budget = min(max_samples, max(1024, ROWS_PER_FEATURE * consumer.features)) // len(consumer.members)
            real_rows = tokens.real_rows(values, y.shape) if tokens else None
            positions, targets, sample_of_row = _sample_targets(consumer, y, len(batches), samples, budget, rng,
                                                                real_rows)
            consumer.positions.append(positions)
            consumer.held.append(_held_out(start + sample_of_row, samples))
            consumer.targets.append(np.ascontiguousarray(targets[:, consumer.kept_out], dtype=np.float32))
            if consumer.node.name in normalized and consumer.residual:
                consumer.row_weights.append(inverse_sigma(targets))
    for consumer in consumers:
        consumer.input_mean = sums[consumer.node.name] / max(counts[consumer.node.name], 1)


def _accumulate_input_mean(consumer, x, sums, counts) -> None:
    axis = REFIT_SPECS[consumer.node.op_type].data_channel_axis(consumer.node, x.ndim)
    others = tuple(a for a in range(x.ndim) if a != axis)
    total = x.sum(axis=others, dtype=np.float64)  # accumulated in float64 without a float64 copy of x
    sums[consumer.node.name] = total if sums[consumer.node.name] is None else sums[consumer.node.name] + total
    counts[consumer.node.name] += x.size // x.shape[axis]


def _sample_targets(consumer, y, n_batches, n_samples, budget, rng, real_rows=None):
    """About `budget` rows over the whole calibration set, spread evenly over images, with the
    sample (index in the batch) each row comes from; only among `real_rows` when given."""
    if consumer.kind == CONV_PATCHES:
        y = as_nchw(y)
        images, _, height, width = y.shape
        per_image = max(1, math.ceil(budget / max(n_samples, 1)))
        positions = sample_positions(rng, images, height, width, min(per_image, height * width))
        return positions, conv_output_at(y, positions), positions[:, 0]
    rows = y.reshape(-1, y.shape[-1])  # MatMul reads [..., K]; Gemm's [N, K] is unchanged
    per_batch = max(1, math.ceil(budget / max(n_batches, 1)))
    candidates = np.arange(rows.shape[0]) if real_rows is None else real_rows
    picked = np.sort(rng.choice(candidates, size=min(per_batch, len(candidates)), replace=False))
    # Rows follow the leading axis: the batch, or time for a time-major tensor (then whole
    # time steps are held out, which is as good a split).
    rows_per_leading = max(rows.shape[0] // max(y.shape[0], 1), 1) if y.ndim > 1 else 1
    return picked, rows[picked], picked // rows_per_leading


def _held_out(sample_of_row: np.ndarray, n_samples: int) -> np.ndarray:
    """Which rows are held out: those of every HOLDOUT_EVERY-th sample, or every
    HOLDOUT_EVERY-th row when the calibration set is too small to spare whole samples."""
    if n_samples >= 2 * HOLDOUT_EVERY:
        return sample_of_row % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    return np.arange(len(sample_of_row)) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1


def _rows_at(consumer, y, positions) -> np.ndarray:
    """[S, channels] of an output-shaped tensor at the sampled positions (rows)."""
    if consumer.kind == CONV_PATCHES:
        return conv_output_at(as_nchw(y), positions)
    return y.reshape(-1, y.shape[-1])[positions]


def _design_rows(consumer, x, positions) -> np.ndarray:
    """Features [S, d] of the pruned layer's input at the sampled positions."""
    if consumer.kind == CONV_PATCHES:
        x = as_nchw(x)
        return ConvGeometry.of(consumer.node, consumer.kernel, x.shape[2:]).patches(x, positions)
    rows = x.reshape(-1, x.shape[-1])
    return rows[positions]


def _accumulate_features(pruned, chunk, staged: StagedCapture) -> None:
    wanted = sorted({c.node.input[0] for c in chunk} | {c.residual[1] for c in chunk if c.residual})
    pending = {id(c): [] for c in chunk}
    for batch_index, values in enumerate(staged.run(pruned, wanted)):
        for consumer in chunk:
            positions, targets = consumer.positions[batch_index], consumer.targets[batch_index]
            features = _design_rows(consumer, values[consumer.node.input[0]], positions)
            if consumer.residual:  # what the layer must add to the pruned stream to give the original sum
                # (the pruned addend already holds just the kept channels, in the targets' order)
                targets = targets - _rows_at(consumer, values[consumer.residual[1]], positions)
            weights = consumer.row_weights[batch_index] if consumer.row_weights else None
            pending[id(consumer)].append((features, targets, consumer.held[batch_index], weights))
            # Gram updates cost the same for 10 rows as for 1000: update in blocks.
            if sum(len(part[0]) for part in pending[id(consumer)]) >= max(2048, consumer.features):
                _flush(consumer, pending[id(consumer)])
    for consumer in chunk:
        _flush(consumer, pending[id(consumer)])


def _flush(consumer, pending: list) -> None:
    if not pending:
        return
    design, targets, held, weights = (list(part) for part in zip(*pending))
    pending.clear()
    consumer.stats.add(np.concatenate(design), np.concatenate(targets), np.concatenate(held),
                       intercept=consumer.bias_tensor is not None,
                       row_weights=None if weights[0] is None else np.concatenate(weights))


# -- choosing and writing the new weights ------------------------------------------------


def _refit(pruned, consumer: Consumer, original_weight: np.ndarray, ridge: float,
           chosen: LayerFit | None = None, on_all_rows: bool = True) -> LayerFit:
    """Choose among the candidates on the held-out rows and write the best, a fit solved again on
    all rows with `on_all_rows` (or write what `chosen`, an earlier re-fit's choice for this
    layer, says, solved on all rows)."""
    node = consumer.node
    weight = numpy_helper.to_array(initializer(pruned, consumer.weight))
    current = REFIT_SPECS[node.op_type].as_matrix(node, weight)  # [d, out]
    features = current.shape[0]
    bias_now = _current_bias(pruned, consumer, current.shape[1])
    train, holdout = consumer.stats.train, consumer.stats.holdout
    layer = LayerFit(node.name, node.op_type, "slice", features, consumer.stats.rows_seen, 0.0,
                     residual=consumer.residual is not None, copies=len(consumer.members))
    if train is None or holdout is None or holdout.energy == 0:
        return layer

    def stacked(matrix, bias):
        return matrix if bias is None else np.vstack([matrix, bias[None, :]])

    candidates = {"slice": stacked(current, bias_now)}
    if consumer.bias_tensor is not None and consumer.removed_in:
        means = np.mean([member.input_mean for member in consumer.members], axis=0)
        correction = _mean_contribution(node, original_weight, consumer, means)
        candidates["bias"] = stacked(current, bias_now + correction[consumer.kept_out])
    if chosen is not None and (chosen.method == "fit" or chosen.method in candidates):
        best, layer.shrink = chosen.method, chosen.shrink
        layer.error_slice, layer.chosen_before = None, True
    else:
        if features <= MAX_FEATURES:
            candidates.update(shrunk_fits(train, candidates["slice"], ridge, node.name))
        errors = {name: holdout.relative_error(matrix) for name, matrix in candidates.items()}
        best = min(errors, key=lambda name: (errors[name], name != "slice"))
        layer.error_slice = errors["slice"]
        layer.error_bias = errors.get("bias")
        fits = [name for name in errors if name.startswith("fit")]
        layer.error_fit = min(errors[name] for name in fits) if fits else None
        layer.shrink = SHRINK_NAMES.get(best)
    layer.method = "fit" if best.startswith("fit") else best
    if best.startswith("fit") and (on_all_rows or layer.chosen_before):  # chosen on held-out rows; now on all
        refitted = refit_on_all(train, holdout, candidates["slice"], ridge, layer.shrink)
        if refitted is None and best not in candidates:  # chosen before, and the solve failed
            layer.method, best = "slice", "slice"
        elif refitted is not None:
            candidates[best] = refitted
    if best != "slice":
        for member in consumer.members:
            _write(pruned, member, candidates[best], weight.shape)
    return layer


def _current_bias(pruned, consumer, outputs) -> np.ndarray | None:
    if consumer.bias_tensor is None:
        return None
    if consumer.bias_is_following_add:
        return np.zeros(outputs)  # the fit's intercept is a change to the Add's constant
    names = {init.name for init in pruned.graph.initializer}
    if consumer.bias_tensor not in names:
        return np.zeros(outputs)
    return numpy_helper.to_array(initializer(pruned, consumer.bias_tensor)).astype(np.float64).reshape(-1)


def _mean_contribution(node, original_weight, consumer, means: np.ndarray) -> np.ndarray:
    """What the removed input channels (of original input channel `means`) added on average to
    each output (all outputs)."""
    matrix = REFIT_SPECS[node.op_type].as_matrix(node, original_weight)  # [d_full, out_full]
    if consumer.kind == CONV_PATCHES:
        taps = math.prod(original_weight.shape[2:])
        per_channel = matrix.reshape(original_weight.shape[1], taps, -1).sum(axis=1)  # [C_in, out]
        channel_means = means
    else:
        per_channel, channel_means = matrix, means
    removed = consumer.removed_in
    return channel_means[removed] @ per_channel[removed]


def _write(pruned, consumer: Consumer, matrix: np.ndarray, weight_shape) -> None:
    node = consumer.node
    weights_part = matrix[:-1] if consumer.bias_tensor is not None else matrix
    weight_init = initializer(pruned, consumer.weight)
    dtype = numpy_helper.to_array(weight_init).dtype
    new_weight = REFIT_SPECS[node.op_type].from_matrix(node, weights_part, weight_shape).astype(dtype)
    weight_init.CopyFrom(numpy_helper.from_array(new_weight, consumer.weight))
    if consumer.bias_tensor is None:
        return
    intercept = matrix[-1]
    names = {init.name for init in pruned.graph.initializer}
    if consumer.bias_is_following_add:
        init = initializer(pruned, consumer.bias_tensor)
        base = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array((base + intercept.reshape(base.shape)).astype(base.dtype), init.name))
    elif consumer.bias_tensor in names:
        init = initializer(pruned, consumer.bias_tensor)
        shape = numpy_helper.to_array(init).shape
        init.CopyFrom(numpy_helper.from_array(intercept.reshape(shape).astype(dtype), init.name))
    else:
        pruned.graph.initializer.append(numpy_helper.from_array(intercept.astype(dtype), consumer.bias_tensor))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = consumer.bias_tensor
