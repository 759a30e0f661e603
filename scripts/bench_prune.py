"""Wall time and peak memory of `prune --ratio 0.5` on a ResNet-50-sized model.

Compared with a bare `onnx.load` + `onnx.save` of the same file. Each measurement
runs in a fresh subprocess; times exclude interpreter start-up and imports (both
sides), peak memory is the process's peak RSS minus its RSS right after imports.
Targets: prune within 3x the load+save time, extra peak memory under 3x the file size.

    python scripts/bench_prune.py [--repeats 3] [--out reports/bench_prune.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_common import STATUS_PRELUDE, write_report  # noqa: E402
from resnet50 import build_resnet50  # noqa: E402

_MEASURE = STATUS_PRELUDE + r"""
import json, sys, time
import onnx, onnx_slim
baseline_kb = status_kb("VmRSS")
source, target, job = sys.argv[1:4]
started = time.perf_counter()
if job == "load_save":
    onnx.save(onnx.load(source), target)
else:
    onnx_slim.prune_file(source, target, ratio=0.5, force=True)
seconds = time.perf_counter() - started
peak_kb = status_kb("VmHWM")
print(json.dumps({"seconds": seconds, "peak_bytes": peak_kb * 1024, "extra_bytes": (peak_kb - baseline_kb) * 1024}))
"""


def measure(job: str, source: Path, target: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(source), str(target), job],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="reports/bench_prune.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "resnet50.onnx"
        import onnx
        onnx.save(build_resnet50(), source)
        size = source.stat().st_size
        runs = {job: [measure(job, source, Path(scratch) / f"{job}.onnx") for _ in range(args.repeats)]
                for job in ("load_save", "prune")}
        pruned_size = (Path(scratch) / "prune.onnx").stat().st_size
    summary = {
        job: {
            "seconds": statistics.median(r["seconds"] for r in results),
            "extra_bytes": max(r["extra_bytes"] for r in results),
            "peak_bytes": max(r["peak_bytes"] for r in results),
        }
        for job, results in runs.items()
    }
    time_ratio = summary["prune"]["seconds"] / summary["load_save"]["seconds"]
    memory_ratio = summary["prune"]["extra_bytes"] / size
    lines = [
        "# prune --ratio 0.5 on a ResNet-50-sized model",
        "",
        f"File: {size / 2**20:.1f} MB (pruned: {pruned_size / 2**20:.1f} MB). Machine: {platform.processor() or platform.machine()}, "
        f"median of {args.repeats} runs, each in a fresh process.",
        "",
        "| job | seconds | extra peak memory | peak RSS |",
        "|---|---|---|---|",
    ]
    for job, values in summary.items():
        lines.append(f"| {job} | {values['seconds']:.2f} | {values['extra_bytes'] / 2**20:.0f} MB | "
                     f"{values['peak_bytes'] / 2**20:.0f} MB |")
    lines += [
        "",
        f"prune / load+save time: **{time_ratio:.2f}x** (target <= 3x)",
        f"prune extra peak memory / file size: **{memory_ratio:.2f}x** (target < 3x)",
    ]
    write_report(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
