"""Real exports whose shapes are computed at run time: the committed BERT encoder, and
efficientnet_lite0 from the real-model cache (built by scripts/real_models.py, see scripts/REAL_MODELS.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_slim.channels.analysis import analyze
from onnx_slim.ir.inputs import random_inputs
from onnx_slim.ir.runtime import create_session, run_session
from onnx_slim.pipeline.prune import prune

BERT = Path(__file__).parent.parent / "models" / "bert_torchscript.onnx"
EFFICIENTNET = Path(__file__).parent.parent / ".cache" / "real" / "efficientnet_lite0"

needs_efficientnet = pytest.mark.skipif(not (EFFICIENTNET / "model.onnx").exists(),
                                        reason="run scripts/real_models.py --only efficientnet_lite0 first")


@needs_efficientnet
def test_efficientnet_lite0_torchscript_padding_is_understood():
    """TorchScript writes static "same" padding as a shape-computation chain feeding each Pad:
    once folded, every Conv is counted (385M MACs, the script's own count) and its groups prune."""
    analysis = analyze(EFFICIENTNET / "model.onnx")
    assert 380e6 < analysis.cost.macs < 390e6
    assert not analysis.cost.uncounted
    assert analysis.prunable_macs_fraction() > 0.9


@needs_efficientnet
def test_efficientnet_lite0_prunes_and_runs_on_its_test_inputs():
    original = onnx.load(str(EFFICIENTNET / "model.onnx"))
    pruned, report = prune(original, ratio=0.3)
    assert report.macs_after < 0.7 * report.macs_before
    onnx.checker.check_model(pruned, full_check=True)
    assert pruned.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    with np.load(EFFICIENTNET / "test.npz") as data:
        feeds = {"input": data["input"][:3]}
    before = run_session(create_session(original), feeds)
    after = run_session(create_session(pruned), feeds)
    assert after["logits"].shape == before["logits"].shape == (3, 1000)
    assert np.isfinite(after["logits"]).all()


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_bert_encoder_macs_are_counted_at_the_analysis_shapes():
    """Static inference loses every shape after the position-id Slice; one onnxruntime run measures them."""
    analysis = analyze(BERT)
    assert analysis.shapes_measured
    assert not analysis.cost.uncounted
    tokens, hidden, ffn = 64, 32, 128  # batch 1, symbolic sequence at 64
    per_token = 4 * hidden * hidden + 2 * hidden * ffn + 2 * tokens * hidden  # q, k, v, o; FFN; attention
    assert analysis.cost.macs == 2 * tokens * per_token
    ffn_groups = [group for group in analysis.channels.prunable_groups() if group.channels == ffn]
    assert len(ffn_groups) == 2
    # Two heads of 16 per layer: q, k, v and the output projection, and the attention MatMuls.
    head_groups = [group for group in analysis.channels.prunable_groups() if group.channels == 2]
    assert [group.unit for group in head_groups] == [16, 16]
    assert analysis.prunable_macs_fraction() == pytest.approx(1.0)


def test_bert_encoder_prunes_its_ffn_and_keeps_symbolic_batch_and_sequence():
    from conftest import assert_lossless

    original = onnx.load(str(BERT))
    pruned, report = prune(original, target_macs=0.8)
    assert report.macs_after <= 0.8 * report.macs_before * 1.02
    for value in list(pruned.graph.input) + list(pruned.graph.output):
        assert _dims(value)[:2] == ["batch", "sequence"], value.name
    session = create_session(pruned)
    for batch, sequence in ((1, 7), (2, 33)):
        feeds = random_inputs(original, shapes={name: (batch, sequence) for name in
                                                ("input_ids", "attention_mask", "token_type_ids")})
        assert run_session(session, feeds)["last_hidden_state"].shape == (batch, sequence, 32)
    assert_lossless(original, 0.5)


def _inspect(capsys, *args) -> str:
    from onnx_slim.cli import main

    with pytest.raises(SystemExit) as done:
        main(["inspect", *map(str, args)])
        raise SystemExit(0)
    assert not done.value.code
    return capsys.readouterr().out


def test_inspect_says_when_shapes_were_measured(capsys):
    for path, measured in ((BERT, True), (BERT.parent / "digits_cnn.onnx", False)):
        assert ("measured by one onnxruntime run" in _inspect(capsys, path)) == measured
        assert json.loads(_inspect(capsys, "--json", path))["shapes_measured"] == measured
