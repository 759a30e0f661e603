"""Checks shared by the channel-rule tests: run, validate, zero channels for lossless pruning."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_slim.channels.analysis import analyze
from onnx_slim.ir.inputs import random_inputs
from onnx_slim.ir.runtime import CHECK, create_session, run_session
from onnx_slim.pipeline.prune import prune


def random_feeds(model: onnx.ModelProto, seed: int = 1) -> dict:
    """Inputs for every graph input, as the library makes them (symbolic dims made concrete)."""
    return random_inputs(model, seed=seed)


def run(model: onnx.ModelProto, feeds: dict) -> dict:
    return run_session(create_session(model, CHECK), feeds)


def assert_valid(pruned: onnx.ModelProto, original: onnx.ModelProto, seed: int = 1) -> dict:
    """Invariant 1: full checker, runs in onnxruntime, same output names and shapes.

    Returns the pruned model's outputs on `random_feeds(original, seed)`.
    """
    onnx.checker.check_model(pruned, full_check=True)
    feeds = random_feeds(original, seed)
    before, after = run(original, feeds), run(pruned, feeds)
    assert list(after) == list(before)
    for name in before:
        assert after[name].shape == before[name].shape, name
    return after


def assert_same_outputs(first: onnx.ModelProto, second: onnx.ModelProto, rtol: float = 1e-5, seed: int = 1):
    """Outputs equal within `rtol` of each output's largest magnitude."""
    feeds = random_feeds(first, seed)
    expected, actual = run(first, feeds), run(second, feeds)
    for name, value in expected.items():
        scale = float(np.abs(value).max()) or 1.0
        np.testing.assert_allclose(actual[name], value, rtol=rtol, atol=rtol * scale, err_msg=name)


# Per-channel parameters that must be zero for a zeroed channel to stay zero.
# A Div constant is the divisor (zeroing it would make NaN); Mul/PRelu keep 0 at 0 anyway.
_KEEP_NONZERO = {"Div"}


def zeroed_for_lossless(model: onnx.ModelProto, ratio: float, seed: int = 0):
    """A copy of the normalized `model` in which `int(channels * ratio)` channels of every
    prunable group are exactly zero (producer weights and additive parameters).

    The l1 criterion scores those channels 0, so `prune(result, ratio=ratio)` removes
    exactly them; the copy is normalized so BN folding and weight copies are already done.
    Returns (zeroed model, {group id: zeroed channels}).
    """
    analysis = analyze(model)
    zeroed = analysis.model
    values = {init.name: numpy_helper.to_array(init).copy() for init in zeroed.graph.initializer}
    rng = np.random.default_rng(seed)
    chosen = {}
    for group in analysis.channels.prunable_groups():
        count = int(group.channels * ratio + 1e-9)
        if not count:
            continue
        channels = sorted(rng.choice(group.channels, size=count, replace=False).tolist())
        chosen[group.id] = channels
        members = group.producers + [m for m in group.params if m.use.op_type not in _KEEP_NONZERO]
        for member in members:
            value = values[member.use.tensor]
            for channel in channels:
                index = [slice(None)] * value.ndim
                index[member.use.axis] = list(member.indices(channel))
                value[tuple(index)] = 0
    for init in zeroed.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(values[init.name], init.name))
    return zeroed, chosen


def assert_lossless(model: onnx.ModelProto, ratio: float, **options) -> onnx.ModelProto:
    """Invariant 2: pruning channels that are exactly zero leaves the outputs as they were."""
    zeroed, chosen = zeroed_for_lossless(model, ratio)
    assert chosen, "no group lost a channel: the test would prove nothing"
    pruned, report = prune(zeroed, ratio=ratio, criterion="l1", **options)
    assert report.channels_removed == sum(len(c) for c in chosen.values())
    assert_valid(pruned, zeroed)
    assert_same_outputs(zeroed, pruned)
    return pruned


def weight_dims(model: onnx.ModelProto, node_name: str, input_index: int = 1) -> tuple:
    """Dims of the initializer that input `input_index` of node `node_name` reads."""
    node = next(n for n in model.graph.node if n.name == node_name)
    init = next(i for i in model.graph.initializer if i.name == node.input[input_index])
    return tuple(init.dims)


def group_with(analysis, node_name: str):
    """The group that `node_name` produces into (or, failing that, consumes from)."""
    for kind in ("producers", "params", "consumers"):
        for group in analysis.groups:
            if any(m.use.node == node_name for m in getattr(group, kind)):
                return group
    raise AssertionError(f"no group touches {node_name}")


def assert_frozen_groups_kept(analysis, pruned: onnx.ModelProto) -> None:
    """Invariant 4: every weight axis indexed only by frozen groups keeps its size.

    `analysis` is `analyze(original)`; nodes are matched by name, inputs by position.
    """
    atoms = analysis.channels.atoms
    frozen_roots = {group.root for group in analysis.groups if group.frozen}
    nodes = {node.name: node for node in analysis.model.graph.node}
    for use in analysis.channels.context.uses:
        if set(atoms.classes_in(use.layout)) <= frozen_roots:
            index = list(nodes[use.node].input).index(use.tensor)
            dims = weight_dims(pruned, use.node, index)
            assert dims[use.axis] == use.axis_length(atoms), (use.node, use.tensor, use.axis)
