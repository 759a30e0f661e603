"""Bias correction shifts int8 biases so each layer's mean output on the calibration data is the float one."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_slim.cli import main
from onnx_slim.deploy.quant_bias import correct_biases
from onnx_slim.deploy.quantize import quantize_model
from onnx_slim.ir.runtime import create_session, run_session


def depthwise_net() -> onnx.ModelProto:
    """Depthwise 3x3 Conv (16 channels) -> Relu -> 1x1 Conv: few weights per channel, weight scales far apart."""
    rng = np.random.default_rng(0)
    # One channel with large weights sets the per-tensor scale; the small ones round coarsely.
    depthwise = rng.standard_normal((16, 1, 3, 3)) * np.where(np.arange(16) == 0, 4.0, 0.15)[:, None, None, None]
    pointwise = rng.standard_normal((8, 16, 1, 1)) * 0.3
    initializers = [
        numpy_helper.from_array(depthwise.astype(np.float32), "dw.weight"),
        numpy_helper.from_array((0.1 * rng.standard_normal(16)).astype(np.float32), "dw.bias"),
        numpy_helper.from_array(pointwise.astype(np.float32), "pw.weight"),
        numpy_helper.from_array((0.1 * rng.standard_normal(8)).astype(np.float32), "pw.bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "dw.weight", "dw.bias"], ["dw_out"], name="dw", group=16, pads=[1] * 4),
        helper.make_node("Relu", ["dw_out"], ["relu_out"], name="relu"),
        helper.make_node("Conv", ["relu_out", "pw.weight", "pw.bias"], ["features"], name="pw"),
    ]
    graph = helper.make_graph(
        nodes, "depthwise_net",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 16, 8, 8])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 8, 8, 8])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def calibration_batches(count: int = 4, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    # A non-zero input mean turns the weights' rounding error into a shift of the mean output.
    return [{"image": (1.0 + rng.random((8, 16, 8, 8))).astype(np.float32)} for _ in range(count)]


def mean_error_per_channel(float_model, quantized, batches) -> np.ndarray:
    """|mean(int8 output) - mean(float output)| per output channel over `batches`."""
    reference, candidate = create_session(float_model), create_session(quantized)
    differences = [run_session(candidate, batch)["features"] - run_session(reference, batch)["features"]
                   for batch in batches]
    return np.abs(np.concatenate(differences).mean(axis=(0, 2, 3)))


def quantize(tmp_path, bias_correction, calibration=None, name="q.onnx"):
    model = depthwise_net()
    report = quantize_model(
        model, tmp_path / name, mode="static", calibration=calibration or calibration_batches(),
        per_channel=False, measure=False, bias_correction=bias_correction,
    )
    return model, onnx.load(str(tmp_path / name)), report


def test_bias_correction_restores_the_mean_output_on_the_calibration_data(tmp_path):
    model, plain, plain_report = quantize(tmp_path, False, name="plain.onnx")
    _, corrected, report = quantize(tmp_path, True, name="corrected.onnx")
    batches = calibration_batches()
    before = mean_error_per_channel(model, plain, batches)
    after = mean_error_per_channel(model, corrected, batches)
    assert plain_report.bias_corrected == 0 and report.bias_corrected == 2  # both Convs
    assert before.max() > 0.02  # the shift is real before correction
    assert after.max() < 0.25 * before.max()
    assert after.mean() < 0.25 * before.mean()


def test_bias_correction_changes_only_bias_values(tmp_path):
    """Same nodes and same weights: the corrected model costs the same to run."""
    _, plain, _ = quantize(tmp_path, False, name="plain.onnx")
    _, corrected, _ = quantize(tmp_path, True, name="corrected.onnx")
    assert [(n.op_type, list(n.input)) for n in plain.graph.node] == \
           [(n.op_type, list(n.input)) for n in corrected.graph.node]
    changed = {t.name for t, u in zip(plain.graph.initializer, corrected.graph.initializer)
               if not np.array_equal(numpy_helper.to_array(t), numpy_helper.to_array(u))}
    assert changed and all(name.endswith("bias_quantized") for name in changed)


def test_correct_biases_on_a_quantized_model_in_place(tmp_path):
    model, plain, _ = quantize(tmp_path, False)
    batches = calibration_batches()
    before = mean_error_per_channel(model, plain, batches)
    shifts = correct_biases(plain, model, batches)
    assert set(shifts) == {"dw", "pw"}
    assert mean_error_per_channel(model, plain, batches).max() < 0.25 * before.max()


def test_one_shot_calibration_iterator_skips_bias_correction_with_a_warning(tmp_path):
    _, _, report = quantize(tmp_path, True, calibration=iter(calibration_batches()))
    assert report.bias_corrected == 0
    assert any("bias correction skipped" in warning for warning in report.warnings)


def test_bias_correction_does_not_apply_to_dynamic_quantization(tmp_path):
    report = quantize_model(depthwise_net(), tmp_path / "q.onnx", mode="dynamic", measure=False)
    assert report.bias_corrected == 0


@pytest.mark.parametrize("flag, corrected", [("--bias-correction", 2), ("--no-bias-correction", 0)])
def test_cli_bias_correction_option_is_honoured(capsys, tmp_path, flag, corrected):
    model_path, calib = tmp_path / "model.onnx", tmp_path / "calib.npz"
    onnx.save(depthwise_net(), str(model_path))
    np.savez(calib, image=np.concatenate([batch["image"] for batch in calibration_batches()]))
    with pytest.raises(SystemExit) as done:
        main(["quantize", str(model_path), "-o", str(tmp_path / "q.onnx"), "--mode", "static", "--per-tensor",
              "--calib", str(calib), "--no-measure", flag, "--json", "--quiet"])
        raise SystemExit(0)  # main may return instead of exiting
    assert done.value.code in (0, None)
    assert json.loads(capsys.readouterr().out)["bias_corrected"] == corrected
