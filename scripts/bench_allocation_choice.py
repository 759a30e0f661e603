"""How well `--allocate auto` picks among its candidates: each rule's test-score regret on real models.

`auto` builds the model under each allocation (uniform, interior, sensitivity) on the fit part
of the calibration data and keeps one by its outputs on the held-out part. This script builds
the three candidates of each cell the same way (`prune(..., allocate=A)` on the fit part), scores
each on the model's test split (the task metric) and on the held-out part (relative L2 error,
top-1 agreement, cosine and softmax KL with the original's outputs), then reports, per choice
rule, the test points lost against the best candidate of the cell (its regret). Two held-out
splits: `spread` (every fifth sample, what `auto` uses) and `tail` (the last 20%, what it used).

Needs the models of scripts/real_models.py (.cache/real/<name>/). Writes
reports/bench_allocation_choice.{md,json}.

    python scripts/bench_allocation_choice.py [--models mtcnn_rnet ...] [--splits spread tail]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))

from bench_common import write_report  # noqa: E402
from bench_real import COMMIT, ModelBench, task_metric  # noqa: E402
from real_models import run_onnx  # noqa: E402

from onnx_slim import prune, save_model  # noqa: E402
from onnx_slim.data.calibration import load_calibration  # noqa: E402

ALLOCATIONS = ("uniform", "interior", "sensitivity")
CHECK_SHARE = 0.2  # as pipeline/candidates.py
RULES = {  # name -> key to maximize over a cell's candidates
    "relative L2 (auto now)": lambda row: -row["rel_l2"],
    "top-1 agreement, then cosine (auto before)": lambda row: (row["top1"], row["cosine"]),
    "softmax KL": lambda row: -row["kl"],
}
DEFAULT_MODELS = ["mtcnn_rnet", "langid_transformer", "mobilenet_v2"]


def _rows(outputs: np.ndarray, axis: int) -> np.ndarray:
    """Per-sample class-score rows [samples, classes] in float64."""
    return np.moveaxis(outputs, axis, 0).reshape(outputs.shape[axis], -1).astype(np.float64)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def closeness(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Held-out measures of a candidate's class scores against the original's."""
    p, q = _softmax(reference), _softmax(candidate)
    cosines = np.sum(reference * candidate, -1) / (np.linalg.norm(reference, axis=-1)
                                                   * np.linalg.norm(candidate, axis=-1) + 1e-12)
    return {"rel_l2": float(np.linalg.norm(candidate - reference) / np.linalg.norm(reference)),
            "top1": float(np.mean(reference.argmax(-1) == candidate.argmax(-1))),
            "cosine": float(np.mean(cosines)),
            "kl": float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=-1)))}


def cell(bench: ModelBench, criterion: str, target: float, split: str) -> list[dict]:
    model = onnx.load(str(bench.folder / "model.onnx"))
    calibration = load_calibration(bench.folder / "calib.npz", model)
    check = max(8, round(len(calibration) * CHECK_SHARE))
    fit, held = (calibration.hold_out(check) if split == "spread"
                 else calibration.split(len(calibration) - check))
    reference = _rows(run_onnx(bench.folder / "model.onnx", held.arrays, out_axis=bench.axis), bench.axis)
    rows = []
    for allocate in ALLOCATIONS:
        pruned, report = prune(model, target_macs=target, calibration=fit, criterion=criterion, reconstruct=True,
                               allocate=allocate)
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "candidate.onnx"
            save_model(pruned, path)
            held_out = _rows(run_onnx(path, held.arrays, out_axis=bench.axis), bench.axis)
            test_outputs = bench.outputs_of(path)
        score = task_metric(bench.meta, test_outputs, bench.labels, bench.folder)
        row = {"model": bench.name, "criterion": criterion, "target": target, "split": split, "allocate": allocate,
               "macs_fraction": round(report.macs_fraction, 4), "score": round(100 * score, 2),
               **{k: round(v, 6) for k, v in closeness(reference, held_out).items()}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def regrets(rows: list[dict]) -> dict:
    """Per split and rule: cells, test points lost in all, cells where the rule lost points."""
    cells = defaultdict(list)
    for row in rows:
        cells[(row["model"], row["criterion"], row["target"], row["split"])].append(row)
    summary = defaultdict(lambda: {"cells": 0, "points_lost": 0.0, "cells_lost": 0})
    for (_, _, _, split), candidates in cells.items():
        best = max(row["score"] for row in candidates)
        for name, key in RULES.items():
            lost = best - max(candidates, key=key)["score"]
            entry = summary[(split, name)]
            entry["cells"] += 1
            entry["points_lost"] = round(entry["points_lost"] + lost, 2)
            entry["cells_lost"] += lost > 0
    return summary


def markdown(rows: list[dict], summary: dict) -> str:
    lines = ["# How `--allocate auto` chooses: test points lost against the best candidate", "",
             f"`python scripts/bench_allocation_choice.py` at `{COMMIT}`. Each cell: the three allocations built "
             "with re-fit on the fit part of calib.npz, scored on the test split; a rule keeps one by the held-out "
             "part (spread: every fifth sample, what auto uses; tail: the last 20%).", "",
             "| held-out split | rule | cells | test points lost in all | cells with a loss |", "|---|---|---|---|---|"]
    for (split, name), entry in sorted(summary.items()):
        lines.append(f"| {split} | {name} | {entry['cells']} | {entry['points_lost']:.1f} | {entry['cells_lost']} |")
    lines += ["", "| model | criterion | MACs | split | allocation | test score | rel. L2 | top-1 agree | cosine | KL |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['criterion']} | {r['target']} | {r['split']} | {r['allocate']} | "
                     f"{r['score']:.1f} | {r['rel_l2']:.4f} | {r['top1']:.4f} | {r['cosine']:.4f} | {r['kl']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--criteria", nargs="+", default=["thinet", "obs"])
    parser.add_argument("--targets", default="0.8,0.7,0.6,0.5")
    parser.add_argument("--splits", nargs="+", default=["spread", "tail"], choices=["spread", "tail"])
    parser.add_argument("--out", default="reports/bench_allocation_choice")
    args = parser.parse_args()
    rows = []
    for name in args.models:
        bench = ModelBench(name)
        for criterion in args.criteria:
            for target in map(float, args.targets.split(",")):
                for split in args.splits:
                    rows.extend(cell(bench, criterion, target, split))
    summary = regrets(rows)
    Path(args.out + ".json").write_text(json.dumps({"commit": COMMIT, "rows": rows, "summary": [
        {"split": split, "rule": name, **entry} for (split, name), entry in sorted(summary.items())]}, indent=1))
    write_report(args.out + ".md", markdown(rows, summary))


if __name__ == "__main__":
    main()
