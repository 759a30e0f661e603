"""The masked model: one session whose channel masks reproduce any pruned model."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper
from graphs import Graph

from onnx_slim.apply.surgery import apply_plan, refresh_shapes
from onnx_slim.channels.analysis import analyze
from onnx_slim.data.activations import ActivationCapture
from onnx_slim.data.masking import MaskedModel
from onnx_slim.ir.inputs import random_inputs
from onnx_slim.ir.runtime import create_session, run_session

MODELS = Path(__file__).resolve().parents[2] / "models"


def pruned_outputs(analysis, plan, feeds):
    """What `prune` would produce for `plan`: surgery on a copy of the analyzed model."""
    model = copy.deepcopy(analysis.model)
    apply_plan(model, analysis.channels, plan)
    refresh_shapes(model)
    return run_session(create_session(model), feeds)


def random_plan(groups, fraction, seed=0):
    rng = np.random.default_rng(seed)
    return {
        group.root: sorted(rng.choice(group.channels, size=max(1, int(group.channels * fraction)), replace=False).tolist())
        for group in groups
    }


def batch_feeds(analysis, batch=2, seed=1):
    shapes = {name: (batch, *shape[1:]) for name, shape in analysis.input_shapes.items()}
    return random_inputs(analysis.model, shapes=shapes, seed=seed)


def assert_close(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("name", [
    "resnet_torchscript", "densenet_torchscript", "yolov8_dynamo", "digits_cnn",
    "mobilenetv3_torchscript", "transformer_dynamo",
])
def test_masked_run_equals_pruned_model(name):
    # Residual groups, Concat offsets (DenseNet), a tensor concatenated with itself
    # (YOLO's C2f), depthwise + SE (MobileNet), LayerNorm groups (transformer).
    analysis = analyze(MODELS / f"{name}.onnx")
    groups = analysis.channels.prunable_groups()
    masked = MaskedModel(analysis, groups)
    feeds = batch_feeds(analysis)
    plan = random_plan(groups, 0.5)
    reference = run_session(create_session(analysis.model), feeds)
    assert_close(masked.run(feeds, {}), reference)
    assert_close(masked.run(feeds, plan), pruned_outputs(analysis, plan, feeds))
    # The plan really changes the outputs: the comparison above is not vacuous.
    assert any(not np.allclose(masked.run(feeds, plan)[k], reference[k], atol=1e-3) for k in reference)


def test_each_group_alone_matches_surgery_on_the_transformer():
    # The residual stream of the dynamo transformer passes through LayerNormalization:
    # its statistics must cover the kept channels only, as in the pruned model.
    analysis = analyze(MODELS / "transformer_dynamo.onnx", prune_layernorm=True)
    groups = analysis.channels.prunable_groups()
    assert any(m.use.op_type == "LayerNormalization" for g in groups for m in g.params)
    masked = MaskedModel(analysis, groups)
    feeds = batch_feeds(analysis)
    for group in groups:
        plan = {group.root: list(range(0, group.channels, 3))}
        assert_close(masked.run(feeds, plan), pruned_outputs(analysis, plan, feeds))


def layer_norm_mlp():
    g = Graph(seed=3)
    x = g.input("x", [2, 5, 8])
    hidden = g.layer_norm(g.add_bias(g.matmul(x, 16, name="fc1")), name="ln")
    return g.build(g.matmul(hidden, 4, name="fc2"))


def test_layer_norm_inside_a_group_is_rewritten_with_masked_statistics():
    analysis = analyze(layer_norm_mlp(), prune_layernorm=True)
    (group,) = analysis.channels.prunable_groups()
    masked = MaskedModel(analysis, [group])
    assert "LayerNormalization" not in {node.op_type for node in masked.model.graph.node}
    feeds = batch_feeds(analysis)
    plan = {group.root: [0, 3, 4, 9, 15]}
    assert_close(masked.run(feeds, plan), pruned_outputs(analysis, plan, feeds))


def concat_flatten_model():
    """Two convs concatenated, then Flatten -> Gemm: one consumer input holds two groups, repeated."""
    g = Graph(seed=1)
    x = g.input("x", [1, 3, 4, 4])
    a = g.relu(g.conv(x, 3, name="conv_a"))
    b = g.relu(g.conv(x, 5, name="conv_b"))
    both = g.concat([a, b])
    return g.build(g.gemm(g.flatten(both), 2, name="fc"))


def test_feeds_follow_the_layout_of_concat_and_flatten():
    analysis = analyze(concat_flatten_model())
    groups = analysis.channels.prunable_groups()
    by_producer = {group.producers[0].use.node: group for group in groups}
    group_a, group_b = by_producer["conv_a"], by_producer["conv_b"]
    masked = MaskedModel(analysis, [group_a, group_b])
    (slot,) = masked.slots
    assert slot.shape() == [1, 8 * 16] and slot.consumers == ("fc",)
    mask = masked.feeds_for({group_a.root: [1], group_b.root: [0, 4]})[slot.input_name].reshape(-1)
    zeroed = set(np.flatnonzero(mask == 0).tolist())
    # Channel c of the concatenation covers features c*16 .. c*16+15 of the Gemm input.
    expected = {feature for channel in (1, 3, 7) for feature in range(channel * 16, (channel + 1) * 16)}
    assert zeroed == expected
    feeds = batch_feeds(analysis, batch=1)
    plan = {group_a.root: [1], group_b.root: [0, 4]}
    assert_close(masked.run(feeds, plan), pruned_outputs(analysis, plan, feeds))


def test_empty_plan_gives_all_ones_and_unknown_groups_are_refused():
    analysis = analyze(concat_flatten_model())
    groups = analysis.channels.prunable_groups()
    masked = MaskedModel(analysis, groups[:1])
    assert all(np.all(mask == 1) for mask in masked.feeds_for({}).values())
    with pytest.raises(ValueError, match="does not mask"):
        masked.feeds_for({groups[1].root: [0]})


def test_the_analyzed_model_is_not_modified():
    analysis = analyze(MODELS / "digits_cnn.onnx")
    before = analysis.model.SerializeToString()
    MaskedModel(analysis, analysis.channels.prunable_groups())
    assert analysis.model.SerializeToString() == before


def relu_pair():
    g = Graph(seed=5)
    x = g.input("x", [4, 3, 6, 6])
    hidden = g.relu(g.conv(x, 8, kernel=1, name="conv1"))
    return g.build(g.conv(hidden, 5, kernel=1, name="conv2")), hidden


def test_mean_fill_reads_a_removed_channel_as_its_mean_on_the_fill_batches():
    """With fill_from, conv2 sees each removed channel as its calibration mean: the pruned layer
    with the removed channels' mean contribution in its bias (the re-fit's cheapest fix)."""
    model, hidden = relu_pair()
    analysis = analyze(model)
    (group,) = analysis.channels.prunable_groups()
    feeds = batch_feeds(analysis, batch=4)
    masked = MaskedModel(analysis, [group], fill_from=[feeds])
    plan = {group.root: [1, 6]}

    capture = ActivationCapture(analysis.model, [hidden]).run(feeds)
    h = capture[hidden].copy()
    h[:, [1, 6]] = h[:, [1, 6]].mean(axis=(0, 2, 3), keepdims=True)
    conv2 = next(node for node in analysis.model.graph.node if node.name == "conv2")
    weights = {init.name: numpy_helper.to_array(init) for init in analysis.model.graph.initializer}
    w, b = weights[conv2.input[1]][:, :, 0, 0], weights[conv2.input[2]]
    expected = np.einsum("oc,nchw->nohw", w, h) + b[None, :, None, None]

    (output,) = masked.run(feeds, plan).values()
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-4)
    assert_close(masked.run(feeds, {}), run_session(create_session(analysis.model), feeds))
    zeroed = MaskedModel(analysis, [group]).run(feeds, plan)
    assert not np.allclose(next(iter(zeroed.values())), expected, atol=1e-3)  # zeroing is another model
