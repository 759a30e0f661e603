"""Bias correction of a QDQ int8 model: each Conv/Gemm's mean output per channel back to the float layer's.

Rounding weights and inputs to int8 shifts a layer's mean output per channel,
and in depthwise networks (few weights per channel) the shift is large and
accumulates layer after layer. For each quantized Conv and Gemm, one pass over
the calibration data measures, on the int8 model's own input to that layer,
mean(quantized layer output) - mean(float layer output) per output channel; the
int32 bias is then shifted by minus that difference. The error is measured
layer by layer (the float reference layer reads the same float tensor that the
int8 layer quantizes, clipped to that quantizer's range, which is how
onnxruntime keeps a Relu/Clip it folded into the range), so all layers are
corrected from one pass. The graph is
unchanged: no cost in speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_slim.ir.graph import opset_version
from onnx_slim.ir.inputs import leading_dim
from onnx_slim.ir.runtime import SessionSpec, create_session
from onnx_slim.ops.specs import WEIGHT_OPS

_CORRECTED_OPS = {"Conv", "Gemm"}
_PREFIX = "bias_correction/"
_INT32 = np.iinfo(np.int32)


@dataclass(frozen=True)
class _Layer:
    node: onnx.NodeProto  # the int8 layer in the quantized model
    float_input: str  # the float tensor its quantized input comes from
    input_range: tuple[float, float] | None  # the range of that input's quantizer, None if not quantized
    weight: np.ndarray  # the float layer's weight
    bias: np.ndarray | None
    bias_initializer: onnx.TensorProto  # int32 bias (or float, if onnxruntime left it float)
    bias_scale: np.ndarray | None  # scale of the int32 bias; None for a float bias


def correct_biases(
    quantized: onnx.ModelProto,
    float_model: onnx.ModelProto,
    batches: Iterable[Mapping[str, np.ndarray]],
    session: SessionSpec = SessionSpec(),
) -> dict[str, float]:
    """Shift the biases of `quantized` in place; return {layer name: largest |shift| of its bias}.

    `float_model` is the model that was quantized (its nodes have the same
    names); `batches` are feed dicts of calibration data. Layers without a bias
    or with a weight that is not an initializer are left as they are.
    """
    layers = _layers(quantized, float_model)
    if not layers:
        return {}
    augmented, names = _augmented(quantized, layers)
    runner = create_session(augmented, session)
    sums = [np.zeros(layer.weight.shape[0], dtype=np.float64) for layer in layers]
    samples = 0
    for batch in batches:
        count = leading_dim(batch)
        for total, mean in zip(sums, runner.run(names, dict(batch))):
            total += mean.astype(np.float64) * count
        samples += count
    if samples == 0:
        return {}
    shifts = {}
    for layer, total in zip(layers, sums):
        shift = -total / samples
        _shift_bias(layer, shift)
        shifts[layer.node.name] = float(np.abs(shift).max())
    return shifts


def _layers(quantized: onnx.ModelProto, float_model: onnx.ModelProto) -> list[_Layer]:
    producers = {output: node for node in quantized.graph.node for output in node.output}
    initializers = {tensor.name: tensor for tensor in quantized.graph.initializer}
    float_nodes = {node.name: node for node in float_model.graph.node if node.name}
    float_initializers = {tensor.name: tensor for tensor in float_model.graph.initializer}
    layers = []
    for node in quantized.graph.node:
        original = float_nodes.get(node.name)
        if node.op_type not in _CORRECTED_OPS or len(node.input) < 3 or original is None:
            continue
        if original.op_type != node.op_type or len(original.input) < 3:
            continue
        weight = float_initializers.get(original.input[1])
        bias = float_initializers.get(original.input[2])
        bias_initializer, bias_scale = _bias_storage(node.input[2], producers, initializers)
        if weight is None or bias is None or bias_initializer is None:
            continue
        if WEIGHT_OPS[node.op_type].out_axis(node) != 0:
            continue  # the shift is per weight row: a Gemm without transB keeps its outputs in columns
        layers.append(_Layer(
            node, *_float_source(node.input[0], producers, initializers), numpy_helper.to_array(weight),
            numpy_helper.to_array(bias), bias_initializer, bias_scale,
        ))
    return layers


def _bias_storage(name: str, producers, initializers):
    """(initializer holding the bias, its dequantization scale or None if stored as float)."""
    if name in initializers:
        return initializers[name], None
    dequantize = producers.get(name)
    if dequantize is None or dequantize.op_type != "DequantizeLinear" or dequantize.input[0] not in initializers:
        return None, None
    scale = initializers.get(dequantize.input[1])
    if scale is None:
        return None, None
    return initializers[dequantize.input[0]], numpy_helper.to_array(scale).astype(np.float64)


def _float_source(name: str, producers, initializers) -> tuple[str, tuple[float, float] | None]:
    """(x, the range [low, high] its quantizer represents) for DequantizeLinear(QuantizeLinear(x)), else (name, None)."""
    dequantize = producers.get(name)
    if dequantize is None or dequantize.op_type != "DequantizeLinear":
        return name, None
    quantize = producers.get(dequantize.input[0])
    if quantize is None or quantize.op_type != "QuantizeLinear" or len(quantize.input) < 3:
        return name, None
    scale, zero_point = (initializers.get(quantize.input[i]) for i in (1, 2))
    if scale is None or zero_point is None or len(scale.dims) > 0:  # per-tensor activations only
        return name, None
    scale, zero_point = numpy_helper.to_array(scale), numpy_helper.to_array(zero_point)
    limits = np.iinfo(zero_point.dtype)
    low, high = (float(scale) * (float(limit) - float(zero_point)) for limit in (limits.min, limits.max))
    return quantize.input[0], (low, high)


def _augmented(quantized: onnx.ModelProto, layers: list[_Layer]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `quantized` whose outputs are, per layer, mean(int8 output - float output) per channel."""
    augmented = onnx.ModelProto()
    augmented.CopyFrom(quantized)
    graph = augmented.graph
    del graph.output[:]
    names = []
    opset = opset_version(augmented)
    for index, layer in enumerate(layers):
        prefix = f"{_PREFIX}{index}/"
        mean_name = prefix + "mean"
        names.append(mean_name)
        weight, bias = prefix + "weight", prefix + "bias"
        graph.initializer.extend([numpy_helper.from_array(layer.weight, weight),
                                  numpy_helper.from_array(layer.bias, bias)])
        float_input = layer.float_input
        if layer.input_range is not None:  # the Relu/Clip onnxruntime folded into the quantizer's range
            low, high = (np.array(value, dtype=np.float32) for value in layer.input_range)
            graph.initializer.extend([numpy_helper.from_array(low, prefix + "low"),
                                      numpy_helper.from_array(high, prefix + "high")])
            float_input = prefix + "clipped"
            graph.node.append(helper.make_node("Clip", [layer.float_input, prefix + "low", prefix + "high"],
                                               [float_input], name=prefix + "clip"))
        reference = helper.make_node(layer.node.op_type, [float_input, weight, bias], [prefix + "float"],
                                     name=prefix + "float")
        reference.attribute.extend(layer.node.attribute)
        difference = helper.make_node("Sub", [layer.node.output[0], prefix + "float"], [prefix + "diff"],
                                      name=prefix + "sub")
        rank = layer.weight.ndim if layer.node.op_type == "Conv" else 2
        axes = [0] + list(range(2, rank))  # every axis but the output channels (1)
        if opset >= 18:
            graph.initializer.append(numpy_helper.from_array(np.array(axes, dtype=np.int64), prefix + "axes"))
            mean = helper.make_node("ReduceMean", [prefix + "diff", prefix + "axes"], [mean_name],
                                    name=prefix + "mean", keepdims=0)
        else:
            mean = helper.make_node("ReduceMean", [prefix + "diff"], [mean_name], name=prefix + "mean",
                                    axes=axes, keepdims=0)
        graph.node.extend([reference, difference, mean])
        graph.output.append(helper.make_tensor_value_info(mean_name, onnx.TensorProto.FLOAT, None))
    return augmented, names


def _shift_bias(layer: _Layer, shift: np.ndarray) -> None:
    stored = numpy_helper.to_array(layer.bias_initializer)
    if layer.bias_scale is None:
        corrected = (stored.astype(np.float64) + shift).astype(stored.dtype)
    else:
        steps = np.round(shift / layer.bias_scale)
        corrected = np.clip(stored.astype(np.float64) + steps, _INT32.min, _INT32.max).astype(stored.dtype)
    layer.bias_initializer.CopyFrom(numpy_helper.from_array(corrected, layer.bias_initializer.name))


