"""The pruning step as library calls: `prune` and `prune_file`.

load -> normalize -> analyze (channel groups) -> score -> plan -> apply -> verify.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from onnx_slim.apply.verify import verify_model
from onnx_slim.data.evaluate import evaluate
from onnx_slim.ir.files import publish, scratch_folder
from onnx_slim.ir.model import ModelSource, Progress, check_output_path, write_model_files
from onnx_slim.pipeline.allocation import choose_allocation
from onnx_slim.pipeline.candidates import AUTO, Choice, PruneOptions, Pruner, PruneReport
from onnx_slim.pipeline.rounding import choose_rounding
from onnx_slim.pipeline.search import search_latency, search_macs

__all__ = ["PruneOptions", "PruneReport", "prune", "prune_file"]


def prune(
    model: ModelSource,
    *,
    verify: bool = True,
    progress: Progress | None = None,
    copy: bool = True,
    **options,
) -> tuple[onnx.ModelProto, PruneReport]:
    """Remove channels from `model`; returns the pruned model and a report.

    Options are the fields of `PruneOptions` (ratio=..., target_macs=...,
    criterion=..., calibration=..., reconstruct=...). The input is never
    modified (a ModelProto is copied unless copy=False). With `verify`, the
    result must pass the full ONNX checker and run in onnxruntime with the
    original output names and shapes.
    """
    settings = _options(options)
    proto, report, feeds, expected = _prune(model, settings, progress, copy)
    if verify:
        (progress or (lambda message: None))("verifying the pruned model")
        verify_model(proto, feeds, expected)
    return proto, report


def _options(options: dict) -> PruneOptions:
    unknown = set(options) - set(PruneOptions.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown prune option(s): {', '.join(sorted(unknown))}")
    settings = PruneOptions(**{**options, "exclude": tuple(options.get("exclude", ()))})
    settings.validate()
    return settings


def _prune(model, settings: PruneOptions, progress, copy):
    """prune() without the final check; also returns the feeds and expected output shapes."""
    pruner = Pruner(model, settings, progress, copy)
    choice = _choose(pruner)
    built = choice.built or pruner.build(choice.candidate, last=True)
    return built.model, pruner.report(choice, built), pruner.feeds, pruner.expected


def _choose(pruner: Pruner) -> Choice:
    """The candidate to build: by a latency or quality search, or the target asked for at the
    rounding given or measured fastest."""
    settings = pruner.settings
    if settings.target_latency is not None:
        return search_latency(pruner, settings.target_latency)
    if settings.target_macs == AUTO:
        return search_macs(pruner)
    if settings.allocate == AUTO:  # the rounding is timed on the uniform plan, then shared by every allocation
        if settings.round_to != AUTO:
            return choose_allocation(pruner, settings.target_macs, settings.round_to)
        candidate, rounding, latency = choose_rounding(pruner, target_macs=settings.target_macs)
        return choose_allocation(pruner, settings.target_macs, candidate.round_to, rounding=rounding,
                                 latency_ms=latency)
    if settings.round_to == AUTO:
        candidate, rounding, latency = choose_rounding(pruner, target_macs=settings.target_macs, ratio=settings.ratio)
        return Choice(candidate, rounding=rounding, latency_ms=latency)
    return Choice(pruner.plan(target_macs=settings.target_macs, ratio=settings.ratio, round_to=settings.round_to))


def prune_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    force: bool = False,
    progress: Progress | None = None,
    evaluation=None,
    **options,
) -> PruneReport:
    """Prune a model file into `output_path`, verifying the written files before they appear.

    The output (with data files named after it when the input kept its weights
    in external files) is written to a scratch folder next to it, checked (full
    ONNX checker, onnxruntime, output shapes) and only then renamed into place:
    an existing output is replaced with `force`, otherwise refused, even one
    that appeared while pruning. With `evaluation` (a CalibrationSet of
    held-out samples) the report gets the pruned model's agreement with the
    original, and accuracy when labels exist.
    """
    layout = check_output_path(input_path, output_path, force)
    settings = _options(options)
    output_path = Path(output_path)
    proto, report, feeds, expected = _prune(input_path, settings, progress, copy=False)
    say = progress or (lambda message: None)
    with scratch_folder(output_path.parent) as scratch:
        files = write_model_files(proto, scratch / output_path.name, layout)
        del proto
        candidate = files[-1]
        say("verifying the written model")
        verify_model(candidate, feeds, expected)
        if evaluation is not None:
            say(f"evaluating against the original on {evaluation.description}")
            report.evaluation = evaluate(str(input_path), str(candidate), evaluation,
                                         batch_size=settings.evaluation_batch_size, session=settings.session)
        report.size_after = sum(file.stat().st_size for file in files)
        publish(files, output_path.parent, force=force)
    report.output = str(output_path)
    return report
