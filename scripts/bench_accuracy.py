"""Accuracy against MACs kept, per criterion, with and without least-squares re-fitting.

Models with trained weights and real held-out data (scikit-learn's digits, shipped
in models/): the demo CNN (TorchScript), a ResNet (dynamo) and a transformer-style
MLP (TorchScript). Calibration: models/digits_calib.npz (300 images); accuracy on
models/digits_test.npz (300 other images). Writes reports/bench_accuracy.md and,
with matplotlib, reports/bench_accuracy.png.

    python scripts/bench_accuracy.py [--models digits_cnn ...] [--targets 0.9,...,0.4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnx_slim import OnnxSlimError, prune  # noqa: E402
from onnx_slim.data.calibration import load_calibration  # noqa: E402
from onnx_slim.data.evaluate import evaluate  # noqa: E402

MODELS = ["digits_cnn", "digits_resnet", "digits_mlp"]
CRITERIA = ["l1", "l2", "fpgm", "consumer_l1", "activation", "thinet"]
TARGETS = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]


def run(models, criteria, targets) -> list[dict]:
    rows = []
    for name in models:
        path = ROOT / "models" / f"{name}.onnx"
        model = onnx.load(str(path))
        calibration = load_calibration(ROOT / "models" / "digits_calib.npz", model)
        test = load_calibration(ROOT / "models" / "digits_test.npz", model)
        baseline = evaluate(model, model, test)["accuracy"]
        for criterion in criteria:
            for reconstruct in (False, True):
                for target in targets:
                    started = time.perf_counter()
                    row = {"model": name, "criterion": criterion, "reconstruct": reconstruct,
                           "target": target, "accuracy_original": baseline}
                    try:
                        pruned, report = prune(model, target_macs=target, criterion=criterion,
                                               calibration=calibration, reconstruct=reconstruct)
                        result = evaluate(model, pruned, test)
                        row.update(macs_fraction=round(report.macs_fraction, 4), accuracy=result["accuracy"],
                                   drop=result["accuracy_drop_points"], top1=result["agreement"]["top1"])
                    except OnnxSlimError as exc:
                        row.update(error=str(exc))
                    row["seconds"] = round(time.perf_counter() - started, 2)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def markdown(rows, targets) -> str:
    lines = ["# Accuracy vs MACs kept (digits test set, 300 images)", "",
             "Cells: test accuracy % (change in points). `+rec`: with `--reconstruct`.", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        subset = [r for r in rows if r["model"] == model]
        lines += [f"## {model} (original {subset[0]['accuracy_original'] * 100:.2f}%)", "",
                  "| criterion | " + " | ".join(f"{t:.0%} MACs" for t in targets) + " |",
                  "|---|" + "---|" * len(targets)]
        for criterion in dict.fromkeys(r["criterion"] for r in subset):
            for reconstruct in (False, True):
                cells = []
                for target in targets:
                    row = next((r for r in subset if r["criterion"] == criterion and r["reconstruct"] == reconstruct
                                and r["target"] == target), None)
                    if row is None or "accuracy" not in row:
                        cells.append("n/a")
                    else:
                        cells.append(f"{row['accuracy'] * 100:.1f} ({0.0 - row['drop']:+.1f})")
                label = criterion + (" +rec" if reconstruct else "")
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(rows, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    models = list(dict.fromkeys(r["model"] for r in rows))
    figure, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for axis, model in zip(axes[0], models):
        subset = [r for r in rows if r["model"] == model and "accuracy" in r]
        for criterion in dict.fromkeys(r["criterion"] for r in subset):
            for reconstruct, style in ((False, "--"), (True, "-")):
                points = sorted((r["macs_fraction"], r["accuracy"] * 100) for r in subset
                                if r["criterion"] == criterion and r["reconstruct"] == reconstruct)
                if points:
                    axis.plot(*zip(*points), style, marker="o", markersize=3,
                              label=criterion + (" +rec" if reconstruct else ""))
        axis.set_title(model)
        axis.set_xlabel("fraction of MACs kept")
        axis.set_ylabel("test accuracy (%)")
        axis.invert_xaxis()
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--criteria", nargs="+", default=CRITERIA)
    parser.add_argument("--targets", default=",".join(map(str, TARGETS)))
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench_accuracy"))
    args = parser.parse_args()
    targets = [float(t) for t in args.targets.split(",")]
    rows = run(args.models, args.criteria, targets)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, targets) + "\n")
    if plot(rows, out.with_suffix(".png")):
        print(f"wrote {out.with_suffix('.png')}")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
