"""Parameters and multiply-accumulates (MACs) of a model, per node and in total.

MACs are counted for Conv, ConvTranspose, Gemm, MatMul, the recurrent layers (LSTM,
GRU, RNN), onnxruntime's fused Attention and the quantized forms of these, from inferred
shapes (`specs.macs_parts`: a node's parts that its weight does not scale are under its
name + a suffix), for one sample (symbolic batch = 1; other symbolic dims take the sizes
given or a default), which is what the pruning planner and the reports compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import onnx
from onnx import TensorProto

from onnx_slim.ir.graph import subgraphs
from onnx_slim.ir.inputs import InputValues, check_input_shapes, concrete_dims, graph_inputs
from onnx_slim.ir.shapes import concrete_shapes
from onnx_slim.ops.specs import macs_parts

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
# Weights of quantized models are 8-bit integers; int32/int64 tensors are shape constants
# (or int32 biases of quantized ops, a rounding error next to the weights).
_WEIGHT_TYPES = _FLOAT_TYPES | {TensorProto.INT8, TensorProto.UINT8, TensorProto.INT4, TensorProto.UINT4}


@dataclass
class ModelCost:
    params: int
    macs: int
    node_macs: dict[str, int] = field(default_factory=dict)  # node name -> MACs
    uncounted: list[str] = field(default_factory=list)  # compute nodes with unknown shapes


def concrete_input_shapes(
    model: onnx.ModelProto, overrides: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[int, ...]]:
    """Input shapes with symbolic dims made concrete (batch 1), `overrides` first."""
    check_input_shapes(model, overrides)
    return concrete_dims(graph_inputs(model), overrides)


def count_params(model: onnx.ModelProto) -> int:
    """Elements of the weight tensors, initializers and `Constant` nodes alike (PaddlePaddle
    exports keep weights in Constant nodes), in If / Loop / Scan bodies too (silero-vad keeps all
    of its 0.5M there): float or 8/4-bit integer; shape constants do not count. A tensor read by
    several nodes counts once."""
    return sum(math.prod(tensor.dims) for tensor in _tensors(model.graph) if tensor.data_type in _WEIGHT_TYPES)


def _tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """The initializers and Constant values of `graph` and of the bodies of its nodes, at any depth."""
    found = list(graph.initializer)
    for node in graph.node:
        if node.op_type == "Constant":
            found += [attribute.t for attribute in node.attribute if attribute.name == "value"]
        for body in subgraphs(node):
            found += _tensors(body)
    return found


def model_cost(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    shapes: Mapping[str, tuple] | None = None,
    input_values: InputValues | None = None,
) -> ModelCost:
    """Params and MACs; pass `shapes` (from concrete_shapes) to reuse them."""
    if shapes is None:
        shapes = concrete_shapes(model, concrete_input_shapes(model, input_shapes), input_values).shapes
    cost = ModelCost(params=count_params(model), macs=0)
    constant = constant_tensors(model.graph)
    for index, node in enumerate(model.graph.node):
        if node.output and all(name in constant for name in node.output if name):
            continue  # computed from constants only: once, when onnxruntime loads the model
        parts = macs_parts(node, shapes)
        if parts is None:
            continue
        # Unnamed or duplicate names (models that were not normalized) must not collide.
        key = node.name if node.name and node.name not in cost.node_macs else f"{node.op_type}_{index}"
        parts = {key + suffix: macs for suffix, macs in parts.items()}
        if None in parts.values():
            cost.uncounted.append(key)
            continue
        cost.node_macs.update(parts)
        cost.macs += sum(parts.values())
    return cost


def constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Initializers, Constant outputs and the outputs of nodes that read only those (transitively,
    in graph order): a MatMul of two constants (DeBERTa's relative-position projections) runs once,
    when onnxruntime folds it at load time, not per sample."""
    constant = {init.name for init in graph.initializer}
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type == "Constant" or (inputs and not subgraphs(node) and all(name in constant for name in inputs)):
            constant.update(name for name in node.output if name)
    return constant
