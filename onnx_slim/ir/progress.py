"""How long-running stages report progress: one-line messages, and counted steps of a loop.

A stage takes `progress: Reporter | None`, calls `as_progress` once, then
`progress.say(message)` for a line and `with progress.steps(label, total) as
advance:` around a loop, calling `advance()` per item. The CLI's console draws a
bar for the steps on a terminal; elsewhere (a plain callable, a pipe) only the
lines appear, exactly as before steps existed.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, ContextManager, Iterable, Iterator, Protocol, TypeVar, Union, runtime_checkable

Advance = Callable[..., None]  # advance(n=1): n more steps done
Item = TypeVar("Item")


@runtime_checkable
class Progress(Protocol):
    """Receives progress. Also callable as `progress(message)`, so code written for the
    older plain-callable form keeps working when it is handed one of these."""

    def say(self, message: str) -> None: ...

    def steps(self, label: str, total: int) -> ContextManager[Advance]: ...

    def __call__(self, message: str) -> None: ...


Reporter = Union[Progress, Callable[[str], None]]  # what stages accept: a Progress or a plain callable


def _ignore(steps: int = 1) -> None:
    pass


class Lines:
    """A Progress from a plain message callable (or none): lines only, steps counted by no one."""

    def __init__(self, say: Callable[[str], None] | None = None) -> None:
        self._say = say

    def say(self, message: str) -> None:
        if self._say is not None:
            self._say(message)

    __call__ = say

    @contextmanager
    def steps(self, label: str, total: int) -> Iterator[Advance]:
        yield _ignore


SILENT = Lines()


def as_progress(progress: Reporter | None) -> Progress:
    """`progress` as a Progress: itself if it is one, a plain callable wrapped, None silent."""
    if progress is None:
        return SILENT
    if isinstance(progress, Progress):
        return progress
    return Lines(progress)


def counted(
    progress: Reporter | None, label: str, items: Iterable[Item], *,
    total: int | None = None, size: Callable[[Item], int] | None = None,
) -> Iterator[Item]:
    """`items`, one by one, as steps of `progress`: a loop gets a bar by wrapping what it iterates.

    Each item counts `size(item)` steps (default 1) out of `total` (default:
    the sum over `items`, which then must have a length). Without a known total
    the loop runs uncounted.
    """
    if total is None and hasattr(items, "__len__"):
        total = sum(size(item) for item in items) if size is not None else len(items)
    with as_progress(progress).steps(label, total or 0) as advance:
        for item in items:
            yield item
            advance(size(item) if size is not None else 1)
