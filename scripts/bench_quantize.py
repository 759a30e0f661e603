"""int8 against fp32 and against NNCF's post-training quantization, on real models with real data.

For each model of `.cache/real/` (built by `scripts/real_models.py`, see
`scripts/REAL_MODELS.md`) every variant is quantized once on the same
calibration split (`calib.npz`) and compared with the float model on the test
split (`test.npz`): agreement with fp32 (top-1; for the captcha CRNN the greedy
CTC string; for the sentence encoder its nearest language centroid), the task
metric (top-1 accuracy; CTC exact match; centroid top-1), the mean
per-sample cosine of the output, and latency p50 (1 thread, batch 1, all
models of one real model timed interleaved). Writes reports/bench_quantize.md
and .json.

The NNCF variant needs the optional peer `nncf` (`pip install -e .[compare]`;
it is used by this script only, never by onnx_slim). Without it that variant is
skipped with a note.

    python scripts/bench_quantize.py [--models efficientnet_lite0 captcha_crnn mtcnn_rnet] [--variants ...]
    python scripts/bench_quantize.py --merge --models mpnet_langid langid_transformer \
        --variants static_plain ours static_all_int8 dynamic_plain dynamic dynamic_all_int8

`--merge` replaces the rows of the models run in the existing report and keeps the others.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_common import write_report  # noqa: E402

from onnx_slim.deploy.bench import interleaved_timings, latency_stats  # noqa: E402
from onnx_slim.deploy.quantize import quantize_model  # noqa: E402
from onnx_slim.ir.runtime import SessionSpec, create_session, quiet_onnxruntime_logs  # noqa: E402

REAL = ROOT / ".cache" / "real"
WORK = ROOT / ".cache" / "bench_quantize"
MODELS = ["efficientnet_lite0", "captcha_crnn", "mtcnn_rnet", "mpnet_langid", "langid_transformer"]
EVAL_BATCH = 16
LATENCY_RUNS, LATENCY_WARMUP = 40, 5
CTC_BLANK = 36

# Our variants: keyword arguments of quantize_model (an explicit mode: the timing decision is this script's job).
# ours = static with the defaults; ours_before = static without bias correction; the *_plain variants leave
# activation outliers alone (`--no-smooth-outliers`), which only MatMul-heavy models get handled anyway.
OURS = {
    "ours_before": dict(mode="static", bias_correction=False),
    "ours": dict(mode="static"),
    "static_plain": dict(mode="static", smooth_outliers=False),
    "dynamic": dict(mode="dynamic"),
    "dynamic_plain": dict(mode="dynamic", smooth_outliers=False),
    # --max-layer-error 1: smoothed, but no layer kept float (the speed end of the trade-off)
    "static_all_int8": dict(mode="static", max_layer_error=1.0),
    "dynamic_all_int8": dict(mode="dynamic", max_layer_error=1.0),
}
# nncf: NNCF on the model as given; nncf_pre: on onnxruntime's quant_pre_process output, as quantize_model does.
NNCF_VARIANTS = ["nncf", "nncf_pre"]
VARIANTS = ["ours_before", "ours", *NNCF_VARIANTS]


def load_split(name: str, split: str) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    data = dict(np.load(REAL / name / f"{split}.npz"))
    labels = data.pop("labels", None)
    return data, labels


def batches(feeds: dict[str, np.ndarray], size: int):
    count = len(next(iter(feeds.values())))
    for start in range(0, count, size):
        yield {key: value[start:start + size] for key, value in feeds.items()}


def quantize_ours(name: str, options: dict, target: Path) -> dict:
    calib, _ = load_split(name, "calib")
    report = quantize_model(REAL / name / "model.onnx", target, calibration=list(batches(calib, EVAL_BATCH)),
                            measure=False, force=True, **options)
    return {"excluded_nodes": report.excluded_nodes, "warnings": report.warnings, "per_channel": report.per_channel,
            "activation_type": report.activation_type, "reduce_range": report.reduce_range, "method": report.method,
            "bias_corrected": report.bias_corrected, "smoothed": len(report.smoothed),
            "float_layers": report.float_layers}


def quantize_nncf(name: str, target: Path, preprocess: bool) -> dict:
    import nncf  # the optional peer: pip install -e .[compare]

    calib, _ = load_split(name, "calib")
    samples = [{key: value[i:i + 1] for key, value in calib.items()} for i in range(len(next(iter(calib.values()))))]
    source = REAL / name / "model.onnx"
    if preprocess:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        prepared = target.with_suffix(".float.onnx")
        quant_pre_process(str(source), str(prepared))
        source = prepared
    model = onnx.load(str(source))
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
    onnx.save(quantized, str(target))
    return {"nncf": nncf.__version__, "subset_size": len(samples), "preprocessed": preprocess,
            "options": "defaults (performance preset, fast bias correction)"}


def outputs_of(model_path: Path, feeds: dict[str, np.ndarray], batch_axis: int) -> np.ndarray:
    """The first output over all samples, run in batches of EVAL_BATCH."""
    session = create_session(str(model_path))
    first = session.get_outputs()[0].name
    return np.concatenate([session.run([first], batch)[0] for batch in batches(feeds, EVAL_BATCH)], axis=batch_axis)


def predictions(name: str, outputs: np.ndarray, meta: dict) -> list:
    """Per sample: the top-1 class (of the nearest centroid for an embedding), or for CTC models the greedy-decoded
    label sequence."""
    if meta["metric"] == "centroid_top1":
        with np.load(REAL / name / "head.npz") as head:
            return list((outputs @ head["centroids"].T).argmax(axis=-1))
    if meta["metric"] != "ctc_exact_match":
        return list(outputs.argmax(axis=-1))
    per_sample = np.moveaxis(outputs, meta.get("output_batch_axis", 0), 0).argmax(axis=-1)  # [N, T]
    decoded = []
    for steps in per_sample:
        collapsed = [int(c) for i, c in enumerate(steps) if (i == 0 or c != steps[i - 1]) and c != CTC_BLANK]
        decoded.append(tuple(collapsed))
    return decoded


def task_metric(predicted: list, labels: np.ndarray, meta: dict) -> float:
    if meta["metric"] == "ctc_exact_match":
        return float(np.mean([tuple(p) == tuple(int(c) for c in label) for p, label in zip(predicted, labels)]))
    return float(np.mean(np.asarray(predicted) == labels))


def mean_cosine(reference: np.ndarray, candidate: np.ndarray, batch_axis: int) -> float:
    ref = np.moveaxis(reference, batch_axis, 0).reshape(reference.shape[batch_axis], -1).astype(np.float64)
    cand = np.moveaxis(candidate, batch_axis, 0).reshape(candidate.shape[batch_axis], -1).astype(np.float64)
    cosines = (ref * cand).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1), 1e-30)
    return float(cosines.mean())


def latencies(paths: dict[str, Path], feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """p50 ms per model, 1 thread, batch 1, timed A B C A B C ..."""
    one = {key: value[:1] for key, value in feeds.items()}
    runners = []
    for path in paths.values():
        session = create_session(str(path), SessionSpec(threads=1))
        names = [output.name for output in session.get_outputs()]
        runners.append(lambda session=session, names=names: session.run(names, one))
    timings = interleaved_timings(runners, runs=LATENCY_RUNS, warmup=LATENCY_WARMUP)
    return {label: round(latency_stats(times)["p50"], 3) for label, times in zip(paths, timings)}


def bench_model(name: str, variants: list[str]) -> list[dict]:
    meta = json.loads((REAL / name / "meta.json").read_text())
    axis = meta.get("output_batch_axis", 0)
    test, labels = load_split(name, "test")
    float_path = REAL / name / "model.onnx"
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    reference = outputs_of(float_path, test, axis)
    reference_predictions = predictions(name, reference, meta)
    rows = [{"model": name, "variant": "fp32", "agreement": 1.0, "metric": meta["metric"],
             "task": task_metric(reference_predictions, labels, meta), "cosine": 1.0, "samples": len(labels)}]
    paths = {"fp32": float_path}
    for variant in variants:
        target = work / f"{variant}.onnx"
        row = {"model": name, "variant": variant, "metric": meta["metric"], "samples": len(labels)}
        started = time.perf_counter()
        try:
            row["details"] = quantize_nncf(name, target, variant == "nncf_pre") if variant in NNCF_VARIANTS else \
                quantize_ours(name, OURS[variant], target)
        except ImportError as exc:
            row["note"] = f"skipped: {exc} (pip install -e .[compare])"
            rows.append(row)
            continue
        except Exception as exc:  # a peer failing on a model is a result, not the end of the benchmark
            row["note"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            rows.append(row)
            print(json.dumps(row), flush=True)
            continue
        row["quantize_s"] = round(time.perf_counter() - started, 1)
        candidate = outputs_of(target, test, axis)
        predicted = predictions(name, candidate, meta)
        row.update(agreement=float(np.mean([p == r for p, r in zip(predicted, reference_predictions)])),
                   task=task_metric(predicted, labels, meta), cosine=mean_cosine(reference, candidate, axis))
        paths[variant] = target
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "details"}), flush=True)
    p50 = latencies(paths, test)
    for row in rows:
        row["p50_ms"] = p50.get(row["variant"])
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["# int8 vs fp32 and vs NNCF (real models, real data)", "",
             "Agreement: share of test samples whose top-1 class (captcha: greedy CTC string; mpnet: nearest centroid) equals fp32's. "
             "Task: top-1 accuracy (captcha: CTC exact match) against the labels. Cosine: mean per-sample "
             f"cosine of the output with fp32's. p50: ms, 1 thread, batch 1, {LATENCY_RUNS} interleaved runs "
             "of every variant of the model. `efficientnet_lite0`'s test split is 20 photos x 12 crops: "
             "agreement is over all 240 samples, so one photo is worth up to 5 points.", "",
             "Variants, all on the same calibration split: `ours_before` = `quantize_model(mode=\"static\")` "
             "without bias correction (QDQ, this CPU's defaults); `ours` = the same with bias correction (the "
             "default); `static_plain` = `ours` without the handling of activation outliers "
             "(`smooth_outliers=False`: no SmoothQuant scales, no layer kept float); `dynamic` / "
             "`dynamic_plain` = `mode=\"dynamic\"` with / without it (only MatMul-heavy models, the two "
             "transformers here, get outliers handled); `static_all_int8` / `dynamic_all_int8` = `ours` / "
             "`dynamic` with `max_layer_error=1` (smoothed, no layer kept float); `nncf` = `nncf.quantize` with its defaults on the "
             "model as given; `nncf_pre` = the same on onnxruntime's `quant_pre_process` output (what "
             "`quantize_model` quantizes). Float layers: MatMul/Gemm layers kept float for their outliers.", "",
             "| model | variant | agreement | task | cosine | p50 ms | float layers |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        if "agreement" not in row:
            lines.append(f"| {row['model']} | {row['variant']} | {row.get('note', 'n/a')} | | | | |")
            continue
        p50 = f"{row['p50_ms']:.2f}" if row.get("p50_ms") is not None else "n/a"
        lines.append(f"| {row['model']} | {row['variant']} | {row['agreement'] * 100:.1f}% | "
                     f"{row['task'] * 100:.1f}% | {row['cosine']:.4f} | {p50} | "
                     f"{len(row.get('details', {}).get('float_layers', []))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=[*OURS, *NNCF_VARIANTS])
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench_quantize"))
    parser.add_argument("--merge", action="store_true", help="keep the report's rows of the models not run")
    args = parser.parse_args()
    quiet_onnxruntime_logs()
    out = Path(args.out)
    rows = []
    if args.merge and out.with_suffix(".json").exists():
        rows = [row for row in json.loads(out.with_suffix(".json").read_text()) if row["model"] not in args.models]
    for name in args.models:
        rows += bench_model(name, args.variants)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))
    write_report(out.with_suffix(".md"), markdown(rows))


if __name__ == "__main__":
    main()
