"""Short latency measurements that searches decide on: a few interleaved runs, the median kept.

The searches call `timing.p50_latencies` through the module, so tests can replace the clock
with a deterministic one.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import onnx

from onnx_slim.deploy.bench import interleaved_timings, latency_stats, timed_call
from onnx_slim.ir.runtime import SessionSpec, create_session

RUNS = 15  # enough for a stable median on a quiet CPU; a search times several candidates
WARMUP = 3


def p50_latencies(models: Sequence[onnx.ModelProto], feeds: Mapping, session: SessionSpec,
                  runs: int = RUNS, warmup: int = WARMUP) -> list[float]:
    """Median latency (ms) of each model on `feeds`, timed interleaved (A B A B ...) so drift hits all alike."""
    sessions = [create_session(model, session) for model in models]
    timings = interleaved_timings([timed_call(opened, feeds) for opened in sessions], runs=runs, warmup=warmup)
    return [latency_stats(times)["p50"] for times in timings]
