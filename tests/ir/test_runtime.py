"""Sessions are made one way, from a SessionSpec."""

from __future__ import annotations

import pytest
from graphs import conv_chain

from onnx_slim.errors import UsageError
from onnx_slim.ir.runtime import CHECK, SessionSpec, create_session


def test_the_spec_sets_threads_providers_and_optimization():
    options = SessionSpec(threads=2).session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    assert CHECK.session_options().graph_optimization_level.name == "ORT_DISABLE_ALL"
    session = create_session(conv_chain((4,)), SessionSpec(threads=1))
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_threads_below_one_are_refused():
    with pytest.raises(UsageError, match="threads must be at least 1"):
        SessionSpec(threads=0)
