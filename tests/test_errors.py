"""One-line error messages: what a user reads after `error:`."""

from __future__ import annotations

from onnx_slim.errors import first_line


def test_a_multi_line_message_reads_as_one_line_with_the_node_the_second_line_names():
    exc = ValueError("Nodes must be sorted, however input 'a' of node: \nname: /Gather_2 OpType: Gather\n is not produced.")

    assert first_line(exc) == "Nodes must be sorted, however input 'a' of node: name: /Gather_2 OpType: Gather is not produced."


def test_a_long_message_keeps_its_start_and_its_innermost_cause_cut_at_words():
    message = "Non-zero status running If node. " + "Status Message: nested " * 30 + "Input X must have 3 dimensions"

    text = first_line(RuntimeError(message), limit=120)

    assert len(text) <= 120
    assert text.startswith("Non-zero status running If node.") and text.endswith("Input X must have 3 dimensions")
    assert " ... " in text and all(word in message.split() for word in text.replace(" ... ", " ").split())


def test_an_empty_message_gives_the_exception_type():
    assert first_line(KeyError()) == "KeyError"
