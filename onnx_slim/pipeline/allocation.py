"""`allocate="auto"`: build the model under each allocation and keep the one closest to the original.

No allocation wins on every real model (reports/bench_real.md): uniform keeps the captcha
CRNN at 81% exact match at 60% MACs where sensitivity collapses it to 11%; sensitivity keeps
EfficientNet-Lite0 at 62% where uniform ends at 9%; sparing the residual streams (interior)
is best on MobileNetV2. Each candidate is built with the final settings (re-fit included) on
the fit part of the calibration data and compared on the held-out part; the kept one is then
re-fitted on all of it, each layer by the method its own held-out rows chose.
"""

from __future__ import annotations

import math

from onnx_slim.data.evaluate import evaluate
from onnx_slim.errors import OnnxSlimError
from onnx_slim.pipeline.candidates import ALLOCATIONS, Choice, Pruner
from onnx_slim.pipeline.rounding import plan_key


def choose_allocation(pruner: Pruner, target_macs: float, round_to: int, **choice) -> Choice:
    """The candidate at `target_macs` whose outputs on the held-out calibration samples are closest
    to the original's: the lowest relative L2 error (the worst over the outputs).
    `choice` (rounding, latency_ms) is passed on to the Choice.

    Not top-1 agreement first: on a few dozen held-out samples it moves in steps of a few
    percent, and on two classes cosine is +-1. scripts/bench_allocation_choice.py measures each
    rule's test points lost against the best candidate on real models (MTCNN RNet at 50% of the
    MACs: 87.5% top-1 chosen by top-1 agreement, for 99.5%)."""
    settings, check = pruner.settings, pruner.check_data
    held_out = check is not pruner.calibration
    refit_on_all = held_out and bool(settings.reconstruct or settings.correct_statistics)
    rows, built_by_plan, best = [], {}, None
    for allocate in ALLOCATIONS:
        try:
            candidate = pruner.plan(target_macs=target_macs, round_to=round_to, allocate=allocate)
        except OnnxSlimError as error:  # e.g. the streams hold too many MACs for "interior"
            spared = "with the residual streams spared, " if allocate == "interior" else ""
            rows.append({"allocate": allocate, "skipped": f"{spared}{error}"})
            continue
        key = plan_key(candidate.plan)
        if key in built_by_plan:
            rows.append({"allocate": allocate, "skipped": f"same channels as {built_by_plan[key]}"})
            continue
        built_by_plan[key] = allocate
        pruner.say(f"allocation {allocate}: building the candidate at MACs {candidate.macs_fraction:.3f}")
        built = pruner.build(candidate, fitted_again=refit_on_all)
        agreement = evaluate(pruner.model, built.model, check, batch_size=settings.evaluation_batch_size,
                             session=settings.session)["agreement"]
        error = agreement["rel_l2"]
        closeness = -error if not math.isnan(error) else -math.inf  # NaN outputs: the farthest of all
        row = {"allocate": allocate, "macs_fraction": round(candidate.macs_fraction, 4),
               "rel_l2": round(agreement["rel_l2"], 6), "top1_agreement": agreement.get("top1"),
               "cosine": None if agreement["cosine"] is None else round(agreement["cosine"], 6), "chosen": False}
        rows.append(row)
        pruner.say(f"allocation {allocate}: " + ", ".join(
            f"{name} {row[name]:.4g}" for name in ("rel_l2", "top1_agreement", "cosine") if row[name] is not None))
        if best is None or closeness > best[0]:
            best = (closeness, candidate, built, row)
    if best is None:
        raise OnnxSlimError(f"no allocation reaches {target_macs:g} of the MACs: "
                            + "; ".join(f"{row['allocate']}: {row['skipped']}" for row in rows))
    _, candidate, built, row = best
    row["chosen"] = True
    if refit_on_all:
        # The comparison is made: the kept candidate is fitted again with the held-out samples too
        # (a quarter more data), each layer by the method its held-out rows chose.
        pruner.say(f"allocation {candidate.allocate}: fitting again on all {len(settings.calibration)} "
                   "calibration samples")
        built = pruner.build(candidate, calibration=settings.calibration, choices_from=built)
    report = {"kind": "allocation", "target_macs": target_macs, "candidates": rows,
              "data": check.description, "held_out": held_out,
              "refit_on_all": refit_on_all,
              "note": ("each candidate was built on the other calibration samples and compared with the original "
                       "on these" + ("; the one kept was then fitted again on all of them" if refit_on_all else "")
                       if held_out else
                       "too few calibration samples to hold some out: candidates were compared on the samples they "
                       "were fitted on")}
    return Choice(candidate, built=built, search=report, **choice)
