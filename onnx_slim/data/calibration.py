"""Calibration data: the samples that importance criteria and re-fitting run on.

A source is an ``.npz``, a folder of ``.npy`` files, a folder of images, or the
string ``"synthetic"`` (dead-leaves images) or ``"random"``. Everything is checked
against the model's inputs before any work starts, then exposed as a
`CalibrationSet` that yields feed batches.
Image folders are decoded batch by batch, so memory stays bounded whatever the
number of images. Inputs fixed to one value (`--input-value`: a sample rate, a
recurrent state at 0) are not read from the source: every batch gets them filled,
sized like its other inputs (a state [2, batch, 128] follows the batch).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence, Union

import numpy as np
import onnx

from onnx_slim.data.arrays import ArraySource, load_npy_folder, load_npz
from onnx_slim.data.images import CHANNEL_ORDERS, IMAGE_SUFFIXES, LAYOUTS, ImageSource, load_image_folder
from onnx_slim.data.samples import LoadedSamples, check_finite, check_sample_counts
from onnx_slim.data.synthetic import IMAGE_CHANNELS, image_layout, synthetic_images
from onnx_slim.data.tokens import TokenMask, find_token_mask
from onnx_slim.errors import OnnxSlimError, UsageError
from onnx_slim.ir.inputs import (InputSpec, InputValues, check_input_shapes, check_input_values, concrete_dims,
                                fixed_batch_size, graph_inputs, random_inputs, with_values)
from onnx_slim.ir.model import load_model

logger = logging.getLogger(__name__)

CalibrationSource = Union[str, os.PathLike]

RANDOM_SOURCE = "random"
SYNTHETIC_SOURCE = "synthetic"
DEFAULT_RANDOM_SAMPLES = 16
DEFAULT_SYNTHETIC_SAMPLES = 256  # as many as a user's few hundred images; 224x224 ones take ~4 s
SYNTHETIC_BUDGET_BYTES = 512 << 20  # fewer default images when they are large (640x640: 109)

_Source = Union[ArraySource, ImageSource]


def _as_source(name: str, value, origin: str) -> _Source:
    if isinstance(value, (ArraySource, ImageSource)):
        return value  # loaders and subsets hand over checked sources
    array = np.asarray(value)
    check_finite(array, name, origin)
    return ArraySource(array, array.dtype)


@dataclass(frozen=True)
class FixedInputs:
    """Inputs fed one value in every batch, sized like the batch's other inputs (`ir.inputs.with_values`)."""

    specs: tuple  # every input of the model: a fixed input's sizes come from the others'
    values: Mapping[str, float]
    shapes: Mapping[str, Sequence[int]] | None = None  # --input-shape, for sizes no fed input shows

    def fill(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return with_values(feeds, self.specs, self.values, self.shapes)


class CalibrationSet:
    """Samples for every model input (all ``[N, ...]``) but the `fixed` ones, optional labels, as batches.

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
        is_synthetic: bool = False,
        origin: str = "arrays",
        fixed_batch: int | None = None,
        fixed: FixedInputs | None = None,
    ):
        self._sources: dict[str, _Source] = {
            name: _as_source(name, value, origin) for name, value in arrays.items()
            if fixed is None or name not in fixed.values
        }
        if not self._sources:
            raise UsageError(f"{origin}: every input is fixed by --input-value: no samples to calibrate on")
        self.fixed = fixed
        self.labels = None if labels is None else np.asarray(labels)
        # Not real data (the report says so; quantization does not calibrate on it). Synthetic
        # images are still worth scoring and fitting on, random values only for structure.
        self.is_random = is_random or is_synthetic
        self.is_synthetic = is_synthetic
        self._token_mask: TokenMask | None | bool = False  # False: not looked for yet
        self.origin = origin
        self.fixed_batch = fixed_batch
        check_sample_counts({name: len(source) for name, source in self._sources.items()}, self.labels, origin)

    @property
    def input_names(self) -> list[str]:
        """The inputs every batch feeds, fixed ones included."""
        if self.fixed is None:
            return list(self._sources)
        return [spec.name for spec in self.fixed.specs if spec.name in self._sources or spec.name in self.fixed.values]

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """All samples in memory (fixed inputs filled for all of them). Decodes every image of an
        image folder: prefer `batches`."""
        return self._fill({name: source.read_all() for name, source in self._sources.items()})

    def sample_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """The shape of each input's first sample, batch axis included (reads one sample), fixed inputs
        left out; None for random values, which are sized from the model's defaults and say nothing of
        the real data."""
        if self.is_random and not self.is_synthetic:
            return None
        return {name: tuple(source.read(0, 1).shape) for name, source in self._sources.items()}

    def token_mask(self) -> TokenMask | None:
        """Which positions are padding, for text inputs that show it (`data.tokens`)."""
        if self._token_mask is False:
            # Only [N, S] arrays can hold token ids or masks: images are never read here.
            candidates = {name: source.read_all() for name, source in self._sources.items()
                          if isinstance(source, ArraySource) and source.data.ndim == 2}
            self._token_mask = None if self.is_random else find_token_mask(candidates)
        return self._token_mask

    @property
    def description(self) -> str:
        text = f"{self.origin}: {len(self)} samples"
        if self.is_synthetic:
            return text + " (synthetic dead-leaves images, not real data)"
        return text + " (random, structure-only)" if self.is_random else text

    def __len__(self) -> int:
        return len(next(iter(self._sources.values())))

    def __repr__(self) -> str:
        return f"CalibrationSet({self.description!r})"

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of `batch_size` samples (the last one smaller), in order."""
        for start, stop in self.batch_ranges(batch_size):
            yield self._fill({name: source.read(start, stop) for name, source in self._sources.items()})

    def _fill(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.fixed.fill(feeds) if self.fixed is not None else feeds

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

    def batch_count(self, batch_size: int) -> int:
        """How many batches `batches(batch_size)` yields (a model's fixed batch drops a short last one)."""
        size = self._effective_batch_size(batch_size)
        return len(self) // size if self.fixed_batch else -(-len(self) // size)

    def take(self, n: int) -> CalibrationSet:
        """The first `n` samples (all of them if there are fewer)."""
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise UsageError(f"number of samples must be a positive integer, got {n!r}")
        return self._subset(np.arange(min(int(n), len(self))), self.origin)

    def split(self, n_first: int) -> tuple[CalibrationSet, CalibrationSet]:
        """(first `n_first` samples, the rest): e.g. calibration and held-out evaluation."""
        total = len(self)
        if not isinstance(n_first, (int, np.integer)) or not 0 < n_first < total:
            raise UsageError(
                f"{self.origin}: cannot split {total} samples after {n_first!r}: "
                f"need 0 < n_first < {total} so both parts have samples"
            )
        n_first = int(n_first)
        first = self._subset(np.arange(n_first), f"{self.origin}[:{n_first}]")
        rest = self._subset(np.arange(n_first, total), f"{self.origin}[{n_first}:]")
        return first, rest

    def hold_out(self, count: int) -> tuple[CalibrationSet, CalibrationSet]:
        """(the other samples, `count` samples spread evenly over the set, in order).

        Spread, not the last ones: a user's samples are often ordered (by class, source or
        date), and the tail of an ordered set is not like the rest (the real MTCNN face
        classifier's calibration set ends with 200 non-face patches: its last 60 hold no face)."""
        total = len(self)
        if not isinstance(count, (int, np.integer)) or not 0 < count < total:
            raise UsageError(f"{self.origin}: cannot hold out {count!r} of {total} samples: "
                             f"need 0 < count < {total} so both parts have samples")
        held = ((np.arange(int(count)) + 0.5) * total / int(count)).astype(np.int64)  # distinct: count < total
        rest = np.setdiff1d(np.arange(total), held)
        return (self._subset(rest, f"{self.origin} ({len(rest)} not held out)"),
                self._subset(held, f"{self.origin} ({len(held)} held out, spread over the set)"))

    def _subset(self, rows: np.ndarray, origin: str) -> CalibrationSet:
        labels = None if self.labels is None else self.labels[rows]
        sources = {name: source.subset(rows) for name, source in self._sources.items()}
        return CalibrationSet(
            sources, labels=labels, is_random=self.is_random, is_synthetic=self.is_synthetic, origin=origin,
            fixed_batch=self.fixed_batch, fixed=self.fixed,
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


class BatchStream:
    """A re-iterable view of a CalibrationSet's batches."""

    def __init__(self, calibration: CalibrationSet, batch_size: int) -> None:
        self.calibration, self.batch_size = calibration, batch_size

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.calibration.batches(self.batch_size)

    def __len__(self) -> int:
        """How many batches an iteration yields (a progress bar's total)."""
        return self.calibration.batch_count(self.batch_size)


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
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    input_values: InputValues | None = None,
) -> CalibrationSet:
    """Load and validate calibration samples for `model` from `source`.

    `source`: an ``.npz`` (keys = input names, optional ``labels``), a folder of
    ``.npy`` files (``<input>.npy`` per input, or for a one-input model many
    files concatenated in name order), a folder of images (one image input), or
    ``"random"`` (structure only) or ``"synthetic"`` (dead-leaves images for image
    inputs, `data/synthetic.py`). `samples` keeps the first N samples (for ``"random"``
    and ``"synthetic"``: how many to make, default 16 and up to 256). `input_size`, `mean`, `std`, `layout` and
    `channel_order` describe how images become the model input; `mean`/`std`
    are per channel, in 0..1 units, in the model's channel order. `input_shapes` (``--input-shape``)
    sizes the symbolic dims of ``"random"`` and ``"synthetic"`` data (their batch axis is `samples`).
    `input_values` (``--input-value``) fixes inputs: the source does not hold them (a key for one is ignored).
    """
    model = load_model(model, copy=False)
    _check_common_options(samples, layout, channel_order)
    all_specs = graph_inputs(model)
    if not all_specs:
        raise OnnxSlimError("the model has no inputs: nothing to calibrate")
    check_input_shapes(model, input_shapes)
    check_input_values(model, input_values)
    fixed = FixedInputs(tuple(all_specs), dict(input_values), input_shapes) if input_values else None
    specs = [spec for spec in all_specs if spec.name not in (input_values or {})]
    if not specs:  # said before any file is read
        raise UsageError("every input is fixed by --input-value: there are no samples to calibrate on")
    fixed_batch = fixed_batch_size(specs)
    if isinstance(source, str) and source == RANDOM_SOURCE:
        _warn_unused_image_options(input_size, mean, std)
        return _random_set(model, specs, samples or DEFAULT_RANDOM_SAMPLES, seed, fixed_batch, input_shapes, fixed)
    if isinstance(source, str) and source == SYNTHETIC_SOURCE:
        _warn_unused_image_options(None, mean, std)
        return _synthetic_set(model, all_specs, samples, seed, fixed_batch, input_size, input_shapes, fixed)
    path = Path(source)
    if not path.exists():
        raise OnnxSlimError(
            f"{path}: no such file or directory; give an .npz, a folder of .npy files or images, 'synthetic' or 'random'"
        )
    ignored = tuple(input_values or ())
    if path.is_dir():
        loaded = _load_directory(path, specs, samples, input_size, mean, std, layout, channel_order, ignored)
    elif path.suffix.lower() == ".npz":
        _warn_unused_image_options(input_size, mean, std)
        loaded = load_npz(path, specs, ignored)
    else:
        raise OnnxSlimError(
            f"{path}: unsupported calibration file; give an .npz, a folder of .npy files or images, 'synthetic' or 'random'"
        )
    calibration = CalibrationSet(loaded.sources, labels=loaded.labels, origin=loaded.origin, fixed_batch=fixed_batch,
                                 fixed=fixed)
    calibration = calibration.take(samples) if samples else calibration
    _check_enough_for_fixed_batch(calibration, fixed_batch)
    return calibration


def _load_directory(path, specs, samples, input_size, mean, std, layout, channel_order, ignored) -> LoadedSamples:
    # Dot files are skipped: macOS leaves "._name.jpg" companions that are not images.
    files = sorted(entry for entry in path.iterdir() if entry.is_file() and not entry.name.startswith("."))
    npy_files = [entry for entry in files if entry.suffix.lower() == ".npy"]
    image_files = [entry for entry in files if entry.suffix.lower() in IMAGE_SUFFIXES]
    if npy_files and image_files:
        raise OnnxSlimError(f"{path}: holds both .npy and image files; put calibration data of one kind per folder")
    if image_files:
        image_files = image_files[:samples] if samples else image_files
        return load_image_folder(path, image_files, specs, input_size, mean, std, layout, channel_order)
    if npy_files:
        _warn_unused_image_options(input_size, mean, std)
        return load_npy_folder(path, npy_files, specs, ignored)
    raise OnnxSlimError(
        f"{path}: no .npy or image ({'/'.join(IMAGE_SUFFIXES)}) files in this folder (sub-folders are not searched)"
    )


def _random_set(model, specs: list[InputSpec], samples: int, seed: int, fixed_batch, input_shapes,
                fixed: FixedInputs | None) -> CalibrationSet:
    for spec in specs:
        if not spec.dims:
            raise OnnxSlimError(
                f"input '{spec.name}' has no dims in the model (a scalar, or no shape), so random data cannot be "
                f"shaped for it; give its value with --input-value {spec.name}=NUMBER, or an .npz"
            )
    concrete = concrete_dims(specs, input_shapes)
    arrays = random_inputs(model, seed=seed, shapes={spec.name: (samples,) + concrete[spec.name][1:] for spec in specs},
                           values=fixed.values if fixed else None)  # `specs` leaves the fixed inputs out
    return CalibrationSet(arrays, is_random=True, origin=RANDOM_SOURCE, fixed_batch=fixed_batch, fixed=fixed)


def _synthetic_set(model, specs: list[InputSpec], samples: int | None, seed: int, fixed_batch,
                   input_size, input_shapes, fixed: FixedInputs | None) -> CalibrationSet:
    """`samples` (default: up to DEFAULT_SYNTHETIC_SAMPLES within SYNTHETIC_BUDGET_BYTES) dead-leaves
    images for the image inputs (`input_size` gives symbolic heights and widths), random values for
    any other input."""
    given = concrete_dims(specs, input_shapes) if input_shapes else {}
    sized = [_with_input_size(InputSpec(spec.name, given[spec.name], spec.dtype) if spec.name in (input_shapes or {})
                              else spec, input_size) for spec in specs]
    images = [spec for spec in sized if image_layout(spec)]
    others = [spec for spec in sized if spec not in images and (fixed is None or spec.name not in fixed.values)]
    if not images:
        raise OnnxSlimError(
            "synthetic calibration data is made for image inputs ([N, 1 or 3, H, W] or [N, H, W, 1 or 3] floats "
            "with known H and W; --input-size gives them); this model has none: give real data or 'random'"
        )
    if samples is None:  # all of them in memory: bounded
        per_sample = sum(int(np.prod(spec.dims[1:])) * np.dtype(spec.dtype).itemsize for spec in images)
        samples = max(16, min(DEFAULT_SYNTHETIC_SAMPLES, SYNTHETIC_BUDGET_BYTES // per_sample))
    arrays = {spec.name: synthetic_images(spec, samples, seed) for spec in images}
    if others:
        logger.warning("synthetic data: random values for the non-image inputs %s", ", ".join(s.name for s in others))
        # The images' sizes (given or from --input-size) size the symbols they share with the others
        # (a mask [N, H, W] beside the image).
        image_sizes = {spec.name: (1,) + tuple(spec.dims[1:]) for spec in images
                       if all(isinstance(dim, int) and dim > 0 for dim in spec.dims[1:])}
        concrete = concrete_dims(specs, {**(input_shapes or {}), **image_sizes})
        made = random_inputs(model, seed=seed, shapes={spec.name: (samples,) + concrete[spec.name][1:]
                                                       for spec in others})
        arrays.update({spec.name: made[spec.name] for spec in others})
        arrays = {spec.name: arrays[spec.name] for spec in specs if spec.name in arrays}
    return CalibrationSet(arrays, is_synthetic=True, origin=SYNTHETIC_SOURCE, fixed_batch=fixed_batch, fixed=fixed)


def _with_input_size(spec: InputSpec, input_size) -> InputSpec:
    """`spec` with its spatial dims set from `input_size` (H,W or one side) where the model leaves them symbolic."""
    if not input_size or len(spec.dims) != 4:
        return spec
    height, width = (input_size[0], input_size[-1])
    dims = list(spec.dims)
    spatial = (2, 3) if dims[1] in IMAGE_CHANNELS else (1, 2) if dims[3] in IMAGE_CHANNELS else ()
    for axis, size in zip(spatial, (height, width)):
        if not isinstance(dims[axis], int) or dims[axis] <= 0:
            dims[axis] = int(size)
    return InputSpec(spec.name, tuple(dims), spec.dtype)


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


def _check_enough_for_fixed_batch(calibration: CalibrationSet, fixed_batch: int | None) -> None:
    if fixed_batch and len(calibration) < fixed_batch:
        raise OnnxSlimError(
            f"{calibration.origin}: the model has a fixed batch size of {fixed_batch} "
            f"but there are {len(calibration)} samples; give at least {fixed_batch}"
        )
