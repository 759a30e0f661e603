"""A Progress (onnx_slim.ir.progress) that records what a stage reports, for tests."""

from __future__ import annotations

from contextlib import contextmanager


class RecordingProgress:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.steps_done: dict[str, list[int]] = {}  # label -> [done, total], one entry per loop label

    def say(self, message: str) -> None:
        self.lines.append(message)

    __call__ = say

    @contextmanager
    def steps(self, label: str, total: int):
        counts = self.steps_done.setdefault(label, [0, 0])
        counts[1] += total

        def advance(steps: int = 1) -> None:
            counts[0] += steps

        yield advance
