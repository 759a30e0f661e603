"""Searches that measure real candidates: a latency budget (`target_latency`) and the smallest
model within a quality budget (`target_macs="auto"` with `max_drop`).

Both plan from scores computed once (`Pruner`); candidates differ only in their target MACs.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx_slim.data.evaluate import evaluate, quality_drop_points
from onnx_slim.data.metrics import agreement_score
from onnx_slim.errors import OnnxSlimError
from onnx_slim.pipeline import timing
from onnx_slim.pipeline.candidates import AUTO, Built, Candidate, Choice, Pruner
from onnx_slim.pipeline.rounding import choose_rounding, latencies, plan_key

WINDOW = 0.95  # a measured latency in [WINDOW, 1] x budget is close enough
SPEEDUP_PER_MACS = 0.875  # first guess: speedup is 0.8 to 0.95 times the MACs ratio, depending on threads
LATENCY_CANDIDATES = 8
RESOLUTION = 0.002  # MACs fractions closer than this are the same candidate


@dataclass
class _Point:
    target: float  # the MACs fraction asked for
    candidate: Candidate
    latency_ms: float

    def to_dict(self, budget: float, chosen: bool) -> dict:
        return {"target_macs": round(self.target, 4), "macs_fraction": round(self.candidate.macs_fraction, 4),
                "round_to": self.candidate.round_to, "latency_ms": round(self.latency_ms, 4),
                "within_budget": _within(self, budget), "chosen": chosen}


def search_latency(pruner: Pruner, budget_ms: float) -> Choice:
    """The least-pruned candidate whose measured p50 on the pruner's session is in [0.95, 1] x budget.

    Secant steps on the MACs fraction, kept inside the bracket of the closest too-slow and
    too-fast candidates (bisection when a step would leave it). Each candidate is timed
    interleaved with the original, and its latency is its speedup over the original applied to
    the original's p50 (timed once, twice as long). Candidates are timed after surgery only: a
    re-fit changes weights, not latency, so it runs once, on the choice.
    """
    settings = pruner.settings
    pruner.say(f"latency search: timing the original on {_threads(settings.session)}")
    reference = timing.measure([pruner.model], pruner.timing_inputs, settings.session, runs=2 * timing.RUNS)
    (original_ms,) = reference.p50
    report = {"kind": "latency", "budget_ms": budget_ms, "window_ms": [round(WINDOW * budget_ms, 4), budget_ms],
              "original_ms": round(original_ms, 4), "runs": timing.RUNS, "candidates": []}
    noise = [reference.noise] if reference.noise else []
    if original_ms <= budget_ms:
        report["note"] = f"the original already runs in {original_ms:.3g} ms: nothing removed"
        pruner.say(report["note"])
        return Choice(pruner.plan(ratio=0.0), search=report, latency_ms=latencies(original_ms, original_ms))
    target = (1 + WINDOW) / 2 * budget_ms
    guess = SPEEDUP_PER_MACS * target / original_ms
    rounding = None
    if settings.round_to == AUTO:  # chosen once, at the first guess; the search then keeps it
        guess = max(guess, pruner.smallest_fraction(1))
        first, rounding, _ = choose_rounding(pruner, target_macs=guess)
        round_to = first.round_to
        timed = [original_ms / c["speedup"] for c in rounding["candidates"] if c["round_to"] == round_to]
        points = [_Point(guess, first, timed[0])] if timed else []  # none timed: nothing to remove
    else:
        round_to, points = settings.round_to, []
    smallest = pruner.smallest_fraction(round_to)
    guess = max(guess, smallest)
    tried = {plan_key(point.candidate.plan) for point in points}
    while len(points) < LATENCY_CANDIDATES:
        if points and _within(points[-1], budget_ms):
            break
        fraction = guess if not points else _next_fraction(points, original_ms, target, budget_ms, smallest)
        if fraction is None:
            break
        candidate = _untried_plan(pruner, fraction, round_to, tried, _bounds(points, budget_ms, smallest))
        if candidate is None:  # every plan between the bracket's ends was timed
            break
        tried.add(plan_key(candidate.plan))
        # Timed interleaved with the original and scaled to its reference p50: load from other
        # processes while this candidate runs slows both alike instead of misplacing the candidate.
        measurement = timing.measure([pruner.model, pruner.pruned_copy(candidate)], pruner.timing_inputs,
                                     settings.session)
        original_now, candidate_ms = measurement.p50
        noise += [measurement.noise] if measurement.noise else []
        measured = candidate_ms * original_ms / original_now
        pruner.say(f"latency search: MACs {candidate.macs_fraction:.3f} -> {measured:.3g} ms "
                   f"(budget {budget_ms:g} ms)")
        points.append(_Point(fraction, candidate, measured))
    chosen = _chosen(points, budget_ms)
    report["candidates"] = [point.to_dict(budget_ms, point is chosen) for point in points]
    report["round_to"] = round_to
    if noise:
        report["noise"] = noise[0]
    if chosen is None:
        fastest = min(points, key=lambda point: point.latency_ms)
        reached = (f"the smallest model pruning allows (MACs {smallest:.3f} of the original, --round-to {round_to}, "
                   f"--min-channels {settings.min_channels})" if fastest.candidate.macs_fraction <= smallest
                   + RESOLUTION else f"the fastest of {len(points)} candidates (MACs "
                   f"{fastest.candidate.macs_fraction:.3f})")
        raise OnnxSlimError(f"target latency {budget_ms:g} ms is out of reach: {reached} runs in "
                            f"{fastest.latency_ms:.3g} ms (original {original_ms:.3g} ms, {_threads(settings.session)})")
    if not _within(chosen, budget_ms):
        report["note"] = (f"no candidate landed in [{WINDOW:g}, 1] x budget in {len(points)} tries: kept the "
                          f"least pruned one under the budget")
    report["chosen_macs_fraction"] = round(chosen.candidate.macs_fraction, 4)
    report["chosen_ms"] = round(chosen.latency_ms, 4)
    return Choice(chosen.candidate, search=report, rounding=rounding,
                  latency_ms=latencies(original_ms, chosen.latency_ms))


def _within(point: _Point, budget: float) -> bool:
    return WINDOW * budget <= point.latency_ms <= budget


def _chosen(points: list[_Point], budget: float) -> _Point | None:
    """The least-pruned candidate in the window, else the least-pruned one under the budget."""
    for accept in (lambda p: _within(p, budget), lambda p: p.latency_ms <= budget):
        passing = [point for point in points if accept(point)]
        if passing:
            return max(passing, key=lambda point: point.candidate.macs_fraction)
    return None


def _next_fraction(points, original_ms, target, budget, smallest) -> float | None:
    """The next MACs fraction to try, or None when the bracket is exhausted or the budget out of reach."""
    slow = [(1.0, original_ms)] + [(p.candidate.macs_fraction, p.latency_ms) for p in points if p.latency_ms > budget]
    fast = [(p.candidate.macs_fraction, p.latency_ms) for p in points if p.latency_ms < WINDOW * budget]
    if fast:
        low = max(fast)
        high = min((point for point in slow if point[0] > low[0]), default=(1.0, original_ms))
        if high[0] - low[0] < 2 * RESOLUTION:
            return None
        fraction = _secant(low, high, target)
        inside = low[0] + RESOLUTION < fraction < high[0] - RESOLUTION
        return fraction if inside else (low[0] + high[0]) / 2
    # Every candidate is too slow: extrapolate from the two smallest, never below what pruning can reach.
    nearest, second = sorted(slow)[:2]
    if nearest[0] <= smallest + RESOLUTION:
        return None  # the smallest model is too slow: out of reach
    fraction = _secant(nearest, second, target)
    if not fraction < nearest[0] - RESOLUTION:
        fraction = nearest[0] * target / nearest[1]
    return max(min(fraction, nearest[0] - RESOLUTION), smallest)


def _bounds(points: list[_Point], budget: float, smallest: float) -> tuple[float, float]:
    """The MACs fractions the next candidate lies between: the least-pruned too-fast candidate (else the
    smallest model pruning allows, itself allowed) and the most-pruned too-slow one (else the original)."""
    fast = [p.candidate.macs_fraction for p in points if p.latency_ms < WINDOW * budget]
    slow = [p.candidate.macs_fraction for p in points if p.latency_ms > budget]
    return (max(fast) + RESOLUTION if fast else smallest), min(slow, default=1.0) - RESOLUTION


def _untried_plan(pruner, fraction: float, round_to: int, tried: set, bounds: tuple[float, float]):
    """The plan nearest `fraction` that was not timed yet, or None. Coarse steps (whole attention
    heads: one of 8 in each of 4 layers moved the MACs by 0.025 to 0.045 on a BERT encoder) can
    round a target to a plan already timed; the target then moves past that plan, away from it,
    in doubling steps, held inside `bounds`."""
    low, high = bounds
    step = RESOLUTION
    while True:
        candidate = pruner.plan(target_macs=fraction, round_to=round_to)
        if plan_key(candidate.plan) not in tried:
            return candidate
        if step > high - low:  # the moves have reached the bracket's ends
            return None
        direction = 1 if candidate.macs_fraction < fraction else -1
        fraction = min(max(candidate.macs_fraction + direction * step, low), high)
        step *= 2


def _secant(a: tuple[float, float], b: tuple[float, float], target: float) -> float:
    """Where the line through (fraction, latency) points a and b reaches `target` latency."""
    (fa, la), (fb, lb) = a, b
    if lb == la:
        return (fa + fb) / 2
    return fa + (target - la) * (fb - fa) / (lb - la)


def _threads(session) -> str:
    if not session.threads:
        return "onnxruntime's default threads"
    return f"{session.threads} thread" + ("s" if session.threads > 1 else "")


# --- target_macs="auto": the smallest model within max_drop -------------------------------------

STEPS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
BISECTIONS = 3  # between the last passing and the first failing step: 0.1 / 2**3 = 0.0125 apart


def search_macs(pruner: Pruner) -> Choice:
    """The lowest MACs fraction whose re-fitted candidate drops at most `max_drop` points on `eval_data`.

    Steps down by 0.1 until a candidate fails, then bisects between the last passing
    and the first failing fraction. Each candidate is built with the final settings
    (criterion, re-fit, statistics correction), since the drop depends on them.
    """
    settings = pruner.settings
    max_drop, data = settings.max_drop, settings.eval_data
    rounding, round_to = None, settings.round_to
    if round_to == AUTO:  # chosen once, at half the MACs, before any candidate is evaluated
        first, rounding, _ = choose_rounding(pruner, target_macs=max(0.5, pruner.smallest_fraction(1)))
        round_to = first.round_to
    smallest = pruner.smallest_fraction(round_to)
    curve, tried = [], {}
    best: tuple[Candidate, Built] | None = None

    def measure(fraction: float) -> tuple[bool, bool]:
        """Build and evaluate the candidate at `fraction`: (whether it passed, whether its plan was new)."""
        nonlocal best
        candidate = pruner.plan(target_macs=fraction, round_to=round_to)
        key = plan_key(candidate.plan)
        if key in tried:  # rounding lands on a plan already evaluated
            return tried[key], False
        built = pruner.build(candidate)
        result = evaluate(pruner.model, built.model, data, batch_size=settings.evaluation_batch_size,
                          session=settings.session)
        drop = quality_drop_points(result)
        passed = drop <= max_drop
        tried[key] = passed
        curve.append({"target_macs": round(fraction, 4), "macs_fraction": round(candidate.macs_fraction, 4),
                      "metric": _metric(result), "drop": drop, "passed": passed, "chosen": False})
        pruner.say(f"quality search: MACs {candidate.macs_fraction:.3f} -> drop {drop:.2f} points "
                   f"({'within' if passed else 'over'} {max_drop:g})")
        if passed and (best is None or candidate.macs_fraction < best[0].macs_fraction):
            best = (candidate, built)
            for point in curve:
                point["chosen"] = point is curve[-1]
        return passed, True

    passing, failing = 1.0, None
    for fraction in [step for step in STEPS if step > smallest + RESOLUTION] + [smallest]:
        passed, _ = measure(fraction)
        if not passed:
            failing = fraction
            break
        passing = fraction
    for _ in range(BISECTIONS if failing is not None else 0):
        middle = (passing + failing) / 2
        passed, new = measure(middle)
        if not new:
            break
        passing, failing = (middle, failing) if passed else (passing, middle)
    report = {"kind": "quality", "max_drop": max_drop, "data": data.description, "round_to": round_to,
              "candidates": curve,
              "note": "each candidate was built with the final settings and evaluated on the held-out data"
                      + ("; the re-fit collects its calibration targets from the original again for every candidate"
                         if settings.reconstruct else "")}
    if best is None:
        least = max(curve, key=lambda point: point["macs_fraction"])
        raise OnnxSlimError(f"no pruned model keeps the drop within {max_drop:g} points: the least pruned "
                            f"candidate tried (MACs {least['macs_fraction']:.3f}) drops {least['drop']:.2f}")
    candidate, built = best
    report["chosen_macs_fraction"] = round(candidate.macs_fraction, 4)
    return Choice(candidate, built=built, search=report, rounding=rounding)


def _metric(evaluation: dict) -> dict:
    """The number the drop is computed from, named."""
    if "accuracy" in evaluation:
        return {"name": "accuracy", "value": evaluation["accuracy"], "original": evaluation["accuracy_original"]}
    agreement = evaluation["agreement"]
    if agreement.get("top1") is not None:
        return {"name": "top-1 agreement", "value": round(agreement["top1"], 4)}
    one_value = any(row["cosine"] is None for row in agreement["outputs"].values())
    return {"name": "cosine (rel. L2 where one value per sample)" if one_value else "cosine",
            "value": round(agreement_score(agreement), 6)}
