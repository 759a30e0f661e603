"""Shape inference that stays cheap on large models, and concrete shapes for analysis.

onnx's shape inference copies the whole model, weights included. It only needs
the *shapes* of large weights, and the *values* of the small integer tensors that
steer shapes (Reshape targets, Split sizes, Resize scales...). So it runs on a
skeleton: the graph, with every large initializer replaced by a graph input of
the same type and shape.

Static inference gives up where sizes are computed at run time from a symbolic
dim (an encoder's `view(batch, seq, heads, head_dim)` through Shape/Gather/Concat).
`concrete_shapes` then measures them: one onnxruntime run at the concrete input
shapes, with every intermediate tensor made an output.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnx_slim.errors import OnnxSlimError
from onnx_slim.ir.graph import add_graph_outputs
from onnx_slim.ir.inputs import InputValues, random_inputs, random_scalars_hint
from onnx_slim.ir.runtime import CHECK, create_session, run_session

log = logging.getLogger(__name__)

# Initializers up to this many elements keep their values in the skeleton.
_SMALL_TENSOR_ELEMENTS = 64

Shape = tuple  # of int (known) or str (symbolic) or None (unknown)


def skeleton(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None) -> onnx.ModelProto:
    """A weightless copy of `model` for shape inference, inputs optionally made concrete."""
    graph = model.graph
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = light.graph
    g.name = graph.name
    g.node.extend(graph.node)
    g.output.extend(graph.output)
    initializer_names = {init.name for init in graph.initializer}
    for value in graph.input:
        if value.name in initializer_names:
            continue
        if input_shapes and value.name in input_shapes:
            elem_type = value.type.tensor_type.elem_type
            value = helper.make_tensor_value_info(value.name, elem_type, list(input_shapes[value.name]))
        g.input.append(value)
    for init in graph.initializer:
        count = 1
        for dim in init.dims:
            count *= dim
        if count <= _SMALL_TENSOR_ELEMENTS or init.data_type in (TensorProto.INT64, TensorProto.INT32):
            if init.data_location == TensorProto.EXTERNAL:
                raise ValueError(f"initializer {init.name} still refers to external data")
            g.initializer.append(init)
        else:
            g.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return light


def infer_shapes(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> tuple[dict[str, Shape], dict[str, int]]:
    """Shapes and element types of every tensor that inference can reach.

    Returns ({name: shape}, {name: elem_type}); a shape is a tuple of int, str
    (symbolic) or None (unknown), or absent when even the rank is unknown.
    """
    light = skeleton(model, input_shapes)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception:
        # Strict failures on exotic ops: fall back to what the model declares.
        inferred = light
    shapes: dict[str, Shape] = {}
    types: dict[str, int] = {}
    graph = inferred.graph
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type:
            types[value.name] = tensor_type.elem_type
        if tensor_type.HasField("shape"):
            shapes[value.name] = tuple(_dim(d) for d in tensor_type.shape.dim)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
        types[init.name] = init.data_type
    return shapes, types


@dataclass
class ConcreteShapes:
    """Shapes and element types of a model's tensors at concrete input shapes."""

    shapes: dict  # name -> shape tuple
    types: dict  # name -> onnx elem_type
    measured: bool = False  # some shapes were read from an onnxruntime run
    failure: str | None = None  # why that run failed: the model does not run at these input shapes


def concrete_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]],
                    input_values: InputValues | None = None) -> ConcreteShapes:
    """Every tensor's shape at `input_shapes` (one concrete shape per graph input).

    Static inference first; when it leaves some node output without a static
    shape, one onnxruntime run on random inputs of those shapes (`input_values` fixes some)
    measures them all.
    """
    shapes, types = infer_shapes(model, input_shapes)
    unknown = [name for node in model.graph.node for name in node.output if name and not is_static(shapes.get(name))]
    if not unknown:
        return ConcreteShapes(shapes, types)
    try:
        measured = _measure_shapes(model, input_shapes, types, input_values)
    except OnnxSlimError as exc:
        failure = f"{exc}{random_scalars_hint(model, input_values)}"
        log.warning("shapes of %d tensors are unknown and onnxruntime could not measure them: %s", len(unknown),
                    failure)
        return ConcreteShapes(shapes, types, failure=failure)
    for name, value in measured.items():
        if not isinstance(value, np.ndarray):
            continue  # a sequence or map: no shape to record
        shapes[name] = tuple(value.shape)
        types[name] = helper.np_dtype_to_tensor_dtype(value.dtype)
    return ConcreteShapes(shapes, types, measured=True)


def _measure_shapes(model: onnx.ModelProto, input_shapes, types, input_values) -> dict:
    """Every main-graph tensor of one onnxruntime run at `input_shapes`, by name."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {output.name for output in probe.graph.output}
    intermediates = [name for node in probe.graph.node for name in node.output if name and name not in outputs]
    add_graph_outputs(probe, dict.fromkeys(intermediates), types)
    # Stale annotations could contradict the measurement; onnxruntime infers its own.
    del probe.graph.value_info[:]
    session = create_session(probe, CHECK)
    return run_session(session, random_inputs(model, shapes=input_shapes, values=input_values))


def is_static(shape: Shape | None) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def _dim(dim) -> int | str | None:
    if dim.HasField("dim_value"):
        return dim.dim_value
    if dim.HasField("dim_param"):
        return dim.dim_param
    return None
