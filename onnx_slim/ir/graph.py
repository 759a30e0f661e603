"""Small helpers over onnx graphs shared by the passes that rewrite them."""

from __future__ import annotations

import heapq

import onnx
from onnx import helper


def attr(node: onnx.NodeProto, name: str, default=None):
    """A node attribute's value, or `default` when the node does not set it."""
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def readers_of(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it (a node reading it twice is listed twice)."""
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


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


def unproduced_inputs(graph: onnx.GraphProto, outer: frozenset = frozenset()) -> list[str]:
    """Names that a node of `graph` or of its If / Loop / Scan bodies reads (explicitly) and that no
    input, initializer or node of that graph or of a graph around it produces (`outer`): a broken
    graph, whatever the node order. (graphsurgeon's fold broke one inside silero-vad's If branch.)"""
    known = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    known |= {name for node in graph.node for name in node.output} | outer
    missing = {name for node in graph.node for name in node.input if name not in known}
    for node in graph.node:
        for body in subgraphs(node):
            missing.update(unproduced_inputs(body, frozenset(known)))
    return sorted(missing)


def sort_topologically(graph: onnx.GraphProto) -> bool:
    """Order the nodes so each comes after the producers of what it reads (its subgraphs'
    outer reads included), keeping the given order wherever it already is; returns whether
    anything moved. ONNX asks for that order, but onnxruntime runs graphs without it (its
    float16 converter appends the input Casts last), and every pass here walks nodes in order."""
    nodes = list(graph.node)
    producer = {name: index for index, node in enumerate(nodes) for name in node.output if name}
    needs: list[set[int]] = []
    for index, node in enumerate(nodes):
        reads = set(node.input)
        for body in subgraphs(node):
            reads |= {name for inner in body.node for name in inner.input} | names_read_in_subgraphs(body)
        needs.append({producer[name] for name in reads if name in producer and producer[name] != index})
    if all(all(before < index for before in need) for index, need in enumerate(needs)):
        return False
    waiting = [len(need) for need in needs]
    readers: dict[int, list[int]] = {}
    for index, need in enumerate(needs):
        for before in need:
            readers.setdefault(before, []).append(index)
    ready = [index for index, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for reader in readers.get(index, ()):
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    if len(order) != len(nodes):
        return False  # a cycle: not a valid graph, left for the checker to report
    del graph.node[:]
    graph.node.extend(nodes[index] for index in order)
    return True


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


def fresh_name(base: str, taken: set) -> str:
    """`base`, or `base_1`, `base_2`... the first not in `taken`; recorded there as taken."""
    name, suffix = base, 0
    while name in taken:
        suffix += 1
        name = f"{base}_{suffix}"
    taken.add(name)
    return name
