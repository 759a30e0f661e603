"""Give every Reshape its own computed target shape.

Exporters write `view(b, t, c)` with a run-time batch and sequence as a Concat of
`Gather(Shape(x))` entries and a constant channel count; the channel rule rewrites
that constant when the channels shrink. The dynamo exporter computes one such target
per block and lets every Reshape of the block read it (GPT-2: the q, k, v and output
reshapes of an attention share one [batch, seq, hidden] target), and rewriting a shared
constant would resize the other readers: the rule froze them all. Each Reshape that reads
a shared target gets a copy of the Concat (and of the Casts between it and the
Reshape); the run-time entries stay shared, and the constants are unshared later with
every other initializer.
"""

from __future__ import annotations

from collections import Counter

import onnx

from onnx_slim.ir.graph import fresh_name, names_read_in_subgraphs, subgraphs

TARGET_PASSTHROUGH = ("Cast",)  # nodes a target may go through between its Concat and the Reshape


def unshare_reshape_targets(graph: onnx.GraphProto) -> int:
    """Copy each shared computed Reshape target for its Reshape; returns how many copies were made.

    Readers are served in graph order and the last Reshape keeps the original, so no copy is
    left unread; a target that a graph output or a subgraph reads is copied for every Reshape."""
    producers = {name: node for node in graph.node for name in node.output}
    readers = Counter(name for node in graph.node for name in node.input if name)
    pinned = {output.name for output in graph.output} | names_read_in_subgraphs(graph)
    taken = (set(producers) | {name for node in graph.node for name in node.input} | {n.name for n in graph.node}
             | {value.name for value in [*graph.input, *graph.output, *graph.initializer]} | _subgraph_names(graph))
    nodes, copies = [], 0
    for node in graph.node:
        chain = _target_chain(node, producers)
        if chain and any(readers[link.output[0]] > 1 or link.output[0] in pinned for link in chain):
            renamed: dict[str, str] = {}
            for original in reversed(chain):  # the Concat first
                copy = onnx.NodeProto()
                copy.CopyFrom(original)
                copy.name = fresh_name(f"{original.name}__for_{node.name}", taken)
                copy.output[0] = fresh_name(f"{original.output[0]}__for_{node.name}", taken)
                copy.input[:] = [renamed.get(name, name) for name in original.input]
                renamed[original.output[0]] = copy.output[0]
                for name in copy.input:
                    readers[name] += 1
                nodes.append(copy)
            readers[node.input[1]] -= 1
            node.input[1] = renamed[node.input[1]]
            copies += 1
        nodes.append(node)
    if copies:
        _drop_unread(graph, nodes, pinned)
    return copies


def _target_chain(node: onnx.NodeProto, producers: dict) -> list[onnx.NodeProto]:
    """The nodes from a Reshape's target back to the Concat that computes it (Reshape side first);
    [] for anything else (a constant target, another producer)."""
    if node.op_type != "Reshape" or len(node.input) < 2 or not node.input[1]:
        return []
    chain, producer = [], producers.get(node.input[1])
    while producer is not None and producer.op_type in TARGET_PASSTHROUGH:
        chain.append(producer)
        producer = producers.get(producer.input[0])
    if producer is None or producer.op_type != "Concat":
        return []
    return chain + [producer]


def _drop_unread(graph: onnx.GraphProto, nodes: list, pinned: set) -> None:
    """Set the graph's nodes, without the Concat and Cast nodes nothing reads any more (the originals
    whose readers all read copies now, and any such node the exporter left unread)."""
    while True:
        read = {name for node in nodes for name in node.input} | pinned
        kept = [node for node in nodes if node.op_type not in ("Concat",) + TARGET_PASSTHROUGH
                or any(name in read for name in node.output)]
        if len(kept) == len(nodes):
            break
        nodes = kept
    del graph.node[:]
    graph.node.extend(nodes)


def _subgraph_names(graph: onnx.GraphProto) -> set[str]:
    """Every node, tensor and value name inside the bodies of If/Loop/Scan nodes."""
    names = set()
    for body in (body for node in graph.node for body in subgraphs(node)):
        names |= {node.name for node in body.node} | {name for node in body.node for name in [*node.input, *node.output]}
        names |= {value.name for value in [*body.input, *body.output, *body.initializer]} | _subgraph_names(body)
    return names
