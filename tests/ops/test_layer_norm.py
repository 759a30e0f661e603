"""A LayerNorm after a projection scales its output errors by |gamma|: `layer_norm_scale` finds it,
and the criteria that price a channel by the error it leaves (thinet, obs) weigh outputs by it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_slim.channels.analysis import analyze
from onnx_slim.criteria import ScoringContext, score_groups
from onnx_slim.data.calibration import CalibrationSet
from onnx_slim.ops.layer_norm import layer_norm_input, layer_norm_scale

WIDTH, HIDDEN = 64, 4
HALF = WIDTH // 2
# fc2's neuron 0 writes strongly to the first half of the channels, which the LayerNorm scales by
# 0.02; neuron 1 writes weakly to the second half, which it keeps at 1: by energy neuron 1 matters
# least, by what the next layer reads neuron 0 does.
GAMMA = np.array([0.02] * HALF + [1.0] * HALF, np.float32)


def post_ln_block(gamma_is_input: bool = False, axis: int = -1, also_output: bool = False):
    """x -> fc1 -> Relu -> fc2 -> + bias -> + x -> LayerNormalization(GAMMA) -> y."""
    rng = np.random.default_rng(0)
    w1 = (0.3 * rng.standard_normal((WIDTH, HIDDEN))).astype(np.float32)
    w2 = np.zeros((HIDDEN, WIDTH), np.float32)
    # Zero-mean patterns on a wide stream: the LayerNorm's centering and its sigma (which move
    # every channel, a part of its Jacobian the per-channel scale leaves out) barely react.
    alternating = np.resize([1.0, -1.0], HALF)
    w2[0, :HALF], w2[1, HALF:] = 0.1 * alternating, 0.05 * alternating
    w2[2:] = 0.02 * rng.standard_normal((2, WIDTH))
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(np.full(WIDTH, 0.1, np.float32), "b2"),
             numpy_helper.from_array(np.zeros(WIDTH, np.float32), "beta")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, WIDTH])]
    if gamma_is_input:
        inputs.append(helper.make_tensor_value_info("gamma", TensorProto.FLOAT, [WIDTH]))
    else:
        inits.append(numpy_helper.from_array(GAMMA, "gamma"))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["f"], name="fc2"),
             helper.make_node("Add", ["f", "b2"], ["fb"], name="bias"),
             helper.make_node("Add", ["fb", "x"], ["s"], name="residual"),
             helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], name="ln", axis=axis)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, WIDTH])]
    if also_output:
        outputs.append(helper.make_tensor_value_info("fb", TensorProto.FLOAT, [None, WIDTH]))
    graph = helper.make_graph(nodes, "block", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def test_the_scale_is_found_through_the_bias_and_residual_adds():
    model = post_ln_block()
    np.testing.assert_array_equal(layer_norm_scale(model, node(model, "fc2"), WIDTH), GAMMA.astype(np.float64))


def test_onnxruntimes_fused_skip_layer_norm_gives_its_scale_but_holds_no_sum_to_read_sigma_from():
    model = post_ln_block()
    fused = [n for n in model.graph.node if n.name not in ("residual", "ln")]
    fused.append(helper.make_node("SkipLayerNormalization", ["fb", "x", "gamma", "beta"], ["y"], name="skip_ln",
                                  domain="com.microsoft", epsilon=1e-5))
    del model.graph.node[:]
    model.graph.node.extend(fused)
    fc2 = node(model, "fc2")
    np.testing.assert_array_equal(layer_norm_scale(model, fc2, WIDTH), GAMMA.astype(np.float64))
    assert layer_norm_input(model, fc2, WIDTH) is None
    plain = post_ln_block()
    assert layer_norm_input(plain, node(plain, "fc2"), WIDTH) == "s"  # the plain LayerNorm's sum


@pytest.mark.parametrize("case", ["no layer norm after it", "scale not a constant", "normalizes another axis",
                                  "another reader sees the raw output", "a graph output is the raw output",
                                  "wrong width"])
def test_no_scale_when_the_layer_norm_does_not_stand_alone_after_the_layer(case):
    model = post_ln_block(gamma_is_input=case == "scale not a constant", axis=0 if case == "normalizes another axis"
                          else -1, also_output=case == "a graph output is the raw output")
    if case == "another reader sees the raw output":  # a second node reading the biased output
        model.graph.node.append(helper.make_node("Relu", ["fb"], ["extra"], name="extra"))
        model.graph.output.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [None, WIDTH]))
    layer = node(model, "fc1" if case == "no layer norm after it" else "fc2")
    assert layer_norm_scale(model, layer, HIDDEN if case in ("no layer norm after it", "wrong width")
                            else WIDTH) is None


def layer_norm_output_change(model, samples, neuron: int) -> float:
    """||y(neuron zeroed) - y||^2 / ||y||^2 through onnxruntime: what removing the neuron does."""
    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": samples})[0]
    reference = run(model)
    edited = type(model)()
    edited.CopyFrom(model)
    w2 = next(init for init in edited.graph.initializer if init.name == "w2")
    values = numpy_helper.to_array(w2).copy()
    values[neuron] = 0
    w2.CopyFrom(numpy_helper.from_array(values, "w2"))
    return float(np.square(run(edited) - reference).sum() / np.square(reference).sum())


@pytest.mark.parametrize("criterion", ["thinet", "obs"])
def test_the_criteria_remove_first_the_neuron_the_layer_norm_reads_least(criterion):
    model = post_ln_block()
    samples = np.random.default_rng(1).standard_normal((256, WIDTH)).astype(np.float32)
    changes = [layer_norm_output_change(model, samples, neuron) for neuron in (0, 1)]
    assert changes[0] < changes[1] / 3  # the premise, measured: neuron 0 barely reaches the output
    hidden = np.maximum(samples @ numpy_helper.to_array(model.graph.initializer[0]), 0)
    w2 = numpy_helper.to_array(model.graph.initializer[1])
    energy = [np.square(np.outer(hidden[:, n], w2[n])).sum() for n in (0, 1)]
    assert energy[0] > 3 * energy[1]  # ranked by output energy, neuron 1 would go first
    analysis = analyze(model)
    [group] = analysis.channels.prunable_groups()
    context = ScoringContext(analysis.model, analysis.channels, calibration=CalibrationSet({"x": samples}))

    scores = score_groups(context, criterion, [group])[group.id]

    assert scores[0] < scores[1]
    assert any("scale of the LayerNorm" in note for note in context.notes)
