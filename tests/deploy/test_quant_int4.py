"""int4 weight-only quantization of MatMul weights (onnxruntime's MatMulNBits)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from test_cli import run_cli
from test_quantize import conv_net, eval_batches, matmul_net

from onnx_slim.data.evaluate import evaluate
from onnx_slim.deploy.quantize import quantize_model
from onnx_slim.errors import UsageError
from onnx_slim.ir.inputs import random_inputs
from onnx_slim.ir.runtime import create_session, run_session

MODELS = Path(__file__).parents[2] / "models"


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_replaces_every_matmul_weight_and_agrees(tmp_path, symmetric):
    source = tmp_path / "mm.onnx"
    onnx.save(matmul_net(), str(source))

    report = quantize_model(source, tmp_path / "q.onnx", mode="int4", block_size=32, symmetric=symmetric,
                            measure=False)

    written = onnx.load(str(tmp_path / "q.onnx"))
    assert report.kept == "int4" and report.weight_type == "int4" and report.block_size == 32
    assert report.quantized_ops == {"MatMulNBits": 2}
    assert [node.op_type for node in written.graph.node].count("MatMul") == 0
    nbits = next(node for node in written.graph.node if node.op_type == "MatMulNBits")
    assert {a.name: a.i for a in nbits.attribute}["block_size"] == 32
    assert (len(nbits.input) > 3 and nbits.input[3] != "") == (not symmetric)  # zero points only when asymmetric
    assert report.size_after < 0.3 * report.size_before  # 4-bit weights plus one scale per 32 rows
    assert evaluate(source, tmp_path / "q.onnx", eval_batches(matmul_net()))["agreement"]["cosine"] > 0.99


def test_int4_without_matmul_weights_is_one_clear_error(capsys, tmp_path):
    with pytest.raises(UsageError, match="no MatMul with a constant 2-D weight"):
        quantize_model(conv_net(), tmp_path / "q.onnx", mode="int4")
    model = tmp_path / "conv.onnx"
    onnx.save(conv_net(), str(model))

    code, _, stderr = run_cli(capsys, "quantize", model, "-o", tmp_path / "q.onnx", "--mode", "int4", "--quiet")

    assert code == 2 and stderr.startswith("error: int4 quantizes MatMul weights") and len(stderr.splitlines()) == 1
    assert not (tmp_path / "q.onnx").exists()


def test_auto_skips_int4_on_a_model_without_matmul_weights_with_a_note(tmp_path):
    report = quantize_model(conv_net(), tmp_path / "q.onnx")

    assert "int4" not in [candidate["mode"] for candidate in report.candidates]
    assert any(note.startswith("int4: int4 quantizes MatMul weights") for note in report.skipped)


def test_bad_block_size_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="power of two of at least 16"):
        quantize_model(matmul_net(), tmp_path / "q.onnx", mode="int4", block_size=24)


def test_int4_on_the_bert_encoder_keeps_its_outputs(tmp_path):
    report = quantize_model(MODELS / "bert_torchscript.onnx", tmp_path / "q.onnx", mode="int4", measure=False)

    written = onnx.load(str(tmp_path / "q.onnx"))
    assert report.quantized_ops["MatMulNBits"] >= 6
    feeds = random_inputs(written, batch=2)
    reference = run_session(create_session(MODELS / "bert_torchscript.onnx"), feeds)
    outputs = run_session(create_session(written), feeds)
    assert {name: value.shape for name, value in outputs.items()} == {n: v.shape for n, v in reference.items()}
    assert report.agreement["cosine"] > 0.99
