"""Run the pipeline at several MACs targets and tabulate latency against quality."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

from onnx_slim.errors import UsageError
from onnx_slim.formatting import human_bytes, table
from onnx_slim.pipeline.run import PipelineConfig, run_pipeline


def run_sweep(
    model_path: str | os.PathLike,
    outdir: str | os.PathLike,
    config: PipelineConfig,
    targets: list[float],
    *,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """One pipeline run per target in OUTDIR/macs_<target>/, then sweep.json, sweep.md (and sweep.png)."""
    if not targets or any(not 0 < t <= 1 for t in targets):
        raise UsageError(f"sweep targets must be MACs fractions in (0, 1], got {targets}")
    say = progress or (lambda message: None)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    points = []
    for target in targets:
        say(f"sweep point: target MACs {target:.2f}")
        point_config = replace(config, target_macs=target, ratio=None, max_drop=None, min_speedup=None)
        report = run_pipeline(model_path, outdir / f"macs_{target:.2f}", point_config, force=force, progress=say)
        points.append(_point(target, report))
    markdown = _markdown(model_path, points)
    outputs = {"json": str(outdir / "sweep.json"), "markdown": str(outdir / "sweep.md")}
    plot = _plot(points, outdir / "sweep.png")
    if plot:
        outputs["plot"] = plot
    result = {"model": str(model_path), "points": points, "outputs": outputs, "markdown": markdown}
    (outdir / "sweep.md").write_text(markdown + "\n")
    (outdir / "sweep.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _point(target: float, report: dict) -> dict:
    original, _, final = report["bench"]["models"]
    evaluation = report["evaluation"]["final"] or {}
    return {
        "target_macs": target,
        "macs_fraction": report["prune"]["macs_fraction"],
        "size_bytes": final["size_bytes"],
        "latency_p50_ms": final["latency_ms"]["p50"],
        "original_p50_ms": original["latency_ms"]["p50"],
        "speedup_p50": final["speedup"]["p50"],
        "accuracy": evaluation.get("accuracy"),
        "accuracy_original": evaluation.get("accuracy_original"),
        "top1_agreement": (evaluation.get("agreement") or {}).get("top1"),
        "cosine": (evaluation.get("agreement") or {}).get("cosine"),
        "outdir": report["outdir"],
    }


def _markdown(model_path, points: list[dict]) -> str:
    rows = []
    for p in points:
        quality = (f"{p['accuracy'] * 100:.2f}%" if p["accuracy"] is not None
                   else f"{p['top1_agreement'] * 100:.2f}% agree" if p["top1_agreement"] is not None
                   else "n/a")
        rows.append((f"{p['target_macs']:.2f}", f"{p['macs_fraction']:.3f}", human_bytes(p["size_bytes"]),
                     f"{p['latency_p50_ms']:.3f}", f"{p['speedup_p50']:.2f}x", quality))
    header = f"# Sweep of {model_path}\n\n"
    return header + table(["target MACs", "MACs kept", "size", "p50 ms", "speedup", "quality"], rows, markdown=True)


def _plot(points: list[dict], path: Path) -> str | None:
    """Latency against quality, when matplotlib is installed (the `plot` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    quality = [p["accuracy"] if p["accuracy"] is not None else p["top1_agreement"] or p["cosine"] for p in points]
    if any(q is None for q in quality):
        return None
    figure, axes = plt.subplots(figsize=(5, 3.5))
    axes.plot([p["latency_p50_ms"] for p in points], [q * 100 for q in quality], "o-")
    for p, q in zip(points, quality):
        axes.annotate(f"{p['target_macs']:.2f}", (p["latency_p50_ms"], q * 100), textcoords="offset points", xytext=(4, 4))
    axes.set_xlabel("p50 latency (ms)")
    axes.set_ylabel("accuracy (%)" if points[0]["accuracy"] is not None else "agreement (%)")
    axes.set_title("onnx-slim sweep (labels: target MACs)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return str(path)
