"""Channel criteria behind one registry: importing this package registers every criterion."""

from onnx_slim.criteria import data, obs, weights  # noqa: F401  (each registers its criteria)
from onnx_slim.criteria.registry import CRITERIA, ScoringContext, criteria_help, criterion, score_groups

__all__ = ["CRITERIA", "ScoringContext", "criteria_help", "criterion", "score_groups"]
