"""--input-value: inputs fed one value wherever inputs are made up or read from data (silero-vad's
sample rate `sr` and its recurrent `state` [2, batch, 128]), and the calibration files that leave them out."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_cli import run_cli

from onnx_slim.data.calibration import load_calibration
from onnx_slim.deploy.quant_calibration import rebatched
from onnx_slim.errors import UsageError
from onnx_slim.ir.inputs import (MadeUpInputs, check_input_values, graph_inputs, parse_input_values, random_inputs,
                                with_values)
from onnx_slim.ir.runtime import create_session, run_session

RATE = 16000


def vad_like(path=None, batch="batch") -> onnx.ModelProto:
    """x [batch, 16] -> MatMul 16x32 -> Relu -> MatMul 32x8, plus the mean of state [2, batch, 8]; an If
    on `sr == 16000` returns that sum, its else branch a Reshape that fails (as silero's 8 kHz branch
    fails on 16 kHz-sized input)."""
    rng = np.random.default_rng(0)
    then_branch = helper.make_graph([helper.make_node("Identity", ["summed"], ["then_out"])], "then", [],
                                    [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)])
    else_branch = helper.make_graph(
        [helper.make_node("Constant", [], ["bad_shape"], value=numpy_helper.from_array(np.array([-1, 3], np.int64))),
         helper.make_node("Reshape", ["summed", "bad_shape"], ["else_out"])], "else", [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["a"], name="act"),
        helper.make_node("MatMul", ["a", "w2"], ["z"], name="fc2"),
        helper.make_node("ReduceMean", ["state", "axes"], ["s"], keepdims=0, name="state_mean"),
        helper.make_node("Add", ["z", "s"], ["summed"], name="add"),
        helper.make_node("Equal", ["sr", "rate"], ["is_16k"], name="rate_check"),
        helper.make_node("If", ["is_16k"], ["y"], then_branch=then_branch, else_branch=else_branch, name="branch"),
    ]
    graph = helper.make_graph(
        nodes, "vad_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 16]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, batch, 8]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1"),
         numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "w2"),
         numpy_helper.from_array(np.array([0], np.int64), "axes"),
         numpy_helper.from_array(np.array(RATE, np.int64), "rate")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    if path is not None:
        onnx.save(model, str(path))
    return model


def test_values_parse_and_check():
    assert parse_input_values(["sr=16000", "state=0"]) == {"sr": 16000.0, "state": 0.0}
    for bad in ("sr", "=3", "sr=fast", "sr=nan"):
        with pytest.raises(UsageError, match="expected NAME=NUMBER"):
            parse_input_values([bad])
    with pytest.raises(UsageError, match="'sr=8000': sr is given twice"):
        parse_input_values(["sr=16000", "sr=8000"])
    model = vad_like()
    with pytest.raises(UsageError, match="no such input"):
        check_input_values(model, {"rate": 1.0})
    with pytest.raises(UsageError, match="the input is int64, give a whole number"):
        check_input_values(model, {"sr": 0.5})
    with pytest.raises(UsageError, match=r"state=1e\+39: out of range for the input's float32"):
        check_input_values(model, {"state": 1e39})
    with pytest.raises(UsageError, match=r"sr=1e\+30: out of range for the input's int64"):
        check_input_values(model, {"sr": 1e30})
    with pytest.raises(UsageError, match="out of range for the input's int64"):
        check_input_values(model, parse_input_values(["sr=9223372036854775807"]))  # 2**63 once a float
    flag = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["on"], ["y"])], "flag", [helper.make_tensor_value_info("on", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.BOOL, [])]))
    check_input_values(flag, {"on": 1.0})
    with pytest.raises(UsageError, match="on=2: out of range for the input's bool"):
        check_input_values(flag, {"on": 2.0})


def test_fixed_inputs_follow_the_batch_of_the_others():
    model = vad_like()
    specs = graph_inputs(model)
    filled = with_values({"x": np.ones((5, 16), np.float32)}, specs, {"sr": RATE, "state": 0.0})
    assert list(filled) == ["x", "state", "sr"]
    assert filled["state"].shape == (2, 5, 8) and not filled["state"].any()
    assert filled["sr"].shape == () and filled["sr"].dtype == np.int64 and filled["sr"] == RATE
    made_up = random_inputs(model, batch=3, values={"sr": RATE})
    assert made_up["state"].shape == (2, 3, 8) and made_up["sr"] == RATE
    assert run_session(create_session(model), made_up)["y"].shape == (3, 8)


@pytest.mark.parametrize("batch", ["batch", None])
def test_a_fixed_state_follows_the_batch_even_unnamed_or_given_a_size(batch):
    """silero_vad.onnx names no dim (state [2, ?, 128]): its state took the default 64 and no
    --input-shape could help at another batch."""
    specs = graph_inputs(vad_like(batch=batch))
    values = {"sr": RATE, "state": 0.0}
    assert with_values({"x": np.ones((5, 16), np.float32)}, specs, values)["state"].shape == (2, 5, 8)
    pinned = with_values({"x": np.ones((8, 16), np.float32)}, specs, values, shapes={"state": (2, 1, 8)})
    assert pinned["state"].shape == (2, 8, 8)
    assert random_inputs(vad_like(batch=batch), batch=3, values=values)["state"].shape == (2, 3, 8)


def test_random_calibration_leaves_a_fixed_scalar_alone():
    calibration = load_calibration("random", vad_like(), samples=8, input_values={"sr": RATE, "state": 0.0})
    batch = next(calibration.batches(4))
    assert batch["x"].shape == (4, 16) and batch["state"].shape == (2, 4, 8) and batch["sr"] == RATE


def test_a_calibration_file_leaves_fixed_inputs_out_and_batches_get_them(tmp_path, caplog):
    model = vad_like()
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((10, 16)).astype(np.float32),
             sr=np.full(10, 8000))  # a key for a fixed input is ignored, with a warning
    calibration = load_calibration(tmp_path / "calib.npz", model, input_values={"sr": RATE, "state": 0.0})

    assert "key 'sr' ignored: --input-value fixes that input" in caplog.text
    assert calibration.input_names == ["x", "state", "sr"] and calibration.sample_shapes() == {"x": (1, 16)}
    sizes = [(batch["x"].shape[0], batch["state"].shape, int(batch["sr"])) for batch in calibration.batches(4)]
    assert sizes == [(4, (2, 4, 8), RATE), (4, (2, 4, 8), RATE), (2, (2, 2, 8), RATE)]
    held, rest = calibration.split(6)
    assert next(rest.batches(8))["state"].shape == (2, 4, 8)
    with pytest.raises(UsageError, match="every input is fixed by --input-value"):
        load_calibration(tmp_path / "calib.npz", model, input_values={"x": 1.0, "sr": RATE, "state": 0.0})


def test_rebatching_calibration_refills_fixed_inputs():
    model = vad_like()
    specs = graph_inputs(model)
    inputs = MadeUpInputs(values={"sr": RATE, "state": 0.0})
    incoming = [with_values({"x": np.ones((3, 16), np.float32)}, specs, inputs.values) for _ in range(3)]
    out = list(rebatched(incoming, specs, 4, exact=False, inputs=inputs))
    assert [(b["x"].shape[0], b["state"].shape, int(b["sr"])) for b in out] == [(4, (2, 4, 8), RATE),
                                                                                (4, (2, 4, 8), RATE),
                                                                                (1, (2, 1, 8), RATE)]


def test_prune_and_bench_run_a_model_whose_scalar_picks_its_branch(capsys, tmp_path):
    path = tmp_path / "vad.onnx"
    vad_like(path)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(2).standard_normal((32, 16)).astype(np.float32))
    before = path.read_bytes()

    code, _, stderr = run_cli(capsys, "prune", path, "-o", tmp_path / "no.onnx", "--ratio", "0.5", "--quiet")
    assert code == 1 and "the scalar input sr got random values" in stderr
    assert "--input-value sr=NUMBER" in stderr and not (tmp_path / "no.onnx").exists()

    out = tmp_path / "slim.onnx"
    code, _, stderr = run_cli(capsys, "prune", path, "-o", out, "--ratio", "0.5", "--calib", tmp_path / "calib.npz",
                              "--reconstruct", "--input-value", "sr=16000", "--input-value", "state=0", "--quiet")
    assert code == 0, stderr
    assert path.read_bytes() == before
    pruned = onnx.load(str(out))
    assert [i.name for i in pruned.graph.input] == ["x", "state", "sr"]  # the interface is kept
    assert next(i for i in pruned.graph.initializer if i.name == "w1").dims == [16, 16]
    feeds = random_inputs(pruned, batch=2, values={"sr": RATE})
    assert run_session(create_session(pruned), feeds)["y"].shape == (2, 8)

    code, stdout, stderr = run_cli(capsys, "bench", path, out, "--runs", "2", "--warmup", "1", "--no-memory",
                                   "--input-value", "sr=16000", "--json")
    assert code == 0, stderr
    # Counted: the measuring run needs sr's branch too (16 x 32 + 32 x 8 multiply-adds at batch 1).
    assert [model["macs"] for model in json.loads(stdout)["models"]] == [16 * 32 + 32 * 8, 16 * 16 + 16 * 8]
