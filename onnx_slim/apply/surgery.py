"""Apply a plan: slice weights and per-channel parameters, rewrite channel counts, tidy up."""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_slim.channels.groups import ChannelAnalysis
from onnx_slim.ir.graph import names_read_in_subgraphs
from onnx_slim.ir.shapes import skeleton
from onnx_slim.plan.planner import Plan


class GraphEditor:
    """Name-based access to a graph's nodes and initializers, for rules' fixes."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self._nodes = {node.name: node for node in graph.node}
        self._initializers = {init.name: init for init in graph.initializer}

    def node(self, name: str) -> onnx.NodeProto:
        return self._nodes[name]

    def value(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self._initializers[name])

    def set_value(self, name: str, value: np.ndarray) -> None:
        init = self._initializers[name]
        init.CopyFrom(numpy_helper.from_array(np.asarray(value, dtype=self.value(name).dtype), name))

    def add_initializer(self, base_name: str, value: np.ndarray) -> str:
        name, suffix = base_name, 0
        while name in self._initializers:
            suffix += 1
            name = f"{base_name}_{suffix}"
        init = numpy_helper.from_array(value, name)
        self.graph.initializer.append(init)
        self._initializers[name] = self.graph.initializer[-1]
        return name

    def insert_before(self, node_name: str, new_node: onnx.NodeProto) -> None:
        """Add `new_node` right before node `node_name` (which reads its output), keeping the
        graph in topological order."""
        position = next(i for i, node in enumerate(self.graph.node) if node.name == node_name)
        self.graph.node.insert(position, new_node)
        self._nodes = {node.name: node for node in self.graph.node}  # insert moved the messages


def apply_plan(model: onnx.ModelProto, analysis: ChannelAnalysis, plan: Plan) -> None:
    """Remove the planned channels from `model` in place (the analyzed, normalized model)."""
    atoms = analysis.atoms
    touched = set(plan)
    editor = GraphEditor(model.graph)
    kept_by_tensor: dict[str, dict[int, list[int]]] = defaultdict(dict)
    for use in analysis.context.uses:
        if not touched.intersection(atoms.classes_in(use.layout)):
            continue
        kept = use.kept_on_axis(atoms, plan)
        previous = kept_by_tensor[use.tensor].get(use.axis)
        if previous is not None and previous != kept:
            raise RuntimeError(f"{use.tensor} axis {use.axis} is sliced two different ways")
        kept_by_tensor[use.tensor][use.axis] = kept
    for tensor, axes in kept_by_tensor.items():
        value = editor.value(tensor)
        for axis, kept in axes.items():
            value = np.take(value, kept, axis=axis)
        editor.set_value(tensor, value)

    kept = KeptChannels(atoms, plan)
    for fix in analysis.context.fixes:
        if any(touched.intersection(atoms.classes_in(layout)) for layout in fix.layouts):
            fix.apply(editor, kept)


class KeptChannels:
    """What a plan keeps of a layout, for fixes: `kept(layout)` is the size, `kept.indices(layout)`
    the channels."""

    def __init__(self, atoms, plan: Plan) -> None:
        self.atoms, self.plan = atoms, plan

    def __call__(self, layout) -> int:
        return self.atoms.kept_length(layout, self.plan)

    def indices(self, layout) -> list[int]:
        return self.atoms.kept_indices(layout, self.plan)


def refresh_shapes(model: onnx.ModelProto) -> None:
    """Drop stale shape annotations and re-infer them; graph outputs keep their declared shapes."""
    graph = model.graph
    initializer_dims = {init.name: list(init.dims) for init in graph.initializer}
    for value in graph.input:
        if value.name in initializer_dims:  # old IR: initializers listed as inputs
            shape = value.type.tensor_type.shape
            del shape.dim[:]
            for dim in initializer_dims[value.name]:
                shape.dim.add().dim_value = dim
    del graph.value_info[:]
    graph.value_info.extend(_inferred_value_info(model))


def _inferred_value_info(model: onnx.ModelProto) -> list:
    light = skeleton(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception:
        return []  # onnxruntime infers shapes itself; annotations are a courtesy
    initializer_names = {init.name for init in model.graph.initializer}
    return [value for value in inferred.graph.value_info if value.name not in initializer_names]


def deduplicate_initializers(model: onnx.ModelProto) -> int:
    """Point every reader of identical initializers at one copy; returns how many were merged."""
    graph = model.graph
    pinned = {output.name for output in graph.output} | {value.name for value in graph.input}
    pinned |= names_read_in_subgraphs(graph)
    first_by_digest: dict[tuple, str] = {}
    replace: dict[str, str] = {}
    for init in graph.initializer:
        if init.name in pinned or init.data_location == onnx.TensorProto.EXTERNAL:
            continue
        key = initializer_key(init)
        if key in first_by_digest:
            replace[init.name] = first_by_digest[key]
        else:
            first_by_digest[key] = init.name
    if not replace:
        return 0
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in replace:
                node.input[index] = replace[name]
    kept = [init for init in graph.initializer if init.name not in replace]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return len(replace)


def initializer_key(init: onnx.TensorProto) -> tuple:
    """Equal for initializers of equal type, shape and values, whatever their names."""
    payload = init.raw_data or _without_name(init)
    return init.data_type, tuple(init.dims), hashlib.sha1(payload).hexdigest()


def _without_name(init: onnx.TensorProto) -> bytes:
    copy = onnx.TensorProto()
    copy.CopyFrom(init)
    copy.name = ""
    return copy.SerializeToString()
