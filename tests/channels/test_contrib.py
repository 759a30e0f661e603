"""onnxruntime's fused transformer ops, in the zoo BERT as onnxruntime's own transformer optimizer
rewrites it (models/bert_ort_fused.onnx: Attention, SkipLayerNormalization, BiasGelu,
EmbedLayerNormalization)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import assert_lossless, group_with, weight_dims
from graphs import Graph

from onnx_slim.channels.analysis import analyze
from onnx_slim.ir.runtime import create_session, run_session
from onnx_slim.ops.cost import model_cost
from onnx_slim.ops.specs import ATTENTION_PART, CONTRIB_DOMAIN
from onnx_slim.pipeline.prune import prune

FUSED_BERT = Path(__file__).parent.parent.parent / "models" / "bert_ort_fused.onnx"


@pytest.fixture(scope="module")
def fused_bert() -> onnx.ModelProto:
    """The zoo BERT as onnxruntime's optimizer fuses it (scripts/make_models.py --bert)."""
    model = onnx.load(str(FUSED_BERT))
    fused = {node.op_type for node in model.graph.node if node.domain == CONTRIB_DOMAIN}
    assert {"Attention", "SkipLayerNormalization", "BiasGelu", "EmbedLayerNormalization"} <= fused, fused
    return model


def feeds(batch: int, sequence: int) -> dict:
    rng = np.random.default_rng(batch * 100 + sequence)
    mask = np.ones((batch, sequence), dtype=np.int64)
    mask[0, sequence // 2:] = 0
    return {"input_ids": rng.integers(0, 100, (batch, sequence)), "attention_mask": mask,
            "token_type_ids": np.zeros((batch, sequence), dtype=np.int64)}


def attention_nodes(model):
    return [node for node in model.graph.node if node.op_type == "Attention"]


def test_fused_heads_and_ffn_are_prunable_and_the_stream_is_not(fused_bert):
    analysis = analyze(fused_bert)
    for node in attention_nodes(analysis.model):
        heads = group_with(analysis, node.name)
        assert heads.prunable and heads.channels == 2 and heads.unit == 16
    ffn = [g for g in analysis.channels.prunable_groups() if g.channels == 128]
    assert len(ffn) == 2
    stream = group_with(analysis, "/bert/encoder/layer.0/output/dense/MatMul")
    assert not stream.prunable and "statistics span" in stream.frozen[0].reason
    assert analysis.prunable_macs_fraction() > 0.9


def test_pruning_fused_heads_rewrites_num_heads_and_keeps_dynamic_axes(fused_bert):
    pruned, report = prune(fused_bert, ratio=0.5)
    for node in attention_nodes(pruned):
        assert [a.i for a in node.attribute if a.name == "num_heads"] == [1]
        assert weight_dims(pruned, node.name, 1) == (32, 48)
        assert weight_dims(pruned, node.name, 2) == (48,)
    assert report.macs_after == model_cost(pruned).macs
    before, after = create_session(fused_bert), create_session(pruned)
    for batch, sequence in [(2, 16), (1, 7), (3, 40)]:
        expected, got = run_session(before, feeds(batch, sequence)), run_session(after, feeds(batch, sequence))
        assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in expected.items()}


def test_zeroed_fused_heads_are_removed_losslessly(fused_bert):
    pruned = assert_lossless(fused_bert, 0.5)
    assert all(weight_dims(pruned, node.name, 1) == (32, 48) for node in attention_nodes(pruned))


def test_fused_attention_macs_shrink_with_the_heads(fused_bert):
    cost = model_cost(fused_bert)
    name = attention_nodes(fused_bert)[0].name
    tokens = 64  # the default analysis sequence length
    assert cost.node_macs[name] == tokens * 32 * 96
    assert cost.node_macs[name + ATTENTION_PART] == 2 * tokens * tokens * 32
    pruned, _ = prune(fused_bert, ratio=0.5)
    after = model_cost(pruned)
    assert after.node_macs[name + ATTENTION_PART] == cost.node_macs[name + ATTENTION_PART] // 2


def test_the_stream_through_fused_layer_norms_is_one_group_on_request(fused_bert):
    """With --prune-layernorm the embeddings, every SkipLayerNormalization and the attention
    inputs are one hidden-size group: frozen here only because it is the model's output."""
    analysis = analyze(fused_bert, prune_layernorm=True)
    stream = group_with(analysis, "/bert/encoder/layer.0/output/dense/MatMul")
    assert stream.channels == 32
    assert {m.use.op_type for m in stream.producers} >= {"EmbedLayerNormalization", "MatMul"}
    assert {m.use.op_type for m in stream.consumers} >= {"Attention", "MatMul"}
    assert [reason.reason for reason in stream.frozen] == ["feeds a model output"]


def test_attention_bias_over_the_heads_freezes_them(fused_bert):
    model = onnx.ModelProto()
    model.CopyFrom(fused_bert)
    node = attention_nodes(model)[0]
    bias = onnx.numpy_helper.from_array(np.zeros((1, 2, 64, 64), dtype=np.float32), "relative_bias")
    model.graph.initializer.append(bias)
    node.input.extend([""] * (5 - len(node.input)) + ["relative_bias"])
    analysis = analyze(model)
    producers = {m.use.node for g in analysis.channels.prunable_groups() for m in g.producers}
    assert node.name not in producers  # its heads are left whole, and inspect says why
    heads = group_with(analysis, node.name)
    assert heads.channels == 2 and any("attention bias" in reason.reason for reason in heads.frozen)
    assert attention_nodes(model)[1].name in producers
    pruned, _ = prune(model, ratio=0.5)
    assert weight_dims(pruned, node.name, 1) == (32, 96)


def test_same_op_names_in_another_domain_are_not_understood():
    g = Graph()
    g.extra_opsets["custom.domain"] = 1
    h = g.matmul(g.input("x", [1, 4, 8]), 16, name="fc1")
    gelu = g.node("BiasGelu", [h, g.weight("gelu_bias", [16])], "bias_gelu", domain="custom.domain")
    model = g._model([onnx.helper.make_tensor_value_info(gelu, onnx.TensorProto.FLOAT, [1, 4, 16])])
    group = group_with(analyze(model), "fc1")
    assert not group.prunable
    assert any("not understood" in reason.reason for reason in group.frozen)
