"""The OBS criterion: its greedy path is the least-squares re-fit's error, exactly, and it beats
ranking by contribution when channels can stand in for each other."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_slim.channels.analysis import analyze
from onnx_slim.channels.groups import Member
from onnx_slim.criteria import CRITERIA, ScoringContext, score_groups
from onnx_slim.criteria import obs as obs_module
from onnx_slim.data.calibration import CalibrationSet, load_calibration

MODELS = Path(__file__).resolve().parents[2] / "models"


def refit_error(x: np.ndarray, w: np.ndarray, kept: list[int]) -> float:
    """||X W - X_K W*||^2 / ||X W||^2 with W* the least-squares weights on the kept features."""
    target = x @ w
    if not kept:
        return 1.0
    solution, *_ = np.linalg.lstsq(x[:, kept], target, rcond=None)
    return float(np.square(target - x[:, kept] @ solution).sum() / np.square(target).sum())


def correlated_inputs(rng, rows=400, channels=6):
    base = rng.standard_normal((rows, 3))
    mix = rng.standard_normal((3, channels))
    return base @ mix + 0.05 * rng.standard_normal((rows, channels))  # channels nearly interchangeable


def block(x: np.ndarray, w: np.ndarray, monkeypatch) -> obs_module._Block:
    monkeypatch.setattr(obs_module, "DAMPING", 1e-12)
    consumer = obs_module._Consumer(node=None, matrix=w, kernel=[], gram=x.T @ x, rows=len(x))
    return obs_module._Block.of(consumer, Member(use=None, offset=0, repeat=1), w.shape[0])


def test_each_step_costs_exactly_the_refit_error_of_the_channels_removed_so_far(monkeypatch):
    rng = np.random.default_rng(0)
    x, w = correlated_inputs(rng), rng.standard_normal((6, 4))

    order, errors = obs_module.obs_greedy([block(x, w, monkeypatch)])

    assert sorted(order.tolist()) == list(range(6))
    for step in range(5):
        kept = sorted(set(range(6)) - set(order[: step + 1].tolist()))
        assert errors[step] == pytest.approx(refit_error(x, w, kept), rel=1e-6, abs=1e-9)


def test_the_first_choice_is_the_best_single_channel_and_two_steps_beat_thinet_order(monkeypatch):
    rng = np.random.default_rng(1)
    x, w = correlated_inputs(rng), rng.standard_normal((6, 4))

    order, _ = obs_module.obs_greedy([block(x, w, monkeypatch)])

    singles = {c: refit_error(x, w, [k for k in range(6) if k != c]) for c in range(6)}
    assert order[0] == min(singles, key=singles.get)  # enumerated: optimal for one channel
    # Two channels: within the best pair's error (greedy is not always optimal, here it is close).
    pairs = {pair: refit_error(x, w, [k for k in range(6) if k not in pair]) for pair in itertools.combinations(range(6), 2)}
    greedy_pair = refit_error(x, w, sorted(set(range(6)) - set(order[:2].tolist())))
    assert greedy_pair <= 1.5 * min(pairs.values()) + 1e-9
    # Ranking by contribution alone (ThiNet's first step: smallest ||x_c w_c||) re-fits worse here.
    contribution = [float(np.square(np.outer(x[:, c], w[c])).sum()) for c in range(6)]
    thinet_first = int(np.argmin(contribution))
    assert singles[order[0]] <= singles[thinet_first]


def test_removing_channels_together_leaves_the_least_squares_weights_of_the_kept_ones(monkeypatch):
    rng = np.random.default_rng(4)
    x, w = correlated_inputs(rng), rng.standard_normal((6, 4))
    path = block(x, w, monkeypatch)

    path.remove(np.array([1, 4]))

    kept = [0, 2, 3, 5]
    solution, *_ = np.linalg.lstsq(x[:, kept], x @ w, rcond=None)
    np.testing.assert_allclose(path.weight[path.row[kept]], solution, rtol=1e-6, atol=1e-8)
    assert path.row[[1, 4]].tolist() == [-1, -1] and path.weight.shape[0] == 4  # dropped: 2 of 6 >= 1/8


def test_dropping_removed_features_from_the_matrices_leaves_the_path_unchanged(monkeypatch):
    """The compaction is exact: the same order and errors as keeping every zeroed row, on a conv-like
    consumer (several features per channel) with an intercept, across many drops."""
    rng = np.random.default_rng(6)
    x = np.hstack([correlated_inputs(rng, channels=24), np.ones((400, 1))])
    w = rng.standard_normal((24, 5))
    consumer = obs_module._Consumer(node=None, matrix=w, kernel=[], gram=x.T @ x, rows=len(x))
    member = Member(use=None, offset=0, repeat=2)  # 12 channels of 2 features each

    paths = {}
    for share in (obs_module.COMPACT_SHARE, np.inf):
        monkeypatch.setattr(obs_module, "COMPACT_SHARE", share)
        paths[share] = obs_module.obs_greedy([obs_module._Block.of(consumer, member, 12)])

    (order, errors), (order_full, errors_full) = paths.values()
    assert order.tolist() == order_full.tolist()
    np.testing.assert_allclose(errors, errors_full, rtol=1e-9, atol=1e-12)


def test_updates_kept_pending_and_folded_together_give_the_exact_refit_error_at_every_step(monkeypatch):
    """A conv-like consumer (3 features per channel) over a path long enough to fold the pending
    updates into the inverse several times: each step still costs exactly what the re-fit leaves."""
    rng = np.random.default_rng(7)
    channels, taps = 30, 3
    x, w = correlated_inputs(rng, rows=600, channels=channels * taps), rng.standard_normal((channels * taps, 5))
    monkeypatch.setattr(obs_module, "DAMPING", 1e-12)
    monkeypatch.setattr(obs_module, "COMPACT_SHARE", np.inf)  # folds only, no drops: the factors do it all
    consumer = obs_module._Consumer(node=None, matrix=w, kernel=[taps], gram=x.T @ x, rows=len(x))
    path = obs_module._Block.of(consumer, Member(use=None, offset=0, repeat=1), channels)
    folds = []
    fold = path._fold
    monkeypatch.setattr(path, "_fold", lambda: (folds.append(path.rank), fold()))

    order, errors = obs_module.obs_greedy([path])

    assert sum(rank > 0 for rank in folds) >= 2
    for step in range(channels - 1):
        kept = [c * taps + t for c in sorted(set(range(channels)) - set(order[: step + 1].tolist())) for t in range(taps)]
        assert errors[step] == pytest.approx(refit_error(x, w, kept), rel=1e-6, abs=1e-9)


def test_a_group_wider_than_the_step_limit_removes_its_cheapest_channels_a_few_at_a_time(monkeypatch):
    rng = np.random.default_rng(5)
    x, w = correlated_inputs(rng, channels=9), rng.standard_normal((9, 4))
    monkeypatch.setattr(obs_module, "MAX_STEPS", 3)  # 3 channels per step
    first_costs = block(x, w, monkeypatch).costs(np.arange(9))

    order, errors = obs_module.obs_greedy([block(x, w, monkeypatch)])

    assert sorted(order.tolist()) == list(range(9))
    assert set(order[:3].tolist()) == set(np.argsort(first_costs)[:3].tolist())
    assert np.all(np.diff(errors) >= 0)
    # The first step's channels together cost about what their re-fit leaves (not exactly: their
    # costs are summed, each priced as if removed alone).
    kept = sorted(set(range(9)) - set(order[:3].tolist()))
    assert errors[2] == pytest.approx(refit_error(x, w, kept), rel=0.5)


def test_with_the_intercept_each_step_costs_the_refit_error_with_a_fitted_bias(monkeypatch):
    """Rows from the scoring path carry a constant feature: the path then prices what a re-fit with
    an intercept leaves, and a channel that is mostly its mean (a ReLU's output) costs little."""
    rng = np.random.default_rng(2)
    x = correlated_inputs(rng)
    x[:, 2] = 3.0 + 0.01 * rng.standard_normal(len(x))  # nearly constant: the bias stands in for it
    w = rng.standard_normal((6, 4))
    rows = np.hstack([x, np.ones((len(x), 1))])
    monkeypatch.setattr(obs_module, "DAMPING", 1e-12)
    consumer = obs_module._Consumer(node=None, matrix=w, kernel=[], gram=rows.T @ rows, rows=len(x))

    order, errors = obs_module.obs_greedy([obs_module._Block.of(consumer, Member(use=None, offset=0, repeat=1), 6)])

    def refit_with_bias(kept):
        solution, *_ = np.linalg.lstsq(rows[:, kept + [6]], x @ w, rcond=None)
        return float(np.square(x @ w - rows[:, kept + [6]] @ solution).sum() / np.square(x @ w).sum())

    assert order[0] == 2
    for step in range(5):
        kept = sorted(set(range(6)) - set(order[: step + 1].tolist()))
        assert errors[step] == pytest.approx(refit_with_bias(kept), rel=1e-5, abs=1e-9)
    assert refit_error(x, w, [0, 1, 3, 4, 5]) > 10 * errors[0]  # without the bias it would cost far more


def mlp(rng):
    w1, w2 = rng.standard_normal((8, 12)).astype(np.float32), rng.standard_normal((12, 5)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc2")],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_registered_and_scores_every_group_of_a_real_model():
    assert CRITERIA["obs"].needs_calibration
    analysis = analyze(MODELS / "digits_cnn.onnx")
    groups = analysis.channels.prunable_groups()
    calibration = load_calibration(MODELS / "digits_calib.npz", analysis.model).take(64)
    context = ScoringContext(analysis.model, analysis.channels, analysis.normalize_info.bn_scales,
                             calibration=calibration)
    scores = score_groups(context, "obs", groups)
    assert set(scores) == {group.id for group in groups}
    assert all(np.all(np.diff(np.sort(s)) >= 0) and s.min() >= 0 for s in scores.values())


def test_the_lowest_scores_are_the_channels_whose_removal_the_refit_makes_up_best():
    rng = np.random.default_rng(2)
    model = mlp(rng)
    analysis = analyze(model)
    [group] = analysis.channels.prunable_groups()
    samples = rng.standard_normal((300, 8)).astype(np.float32)
    context = ScoringContext(analysis.model, analysis.channels, calibration=CalibrationSet({"x": samples}))

    scores = score_groups(context, "obs", [group])[group.id]

    w1 = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    w2 = numpy_helper.to_array(model.graph.initializer[1]).astype(np.float64)
    hidden = np.maximum(samples.astype(np.float64) @ w1, 0)
    errors = {c: refit_error(hidden, w2, [k for k in range(12) if k != c]) for c in range(12)}
    assert int(np.argmin(scores)) == min(errors, key=errors.get)


def test_the_widest_consumers_are_left_out_when_all_grams_would_pass_the_budget(monkeypatch):
    rng = np.random.default_rng(3)
    model = mlp(rng)  # fc2 reads 12 features: a Gram of 13 x 13
    analysis = analyze(model)
    [group] = analysis.channels.prunable_groups()
    samples = rng.standard_normal((64, 8)).astype(np.float32)
    context = ScoringContext(analysis.model, analysis.channels, calibration=CalibrationSet({"x": samples}))
    monkeypatch.setattr(obs_module, "GRAM_BUDGET_BYTES", 8 * 13 * 13 - 1)

    scores = score_groups(context, "obs", [group])

    assert set(scores) == {group.id}
    assert any(note.startswith("obs: 1 group(s) without a usable consumer ranked by thinet") for note in context.notes)


def test_a_group_read_only_by_a_grouped_conv_ranks_by_thinet_and_says_so():
    from graphs import Graph

    g = Graph(seed=3)
    h = g.relu(g.conv(g.input("x", ["N", 3, 8, 8]), 16, name="dense_in"))
    h = g.relu(g.conv(h, 12, group=4, name="grouped"))
    model = g.build(g.conv(h, 5, name="dense_out"))
    analysis = analyze(model)
    groups = analysis.channels.prunable_groups()
    samples = np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)
    context = ScoringContext(analysis.model, analysis.channels, calibration=CalibrationSet({"x": samples}))

    scores = score_groups(context, "obs", groups)

    assert set(scores) == {group.id for group in groups}
    assert any(note.startswith("obs: 1 group(s) without a usable consumer ranked by thinet") for note in context.notes)


def test_rows_are_drawn_among_real_tokens_only_when_padding_is_known(monkeypatch):
    """Rows at padding are NaN here: a sampled one would poison the Gram."""
    monkeypatch.setattr(obs_module, "ROWS_PER_IMAGE", 2)  # fewer rows than real tokens: a draw among them
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6, 3))
    real = np.array([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]], bool)
    x[~real] = np.nan
    consumer = obs_module._Consumer(node=helper.make_node("MatMul", ["x", "w"], ["y"]), matrix=np.ones((3, 2)),
                                    kernel=[])

    rows, picked = obs_module._design_rows(consumer, x, rng, np.flatnonzero(real))

    assert rows.shape == (8, 3) and np.isfinite(rows).all()
    assert set(picked) <= set(np.flatnonzero(real))
    np.testing.assert_array_equal(rows, x.reshape(-1, 3)[picked])  # the indices name the rows drawn
    drawn_with_padding = obs_module._design_rows(consumer, x, np.random.default_rng(1))[0]
    assert np.isnan(drawn_with_padding).any()  # without the mask padding is drawn too
