"""What quantization chooses: opset for per-channel weights, int8 or float by speed, per-channel dynamic
weights, no static int8 without data, and a quiet terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_cli import run_cli
from test_quantize import conv_net, eval_batches, matmul_net

from onnx_slim.data.evaluate import evaluate
from onnx_slim.deploy import quant_opset, quant_speed
from onnx_slim.deploy.quant_calibration import RANDOM_CALIBRATION_WARNING
from onnx_slim.deploy.quantize import RANDOM, quantize_model, quantized_op_counts
from onnx_slim.errors import InvalidModelError, UsageError
from onnx_slim.ir.graph import opset_version
from onnx_slim.ir.inputs import random_inputs
from onnx_slim.ir.model import check_not_quantized
from onnx_slim.ir.runtime import create_session, run_session

MODELS = Path(__file__).parents[2] / "models"
ROOT = Path(__file__).parents[2]


def calibration(model, count=4):
    return [random_inputs(model, batch=8, seed=seed) for seed in range(count)]


def opset11_conv(tmp_path) -> Path:
    """conv_net declared at opset 11 (every op it uses is the same there), checked by onnx."""
    model = conv_net()
    model.opset_import[0].version = 11
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "conv11.onnx"
    onnx.save(model, str(path))
    return path


def weight_scale_shapes(path) -> dict[str, tuple]:
    """Shape of the scale of every quantized weight (DequantizeLinear or integer-op weight inputs)."""
    model = onnx.load(str(path))
    shapes = {tensor.name: tuple(numpy_helper.to_array(tensor).shape) for tensor in model.graph.initializer}
    return {name: shape for name, shape in shapes.items() if name.endswith("weight_scale")}


# --- item 2: opset below 13 with per-channel weights -----------------------------


def test_opset11_static_per_channel_converts_to_opset13(tmp_path):
    source = opset11_conv(tmp_path)

    report = quantize_model(source, tmp_path / "q.onnx", mode="static", calibration=calibration(conv_net()),
                            measure=False)

    assert report.per_channel
    assert any("converted from opset 11 to 13" in warning for warning in report.warnings)
    quantized = onnx.load(str(tmp_path / "q.onnx"))
    assert opset_version(quantized) >= 13
    assert weight_scale_shapes(tmp_path / "q.onnx")["conv_1.weight_scale"] == (16,)
    assert evaluate(source, tmp_path / "q.onnx", eval_batches(conv_net()))["agreement"]["cosine"] > 0.99


def test_opset11_conversion_that_changes_outputs_falls_back_to_per_tensor(tmp_path, monkeypatch):
    source = opset11_conv(tmp_path)
    real_convert = quant_opset.version_converter.convert_version

    def wrong_conversion(model, version):
        converted = real_convert(model, version)
        bias = next(t for t in converted.graph.initializer if t.name == "fc.bias")
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 1.0, "fc.bias"))
        return converted

    monkeypatch.setattr(quant_opset.version_converter, "convert_version", wrong_conversion)

    report = quantize_model(source, tmp_path / "q.onnx", mode="static", calibration=calibration(conv_net()),
                            measure=False)

    assert not report.per_channel
    assert any("per-tensor weights" in w and "changes output 'logits'" in w for w in report.warnings)
    quantized = onnx.load(str(tmp_path / "q.onnx"))
    assert opset_version(quantized) == 11
    assert weight_scale_shapes(tmp_path / "q.onnx")["conv_1.weight_scale"] == ()
    run_session(create_session(quantized), random_inputs(quantized, batch=2))


def test_opset11_conversion_failure_falls_back_to_per_tensor(tmp_path, monkeypatch):
    def no_adapter(model, version):
        raise RuntimeError("No Adapter For Relu")

    monkeypatch.setattr(quant_opset.version_converter, "convert_version", no_adapter)

    report = quantize_model(opset11_conv(tmp_path), tmp_path / "q.onnx", mode="static",
                            calibration=calibration(conv_net()), measure=False)

    assert not report.per_channel
    assert any("onnx cannot convert it from opset 11" in warning for warning in report.warnings)


# --- item 3: int8 that is slower is not kept --------------------------------------


def fake_latency(float_p50: float, int8_p50: float):
    """Every candidate (static, dynamic...) measures int8_p50, the float model float_p50."""
    def measure_latencies(models, feeds, **options):
        assert set(feeds) == {"image"} and list(models)[0] == "float"
        return {name: {"p50": float_p50 if name == "float" else int8_p50, "mean": float_p50 if name == "float"
                       else int8_p50} for name in models}
    return measure_latencies


def test_auto_keeps_the_float_model_when_int8_is_slower(tmp_path, monkeypatch):
    monkeypatch.setattr(quant_speed, "measure_latencies", fake_latency(2.0, 3.0))
    source = tmp_path / "conv.onnx"
    onnx.save(conv_net(), str(source))

    report = quantize_model(source, tmp_path / "q.onnx", calibration=calibration(conv_net()))

    assert report.mode == "static" and report.kept == "float"
    assert report.decision.startswith("kept the float model: int8 is 1.50x slower")
    assert report.latency_ms["float"]["p50"] == 2.0 and report.latency_ms["int8"]["p50"] == 3.0
    written = onnx.load(str(tmp_path / "q.onnx"))
    assert report.quantized_ops == quantized_op_counts(written) == {}
    assert written.SerializeToString() == onnx.load(str(source)).SerializeToString()
    assert report.size_after == report.size_before


def test_auto_keeps_int8_when_faster(tmp_path, monkeypatch):
    monkeypatch.setattr(quant_speed, "measure_latencies", fake_latency(3.0, 1.5))

    report = quantize_model(conv_net(), tmp_path / "q.onnx", calibration=calibration(conv_net()))

    assert report.kept == "int8" and report.decision.startswith("kept int8") and "2.00x faster" in report.decision
    assert report.quantized_ops["QuantizeLinear"] > 0 and report.warnings == []


def test_explicit_mode_keeps_int8_but_warns_when_slower(tmp_path, monkeypatch):
    monkeypatch.setattr(quant_speed, "measure_latencies", fake_latency(2.0, 3.0))

    report = quantize_model(conv_net(), tmp_path / "q.onnx", mode="static", calibration=calibration(conv_net()))

    assert report.kept == "int8" and report.quantized_ops["QuantizeLinear"] > 0
    assert "as requested" in report.decision
    assert any("1.50x slower" in w and "--mode auto would keep the float model" in w for w in report.warnings)


def test_no_measure_keeps_int8_unmeasured(tmp_path, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("measured although measure=False")

    monkeypatch.setattr(quant_speed, "measure_latencies", must_not_run)

    report = quantize_model(conv_net(), tmp_path / "q.onnx", calibration=calibration(conv_net()), measure=False)

    assert report.kept == "int8" and report.latency_ms is None and "without measuring" in report.decision


def test_quantize_command_reports_measured_latencies(capsys, tmp_path):
    out = tmp_path / "q.onnx"
    code, stdout, _ = run_cli(capsys, "quantize", MODELS / "digits_cnn.onnx", "-o", out,
                              "--calib", MODELS / "digits_calib.npz", "--json", "--quiet")

    report = json.loads(stdout)
    assert code == 0
    assert report["calibration"] == "300 samples in 38 batches of up to 8"
    assert report["latency_ms"]["float"]["p50"] > 0 and report["latency_ms"]["int8"]["p50"] > 0
    assert report["decision"].startswith("kept int8" if report["kept"] == "int8" else "kept the float model")
    assert (report["kept"] == "int8") == (report["latency_ms"]["int8"]["p50"] < report["latency_ms"]["float"]["p50"])


# --- item 4: per-channel weights for dynamic quantization -----------------------------


def test_dynamic_default_is_per_channel(tmp_path):
    source = tmp_path / "mm.onnx"
    onnx.save(matmul_net(), str(source))

    report = quantize_model(source, tmp_path / "q.onnx", mode="dynamic", measure=False)

    assert report.per_channel
    assert weight_scale_shapes(tmp_path / "q.onnx") == {"fc1.weight_scale": (256,), "fc2.weight_scale": (64,)}
    assert evaluate(source, tmp_path / "q.onnx", eval_batches(matmul_net()))["agreement"]["cosine"] > 0.99


# --- item 6: no static int8 on random data unless asked, and then flagged ------------


def test_auto_without_calibration_quantizes_dynamically(tmp_path):
    report = quantize_model(conv_net(), tmp_path / "q.onnx", measure=False)

    assert report.mode == "dynamic" and "no calibration data" in report.mode_reason
    assert "random" not in report.calibration
    assert report.quantized_ops["ConvInteger"] == 3


def test_static_without_calibration_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="static quantization needs calibration data"):
        quantize_model(conv_net(), tmp_path / "q.onnx", mode="static")
    assert not (tmp_path / "q.onnx").exists()


def test_run_without_calibration_does_not_ship_random_static_int8(capsys, tmp_path):
    model = tmp_path / "resnet.onnx"
    onnx.save(onnx.load(str(MODELS / "resnet_torchscript.onnx")), str(model))
    fast = ["--runs", "3", "--warmup", "1", "--no-memory", "--quiet", "--json"]

    code, stdout, _ = run_cli(capsys, "run", model, "-o", tmp_path / "plain", *fast)
    report = json.loads(stdout)
    assert code == 0
    assert report["quantize"]["mode"] == "dynamic" and "no calibration data" in report["quantize"]["mode_reason"]
    assert "random" not in report["quantize"]["calibration"]

    code, _, stderr = run_cli(capsys, "run", model, "-o", tmp_path / "static", "--quantize", "static", *fast)
    assert code == 2 and "quantize static needs calibration data" in stderr
    assert not (tmp_path / "static").exists()

    code, stdout, _ = run_cli(capsys, "run", model, "-o", tmp_path / "smoke", "--calib", "random",
                              "--no-measure", *fast)
    report = json.loads(stdout)
    assert code == 0
    assert report["quantize"]["mode"] == "static" and "NOT for deployment" in report["quantize"]["calibration"]
    assert RANDOM_CALIBRATION_WARNING in report["quantize"]["warnings"]
    assert "NOT for deployment" in (tmp_path / "smoke" / "report.md").read_text()


def test_explicit_random_calibration_is_flagged(tmp_path):
    report = quantize_model(conv_net(), tmp_path / "q.onnx", calibration=RANDOM, measure=False)

    assert report.mode == "static" and "NOT for deployment" in report.calibration
    assert report.warnings == [RANDOM_CALIBRATION_WARNING]


# --- item 7b: onnxruntime stays quiet unless --debug --------------------------------


def test_quantize_command_keeps_onnxruntime_warnings_off_the_terminal(tmp_path):
    # DenseNet's norm weights make onnxruntime's per-channel quantizer warn on the root logger.
    model = MODELS / "densenet_torchscript.onnx"
    feeds = random_inputs(onnx.load(str(model)), batch=4)
    np.savez(tmp_path / "calib.npz", **feeds)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "onnx_slim", "quantize", str(model), "-o", str(tmp_path / "q.onnx"),
               "--calib", str(tmp_path / "calib.npz"), "--mode", "static", "--no-measure", "--quiet"]

    quiet = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    debug = subprocess.run([command[0], "-m", "onnx_slim", "--debug", *command[3:], "--force"],
                           capture_output=True, text=True, env=env, check=True)

    assert quiet.stderr == ""
    assert "Axis 1 is out-of-range" in debug.stderr  # the warning exists; only --debug shows it


# --- issue 8: one list of quantized ops ------------------------------------------------


def test_pruning_and_quantization_agree_on_what_is_quantized():
    nodes = [helper.make_node("DynamicQuantizeMatMul", ["x", "w", "s"], ["y"], domain="com.microsoft")]
    graph = helper.make_graph(nodes, "dq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph)

    assert quantized_op_counts(model) == {"DynamicQuantizeMatMul": 1}
    with pytest.raises(InvalidModelError, match="already quantized"):
        check_not_quantized(model)
