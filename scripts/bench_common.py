"""Pieces the benchmark scripts share: peak memory of a child process, writing a report."""

from __future__ import annotations

from pathlib import Path

# Code a measured child process starts with. Peak memory is VmHWM, not ru_maxrss:
# Linux carries ru_maxrss across exec, so a child would report its parent's peak.
STATUS_PRELUDE = r"""
def status_kb(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
"""


def write_report(path: str | Path, text: str) -> None:
    """Write a Markdown report (creating its folder) and echo it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
