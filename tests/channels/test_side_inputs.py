"""A computed tensor that spans a group's channel axis without being derived from pruned channels
(a second model input, a bias computed from shapes) is sliced where it is read, not frozen."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import group_with, run
from graphs import Graph

from onnx_slim.apply.surgery import apply_plan, refresh_shapes
from onnx_slim.channels.analysis import analyze
from onnx_slim.data.masking import MaskedModel
from onnx_slim.pipeline.prune import prune


def conditioned_cnn() -> onnx.ModelProto:
    """x -> conv1 (+ a second input `cond` [N, 6, 8, 8]) -> relu -> conv2 -> y."""
    g = Graph(seed=2)
    x = g.input("x", ["N", 3, 8, 8])
    cond = g.input("cond", ["N", 6, 8, 8])
    h = g.relu(g.add(g.conv(x, 6, name="conv1"), cond, name="conditioned"), name="relu1")
    return g.build(g.conv(h, 2, name="conv2"))


def test_a_second_input_added_to_a_group_is_gathered_and_pruning_stays_exact():
    analysis = analyze(conditioned_cnn())
    group = group_with(analysis.channels, "conv1")
    assert group.prunable, [str(reason) for reason in group.frozen]
    plan = {group.root: [0, 4]}
    masked = MaskedModel(analysis, [group])
    apply_plan(analysis.model, analysis.channels, plan)
    refresh_shapes(analysis.model)
    onnx.checker.check_model(analysis.model, full_check=True)
    gather = next(node for node in analysis.model.graph.node if node.op_type == "Gather")
    assert gather.input[0] == "cond" and [a.i for a in gather.attribute if a.name == "axis"] == [1]
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        feeds = {"x": rng.standard_normal((batch, 3, 8, 8)).astype(np.float32),
                 "cond": rng.standard_normal((batch, 6, 8, 8)).astype(np.float32)}
        np.testing.assert_allclose(run(analysis.model, feeds)["conv2"], masked.run(feeds, plan)["conv2"],
                                   rtol=1e-5, atol=1e-5)


def test_a_side_input_sized_by_the_pruned_channels_still_freezes():
    """ConstantOfShape(Shape(h)) spans h's channels but shrinks with them: indices into it would
    be wrong after pruning, so the group stays whole, with the reason."""
    g = Graph(seed=2)
    x = g.input("x", ["N", 3, 8, 8])
    h = g.conv(x, 6, name="conv1")
    ones = g.node("ConstantOfShape", [g.node("Shape", [h], "h_shape")], "ones",
                  value=onnx.helper.make_tensor("one", onnx.TensorProto.FLOAT, [1], [1.0]))
    analysis = analyze(g.build(g.conv(g.add(h, ones, name="plus_ones"), 2, name="conv2")))
    group = group_with(analysis.channels, "conv1")
    assert not group.prunable
    assert any(reason.node == "ones" and "channel count through Shape" in reason.reason for reason in group.frozen), \
        [str(reason) for reason in group.frozen]


def test_a_side_input_resized_to_the_pruned_tensors_shape_freezes():
    """Resize(constant, sizes=Shape(h)) takes h's channel count at run time: after pruning its
    channels would no longer match the kept indices a Gather takes of it, so the group stays whole."""
    g = Graph(seed=0)
    h = g.relu(g.conv(g.input("x", ["N", 3, "H", "W"]), 8, name="conv1"))
    empty = g.const("empty", np.zeros(0, np.float32))
    resized = g.node("Resize", [g.weight("pos", [1, 8, 4, 4]), empty, empty, g.node("Shape", [h], "shape_h")],
                     "resize_pos", mode="nearest")
    model = g.build(g.conv(g.add(h, resized, name="plus_pos"), 4, name="conv2"))
    group = group_with(analyze(model).channels, "conv1")
    assert not group.prunable
    pruned, _ = prune(model, ratio=0.5, criterion="l1")  # nothing to remove, and it still runs
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    assert run(pruned, feeds)["conv2"].shape == (2, 4, 8, 8)
