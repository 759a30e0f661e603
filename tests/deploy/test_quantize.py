from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from graphs import runs_only_at_batch_one
from onnx import TensorProto, helper, numpy_helper

from onnx_slim.data.evaluate import evaluate
from onnx_slim.deploy import quant_int8
from onnx_slim.deploy.bench import cpu_info
from onnx_slim.deploy.quant_calibration import RANDOM_CALIBRATION_WARNING
from onnx_slim.deploy.quantize import (
    RANDOM,
    RANDOM_CALIBRATION,
    choose_mode,
    quantize_model,
    quantized_op_counts,
)
from onnx_slim.errors import InvalidModelError, OnnxSlimError, RuntimeCrash, UsageError
from onnx_slim.ir.inputs import random_inputs
from onnx_slim.ir.runtime import create_session, run_session


def conv_net(seed: int = 0, batch: int | str = "batch") -> onnx.ModelProto:
    """Three 3x3 Conv+Relu, global pooling, a classifier: ~24k weights, He-initialized."""
    rng = np.random.default_rng(seed)
    initializers, nodes = [], []

    def constant(name, array):
        initializers.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    x = "image"
    for index, (in_channels, out_channels, stride) in enumerate([(3, 16, 1), (16, 32, 1), (32, 64, 2)], start=1):
        fan_in = in_channels * 9
        weight = constant(f"conv_{index}.weight", rng.standard_normal((out_channels, in_channels, 3, 3)) * np.sqrt(2 / fan_in))
        bias = constant(f"conv_{index}.bias", 0.1 * rng.standard_normal(out_channels))
        nodes.append(helper.make_node(
            "Conv", [x, weight, bias], [f"conv_{index}_out"], name=f"conv_{index}",
            pads=[1, 1, 1, 1], strides=[stride, stride],
        ))
        nodes.append(helper.make_node("Relu", [f"conv_{index}_out"], [f"relu_{index}_out"], name=f"relu_{index}"))
        x = f"relu_{index}_out"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"))
    fc_weight = constant("fc.weight", rng.standard_normal((10, 64)) * np.sqrt(2 / 64))
    fc_bias = constant("fc.bias", 0.1 * rng.standard_normal(10))
    nodes.append(helper.make_node("Gemm", ["flat", fc_weight, fc_bias], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes, "conv_net",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def matmul_net(seed: int = 0) -> onnx.ModelProto:
    """A transformer-style MLP on [batch, 8, 64]: MatMul+Add, Relu, MatMul+Add (~33k weights)."""
    rng = np.random.default_rng(seed)
    initializers = [
        numpy_helper.from_array((rng.standard_normal((64, 256)) / 8).astype(np.float32), "fc1.weight"),
        numpy_helper.from_array((0.1 * rng.standard_normal(256)).astype(np.float32), "fc1.bias"),
        numpy_helper.from_array((rng.standard_normal((256, 64)) / 16).astype(np.float32), "fc2.weight"),
        numpy_helper.from_array((0.1 * rng.standard_normal(64)).astype(np.float32), "fc2.bias"),
    ]
    nodes = [
        helper.make_node("MatMul", ["tokens", "fc1.weight"], ["mm1"], name="fc1"),
        helper.make_node("Add", ["mm1", "fc1.bias"], ["add1"], name="fc1_bias"),
        helper.make_node("Relu", ["add1"], ["act"], name="act"),
        helper.make_node("MatMul", ["act", "fc2.weight"], ["mm2"], name="fc2"),
        helper.make_node("Add", ["mm2", "fc2.bias"], ["hidden"], name="fc2_bias"),
    ]
    graph = helper.make_graph(
        nodes, "matmul_net",
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", 8, 64])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", 8, 64])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def conv_path(tmp_path):
    path = tmp_path / "conv.onnx"
    onnx.save(conv_net(), str(path))
    return path


@pytest.fixture
def matmul_path(tmp_path):
    path = tmp_path / "matmul.onnx"
    onnx.save(matmul_net(), str(path))
    return path


def eval_batches(model: onnx.ModelProto, count: int = 4, batch: int = 8):
    return [random_inputs(model, batch=batch, seed=100 + index) for index in range(count)]


def producers(model: onnx.ModelProto) -> dict[str, str]:
    return {output: node.op_type for node in model.graph.node for output in node.output}


def test_static_qdq_conv_model_is_smaller_runs_and_agrees(conv_path, tmp_path):
    output = tmp_path / "conv.int8.onnx"

    report = quantize_model(conv_path, output, calibration=RANDOM, measure=False)

    assert (report.mode, report.format, report.method) == ("static", "qdq", "minmax")
    assert report.per_channel  # Conv carries the MACs
    assert report.calibration == RANDOM_CALIBRATION
    assert report.preprocessed and report.warnings == [RANDOM_CALIBRATION_WARNING]
    quantized = onnx.load(str(output))
    onnx.checker.check_model(quantized, full_check=True)
    assert report.quantized_ops == quantized_op_counts(quantized)
    assert report.quantized_ops["QuantizeLinear"] > 0 and report.quantized_ops["DequantizeLinear"] > 0
    assert report.size_before == conv_net().ByteSize()
    assert report.size_after == os.path.getsize(output) < report.size_before / 2
    feeds = random_inputs(quantized, batch=2)
    assert run_session(create_session(output), feeds)["logits"].shape == (2, 10)
    result = evaluate(conv_path, output, eval_batches(conv_net()))["agreement"]
    assert result["cosine"] > 0.99
    assert result["samples"] == 32


def test_cpu_defaults_follow_vnni_detection(conv_path, tmp_path):
    cpu = cpu_info()
    report = quantize_model(conv_path, tmp_path / "q.onnx", calibration=RANDOM, measure=False)

    x86 = cpu["machine"].lower() in ("x86_64", "amd64")
    assert report.reduce_range == (x86 and not cpu["vnni"])
    assert report.activation_type == ("uint8" if x86 else "int8")
    assert report.weight_type == "int8"
    assert report.cpu_flags == cpu["int8_flags"]


def test_dynamic_mode_on_matmul_net(matmul_path, tmp_path):
    output = tmp_path / "matmul.int8.onnx"

    report = quantize_model(matmul_path, output, measure=False)  # auto picks dynamic

    assert report.mode == "dynamic"
    assert report.method is None and report.calibration.startswith("none")
    assert report.quantized_ops.get("MatMulInteger") == 2
    assert report.quantized_ops.get("DynamicQuantizeLinear", 0) >= 1
    assert report.size_after < report.size_before / 2
    result = evaluate(matmul_path, output, eval_batches(matmul_net()))["agreement"]
    assert result["cosine"] > 0.99


def test_auto_mode_choices():
    assert choose_mode(conv_net())[0] == "static"
    assert choose_mode(matmul_net())[0] == "dynamic"


def test_static_mode_on_matmul_net_with_given_calibration(matmul_path, tmp_path):
    calibration = (random_inputs(matmul_net(), batch=5, seed=seed) for seed in range(2))  # a one-shot generator

    report = quantize_model(
        matmul_path, tmp_path / "q.onnx", mode="static", calibration=calibration, calibration_batch_size=4,
    )

    assert report.mode == "static" and report.mode_reason == "requested"
    assert report.calibration == "10 samples in 3 batches of up to 4"  # re-batched 5+5 -> 4, 4, 2
    assert report.per_channel  # MatMul-heavy: per-column weights
    assert report.quantized_ops["QuantizeLinear"] > 0
    assert report.smoothed == {} and any("one-shot iterator" in w for w in report.warnings)  # cannot read it twice


def test_fixed_batch_model_gets_calibration_and_evaluation_one_sample_at_a_time(tmp_path):
    model = conv_net(batch=1)
    source = tmp_path / "fixed.onnx"
    onnx.save(model, str(source))
    batches = [{"image": np.random.default_rng(seed).standard_normal((3, 3, 16, 16))} for seed in range(2)]

    report = quantize_model(source, tmp_path / "q.onnx", calibration=batches)

    assert report.calibration == "6 samples in 6 batches of up to 1"
    singles = [{"image": b["image"][i:i + 1].astype(np.float32)} for b in batches for i in range(3)]
    result = evaluate(source, tmp_path / "q.onnx", singles)["agreement"]
    assert result["samples"] == 6 and result["cosine"] > 0.99


def test_qoperator_format_and_exclude_keeps_node_float(conv_path, tmp_path):
    output = tmp_path / "q.onnx"

    report = quantize_model(conv_path, output, quant_format="qoperator", exclude=["conv_3", "nothing*"],
                            calibration=RANDOM, measure=False)

    assert report.format == "qoperator"
    assert report.excluded_nodes == ["conv_3"]
    assert any("nothing*" in warning for warning in report.warnings)
    quantized = onnx.load(str(output))
    op_types = [node.op_type for node in quantized.graph.node]
    assert op_types.count("QLinearConv") == 2
    kept = next(node for node in quantized.graph.node if node.name == "conv_3")
    assert kept.op_type == "Conv"
    weights = {init.name: init for init in quantized.graph.initializer}
    assert weights[kept.input[1]].data_type == TensorProto.FLOAT


def test_exclude_in_qdq_leaves_the_weight_float(conv_path, tmp_path):
    output = tmp_path / "q.onnx"

    quantize_model(conv_path, output, exclude=["conv_*3"], calibration=RANDOM, measure=False)

    quantized = onnx.load(str(output))
    produced_by = producers(quantized)
    nodes = {node.name: node for node in quantized.graph.node}
    assert produced_by.get(nodes["conv_3"].input[1]) is None  # plain float initializer
    assert produced_by[nodes["conv_1"].input[1]] == "DequantizeLinear"


def test_refuses_existing_output_without_force(conv_path, tmp_path):
    output = tmp_path / "q.onnx"
    output.write_bytes(b"keep me")

    with pytest.raises(UsageError, match="exists: pass --force"):
        quantize_model(conv_path, output)
    assert output.read_bytes() == b"keep me"

    quantize_model(conv_path, output, force=True)
    assert onnx.load(str(output)).graph.node


def test_refuses_output_equal_to_input(conv_path):
    with pytest.raises(UsageError, match="output is the input"):
        quantize_model(conv_path, conv_path, force=True)


def test_refuses_already_quantized_input(conv_path, tmp_path):
    quantized = tmp_path / "q.onnx"
    quantize_model(conv_path, quantized, calibration=RANDOM, measure=False)

    with pytest.raises(InvalidModelError, match="already quantized.*float model"):
        quantize_model(quantized, tmp_path / "qq.onnx")


def test_bad_options_are_usage_errors(conv_path, tmp_path):
    with pytest.raises(UsageError, match="mode must be one of"):
        quantize_model(conv_path, tmp_path / "q.onnx", mode="fast")
    with pytest.raises(UsageError, match="method must be one of"):
        quantize_model(conv_path, tmp_path / "q.onnx", method="kl")


def failing_calibration(model):
    yield random_inputs(model, batch=2, seed=0)
    raise RuntimeError("calibration source broke")


def test_failure_leaves_no_output_and_keeps_an_existing_one(conv_path, tmp_path):
    fresh = tmp_path / "fresh.onnx"
    with pytest.raises(OnnxSlimError, match="calibration source broke"):
        quantize_model(conv_path, fresh, mode="static", calibration=failing_calibration(conv_net()))
    assert not fresh.exists()

    existing = tmp_path / "existing.onnx"
    existing.write_bytes(b"previous result")
    with pytest.raises(OnnxSlimError):
        quantize_model(conv_path, existing, calibration=failing_calibration(conv_net()), force=True)
    assert existing.read_bytes() == b"previous result"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["conv.onnx", "existing.onnx"]


def test_empty_calibration_is_a_usage_error(conv_path, tmp_path):
    with pytest.raises(UsageError, match="calibration data is empty"):
        quantize_model(conv_path, tmp_path / "q.onnx", calibration=[])


def test_calibration_missing_an_input_is_a_usage_error(conv_path, tmp_path):
    with pytest.raises(UsageError, match="lacks model inputs"):
        quantize_model(conv_path, tmp_path / "q.onnx", calibration=[{"pixels": np.zeros((1, 3, 16, 16))}])


def test_preprocessing_failure_falls_back_with_a_warning(conv_path, tmp_path, monkeypatch):
    def broken_pre_process(*args, **kwargs):
        raise RuntimeError("symbolic shape inference exploded")

    monkeypatch.setattr(quant_int8, "quant_pre_process", broken_pre_process)

    report = quantize_model(conv_path, tmp_path / "q.onnx", calibration=RANDOM, measure=False)

    assert not report.preprocessed
    assert any("pre-processing failed" in warning for warning in report.warnings)
    assert report.quantized_ops["QuantizeLinear"] > 0


def test_model_proto_input_and_json_report(tmp_path):
    model = conv_net()

    report = quantize_model(model, tmp_path / "q.onnx", method="percentile", per_channel=False,
                            calibration=RANDOM)

    data = json.loads(json.dumps(report.to_dict()))
    assert data["method"] == "percentile" and data["per_channel"] is False
    assert data["output_path"] == str(tmp_path / "q.onnx")
    assert model.graph.node[0].op_type == "Conv"  # the caller's model is untouched


def paddle_flatten_net() -> onnx.ModelProto:
    """Conv -> global pool -> flatten as paddle2onnx writes it (the target [N, C] computed from the
    pooled tensor's Shape through Slice, Squeeze, a Reshape to a scalar, Unsqueeze and Concat) ->
    MatMul + Add, with no shape annotations (as a pruned model has them after re-inference)."""
    from graphs import Graph

    g = Graph(seed=2, opset=13)
    pooled = g.node("GlobalAveragePool", [g.relu(g.conv(g.input("x", ["N", 3, 8, 8]), 6, name="conv"))], "pool")
    batch = g.node("Squeeze", [g.node("Slice", [g.node("Shape", [pooled], "shape"), g.ints("zero", [0]),
                                                 g.ints("one", [1])], "first"), g.ints("axis0", [0])], "squeeze")
    scalar = g.node("Reshape", [batch, g.ints("scalar_shape", np.zeros(0, dtype=np.int64))], "to_scalar")
    target = g.node("Concat", [g.node("Unsqueeze", [scalar, g.ints("axis0b", [0])], "unsqueeze"),
                               g.ints("features", [6])], "target", axis=0)
    flat = g.node("Reshape", [pooled, target], "flatten")
    model = g.build(g.node("Add", [g.node("MatMul", [flat, g.weight("fc_w", [6, 2])], "fc"),
                                   g.weight("fc_b", [2])], "logits"))
    del model.graph.value_info[:]
    return model


def test_preprocessing_that_changes_the_model_is_not_used(tmp_path):
    """onnxruntime's symbolic shape inference reads the computed flatten target as rank 1 and its
    optimizer fuses MatMul + Add into a Gemm between Reshapes to batch 1: calibration at batch 8
    failed ("requested shape {1,6}"). The pre-processed model is checked against the float one at
    batch 1 and 2 and the variant without symbolic inference taken instead."""
    model = paddle_flatten_net()
    calibration = [random_inputs(model, batch=8, seed=index) for index in range(4)]
    output = tmp_path / "q.onnx"
    report = quantize_model(model, output, mode="static", calibration=calibration, measure=False)
    assert report.preprocessed
    feeds = random_inputs(model, batch=3)
    assert run_session(create_session(output), feeds)["logits"].shape == (3, 2)


def test_static_int8_leaves_a_final_softmax_float(tmp_path):
    """A Softmax over many classes writes probabilities far below one int8 step (1/255): quantized,
    they all read 0. The op that writes the output stays float; the MAC-carrying Gemm is int8."""
    from graphs import Graph

    g = Graph(seed=1)
    features = g.relu(g.conv(g.input("x", ["N", 3, 32, 32]), 32, name="conv"))  # Conv-heavy: every op type is int8
    logits = g.gemm(g.flatten(g.gap(features)), 2000, name="fc")
    model = g.build(g.node("Softmax", [logits], "probabilities", axis=1))
    output = tmp_path / "q.onnx"
    report = quantize_model(model, output, mode="static", calibration=eval_batches(model), measure=False)
    quantized = onnx.load(str(output))
    assert producers(quantized)["probabilities"] == "Softmax"  # no DequantizeLinear after it
    assert report.quantized_ops["QuantizeLinear"] > 0
    feeds = random_inputs(model, batch=4, seed=9)
    expected = run_session(create_session(model), feeds)["probabilities"]
    got = run_session(create_session(output), feeds)["probabilities"]
    assert got.min() > 0 and np.abs(got - expected).max() < 0.2 * expected.max()


def test_the_preprocessing_check_allows_rounding_but_not_a_changed_output():
    """BatchNorm folding moves random-input outputs by float rounding (PicoDet's box logits of +-184
    by 8e-3, which a fixed 1e-4 tolerance rejected, so quantization ran on un-folded BatchNorm);
    one changed row, or NaN where there was none, is a real change."""
    from onnx_slim.deploy.quant_int8 import _close

    expected = np.random.default_rng(0).standard_normal((2, 32)) * 184
    assert _close(expected + 8e-3, expected)
    changed = expected.copy()
    changed[1] = changed[0]
    assert not _close(changed, expected)
    with_nan = expected.copy()
    with_nan[0, 0] = np.nan
    assert _close(with_nan, with_nan) and not _close(with_nan, expected)


@pytest.mark.parametrize("input_shapes", [None, {"x": [1, 3, 8, 8]}])
def test_a_model_that_only_runs_at_batch_one_is_checked_at_batch_one(tmp_path, input_shapes):
    """Without data the output check runs random inputs: at the sizes given, batch included, or, when
    the model fails at 8 samples (a batch of 1 fixed inside), at one."""
    source = tmp_path / "batch1.onnx"
    onnx.save(runs_only_at_batch_one(), source)

    report = quantize_model(source, tmp_path / "q.onnx", mode="dynamic", measure=False, input_shapes=input_shapes)

    assert report.mode == "dynamic"
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    (output,) = run_session(create_session(str(tmp_path / "q.onnx")), feeds).values()
    assert output.shape == (1, 2, 8, 8)


def test_without_cleanup_the_written_model_is_still_in_topological_order(matmul_path, tmp_path, monkeypatch):
    """onnxruntime's quantizer can write a node before a producer it reads (seen on silero-vad's decoder,
    whose If bodies read outer tensors): here it writes the nodes in reverse."""
    quantize = quant_int8._quantize_dynamic

    def reversed_order(source, target, settings, excluded):
        quantize(source, target, settings, excluded)
        model = onnx.load(str(target))
        nodes = list(model.graph.node)[::-1]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.save(model, str(target))

    monkeypatch.setattr(quant_int8, "_quantize_dynamic", reversed_order)
    output = tmp_path / "q.onnx"

    quantize_model(matmul_path, output, mode="dynamic", measure=False, cleanup=False)

    onnx.checker.check_model(str(output), full_check=True)


def test_when_onnxruntime_crashes_on_the_int8_model_static_is_one_error_and_auto_goes_on(conv_path, tmp_path,
                                                                                          monkeypatch):
    """onnxruntime 1.32 segfaulted running one static int8 model (its fused QLinearConcat, on a pruned EEG
    detector): the first run is in a child process, so the command can say so and clean up."""
    survives = quant_int8.check_survives_a_run

    def crash_on_static(model, feeds, session, folder):
        if folder.name == "static":
            raise RuntimeCrash("onnxruntime crashed (SIGSEGV) running the model")
        return survives(model, feeds, session, folder)

    monkeypatch.setattr(quant_int8, "check_survives_a_run", crash_on_static)
    calibration = [{"image": np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)}]

    with pytest.raises(RuntimeCrash, match=r"SIGSEGV.*static int8 model"):
        quantize_model(conv_path, tmp_path / "static.onnx", mode="static", calibration=calibration, measure=False)
    report = quantize_model(conv_path, tmp_path / "auto.onnx", mode="auto", calibration=calibration)  # measures both

    assert any(line.startswith("static: onnxruntime crashed") for line in report.skipped)
    assert "dropped: static: onnxruntime crashed (SIGSEGV)" in report.mode_reason  # the terminal's first line
    assert report.mode != "static"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["auto.onnx", "conv.onnx"]  # no scratch left
