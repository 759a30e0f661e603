"""Execution providers: short names (`cuda`, `tensorrt`...) to onnxruntime's, checked against this install.

The one place that knows provider names: the CLI, config files and scripts all
resolve `--provider` values here, and `runtime.SessionSpec` carries the result.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import onnxruntime as ort

from onnx_slim.errors import UsageError

CPU = "CPUExecutionProvider"
_SUFFIX = "ExecutionProvider"

# Spellings people use that are not onnxruntime's name minus the suffix. ROCm is gone from
# recent onnxruntime's list of providers but still in older builds.
_ALIASES = {"trt": "TensorrtExecutionProvider", "directml": "DmlExecutionProvider", "rocm": "ROCMExecutionProvider"}

# Providers whose inputs and outputs can live on the device, as OrtValue device names:
# `bench` binds them there so it times the model, not host-device copies.
DEVICE_OF = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda", "DmlExecutionProvider": "dml"}


def full_provider_name(name: str) -> str:
    """onnxruntime's name for `name`: a short name (`cuda`, any case) or a full one (`CUDAExecutionProvider`)."""
    key = name.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    for full in (*ort.get_all_providers(), *_ALIASES.values()):
        if key in (full.lower(), full.lower().removesuffix(_SUFFIX.lower())):
            return full
    short = ", ".join(sorted(short_names()))
    raise UsageError(f"unknown execution provider {name!r}; short names: {short} (or onnxruntime's full names)")


def short_names() -> set[str]:
    return {full.removesuffix(_SUFFIX).lower() for full in ort.get_all_providers()} | set(_ALIASES)


def resolve_providers(
    names: Iterable[str] | str | None, available: Iterable[str] | None = None
) -> tuple[str, ...]:
    """Providers in preference order from `--provider` values (each a name or a comma list), CPU last.

    Every one must be available in this onnxruntime (`available`, default
    `onnxruntime.get_available_providers()`), else a UsageError listing those that are.
    """
    if isinstance(names, str):
        names = [names]
    wanted = [part for value in (names or ()) for part in value.split(",") if part.strip()]
    available = list(ort.get_available_providers() if available is None else available)
    providers: list[str] = []
    for name in wanted:
        full = full_provider_name(name)
        if full not in available:
            raise UsageError(f"execution provider {full} is not available in this onnxruntime "
                             f"({ort.__version__}); available: {', '.join(available)}")
        if full not in providers:
            providers.append(full)
    # CPU always comes last: onnxruntime places each node on the first provider that has a kernel
    # for it, so the nodes a GPU or NPU provider lacks run on the CPU instead of failing the session.
    if CPU not in providers:
        providers.append(CPU)
    return tuple(providers)


def parse_provider_options(
    values: Iterable[str] | None, providers: tuple[str, ...]
) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """`[PROVIDER:]KEY=VALUE` strings as ((provider, ((key, value), ...)), ...).

    Without a provider prefix the option is for the first (preferred) provider.
    The prefix must name one of `providers`.
    """
    options: dict[str, dict[str, str]] = {}
    for text in values or ():
        target, key, value = _split_option(text, providers)
        options.setdefault(target, {})[key] = value
    return tuple((name, tuple(entries.items())) for name, entries in options.items())


def _split_option(text: str, providers: tuple[str, ...]) -> tuple[str, str, str]:
    setting, equals, value = text.partition("=")
    prefix, colon, key = setting.rpartition(":")
    if not equals or not key.strip():
        raise UsageError(f"provider option {text!r}: expected [PROVIDER:]KEY=VALUE, e.g. cuda:device_id=1")
    target = full_provider_name(prefix) if colon else providers[0]
    if target not in providers:
        raise UsageError(f"provider option {text!r} is for {target}, which is not among the providers "
                         f"({', '.join(providers)}); add --provider {prefix}")
    return target, key.strip(), value.strip()


def provider_arguments(
    providers: tuple[str, ...], options: Mapping[str, Mapping[str, str]] | None = None
) -> list:
    """The `providers=` argument of onnxruntime.InferenceSession: names, with their options where given."""
    options = options or {}
    return [(name, dict(options[name])) if options.get(name) else name for name in providers]
