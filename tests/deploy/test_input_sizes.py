"""Models that random inputs at the default sizes cannot run, and models int8 does not take.

A raw-audio front end ([batch, samples] into strided 1-D convs, as wav2vec2 exports are) shrinks
the default guess of 64 samples to nothing: `--input-shape` must size every random input the
commands make (calibration, checks, timing), and without it the error must say so. A model
exported in half precision is refused by int8 in one line, and `run` leaves it unquantized.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_cli import run_cli

from onnx_slim.data.calibration import load_calibration
from onnx_slim.deploy.quantize import RANDOM, quantize_model
from onnx_slim.errors import OnnxSlimError, UsageError
from onnx_slim.ir.inputs import shapes_at_batch
from onnx_slim.ir.runtime import create_session, run_session

SAMPLES = 4000


def audio_net(seed: int = 0) -> onnx.ModelProto:
    """x [batch, samples] -> three strided Conv1d + Relu -> mean over time -> MatMul [batch, 4].
    64 samples leave one frame after the second conv, too few for the third."""
    rng = np.random.default_rng(seed)
    initializers = [numpy_helper.from_array(np.array([1], np.int64), "axis1"),
                    numpy_helper.from_array((rng.standard_normal((8, 4)) / 3).astype(np.float32), "head")]
    nodes = [helper.make_node("Unsqueeze", ["x", "axis1"], ["wave"], name="unsqueeze")]
    source, channels = "wave", 1
    for index, (kernel, stride) in enumerate([(16, 8), (4, 4), (4, 4)]):
        weight = (rng.standard_normal((8, channels, kernel)) / np.sqrt(channels * kernel)).astype(np.float32)
        initializers.append(numpy_helper.from_array(weight, f"conv{index}.weight"))
        nodes += [helper.make_node("Conv", [source, f"conv{index}.weight"], [f"conv{index}"], name=f"conv{index}",
                                   kernel_shape=[kernel], strides=[stride]),
                  helper.make_node("Relu", [f"conv{index}"], [f"relu{index}"], name=f"relu{index}")]
        source, channels = f"relu{index}", 8
    nodes += [helper.make_node("ReduceMean", [source], ["pooled"], name="pool", axes=[2], keepdims=0),
              helper.make_node("MatMul", ["pooled", "head"], ["y"], name="head")]
    graph = helper.make_graph(
        nodes, "audio_net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def half_net() -> onnx.ModelProto:
    """A Conv + Relu in float16 end to end, as `model.half()` exports it."""
    weight = numpy_helper.from_array(np.full((4, 3, 3, 3), 0.1, np.float16), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["out"], name="relu")],
        "half_net", [helper.make_tensor_value_info("image", TensorProto.FLOAT16, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT16, ["batch", 4, 8, 8])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def audio_path(tmp_path):
    path = tmp_path / "audio.onnx"
    onnx.save(audio_net(), str(path))
    return path


def test_random_calibration_takes_the_given_sizes(audio_path):
    calibration = load_calibration("random", audio_path, samples=5, input_shapes={"x": [1, SAMPLES]})
    assert calibration.arrays["x"].shape == (5, SAMPLES)
    assert load_calibration("random", audio_path, samples=5).arrays["x"].shape == (5, 64)


def test_quantize_without_the_sizes_says_which_option_gives_them(audio_path, tmp_path):
    with pytest.raises(OnnxSlimError, match=r"symbolic sizes were guessed: x=\d+,64; give the real ones with "
                                            r"--input-shape"):
        quantize_model(audio_path, tmp_path / "q.onnx", mode="dynamic", measure=False)
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("mode", ["dynamic", "static", "auto"])
def test_quantize_with_data_makes_up_its_check_inputs_at_the_datas_sizes(audio_path, tmp_path, mode):
    """Dynamic int8 read no data: its check and timing ran on a guessed 64 samples and failed on the
    same silero export that static int8 of the same data quantized."""
    rng = np.random.default_rng(2)
    data = [{"x": rng.standard_normal((8, SAMPLES)).astype(np.float32)} for _ in range(2)]
    report = quantize_model(audio_path, tmp_path / "q.onnx", mode=mode, calibration=data)
    assert report.mode in ("static", "dynamic") and (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("mode, calibration", [("dynamic", None), ("static", RANDOM)])
def test_quantize_runs_every_check_at_the_given_sizes_and_keeps_the_symbolic_axes(audio_path, tmp_path, mode,
                                                                                  calibration):
    out = tmp_path / f"{mode}.onnx"
    report = quantize_model(audio_path, out, mode=mode, calibration=calibration, input_shapes={"x": [1, SAMPLES]})
    assert report.mode == mode and out.exists()
    written = onnx.load(str(out))
    assert [d.dim_param for d in written.graph.input[0].type.tensor_type.shape.dim] == ["batch", "samples"]
    feeds = {"x": np.random.default_rng(1).standard_normal((3, 3000)).astype(np.float32)}
    expected = run_session(create_session(audio_net()), feeds)["y"]
    got = run_session(create_session(written), feeds)["y"]
    assert got.shape == (3, 4) and np.all(np.isfinite(got))
    cosine = float(np.sum(got * expected) / np.linalg.norm(got) / np.linalg.norm(expected))
    assert cosine > 0.97  # int8 of a 4-output head calibrated on random data: close, not exact


def test_prune_with_random_calibration_uses_the_given_sizes(capsys, audio_path, tmp_path):
    code, stdout, stderr = run_cli(capsys, "prune", audio_path, "-o", tmp_path / "p.onnx", "--target-macs", "0.6",
                                   "--calib", "random", "--reconstruct", "--input-shape", f"x=1,{SAMPLES}",
                                   "--json", "--quiet")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["reconstruction"]["layers"] > 0 and report["macs_fraction"] < 0.75


def test_quantize_refuses_a_float16_model_in_one_line(tmp_path):
    path = tmp_path / "half.onnx"
    onnx.save(half_net(), str(path))
    for mode in ("dynamic", "static", "auto"):
        with pytest.raises(OnnxSlimError, match="the model computes in float16 .*start from float32"):
            quantize_model(path, tmp_path / "q.onnx", mode=mode, calibration=RANDOM if mode == "static" else None)
    assert not (tmp_path / "q.onnx").exists()


def test_run_leaves_a_float16_model_unquantized(capsys, tmp_path):
    path = tmp_path / "half.onnx"
    onnx.save(half_net(), str(path))
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(capsys, "run", path, "-o", out, "--ratio", "0", "--no-measure", "--json")
    assert code == 0, stderr
    assert "not quantizing: the model computes in float16" in stderr
    assert json.loads(stdout)["quantize"] is None
    written = onnx.load(str(out / "model.onnx"))
    assert written.graph.initializer[0].data_type == TensorProto.FLOAT16
    shutil.rmtree(out)


def test_shapes_at_batch_moves_only_the_batch_symbol():
    """A position input [seq] beside token ids [batch, seq]: its first axis is the sequence, not a batch."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["ids", "pos"], ["y"])], "two_inputs",
        [helper.make_tensor_value_info("ids", TensorProto.FLOAT, ["batch", "seq"]),
         helper.make_tensor_value_info("pos", TensorProto.FLOAT, ["seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert shapes_at_batch(model, {"ids": [1, 10], "pos": [10]}, 8) == {"ids": (8, 10), "pos": (10,)}


def test_given_sizes_are_checked_against_the_model(audio_path, tmp_path):
    with pytest.raises(UsageError, match="has no such input"):
        quantize_model(audio_path, tmp_path / "q.onnx", mode="dynamic", input_shapes={"X": [1, SAMPLES]})
    with pytest.raises(UsageError, match="contradicts"):
        load_calibration("random", audio_path, input_shapes={"x": [1, SAMPLES, 2]})


def test_synthetic_images_keep_their_pixels_beside_a_random_mask(tmp_path):
    """An image [N, 3, H, W] and a mask [N, H, W] sharing H and W: the mask is random at the images' size."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["pixels", "channel_axis"], ["gray"], keepdims=0),
         helper.make_node("Mul", ["gray", "mask"], ["y"])], "image_and_mask",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, "H", "W"]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "H", "W"])],
        [numpy_helper.from_array(np.array([1], np.int64), "channel_axis")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    data = load_calibration("synthetic", model, samples=3, input_shapes={"pixels": [1, 3, 32, 32]}).arrays
    assert data["pixels"].shape == (3, 3, 32, 32) and data["mask"].shape == (3, 32, 32)
    pixels = data["pixels"]  # dead leaves: flat patches, so neighbours are often equal (never in noise)
    assert np.mean(pixels[..., 1:] == pixels[..., :-1]) > 0.3
    run_session(create_session(model), {name: array[:1] for name, array in data.items()})


@pytest.mark.parametrize("where", ["constant node", "first input"])
def test_float16_weights_are_found_in_constant_nodes_and_on_any_input(tmp_path, where):
    weight = numpy_helper.from_array(np.full((8, 4), 0.1, np.float16), "w")
    nodes = [helper.make_node("MatMul", ["w", "x"] if where == "first input" else ["x", "w"], ["y"], name="fc")]
    initializers = [weight]
    if where == "constant node":
        nodes.insert(0, helper.make_node("Constant", [], ["w"], name="w_const", value=weight))
        initializers = []
    x_shape, y_shape = ([4, "batch"], [8, "batch"]) if where == "first input" else (["batch", 8], ["batch", 4])
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, y_shape)], initializers)
    path = tmp_path / "half.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(OnnxSlimError, match="computes in float16"):
        quantize_model(path, tmp_path / "q.onnx", mode="dynamic")


def fixed_length_net() -> onnx.ModelProto:
    """x [batch, seq, 8] declared symbolic, but a position table fixes seq at 16 (as exports that fold a
    relative-position tensor traced at one length do); a computed view hides seq from static inference."""
    rng = np.random.default_rng(2)
    initializers = [numpy_helper.from_array(rng.standard_normal((1, 16, 8)).astype(np.float32), "table"),
                    numpy_helper.from_array(np.array([0], np.int64), "first"),
                    numpy_helper.from_array(np.array([1], np.int64), "second"),
                    numpy_helper.from_array(np.array([-1, 8], np.int64), "rest"),
                    numpy_helper.from_array((rng.standard_normal((8, 8)) / 3).astype(np.float32), "w")]
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("Slice", ["shape", "first", "second"], ["batch"], name="batch"),
             helper.make_node("Concat", ["batch", "rest"], ["view_shape"], name="view_shape", axis=0),
             helper.make_node("Reshape", ["x", "view_shape"], ["viewed"], name="view"),
             helper.make_node("Add", ["viewed", "table"], ["placed"], name="place"),
             helper.make_node("MatMul", ["placed", "w"], ["y"], name="proj")]
    graph = helper.make_graph(
        nodes, "fixed_length", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 8])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_prune_refuses_a_model_that_does_not_run_at_the_guessed_sizes_and_names_them(capsys, tmp_path):
    path = tmp_path / "fixed.onnx"
    onnx.save(fixed_length_net(), str(path))
    code, _, stderr = run_cli(capsys, "prune", path, "-o", tmp_path / "p.onnx", "--ratio", "0.3")
    assert code == 1 and not (tmp_path / "p.onnx").exists()
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("error: the original model does not run at the input sizes used (x=1,64,8)")
    assert "--input-shape" in message
    code, _, _ = run_cli(capsys, "prune", path, "-o", tmp_path / "p.onnx", "--ratio", "0.3",
                         "--input-shape", "x=1,16,8")
    assert code == 0


def test_a_shape_error_at_a_batch_above_one_suggests_batch_size_one():
    """The export declares a symbolic batch, but a view inside fixes it at 1."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "one_row"], ["y"], name="view")], "batch_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array([1, 4], np.int64), "one_row")])
    session = create_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert run_session(session, {"x": np.ones((1, 4), np.float32)})["y"].shape == (1, 4)
    with pytest.raises(OnnxSlimError, match=r"at a batch of 3: if the model only runs at batch 1, give --batch-size 1"):
        run_session(session, {"x": np.ones((3, 4), np.float32)})



def test_a_scalar_input_shows_as_scalar_among_the_sizes_used():
    from onnx_slim.pipeline.candidates import _does_not_run

    message = _does_not_run({"input": (1, 512), "sr": ()}, "onnxruntime failed to run the model: LSTM ...")
    assert message.startswith("the original model does not run at the input sizes used (input=1,512 sr=(scalar))")
