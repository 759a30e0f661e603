"""Latency benchmark of one or more models on the same inputs, with onnxruntime on the CPU.

Timed runs of several models are interleaved (A B A B ...) after every model's
warm-up, so drift of the machine (other processes, frequency scaling, thermal
limits) falls on all models alike; speedups compare like with like.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from onnx_slim.data.metrics import agreement as output_agreement
from onnx_slim.errors import OnnxSlimError, UsageError
from onnx_slim.formatting import human_bytes
from onnx_slim.ir.hardware import cpu_info
from onnx_slim.ir.inputs import check_input_shapes, graph_inputs, leading_dim, random_inputs
from onnx_slim.ir.model import ModelSource, load_model, model_file_size
from onnx_slim.ir.runtime import SessionSpec, create_session, run_session
from onnx_slim.ops import cost as cost_module

Feeds = Mapping[str, np.ndarray]

PERCENTILES = (50, 90, 95, 99)


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

    def to_dict(self) -> dict:
        return {
            "models": [model.to_dict() for model in self.models],
            "baseline": self.baseline,
            "runs": self.runs,
            "warmup": self.warmup,
            "threads": self.threads,
            "batch": self.batch,
            "cpu": dict(self.cpu),
            "notes": list(self.notes),  # why an agreement or a memory figure is missing
        }

    def to_markdown(self) -> str:
        """A Markdown table, one row per model, then the setup and any notes."""
        header = (
            "| model | mean ms | p50 ms | p90 ms | p99 ms | samples/s | speedup (p50) | session ms "
            "| size | params | MACs | peak memory | cosine | top-1 |"
        )
        rule = "|" + "---|" * (header.count("|") - 1)
        rows = [_markdown_row(model) for model in self.models]
        setup = (
            f"baseline `{self.baseline}`; {self.runs} runs after {self.warmup} warm-up, batch {self.batch}, "
            f"threads {self.threads or 'default'}; CPU {self.cpu.get('processor') or self.cpu.get('machine')}"
        )
        lines = [header, rule, *rows, "", setup]
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def benchmark(
    models: Sequence[ModelSource],
    *,
    baseline: int | str | os.PathLike | None = None,
    runs: int = 50,
    warmup: int = 5,
    session: SessionSpec = SessionSpec(),
    batch: int = 1,
    shapes: Mapping[str, Sequence[int]] | None = None,
    data: Iterable[Feeds] | None = None,
    seed: int = 0,
    measure_memory: bool = True,
) -> BenchReport:
    """Time `models` on the same inputs and compare each with the baseline.

    Inputs are the first batch of `data` (repeated for every run) or random
    inputs shaped by `batch` and `shapes`. `baseline` is an index into `models`
    or a path (benchmarked too, first, if not among `models`); default the
    first model. Each model gets one untimed run (its outputs give the
    agreement with the baseline), `warmup` untimed runs, then `runs` timed
    runs interleaved with the other models' (all sessions stay open for
    that). Params and MACs are counted at `shapes` (batch 1 where the batch is
    symbolic). See `measure_peak_memory` for what the memory figure means.
    """
    _check_counts(runs=runs, warmup=warmup, batch=batch)
    sources, baseline_index = _with_baseline(list(models), baseline)
    entries = [_load_entry(source, index) for index, source in enumerate(sources)]
    _check_same_inputs(entries)
    # Checked here: random inputs and the MACs count would otherwise ignore a shape for no input.
    check_input_shapes(entries[baseline_index].model, shapes, option="--shape")
    feeds = _benchmark_feeds(entries[baseline_index].model, data=data, batch=batch, shapes=shapes, seed=seed)
    effective_batch = leading_dim(feeds)

    sessions, session_ms = zip(*(_timed_session(entry, session) for entry in entries))
    outputs = [run_session(session, feeds) for session in sessions]
    timings = interleaved_timings([timed_call(opened, feeds) for opened in sessions], runs=runs, warmup=warmup)

    notes: list[str] = []
    peak_memory = _peak_memories(entries, feeds, session, notes) if measure_memory else [None] * len(entries)
    stats = [latency_stats(times) for times in timings]
    results = [
        _model_bench(
            entry, timings[index], stats[index], stats[baseline_index], session_ms[index], peak_memory[index],
            outputs[baseline_index], outputs[index], effective_batch, shapes, notes,
        )
        for index, entry in enumerate(entries)
    ]
    return BenchReport(
        models=results, baseline=entries[baseline_index].label, runs=runs, warmup=warmup,
        threads=session.threads, batch=effective_batch, cpu=cpu_info(), notes=notes,
    )


def interleaved_timings(
    runners: Sequence[Callable[[], object]],
    *,
    runs: int,
    warmup: int,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> list[list[float]]:
    """Milliseconds of `runs` calls of each runner: all warm-ups first, then A B A B ... rounds.

    `clock` returns nanoseconds (injectable for tests).
    """
    for runner in runners:
        for _ in range(warmup):
            runner()
    timings: list[list[float]] = [[] for _ in runners]
    for _ in range(runs):
        for index, runner in enumerate(runners):
            start = clock()
            runner()
            timings[index].append((clock() - start) / 1e6)
    return timings


def latency_stats(latencies_ms: Sequence[float]) -> dict:
    """mean, min, max and the p50/p90/p95/p99 percentiles (numpy's linear interpolation)."""
    values = np.asarray(latencies_ms, dtype=np.float64)
    if values.size == 0:
        raise UsageError("no latencies to summarize: runs must be at least 1")
    stats = {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}
    for percentile, value in zip(PERCENTILES, np.percentile(values, PERCENTILES)):
        stats[f"p{percentile}"] = float(value)
    return stats


def speedup(baseline_stats: Mapping[str, float], model_stats: Mapping[str, float]) -> dict:
    """Baseline latency / model latency, on the mean and on the median (p50)."""
    return {
        "mean": _ratio(baseline_stats["mean"], model_stats["mean"]),
        "p50": _ratio(baseline_stats["p50"], model_stats["p50"]),
    }


def measure_peak_memory(model_path: str | os.PathLike, feeds: Feeds, session: SessionSpec = SessionSpec()) -> int:
    """Peak resident memory (bytes) that creating a session and running it once adds.

    Runs in a fresh process (multiprocessing "spawn"), so nothing of this process
    counts. Once the child has imported onnxruntime and received the inputs, it
    takes its resident size as the baseline, builds the session, runs once and
    reports how far its peak resident size rose above that baseline. On Linux the
    peak is first reset (`/proc/self/clear_refs`) and read from `VmHWM`, so the
    peak of the child's own imports does not hide a small model; elsewhere it is
    the growth of `ru_maxrss`, which can under-count models smaller than that
    import peak. The figure covers the model bytes onnxruntime reads, its
    weights after graph optimization and the arena of one run: a high-water
    mark, not what the session keeps afterwards, and allocator caching can move
    it by a few MB from one measurement to the next.
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_peak_memory_in_child, os.fspath(model_path), dict(feeds), session).result()


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


def _benchmark_feeds(model, *, data, batch, shapes, seed) -> dict[str, np.ndarray]:
    specs = graph_inputs(model)
    if data is None:
        return random_inputs(model, batch=batch, seed=seed, shapes=shapes)
    first = next(iter(data), None)
    if first is None:
        raise UsageError("the benchmark data is empty: give at least one batch")
    missing = [spec.name for spec in specs if spec.name not in first]
    if missing:
        raise UsageError(f"benchmark data lacks model inputs {missing} (it has {sorted(first)})")
    return {spec.name: np.asarray(first[spec.name]).astype(spec.dtype, copy=False) for spec in specs}


def _timed_session(entry: _Entry, spec: SessionSpec):
    start = time.perf_counter_ns()
    session = create_session(entry.source, spec)
    return session, (time.perf_counter_ns() - start) / 1e6


def timed_call(session: ort.InferenceSession, feeds: Feeds) -> Callable[[], object]:
    """One run of `session` on `feeds`, as a call to time: bare session.run, as little Python as possible."""
    output_names = [output.name for output in session.get_outputs()]
    feeds = dict(feeds)
    return lambda: session.run(output_names, feeds)


def _ratio(baseline_ms: float, model_ms: float) -> float:
    return baseline_ms / model_ms if model_ms > 0 else math.inf


# --- derived measurements ----------------------------------------------------


def _model_bench(
    entry, timings, stats, baseline_stats, session_ms, peak_memory, baseline_outputs, outputs, batch, shapes, notes,
) -> ModelBench:
    model_agreement, agreement_note = _agreement_with_baseline(baseline_outputs, outputs)
    if agreement_note:
        notes.append(f"{entry.label}: no agreement: {agreement_note}")
    params, macs = _params_and_macs(entry, shapes, notes)
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


def _params_and_macs(entry: _Entry, shapes, notes: list[str]) -> tuple[int | None, int | None]:
    try:
        model_cost = cost_module.model_cost(entry.model, input_shapes=shapes)
    except Exception as exc:  # counting is a courtesy: never fail a benchmark over it
        notes.append(f"{entry.label}: params/MACs not counted: {exc}")
        return None, None
    if model_cost.uncounted:
        notes.append(f"{entry.label}: MACs leave out {len(model_cost.uncounted)} nodes of unknown shape")
    return model_cost.params, model_cost.macs


def _peak_memories(entries, feeds, session: SessionSpec, notes: list[str]) -> list[int | None]:
    peaks = []
    with tempfile.TemporaryDirectory(prefix="onnx_slim_bench.") as scratch:
        for index, entry in enumerate(entries):
            path = entry.source
            if isinstance(path, onnx.ModelProto):
                # The child loads from a file either way, so in-memory models are measured alike.
                path = os.path.join(scratch, f"model_{index}.onnx")
                onnx.save_model(entry.model, path)
            try:
                peaks.append(measure_peak_memory(path, feeds, session))
            except Exception as exc:  # a crashed child (e.g. out of memory) should not lose the timings
                notes.append(f"{entry.label}: peak memory not measured: {exc}")
                peaks.append(None)
    return peaks


def _peak_memory_in_child(model_path: str, feeds: dict, spec: SessionSpec) -> int:
    peak_reader = _linux_peak_reader() or _MaxRssReader()
    before = peak_reader.baseline()
    session = create_session(model_path, spec)
    run_session(session, feeds)
    return max(0, peak_reader.peak() - before)


class _LinuxPeakReader:
    """Resident size and its high-water mark from /proc/self/status, with the mark reset at start."""

    def baseline(self) -> int:
        Path("/proc/self/clear_refs").write_text("5")  # "5" resets the peak RSS to the current RSS
        return self._status_bytes("VmRSS")

    def peak(self) -> int:
        return self._status_bytes("VmHWM")

    @staticmethod
    def _status_bytes(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
        raise OSError(f"{key} missing from /proc/self/status")


class _MaxRssReader:
    """Growth of getrusage's ru_maxrss: the fallback where /proc cannot reset the peak."""

    def baseline(self) -> int:
        return self.peak()

    def peak(self) -> int:
        import resource  # POSIX only; imported here so the module loads everywhere

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports kilobytes, macOS bytes.
        return peak if sys.platform == "darwin" else peak * 1024


def _linux_peak_reader() -> _LinuxPeakReader | None:
    reader = _LinuxPeakReader()
    try:
        reader.baseline()
        reader.peak()
    except OSError:
        return None
    return reader


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
        _maybe(agreement.get("cosine"), "{:.5f}"),
        _maybe(agreement.get("top1"), "{:.4f}"),
    ]
    return "| " + " | ".join(cells) + " |"


def _maybe(value, template: str) -> str:
    return "-" if value is None else template.format(value)
