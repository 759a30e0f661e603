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
from onnx_slim.data.calibration import CalibrationSet
from onnx_slim.errors import UsageError
from onnx_slim.ir.progress import Reporter
from onnx_slim.ir.runtime import SessionSpec

DEFAULT_BATCH = 16  # samples per onnxruntime run of the data-driven criteria
SENSITIVITY_SAMPLES = 32


@dataclass
class ScoringContext:
    """Everything a criterion may read, and what it leaves behind."""

    model: onnx.ModelProto
    analysis: ChannelAnalysis
    bn_scales: dict = field(default_factory=dict)  # producer node -> |gamma|
    seed: int = 0
    calibration: CalibrationSet | None = None  # the data-driven criteria need it
    batch_size: int = DEFAULT_BATCH
    sensitivity_samples: int = SENSITIVITY_SAMPLES
    session: SessionSpec = SessionSpec()  # how the calibration passes run the model
    progress: Reporter | None = None  # counts the batches of calibration passes
    notes: list = field(default_factory=list)  # what the criterion had to fall back on
    apoz: dict = field(default_factory=dict)  # `activation` leaves group id -> fraction of zeros here


Scorer = Callable[[ScoringContext, list], dict]  # (ctx, groups) -> {group id: scores}


@dataclass(frozen=True)
class Criterion:
    name: str
    score: Scorer
    needs_calibration: bool


CRITERIA: dict[str, Criterion] = {}


def criterion(name: str, *, needs_calibration: bool = False):
    """Register a scorer under `name`; the CLI's choices are read from here."""
    def register(function: Scorer) -> Scorer:
        CRITERIA[name] = Criterion(name, function, needs_calibration)
        return function
    return register


def criteria_help() -> str:
    """One line naming every criterion, the data-driven ones apart."""
    free = [c.name for c in CRITERIA.values() if not c.needs_calibration]
    data = [c.name for c in CRITERIA.values() if c.needs_calibration]
    return f"{', '.join(free)}; with --calib also {', '.join(data)}"


def score_groups(ctx: ScoringContext, name: str, groups: list[ChannelGroup]) -> dict[int, np.ndarray]:
    if name not in CRITERIA:
        raise UsageError(f"unknown criterion {name!r}; choose from {', '.join(sorted(CRITERIA))}")
    scores = CRITERIA[name].score(ctx, groups)
    for group in groups:
        values = scores[group.id]
        if values.shape != (group.channels,) or not np.all(np.isfinite(values)):
            raise ValueError(f"criterion {name} gave bad scores for group {group.id}")
    return scores
