"""Intermediate tensors captured with onnxruntime, batch by batch, and streaming statistics.

`ActivationCapture` runs a copy of the model whose outputs include the requested
intermediate tensors. The statistics helpers accumulate over batches so memory
stays bounded whatever the number of calibration samples; the Conv patch
helpers give what a least-squares re-fit of a Conv needs at sampled positions.
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from onnx_slim.errors import OnnxSlimError
from onnx_slim.ir.model import graph_inputs, load_model
from onnx_slim.ir.runtime import create_session, run_session

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- capture


class ActivationCapture:
    """Run a model and return its outputs plus the requested intermediate tensors.

    The caller's model is not modified: a copy gets the extra graph outputs. Tensors
    that are graph outputs survive onnxruntime's fusions, so they are safe to ask for.
    """

    def __init__(self, model: onnx.ModelProto, tensor_names: Sequence[str], *, threads: int | None = None):
        self.tensor_names = list(dict.fromkeys(tensor_names))
        capture_model = load_model(model)  # a copy
        _check_capturable(capture_model, self.tensor_names)
        self.input_names = [spec.name for spec in graph_inputs(capture_model)]
        self.output_names = [output.name for output in capture_model.graph.output]
        # Graph inputs are echoed from the feeds: no need to route them through the session.
        self._echoed = [name for name in self.tensor_names if name in self.input_names]
        extra = [name for name in self.tensor_names if name not in self.input_names and name not in self.output_names]
        _add_graph_outputs(capture_model, extra)
        self.session = create_session(capture_model, threads=threads)

    def run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Model outputs and requested tensors, by name, for one batch of feeds."""
        results = run_session(self.session, batch)
        for name in self._echoed:
            results[name] = np.asarray(batch[name])
        return results

    def iter(self, batches: Iterable[Mapping[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        """`run` over a stream of batches, one result at a time."""
        for batch in batches:
            yield self.run(batch)


def _check_capturable(model: onnx.ModelProto, names: Sequence[str]) -> None:
    graph = model.graph
    produced = {output for node in graph.node for output in node.output if output}
    produced |= {value.name for value in graph.input}
    constants = {init.name for init in graph.initializer}
    for name in names:
        if name in constants:
            raise OnnxSlimError(
                f"tensor '{name}' is a constant (initializer), not an activation; read it from the model"
            )
        if name not in produced:
            raise OnnxSlimError(
                f"tensor '{name}' is not in the model's main graph (no node produces it); "
                f"check the name with onnx.load(...).graph.node"
            )


def _add_graph_outputs(model: onnx.ModelProto, names: Sequence[str]) -> None:
    if not names:
        return
    element_types = _element_types(model, names)
    for name in names:
        elem_type = element_types.get(name)
        if elem_type:
            model.graph.output.append(helper.make_tensor_value_info(name, elem_type, None))
        else:
            # onnxruntime infers the type of an untyped output itself.
            logger.debug("no element type known for %s; adding it untyped", name)
            model.graph.output.append(onnx.ValueInfoProto(name=name))


def _element_types(model: onnx.ModelProto, names: Sequence[str]) -> dict[str, int]:
    """Element type of each named tensor: from the model's own value infos, else shape inference."""
    known = _declared_types(model.graph)
    if all(name in known for name in names):
        return known
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # custom ops, >2 GiB models: fall back to untyped outputs
        logger.debug("shape inference failed: %s", exc)
        return known
    return {**_declared_types(inferred.graph), **known}


def _declared_types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {}
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        elem_type = value.type.tensor_type.elem_type
        if elem_type:
            types[value.name] = elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    return types


# --------------------------------------------------------------------------- streaming statistics


class ChannelStats:
    """Per-channel mean, mean |x| and fraction of zeros (APoZ), accumulated over batches.

    `axis` is the channel axis: 1 for NCHW, -1 for [N, T, C] or [N, C].
    `count` is how many values each channel has seen.
    """

    def __init__(self, axis: int = 1):
        self.axis = axis
        self.count = 0
        self._sum = None
        self._sum_abs = None
        self._zeros = None

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        axis = self.axis % x.ndim
        reduce_axes = tuple(a for a in range(x.ndim) if a != axis)
        channels = x.shape[axis]
        if self._sum is None:
            self._sum = np.zeros(channels, dtype=np.float64)
            self._sum_abs = np.zeros(channels, dtype=np.float64)
            self._zeros = np.zeros(channels, dtype=np.int64)
        elif channels != self._sum.shape[0]:
            raise ValueError(f"ChannelStats: got {channels} channels on axis {self.axis}, earlier {self._sum.shape[0]}")
        # float64 accumulators: sums over millions of values would drift in float32.
        self._sum += x.sum(axis=reduce_axes, dtype=np.float64)
        self._sum_abs += np.abs(x).sum(axis=reduce_axes, dtype=np.float64)
        self._zeros += np.count_nonzero(x == 0, axis=reduce_axes)
        self.count += x.size // channels

    @property
    def mean(self) -> np.ndarray:
        return self._checked(self._sum) / self.count

    @property
    def mean_abs(self) -> np.ndarray:
        return self._checked(self._sum_abs) / self.count

    @property
    def apoz(self) -> np.ndarray:
        return self._checked(self._zeros) / self.count

    def _checked(self, total: np.ndarray | None) -> np.ndarray:
        if total is None or self.count == 0:
            raise ValueError("ChannelStats: no values yet; call update() first")
        return total


# --------------------------------------------------------------------------- Conv patches


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
