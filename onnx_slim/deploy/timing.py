"""Timing runs of onnxruntime sessions: one call per run, interleaved across models, summarized.

On a provider with its own device memory (CUDA, TensorRT, DirectML) a run is
timed with its inputs already on the device and its outputs left there (I/O
binding), so what is timed is the model and not host-device copies, unless
`include_copies` asks for those too.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from onnx_slim.errors import UsageError
from onnx_slim.ir.progress import Advance
from onnx_slim.ir.runtime import SessionSpec, create_session

Feeds = Mapping[str, np.ndarray]

PERCENTILES = (50, 90, 95, 99)
# The slowest tenth of a model's runs over its fastest tenth (p90 / p10) above which its median is
# not repeatable: on a busy machine onnxruntime's threads contend with other processes and runs
# split into two speeds (khmersm: about 2 ms or about 14 ms; 15-run medians of the same model then
# gave speed-ups of 6.3x and 1.08x in identical commands). On a quiet 2-core machine the models in
# models/ and khmersm gave 1.02 to 1.7 (the high end: a 0.04 ms model, where timer and scheduler
# jitter count, and khmersm at 2 threads), with repeatable medians.
NOISY_SPREAD = 2.0
# The first runs on a GPU pick kernels (cuDNN's algorithm search, TensorRT's engine build)
# and raise the clocks: a device gets at least this many untimed runs.
DEVICE_WARMUP = 10


def interleaved_timings(
    runners: Sequence[Callable[[], object]],
    *,
    runs: int,
    warmup: int,
    clock: Callable[[], int] = time.perf_counter_ns,
    advance: Advance | None = None,
) -> list[list[float]]:
    """Milliseconds of `runs` calls of each runner: all warm-ups first, then A B A B ... rounds.

    `clock` returns nanoseconds (injectable for tests); `advance(len(runners))` is
    called after each round (a progress bar), outside the timed calls.
    """
    for runner in runners:
        for _ in range(warmup):
            runner()
    timings: list[list[float]] = [[] for _ in runners]
    for _ in range(runs):
        for index, runner in enumerate(runners):
            start = clock()
            runner()
            timings[index].append((clock() - start) / 1e6)
        if advance is not None:
            advance(len(runners))
    return timings


def steady_timings(
    runners: Sequence[Callable[[], object]], *, runs: int, warmup: int, max_runs: int,
) -> list[list[float]]:
    """`interleaved_timings`, extended by `runs` more rounds at a time while some runner's runs
    spread beyond NOISY_SPREAD, up to `max_runs` (or `runs`, if larger) in all."""
    timings = interleaved_timings(runners, runs=runs, warmup=warmup)
    while max(map(spread, timings)) > NOISY_SPREAD and len(timings[0]) + runs <= max(max_runs, runs):
        more = interleaved_timings(runners, runs=runs, warmup=0)
        timings = [before + after for before, after in zip(timings, more)]
    return timings


def latency_stats(latencies_ms: Sequence[float]) -> dict:
    """mean, min, max, the p50/p90/p95/p99 percentiles (numpy's linear interpolation), the spread
    (p90 / p10) and the number of runs."""
    values = np.asarray(latencies_ms, dtype=np.float64)
    if values.size == 0:
        raise UsageError("no latencies to summarize: runs must be at least 1")
    stats = {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max()),
             "spread": spread(values), "runs": int(values.size)}
    for percentile, value in zip(PERCENTILES, np.percentile(values, PERCENTILES)):
        stats[f"p{percentile}"] = float(value)
    return stats


def spread(latencies_ms: Sequence[float]) -> float:
    """p90 / p10 of one model's runs: 1.0 when every run takes the same time."""
    low, high = np.percentile(np.asarray(latencies_ms, dtype=np.float64), (10, 90))
    return float(high / low) if low > 0 else math.inf


def noise_caveat(stats: Sequence[Mapping[str, float]]) -> str | None:
    """A line for a report whose latencies (`latency_stats` of each model) come from runs too spread
    to repeat, else None."""
    widest = max(entry.get("spread", 1.0) for entry in stats)
    if widest <= NOISY_SPREAD:
        return None
    runs = min(int(entry.get("runs", 0)) for entry in stats)
    return (f"timings were noisy (over {runs} runs, the slowest tenth took {widest:.1f}x the fastest): "
            "speed-ups, and a choice between close candidates, may differ from run to run; --threads 1 or a "
            "quieter machine gives steadier figures")


def speedup(baseline_stats: Mapping[str, float], model_stats: Mapping[str, float]) -> dict:
    """Baseline latency / model latency, on the mean and on the median (p50)."""
    return {
        "mean": _ratio(baseline_stats["mean"], model_stats["mean"]),
        "p50": _ratio(baseline_stats["p50"], model_stats["p50"]),
    }


def _ratio(baseline_ms: float, model_ms: float) -> float:
    return baseline_ms / model_ms if model_ms > 0 else math.inf


def timed_session(
    source: str | os.PathLike | onnx.ModelProto, spec: SessionSpec
) -> tuple[ort.InferenceSession, float]:
    """A session and the milliseconds it took to create."""
    start = time.perf_counter_ns()
    session = create_session(source, spec)
    return session, (time.perf_counter_ns() - start) / 1e6


def timed_call(
    session: ort.InferenceSession,
    feeds: Feeds,
    device: tuple[str, int] | None = None,
    include_copies: bool = False,
) -> Callable[[], object]:
    """One run of `session` on `feeds`, as a call to time, with as little Python as possible.

    Without `device` (the CPU), or with `include_copies`, it is a bare
    `session.run` on host arrays: on a device provider onnxruntime then copies
    inputs in and outputs out on every run. With `device` (OrtValue device
    name, id) the inputs are copied to the device once, here, and the outputs
    are bound to the device, so a run moves no data between host and device.
    """
    if device is None or include_copies:
        output_names = [output.name for output in session.get_outputs()]
        feeds = dict(feeds)
        return lambda: session.run(output_names, feeds)
    name, device_id = device
    binding = session.io_binding()
    for input_name, value in feeds.items():
        binding.bind_ortvalue_input(input_name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value),
                                                                                 name, device_id))
    for output in session.get_outputs():
        binding.bind_output(output.name, name, device_id)

    def run() -> None:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()  # the run is over when its outputs are, not when it is queued

    return run
