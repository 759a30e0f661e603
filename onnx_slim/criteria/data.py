"""Data-driven channel criteria: activation, thinet, lasso, sensitivity.

Importing this module registers them in `criteria.registry.CRITERIA`. Each reads the
calibration set from ``ctx.calibration`` (``ctx.batch_size`` sets the batch size
of the capture runs) and returns, per group, one score per channel, higher = keep. Scores are
comparable across groups, which `--global` ranking relies on; each criterion's
docstring says how.

`thinet` and `lasso` share one statistic: for every (group, consumer) pair, the
Gram matrix ``G = Z^T Z`` of the sampled per-channel contributions ``Z[s, c]``
to the consumer's output, accumulated batch by batch (memory is channels^2 per
pair, whatever the number of samples). Both selections only need G:
``||sum_{c in R} z_c||^2 = 1_R^T G 1_R`` and ``Z^T y = G 1`` for y = Z 1.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_slim.channels.groups import ChannelGroup, Member
from onnx_slim.criteria.registry import ScoringContext, criterion
from onnx_slim.criteria.weights import l1_norm
from onnx_slim.data.activations import ActivationCapture
from onnx_slim.data.masking import MaskedModel, masked_agreement
from onnx_slim.data.statistics import ChannelStats
from onnx_slim.data.tokens import padding_to_leave_out
from onnx_slim.errors import UsageError
from onnx_slim.ir.graph import attr, readers_of
from onnx_slim.ops.conv_patches import ConvGeometry, as_nchw, conv_input_patches, sample_positions
from onnx_slim.ops.layer_norm import layer_norm_scale, weighted_note
from onnx_slim.ops.specs import RECURRENT_OPS, WEIGHT_OPS

POSITIONS_PER_IMAGE = 10  # ThiNet samples ~10 output positions per image
SENSITIVITY_FRACTIONS = tuple(round(0.1 * step, 1) for step in range(1, 10))
# The path: 24 penalties from the largest useful one down to 1% of it. Entries between
# two penalties are placed by their residual correlation, so a coarse path ranks as well
# as a fine one (checked against an 80-point path to 1e-4 with tight tolerance).
LASSO_PATH_POINTS = 24
LASSO_PATH_DEPTH = 1e-2


# --------------------------------------------------------------------------- shared helpers


def require_calibration(ctx: ScoringContext, name: str):
    calibration = ctx.calibration
    if calibration is None:
        raise UsageError(
            f"criterion {name} needs calibration data: pass --calib PATH (or --calib random for a structure-only run)"
        )
    return calibration


def _nodes(ctx: ScoringContext) -> dict[str, onnx.NodeProto]:
    return {node.name: node for node in ctx.model.graph.node}


def _channel_values(per_index: np.ndarray, member: Member, channels: int) -> np.ndarray:
    """Per-index values of a member's span averaged into one value per group channel."""
    span = per_index[member.offset: member.offset + channels * member.repeat]
    return span.reshape(channels, member.repeat).mean(axis=1)


def _channel_columns(z: np.ndarray, member: Member, channels: int) -> np.ndarray:
    """Columns [S, L] of contributions summed into [S, channels]: a channel owns `repeat` columns."""
    span = z[:, member.offset: member.offset + channels * member.repeat]
    return span.reshape(z.shape[0], channels, member.repeat).sum(axis=2)


def ordered_scores(order: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Scores for channels listed weakest first: made non-decreasing along `order`, ties
    broken by the order itself (a tiny step), then put back in channel order."""
    values = np.maximum.accumulate(np.asarray(values, dtype=np.float64))
    step = 1e-9 * (float(np.abs(values).max()) or 1.0) / len(values)
    ranked = values + step * np.arange(len(values))
    scores = np.empty(len(order), dtype=np.float64)
    scores[order] = ranked
    return scores


# --------------------------------------------------------------------------- activation


@criterion("activation", needs_calibration=True)
def mean_activation(ctx: ScoringContext, groups: list[ChannelGroup]) -> dict[int, np.ndarray]:
    """Mean |activation| of each channel as its consumers see it (their data input).

    Each consumer input's per-index mean |x| is divided by that input's mean over
    all its indices, so a score of 1 is an average channel of that layer; a
    group's score is the mean over its consumers. APoZ (fraction of exact zeros)
    is computed alongside and left in ``ctx.apoz`` (group id -> array).
    """
    calibration = require_calibration(ctx, "activation")
    consumers = _consumer_inputs(ctx, groups)
    stats = _input_stats(ctx, calibration, consumers)
    scores, apoz = {}, {}
    for group in groups:
        normalized, zeros = [], []
        for member in group.consumers:
            tensor = consumers[member.use.node]
            mean_abs = stats[tensor].mean_abs
            normalized.append(_channel_values(mean_abs / (mean_abs.mean() or 1.0), member, group.channels))
            zeros.append(_channel_values(stats[tensor].apoz, member, group.channels))
        if normalized:
            scores[group.id] = np.mean(normalized, axis=0)
            apoz[group.id] = np.mean(zeros, axis=0)
    _fall_back_to_l1(ctx, "activation", groups, scores)
    ctx.apoz = apoz
    return scores


def _consumer_inputs(ctx: ScoringContext, groups: list[ChannelGroup]) -> dict[str, str]:
    """Consumer node -> its data input tensor."""
    nodes = _nodes(ctx)
    return {member.use.node: nodes[member.use.node].input[0] for group in groups for member in group.consumers}


def _input_stats(ctx: ScoringContext, calibration, consumers: dict[str, str]) -> dict[str, ChannelStats]:
    tensors = sorted(set(consumers.values()))
    tracked = ctx.analysis.context.tracked
    stats = {tensor: ChannelStats(axis=tracked[tensor].axis) for tensor in tensors}
    if not tensors:
        return stats
    capture = ActivationCapture(ctx.model, tensors, session=ctx.session)
    for results in capture.iter(calibration.batch_stream(ctx.batch_size), ctx.progress, "scoring batches"):
        for tensor in tensors:
            stats[tensor].update(results[tensor])
    return stats


def _fall_back_to_l1(ctx: ScoringContext, name: str, groups: list[ChannelGroup], scores: dict) -> None:
    missing = [group for group in groups if group.id not in scores]
    if missing:
        ctx.notes.append(f"{name}: {len(missing)} group(s) without a usable consumer scored by l1")
        scores.update(l1_norm(ctx, missing))


# --------------------------------------------------------------------------- sampled contributions


@dataclass
class ContributionGrams:
    """Per (group id, consumer node): Gram of the group's sampled contributions and the
    energy of the sampled consumer outputs (all input channels, bias left out)."""

    grams: dict = field(default_factory=dict)  # (group id, node) -> [C, C] float64
    energy: dict = field(default_factory=lambda: defaultdict(float))  # (group id, node) -> ||y||^2

    def combined(self, group: ChannelGroup) -> np.ndarray | None:
        """The mean over the group's consumers of G / ||y||^2: quadratic forms in it are
        relative output errors, averaged over consumers. None without a usable consumer."""
        parts = [
            gram / self.energy[key] for key, gram in self.grams.items()
            if key[0] == group.id and self.energy[key] > 0
        ]
        return np.mean(parts, axis=0) if parts else None


def contribution_grams(ctx: ScoringContext, calibration, groups: list[ChannelGroup]) -> ContributionGrams:
    """Sample each consumer's output on the calibration set (ThiNet) and accumulate the Grams."""
    nodes = _nodes(ctx)
    initializers = {init.name: init for init in ctx.model.graph.initializer}
    members_at: dict[str, list[tuple[ChannelGroup, Member]]] = defaultdict(list)
    for group in groups:
        for member in group.consumers:
            members_at[member.use.node].append((group, member))
    samplers, readers, weighted = {}, readers_of(ctx.model), 0
    for node_name, members in members_at.items():
        node = nodes[node_name]
        weight = numpy_helper.to_array(initializers[node.input[1]])
        scale = layer_norm_scale(ctx.model, node, weight.shape[1 - members[0][1].use.axis], readers) \
            if weight.ndim == 2 else None
        weighted += scale is not None
        sampler = _sampler_for(node, weight, members[0][1].use.axis, scale)
        if sampler is not None:
            samplers[node_name] = sampler
    if weighted:
        ctx.notes.append(weighted_note(weighted))
    result = ContributionGrams()
    if not samplers:
        return result
    # Text: sample real tokens, not padding.
    tokens = padding_to_leave_out(ctx.model, ctx.analysis.context.shapes, calibration.token_mask())
    names = {nodes[name].input[0] for name in samplers} | ({tokens.input_name} if tokens else set())
    capture = ActivationCapture(ctx.model, sorted(names), session=ctx.session)
    rngs = {name: np.random.default_rng([ctx.seed, index]) for index, name in enumerate(sorted(samplers))}
    for results in capture.iter(calibration.batch_stream(ctx.batch_size), ctx.progress, "scoring batches"):
        real = tokens.real(results) if tokens else None
        for node_name, sampler in samplers.items():
            z = sampler(results[nodes[node_name].input[0]], rngs[node_name], real)
            _accumulate(result, node_name, members_at[node_name], z)
    return result


def _accumulate(result: ContributionGrams, node_name: str, members, z: np.ndarray) -> None:
    outputs = z.sum(axis=1)
    by_group: dict[int, np.ndarray] = {}
    for group, member in members:
        # A channel can reach one consumer at several offsets (YOLO's C2f concatenates a
        # tensor with itself); removing it removes all of them, so their columns add up.
        columns = _channel_columns(z, member, group.channels)
        by_group[group.id] = by_group.get(group.id, 0) + columns
    for group_id, columns in by_group.items():
        key = (group_id, node_name)
        gram = columns.T @ columns
        result.grams[key] = result.grams.get(key, 0) + gram
        result.energy[key] += float(outputs @ outputs)


def _sampler_for(node: onnx.NodeProto, weight: np.ndarray, input_axis: int, output_scale: np.ndarray | None = None):
    """A function (consumer input batch, rng, real tokens [B, S] or None) -> Z [S, L] of sampled
    contributions, or None. `output_scale` [O] weighs a Gemm / MatMul's outputs (`layer_norm_scale`)."""
    weight = weight.astype(np.float64)
    if node.op_type == "Conv" and weight.ndim in (3, 4):
        return _conv_sampler(node, weight)
    if node.op_type in ("Gemm", "MatMul") and weight.ndim == 2:
        transposed_input = WEIGHT_OPS[node.op_type].data_channel_axis(node, 2) == 0  # Gemm's transA
        # [L, O]: rows are the input channels the group owns.
        in_out = np.moveaxis(weight, input_axis, 0)
        return _matrix_sampler(in_out if output_scale is None else in_out * output_scale, transposed_input)
    if node.op_type in RECURRENT_OPS and weight.ndim == 3:
        # The input projection: W [directions, gates * hidden, features] as one [features, outputs]
        # matrix over x [steps, batch, features] (ThiNet on what the gates read).
        features = np.moveaxis(weight, input_axis, 0)
        return _matrix_sampler(features.reshape(features.shape[0], -1), False)
    return None


def _conv_sampler(node: onnx.NodeProto, weight: np.ndarray):
    """ThiNet on a Conv: random output positions, one random output channel per position;
    z[s, c] = sum over the kernel of patch[s, c] * W[o_s, c], where input channel c is in
    o_s's conv group (0 for the other groups' channels)."""
    conv_kernel = weight.shape[2:]
    weight = as_nchw(weight)  # a 1-D conv's [O, C, k] as [O, C, 1, k]
    kernel = weight.shape[2:]
    group = attr(node, "group", 1)

    def sample(x: np.ndarray, rng: np.random.Generator, real=None) -> np.ndarray:
        x = as_nchw(x)
        geometry = ConvGeometry.of(node, conv_kernel, x.shape[2:])
        out_h, out_w = geometry.output_size(x.shape[2:])
        positions = sample_positions(rng, x.shape[0], out_h, out_w, POSITIONS_PER_IMAGE)
        patches = conv_input_patches(x, positions, geometry.kernel, geometry.strides, geometry.pads,
                                     geometry.dilations).astype(np.float64)
        outputs = rng.integers(0, weight.shape[0], size=len(positions))
        samples, in_per_group = len(positions), weight.shape[1]
        own_group = outputs // (weight.shape[0] // group)
        per_group = patches.reshape(samples, group, in_per_group, *kernel)
        z = np.zeros((samples, group, in_per_group))
        z[np.arange(samples), own_group] = np.einsum(
            "sckl,sckl->sc", per_group[np.arange(samples), own_group], weight[outputs])
        return z.reshape(samples, group * in_per_group)
    return sample


def _matrix_sampler(weight_in_out: np.ndarray, transposed_input: bool):
    """ThiNet on a Gemm/MatMul: ~10 random rows (tokens; the sample itself for 2-D input)
    per image, one random output feature each; z[s, c] = x[row_s, c] * W[c, o_s]. Given the real
    tokens of a [B, S, L] input, rows are drawn among them."""
    def sample(x: np.ndarray, rng: np.random.Generator, real=None) -> np.ndarray:
        x = x.T if transposed_input else x
        images = x.shape[0]
        rows = x.reshape(images, -1, x.shape[-1])  # [N, tokens, L]
        per_image = POSITIONS_PER_IMAGE
        if real is not None and x.ndim == 3 and real.shape == x.shape[:2]:
            counts = real.sum(axis=1)
            image_index = np.repeat(np.flatnonzero(counts), per_image)
            first_real = np.argsort(~real, axis=1, kind="stable")  # each row's real positions, in order
            token_index = first_real[image_index, rng.integers(0, counts[image_index])]
        else:
            image_index = np.repeat(np.arange(images), per_image)
            token_index = rng.integers(0, rows.shape[1], size=len(image_index))
        outputs = rng.integers(0, weight_in_out.shape[1], size=len(image_index))
        # Only the picked rows go to float64, not the whole batch.
        return rows[image_index, token_index].astype(np.float64) * weight_in_out[:, outputs].T
    return sample


# --------------------------------------------------------------------------- thinet


@criterion("thinet", needs_calibration=True)
def thinet(ctx: ScoringContext, groups: list[ChannelGroup]) -> dict[int, np.ndarray]:
    """ThiNet (Luo et al. 2017): greedily remove the channels whose summed contribution to
    the sampled consumer outputs stays smallest.

    Score of a channel = the relative error ||sum_{removed} z||^2 / ||y||^2 (averaged
    over the group's consumers) right after the greedy step that removes it, so
    scores rise along the greedy order and mean the same thing in every group.
    The channel never removed gets the error of removing the whole group.
    """
    return _scores_from_grams(ctx, "thinet", groups, lambda gram: ordered_scores(*thinet_greedy(gram)))


def thinet_greedy(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy removal order over all channels and the error ||sum_{removed} z_c||^2 after each step.

    With r the running sum of removed contributions, removing c costs
    ||r + z_c||^2 = ||r||^2 + 2 z_c.r + ||z_c||^2; in Gram form z_c.r is
    (G 1_removed)_c, kept as a vector updated by one column per step.
    """
    channels = gram.shape[0]
    diagonal = np.diag(gram).copy()
    cross = np.zeros(channels)  # G 1_removed
    removed = np.zeros(channels, dtype=bool)
    error = 0.0
    order, errors = [], []
    for _ in range(channels):
        cost = error + 2 * cross + diagonal
        cost[removed] = np.inf
        chosen = int(np.argmin(cost))
        error = float(cost[chosen])
        cross += gram[:, chosen]
        removed[chosen] = True
        order.append(chosen)
        errors.append(error)
    return np.array(order), np.array(errors)


# --------------------------------------------------------------------------- lasso


@criterion("lasso", needs_calibration=True)
def lasso(ctx: ScoringContext, groups: list[ChannelGroup]) -> dict[int, np.ndarray]:
    """LASSO channel selection (He et al. 2017) on the ThiNet samples.

    Solves min_b ||y - Z b||^2 / 2 + lam |b|_1 with y = Z 1 (the group's own
    contribution to its consumers' outputs) along a decreasing path of penalties,
    by coordinate descent on the normalized Gram (``G / ||y_consumer||^2``,
    averaged over consumers, so lam is in units of relative output energy and
    comparable across groups). A channel's score is the largest penalty at which
    its coefficient turns non-zero (see `lasso_path_scores`): the channels that hit
    zero first as the penalty grows score lowest.
    """
    return _scores_from_grams(ctx, "lasso", groups, lasso_path_scores)


def _scores_from_grams(ctx: ScoringContext, name: str, groups: list[ChannelGroup], score) -> dict[int, np.ndarray]:
    """`score(gram)` of each group's combined contribution Gram; l1 where a group has none."""
    grams = contribution_grams(ctx, require_calibration(ctx, name), groups)
    scores = {}
    for group in groups:
        gram = grams.combined(group)
        if gram is not None:
            scores[group.id] = score(gram)
    _fall_back_to_l1(ctx, name, groups, scores)
    return scores


def lasso_path_scores(gram: np.ndarray, points: int = LASSO_PATH_POINTS, depth: float = LASSO_PATH_DEPTH) -> np.ndarray:
    """Per channel, the penalty at which its coefficient turns non-zero on a decreasing path.

    The path is geometric; a channel that enters between two penalties scores its
    correlation with the residual |target_c - (G b)_c| at the last solution where it
    was still zero (its entry penalty to first order), clipped into that interval.
    Channels that never enter score that correlation at the end of the path.
    """
    target = gram.sum(axis=1)  # Z^T y for y = Z 1
    largest = float(np.abs(target).max())
    if largest <= 0:
        return np.zeros(gram.shape[0])
    penalties = largest * np.geomspace(1.0, depth, points)
    coefficients = np.zeros(gram.shape[0])
    scores = np.full(gram.shape[0], np.nan)
    previous = largest
    for penalty in penalties:
        correlation = np.abs(target - gram @ coefficients)  # at the previous solution
        coefficients = lasso_coordinate_descent(gram, target, penalty, coefficients)
        newly = (coefficients != 0) & np.isnan(scores)
        scores[newly] = np.clip(correlation[newly], penalty, previous)
        previous = penalty
    never = np.isnan(scores)
    scores[never] = np.minimum(np.abs(target - gram @ coefficients)[never], previous)
    return scores


def lasso_coordinate_descent(
    gram: np.ndarray, target: np.ndarray, penalty: float, start: np.ndarray,
    max_sweeps: int = 100, tolerance: float = 1e-4,
) -> np.ndarray:
    """Minimize b^T G b / 2 - target^T b + penalty |b|_1 by cyclic coordinate descent.

    Warm-started from `start`. Only a working set is swept: the non-zero
    coefficients and the zero ones that violate the optimality condition
    |target_c - (G b)_c| <= penalty (the others would stay zero anyway); the
    condition is re-checked for all channels at once until none violates it.
    `tolerance` is relative to max |target|, on the change of G b.
    """
    coefficients = start.copy()
    usable = np.diag(gram) > 0
    fitted = gram @ coefficients  # G b, updated one column at a time
    limit = tolerance * (float(np.abs(target).max()) or 1.0)
    working = np.flatnonzero(usable & ((coefficients != 0) | (np.abs(target - fitted) > penalty)))
    for _ in range(max_sweeps):
        for _ in range(max_sweeps):
            if _sweep(gram, target, penalty, coefficients, fitted, working) < limit:
                break
        violating = usable & (coefficients == 0) & (np.abs(target - fitted) > penalty + limit)
        if not violating.any():
            break
        working = np.union1d(working, np.flatnonzero(violating))
    return coefficients


def _sweep(gram, target, penalty, coefficients, fitted, indices) -> float:
    """One pass of coordinate updates over `indices`; returns the largest change of G b."""
    largest = 0.0
    for index in indices.tolist():
        diagonal = float(gram[index, index])
        old = float(coefficients[index])
        rho = float(target[index] - fitted[index]) + diagonal * old
        if rho > penalty:
            new = (rho - penalty) / diagonal
        elif rho < -penalty:
            new = (rho + penalty) / diagonal
        else:
            new = 0.0
        if new != old:
            fitted += gram[index] * (new - old)  # G is symmetric: a row is a contiguous column
            coefficients[index] = new
            largest = max(largest, abs(new - old) * diagonal)
    return largest


# --------------------------------------------------------------------------- sensitivity


@criterion("sensitivity", needs_calibration=True)
def sensitivity(ctx: ScoringContext, groups: list[ChannelGroup]) -> dict[int, np.ndarray]:
    """Forward-only sensitivity: the model-output error when a group alone loses channels.

    Channels are ordered by l1; with one masked-model session the group loses its
    weakest k channels for k at 10%, 20%, .. 90% of its size, and the relative L2
    error of the model outputs against the unmasked model (worst output, on the
    first ``ctx.sensitivity_samples`` calibration samples) is
    measured. The channel at l1-rank k scores the error interpolated for removing
    k + 1 channels (the last level's error above 90%): scores are output errors,
    directly comparable across groups.
    """
    calibration = require_calibration(ctx, "sensitivity")
    samples = ctx.sensitivity_samples
    batches = list(calibration.take(samples).batches(samples))
    masked = MaskedModel(ctx.analysis, groups, session=ctx.session)
    reference = [masked.run(batch) for batch in batches]
    weight_scores = l1_norm(ctx, groups)
    scores = {}
    for group in groups:
        order = np.argsort(weight_scores[group.id], kind="stable")
        counts = removal_counts(group.channels)
        errors = [output_error(masked, batches, reference, {group.root: sorted(order[:count].tolist())})
                  for count in counts]
        interpolated = np.interp(np.arange(1, group.channels + 1), [0, *counts], [0.0, *errors])
        scores[group.id] = ordered_scores(order, interpolated)
    return scores


def removal_counts(channels: int, fractions=SENSITIVITY_FRACTIONS) -> list[int]:
    """Distinct channel counts at the given fractions, each leaving at least one channel."""
    return sorted({min(max(int(round(fraction * channels)), 1), channels - 1) for fraction in fractions})


BROKEN_OUTPUT_ERROR = 1e9  # stands for a NaN/inf output: worse than any finite error


def output_error(masked: MaskedModel, batches: list, reference: list, plan: dict) -> float:
    """Relative L2 error of the masked outputs under `plan` (worst over the outputs)."""
    error = float(masked_agreement(masked, batches, reference, plan)["rel_l2"])
    return error if np.isfinite(error) else BROKEN_OUTPUT_ERROR
