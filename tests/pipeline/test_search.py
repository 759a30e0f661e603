"""The searches that measure candidates: a latency budget and the smallest model within a drop budget.

Timing and evaluation are replaced by deterministic functions of the candidate's MACs, so the
searches' logic is tested exactly; one end-to-end run uses the demo model and its held-out data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from graphs import conv_chain
from test_cli import run_cli

from onnx_slim.errors import OnnxSlimError
from onnx_slim.ir.runtime import SessionSpec
from onnx_slim.ops.cost import model_cost
from onnx_slim.pipeline import candidates, search, timing
from onnx_slim.pipeline.prune import prune

MODELS = Path(__file__).parents[2] / "models"


def model_fraction(model, original_macs: int) -> float:
    return model_cost(model).macs / original_macs


@pytest.fixture
def chain():
    return conv_chain((32, 32, 32), size=6)


@pytest.fixture
def affine_clock(monkeypatch, chain):
    """p50 = 10 ms x (0.2 + 0.8 x MACs fraction): speedup below the MACs ratio, as on a real CPU."""
    macs = model_cost(chain).macs
    calls = []

    def measure(models, feeds, session, **_):
        calls.append(len(models))
        return timing.Measurement([10.0 * (0.2 + 0.8 * model_fraction(model, macs)) for model in models])

    monkeypatch.setattr(timing, "measure", measure)
    return calls


def test_latency_search_lands_in_the_budget_window_and_lists_every_candidate(chain, affine_clock):
    pruned, report = prune(chain, target_latency=6.0, round_to=1)
    found = report.search
    assert found["kind"] == "latency" and found["original_ms"] == pytest.approx(10.0)
    chosen = [c for c in found["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and 5.7 <= chosen[0]["latency_ms"] <= 6.0 and chosen[0]["within_budget"]
    assert 2 <= len(found["candidates"]) <= search.LATENCY_CANDIDATES
    assert all({"macs_fraction", "latency_ms", "target_macs"} <= set(c) for c in found["candidates"])
    # The written model is the candidate that was timed: same MACs, same latency.
    final_ms = 10.0 * (0.2 + 0.8 * report.macs_fraction)
    assert final_ms == pytest.approx(chosen[0]["latency_ms"]) and 5.7 <= final_ms <= 6.0
    assert report.latency_ms["original"] == pytest.approx(10.0) and report.latency_ms["speedup"] > 1.6


def test_unreachable_latency_names_the_best_reached(chain, affine_clock):
    with pytest.raises(OnnxSlimError, match=r"target latency 1 ms is out of reach: the smallest model .* runs in "
                                            r"2\.\d+ ms \(original 10 ms"):
        prune(chain, target_latency=1.0, round_to=1)


def test_original_already_under_the_budget_is_kept_whole(chain, affine_clock):
    pruned, report = prune(chain, target_latency=50.0, round_to=1)
    assert report.channels_removed == 0 and "nothing removed" in report.search["note"]


def test_latency_search_refits_only_the_chosen_candidate(chain, affine_clock, monkeypatch):
    from onnx_slim.data.calibration import load_calibration

    refits = []
    real = candidates.reconstruct
    monkeypatch.setattr(candidates, "reconstruct", lambda *args, **kwargs: refits.append(1) or real(*args, **kwargs))
    _, report = prune(chain, target_latency=6.0, round_to=1, reconstruct=True,
                      calibration=load_calibration("random", chain))
    assert len(report.search["candidates"]) >= 2 and len(refits) == 1
    assert report.reconstruction is not None


def test_latency_search_with_auto_rounding_keeps_the_rounding_it_measured(chain, affine_clock):
    _, report = prune(chain, target_latency=6.0, round_to="auto")
    assert report.rounding["chosen"] == report.round_to == report.search["round_to"]
    assert {c["round_to"] for c in report.search["candidates"]} == {report.round_to}


class StepPruner:
    """A pruner whose plans keep only the MACs fractions in `levels` (whole attention heads make such
    steps), the nearest to the target as the planner picks; a candidate's p50 is 10 ms x (0.2 + 0.8 x
    MACs) and the original's `original_ms` (timed slower than the candidates' line: call overhead)."""

    def __init__(self, levels: list[float], original_ms: float):
        self.levels, self.original_ms = levels, original_ms
        self.model, self.timing_inputs, self.say = "original", None, lambda message: None
        self.settings = SimpleNamespace(session=SessionSpec(threads=1), round_to=1, min_channels=1)

    def plan(self, *, target_macs: float, round_to: int = 1) -> candidates.Candidate:
        kept = min(self.levels, key=lambda level: abs(level - target_macs))
        return candidates.Candidate({"layer": [kept]}, 1 - kept, round_to, kept)

    def smallest_fraction(self, round_to: int) -> float:
        return min(self.levels)

    def pruned_copy(self, candidate: candidates.Candidate) -> float:
        return candidate.macs_fraction

    def measure(self, models, feeds, session, **_):
        return timing.Measurement([self.original_ms if model == "original" else 10 * (0.2 + 0.8 * model)
                                   for model in models])


@pytest.mark.parametrize("original_ms, budget, best", [(10, 5.0, 0.3), (10, 3.5, 0.15), (12, 4.0, 0.2),
                                                        (12, 5.0, 0.3)])
def test_latency_search_steps_past_a_plan_already_timed(monkeypatch, original_ms, budget, best):
    # Targets between two steps land on the nearest plan, often one already timed: the search
    # stopped there and called the budget out of reach (a 4-layer, 8-head BERT encoder at 0.56 x
    # its p50 after 2 candidates), though the next step down met it.
    levels = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4, 0.3, 0.2, 0.15, 0.1]
    pruner = StepPruner(levels, original_ms)
    monkeypatch.setattr(timing, "measure", pruner.measure)
    choice = search.search_latency(pruner, budget)
    assert choice.candidate.macs_fraction == best  # the least-pruned step under the budget
    timed = [c["macs_fraction"] for c in choice.search["candidates"]]
    assert len(timed) == len(set(timed)) and best in timed


@pytest.fixture
def drop_by_macs(monkeypatch, chain):
    """Top-1 disagreement (points) = 20 x (0.45 - MACs fraction) below 0.45, else 0."""
    macs = model_cost(chain).macs

    def evaluate(original, candidate, data, **_):
        drop = max(0.0, 0.45 - model_fraction(candidate, macs)) * 20
        return {"samples": 100, "agreement": {"top1": 1 - drop / 100, "cosine": 0.99}}

    monkeypatch.setattr(search, "evaluate", evaluate)


def test_auto_macs_picks_the_smallest_passing_candidate(chain, drop_by_macs):
    _, report = prune(chain, target_macs="auto", max_drop=1.0, eval_data=SimpleNamespace(description="fake"),
                      round_to=1)
    curve = report.search["candidates"]
    passing = [point for point in curve if point["passed"]]
    assert [point["target_macs"] for point in curve[:6]] == [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    assert any(not point["passed"] for point in curve)
    chosen = min(passing, key=lambda point: point["macs_fraction"])
    assert chosen["chosen"] and report.search["chosen_macs_fraction"] == chosen["macs_fraction"]
    # Pass means MACs >= 0.40; bisection gets within 0.0125 (plus the planner's 2%) of that edge.
    assert 0.39 <= report.macs_fraction <= 0.4125 + 0.02
    assert all(point["drop"] <= 1.0 for point in passing)
    assert all(point["metric"]["name"] == "top-1 agreement" for point in curve)


def test_auto_macs_with_no_passing_candidate_is_an_error(chain, monkeypatch):
    monkeypatch.setattr(search, "evaluate", lambda *a, **k: {"samples": 10, "agreement": {"top1": 0.5, "cosine": 0.9}})
    with pytest.raises(OnnxSlimError, match="no pruned model keeps the drop within 1 points"):
        prune(chain, target_macs="auto", max_drop=1.0, eval_data=SimpleNamespace(description="fake"), round_to=1)


@pytest.mark.parametrize("args, message", [
    (["--target-macs", "auto", "--eval", "DATA"], "--target-macs auto needs --max-drop"),
    (["--target-macs", "auto", "--max-drop", "1"], "--target-macs auto needs --eval"),
    (["--target-macs", "auto", "--max-drop", "1", "--eval", "DATA", "--ratio", "0.5"], "exactly one"),
    (["--target-macs", "auto", "--max-drop", "1", "--eval", "DATA", "--target-latency", "3"], "exactly one"),
    (["--target-macs", "0.5", "--max-drop", "1"], "--max-drop chooses the model only with --target-macs auto"),
    (["--target-latency", "0"], "target latency must be a positive number"),
    (["--target-macs", "half"], "neither a number nor 'auto'"),
])
def test_search_usage_errors_exit_2(capsys, tmp_path, args, message):
    model = tmp_path / "digits_cnn.onnx"
    shutil.copy(MODELS / "digits_cnn.onnx", model)
    args = [str(MODELS / "digits_test.npz") if arg == "DATA" else arg for arg in args]
    code, _, stderr = run_cli(capsys, "prune", model, "-o", tmp_path / "o.onnx", "--quiet", *args)
    assert code == 2 and stderr.startswith("error: ") and message in stderr and len(stderr.splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("args, message", [
    (["--target-macs", "auto", "--max-drop", "1", "--target-latency", "3"], "are alternatives: give one"),
    (["--target-macs", "auto", "--ratio", "0.5"], "are alternatives: give one"),
])
def test_run_search_usage_errors_exit_2(capsys, tmp_path, args, message):
    model = tmp_path / "digits_cnn.onnx"
    shutil.copy(MODELS / "digits_cnn.onnx", model)
    code, _, stderr = run_cli(capsys, "run", model, "-o", tmp_path / "out", "--quiet", *args)
    assert code == 2 and message in stderr and not (tmp_path / "out").exists()


def test_run_auto_macs_without_eval_is_a_usage_error(capsys, tmp_path):
    model = tmp_path / "digits_cnn.onnx"
    shutil.copy(MODELS / "digits_cnn.onnx", model)
    code, _, stderr = run_cli(capsys, "run", model, "-o", tmp_path / "out", "--target-macs", "auto",
                              "--max-drop", "1", "--quiet")
    assert code == 2 and "target-macs auto needs max-drop" in stderr and "eval" in stderr


def test_run_reports_the_latency_search(capsys, tmp_path, monkeypatch):
    model = tmp_path / "digits_cnn.onnx"
    shutil.copy(MODELS / "digits_cnn.onnx", model)
    macs = model_cost(model_from(model)).macs
    monkeypatch.setattr(timing, "measure", lambda models, feeds, session, **_: timing.Measurement([
        2.0 * (0.2 + 0.8 * model_fraction(m, macs)) for m in models]))
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, "run", model, "-o", out, "--target-latency", "1.2", "--quantize", "none",
                              "--runs", "3", "--warmup", "1", "--no-memory", "--quiet", "--json")
    assert code == 0
    found = json.loads(stdout)["prune"]["search"]
    chosen = next(c for c in found["candidates"] if c["chosen"])
    assert 1.14 <= chosen["latency_ms"] <= 1.2
    markdown = (out / "report.md").read_text()
    assert "## Search: every candidate measured" in markdown and "latency search: budget 1.2 ms" in markdown


def model_from(path):
    from onnx_slim.ir.model import load_model

    return load_model(path)


def test_auto_macs_end_to_end_on_the_demo_model(capsys, tmp_path):
    """The real evaluator on the demo's held-out split: the chosen model's measured drop is within budget."""
    for name in ("digits_cnn.onnx", "digits_test.npz"):
        shutil.copy(MODELS / name, tmp_path / name)
    code, stdout, _ = run_cli(capsys, "prune", tmp_path / "digits_cnn.onnx", "-o", tmp_path / "o.onnx",
                              "--target-macs", "auto", "--max-drop", "2", "--eval", tmp_path / "digits_test.npz",
                              "--round-to", "8", "--json", "--quiet")
    assert code == 0
    report = json.loads(stdout)
    curve = report["search"]["candidates"]
    chosen = next(point for point in curve if point["chosen"])
    assert chosen["passed"] and chosen["metric"]["name"] == "accuracy"
    assert all(point["macs_fraction"] >= chosen["macs_fraction"] for point in curve if point["passed"])
    assert report["evaluation"]["accuracy_drop_points"] <= 2.0  # measured again on the written model
    assert abs(report["macs_fraction"] - chosen["macs_fraction"]) < 0.01


def test_latency_search_on_a_model_with_nothing_prunable_is_a_clear_error(chain, affine_clock):
    with pytest.raises(OnnxSlimError, match=r"target latency 6 ms is out of reach: the smallest model .*MACs 1\.000"):
        prune(chain, target_latency=6.0, round_to="auto", exclude=["*"])
