"""Grouped convolutions (1 < group < channels): every conv group loses the same channels.

Input block g of a grouped Conv feeds only output block g, and the weight's input
axis holds one block. With `group` unchanged, each group must keep as many
channels as the others, so the analysis ties the G input blocks channel by channel
(one group channel is one channel of each block) and makes the output G tied atoms.
With `whole_conv_groups`, one group channel is a whole conv group instead (its inputs
and filters), and `group` counts the kept groups.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import assert_frozen_groups_kept, assert_lossless, assert_valid, group_with, run, weight_dims
from graphs import Graph
from onnx import numpy_helper

from onnx_slim.apply.surgery import apply_plan, refresh_shapes
from onnx_slim.channels.analysis import analyze
from onnx_slim.criteria import ScoringContext, score_groups
from onnx_slim.data.calibration import CalibrationSet
from onnx_slim.data.masking import MaskedModel
from onnx_slim.pipeline.prune import prune


def group_attribute(model: onnx.ModelProto, node_name: str) -> int:
    node = next(n for n in model.graph.node if n.name == node_name)
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "group")


def between_dense_convs(groups: int = 4, batch="N") -> onnx.ModelProto:
    """x -> dense(16) -> relu -> grouped(12, group) -> relu -> dense(5) -> y."""
    g = Graph(seed=3)
    h = g.relu(g.conv(g.input("x", [batch, 3, 8, 8]), 16, name="dense_in"))
    h = g.relu(g.conv(h, 12, group=groups, name="grouped"))
    return g.build(g.conv(h, 5, name="dense_out"))


def resnext_block(g: Graph, h: str, width: int, groups: int, name: str) -> str:
    """1x1 -> BN -> relu -> grouped 3x3 -> BN -> relu -> 1x1 -> BN, + the block's input, relu."""
    channels = g.channels(h)
    branch = g.relu(g.bn(g.conv(h, width, kernel=1, name=f"{name}_conv1")))
    branch = g.relu(g.bn(g.conv(branch, width, group=groups, name=f"{name}_conv2")))
    branch = g.bn(g.conv(branch, channels, kernel=1, name=f"{name}_conv3"))
    return g.relu(g.add(h, branch))


def regnet_block(g: Graph, h: str, width: int, groups: int, name: str) -> str:
    """RegNetY: 1x1 -> relu -> grouped 3x3 -> relu -> SE -> 1x1, + the block's input, relu."""
    channels = g.channels(h)
    branch = g.relu(g.conv(h, width, kernel=1, name=f"{name}_conv1"))
    branch = g.relu(g.conv(branch, width, group=groups, name=f"{name}_conv2"))
    branch = g.se_block(branch, 4, name=f"{name}_se")
    branch = g.conv(branch, channels, kernel=1, name=f"{name}_conv3")
    return g.relu(g.add(h, branch))


def network(block, blocks: int = 2) -> onnx.ModelProto:
    g = Graph(seed=5)
    h = g.relu(g.conv(g.input("x", ["N", 3, 8, 8]), 16, name="stem"))
    for index in range(blocks):
        h = block(g, h, 16, 4, f"b{index}")
    return g.build(g.head(h))


# -- the grouped conv between two dense convs -----------------------------------------------------


def test_grouped_conv_ties_its_input_and_output_blocks():
    analysis = analyze(between_dense_convs())
    into, out = group_with(analysis.channels, "dense_in"), group_with(analysis.channels, "grouped")
    assert (into.channels, into.blocks, into.prunable) == (4, 4, True)  # 16 inputs = 4 groups of 4
    assert (out.channels, out.blocks, out.prunable) == (3, 4, True)  # 12 filters = 4 groups of 3
    assert sorted(m.offset for m in into.producers if m.use.tensor == "dense_in_w") == [0, 4, 8, 12]
    assert sorted(m.offset for m in into.consumers) == [0, 4, 8, 12]


def test_grouped_conv_loses_the_same_channels_in_every_group_and_keeps_group():
    model = between_dense_convs()
    analysis = analyze(model)
    into = group_with(analysis.channels, "dense_in")
    pruned, _ = prune(model, ratio=0.5)
    assert weight_dims(pruned, "dense_in") == (8, 3, 3, 3)
    assert weight_dims(pruned, "grouped") == (8, 2, 3, 3)  # 12 -> 8 filters, 4 -> 2 inputs per group
    assert weight_dims(pruned, "dense_out") == (5, 8, 3, 3)
    assert group_attribute(pruned, "grouped") == 4
    assert_valid(pruned, model)
    # The kept filters of dense_in are the same two channels in each of the 4 blocks.
    kept = [int(i) for i in np.nonzero(np.isin(
        numpy_helper.to_array(next(i for i in analysis.model.graph.initializer if i.name == "dense_in_w")),
        numpy_helper.to_array(next(i for i in pruned.graph.initializer if i.name == "dense_in_w")),
    ).all(axis=(1, 2, 3)))[0]]
    assert len(kept) == 8 and len({k % 4 for k in kept}) == 2 and sorted({k // 4 for k in kept}) == [0, 1, 2, 3]
    assert len(into.consumers) == 4


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_conv_is_lossless(groups):
    pruned = assert_lossless(between_dense_convs(groups), 0.5)
    assert group_attribute(pruned, "grouped") == groups


# -- ResNeXt and RegNet blocks -------------------------------------------------------------------


@pytest.mark.parametrize("block", [resnext_block, regnet_block], ids=["resnext", "regnet"])
def test_blocks_with_grouped_convs_prune_every_group(block):
    model = network(block)
    analysis = analyze(model)
    assert [g.id for g in analysis.groups if not g.prunable] == [analysis.groups[-1].id]  # only the logits
    pruned = assert_lossless(model, 0.5)
    for index in range(2):
        assert weight_dims(pruned, f"b{index}_conv2") == (8, 2, 3, 3)
        assert group_attribute(pruned, f"b{index}_conv2") == 4


def test_regnet_squeeze_excite_gate_joins_the_grouped_conv_output():
    analysis = analyze(network(regnet_block, blocks=1))
    out = group_with(analysis.channels, "b0_conv2")
    assert {m.use.node for m in out.producers} == {"b0_conv2", "b0_se_conv2"}
    assert out.blocks == 4 and out.channels == 4


def test_grouped_convs_tied_through_a_residual_and_a_concat():
    # gc3's three input blocks are stem[0:8], stem[8:16] and gc2's output, so one channel
    # of the joint group is 4 stem filters (gc1's groups) and 2 of gc2 (its own groups).
    g = Graph(seed=7)
    h = g.relu(g.conv(g.input("x", ["N", 3, 8, 8]), 16, name="stem"))
    h = g.relu(g.add(h, g.conv(h, 16, group=4, name="gc1")))
    h = g.concat([g.relu(g.depthwise(h, name="dw")), g.relu(g.conv(h, 8, group=2, name="gc2"))])
    model = g.build(g.head(g.relu(g.conv(h, 12, group=3, name="gc3"))))
    joint = group_with(analyze(model).channels, "stem")
    assert {m.use.node for m in joint.producers} == {"stem", "gc1", "dw", "gc2"}
    assert (joint.channels, joint.blocks) == (4, 2)
    pruned = assert_lossless(model, 0.5)
    assert [weight_dims(pruned, n)[:2] for n in ("stem", "gc1", "gc2", "gc3")] == [(8, 3), (8, 2), (4, 4), (6, 4)]
    rounded, _ = prune(model, ratio=0.5, round_to=4)
    assert weight_dims(rounded, "gc2")[0] % 4 == 0 and weight_dims(rounded, "stem")[0] % 4 == 0
    assert_valid(rounded, model)


# -- what stays frozen -------------------------------------------------------------------------------


def test_a_frozen_input_keeps_the_grouped_weight_whole():
    # dense_in's output is also a model output: its group, and so the grouped conv's
    # per-group input axis, must stay as they are while the grouped conv's filters go.
    g = Graph(seed=3)
    h = g.relu(g.conv(g.input("x", [1, 3, 8, 8]), 16, name="dense_in"))
    out = g.conv(g.relu(g.conv(h, 12, group=4, name="grouped")), 5, name="dense_out")
    model = g.build(out, h)
    analysis = analyze(model)
    assert not group_with(analysis.channels, "dense_in").prunable
    pruned, _ = prune(model, ratio=0.5)
    assert weight_dims(pruned, "grouped") == (8, 4, 3, 3)
    assert_frozen_groups_kept(analysis, pruned)
    assert_valid(pruned, model)


def test_input_groups_that_cut_a_depthwise_multiplier_run_freeze():
    # A depthwise conv with multiplier 2 makes 6 channels into 12; group=4 gives blocks of 3
    # indices, and index 3 lies inside channel 1's pair: no whole channels per group.
    g = Graph()
    h = g.relu(g.conv(g.input("x", [1, 3, 8, 8]), 6, name="dense_in"))
    h = g.relu(g.depthwise(h, 2, name="dw"))
    model = g.build(g.conv(g.relu(g.conv(h, 8, group=4, name="grouped")), 2, name="dense_out"))
    analysis = analyze(model)
    frozen = group_with(analysis.channels, "dense_in")
    assert not frozen.prunable
    assert any(r.node == "grouped" and "not whole channels" in r.reason for r in frozen.frozen)
    assert group_with(analysis.channels, "grouped").prunable  # its output still prunes
    pruned, _ = prune(model, ratio=0.5)
    assert weight_dims(pruned, "dw") == (12, 1, 3, 3)
    assert weight_dims(pruned, "grouped") == (4, 3, 3, 3)
    assert_valid(pruned, model)


def test_input_groups_of_different_structure_freeze():
    # Block 0 is 4 plain channels, block 1 two channels of a depthwise multiplier 2.
    g = Graph()
    x = g.input("x", [1, 3, 8, 8])
    plain = g.relu(g.conv(x, 4, name="plain"))
    doubled = g.depthwise(g.relu(g.conv(x, 2, name="narrow")), 2, name="dw")
    h = g.concat([plain, doubled])
    model = g.build(g.conv(g.relu(g.conv(h, 4, group=2, name="grouped")), 2, name="dense_out"))
    analysis = analyze(model)
    for producer in ("plain", "narrow"):
        group = group_with(analysis.channels, producer)
        assert any(r.node == "grouped" and "cannot be tied" in r.reason for r in group.frozen)
    pruned, _ = prune(model, ratio=0.5)
    assert weight_dims(pruned, "grouped") == (2, 4, 3, 3)
    assert_valid(pruned, model)


# -- data criteria read a grouped consumer -----------------------------------------------------------


def dead_channel_model() -> onnx.ModelProto:
    """Channel 1 of every group of dense_in's output is always 0 after the Relu."""
    model = between_dense_convs()
    for init in model.graph.initializer:
        if init.name in ("dense_in_w", "dense_in_b"):
            value = numpy_helper.to_array(init).copy()
            value[1::4] = 0 if init.name == "dense_in_w" else -1.0
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    return model


@pytest.mark.parametrize("name", ["activation", "thinet", "lasso"])
def test_data_criteria_score_a_dead_channel_of_every_group_lowest(name):
    analysis = analyze(dead_channel_model())
    group = group_with(analysis.channels, "dense_in")
    samples = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    context = ScoringContext(analysis.model, analysis.channels, analysis.normalize_info.bn_scales,
                             calibration=CalibrationSet({"x": samples}))
    scores = score_groups(context, name, [group])[group.id]
    assert len(scores) == 4 and np.argmin(scores) == 1


# -- whole groups (`group` decreases) -------------------------------------------------------------


def _prune_whole_groups(model: onnx.ModelProto, producer: str, removed: list[int]):
    """(pruned model, masked model with the same plan, plan): groups `removed` of the class
    `producer` feeds, analyzed with whole conv groups."""
    analysis = analyze(model, whole_conv_groups=True)
    group = group_with(analysis.channels, producer)
    assert group.prunable, group.frozen
    plan = {group.root: removed}
    masked = MaskedModel(analysis, [group])
    apply_plan(analysis.model, analysis.channels, plan)
    refresh_shapes(analysis.model)
    onnx.checker.check_model(analysis.model, full_check=True)
    return analysis.model, masked, plan


def test_whole_groups_tie_the_inputs_and_filters_of_each_group():
    analysis = analyze(between_dense_convs(), whole_conv_groups=True)
    group = group_with(analysis.channels, "dense_in")
    assert group is group_with(analysis.channels, "grouped")  # input group g feeds output group g
    assert (group.channels, group.blocks, group.prunable) == (4, 1, True)
    repeats = {m.use.node: m.repeat for m in group.producers}
    assert repeats == {"dense_in": 4, "grouped": 3}  # a group's 4 inputs and 3 filters
    assert not any(m.use.node == "grouped" for m in group.consumers)  # the weight's input axis stays whole


def test_removing_whole_groups_decreases_group_and_equals_the_masked_original():
    model = between_dense_convs()
    pruned, masked, plan = _prune_whole_groups(model, "dense_in", [1, 2])
    assert weight_dims(pruned, "dense_in") == (8, 3, 3, 3)  # groups 0 and 3: inputs 0-3 and 12-15
    assert weight_dims(pruned, "grouped") == (6, 4, 3, 3)  # 2 groups of 3 filters, 4 inputs each
    assert weight_dims(pruned, "dense_out") == (5, 6, 3, 3)
    assert group_attribute(pruned, "grouped") == 2
    original = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    kept = {i.name: numpy_helper.to_array(i) for i in pruned.graph.initializer}
    np.testing.assert_array_equal(kept["dense_in_w"], original["dense_in_w"][[0, 1, 2, 3, 12, 13, 14, 15]])
    np.testing.assert_array_equal(kept["grouped_w"], original["grouped_w"][[0, 1, 2, 9, 10, 11]])
    for batch in (1, 3):
        feeds = {"x": np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)}
        (actual,) = run(pruned, feeds).values()
        (expected,) = masked.run(feeds, plan).values()
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block", [resnext_block, regnet_block], ids=["resnext", "regnet"])
def test_blocks_lose_whole_groups(block):
    model = network(block)
    pruned, masked, plan = _prune_whole_groups(model, "b0_conv1", [3])
    assert weight_dims(pruned, "b0_conv1")[0] == 12
    assert weight_dims(pruned, "b0_conv2") == (12, 4, 3, 3) and group_attribute(pruned, "b0_conv2") == 3
    assert weight_dims(pruned, "b1_conv2") == (16, 4, 3, 3) and group_attribute(pruned, "b1_conv2") == 4
    if block is regnet_block:  # the gate's filters follow the whole groups they scale
        assert weight_dims(pruned, "b0_se_conv2")[0] == 12
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    (actual,) = run(pruned, feeds).values()
    (expected,) = masked.run(feeds, plan).values()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_a_grouped_conv_on_an_untracked_input_keeps_its_groups_and_loses_channels_in_each():
    g = Graph(seed=3)
    h = g.relu(g.conv(g.input("x", ["N", 8, 8, 8]), 12, group=4, name="grouped"))
    model = g.build(g.conv(h, 5, name="dense_out"))
    group = group_with(analyze(model, whole_conv_groups=True).channels, "grouped")
    assert (group.channels, group.blocks, group.prunable) == (3, 4, True)


def test_prune_grouped_conv_groups_on_the_command_line_lowers_the_group_count(tmp_path, capsys):
    from test_cli import run_cli

    source, output = tmp_path / "net.onnx", tmp_path / "slim.onnx"
    onnx.save(between_dense_convs(), str(source))

    code, stdout, _ = run_cli(capsys, "prune", source, "-o", output, "--ratio", "0.5", "--round-to", "1",
                              "--grouped-conv", "groups", "--quiet")

    assert code == 0, stdout
    assert group_attribute(onnx.load(str(output)), "grouped") == 2  # 4 groups of 3 channels -> 2 whole groups
    code, stdout, _ = run_cli(capsys, "inspect", source, "--grouped-conv", "groups", "--json")
    assert code == 0 and json.loads(stdout)["groups_prunable"] >= 1
