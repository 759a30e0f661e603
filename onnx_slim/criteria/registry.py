"""Channel importance criteria: name -> scorer, and what a scorer may read.

A scorer returns, for every prunable group, one score per channel (higher means
keep), comparable across groups (what `--global` ranking relies on).
Criteria register themselves with `@criterion(name)`; `onnx_slim.criteria`
imports every criterion module, so its `CRITERIA` is complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from onnx_slim.channels.groups import ChannelAnalysis, ChannelGroup
from onnx_slim.errors import UsageError


@dataclass
class ScoringContext:
    """Everything a criterion may read."""

    model: onnx.ModelProto
    analysis: ChannelAnalysis
    bn_scales: dict = field(default_factory=dict)  # producer node -> |gamma|
    seed: int = 0
    notes: list = field(default_factory=list)  # what the criterion had to fall back on
    extras: dict = field(default_factory=dict)  # data-driven criteria put their inputs here


Scorer = Callable[[ScoringContext, list], dict]  # (ctx, groups) -> {group id: scores}
CRITERIA: dict[str, Scorer] = {}


def criterion(name: str):
    def register(function: Scorer) -> Scorer:
        CRITERIA[name] = function
        return function
    return register


def score_groups(ctx: ScoringContext, name: str, groups: list[ChannelGroup]) -> dict[int, np.ndarray]:
    if name not in CRITERIA:
        raise UsageError(f"unknown criterion {name!r}; choose from {', '.join(sorted(CRITERIA))}")
    scores = CRITERIA[name](ctx, groups)
    for group in groups:
        values = scores[group.id]
        if values.shape != (group.channels,) or not np.all(np.isfinite(values)):
            raise ValueError(f"criterion {name} gave bad scores for group {group.id}")
    return scores
