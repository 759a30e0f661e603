"""Synthetic calibration images for users without data: dead leaves.

A dead-leaves image is a stack of occluding disks of random colours whose radii follow
a power law: flat regions, edges at every scale and orientation, the statistics natural
images share (Lee, Mumford and Huang 2001; used to pretrain without data by Baradad et al.
2021). Fed to the data-driven criteria and the re-fit they are far better than nothing:
on MobileNetV2 at 90% of the MACs, thinet + re-fit (interior) on 256 of them keeps 49.7%
top-1 (30.3% for the best data-free criterion, 83.7% unpruned; 44.5% on Gaussian noise
in a scratch run), reports/bench_real_light.md.

The model's input normalisation is unknown, so each colour channel is standardised to
mean 0 and standard deviation 1, the range of ImageNet-normalised inputs.
"""

from __future__ import annotations

import numpy as np

from onnx_slim.ir.inputs import InputSpec

IMAGE_CHANNELS = (1, 3)
MIN_SIDE = 8  # smaller "images" are feature maps or sequences, not pictures
DISKS = 400  # most images are fully covered well before this many
RADIUS_RANGE = (0.015, 0.35)  # disk radii, as fractions of the shorter side


def image_layout(spec: InputSpec) -> str | None:
    """'nchw' or 'nhwc' if `spec` looks like a float image batch with known spatial size, else None."""
    if not np.issubdtype(spec.dtype, np.floating) or len(spec.dims) != 4:
        return None
    dims = spec.dims
    if dims[1] in IMAGE_CHANNELS and _side(dims[2]) and _side(dims[3]):
        return "nchw"
    if dims[3] in IMAGE_CHANNELS and _side(dims[1]) and _side(dims[2]):
        return "nhwc"
    return None


def _side(dim) -> bool:
    return isinstance(dim, int) and dim >= MIN_SIDE


def dead_leaves(count: int, height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """[count, channels, height, width] float32 dead-leaves images, each channel standardised."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    low, high = (fraction * min(height, width) for fraction in RADIUS_RANGE)
    images = np.empty((count, channels, height, width), np.float32)
    for index in range(count):
        image = np.empty((height, width, channels), np.float32)
        image[:] = rng.random(channels)
        covered = np.zeros((height, width), bool)
        # Inverse-CDF draw of a density proportional to r^-3 on [low, high]: small disks are common.
        u = rng.random(DISKS)
        for radius in 1 / np.sqrt(u / max(low, 1.0) ** 2 + (1 - u) / high ** 2):
            centre_row, centre_col = rng.random(2) * (height, width)
            top, bottom = int(max(centre_row - radius, 0)), int(min(centre_row + radius + 1, height))
            left, right = int(max(centre_col - radius, 0)), int(min(centre_col + radius + 1, width))
            if top >= bottom or left >= right:
                continue
            disk = (rows[top:bottom, left:right] - centre_row) ** 2 + (cols[top:bottom, left:right] - centre_col) ** 2
            disk = disk <= radius * radius
            # Drawn front to back: a pixel keeps the first disk that covers it.
            image[top:bottom, left:right][disk & ~covered[top:bottom, left:right]] = rng.random(channels)
            covered[top:bottom, left:right] |= disk
            if covered.all():
                break
        images[index] = image.transpose(2, 0, 1)
    mean = images.mean(axis=(0, 2, 3), keepdims=True)
    std = np.maximum(images.std(axis=(0, 2, 3), keepdims=True), 1e-6)
    return ((images - mean) / std).astype(np.float32)


def synthetic_images(spec: InputSpec, count: int, seed: int) -> np.ndarray:
    """Dead leaves shaped for image input `spec` (see `image_layout`), in its dtype."""
    layout = image_layout(spec)
    if layout == "nchw":
        images = dead_leaves(count, spec.dims[2], spec.dims[3], spec.dims[1], seed)
    else:
        images = dead_leaves(count, spec.dims[1], spec.dims[2], spec.dims[3], seed).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images, dtype=spec.dtype)
