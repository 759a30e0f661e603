"""Does statistics correction help? Real models, real data, with and without it.

For each real model in `.cache/real/` (built by `scripts/real_models.py`) and each
MACs target: `thinet` + re-fit and data-free `l1` without re-fit, each with and
without `correct_statistics`. The score is the task's own metric on `test.npz`
(top-1 with labels; CTC exact match for the captcha reader), plus top-1 agreement
and output cosine with the original, and the prune's wall time.

    python scripts/bench_statistics.py [--models ...] [--targets 0.7 0.6] [--calib-samples 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))

from bench_common import write_report  # noqa: E402
from real_models import ctc_exact_match  # noqa: E402

import onnx_slim  # noqa: E402
from onnx_slim.data.calibration import CalibrationSet, load_calibration  # noqa: E402
from onnx_slim.data.evaluate import evaluate  # noqa: E402
from onnx_slim.ir.runtime import create_session, run_session  # noqa: E402

ROOT = Path(__file__).parents[1]
CONFIGS = [  # (label, prune options)
    ("thinet + re-fit", {"criterion": "thinet", "reconstruct": True}),
    ("thinet + re-fit + stats", {"criterion": "thinet", "reconstruct": True, "correct_statistics": True}),
    ("l1", {"criterion": "l1"}),
    ("l1 + stats", {"criterion": "l1", "correct_statistics": True}),
]


def task_score(model, test, labels, meta) -> float:
    """The task's metric on the test split: CTC exact match for time-major CTC logits, else top-1."""
    session = create_session(model)
    outputs = [run_session(session, batch)[session.get_outputs()[0].name] for batch in test.batches(50)]
    if meta.get("metric") == "ctc_exact_match":
        return ctc_exact_match(np.concatenate(outputs, axis=1), labels)
    return float(np.mean(np.concatenate(outputs).argmax(-1) == labels))


def run(models, targets, calib_samples, configs) -> list[dict]:
    rows = []
    for name in models:
        folder = ROOT / ".cache" / "real" / name
        meta = json.loads((folder / "meta.json").read_text())
        model = onnx.load(str(folder / "model.onnx"))
        calibration = load_calibration(folder / "calib.npz", model).take(calib_samples)
        arrays = dict(np.load(folder / "test.npz"))
        labels = arrays.pop("labels")  # the captcha's are [N, 4] characters: scored here, not by evaluate
        test = CalibrationSet(arrays, origin="test.npz")
        original = task_score(model, test, labels, meta)
        rows.append({"model": name, "target": 1.0, "config": "original", "score": original})
        for target in targets:
            for label, options in configs:
                started = time.perf_counter()
                pruned, report = onnx_slim.prune(model, target_macs=target, calibration=calibration,
                                                 **options)
                seconds = time.perf_counter() - started
                agreement = evaluate(model, pruned, test)["agreement"]
                stats = report.statistics or {}
                row = {"model": name, "target": target, "config": label, "score": task_score(pruned, test, labels, meta),
                       "top1": agreement.get("top1"), "cosine": agreement.get("cosine"),
                       "seconds": round(seconds, 1), "stats_seconds": stats.get("seconds"),
                       "corrected": f"{stats['corrected']}/{stats['layers']}" if stats else ""}
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    return rows


def markdown(rows, calib_samples) -> str:
    lines = ["# Statistics correction on real models", "",
             f"`scripts/bench_statistics.py`; {calib_samples} calibration samples (the first of each `calib.npz`), "
             "full `test.npz`. score = the task's metric (top-1, or CTC exact match for `captcha_crnn`); "
             "top-1 and cosine = agreement of the outputs with the original's; corrected = layers whose "
             "correction was kept / layers measured; time = the whole prune.", "",
             "| model | MACs | config | score | top-1 agr. | cosine | corrected | time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["config"] == "original":
            lines.append(f"| {row['model']} | 1.0 | original | {row['score']:.3f} | | | | |")
            continue
        top1 = "" if row["top1"] is None else f"{row['top1']:.3f}"
        stats_time = f" (stats {row['stats_seconds']})" if row["stats_seconds"] is not None else ""
        lines.append(f"| {row['model']} | {row['target']} | {row['config']} | {row['score']:.3f} | {top1} | "
                     f"{row['cosine']:.4f} | {row['corrected']} | {row['seconds']}{stats_time} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mtcnn_rnet", "captcha_crnn", "efficientnet_lite0"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.7, 0.6])
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--configs", nargs="+", choices=[label for label, _ in CONFIGS],
                        default=[label for label, _ in CONFIGS])
    parser.add_argument("--out", default="reports/bench_statistics.md")
    args = parser.parse_args()
    rows = run(args.models, args.targets, args.calib_samples, [c for c in CONFIGS if c[0] in args.configs])
    write_report(args.out, markdown(rows, args.calib_samples))
    print(markdown(rows, args.calib_samples))


if __name__ == "__main__":
    main()
