"""Compare a candidate model with the original on held-out samples, batch by batch.

Per-token outputs ([B, S, ...], a `last_hidden_state`) are compared at real
tokens only when the data shows its padding (`data.tokens`): what a model
writes at padded positions is read by nobody, and pruning changes it freely
(MPNet's last hidden state at padding: cosine 0.85 where real tokens kept 0.90).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx

from onnx_slim.data.calibration import CalibrationSet
from onnx_slim.data.metrics import AgreementAccumulator, accuracy, agreement_score
from onnx_slim.data.samples import check_finite
from onnx_slim.data.tokens import TokenMask
from onnx_slim.ir.inputs import leading_dim
from onnx_slim.ir.runtime import SessionSpec, create_session, run_session


def evaluate(
    original: onnx.ModelProto | str,
    candidate: onnx.ModelProto | str,
    data: CalibrationSet | Iterable[Mapping[str, np.ndarray]],
    *,
    batch_size: int = 32,
    session: SessionSpec = SessionSpec(),
) -> dict:
    """Agreement of `candidate` with `original` (top-1, cosine, relative L2, max abs diff)
    and, when `data` is a CalibrationSet with labels, both models' accuracy and the drop
    in points. `data` may also be any iterable of feed dicts."""
    return evaluate_all(original, [candidate], data, batch_size=batch_size, session=session)[0]


def evaluate_all(
    original: onnx.ModelProto | str,
    candidates: Sequence[onnx.ModelProto | str],
    data: CalibrationSet | Iterable[Mapping[str, np.ndarray]],
    *,
    batch_size: int = 32,
    session: SessionSpec = SessionSpec(),
) -> list[dict]:
    """`evaluate` for several candidates in one pass over the data (the original runs once)."""
    reference_session = create_session(original, session)
    candidate_sessions = [create_session(candidate, session) for candidate in candidates]
    tallies = [AgreementAccumulator() for _ in candidates]
    first_output = reference_session.get_outputs()[0].name
    reference_scores, candidate_scores = [], [[] for _ in candidates]
    labels = getattr(data, "labels", None)
    from_set = isinstance(data, CalibrationSet)  # a set's samples were checked when it was built
    token_mask = data.token_mask() if from_set else None
    batches = data.batches(batch_size) if from_set else data
    samples = 0
    for batch in batches:
        if not from_set:
            for name, value in batch.items():
                check_finite(np.asarray(value), name, "evaluation data", samples)
        samples += leading_dim(batch)
        reference = run_session(reference_session, batch)
        if labels is not None:
            reference_scores.append(reference[first_output])
        for candidate_session, tally, scores in zip(candidate_sessions, tallies, candidate_scores):
            produced = run_session(candidate_session, batch)
            tally.update(*(_real_tokens_only(outputs, token_mask, batch) for outputs in (reference, produced)))
            if labels is not None:
                scores.append(produced[first_output])
    results = [{"samples": samples, "agreement": tally.result()} for tally in tallies]
    if labels is not None:
        seen = np.asarray(labels)[:samples]  # a fixed-batch model may skip a last partial batch
        before = accuracy(np.concatenate(reference_scores), seen)
        for result, scores in zip(results, candidate_scores):
            after = accuracy(np.concatenate(scores), seen)
            result.update(accuracy_original=round(before, 4), accuracy=round(after, 4),
                          accuracy_drop_points=round((before - after) * 100, 2))
    return results


def _real_tokens_only(outputs: dict[str, np.ndarray], token_mask: TokenMask | None, batch) -> dict:
    """`outputs` with per-token float outputs zeroed at padded positions (equal in both models, so padding
    adds nothing to a difference and nothing to a cosine); others as they are."""
    if token_mask is None:
        return outputs
    real = token_mask.real(batch)
    masked = dict(outputs)
    for name, value in outputs.items():
        # Rank 3 and more only: an [N, K] output whose K happens to equal S is not per token.
        if value.ndim >= 3 and value.shape[:2] == real.shape and np.issubdtype(value.dtype, np.floating):
            masked[name] = value * real.reshape(real.shape + (1,) * (value.ndim - 2)).astype(value.dtype)
    return masked


def quality_drop_points(evaluation: dict) -> float:
    """The drop a quality gate compares: accuracy points with labels, else top-1 disagreement
    (or, for outputs that are not class scores, 100 * (1 - cosine), `metrics.agreement_score`'s cosine)."""
    if "accuracy_drop_points" in evaluation:
        return float(evaluation["accuracy_drop_points"])
    agreement = evaluation["agreement"]
    if agreement.get("top1") is not None:
        return round((1 - agreement["top1"]) * 100, 2)
    return round((1 - agreement_score(agreement)) * 100, 2)
