"""`--round-to auto`: the roundings of one plan are timed and the fastest kept; an explicit value wins."""

from __future__ import annotations

import json

from graphs import conv_chain
from test_cli import demo, run_cli  # noqa: F401 (a fixture)

from onnx_slim.ir.model import load_model
from onnx_slim.pipeline import timing
from onnx_slim.pipeline.prune import prune
from onnx_slim.pipeline.rounding import ROUNDINGS


def filters(model) -> list[int]:
    """Filter counts of the hidden convs (conv_out keeps its 2 outputs)."""
    return [init.dims[0] for init in model.graph.initializer if init.name.endswith("_w") and init.name != "conv_out_w"]


def clock_favouring(monkeypatch, multiple: int):
    """The original takes 4 ms; a candidate 1 ms when every hidden conv keeps a multiple of
    `multiple` filters, else 3 ms."""
    def measure(models, feeds, session, **_):
        original, *candidates = models
        return timing.Measurement([4.0] + [1.0 if all(n % multiple == 0 for n in filters(model)) else 3.0
                                           for model in candidates])

    monkeypatch.setattr(timing, "measure", measure)


def test_auto_keeps_the_measured_fastest(monkeypatch):
    clock_favouring(monkeypatch, 32)
    model = conv_chain((64, 64), size=6)  # at half the MACs: 1 keeps [45, 45], 8 [48, 40], 32 [32, 64]
    pruned, report = prune(model, target_macs=0.5, round_to="auto")
    timed = {c["round_to"]: c["latency_ms"] for c in report.rounding["candidates"]}
    assert timed == {1: 3.0, 8: 3.0, 32: 1.0}
    assert report.rounding["chosen"] == report.round_to == 32 and all(n % 32 == 0 for n in filters(pruned))
    assert report.latency_ms == {"original": 4.0, "pruned": 1.0, "speedup": 4.0}
    # Every rounding kept was planned for the same MACs: the comparison is of speed, not size;
    # 16 misses them (0.576) and the notes say so.
    assert all(abs(c["macs_fraction"] - 0.5) <= 0.02 for c in report.rounding["candidates"])
    assert any(note.startswith("round-to 16: keeps 0.576") for note in report.rounding["notes"])


def test_auto_gives_ties_to_the_finer_rounding(monkeypatch):
    clock_favouring(monkeypatch, 8)  # 8 and 32 both run in 1 ms
    pruned, report = prune(conv_chain((64, 64), size=6), target_macs=0.5, round_to="auto")
    assert report.round_to == 8 and filters(pruned) == [48, 40]


def test_auto_with_a_ratio_compares_roundings_at_the_exact_plans_macs(monkeypatch):
    clock_favouring(monkeypatch, 8)
    model = conv_chain((64, 64), size=6)
    exact, _ = prune(model, ratio=0.45, round_to=1)
    pruned, report = prune(model, ratio=0.45, round_to="auto")
    first = report.rounding["candidates"][0]
    assert first["round_to"] == 1 and filters(exact) == [64 - int(64 * 0.45)] * 2
    assert all(abs(c["macs_fraction"] - first["macs_fraction"]) <= 0.02 for c in report.rounding["candidates"])
    fastest = min(c["latency_ms"] for c in report.rounding["candidates"])
    assert fastest == 1.0 and report.round_to > 1 and all(n % 8 == 0 for n in filters(pruned))


def test_explicit_round_to_wins_and_times_nothing(monkeypatch):
    def no_timing(*args, **kwargs):
        raise AssertionError("an explicit --round-to must not time candidates")

    monkeypatch.setattr(timing, "measure", no_timing)
    pruned, report = prune(conv_chain((64, 64), size=6), target_macs=0.5, round_to=8)
    assert report.round_to == 8 and report.rounding is None and report.latency_ms is None
    assert all(n % 8 == 0 for n in filters(pruned))


def test_prune_command_measures_the_rounding_by_default(capsys, demo, tmp_path):  # noqa: F811
    code, stdout, _ = run_cli(capsys, "prune", demo, "-o", tmp_path / "a.onnx", "--target-macs", "0.5",
                              "--threads", "1", "--json", "--quiet")
    assert code == 0
    report = json.loads(stdout)
    assert report["rounding"]["chosen"] in ROUNDINGS and report["round_to"] == report["rounding"]["chosen"]
    assert report["latency_ms"]["speedup"] > 0
    code, stdout, _ = run_cli(capsys, "prune", demo, "-o", tmp_path / "b.onnx", "--target-macs", "0.5",
                              "--threads", "1", "--quiet")
    assert code == 0
    lines = stdout.splitlines()
    macs_row = next(index for index, line in enumerate(lines) if line.startswith("MACs"))
    assert lines[macs_row + 1].startswith("p50 latency") and "x faster" in lines[macs_row + 1]
    assert "rounding: round-to" in stdout


def test_prune_command_explicit_round_to_is_kept(capsys, demo, tmp_path):  # noqa: F811
    code, stdout, _ = run_cli(capsys, "prune", demo, "-o", tmp_path / "a.onnx", "--target-macs", "0.5",
                              "--round-to", "8", "--json", "--quiet")
    report = json.loads(stdout)
    assert code == 0 and report["round_to"] == 8 and report["rounding"] is None
    pruned = load_model(tmp_path / "a.onnx")
    assert all(init.dims[0] % 8 == 0 for init in pruned.graph.initializer
               if len(init.dims) == 4 and init.dims[0] != 10)


def test_round_to_must_be_a_whole_number_or_auto(capsys, demo, tmp_path):  # noqa: F811
    code, _, stderr = run_cli(capsys, "prune", demo, "-o", tmp_path / "a.onnx", "--target-macs", "0.5",
                              "--round-to", "eight", "--quiet")
    assert code == 2 and "neither a whole number nor 'auto'" in stderr


def test_a_near_tie_is_said_to_be_one(monkeypatch):
    """Round-to 8 kept at 1.02 ms beside 32 at 1.00 ms read 'the fastest of those timed'."""
    def measure(models, feeds, session, **_):
        original, *candidates = models
        return timing.Measurement([4.0] + [1.0 if all(n % 32 == 0 for n in filters(model)) else
                                           1.02 if all(n % 8 == 0 for n in filters(model)) else 3.0
                                           for model in candidates])

    monkeypatch.setattr(timing, "measure", measure)
    _, report = prune(conv_chain((64, 64), size=6), target_macs=0.5, round_to="auto")
    assert report.round_to == 8 and report.rounding["why"] == "the finest within 3% of the fastest"
    assert any(line.startswith("rounding: round-to 8, the finest within 3% of the fastest (")
               for line in report.choice_lines())
