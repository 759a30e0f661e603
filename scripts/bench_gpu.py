"""Original vs pruned (50% MACs) vs pruned + fp16 on CUDA, batch 8; writes reports/bench_gpu.md.

Timed with `onnx_slim.deploy.bench.benchmark` on the CUDA execution provider:
inputs and outputs bound on the GPU (host-device copies not timed), interleaved
runs after a device warm-up. The fp16 row needs an fp16 mode of
`onnx_slim.deploy.quantize`; without one it is skipped with a note. With no GPU
provider in this onnxruntime the script measures nothing, writes a report that
says so and exits 0.

    python scripts/bench_gpu.py [MODEL] [--runs 100] [--batch 8] [--out reports/bench_gpu.md]

MODEL defaults to the demo model, models/digits_cnn.onnx, which is pruned with
thinet and re-fitted on its calibration split and compared on its test split;
another model is pruned with l1 and compared on random inputs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))

from bench_common import write_report  # noqa: E402

from onnx_slim import prune_file  # noqa: E402
from onnx_slim.data.calibration import load_calibration  # noqa: E402
from onnx_slim.deploy.bench import benchmark  # noqa: E402
from onnx_slim.deploy.quantize import quantize_model  # noqa: E402
from onnx_slim.errors import OnnxSlimError  # noqa: E402
from onnx_slim.ir.runtime import SessionSpec  # noqa: E402

DEMO = ROOT / "models" / "digits_cnn.onnx"
GPU = "CUDAExecutionProvider"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=str(DEMO))
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench_gpu.md"))
    args = parser.parse_args()
    title = f"# GPU latency: original vs pruned (50% MACs) vs pruned + fp16, batch {args.batch}"
    available = ort.get_available_providers()
    if GPU not in available:
        write_report(args.out, "\n".join([
            title, "",
            f"**No GPU was available, so nothing was measured.** This onnxruntime ({ort.__version__}) "
            f"offers {', '.join(available)}; the benchmark needs {GPU} (the `onnxruntime-gpu` package, "
            "CUDA and cuDNN). Run `python scripts/bench_gpu.py` on a machine with a CUDA GPU.", "",
        ]))
        return
    write_report(args.out, measure(args, title))


def measure(args, title: str) -> str:
    model = Path(args.model)
    demo = model.resolve() == DEMO.resolve()
    session = SessionSpec.of(providers=[GPU])
    notes = []
    with tempfile.TemporaryDirectory() as scratch:
        pruned, fp16 = Path(scratch) / "pruned.onnx", Path(scratch) / "pruned_fp16.onnx"
        if demo:
            calibration = load_calibration(DEMO.with_name("digits_calib.npz"), DEMO)
            report = prune_file(model, pruned, target_macs=0.5, round_to=8, criterion="thinet",
                                calibration=calibration, reconstruct=True, session=session)
        else:
            report = prune_file(model, pruned, target_macs=0.5, round_to=8, criterion="l1", session=session)
        models = [model, pruned]
        try:
            quantize_model(pruned, fp16, mode="fp16", measure=False, session=session)
            models.append(fp16)
        except OnnxSlimError as exc:  # no fp16 mode in this onnx_slim (yet), or it refused this model
            notes.append(f"pruned + fp16 skipped: {exc}")
        data = load_calibration(DEMO.with_name("digits_test.npz"), DEMO).batches(args.batch) if demo else None
        bench = benchmark(models, runs=args.runs, warmup=args.warmup, session=session, batch=args.batch, data=data,
                          measure_memory=False)
    labels = ["original", "pruned", "pruned + fp16"]
    for entry, label in zip(bench.models, labels):
        entry.path = f"{label} ({Path(entry.path).name})"
    return "\n".join([
        title, "",
        f"Model `{model}`; pruned with {report.criterion} to {report.macs_fraction * 100:.1f}% of the MACs "
        f"(round-to 8){', re-fitted on the calibration split' if demo else ''}. "
        f"onnxruntime {ort.__version__}.", "",
        bench.to_markdown(), *[f"- {note}" for note in notes], "",
    ])


if __name__ == "__main__":
    main()
