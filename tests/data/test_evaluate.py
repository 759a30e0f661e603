"""Evaluation against the original on held-out data (data/evaluate.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_slim.data.calibration import CalibrationSet, load_calibration
from onnx_slim.data.evaluate import evaluate, evaluate_all
from onnx_slim.pipeline.prune import prune

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_several_candidates_in_one_pass_match_one_at_a_time():
    original = str(MODELS / "digits_cnn.onnx")
    test = load_calibration(MODELS / "digits_test.npz", original).take(64)
    light, _ = prune(original, ratio=0.25)
    heavy, _ = prune(original, ratio=0.75)
    together = evaluate_all(original, [light, heavy], test)
    assert together == [evaluate(original, light, test), evaluate(original, heavy, test)]
    assert together[0]["samples"] == 64 and "accuracy" in together[0]
    assert together[0]["agreement"]["top1"] > together[1]["agreement"]["top1"]


def _token_model(padding_noise: float) -> onnx.ModelProto:
    """ids [N, S] -> float [N, S, 4]: the ids broadcast over 4 features, plus `padding_noise` where ids == 1
    (the pad id), as a pruned encoder writes other junk at padded positions than the original."""
    noise = numpy_helper.from_array(np.array(padding_noise, np.float32), "noise")
    pad = numpy_helper.from_array(np.array(1, np.int64), "pad")
    ones = numpy_helper.from_array(np.ones(4, np.float32), "ones")
    axes = numpy_helper.from_array(np.array([2], np.int64), "axes")
    nodes = [
        helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Equal", ["ids", "pad"], ["is_pad"]),
        helper.make_node("Cast", ["is_pad"], ["is_pad_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["is_pad_f", "noise"], ["junk"]),
        helper.make_node("Add", ["ids_f", "junk"], ["token_values"]),
        helper.make_node("Unsqueeze", ["token_values", "axes"], ["column"]),
        helper.make_node("Mul", ["column", "ones"], ["hidden"]),
    ]
    graph = helper.make_graph(nodes, "tokens", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 8])],
                              [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["n", 8, 4])],
                              [noise, pad, ones, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_per_token_outputs_are_compared_at_real_tokens_only():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 50, size=(12, 8))
    for row, length in enumerate(rng.integers(2, 8, size=12)):
        ids[row, length:] = 1  # right padding with id 1
    data = CalibrationSet({"ids": ids})
    original, pruned = _token_model(0.0), _token_model(40.0)

    masked = evaluate(original, pruned, data)["agreement"]
    unmasked = evaluate(original, pruned, [{"ids": ids}])["agreement"]  # plain feed dicts: no padding known

    assert masked["cosine"] == pytest.approx(1.0) and masked["max_abs_diff"] == 0.0
    assert unmasked["cosine"] < 0.9 and unmasked["max_abs_diff"] == pytest.approx(40.0)
