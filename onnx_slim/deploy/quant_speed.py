"""Is the int8 model faster? Both models timed interleaved on this machine, and the keep-or-drop decision.

Int8 is not always faster: on small HardSwish/SE mobile networks the ops
between Q/DQ pairs that do not fuse (HardSigmoid, Div, Mul) stay float and the
added QLinearMul/Add cost more than the int8 convolutions save.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import onnx

from onnx_slim.deploy.bench import interleaved_timings, latency_stats, timed_call
from onnx_slim.ir.runtime import SessionSpec, create_session

MEASURE_RUNS = 20
MEASURE_WARMUP = 3


def measure_latency(
    float_model: onnx.ModelProto,
    quantized_model: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    *,
    runs: int = MEASURE_RUNS,
    warmup: int = MEASURE_WARMUP,
    session: SessionSpec = SessionSpec(),
) -> dict[str, dict]:
    """{"float": stats, "int8": stats} in milliseconds (see `bench.latency_stats`), timed A B A B ..."""
    runners = [timed_call(create_session(model, session), feeds) for model in (float_model, quantized_model)]
    float_times, int8_times = interleaved_timings(runners, runs=runs, warmup=warmup)
    return {"float": latency_stats(float_times), "int8": latency_stats(int8_times)}


@dataclass(frozen=True)
class Decision:
    kept: str  # "int8" or "float"
    reason: str
    warning: str | None = None


def decide(mode: str, latency: Mapping[str, Mapping[str, float]] | None) -> Decision:
    """Keep int8 or the float model, given the requested mode ("auto" keeps the faster) and the p50 latencies."""
    if latency is None:
        return Decision("int8", "kept int8 without measuring it (measurement switched off)")
    float_ms, int8_ms = latency["float"]["p50"], latency["int8"]["p50"]
    measured = f"int8 p50 {int8_ms:.3f} ms vs float {float_ms:.3f} ms"
    if int8_ms < float_ms:
        return Decision("int8", f"kept int8: {measured} ({float_ms / int8_ms:.2f}x faster)")
    slower = f"int8 is {int8_ms / float_ms:.2f}x slower than the float model ({measured})"
    if mode == "auto":
        return Decision("float", f"kept the float model: {slower}")
    return Decision("int8", f"kept int8 as requested (--mode {mode}): {slower}",
                    f"{slower}; --mode auto would keep the float model")
