"""Small helpers over onnx graphs shared by the passes that rewrite them."""

from __future__ import annotations

import onnx
from onnx import helper


def attr(node: onnx.NodeProto, name: str, default=None):
    """A node attribute's value, or `default` when the node does not set it."""
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def opset_version(model: onnx.ModelProto) -> int:
    """The model's default-domain opset (0 when it declares none)."""
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The bodies of an If/Loop/Scan node (empty for other nodes)."""
    found = []
    for attribute in node.attribute:
        found.extend(attribute.graphs)
        if attribute.HasField("g"):
            found.append(attribute.g)
    return found


def has_subgraphs(graph: onnx.GraphProto) -> bool:
    """Whether a node holds a subgraph: its body reads outer tensors without naming them as inputs,
    so a part of this graph cannot be cut out and run alone."""
    return any(subgraphs(node) for node in graph.node)


def names_read_in_subgraphs(graph: onnx.GraphProto) -> set[str]:
    """Names read by nodes inside subgraphs, at any depth: a superset of the outer-scope
    names they use, which are invisible as node inputs of the outer graph."""
    names: set[str] = set()
    for node in graph.node:
        for body in subgraphs(node):
            names.update(name for inner in body.node for name in inner.input)
            names |= names_read_in_subgraphs(body)
    return names


def keep_nodes(graph: onnx.GraphProto, kept: list[onnx.NodeProto], renamed: dict[str, str]) -> None:
    """Replace the graph's nodes by `kept`, pointing inputs named in `renamed` at the new names."""
    for node in kept:
        for index, name in enumerate(node.input):
            if name in renamed:
                node.input[index] = renamed[name]
    del graph.node[:]
    graph.node.extend(kept)


def drop_unused_initializers(model: onnx.ModelProto) -> int:
    """Remove initializers no node (at any depth) and no graph output reads; returns how many.

    onnxruntime warns about each one at load time, and they cost file size.
    """
    graph = model.graph
    read = {name for node in graph.node for name in node.input} | names_read_in_subgraphs(graph)
    read |= {output.name for output in graph.output}
    unused = {init.name for init in graph.initializer if init.name not in read}
    if unused:
        kept = [init for init in graph.initializer if init.name not in unused]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        inputs = [value for value in graph.input if value.name not in unused]  # IR < 4 lists them as inputs
        del graph.input[:]
        graph.input.extend(inputs)
    return len(unused)


def add_graph_outputs(model: onnx.ModelProto, names, element_types) -> None:
    """Expose tensors `names` as extra graph outputs, typed where `element_types` knows them
    (onnxruntime infers the type of an untyped output itself)."""
    for name in names:
        elem_type = element_types.get(name)
        if elem_type:
            model.graph.output.append(helper.make_tensor_value_info(name, elem_type, None))
        else:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
