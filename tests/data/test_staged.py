"""Staged capture: each part of the graph runs once across passes, and stays exact when weights change."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import Graph, computed_reshape_encoder
from onnx import numpy_helper

from onnx_slim.data import staged as staged_module
from onnx_slim.data.activations import ActivationCapture
from onnx_slim.data.calibration import CalibrationSet
from onnx_slim.data.staged import StagedCapture


def residual_model() -> onnx.ModelProto:
    """x -> conv1 -> relu1 -> conv2 -> (+ relu1) -> relu2 -> conv3 -> (+ a constant computed by a Mul) -> y."""
    g = Graph(seed=3)
    x = g.input("x", ["N", 3, 8, 8])
    h = g.relu(g.conv(x, 4, name="conv1"), name="relu1")
    s = g.relu(g.add(h, g.conv(h, 4, name="conv2"), name="skip"), name="relu2")
    offset = g.node("Mul", [g.weight("offset_a", (1, 2, 1, 1)), g.weight("offset_b", (1, 2, 1, 1))], "offset")
    return g.build(g.add(g.conv(s, 2, name="conv3"), offset, name="out"))


def calibration(n: int = 10) -> CalibrationSet:
    return CalibrationSet({"x": np.random.default_rng(0).standard_normal((n, 3, 8, 8)).astype(np.float32)})


def full_run(model: onnx.ModelProto, wanted: list[str], data: CalibrationSet, batch_size: int) -> dict:
    capture = ActivationCapture(model, wanted)
    results = [capture.run(batch) for batch in data.batches(batch_size)]
    return {name: np.concatenate([r[name] for r in results]) for name in wanted}


def staged_run(staged: StagedCapture, model: onnx.ModelProto, wanted: list[str]) -> dict:
    results = list(staged.run(model, wanted))
    return {name: np.concatenate([r[name] for r in results]) for name in wanted}


def set_weight(model: onnx.ModelProto, name: str, scale: float) -> None:
    init = next(i for i in model.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(scale), name))


@pytest.fixture
def parts(monkeypatch) -> list[list[str]]:
    """Names of the nodes of each part the staged capture builds a session for."""
    seen, create = [], staged_module.create_session

    def recording(model, spec):
        seen.append([node.name for node in model.graph.node])
        return create(model, spec)

    monkeypatch.setattr(staged_module, "create_session", recording)
    return seen


def test_deeper_passes_run_only_the_new_part_and_match_a_full_run(parts):
    model, data = residual_model(), calibration()
    staged = StagedCapture(data, batch_size=4)  # 3 batches, the last one of 2 samples
    for wanted in (["relu1"], ["relu2"], ["conv3"]):
        np.testing.assert_allclose(staged_run(staged, model, wanted)[wanted[0]],
                                   full_run(model, wanted, data, 4)[wanted[0]], rtol=1e-5, atol=1e-6)
    assert parts == [["conv1", "relu1"], ["conv2", "skip", "relu2"], ["conv3"]]
    assert staged.restarts == 0


def test_a_weight_rewritten_in_a_part_already_run_starts_over(parts):
    model, data = residual_model(), calibration()
    staged = StagedCapture(data, batch_size=4)
    staged_run(staged, model, ["relu2"])
    set_weight(model, "conv1_w", 0.5)
    staged.rewritten(model, ["conv1_w"])
    assert staged.restarts == 1
    got = staged_run(staged, model, ["conv3"])["conv3"]
    np.testing.assert_allclose(got, full_run(model, ["conv3"], data, 4)["conv3"], rtol=1e-5, atol=1e-6)
    assert parts[-1] == ["conv1", "relu1", "conv2", "skip", "relu2", "conv3"]


def test_a_weight_rewritten_downstream_keeps_what_ran(parts):
    model, data = residual_model(), calibration()
    staged = StagedCapture(data, batch_size=4)
    staged_run(staged, model, ["relu1"])  # the input of conv2, which a re-fit would now re-write
    set_weight(model, "conv2_w", -2.0)
    staged.rewritten(model, ["conv2_w"])
    got = staged_run(staged, model, ["relu2"])["relu2"]
    assert staged.restarts == 0 and parts[-1] == ["conv2", "skip", "relu2"]
    np.testing.assert_allclose(got, full_run(model, ["relu2"], data, 4)["relu2"], rtol=1e-5, atol=1e-6)


def test_a_frontier_over_budget_is_dropped_and_results_stay_exact(parts):
    model, data = residual_model(), calibration()
    staged = StagedCapture(data, batch_size=4, budget_bytes=0)
    first = staged_run(staged, model, ["relu1"])["relu1"]
    assert staged.cached_bytes() == 0 and staged.restarts == 1
    second = staged_run(staged, model, ["relu2"])["relu2"]
    np.testing.assert_allclose(first, full_run(model, ["relu1"], data, 4)["relu1"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second, full_run(model, ["relu2"], data, 4)["relu2"], rtol=1e-5, atol=1e-6)
    assert parts[-1] == ["conv1", "relu1", "conv2", "skip", "relu2"]


def test_constants_are_recomputed_not_cached_and_the_frontier_is_what_later_nodes_read():
    model, data = residual_model(), calibration()
    staged = StagedCapture(data, batch_size=4)
    staged_run(staged, model, ["relu2"])
    # conv3 reads relu2; `offset` (constants only) is left to the part that needs it.
    assert [set(batch) for batch in staged._cache] == [{"relu2"}] * 3
    y = staged_run(staged, model, ["out"])["out"]
    np.testing.assert_allclose(y, full_run(model, ["out"], data, 4)["out"], rtol=1e-5, atol=1e-6)


def test_shapes_computed_at_run_time_follow_each_batch():
    model = computed_reshape_encoder()  # Reshape targets read through Shape, symbolic batch and sequence
    data = CalibrationSet({"x": np.random.default_rng(1).standard_normal((5, 7, 16)).astype(np.float32)})
    staged = StagedCapture(data, batch_size=2)
    for wanted in (["fc1_relu"], ["fc2"], ["unflat"]):
        np.testing.assert_allclose(staged_run(staged, model, wanted)[wanted[0]],
                                   full_run(model, wanted, data, 2)[wanted[0]], rtol=1e-5, atol=1e-6)
    assert staged.restarts == 0


def test_a_graph_with_subgraphs_runs_whole_and_stays_exact(parts):
    """An If body reads `relu1` from the outer graph without naming it: no part is cut out."""
    from onnx import TensorProto, helper

    g = Graph(seed=3)
    x = g.input("x", ["N", 3, 8, 8])
    h = g.relu(g.conv(x, 4, name="conv1"), name="relu1")
    branch = {name: helper.make_graph([helper.make_node(op, ["relu1"], [f"{name}_out"])], name, [],
                                      [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)])
              for name, op in (("then", "Identity"), ("else", "Neg"))}
    chosen = g.node("If", [g.const("flag", np.array(True))], "choose", then_branch=branch["then"],
                    else_branch=branch["else"])
    model = g.build(g.conv(chosen, 2, name="conv2"))
    data = calibration()
    staged = StagedCapture(data, batch_size=4)
    for wanted in (["relu1"], ["choose"], ["conv2"]):
        np.testing.assert_allclose(staged_run(staged, model, wanted)[wanted[0]],
                                   full_run(model, wanted, data, 4)[wanted[0]], rtol=1e-5, atol=1e-6)
    assert parts == [] and staged.parts_run == 0


def test_a_wanted_tensor_already_cached_is_echoed_beside_a_new_part(parts):
    """The re-fit asks for a layer's input and for the residual stream it joins: when the stream is
    already cached and the new part does not read it, it is returned as is, not fed to the part."""
    g = Graph(seed=3)
    x = g.input("x", ["N", 3, 8, 8])
    stream = g.relu(g.conv(x, 4, name="conv1"), name="relu1")
    branch = g.relu(g.conv(stream, 4, name="conv2"), name="relu_b")
    model = g.build(g.conv(g.add(stream, branch, name="skip"), 2, name="conv3"))
    data = calibration()
    staged = StagedCapture(data, batch_size=4)
    staged_run(staged, model, ["conv2"])  # leaves relu1 and conv2 cached: skip and relu_b read them
    got = staged_run(staged, model, ["relu_b", "relu1"])
    assert parts[-1] == ["relu_b"]
    for name in ("relu_b", "relu1"):
        np.testing.assert_allclose(got[name], full_run(model, [name], data, 4)[name], rtol=1e-5, atol=1e-6)


def test_a_wanted_tensor_computed_from_constants_only_is_returned_for_every_batch():
    """Swin-V2's position-bias MLP: its hidden layer reads only constants, yet the re-fit asks for it."""
    g = Graph(seed=4)
    x = g.input("x", ["N", 3, 8, 8])
    hidden = g.relu(g.node("MatMul", [g.weight("table", (8, 2)), g.weight("mlp1_w", (2, 6))], "mlp1"), name="hidden")
    bias = g.node("MatMul", [hidden, g.weight("mlp2_w", (6, 8))], "mlp2")  # [8, 8], broadcast over N and C
    model = g.build(g.add(g.conv(x, 8, name="conv"), bias, name="out"))
    data = calibration(6)
    expected = ActivationCapture(model, ["hidden"]).run(next(data.batches(4)))["hidden"]
    staged = StagedCapture(data, batch_size=4)
    for wanted in (["hidden"], ["conv", "hidden"]):  # the constant alone, then beside a new part
        got = list(staged.run(model, wanted))
        assert len(got) == 2  # 6 samples in batches of 4
        for batch in got:
            np.testing.assert_allclose(batch["hidden"], expected, rtol=1e-6)
