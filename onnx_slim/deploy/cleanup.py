"""The last pass over a pruned or quantized model: bypass Identity chains, fold constant subgraphs, merge
duplicated constants, drop what nothing reads (initializers, value_info, nodes).

onnx-graphsurgeon folds the constant subgraphs (it evaluates them with
onnxruntime) and removes what is unused; Identity bypassing and constant
de-duplication are ours (graphsurgeon keeps Identity nodes and equal copies).
The model keeps its IR version, opsets, input and output names and symbolic
dims. Quantization nodes are never folded: a DequantizeLinear of an int8
weight is constant, and folding it would give the float weight back.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnx_slim.apply.surgery import deduplicate_initializers, initializer_key
from onnx_slim.errors import first_line
from onnx_slim.ir.graph import (
    has_subgraphs,
    names_read_in_subgraphs,
    sort_topologically,
    subgraphs,
    unproduced_inputs,
)
from onnx_slim.ir.model import is_quantized_op

# Protobuf refuses a message over 2 GiB, and folding serializes the graph for onnxruntime.
_FOLD_LIMIT_BYTES = 1_800_000_000


@dataclass
class CleanupReport:
    nodes_before: int
    nodes_after: int
    initializers_before: int
    initializers_after: int
    identities_bypassed: int = 0
    duplicates_merged: int = 0
    removed_ops: dict[str, int] = field(default_factory=dict)  # op type: nodes fewer after the clean-up
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"clean-up: {self.nodes_before} -> {self.nodes_after} nodes, "
                f"{self.initializers_before} -> {self.initializers_after} initializers")


def clean_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, CleanupReport]:
    """A cleaned copy of `model` and what the clean-up removed; `model` itself is not modified."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    notes: list[str] = []
    bypassed = bypass_identities(work.graph)
    _tie_transposed_copies(work.graph)
    cleaned = _graphsurgeon_pass(work, notes)
    merged = deduplicate_initializers(cleaned)
    before, after = Counter(n.op_type for n in model.graph.node), Counter(n.op_type for n in cleaned.graph.node)
    removed = {op: count for op, count in sorted((before - after).items())}
    return cleaned, CleanupReport(
        nodes_before=len(model.graph.node), nodes_after=len(cleaned.graph.node),
        initializers_before=len(model.graph.initializer), initializers_after=len(cleaned.graph.initializer),
        identities_bypassed=bypassed, duplicates_merged=merged, removed_ops=removed, notes=notes,
    )


def bypass_identities(graph: onnx.GraphProto) -> int:
    """Point the readers of every Identity at its input; returns how many Identity nodes went.

    An Identity that writes a graph output, or whose output a subgraph reads, stays: bypassing it
    would rename the output or need renaming inside the subgraph.
    """
    pinned = {output.name for output in graph.output} | names_read_in_subgraphs(graph)
    source_of: dict[str, str] = {}
    for node in graph.node:
        if node.op_type == "Identity" and node.output[0] not in pinned:
            source_of[node.output[0]] = node.input[0]
    if not source_of:
        return 0

    def origin(name: str) -> str:
        while name in source_of:  # a chain of Identity nodes
            name = source_of[name]
        return name

    kept = [node for node in graph.node if not (node.op_type == "Identity" and node.output[0] in source_of)]
    for node in kept:
        for index, name in enumerate(node.input):
            if name in source_of:
                node.input[index] = origin(name)
    del graph.node[:]
    graph.node.extend(kept)
    return len(source_of)


def _graphsurgeon_pass(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """Fold constant subgraphs and remove unused nodes, tensors and value_info with onnx-graphsurgeon.

    Folding an If whose condition is constant inlines a branch, and graphsurgeon can then leave a
    reader of the If's second output without a producer (silero-vad 6's exports): the fold is then
    given up and only the unused nodes go."""
    attempt = model
    if has_subgraphs(model.graph):  # folding edits the If / Loop bodies it imported: keep them for the retry
        attempt = onnx.ModelProto()
        attempt.CopyFrom(model)
    cleaned = _surgeon(attempt, notes, fold=True)
    dangling = unproduced_inputs(cleaned.graph)
    if dangling:
        notes.append(f"constant folding skipped: onnx-graphsurgeon's folding left {dangling[0]} without a producer")
        cleaned = _surgeon(model, notes, fold=False)
    return cleaned


def _surgeon(model: onnx.ModelProto, notes: list[str], fold: bool) -> onnx.ModelProto:
    weight_bytes = [_tensor_bytes(tensor) for tensor in model.graph.initializer]
    graph = gs.import_onnx(model)
    graph.toposort()
    if fold and sum(weight_bytes) > _FOLD_LIMIT_BYTES:
        notes.append("constant folding skipped: the model is too large for onnxruntime to evaluate in memory")
    elif fold:
        try:
            # Never larger than the largest weight: folding an Expand or Tile must not bloat the file.
            graph.fold_constants(size_threshold=max(weight_bytes, default=0) or None,
                                 should_exclude_node=lambda node: is_quantized_op(node.op)
                                 or node.domain not in (None, "", "ai.onnx") or _copies_a_shared_weight(node))
        except Exception as exc:  # graphsurgeon's own failures; the unfolded graph is still valid
            notes.append(f"constant folding skipped: {first_line(exc)}")
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    cleaned = gs.export_onnx(graph, do_type_check=False)
    sort_topologically(cleaned.graph)  # graphsurgeon's order ignores what subgraphs read from outside
    _keep_model_fields(model, cleaned)
    _hoist_outer_initializers(model.graph, cleaned.graph)
    return cleaned


def _tie_transposed_copies(graph: onnx.GraphProto) -> None:
    """Point each Transpose of a weight at an identical weight that another node reads: normalization
    gives every reader its own copy, and folding the Transpose of one copy would store the table twice."""
    if not any(node.op_type == "Transpose" for node in graph.node):
        return
    keys = {init.name: initializer_key(init) for init in graph.initializer
            if init.data_location != onnx.TensorProto.EXTERNAL}
    read_elsewhere = {}
    for node in graph.node:
        if node.op_type != "Transpose":
            for name in node.input:
                if name in keys:
                    read_elsewhere.setdefault(keys[name], name)
    for node in graph.node:
        if node.op_type == "Transpose" and node.input and node.input[0] in keys:
            node.input[0] = read_elsewhere.get(keys[node.input[0]], node.input[0])


def _copies_a_shared_weight(node: gs.Node) -> bool:
    """A Transpose of a weight that other nodes read too (a tied embedding and the output projection
    that reads it transposed, as the dynamo exporter writes GPT-2): folding it would store the weight twice."""
    source = node.inputs[0] if node.op == "Transpose" and node.inputs else None
    return isinstance(source, gs.Constant) and len(source.outputs) > 1


def _hoist_outer_initializers(original: onnx.GraphProto, cleaned: onnx.GraphProto) -> None:
    """Put outer initializers back in the outer graph: graphsurgeon's export copies an outer initializer that
    only If/Loop bodies read into every body that reads it (one copy per branch: the file grows)."""
    outer = {tensor.name for tensor in original.initializer}
    present = {tensor.name for tensor in cleaned.initializer}
    for body in _bodies(cleaned):
        kept = []
        for tensor in body.initializer:
            if tensor.name not in outer:
                kept.append(tensor)
            elif tensor.name not in present:
                cleaned.initializer.append(tensor)
                present.add(tensor.name)
        del body.initializer[:]
        body.initializer.extend(kept)


def _bodies(graph: onnx.GraphProto):
    for node in graph.node:
        for body in subgraphs(node):
            yield body
            yield from _bodies(body)


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return itemsize * int(np.prod(tensor.dims, dtype=np.int64))


def _keep_model_fields(original: onnx.ModelProto, cleaned: onnx.ModelProto) -> None:
    """What graphsurgeon's export sets its own way: the IR version, opsets and model metadata stay the original's."""
    cleaned.ir_version = original.ir_version
    del cleaned.opset_import[:]
    cleaned.opset_import.extend(original.opset_import)
    for name in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(cleaned, name, getattr(original, name))
    del cleaned.metadata_props[:]
    cleaned.metadata_props.extend(original.metadata_props)
