"""`--mode auto`: every quantization that applies is made, timed against the float model and checked for
agreement with it; the fastest that agrees is kept, or the float model when none is at least
MIN_SPEEDUP faster.

Candidates: static int8 (when there is calibration data), dynamic int8, int4
(MatMul weights, when they carry at least MIN_INT4_MACS_SHARE of the MACs) and
fp16 (a GPU provider only: onnxruntime's CPU provider has almost no float16
kernels). All are timed interleaved with the float model in one loop (as
`bench` does), on the session spec the model will run with.

Agreement threshold: the mean per-sample cosine similarity between a
candidate's outputs and the float model's, on the worst output, must be at
least `AGREEMENT_COSINE` (0.99). Cosine is scale-free and defined for every
float output (logits, embeddings, boxes), unlike top-1, which only exists for
class scores and, on the few samples checked here (one calibration batch, or
random inputs), moves in steps of 1/8; top-1 is still reported. Static int8 of
the CNNs in `models/` reaches 0.995-0.9999; a candidate below 0.99 has visibly
broken outputs. An output with one value per sample counts by its relative L2
error (`data.metrics.agreement_score`: 0.99 at 14%), since its cosine is only a sign.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import onnx

from onnx_slim.data.metrics import agreement, agreement_score
from onnx_slim.deploy.cleanup import CleanupReport
from onnx_slim.deploy.quant_fp16 import is_gpu
from onnx_slim.deploy.quant_int4 import int4_macs_share, int4_weight_count, no_int4_weights_message
from onnx_slim.errors import VerificationError

AGREEMENT_COSINE = 0.99
# auto keeps a quantized model only when it is at least this much faster than the float one: a
# few percent is within the timing noise of a busy machine (the same DBNet export went int8 in one
# run and float in the next), and quantization always costs some accuracy.
MIN_SPEEDUP = 1.05
# int4 leaves Conv and Gemm float: on a CNN whose only MatMul is a small classifier (PP-LCNet: one
# 1280 x 4 MatMul) it cannot be faster, and a timing that says so is noise.
MIN_INT4_MACS_SHARE = 0.2
KINDS = {"static": "int8", "dynamic": "int8", "int4": "int4", "fp16": "fp16"}


@dataclass
class Candidate:
    """One quantized model of the float one, with how it was made and, once measured, how it did."""

    mode: str  # "static", "dynamic", "int4" or "fp16"
    model: onnx.ModelProto
    details: dict  # the report fields that describe how it was made (format, types, calibration...)
    quantized_ops: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    cleanup: CleanupReport | None = None
    latency_ms: dict | None = None
    agreement: dict | None = None

    @property
    def kind(self) -> str:
        return KINDS[self.mode]

    @property
    def label(self) -> str:
        return self.kind if self.kind == self.mode else f"{self.kind} ({self.mode})"

    @property
    def agrees(self) -> bool:
        return self.score is not None and self.score >= AGREEMENT_COSINE

    @property
    def score(self) -> float | None:
        """What agreement is judged on: the worst output cosine, a one-value output's counted by its
        relative L2 (`data.metrics.agreement_score`); None: no float output to compare."""
        return agreement_score(self.agreement) if self.agreement else None

    @property
    def agreement_text(self) -> str:
        """The score as the report says it: a cosine, or the relative L2 it stands for."""
        if self.score is None:
            return "cosine n/a"
        one_value = [row["rel_l2"] for row in self.agreement["outputs"].values() if row["cosine"] is None]
        worst_cosine = self.agreement["cosine"]
        if one_value and (worst_cosine is None or self.score < worst_cosine):  # a one-value output decides
            return f"rel. L2 {max(one_value):.4f} on a one-value output (as a cosine {self.score:.4f})"
        return f"cosine {self.score:.4f}"

    def summary(self) -> dict:
        """The report's row for this candidate."""
        return {
            "mode": self.mode, "kind": self.kind, "p50_ms": self.latency_ms["p50"] if self.latency_ms else None,
            "cosine": self.agreement["cosine"] if self.agreement else None,
            "rel_l2": self.agreement["rel_l2"] if self.agreement else None,
            "score": self.score, "agreement": self.agreement_text,
            "top1": self.agreement["top1"] if self.agreement else None,
            "agrees": self.agrees, "size_bytes": self.model.ByteSize(), "quantized_ops": self.quantized_ops,
        }


def check_and_score(
    candidate: Candidate, reference: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
) -> None:
    """Refuse a candidate whose outputs changed names or shapes; else record its agreement with the float model."""
    if list(outputs) != list(reference):
        raise VerificationError(f"{candidate.label} changed the outputs: {list(reference)} -> {list(outputs)}")
    for name, value in reference.items():
        if outputs[name].shape != value.shape:
            raise VerificationError(f"{candidate.label} changed output {name}'s shape: "
                                    f"{list(value.shape)} -> {list(outputs[name].shape)}")
    floats = {name: value for name, value in reference.items() if np.issubdtype(value.dtype, np.floating)}
    # float16 outputs (fp16 without float32 io) compare in the reference's precision
    compared = {name: outputs[name].astype(value.dtype) for name, value in floats.items()}
    candidate.agreement = agreement(floats, compared) if floats else None


@dataclass(frozen=True)
class Decision:
    kept: Candidate | None  # None: the float model
    described: Candidate  # the candidate the report describes: the kept one, or the best that lost
    reason: str
    warning: str | None = None


def decide(requested: str, candidates: list[Candidate], float_latency: dict | None) -> Decision:
    """Which model to write: auto keeps the fastest agreeing candidate if it beats float; an explicit mode its own."""
    if float_latency is None:
        only = candidates[0]
        return Decision(only, only, f"kept {only.label} without measuring it (measurement switched off)")
    float_ms = float_latency["p50"]
    if requested != "auto":
        only = candidates[0]
        note = None if only.agrees else (f"{only.label} does not agree with the float model ({only.agreement_text}; "
                                         f"{AGREEMENT_COSINE} needed): check it on real data (--eval)")
        if only.latency_ms["p50"] < float_ms:
            return Decision(only, only, f"kept {only.label}: {_versus(only, float_ms)}", note)
        slower = _slower(only, float_ms)
        warning = "; ".join(filter(None, [f"{slower}; --mode auto would keep the float model or a faster candidate",
                                          note]))
        return Decision(only, only, f"kept {only.label} as requested (--mode {requested}): {slower}", warning)
    agreeing = [candidate for candidate in candidates if candidate.agrees]
    if not agreeing:
        tried = ", ".join(f"{c.label} {c.agreement_text}" for c in candidates)
        return Decision(None, candidates[0],
                        f"kept the float model: no candidate agrees with it (cosine >= {AGREEMENT_COSINE}): {tried}")
    fastest = min(agreeing, key=lambda candidate: candidate.latency_ms["p50"])  # ties: the first listed
    others = "; ".join(f"{c.label} p50 {c.latency_ms['p50']:.3f} ms, {c.agreement_text}"
                       for c in candidates if c is not fastest)
    if fastest.latency_ms["p50"] >= float_ms:
        return Decision(None, fastest, f"kept the float model: {_slower(fastest, float_ms)}"
                        + (f"; also tried {others}" if others else ""))
    if fastest.latency_ms["p50"] * MIN_SPEEDUP > float_ms:
        return Decision(None, fastest, f"kept the float model: {_versus(fastest, float_ms)}, under the "
                        f"{MIN_SPEEDUP:.2f}x a quantized model must gain"
                        + (f"; also tried {others}" if others else ""))
    why = f"fastest of {len(agreeing)} agreeing (cosine >= {AGREEMENT_COSINE})" if len(candidates) > 1 else "agrees"
    return Decision(fastest, fastest, f"kept {fastest.label}: {_versus(fastest, float_ms)}; {why}"
                    + (f"; also tried {others}" if others else ""))


def _versus(candidate: Candidate, float_ms: float) -> str:
    ms = candidate.latency_ms["p50"]
    return f"{candidate.kind} p50 {ms:.3f} ms vs float {float_ms:.3f} ms ({float_ms / ms:.2f}x faster)"


def _slower(candidate: Candidate, float_ms: float) -> str:
    ms = candidate.latency_ms["p50"]
    return (f"{candidate.kind} is {ms / float_ms:.2f}x slower than the float model "
            f"({candidate.kind} p50 {ms:.3f} ms vs float {float_ms:.3f} ms)")


def candidate_modes(model: onnx.ModelProto, calibration, providers) -> tuple[list[str], list[str]]:
    """The modes auto tries on this model, and a note for each mode left out."""
    modes, skipped = [], []
    if calibration is not None:
        modes.append("static")
    else:
        skipped.append("static int8: no calibration data")
    modes.append("dynamic")
    share = int4_macs_share(model) if int4_weight_count(model) else 0.0
    if share >= MIN_INT4_MACS_SHARE:
        modes.append("int4")
    elif share:
        skipped.append(f"int4: the MatMuls it quantizes carry {share:.1%} of the MACs; auto tries it from "
                       f"{MIN_INT4_MACS_SHARE:.0%} (a gain below that is timing noise)")
    else:
        skipped.append(f"int4: {no_int4_weights_message()}")
    if is_gpu(providers):
        modes.append("fp16")
    else:
        skipped.append(f"fp16: tried on GPU providers only ({providers[0]} has almost no float16 kernels)")
    return modes, skipped
