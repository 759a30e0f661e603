"""Params and MACs (ops/cost.py), and the per-op facts they come from (ops/specs.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import Graph

from onnx_slim.ops.cost import count_params, model_cost
from onnx_slim.ops.specs import WEIGHT_OPS


def test_macs_per_op_match_hand_counts():
    g = Graph()
    x = g.input("x", [2, 3, 8, 8])
    y = g.conv(x, 4, kernel=3, name="conv")  # 2*4*8*8 outputs, each 3*3*3 MACs
    up = g.conv_transpose(y, 5, name="up")  # 2*4*8*8 inputs, each scattered into 5*2*2 outputs
    pooled = g.node("Flatten", [g.gap(up)])
    fc = g.gemm(pooled, 6, name="fc")  # 2*6 outputs, each 5 MACs
    out = g.matmul(fc, 7, name="head")  # 2*7 outputs, each 6 MACs
    cost = model_cost(g.build(out))
    assert cost.node_macs == {
        "conv": 2 * 4 * 8 * 8 * 27,
        "up": 2 * 4 * 8 * 8 * 20,
        "fc": 2 * 6 * 5,
        "head": 2 * 7 * 6,
    }
    assert cost.macs == sum(cost.node_macs.values()) and not cost.uncounted


def test_gemm_with_transposed_input_counts_its_contracted_axis():
    g = Graph()
    a = g.input("a", [5, 2])  # [K, M] with transA
    w = g.weight("w", (5, 3))
    out = g.node("Gemm", [a, w], "gemm", transA=1)
    assert model_cost(g.build(out)).node_macs == {"gemm": 2 * 3 * 5}


def test_params_count_weights_but_not_shape_constants():
    g = Graph()
    x = g.input("x", [1, 3, 4, 4])
    y = g.conv(x, 2, kernel=1, name="conv")  # 2*3 weights + 2 biases
    flat = g.node("Reshape", [y, g.ints("target", [1, -1])])
    assert count_params(g.build(flat)) == 8


@pytest.mark.parametrize("op_type, attributes, shape", [
    ("Conv", {}, (4, 3, 3, 3)),
    ("Gemm", {"transB": 1}, (6, 5)),
    ("Gemm", {}, (5, 6)),
    ("MatMul", {}, (5, 6)),
])
def test_weight_matrix_round_trip(op_type, attributes, shape):
    """as_matrix is [inputs, outputs] with the outputs on the spec's out_axis, and from_matrix undoes it."""
    from onnx import helper

    node = helper.make_node(op_type, ["x", "w"], ["y"], **attributes)
    spec = WEIGHT_OPS[op_type]
    weight = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    matrix = spec.as_matrix(node, weight)
    assert matrix.shape[1] == shape[spec.out_axis(node)]
    assert matrix.shape[0] * matrix.shape[1] == weight.size
    np.testing.assert_array_equal(spec.from_matrix(node, matrix, shape), weight)


def test_weights_in_constant_nodes_count_as_params():
    """PaddlePaddle exports keep weights in Constant nodes: the report showed 0 params."""
    from onnx import helper

    from onnx_slim.channels.analysis import analyze

    g = Graph()
    x = g.input("x", [1, 3, 8, 8])
    model = g.build(g.conv(g.relu(g.conv(x, 4, name="conv1")), 2, name="conv2"))
    expected = count_params(model)
    constants = [helper.make_node("Constant", [], [init.name], value=init) for init in model.graph.initializer]
    nodes = constants + list(model.graph.node)
    del model.graph.initializer[:]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    assert count_params(model) == expected == 4 * 3 * 9 + 4 + 2 * 4 * 9 + 2
    assert analyze(model).cost.params == expected


def test_a_weight_shared_by_several_nodes_counts_once():
    """An unrolled LSTM reads the same weights at every step; normalization copies them per reader."""
    from onnx_slim.channels.analysis import analyze

    g = Graph()
    x = g.input("x", [2, 6])
    w = g.weight("shared_w", (6, 6))
    h = g.node("MatMul", [g.node("MatMul", [x, w], "step1"), w], "step2")
    model = g.build(g.node("MatMul", [h, w], "step3"))
    assert analyze(model).cost.params == count_params(model) == 36


@pytest.mark.parametrize("mode", ["dynamic", "qoperator", "int4"])
def test_quantized_models_count_the_macs_of_the_float_ops(tmp_path, mode):
    """ConvInteger / MatMulInteger (dynamic int8), QLinearConv / QLinearMatMul (static, QOperator)
    and MatMulNBits (int4) compute what Conv and MatMul did: the reports compare their MACs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    g = Graph()
    h = g.relu(g.conv(g.input("x", [1, 3, 8, 8]), 8, name="conv"))
    tokens = g.reshape(h, [1, 8, 64])
    model = g.build(g.matmul(g.node("Transpose", [tokens], perm=[0, 2, 1]), 32, name="fc"))
    float_cost = model_cost(model)
    source, target = tmp_path / "float.onnx", tmp_path / "quantized.onnx"
    source.write_bytes(model.SerializeToString())

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": np.random.default_rng(i).random((1, 3, 8, 8), dtype=np.float32)}
                                 for i in range(4)])

        def get_next(self):
            return next(self.batches, None)

    if mode == "dynamic":
        quantize_dynamic(str(source), str(target))
        expected_ops = {"ConvInteger", "MatMulInteger"}
    elif mode == "qoperator":
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QOperator)
        expected_ops = {"QLinearConv", "QLinearMatMul"}
    else:
        quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), block_size=32)
        quantizer.process()
        quantizer.model.save_model_to_file(str(target))
        expected_ops = {"MatMulNBits"}
    quantized = onnx.load(str(target))
    assert expected_ops <= {node.op_type for node in quantized.graph.node}
    cost = model_cost(quantized)
    assert cost.macs == float_cost.macs and not cost.uncounted


def test_dynamic_int8_lstm_counts_as_the_float_lstm(tmp_path):
    """quantize_dynamic turns LSTM into com.microsoft DynamicQuantizeLSTM (W and R transposed,
    same sizes): its MACs are the float layer's."""
    from pathlib import Path

    from onnxruntime.quantization import quantize_dynamic

    source = Path(__file__).parent.parent.parent / "models" / "crnn_torchscript.onnx"
    target = tmp_path / "quantized.onnx"
    quantize_dynamic(str(source), str(target))
    quantized = onnx.load(str(target))
    assert "DynamicQuantizeLSTM" in {node.op_type for node in quantized.graph.node}
    assert model_cost(quantized).macs == model_cost(onnx.load(str(source))).macs


def test_a_matmul_of_constants_costs_nothing_per_sample():
    """DeBERTa's relative-position projections: a MatMul of a constant table by a weight (here behind
    a Transpose) runs once, when onnxruntime folds it at load time."""
    g = Graph()
    x = g.input("x", [1, 4, 8])
    table = g.node("Transpose", [g.weight("table", (8, 6))], perm=[1, 0])  # [6, 8]
    projected = g.node("MatMul", [table, g.weight("proj", (8, 8))], "relative")  # [6, 8], constant
    y = g.node("MatMul", [x, g.node("Transpose", [projected], perm=[1, 0])], "scores")  # [1, 4, 6]
    cost = model_cost(g.build(y))
    assert "relative" not in cost.node_macs
    assert cost.macs == cost.node_macs["scores"] == 4 * 8 * 6
