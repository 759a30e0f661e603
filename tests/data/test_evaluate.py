"""Evaluation against the original on held-out data (data/evaluate.py)."""

from __future__ import annotations

from pathlib import Path

from onnx_slim.data.calibration import load_calibration
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
