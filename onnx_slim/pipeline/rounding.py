"""`round_to="auto"`: which multiple kept channel counts are rounded to, measured on the target.

Exact channel counts can run slower than the original (a depthwise-separable
classifier at half the MACs ran 8% slower with odd counts, 1.5x faster rounded
to 8), and the best multiple depends on the provider and the CPU. So the plan is
made at each rounding for the same MACs, every candidate is timed against the
original (interleaved, after surgery only: latency does not depend on the
weights' values), and the fastest is kept; near-ties go to the finer rounding,
which removes channels more precisely by score.
"""

from __future__ import annotations

from onnx_slim.errors import OnnxSlimError
from onnx_slim.pipeline import timing
from onnx_slim.pipeline.candidates import Candidate, Pruner

ROUNDINGS = (1, 8, 16, 32)
TIE = 0.03  # within 3% of the fastest counts as a tie: timing noise on a busy machine is about that
MACS_SLACK = 0.02  # a rounding whose plan misses the target MACs by more is not the model asked for


def plan_key(plan: dict) -> tuple:
    """Identical plans (two roundings or two targets that land on the same channels) compare equal."""
    return tuple(sorted((root, tuple(removed)) for root, removed in plan.items()))


def choose_rounding(pruner: Pruner, *, target_macs: float | None = None,
                    ratio: float | None = None) -> tuple[Candidate, dict, dict | None]:
    """Time the plan at each of `ROUNDINGS` on the pruner's session and keep the fastest.

    With a ratio, the roundings are compared at the MACs the exact (unrounded) plan of that
    ratio keeps. Returns the candidate, the rounding report and the latencies
    (original, chosen, speedup), or None for them when nothing is removed.
    """
    reference = pruner.plan(ratio=ratio, target_macs=target_macs, round_to=1)  # exact counts
    if ratio is not None:
        target_macs = reference.macs_fraction
    candidates, notes = [reference], []
    for step in ROUNDINGS[1:]:
        try:
            candidate = pruner.plan(target_macs=target_macs, round_to=step)
        except OnnxSlimError as exc:  # the target is out of reach at this rounding
            notes.append(f"round-to {step}: {exc}")
            continue
        if abs(candidate.macs_fraction - target_macs) > MACS_SLACK:
            notes.append(f"round-to {step}: keeps {candidate.macs_fraction:.3f} of the MACs, not about "
                         f"{target_macs:.3f}")
            continue
        candidates.append(candidate)
    if not any(candidate.plan for candidate in candidates):
        return reference, {"chosen": 1, "candidates": [], "notes": notes + ["nothing to remove: no rounding timed"]}, \
            None
    unique = {}
    for candidate in candidates:
        unique.setdefault(plan_key(candidate.plan), candidate)
    pruner.say(f"timing {len(unique)} roundings of the plan ({', '.join(str(c.round_to) for c in unique.values())})"
               " against the original")
    models = [pruner.model, *(pruner.pruned_copy(candidate) for candidate in unique.values())]
    measurement = timing.measure(models, pruner.timing_inputs, pruner.settings.session)
    original_ms, *measured = measurement.p50
    latency = dict(zip(unique, measured))
    timed = [(candidate, latency[plan_key(candidate.plan)]) for candidate in candidates]
    fastest = min(ms for _, ms in timed)
    chosen, chosen_ms = next((c, ms) for c, ms in timed if ms <= fastest * (1 + TIE))
    report = {
        "chosen": chosen.round_to,
        "why": "the fastest of those timed" if chosen_ms <= fastest else f"the finest within {TIE:.0%} of the fastest",
        "candidates": [{"round_to": c.round_to, "macs_fraction": round(c.macs_fraction, 4),
                        "latency_ms": round(ms, 4), "speedup": round(original_ms / ms, 3)} for c, ms in timed],
        "original_ms": round(original_ms, 4),
        "runs": measurement.runs,
        "notes": notes,
        "noise": measurement.noise,
    }
    pruner.say(f"round-to {chosen.round_to}: {chosen_ms:.3g} ms against {original_ms:.3g} ms for the original")
    return chosen, report, latencies(original_ms, chosen_ms)


def latencies(original_ms: float, pruned_ms: float) -> dict:
    """The figures a report shows next to the MACs: both medians and the speedup."""
    return {"original": round(original_ms, 4), "pruned": round(pruned_ms, 4),
            "speedup": round(original_ms / pruned_ms, 3) if pruned_ms > 0 else None}
