"""Ctrl-C (SIGINT), SIGTERM (CI timeouts, `timeout`, service managers) and SIGHUP (the terminal
closed) stop a command cleanly.

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
MESSAGE = "error: interrupted"
# SIGHUP left a 6.8 MB scratch folder behind a quantize whose terminal closed. (Not on Windows.)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(BaseException):
    """Raised on SIGTERM or SIGHUP; like KeyboardInterrupt, not an Exception, so nothing mistakes it
    for an error. `exit_code` follows the shell: 128 + the signal."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signum)
        self.exit_code = 128 + int(signum)


@contextmanager
def unwind_on_signals() -> Iterator[None]:
    """While the block runs, the STOP_SIGNALS raise; a second signal during the cleanup is ignored.

    The previous handlers come back afterwards (the CLI may run in-process, as in tests).
    Only the main thread can set signal handlers; elsewhere the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    watchdogs: list[threading.Timer] = []

    def unwind(signum, frame):
        for stop in STOP_SIGNALS:
            signal.signal(stop, signal.SIG_IGN)
        watchdog = threading.Timer(WATCHDOG_SECONDS, _stop_now, args=(128 + signum,))
        watchdog.daemon = True
        watchdog.start()
        watchdogs.append(watchdog)
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)

    for stop in STOP_SIGNALS:
        signal.signal(stop, unwind)
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
