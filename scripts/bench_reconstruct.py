"""Time and peak memory of least-squares reconstruction on a ResNet-50-sized model.

64 calibration images at 224x224 (random normal: the timing does not depend on
what the pixels show), each setting in a fresh process: `prune --ratio 0.5
--reconstruct` (one prune and re-fit) and `prune --target-macs 0.5 --reconstruct
--allocate auto` (what `run` does by default with calibration data: three
allocations built and re-fitted on 80% of the images, compared on the rest).
Targets on this 2-core machine: within 2 minutes and 4 GB peak memory.

    python scripts/bench_reconstruct.py [--images 64] [--out reports/bench_reconstruct.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))

from bench_common import STATUS_PRELUDE, write_report  # noqa: E402
from resnet50 import build_resnet50  # noqa: E402

_MEASURE = STATUS_PRELUDE + r"""
import json, sys, time
import onnx_slim
from onnx_slim.data.calibration import load_calibration
source, target, data, setting = sys.argv[1:5]
started = time.perf_counter()
calibration = load_calibration(data, source)
report = onnx_slim.prune_file(source, target, reconstruct=True, calibration=calibration, force=True,
                              progress=lambda m: print(f"{time.perf_counter() - started:7.1f}s {m}", file=sys.stderr),
                              **json.loads(setting))
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "reconstruct_seconds": report.reconstruction["seconds"],
                  "peak_bytes": status_kb("VmHWM") * 1024, "methods": report.reconstruction["methods"],
                  "layers": report.reconstruction["layers"], "passes": report.reconstruction["passes"]}))
"""


SETTINGS = {  # label -> prune_file options besides the re-fit and the data
    "--ratio 0.5": {"ratio": 0.5},
    "--target-macs 0.5 --allocate auto": {"target_macs": 0.5, "allocate": "auto"},
    # the same with OBS selection (the cost of making it the criterion of run's default)
    "--target-macs 0.5 --allocate auto --criterion obs": {"target_macs": 0.5, "allocate": "auto", "criterion": "obs"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--out", default="reports/bench_reconstruct.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "resnet50.onnx"
        onnx.save(build_resnet50(), source)
        data = Path(scratch) / "calib.npz"
        images = np.random.default_rng(0).standard_normal((args.images, 3, 224, 224)).astype(np.float32)
        np.savez(data, input=images)
        del images
        runs = []
        for label, setting in SETTINGS.items():
            result = subprocess.run([sys.executable, "-c", _MEASURE, str(source), str(Path(scratch) / "out.onnx"),
                                     str(data), json.dumps(setting)], capture_output=True, text=True)
            if result.returncode:
                sys.exit(result.stderr)
            runs.append((label, json.loads(result.stdout), result.stderr.strip()))
    lines = [
        "# prune + re-fit on a ResNet-50-sized model",
        "",
        f"{args.images} calibration images at 224x224; machine {platform.machine()}, 2 cores; each setting in one "
        "fresh process. The re-fit columns are the final model's re-fit (auto also re-fitted the other candidates).",
        "",
        "| setting | total seconds | final re-fit seconds | peak memory | layers re-fitted | passes |",
        "|---|---|---|---|---|---|",
    ]
    for label, measured, _ in runs:
        lines.append(f"| `{label}` | {measured['seconds']:.1f} | {measured['reconstruct_seconds']:.1f} | "
                     f"{measured['peak_bytes'] / 2**30:.2f} GB | {measured['layers']} ({measured['methods']}) | "
                     f"{measured['passes']} |")
    lines += ["", "Targets: within 120 s and 4 GB.", ""]
    for label, _, log in runs:
        lines += [f"Progress log, `{label}`:", "", "```", log, "```", ""]
    write_report(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
