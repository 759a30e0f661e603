"""Outlier-aware int8 for MatMul/Gemm layers: SmoothQuant scale migration, and float for layers it cannot save.

Transformer activations carry a few channels, on a few tokens, up to ~100x
larger than the rest (the "massive activations" of BERT-family encoders). One
int8 scale per tensor then rounds every ordinary value to a few steps: in
all-mpnet-base-v2 the FFN's second layer saw 50-60% relative error per token,
and int8 of the whole model ended at output cosine 0.10 (static) to 0.88
(dynamic).

For each float activation read by MatMul/Gemm layers with constant weights,
its channels are divided by s (an inserted Mul that stays float) and the
weights' input rows multiplied by s, which leaves the float model's function
unchanged (SmoothQuant, Xiao et al. 2023): s = amax^a / wmax^(1-a) per
channel, with the migration strength a chosen per activation from `ALPHAS` by
the simulated int8 error on calibration data (a = 0 leaves it as it is). A
layer whose simulated error stays above `MAX_LAYER_ERROR` is kept in float.

The simulation is `int8_simulation`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_slim.deploy.int8_simulation import Int8Simulation, round_activation, round_weight, row_error
from onnx_slim.ir.graph import add_graph_outputs, attr, names_read_in_subgraphs
from onnx_slim.ir.runtime import SessionSpec, create_session
from onnx_slim.ops.specs import WEIGHT_OPS

SMOOTHED_OPS = ("MatMul", "Gemm")
ALPHAS = (0.0, 0.5, 0.75, 0.85, 0.95)
# Above this simulated error a layer stays float. On all-mpnet-base-v2 (reports/bench_quantize.md: 300 test
# sentences, embedding cosine with fp32, p50 at one thread; fp32 71.7 ms): 0.05 keeps its 11 worst FFN output
# layers float, static 0.998 / dynamic 0.997 at 37 ms; 1 keeps none, 0.995 / 0.989 at 21 ms; 0.1 (scratch) keeps
# 3, 0.996 / 0.982 at 29 ms. Accuracy first: dynamic falls under auto's 0.99 gate above 0.05, a pruned model's
# own error adds to it, and the worst sentence drops from 0.995 to 0.976 at 0.1.
MAX_LAYER_ERROR = 0.05
CAPTURE_BYTES = 256 << 20  # sampled activation rows kept for the simulation, all activations together
_MIN_ROWS, _MAX_ROWS = 64, 4096
_PREFIX = "smooth_quant/"


@dataclass(frozen=True)
class _Layer:
    index: int  # the node's position in the graph (the same in a copy of the model)
    node: onnx.NodeProto
    weight: onnx.TensorProto
    in_axis: int  # the weight axis that reads the activation's channels


@dataclass(frozen=True)
class _Group:
    """A float activation [..., K] and the layers that read it as their data input."""

    activation: str
    layers: tuple[_Layer, ...]

    @property
    def channels(self) -> int:
        layer = self.layers[0]
        return layer.weight.dims[layer.in_axis]


@dataclass
class OutlierReport:
    """What `prepare_for_int8` changed: activations smoothed (with their strength) and layers left float."""

    smoothed: dict[str, float] = field(default_factory=dict)  # activation -> migration strength a
    float_layers: list[str] = field(default_factory=list)  # layer names to keep out of quantization
    inserted: list[str] = field(default_factory=list)  # the Mul nodes added (float by design)
    layer_errors: dict[str, float] = field(default_factory=dict)  # simulated int8 error per layer, as smoothed

    def excluded(self) -> list[str]:
        return [*self.float_layers, *self.inserted]


def prepare_for_int8(
    model: onnx.ModelProto,
    batches: Iterable[Mapping[str, np.ndarray]],
    simulation: Int8Simulation = Int8Simulation(),
    session: SessionSpec = SessionSpec(),
    max_error: float = MAX_LAYER_ERROR,
) -> tuple[onnx.ModelProto, OutlierReport]:
    """A copy of `model` with smoothed activations, and which layers to keep float; the model itself is untouched.

    `batches`: feed dicts of calibration data (every batch counts towards the ranges)."""
    groups = find_groups(model)
    report = OutlierReport()
    if not groups:
        return model, report
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    captures = _capture(prepared, groups, batches, session)
    scales: dict[str, np.ndarray] = {}
    for group in groups:
        capture = captures[group.activation]
        if capture.rows is None:
            continue  # no calibration rows reached it
        alpha, scale, layer_errors = _choose(group, capture, simulation)
        for layer, error in zip(group.layers, layer_errors):
            report.layer_errors[layer.node.name] = round(float(error), 4)
            if error > max_error:
                report.float_layers.append(layer.node.name)
        if alpha > 0 and min(layer_errors) <= max_error:  # no Mul where every reader stays float
            report.smoothed[group.activation] = alpha
            scales[group.activation] = scale
    report.inserted = _rewrite(prepared, [group for group in groups if group.activation in scales], scales)
    return prepared, report


def find_groups(model: onnx.ModelProto) -> list[_Group]:
    """Activations read by MatMul/Gemm layers whose float32 2-D weight no other node uses, grouped by activation."""
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    # A weight a subgraph reads, or one listed as a graph input (a caller may feed it), is not ours to scale.
    fed_or_nested = names_read_in_subgraphs(model.graph) | {value.name for value in model.graph.input}
    readers: dict[str, list[_Layer]] = {}
    for index, node in enumerate(model.graph.node):
        if node.op_type not in SMOOTHED_OPS or len(node.input) < 2 or not node.name:
            continue
        weight = initializers.get(node.input[1])
        if weight is None or len(weight.dims) != 2 or weight.data_type != onnx.TensorProto.FLOAT:
            continue
        if uses[node.input[1]] > 1 or node.input[1] in fed_or_nested or node.input[0] in initializers:
            continue  # scaling a shared (or overridable) weight would change its other readers
        if node.op_type == "Gemm" and attr(node, "transA", 0):
            continue
        layer = _Layer(index, node, weight, WEIGHT_OPS[node.op_type].in_axis(node))
        readers.setdefault(node.input[0], []).append(layer)
    groups = []
    for activation, layers in readers.items():
        channels = {layer.weight.dims[layer.in_axis] for layer in layers}
        if len(channels) == 1:
            groups.append(_Group(activation, tuple(layers)))
    return groups


# --- capture -------------------------------------------------------------------


@dataclass
class _Capture:
    low: np.ndarray | None = None  # per channel, over every calibration row
    high: np.ndarray | None = None
    rows: np.ndarray | None = None  # a uniform sample of rows (reservoir), [rows, K]
    seen: int = 0


def _capture(model, groups: list[_Group], batches, session: SessionSpec) -> dict[str, _Capture]:
    """Per-channel ranges of every group's activation over all batches, and a sample of its rows.

    The activations are exposed as outputs of `model` only while the session is made (no second copy of a
    large model's weights)."""
    names = [group.activation for group in groups]
    outputs = len(model.graph.output)
    add_graph_outputs(model, names, {})
    try:
        runner = create_session(model, session)
    finally:
        del model.graph.output[outputs:]
    budget_rows = CAPTURE_BYTES // (4 * sum(group.channels for group in groups))
    row_cap = int(np.clip(budget_rows, _MIN_ROWS, _MAX_ROWS))
    rng = np.random.default_rng(0)
    captures = {name: _Capture() for name in names}
    for batch in batches:
        for group, value in zip(groups, runner.run(names, dict(batch))):
            _add_rows(captures[group.activation], value.reshape(-1, group.channels).astype(np.float32), row_cap, rng)
    return captures


def _add_rows(capture: _Capture, rows: np.ndarray, cap: int, rng: np.random.Generator) -> None:
    low, high = rows.min(0), rows.max(0)
    capture.low = low if capture.low is None else np.minimum(capture.low, low)
    capture.high = high if capture.high is None else np.maximum(capture.high, high)
    if capture.rows is None:
        capture.rows = rows[:cap].copy()
        rows, capture.seen = rows[cap:], min(len(rows), cap)
    elif len(capture.rows) < cap:
        room = cap - len(capture.rows)
        capture.rows = np.concatenate([capture.rows, rows[:room]])
        rows, capture.seen = rows[room:], capture.seen + min(len(rows), room)
    if len(rows):  # reservoir sampling: each row seen so far stays with probability cap / seen
        positions = capture.seen + np.arange(1, len(rows) + 1)
        slots = (rng.random(len(rows)) * positions).astype(np.int64)
        taken = slots < cap
        capture.rows[slots[taken]] = rows[taken]
        capture.seen += len(rows)


# --- choice of the migration strength --------------------------------------------


def _choose(group: _Group, capture: _Capture, simulation: Int8Simulation):
    """(a, s, simulated error of each layer at that a): the a of `ALPHAS` with the smallest mean layer error."""
    weights = [np.moveaxis(numpy_helper.to_array(layer.weight), layer.in_axis, 0).astype(np.float32)
               for layer in group.layers]
    rows = capture.rows
    references = [rows @ weight for weight in weights]
    activation_max = np.maximum(np.maximum(np.abs(capture.low), np.abs(capture.high)), 1e-5)
    weight_max = np.maximum(np.max([np.abs(weight).max(1) for weight in weights], axis=0), 1e-5)
    best = None
    for alpha in ALPHAS:
        scale = np.ones_like(activation_max) if alpha == 0 else np.clip(
            activation_max ** alpha / weight_max ** (1 - alpha), 1e-4, 1e4).astype(np.float32)
        rounded = round_activation(rows / scale, capture.low / scale, capture.high / scale)
        errors = [row_error(rounded @ round_weight(weight * scale[:, None], simulation), reference)
                  for weight, reference in zip(weights, references)]
        if best is None or np.mean(errors) < np.mean(best[2]):
            best = (alpha, scale, errors)
    return best


# --- rewrite -----------------------------------------------------------------------


def _rewrite(model: onnx.ModelProto, groups: list[_Group], scales: dict[str, np.ndarray]) -> list[str]:
    """Insert Mul(x, 1/s) after each smoothed activation's producer; scale its layers' weights by s."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    nodes = list(graph.node)
    muls: dict[str, onnx.NodeProto] = {}
    for index, group in enumerate(groups):
        scale = scales[group.activation]
        prefix = f"{_PREFIX}{index}/"
        inverse = numpy_helper.from_array((1 / scale).astype(np.float32), prefix + "inverse_scale")
        graph.initializer.append(inverse)
        smoothed = prefix + "smoothed"
        muls[group.activation] = helper.make_node("Mul", [group.activation, inverse.name], [smoothed],
                                                  name=prefix + "mul")
        for layer in group.layers:
            weight = initializers[layer.weight.name]
            shape = [1, 1]
            shape[layer.in_axis] = -1
            scaled = numpy_helper.to_array(weight) * scale.reshape(shape)
            weight.CopyFrom(numpy_helper.from_array(scaled.astype(np.float32), weight.name))
            nodes[layer.index].input[0] = smoothed
    ordered = [muls[name] for name in [value.name for value in graph.input] if name in muls]
    for node in graph.node:
        ordered.append(node)
        ordered.extend(muls[output] for output in node.output if output in muls)
    del graph.node[:]
    graph.node.extend(ordered)
    return [node.name for node in muls.values()]
