"""What a LayerNormalization after a layer does to that layer's output errors.

A transformer projection is added to the residual stream and normalized:
LN(s + W z) = gamma * (s + W z - mean) / sigma + beta. An error in output channel c of the
projection reaches the next layer scaled by |gamma_c| (and by 1/sigma of its token). In
all-mpnet-base-v2 the channels with the most energy before a LayerNorm have some of its
smallest gammas: errors that are 0.03% of the energy before the LayerNorm are 7 to 9% of it
after (layers 6 to 9, 70% of the MACs). Criteria that rank channels by the error they leave
weigh each output channel by |gamma| (`layer_norm_after`), so they protect what the next layer
reads, not what is largest. This is the diagonal of the LayerNorm's Jacobian: its centering and
its per-token sigma also move every channel a little (two directions of a 768-wide stream).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_slim.ir.graph import attr, readers_of

# A projection reaches its LayerNorm through at most its bias Add and the residual Add.
MAX_ADDS = 2
# op type -> (how many leading inputs it normalizes (summed), the input of its scale). onnxruntime's
# SkipLayerNormalization (com.microsoft) adds input, skip (and bias) itself, over the last axis.
LAYER_NORMS = {"LayerNormalization": (1, 1), "SkipLayerNormalization": (2, 2)}


def layer_norm_after(model: onnx.ModelProto, node: onnx.NodeProto, outputs: int,
                     readers: dict | None = None) -> tuple[np.ndarray, str | None] | None:
    """(|gamma| [outputs], the tensor it normalizes) of the LayerNorm (LAYER_NORMS) over the last
    axis that alone reads the MatMul / Gemm `node`'s output, directly or through up to MAX_ADDS
    Adds, each the only reader of what it adds; None when there is none, its scale is not a
    constant of `outputs` values, or another node or the graph's output also reads the output (it
    sees the unscaled error). The tensor is None for onnxruntime's fused SkipLayerNormalization,
    which adds its inputs inside: no tensor holds the sum (nor its sigma)."""
    found = _following_layer_norm(model, node, readers)
    scale = _scale(model, *found, outputs) if found is not None else None
    if scale is None:
        return None
    layer_norm, tensor = found
    return scale, tensor if layer_norm.op_type == "LayerNormalization" else None


def layer_norm_scale(model: onnx.ModelProto, node: onnx.NodeProto, outputs: int,
                     readers: dict | None = None) -> np.ndarray | None:
    """|gamma| of the LayerNorm after `node` (`layer_norm_after`), or None."""
    found = layer_norm_after(model, node, outputs, readers)
    return found[0] if found is not None else None


def layer_norm_input(model: onnx.ModelProto, node: onnx.NodeProto, outputs: int,
                     readers: dict | None = None) -> str | None:
    """The tensor the LayerNorm after `node` normalizes (`layer_norm_after`), or None."""
    found = layer_norm_after(model, node, outputs, readers)
    return found[1] if found is not None else None


def weighted_note(consumers: int) -> str:
    """The report's line for the criteria that weighed `consumers` layers by `layer_norm_scale`."""
    return (f"{consumers} consumer(s) weigh their outputs by the scale of the LayerNorm they feed "
            "(what the next layer reads)")


def inverse_sigma(rows: np.ndarray) -> np.ndarray:
    """1 / the standard deviation over the last axis of each row of a LayerNorm's input: how much
    the LayerNorm scales that row's errors (float32, [rows])."""
    rows = rows.astype(np.float64)
    variance = np.square(rows - rows.mean(axis=-1, keepdims=True)).mean(axis=-1)
    return (1.0 / np.sqrt(variance + 1e-5)).astype(np.float32)


def _following_layer_norm(model: onnx.ModelProto, node: onnx.NodeProto,
                          readers: dict | None) -> tuple[onnx.NodeProto, str] | None:
    """(the LayerNorm node, the tensor it reads) after `node`, as `layer_norm_after` says."""
    if node.op_type not in ("MatMul", "Gemm"):
        return None  # a Conv's channels are on axis 1, not the axis a LayerNorm usually normalizes
    readers = readers if readers is not None else readers_of(model)
    graph_outputs = {output.name for output in model.graph.output}
    tensor = node.output[0]
    for _ in range(MAX_ADDS + 1):
        following = readers.get(tensor, [])
        if len(following) != 1 or tensor in graph_outputs:
            return None
        reader = following[0]
        if reader.op_type in LAYER_NORMS:
            return reader, tensor
        if reader.op_type != "Add":
            return None
        tensor = reader.output[0]
    return None


def _scale(model: onnx.ModelProto, layer_norm: onnx.NodeProto, tensor: str, outputs: int) -> np.ndarray | None:
    reads, scale_input = LAYER_NORMS[layer_norm.op_type]
    if tensor not in layer_norm.input[:reads] or attr(layer_norm, "axis", -1) != -1 \
            or len(layer_norm.input) <= scale_input:
        return None
    scale = next((init for init in model.graph.initializer if init.name == layer_norm.input[scale_input]), None)
    if scale is None:
        return None
    gamma = numpy_helper.to_array(scale).astype(np.float64).reshape(-1)
    if gamma.shape[0] != outputs or not np.all(np.isfinite(gamma)) or not np.any(gamma):
        return None
    return np.abs(gamma)
