"""Optimal Brain Surgeon channel selection: remove the channels whose loss the re-fit can make up best.

ThiNet and the weight criteria rank channels by what they contribute; but after pruning,
the re-fit (`apply.reconstruct`) solves each consumer's least squares on the kept
channels, so a channel that others can stand in for costs little even when it
contributes a lot. OBS (Hassibi & Stork 1993; per layer as in OBC/SparseGPT) ranks by
the error left *after* that compensation. For a consumer with input Gram
``H = X^T X`` (the Hessian of its reconstruction error) and weight matrix ``W``
[features, outputs], removing the features ``B`` of one channel with the best
change of the others costs

    tr(W_B^T [(H^-1)_BB]^-1 W_B)

and leaves ``W <- W - H^-1[:, B] [(H^-1)_BB]^-1 W_B`` and ``H^-1 <- H^-1 - H^-1[:, B]
[(H^-1)_BB]^-1 H^-1[B, :]``. Greedily, one channel at a time, this gives the removal
order and the error after each removal; a group's consumers each keep their own state
and the cost is the mean of their relative errors (error / output energy), like
ThiNet's, so scores mean the same thing in every group. The re-fit also fits an intercept
(the consumer's bias), so the Gram carries a constant feature that is never removed: a
channel whose loss is mostly its mean (a ReLU's output) then costs what the bias cannot
absorb, not its whole energy. The Gram is the re-fit's own: real tokens only when the data shows
its padding, and for a consumer that feeds a LayerNorm its outputs weighed by the LayerNorm's
scale and its rows by 1 / the LayerNorm's sigma (`ops.layer_norm`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_slim.channels.groups import ChannelGroup, Member
from onnx_slim.criteria.data import ordered_scores, require_calibration, thinet
from onnx_slim.criteria.registry import ScoringContext, criterion
from onnx_slim.data.activations import ActivationCapture
from onnx_slim.data.statistics import gram_matrix
from onnx_slim.data.tokens import padding_to_leave_out
from onnx_slim.ir.graph import attr, readers_of
from onnx_slim.ops.conv_patches import ConvGeometry, as_nchw, sample_positions
from onnx_slim.ops.layer_norm import inverse_sigma, layer_norm_after, weighted_note
from onnx_slim.ops.specs import CONV_PATCHES, WEIGHT_OPS

# A consumer with more input features than this is left out: its inverse Hessian costs
# features^2 memory (8 bytes each; 3072, a BERT-base FFN's down projection, is 75 MB) and
# each step features^2 work. Its group then ranks by its other consumers, or by thinet.
MAX_FEATURES = 4096
# The greedy path takes at most this many steps per group; a wider group removes its
# cheapest channels a few at a time, jointly (one OBS block update per step). One channel
# per step on a 3072-wide group is 3072 rank-one updates of a 75 MB matrix, each a pass
# over memory; 256 rank-12 updates are matrix products, and the order near any pruning
# ratio moves by at most one step's channels. (all-mpnet-base-v2 at 70%, uniform: 489 s
# for the whole prune with its 12 FFN groups priced this way, against 322 s with thinet.)
MAX_STEPS = 256
GRAM_BUDGET_BYTES = 1 << 30  # the Grams of all consumers together: the widest are left out beyond it
DAMPING = 1e-2  # of the mean diagonal of H, added to it (as GPTQ does): H is often rank-deficient
ROWS_PER_IMAGE = 32  # conv output positions sampled per image
# A block drops its removed features from its matrices once they are this share of them: each
# drop copies the matrix once, and the updates after it run on the smaller one.
COMPACT_SHARE = 0.125


@dataclass
class _Consumer:
    """One consumer layer: its weight as [features, outputs] and its input Gram."""

    node: onnx.NodeProto
    matrix: np.ndarray
    kernel: list  # Conv kernel from the weight (the attribute is optional); [] for Gemm / MatMul
    gram: np.ndarray | None = None
    rows: int = 0
    # The input of the LayerNorm the output feeds: each row's error is weighted by 1 / its sigma there.
    layer_norm_input: str | None = None

    @property
    def taps(self) -> int:
        return int(np.prod(self.kernel)) if self.kernel else 1


@criterion("obs", needs_calibration=True)
def obs(ctx: ScoringContext, groups: list[ChannelGroup]) -> dict[int, np.ndarray]:
    """Optimal Brain Surgeon: remove first the channels whose loss the re-fit of the consumers
    makes up best (greedy, with the inverse Hessian updated after each removal).

    Score of a channel = the consumers' mean relative output error after the greedy
    step that removes it, with the other channels' weights compensated; pair with
    `--reconstruct`, which applies that compensation (by least squares on the data).
    Groups without a usable consumer (grouped convs, consumers wider than 4096 inputs,
    the widest when all Grams would pass 1 GiB) rank by thinet.
    """
    calibration = require_calibration(ctx, "obs")
    consumers = _usable_consumers(ctx, groups)
    _accumulate_grams(ctx, calibration, consumers)
    scores = {}
    for group in groups:
        members = [(consumers[m.use.node], m) for m in group.consumers
                   if m.use.node in consumers and consumers[m.use.node].rows]
        if members:
            order, errors = obs_greedy([_Block.of(consumer, member, group.channels) for consumer, member in members])
            scores[group.id] = ordered_scores(order, errors)
    missing = [group for group in groups if group.id not in scores]
    if missing:
        ctx.notes.append(f"obs: {len(missing)} group(s) without a usable consumer ranked by thinet")
        scores.update(thinet(ctx, missing))
    return scores


# --------------------------------------------------------------------------- statistics


def _usable_consumers(ctx: ScoringContext, groups: list[ChannelGroup]) -> dict[str, _Consumer]:
    """Consumers OBS can price, each weight's output columns weighed by the scale of the
    LayerNorm it feeds (`layer_norm_after`: the error the next layer reads)."""
    nodes = {node.name: node for node in ctx.model.graph.node}
    initializers = {init.name: init for init in ctx.model.graph.initializer}
    readers, weighted = readers_of(ctx.model), 0
    found = {}
    for group in groups:
        for member in group.consumers:
            node = nodes[member.use.node]
            spec = WEIGHT_OPS.get(node.op_type)
            if node.name in found or spec is None or spec.refit_kind(node) is None:
                continue
            if node.input[1] not in initializers or attr(node, "group", 1) != 1:
                continue
            weight = numpy_helper.to_array(initializers[node.input[1]])
            if spec.refit_kind(node) == CONV_PATCHES and weight.ndim not in (3, 4):
                continue
            matrix = spec.as_matrix(node, weight)
            layer_norm = layer_norm_after(ctx.model, node, matrix.shape[1], readers)
            if layer_norm is not None:
                matrix, weighted = matrix * layer_norm[0], weighted + 1
            if matrix.shape[0] <= MAX_FEATURES:
                kernel = list(weight.shape[2:]) if spec.refit_kind(node) == CONV_PATCHES else []
                found[node.name] = _Consumer(node, matrix, kernel,
                                             layer_norm_input=layer_norm[1] if layer_norm is not None else None)
    if weighted:
        ctx.notes.append(f"obs: {weighted_note(weighted)}")
    return _within_budget(found)


def _within_budget(consumers: dict[str, _Consumer]) -> dict[str, _Consumer]:
    """The narrowest consumers whose Grams fit GRAM_BUDGET_BYTES together (all are held at once;
    the greedy path adds one group's inverses). The captcha CRNN's unrolled BiLSTM reads its
    hidden units through 40 MatMuls of 3337 features: all of them held 12 GB."""
    kept, held = {}, 0
    for name, consumer in sorted(consumers.items(), key=lambda item: item[1].matrix.shape[0]):
        size = 8 * (consumer.matrix.shape[0] + 1) ** 2
        if held + size > GRAM_BUDGET_BYTES:
            break
        kept[name] = consumer
        held += size
    return kept


def _accumulate_grams(ctx: ScoringContext, calibration, consumers: dict[str, _Consumer]) -> None:
    """Each consumer's input Gram over sampled rows: real tokens only (as the re-fit samples them),
    rows weighted by 1 / sigma of the LayerNorm input the consumer feeds (as the re-fit weighs them)."""
    if not consumers:
        return
    by_input = defaultdict(list)
    for consumer in consumers.values():
        by_input[consumer.node.input[0]].append(consumer)
    tokens = padding_to_leave_out(ctx.model, ctx.analysis.context.shapes, calibration.token_mask())
    names = set(by_input) | {c.layer_norm_input for c in consumers.values() if c.layer_norm_input} \
        | ({tokens.input_name} if tokens else set())
    capture = ActivationCapture(ctx.model, sorted(names), session=ctx.session)
    rng = np.random.default_rng(ctx.seed)
    for results in capture.iter(calibration.batch_stream(ctx.batch_size), ctx.progress, "scoring batches"):
        for tensor, readers in by_input.items():
            for consumer in readers:
                real = tokens.real_rows(results, results[tensor].shape) if tokens and not consumer.kernel else None
                rows, picked = _design_rows(consumer, results[tensor], rng, real)
                weights = None
                normalized = results.get(consumer.layer_norm_input) if consumer.layer_norm_input else None
                # Its rows must be the input's rows (the same tokens, in the same order).
                if normalized is not None and picked is not None \
                        and normalized.size // normalized.shape[-1] == results[tensor].size // results[tensor].shape[-1]:
                    weights = inverse_sigma(normalized.reshape(-1, normalized.shape[-1])[picked])
                    rows = rows * weights[:, None]
                # The re-fit's intercept is a feature never removed (weighted rows: its column is the weights).
                gram = gram_matrix(rows, intercept=True, intercept_column=weights)
                consumer.gram = gram if consumer.gram is None else consumer.gram + gram
                consumer.rows += rows.shape[0]


def _design_rows(consumer: _Consumer, x: np.ndarray, rng: np.random.Generator,
                 real: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Sampled input rows [S, features] of the consumer, in the order of its weight matrix, and for
    a Gemm / MatMul the indices of those rows in its input flattened to rows (among `real` when given)."""
    node = consumer.node
    if consumer.kernel:
        x = as_nchw(x)
        geometry = ConvGeometry.of(node, consumer.kernel, x.shape[2:])
        out_h, out_w = geometry.output_size(x.shape[2:])
        positions = sample_positions(rng, x.shape[0], out_h, out_w, min(ROWS_PER_IMAGE, out_h * out_w))
        return geometry.patches(x, positions), None
    if attr(node, "transA", 0):
        x = x.T
    rows = x.reshape(-1, x.shape[-1])
    picked = np.arange(rows.shape[0]) if real is None else real
    if len(picked) > ROWS_PER_IMAGE * max(x.shape[0], 1):
        picked = np.sort(rng.choice(picked, ROWS_PER_IMAGE * x.shape[0], replace=False))
    return rows[picked], picked


# --------------------------------------------------------------------------- the greedy path


@dataclass
class _Block:
    """A consumer's state in one group's greedy path: which features each channel owns.

    Each removal is a rank-b update of the inverse Hessian. Applied at once, every update is a
    pass over the whole n x n matrix (memory-bound: most of the path's time); here they are
    kept as low-rank factors and applied together once they reach `capacity` columns, one
    matrix product (as GPTQ batches its updates). Each removal reads only the columns it needs
    (the inverse's at the removed features, corrected by the pending factors), and each
    channel's diagonal block, all its cost needs, is kept up to date directly. Removed
    features are dropped from the matrices once they make up COMPACT_SHARE of them.
    """

    inverse: np.ndarray  # (H + damping)^-1 as of the last fold, over the rows still held
    weight: np.ndarray  # [rows still held, outputs], compensated after each removal
    features: np.ndarray  # [channels, per channel] feature indices of each group channel
    energy: float  # ||X W||^2 of the original layer: errors are relative to it
    row: np.ndarray  # feature index -> its row in `inverse` and `weight` (-1 once removed)
    diagonal: np.ndarray  # [channels, per channel, per channel]: diagonal blocks of the current inverse
    # The current inverse is `inverse - left[:, :rank] @ right[:, :rank].T` (the removals not folded yet).
    left: np.ndarray | None = None
    right: np.ndarray | None = None
    rank: int = 0
    zeroed: int = 0  # removed rows still held

    @classmethod
    def of(cls, consumer: _Consumer, member: Member, channels: int) -> _Block:
        gram = consumer.gram
        damped = gram + DAMPING * max(float(np.mean(np.diag(gram))), 1e-12) * np.eye(gram.shape[0])
        inverse = np.linalg.inv(damped)
        inputs = np.array([list(member.indices(c)) for c in range(channels)])  # [channels, repeat]
        taps = np.arange(consumer.taps)
        features = (inputs[:, :, None] * consumer.taps + taps).reshape(channels, -1)
        # The intercept's row (when the Gram has one) starts at zero: the layer's own bias is a
        # constant, outside the error, and the row only collects compensation.
        weight = np.zeros((gram.shape[0], consumer.matrix.shape[1]))
        weight[:consumer.matrix.shape[0]] = consumer.matrix
        energy = float(np.sum(weight * (gram @ weight)))
        diagonal = inverse[features[:, :, None], features[:, None, :]]
        return cls(inverse, weight, features, max(energy, 1e-30), np.arange(gram.shape[0]), diagonal)

    def costs(self, candidates: np.ndarray) -> np.ndarray:
        """Relative error added by removing each candidate channel (with compensation)."""
        index = self.row[self.features[candidates]]  # [k, b]
        blocks = self.diagonal[candidates]  # [k, b, b]
        if index.shape[1] == 1:  # one pass over the weight, no copy of it: most steps' time is such passes
            norms = np.einsum("ij,ij->i", self.weight, self.weight)[index[:, 0]]
            return norms / np.maximum(blocks[:, 0, 0], 1e-30) / self.energy
        rows = self.weight[index]  # [k, b, outputs]
        # tr(W_B^T M^-1 W_B) = tr(M^-1 W_B W_B^T): b right-hand sides per solve instead of `outputs`
        solved = np.linalg.solve(blocks + 1e-12 * np.eye(index.shape[1]), rows @ rows.transpose(0, 2, 1))
        return np.trace(solved, axis1=1, axis2=2) / self.energy

    def remove(self, channels: np.ndarray) -> None:
        """Remove the channels' features together, compensating the others (the OBS update)."""
        removed = self.features[channels].reshape(-1)
        index = self.row[removed]
        columns = self.inverse[:, index]  # [rows, b] of the current inverse
        if self.rank:
            columns = columns - self.left[:, :self.rank] @ self.right[index, :self.rank].T
        block = columns[index] + 1e-12 * np.eye(len(index))
        scaled = np.linalg.solve(block, columns.T).T  # columns @ block^-1 (the block is symmetric)
        self.weight -= scaled @ self.weight[index]
        self.weight[index] = 0.0  # exactly, not up to rounding
        self.row[removed] = -1
        self.zeroed += len(index)
        self._update_diagonal(scaled, columns)
        if self.left is None or self.rank + len(index) > self.left.shape[1]:
            self._fold()
            self._reserve(len(index))
        self.left[:, self.rank:self.rank + len(index)] = scaled
        self.right[:, self.rank:self.rank + len(index)] = columns
        self.rank += len(index)
        if self.zeroed >= COMPACT_SHARE * len(self.inverse):
            self._fold()
            self._drop_zeroed()

    def _update_diagonal(self, scaled: np.ndarray, columns: np.ndarray) -> None:
        """Each remaining channel's diagonal block minus its part of the update scaled @ columns.T."""
        remaining = np.flatnonzero(self.row[self.features[:, 0]] >= 0)
        index = self.row[self.features[remaining]]  # [k, b]
        self.diagonal[remaining] -= scaled[index] @ columns[index].transpose(0, 2, 1)

    def _reserve(self, step: int) -> None:
        """Room for the pending factors: about sqrt(6 n b) columns balances reading them at every
        step against folding them into the n x n inverse (three passes over it) every few steps."""
        size = len(self.inverse)
        capacity = min(size, max(step, int(np.sqrt(6 * size * step))))
        if self.left is None or self.left.shape != (size, capacity):
            self.left, self.right = np.empty((size, capacity)), np.empty((size, capacity))

    def _fold(self) -> None:
        """Apply the pending removals to the inverse: one matrix product."""
        if self.rank:
            self.inverse -= self.left[:, :self.rank] @ self.right[:, :self.rank].T
            self.rank = 0

    def _drop_zeroed(self) -> None:
        """Drop the removed rows and columns: exact, they take no part in later steps."""
        held = self.row >= 0
        kept = self.row[held]  # in feature order, as the rows are
        self.inverse = self.inverse[np.ix_(kept, kept)]
        self.weight = self.weight[kept]
        self.row[held] = np.arange(len(kept))
        self.zeroed = 0
        self.left = self.right = None


def obs_greedy(blocks: list[_Block]) -> tuple[np.ndarray, np.ndarray]:
    """Greedy removal order over all channels and the mean relative error after each removal.

    Up to MAX_STEPS channels this is exact greedy OBS, one channel per step. A wider group
    removes its `per_step` cheapest channels per step; within a step the error grows by each
    channel's own cost (their joint cost is known only after the joint update).
    """
    channels = blocks[0].features.shape[0]
    per_step = -(-channels // MAX_STEPS)
    remaining = np.arange(channels)
    error = 0.0
    order, errors = [], []
    while remaining.size:
        cost = np.mean([block.costs(remaining) for block in blocks], axis=0)
        picks = np.argsort(cost, kind="stable")[:per_step]
        chosen = remaining[picks]
        for block in blocks:
            block.remove(chosen)
        for pick in picks:
            error += float(cost[pick])
            errors.append(error)
        order.extend(chosen.tolist())
        remaining = np.delete(remaining, picks)
    return np.array(order), np.array(errors)
