"""Calibration samples from a folder of images, decoded only when a batch asks for them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from onnx_slim.data.samples import LoadedSamples, checked_samples, format_dims, static_dim
from onnx_slim.errors import OnnxSlimError, UsageError, first_line
from onnx_slim.ir.inputs import InputSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
LAYOUTS = ("nchw", "nhwc")
CHANNEL_ORDERS = ("rgb", "bgr")
PILLOW_MISSING = "reading an image directory needs Pillow: pip install 'onnx-slim[images]'"


@dataclass(frozen=True)
class ImageDecoder:
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


class ImageSource:
    """Image files decoded only when a batch asks for them."""

    def __init__(self, paths: Sequence[Path], decoder: ImageDecoder):
        self.paths = tuple(paths)
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.stack([self.decoder.decode(path) for path in self.paths[start:stop]])

    def read_all(self) -> np.ndarray:
        return self.read(0, len(self.paths))

    def subset(self, rows: np.ndarray) -> ImageSource:
        """The images at `rows` (indices into this source)."""
        return ImageSource([self.paths[row] for row in rows], self.decoder)


def load_image_folder(path, files, specs, input_size, mean, std, layout, channel_order) -> LoadedSamples:
    """The one image input of `specs` from image `files`; only headers are read now."""
    spec = _single_image_input(specs, path)
    channels, height, width = _image_geometry(spec, layout, input_size, path)
    mean, std = _normalization(mean, std, channels, spec)
    decoder = ImageDecoder(channels, height, width, layout, channel_order, mean, std, spec.dtype)
    _check_images_readable(files)
    origin = f"{path.name}/ (images as {height}x{width} {'gray' if channels == 1 else channel_order} {layout})"
    return checked_samples({spec.name: ImageSource(files, decoder)}, None, path, origin)


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
            f"{where}: input '{spec.name}' has shape {format_dims(spec.dims)}; "
            f"images need a 4-D input ([N,C,H,W] or [N,H,W,C]); use an .npz"
        )
    channel_axis, height_axis, width_axis = (1, 2, 3) if layout == "nchw" else (3, 1, 2)
    channels = static_dim(spec.dims[channel_axis]) or 3  # an unknown channel count: assume colour
    if channels not in (1, 3):
        other = "nhwc" if layout == "nchw" else "nchw"
        raise OnnxSlimError(
            f"{where}: input '{spec.name}' has shape {format_dims(spec.dims)}: with layout {layout} "
            f"that is {channels} channels, but images have 1 or 3; use --layout {other}?"
        )
    model_size = (static_dim(spec.dims[height_axis]), static_dim(spec.dims[width_axis]))
    height, width = _image_size(spec, model_size, input_size, where)
    return channels, height, width


def _image_size(spec: InputSpec, model_size: tuple, input_size, where: Path) -> tuple[int, int]:
    requested = _parse_input_size(input_size)
    if requested is None:
        if None in model_size:
            raise UsageError(
                f"input '{spec.name}' has no fixed height/width ({format_dims(spec.dims)}); "
                "pass --input-size H,W (input_size=(H, W) from Python)"
            )
        return model_size
    for known, wanted, what in zip(model_size, requested, ("height", "width")):
        if known is not None and known != wanted:
            raise OnnxSlimError(
                f"{where}: input '{spec.name}' has a fixed {what} of {known} ({format_dims(spec.dims)}), "
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
