"""Conv geometry at sampled positions: the input patches each output position reads, and the
explicit pads; what a least-squares re-fit or a ThiNet sample of a Conv needs.

A 1-D conv (audio, EEG, text: input [N, C, L], kernel [k]) is handled as a 2-D one of height 1
(`as_nchw`, `ConvGeometry`): the patches [S, C, 1, k] flatten in the order of its weight [O, C, k].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx

from onnx_slim.ir.graph import attr


def as_nchw(tensor: np.ndarray) -> np.ndarray:
    """A 1-D conv's [N, C, L] tensor as [N, C, 1, L]; a 2-D conv's NCHW as it is."""
    return tensor[:, :, None, :] if tensor.ndim == 3 else tensor


@dataclass(frozen=True)
class ConvGeometry:
    """A Conv's kernel, strides, dilations and explicit pads [top, left, bottom, right], in 2-D form."""

    kernel: tuple
    strides: tuple
    dilations: tuple
    pads: tuple

    @classmethod
    def of(cls, node: onnx.NodeProto, kernel: Sequence[int], spatial: Sequence[int]) -> ConvGeometry:
        """From `node`'s attributes, for its `kernel` (1 or 2 sizes) on an input of `spatial` size
        (NCHW's H, W, after `as_nchw`): auto_pad resolved, a 1-D conv given height 1."""
        ones = [1] * len(kernel)
        strides, dilations = list(attr(node, "strides", ones)), list(attr(node, "dilations", ones))
        pads = list(attr(node, "pads", [0] * 2 * len(kernel)))
        if len(kernel) == 1:
            kernel, strides, dilations = [1, kernel[0]], [1, strides[0]], [1, dilations[0]]
            pads = [0, pads[0], 0, pads[1]]
        explicit = explicit_conv_pads(spatial, kernel, strides, dilations, pads, attr(node, "auto_pad", "NOTSET"))
        return cls(tuple(kernel), tuple(strides), tuple(dilations), tuple(explicit))

    def output_size(self, spatial: Sequence[int]) -> tuple[int, int]:
        """(height, width) of the output grid on an input of `spatial` size."""
        return tuple((size + self.pads[i] + self.pads[i + 2] - self.dilations[i] * (self.kernel[i] - 1) - 1)
                     // self.strides[i] + 1 for i, size in enumerate(spatial))

    def patches(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """`conv_input_patches` of the NCHW input `x` at output `positions`, flattened: [S, C * taps]."""
        found = conv_input_patches(x, positions, self.kernel, self.strides, self.pads, self.dilations)
        return found.reshape(found.shape[0], -1)


def sample_positions(
    rng: np.random.Generator, n_images: int, height: int, width: int, per_image: int
) -> np.ndarray:
    """Random (image, y, x) positions, int64 [S, 3]: `per_image` distinct ones per image.

    All H*W positions of every image when `per_image >= height * width` (ThiNet
    samples a few positions per image to keep the least-squares system small).
    """
    if per_image < 1 or height < 1 or width < 1 or n_images < 0:
        raise ValueError(f"sample_positions: need positive sizes, got {n_images=}, {height=}, {width=}, {per_image=}")
    area = height * width
    chosen = []
    for image in range(n_images):
        flat = np.arange(area) if per_image >= area else np.sort(rng.choice(area, size=per_image, replace=False))
        chosen.append(np.stack([np.full(flat.shape, image), flat // width, flat % width], axis=1))
    if not chosen:
        return np.zeros((0, 3), dtype=np.int64)
    return np.concatenate(chosen).astype(np.int64)


def conv_input_patches(
    x: np.ndarray,
    positions: np.ndarray,
    kernel_shape: Sequence[int],
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
) -> np.ndarray:
    """The input patch [S, C, kh, kw] behind each sampled output position of a 2-D Conv.

    `x` is the Conv's NCHW input, `positions` (image, y, x) in the OUTPUT grid,
    `pads` in ONNX order [top, left, bottom, right], zero padding. For group=1,
    ``out[s, o] = sum(patch[s] * W[o]) + b[o]``; for grouped convs slice the
    channels of each group.
    """
    if x.ndim != 4 or len(kernel_shape) != 2:
        raise ValueError(f"conv_input_patches handles 2-D convs on NCHW input, got x {x.shape}, kernel {kernel_shape}")
    kernel_h, kernel_w = kernel_shape
    stride_h, stride_w = strides
    pad_top, pad_left, pad_bottom, pad_right = pads
    dilation_h, dilation_w = dilations
    _, _, height, width = x.shape
    out_h = (height + pad_top + pad_bottom - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
    out_w = (width + pad_left + pad_right - dilation_w * (kernel_w - 1) - 1) // stride_w + 1
    images, out_y, out_x = _position_columns(positions, x.shape[0], out_h, out_w)
    # Input coordinates of every tap, [S, kh] and [S, kw]; out of range means padding.
    rows = out_y[:, None] * stride_h - pad_top + np.arange(kernel_h) * dilation_h
    cols = out_x[:, None] * stride_w - pad_left + np.arange(kernel_w) * dilation_w
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    # Gather with clipped indices rather than padding x: no copy of the whole input.
    gathered = x[
        images[:, None, None],
        :,
        np.clip(rows, 0, height - 1)[:, :, None],
        np.clip(cols, 0, width - 1)[:, None, :],
    ]  # [S, kh, kw, C]: advanced indices split by a slice go first
    gathered = np.where(inside[:, :, :, None], gathered, 0).astype(x.dtype, copy=False)
    return np.ascontiguousarray(gathered.transpose(0, 3, 1, 2))


def explicit_conv_pads(spatial, kernel, strides, dilations, pads, auto_pad) -> list[int]:
    """Explicit [top, left, bottom, right] pads, resolving auto_pad."""
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("", "NOTSET"):
        return list(pads)
    if auto_pad == "VALID":
        return [0, 0, 0, 0]
    begin, end = [], []
    for size, k, stride, dilation in zip(spatial, kernel, strides, dilations):
        out = -(-size // stride)
        total = max((out - 1) * stride + dilation * (k - 1) + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin + end


def conv_output_at(y: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Values [S, C] of an NCHW tensor at (image, y, x) positions."""
    if y.ndim != 4:
        raise ValueError(f"conv_output_at expects an NCHW tensor, got shape {y.shape}")
    images, rows, cols = _position_columns(positions, y.shape[0], y.shape[2], y.shape[3])
    return y[images, :, rows, cols]


def _position_columns(positions: np.ndarray, n_images: int, height: int, width: int):
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 3)
    images, rows, cols = positions[:, 0], positions[:, 1], positions[:, 2]
    limits = ((images, n_images, "image"), (rows, height, "y"), (cols, width, "x"))
    for values, limit, what in limits:
        if values.size and (values.min() < 0 or values.max() >= limit):
            raise ValueError(f"position {what} out of range 0..{limit - 1}")
    return images, rows, cols
