"""A channel count read through Shape must never reach a tensor that does not shrink with its group.

Each graph reads the count of a prunable group and sends it somewhere a rule does not check: the
group must freeze, naming the node. (Found by a review of the size-carrier rules; before the fixes
each of these pruned and changed the model's outputs or broke it at other input sizes.)
"""

from __future__ import annotations

import numpy as np
import onnx
from conftest import group_with
from graphs import Graph
from onnx import TensorProto, helper

from onnx_slim.channels.analysis import analyze

WIDTH = 32


def _width_read_at_run_time(g: Graph, x: str) -> str:
    """k = Linear(x) viewed as [B, S, -1]: static inference loses the width, so Shape reads it at run time."""
    k = g.node("MatMul", [x, g.weight("k_w", (WIDTH, WIDTH))], "k")
    batch = g.node("Slice", [g.node("Shape", [x], "x_shape"), g.ints("from0", [0]), g.ints("to2", [2])], "bs")
    return g.node("Reshape", [k, g.concat([batch, g.ints("minus_one", [-1])], axis=0, name="k_view_shape")], "k_view")


def _sequence_model(g: Graph, x: str, k: str, extra: str, extra_shape) -> onnx.ModelProto:
    out = g.node("Add", [g.node("MatMul", [k, g.weight("out_w", (WIDTH, WIDTH))], "out"), x], "residual")
    outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", "sequence", WIDTH]),
               helper.make_tensor_value_info(extra, TensorProto.FLOAT, extra_shape)]
    model = g._model(outputs)
    onnx.checker.check_model(model, full_check=True)
    return model


def _frozen_by(model: onnx.ModelProto, producer: str) -> list[str]:
    group = group_with(analyze(model).channels, producer)
    assert not group.prunable
    return [f"{reason.node}: {reason.reason}" for reason in group.frozen]


def _scalar_count(g: Graph, k: str, index: int) -> str:
    return g.node("Gather", [g.node("Shape", [k], "k_shape_of"), g.ints("count_index", index)], "count", axis=0)


def test_a_count_compared_with_several_values_freezes():
    """Equal(count, [-1, 32]) broadcasts the count against every entry, not only the first."""
    g = Graph(seed=1)
    x = g.input("x", ["batch", "sequence", WIDTH])
    k = _width_read_at_run_time(g, x)
    flags = g.node("Cast", [g.node("Equal", [_scalar_count(g, k, 2), g.ints("compared", [-1, WIDTH])], "eq")],
                   "flags", to=TensorProto.FLOAT)
    assert any(reason.startswith("eq: reads the channel count") for reason in
               _frozen_by(_sequence_model(g, x, k, flags, [2]), "k"))


def test_a_count_read_inside_a_subgraph_freezes():
    g = Graph(seed=1)
    x = g.input("x", ["batch", "sequence", WIDTH])
    k = _width_read_at_run_time(g, x)
    count = _scalar_count(g, k, 2)
    cast = helper.make_node("Cast", [count], ["as_float"], name="cast", to=TensorProto.FLOAT)
    then_branch = helper.make_graph([cast], "then", [], [helper.make_tensor_value_info("as_float", TensorProto.FLOAT, [])])
    zero = helper.make_node("Constant", [], ["zero"], name="zero", value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0]))
    else_branch = helper.make_graph([zero], "else", [], [helper.make_tensor_value_info("zero", TensorProto.FLOAT, [])])
    condition = g.node("Greater", [g.node("Gather", [g.node("Shape", [x]), g.ints("seq_index", 1)], axis=0),
                                   g.ints("none", 0)], "has_tokens")
    width = g.node("If", [condition], "if_width", then_branch=then_branch, else_branch=else_branch)
    model = _sequence_model(g, x, k, g.node("Identity", [width], "width"), [])
    assert any(reason.startswith("if_width: its channel count is read inside a subgraph")
               for reason in _frozen_by(model, "k"))


def test_a_count_gathered_with_a_negative_index_freezes():
    g = Graph(seed=1)
    x = g.input("x", ["batch", "sequence", WIDTH])
    k = _width_read_at_run_time(g, x)
    width = g.node("Cast", [_scalar_count(g, k, -1)], "width", to=TensorProto.FLOAT)
    assert any("holds the channel count" in reason for reason in _frozen_by(_sequence_model(g, x, k, width, []), "k"))


def test_a_count_in_the_target_of_another_groups_reshape_freezes():
    """conv_y's [N, C] read back into the view of conv_x's output (through a 1-D Reshape the
    Reshape rule cannot read): after pruning conv_y it would change conv_x's view."""
    g = Graph(seed=1)
    x = g.input("x", ["N", 3, 8, 8])
    y = g.relu(g.conv(x, 8, name="conv_y"))
    leading = g.node("Slice", [g.node("Shape", [y]), g.ints("from0", [0]), g.ints("to2", [2])])
    target = g.node("Reshape", [g.concat([leading, g.ints("rest", [-1])], axis=0), g.ints("flat", [-1])], "target")
    viewed = g.node("Reshape", [g.conv(x, 8, name="conv_x"), target], "view")
    model = g.build(g.conv(y, 4, name="conv_out"), g.node("ReduceSum", [viewed, g.ints("axes", [2])], keepdims=0))
    assert any(reason.startswith("view: reads the channel count") for reason in _frozen_by(model, "conv_y"))


def test_a_one_channel_tensor_expanded_to_a_groups_shape_freezes_the_group():
    """CBAM-style attn.expand_as(y), summed over the channels: the sum would cover the kept channels only."""
    g = Graph(seed=1)
    x = g.input("x", ["N", 3, 8, 8])
    y = g.relu(g.conv(x, 8, name="conv_y"))
    attention = g.node("Sigmoid", [g.conv(x, 1, name="conv_a")])
    expanded = g.node("Expand", [attention, g.node("Shape", [y])], "expand_as")
    model = g.build(g.conv(y, 4, name="conv_out"), g.node("ReduceSum", [expanded, g.ints("axes", [1])]))
    assert any(reason.startswith("expand_as: reads the channel count") for reason in _frozen_by(model, "conv_y"))


def test_channels_tiled_by_the_sequence_length_freeze():
    """Tile [1, C] by S copies: the copies counted at the analysis length would be wrong at another."""
    g = Graph(seed=3)
    x = g.input("x", ["N", "S", 16])
    sequence = g.node("Unsqueeze", [g.node("Gather", [g.node("Shape", [x]), g.ints("seq_index", 1)], axis=0),
                                    g.ints("axes0", [0])])
    projected = g.relu(g.node("MatMul", [g.const("token", np.ones((1, 16), np.float32)), g.weight("proj_w", (16, 8))],
                              "proj"))
    tiled = g.node("Tile", [projected, g.concat([g.ints("once", [1]), sequence], axis=0)], "tile")  # [1, S*8]
    rows = g.node("Reshape", [tiled, g.ints("per_token", [1, -1, 8])], "untile")  # [1, S, 8]
    out = g.node("MatMul", [rows, g.weight("out_w", (8, 4))], "out")
    model = g._model([helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, "S", 4])])
    assert any(reason.startswith("tile: tiles the channel axis by a count computed at run time")
               for reason in _frozen_by(model, "proj"))
