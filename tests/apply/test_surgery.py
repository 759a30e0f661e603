"""Surgery: a plan sliced into producers, parameters and consumers; shapes refreshed; copies merged."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import assert_valid, group_with
from graphs import conv_chain
from onnx import numpy_helper

from onnx_slim.apply.surgery import apply_plan, deduplicate_initializers, refresh_shapes
from onnx_slim.channels.analysis import analyze


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def test_plan_slices_exactly_the_removed_channels():
    model = conv_chain((6, 5))
    analysis = analyze(model)
    before = _weights(analysis.model)
    plan = {group_with(analysis, "conv1").root: [1, 4], group_with(analysis, "conv2").root: [0]}
    apply_plan(analysis.model, analysis.channels, plan)
    after = _weights(analysis.model)
    np.testing.assert_array_equal(after["conv1_w"], before["conv1_w"][[0, 2, 3, 5]])
    np.testing.assert_array_equal(after["conv1_b"], before["conv1_b"][[0, 2, 3, 5]])
    np.testing.assert_array_equal(after["conv2_w"], before["conv2_w"][1:][:, [0, 2, 3, 5]])
    np.testing.assert_array_equal(after["conv_out_w"], before["conv_out_w"][:, 1:])
    refresh_shapes(analysis.model)
    assert_valid(analysis.model, model)


def test_empty_plan_changes_nothing():
    model = conv_chain((6,))
    analysis = analyze(model)
    before = analysis.model.SerializeToString()
    apply_plan(analysis.model, analysis.channels, {})
    assert analysis.model.SerializeToString() == before


def test_refreshed_shapes_describe_the_pruned_tensors():
    model = conv_chain((6,))
    analysis = analyze(model)
    apply_plan(analysis.model, analysis.channels, {group_with(analysis, "conv1").root: [0, 1, 2]})
    refresh_shapes(analysis.model)
    declared = {value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
                for value in analysis.model.graph.value_info}
    conv1 = next(node for node in analysis.model.graph.node if node.name == "conv1")
    assert declared[conv1.output[0]] == [1, 3, 8, 8]


def test_identical_initializers_are_merged_and_readers_repointed():
    model = conv_chain((4,))
    graph = model.graph
    copy = onnx.TensorProto()
    copy.CopyFrom(next(init for init in graph.initializer if init.name == "conv1_b"))
    copy.name = "conv1_b_copy"
    graph.initializer.append(copy)
    conv1 = next(node for node in graph.node if node.name == "conv1")
    conv1.input[2] = "conv1_b_copy"
    assert deduplicate_initializers(model) == 1
    names = [init.name for init in graph.initializer]
    assert names.count("conv1_b") + names.count("conv1_b_copy") == 1
    assert conv1.input[2] in names
