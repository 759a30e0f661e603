"""Does the clean-up pass (`onnx_slim.deploy.cleanup`) pay? Nodes removed and latency before/after.

Each model in `models/` (and `.cache/real/*/model.onnx` when present) is pruned
(l1, ratio 0.3) and quantized (dynamic int8) without the clean-up, then cleaned.
Nodes are counted after our own passes alone (Identity bypass, constant
de-duplication) and after the full clean-up (plus onnx-graphsurgeon's constant
folding and unused-tensor removal). The uncleaned and cleaned models are timed
interleaved on one intra-op thread (p50 of `--runs`). Writes reports/bench_cleanup.md.

    python scripts/bench_cleanup.py [--runs 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).parent))

from bench_common import write_report  # noqa: E402

from onnx_slim.apply.surgery import deduplicate_initializers  # noqa: E402
from onnx_slim.deploy import quant_speed  # noqa: E402
from onnx_slim.deploy.cleanup import bypass_identities, clean_model  # noqa: E402
from onnx_slim.deploy.quantize import quantize_model  # noqa: E402
from onnx_slim.errors import OnnxSlimError  # noqa: E402
from onnx_slim.ir.inputs import random_inputs  # noqa: E402
from onnx_slim.ir.runtime import SessionSpec, quiet_onnxruntime_logs  # noqa: E402
from onnx_slim.pipeline.prune import prune  # noqa: E402

ROOT = Path(__file__).parents[1]


def pruned_and_quantized(path: Path, scratch: Path) -> onnx.ModelProto:
    try:
        pruned, _ = prune(str(path), ratio=0.3, cleanup=False)
    except OnnxSlimError:  # nothing prunable: quantize the model as it is
        pruned = onnx.load(str(path))
    target = scratch / f"{path.parent.name}_{path.stem}.q.onnx"
    quantize_model(pruned, target, mode="dynamic", measure=False, cleanup=False, force=True)
    return onnx.load(str(target))


def ours_only(model: onnx.ModelProto) -> int:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    bypass_identities(copy.graph)
    deduplicate_initializers(copy)
    return len(copy.graph.node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    quiet_onnxruntime_logs()
    paths = sorted((ROOT / "models").glob("*.onnx")) + sorted((ROOT / ".cache" / "real").glob("*/model.onnx"))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for path in paths:
            model = pruned_and_quantized(path, Path(scratch))
            cleaned, report = clean_model(model)
            feeds = random_inputs(model, batch=1)
            latency = quant_speed.measure_latencies({"before": model, "after": cleaned}, feeds, runs=args.runs,
                                                    warmup=3, session=SessionSpec(threads=1))
            before, after = latency["before"]["p50"], latency["after"]["p50"]
            label = path.parent.name if path.name == "model.onnx" else path.stem
            rows.append((label, report.nodes_before, ours_only(model), report.nodes_after,
                         ", ".join(f"{count} {op}" for op, count in report.removed_ops.items()) or "-",
                         before, after))
            print(rows[-1], flush=True)
    lines = [
        "# Clean-up pass: nodes removed and latency",
        "",
        f"`python scripts/bench_cleanup.py --runs {args.runs}`: each model pruned (l1, ratio 0.3) and quantized "
        "(dynamic int8) without the clean-up, then cleaned; p50 latency of both timed interleaved, batch 1, "
        "one intra-op thread, onnxruntime's default graph optimizations on.",
        "",
        "| model | nodes | after our passes | after clean-up | removed | p50 before (ms) | p50 after (ms) | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, nodes, ours, cleaned_nodes, removed, before, after in rows:
        lines.append(f"| {label} | {nodes} | {ours} | {cleaned_nodes} | {removed} | {before:.3f} | {after:.3f} "
                     f"| {before / after:.2f}x |")
    removed = sum(row[1] - row[3] for row in rows)
    by_ours = sum(row[1] - row[2] for row in rows)
    ratios = [row[5] / row[6] for row in rows]
    lines += [
        "",
        f"Nodes removed: {removed} of {sum(row[1] for row in rows)} ({by_ours} by our Identity bypass and "
        f"de-duplication alone, the rest by onnx-graphsurgeon's folding). p50 before/after ranges over "
        f"{min(ratios):.2f}x-{max(ratios):.2f}x, within run-to-run noise: onnxruntime folds the same constants "
        "when it creates a session, so the clean-up makes the written graph simpler to read, not "
        "faster to run.",
    ]
    write_report(ROOT / "reports" / "bench_cleanup.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
