"""Bring exported models to one form before analysis.

Exporters differ in how they store weights: initializers, `Constant` nodes
(paddle2onnx, dynamo), initializers behind `Identity` (TorchScript de-duplicates
equal tensors and reaches them through Identity), `Cast` of a constant. After
`normalize` every constant is an initializer read directly by the nodes that use
it, each use has its own copy (so slicing one user's weight never touches
another's), inference-mode BatchNormalization is folded into the preceding
Conv/ConvTranspose/Gemm, and every node has a unique name.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx.version_converter
from onnx import helper, numpy_helper

from onnx_slim.errors import InvalidModelError, first_line
from onnx_slim.ir.graph import (drop_unused_initializers, fresh_name, keep_nodes, names_read_in_subgraphs,
                                opset_version, sort_topologically)
from onnx_slim.ir.model import check_not_quantized
from onnx_slim.normalize.fold import fold_shape_computations
from onnx_slim.normalize.targets import unshare_reshape_targets
from onnx_slim.ops.specs import WEIGHT_OPS

log = logging.getLogger(__name__)

MIN_OPSET = 11
# Older models (the ONNX model zoo's opset 7-9 classics) are converted to this opset first:
# few adapter hops, and quantization's per-channel QDQ needs 13.
UPGRADE_OPSET = 13


@dataclass
class NormalizeInfo:
    """What normalization did; `bn_scales` keeps |gamma| per folded producer node for `bn_scale`."""

    bn_scales: dict[str, np.ndarray] = field(default_factory=dict)
    folded_batchnorms: int = 0
    constants_lifted: int = 0
    copies_made: int = 0
    shape_nodes_folded: int = 0
    targets_unshared: int = 0  # Reshapes given their own copy of a shared computed target
    bias_adds_folded: int = 0
    opset_upgraded_from: int | None = None  # the model's opset, when it was older than MIN_OPSET

    @property
    def notes(self) -> list[str]:
        if self.opset_upgraded_from is None:
            return []
        return [f"the model was converted from opset {self.opset_upgraded_from} to {UPGRADE_OPSET} "
                f"(onnx.version_converter): the output is at opset {UPGRADE_OPSET}"]


def normalize(model: onnx.ModelProto) -> NormalizeInfo:
    """Normalize `model` in place (callers pass their own copy)."""
    check_not_quantized(model)
    info = NormalizeInfo(opset_upgraded_from=_upgrade_opset(model))
    # Exporters' intermediate shape annotations go stale as soon as a channel is removed
    # (onnxruntime refuses a model whose annotations contradict its weights): drop them,
    # shapes are inferred again where needed.
    del model.graph.value_info[:]
    sort_topologically(model.graph)
    _name_nodes(model.graph)
    info.constants_lifted = _lift_constants(model.graph)
    _bypass_identities(model.graph)
    info.shape_nodes_folded = fold_shape_computations(model)
    info.targets_unshared = unshare_reshape_targets(model.graph)
    info.copies_made = _unshare_initializers(model.graph)
    info.bias_adds_folded = _fold_bias_adds(model.graph)
    _fold_batchnorms(model.graph, info)
    drop_unused_initializers(model)  # the folded BatchNormalizations' parameters
    return info


def _upgrade_opset(model: onnx.ModelProto) -> int | None:
    """Convert a model older than MIN_OPSET to UPGRADE_OPSET in place; returns its old opset."""
    version = opset_version(model)
    if version >= MIN_OPSET:
        return None
    try:
        converted = onnx.version_converter.convert_version(model, UPGRADE_OPSET)
    except Exception as exc:  # the converter raises bare RuntimeErrors on ops it cannot adapt
        raise InvalidModelError(
            f"opset {version} is too old (need {MIN_OPSET} or newer) and onnx's version converter "
            f"failed: {first_line(exc)}"
        ) from None
    model.CopyFrom(converted)
    log.info("converted the model from opset %d to %d", version, UPGRADE_OPSET)
    return version


def _name_nodes(graph: onnx.GraphProto) -> None:
    used = Counter(node.name for node in graph.node if node.name)
    seen = set()
    for index, node in enumerate(graph.node):
        if not node.name or used[node.name] > 1 and node.name in seen:
            base = node.name or f"{node.op_type}_{index}"
            name, suffix = base, 0
            while name in used or name in seen:
                suffix += 1
                name = f"{base}_{suffix}"
            node.name = name
        seen.add(node.name)


def _lift_constants(graph: onnx.GraphProto) -> int:
    """Turn `Constant` nodes into initializers of the same name."""
    kept, lifted = [], 0
    for node in graph.node:
        value = _constant_value(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if value is None:
            kept.append(node)
            continue
        graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        lifted += 1
    if lifted:
        del graph.node[:]
        graph.node.extend(kept)
    return lifted


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attribute in node.attribute:
        if attribute.name == "value":
            return numpy_helper.to_array(attribute.t)
        if attribute.name == "value_float":
            return np.array(attribute.f, dtype=np.float32)
        if attribute.name == "value_floats":
            return np.array(list(attribute.floats), dtype=np.float32)
        if attribute.name == "value_int":
            return np.array(attribute.i, dtype=np.int64)
        if attribute.name == "value_ints":
            return np.array(list(attribute.ints), dtype=np.int64)
    return None  # sparse or string constants stay as they are


def _bypass_identities(graph: onnx.GraphProto) -> None:
    """Read every tensor directly instead of through Identity nodes (paddle2onnx writes dozens, and
    one between a conv's bias Add and its BatchNormalization kept the BN from folding), and
    initializers directly instead of through Cast nodes."""
    initializers = {init.name: init for init in graph.initializer}
    # Subgraphs read outer names directly: those names must keep existing.
    pinned = {output.name for output in graph.output} | names_read_in_subgraphs(graph)
    renamed: dict[str, str] = {}
    kept = []
    for node in graph.node:
        source = node.input[0] if node.input else ""
        source = renamed.get(source, source)
        if node.op_type == "Identity" and source and node.output[0] not in pinned:
            renamed[node.output[0]] = source
            continue
        if node.op_type in ("Identity", "Cast") and source in initializers and node.output[0] not in pinned:
            if node.op_type == "Identity":
                renamed[node.output[0]] = source
            else:
                value = numpy_helper.to_array(initializers[source])
                target = helper.tensor_dtype_to_np_dtype(next(a.i for a in node.attribute if a.name == "to"))
                cast = numpy_helper.from_array(value.astype(target), node.output[0])
                graph.initializer.append(cast)
                initializers[cast.name] = cast
            continue
        kept.append(node)
    if len(kept) != len(graph.node):
        keep_nodes(graph, kept, renamed)


def _unshare_initializers(graph: onnx.GraphProto) -> int:
    """Give every (node, input) that reads an initializer its own copy, past the first.

    Identical copies that stay identical are merged again when the model is saved
    (see surgery.deduplicate_initializers).
    """
    initializers = {init.name: init for init in graph.initializer}
    # Graph outputs and tensors read inside subgraphs must stay as they are: every
    # main-graph user gets a copy.
    pinned = {output.name for output in graph.output} | names_read_in_subgraphs(graph)
    seen: Counter = Counter()
    copies = 0
    taken = set(initializers) | {name for node in graph.node for name in node.output}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name not in initializers:
                continue
            seen[name] += 1
            if seen[name] == 1 and name not in pinned:
                continue
            copy_name = fresh_name(f"{name}__{node.name}", taken)
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[name])
            copy.name = copy_name
            graph.initializer.append(copy)
            node.input[index] = copy_name
            copies += 1
    return copies


def _fold_bias_adds(graph: onnx.GraphProto) -> int:
    """Fold `Conv -> Add(per-channel constant)` into the Conv's bias (paddle2onnx writes every
    conv bias as such an Add), so that a BatchNormalization after it folds too, and a re-fit
    writes its intercept into the Conv. ConvTranspose likewise. Returns how many were folded."""
    initializers = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers = Counter(name for node in graph.node for name in node.input)
    pinned = {output.name for output in graph.output} | names_read_in_subgraphs(graph)
    taken = set(initializers) | set(producer)
    removed, renamed = set(), {}
    for add in graph.node:
        if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.input) != 2:
            continue
        for data, constant in (add.input, list(reversed(add.input))):
            source = producer.get(data)
            if (source is None or source.op_type not in ("Conv", "ConvTranspose") or constant not in initializers
                    or readers[data] != 1 or data in pinned or source.input[1] not in initializers):
                continue
            bias = _per_channel_bias(source, initializers, numpy_helper.to_array(initializers[constant]))
            if bias is None:
                continue
            name = source.input[2] if len(source.input) > 2 and source.input[2] else fresh_name(
                f"{source.name}_bias", taken)
            dtype = numpy_helper.to_array(initializers[source.input[1]]).dtype
            value = numpy_helper.from_array(bias.astype(dtype), name)
            if name in initializers:
                initializers[name].CopyFrom(value)
            else:
                graph.initializer.append(value)
                initializers[name] = value
                while len(source.input) < 3:
                    source.input.append("")
                source.input[2] = name
            removed.add(add.name)
            if add.output[0] in pinned:
                source.output[0] = add.output[0]  # output names never change
            else:
                renamed[add.output[0]] = source.output[0]
            break
    if removed:
        keep_nodes(graph, [node for node in graph.node if node.name not in removed], renamed)
    return len(removed)


def _per_channel_bias(source, initializers, constant: np.ndarray) -> np.ndarray | None:
    """The Conv's bias plus `constant`, when the constant adds one value per output channel
    (shape [1, C, 1, ...] or [C, 1, ...] against the output's rank, or a scalar); else None."""
    weight = initializers[source.input[1]]
    group = next((a.i for a in source.attribute if a.name == "group"), 1)
    channels = weight.dims[0] if source.op_type == "Conv" else weight.dims[1] * group
    rank = len(weight.dims)  # the output's rank
    if constant.ndim > rank or source.input[2:] and source.input[2] and source.input[2] not in initializers:
        return None
    shape = (1,) * (rank - constant.ndim) + constant.shape
    if constant.size != 1 and (shape[1] != channels or math.prod(shape) != channels):
        return None
    old = (numpy_helper.to_array(initializers[source.input[2]]).astype(np.float64)
           if len(source.input) > 2 and source.input[2] else np.zeros(channels))
    return old + np.broadcast_to(constant.astype(np.float64).reshape(-1), (channels,))


def _fold_batchnorms(graph: onnx.GraphProto, info: NormalizeInfo) -> None:
    """Fold inference BatchNormalization into the Conv/ConvTranspose/Gemm right before it."""
    initializers = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers = Counter(name for node in graph.node for name in node.input)
    # Names that must survive: graph outputs and what subgraphs read.
    pinned = {output.name for output in graph.output} | names_read_in_subgraphs(graph)
    removed, renamed = set(), {}
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or len([o for o in bn.output if o]) != 1:
            continue
        if any(a.name == "training_mode" and a.i for a in bn.attribute):
            continue
        source = producer.get(bn.input[0])
        if source is None or source.op_type not in WEIGHT_OPS or not WEIGHT_OPS[source.op_type].folds_batchnorm(source):
            continue
        if readers[bn.input[0]] != 1 or bn.input[0] in pinned:
            continue
        if not all(name in initializers for name in list(bn.input[1:5]) + [source.input[1]]):
            continue
        if not _fold_one(graph, source, bn, initializers, info):
            continue
        removed.add(bn.name)
        if bn.output[0] in pinned:
            # Output names never change: the producer takes over the BN's output name.
            source.output[0] = bn.output[0]
        else:
            renamed[bn.output[0]] = source.output[0]
    if not removed:
        return
    keep_nodes(graph, [node for node in graph.node if node.name not in removed], renamed)
    info.folded_batchnorms = len(removed)


def _fold_one(graph, source, bn, initializers, info) -> bool:
    scale, bias, mean, var = (numpy_helper.to_array(initializers[n]).astype(np.float64) for n in bn.input[1:5])
    epsilon = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    weight_init = initializers[source.input[1]]
    weight = numpy_helper.to_array(weight_init)
    factor = scale / np.sqrt(var + epsilon)
    spec = WEIGHT_OPS[source.op_type]
    if not spec.folds_batchnorm(source):
        return False
    out_axis = spec.out_axis(source)
    if source.op_type == "Gemm" and len(source.input) > 2 and source.input[2] and \
            _gemm_bias_not_vector(initializers, source):
        return False
    if weight.shape[out_axis] != factor.size:
        return False
    shape = [1] * weight.ndim
    shape[out_axis] = -1
    folded_weight = (weight * factor.reshape(shape)).astype(weight.dtype)
    old_bias = np.zeros(factor.size)
    if len(source.input) > 2 and source.input[2]:
        if source.input[2] not in initializers:
            return False
        old_bias = numpy_helper.to_array(initializers[source.input[2]]).astype(np.float64).reshape(-1)
    folded_bias = ((old_bias - mean) * factor + bias).astype(weight.dtype)
    weight_init.CopyFrom(numpy_helper.from_array(folded_weight, weight_init.name))
    bias_name = source.input[2] if len(source.input) > 2 and source.input[2] else f"{source.name}_bias"
    if bias_name in initializers:
        initializers[bias_name].CopyFrom(numpy_helper.from_array(folded_bias, bias_name))
    else:
        new_bias = numpy_helper.from_array(folded_bias, bias_name)
        graph.initializer.append(new_bias)
        initializers[bias_name] = new_bias
        while len(source.input) < 3:
            source.input.append("")
        source.input[2] = bias_name
    info.bn_scales[source.name] = np.abs(scale).astype(np.float32)
    return True


def _gemm_bias_not_vector(initializers, gemm) -> bool:
    dims = list(initializers[gemm.input[2]].dims) if gemm.input[2] in initializers else None
    return dims is None or (len(dims) > 1 and dims[0] != 1)
