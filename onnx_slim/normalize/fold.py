"""Fold shape computations over static dims into constants.

The TorchScript exporter computes many sizes at run time: `chunk(2, dim=1)`
becomes `Slice(x, 0, Div(Add(Gather(Shape(x), 1), 1), 2))`, `view(b, t, c)`
reads `c` through `Shape`. Where the dims read are static, the result is a
constant: folding it lets the channel rules see constant Slice bounds and
Reshape targets (which they can rewrite after pruning) instead of freezing.
Dynamic dims (a symbolic batch) are never folded, so the model stays as general
as it was.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnx_slim.ir.graph import attr, drop_unused_initializers, opset_version, subgraphs
from onnx_slim.ir.shapes import infer_shapes, is_static

log = logging.getLogger(__name__)

# Ops evaluated when all their inputs are small constants: shape arithmetic only. The
# TorchScript exporter writes static "same" padding as a chain of them feeding Pad's pads
# (ConstantOfShape -> Concat -> Reshape -> Slice -> Transpose -> Reshape -> Cast).
_FOLDABLE_OPS = {
    "Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Floor", "Ceil", "Cast", "Concat",
    "Gather", "Unsqueeze", "Squeeze", "Reshape", "Slice", "Equal", "Less", "Greater",
    "Where", "Max", "Min", "Identity", "Range", "ReduceProd", "ReduceSum", "Sqrt",
    "ConstantOfShape", "Transpose",
}
_MAX_FOLDED_ELEMENTS = 1024


def fold_shape_computations(model: onnx.ModelProto) -> int:
    """Replace static Shape reads and the constant arithmetic on them by initializers.

    Returns how many nodes were folded away. Works in place.
    """
    shapes, _ = infer_shapes(model)
    opset = opset_version(model)
    graph = model.graph
    constants = {init.name: init for init in graph.initializer}
    small_values: dict[str, np.ndarray] = {}
    graph_outputs = {output.name for output in graph.output}
    folded_names: set[str] = set()
    partial_shapes: dict[str, tuple] = {}  # Shape outputs with some dynamic dims
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or any(out in graph_outputs for out in node.output):
            continue
        if node.op_type == "Shape":
            _remember_shape(node, shapes, partial_shapes)
        values = _fold_node(node, opset, shapes, constants, small_values, partial_shapes)
        if values is None:
            continue
        for name, value in zip(node.output, values):
            tensor = numpy_helper.from_array(np.asarray(value), name)
            graph.initializer.append(tensor)
            constants[name] = tensor
            small_values[name] = np.asarray(value)
        folded_names.add(node.name)
    if not folded_names:
        return 0
    kept = [node for node in graph.node if node.name not in folded_names]
    del graph.node[:]
    graph.node.extend(kept)
    remove_dead_nodes(model)
    return len(folded_names)


def _remember_shape(node, shapes, partial_shapes) -> None:
    dims = shapes.get(node.input[0])
    if dims is not None:
        start, end = attr(node, "start", 0), attr(node, "end", len(dims))
        partial_shapes[node.output[0]] = tuple(dims[slice(start, end)])


def _fold_node(node, opset, shapes, constants, small_values, partial_shapes):
    if node.op_type == "Shape":
        dims = partial_shapes.get(node.output[0])
        return [np.array(dims, dtype=np.int64)] if dims is not None and is_static(dims) else None
    if node.op_type == "Gather" and node.input[0] in partial_shapes and node.input[1] in constants:
        # Gather(Shape(x), i) of a static dim i, even when other dims of x are dynamic.
        dims = partial_shapes[node.input[0]]
        indices = numpy_helper.to_array(constants[node.input[1]])
        picked = [dims[int(i)] for i in indices.reshape(-1)]
        if not is_static(picked):
            return None
        return [np.array(picked, dtype=np.int64).reshape(indices.shape)]
    inputs = [name for name in node.input if name]
    if node.op_type not in _FOLDABLE_OPS or not inputs or not all(name in constants for name in inputs):
        return None
    feeds = {}
    for name in inputs:
        if name not in small_values:
            init = constants[name]
            if int(np.prod(init.dims)) > _MAX_FOLDED_ELEMENTS:
                return None
            small_values[name] = numpy_helper.to_array(init)
        feeds[name] = small_values[name]
    if not _output_is_small(node, feeds):
        return None
    try:
        outputs = ReferenceEvaluator(_single_node_graph(node, feeds, opset)).run(None, feeds)
    except Exception as exc:  # an op the reference runtime rejects: leave it
        log.debug("not folding %s: %s", node.name, exc)
        return None
    if any(np.asarray(out).size > _MAX_FOLDED_ELEMENTS for out in outputs):
        return None
    return outputs


def _output_is_small(node, feeds) -> bool:
    """Whether an op that creates a tensor from a few numbers stays small: checked before
    evaluating, so a constant `ConstantOfShape([100000, 100000])` is never allocated."""
    if node.op_type == "ConstantOfShape":
        return int(np.prod(feeds[node.input[0]])) <= _MAX_FOLDED_ELEMENTS
    if node.op_type == "Range":
        start, limit, delta = (float(feeds[name]) for name in node.input[:3])
        return delta != 0 and (limit - start) / delta <= _MAX_FOLDED_ELEMENTS
    return True


def _single_node_graph(node, feeds, opset: int):
    """A one-node model at the model's own opset: an op's signature depends on it
    (Unsqueeze takes `axes` as an attribute before opset 13, as an input after)."""
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
              for name, value in feeds.items()]
    outputs = [helper.make_empty_tensor_value_info(name) for name in node.output]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def remove_dead_nodes(model: onnx.ModelProto) -> int:
    """Drop nodes none of whose outputs is read, and initializers nothing reads."""
    graph = model.graph
    needed = {output.name for output in graph.output}
    kept_reversed, removed = [], 0
    for node in reversed(graph.node):
        # Custom-domain ops are kept: we cannot know they are free of side effects.
        if any(name in needed for name in node.output) or node.domain not in ("", "ai.onnx"):
            kept_reversed.append(node)
            needed.update(name for name in node.input if name)
            needed.update(name for body in subgraphs(node) for inner in body.node for name in inner.input)
        else:
            removed += 1
    if removed:
        del graph.node[:]
        graph.node.extend(reversed(kept_reversed))
    drop_unused_initializers(model)
    return removed
