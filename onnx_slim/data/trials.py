"""Trials that prune one group at a time, each run from the first node its masks reach.

A sensitivity trial removes channels of one group only: every node before the first
reader of that group's masks computes what the unmasked model computes. `GroupTrials`
visits the groups in the order their masks are first read, carries the unmasked
values at that point forward from one group to the next (each prefix node runs once),
and runs a trial on the rest of the graph only: about half the model on average. Groups whose
first readers are close share one start (SUFFIXES), so that building sessions does not cost
more than the trials.
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping, Sequence

from onnx_slim.data.masking import MaskedModel
from onnx_slim.data.metrics import AgreementAccumulator
from onnx_slim.data.parts import PartBuilder, part_inputs
from onnx_slim.ir.graph import has_subgraphs
from onnx_slim.ir.runtime import SessionSpec, create_session, run_session

Trial = Callable[[Mapping[int, list]], dict]  # plan -> agreement (metrics.agreement keys)
SUFFIXES = 8  # at most about this many distinct starts (sessions of a model's tail) per run


class GroupTrials:
    """Agreement with the unmasked outputs of plans that prune one group, group after group."""

    def __init__(self, masked: MaskedModel, batches: list[dict], reference: list[dict], *,
                 session: SessionSpec = SessionSpec()):
        self.masked, self.batches, self.reference, self.session = masked, batches, reference, session
        graph = masked.model.graph
        self.nodes = list(graph.node)
        self.output_names = [output.name for output in graph.output]
        self.subgraphs = has_subgraphs(graph)
        self.parts = PartBuilder()

    def first_reader(self, root: int) -> int:
        """Index of the first node that reads a mask of class `root` (len(nodes) if none does)."""
        names = {slot.input_name for slot in self.masked.slots if root in self.masked.atoms.classes_in(slot.layout)}
        return next((i for i, node in enumerate(self.nodes) if names.intersection(node.input)), len(self.nodes))

    def each(self, roots: Sequence[int]) -> Iterator[tuple[int, Trial]]:
        """(root, trial) for every class root, in the order their masks are first read. A trial reads
        the values carried forward, which the next step advances: use it before asking for the next."""
        if self.subgraphs:  # subgraphs read outer tensors implicitly: trials run the whole model
            for root in roots:
                yield root, self._whole_model_trial
            return
        starts = self._starts(roots)
        frontier = [dict(batch) for batch in self.batches]  # per batch: values available at `done`
        done, trial_start, trial = 0, None, None
        for root, start in sorted(starts.items(), key=lambda item: item[1]):
            if start != trial_start:  # a new start: carry the values there, then one session from it
                if start > done:
                    self._advance(frontier, done, start)
                    done = start
                trial, trial_start = self._suffix_trial(frontier, start), start
            yield root, trial

    def _starts(self, roots: Sequence[int]) -> dict[int, int]:
        """Where each root's trials start: at its first reader, or at an earlier root's start when
        that is less than 1/SUFFIXES of the graph before it. Each start costs a session of the rest
        of the model (ResNet-50: 37 starts; building them and carrying values to them took 13 of the
        57 s); running a few more nodes per trial costs less."""
        step = max(1, len(self.nodes) // SUFFIXES)
        first = {root: self.first_reader(root) for root in roots}
        starts, current = {}, None
        for root in sorted(roots, key=first.get):
            if current is None or first[root] >= current + step:
                current = first[root]
            starts[root] = current
        return starts

    # -- running -------------------------------------------------------------------------

    def _whole_model_trial(self, plan) -> dict:
        return self._agreement([self.masked.run(batch, plan) for batch in self.batches])

    def _advance(self, frontier: list[dict], start: int, stop: int) -> None:
        """Run nodes[start:stop] unmasked; keep what the nodes after them (or the outputs) read."""
        part = self.nodes[start:stop]
        later = self._read_from(stop) | set(self.output_names)
        produced = {name for node in part for name in node.output if name}
        outputs = sorted(produced & later)
        ones = self.masked.feeds_for({})
        if outputs:
            session = create_session(self.parts.build(self.masked.model, part, {**ones, **frontier[0]}, outputs), self.session)
        inputs = part_inputs(self.masked.model, part)
        for values in frontier:
            if outputs:
                feeds = {name: values[name] if name in values else ones[name] for name in inputs}
                values.update(run_session(session, feeds))
            for name in [name for name in values if name not in later]:
                del values[name]

    def _suffix_trial(self, frontier: list[dict], start: int) -> Trial:
        part = self.nodes[start:]
        produced = {name for node in part for name in node.output if name}
        outputs = [name for name in self.output_names if name in produced]
        ones = self.masked.feeds_for({})
        session = create_session(self.parts.build(self.masked.model, part, {**ones, **frontier[0]}, outputs), self.session) \
            if outputs else None
        inputs = part_inputs(self.masked.model, part)

        def trial(plan) -> dict:
            masks = self.masked.feeds_for(plan)
            results = []
            for values in frontier:
                result = {name: values[name] for name in self.output_names if name not in produced}
                if session is not None:
                    feeds = {name: masks[name] if name in masks else values[name] for name in inputs}
                    result.update(run_session(session, feeds))
                results.append(result)
            return self._agreement(results)
        return trial

    def _agreement(self, results: list[dict]) -> dict:
        accumulator = AgreementAccumulator()
        for expected, actual in zip(self.reference, results):
            accumulator.update(expected, {name: actual[name] for name in expected})
        return accumulator.result()

    # -- building the parts ------------------------------------------------------------------

    def _read_from(self, start: int) -> set[str]:
        return {name for node in self.nodes[start:] for name in node.input if name}

