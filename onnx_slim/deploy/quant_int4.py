"""Weight-only int4 for MatMul-heavy models: onnxruntime's `MatMulNBitsQuantizer` (block-wise round-to-nearest).

Every MatMul whose weight is a 2-D initializer becomes a `com.microsoft.MatMulNBits`
holding 4-bit weights with one scale (and, asymmetric, one zero point) per block
of `block_size` input rows; activations stay float. Conv and Gemm are untouched.
"""

from __future__ import annotations

import logging

import onnx
from onnxruntime.quantization import QuantFormat

from onnx_slim.errors import OnnxSlimError, UsageError
from onnx_slim.ir.shapes import concrete_shapes
from onnx_slim.ops.cost import concrete_input_shapes
from onnx_slim.ops.specs import macs_parts

logger = logging.getLogger(__name__)

INT4_OP = "MatMulNBits"
DEFAULT_BLOCK_SIZE = 32  # finer than onnxruntime's LLM default (128): small models lose less accuracy


def check_block_size(block_size: int) -> None:
    # MatMulNBits takes power-of-two blocks of at least 16 rows.
    if block_size < 16 or block_size & (block_size - 1):
        raise UsageError(f"block_size must be a power of two of at least 16, got {block_size}")


def int4_weight_count(model: onnx.ModelProto) -> int:
    """MatMul nodes whose weight (second input) is a 2-D initializer: what int4 quantizes."""
    matrices = {tensor.name for tensor in model.graph.initializer if len(tensor.dims) == 2}
    return sum(1 for node in model.graph.node
               if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in matrices)


def int4_macs_share(model: onnx.ModelProto) -> float:
    """The share of the model's MACs in the MatMuls int4 quantizes (1.0 when they cannot be counted)."""
    shapes = concrete_shapes(model, concrete_input_shapes(model)).shapes
    matrices = {init.name for init in model.graph.initializer if len(init.dims) == 2}
    total = quantized = 0
    for node in model.graph.node:
        parts = macs_parts(node, shapes) or {}
        if None in parts.values():
            return 1.0
        macs = sum(parts.values())
        total += macs
        if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in matrices:
            quantized += macs
    return quantized / total if total else 1.0


def no_int4_weights_message() -> str:
    return "int4 quantizes MatMul weights, and this model has no MatMul with a constant 2-D weight"


def _matmul_nbits_quantizer():
    """onnxruntime's int4 quantizer, imported only when int4 is asked for.

    Since onnxruntime 1.20 its module imports `onnx_ir`, which onnxruntime does not declare:
    importing it at module level would break every command on an install without onnx_ir.
    We declare onnx-ir ourselves and import it first so a broken install names the culprit.
    """
    try:
        import onnx_ir  # noqa: F401
    except ImportError:
        raise OnnxSlimError("int4 quantization needs the onnx-ir package: pip install onnx-ir") from None
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    return MatMulNBitsQuantizer


def quantize_int4(
    model: onnx.ModelProto, *, block_size: int = DEFAULT_BLOCK_SIZE, symmetric: bool = True,
    excluded: list[str] = (),
) -> onnx.ModelProto:
    """The model with int4 MatMul weights (a copy: `model` is not modified)."""
    check_block_size(block_size)
    if not int4_weight_count(model):
        raise UsageError(no_int4_weights_message())
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    quantizer = _matmul_nbits_quantizer()(
        copy, bits=4, block_size=block_size, is_symmetric=symmetric, nodes_to_exclude=list(excluded),
        quant_format=QuantFormat.QOperator,
    )
    try:
        quantizer.process()
    except Exception as exc:
        raise OnnxSlimError(f"int4 quantization failed: {exc}") from None
    quantized = quantizer.model.model
    if not any(node.op_type == INT4_OP for node in quantized.graph.node):
        raise OnnxSlimError("int4 quantization changed no MatMul (every one excluded or refused by onnxruntime)")
    return quantized
