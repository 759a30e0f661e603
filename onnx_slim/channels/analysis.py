"""A model ready for pruning: normalized, with its channel groups, shapes and costs."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import onnx

from onnx_slim.channels.groups import ChannelAnalysis, ChannelGroup, analyze_channels
from onnx_slim.channels.space import FreezeReason
from onnx_slim.channels.streams import stream_roots
from onnx_slim.errors import InvalidModelError
from onnx_slim.ir.graph import subgraphs
from onnx_slim.ir.inputs import InputValues, check_input_values, fixed_input_shapes, graph_inputs, shapes_from_samples
from onnx_slim.ir.model import ModelSource, load_model
from onnx_slim.ir.shapes import concrete_shapes
from onnx_slim.normalize.passes import NormalizeInfo, normalize
from onnx_slim.ops.cost import ModelCost, concrete_input_shapes, count_params, model_cost
from onnx_slim.ops.specs import RECURRENCE_PART, RECURRENT_OPS, WEIGHT_OPS


@dataclass
class ModelAnalysis:
    """A normalized model with its channel groups and costs."""

    model: onnx.ModelProto
    normalize_info: NormalizeInfo
    channels: ChannelAnalysis
    cost: ModelCost
    shapes: dict
    input_shapes: dict
    shapes_measured: bool = False  # static inference fell short: shapes come from one onnxruntime run
    run_failure: str | None = None  # that run failed: the model does not run at `input_shapes`
    input_values: dict = field(default_factory=dict)  # inputs fixed to one value (--input-value)

    @property
    def shapes_note(self) -> str:
        if not self.shapes_measured:
            return ""
        return ("static shape inference left some shapes unknown (sizes computed at run time); "
                "all shapes were measured by one onnxruntime run at the input shapes above")

    @property
    def layers_in_subgraphs(self) -> int:
        """Weight layers inside If / Loop / Scan bodies, at any depth."""
        return _layers_in_subgraphs(self.model.graph)

    @property
    def subgraph_note(self) -> str:
        """Layers inside If / Loop / Scan bodies: not analyzed, counted or pruned (silero-vad keeps
        its whole network in the branches of one If)."""
        inside = self.layers_in_subgraphs
        if not inside:
            return ""
        return (f"{inside} weight layer(s) sit inside If / Loop / Scan bodies: they are not analyzed, their MACs "
                f"are not counted above (their weights are), and they are never pruned")

    @property
    def groups(self) -> list[ChannelGroup]:
        return self.channels.groups

    def group_macs(self, group: ChannelGroup) -> int:
        return sum(self.cost.node_macs.get(node, 0) for node in self._shrinking_nodes(group))

    def prunable_macs_fraction(self) -> float:
        """Share of the MACs in nodes that a prunable group can shrink."""
        nodes = {node for group in self.channels.prunable_groups() for node in self._shrinking_nodes(group)}
        total = self.cost.macs
        return sum(self.cost.node_macs.get(node, 0) for node in nodes) / total if total else 0.0

    def to_dict(self) -> dict:
        total = self.cost.macs or 1
        streams = stream_roots(self.channels)
        return {
            "params": self.cost.params,
            "macs": self.cost.macs,
            "input_shapes": {name: list(shape) for name, shape in self.input_shapes.items()},
            "shapes_measured": self.shapes_measured,
            "notes": [note for note in [self.shapes_note, self.subgraph_note, *self.normalize_info.notes] if note],
            "groups_total": len(self.groups),
            "groups_prunable": len(self.channels.prunable_groups()),
            "prunable_macs_fraction": round(self.prunable_macs_fraction(), 4),
            "folded_batchnorms": self.normalize_info.folded_batchnorms,
            "groups": [
                {
                    "id": group.id,
                    "channels": group.channels,
                    "blocks": group.blocks,  # a grouped Conv's groups: each channel is one per group
                    "unit": group.unit,  # producer channels per group channel: an attention head's D
                    "status": group.status,
                    "prunable": group.prunable,
                    "stream": group.root in streams,  # a residual stream (`--allocate interior` spares it)
                    "macs_share": round(self.group_macs(group) / total, 4),
                    "producers": sorted({m.use.node for m in group.producers}),
                    "consumers": sorted({m.use.node for m in group.consumers}),
                    "frozen_by": [
                        {"node": reason.node, "op_type": reason.op_type, "reason": reason.reason}
                        for reason in group.frozen
                    ],
                }
                for group in self.groups
            ],
        }


    def _shrinking_nodes(self, group: ChannelGroup) -> set[str]:
        """The cost keys `group` shrinks: its weight-bearing nodes, the recurrence of the recurrent
        layers whose hidden units it is, and the MatMuls between activations it scales."""
        atoms, scaled = self.channels.atoms, self.channels.context.scaled
        nodes = {member.use.node for member in group.producers + group.consumers}
        recurrences = {member.use.node + RECURRENCE_PART for member in group.producers
                       if member.use.op_type in RECURRENT_OPS}
        return nodes | recurrences | {node for node, layout in scaled.items()
                                      if group.root in set(atoms.classes_in(layout))}


def analyze(
    model: ModelSource,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    exclude: Sequence[str] = (),
    prune_layernorm: bool = False,
    whole_conv_groups: bool = False,
    copy: bool = True,
    sample_shapes: Mapping[str, Sequence[int]] | None = None,
    input_values: InputValues | None = None,
) -> ModelAnalysis:
    """Normalize a copy of `model` and find its channel groups. `prune_layernorm`: groups a
    LayerNormalization spans are prunable too (not lossless); `whole_conv_groups`: grouped
    Convs lose whole groups instead of the same channels from every group; `sample_shapes`
    (of the calibration data) size the inputs that `input_shapes` does not name; `input_values`
    fixes inputs in the run that measures shapes static inference leaves unknown."""
    proto = load_model(model, copy=copy)
    # Counted before normalization gives each reader of a shared weight its own copy.
    params = count_params(proto)
    info = normalize(proto)
    if sample_shapes:
        input_shapes = shapes_from_samples(proto, sample_shapes, input_shapes)
    concrete = concrete_input_shapes(proto, input_shapes)
    check_input_values(proto, input_values)
    if input_values:  # sized beside the others (a state's anonymous batch dim follows the input's batch)
        fed = {name: shape for name, shape in concrete.items() if name not in input_values}
        concrete.update(fixed_input_shapes(graph_inputs(proto), input_values, fed, input_shapes))
    found = concrete_shapes(proto, concrete, input_values)
    shapes = found.shapes
    channels = analyze_channels(proto, shapes, prune_layernorm=prune_layernorm, whole_conv_groups=whole_conv_groups)
    _check_weight_shapes(channels, shapes)
    _apply_excludes(channels.groups, exclude)
    cost = model_cost(proto, shapes=shapes)
    cost.params = params
    return ModelAnalysis(proto, info, channels, cost, shapes, concrete, found.measured, found.failure,
                         dict(input_values or {}))


def _check_weight_shapes(channels: ChannelAnalysis, shapes: Mapping[str, tuple]) -> None:
    """A weight axis must be as long as the channels the graph feeds it (a broken export
    would otherwise fail deep in surgery or onnxruntime)."""
    for use in channels.context.uses:
        dims = shapes.get(use.tensor)
        expected = use.axis_length(channels.atoms)
        if dims is not None and use.axis < len(dims) and dims[use.axis] != expected:
            raise InvalidModelError(
                f"node {use.node} ({use.op_type}): weight {use.tensor} has {dims[use.axis]} channels on axis "
                f"{use.axis} but the graph gives it {expected}: the model is inconsistent; re-export it"
            )


def _apply_excludes(groups: list[ChannelGroup], patterns: Sequence[str]) -> None:
    for group in groups:
        for pattern in patterns:
            hits = [node for node in group.nodes if fnmatch.fnmatchcase(node, pattern)]
            if hits:
                group.frozen.append(FreezeReason(hits[0], "", f"excluded by --exclude {pattern}"))
                break


def _layers_in_subgraphs(graph: onnx.GraphProto) -> int:
    """Weight-bearing nodes (convs, Gemm / MatMul, recurrent cells) inside the bodies of `graph`'s nodes,
    at any depth."""
    layers = WEIGHT_OPS.keys() | RECURRENT_OPS.keys()
    count = 0
    for node in graph.node:
        for body in subgraphs(node):
            count += sum(inner.op_type in layers for inner in body.node) + _layers_in_subgraphs(body)
    return count
