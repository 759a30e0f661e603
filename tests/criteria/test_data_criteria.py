"""Data-driven criteria: activation, thinet, lasso, sensitivity."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from graphs import Graph
from onnx import numpy_helper

from onnx_slim.channels.analysis import analyze
from onnx_slim.criteria import CRITERIA, ScoringContext, score_groups
from onnx_slim.criteria import data as data_criteria
from onnx_slim.data.calibration import CalibrationSet, load_calibration
from onnx_slim.data.masking import MaskedModel
from onnx_slim.data.metrics import agreement
from onnx_slim.errors import UsageError
from onnx_slim.plan.planner import CostModel, PlanOptions, plan_for_target_macs, uniform_plan

MODELS = Path(__file__).resolve().parents[2] / "models"
DATA_CRITERIA = ("activation", "thinet", "lasso", "sensitivity")


def scoring_context(analysis, calibration, **settings):
    return ScoringContext(
        analysis.model, analysis.channels, analysis.normalize_info.bn_scales, calibration=calibration, **settings,
    )


# --------------------------------------------------------------------------- registry and usage


def test_importing_registers_the_data_criteria():
    assert set(DATA_CRITERIA) <= set(CRITERIA)


@pytest.mark.parametrize("name", DATA_CRITERIA)
def test_missing_calibration_is_a_usage_error(name):
    analysis = analyze(MODELS / "digits_cnn.onnx")
    context = ScoringContext(analysis.model, analysis.channels)
    with pytest.raises(UsageError, match=f"criterion {name} needs calibration data: pass --calib PATH"):
        score_groups(context, name, analysis.channels.prunable_groups())


# --------------------------------------------------------------------------- thinet


def brute_force_greedy(z: np.ndarray):
    """ThiNet's greedy step written out: try every remaining channel, keep the best."""
    removed, errors = [], []
    for _ in range(z.shape[1]):
        candidates = [c for c in range(z.shape[1]) if c not in removed]
        costs = [float(np.sum(z[:, removed + [c]].sum(axis=1) ** 2)) for c in candidates]
        best = int(np.argmin(costs))
        removed.append(candidates[best])
        errors.append(costs[best])
    return removed, errors


@pytest.mark.parametrize("seed", range(3))
def test_thinet_greedy_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((40, 7)) * rng.uniform(0.2, 2.0, size=7)
    z[:, 3] = -0.9 * z[:, 1]  # channels that cancel: removing both costs little
    order, errors = data_criteria.thinet_greedy(z.T @ z)
    expected_order, expected_errors = brute_force_greedy(z)
    assert order.tolist() == expected_order
    np.testing.assert_allclose(errors, expected_errors, rtol=1e-9)


def test_thinet_greedy_has_an_exhaustive_optimal_first_pair_on_a_tiny_case():
    # For two removals, brute force over every pair: the greedy pair is not always optimal,
    # but here (a dominant cancellation) it is, and its error equals the pair's.
    rng = np.random.default_rng(7)
    z = rng.standard_normal((30, 5))
    z[:, 4] = -z[:, 2] + 0.01 * rng.standard_normal(30)
    order, errors = data_criteria.thinet_greedy(z.T @ z)
    pair_errors = {pair: float(np.sum(z[:, list(pair)].sum(axis=1) ** 2)) for pair in itertools.combinations(range(5), 2)}
    best_pair = min(pair_errors, key=pair_errors.get)
    assert set(order[:2].tolist()) == set(best_pair) == {2, 4}
    assert errors[1] == pytest.approx(pair_errors[best_pair])


def test_ordered_scores_rise_along_the_greedy_order():
    order = np.array([2, 0, 3, 1])
    scores = data_criteria.ordered_scores(order, np.array([0.1, 0.05, 0.3, 1.0]))  # a dip at step 2
    assert np.argsort(scores).tolist() == order.tolist()
    assert scores[0] >= scores[2]


# --------------------------------------------------------------------------- lasso


def test_lasso_solution_satisfies_the_optimality_conditions():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((60, 8)) @ (np.eye(8) + 0.3 * rng.standard_normal((8, 8)))
    gram = z.T @ z
    target = gram.sum(axis=1)
    penalty = 0.2 * np.abs(target).max()
    beta = data_criteria.lasso_coordinate_descent(gram, target, penalty, np.zeros(8), tolerance=1e-10, max_sweeps=2000)
    gradient = target - gram @ beta
    active = beta != 0
    assert active.any() and not active.all()
    np.testing.assert_allclose(gradient[active], penalty * np.sign(beta[active]), rtol=1e-6)
    assert np.all(np.abs(gradient[~active]) <= penalty * (1 + 1e-6))


def test_lasso_ranks_independent_channels_by_energy_and_a_dead_channel_last():
    energies = np.array([4.0, 0.5, 0.0, 2.0, 1.0])
    scores = data_criteria.lasso_path_scores(np.diag(energies))
    assert np.argsort(scores).tolist() == [2, 1, 4, 3, 0]


def test_lasso_drops_a_redundant_channel_before_an_independent_one():
    # Channel 1 nearly repeats channel 0; channel 2 is independent and a bit weaker than
    # channel 1. Together 0 and 1 explain much of y, so 1 adds little once 0 is in.
    rng = np.random.default_rng(3)
    base = rng.standard_normal(200)
    z = np.stack([base, 0.9 * base + 0.05 * rng.standard_normal(200), 0.8 * rng.standard_normal(200)], axis=1)
    scores = data_criteria.lasso_path_scores(z.T @ z)
    assert np.argmax(scores) == 0
    thinet_order, _ = data_criteria.thinet_greedy(z.T @ z)
    assert scores[2] > 0 and scores[0] > scores[2]
    assert thinet_order[-1] in (0, 1)


# --------------------------------------------------------------------------- activation


def dead_channel_model():
    """x -> conv1 (4 channels, channel 2 always 0 after Relu) -> conv2: one prunable group."""
    g = Graph(seed=2)
    x = g.input("x", ["N", 3, 6, 6])
    hidden = g.relu(g.conv(x, 4, name="conv1"), name="relu1")
    model = g.build(g.conv(hidden, 2, name="conv2"))
    for init in model.graph.initializer:
        value = numpy_helper.to_array(init).copy()
        if init.name == "conv1_w":
            value[2] = 0
        elif init.name == "conv1_b":
            value[2] = -1.0  # Relu(-1) = 0 everywhere
        else:
            continue
        init.CopyFrom(numpy_helper.from_array(value, init.name))
    return model


def test_activation_scores_a_dead_channel_lowest_and_its_apoz_is_one():
    analysis = analyze(dead_channel_model())
    (group,) = analysis.channels.prunable_groups()
    samples = np.random.default_rng(0).standard_normal((20, 3, 6, 6)).astype(np.float32)
    context = scoring_context(analysis, CalibrationSet({"x": samples}))
    scores = score_groups(context, "activation", [group])[group.id]
    assert np.argmin(scores) == 2 and scores[2] == 0
    assert scores.mean() == pytest.approx(1.0)  # normalized by the consumer input's mean
    apoz = context.apoz[group.id]
    assert apoz[2] == 1.0 and np.all(apoz[[0, 1, 3]] < 1)


@pytest.mark.parametrize("name", ("thinet", "lasso"))
def test_sampling_criteria_score_a_dead_channel_lowest(name):
    analysis = analyze(dead_channel_model())
    (group,) = analysis.channels.prunable_groups()
    samples = np.random.default_rng(0).standard_normal((20, 3, 6, 6)).astype(np.float32)
    scores = score_groups(scoring_context(analysis, CalibrationSet({"x": samples})), name, [group])[group.id]
    assert np.argmin(scores) == 2


# --------------------------------------------------------------------------- on a trained CNN


@pytest.fixture(scope="module")
def digits():
    """digits_cnn with its calibration set, and an evaluator of plans on the held-out test set."""
    path = MODELS / "digits_cnn.onnx"
    analysis = analyze(path)
    calibration = load_calibration(MODELS / "digits_calib.npz", path)
    test_batches = list(load_calibration(MODELS / "digits_test.npz", path).batches(300))
    groups = analysis.channels.prunable_groups()
    masked = MaskedModel(analysis, groups)
    reference = [masked.run(batch) for batch in test_batches]

    def output_error(plan):
        return agreement(reference, [masked.run(batch, plan) for batch in test_batches])["rel_l2"]

    scores = {}

    def scores_by(name):
        if name not in scores:
            scores[name] = score_groups(scoring_context(analysis, calibration), name, groups)
        return scores[name]

    return analysis, groups, output_error, scores_by


@pytest.mark.parametrize("name", ("thinet", "lasso"))
def test_reconstruction_criteria_beat_l1_on_digits_cnn(digits, name):
    # Measured on the held-out set at ratio 0.25 (uniform): l1 0.94, thinet 0.69,
    # lasso 0.76 relative L2 output error.
    _, groups, output_error, scores_by = digits
    l1_error = output_error(uniform_plan(groups, scores_by("l1"), 0.25, PlanOptions()))
    error = output_error(uniform_plan(groups, scores_by(name), 0.25, PlanOptions()))
    assert error < 0.9 * l1_error


def test_thinet_scores_are_relative_errors(digits):
    # Each group of digits_cnn is its consumers' only input: removing every channel
    # removes the whole sampled output, a relative error of exactly 1.
    _, groups, _, scores_by = digits
    for group in groups:
        scores = scores_by("thinet")[group.id]
        assert scores.max() == pytest.approx(1.0, abs=1e-6)
        assert 0 <= scores.min() < 0.05


def test_sensitivity_follows_l1_within_a_group_and_ranks_globally(digits):
    analysis, groups, output_error, scores_by = digits
    for group in groups:
        order_l1 = np.argsort(scores_by("l1")[group.id], kind="stable")
        assert np.argsort(scores_by("sensitivity")[group.id], kind="stable").tolist() == order_l1.tolist()
    # Its scores are output errors, so global ranking spends the removals where they
    # hurt least: at 60% of the MACs, 0.83 relative L2 against l1's 1.29.
    cost_model = CostModel.of(analysis)
    errors = {}
    for name in ("l1", "sensitivity"):
        plan, _ = plan_for_target_macs(groups, scores_by(name), 0.6, PlanOptions(), cost_model, global_ranking=True)
        errors[name] = output_error(plan)
    assert errors["sensitivity"] < 0.8 * errors["l1"]


# --------------------------------------------------------------------------- other graphs


@pytest.mark.parametrize("model, names", [
    ("transformer_dynamo", DATA_CRITERIA),  # MatMul on 3-D tokens, LayerNorm groups
    ("mobilenetv3_torchscript", DATA_CRITERIA),  # depthwise convs, squeeze-excitation
    ("yolov8_dynamo", ("activation", "thinet", "lasso")),  # a tensor concatenated with itself
])
def test_data_criteria_run_on_exported_models(model, names):
    path = MODELS / f"{model}.onnx"
    analysis = analyze(path)
    groups = analysis.channels.prunable_groups()
    calibration = load_calibration("random", path, samples=4)
    for name in names:
        context = scoring_context(analysis, calibration, sensitivity_samples=2)
        scores = score_groups(context, name, groups)  # checks shape and finiteness
        assert set(scores) == {group.id for group in groups}
        assert not any("without a usable consumer" in note for note in context.notes), context.notes


def test_thinet_samples_real_tokens_only_when_padding_is_known():
    """Rows at padding are NaN here: a sampled one would poison the contributions."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6, 3))
    real = np.array([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], bool)
    x[~real] = np.nan
    sample = data_criteria._matrix_sampler(rng.standard_normal((3, 5)), transposed_input=False)
    z = sample(x, rng, real)
    assert np.isfinite(z).all()
    assert len(z) == 3 * data_criteria.POSITIONS_PER_IMAGE  # every sample with a real token gives its rows; the all-padding one none
    assert np.isnan(sample(x, rng, None)).any()  # without the mask padding is drawn too
