"""Weight-based channel criteria: l1, l2, fpgm, consumer_l1, bn_scale, random.

Weight-based scores are computed per weight tensor and divided by that
layer's mean score, so channels of different layers are comparable (what
`--global` ranking relies on); a group's score is the mean over its producers
(consumer_l1: over the layers that read it).
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
from onnx import numpy_helper

from onnx_slim.channels.groups import ChannelGroup, Member
from onnx_slim.criteria.registry import ScoringContext, criterion

log = logging.getLogger(__name__)


def _layer_row_scores(ctx: ScoringContext, groups, row_score, side: str = "producers") -> dict[int, np.ndarray]:
    """Mean over each group's producers (or consumers) of `row_score` per channel, normalized per layer.

    `row_score(rows)` maps a [rows, features] matrix to one score per row; it sees
    the whole weight axis at once, each weight tensor loaded once. A grouped Conv's
    input axis holds one group's worth of channels: it reads more than its rows, and
    is left out (its group is scored by its other members).
    """
    by_tensor: dict[tuple, list[tuple[ChannelGroup, Member]]] = defaultdict(list)
    for group in groups:
        for member in getattr(group, side):
            if member.use.blocks == 1:
                by_tensor[(member.use.tensor, member.use.axis)].append((group, member))
    initializers = {init.name: init for init in ctx.model.graph.initializer}
    sums = {group.id: np.zeros(group.channels) for group in groups}
    counts = {group.id: 0 for group in groups}
    for (tensor, axis), members in by_tensor.items():
        weight = numpy_helper.to_array(initializers[tensor])
        rows = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1).astype(np.float32)
        per_row = row_score(rows)
        mean = float(per_row.mean()) or 1.0
        for group, member in members:
            sums[group.id] += _per_channel(per_row, member, group.channels, np.sum) / mean
            counts[group.id] += 1
    return {gid: sums[gid] / max(counts[gid], 1) for gid in sums}


def _l1_rows(rows: np.ndarray) -> np.ndarray:
    return np.abs(rows).sum(axis=1)


@criterion("l1")
def l1_norm(ctx, groups):
    return _layer_row_scores(ctx, groups, _l1_rows)


@criterion("l2")
def l2_norm(ctx, groups):
    return _layer_row_scores(ctx, groups, lambda rows: np.sqrt(np.square(rows).sum(axis=1)))


@criterion("consumer_l1")
def consumer_l1(ctx, groups):
    """L1 norm of the weights that read each channel: the next layers' input columns.

    With BatchNorm folded into the producer, a channel with small filter weights can
    still carry a large activation through its bias (EfficientNet-Lite0: l1 at 95% of
    the MACs 0.4% top-1, this 75.6%); how much the next layer relies on a channel is
    in its input column. Groups no weight reads directly are scored by l1.
    """
    scores = _layer_row_scores(ctx, groups, _l1_rows, side="consumers")
    unread = [group for group in groups if not any(m.use.blocks == 1 for m in group.consumers)]
    if unread:
        ctx.notes.append(f"consumer_l1: {len(unread)} group(s) without a consumer weight scored by l1")
        scores.update(l1_norm(ctx, unread))
    return scores


@criterion("fpgm")
def geometric_median(ctx, groups):
    """FPGM (He et al. 2019): filters close to the layer's geometric median are redundant.

    A row's score is its summed distance to every other row of the layer.
    """
    return _layer_row_scores(ctx, groups, _summed_distances)


def _summed_distances(rows: np.ndarray) -> np.ndarray:
    squared = np.square(rows).sum(axis=1)
    total = np.zeros(rows.shape[0], dtype=np.float64)
    for start in range(0, rows.shape[0], 512):  # chunks keep the distance matrix small
        chunk = rows[start:start + 512]
        gram = chunk @ rows.T
        distances = squared[start:start + 512, None] + squared[None, :] - 2 * gram
        total[start:start + 512] = np.sqrt(np.maximum(distances, 0)).sum(axis=1)
    return total


@criterion("bn_scale")
def batchnorm_scale(ctx, groups):
    """|gamma| of the BatchNormalization after each producer (network slimming)."""
    initializers = {init.name: init for init in ctx.model.graph.initializer}
    nodes = {node.name: node for node in ctx.model.graph.node}
    fallback = []
    scores = {}
    for group in groups:
        gammas = []
        for member in group.producers:
            gamma = ctx.bn_scales.get(member.use.node)
            if gamma is not None:
                gammas.append(_per_channel(gamma, member, group.channels))
        for member in group.params:
            node = nodes.get(member.use.node)
            if node is not None and node.op_type == "BatchNormalization" and member.use.tensor == node.input[1]:
                gamma = np.abs(numpy_helper.to_array(initializers[member.use.tensor]))
                gammas.append(_per_channel(gamma, member, group.channels))
        if gammas:
            scores[group.id] = np.mean([g / (g.mean() or 1.0) for g in gammas], axis=0)
        else:
            fallback.append(group)
    if fallback:
        ctx.notes.append(f"bn_scale: {len(fallback)} group(s) without BatchNormalization scored by l1")
        scores.update(l1_norm(ctx, fallback))
    return scores


def _per_channel(values: np.ndarray, member: Member, channels: int, reduce=np.mean) -> np.ndarray:
    """Per-index values of a member's axis gathered into one value per group channel."""
    span = values[member.offset: member.offset + channels * member.repeat]
    return reduce(span.reshape(channels, member.repeat), axis=1)


@criterion("random")
def random_scores(ctx, groups):
    """A baseline: seeded, and independent per group."""
    return {
        group.id: np.random.default_rng([ctx.seed, group.id]).random(group.channels)
        for group in groups
    }

