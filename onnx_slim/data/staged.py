"""Intermediate tensors of a model that is re-written layer by layer, each part run once.

The re-fit after surgery asks, pass after pass, for tensors of deeper and deeper layers: of
the pruned model, whose earlier layers it has just re-written, and of the original (its
targets). Running a model from its inputs at every pass costs passes x depth: most of a
ResNet-50 re-fit. `StagedCapture` keeps, per calibration batch, the tensors at the
frontier of what has already run and runs only the part of the graph that is new.

That is exact as long as nothing already run changes: a caller that re-writes an
initializer says so (`rewritten`), and if a part that already ran reads it, the next pass
starts over from the model's inputs. A frontier over `budget_bytes` is dropped the same way,
so memory stays bounded whatever the calibration set's size.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import onnx

from onnx_slim.data.activations import ActivationCapture
from onnx_slim.data.parts import PartBuilder, part_inputs
from onnx_slim.ir.graph import has_subgraphs
from onnx_slim.ir.runtime import SessionSpec, create_session, run_session

DEFAULT_BUDGET_BYTES = 1 << 30  # frontier tensors kept across passes, all batches together


class StagedCapture:
    """Requested tensors of the current model, batch by batch, reusing what earlier calls computed."""

    def __init__(self, calibration, batch_size: int, *, session: SessionSpec = SessionSpec(),
                 budget_bytes: int = DEFAULT_BUDGET_BYTES):
        self.calibration = calibration
        self.batch_size = batch_size
        self.session = session
        self.budget_bytes = budget_bytes
        self._done: set[int] = set()  # indices (in graph.node) of the nodes whose outputs are cached
        self._cache: list[dict[str, np.ndarray]] = []  # per batch: frontier tensor -> value
        self._parts = PartBuilder()
        self.parts_run = 0  # how many partial runs (for tests and progress)
        self.restarts = 0  # how many times the cache was dropped

    def run(self, model: onnx.ModelProto, wanted: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        """For each calibration batch in order, the `wanted` tensors of `model` by name."""
        graph = model.graph
        if has_subgraphs(graph):  # subgraphs read outer tensors implicitly: run everything
            self._reset()
            capture = ActivationCapture(model, list(wanted), session=self.session)
            yield from (capture.run(batch) for batch in self.calibration.batches(self.batch_size))
            return
        plan = _Plan(graph, self._done, self._cache[0] if self._cache else {}, wanted)
        if plan.stale:  # a tensor it needs was dropped: start over from the inputs
            self._reset()
            plan = _Plan(graph, self._done, {}, wanted)
        part = None
        if plan.order:
            nodes = [graph.node[i] for i in plan.order]
            part = create_session(self._parts.build(model, nodes, self._cache[0] if self._cache else {}, plan.outputs),
                                  self.session)
            # What the part reads (a wanted tensor that is already cached is echoed, not fed).
            part_reads = part_inputs(model, nodes)
            self.parts_run += 1
        fresh = not self._cache
        for index, batch in enumerate(self.calibration.batches(self.batch_size)):
            cached = {} if fresh else self._cache[index]
            values = dict(cached)
            if part is not None:
                feeds = {name: cached[name] if name in cached else batch[name] for name in part_reads}
                values.update(run_session(part, feeds))
            for name in plan.graph_inputs_wanted:
                values[name] = np.asarray(batch[name])
            kept = {name: values[name] for name in plan.frontier}
            if fresh:
                self._cache.append(kept)
            else:
                self._cache[index] = kept
            yield {name: values[name] for name in wanted}
        self._done |= plan.nodes
        if self.cached_bytes() > self.budget_bytes:
            self._reset()

    def rewritten(self, model: onnx.ModelProto, names: Sequence[str]) -> None:
        """Initializers `names` were re-written: if a node already run reads one, start over next time."""
        changed = set(names)
        if any(changed.intersection(model.graph.node[i].input) for i in self._done):
            self._reset()

    def cached_bytes(self) -> int:
        return sum(value.nbytes for batch in self._cache for value in batch.values())

    def _reset(self) -> None:
        if self._done or self._cache:
            self.restarts += 1
        self._done, self._cache = set(), []


class _Plan:
    """Which nodes one call runs, what it feeds them and which of their outputs it keeps."""

    def __init__(self, graph: onnx.GraphProto, done: set[int], cached: dict, wanted: Sequence[str]):
        producer = {name: i for i, node in enumerate(graph.node) for name in node.output if name}
        graph_inputs = {value.name for value in graph.input}
        dynamic = _dynamic_tensors(graph, graph_inputs)
        self.stale = False
        self.nodes: set[int] = set()  # dynamic nodes to run (then cached)
        constant_nodes: set[int] = set()  # nodes of constants only: re-run whenever needed, never cached
        self.graph_inputs_wanted = [name for name in wanted if name in graph_inputs]
        stack, seen = [name for name in wanted if name not in graph_inputs], set()
        while stack:
            name = stack.pop()
            if not name or name in seen:
                continue
            seen.add(name)
            if name in cached or name in graph_inputs:
                continue  # fed to the part, or echoed if wanted as is
            if name in producer:
                index = producer[name]
                if index in done and name in dynamic:
                    self.stale = True  # ran before but not kept: cannot be fed
                    return
                (self.nodes if name in dynamic else constant_nodes).add(index)
                stack.extend(graph.node[index].input)
        self.order = sorted(self.nodes | constant_nodes)
        after = done | self.nodes
        read_later = {name for i, node in enumerate(graph.node) if i not in after and i not in constant_nodes
                      for name in node.input if name in dynamic}
        produced = {name for i in self.nodes for name in graph.node[i].output if name}
        self.frontier = sorted((set(cached) | produced) & read_later)
        # A wanted tensor computed from constants only (the input of Swin-V2's position-bias MLP
        # layer) is an output too: recomputed with the part, never cached.
        wanted_constants = {name for i in constant_nodes for name in graph.node[i].output if name in wanted}
        self.outputs = sorted(produced & (read_later | set(wanted)) | wanted_constants)


def _dynamic_tensors(graph: onnx.GraphProto, graph_inputs: set[str]) -> set[str]:
    """Tensors that depend on a graph input (the rest are constants, recomputed rather than cached)."""
    dynamic = set(graph_inputs)
    for node in graph.node:  # topological, as ONNX requires
        if dynamic.intersection(node.input):
            dynamic.update(name for name in node.output if name)
    return dynamic

