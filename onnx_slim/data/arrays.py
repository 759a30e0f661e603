"""Calibration samples held in arrays: an ``.npz`` archive or a folder of ``.npy`` files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnx_slim.data.samples import (
    LABELS_KEY, LoadedSamples, check_labels, check_sample_array, checked_samples, match_names,
)
from onnx_slim.errors import OnnxSlimError, first_line
from onnx_slim.ir.model import InputSpec


class ArraySource:
    """Samples of one input held as an array (possibly memory-mapped), cast on read."""

    def __init__(self, data: np.ndarray, dtype: np.dtype):
        self.data = data
        self.dtype = np.dtype(dtype)

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def read(self, start: int, stop: int) -> np.ndarray:
        # A copy: callers may modify a batch without touching the set.
        return np.array(self.data[start:stop], dtype=self.dtype)

    def read_all(self) -> np.ndarray:
        return np.asarray(self.data).astype(self.dtype, copy=False)

    def subset(self, start: int, stop: int) -> ArraySource:
        return ArraySource(self.data[start:stop], self.dtype)


def load_npz(path: Path, specs: list[InputSpec]) -> LoadedSamples:
    contents = _read_npz(path)
    labels = contents.pop(LABELS_KEY, None)
    key_for_input = match_names(list(contents), specs, path, "keys")
    arrays = {}
    for spec in specs:
        array = contents[key_for_input[spec.name]]
        check_sample_array(array, spec, path)
        arrays[spec.name] = ArraySource(array, spec.dtype)
    check_labels(labels, path)
    return checked_samples(arrays, labels, path, path.name)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise OnnxSlimError(f"{path}: cannot read it as .npz ({first_line(exc)}); write it with numpy.savez") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise OnnxSlimError(f"{path}: is a single .npy array, not an .npz archive; write it with numpy.savez")
    try:
        with archive:
            return {key: archive[key] for key in archive.files}
    except Exception as exc:
        raise OnnxSlimError(f"{path}: cannot read it as .npz ({first_line(exc)}); write it with numpy.savez") from None


def load_npy_folder(path: Path, files: list[Path], specs: list[InputSpec]) -> LoadedSamples:
    labels_file = next((f for f in files if f.stem == LABELS_KEY), None)
    data_files = [f for f in files if f is not labels_file]
    labels = _read_npy(labels_file) if labels_file else None
    check_labels(labels, labels_file)
    stems = {f.stem for f in data_files}
    one_file_per_input = stems == {spec.name for spec in specs}
    if len(specs) == 1 and not one_file_per_input:
        return _load_npy_sample_files(path, data_files, specs[0], labels)
    match_names(sorted(stems), specs, path, "files", suffix=".npy")
    arrays = {}
    for spec in specs:
        file = path / f"{spec.name}.npy"
        array = _read_npy(file, mmap=True)
        check_sample_array(array, spec, file)
        arrays[spec.name] = ArraySource(array, spec.dtype)
    return checked_samples(arrays, labels, path, f"{path.name}/")


def _load_npy_sample_files(path, files, spec: InputSpec, labels) -> LoadedSamples:
    """One-input model: every file holds one sample or a batch; concatenated in name order."""
    if not files:
        raise OnnxSlimError(f"{path}: only {LABELS_KEY}.npy found; add the input samples as .npy files")
    parts = []
    for file in files:
        array = _read_npy(file)
        single_sample = bool(spec.dims) and array.ndim == len(spec.dims) - 1
        check_sample_array(array, spec, file, single_sample)
        parts.append(array[np.newaxis] if single_sample else array)
    data = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return checked_samples({spec.name: ArraySource(data, spec.dtype)}, labels, path, f"{path.name}/")


def _read_npy(file: Path, mmap: bool = False) -> np.ndarray:
    try:
        # Memory-mapping keeps per-input files out of memory until a batch reads them.
        return np.load(file, allow_pickle=False, mmap_mode="r" if mmap else None)
    except Exception as exc:
        raise OnnxSlimError(f"{file}: cannot read it as .npy ({first_line(exc)}); write it with numpy.save") from None
