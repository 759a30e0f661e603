"""Per-group sensitivity and the ratios allocated from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from recording import RecordingProgress

from onnx_slim.channels.analysis import analyze
from onnx_slim.criteria import ScoringContext, score_groups
from onnx_slim.data.calibration import load_calibration
from onnx_slim.data.masking import MaskedModel
from onnx_slim.data.metrics import agreement
from onnx_slim.errors import OnnxSlimError, UsageError
from onnx_slim.plan.planner import CostModel, PlanOptions, kept_count, plan_for_target_macs
from onnx_slim.plan.sensitivity import (ALLOCATION_FRACTIONS, COARSE_FRACTIONS, MIN_SAMPLES, allocate_ratios,
                                        measure_sensitivity, plan_from_ratios, sensitivity_budget)

MODELS = Path(__file__).resolve().parents[2] / "models"
RATIOS = (0.1, 0.3, 0.5)


@pytest.fixture(scope="module")
def digits():
    path = MODELS / "digits_cnn.onnx"
    analysis = analyze(path)
    calibration = load_calibration(MODELS / "digits_calib.npz", path)
    report = measure_sensitivity(analysis, calibration, ratios=RATIOS)
    return analysis, calibration, report


@pytest.fixture(scope="module")
def held_out_error(digits):
    """Relative L2 output error of a plan on the digits test set (not used for calibration)."""
    analysis, _, _ = digits
    path = MODELS / "digits_cnn.onnx"
    batches = list(load_calibration(MODELS / "digits_test.npz", path).batches(300))
    masked = MaskedModel(analysis, analysis.channels.prunable_groups())
    reference = [masked.run(batch) for batch in batches]
    return lambda plan: agreement(reference, [masked.run(batch, plan) for batch in batches])["rel_l2"]


def l1_scores(analysis):
    groups = analysis.channels.prunable_groups()
    return groups, score_groups(ScoringContext(analysis.model, analysis.channels), "l1", groups)


# --------------------------------------------------------------------------- measuring


def test_error_and_savings_grow_with_the_ratio(digits):
    analysis, _, report = digits
    assert [group.group_id for group in report.groups] == [g.id for g in analysis.channels.prunable_groups()]
    assert report.samples == 32 and report.ratios == list(RATIOS)
    for group in report.groups:
        errors = [entry.rel_l2 for entry in group.entries]
        saved = [entry.macs_saved for entry in group.entries]
        assert 0 < errors[0] < errors[1] < errors[2], (group.group_id, errors)
        assert 0 < saved[0] < saved[1] < saved[2] < 1
        for entry in group.entries:
            assert entry.removed == group.channels - kept_count(group.channels, int(group.channels * entry.ratio), PlanOptions())
            assert -1 <= entry.cosine <= 1 and 0 <= entry.top1 <= 1


def test_report_serializes_and_tabulates(digits):
    _, _, report = digits
    data = json.loads(json.dumps(report.to_dict()))
    assert data["criterion"] == "l1" and len(data["groups"]) == len(report.groups)
    assert set(data["groups"][0]["entries"][0]) == {"ratio", "removed", "rel_l2", "cosine", "top1", "macs_saved"}
    lines = report.to_table().splitlines()
    assert lines[0].split()[:3] == ["group", "channels", "producers"]
    assert "rel_l2@0.5" in lines[0] and len(lines) == 2 + len(report.groups)
    assert "/stem/stem.0/Conv" in report.to_table(markdown=True)


def test_other_criteria_choose_the_channels(digits):
    analysis, calibration, _ = digits
    report = measure_sensitivity(analysis, calibration, ratios=(0.5,), criterion="activation", samples=8)
    assert report.criterion == "activation" and report.samples == 8
    assert all(group.entries[0].rel_l2 > 0 for group in report.groups)


def test_bad_arguments_are_usage_errors(digits):
    analysis, calibration, _ = digits
    with pytest.raises(UsageError, match="calibration"):
        measure_sensitivity(analysis, None)
    with pytest.raises(UsageError, match=r"ratios must be in \(0, 1\)"):
        measure_sensitivity(analysis, calibration, ratios=(0.5, 1.0))


# --------------------------------------------------------------------------- allocating


def test_plan_from_ratios_removes_each_groups_lowest_scores(digits):
    analysis, _, _ = digits
    groups, scores = l1_scores(analysis)
    ratios = {groups[0].id: 0.25, groups[2].id: 0.5}
    plan = plan_from_ratios(groups, scores, ratios, PlanOptions())
    assert set(plan) == {groups[0].root, groups[2].root}
    for group in (groups[0], groups[2]):
        count = int(group.channels * ratios[group.id])
        assert plan[group.root] == sorted(np.argsort(scores[group.id], kind="stable")[:count].tolist())


@pytest.mark.parametrize("target", (0.8, 0.7, 0.6, 0.5))
def test_allocation_hits_the_target(digits, target):
    analysis, _, report = digits
    groups, scores = l1_scores(analysis)
    cost_model = CostModel.of(analysis)
    ratios = allocate_ratios(report, cost_model, groups, scores, target, PlanOptions())
    plan = plan_from_ratios(groups, scores, ratios, PlanOptions())
    assert abs(cost_model.macs_after(plan) / cost_model.macs - target) <= 0.02
    assert len(set(ratios.values())) > 1  # not a uniform ratio in disguise


@pytest.mark.parametrize("target", (0.8, 0.7, 0.6))
def test_allocation_beats_or_matches_uniform_l1(digits, held_out_error, target):
    # Relative L2 output error on the 300 held-out digits (allocated vs uniform l1):
    # 0.8 -> 0.464 vs 0.471, 0.7 -> 0.585 vs 0.772, 0.6 -> 0.826 vs 0.893.
    analysis, _, report = digits
    groups, scores = l1_scores(analysis)
    cost_model = CostModel.of(analysis)
    ratios = allocate_ratios(report, cost_model, groups, scores, target, PlanOptions())
    allocated = plan_from_ratios(groups, scores, ratios, PlanOptions())
    uniform, _ = plan_for_target_macs(groups, scores, target, PlanOptions(), cost_model)
    # Same MACs within the planner's tolerance, so the errors are comparable.
    assert abs(cost_model.macs_after(allocated) - cost_model.macs_after(uniform)) <= 0.03 * cost_model.macs
    assert held_out_error(allocated) <= held_out_error(uniform) * 1.01


def test_target_beyond_the_measured_ratios_is_refused(digits):
    analysis, _, report = digits
    groups, scores = l1_scores(analysis)
    with pytest.raises(OnnxSlimError, match="out of reach with the measured ratios"):
        allocate_ratios(report, CostModel.of(analysis), groups, scores, 0.05, PlanOptions())


def test_target_already_met_prunes_nothing(digits):
    analysis, _, report = digits
    groups, scores = l1_scores(analysis)
    ratios = allocate_ratios(report, CostModel.of(analysis), groups, scores, 1.0, PlanOptions())
    assert set(ratios.values()) == {0.0}


def test_sensitivity_orders_channels_by_the_callers_seed_and_scores(digits):
    """`--allocate sensitivity --seed S` measured the order of seed 0; the seed (or the scores) now reach it."""
    analysis, calibration, _ = digits
    groups = analysis.channels.prunable_groups()

    def measured(**options):
        report = measure_sensitivity(analysis, calibration, ratios=RATIOS, criterion="random", samples=8, **options)
        return [[entry.rel_l2 for entry in group.entries] for group in report.groups]

    seeded = score_groups(ScoringContext(analysis.model, analysis.channels, seed=3), "random", groups)
    assert measured(seed=3) == measured(scores=seeded)
    assert measured(seed=3) != measured(seed=0)


def test_trials_are_counted_one_per_group(digits):
    analysis, calibration, _ = digits
    recorder = RecordingProgress()

    measure_sensitivity(analysis, calibration, ratios=(0.5,), samples=8, progress=recorder)

    groups = len(analysis.channels.prunable_groups())
    assert recorder.steps_done == {"sensitivity trials": [groups, groups]}
    assert recorder.lines[-1] == f"sensitivity of group {analysis.channels.prunable_groups()[-1].id} ({groups}/{groups})"


@pytest.mark.parametrize("macs, groups, available, expected", [
    (0.4e9, 24, 250, (32, ALLOCATION_FRACTIONS)),  # EfficientNet-Lite0: every level, up to 32 samples
    (0.4e9, 24, 20, (20, ALLOCATION_FRACTIONS)),  # no more samples than there are
    (4.1e9, 37, 64, (MIN_SAMPLES, COARSE_FRACTIONS)),  # a ResNet-50: the floor, at the coarse levels
    (60e9, 100, 64, (MIN_SAMPLES, COARSE_FRACTIONS)),  # far past the budget: still the floor
])
def test_trial_budget_gives_large_models_fewer_samples_and_levels(macs, groups, available, expected):
    assert sensitivity_budget(int(macs), groups, available) == expected
