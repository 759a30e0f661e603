"""onnxruntime sessions, created one way everywhere (CPU, quiet logging)."""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import onnx
import onnxruntime as ort

from onnx_slim.errors import OnnxSlimError, first_line


def create_session(
    model: onnx.ModelProto | str | os.PathLike | bytes,
    *,
    threads: int | None = None,
    optimize: bool = True,
) -> ort.InferenceSession:
    """A CPU session for a model given as a path, serialized bytes or a ModelProto.

    `optimize=False` skips graph optimizations: session creation is faster, which
    suits one-off verification runs.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, os.PathLike):
        model = os.fspath(model)
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise OnnxSlimError(f"onnxruntime cannot load the model: {first_line(exc)}") from None


def run_session(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run and return the outputs by name."""
    names = [output.name for output in session.get_outputs()]
    try:
        values = session.run(names, dict(feeds))
    except Exception as exc:
        raise OnnxSlimError(f"onnxruntime failed to run the model: {first_line(exc)}") from None
    return dict(zip(names, values))
