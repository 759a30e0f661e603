"""Peak memory of creating a model's session and running it once, measured in a fresh process."""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx

from onnx_slim.ir.runtime import SessionSpec, create_session, run_session

Feeds = Mapping[str, np.ndarray]


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


def peak_memories(entries, feeds, session: SessionSpec, notes: list[str]) -> list[int | None]:
    """`measure_peak_memory` of each benchmark entry; None (and a note) where it failed."""
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
