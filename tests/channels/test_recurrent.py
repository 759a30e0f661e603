"""Recurrent layers (LSTM, GRU, RNN) as CRNN text readers use them: a conv backbone's channels,
folded with the height into features, feed the recurrent layer, which consumes them through W;
its hidden units are a group of their own (W's and R's rows per gate, R's columns, the biases,
the states), read by the head."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import assert_lossless, assert_valid, group_with, weight_dims
from graphs import Graph

from onnx_slim.channels.analysis import analyze
from onnx_slim.ops.cost import model_cost
from onnx_slim.ops.specs import RECURRENCE_PART
from onnx_slim.pipeline.prune import prune

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
HIDDEN, CHANNELS, HEIGHT, WIDTH = 6, 8, 2, 5


def crnn(op_type: str = "LSTM", directions: int = 2, state_from_backbone: bool = False):
    """x [1,1,2,5] -> conv(8) -> relu -> reshape [1, 16, 5] -> transpose to [5, 1, 16] ->
    bidirectional recurrent layer -> reshape -> MatMul head. (onnxruntime runs only layout 0.)"""
    g = Graph(opset=17)
    h = g.relu(g.conv(g.input("x", [1, 1, HEIGHT, WIDTH]), CHANNELS, name="conv1"))
    features = g.reshape(h, [1, CHANNELS * HEIGHT, WIDTH])
    sequence = g.node("Transpose", [features], "to_sequence", perm=[2, 0, 1])
    gates = GATES[op_type] * HIDDEN
    inputs = [sequence, g.weight("W", [directions, gates, CHANNELS * HEIGHT]),
              g.weight("R", [directions, gates, HIDDEN]),
              g.weight("B", [directions, 2 * gates], scale=0.1)]
    if state_from_backbone:  # initial_h read from the backbone: [directions, N, hidden]
        state = g.reshape(g.gap(g.conv(h, HIDDEN, name="state_conv")), [1, 1, HIDDEN])
        inputs += ["", state]
        if directions == 2:
            inputs[-1] = g.node("Concat", [inputs[-1], inputs[-1]], "state2", axis=0)
    outputs = g.node(op_type, inputs, "rnn", outputs=2, hidden_size=HIDDEN,
                     direction="bidirectional" if directions == 2 else "forward")
    y = g.reshape(outputs[0], [WIDTH, directions * HIDDEN])  # Y: [T, dirs, 1, H]
    return g.build(g.matmul(y, 3, name="head"))


@pytest.mark.parametrize("op_type", GATES)
def test_recurrent_layer_consumes_the_backbone_channels(op_type):
    model = crnn(op_type)
    group = group_with(analyze(model), "conv1")
    assert group.prunable, [str(reason) for reason in group.frozen]
    assert {member.use.node for member in group.consumers} == {"rnn"}
    pruned, report = prune(model, ratio=0.5, exclude=["head"])  # the hidden units (read by head) stay
    assert weight_dims(pruned, "conv1") == (CHANNELS // 2, 1, 3, 3)
    # W's feature axis: each kept channel is HEIGHT features; R and B keep the hidden size.
    gates = GATES[op_type] * HIDDEN
    assert weight_dims(pruned, "rnn", 1) == (2, gates, CHANNELS // 2 * HEIGHT)
    assert weight_dims(pruned, "rnn", 2) == (2, gates, HIDDEN)
    assert_valid(pruned, model)


@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("op_type", GATES)
def test_hidden_units_are_removed_from_every_gate_and_direction(op_type, directions):
    model = crnn(op_type, directions)
    hidden = group_with(analyze(model), "rnn")
    assert hidden.prunable and hidden.channels == HIDDEN, [str(reason) for reason in hidden.frozen]
    assert {member.use.node for member in hidden.consumers} == {"head"}  # reads Y of every direction
    pruned, report = prune(model, ratio=0.5, exclude=["conv1"])
    gates, kept = GATES[op_type], HIDDEN // 2
    assert weight_dims(pruned, "rnn", 1) == (directions, gates * kept, CHANNELS * HEIGHT)
    assert weight_dims(pruned, "rnn", 2) == (directions, gates * kept, kept)
    assert weight_dims(pruned, "rnn", 3) == (directions, 2 * gates * kept)
    assert weight_dims(pruned, "head") == (directions * kept, 3)
    node = next(n for n in pruned.graph.node if n.name == "rnn")
    assert onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == "hidden_size")) == kept
    assert_valid(pruned, model)


@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("op_type", GATES)
def test_removing_zeroed_hidden_units_and_channels_is_lossless(op_type, directions):
    """A unit whose W and R rows and biases are zero stays at 0 from a zero state (LSTM: every gate
    at 0.5, its cell at 0; GRU: the candidate at 0; RNN: tanh(0)), so removing it changes nothing."""
    pruned = assert_lossless(crnn(op_type, directions), 0.5)
    assert weight_dims(pruned, "rnn", 2)[2] == HIDDEN - HIDDEN // 2


def test_masked_hidden_units_equal_the_pruned_layer():
    """The masked model (sensitivity, allocation) masks R's columns too: a removed unit must not
    feed the kept ones through the recurrence. Masked and pruned outputs agree."""
    from onnx_slim.apply.surgery import apply_plan, refresh_shapes
    from onnx_slim.data.masking import MaskedModel

    analysis = analyze(crnn("LSTM"))
    hidden = group_with(analysis, "rnn")
    plan = {hidden.root: [0, 3, 4]}
    masked = MaskedModel(analysis, [hidden])
    x = np.random.default_rng(1).random((1, 1, HEIGHT, WIDTH), dtype=np.float32)
    expected = masked.run({"x": x}, plan)
    unmasked_r = masked.run({"x": x}, {})
    apply_plan(analysis.model, analysis.channels, plan)
    refresh_shapes(analysis.model)
    pruned = run_output(analysis.model, x)
    np.testing.assert_allclose(pruned, next(iter(expected.values())), rtol=1e-5, atol=1e-6)
    assert not np.allclose(pruned, next(iter(unmasked_r.values())), atol=1e-4)  # the mask mattered


@pytest.mark.parametrize("name", ["crnn_torchscript", "crnn_dynamo"])
def test_exported_lstm_hidden_units_prune(name):
    """Both exporters' nn.LSTM: the TorchScript exporter sizes the zero initial states from the
    batch (ConstantOfShape(Concat(2, Shape(x)[1], hidden))), gathered where the layer reads them;
    dynamo writes them as constants. The pruned model keeps the symbolic batch."""
    from pathlib import Path

    model = onnx.load(str(Path(__file__).parent.parent.parent / "models" / f"{name}.onnx"))
    analysis = analyze(model)
    lstms = [node.name for node in analysis.model.graph.node if node.op_type == "LSTM"]
    assert all(group_with(analysis, lstm).prunable for lstm in lstms)
    pruned = assert_lossless(model, 0.5)
    assert {weight_dims(pruned, lstm, 2)[2] for lstm in lstms} == {12}  # 24 hidden units, half removed
    if name == "crnn_torchscript":  # symbolic batch
        session = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).random((3, 1, 16, 32), dtype=np.float32)
        assert session.run(None, {"input": x})[0].shape == (3, 8, 12)


@pytest.mark.parametrize("directions", [1, 2])
def test_a_state_computed_by_another_layer_ties_its_channels_to_the_hidden_units(directions):
    """initial_h read from a conv's channels (an encoder's last state starting a decoder is the same
    case): channel j of that conv is hidden unit j's start, so they are one group, pruned together."""
    model = crnn(directions=directions, state_from_backbone=True)
    analysis = analyze(model)
    hidden = group_with(analysis, "rnn")
    assert hidden is group_with(analysis, "state_conv") and hidden.prunable, [str(r) for r in hidden.frozen]
    assert group_with(analysis, "conv1").prunable  # the input features too
    pruned = assert_lossless(model, 0.5)
    assert weight_dims(pruned, "state_conv")[0] == weight_dims(pruned, "rnn", 2)[2] == HIDDEN - HIDDEN // 2


@pytest.mark.parametrize("op_type", GATES)
def test_recurrent_macs_count_the_input_and_hidden_projections(op_type):
    model = crnn(op_type)
    cost = model_cost(model)
    steps, gates = WIDTH, GATES[op_type] * HIDDEN
    assert cost.node_macs["rnn"] == steps * 2 * gates * CHANNELS * HEIGHT
    assert cost.node_macs["rnn" + RECURRENCE_PART] == steps * 2 * gates * HIDDEN
    # The input projection shrinks with the input features and the hidden units, the recurrence
    # with the square of the hidden units; the planner's prediction matches the count.
    pruned, report = prune(model, ratio=0.5)
    after = model_cost(pruned)
    assert after.node_macs["rnn"] == cost.node_macs["rnn"] // 4
    assert after.node_macs["rnn" + RECURRENCE_PART] == cost.node_macs["rnn" + RECURRENCE_PART] // 4
    assert report.macs_after == after.macs


def test_recurrent_pruning_keeps_the_output_at_other_sequence_lengths():
    """The recurrent layer's sequence axis comes from the image width: a symbolic width survives."""
    g = Graph(opset=17)
    h = g.relu(g.conv(g.input("x", ["n", 1, HEIGHT, "w"]), CHANNELS, name="conv1"))
    shape = g.node("Shape", [h], "shape")
    n_and_w = g.node("Gather", [shape, g.ints("nw", [0, 3])], "n_w")
    target = g.node("Concat", [g.node("Slice", [n_and_w, g.ints("s0", [0]), g.ints("s1", [1])], "n"),
                               g.ints("features", [CHANNELS * HEIGHT]),
                               g.node("Slice", [n_and_w, g.ints("s2", [1]), g.ints("s3", [2])], "w")], "target", axis=0)
    sequence = g.node("Transpose", [g.node("Reshape", [h, target], "fold")], "to_sequence", perm=[2, 0, 1])
    gates = 4 * HIDDEN
    y = g.node("LSTM", [sequence, g.weight("W", [1, gates, CHANNELS * HEIGHT]), g.weight("R", [1, gates, HIDDEN])],
               "rnn", hidden_size=HIDDEN)
    model = g.build(y)
    pruned, _ = prune(model, ratio=0.5, input_shapes={"x": [1, 1, HEIGHT, 7]})
    assert weight_dims(pruned, "rnn", 1) == (1, gates, CHANNELS // 2 * HEIGHT)
    session = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.random.default_rng(0).random((3, 1, HEIGHT, 11), dtype=np.float32)})[0]
    assert out.shape == (11, 1, 3, HIDDEN)


def test_thinet_scores_the_channels_a_recurrent_layer_reads_from_data():
    """ThiNet samples the input projection (x @ W per gate), so the backbone's last group is scored by
    the calibration data, not left to the l1 fallback; the channels that carry nothing go first."""
    from onnx_slim.data.calibration import CalibrationSet

    model = crnn("LSTM")
    weights = {init.name: init for init in model.graph.initializer}
    conv = onnx.numpy_helper.to_array(weights["conv1_w"]).copy()
    conv[[1, 6]] *= 1e-4  # two filters whose outputs barely move
    weights["conv1_w"].CopyFrom(onnx.numpy_helper.from_array(conv, "conv1_w"))
    bias = np.full(CHANNELS, 2.0, dtype=np.float32)  # every other channel alive under the ReLU
    bias[[1, 6]] = 0.0
    weights["conv1_b"].CopyFrom(onnx.numpy_helper.from_array(bias, "conv1_b"))
    calibration = CalibrationSet({"x": np.random.default_rng(0).random((16, 1, HEIGHT, WIDTH), dtype=np.float32)},
                                 fixed_batch=1)
    pruned, report = prune(model, ratio=0.25, criterion="thinet", calibration=calibration)
    assert not any("scored by l1" in note for note in report.notes), report.notes
    kept = onnx.numpy_helper.to_array(next(i for i in pruned.graph.initializer if i.name == "conv1_w"))
    assert kept.shape[0] == CHANNELS - 2
    assert np.abs(kept).max(axis=(1, 2, 3)).min() > 1e-3  # the two near-silent filters are the ones gone
    assert_valid(pruned, model)


def test_refit_matches_the_input_projection_of_the_original():
    """With --reconstruct the recurrent layer's W is re-fitted so that x_pruned @ W' matches what
    the original's gates read (x @ W): the outputs move closer to the original's than slicing."""
    from onnx_slim.data.calibration import CalibrationSet

    model = crnn("LSTM")
    rng = np.random.default_rng(0)
    calibration = CalibrationSet({"x": rng.random((40, 1, HEIGHT, WIDTH), dtype=np.float32)}, fixed_batch=1)
    sliced, _ = prune(model, ratio=0.5, criterion="l1")
    fitted, report = prune(model, ratio=0.5, criterion="l1", reconstruct=True, calibration=calibration)
    layers = {layer["node"]: layer for layer in report.reconstruction["per_layer"]}
    assert layers["rnn"]["method"] == "fit" and layers["rnn"]["error_fit"] < layers["rnn"]["error_slice"]
    assert_valid(fitted, model)

    def error(pruned):
        total = 0.0
        for index in range(8):
            x = rng.random((1, 1, HEIGHT, WIDTH), dtype=np.float32)
            total += float(np.sum((run_output(pruned, x) - run_output(model, x)) ** 2))
        return total

    assert error(fitted) < error(sliced)


def run_output(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_an_encoders_last_state_starting_a_decoder_ties_their_units():
    """Encoder LSTM -> (Y_h, Y_c) -> decoder LSTM's initial states: unit j of one starts unit j of the
    other, so both layers lose the same units; removing zeroed ones is lossless and the masked model
    (R's columns of both masked) equals the pruned one."""
    from onnx_slim.apply.surgery import apply_plan, refresh_shapes
    from onnx_slim.data.masking import MaskedModel

    g = Graph(opset=17)
    x = g.input("x", [WIDTH, 1, 4])
    gates = 4 * HIDDEN
    encoder = g.node("LSTM", [x, g.weight("We", [1, gates, 4]), g.weight("Re", [1, gates, HIDDEN]),
                              g.weight("Be", [1, 2 * gates], scale=0.1)], "encoder", outputs=3, hidden_size=HIDDEN)
    decoder = g.node("LSTM", [x, g.weight("Wd", [1, gates, 4]), g.weight("Rd", [1, gates, HIDDEN]),
                              g.weight("Bd", [1, 2 * gates], scale=0.1), "", encoder[1], encoder[2]], "decoder",
                     hidden_size=HIDDEN)
    model = g.build(g.matmul(g.reshape(decoder, [WIDTH, HIDDEN]), 3, name="head"))
    analysis = analyze(model)
    units = group_with(analysis, "encoder")
    assert units is group_with(analysis, "decoder") and units.prunable, [str(r) for r in units.frozen]
    assert_lossless(model, 0.5)
    plan = {units.root: [0, 2, 5]}
    masked = MaskedModel(analysis, [units])
    sequence = np.random.default_rng(0).random((WIDTH, 1, 4), dtype=np.float32)
    expected = next(iter(masked.run({"x": sequence}, plan).values()))
    apply_plan(analysis.model, analysis.channels, plan)
    refresh_shapes(analysis.model)
    session = ort.InferenceSession(analysis.model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": sequence})[0], expected, rtol=1e-5, atol=1e-6)
