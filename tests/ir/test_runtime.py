"""Sessions are made one way, from a SessionSpec."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import conv_chain
from onnx import TensorProto, helper, numpy_helper

from onnx_slim.errors import OnnxSlimError, UsageError
from onnx_slim.ir import runtime
from onnx_slim.ir.runtime import CHECK, SessionSpec, create_session, quiet_onnxruntime_logs, run_session


def test_the_spec_sets_threads_providers_and_optimization():
    options = SessionSpec(threads=2).session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    assert CHECK.session_options().graph_optimization_level.name == "ORT_DISABLE_ALL"
    session = create_session(conv_chain((4,)), SessionSpec(threads=1))
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_threads_below_one_are_refused():
    with pytest.raises(UsageError, match="threads must be at least 1"):
        SessionSpec(threads=0)


def test_a_spec_from_options_hands_providers_and_their_options_to_onnxruntime(monkeypatch):
    made = []
    real = runtime.ort.InferenceSession

    def recording(model, options, providers):
        made.append(providers)
        return real(model, options, providers=providers)

    monkeypatch.setattr(runtime.ort, "InferenceSession", recording)
    spec = SessionSpec.of(threads=1, providers=["cpu"], provider_options=["use_arena=0"])

    create_session(conv_chain((4,)), spec)

    assert spec.providers == ("CPUExecutionProvider",) and spec.device is None
    assert made == [[("CPUExecutionProvider", {"use_arena": "0"})]]


def test_a_gpu_spec_names_its_device():
    spec = SessionSpec(providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
                       provider_options=(("CUDAExecutionProvider", (("device_id", "1"),)),))
    assert spec.device == ("cuda", 1)
    assert SessionSpec(providers=("TensorrtExecutionProvider", "CPUExecutionProvider")).device == ("cuda", 0)


def test_a_provider_onnxruntime_could_not_start_is_an_error_not_a_silent_cpu_run(monkeypatch):
    class FellBack:  # what a GPU build does when the CUDA libraries are missing
        def __init__(self, model, options, providers):
            pass

        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(runtime.ort, "InferenceSession", FellBack)
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    spec = SessionSpec(providers=("CUDAExecutionProvider", "CPUExecutionProvider"))

    with pytest.raises(OnnxSlimError, match="could not start CUDAExecutionProvider .*has CPUExecutionProvider"):
        create_session(conv_chain((4,)), spec)


def _fails_at_run_time() -> onnx.ModelProto:
    """A Reshape whose target does not fit the input: onnxruntime loads it and fails when it runs."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([4, 4], np.int64), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("verbose", [False, True])
def test_onnxruntime_errors_reach_the_user_once_as_our_error_and_its_log_only_with_debug(capfd, verbose):
    quiet_onnxruntime_logs(verbose=verbose)
    try:
        with pytest.raises(OnnxSlimError, match="Reshape"):
            run_session(create_session(_fails_at_run_time()), {"x": np.zeros((2, 3), np.float32)})
    finally:
        quiet_onnxruntime_logs(verbose=False)
    assert ("onnxruntime:" in capfd.readouterr().err) is verbose

