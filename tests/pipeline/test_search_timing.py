"""Searches' latency measurements: extended while the runs spread too widely to repeat, and caveated if they stay so."""

from __future__ import annotations

import pytest
from graphs import conv_chain

from onnx_slim.deploy import bench as bench_module
from onnx_slim.deploy import timing as deploy_timing
from onnx_slim.ir.inputs import random_inputs
from onnx_slim.ir.runtime import SessionSpec
from onnx_slim.pipeline import timing


def fake_runs(monkeypatch, module, pattern):
    """interleaved_timings of `module` returning, for each model, `pattern` repeated over the runs asked."""
    rounds = []

    def interleaved_timings(runners, *, runs, warmup, **_):
        rounds.append(runs)
        return [[pattern[i % len(pattern)] * (1 + index) for i in range(runs)] for index in range(len(runners))]

    monkeypatch.setattr(module, "interleaved_timings", interleaved_timings)
    return rounds


def measure(models):
    return timing.measure(models, random_inputs(models[0], batch=1), SessionSpec(threads=1))


def test_steady_runs_are_timed_once_without_a_caveat(monkeypatch):
    rounds = fake_runs(monkeypatch, deploy_timing, [1.0, 1.05, 0.98])
    model = conv_chain((8, 8), size=6)

    measured = measure([model, model])

    assert rounds == [timing.RUNS] and measured.runs == timing.RUNS and measured.noise is None
    assert measured.p50 == [1.0, 2.0]


def test_runs_in_two_speeds_are_extended_to_the_limit_and_caveated(monkeypatch):
    # khmersm on a busy 2-core machine: its runs took about 2 ms or about 14 ms.
    rounds = fake_runs(monkeypatch, deploy_timing, [2.0, 14.0])
    model = conv_chain((8, 8), size=6)

    measured = measure([model, model])

    assert sum(rounds) == measured.runs == timing.MAX_RUNS
    assert "timings were noisy" in measured.noise and f"over {timing.MAX_RUNS} runs" in measured.noise
    assert "7.0x" in measured.noise


def test_bench_notes_noisy_timings(monkeypatch):
    fake_runs(monkeypatch, bench_module, [2.0, 14.0])
    report = bench_module.benchmark([conv_chain((8, 8), size=6)], runs=10, warmup=1, measure_memory=False)
    assert any(note.startswith("timings were noisy") for note in report.notes)
    assert "timings were noisy" in report.to_markdown()


@pytest.mark.parametrize("noise", [None, "timings were noisy (...)"])
def test_the_rounding_line_names_its_runs_and_any_noise(monkeypatch, noise):
    from onnx_slim.pipeline.prune import prune

    monkeypatch.setattr(timing, "measure", lambda models, feeds, session, **_: timing.Measurement(
        [4.0] + [1.0] * (len(models) - 1), runs=30, noise=noise))
    _, report = prune(conv_chain((64, 64), size=6), target_macs=0.5, round_to="auto")

    lines = report.choice_lines()
    assert any(line.startswith("rounding:") and "p50 of 30 runs" in line for line in lines)
    assert any(line.startswith("measured p50") for line in lines)
    assert not any(line.startswith("measured p50") for line in report.choice_lines(speedup=False))
    assert any(line == f"timing: {noise}" for line in lines) == (noise is not None)
