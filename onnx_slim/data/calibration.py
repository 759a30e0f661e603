"""Calibration data: the samples that importance criteria and re-fitting run on.

A source is an ``.npz``, a folder of ``.npy`` files, a folder of images, or the
string ``"random"``. Everything is checked against the model's inputs before any
work starts, then exposed as a `CalibrationSet` that yields feed batches.
Image folders are decoded batch by batch, so memory stays bounded whatever the
number of images.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence, Union

import numpy as np
import onnx

from onnx_slim.errors import OnnxSlimError, UsageError, first_line
from onnx_slim.ir.model import InputSpec, fixed_batch_size, graph_inputs, load_model, random_inputs

logger = logging.getLogger(__name__)

CalibrationSource = Union[str, os.PathLike]

RANDOM_SOURCE = "random"
LABELS_KEY = "labels"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
LAYOUTS = ("nchw", "nhwc")
CHANNEL_ORDERS = ("rgb", "bgr")
DEFAULT_RANDOM_SAMPLES = 16
PILLOW_MISSING = "reading an image directory needs Pillow: pip install 'onnx-slim[images]'"


# --------------------------------------------------------------------------- sample sources


class _ArraySource:
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

    def subset(self, start: int, stop: int) -> _ArraySource:
        return _ArraySource(self.data[start:stop], self.dtype)


@dataclass(frozen=True)
class _ImageDecoder:
    """Turns one image file into one sample of the model's image input."""

    channels: int
    height: int
    width: int
    layout: str
    channel_order: str
    mean: tuple | None
    std: tuple | None
    dtype: np.dtype

    def decode(self, path: Path) -> np.ndarray:
        pixels = _read_pixels(path, self.channels, self.height, self.width)
        if self.channels == 3 and self.channel_order == "bgr":
            pixels = pixels[:, :, ::-1]
        if np.issubdtype(self.dtype, np.floating):
            values = pixels.astype(np.float32) / 255.0
            if self.mean is not None:
                values -= np.asarray(self.mean, dtype=np.float32)
            if self.std is not None:
                values /= np.asarray(self.std, dtype=np.float32)
        else:
            values = pixels  # integer image inputs take raw 0..255 pixels
        if self.layout == "nchw":
            values = values.transpose(2, 0, 1)
        return np.ascontiguousarray(values, dtype=self.dtype)


class _ImageSource:
    """Image files decoded only when a batch asks for them."""

    def __init__(self, paths: Sequence[Path], decoder: _ImageDecoder):
        self.paths = tuple(paths)
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.stack([self.decoder.decode(path) for path in self.paths[start:stop]])

    def read_all(self) -> np.ndarray:
        return self.read(0, len(self.paths))

    def subset(self, start: int, stop: int) -> _ImageSource:
        return _ImageSource(self.paths[start:stop], self.decoder)


_Source = Union[_ArraySource, _ImageSource]


def _as_source(value) -> _Source:
    if isinstance(value, (_ArraySource, _ImageSource)):
        return value
    array = np.asarray(value)
    return _ArraySource(array, array.dtype)


# --------------------------------------------------------------------------- the set


class CalibrationSet:
    """Samples for every model input (all ``[N, ...]``), optional labels, as batches.

    ``fixed_batch`` is the model's static batch size, if it has one: `batches`
    then always yields batches of exactly that size, since onnxruntime would
    reject any other.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray | _Source],
        *,
        labels: np.ndarray | None = None,
        is_random: bool = False,
        origin: str = "arrays",
        fixed_batch: int | None = None,
    ):
        self._sources: dict[str, _Source] = {name: _as_source(value) for name, value in arrays.items()}
        self.labels = None if labels is None else np.asarray(labels)
        self.is_random = is_random
        self.origin = origin
        self.fixed_batch = fixed_batch
        _check_sample_counts({name: len(source) for name, source in self._sources.items()}, self.labels, origin)

    @property
    def input_names(self) -> list[str]:
        return list(self._sources)

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """All samples in memory. Decodes every image of an image folder: prefer `batches`."""
        return {name: source.read_all() for name, source in self._sources.items()}

    @property
    def description(self) -> str:
        text = f"{self.origin}: {len(self)} samples"
        return text + " (random, structure-only)" if self.is_random else text

    def __len__(self) -> int:
        return len(next(iter(self._sources.values())))

    def __repr__(self) -> str:
        return f"CalibrationSet({self.description!r})"

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of `batch_size` samples (the last one smaller), in order."""
        for start, stop in self.batch_ranges(batch_size):
            yield {name: source.read(start, stop) for name, source in self._sources.items()}

    def batch_stream(self, batch_size: int) -> BatchStream:
        """The batches as an iterable that starts over each time it is iterated
        (onnxruntime's static calibration may read the data more than once)."""
        return BatchStream(self, batch_size)

    def batch_ranges(self, batch_size: int) -> Iterator[tuple[int, int]]:
        """(start, stop) sample ranges of the batches, honouring the model's fixed batch size."""
        size = self._effective_batch_size(batch_size)
        total = len(self)
        for start in range(0, total, size):
            stop = min(start + size, total)
            if self.fixed_batch and stop - start < size:
                logger.warning(
                    "%s: last %d samples skipped: the model only accepts batches of %d",
                    self.origin, stop - start, size,
                )
                return
            yield start, stop

    def take(self, n: int) -> CalibrationSet:
        """The first `n` samples (all of them if there are fewer)."""
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise UsageError(f"number of samples must be a positive integer, got {n!r}")
        return self._subset(0, min(int(n), len(self)), self.origin)

    def split(self, n_first: int) -> tuple[CalibrationSet, CalibrationSet]:
        """(first `n_first` samples, the rest): e.g. calibration and held-out evaluation."""
        total = len(self)
        if not isinstance(n_first, (int, np.integer)) or not 0 < n_first < total:
            raise UsageError(
                f"{self.origin}: cannot split {total} samples after {n_first!r}: "
                f"need 0 < n_first < {total} so both parts have samples"
            )
        n_first = int(n_first)
        first = self._subset(0, n_first, f"{self.origin}[:{n_first}]")
        rest = self._subset(n_first, total, f"{self.origin}[{n_first}:]")
        return first, rest

    def _subset(self, start: int, stop: int, origin: str) -> CalibrationSet:
        labels = None if self.labels is None else self.labels[start:stop]
        sources = {name: source.subset(start, stop) for name, source in self._sources.items()}
        return CalibrationSet(
            sources, labels=labels, is_random=self.is_random, origin=origin, fixed_batch=self.fixed_batch
        )

    def _effective_batch_size(self, batch_size: int) -> int:
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")
        if not self.fixed_batch:
            return int(batch_size)
        if len(self) < self.fixed_batch:
            raise OnnxSlimError(
                f"{self.origin}: the model only accepts batches of {self.fixed_batch} "
                f"but there are {len(self)} samples; give at least {self.fixed_batch}"
            )
        if batch_size != self.fixed_batch:
            logger.debug("batch size %d replaced by the model's fixed batch %d", batch_size, self.fixed_batch)
        return self.fixed_batch


# --------------------------------------------------------------------------- loading


class BatchStream:
    """A re-iterable view of a CalibrationSet's batches."""

    def __init__(self, calibration: CalibrationSet, batch_size: int) -> None:
        self.calibration, self.batch_size = calibration, batch_size

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.calibration.batches(self.batch_size)


def load_calibration(
    source: CalibrationSource,
    model: onnx.ModelProto | str | os.PathLike,
    *,
    samples: int | None = None,
    input_size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    layout: str = "nchw",
    channel_order: str = "rgb",
    seed: int = 0,
) -> CalibrationSet:
    """Load and validate calibration samples for `model` from `source`.

    `source`: an ``.npz`` (keys = input names, optional ``labels``), a folder of
    ``.npy`` files (``<input>.npy`` per input, or for a one-input model many
    files concatenated in name order), a folder of images (one image input), or
    ``"random"``. `samples` keeps the first N samples (for ``"random"``: how
    many to draw, default 16). `input_size`, `mean`, `std`, `layout` and
    `channel_order` describe how images become the model input; `mean`/`std`
    are per channel, in 0..1 units, in the model's channel order.
    """
    model = load_model(model, copy=False)
    _check_common_options(samples, layout, channel_order)
    specs = graph_inputs(model)
    if not specs:
        raise OnnxSlimError("the model has no inputs: nothing to calibrate")
    fixed_batch = fixed_batch_size(specs)
    if isinstance(source, str) and source == RANDOM_SOURCE:
        _warn_unused_image_options(input_size, mean, std)
        return _random_set(model, specs, samples or DEFAULT_RANDOM_SAMPLES, seed, fixed_batch)
    path = Path(source)
    if not path.exists():
        raise OnnxSlimError(
            f"{path}: no such file or directory; give an .npz, a folder of .npy files or images, or 'random'"
        )
    if path.is_dir():
        calibration = _load_directory(path, specs, samples, input_size, mean, std, layout, channel_order, fixed_batch)
    elif path.suffix.lower() == ".npz":
        _warn_unused_image_options(input_size, mean, std)
        calibration = _load_npz(path, specs, fixed_batch)
    else:
        raise OnnxSlimError(
            f"{path}: unsupported calibration file; give an .npz, a folder of .npy files or images, or 'random'"
        )
    calibration = calibration.take(samples) if samples else calibration
    _check_enough_for_fixed_batch(calibration, fixed_batch)
    return calibration


def _load_directory(path, specs, samples, input_size, mean, std, layout, channel_order, fixed_batch):
    # Dot files are skipped: macOS leaves "._name.jpg" companions that are not images.
    files = sorted(entry for entry in path.iterdir() if entry.is_file() and not entry.name.startswith("."))
    npy_files = [entry for entry in files if entry.suffix.lower() == ".npy"]
    image_files = [entry for entry in files if entry.suffix.lower() in IMAGE_SUFFIXES]
    if npy_files and image_files:
        raise OnnxSlimError(f"{path}: holds both .npy and image files; put calibration data of one kind per folder")
    if image_files:
        image_files = image_files[:samples] if samples else image_files
        return _load_image_folder(
            path, image_files, specs, input_size, mean, std, layout, channel_order, fixed_batch
        )
    if npy_files:
        _warn_unused_image_options(input_size, mean, std)
        return _load_npy_folder(path, npy_files, specs, fixed_batch)
    raise OnnxSlimError(
        f"{path}: no .npy or image ({'/'.join(IMAGE_SUFFIXES)}) files in this folder (sub-folders are not searched)"
    )


def _load_npz(path: Path, specs: list[InputSpec], fixed_batch: int | None) -> CalibrationSet:
    contents = _read_npz(path)
    labels = contents.pop(LABELS_KEY, None)
    key_for_input = _match_names(list(contents), specs, path, "keys")
    arrays = {}
    for spec in specs:
        array = contents[key_for_input[spec.name]]
        _check_sample_array(array, spec, path)
        arrays[spec.name] = _ArraySource(array, spec.dtype)
    _check_labels(labels, path)
    return _validated_set(arrays, labels, path, path.name, fixed_batch)


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


def _load_npy_folder(path: Path, files: list[Path], specs: list[InputSpec], fixed_batch) -> CalibrationSet:
    labels_file = next((f for f in files if f.stem == LABELS_KEY), None)
    data_files = [f for f in files if f is not labels_file]
    labels = _read_npy(labels_file) if labels_file else None
    _check_labels(labels, labels_file)
    stems = {f.stem for f in data_files}
    one_file_per_input = stems == {spec.name for spec in specs}
    if len(specs) == 1 and not one_file_per_input:
        return _load_npy_sample_files(path, data_files, specs[0], labels, fixed_batch)
    _match_names(sorted(stems), specs, path, "files", suffix=".npy")
    arrays = {}
    for spec in specs:
        file = path / f"{spec.name}.npy"
        array = _read_npy(file, mmap=True)
        _check_sample_array(array, spec, file)
        arrays[spec.name] = _ArraySource(array, spec.dtype)
    return _validated_set(arrays, labels, path, f"{path.name}/", fixed_batch)


def _load_npy_sample_files(path, files, spec: InputSpec, labels, fixed_batch) -> CalibrationSet:
    """One-input model: every file holds one sample or a batch; concatenated in name order."""
    if not files:
        raise OnnxSlimError(f"{path}: only {LABELS_KEY}.npy found; add the input samples as .npy files")
    parts = []
    for file in files:
        array = _read_npy(file)
        single_sample = bool(spec.dims) and array.ndim == len(spec.dims) - 1
        _check_sample_array(array, spec, file, single_sample)
        parts.append(array[np.newaxis] if single_sample else array)
    data = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return _validated_set({spec.name: _ArraySource(data, spec.dtype)}, labels, path, f"{path.name}/", fixed_batch)


def _read_npy(file: Path, mmap: bool = False) -> np.ndarray:
    try:
        # Memory-mapping keeps per-input files out of memory until a batch reads them.
        return np.load(file, allow_pickle=False, mmap_mode="r" if mmap else None)
    except Exception as exc:
        raise OnnxSlimError(f"{file}: cannot read it as .npy ({first_line(exc)}); write it with numpy.save") from None


def _load_image_folder(
    path, files, specs, input_size, mean, std, layout, channel_order, fixed_batch
) -> CalibrationSet:
    spec = _single_image_input(specs, path)
    channels, height, width = _image_geometry(spec, layout, input_size, path)
    mean, std = _normalization(mean, std, channels, spec)
    decoder = _ImageDecoder(channels, height, width, layout, channel_order, mean, std, spec.dtype)
    _check_images_readable(files)
    origin = f"{path.name}/ (images as {height}x{width} {'gray' if channels == 1 else channel_order} {layout})"
    return _validated_set({spec.name: _ImageSource(files, decoder)}, None, path, origin, fixed_batch)


def _random_set(model, specs: list[InputSpec], samples: int, seed: int, fixed_batch) -> CalibrationSet:
    shapes = {}
    for spec in specs:
        if not spec.dims:
            raise OnnxSlimError(
                f"input '{spec.name}' has no shape in the model, so random data cannot be shaped; give an .npz"
            )
        shapes[spec.name] = (samples,) + spec.concrete_shape()[1:]
    arrays = random_inputs(model, seed=seed, shapes=shapes)
    return CalibrationSet(arrays, is_random=True, origin=RANDOM_SOURCE, fixed_batch=fixed_batch)


def _validated_set(arrays, labels, where, origin, fixed_batch) -> CalibrationSet:
    _check_sample_counts({name: len(source) for name, source in arrays.items()}, labels, where)
    return CalibrationSet(arrays, labels=labels, origin=origin, fixed_batch=fixed_batch)


# --------------------------------------------------------------------------- images


def _import_pillow():
    try:
        from PIL import Image
    except ImportError:
        raise OnnxSlimError(PILLOW_MISSING) from None
    return Image


def _read_pixels(path: Path, channels: int, height: int, width: int) -> np.ndarray:
    """uint8 pixels [H, W, C] of one image, converted to gray or RGB and resized."""
    Image = _import_pillow()
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                resampling = getattr(Image, "Resampling", Image)
                image = image.resize((width, height), resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)
    except Exception as exc:
        raise OnnxSlimError(f"{path}: cannot decode the image ({first_line(exc)}); remove or replace it") from None
    return pixels[:, :, np.newaxis] if pixels.ndim == 2 else pixels


def _check_images_readable(files: list[Path]) -> None:
    """Open every header now, so a bad file stops the run before any work."""
    Image = _import_pillow()
    for file in files:
        try:
            with Image.open(file) as image:
                image.size
        except Exception as exc:
            raise OnnxSlimError(f"{file}: not a readable image ({first_line(exc)}); remove or replace it") from None


def _single_image_input(specs: list[InputSpec], where: Path) -> InputSpec:
    if len(specs) != 1:
        names = ", ".join(spec.name for spec in specs)
        raise OnnxSlimError(
            f"{where}: an image folder feeds one image input, but the model has {len(specs)} ({names}); use an .npz"
        )
    spec = specs[0]
    if not (np.issubdtype(spec.dtype, np.floating) or np.issubdtype(spec.dtype, np.integer)):
        raise OnnxSlimError(f"{where}: input '{spec.name}' is {spec.dtype}, not an image; use an .npz")
    return spec


def _image_geometry(spec: InputSpec, layout: str, input_size, where: Path) -> tuple[int, int, int]:
    """(channels, height, width) of the image input under `layout`."""
    if len(spec.dims) != 4:
        raise OnnxSlimError(
            f"{where}: input '{spec.name}' has shape {_format_dims(spec.dims)}; "
            f"images need a 4-D input ([N,C,H,W] or [N,H,W,C]); use an .npz"
        )
    channel_axis, height_axis, width_axis = (1, 2, 3) if layout == "nchw" else (3, 1, 2)
    channels = _static(spec.dims[channel_axis]) or 3  # an unknown channel count: assume colour
    if channels not in (1, 3):
        other = "nhwc" if layout == "nchw" else "nchw"
        raise OnnxSlimError(
            f"{where}: input '{spec.name}' has shape {_format_dims(spec.dims)}: with layout {layout} "
            f"that is {channels} channels, but images have 1 or 3; use --layout {other}?"
        )
    model_size = (_static(spec.dims[height_axis]), _static(spec.dims[width_axis]))
    height, width = _image_size(spec, model_size, input_size, where)
    return channels, height, width


def _image_size(spec: InputSpec, model_size: tuple, input_size, where: Path) -> tuple[int, int]:
    requested = _parse_input_size(input_size)
    if requested is None:
        if None in model_size:
            raise UsageError(
                f"input '{spec.name}' has no fixed height/width ({_format_dims(spec.dims)}); give input_size (H, W)"
            )
        return model_size
    for known, wanted, what in zip(model_size, requested, ("height", "width")):
        if known is not None and known != wanted:
            raise OnnxSlimError(
                f"{where}: input '{spec.name}' has a fixed {what} of {known} ({_format_dims(spec.dims)}), "
                f"but input_size asks for {requested[0]}x{requested[1]}; drop input_size or match it"
            )
    return requested


def _parse_input_size(input_size) -> tuple[int, int] | None:
    if input_size is None:
        return None
    size = (input_size, input_size) if isinstance(input_size, (int, np.integer)) else tuple(input_size)
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
        raise UsageError(f"input_size must be (height, width) in positive pixels, got {input_size!r}")
    return int(size[0]), int(size[1])


def _normalization(mean, std, channels: int, spec: InputSpec) -> tuple[tuple | None, tuple | None]:
    if (mean is not None or std is not None) and not np.issubdtype(spec.dtype, np.floating):
        raise UsageError(
            f"input '{spec.name}' is {spec.dtype}: images are fed as raw 0..255 pixels, so mean/std do not apply"
        )
    return _per_channel("mean", mean, channels), _per_channel("std", std, channels, positive=True)


def _per_channel(what: str, values, channels: int, positive: bool = False) -> tuple | None:
    if values is None:
        return None
    values = tuple(float(v) for v in np.atleast_1d(np.asarray(values, dtype=np.float64)))
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise UsageError(f"{what} has {len(values)} values but the image input has {channels} channels")
    if positive and min(values) <= 0:
        raise UsageError(f"{what} values must be positive, got {list(values)}")
    return values


# --------------------------------------------------------------------------- validation


def _check_common_options(samples, layout: str, channel_order: str) -> None:
    if samples is not None and (not isinstance(samples, (int, np.integer)) or isinstance(samples, bool) or samples < 1):
        raise UsageError(f"samples must be a positive integer, got {samples!r}")
    if layout not in LAYOUTS:
        raise UsageError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if channel_order not in CHANNEL_ORDERS:
        raise UsageError(f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, got {channel_order!r}")


def _warn_unused_image_options(input_size, mean, std) -> None:
    unused = [name for name, value in (("input_size", input_size), ("mean", mean), ("std", std)) if value is not None]
    if unused:
        logger.warning("%s only apply to image folders; ignored", ", ".join(unused))


def _match_names(keys: list[str], specs: list[InputSpec], where: Path, kind: str, suffix: str = "") -> dict[str, str]:
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


def _check_sample_array(array: np.ndarray, spec: InputSpec, where: Path, single_sample: bool = False) -> None:
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
        _static(dim) is None or dim == got for dim, got in zip(spec.dims[1:], shape[1:])
    )
    if not matches:
        raise OnnxSlimError(
            f"{where}: input '{spec.name}': expected shape {_format_dims(spec.dims)}, "
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


def _check_labels(labels: np.ndarray | None, where: Path | None) -> None:
    if labels is None:
        return
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise OnnxSlimError(
            f"{where}: '{LABELS_KEY}' must be integer class ids of shape [N], "
            f"got {labels.dtype} of shape {list(labels.shape)}"
        )


def _check_sample_counts(counts: Mapping[str, int], labels: np.ndarray | None, where) -> None:
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




def _check_enough_for_fixed_batch(calibration: CalibrationSet, fixed_batch: int | None) -> None:
    if fixed_batch and len(calibration) < fixed_batch:
        raise OnnxSlimError(
            f"{calibration.origin}: the model has a fixed batch size of {fixed_batch} "
            f"but there are {len(calibration)} samples; give at least {fixed_batch}"
        )


def _static(dim) -> int | None:
    return dim if isinstance(dim, (int, np.integer)) and dim > 0 else None


def _format_dims(dims: Sequence, sample_axis: bool = True) -> str:
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
            shown.append(str(dim) if _static(dim) else "?")
    return "[" + ",".join(shown) + "]"


def _format_got(shape: tuple, single_sample: bool) -> str:
    if single_sample:
        return _format_dims(shape[1:], sample_axis=False) + " (one sample)"
    return _format_dims(shape, sample_axis=False)
