"""Per-channel QDQ weights need opset 13 (DequantizeLinear's `axis`): convert older models when that is exact."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import version_converter

from onnx_slim.errors import OnnxSlimError, first_line
from onnx_slim.ir.graph import opset_version
from onnx_slim.ir.inputs import MadeUpInputs
from onnx_slim.ir.runtime import CHECK, create_session, run_session

PER_CHANNEL_OPSET = 13
# Converting 11 -> 13 moves attributes to inputs (Split, Squeeze, ReduceSum...) and rewrites
# Softmax around its new axis rule; the arithmetic is the same, so outputs agree to float rounding.
_RTOL, _ATOL = 1e-5, 1e-6


def convert_for_per_channel(model: onnx.ModelProto,
                            inputs: MadeUpInputs = MadeUpInputs()) -> tuple[onnx.ModelProto | None, str]:
    """(the model at opset 13, note) when the converted model computes the same outputs; else (None, why not).

    The check runs both models, without graph optimizations, on one random batch.
    """
    opset = opset_version(model)
    try:
        converted = version_converter.convert_version(model, PER_CHANNEL_OPSET)
        onnx.checker.check_model(converted)
    except Exception as exc:  # onnx raises bare RuntimeErrors/asserts for ops it cannot adapt
        return None, f"onnx cannot convert it from opset {opset} to {PER_CHANNEL_OPSET}: {first_line(exc)}"
    feeds = inputs.feeds(model)
    try:
        expected = run_session(create_session(model, CHECK), feeds)
        actual = run_session(create_session(converted, CHECK), feeds)
    except OnnxSlimError as exc:
        return None, f"the conversion from opset {opset} could not be checked: {exc}"
    for name, value in expected.items():
        if name not in actual or actual[name].shape != value.shape or not np.allclose(
                actual[name], value, rtol=_RTOL, atol=_ATOL):
            return None, f"converting from opset {opset} changes output {name!r}"
    return converted, (f"converted from opset {opset} to {PER_CHANNEL_OPSET} for per-channel weights "
                       f"(checked: same outputs on a random batch)")
