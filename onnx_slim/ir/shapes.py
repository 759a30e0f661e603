"""Shape inference that stays cheap on large models.

onnx's shape inference copies the whole model, weights included. It only needs
the *shapes* of large weights, and the *values* of the small integer tensors that
steer shapes (Reshape targets, Split sizes, Resize scales...). So it runs on a
skeleton: the graph, with every large initializer replaced by a graph input of
the same type and shape.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import onnx
from onnx import TensorProto, helper

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


def is_static(shape: Shape | None) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def _dim(dim) -> int | str | None:
    if dim.HasField("dim_value"):
        return dim.dim_value
    if dim.HasField("dim_param"):
        return dim.dim_param
    return None
