"""Weight criteria: each ranks a layer's filters as its definition says."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import group_with
from graphs import conv_chain
from onnx import numpy_helper

from onnx_slim.channels.analysis import analyze
from onnx_slim.criteria import CRITERIA, ScoringContext, score_groups
from onnx_slim.errors import UsageError


def _scores_of_conv1(rows: np.ndarray, criterion: str) -> np.ndarray:
    """Scores of conv1's filters when its weight is `rows` (one row per filter)."""
    model = conv_chain((rows.shape[0],), in_channels=1, size=4)
    init = next(i for i in model.graph.initializer if i.name == "conv1_w")
    init.CopyFrom(numpy_helper.from_array(rows.reshape(rows.shape[0], 1, 3, 3).astype(np.float32), "conv1_w"))
    analysis = analyze(model)
    group = group_with(analysis, "conv1")
    return score_groups(ScoringContext(analysis.model, analysis.channels), criterion, [group])[group.id]


def test_l1_and_l2_rank_differently_where_their_norms_disagree():
    rows = np.zeros((3, 9))
    rows[0, :] = 1.0        # l1 9, l2 3
    rows[1, 0] = 5.0        # l1 5, l2 5
    rows[2, :2] = 2.0       # l1 4, l2 2.83
    assert np.argsort(_scores_of_conv1(rows, "l1")).tolist() == [2, 1, 0]
    assert np.argsort(_scores_of_conv1(rows, "l2")).tolist() == [2, 0, 1]


def test_fpgm_scores_the_filter_nearest_the_others_lowest():
    """FPGM keeps what is far from the geometric median: a filter among many similar ones goes first."""
    rng = np.random.default_rng(0)
    center = rng.standard_normal(9)
    rows = np.stack([center + 0.01 * rng.standard_normal(9) for _ in range(4)] + [10 * rng.standard_normal(9)])
    rows[0] = center  # exactly at the median of the cluster
    scores = _scores_of_conv1(rows, "fpgm")
    assert np.argmin(scores) == 0 and np.argmax(scores) == 4


def test_scores_are_normalized_per_layer():
    rows = np.abs(np.random.default_rng(1).standard_normal((4, 9)))
    # fpgm's float32 distances (|a|^2 + |b|^2 - 2ab) lose about 1e-4 to cancellation.
    for criterion, rtol in (("l1", 1e-6), ("l2", 1e-6), ("fpgm", 1e-3)):
        np.testing.assert_allclose(_scores_of_conv1(rows, criterion).mean(), 1.0, rtol=1e-6)
        np.testing.assert_allclose(_scores_of_conv1(rows * 100, criterion), _scores_of_conv1(rows, criterion),
                                   rtol=rtol)


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_a_criterion_runs_without_data_exactly_when_it_says_so(name):
    """`needs_calibration` drives the CLI's help: it must match what the scorer does."""
    model = conv_chain((4,), size=4)
    analysis = analyze(model)
    groups = analysis.channels.prunable_groups()
    context = ScoringContext(analysis.model, analysis.channels)
    if CRITERIA[name].needs_calibration:
        with pytest.raises(UsageError, match="needs calibration data"):
            score_groups(context, name, groups)
    else:
        assert set(score_groups(context, name, groups)) == {group.id for group in groups}


def test_consumer_l1_ranks_by_the_columns_that_read_each_channel():
    """A filter with large weights whose channel the next layer barely reads goes first (and l1 keeps it)."""
    model = conv_chain((3, 4), in_channels=1, size=4)
    weights = {init.name: init for init in model.graph.initializer}
    filters = np.ones((3, 1, 3, 3), dtype=np.float32)
    filters[0] *= 10.0  # l1's favourite
    weights["conv1_w"].CopyFrom(numpy_helper.from_array(filters, "conv1_w"))
    readers = np.ones((4, 3, 3, 3), dtype=np.float32)
    readers[:, 0] *= 0.01  # ...which conv2 hardly reads
    readers[:, 2] *= 3.0
    weights["conv2_w"].CopyFrom(numpy_helper.from_array(readers, "conv2_w"))
    analysis = analyze(model)
    group = group_with(analysis, "conv1")
    context = ScoringContext(analysis.model, analysis.channels)
    assert np.argsort(score_groups(context, "consumer_l1", [group])[group.id]).tolist() == [0, 1, 2]
    assert np.argmax(score_groups(context, "l1", [group])[group.id]) == 0
    np.testing.assert_allclose(score_groups(context, "consumer_l1", [group])[group.id].mean(), 1.0, rtol=1e-6)


def test_consumer_l1_falls_back_to_l1_where_no_weight_reads_the_group():
    """A group read only by a grouped Conv's tied input blocks has no column to score: l1 does, with a note."""
    from graphs import Graph

    g = Graph()
    h = g.relu(g.conv(g.input("x", [1, 3, 8, 8]), 8, name="conv1"))
    model = g.build(g.conv(g.conv(h, 8, group=2, name="grouped"), 2, kernel=1, name="out"))
    analysis = analyze(model)
    group = group_with(analysis, "conv1")
    assert group.consumers and all(member.use.blocks > 1 for member in group.consumers)
    context = ScoringContext(analysis.model, analysis.channels)
    np.testing.assert_allclose(score_groups(context, "consumer_l1", [group])[group.id],
                               score_groups(ScoringContext(analysis.model, analysis.channels), "l1", [group])[group.id])
    assert any("consumer_l1: 1 group(s)" in note for note in context.notes)
