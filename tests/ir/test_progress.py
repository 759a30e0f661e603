"""The progress interface: plain callables still work, loops are counted through `counted`."""

from __future__ import annotations

from recording import RecordingProgress

from onnx_slim.ir.progress import SILENT, Progress, as_progress, counted


def test_a_plain_callable_gets_the_lines_and_no_steps():
    lines = []
    progress = as_progress(lines.append)

    progress.say("one")
    progress("two")  # still callable, for code written for the callable form
    with progress.steps("loop", 3) as advance:
        advance()

    assert lines == ["one", "two"]
    assert isinstance(progress, Progress)


def test_none_is_silent_and_a_progress_is_kept():
    recorder = RecordingProgress()
    assert as_progress(None) is SILENT
    assert as_progress(recorder) is recorder


def test_counted_yields_every_item_and_advances_to_the_total():
    recorder = RecordingProgress()

    assert list(counted(recorder, "items", ["a", "b", "c"])) == ["a", "b", "c"]
    assert list(counted(recorder, "chunks", [[1, 2], [3]], size=len)) == [[1, 2], [3]]

    assert recorder.steps_done == {"items": [3, 3], "chunks": [3, 3]}


def test_an_iterator_without_a_length_runs_uncounted():
    recorder = RecordingProgress()

    assert list(counted(recorder, "stream", iter(range(4)))) == [0, 1, 2, 3]

    assert recorder.steps_done == {"stream": [4, 0]}
