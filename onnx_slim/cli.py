"""The `onnx-slim` command: parses options, calls the library, prints.

Exit codes: 0 success, 1 failure, 2 usage error, 3 quality gate failed, 130
interrupted (SIGINT, Ctrl-C), 143 terminated (SIGTERM). Errors are one line on
stderr (`error: ...`); `onnx-slim --debug ...` shows the traceback. Only light
modules are imported here: the heavy ones load inside `main`, once Ctrl-C and
SIGTERM are handled.
"""

from __future__ import annotations

import os
import sys

import click

from onnx_slim import __version__
from onnx_slim.cli_options import (
    ALLOCATE_OPTION,
    CLEANUP_OPTION,
    QUANTIZE_CHOICES,
    Console,
    CriterionOption,
    NumberOrAuto,
    calibration_options,
    configure_logging,
    floats,
    grouped_conv_option,
    layernorm_option,
    load_data,
    parse_inputs,
    provider_options,
    session_spec,
    shape_option,
    value_option,
    writing_output,
)
from onnx_slim.errors import OnnxSlimError, UsageError
from onnx_slim.formatting import (before_after_table, evaluation_line, human_bytes, human_count, quantize_summary,
                                   table, to_json)
from onnx_slim.interrupts import EXIT_INTERRUPTED, MESSAGE, Terminated, unwind_on_signals


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnx-slim")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def cli(ctx, debug):
    """Make exported ONNX models smaller and faster without retraining."""
    ctx.obj = {"debug": debug}
    configure_logging(debug)
    from onnx_slim.ir.runtime import quiet_onnxruntime_logs

    quiet_onnxruntime_logs(verbose=debug)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@shape_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.option("--all", "show_all", is_flag=True, help="List every group, not only the largest.")
@layernorm_option
@grouped_conv_option
def inspect(model, input_shapes, input_values, as_json, show_all, prune_layernorm, grouped_conv):
    """Params, MACs and channel groups of MODEL (which are prunable, which frozen and why)."""
    from onnx_slim.channels.analysis import analyze

    analysis = analyze(model, **parse_inputs(input_shapes, input_values), prune_layernorm=prune_layernorm,
                       whole_conv_groups=grouped_conv == "groups", copy=False)
    data = analysis.to_dict()
    data["model"] = model
    if as_json:
        click.echo(to_json(data))
        return
    click.echo(f"{model}: {human_count(data['params'])} params, {human_count(data['macs'])} MACs "
               f"(inputs {data['input_shapes']})")
    for note in data["notes"]:
        click.echo(f"note: {note}")
    click.echo(f"{data['groups_prunable']} of {data['groups_total']} channel groups prunable, "
               f"{data['prunable_macs_fraction'] * 100:.1f}% of MACs in layers they shrink\n")
    groups = sorted(data["groups"], key=lambda g: -g["macs_share"])
    shown = groups if show_all else groups[:25]
    rows = []
    for group in shown:
        why = str(group["frozen_by"][0]["node"]) + ": " + group["frozen_by"][0]["reason"] if group["frozen_by"] else ""
        producers = ", ".join(group["producers"][:3]) + (" ..." if len(group["producers"]) > 3 else "")
        status = group["status"] + (", stream" if group["stream"] else "")
        rows.append((group["id"], group["channels"], f"{group['macs_share'] * 100:.1f}%", status, producers, why))
    click.echo(table(["group", "channels", "MACs", "status", "producers", "frozen by"], rows))
    if len(groups) > len(shown):
        click.echo(f"... {len(groups) - len(shown)} more groups (--all lists them)")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the pruned model.")
@click.option("--ratio", type=float, help="Fraction of channels to remove from every prunable group, in [0, 1).")
@click.option("--target-macs", type=NumberOrAuto(float),
              help="Keep about this fraction of the model's MACs, in (0, 1]; auto: the smallest model whose drop "
                   "on --eval stays within --max-drop.")
@click.option("--target-latency", type=float, metavar="MS",
              help="Prune until the model's measured p50 (batch 1, --threads) is within 5% under this many ms.")
@click.option("--max-drop", type=float, help="With --target-macs auto: largest accuracy (or agreement) drop, points.")
@click.option("--criterion", cls=CriterionOption,
              help="Channel importance: {criteria} (default: thinet with --calib data, else consumer_l1).")
@click.option("--global", "global_ranking", is_flag=True, help="Rank channels across groups instead of per group.")
@ALLOCATE_OPTION
@click.option("--reconstruct", is_flag=True, help="Re-fit the layers after removed channels by least squares (needs --calib).")
@click.option("--correct-statistics/--no-correct-statistics", default=False, show_default=True,
              help="Match each later layer's per-channel output mean and spread to the original's (needs --calib).")
@calibration_options
@click.option("--eval", "eval_path", metavar="PATH", help="Held-out data (.npz, with optional labels) to measure agreement and accuracy.")
@click.option("--round-to", type=NumberOrAuto(int), default="auto", show_default=True,
              help="Kept channel counts are multiples of this; auto times 1, 8, 16, 32 and keeps the fastest.")
@click.option("--min-channels", default=1, show_default=True, help="Never keep fewer channels in a group.")
@click.option("--threads", type=int, help="onnxruntime intra-op threads of calibration runs and timing.")
@click.option("--exclude", multiple=True, metavar="PATTERN", help="Leave groups touching these node-name globs alone (repeatable).")
@layernorm_option
@grouped_conv_option
@CLEANUP_OPTION
@click.option("--seed", default=0, show_default=True, help="Seed for random choices and verification inputs.")
@shape_option
@provider_options
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report on stdout.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def prune(model, output, ratio, target_macs, target_latency, max_drop, criterion, global_ranking, allocate, reconstruct,
          correct_statistics, calib, calib_samples, batch_size, eval_path, round_to, min_channels, threads, exclude,
          prune_layernorm, grouped_conv, cleanup, seed, input_shapes, input_values, providers, provider_options, force,
          as_json, quiet, **image_options):
    """Remove channels from MODEL and write a verified model to OUTPUT."""
    from onnx_slim.ir.model import check_output_path
    from onnx_slim.pipeline.candidates import default_allocation
    from onnx_slim.pipeline.prune import prune_file

    console = Console(quiet, bars=not as_json)
    session = session_spec(threads, providers, provider_options)
    check_output_path(model, output, force)
    inputs = parse_inputs(input_shapes, input_values)
    calibration = load_data(calib, model, {**image_options, "seed": seed, **inputs}, calib_samples)
    evaluation = load_data(eval_path, model, {**image_options, "seed": seed, **inputs})
    if allocate is None:
        allocate = default_allocation(calibration is not None and not calibration.is_random, target_macs)
    with writing_output(output):
        report = prune_file(
            model, output, force=force, progress=console, evaluation=evaluation, session=session,
            ratio=ratio, target_macs=target_macs, criterion=criterion, global_ranking=global_ranking,
            allocate=allocate, reconstruct=reconstruct, correct_statistics=correct_statistics,
            calibration=calibration, batch_size=batch_size, round_to=round_to, min_channels=min_channels,
            exclude=list(exclude), prune_layernorm=prune_layernorm, whole_conv_groups=grouped_conv == "groups",
            cleanup=cleanup, seed=seed, **inputs,
            target_latency=target_latency, max_drop=max_drop, eval_data=evaluation,
        )
    data = report.to_dict()
    if as_json:
        click.echo(to_json(data))
        return
    click.echo(before_after_table(data))
    if report.reconstruction:
        methods = ", ".join(f"{count} {name}" for name, count in report.reconstruction["methods"].items())
        layers = report.reconstruction["layers"]
        click.echo(f"re-fitted {layers} layer{'s' * (layers != 1)}" + (f" ({methods})" if methods else ""))
    if report.statistics:
        click.echo(f"statistics corrected in {report.statistics['corrected']} of {report.statistics['layers']} layers "
                   f"({report.statistics['unchanged']} kept as they were)")
    if report.evaluation:
        click.echo(evaluation_line(report.evaluation))
    for line in report.choice_lines():
        click.echo(line)
    if report.search:
        click.echo(report.search_markdown())
    for note in report.notes:
        click.echo(f"note: {note}")
    click.echo(f"\nwrote {output} ({human_bytes(report.size_after)}) in {report.seconds:.1f}s")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@calibration_options
@click.option("--ratios", default="0.1,0.3,0.5", show_default=True, help="Comma-separated ratios to try per group.")
@click.option("--criterion", default="l1", show_default=True, help="Which channels each trial removes.")
@click.option("--samples", default=32, show_default=True, help="Calibration samples the errors are measured on.")
@click.option("--exclude", multiple=True, metavar="PATTERN")
@layernorm_option
@shape_option
@provider_options
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", is_flag=True)
def sensitivity(model, calib, calib_samples, batch_size, ratios, criterion, samples, exclude, prune_layernorm,
                input_shapes, input_values, providers, provider_options, seed, as_json, quiet, **image_options):
    """Per group: how far the outputs move when that group alone is pruned at each ratio."""
    from onnx_slim.channels.analysis import analyze
    from onnx_slim.plan.sensitivity import measure_sensitivity

    if not calib:
        raise UsageError("sensitivity needs calibration data: pass --calib PATH (or --calib random)")
    console = Console(quiet, bars=not as_json)
    session = session_spec(providers=providers, provider_options=provider_options)
    inputs = parse_inputs(input_shapes, input_values)
    calibration = load_data(calib, model, {**image_options, "seed": seed, **inputs}, calib_samples)
    analysis = analyze(model, **inputs, exclude=list(exclude),
                       prune_layernorm=prune_layernorm, copy=False, sample_shapes=calibration.sample_shapes())
    levels = floats(ratios)
    if any(not 0 < level < 1 for level in levels):
        raise UsageError(f"ratios must be in (0, 1), got {ratios}")
    report = measure_sensitivity(analysis, calibration, ratios=levels, criterion=criterion,
                                 samples=samples, seed=seed, session=session, progress=console, batch_size=batch_size)
    if as_json:
        click.echo(to_json(report.to_dict()))
        return
    click.echo(f"{model}: output relative L2 error when one group alone is pruned "
               f"({criterion} order, {report.samples} samples), and the MACs it saves\n")
    click.echo(report.to_table())
    if not analysis.channels.prunable_groups():
        click.echo(f"note: no channel group is prunable{'; ' + analysis.subgraph_note if analysis.subgraph_note else ''}")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML/YAML file with these options (default: MODEL's sibling <name>.slim.toml if present).")
@click.option("--ratio", type=float, help="Fraction of channels to remove from every prunable group.")
@click.option("--target-macs", type=NumberOrAuto(float),
              help="Keep about this fraction of MACs (default 0.5); auto: the smallest model within --max-drop.")
@click.option("--target-latency", type=float, metavar="MS",
              help="Prune until the pruned model's measured p50 is within 5% under this many ms.")
@click.option("--criterion", cls=CriterionOption,
              help="Channel importance: {criteria} (default: thinet with --calib data, else consumer_l1).")
@click.option("--global", "global_ranking", is_flag=True, help="Rank channels across groups.")
@ALLOCATE_OPTION
@click.option("--reconstruct/--no-reconstruct", default=None, help="Re-fit by least squares (default: on with --calib).")
@click.option("--quantize", type=click.Choice(QUANTIZE_CHOICES), default="auto", show_default=True,
              help="auto: the fastest of the modes that apply whose outputs agree; float if none is faster.")
@click.option("--measure/--no-measure", "measure_quantized", default=True,
              help="Time int8 against float before keeping it (default on).")
@click.option("--max-layer-error", type=float, help="int8 of MatMul models: see `quantize --max-layer-error`.")
@CLEANUP_OPTION
@calibration_options
@click.option("--eval", "eval_path", metavar="PATH", help="Held-out data for accuracy/agreement and --max-drop.")
@click.option("--max-drop", type=float,
              help="Quality gate: maximum accuracy (or agreement) drop in points; the budget of --target-macs auto.")
@click.option("--min-speedup", type=float, help="Quality gate: minimum p50 latency speedup of the final model.")
@click.option("--round-to", type=NumberOrAuto(int), default="auto", show_default=True,
              help="Kept channel counts are multiples of this; auto times 1, 8, 16, 32 and keeps the fastest.")
@click.option("--min-channels", default=1, show_default=True)
@click.option("--exclude", multiple=True, metavar="PATTERN")
@layernorm_option
@grouped_conv_option
@click.option("--runs", default=50, show_default=True, help="Timed benchmark runs per model.")
@click.option("--warmup", default=5, show_default=True)
@click.option("--threads", type=int, help="onnxruntime intra-op threads of every stage (calibration, timing, benchmark).")
@provider_options
@click.option("--memory/--no-memory", default=True, help="Measure peak memory per model (a subprocess each).")
@click.option("--seed", default=0, show_default=True)
@shape_option
@click.option("--force", is_flag=True, help="Overwrite a previous result in OUTPUT.")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON on stdout.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@click.pass_context
def run(ctx, model, output, config_path, force, as_json, quiet, **options):
    """The deployment step: prune, re-fit, quantize, verify, benchmark, gate (exit 3 on a failed gate)."""
    from onnx_slim.pipeline.run import run_pipeline

    console = Console(quiet, bars=not as_json)
    config, config_file = pipeline_config(ctx, model, config_path, options)
    if config_file:
        console.progress(f"config: {config_file}")
    with writing_output(output):
        report = run_pipeline(model, output, config, config_file=config_file, force=force, progress=console)
    if as_json:
        click.echo(to_json(report.to_dict()))
    else:
        click.echo(report.summary_markdown())
        click.echo(f"\nwrote {report.outputs.model} and {report.outputs.report_json}")
    report.check_gates()


def pipeline_config(ctx, model, config_path, options):
    """PipelineConfig from defaults < config file < options given on the command line."""
    from click.core import ParameterSource

    from onnx_slim.pipeline.config import config_from_mapping, load_config, over_config, sibling_config

    config_file = config_path or sibling_config(model)
    given = {("eval" if name == "eval_path" else name): value for name, value in options.items()
             if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    defaults = {("eval" if name == "eval_path" else name): value for name, value in options.items()}
    merged = over_config(load_config(config_file) if config_file else {}, given, defaults)
    return config_from_mapping(merged), (str(config_file) if config_file else None)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--target-macs", "targets", default="0.9,0.7,0.5", show_default=True, help="Comma-separated MACs fractions.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
@click.option("--criterion")
@click.option("--reconstruct/--no-reconstruct", default=None)
@click.option("--quantize", type=click.Choice(QUANTIZE_CHOICES), default="auto", show_default=True)
@calibration_options
@click.option("--eval", "eval_path", metavar="PATH")
@click.option("--runs", default=30, show_default=True)
@click.option("--warmup", default=3, show_default=True)
@click.option("--threads", type=int)
@provider_options
@click.option("--memory/--no-memory", default=True)
@click.option("--seed", default=0, show_default=True)
@shape_option
@click.option("--force", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", is_flag=True)
@click.pass_context
def sweep(ctx, model, output, targets, config_path, force, as_json, quiet, **options):
    """Run the pipeline at several MACs targets; write a table (and a plot with matplotlib)."""
    from onnx_slim.pipeline.sweep import run_sweep

    console = Console(quiet, bars=not as_json)
    config, config_file = pipeline_config(ctx, model, config_path, options)
    fractions = floats(targets)
    with writing_output(output):
        result = run_sweep(model, output, config, fractions, force=force, progress=console)
    if as_json:
        click.echo(to_json(result))
    else:
        click.echo(result["markdown"])
        click.echo(f"\nwrote {result['outputs']['markdown']}" + (f" and {result['outputs']['plot']}" if result["outputs"].get("plot") else ""))


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--mode", type=click.Choice(["auto", "static", "dynamic", "int4", "fp16"]), default="auto",
              show_default=True,
              help="auto: makes static (with --calib), dynamic, int4 (MatMul weights) and fp16 (GPU provider), keeps "
                   "the fastest whose outputs agree (cosine >= 0.99), or float if none is faster; static needs "
                   "--calib (random: smoke test only).")
@click.option("--format", "quant_format", type=click.Choice(["qdq", "qoperator"]), default="qdq", show_default=True)
@click.option("--per-channel/--per-tensor", default=None, help="Weight granularity (default: per channel for static CNNs).")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True)
@click.option("--reduce-range/--no-reduce-range", default=None, help="7-bit weights (default: on CPUs without VNNI).")
@click.option("--exclude", multiple=True, metavar="PATTERN", help="Keep nodes matching these globs in float.")
@click.option("--bias-correction/--no-bias-correction", default=True, show_default=True,
              help="Static: shift int8 biases so each layer's mean output on --calib matches the float model's.")
@click.option("--smooth-outliers/--no-smooth-outliers", default=True, show_default=True,
              help="int8 of MatMul models with --calib: SmoothQuant scales per activation, and float for layers "
                   "whose simulated int8 error stays above --max-layer-error.")
@click.option("--max-layer-error", type=float,
              help="With --smooth-outliers: the simulated int8 error (mean relative error of an output row) above "
                   "which a MatMul layer stays float (default 0.05); higher is faster and less accurate.")
@click.option("--block-size", default=32, show_default=True, help="int4: weight rows per scale (a power of two >= 16).")
@click.option("--symmetric/--asymmetric", default=True, show_default=True, help="int4: without or with zero points.")
@click.option("--keep-io-types/--no-keep-io-types", default=True, show_default=True,
              help="fp16: graph inputs and outputs stay float32.")
@CLEANUP_OPTION
@click.option("--measure/--no-measure", default=True, help="Time the candidates against the float model (default on).")
@click.option("--threads", type=int, help="onnxruntime intra-op threads for that timing.")
@provider_options
@calibration_options
@click.option("--eval", "eval_path", metavar="PATH", help="Held-out data: agreement with the float model.")
@click.option("--seed", default=0, show_default=True)
@shape_option
@click.option("--force", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", is_flag=True)
def quantize(model, output, mode, quant_format, per_channel, method, reduce_range, exclude, bias_correction,
             smooth_outliers, max_layer_error, block_size, symmetric, keep_io_types, cleanup, measure, threads,
             providers, provider_options, calib, calib_samples, batch_size, eval_path, seed, input_shapes, input_values,
             force, as_json, quiet, **image_options):
    """Quantize MODEL with onnxruntime: int8 (static QDQ or dynamic), int4 MatMul weights or float16."""
    from onnx_slim.data.evaluate import evaluate
    from onnx_slim.deploy.quantize import calibration_source, quantize_model
    from onnx_slim.pipeline.candidates import batch_sizes

    console = Console(quiet, bars=not as_json)
    session = session_spec(threads, providers, provider_options)
    inputs = parse_inputs(input_shapes, input_values)
    params = {**image_options, "seed": seed, **inputs}
    calibration = load_data(calib, model, params, calib_samples)
    evaluation_data = load_data(eval_path, model, params)
    console.progress("quantizing")
    calibration_batch, evaluation_batch = batch_sizes(batch_size)
    with writing_output(output):
        report = quantize_model(model, output, mode=mode, calibration=calibration_source(calibration, calibration_batch),
                                quant_format=quant_format, per_channel=per_channel, method=method, force=force,
                                reduce_range=reduce_range, exclude=list(exclude), calibration_batch_size=calibration_batch,
                                measure=measure, session=session, bias_correction=bias_correction,
                                smooth_outliers=smooth_outliers, max_layer_error=max_layer_error, cleanup=cleanup,
                                block_size=block_size, symmetric=symmetric, keep_io_types=keep_io_types, **inputs)
    data = report.to_dict()
    if evaluation_data is not None:
        console.progress(f"evaluating on {evaluation_data.description}")
        data["evaluation"] = evaluate(model, output, evaluation_data, batch_size=evaluation_batch, session=session)
    if as_json:
        click.echo(to_json(data))
        return
    click.echo(quantize_summary(data))
    if "evaluation" in data:
        click.echo(evaluation_line(data["evaluation"]))
    click.echo(f"wrote {output}")


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--baseline", type=click.Path(dir_okay=False), help="Model the others are compared with (default: the first).")
@click.option("--runs", default=50, show_default=True)
@click.option("--warmup", default=5, show_default=True)
@click.option("--threads", type=int, help="onnxruntime intra-op threads.")
@provider_options
@click.option("--include-copies", is_flag=True,
              help="On a GPU provider, time copying inputs to the device and outputs back too "
                   "(default: they stay on the device, bound once, and only the model is timed).")
@click.option("--batch", "--batch-size", "batch", default=1, show_default=True, help="Samples per timed run.")
@click.option("--shape", "--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS",
              help="Input shape (repeatable).")
@value_option
@click.option("--data", "data_path", metavar="PATH", help="Inputs from data (.npz...) instead of random ones.")
@click.option("--no-memory", is_flag=True, help="Skip the per-model peak-memory measurement.")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", is_flag=True)
def bench(models, baseline, runs, warmup, threads, providers, provider_options, include_copies, batch, input_shapes,
          input_values, data_path, no_memory, seed, as_json, quiet):
    """Latency (mean, p50..p99), throughput, memory, size, MACs and agreement, interleaved across MODELS."""
    from onnx_slim.deploy.bench import benchmark

    console = Console(quiet, bars=not as_json)
    session = session_spec(threads, providers, provider_options)
    inputs = parse_inputs(input_shapes, input_values)
    data = None
    if data_path:
        data = load_data(data_path, models[0], {"seed": seed, **inputs}).batches(batch)
    console.progress(f"benchmarking {len(models) + (1 if baseline and baseline not in models else 0)} models, {runs} runs each")
    report = benchmark(list(models), baseline=baseline, runs=runs, warmup=warmup, session=session,
                       batch=batch, shapes=inputs["input_shapes"] or None, values=inputs["input_values"] or None,
                       data=data, seed=seed,
                       measure_memory=not no_memory, include_copies=include_copies, progress=console)
    click.echo(to_json(report.to_dict()) if as_json else report.to_markdown())


def _debug_requested(args: list[str]) -> bool:
    """`--debug` among the options before the command name (after it, click refuses it), or ONNX_SLIM_DEBUG=1."""
    for arg in args:
        if arg == "--debug":
            return True
        if not arg.startswith("-"):
            break
    return os.environ.get("ONNX_SLIM_DEBUG") == "1"


def main(argv=None) -> None:
    """Entry point: one-line errors and the documented exit codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    with unwind_on_signals():
        code = _main(args)
    if code:
        sys.exit(code)


def _main(args: list[str]) -> int:
    debug = _debug_requested(args)
    try:
        cli.main(args=args, prog_name="onnx-slim", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.exceptions.Abort as abort:
        # click turns a KeyboardInterrupt into Abort: keep telling interruptions apart.
        if isinstance(abort.__context__, KeyboardInterrupt):
            click.echo(MESSAGE, err=True)
            return EXIT_INTERRUPTED
        click.echo("error: aborted", err=True)
        return 1
    except click.ClickException as exc:
        if debug:
            raise
        click.echo(f"error: {exc.format_message()}", err=True)
        return 2 if isinstance(exc, click.UsageError) else 1
    except OnnxSlimError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo(MESSAGE, err=True)
        return EXIT_INTERRUPTED
    except Terminated as exc:
        click.echo(MESSAGE, err=True)
        return exc.exit_code
    except Exception as exc:  # a bug of ours: still one line, with a way to see more
        if debug:
            raise
        click.echo(f"error: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", err=True)
        return 1
    return 0
