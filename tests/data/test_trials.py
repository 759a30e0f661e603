"""Group trials: run from the first node a group's masks reach, they agree with whole-model runs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import Graph

from onnx_slim.channels.analysis import analyze
from onnx_slim.data import trials as trials_module
from onnx_slim.data.masking import MaskedModel, masked_agreement
from onnx_slim.data.trials import GroupTrials


def residual_cnn() -> onnx.ModelProto:
    """Three prunable groups at increasing depth, one of them across a residual Add, and a head."""
    g = Graph(seed=7)
    x = g.input("x", ["N", 3, 8, 8])
    a = g.relu(g.conv(x, 8, name="conv1"), name="relu1")
    b = g.relu(g.conv(a, 6, name="conv2"), name="relu2")
    s = g.relu(g.add(a, g.conv(b, 8, name="conv3"), name="skip"), name="relu3")
    c = g.relu(g.conv(s, 5, name="conv4"), name="relu4")
    return g.build(g.head(c, classes=4))


@pytest.fixture
def sessions(monkeypatch) -> list[int]:
    """Node counts of the parts the trials build sessions for."""
    seen, create = [], trials_module.create_session

    def recording(model, spec):
        seen.append(len(model.graph.node))
        return create(model, spec)

    monkeypatch.setattr(trials_module, "create_session", recording)
    return seen


@pytest.mark.parametrize("suffixes", [1000, 1])
def test_each_trial_equals_the_whole_masked_model_and_runs_less_of_it(sessions, monkeypatch, suffixes):
    """With many suffixes allowed, each group starts at its own first reader; with one, every group
    shares the first group's start (two sessions in all: the prefix and one tail)."""
    monkeypatch.setattr(trials_module, "SUFFIXES", suffixes)
    analysis = analyze(residual_cnn())
    groups = analysis.channels.prunable_groups()
    assert len(groups) >= 3
    masked = MaskedModel(analysis, groups)
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((n, 3, 8, 8)).astype(np.float32)} for n in (4, 3)]
    reference = [masked.run(batch) for batch in batches]
    trials = GroupTrials(masked, batches, reference)
    visited = []
    for root, trial in trials.each([group.root for group in groups]):
        visited.append(root)
        group = next(group for group in groups if group.root == root)
        for removed in ([0], list(range(group.channels // 2))):
            plan = {root: removed}
            expected = masked_agreement(masked, batches, reference, plan)
            got = trial(plan)
            for key in ("rel_l2", "cosine", "top1"):
                assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), (root, key)
            assert got["rel_l2"] > 0  # the trial did prune something
    assert sorted(visited) == sorted(group.root for group in groups)
    assert [trials.first_reader(root) for root in visited] == sorted(trials.first_reader(r) for r in visited)
    # One session per start and at most one per advance of the unmasked prefix, none of them the whole model.
    if suffixes == 1:
        assert len(sessions) <= 2
    else:
        assert len(groups) <= len(sessions) <= 2 * len(groups)
    assert max(sessions) < len(masked.model.graph.node)
