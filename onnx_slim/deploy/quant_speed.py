"""Are the quantized models faster? The float model and every candidate timed interleaved on this machine.

Quantized is not always faster: on small HardSwish/SE mobile networks the ops
between Q/DQ pairs that do not fuse (HardSigmoid, Div, Mul) stay float and the
added QLinearMul/Add cost more than the int8 convolutions save.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import onnx

from onnx_slim.deploy.bench import latency_stats, timed_call
from onnx_slim.deploy.timing import steady_timings
from onnx_slim.ir.inputs import feeds_for
from onnx_slim.ir.runtime import SessionSpec, create_session

MEASURE_RUNS = 20
MAX_MEASURE_RUNS = 60  # runs too spread to repeat are extended up to this (`timing.steady_timings`)
MEASURE_WARMUP = 3


def measure_latencies(
    models: Mapping[str, onnx.ModelProto],
    feeds: Mapping[str, np.ndarray],
    *,
    runs: int = MEASURE_RUNS,
    warmup: int = MEASURE_WARMUP,
    session: SessionSpec = SessionSpec(),
) -> dict[str, dict]:
    """{name: stats} in milliseconds (see `bench.latency_stats`) for every model, timed A B C A B C ...
    (more rounds while they spread too widely to repeat).

    Each model gets `feeds` in the float type it declares (a float16 model without float32 inputs)."""
    runners = [timed_call(create_session(model, session), feeds_for(model, feeds)) for model in models.values()]
    timings = steady_timings(runners, runs=runs, warmup=warmup, max_runs=MAX_MEASURE_RUNS)
    return {name: latency_stats(times) for name, times in zip(models, timings)}
