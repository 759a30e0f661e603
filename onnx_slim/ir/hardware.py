"""Facts about the machine that results depend on: CPU model, cores, int8 instruction sets."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import onnxruntime as ort

_INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "avx512f", "avx2")


def cpu_info() -> dict:
    """What the results depend on: architecture, CPU model, core count, int8-relevant flags, onnxruntime."""
    flags = _cpu_flags()
    return {
        "machine": platform.machine(),
        "processor": _cpu_model_name() or platform.processor() or None,
        "logical_cores": os.cpu_count(),
        "int8_flags": [flag for flag in _INT8_CPU_FLAGS if flag in flags],
        "vnni": bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}),
        "onnxruntime": ort.__version__,
    }


def _cpu_flags() -> set[str]:
    """Feature flags from /proc/cpuinfo (x86 `flags`, ARM `Features`); empty where unavailable."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def _cpu_model_name() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return None
