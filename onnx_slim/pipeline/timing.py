"""Short latency measurements that searches decide on: interleaved runs, the median kept.

A measurement whose runs spread too widely to repeat (`deploy.timing.NOISY_SPREAD`:
onnxruntime's threads contending on a busy machine) is extended by `RUNS` at a time up
to `MAX_RUNS`, and keeps its caveat for the report if it stays spread.

The searches call `timing.measure` through the module, so tests can replace the clock
with a deterministic one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import onnx

from onnx_slim.deploy.bench import latency_stats, timed_call
from onnx_slim.deploy.timing import noise_caveat, steady_timings
from onnx_slim.ir.runtime import SessionSpec, create_session

RUNS = 15  # enough for a stable median on a quiet CPU; a search times several candidates
MAX_RUNS = 60  # a spread measurement is extended by RUNS at a time up to this
WARMUP = 3


@dataclass(frozen=True)
class Measurement:
    """The median latency (ms) of each model timed, the runs each had, and the report's noise caveat."""

    p50: list[float]
    runs: int = RUNS
    noise: str | None = None  # None: the runs were steady enough to repeat


def measure(models: Sequence[onnx.ModelProto], feeds: Mapping, session: SessionSpec,
            runs: int = RUNS, warmup: int = WARMUP) -> Measurement:
    """Each model on `feeds`, timed interleaved (A B A B ...) so drift hits all alike; `runs` more
    rounds at a time while some model's runs spread widely, up to MAX_RUNS (or `runs`, if larger)."""
    sessions = [create_session(model, session) for model in models]
    timings = steady_timings([timed_call(opened, feeds) for opened in sessions], runs=runs, warmup=warmup,
                             max_runs=MAX_RUNS)
    stats = [latency_stats(times) for times in timings]
    return Measurement([entry["p50"] for entry in stats], runs=len(timings[0]), noise=noise_caveat(stats))
