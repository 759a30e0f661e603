"""One-line error messages: what a user reads after `error:`."""

from __future__ import annotations

from onnx_slim.errors import first_line


def test_a_multi_line_message_reads_as_one_line_with_the_node_the_second_line_names():
    exc = ValueError("Nodes must be sorted, however input 'a' of node: \nname: /Gather_2 OpType: Gather\n is not produced.")

    assert first_line(exc) == "Nodes must be sorted, however input 'a' of node: name: /Gather_2 OpType: Gather is not produced."


def test_a_long_message_is_cut_at_a_word_and_says_so():
    text = first_line(RuntimeError("word " * 100), limit=42)

    assert text.endswith(" ...") and len(text) <= 46
    assert all(part == "word" for part in text[:-4].split())


def test_an_empty_message_gives_the_exception_type():
    assert first_line(KeyError()) == "KeyError"
