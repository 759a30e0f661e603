"""Run the pipeline at several MACs targets and tabulate latency against quality."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from onnx_slim.errors import UsageError
from onnx_slim.formatting import human_bytes, table
from onnx_slim.ir.files import check_replaceable, made_folders, publish, same_file, scratch_folder
from onnx_slim.ir.model import Progress, input_files
from onnx_slim.pipeline.config import PipelineConfig
from onnx_slim.pipeline.report import PipelineReport
from onnx_slim.pipeline.run import check_outdir, run_pipeline

OUTPUT_NAMES = ("sweep.png", "sweep.json", "sweep.md")


def run_sweep(
    model_path: str | os.PathLike,
    outdir: str | os.PathLike,
    config: PipelineConfig,
    targets: list[float],
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> dict:
    """One pipeline run per target in OUTDIR/macs_<target>/, then sweep.json, sweep.md (and sweep.png).

    Every point's folder is checked before the first run; a failed sweep into a
    new OUTDIR removes it again.
    """
    if not targets or any(not 0 < t <= 1 for t in targets):
        raise UsageError(f"sweep targets must be MACs fractions in (0, 1], got {targets}")
    say = progress or (lambda message: None)
    outdir = Path(outdir)
    folders = [outdir / name for name in point_folder_names(targets)]
    for folder in folders:
        check_outdir(model_path, folder, force)
    summary = [outdir / name for name in OUTPUT_NAMES]
    if any(same_file(path, source) for path in summary for source in input_files(model_path)):
        raise UsageError(f"the input {model_path} would be overwritten: choose another output folder (-o)")
    for path in summary:
        check_replaceable(path)
    if not force and any(path.exists() for path in summary):
        raise UsageError(f"{outdir} already holds a sweep: pass --force to overwrite it")
    with made_folders(outdir, remove_contents=True):
        points = []
        for target, folder in zip(targets, folders):
            say(f"sweep point: target MACs {target:g}")
            point_config = replace(config, target_macs=target, ratio=None, target_latency=None, max_drop=None,
                                   min_speedup=None)
            report = run_pipeline(model_path, folder, point_config, force=force, progress=say)
            points.append(_point(target, report))
        return _write_summary(model_path, outdir, points, force)


def point_folder_names(targets: list[float]) -> list[str]:
    """`macs_<target>` with two decimals, or as many more as it takes to tell the targets apart."""
    if len(set(targets)) < len(targets):
        twice = sorted({t for t in targets if targets.count(t) > 1})
        raise UsageError(f"sweep target(s) {', '.join(f'{t:g}' for t in twice)} given twice")
    decimals = 2
    while len({f"{t:.{decimals}f}" for t in targets}) < len(targets):
        decimals += 1
    return [f"macs_{t:.{decimals}f}" for t in targets]


def _write_summary(model_path, outdir: Path, points: list[dict], force: bool) -> dict:
    """sweep.md, sweep.json and the plot, moved into OUTDIR together once written."""
    markdown = _markdown(model_path, points)
    outputs = {"json": str(outdir / "sweep.json"), "markdown": str(outdir / "sweep.md")}
    with scratch_folder(outdir) as scratch:
        if _plot(points, scratch / "sweep.png"):
            outputs["plot"] = str(outdir / "sweep.png")
        result = {"model": str(model_path), "points": points, "outputs": outputs, "markdown": markdown}
        (scratch / "sweep.md").write_text(markdown + "\n")
        (scratch / "sweep.json").write_text(json.dumps(result, indent=2, default=str))
        publish([scratch / name for name in OUTPUT_NAMES if (scratch / name).exists()], outdir, force=force)
    return result


def _point(target: float, report: PipelineReport) -> dict:
    original, _, final = report.bench.models
    evaluation = report.evaluation_final or {}
    return {
        "target_macs": target,
        "macs_fraction": report.prune.macs_fraction,
        "size_bytes": final.size_bytes,
        "latency_p50_ms": final.latency_ms["p50"],
        "original_p50_ms": original.latency_ms["p50"],
        "speedup_p50": final.speedup["p50"],
        "accuracy": evaluation.get("accuracy"),
        "accuracy_original": evaluation.get("accuracy_original"),
        "top1_agreement": (evaluation.get("agreement") or {}).get("top1"),
        "cosine": (evaluation.get("agreement") or {}).get("cosine"),
        "rel_l2": (evaluation.get("agreement") or {}).get("rel_l2"),
        "outdir": report.outdir,
    }


def _markdown(model_path, points: list[dict]) -> str:
    rows = []
    for p in points:
        quality = (f"{p['accuracy'] * 100:.2f}%" if p["accuracy"] is not None
                   else f"{p['top1_agreement'] * 100:.2f}% agree" if p["top1_agreement"] is not None
                   else f"cosine {p['cosine']:.4f}" if p["cosine"] is not None
                   else f"rel. L2 {p['rel_l2']:.4f}" if p["rel_l2"] is not None
                   else "n/a (no --eval)")
        rows.append((f"{p['target_macs']:g}", f"{p['macs_fraction']:.3f}", human_bytes(p["size_bytes"]),
                     f"{p['latency_p50_ms']:.3f}", f"{p['speedup_p50']:.2f}x", quality))
    header = f"# Sweep of {model_path}\n\n"
    return header + table(["target MACs", "MACs kept", "size", "p50 ms", "speedup", "quality"], rows, markdown=True)


def _plot(points: list[dict], path: Path) -> bool:
    """Latency against quality, when matplotlib is installed (the `plot` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    quality = [next((p[key] for key in ("accuracy", "top1_agreement", "cosine") if p[key] is not None), None)
               for p in points]
    if any(q is None for q in quality):
        return False
    figure, axes = plt.subplots(figsize=(5, 3.5))
    axes.plot([p["latency_p50_ms"] for p in points], [q * 100 for q in quality], "o-")
    for p, q in zip(points, quality):
        axes.annotate(f"{p['target_macs']:g}", (p["latency_p50_ms"], q * 100), textcoords="offset points", xytext=(4, 4))
    axes.set_xlabel("p50 latency (ms)")
    axes.set_ylabel("accuracy (%)" if points[0]["accuracy"] is not None else "agreement (%)")
    axes.set_title("onnx-slim sweep (labels: target MACs)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
