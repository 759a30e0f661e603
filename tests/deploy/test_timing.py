"""Timed calls: a bare run on the CPU, inputs and outputs bound on the device otherwise."""

from __future__ import annotations

from graphs import conv_chain

from onnx_slim.deploy import timing
from onnx_slim.deploy.bench import benchmark
from onnx_slim.ir.inputs import random_inputs
from onnx_slim.ir.runtime import SessionSpec, create_session


def test_a_bound_call_runs_the_model_on_inputs_copied_once(monkeypatch):
    model = conv_chain((4,))
    session = create_session(model)
    feeds = random_inputs(model)
    copies = []
    real = timing.ort.OrtValue.ortvalue_from_numpy
    monkeypatch.setattr(timing.ort.OrtValue, "ortvalue_from_numpy",
                        lambda *args: copies.append(args[1:]) or real(*args))

    run = timing.timed_call(session, feeds, ("cpu", 0))  # the device path, with the CPU as the "device"
    for _ in range(3):
        run()

    assert copies == [("cpu", 0)] * len(feeds)  # once, at binding, not per run


def test_bench_on_a_device_warms_up_longer_and_says_where_it_ran(monkeypatch):
    monkeypatch.setattr(SessionSpec, "device", property(lambda spec: ("cpu", 0)))
    calls = []
    monkeypatch.setattr("onnx_slim.deploy.bench.timed_call",
                        lambda session, feeds, device, copies: calls.append((device, copies)) or (lambda: None))

    report = benchmark([conv_chain((4,))], runs=2, warmup=1, measure_memory=False)
    copies = benchmark([conv_chain((4,))], runs=2, warmup=1, measure_memory=False, include_copies=True)

    assert calls == [(("cpu", 0), False), (("cpu", 0), True)]
    assert (report.device, report.warmup, report.include_copies) == ("cpu:0", timing.DEVICE_WARMUP, False)
    assert "device cpu:0 (inputs and outputs bound on the device, host-device copies not timed)" in \
        report.to_markdown()
    assert copies.include_copies and "host-device copies timed (--include-copies)" in copies.to_markdown()
