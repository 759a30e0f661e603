"""The final clean-up: Identity chains, constant subgraphs and duplicated constants go; outputs, names,
symbolic dims, opsets and quantization nodes stay."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from test_quantize import conv_net

from onnx_slim.deploy.cleanup import clean_model
from onnx_slim.deploy.quantize import quantize_model
from onnx_slim.ir.inputs import random_inputs
from onnx_slim.ir.runtime import create_session, run_session


def cluttered_model() -> onnx.ModelProto:
    """x -> Identity -> Identity -> Relu; + (a constant subgraph: Constant * 2); + two equal bias copies."""
    bias = np.arange(4, dtype=np.float32)
    nodes = [
        helper.make_node("Identity", ["x"], ["x1"], name="id1"),
        helper.make_node("Identity", ["x1"], ["x2"], name="id2"),
        helper.make_node("Relu", ["x2"], ["r"], name="relu"),
        helper.make_node("Constant", [], ["c"], name="const", value=numpy_helper.from_array(bias + 1, "c")),
        helper.make_node("Mul", ["c", "two"], ["c2"], name="scale_const"),
        helper.make_node("Add", ["r", "c2"], ["a"], name="add_folded"),
        helper.make_node("Add", ["a", "bias_a"], ["b"], name="add_a"),
        helper.make_node("Add", ["b", "bias_b"], ["y"], name="add_b"),
    ]
    graph = helper.make_graph(
        nodes, "cluttered",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.float32(2.0), "two"), numpy_helper.from_array(bias, "bias_a"),
         numpy_helper.from_array(bias.copy(), "bias_b"), numpy_helper.from_array(bias, "unused")],
        value_info=[helper.make_tensor_value_info("dangling", TensorProto.FLOAT, [4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def test_cleanup_removes_identity_chain_constant_subgraph_and_duplicates_and_keeps_outputs():
    model = cluttered_model()

    cleaned, report = clean_model(model)

    assert [node.op_type for node in cleaned.graph.node] == ["Relu", "Add", "Add", "Add"]
    assert report.identities_bypassed == 2 and report.duplicates_merged == 1
    assert report.removed_ops == {"Constant": 1, "Identity": 2, "Mul": 1}
    assert (report.nodes_before, report.nodes_after) == (8, 4)
    names = {tensor.name for tensor in cleaned.graph.initializer}
    assert "unused" not in names and len({"bias_a", "bias_b"} & names) == 1
    assert "dangling" not in {value.name for value in cleaned.graph.value_info}
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)}
    np.testing.assert_array_equal(run_session(create_session(cleaned), feeds)["y"],
                                  run_session(create_session(model), feeds)["y"])
    onnx.checker.check_model(cleaned, full_check=True)


def test_cleanup_keeps_names_symbolic_dims_opset_and_ir_version():
    model = cluttered_model()

    cleaned, _ = clean_model(model)

    assert [value.name for value in cleaned.graph.input] == ["x"]
    assert [value.name for value in cleaned.graph.output] == ["y"]
    for value in (cleaned.graph.input[0], cleaned.graph.output[0]):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert cleaned.ir_version == 7 and [(o.domain, o.version) for o in cleaned.opset_import] == [("", 13)]
    assert model.graph.node[0].op_type == "Identity"  # the input model is not modified


def test_cleanup_never_folds_the_dequantization_of_int8_weights(tmp_path):
    quantize_model(conv_net(), tmp_path / "q.onnx", mode="static", calibration="random", measure=False,
                   cleanup=False)
    quantized = onnx.load(str(tmp_path / "q.onnx"))

    cleaned, _ = clean_model(quantized)

    def dequantizes(model):
        return sum(node.op_type == "DequantizeLinear" for node in model.graph.node)
    assert dequantizes(cleaned) == dequantizes(quantized) > 0
    int8 = [t for t in cleaned.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8) == 3  # the three Conv weights stay int8


def test_an_outer_weight_read_only_in_if_branches_stays_one_outer_initializer():
    weight = numpy_helper.from_array(np.ones((4,), np.float32), "w")

    def branch(name):
        add = helper.make_node("Add", ["x", "w"], [f"{name}_y"], name=f"{name}_add")
        return helper.make_graph([add], name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [4])])

    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch("then"), else_branch=branch("else"))], "if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    cleaned, _ = clean_model(model)

    assert [tensor.name for tensor in cleaned.graph.initializer] == ["w"]
    assert all(not body.initializer for body in (a.g for a in cleaned.graph.node[0].attribute))
    feeds = {"x": np.arange(4, dtype=np.float32), "cond": np.array(True)}
    np.testing.assert_array_equal(run_session(create_session(cleaned), feeds)["y"], np.arange(4) + 1)


def test_quantize_and_prune_report_the_cleanup(tmp_path):
    from onnx_slim.pipeline.prune import prune

    report = quantize_model(conv_net(), tmp_path / "q.onnx", calibration="random", measure=False)
    assert report.cleanup["nodes_after"] <= report.cleanup["nodes_before"]
    _, pruned = prune(conv_net(), ratio=0.5)
    assert pruned.cleanup is not None and pruned.cleanup["nodes_after"] == pruned.cleanup["nodes_before"]
    _, unclean = prune(conv_net(), ratio=0.5, cleanup=False)
    assert unclean.cleanup is None
    assert random_inputs(conv_net())  # the helper graph is unchanged by either call


def tied_embedding_lm() -> onnx.ModelProto:
    """A tied embedding as the dynamo exporter writes GPT-2: the table [V, d] read by the token Gather
    and, through a Transpose, by the output projection."""
    table = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["embedded"], name="embed"),
        helper.make_node("Relu", ["embedded"], ["hidden"], name="act"),
        helper.make_node("Transpose", ["table"], ["table_t"], name="tie", perm=[1, 0]),
        helper.make_node("MatMul", ["hidden", "table_t"], ["logits"], name="lm_head"),
    ]
    graph = helper.make_graph(
        nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", 50])],
        [numpy_helper.from_array(table, "table")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_tied_weight_stays_one_tensor_read_through_its_transpose():
    """Folding the Transpose would store the table twice (the pruned GPT-2 grew by 36% of its params)."""
    model = tied_embedding_lm()
    separate = onnx.ModelProto()
    separate.CopyFrom(model)  # each reader its own copy, as normalization leaves it
    separate.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(model.graph.initializer[0]),
                                                              "table_copy"))
    separate.graph.node[2].input[0] = "table_copy"
    for source in (model, separate):
        cleaned, _ = clean_model(source)
        assert len(cleaned.graph.initializer) == 1
        assert [node.op_type for node in cleaned.graph.node].count("Transpose") == 1
        feeds = {"ids": np.array([[1, 7, 49]], np.int64)}
        np.testing.assert_array_equal(run_session(create_session(cleaned), feeds)["logits"],
                                      run_session(create_session(model), feeds)["logits"])


def test_a_transpose_of_a_weight_read_once_is_still_folded():
    model = tied_embedding_lm()
    model.graph.node[0].input[0] = "other_table"
    model.graph.initializer.append(numpy_helper.from_array(np.ones((50, 8), np.float32), "other_table"))
    cleaned, _ = clean_model(model)
    assert "Transpose" not in [node.op_type for node in cleaned.graph.node]


def _if_with_two_outputs_from_a_nested_if() -> onnx.ModelProto:
    """An If on a constant condition whose branches return both outputs of a nested If (silero-vad's
    decoder): graphsurgeon's folding inlines the branch and leaves the second output unproduced."""
    def branch(tag: str) -> onnx.GraphProto:
        def body(suffix: str, ops: tuple[str, str]) -> onnx.GraphProto:
            outputs = [f"{tag}_{suffix}{i}" for i in range(2)]
            nodes = [helper.make_node(op, ["x", "two"][:1 + (op != "Neg")], [out]) for op, out in zip(ops, outputs)]
            return helper.make_graph(nodes, f"{tag}_{suffix}", [],
                                     [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs])
        outputs = [f"{tag}_out{i}" for i in range(2)]
        nested = helper.make_node("If", ["flag"], outputs, then_branch=body("then", ("Mul", "Add")),
                                  else_branch=body("else", ("Sub", "Neg")))
        return helper.make_graph([nested], tag, [],
                                 [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs])
    nodes = [
        helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True))),
        helper.make_node("If", ["cond"], ["y1", "y2"], then_branch=branch("t"), else_branch=branch("e")),
        helper.make_node("Add", ["y1", "y2"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
                     helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.array([2.0, 3.0], np.float32), "two")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_fold_that_breaks_the_graph_is_given_up_and_the_unused_nodes_still_go():
    model = _if_with_two_outputs_from_a_nested_if()
    onnx.checker.check_model(model, full_check=True)
    before = model.SerializeToString()

    cleaned, report = clean_model(model)

    onnx.checker.check_model(cleaned, full_check=True)
    assert model.SerializeToString() == before
    assert any("folding left y2 without a producer" in note for note in report.notes)
    for flag in (True, False):
        feeds = {"x": np.array([1.0, -4.0], np.float32), "flag": np.array(flag)}
        expected = run_session(create_session(model), feeds)["out"]
        np.testing.assert_array_equal(run_session(create_session(cleaned), feeds)["out"], expected)


def test_a_fold_that_breaks_an_if_branch_is_given_up_too():
    """silero_vad.onnx keeps the structure above inside the branch of an outer If (its sample-rate
    test): the fold left a tensor of that branch without a producer, and the checker refused it."""
    inner = _if_with_two_outputs_from_a_nested_if().graph
    then_branch = helper.make_graph(list(inner.node), "outer_then", [],
                                    [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    else_branch = helper.make_graph([helper.make_node("Neg", ["x"], ["negated"])], "outer_else", [],
                                    [helper.make_tensor_value_info("negated", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("If", ["rate_ok"], ["result"], then_branch=then_branch, else_branch=else_branch)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
         helper.make_tensor_value_info("rate_ok", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("result", TensorProto.FLOAT, [2])], list(inner.initializer))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)

    cleaned, report = clean_model(model)

    onnx.checker.check_model(cleaned, full_check=True)
    assert any("without a producer" in note for note in report.notes)
    for flag, rate_ok in ((True, True), (False, True), (True, False)):
        feeds = {"x": np.array([1.0, -4.0], np.float32), "flag": np.array(flag), "rate_ok": np.array(rate_ok)}
        expected = run_session(create_session(model), feeds)["result"]
        np.testing.assert_array_equal(run_session(create_session(cleaned), feeds)["result"], expected)
