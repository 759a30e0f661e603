"""Execution provider names: short or full, in preference order, checked, CPU last; their options."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from onnx_slim.errors import UsageError
from onnx_slim.ir.providers import CPU, full_provider_name, parse_provider_options, resolve_providers

GPU_BOX = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_short_and_full_names_map_to_onnxruntime_names():
    assert full_provider_name("cuda") == "CUDAExecutionProvider"
    assert full_provider_name("TensorRT") == "TensorrtExecutionProvider"
    assert full_provider_name("trt") == "TensorrtExecutionProvider"
    assert full_provider_name("openvino") == "OpenVINOExecutionProvider"
    assert full_provider_name("dml") == full_provider_name("directml") == "DmlExecutionProvider"
    assert full_provider_name("coreml") == "CoreMLExecutionProvider"
    assert full_provider_name("rocm") == "ROCMExecutionProvider"
    assert full_provider_name("cudaexecutionprovider") == "CUDAExecutionProvider"


def test_providers_keep_the_preference_order_and_end_with_the_cpu():
    assert resolve_providers(["tensorrt,cuda"], available=GPU_BOX) == tuple(GPU_BOX)
    assert resolve_providers(["cuda", "CUDAExecutionProvider"], available=GPU_BOX) == (GPU_BOX[1], CPU)
    assert resolve_providers(["cpu", "cuda"], available=GPU_BOX) == (CPU, GPU_BOX[1])
    assert resolve_providers(None) == resolve_providers([]) == (CPU,)


def test_an_unavailable_provider_is_a_usage_error_listing_the_available_ones():
    with pytest.raises(UsageError) as caught:
        resolve_providers(["cuda"], available=["CPUExecutionProvider"])
    assert str(caught.value) == (f"execution provider CUDAExecutionProvider is not available in this onnxruntime "
                                 f"({ort.__version__}); available: CPUExecutionProvider")


def test_an_unknown_provider_is_a_usage_error_naming_the_short_names():
    with pytest.raises(UsageError, match="unknown execution provider 'gpu'; short names: .*cuda"):
        resolve_providers(["gpu"])


def test_provider_options_go_to_the_first_provider_or_the_named_one():
    providers = ("CUDAExecutionProvider", CPU)

    options = parse_provider_options(["device_id=1", "cpu:use_arena=0", "cuda:gpu_mem_limit = 2"], providers)

    assert dict(options) == {"CUDAExecutionProvider": (("device_id", "1"), ("gpu_mem_limit", "2")),
                             CPU: (("use_arena", "0"),)}


def test_bad_provider_options_are_usage_errors():
    with pytest.raises(UsageError, match="expected \\[PROVIDER:\\]KEY=VALUE"):
        parse_provider_options(["device_id"], (CPU,))
    with pytest.raises(UsageError, match="not among the providers .*add --provider cuda"):
        parse_provider_options(["cuda:device_id=1"], (CPU,))
