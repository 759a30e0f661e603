"""The planner: which channels each group loses, for a ratio or a MACs target, with rounding."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_valid, weight_dims
from graphs import Graph, conv_chain
from onnx import numpy_helper

from onnx_slim.errors import OnnxSlimError
from onnx_slim.pipeline.prune import prune
from onnx_slim.plan.planner import PlanOptions, global_plan, kept_count, uniform_plan


@pytest.mark.parametrize("ratio, options, kept", [
    (0.5, {"round_to": 8}, 8),
    (0.7, {"round_to": 8}, 8),   # keeps 5, rounded to 8
    (0.8, {"round_to": 4}, 4),   # keeps 4
    (0.5, {"min_channels": 12}, 12),
    (0.9, {"min_channels": 3}, 3),
    (0.9, {"round_to": 4, "min_channels": 6}, 8),
])
def test_round_to_and_min_channels(ratio, options, kept):
    model = conv_chain((16,))
    pruned, _ = prune(model, ratio=ratio, **options)
    assert weight_dims(pruned, "conv1") == (kept, 3, 3, 3)
    assert weight_dims(pruned, "conv_out") == (2, kept, 3, 3)


@pytest.mark.parametrize("round_to", [1, 8, 32])
def test_ratio_zero_changes_nothing_whatever_the_rounding(round_to):
    model = conv_chain((40, 24))
    pruned, report = prune(model, ratio=0.0, round_to=round_to)
    assert report.groups_pruned == 0 and report.macs_after == report.macs_before
    assert weight_dims(pruned, "conv1")[0] == 40 and weight_dims(pruned, "conv2")[0] == 24


def test_global_ranking_prunes_where_scores_are_lowest():
    """conv1 has four near-zero filters, conv2 none: global ranking takes them all from conv1."""
    model = conv_chain((8, 8))
    weight = next(i for i in model.graph.initializer if i.name == "conv1_w")
    value = numpy_helper.to_array(weight).copy()
    value[[1, 3, 5, 7]] *= 1e-3
    weight.CopyFrom(numpy_helper.from_array(value, "conv1_w"))
    uniform, _ = prune(model, ratio=0.25, criterion="l1")
    ranked, _ = prune(model, ratio=0.25, criterion="l1", global_ranking=True)
    assert (weight_dims(uniform, "conv1")[0], weight_dims(uniform, "conv2")[0]) == (6, 6)
    assert (weight_dims(ranked, "conv1")[0], weight_dims(ranked, "conv2")[0]) == (4, 8)


@pytest.mark.parametrize("global_ranking", [False, True])
def test_target_macs_within_two_percent(global_ranking):
    model = conv_chain((16, 24, 32, 32, 24, 16), size=8)
    pruned, report = prune(model, target_macs=0.5, global_ranking=global_ranking)
    assert abs(report.macs_fraction - 0.5) <= 0.02
    assert_valid(pruned, model)


def test_a_macs_target_leaves_groups_that_no_per_sample_mac_depends_on():
    """A position-bias MLP computed from constants only (Swin-V2): pruning its hidden units saves
    no MACs, so a MACs target leaves them whole; a ratio prunes every group alike."""
    g = Graph(seed=5)
    x = g.input("x", ["N", 3, 8, 8])
    hidden = g.relu(g.node("MatMul", [g.weight("table", (1, 2)), g.weight("mlp1_w", (2, 16))], "mlp1"))
    bias = g.reshape(g.node("MatMul", [hidden, g.weight("mlp2_w", (16, 16))], "mlp2"), [1, 16, 1, 1])
    h = g.add(g.relu(g.conv(x, 16, name="conv1")), bias)
    model = g.build(g.conv(h, 2, name="conv_out"))
    pruned, report = prune(model, target_macs=0.6, cleanup=False)  # the clean-up would fold the MLP away
    assert weight_dims(pruned, "mlp1") == (2, 16)
    assert weight_dims(pruned, "conv1")[0] < 16 and abs(report.macs_fraction - 0.6) <= 0.03
    pruned, _ = prune(model, ratio=0.5, cleanup=False)
    assert weight_dims(pruned, "mlp1") == (2, 8)


@pytest.mark.parametrize("round_to, limits", [(1, "--min-channels 1 allows"),
                                               (8, "--round-to 8 and --min-channels 1 allow")])
def test_an_unreachable_target_names_only_the_limits_that_apply(round_to, limits):
    with pytest.raises(OnnxSlimError, match=f"out of reach: pruning every prunable group as far as {limits} keeps"):
        prune(conv_chain((16,)), target_macs=0.01, round_to=round_to)


# -- the planner's own functions ---------------------------------------------------------------


class _Group:
    """The fields the planner reads of a channel group."""

    def __init__(self, gid: int, channels: int, blocks: int = 1, unit: int = 1) -> None:
        self.id = self.root = gid
        self.channels = channels
        self.blocks = blocks
        self.unit = unit


@pytest.mark.parametrize("channels, remove, options, kept", [
    (16, 8, PlanOptions(), 8),
    (16, 16, PlanOptions(), 1),                     # never below one channel
    (16, 11, PlanOptions(round_to=4), 4),           # keeps 5, nearest multiple of 4
    (16, 10, PlanOptions(round_to=4), 8),           # keeps 6: halves round up
    (16, 15, PlanOptions(round_to=4, min_channels=5), 8),
    (6, 0, PlanOptions(round_to=8), 6),             # never more than the group has
    (40, 0, PlanOptions(round_to=32), 40),          # nothing asked: no rounding down either
])
def test_kept_count(channels, remove, options, kept):
    assert kept_count(channels, remove, options) == kept


def test_uniform_plan_removes_each_groups_lowest_scores():
    groups = [_Group(0, 4), _Group(1, 6)]
    scores = {0: np.array([3.0, 1.0, 2.0, 0.5]), 1: np.array([6, 5, 4, 3, 2, 1.0])}
    assert uniform_plan(groups, scores, 0.5, PlanOptions()) == {0: [1, 3], 1: [3, 4, 5]}


def test_uniform_plan_breaks_ties_by_position():
    groups = [_Group(7, 4)]
    assert uniform_plan(groups, {7: np.ones(4)}, 0.5, PlanOptions()) == {7: [0, 1]}


def test_global_plan_takes_the_lowest_scores_across_groups():
    groups = [_Group(0, 4), _Group(1, 4)]
    scores = {0: np.array([0.1, 0.2, 0.3, 5.0]), 1: np.array([4.0, 5.0, 6.0, 7.0])}
    assert global_plan(groups, scores, 0.25, PlanOptions()) == {0: [0, 1]}
    assert global_plan(groups, scores, 0.0, PlanOptions()) == {}


# -- groups spread over a grouped Conv's groups ---------------------------------------------------


@pytest.mark.parametrize("channels, blocks, options, ratio, kept", [
    (4, 32, PlanOptions(round_to=8), 0.3, 3),    # 96 tensor channels: already a multiple of 8
    (16, 2, PlanOptions(round_to=8), 0.3, 12),   # steps of 4 group channels = 8 tensor channels
    (16, 2, PlanOptions(round_to=8), 0.7, 4),    # keeps 5, nearest multiple of 4
    (8, 4, PlanOptions(min_channels=16), 0.9, 4),  # at least 16 tensor channels = 4 per group
])
def test_rounding_counts_the_tensor_channels_of_grouped_groups(channels, blocks, options, ratio, kept):
    plan = uniform_plan([_Group(0, channels, blocks)], {0: np.arange(channels, dtype=float)}, ratio, options)
    assert channels - len(plan.get(0, ())) == kept


@pytest.mark.parametrize("heads, ratio, kept", [
    (2, 0.3, 1),    # 0.6 heads: the nearest is one (rounding down would never remove a head)
    (2, 0.25, 2),   # half a head: kept
    (12, 0.3, 8),   # 3.6 heads -> 4
    (2, 0.9, 1),    # never below one head
])
def test_heads_round_to_the_nearest_whole_head(heads, ratio, kept):
    plan = uniform_plan([_Group(0, heads, unit=16)], {0: np.arange(heads, dtype=float)}, ratio, PlanOptions())
    assert heads - len(plan.get(0, ())) == kept


def test_round_to_counts_the_features_of_a_head():
    """round_to=8 on heads of 16 features: every whole head already satisfies it."""
    plan = uniform_plan([_Group(0, 4, unit=16)], {0: np.arange(4, dtype=float)}, 0.5, PlanOptions(round_to=8))
    assert plan == {0: [0, 1]}


def grouped_chain(groups: int = 4):
    """x -> dense(32) -> relu -> grouped(32, group) -> relu -> dense(2) -> y."""
    g = Graph(seed=1)
    h = g.relu(g.conv(g.input("x", [1, 3, 8, 8]), 32, name="dense_in"))
    h = g.relu(g.conv(h, 32, group=groups, name="grouped"))
    return g.build(g.conv(h, 2, name="dense_out"))


@pytest.mark.parametrize("settings", [
    {"ratio": 0.3}, {"ratio": 0.6, "round_to": 8}, {"ratio": 0.6, "round_to": 16},
    {"target_macs": 0.4, "round_to": 8}, {"target_macs": 0.3, "global_ranking": True},
])
def test_grouped_conv_channel_counts_stay_divisible_by_group(settings):
    model = grouped_chain()
    pruned, _ = prune(model, **settings)
    filters_in, _, _, _ = weight_dims(pruned, "dense_in")
    filters, in_per_group, _, _ = weight_dims(pruned, "grouped")
    assert filters_in == 4 * in_per_group and filters % 4 == 0
    assert filters_in < 32 and filters < 32
    round_to = settings.get("round_to", 1)
    assert filters_in % round_to == 0 and filters % round_to == 0
    assert_valid(pruned, model)
