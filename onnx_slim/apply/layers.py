"""What the layer-wise passes after surgery share: which output channels a layer kept, where a
layer's intercept can live, who reads a tensor, an initializer by name."""

from __future__ import annotations

import math

import onnx

from onnx_slim.channels.context import PRODUCER
from onnx_slim.errors import OnnxSlimError
from onnx_slim.ir.graph import has_subgraphs, readers_of
from onnx_slim.ops.specs import RECURRENT_OPS, WEIGHT_OPS

UNUSABLE_BIAS = "<not per-feature>"  # a bias that cannot take a per-output intercept: the layer keeps its slice


def kept_outputs(analysis, node_name, weight, plan, original) -> list:
    """The original output-channel indices a layer keeps under `plan` (all of them if it is no producer)."""
    dims = initializer(original, weight).dims
    node = next(n for n in original.graph.node if n.name == node_name)
    for use in analysis.context.uses:
        if use.kind == PRODUCER and use.node == node_name and use.tensor == weight:
            kept = analysis.atoms.kept_indices(use.layout, plan)
            if node.op_type in RECURRENT_OPS:  # kept rows of W, in every direction
                return RECURRENT_OPS[node.op_type].output_columns(kept, dims)
            return kept
    return list(range(out_channels(node, dims)))


def out_channels(node, dims) -> int:
    if node.op_type in RECURRENT_OPS:
        return RECURRENT_OPS[node.op_type].outputs(dims)
    return dims[WEIGHT_OPS[node.op_type].out_axis(node)]


def bias_target(node, model, readers) -> tuple[str | None, bool]:
    """Where a fitted intercept can live: the node's bias, or the constant of the Add after a MatMul."""
    initializers = {init.name: init for init in model.graph.initializer}
    features = out_channels(node, initializer(model, node.input[1]).dims)

    def per_feature(name):  # only [N] or [1, ..., N] can take a per-feature intercept
        dims = list(initializers[name].dims) if name in initializers else []
        return bool(dims) and dims[-1] == features and math.prod(dims) == features

    if node.op_type in RECURRENT_OPS:
        return None, False
    if WEIGHT_OPS[node.op_type].bias_input is not None:
        if len(node.input) > 2 and node.input[2]:
            return (node.input[2], False) if per_feature(node.input[2]) else (UNUSABLE_BIAS, False)
        return f"{node.name}.refit_bias", False  # created when written
    following = readers.get(node.output[0], [])
    if len(following) == 1 and following[0].op_type == "Add":
        others = [name for name in following[0].input if name != node.output[0]]
        if len(others) == 1 and per_feature(others[0]):
            return others[0], True
    return None, False


def residual_sum(node, bias_is_following_add: bool, model, readers) -> tuple[str, str] | None:
    """(sum, partner) when the layer's output, after its bias Add if any, is read only by an Add
    with another activation (a residual connection); None otherwise."""
    output = node.output[0]
    if bias_is_following_add:
        output = readers[output][0].output[0]
    following = readers.get(output, [])
    if len(following) != 1 or following[0].op_type != "Add":
        return None
    constants = {init.name for init in model.graph.initializer}
    others = [name for name in following[0].input if name != output]
    if len(others) != 1 or not others[0] or others[0] in constants:
        return None
    return following[0].output[0], others[0]


def initializer(model, name) -> onnx.TensorProto:
    for init in model.graph.initializer:
        if init.name == name:
            return init
    raise OnnxSlimError(f"initializer {name} not found")


def cut_after(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """The part of `model` that computes `tensors` (its outputs dropped): later layers need not run."""
    if has_subgraphs(model.graph):
        return model  # subgraphs read outer tensors implicitly: keep everything
    needed, kept = set(tensors), []
    for node in reversed(model.graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    graph = model.graph
    cut = onnx.helper.make_graph(
        list(reversed(kept)), graph.name, list(graph.input), [],
        initializer=[init for init in graph.initializer if init.name in needed],
        value_info=[info for info in graph.value_info if info.name in needed])
    return onnx.helper.make_model(cut, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                                  functions=list(model.functions))


def mark_residuals(pruned, chunks) -> None:
    """Of the re-fit's passes (`chunks` of consumers), mark the consumers whose output joins a
    residual Add, unless the other addend depends on a layer re-fitted in the same pass or a later
    one (its value would change after this fit): a projection shortcut joining a deeper branch
    keeps its own target."""
    readers = readers_of(pruned)
    producers = {name: node for node in pruned.graph.node for name in node.output}
    not_yet_fitted = {consumer.node.name for chunk in chunks for consumer in chunk}
    for chunk in chunks:
        for consumer in chunk:
            found = residual_sum(consumer.node, consumer.bias_is_following_add, pruned, readers)
            if found is not None and not _depends_on(found[1], not_yet_fitted, producers):
                consumer.residual = found
        not_yet_fitted -= {consumer.node.name for consumer in chunk}


def _depends_on(tensor: str, node_names: set, producers: dict) -> bool:
    stack, seen = [tensor], set()
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen:
            continue
        if node.name in node_names:
            return True
        seen.add(node.name)
        stack.extend(name for name in node.input if name)
    return False
