"""Statistics correction: per-channel output mean and spread matched to the original's."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import group_with
from graphs import Graph
from onnx import numpy_helper

from onnx_slim import UsageError, prune
from onnx_slim.apply.statistics_correction import correct_statistics
from onnx_slim.apply.surgery import apply_plan
from onnx_slim.channels.analysis import analyze
from onnx_slim.data.activations import ActivationCapture
from onnx_slim.data.calibration import CalibrationSet
from onnx_slim.ir.model import load_model


def calibration(n=40, shape=(3, 8, 8), seed=0):
    return CalibrationSet({"x": np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)})


def conv_net(seed=0):
    """conv1 -> conv2 -> depthwise -> conv3 -> Gemm, ReLUs between."""
    g = Graph(seed=seed)
    x = g.input("x", ["N", 3, 8, 8])
    h = g.relu(g.conv(x, 8, name="conv1"))
    h = g.relu(g.conv(h, 8, name="conv2"))
    h = g.relu(g.depthwise(h, name="dw"))
    h = g.relu(g.conv(h, 8, name="conv3"))
    return g.build(g.gemm(g.flatten(g.gap(h)), 4, name="fc"))


def set_weight(model, name, value):
    init = next(i for i in model.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def pruned_pair(model, node, removed):
    """(original normalized model, pruned model, channel analysis, plan) with `removed` channels of `node`'s group."""
    analysis = analyze(model)
    original = load_model(analysis.model)
    plan = {group_with(analysis, node).root: removed}
    apply_plan(analysis.model, analysis.channels, plan)
    return original, analysis.model, analysis.channels, plan


def outputs(model, tensors, data):
    capture = ActivationCapture(model, tensors)
    runs = [capture.run(batch) for batch in data.batches(16)]
    return {name: np.concatenate([run[name] for run in runs]) for name in tensors}


def channel_moments(values, axis):
    rows = np.moveaxis(values, axis, -1).reshape(-1, values.shape[axis]).astype(np.float64)
    return rows.mean(axis=0), rows.std(axis=0)


def test_correction_restores_the_original_mean_and_std_per_channel():
    """conv1's channels 4..7 duplicate 0..3 at half strength: removing them leaves conv2's output an
    exact affine image of the original's, which mean and spread matching undoes entirely."""
    model = conv_net()
    w1 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "conv1_w"))
    b1 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "conv1_b"))
    w2 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "conv2_w")).copy()
    set_weight(model, "conv1_w", np.concatenate([w1[:4], w1[:4]]))
    set_weight(model, "conv1_b", np.concatenate([b1[:4], b1[:4]]))
    w2[:, 4:] = 0.5 * w2[:, :4]
    set_weight(model, "conv2_w", w2)
    data = calibration()
    original, pruned, analysis, plan = pruned_pair(model, "conv1", [4, 5, 6, 7])
    report = correct_statistics(original, pruned, analysis, plan, data)

    methods = {layer.node: layer.method for layer in report.layers}
    assert methods["conv2"] == "mean+std"
    names = ["conv2", "dw", "conv3", "fc"]
    want, got = outputs(original, names, data), outputs(pruned, names, data)
    for name in names:
        axis = -1 if name == "fc" else 1
        for expected, actual in zip(channel_moments(want[name], axis), channel_moments(got[name], axis)):
            np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(got["fc"], want["fc"], rtol=1e-3, atol=1e-3)


def test_each_corrected_layer_gets_the_original_moments_it_was_corrected_for_depthwise_included():
    data = calibration()
    original, pruned, analysis, plan = pruned_pair(conv_net(seed=3), "conv1", [0, 2, 5])
    report = correct_statistics(original, pruned, analysis, plan, data)
    corrected = {layer.node: layer.method for layer in report.layers if layer.method != "none"}
    assert "dw" in corrected
    names = list(corrected)
    want, got = outputs(original, names, data), outputs(pruned, names, data)
    for name, method in corrected.items():
        axis = -1 if name == "fc" else 1
        (mean_o, std_o), (mean_p, std_p) = channel_moments(want[name], axis), channel_moments(got[name], axis)
        np.testing.assert_allclose(mean_p, mean_o, rtol=1e-3, atol=1e-4)
        if method == "mean+std":
            np.testing.assert_allclose(std_p, std_o, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_correction_never_makes_a_layer_worse(seed):
    data = calibration(seed=seed)
    original, pruned, analysis, plan = pruned_pair(conv_net(seed=seed), "conv1", [1, 3, 4, 6])
    before = load_model(pruned)
    report = correct_statistics(original, pruned, analysis, plan, data)
    assert all(layer.error_after <= layer.error_before for layer in report.layers)
    # conv2 is the first changed layer, so its inputs are the same before and after: check on all rows.
    want, was, now = (outputs(m, ["conv2"], data)["conv2"] for m in (original, before, pruned))
    assert np.square(now - want).sum() <= np.square(was - want).sum() * (1 + 1e-6)


def test_a_lossless_prune_stays_lossless():
    """conv1's channels 2 and 5 are always zero after the ReLU: removing them changes nothing to correct."""
    model = conv_net()
    w1 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "conv1_w")).copy()
    b1 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "conv1_b")).copy()
    w1[[2, 5]], b1[[2, 5]] = 0, -1
    set_weight(model, "conv1_w", w1)
    set_weight(model, "conv1_b", b1)
    data = calibration()
    original, pruned, analysis, plan = pruned_pair(model, "conv1", [2, 5])
    before = pruned.SerializeToString()
    report = correct_statistics(original, pruned, analysis, plan, data)
    assert report.layers and {layer.method for layer in report.layers} == {"none"}
    assert pruned.SerializeToString() == before


def test_matmul_bias_add_and_gemm_without_bias():
    g = Graph(seed=1)
    x = g.input("x", ["N", 6, 12])
    h = g.relu(g.add_bias(g.matmul(x, 16, name="up"), name="up_bias"))
    h = g.add_bias(g.matmul(h, 12, name="down"), name="down_bias")
    model = g.build(g.gemm(g.flatten(h), 5, bias="none", name="fc"))
    data = calibration(shape=(6, 12))
    original, pruned, analysis, plan = pruned_pair(model, "up", list(range(0, 16, 2)))
    report = correct_statistics(original, pruned, analysis, plan, data)
    methods = {layer.node: layer.method for layer in report.layers}
    assert set(methods) == {"down", "fc"}
    assert methods["down"] != "none"
    want, got = outputs(original, ["down_bias"], data), outputs(pruned, ["down_bias"], data)
    np.testing.assert_allclose(channel_moments(got["down_bias"], -1)[0], channel_moments(want["down_bias"], -1)[0],
                               rtol=1e-3, atol=1e-4)
    onnx.checker.check_model(pruned, full_check=True)


def test_option_off_leaves_the_model_byte_identical_and_on_needs_data():
    model, data = conv_net(), calibration()
    plain, report = prune(model, ratio=0.5, calibration=data)
    off, _ = prune(model, ratio=0.5, calibration=data, correct_statistics=False)
    on, on_report = prune(model, ratio=0.5, calibration=data, correct_statistics=True)
    assert off.SerializeToString() == plain.SerializeToString()
    assert report.statistics is None
    assert on_report.statistics["layers"] == 4 and on_report.statistics["corrected"] >= 1
    assert on.SerializeToString() != plain.SerializeToString()
    with pytest.raises(UsageError, match="--correct-statistics needs calibration data"):
        prune(model, ratio=0.5, correct_statistics=True)


def test_cli_flag_reports_the_correction(tmp_path):
    from click.testing import CliRunner

    from onnx_slim.cli import cli

    model_path, calib_path = tmp_path / "m.onnx", tmp_path / "calib.npz"
    onnx.save(conv_net(), str(model_path))
    np.savez(calib_path, x=np.random.default_rng(0).standard_normal((24, 3, 8, 8)).astype(np.float32))
    result = CliRunner().invoke(cli, ["prune", str(model_path), "-o", str(tmp_path / "out.onnx"), "--ratio", "0.5",
                                      "--calib", str(calib_path), "--correct-statistics", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "statistics corrected in" in result.output
