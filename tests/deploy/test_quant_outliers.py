"""Activation outliers before int8: SmoothQuant scales keep the float function, lower the int8 error, and layers
that stay too coarse are kept float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_slim.deploy.quant_outliers import _add_rows, _Capture, find_groups, prepare_for_int8
from onnx_slim.deploy.quantize import quantize_model
from onnx_slim.errors import UsageError
from onnx_slim.ir.inputs import random_inputs
from onnx_slim.ir.runtime import create_session, run_session

HIDDEN, WIDE, OUT, TOKENS = 16, 32, 8, 6


def outlier_encoder(massive: float = 0.0) -> onnx.ModelProto:
    """LayerNorm whose scale makes channel 0 ~30x the others -> q and k MatMuls (one activation, two layers)
    -> Add -> Relu -> fc MatMul -> output. `massive` > 0 adds that value to one channel of the fc's input on
    the first token only (the "massive activation" a few tokens of real encoders carry)."""
    rng = np.random.default_rng(0)
    gamma = np.ones(HIDDEN, np.float32)
    gamma[0] = 30.0
    mask = np.zeros((TOKENS, WIDE), np.float32)
    mask[0, 3] = massive
    initializers = [
        numpy_helper.from_array(gamma, "ln.scale"),
        numpy_helper.from_array(np.zeros(HIDDEN, np.float32), "ln.bias"),
        numpy_helper.from_array((0.3 * rng.standard_normal((HIDDEN, WIDE))).astype(np.float32), "q.weight"),
        numpy_helper.from_array((0.3 * rng.standard_normal((HIDDEN, WIDE))).astype(np.float32), "k.weight"),
        numpy_helper.from_array((0.3 * rng.standard_normal((WIDE, OUT))).astype(np.float32), "fc.weight"),
        numpy_helper.from_array(mask, "massive"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln.scale", "ln.bias"], ["normed"], name="ln", axis=-1),
        helper.make_node("MatMul", ["normed", "q.weight"], ["q_out"], name="q"),
        helper.make_node("MatMul", ["normed", "k.weight"], ["k_out"], name="k"),
        helper.make_node("Add", ["q_out", "k_out"], ["summed"], name="add"),
        helper.make_node("Relu", ["summed"], ["relu_out"], name="relu"),
        helper.make_node("Add", ["relu_out", "massive"], ["hidden"], name="massive_add"),
        helper.make_node("MatMul", ["hidden", "fc.weight"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "outlier_encoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", TOKENS, HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", TOKENS, OUT])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def batches(count: int = 4, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((8, TOKENS, HIDDEN)).astype(np.float32)} for _ in range(count)]


def outputs(model, feeds) -> np.ndarray:
    return run_session(create_session(model), feeds)["y"]


def row_error(model, reference_model, feeds) -> float:
    reference, candidate = outputs(reference_model, feeds), outputs(model, feeds)
    return float((np.linalg.norm(candidate - reference, axis=-1) / np.linalg.norm(reference, axis=-1)).mean())


def test_smoothing_keeps_the_float_function_and_leaves_the_model_alone():
    model = outlier_encoder()
    before = model.SerializeToString()

    prepared, report = prepare_for_int8(model, batches())

    assert model.SerializeToString() == before
    assert "normed" in report.smoothed and report.smoothed["normed"] > 0  # the outlier channel is migrated
    assert len(report.inserted) == len(report.smoothed)
    muls = [node for node in prepared.graph.node if node.name in report.inserted]
    assert all(node.op_type == "Mul" for node in muls)
    readers = {node.name: node.input[0] for node in prepared.graph.node if node.op_type == "MatMul"}
    assert readers["q"] == readers["k"] == next(m.output[0] for m in muls if m.input[0] == "normed")
    held_out = batches(1, seed=9)[0]
    np.testing.assert_allclose(outputs(prepared, held_out), outputs(model, held_out), rtol=1e-4, atol=1e-4)


def test_smoothing_lowers_the_int8_error_of_an_outlier_channel(tmp_path):
    source = tmp_path / "model.onnx"
    onnx.save(outlier_encoder(), str(source))
    held_out = batches(2, seed=9)

    errors = {}
    for smooth in (False, True):
        output = tmp_path / f"q_{smooth}.onnx"
        report = quantize_model(source, output, mode="static", calibration=batches(), smooth_outliers=smooth,
                                measure=False)
        quantized = onnx.load(str(output))
        errors[smooth] = np.mean([row_error(quantized, outlier_encoder(), feeds) for feeds in held_out])
        assert bool(report.smoothed) == smooth
        # Static int8 of a MatMul model quantizes the MatMuls only: no quantized input reaches Add or Relu.
        producers = {out: node.op_type for node in quantized.graph.node for out in node.output}
        for node in quantized.graph.node:
            if node.op_type in ("Add", "Relu", "LayerNormalization"):
                assert all(producers.get(name) != "DequantizeLinear" for name in node.input), node.name
    assert errors[True] < 0.5 * errors[False], errors


def test_layers_whose_simulated_error_stays_high_are_kept_float(tmp_path):
    model = outlier_encoder(massive=3000.0)

    _, report = prepare_for_int8(model, batches())

    assert report.layer_errors["fc"] > 0.05 > max(report.layer_errors["q"], report.layer_errors["k"])
    assert report.float_layers == ["fc"]
    _, loose = prepare_for_int8(model, batches(), max_error=1.0)
    assert loose.float_layers == []

    source = tmp_path / "model.onnx"
    onnx.save(model, str(source))
    quantize_report = quantize_model(source, tmp_path / "q.onnx", mode="dynamic", calibration=batches(),
                                     measure=False)
    assert quantize_report.float_layers == ["fc"]
    assert not any("calibration data not used" in w for w in quantize_report.warnings)  # dynamic used it
    quantized = onnx.load(str(tmp_path / "q.onnx"))
    names = {node.name: node.op_type for node in quantized.graph.node}
    assert names["fc"] == "MatMul"  # still the float MatMul
    assert any(op == "MatMulInteger" for op in names.values())  # q and k quantized

    loose_report = quantize_model(source, tmp_path / "q_loose.onnx", mode="dynamic", calibration=batches(),
                                  measure=False, max_layer_error=1.0)
    assert loose_report.float_layers == [] and loose_report.smoothed


def test_max_layer_error_must_not_be_negative(tmp_path):
    source = tmp_path / "model.onnx"
    onnx.save(outlier_encoder(), str(source))
    with pytest.raises(UsageError, match="max_layer_error"):
        quantize_model(source, tmp_path / "q.onnx", mode="dynamic", calibration=batches(), max_layer_error=-0.1)
    assert not (tmp_path / "q.onnx").exists()


def test_a_shared_weight_is_not_scaled():
    model = outlier_encoder()
    for node in model.graph.node:
        if node.name == "k":
            node.input[1] = "q.weight"  # q and k share one weight: scaling it for one reader changes the other
        if node.name == "fc":
            node.input[1] = "q.weight"

    assert [group.activation for group in find_groups(model)] == []


def test_a_weight_listed_as_graph_input_is_not_scaled():
    model = outlier_encoder()
    model.graph.input.append(helper.make_tensor_value_info("fc.weight", TensorProto.FLOAT, [WIDE, OUT]))

    groups = {group.activation: [layer.node.name for layer in group.layers] for group in find_groups(model)}

    assert groups == {"normed": ["q", "k"]}  # the caller may feed fc.weight: hidden is left alone


def test_row_sample_is_bounded_and_ranges_cover_every_row():
    rng = np.random.default_rng(0)
    capture = _Capture()
    chunks = [rng.standard_normal((50, 4)).astype(np.float32) for _ in range(10)]
    chunks[7][3, 2] = 99.0
    for chunk in chunks:
        _add_rows(capture, chunk, cap=64, rng=rng)

    assert capture.rows.shape == (64, 4) and capture.seen == 500
    everything = np.concatenate(chunks)
    np.testing.assert_array_equal(capture.high, everything.max(0))
    np.testing.assert_array_equal(capture.low, everything.min(0))
    late = {row.tobytes() for chunk in chunks[5:] for row in chunk}
    assert sum(row.tobytes() in late for row in capture.rows) > 10  # later batches are sampled too


MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize("name", ["bert_torchscript", "transformer_torchscript", "transformer_dynamo",
                                  "vit_torchscript", "vit_dynamo"])
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_transformer_exports_are_smoothed_and_keep_their_outputs(tmp_path, name, mode):
    """Both exporters' transformers (BERT with dynamic batch and sequence, fused-qkv ViT): every MatMul/Gemm
    activation is looked at, the int8 model runs at other batch sizes and stays close to the float one."""
    source = MODELS / f"{name}.onnx"
    model = onnx.load(str(source))
    shapes = {"input_ids": (4, 12), "attention_mask": (4, 12), "token_type_ids": (4, 12)} if "bert" in name else None
    calibration = [random_inputs(model, batch=4, seed=seed, shapes=shapes) for seed in range(3)]

    report = quantize_model(source, tmp_path / "q.onnx", mode=mode, calibration=calibration, measure=False)

    assert report.mode == mode and report.quantized_ops
    assert not any("not handled" in warning or "renamed or fused" in warning for warning in report.warnings)
    _, outliers = prepare_for_int8(model, calibration)
    matmuls = [node.name for node in model.graph.node if node.op_type in ("MatMul", "Gemm")]
    weighted = [name for name in matmuls if name in outliers.layer_errors]
    assert weighted and len(weighted) >= len(matmuls) // 2  # the activation x activation MatMuls are not
    held_out = random_inputs(model, batch=3, seed=9, shapes={k: (3, 7) for k in shapes} if shapes else None)
    reference = run_session(create_session(model), held_out)
    quantized = run_session(create_session(onnx.load(str(tmp_path / "q.onnx"))), held_out)
    for output, value in reference.items():
        assert quantized[output].shape == value.shape
        flat_ref, flat_q = value.reshape(len(value), -1), quantized[output].reshape(len(value), -1)
        cosine = (flat_ref * flat_q).sum(1) / np.linalg.norm(flat_ref, axis=1) / np.linalg.norm(flat_q, axis=1)
        assert cosine.min() > 0.95, (output, cosine)


def test_quantizing_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch):
    """onnxruntime's symbolic shape inference gives up on this BERT export and saves its partial model
    (sym_shape_infer_temp.onnx + .data) into the current directory; it must land in the scratch folder."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    model = onnx.load(str(MODELS / "bert_torchscript.onnx"))
    shapes = {name: (2, 12) for name in ("input_ids", "attention_mask", "token_type_ids")}

    quantize_model(MODELS / "bert_torchscript.onnx", "q.onnx", mode="static", measure=False,
                   calibration=[random_inputs(model, batch=2, seed=0, shapes=shapes)])

    assert sorted(path.name for path in work.iterdir()) == ["q.onnx"]
