"""float16 conversion: the model loads, runs, keeps its output shapes and (by default) float32 inputs/outputs;
ops without float16 kernels on the provider stay float32; out-of-range weights are clipped and said so."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_cli import run_cli
from test_quantize import conv_net, matmul_net

from onnx_slim.deploy.quant_fp16 import FP16_MAX, convert_to_fp16
from onnx_slim.deploy.quantize import quantize_model
from onnx_slim.ir.inputs import random_inputs
from onnx_slim.ir.runtime import SessionSpec, create_session, run_session

# Not in this CPU-only build: onnxruntime falls back to the CPU provider (and warns), and its kernels are unknown.
GPU = SessionSpec(providers=("CUDAExecutionProvider", "CPUExecutionProvider"))


def io_types(model: onnx.ModelProto) -> list[int]:
    return [value.type.tensor_type.elem_type for value in (*model.graph.input, *model.graph.output)]


@pytest.fixture(autouse=True)
def no_missing_provider_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Specified provider 'CUDAExecutionProvider'")
        yield


def test_fp16_on_a_gpu_spec_halves_the_weights_keeps_io_float32_and_agrees(tmp_path):
    output = tmp_path / "fp16.onnx"

    report = quantize_model(matmul_net(), output, mode="fp16", session=GPU, measure=False)

    written = onnx.load(str(output))
    assert report.kept == "fp16" and report.mode == "fp16" and report.weight_type == "float16"
    assert io_types(written) == [TensorProto.FLOAT, TensorProto.FLOAT]
    weights = {tensor.name: tensor.data_type for tensor in written.graph.initializer}
    assert weights["fc1.weight"] == weights["fc2.weight"] == TensorProto.FLOAT16
    assert report.size_after < 0.6 * report.size_before
    assert report.quantized_ops == {"Add": 2, "MatMul": 2, "Relu": 1}  # every node runs in float16
    assert report.agreement["cosine"] > 0.999
    feeds = random_inputs(written, batch=3)
    assert run_session(create_session(output), feeds)["hidden"].shape == (3, 8, 64)


def test_no_keep_io_types_makes_inputs_and_outputs_float16(tmp_path):
    report = quantize_model(conv_net(), tmp_path / "fp16.onnx", mode="fp16", session=GPU, measure=False,
                            keep_io_types=False)

    written = onnx.load(str(tmp_path / "fp16.onnx"))
    assert io_types(written) == [TensorProto.FLOAT16, TensorProto.FLOAT16]
    feeds = {"image": np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float16)}
    outputs = run_session(create_session(written), feeds)
    assert outputs["logits"].shape == (2, 10) and outputs["logits"].dtype == np.float16
    assert report.agreement["cosine"] > 0.999  # scored on float16 feeds, compared in float32


def test_on_cpu_ops_without_float16_kernels_stay_float32_and_the_report_says_so():
    result = convert_to_fp16(conv_net(), ("CPUExecutionProvider",))

    # onnxruntime's CPU provider registers no float16 Conv, Gemm, Relu or pooling kernel.
    assert result.blocked_ops == ["Conv", "Gemm", "GlobalAveragePool", "Relu"]
    assert "CPUExecutionProvider kernels without float16" == result.block_source
    assert any("float16 pays off on a GPU provider" in warning for warning in result.warnings)
    conv = next(node for node in result.model.graph.node if node.op_type == "Conv")
    weights = {tensor.name: tensor.data_type for tensor in result.model.graph.initializer}
    assert weights[conv.input[1]] == TensorProto.FLOAT


def test_weights_beyond_the_float16_range_are_clipped_with_a_warning(tmp_path):
    model = matmul_net()
    weight = next(tensor for tensor in model.graph.initializer if tensor.name == "fc2.weight")
    values = numpy_helper.to_array(weight).copy()
    values[0, :3] = [1e5, -2e5, 7e4]
    weight.CopyFrom(numpy_helper.from_array(values, "fc2.weight"))

    report = quantize_model(model, tmp_path / "fp16.onnx", mode="fp16", session=GPU, measure=False)

    assert any(w.startswith("3 weight values exceed the float16 range") for w in report.warnings)
    written = onnx.load(str(tmp_path / "fp16.onnx"))
    clipped = numpy_helper.to_array(next(t for t in written.graph.initializer if t.name == "fc2.weight"))
    assert clipped[0, :3].tolist() == [FP16_MAX, -FP16_MAX, FP16_MAX]


def test_auto_tries_fp16_only_for_a_gpu_provider(tmp_path, monkeypatch):
    from onnx_slim.deploy import quant_speed

    monkeypatch.setattr(quant_speed, "measure_latencies",
                        lambda models, feeds, **options: {name: {"p50": 1.0 if name == "fp16" else 2.0}
                                                          for name in models})
    cpu = quantize_model(matmul_net(), tmp_path / "cpu.onnx")
    gpu = quantize_model(matmul_net(), tmp_path / "gpu.onnx", session=GPU)

    assert "fp16" not in [c["mode"] for c in cpu.candidates]
    assert any(note.startswith("fp16: tried on GPU providers only") for note in cpu.skipped)
    assert [c["mode"] for c in gpu.candidates] == ["dynamic", "int4", "fp16"] and gpu.kept == "fp16"


def test_fp16_command_line(capsys, tmp_path):
    model = tmp_path / "mm.onnx"
    onnx.save(matmul_net(), str(model))

    code, stdout, _ = run_cli(capsys, "quantize", model, "-o", tmp_path / "fp16.onnx", "--mode", "fp16",
                              "--no-keep-io-types", "--no-measure", "--quiet")

    assert code == 0 and "fp16" in stdout
    assert io_types(onnx.load(str(tmp_path / "fp16.onnx"))) == [TensorProto.FLOAT16, TensorProto.FLOAT16]


def test_a_provider_this_build_lacks_uses_onnxruntimes_default_block_list():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    result = convert_to_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), GPU.providers)
    assert result.blocked_ops == [] and result.warnings == []
    assert result.block_source.startswith("onnxruntime's default block list (CUDAExecutionProvider kernels")
