"""Original fp32 vs pruned (50% MACs, round-to 8) vs pruned + static int8, on a ResNet-50-sized model.

Timed side by side with `onnx_slim.deploy.bench.benchmark` (interleaved runs, batch 1,
224x224). Targets on this CPU: pruned speedup >= 0.8x its MACs reduction factor,
pruned + int8 >= 2.5x faster than the original. Writes reports/bench_pipeline.md.

    python scripts/bench_pipeline.py [--runs 30] [--threads N] [--out reports/bench_pipeline.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import write_report  # noqa: E402
from resnet50 import build_resnet50  # noqa: E402

from onnx_slim import prune_file  # noqa: E402
from onnx_slim.deploy.bench import benchmark  # noqa: E402
from onnx_slim.deploy.quantize import quantize_model  # noqa: E402
from onnx_slim.ir.hardware import cpu_info  # noqa: E402
from onnx_slim.ir.runtime import SessionSpec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", default="1,2", help="Comma-separated intra-op thread counts to time.")
    parser.add_argument("--criterion", default="l1")
    parser.add_argument("--out", default="reports/bench_pipeline.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        models = [folder / "resnet50.onnx", folder / "pruned.onnx", folder / "pruned_int8.onnx"]
        onnx.save(build_resnet50(), models[0])
        report = prune_file(models[0], models[1], target_macs=0.5, round_to=8, criterion=args.criterion)
        rng = np.random.default_rng(0)
        calibration = [{"input": rng.standard_normal((4, 3, 224, 224)).astype(np.float32)} for _ in range(4)]
        quant = quantize_model(models[1], models[2], mode="static", calibration=calibration)
        benches = {
            threads: benchmark(models, runs=args.runs, warmup=args.warmup, session=SessionSpec(threads=threads),
                               shapes={"input": [1, 3, 224, 224]}, measure_memory=False)
            for threads in (int(t) for t in args.threads.split(","))
        }
    cpu = cpu_info()
    lines = [
        "# Pipeline latency on a ResNet-50-sized model (batch 1, 224x224)",
        "",
        f"CPU: {cpu.get('processor')}, {cpu.get('logical_cores')} cores, int8-relevant flags: "
        f"{', '.join(cpu.get('int8_flags') or []) or 'none'} (VNNI: {'yes' if cpu.get('vnni') else 'no'}); "
        f"onnxruntime {cpu.get('onnxruntime')}; {args.runs} interleaved runs after {args.warmup} warm-up; "
        f"quantization: {quant.mode} {quant.format}, {quant.activation_type} activations, "
        f"{quant.weight_type} weights, reduce_range={quant.reduce_range}, per_channel={quant.per_channel}.",
    ]
    names = ["original fp32", f"pruned ({report.macs_fraction:.0%} MACs, round-to 8)", "pruned + static int8"]
    macs_factor = report.macs_before / report.macs_after
    for threads, bench in benches.items():
        lines += ["", f"## {threads} intra-op thread{'s' if threads > 1 else ''}", "",
                  "| model | mean ms | p50 ms | p90 ms | samples/s | speedup (p50) | size |",
                  "|---|---|---|---|---|---|---|"]
        lines += [
            f"| {name} | {m.latency_ms['mean']:.1f} | {m.latency_ms['p50']:.1f} | {m.latency_ms['p90']:.1f} | "
            f"{m.throughput:.1f} | {m.speedup['p50']:.2f}x | {m.size_bytes / 2**20:.1f} MB |"
            for name, m in zip(names, bench.models)
        ]
        lines += [
            "",
            f"MACs reduction factor: {macs_factor:.2f}x; pruned speedup / MACs factor: "
            f"**{bench.models[1].speedup['p50'] / macs_factor:.2f}** (target >= 0.8); "
            f"pruned + int8 speedup: **{bench.models[2].speedup['p50']:.2f}x** (target >= 2.5x)",
        ]
    write_report(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
