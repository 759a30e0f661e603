"""Latency benchmark of one or more models on the same inputs, with onnxruntime on any execution provider.

Timed runs of several models are interleaved (A B A B ...) after every model's
warm-up, so drift of the machine (other processes, frequency scaling, thermal
limits) falls on all models alike; speedups compare like with like. On a GPU
provider the inputs and outputs stay on the device (see `timing.timed_call`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx

from onnx_slim.data.metrics import agreement as output_agreement
from onnx_slim.deploy.memory import peak_memories
from onnx_slim.deploy.timing import (  # quant_speed and scripts time sessions with these through this module
    DEVICE_WARMUP,
    interleaved_timings,
    latency_stats,
    noise_caveat,
    speedup,
    timed_call,
    timed_session,
)
from onnx_slim.errors import OnnxSlimError, UsageError
from onnx_slim.formatting import human_bytes
from onnx_slim.ir.hardware import cpu_info
from onnx_slim.ir.inputs import (InputValues, check_input_shapes, check_input_values, fixed_batch_size, graph_inputs,
                                leading_dim, random_inputs, random_scalars_hint, shapes_at_batch)
from onnx_slim.ir.model import ModelSource, load_model, model_file_size
from onnx_slim.ir.progress import Reporter, as_progress
from onnx_slim.ir.runtime import SessionSpec, run_session
from onnx_slim.ops import cost as cost_module

Feeds = Mapping[str, np.ndarray]


@dataclass
class ModelBench:
    """Measurements of one model. Latencies in milliseconds."""

    path: str
    latency_ms: dict
    throughput: float
    session_ms: float
    peak_memory_bytes: int | None
    size_bytes: int
    params: int | None
    macs: int | None
    speedup: dict
    agreement: dict | None
    agreement_note: str | None = None  # why agreement is None
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "latency_ms": dict(self.latency_ms),
            "throughput": self.throughput,
            "session_ms": self.session_ms,
            "peak_memory_bytes": self.peak_memory_bytes,
            "size_bytes": self.size_bytes,
            "params": self.params,
            "macs": self.macs,
            "speedup": dict(self.speedup),
            "agreement": self.agreement,
            "agreement_note": self.agreement_note,
        }


@dataclass
class BenchReport:
    models: list[ModelBench]
    baseline: str
    runs: int
    warmup: int
    threads: int | None
    batch: int
    cpu: dict
    notes: list[str] = field(default_factory=list)  # agreement skipped, memory not measured...
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])  # the sessions' own list
    device: str = "cpu"  # where the timed runs' inputs and outputs live: "cpu" or e.g. "cuda:0"
    include_copies: bool = False  # on a device: host-device copies timed too
    agreement_inputs: str = "random"  # "random" or "data": what the agreement with the baseline is computed on
    agreement_samples: int = 0

    def to_dict(self) -> dict:
        return {
            "models": [model.to_dict() for model in self.models],
            "baseline": self.baseline,
            "runs": self.runs,
            "warmup": self.warmup,
            "threads": self.threads,
            "batch": self.batch,
            "cpu": dict(self.cpu),
            "providers": list(self.providers),
            "device": self.device,
            "include_copies": self.include_copies,
            "agreement_inputs": self.agreement_inputs,
            "agreement_samples": self.agreement_samples,
            "notes": list(self.notes),  # why an agreement or a memory figure is missing
        }

    def to_markdown(self, data_option: str = "--data") -> str:
        """A Markdown table, one row per model, then the setup, what agreement is computed on, and any notes.

        `data_option` is the option that gives real inputs, for the hint under random-input agreement."""
        random = self.agreement_inputs == "random"
        agreement = "| cosine (random inputs) | top-1 (random inputs) |" if random else "| cosine | top-1 |"
        header = (
            "| model | mean ms | p50 ms | p90 ms | p99 ms | samples/s | speedup (p50) | session ms "
            "| size | params | MACs | peak memory " + agreement
        )
        rule = "|" + "---|" * (header.count("|") - 1)
        rows = [_markdown_row(model) for model in self.models]
        lines = [header, rule, *rows, "", self._setup_line(), "", f"- {self.agreement_line(data_option)}"]
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def agreement_line(self, data_option: str = "--data") -> str:
        """What the agreement columns are computed on, and, for random inputs, how little they say."""
        plural = "s" if self.agreement_samples != 1 else ""
        if self.agreement_inputs == "random":
            return (f"agreement with the baseline on {self.agreement_samples} random-input sample{plural}: "
                    f"says little about a model "
                    f"(a pruned or quantized model can agree on real data and not on noise); "
                    f"pass {data_option} for real agreement")
        return f"agreement with the baseline on {self.agreement_samples} sample{plural} of the data (the timed batch)"

    def _setup_line(self) -> str:
        where = f"CPU {self.cpu.get('processor') or self.cpu.get('machine')}"
        if self.device != "cpu":
            copies = ("host-device copies timed (--include-copies)" if self.include_copies
                      else "inputs and outputs bound on the device, host-device copies not timed")
            where = f"device {self.device} ({copies}); host {where}"
        return (
            f"baseline `{self.baseline}`; {self.runs} runs after {self.warmup} warm-up, batch {self.batch}, "
            f"threads {self.threads or 'default'}; providers {', '.join(self.providers)}; {where}"
        )


def benchmark(
    models: Sequence[ModelSource],
    *,
    baseline: int | str | os.PathLike | None = None,
    runs: int = 50,
    warmup: int = 5,
    session: SessionSpec = SessionSpec(),
    batch: int = 1,
    shapes: Mapping[str, Sequence[int]] | None = None,
    values: InputValues | None = None,
    data: Iterable[Feeds] | None = None,
    seed: int = 0,
    measure_memory: bool = True,
    include_copies: bool = False,
    progress: Reporter | None = None,
) -> BenchReport:
    """Time `models` on the same inputs and compare each with the baseline.

    Inputs are the first batch of `data` (repeated for every run) or random
    inputs shaped by `batch` and `shapes` (`values` fixes some inputs). `baseline` is an index into `models`
    or a path (benchmarked too, first, if not among `models`); default the
    first model. Each model gets one untimed run (its outputs give the
    agreement with the baseline), `warmup` untimed runs, then `runs` timed
    runs interleaved with the other models' (all sessions stay open for
    that). Params and MACs are counted at `shapes` (batch 1 where the batch is
    symbolic). See `memory.measure_peak_memory` for what the memory figure means.
    On a provider with device memory (`session.device`), warm-up is at least
    DEVICE_WARMUP runs and the timed runs leave inputs and outputs on the device
    unless `include_copies`. `progress` counts the timed runs.
    """
    _check_counts(runs=runs, warmup=warmup, batch=batch)
    sources, baseline_index = _with_baseline(list(models), baseline)
    entries = [_load_entry(source, index) for index, source in enumerate(sources)]
    _check_same_inputs(entries)
    # Checked here: random inputs and the MACs count would otherwise ignore a shape for no input.
    check_input_shapes(entries[baseline_index].model, shapes, option="--shape")
    check_input_values(entries[baseline_index].model, values)
    feeds = _benchmark_feeds(entries[baseline_index].model, data=data, batch=batch, shapes=shapes, seed=seed,
                             values=values)
    effective_batch = leading_dim(feeds)

    device = session.device
    if device is not None:
        warmup = max(warmup, DEVICE_WARMUP)
    sessions, session_ms = zip(*(timed_session(entry.source, session) for entry in entries))
    try:
        outputs = [run_session(opened, feeds) for opened in sessions]
    except OnnxSlimError as exc:
        if data is not None:
            raise
        raise OnnxSlimError(f"{exc}{random_scalars_hint(entries[baseline_index].model, values)}") from None
    if data is not None:  # params and MACs at the data's sizes (and any given), not at guessed ones
        shapes = {**shapes_at_batch(entries[baseline_index].model,
                                    {name: np.shape(value) for name, value in feeds.items()}, 1), **(shapes or {})}
    runners = [timed_call(opened, feeds, device, include_copies) for opened in sessions]
    with as_progress(progress).steps("timing", runs * len(runners)) as advance:
        timings = interleaved_timings(runners, runs=runs, warmup=warmup, advance=advance)

    stats = [latency_stats(times) for times in timings]
    notes: list[str] = [caveat] if (caveat := noise_caveat(stats)) else []
    if effective_batch != batch:
        fixed = fixed_batch_size(graph_inputs(entries[baseline_index].model), values)
        why = ("the data's first batch holds" if data is not None and not fixed
               else "the model's inputs fix the batch at")
        notes.append(f"{why} {effective_batch}: timed at batch {effective_batch}, not the {batch} asked for")
    peak_memory = peak_memories(entries, feeds, session, notes) if measure_memory else [None] * len(entries)
    if measure_memory and device is not None:
        notes.append(f"peak memory is the host's; memory on {device[0]}:{device[1]} is not measured")
    results = [
        _model_bench(
            entry, timings[index], stats[index], stats[baseline_index], session_ms[index], peak_memory[index],
            outputs[baseline_index], outputs[index], effective_batch, (shapes, values), notes,
        )
        for index, entry in enumerate(entries)
    ]
    return BenchReport(
        models=results, baseline=entries[baseline_index].label, runs=runs, warmup=warmup,
        threads=session.threads, batch=effective_batch, cpu=cpu_info(), notes=notes,
        providers=list(sessions[0].get_providers()), device="cpu" if device is None else f"{device[0]}:{device[1]}",
        include_copies=include_copies and device is not None,
        agreement_inputs="random" if data is None else "data", agreement_samples=effective_batch,
    )


# --- loading -----------------------------------------------------------------


@dataclass
class _Entry:
    label: str  # the path, or a name for an in-memory model
    source: str | onnx.ModelProto  # what sessions are built from
    model: onnx.ModelProto
    size_bytes: int


def _load_entry(source: ModelSource, index: int) -> _Entry:
    model = load_model(source, copy=False)
    if isinstance(source, onnx.ModelProto):
        return _Entry(f"<in-memory model {index}>", model, model, model.ByteSize())
    path = os.fspath(source)
    return _Entry(path, path, model, model_file_size(path))


def _with_baseline(models: list[ModelSource], baseline) -> tuple[list[ModelSource], int]:
    if not models:
        raise UsageError("no models to benchmark: give at least one")
    if baseline is None:
        return models, 0
    if isinstance(baseline, int):
        if not 0 <= baseline < len(models):
            raise UsageError(f"baseline index {baseline} is out of range for {len(models)} models")
        return models, baseline
    wanted = Path(baseline).resolve()
    for index, source in enumerate(models):
        if not isinstance(source, onnx.ModelProto) and Path(source).resolve() == wanted:
            return models, index
    # A baseline outside the list is benchmarked too, first.
    return [baseline, *models], 0


def _check_same_inputs(entries: Sequence[_Entry]) -> None:
    expected = sorted(spec.name for spec in graph_inputs(entries[0].model))
    for entry in entries[1:]:
        names = sorted(spec.name for spec in graph_inputs(entry.model))
        if names != expected:
            raise OnnxSlimError(
                f"models have different inputs: {entries[0].label} takes {expected}, "
                f"{entry.label} takes {names}; benchmark models of the same network"
            )


def _check_counts(*, runs: int, warmup: int, batch: int) -> None:
    if runs < 1:
        raise UsageError(f"runs must be at least 1, got {runs}")
    if warmup < 0:
        raise UsageError(f"warmup must be 0 or more, got {warmup}")
    if batch < 1:
        raise UsageError(f"batch must be at least 1, got {batch}")


# --- inputs and runs ---------------------------------------------------------


def _benchmark_feeds(model, *, data, batch, shapes, seed, values) -> dict[str, np.ndarray]:
    specs = graph_inputs(model)
    if data is None:
        return random_inputs(model, batch=batch, seed=seed, shapes=shapes, values=values)
    first = next(iter(data), None)
    if first is None:
        raise UsageError("the benchmark data is empty: give at least one batch")
    missing = [spec.name for spec in specs if spec.name not in first]
    if missing:
        raise UsageError(f"benchmark data lacks model inputs {missing} (it has {sorted(first)})")
    return {spec.name: np.asarray(first[spec.name]).astype(spec.dtype, copy=False) for spec in specs}


# --- derived measurements ----------------------------------------------------


def _model_bench(
    entry, timings, stats, baseline_stats, session_ms, peak_memory, baseline_outputs, outputs, batch, inputs, notes,
) -> ModelBench:
    model_agreement, agreement_note = _agreement_with_baseline(baseline_outputs, outputs)
    if agreement_note:
        notes.append(f"{entry.label}: no agreement: {agreement_note}")
    params, macs = _params_and_macs(entry, inputs, notes)
    return ModelBench(
        path=entry.label,
        latency_ms=stats,
        throughput=batch / (stats["mean"] / 1000.0) if stats["mean"] > 0 else math.inf,
        session_ms=session_ms,
        peak_memory_bytes=peak_memory,
        size_bytes=entry.size_bytes,
        params=params,
        macs=macs,
        speedup=speedup(baseline_stats, stats),
        agreement=model_agreement,
        agreement_note=agreement_note,
        latencies_ms=timings,
    )


def _agreement_with_baseline(baseline_outputs: Feeds, model_outputs: Feeds) -> tuple[dict | None, str | None]:
    if set(baseline_outputs) != set(model_outputs):
        return None, f"output names differ from the baseline's ({sorted(model_outputs)} vs {sorted(baseline_outputs)})"
    try:
        return output_agreement(baseline_outputs, model_outputs), None
    except OnnxSlimError as exc:
        return None, str(exc)


def _params_and_macs(entry: _Entry, inputs, notes: list[str]) -> tuple[int | None, int | None]:
    """Counted at `inputs`: (--shape sizes, --input-value values)."""
    shapes, values = inputs
    try:
        model_cost = cost_module.model_cost(entry.model, input_shapes=shapes, input_values=values)
    except Exception as exc:  # counting is a courtesy: never fail a benchmark over it
        notes.append(f"{entry.label}: params/MACs not counted: {exc}")
        return None, None
    if model_cost.uncounted:
        notes.append(f"{entry.label}: MACs leave out {len(model_cost.uncounted)} nodes of unknown shape")
    return model_cost.params, model_cost.macs


# --- Markdown ----------------------------------------------------------------


def _markdown_row(model: ModelBench) -> str:
    latency = model.latency_ms
    agreement = model.agreement or {}
    cells = [
        f"`{model.path}`",
        f"{latency['mean']:.3f}", f"{latency['p50']:.3f}", f"{latency['p90']:.3f}", f"{latency['p99']:.3f}",
        f"{model.throughput:.1f}",
        f"{model.speedup['p50']:.2f}x",
        f"{model.session_ms:.1f}",
        human_bytes(model.size_bytes),
        _maybe(model.params, "{:,}"),
        _maybe(model.macs, "{:,}"),
        human_bytes(model.peak_memory_bytes) if model.peak_memory_bytes is not None else "-",
        _cosine_cell(agreement),
        _maybe(agreement.get("top1"), "{:.4f}"),
    ]
    return "| " + " | ".join(cells) + " |"


def _cosine_cell(agreement: dict) -> str:
    """The worst output cosine, with the relative L2 of outputs that have none (one value per sample)
    beside it: a column of "-" hid a static int8 detector 70% off."""
    one_value = [row["rel_l2"] for row in agreement.get("outputs", {}).values() if row["cosine"] is None]
    error = f"rel. L2 {max(one_value):.4f} (one-value output)" if one_value else ""
    if agreement.get("cosine") is None:
        return error or "-"
    return f"{agreement['cosine']:.5f}" + (f"; {error}" if error else "")


def _maybe(value, template: str) -> str:
    return "-" if value is None else template.format(value)
