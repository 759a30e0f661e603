"""What the code knows about each weight-bearing op, in one place.

Every stage that touches a weight asks its op's spec: which weight axis holds
the output features and which the input features, how many MACs the node does,
whether its weight reads as a [inputs, outputs] matrix for re-fitting (and how
to write it back), whether a BatchNormalization after it can fold into it. A new
weight-bearing op is one entry in `WEIGHT_OPS` plus its channel rule
(`channels/rules/weights.py`). Recurrent layers (LSTM, GRU, RNN) are in
`RECURRENT_OPS`: they read channels (their input features) but produce none we prune
(the hidden size stays), so BN folding, statistics correction and quantization leave
them alone; the re-fit reads their input projection (`REFIT_SPECS`). onnxruntime's
fused `Attention` (`FUSED_ATTENTION`) has its heads pruned by its own rule
(`channels/rules/contrib.py`). `macs_parts` counts all of them.
"""

from __future__ import annotations

import math
from typing import ClassVar, Mapping

import numpy as np
import onnx

from onnx_slim.ir.graph import attr
from onnx_slim.ir.shapes import is_static

Shapes = Mapping[str, tuple]

CONV_PATCHES = "conv"  # re-fit and thinet sample 2-D patches of the input
MATRIX_ROWS = "rows"  # re-fit and thinet read input rows against a 2-D weight


class WeightOp:
    """The facts shared by every weight-bearing op; subclasses fill in their own."""

    op_type: ClassVar[str]
    bias_input: ClassVar[int | None] = 2  # the input index of a per-output bias, if the op has one

    def out_axis(self, node: onnx.NodeProto) -> int:
        raise NotImplementedError

    def in_axis(self, node: onnx.NodeProto) -> int:
        raise NotImplementedError

    def data_channel_axis(self, node: onnx.NodeProto, rank: int) -> int:
        """The axis of the data input whose channels the weight's `in_axis` reads."""
        return 1

    def macs(self, node: onnx.NodeProto, shapes: Shapes) -> int | None:
        raise NotImplementedError

    def refit_kind(self, node: onnx.NodeProto) -> str | None:
        """How the least-squares re-fit reads this node, or None when it keeps the plain slice."""
        return None

    def as_matrix(self, node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray:
        """The weight as a float64 [input features, outputs] matrix (kernel taps inside the features);
        only for ops with a `refit_kind`."""
        raise NotImplementedError

    def from_matrix(self, node: onnx.NodeProto, matrix: np.ndarray, shape) -> np.ndarray:
        """The inverse of `as_matrix` for a weight of `shape`."""
        raise NotImplementedError

    def folds_batchnorm(self, node: onnx.NodeProto) -> bool:
        """Whether an inference BatchNormalization right after this node can be folded into its weight."""
        return False


class Conv(WeightOp):
    op_type = "Conv"

    def out_axis(self, node):
        return 0

    def in_axis(self, node):
        return 1

    def macs(self, node, shapes):
        output, weight = _static(shapes, node.output[0]), _static(shapes, node.input[1])
        if output is None or weight is None:
            return None
        # Each output element sums over (in_channels / group) * kernel elements.
        return math.prod(output) * math.prod(weight[1:])

    def refit_kind(self, node):
        return CONV_PATCHES if attr(node, "group", 1) == 1 else None

    def as_matrix(self, node, weight):
        return weight.reshape(weight.shape[0], -1).T.astype(np.float64)  # [C_in * taps, C_out]

    def from_matrix(self, node, matrix, shape):
        return matrix.T.reshape(shape)

    def folds_batchnorm(self, node):
        return True


class ConvTranspose(WeightOp):
    op_type = "ConvTranspose"

    def out_axis(self, node):
        return 1  # weight is [C_in, C_out / group, *kernel]

    def in_axis(self, node):
        return 0

    def macs(self, node, shapes):
        data, weight = _static(shapes, node.input[0]), _static(shapes, node.input[1])
        if data is None or weight is None:
            return None
        # Each input element is scattered into (out_channels / group) * kernel outputs.
        return math.prod(data) * math.prod(weight[1:])

    def folds_batchnorm(self, node):
        return attr(node, "group", 1) == 1


class Gemm(WeightOp):
    op_type = "Gemm"

    def out_axis(self, node):
        return 0 if attr(node, "transB", 0) else 1

    def in_axis(self, node):
        return 1 if attr(node, "transB", 0) else 0

    def data_channel_axis(self, node, rank):
        return 0 if attr(node, "transA", 0) else 1  # A is [K, M] when transA

    def macs(self, node, shapes):
        a, output = _static(shapes, node.input[0]), _static(shapes, node.output[0])
        if a is None or output is None:
            return None
        return math.prod(output) * a[self.data_channel_axis(node, len(a))]

    def refit_kind(self, node):
        plain = attr(node, "alpha", 1.0) == 1 and attr(node, "beta", 1.0) == 1 and not attr(node, "transA", 0)
        return MATRIX_ROWS if plain else None  # scaled Gemms are rare; slicing alone stays correct

    def as_matrix(self, node, weight):
        return (weight.T if attr(node, "transB", 0) else weight).astype(np.float64)

    def from_matrix(self, node, matrix, shape):
        return matrix.T if attr(node, "transB", 0) else matrix.reshape(shape)

    def folds_batchnorm(self, node):
        return not attr(node, "transA", 0)


class MatMul(WeightOp):
    """MatMul with a constant 2-D weight: x[..., K] @ W[K, N]."""

    op_type = "MatMul"
    bias_input = None  # exporters add the bias with a following Add

    def out_axis(self, node):
        return 1

    def in_axis(self, node):
        return 0

    def data_channel_axis(self, node, rank):
        return rank - 1

    def macs(self, node, shapes):
        a, output = _static(shapes, node.input[0]), _static(shapes, node.output[0])
        if a is None or output is None:
            return None
        return math.prod(output) * a[-1]

    def refit_kind(self, node):
        return MATRIX_ROWS

    def as_matrix(self, node, weight):
        return weight.astype(np.float64)

    def from_matrix(self, node, matrix, shape):
        return matrix.reshape(shape)


WEIGHT_OPS: dict[str, WeightOp] = {spec.op_type: spec for spec in (Conv(), ConvTranspose(), Gemm(), MatMul())}


class Recurrent:
    """LSTM, GRU or RNN: X [T, N, features] (or [N, T, features] with layout=1), W [directions,
    gates * hidden, features], R [directions, gates * hidden, hidden], B [directions,
    2 * gates * hidden] (W's biases, then R's), peepholes P [directions, 3 * hidden] (LSTM),
    initial states [directions, N, hidden] (or [N, directions, hidden]); outputs Y [T,
    directions, N, hidden] (or [N, T, directions, hidden]) and the last states, shaped like the
    initial ones: the hidden units are the last axis of every state tensor.

    The re-fit reads the input projection x @ W (every gate of every direction) as a layer of its
    own: W as a [features, directions * gates * hidden] matrix, its targets the original's
    projection of the original input (the gates' input part is no tensor of the graph)."""

    in_axis = 2  # W's axis that reads the input features
    bias_input = None  # B holds W's and R's biases side by side: the fit takes no intercept
    hidden_axis = 2  # R's axis that reads the previous hidden state
    B, INITIAL_H, INITIAL_C, P = 3, 5, 6, 7  # input positions

    def __init__(self, op_type: str) -> None:
        self.op_type = op_type
        self.gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op_type]  # W's and R's row blocks, in order

    def output_columns(self, kept_rows: list[int], weight_dims) -> list[int]:
        """The columns of `as_matrix` that kept rows (indices into W's axis 1) leave."""
        directions, rows = weight_dims[:2]
        return [direction * rows + row for direction in range(directions) for row in kept_rows]

    def data_channel_axis(self, node: onnx.NodeProto, rank: int) -> int:
        return rank - 1

    def refit_kind(self, node: onnx.NodeProto) -> str | None:
        return MATRIX_ROWS

    def as_matrix(self, node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray:
        return weight.transpose(2, 0, 1).reshape(weight.shape[2], -1).astype(np.float64)

    def from_matrix(self, node: onnx.NodeProto, matrix: np.ndarray, shape) -> np.ndarray:
        directions, rows, _ = shape
        return matrix.reshape(-1, directions, rows).transpose(1, 2, 0)

    def outputs(self, weight_dims) -> int:
        """Columns of the re-fit's matrix."""
        return weight_dims[0] * weight_dims[1]

    def input_macs(self, node: onnx.NodeProto, shapes: Shapes) -> int | None:
        """The input projection's MACs (shrink with the input features)."""
        return self._per_step(node, shapes, node.input[1])

    def recurrent_macs(self, node: onnx.NodeProto, shapes: Shapes) -> int | None:
        """The hidden-to-hidden MACs (shrink with the square of the hidden size)."""
        return self._per_step(node, shapes, node.input[2])

    @staticmethod
    def _per_step(node, shapes, weight_name):
        data, weight = _static(shapes, node.input[0]), _static(shapes, weight_name)
        if data is None or weight is None or len(data) != 3:
            return None
        return math.prod(data[:2]) * math.prod(weight)  # every (step, sample) multiplies the whole matrix


RECURRENT_OPS: dict[str, Recurrent] = {op_type: Recurrent(op_type) for op_type in ("LSTM", "GRU", "RNN")}

# What the re-fit can read as [features, outputs]: the weight ops and the recurrent input projections.
REFIT_SPECS: dict = {**WEIGHT_OPS, **RECURRENT_OPS}

CONTRIB_DOMAIN = "com.microsoft"  # onnxruntime's own ops (its transformer optimizer's fusions)


class FusedAttention:
    """onnxruntime's Attention: input [B, S, features] @ weights [features, 3 * hidden] (+ bias)
    makes q, k and v of `num_heads` heads; output [B, S, hidden]."""

    op_type, domain = "Attention", CONTRIB_DOMAIN

    def matches(self, node: onnx.NodeProto) -> bool:
        return node.op_type == self.op_type and node.domain == self.domain

    def projection_macs(self, node: onnx.NodeProto, shapes: Shapes) -> int | None:
        data, weight = _static(shapes, node.input[0]), _static(shapes, node.input[1])
        if data is None or weight is None:
            return None
        return math.prod(data[:-1]) * math.prod(weight)

    def attention_macs(self, node: onnx.NodeProto, shapes: Shapes) -> int | None:
        """q·kᵀ and probabilities·v: each B * S * S * hidden (no past state)."""
        data, weight = _static(shapes, node.input[0]), _static(shapes, node.input[1])
        if data is None or weight is None or len(data) != 3:
            return None
        return 2 * math.prod(data[:-1]) * data[1] * (weight[1] // 3)


FUSED_ATTENTION = FusedAttention()

# ModelCost.node_macs keys of the parts of a node that its weight (input 1) does not scale:
# node name + one of these (the part input 1 scales is under the name).
RECURRENCE_PART = "/recurrence"  # a recurrent layer's hidden-to-hidden MACs: scale with R's axes
ATTENTION_PART = "/attention"  # fused attention's score and context MACs: scale with the heads


def scaling_weights(node: onnx.NodeProto) -> dict[str, str]:
    """node_macs key suffix -> the weight whose kept fraction (of every sliced axis) scales that part."""
    if len(node.input) < 2:
        return {}
    weights = {"": node.input[1]}
    if node.op_type in RECURRENT_OPS:
        weights[RECURRENCE_PART] = node.input[2]
    return weights


def _qlinear_conv_macs(node: onnx.NodeProto, shapes: Shapes) -> int | None:
    output, weight = _static(shapes, node.output[0]), _static(shapes, node.input[3])
    return None if output is None or weight is None else math.prod(output) * math.prod(weight[1:])


# Quantized forms count as the float op they compute (the reports compare a model before and
# after quantization): ConvInteger reads its weight where Conv does, the MatMuls their A.
QUANTIZED_MACS = {
    "ConvInteger": WEIGHT_OPS["Conv"].macs,
    "QLinearConv": _qlinear_conv_macs,
    "MatMulInteger": WEIGHT_OPS["MatMul"].macs,
    "QLinearMatMul": WEIGHT_OPS["MatMul"].macs,
    "MatMulNBits": WEIGHT_OPS["MatMul"].macs,
}


def macs_parts(node: onnx.NodeProto, shapes: Shapes) -> dict[str, int | None] | None:
    """A compute node's MACs by part, keyed by the suffix of its node_macs key; None when the
    op is not counted, a None part when a shape is unknown."""
    if node.op_type in WEIGHT_OPS:
        return {"": WEIGHT_OPS[node.op_type].macs(node, shapes)}
    if node.op_type in QUANTIZED_MACS:
        return {"": QUANTIZED_MACS[node.op_type](node, shapes)}
    if node.op_type in RECURRENT_OPS or node.op_type == "DynamicQuantizeLSTM":  # int8 LSTM: same sizes
        spec = RECURRENT_OPS.get(node.op_type, RECURRENT_OPS["LSTM"])
        return {"": spec.input_macs(node, shapes), RECURRENCE_PART: spec.recurrent_macs(node, shapes)}
    if FUSED_ATTENTION.matches(node):
        return {"": FUSED_ATTENTION.projection_macs(node, shapes),
                ATTENTION_PART: FUSED_ATTENTION.attention_macs(node, shapes)}
    return None


def _static(shapes: Shapes, name: str):
    shape = shapes.get(name)
    return shape if is_static(shape) else None
