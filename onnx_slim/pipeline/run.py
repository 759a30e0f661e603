"""The deployment step: prune -> (re-fit) -> quantize -> verify -> evaluate -> benchmark -> gates.

`run_pipeline` writes OUTDIR/pruned.onnx, OUTDIR/model.onnx (the final model),
OUTDIR/report.json and OUTDIR/report.md. They are built in a scratch folder
beside OUTDIR and moved in only once all are complete, so a failed run leaves
OUTDIR as it was. Options come from, in rising order of
precedence: defaults, a config file (TOML, or YAML when PyYAML is installed),
the command line. A config named `<model>.slim.toml` next to the model is used
when no --config is given, so a model can carry its own pipeline settings.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import onnx

from onnx_slim.apply.verify import verify_model
from onnx_slim.data.calibration import load_calibration
from onnx_slim.data.evaluate import evaluate_all, quality_drop_points
from onnx_slim.deploy.bench import benchmark
from onnx_slim.deploy.quant_fp16 import float16_layers
from onnx_slim.deploy.quantize import calibration_source, quantize_model
from onnx_slim.errors import UsageError
from onnx_slim.ir.files import check_replaceable, made_folders, publish, same_file, scratch_folder
from onnx_slim.ir.inputs import random_inputs, shapes_from_samples
from onnx_slim.ir.model import Progress, input_files, load_model, output_layout
from onnx_slim.ir.runtime import CHECK, SessionSpec, create_session, run_session
from onnx_slim.pipeline.candidates import batch_sizes
from onnx_slim.pipeline.config import PipelineConfig
from onnx_slim.pipeline.prune import prune_file
from onnx_slim.pipeline.report import Gate, PipelineReport, RunOutputs


def run_pipeline(
    model_path: str | os.PathLike,
    outdir: str | os.PathLike,
    config: PipelineConfig,
    *,
    config_file: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> PipelineReport:
    """Run the whole step; returns the report (also written to OUTDIR/report.json and .md).

    Quality gates are evaluated but not raised: the caller decides (the CLI exits 3).
    """
    started = time.perf_counter()
    say = progress or (lambda message: None)
    settings = config.with_defaults()
    outdir = Path(outdir)
    check_outdir(model_path, outdir, force)
    model = load_model(model_path, copy=False)
    calibration = _data(settings, settings.calib, model) if settings.calib else None
    held_out = _data(settings, settings.eval, model) if settings.eval else None
    for key in ("reconstruct", "correct_statistics"):
        if getattr(settings, key) and calibration is None:
            raise UsageError(f"{key} needs calibration data: set calib (a path, 'synthetic' or 'random')")
    if settings.quantize == "static" and calibration is None:  # refused before minutes of pruning, not after
        raise UsageError("quantize static needs calibration data: set calib (a path; 'random' only for a "
                         "structure-only smoke test, not for deployment), or use quantize auto or dynamic")
    # Symbolic dims take the data's size (a detector's H and W) in every stage: analysis, timing,
    # checks and the benchmark.
    data = held_out if held_out is not None else calibration
    samples = data.sample_shapes() if data is not None else None
    if samples:
        settings = replace(settings, input_shapes=shapes_from_samples(model, samples, settings.input_shapes or None))
    halves = float16_layers(model) if settings.quantize == "auto" else []  # pruning keeps the weights' types
    if halves:
        say(f"not quantizing: the model computes in float16 ({len(halves)} layers), int8 starts from float32")
        settings = replace(settings, quantize="none")
    # Searches and the rounding choice time candidates on what the benchmark will run.
    timing_inputs = (next(iter(held_out.batches(1))) if held_out is not None
                     else random_inputs(model, batch=1, shapes=settings.input_shapes or None, seed=settings.seed,
                                        values=settings.input_values))
    del model
    # A failed run leaves nothing behind: no scratch folder, no new parent folder.
    with made_folders(outdir.parent, remove_contents=False), scratch_folder(outdir.parent) as scratch:
        report = _run(model_path, scratch, outdir, settings, calibration, held_out, timing_inputs, config_file, say,
                      started)
        _move_result(scratch, outdir, force)
    return report


def _run(model_path, scratch: Path, outdir: Path, settings: PipelineConfig, calibration, held_out, timing_inputs,
         config_file, say, started):
    """The stages, writing into `scratch`; the report names the files where they will be, in `outdir`."""
    pruned_path = scratch / "pruned.onnx"
    final_path = scratch / "model.onnx"
    session = SessionSpec.of(settings.threads, settings.providers, settings.provider_options)  # same for every stage
    say("pruning")
    prune_report = prune_file(
        model_path, pruned_path, force=True, progress=say,
        ratio=settings.ratio, target_macs=settings.target_macs, criterion=settings.criterion,
        global_ranking=settings.global_ranking, allocate=settings.allocate, reconstruct=settings.reconstruct,
        correct_statistics=settings.correct_statistics,
        calibration=calibration, batch_size=settings.batch_size, round_to=settings.round_to,
        min_channels=settings.min_channels, exclude=list(settings.exclude),
        prune_layernorm=settings.prune_layernorm, whole_conv_groups=settings.grouped_conv == "groups",
        seed=settings.seed, session=session,
        input_shapes=settings.input_shapes or None, input_values=settings.input_values or None, cleanup=settings.cleanup,
        target_latency=settings.target_latency, timing_inputs=timing_inputs,
        max_drop=settings.max_drop if settings.target_macs == "auto" else None,
        eval_data=held_out if settings.target_macs == "auto" else None,
    )
    quantize_report = _quantize(settings, pruned_path, final_path, calibration, session, say)
    say("verifying the final model")
    _verify_final(model_path, final_path, settings)
    if held_out is not None:  # the pruned and final models in one pass, the original run once
        say(f"evaluating the pruned and final models on {held_out.description}")
        prune_report.evaluation, evaluation = evaluate_all(
            str(model_path), [str(pruned_path), str(final_path)], held_out,
            batch_size=batch_sizes(settings.batch_size)[1], session=session)
    else:
        evaluation = None
    # A final model that is the pruned one (quantization kept float, or none asked) is timed once: timed
    # twice, the same file read up to 1.2x apart in one report (the later in each round ran faster).
    same = filecmp.cmp(pruned_path, final_path, shallow=False)
    timed = [model_path, pruned_path] if same else [model_path, pruned_path, final_path]
    which = "original and pruned (= final)" if same else "original, pruned and final"
    say(f"benchmarking {which} ({settings.runs} interleaved runs each)")
    bench = benchmark(
        [str(path) for path in timed], runs=settings.runs, warmup=settings.warmup,
        session=session, shapes=settings.input_shapes or None, values=settings.input_values or None, seed=settings.seed,
        data=held_out.batches(1) if held_out is not None else None, measure_memory=settings.memory, progress=say,
    )
    if same:
        bench.models.append(replace(bench.models[1]))
    prune_report.output = str(outdir / pruned_path.name)
    if quantize_report is not None:
        quantize_report.output_path = str(outdir / final_path.name)
    for measured, path in zip(bench.models[1:], (pruned_path, final_path)):
        measured.path = str(outdir / path.name)
    outputs = RunOutputs(model=str(outdir / "model.onnx"), pruned=str(outdir / "pruned.onnx"),
                         report_json=str(outdir / "report.json"), report_md=str(outdir / "report.md"))
    report = PipelineReport(
        model=str(model_path), outdir=str(outdir), config_file=config_file, config=settings, outputs=outputs,
        prune=prune_report, quantize=quantize_report, bench=bench,
        evaluation_pruned=prune_report.evaluation, evaluation_final=evaluation,
        gates=_gates(settings, evaluation, bench), seconds=round(time.perf_counter() - started, 2),
    )
    (scratch / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    (scratch / "report.md").write_text(report.to_markdown())
    return report


OUTPUT_NAMES = ("pruned.onnx", "model.onnx", "report.json", "report.md")  # the order they are moved in


def check_outdir(model_path, outdir: Path, force: bool) -> None:
    """Refuse an output folder that is a file, would replace the input or a file it reads, or
    holds a result (without force)."""
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"{outdir} is a file: -o takes a folder")
    data_files = output_layout(model_path, outdir / "pruned.onnx").values()
    written = [outdir / name for name in (*OUTPUT_NAMES, *data_files)]
    inputs = input_files(model_path)
    if any(same_file(path, source) for path in written for source in inputs):
        raise UsageError(f"the input {model_path} would be overwritten: choose another output folder (-o)")
    for path in written:
        check_replaceable(path)
    if not force and any(path.exists() for path in written):
        raise UsageError(f"{outdir} already holds a pipeline result: pass --force to overwrite it")
    parent = next((p for p in [outdir, *outdir.parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(f"{parent} is a file: -o must be a folder path")


def _move_result(scratch: Path, outdir: Path, force: bool) -> None:
    """Move the finished result into `outdir`: the whole folder when there is none yet, else file by
    file, data files first and the reports last, so no model appears before the files it reads."""
    if not outdir.exists():
        try:
            scratch.rename(outdir)
            return
        except OSError:  # someone made the folder meanwhile: move the files into it
            pass
    files = sorted(scratch.iterdir(),
                   key=lambda path: (OUTPUT_NAMES.index(path.name) + 1) if path.name in OUTPUT_NAMES else 0)
    publish(files, outdir, force=force)


def _data(settings: PipelineConfig, path: str, model: onnx.ModelProto):
    return load_calibration(
        path, model, samples=settings.calib_samples if path == settings.calib else None,
        input_size=settings.input_size, mean=settings.mean, std=settings.std,
        layout=settings.layout, channel_order=settings.channel_order, seed=settings.seed,
        input_shapes=settings.input_shapes or None, input_values=settings.input_values or None,
    )


def _quantize(settings, pruned_path: Path, final_path: Path, calibration, session: SessionSpec, say):
    if settings.quantize == "none":
        shutil.copyfile(pruned_path, final_path)
        return None
    say(f"quantizing ({settings.quantize})")
    # Without real data, auto quantizes dynamically and static is refused; only an explicit
    # `--calib random` calibrates on random data, which the report flags as not for deployment.
    calibration_batch = batch_sizes(settings.batch_size)[0]
    report = quantize_model(
        pruned_path, final_path, mode=settings.quantize,
        calibration=calibration_source(calibration, calibration_batch), calibration_batch_size=calibration_batch,
        quant_format=settings.quant_format, per_channel=settings.per_channel, force=True,
        measure=settings.measure_quantized, session=session, cleanup=settings.cleanup,
        max_layer_error=settings.max_layer_error, input_shapes=settings.input_shapes or None,
        input_values=settings.input_values or None,
    )
    say(report.decision)
    return report


def _verify_final(model_path, final_path: Path, settings: PipelineConfig) -> None:
    original = load_model(model_path, copy=False)
    feeds = random_inputs(original, shapes=settings.input_shapes or None, seed=settings.seed,
                          values=settings.input_values)
    reference = run_session(create_session(original, CHECK), feeds)
    verify_model(final_path, feeds, {name: value.shape for name, value in reference.items()})


def _gates(settings: PipelineConfig, evaluation, bench) -> list[Gate]:
    gates = []
    if settings.max_drop is not None:
        if evaluation is None:
            gates.append(Gate("max_drop", settings.max_drop, None, False,
                              "no held-out data to measure the drop: pass --eval PATH"))
        else:
            drop = quality_drop_points(evaluation)
            what = "accuracy drop" if "accuracy_drop_points" in evaluation else "disagreement with the original"
            gates.append(Gate("max_drop", settings.max_drop, drop, drop <= settings.max_drop,
                              f"{what} {drop:.2f} points (limit {settings.max_drop})"))
    if settings.min_speedup is not None:
        final = bench.models[-1]
        speedup = final.speedup["p50"]
        gates.append(Gate("min_speedup", settings.min_speedup, speedup, speedup >= settings.min_speedup,
                          f"p50 speedup {speedup:.2f}x (need {settings.min_speedup}x)"))
    return gates


