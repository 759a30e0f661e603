"""A masked model: evaluate any pruning plan with one onnxruntime session.

Pruning a group's channels means its consumers (Conv, Gemm, MatMul,
ConvTranspose reading the channels) no longer see them. The masked model is a
copy of the analyzed (normalized) model in which the data input of every
consumer of the given groups is multiplied by a per-channel mask fed as an extra
graph input, shaped to broadcast on the consumer's channel axis (``[1, L, 1, 1]``
for a Conv, ``[1, L]`` for a Gemm, ``[1, 1, L]`` for a 3-D MatMul input).
Feeding zeros at a plan's channel indices gives the pruned network's outputs,
without building a new model per plan.

Exactness: everything between a producer and its consumers that works channel by
channel (biases, BatchNormalization, activations, pooling, Resize, depthwise
convs, residual Adds, Concat/Split, Flatten) gives the same result whether a
channel is removed or merely ignored by the consumers, so masked and pruned
outputs agree to float rounding. A LayerNormalization over the channel axis is
the exception: after pruning, its mean and variance cover the kept channels
only. Masking the consumers alone would leave the removed channels in those
statistics (on the transformer test models that is an error of about 10% of the
output scale), so each such LayerNormalization is rewritten in the masked model
as its formula with masked statistics (mean and variance over the kept channels),
which makes it exact too. A recurrent layer reads its own hidden units back at
every step: its R columns are masked as well.

With `fill_from` (calibration batches), a removed channel reads as its mean on those
batches instead of zero: (x - mean) * mask + mean. That is the pruned network after the
cheapest compensation the re-fit always has (the removed channels' mean contribution folded
into the consumers' biases), so a sensitivity trial prices what pruning costs once
re-fitted, not what zeroing a channel with a large mean (a ReLU's output) costs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_slim.channels.analysis import ModelAnalysis
from onnx_slim.channels.groups import ChannelAnalysis, ChannelGroup
from onnx_slim.channels.space import Layout
from onnx_slim.data.activations import ActivationCapture
from onnx_slim.data.metrics import AgreementAccumulator
from onnx_slim.data.statistics import ChannelStats
from onnx_slim.ir.runtime import SessionSpec, create_session, run_session
from onnx_slim.ops.specs import RECURRENT_OPS, Recurrent

MASK_PREFIX = "onnx_slim_mask"


@dataclass(frozen=True)
class MaskSlot:
    """One mask input for `tensor`'s channel axis, read by its consumers and layer norms."""

    input_name: str
    tensor: str
    axis: int
    rank: int
    layout: Layout
    length: int
    dtype: np.dtype
    consumers: tuple  # nodes whose input `position` now reads the masked tensor
    layer_norms: tuple = ()  # LayerNormalization nodes rewritten with masked statistics
    position: int = 0  # the data input; a recurrent layer's R (2) for its own hidden units

    def shape(self) -> list[int]:
        dims = [1] * self.rank
        dims[self.axis] = self.length
        return dims


class MaskedModel:
    """The analyzed model with a channel mask in front of every consumer of `groups`.

    `analysis` is a `ModelAnalysis` or its `ChannelAnalysis` (what a
    criterion sees); the analyzed model is copied, never modified. One session
    serves every plan: `run(batch, plan)` feeds the plan's masks.
    """

    def __init__(self, analysis: ModelAnalysis | ChannelAnalysis, groups: list[ChannelGroup], *,
                 session: SessionSpec = SessionSpec(), fill_from: list[dict] | None = None):
        channels: ChannelAnalysis = getattr(analysis, "channels", analysis)
        self.atoms = channels.atoms
        self.roots = {group.root for group in groups}
        model = onnx.ModelProto()
        model.CopyFrom(channels.context.model)
        self.slots = _mask_slots(channels, groups)
        fills = _channel_means(model, self.slots, fill_from, session) if fill_from else {}
        _insert_masks(model, self.slots, fills)
        self.model = model
        self.output_names = [output.name for output in model.graph.output]
        self.session = create_session(model, session)

    def feeds_for(self, plan: Mapping[int, list]) -> dict[str, np.ndarray]:
        """Mask inputs for `plan` (class root -> removed channels): 0 where removed, else 1."""
        unknown = {root for root, removed in plan.items() if len(removed)} - self.roots
        if unknown:
            raise ValueError(f"plan removes channels of classes {sorted(unknown)} this masked model does not mask")
        feeds = {}
        for slot in self.slots:
            mask = np.zeros(slot.length, dtype=slot.dtype)
            mask[self.atoms.kept_indices(slot.layout, plan)] = 1
            feeds[slot.input_name] = mask.reshape(slot.shape())
        return feeds

    def run(self, batch: Mapping[str, np.ndarray], plan: Mapping[int, list] | None = None) -> dict[str, np.ndarray]:
        """The model outputs on `batch` with the channels of `plan` removed."""
        return run_session(self.session, {**batch, **self.feeds_for(plan or {})})


# --------------------------------------------------------------------------- where the masks go


def _mask_slots(channels: ChannelAnalysis, groups: list[ChannelGroup]) -> list[MaskSlot]:
    """One slot per masked tensor: every reader of one tensor shares its mask."""
    context = channels.context
    nodes = {node.name: node for node in context.model.graph.node}
    readers: dict[str, dict[str, list]] = {}  # tensor -> {"consumers": [...], "layer_norms": [...]}
    for group in groups:
        for member in group.consumers:
            node = nodes[member.use.node]
            _add_reader(readers, node.input[0], "consumers", node.name)
        for member in group.params:
            node = nodes[member.use.node]
            if node.op_type == "LayerNormalization" and _single_output(node):
                _add_reader(readers, node.input[0], "layer_norms", node.name)
    tracked = context.tracked
    slots = []
    for index, (tensor, reading) in enumerate(readers.items()):
        reader = nodes[(reading["consumers"] or reading["layer_norms"])[0]]
        slots.append(MaskSlot(
            input_name=f"{MASK_PREFIX}_{index}",
            tensor=tensor,
            axis=tracked[tensor].axis,
            rank=len(context.shapes[tensor]),
            layout=tracked[tensor].layout,
            length=channels.atoms.length(tracked[tensor].layout),
            # A weight or LayerNorm scale has the activation's element type.
            dtype=np.dtype(helper.tensor_dtype_to_np_dtype(context.initializers[reader.input[1]].data_type)),
            consumers=tuple(reading["consumers"]),
            layer_norms=tuple(reading["layer_norms"]),
        ))
    return slots + _recurrence_slots(channels, groups, nodes, start=len(slots))


def _recurrence_slots(channels: ChannelAnalysis, groups: list[ChannelGroup], nodes: dict, start: int) -> list:
    """A recurrent layer reads its own hidden units back through R's columns: masking only the
    readers downstream would leave a removed unit feeding the others, so R's columns are
    masked too (with R's rows kept, the removed unit still runs, but nothing reads it)."""
    slots = []
    for group in groups:
        for member in group.params:
            use, node = member.use, nodes[member.use.node]
            if use.op_type in RECURRENT_OPS and use.axis == Recurrent.hidden_axis and use.tensor == node.input[2]:
                slots.append(MaskSlot(
                    input_name=f"{MASK_PREFIX}_{start + len(slots)}",
                    tensor=use.tensor,
                    axis=use.axis,
                    rank=3,
                    layout=use.layout,
                    length=channels.atoms.length(use.layout),
                    dtype=np.dtype(helper.tensor_dtype_to_np_dtype(channels.context.initializers[use.tensor].data_type)),
                    consumers=(node.name,),
                    position=2,
                ))
    return slots


def _add_reader(readers: dict, tensor: str, kind: str, node_name: str) -> None:
    entry = readers.setdefault(tensor, {"consumers": [], "layer_norms": []})
    if node_name not in entry[kind]:
        entry[kind].append(node_name)


def _single_output(node: onnx.NodeProto) -> bool:
    """Only the normalized output is rebuilt; a LayerNorm whose Mean/InvStdDev are read stays."""
    return len([name for name in node.output if name]) == 1


def _channel_means(model: onnx.ModelProto, slots: list[MaskSlot], batches: list[dict],
                   session: SessionSpec) -> dict[str, np.ndarray]:
    """Per masked tensor read by consumers, its channel means on `batches`, shaped like its mask."""
    wanted = [slot for slot in slots if slot.consumers and slot.position == 0]
    if not wanted:
        return {}
    stats = {slot.tensor: ChannelStats(axis=slot.axis) for slot in wanted}
    for results in ActivationCapture(model, list(stats), session=session).iter(batches):
        for tensor, accumulator in stats.items():
            accumulator.update(results[tensor])
    return {slot.input_name: stats[slot.tensor].mean.astype(slot.dtype).reshape(slot.shape()) for slot in wanted}


def _insert_masks(model: onnx.ModelProto, slots: list[MaskSlot], fills: Mapping[str, np.ndarray]) -> None:
    """Add the mask inputs, a Mul before each tensor's first consumer (around it a Sub and an Add
    of the channel means, for a slot in `fills`), and masked layer norms."""
    graph = model.graph
    before: dict[str, list[onnx.NodeProto]] = {}  # node name -> nodes to insert before it
    replaced: dict[str, list[onnx.NodeProto]] = {}  # node name -> nodes that replace it
    nodes = {node.name: node for node in graph.node}
    for slot in slots:
        elem_type = helper.np_dtype_to_tensor_dtype(slot.dtype)
        graph.input.append(helper.make_tensor_value_info(slot.input_name, elem_type, slot.shape()))
        if slot.consumers:
            masked = f"{slot.tensor}__{slot.input_name}"
            first = next(node for node in graph.node if node.name in slot.consumers)
            before.setdefault(first.name, []).extend(_mask_nodes(slot, masked, fills.get(slot.input_name), graph))
            for name in slot.consumers:
                nodes[name].input[slot.position] = masked
        for name in slot.layer_norms:
            replaced[name] = _masked_layer_norm(nodes[name], slot, graph)
    ordered = []
    for node in graph.node:
        ordered.extend(before.get(node.name, []))
        ordered.extend(replaced.get(node.name, [node]))
    del graph.node[:]
    graph.node.extend(ordered)


def _mask_nodes(slot: MaskSlot, masked: str, mean: np.ndarray | None, graph: onnx.GraphProto) -> list:
    """x * mask, or with channel means (x - mean) * mask + mean, computed into `masked`."""
    name = slot.input_name
    if mean is None:
        return [helper.make_node("Mul", [slot.tensor, name], [masked], name=f"{name}_mul")]
    graph.initializer.append(numpy_helper.from_array(mean, f"{name}_mean"))
    return [helper.make_node("Sub", [slot.tensor, f"{name}_mean"], [f"{name}_centered"], name=f"{name}_sub"),
            helper.make_node("Mul", [f"{name}_centered", name], [f"{name}_kept"], name=f"{name}_mul"),
            helper.make_node("Add", [f"{name}_kept", f"{name}_mean"], [masked], name=f"{name}_add")]


def _masked_layer_norm(node: onnx.NodeProto, slot: MaskSlot, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """LayerNormalization over the channel axis with mean and variance over the unmasked channels.

    y = (x - mean) / sqrt(var + epsilon) * scale + bias, where mean and var are
    sums over the axis weighted by the mask and divided by the mask's sum.
    The removed channels' outputs are not zero, but no consumer sees them.
    """
    epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    prefix = f"{slot.input_name}_{node.name}"
    axes = f"{prefix}_axes"
    eps = f"{prefix}_epsilon"
    graph.initializer.extend([
        numpy_helper.from_array(np.array([slot.axis], dtype=np.int64), axes),
        numpy_helper.from_array(np.array(epsilon, dtype=slot.dtype), eps),
    ])
    x, scale = node.input[0], node.input[1]
    bias = node.input[2] if len(node.input) > 2 else ""
    mask = slot.input_name

    def make(op_type: str, inputs: list, output: str | None = None) -> str:
        name = output or f"{prefix}_{op_type.lower()}_{len(steps)}"
        steps.append(helper.make_node(op_type, inputs, [name], name=f"{prefix}_{len(steps)}"))
        return name

    steps: list[onnx.NodeProto] = []
    count = make("ReduceSum", [mask, axes])
    mean = make("Div", [make("ReduceSum", [make("Mul", [x, mask]), axes]), count])
    centered = make("Sub", [x, mean])
    masked_centered = make("Mul", [centered, mask])
    variance = make("Div", [make("ReduceSum", [make("Mul", [masked_centered, masked_centered]), axes]), count])
    normalized = make("Div", [centered, make("Sqrt", [make("Add", [variance, eps])])])
    if bias:
        make("Add", [make("Mul", [normalized, scale]), bias], node.output[0])
    else:
        make("Mul", [normalized, scale], node.output[0])
    return steps


def masked_agreement(masked: MaskedModel, batches: list, reference: list, plan: dict) -> dict:
    """Agreement (metrics.agreement keys) of the masked outputs under `plan` with `reference`
    (the unmasked outputs of the same batches)."""
    accumulator = AgreementAccumulator()
    for batch, expected in zip(batches, reference):
        accumulator.update(expected, masked.run(batch, plan))
    return accumulator.result()
