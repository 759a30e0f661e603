"""Check a written model before it replaces anything: checker, onnxruntime, output shapes."""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import onnx

from onnx_slim.errors import OnnxSlimError, VerificationError, first_line
from onnx_slim.ir.runtime import CHECK, create_session, run_session
from onnx_slim.ir.shapes import is_static


def verify_model(
    model: onnx.ModelProto | str | os.PathLike,
    feeds: Mapping[str, np.ndarray],
    expected_shapes: Mapping[str, tuple],
) -> dict[str, np.ndarray]:
    """Raise VerificationError unless the model passes the full checker, runs, and its
    outputs have the expected names and shapes; returns the outputs."""
    source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else model
    try:
        onnx.checker.check_model(source, full_check=True)
    except Exception as exc:
        raise VerificationError(f"pruned model fails the ONNX checker: {first_line(exc)}") from None
    try:
        # A one-off run: skipping graph optimizations makes the session much faster to create.
        session = create_session(source, CHECK)
        outputs = run_session(session, feeds)
    except OnnxSlimError as exc:
        raise VerificationError(f"pruned model does not run: {exc}") from None
    if list(outputs) != list(expected_shapes):
        raise VerificationError(f"output names changed: {list(expected_shapes)} -> {list(outputs)}")
    for name, shape in expected_shapes.items():
        if tuple(outputs[name].shape) != tuple(shape):
            raise VerificationError(
                f"output {name} changed shape: {list(shape)} -> {list(outputs[name].shape)}"
            )
    return outputs


def reference_output_shapes(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], inferred: Mapping[str, tuple]
) -> dict[str, tuple]:
    """The original model's output shapes for `feeds`: from shape inference where it is
    complete, else by running the original model once."""
    names = [output.name for output in model.graph.output]
    shapes = {name: inferred.get(name) for name in names}
    if all(is_static(shape) for shape in shapes.values()):
        return shapes
    outputs = run_session(create_session(model, CHECK), feeds)
    return {name: tuple(outputs[name].shape) for name in names}
