"""normalize(): one form for every exporter's way of storing weights, before any slicing."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import assert_lossless, assert_same_outputs, assert_valid, group_with, random_feeds, run, weight_dims
from graphs import Graph, conv_chain
from onnx import TensorProto, helper, numpy_helper

from onnx_slim.apply.surgery import deduplicate_initializers
from onnx_slim.channels.analysis import analyze
from onnx_slim.errors import InvalidModelError
from onnx_slim.normalize.passes import normalize
from onnx_slim.pipeline.prune import prune


def normalized(model: onnx.ModelProto):
    """(normalized copy, NormalizeInfo); the argument is left alone."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy, normalize(copy)


def node_named(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(node for node in model.graph.node if node.name == name)


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(init for init in model.graph.initializer if init.name == name))


def constant(name: str, value) -> onnx.NodeProto:
    tensor = numpy_helper.from_array(np.asarray(value))
    return helper.make_node("Constant", [], [name], name=f"{name}_const", value=tensor)


# -- Constants -------------------------------------------------------------------------------


def test_constant_nodes_become_initializers():
    """paddle2onnx / dynamo style: weights and a Reshape target as Constant nodes."""
    g = Graph()
    rng = np.random.default_rng(0)
    x = g.input("x", [1, 3, 4, 4])
    g.nodes += [constant("w1", rng.standard_normal((8, 3, 3, 3)).astype(np.float32)),
                constant("b1", rng.standard_normal(8).astype(np.float32)),
                constant("target", np.array([1, 128], dtype=np.int64))]
    h = g.relu(g.node("Conv", [x, "w1", "b1"], "conv1", pads=[1] * 4))
    model = g.build(g.gemm(g.node("Reshape", [h, "target"], "flat"), 3, name="fc"))
    result, info = normalized(model)
    assert info.constants_lifted == 3
    assert not any(node.op_type == "Constant" for node in result.graph.node)
    assert {"w1", "b1", "target"} <= {init.name for init in result.graph.initializer}
    assert node_named(result, "conv1").input[1:] == ["w1", "b1"]
    assert_same_outputs(model, result, rtol=0)
    pruned = assert_lossless(model, 0.5)
    assert weight_dims(pruned, "conv1") == (4, 3, 3, 3) and weight_dims(pruned, "fc") == (3, 64)


def test_cast_of_a_constant_becomes_an_initializer():
    g = Graph()
    half = g.const("w_half", np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float16))
    weight = g.node("Cast", [half], "cast_w", to=TensorProto.FLOAT)
    h = g.relu(g.node("Conv", [g.input("x", [1, 3, 8, 8]), weight], "conv1", pads=[1] * 4))
    model = g.build(g.conv(h, 2, name="conv_out"))
    result, _ = normalized(model)
    assert [node.op_type for node in result.graph.node] == ["Conv", "Relu", "Conv"]
    assert initializer(result, node_named(result, "conv1").input[1]).dtype == np.float32
    assert_same_outputs(model, result, rtol=0)
    assert_lossless(model, 0.5)


# -- Shared weights ----------------------------------------------------------------------------


def torchscript_shared_weight() -> onnx.ModelProto:
    """One weight reached by two Convs through Identity (TorchScript de-duplication).

    conv_a -> relu -> conv_c -> y (conv_a's group is prunable);
    conv_b -> z (a model output: conv_b's filters are frozen).
    """
    g = Graph()
    x = g.input("x", [1, 3, 8, 8])
    shared = g.weight("shared_w", (8, 3, 3, 3))
    w_a, w_b = g.node("Identity", [shared], "ident_a"), g.node("Identity", [shared], "ident_b")
    a = g.relu(g.node("Conv", [x, w_a], "conv_a", pads=[1] * 4))
    y = g.conv(a, 2, name="conv_c")
    z = g.node("Conv", [x, w_b], "conv_b", pads=[1] * 4)
    return g.build(y, z)


def test_identity_shared_weight_is_unshared():
    model = torchscript_shared_weight()
    result, info = normalized(model)
    assert not any(node.op_type == "Identity" for node in result.graph.node)
    assert info.copies_made == 1
    reads_a, reads_b = node_named(result, "conv_a").input[1], node_named(result, "conv_b").input[1]
    assert reads_a != reads_b
    np.testing.assert_array_equal(initializer(result, reads_a), initializer(result, reads_b))
    assert_same_outputs(model, result, rtol=0)


def test_pruning_one_user_of_a_shared_weight_leaves_the_other():
    model = torchscript_shared_weight()
    original_weight = initializer(model, "shared_w")
    pruned, report = prune(model, ratio=0.5)
    assert report.channels_removed == 4
    assert weight_dims(pruned, "conv_a") == (4, 3, 3, 3)
    np.testing.assert_array_equal(initializer(pruned, node_named(pruned, "conv_b").input[1]), original_weight)
    assert_valid(pruned, model)
    feeds = random_feeds(model)
    np.testing.assert_array_equal(run(pruned, feeds)["conv_b"], run(model, feeds)["conv_b"])


def test_identical_copies_are_merged_again():
    model = torchscript_shared_weight()
    result, _ = normalized(model)
    assert deduplicate_initializers(result) == 1
    assert node_named(result, "conv_a").input[1] == node_named(result, "conv_b").input[1]
    assert len(result.graph.initializer) == len(model.graph.initializer)
    unpruned, _ = prune(model, ratio=0.0)
    assert node_named(unpruned, "conv_a").input[1] == node_named(unpruned, "conv_b").input[1]


def test_directly_shared_weight_is_unshared():
    """Two Convs naming the same initializer, no Identity in between."""
    g = Graph()
    x = g.input("x", [1, 3, 8, 8])
    shared = g.weight("shared_w", (8, 3, 3, 3))
    a = g.relu(g.node("Conv", [x, shared], "conv_a", pads=[1] * 4))
    model = g.build(g.conv(a, 2, name="conv_c"), g.node("Conv", [x, shared], "conv_b", pads=[1] * 4))
    pruned, _ = prune(model, ratio=0.5)
    assert (weight_dims(pruned, "conv_a"), weight_dims(pruned, "conv_b")) == ((4, 3, 3, 3), (8, 3, 3, 3))
    assert_valid(pruned, model)


# -- Subgraphs ---------------------------------------------------------------------------------


def if_model(via_identity: bool) -> onnx.ModelProto:
    """A Conv trunk plus an If whose branches Conv `x` with an outer weight, read
    directly (`shared_w`, also used by conv1) or through an outer Identity."""
    g = Graph()
    x = g.input("x", [1, 3, 8, 8])
    g.inputs.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    shared = g.weight("shared_w", (8, 3, 3, 3))
    outer = g.node("Identity", [shared], "ident") if via_identity else shared
    h = g.relu(g.node("Conv", [x, shared], "conv1", pads=[1] * 4))
    h = g.conv(g.relu(g.conv(h, 8, name="conv2")), 8, name="conv3")

    def branch(name):
        out = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)
        conv = helper.make_node("Conv", ["x", outer], [f"{name}_y"], name=f"{name}_conv", pads=[1] * 4)
        return helper.make_graph([conv], name, [], [out])

    g.nodes.append(helper.make_node("If", ["cond"], ["branch_y"], name="if",
                                    then_branch=branch("then"), else_branch=branch("else")))
    return g.build(g.node("Add", [h, "branch_y"], "sum"))


@pytest.mark.parametrize("via_identity", [False, True])
def test_weight_read_inside_a_subgraph_is_never_sliced(via_identity):
    model = if_model(via_identity)
    result, _ = normalized(model)
    onnx.checker.check_model(result, full_check=True)
    pruned, report = prune(model, ratio=0.5)
    assert report.channels_removed > 0 and weight_dims(pruned, "conv1") == (4, 3, 3, 3)
    branch_conv = node_named(pruned, "if").attribute[0].g.node[0]
    np.testing.assert_array_equal(initializer(pruned, branch_conv.input[1]), initializer(model, "shared_w"))
    assert_valid(pruned, model)


def test_batchnorm_whose_output_a_subgraph_reads_folds_validly():
    g = Graph()
    h = g.bn(g.conv(g.input("x", [1, 3, 8, 8]), 8, name="conv1"), name="bn")
    g.inputs.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))

    def branch(name):
        out = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)
        relu = helper.make_node("Relu", [h], [f"{name}_y"], name=f"{name}_relu")
        return helper.make_graph([relu], name, [], [out])

    g.nodes.append(helper.make_node("If", ["cond"], ["branch_y"], name="if",
                                    then_branch=branch("then"), else_branch=branch("else")))
    model = g._model([helper.make_tensor_value_info("branch_y", TensorProto.FLOAT, [1, 8, 8, 8])])
    result, info = normalized(model)
    onnx.checker.check_model(result, full_check=True)
    assert info.folded_batchnorms == 1
    assert_same_outputs(model, result)


# -- BatchNormalization folding -------------------------------------------------------------------


@pytest.mark.parametrize("producer", ["Conv", "DepthwiseConv", "ConvTranspose", "Gemm", "GemmTransB"])
def test_batchnorm_folding_keeps_outputs(producer):
    g = Graph()
    x = g.input("x", [1, 4, 8, 8])
    if producer == "Conv":
        h = g.conv(x, 8, name="source")
    elif producer == "DepthwiseConv":
        h = g.depthwise(x, 2, name="source")
    elif producer == "ConvTranspose":
        h = g.conv_transpose(x, 8, name="source")
    else:
        h = g.gemm(g.flatten(g.gap(x)), 8, trans_b=int(producer == "GemmTransB"), name="source")
    h = g.relu(g.bn(h, name="bn"))
    model = g.build(g.conv(h, 2, name="out") if not producer.startswith("Gemm") else g.gemm(h, 2, name="out"))
    result, info = normalized(model)
    assert info.folded_batchnorms == 1
    assert not any(node.op_type == "BatchNormalization" for node in result.graph.node)
    np.testing.assert_allclose(info.bn_scales["source"], np.abs(initializer(model, "bn_scale")))
    assert_same_outputs(model, result, rtol=1e-5)


@pytest.mark.parametrize("producer, bias, constant_shape", [
    ("Conv", False, (1, 8, 1, 1)),  # paddle2onnx: every conv bias is an Add of [1, C, 1, 1]
    ("Conv", True, (8, 1, 1)),
    ("Conv", True, ()),  # a scalar adds the same to every channel
    ("ConvTranspose", True, (1, 8, 1, 1)),
])
def test_bias_add_after_a_conv_folds_into_its_bias_and_lets_a_batchnorm_fold(producer, bias, constant_shape):
    g = Graph()
    x = g.input("x", [1, 4, 8, 8])
    h = g.conv(x, 8, bias=bias, name="source") if producer == "Conv" else g.conv_transpose(x, 8, name="source")
    h = g.node("Add", [h, g.const("offset", g.rng.standard_normal(constant_shape).astype(np.float32))], "bias_add")
    model = g.build(g.conv(g.relu(g.bn(g.node("Identity", [h], "identity"), name="bn")), 2, name="out"))
    result, info = normalized(model)
    assert info.bias_adds_folded == 1 and info.folded_batchnorms == 1
    assert [node.op_type for node in result.graph.node] == [producer, "Relu", "Conv"]
    assert_same_outputs(model, result, rtol=1e-5)


def test_bias_add_is_kept_when_something_else_reads_the_conv_output():
    g = Graph()
    h = g.conv(g.input("x", [1, 4, 8, 8]), 8, name="source")
    shifted = g.node("Add", [h, g.const("offset", np.ones((1, 8, 1, 1), dtype=np.float32))], "bias_add")
    model = g.build(g.conv(g.add(shifted, h), 2, name="out"))
    result, info = normalized(model)
    assert info.bias_adds_folded == 0 and node_named(result, "bias_add").op_type == "Add"
    assert_same_outputs(model, result, rtol=1e-5)


def test_batchnorm_without_producer_bias_gets_one():
    g = Graph()
    h = g.bn(g.conv(g.input("x", [1, 3, 8, 8]), 8, bias=False, name="conv1"), name="bn")
    model = g.build(g.conv(g.relu(h), 2, name="out"))
    result, info = normalized(model)
    assert len(node_named(result, "conv1").input) == 3
    assert_same_outputs(model, result, rtol=1e-5)


def test_batchnorm_feeding_a_model_output_keeps_the_output_name():
    g = Graph()
    h = g.bn(g.conv(g.input("x", [1, 3, 8, 8]), 8, name="conv1"), name="bn")
    model = g.build(h)
    result, info = normalized(model)
    assert info.folded_batchnorms == 1 and node_named(result, "conv1").output[0] == "bn"
    assert_same_outputs(model, result, rtol=1e-5)


def test_bn_scale_criterion_uses_folded_gammas():
    """bn_scale ranks by |gamma|: the channels with the smallest gammas go."""
    g = Graph()
    h = g.bn(g.conv(g.input("x", [1, 3, 8, 8]), 8, name="conv1"), name="bn")
    model = g.build(g.conv(g.relu(h), 2, name="out"))
    gamma = np.array([1.0, 0.01, 1.0, 0.02, 1.0, 0.03, 1.0, 0.04], dtype=np.float32)
    scale = next(init for init in model.graph.initializer if init.name == "bn_scale")
    scale.CopyFrom(numpy_helper.from_array(gamma, "bn_scale"))
    analysis = analyze(model)
    folded_weight = initializer(analysis.model, "conv1_w")
    pruned, _ = prune(model, ratio=0.5, criterion="bn_scale")
    np.testing.assert_allclose(initializer(pruned, "conv1_w"), folded_weight[[0, 2, 4, 6]])


# -- Refusals and names ---------------------------------------------------------------------------


def quantized_model() -> onnx.ModelProto:
    g = Graph()
    x = g.input("x", [1, 3, 8, 8])
    scale, zero = g.const("scale", np.float32(0.05)), g.const("zero", np.uint8(128))
    q = g.node("QuantizeLinear", [x, scale, zero], "quant")
    dq = g.node("DequantizeLinear", [q, scale, zero], "dequant")
    return g.build(g.conv(g.relu(g.conv(dq, 8, name="conv1")), 2, name="out"))


def test_quantized_model_is_refused():
    model = quantized_model()
    for call in (analyze, lambda m: prune(m, ratio=0.5)):
        with pytest.raises(InvalidModelError, match="prune the float model"):
            call(model)


def test_old_opset_is_upgraded():
    model = conv_chain((8,))
    model.opset_import[0].version = 10
    analysis = analyze(model)
    assert analysis.normalize_info.opset_upgraded_from == 10
    assert [o.version for o in analysis.model.opset_import if o.domain in ("", "ai.onnx")] == [13]
    assert model.opset_import[0].version == 10  # the caller's model is left alone


def test_nodes_out_of_order_are_sorted_before_anything_walks_them():
    """onnxruntime runs graphs whose nodes are not in topological order (its float16 converter
    appends the input Casts last); the channel analysis must still see producers first."""
    model = conv_chain((8, 8))
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes[1:] + nodes[:1])  # the first conv last
    result, _ = normalized(model)
    position = {name: index for index, node in enumerate(result.graph.node) for name in node.output}
    for index, node in enumerate(result.graph.node):
        assert all(position.get(name, -1) < index for name in node.input)
    assert_same_outputs(conv_chain((8, 8)), result)
    assert group_with(analyze(model), "conv1").prunable


def test_float16_model_with_float32_io_prunes_with_calibration():
    """The usual float16 file (onnxruntime's converter, keep_io_types): input Cast appended last."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from onnx_slim.data.calibration import CalibrationSet

    source = conv_chain((8, 8), size=8)
    for value in (source.graph.input[0], source.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    model = convert_float_to_float16(source, keep_io_types=True)
    assert model.graph.node[-1].op_type == "Cast"
    calibration = CalibrationSet({"x": np.random.default_rng(0).random((16, 3, 8, 8), dtype=np.float32)})
    pruned, report = prune(model, target_macs=0.6, criterion="thinet", reconstruct=True, calibration=calibration)
    assert report.groups_pruned > 0 and report.reconstruction["layers"]
    assert_valid(pruned, model)


def test_nodes_get_unique_names():
    model = conv_chain((8, 8))
    model.graph.node[0].name = ""
    model.graph.node[1].name = "conv2"  # a duplicate of the third node's name
    result, _ = normalized(model)
    names = [node.name for node in result.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert names[1] == "conv2" and names[2].startswith("conv2")  # the first keeps its name


def conv_bn_model() -> onnx.ModelProto:
    g = Graph()
    h = g.relu(g.bn(g.conv(g.input("x", [1, 3, 8, 8]), 8, name="conv1"), name="bn"))
    return g.build(g.conv(h, 2, name="out"))


@pytest.mark.parametrize("build", [torchscript_shared_weight, conv_bn_model])
def test_normalize_is_idempotent(build):
    once, _ = normalized(build())
    twice, info = normalized(once)
    assert twice.SerializeToString() == once.SerializeToString()
    assert (info.copies_made, info.folded_batchnorms, info.constants_lifted) == (0, 0, 0)


def test_folded_batchnorm_parameters_are_not_left_behind(tmp_path):
    """onnxruntime warned 'Removing initializer ... It is not used by any node' for each of them."""
    g = Graph()
    h = g.relu(g.bn(g.conv(g.input("x", [1, 3, 8, 8]), 8, name="conv1"), name="bn"))
    model = g.build(g.conv(h, 2, name="out"))
    result, _ = normalized(model)
    read = {name for node in result.graph.node for name in node.input}
    assert [init.name for init in result.graph.initializer if init.name not in read] == []
    pruned, _ = prune(model, ratio=0.5)
    read = {name for node in pruned.graph.node for name in node.input}
    assert [init.name for init in pruned.graph.initializer if init.name not in read] == []
