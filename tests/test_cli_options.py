"""The console: timestamped lines everywhere, a progress bar only on a terminal."""

from __future__ import annotations

import io
import logging

import pytest

from onnx_slim.cli_options import Console


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_shows_a_bar_that_advances_to_the_total():
    stream = FakeTerminal()
    console = Console(stream=stream)

    with console.steps("timing", 4) as advance:
        for _ in range(4):
            advance()
            assert console._bar is not None

    text = stream.getvalue()
    assert "timing  [" in text and "0/4" in text
    assert text.rstrip().endswith("[" + "#" * 36 + "]  4/4\x1b[?25h")  # full bar, cursor shown again
    assert console._bar is None


def test_a_line_during_a_bar_is_printed_whole_and_the_bar_redrawn():
    stream = FakeTerminal()
    console = Console(stream=stream)

    with console.steps("re-fit layers", 2) as advance:
        advance()
        console.say("re-fit pass 2/2: 1 layers")
        advance()

    text = stream.getvalue()
    assert "] re-fit pass 2/2: 1 layers\n" in text
    assert text.rindex("re-fit layers") > text.index("re-fit pass 2/2")  # redrawn below the line


def test_no_bar_outside_a_terminal_or_when_quiet_or_for_json():
    for console in [Console(stream=io.StringIO()), Console(quiet=True, stream=FakeTerminal()),
                    Console(bars=False, stream=FakeTerminal())]:
        with console.steps("timing", 3) as advance:
            advance(3)
        assert console.stream.getvalue() == ""


def test_lines_keep_their_timestamped_form():
    stream = io.StringIO()
    console = Console(stream=stream)

    console.say("pruning")
    console.progress("quantizing")
    console("verifying")

    lines = stream.getvalue().splitlines()
    assert [line[line.index("]") + 2:] for line in lines] == ["pruning", "quantizing", "verifying"]
    assert all(line.startswith("[") and line[1:8].strip().endswith("s") for line in lines)


@pytest.mark.parametrize("debug, line", [(False, "warning: 3 samples skipped"),
                                         (True, "warning onnx_slim.data: 3 samples skipped")])
def test_log_records_read_like_the_cli_s_own_warnings(debug, line):
    from onnx_slim.cli_options import _LogFormat

    record = logging.LogRecord("onnx_slim.data", logging.WARNING, __file__, 1, "%d samples skipped", (3,), None)
    assert _LogFormat(debug).format(record) == line
