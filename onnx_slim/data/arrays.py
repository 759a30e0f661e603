"""Calibration samples held in arrays: an ``.npz`` archive or a folder of ``.npy`` files."""

from __future__ import annotations

import logging
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from numpy.lib import format as npy_format

from onnx_slim.data.samples import (
    LABELS_KEY,
    LoadedSamples,
    check_finite,
    check_labels,
    check_sample_array,
    checked_samples,
    match_names,
)
from onnx_slim.errors import OnnxSlimError, first_line
from onnx_slim.ir.inputs import InputSpec

logger = logging.getLogger(__name__)


class ArraySource:
    """Samples of one input held as an array (possibly memory-mapped), cast on read; `rows`
    (indices into `data`) when the source is a subset, read only when asked."""

    def __init__(self, data: np.ndarray, dtype: np.dtype, rows: np.ndarray | None = None):
        self.data = data
        self.dtype = np.dtype(dtype)
        self.rows = rows

    def __len__(self) -> int:
        return int(self.data.shape[0]) if self.rows is None else len(self.rows)

    def read(self, start: int, stop: int) -> np.ndarray:
        # A copy: callers may modify a batch without touching the set.
        part = self.data[start:stop] if self.rows is None else self.data[self.rows[start:stop]]
        return np.array(part, dtype=self.dtype)

    def read_all(self) -> np.ndarray:
        data = self.data if self.rows is None else self.data[self.rows]
        return np.asarray(data).astype(self.dtype, copy=False)

    def subset(self, rows: np.ndarray) -> ArraySource:
        """The samples at `rows` (indices into this source)."""
        return ArraySource(self.data, self.dtype, np.asarray(rows) if self.rows is None else self.rows[rows])


def load_npz(path: Path, specs: list[InputSpec], ignored: Sequence[str] = ()) -> LoadedSamples:
    """The inputs' arrays of an .npz; names, shapes and dtypes are checked from the members'
    headers first, and only the arrays the model needs are read (memory-mapped when stored
    uncompressed), so an unused or mistaken key costs nothing. Keys in `ignored` (inputs
    --input-value fixes) are left out."""
    with _open_npz(path) as archive:
        members = _npz_members(path, archive)
        _drop_fixed(members, ignored, path, "key")
        labels_member = members.pop(LABELS_KEY, None)
        key_for_input = match_names(list(members), specs, path, "keys")
        for spec in specs:
            check_sample_array(members[key_for_input[spec.name]], spec, path)
        if labels_member is not None:
            check_labels(labels_member, path)
        labels = _read_member(path, archive, labels_member) if labels_member is not None else None
        arrays = {
            spec.name: _source(_read_member(path, archive, members[key_for_input[spec.name]]), spec, path)
            for spec in specs
        }
    origin = path.name
    renamed = {name: key for name, key in key_for_input.items() if name != key}
    if renamed:  # a one-input model fed by the archive's only array, whatever its name
        fed = ", ".join(f"key '{key}' -> input '{name}'" for name, key in renamed.items())
        logger.warning("%s: %s", path, fed)
        origin = f"{path.name} ({fed})"
    return checked_samples(arrays, labels, path, origin)


def _drop_fixed(entries: dict, ignored: Sequence[str], where: Path, kind: str) -> None:
    for name in ignored:
        if entries.pop(name, None) is not None:
            logger.warning("%s: %s '%s' ignored: --input-value fixes that input", where, kind, name)


@dataclass(frozen=True)
class _Member:
    """An .npz member as its .npy header describes it (what the checks need, no data)."""

    info: zipfile.ZipInfo
    shape: tuple
    dtype: np.dtype
    fortran_order: bool
    header_size: int

    @property
    def ndim(self) -> int:
        return len(self.shape)


def _open_npz(path: Path) -> zipfile.ZipFile:
    with open(path, "rb") as handle:
        if handle.read(6) == b"\x93NUMPY":
            raise OnnxSlimError(f"{path}: is a single .npy array, not an .npz archive; write it with numpy.savez")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _unreadable_npz(path, exc) from None


def _npz_members(path: Path, archive: zipfile.ZipFile) -> dict[str, _Member]:
    """Key -> header of every member (numpy.savez names them KEY.npy); reads a few bytes of each."""
    members = {}
    for info in archive.infolist():
        if info.is_dir():
            continue
        try:
            with archive.open(info) as handle:
                version = npy_format.read_magic(handle)
                read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
                shape, fortran_order, dtype = read_header(handle)
                header_size = handle.tell()
        except Exception as exc:
            raise _unreadable_npz(path, exc) from None
        if dtype.hasobject:
            raise OnnxSlimError(f"{path}: '{info.filename}' holds Python objects; save plain numeric arrays")
        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        members[key] = _Member(info, tuple(shape), np.dtype(dtype), fortran_order, header_size)
    return members


def _read_member(path: Path, archive: zipfile.ZipFile, member: _Member) -> np.ndarray:
    """A member's array: memory-mapped in place when stored uncompressed, else decompressed."""
    info = member.info
    stored = info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1  # 0x1: encrypted
    try:
        if stored and np.prod(member.shape) > 0:
            return np.memmap(
                path, dtype=member.dtype, mode="r", shape=member.shape,
                order="F" if member.fortran_order else "C", offset=_data_offset(path, info) + member.header_size,
            )
        with archive.open(info) as handle:
            return npy_format.read_array(handle, allow_pickle=False)
    except Exception as exc:
        raise _unreadable_npz(path, exc) from None


def _data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a member's bytes start: after its local header, whose extra field may differ from the central one."""
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local_header = handle.read(30)
    if local_header[:4] != b"PK\x03\x04":
        raise ValueError(f"bad local header for {info.filename}")
    name_length, extra_length = struct.unpack("<HH", local_header[26:30])
    return info.header_offset + 30 + name_length + extra_length


def _unreadable_npz(path: Path, exc: Exception) -> OnnxSlimError:
    return OnnxSlimError(f"{path}: cannot read it as .npz ({first_line(exc)}); write it with numpy.savez")


def _source(array: np.ndarray, spec: InputSpec, where: Path, first_sample: int = 0) -> ArraySource:
    check_finite(array, spec.name, where, first_sample)
    return ArraySource(array, spec.dtype)


def load_npy_folder(path: Path, files: list[Path], specs: list[InputSpec], ignored: Sequence[str] = ()) -> LoadedSamples:
    by_stem = {file.stem: file for file in files}
    _drop_fixed(by_stem, ignored, path, "file")
    files = [file for file in files if file.stem in by_stem]
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
        arrays[spec.name] = _source(array, spec, file)
    return checked_samples(arrays, labels, path, f"{path.name}/")


def _load_npy_sample_files(path, files, spec: InputSpec, labels) -> LoadedSamples:
    """One-input model: every file holds one sample or a batch; concatenated in name order."""
    if not files:
        raise OnnxSlimError(f"{path}: only {LABELS_KEY}.npy found; add the input samples as .npy files")
    parts, samples = [], 0
    for file in files:
        array = _read_npy(file)
        single_sample = bool(spec.dims) and array.ndim == len(spec.dims) - 1
        check_sample_array(array, spec, file, single_sample)
        parts.append(array[np.newaxis] if single_sample else array)
        check_finite(parts[-1], spec.name, file, samples)
        samples += len(parts[-1])
    data = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return checked_samples({spec.name: ArraySource(data, spec.dtype)}, labels, path, f"{path.name}/")


def _read_npy(file: Path, mmap: bool = False) -> np.ndarray:
    try:
        # Memory-mapping keeps per-input files out of memory until a batch reads them.
        return np.load(file, allow_pickle=False, mmap_mode="r" if mmap else None)
    except Exception as exc:
        raise OnnxSlimError(f"{file}: cannot read it as .npy ({first_line(exc)}); write it with numpy.save") from None
