"""A part of a graph as a model of its own, fed with tensors computed before it.

Staged re-fit passes and sensitivity trials run a slice of the nodes rather than the
whole model; this builds that slice: inputs typed from example values (or the graph's
own input declarations), outputs typed once by shape inference, and only the
initializers and annotations the nodes read.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx

from onnx_slim.data.activations import element_types


class PartBuilder:
    """Models of node subsets of one graph (whose weights may change between parts); element
    types are inferred once and reused."""

    def __init__(self) -> None:
        self._types: dict[str, int] = {}

    def build(self, model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto], examples: Mapping[str, np.ndarray],
              outputs: Sequence[str]) -> onnx.ModelProto:
        """`nodes` (in order) as a model whose inputs are what they read and no node of them makes:
        graph inputs keep their declarations, the rest are typed from `examples`."""
        graph = model.graph
        if not set(outputs) <= set(self._types):  # weights change between parts, types do not
            self._types.update(element_types(model, list(outputs)))
        declared = {value.name: value for value in graph.input}
        inputs = []
        for name in part_inputs(model, nodes):
            if name in declared:
                inputs.append(declared[name])
            else:
                value = np.asarray(examples[name])
                inputs.append(onnx.helper.make_tensor_value_info(
                    name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), [None] * value.ndim))
        read = {name for node in nodes for name in node.input}
        body = onnx.helper.make_graph(
            list(nodes), graph.name, inputs,
            [_output(name, self._types.get(name)) for name in outputs],
            initializer=[init for init in graph.initializer if init.name in read],
            value_info=[info for info in graph.value_info if info.name in read])
        return onnx.helper.make_model(body, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                                      functions=list(model.functions))


def _output(name: str, elem_type: int | None) -> onnx.ValueInfoProto:
    """A typed output, or an untyped one (onnxruntime types it) where shape inference could not
    (onnxruntime's own ops)."""
    if elem_type:
        return onnx.helper.make_tensor_value_info(name, elem_type, None)
    return onnx.ValueInfoProto(name=name)


def part_inputs(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto]) -> list[str]:
    """Tensors `nodes` read that none of them produces (initializers excluded), sorted."""
    produced = {name for node in nodes for name in node.output if name}
    initializers = {init.name for init in model.graph.initializer}
    read = {name for node in nodes for name in node.input if name}
    return sorted(read - produced - initializers)
