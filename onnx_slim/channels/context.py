"""What a channel rule sees of the graph, and what it can record.

A rule looks at one node: which of its inputs carry a tracked channel axis (and
that axis's layout), static shapes, and constant values. It records:

- the layout of each output's channel axis (`track`);
- *uses*: initializer axes indexed by a layout, to be sliced when channels go
  (a producer's output filters, a consumer's input channels, a per-channel
  parameter such as a bias or a PRelu slope);
- *fixes*: integers elsewhere in the graph that state a channel count (Split
  sizes, Reshape targets, a depthwise Conv's `group`), rewritten after pruning,
  and computed side inputs sliced by a Gather where they are read;
- *freezes*: layouts that must never be pruned, with the reason;
- *scaled* nodes: compute without weights whose cost follows a layout (attention's
  q·kᵀ and probabilities·v per head), for the MACs counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_slim.channels.space import AtomTable, Block, FreezeReason, Layout
from onnx_slim.ir.graph import opset_version
from onnx_slim.ir.shapes import is_static

PRODUCER, CONSUMER, PARAM = "producer", "consumer", "param"


@dataclass(frozen=True)
class Tracked:
    """A tensor's channel axis and its layout."""

    axis: int
    layout: Layout


@dataclass(frozen=True)
class Use:
    """An axis of an initializer whose indices follow `layout`.

    With ``blocks > 1`` the layout is that many equal blocks, tied channel by channel,
    that all read the same axis: a grouped Conv's input channels, where the weight
    holds one group's worth (``in_channels / group``) and every group loses the same ones.
    """

    kind: str  # PRODUCER | CONSUMER | PARAM
    node: str
    op_type: str
    tensor: str
    axis: int
    layout: Layout
    blocks: int = 1

    def axis_length(self, atoms: AtomTable) -> int:
        return atoms.length(self.layout) // self.blocks

    def kept_on_axis(self, atoms: AtomTable, removed: dict) -> list[int]:
        """The axis indices that survive `removed` (class root -> channels)."""
        kept = atoms.kept_indices(self.layout, removed)
        if self.blocks == 1:
            return kept
        # The blocks are tied, so the first one says which indices of the axis stay.
        return [index for index in kept if index < self.axis_length(atoms)]


@dataclass
class Fix:
    """An integer in the graph that states the kept size of some layouts.

    `apply(editor, kept_length)` rewrites it (`editor` is a surgery.GraphEditor;
    `kept_length(layout)` is the kept size, `kept_length.indices(layout)` the kept channels);
    `layouts` says which layouts it depends on, so fixes whose layouts lose
    nothing are skipped.
    """

    node: str
    layouts: tuple
    apply: Callable  # (GraphEditor, kept_length: Callable[[Layout], int]) -> None


@dataclass
class AnalysisContext:
    model: onnx.ModelProto
    shapes: dict  # tensor name -> shape tuple (int | str | None)
    prune_layernorm: bool = False  # let groups normalized by LayerNormalization be pruned
    # grouped Convs lose whole groups (`group` decreases) rather than the same channels from each
    whole_conv_groups: bool = False
    atoms: AtomTable = field(default_factory=AtomTable)
    tracked: dict = field(default_factory=dict)  # tensor name -> Tracked
    uses: list = field(default_factory=list)
    fixes: list = field(default_factory=list)
    # Shape outputs that hold a channel count: name -> (layout, index of that count)
    size_carriers: dict = field(default_factory=dict)
    # Outputs of a carrier divided by its own count (DeBERTa's B*H // H): the batch, whatever is kept
    counts_divided_out: set = field(default_factory=set)
    # Weightless compute nodes whose MACs shrink with a layout's kept channels: name -> layout
    # (attention's MatMuls between activations, by the heads they keep)
    scaled: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.initializers = {init.name: init for init in self.model.graph.initializer}
        self.opset = opset_version(self.model)
        self._small_values: dict[str, np.ndarray] = {}
        self._producers = {name: node for node in self.model.graph.node for name in node.output}
        self._reader_nodes: dict[str, list] = {}
        for node in self.model.graph.node:
            for name in set(node.input):
                self._reader_nodes.setdefault(name, []).append(node)
        self._independent: dict[str, bool] = {}

    # -- reading -----------------------------------------------------------

    def is_const(self, name: str) -> bool:
        return name in self.initializers

    def const(self, name: str) -> np.ndarray | None:
        """The value of a constant input (meant for small shape tensors)."""
        if not name or name not in self.initializers:
            return None
        if name not in self._small_values:
            self._small_values[name] = numpy_helper.to_array(self.initializers[name])
        return self._small_values[name]

    def producer(self, name: str) -> onnx.NodeProto | None:
        return self._producers.get(name)

    def reader_nodes(self, name: str) -> list:
        """The nodes that read `name`."""
        return self._reader_nodes.get(name, [])

    def readers(self, name: str) -> int:
        """How many nodes read `name`."""
        return len(self._reader_nodes.get(name, ()))

    def shape(self, name: str) -> tuple | None:
        return self.shapes.get(name)

    def static_shape(self, name: str) -> tuple | None:
        shape = self.shapes.get(name)
        return shape if is_static(shape) else None

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def independent_of_channels(self, name: str) -> bool:
        """Whether no tracked tensor and no channel count flows into `name`: pruning any group
        leaves its shape (and, but for upstream approximation, its values) as they are."""
        return name not in self.size_carriers and self._computed_without_channels(name)

    def _computed_without_channels(self, name: str) -> bool:
        """No tracked tensor's values and no channel count reach `name`. Sizes read by Shape are
        channel counts only where they are size carriers; a Gather or Slice that leaves the
        carried count out (the batch size read from an activation's shape, as exporters size a
        zero initial state) reads none."""
        if name not in self._independent:
            self._independent[name] = True  # provisional: graphs are acyclic
            producer = self._producers.get(name)
            self._independent[name] = name not in self.tracked and (
                producer is None or producer.op_type == "Shape"
                or all(self._reads_no_channels(producer, part) for part in producer.input if part))
        return self._independent[name]

    def _reads_no_channels(self, node: onnx.NodeProto, part: str) -> bool:
        if part in self.size_carriers:
            return node.output[0] in self.counts_divided_out or (
                node.op_type in ("Gather", "Slice") and part == node.input[0]
                and not any(output in self.size_carriers for output in node.output))
        return self._computed_without_channels(part)

    def get(self, name: str) -> Tracked | None:
        return self.tracked.get(name) if name else None

    def length(self, layout: Layout) -> int:
        return self.atoms.length(layout)

    # -- recording ---------------------------------------------------------

    def track(self, name: str, axis: int, layout: Layout) -> None:
        if name:
            self.tracked[name] = Tracked(axis, layout)

    def new_layout(self, size: int, node: onnx.NodeProto) -> Layout:
        return (Block(self.atoms.new_atom(size, node.name)),)

    def use(self, kind: str, node: onnx.NodeProto, tensor: str, axis: int, layout: Layout, blocks: int = 1) -> None:
        self.uses.append(Use(kind, node.name, node.op_type, tensor, axis, layout, blocks))

    def fix(self, node: onnx.NodeProto, layouts, apply: Callable) -> None:
        self.fixes.append(Fix(node.name, tuple(layouts), apply))

    def freeze(self, layout: Layout, node: onnx.NodeProto | str, reason: str) -> None:
        if isinstance(node, str):
            why = FreezeReason(node, "", reason)
        else:
            why = FreezeReason(node.name, node.op_type, reason)
        self.atoms.freeze_layout(layout, why)

    def freeze_inputs(self, node: onnx.NodeProto, reason: str) -> None:
        """Freeze every tracked input of `node`; its outputs stay untracked."""
        for name in node.input:
            tracked = self.get(name)
            if tracked is not None:
                self.freeze(tracked.layout, node, reason)
