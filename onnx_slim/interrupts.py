"""Ctrl-C (SIGINT) and SIGTERM (CI timeouts, `timeout`, service managers) stop a command cleanly.

Both raise an exception in the main thread (KeyboardInterrupt, `Terminated`),
so every `finally` runs and removes its scratch files and new folders. Native
code can swallow that exception (Cython's module set-up clears errors, for
one) or keep the main thread busy, so a watchdog thread follows: if the command
has not finished unwinding `WATCHDOG_SECONDS` later, it removes what
`onnx_slim.ir.files` still lists as in use and exits at once. (A thread, not
SIGALRM: a signal handler runs only when the main thread gets back to Python.)
Exit codes follow the shell: 128 + the signal.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

from onnx_slim.ir.files import abandon

WATCHDOG_SECONDS = 3.0
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143
MESSAGE = "error: interrupted"


class Terminated(BaseException):
    """Raised on SIGTERM; like KeyboardInterrupt, not an Exception, so nothing mistakes it for an error."""


@contextmanager
def unwind_on_signals() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise; a second signal during the cleanup is ignored.

    The previous handlers come back afterwards (the CLI may run in-process, as in tests).
    Only the main thread can set signal handlers; elsewhere the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    watchdogs: list[threading.Timer] = []

    def unwind(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        watchdog = threading.Timer(WATCHDOG_SECONDS, _stop_now, args=(128 + signum,))
        watchdog.daemon = True
        watchdog.start()
        watchdogs.append(watchdog)
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated

    signal.signal(signal.SIGINT, unwind)
    signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        for watchdog in watchdogs:
            watchdog.cancel()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop_now(code: int) -> None:
    """The watchdog: the exception was lost or the cleanup hangs; clean up here and exit."""
    abandon()
    print(MESSAGE, file=sys.stderr, flush=True)
    os._exit(code)
