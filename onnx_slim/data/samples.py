"""Checks of calibration samples against the model's inputs, and the messages that explain a mismatch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from onnx_slim.errors import OnnxSlimError
from onnx_slim.ir.inputs import InputSpec

LABELS_KEY = "labels"


@dataclass(frozen=True)
class LoadedSamples:
    """What a loader read: a sample source per input name, optional labels, and where they came from."""

    sources: dict
    labels: np.ndarray | None
    origin: str


def checked_samples(sources: dict, labels, where, origin: str) -> LoadedSamples:
    """`sources` and `labels` once their sample counts agree."""
    check_sample_counts({name: len(source) for name, source in sources.items()}, labels, where)
    return LoadedSamples(sources, labels, origin)


def match_names(keys: list[str], specs: list[InputSpec], where: Path, kind: str, suffix: str = "") -> dict[str, str]:
    """Map each input name to the key (or file stem) holding its samples."""
    names = [spec.name for spec in specs]
    if len(specs) == 1 and len(keys) == 1:
        return {names[0]: keys[0]}  # one input, one array: the name does not matter
    missing = [name for name in names if name not in keys]
    unknown = [key for key in keys if key not in names]
    if not missing and not unknown:
        return {name: name for name in names}
    problems = []
    if missing:
        problems.append("missing " + ", ".join(f"'{name}{suffix}'" for name in missing))
    if unknown:
        problems.append("unknown " + ", ".join(f"'{key}{suffix}'" for key in unknown))
    expected = ", ".join(f"'{name}{suffix}'" for name in names)
    raise OnnxSlimError(
        f"{where}: {'; '.join(problems)}; expected {kind} {expected} (plus optional '{LABELS_KEY}{suffix}')"
    )


def check_sample_array(array: np.ndarray, spec: InputSpec, where: Path, single_sample: bool = False) -> None:
    _check_sample_shape(array.shape, spec, where, single_sample)
    _check_castable(array.dtype, spec, where)


def _check_sample_shape(shape: tuple, spec: InputSpec, where: Path, single_sample: bool = False) -> None:
    """`shape` is [N, ...], or one sample's shape when `single_sample`."""
    if single_sample:
        shape = (1,) + tuple(shape)
    elif len(shape) == 0:
        raise OnnxSlimError(f"{where}: input '{spec.name}': got a scalar; samples go on the first axis [N, ...]")
    if not spec.dims:
        return  # the model does not say the rank: accept what onnxruntime will accept
    matches = len(shape) == len(spec.dims) and all(
        static_dim(dim) is None or dim == got for dim, got in zip(spec.dims[1:], shape[1:])
    )
    if not matches:
        raise OnnxSlimError(
            f"{where}: input '{spec.name}': expected shape {format_dims(spec.dims)}, "
            f"got {_format_got(shape, single_sample)}{_layout_hint(shape, spec.dims)}"
        )


def _layout_hint(shape: tuple, dims: tuple) -> str:
    if len(shape) != 4 or len(dims) != 4:
        return ""
    if tuple(shape[1:]) == (dims[2], dims[3], dims[1]):
        return "; the data looks channels-last (NHWC): transpose it to NCHW (for image folders use --layout)"
    if tuple(shape[1:]) == (dims[3], dims[1], dims[2]):
        return "; the data looks channels-first (NCHW): transpose it to NHWC (for image folders use --layout)"
    return ""


def _check_castable(dtype: np.dtype, spec: InputSpec, where: Path) -> None:
    # "same_kind" allows float64 -> float32 or int64 -> int32, never float -> int.
    if dtype != spec.dtype and not np.can_cast(dtype, spec.dtype, casting="same_kind"):
        raise OnnxSlimError(
            f"{where}: input '{spec.name}': data is {dtype} but the model expects {spec.dtype}, "
            f"and {dtype} -> {spec.dtype} loses information; save the data as {spec.dtype}"
        )


def check_finite(values: np.ndarray, name: str, where, first_sample: int = 0) -> None:
    """Refuse NaN and infinity: criteria and re-fitting would quietly fall back and accuracy
    collapse. Scans in slices, so a memory-mapped array is never read whole into memory.
    `first_sample` is the index of `values[0]` in the whole set, for the message."""
    if not np.issubdtype(values.dtype, np.inexact):
        return
    values = values.reshape(1) if values.ndim == 0 else values
    step = max(1, _FINITE_CHECK_ELEMENTS // max(1, int(np.prod(values.shape[1:]))))
    count, first = 0, None
    for start in range(0, len(values), step):
        bad = ~np.isfinite(values[start:start + step])
        found = int(np.count_nonzero(bad))
        if found and first is None:
            position = np.argwhere(bad)[0]
            first = [first_sample + start + int(position[0])] + [int(i) for i in position[1:]]
        count += found
    if count:
        raise OnnxSlimError(
            f"{where}: input '{name}' holds {count} NaN or infinite value{'s' if count > 1 else ''}, "
            f"the first at sample {first[0]}, index {first}; fix or drop those samples"
        )


_FINITE_CHECK_ELEMENTS = 1 << 22  # ~16 MB of float32 per slice


def check_labels(labels: np.ndarray | None, where: Path | None) -> None:
    if labels is None:
        return
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise OnnxSlimError(
            f"{where}: '{LABELS_KEY}' must be integer class ids of shape [N], "
            f"got {labels.dtype} of shape {list(labels.shape)}"
        )


def check_sample_counts(counts: Mapping[str, int], labels: np.ndarray | None, where) -> None:
    if not counts:
        raise OnnxSlimError(f"{where}: no input arrays")
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"'{name}': {count}" for name, count in counts.items())
        raise OnnxSlimError(f"{where}: inputs have different sample counts ({listed}); give each the same N")
    total = next(iter(counts.values()))
    if total == 0:
        raise OnnxSlimError(f"{where}: no samples (0 rows on the first axis)")
    if labels is not None and len(labels) != total:
        raise OnnxSlimError(f"{where}: '{LABELS_KEY}' has {len(labels)} entries but the inputs have {total} samples")


def static_dim(dim) -> int | None:
    return dim if isinstance(dim, (int, np.integer)) and dim > 0 else None


def format_dims(dims: Sequence, sample_axis: bool = True) -> str:
    """'[N,3,32,32]' for model dims (axis 0 is the sample axis), '[10,32,32,3]' for data."""
    shown = []
    for axis, dim in enumerate(dims):
        if not sample_axis:
            shown.append(str(dim))
        elif axis == 0:
            shown.append("N")
        elif isinstance(dim, str):
            shown.append(dim)
        else:
            shown.append(str(dim) if static_dim(dim) else "?")
    return "[" + ",".join(shown) + "]"


def _format_got(shape: tuple, single_sample: bool) -> str:
    if single_sample:
        return format_dims(shape[1:], sample_axis=False) + " (one sample)"
    return format_dims(shape, sample_axis=False)
