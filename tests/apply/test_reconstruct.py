"""Least-squares reconstruction on trained models with real held-out data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from recording import RecordingProgress

from onnx_slim import UsageError, prune
from onnx_slim.data.calibration import load_calibration
from onnx_slim.data.evaluate import evaluate
from onnx_slim.ir.runtime import create_session, run_session

MODELS = Path(__file__).parents[2] / "models"


def data(model):
    return (load_calibration(MODELS / "digits_calib.npz", model),
            load_calibration(MODELS / "digits_test.npz", model))


@pytest.fixture(scope="module")
def cnn():
    return onnx.load(str(MODELS / "digits_cnn.onnx"))


def test_reconstruction_keeps_accuracy_where_slicing_loses_it(cnn):
    calibration, test = data(cnn)
    sliced, _ = prune(cnn, target_macs=0.6, criterion="l1")
    refitted, report = prune(cnn, target_macs=0.6, criterion="l1", calibration=calibration, reconstruct=True,
                             allocate="uniform")  # the re-fit alone, against the same plan as the slice
    drop_sliced = evaluate(cnn, sliced, test)["accuracy_drop_points"]
    drop_refitted = evaluate(cnn, refitted, test)["accuracy_drop_points"]
    assert drop_sliced > 20
    assert drop_refitted <= 1.0
    layers = report.reconstruction["per_layer"]
    consumers = {layer["node"] for layer in layers}
    assert "/fc/Gemm" in consumers  # the Gemm after GlobalAveragePool -> Flatten is re-fitted too


def test_refit_model_follows_the_original_better_than_the_slice_on_held_out_data(cnn):
    """End to end, on images the fit never saw: outputs closer to the original's, for a
    criterion (random) that leaves the fit plenty to repair."""
    calibration, test = data(cnn)
    sliced, _ = prune(cnn, ratio=0.6, criterion="random")
    refitted, report = prune(cnn, ratio=0.6, criterion="random", calibration=calibration, reconstruct=True)
    assert {layer["method"] for layer in report.reconstruction["per_layer"]} <= {"slice", "bias", "fit"}
    sliced_error = evaluate(cnn, sliced, test)["agreement"]["rel_l2"]
    refitted_error = evaluate(cnn, refitted, test)["agreement"]["rel_l2"]
    assert refitted_error < 0.5 * sliced_error


def test_matmul_consumers_of_a_transformer_mlp():
    model = onnx.load(str(MODELS / "digits_mlp.onnx"))
    calibration, test = data(model)
    sliced, _ = prune(model, ratio=0.6, criterion="l1")
    refitted, report = prune(model, ratio=0.6, criterion="l1", calibration=calibration, reconstruct=True)
    assert any(layer["op_type"] == "MatMul" and layer["method"] != "slice"
               for layer in report.reconstruction["per_layer"])
    assert evaluate(model, refitted, test)["accuracy"] >= evaluate(model, sliced, test)["accuracy"]


def test_reconstruct_needs_calibration(cnn):
    with pytest.raises(UsageError, match="needs calibration data"):
        prune(cnn, ratio=0.5, reconstruct=True)


def test_reconstruction_is_deterministic(cnn):
    calibration, _ = data(cnn)
    first, _ = prune(cnn, ratio=0.4, calibration=calibration, reconstruct=True, seed=3)
    second, _ = prune(cnn, ratio=0.4, calibration=calibration, reconstruct=True, seed=3)
    assert first.SerializeToString() == second.SerializeToString()


def test_same_padded_convs_without_kernel_attribute(tmp_path):
    """auto_pad=SAME_UPPER and no kernel_shape (both optional in ONNX): patches must match."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from onnx_slim.data.calibration import CalibrationSet
    from onnx_slim.ir.runtime import create_session, run_session

    rng = np.random.default_rng(0)
    weights = {"w1": rng.standard_normal((16, 3, 3, 3)), "b1": rng.standard_normal(16) * 0.1,
               "w2": rng.standard_normal((8, 16, 3, 3)) * 0.3, "b2": rng.standard_normal(8) * 0.1}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", auto_pad="SAME_UPPER"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="conv2", auto_pad="SAME_UPPER", strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes, "same", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 5, 5])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calibration = CalibrationSet({"x": rng.standard_normal((64, 3, 9, 9)).astype(np.float32)})
    held_out = {"x": rng.standard_normal((16, 3, 9, 9)).astype(np.float32)}
    sliced, _ = prune(model, ratio=0.5, criterion="l1")
    refitted, report = prune(model, ratio=0.5, criterion="l1", calibration=calibration, reconstruct=True)
    (layer,) = report.reconstruction["per_layer"]
    assert layer["node"] == "conv2" and layer["method"] == "fit"
    reference = run_session(create_session(model), held_out)["y"]
    error_sliced = np.linalg.norm(run_session(create_session(sliced), held_out)["y"] - reference)
    error_refitted = np.linalg.norm(run_session(create_session(refitted), held_out)["y"] - reference)
    assert error_refitted < 0.8 * error_sliced


def test_dynamo_export_with_stale_shape_annotations():
    """The dynamo exporter writes value_info for every tensor; they go stale once channels go."""
    model = onnx.load(str(MODELS / "digits_resnet.onnx"))
    assert len(model.graph.value_info) > 0
    calibration, test = data(model)
    refitted, report = prune(model, target_macs=0.6, calibration=calibration, reconstruct=True)
    assert report.reconstruction["layers"] > 0
    assert evaluate(model, refitted, test)["accuracy_drop_points"] <= 2.0


def test_matmul_followed_by_a_scalar_add_keeps_its_slice_intercept_free():
    """The intercept of a fit goes into a per-feature bias only; a scalar Add cannot take it."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from onnx_slim.data.calibration import CalibrationSet

    rng = np.random.default_rng(0)
    init = {"w1": rng.standard_normal((8, 16)), "b1": rng.standard_normal(16), "w2": rng.standard_normal((16, 12)),
            "s": np.array(0.1), "w3": rng.standard_normal((12, 4))}
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"), helper.make_node("Add", ["m1", "b1"], ["a1"], name="add1"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="mm2"), helper.make_node("Add", ["m2", "s"], ["a2"], name="add2"),
        helper.make_node("Relu", ["a2"], ["r2"], name="relu2"), helper.make_node("MatMul", ["r2", "w3"], ["y"], name="mm3"),
    ]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in init.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calibration = CalibrationSet({"x": rng.standard_normal((64, 8)).astype(np.float32)})
    pruned, report = prune(model, ratio=0.5, calibration=calibration, reconstruct=True)
    assert {layer["node"] for layer in report.reconstruction["per_layer"]} == {"mm2", "mm3"}
    onnx.checker.check_model(pruned, full_check=True)


def test_scoring_and_refit_passes_are_counted_to_their_totals(cnn):
    calibration, _ = data(cnn)
    recorder = RecordingProgress()

    _, report = prune(cnn, ratio=0.4, criterion="thinet", calibration=calibration.take(40), reconstruct=True,
                      batch_size=16, progress=recorder)

    assert recorder.steps_done["scoring batches"] == [3, 3]  # 40 samples in batches of 16
    layers = report.reconstruction["layers"]
    assert layers > 0 and recorder.steps_done["re-fit layers"] == [layers, layers]
    assert any(line.startswith("re-fit pass 1/") for line in recorder.lines)  # the lines are still there


def deep_mlp(layers=16, width=24, seed=0):
    """x -> (Gemm -> Relu) x layers -> Gemm: a chain deeper than any fixed number of passes."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, current = [], [], "x"
    for index in range(layers + 1):
        weight = (rng.standard_normal((width, width)) / np.sqrt(width) * 1.4).astype(np.float32)
        bias = (0.1 * rng.standard_normal(width)).astype(np.float32)
        inits += [numpy_helper.from_array(weight, f"w{index}"), numpy_helper.from_array(bias, f"b{index}")]
        nodes.append(helper.make_node("Gemm", [current, f"w{index}", f"b{index}"], [f"h{index}"], name=f"fc{index}"))
        current = f"h{index}"
        if index < layers:
            nodes.append(helper.make_node("Relu", [current], [f"r{index}"], name=f"relu{index}"))
            current = f"r{index}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, [None, width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_deep_chain_is_refitted_one_depth_level_per_pass_and_beats_the_slice():
    # Fitting a layer together with one upstream of it would make it compensate an error the
    # upstream fit then removes; on a chain every consumer is its own level.
    from onnx_slim.data.calibration import CalibrationSet

    model = deep_mlp()
    rng = np.random.default_rng(1)
    calibration = CalibrationSet({"x": rng.standard_normal((512, 24)).astype(np.float32)})
    held_out = {"x": rng.standard_normal((256, 24)).astype(np.float32)}
    sliced, _ = prune(model, ratio=0.25, criterion="l1", allocate="uniform")
    refitted, report = prune(model, ratio=0.25, criterion="l1", calibration=calibration, reconstruct=True)

    assert report.reconstruction["layers"] == 16 and report.reconstruction["passes"] == 16

    def error(candidate):
        reference = run_session(create_session(model), held_out)["h16"]
        output = run_session(create_session(candidate), held_out)["h16"]
        return float(np.linalg.norm(output - reference) / np.linalg.norm(reference))

    assert error(refitted) < 0.5 * error(sliced)


def two_branches(width=24, seed=0):
    """x -> fc0 -> relu -> (fcA, fcB) -> add: fcA and fcB read the same pruned group, on one level."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((width, width)) / 5).astype(np.float32), name)
             for name in ("w0", "wa", "wb")]
    nodes = [helper.make_node("Gemm", ["x", "w0"], ["h"], name="fc0"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "wa"], ["a"], name="fcA"),
             helper.make_node("Gemm", ["r", "wb"], ["b"], name="fcB"), helper.make_node("Add", ["a", "b"], ["y"])]
    graph = helper.make_graph(nodes, "branches", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("budget, passes", [(1 << 30, 1), (2 * 8 * 25 ** 2, 2)])
def test_a_wide_level_is_split_so_one_pass_holds_bounded_statistics(monkeypatch, budget, passes):
    import onnx_slim.apply.refit_layers as refit_layers
    from onnx_slim.data.calibration import CalibrationSet

    calibration = CalibrationSet({"x": np.random.default_rng(0).standard_normal((64, 24)).astype(np.float32)})
    # Each branch's statistics take 2 * 8 * 25^2 bytes: the small budget allows one per pass.
    monkeypatch.setattr(refit_layers, "PASS_STATISTICS_BYTES", budget)
    _, report = prune(two_branches(), ratio=0.25, criterion="l1", calibration=calibration, reconstruct=True)
    assert report.reconstruction["layers"] == 2 and report.reconstruction["passes"] == passes


def test_rows_are_held_out_by_calibration_sample_not_one_by_one():
    # Rows of one image are alike: a row-wise hold-out cannot see a fit that learned the images.
    from onnx_slim.apply.reconstruct import HOLDOUT_EVERY, _held_out

    samples = np.repeat(np.arange(20), 7)  # 20 samples, 7 rows each
    held = _held_out(samples, n_samples=20)
    for sample in range(20):
        rows = held[samples == sample]
        assert rows.all() or not rows.any()
    assert held.sum() == 7 * (20 // HOLDOUT_EVERY)
    few = _held_out(np.repeat(np.arange(3), 10), n_samples=3)  # too few samples to spare: row-wise
    assert 0 < few.sum() < len(few)


def test_conv_rows_know_their_image():
    from onnx_slim.apply.reconstruct import _sample_targets
    from onnx_slim.ops.specs import CONV_PATCHES

    class Conv:
        kind = CONV_PATCHES

    y = np.random.default_rng(0).standard_normal((4, 3, 5, 5)).astype(np.float32)
    positions, targets, sample_of_row = _sample_targets(Conv(), y, 1, 4, 40, np.random.default_rng(0))
    assert len(targets) == len(sample_of_row) == 40
    np.testing.assert_array_equal(sample_of_row, positions[:, 0])
    np.testing.assert_array_equal(np.bincount(sample_of_row), [10, 10, 10, 10])


def test_shrunk_fits_run_from_least_squares_to_the_slice():
    from onnx_slim.apply.least_squares import SHRINK_LEVELS, SHRINK_NAMES, GramStats, shrunk_fits

    rng = np.random.default_rng(0)
    design = rng.standard_normal((200, 6))
    target = design @ rng.standard_normal((6, 3))
    sliced = rng.standard_normal((6, 3))
    fits = shrunk_fits(GramStats.of(design, target), sliced, 1e-9, "layer")
    np.testing.assert_allclose(fits["fit"], np.linalg.lstsq(design, target, rcond=None)[0], atol=1e-6)
    assert set(fits) == {"fit", *SHRINK_NAMES}
    distances = [np.linalg.norm(fits[f"fit-shrink-{level:g}"] - sliced) for level in SHRINK_LEVELS]
    assert distances == sorted(distances, reverse=True)  # more shrinkage, closer to the slice
    assert distances[-1] < np.linalg.norm(fits["fit"] - sliced)


def test_each_shrunk_fit_solves_its_own_normal_equations_and_leaves_the_gram_as_it_was():
    from onnx_slim.apply.least_squares import SHRINK_NAMES, GramStats, refit_on_all, shrunk_fits

    rng = np.random.default_rng(1)
    design = rng.standard_normal((300, 8)) * np.linspace(0.1, 3, 8)  # unequal feature scales
    target = design @ rng.standard_normal((8, 4)) + 0.3 * rng.standard_normal((300, 4))
    sliced = rng.standard_normal((9, 4))  # 8 weights and the bias row
    train = GramStats.of(design[:200], target[:200], intercept=True)
    holdout = GramStats.of(design[200:], target[200:], intercept=True)
    before = train.gram.copy()
    fits = shrunk_fits(train, sliced, 1e-3, "layer")
    np.testing.assert_array_equal(train.gram, before)  # its diagonal was borrowed, then given back exactly
    mean_diagonal = np.trace(before) / len(before)
    for name, level in SHRINK_NAMES.items():  # (G + s I) W = C + s W_slice: the penalized optimum
        scale = level * mean_diagonal
        np.testing.assert_allclose((before + scale * np.eye(9)) @ fits[name], train.cross + scale * sliced,
                                   rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose((before + 1e-3 * mean_diagonal * np.eye(9)) @ fits["fit"], train.cross,
                               rtol=1e-9, atol=1e-9)
    again = refit_on_all(train, holdout, sliced, 1e-3, shrink=0.1)  # on every row: both parts' statistics
    gram, cross = train.gram + holdout.gram, train.cross + holdout.cross
    scale = 0.1 * np.trace(gram) / len(gram)
    np.testing.assert_allclose((gram + scale * np.eye(9)) @ again, cross + scale * sliced, rtol=1e-9, atol=1e-9)


def residual_mlp(width=24, seed=3):
    """x -> fc0 (+2) -> relu -> fc_s = s, the stream -> fc1 -> relu -> fc2, + s (a residual Add) -> relu
    -> fc3 -> y. fc_s is a bias-free MatMul over fc0's 2 * width channels, which are mostly positive:
    when fc0's group loses channels and fc_s keeps its slice, the stream shifts by their contribution."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weight(name, rows, cols):
        return numpy_helper.from_array((rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32), name)

    inits = [weight("w0", width, 2 * width), numpy_helper.from_array(np.full(2 * width, 2, np.float32), "b0"),
             weight("ws", 2 * width, width), weight("w1", width, width), weight("w2", width, width),
             weight("w3", width, width)]
    node = helper.make_node
    nodes = [node("Gemm", ["x", "w0", "b0"], ["h0"], name="fc0"), node("Relu", ["h0"], ["r0"], name="relu0"),
             node("MatMul", ["r0", "ws"], ["s"], name="fc_s"),
             node("Gemm", ["s", "w1"], ["h1"], name="fc1"), node("Relu", ["h1"], ["r1"], name="relu1"),
             node("Gemm", ["r1", "w2"], ["b"], name="fc2"), node("Add", ["b", "s"], ["sum"], name="residual"),
             node("Relu", ["sum"], ["r2"], name="relu2"), node("Gemm", ["r2", "w3"], ["y"], name="fc3")]
    graph = helper.make_graph(nodes, "residual_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_layer_feeding_a_residual_add_also_absorbs_the_streams_drift(monkeypatch):
    """fc2's fit targets the original sum minus the pruned stream, so it takes back (through its
    intercept and its features) the shift fc_s could not: the sum, which every later layer reads,
    follows the original more closely than when fc2 only matches its own output."""
    import onnx_slim.apply.reconstruct as reconstruct_module
    from onnx_slim.data.calibration import CalibrationSet
    from onnx_slim.ir.graph import add_graph_outputs

    model = residual_mlp()
    monkeypatch.setattr(reconstruct_module, "MAX_FEATURES", 16)  # fc_s (24 inputs kept) keeps its slice
    rng = np.random.default_rng(2)
    calibration = CalibrationSet({"x": rng.standard_normal((512, 24)).astype(np.float32)})
    held_out = {"x": rng.standard_normal((256, 24)).astype(np.float32)}

    def sums(candidate):
        copy = onnx.ModelProto()
        copy.CopyFrom(candidate)
        add_graph_outputs(copy, ["sum"], {"sum": onnx.TensorProto.FLOAT})
        return run_session(create_session(copy), held_out)["sum"]

    reference = sums(model)

    def refit(residual_targets):
        monkeypatch.setattr(reconstruct_module, "RESIDUAL_TARGETS", residual_targets)
        pruned, report = prune(model, ratio=0.5, criterion="l1", allocate="interior", calibration=calibration,
                               reconstruct=True)  # interior: the stream keeps its channels
        error = float(np.linalg.norm(sums(pruned) - reference) / np.linalg.norm(reference))
        return error, {layer["node"]: layer for layer in report.reconstruction["per_layer"]}

    plain, plain_layers = refit(False)
    compensated, layers = refit(True)
    assert {name for name, layer in layers.items() if layer["residual"]} == {"fc2"}
    assert layers["fc_s"]["method"] == "slice" and layers["fc2"]["method"] == "fit"
    assert not any(layer["residual"] for layer in plain_layers.values())
    assert compensated < 0.8 * plain, (compensated, plain)  # 0.23 against 0.54 when written


def test_a_projection_shortcut_joining_a_deeper_branch_keeps_its_own_target(monkeypatch):
    """conv_s (the shortcut) is re-fitted before conv_b, which its Add partner depends on: the partner
    would still change, so only conv_b, fitted after conv_s, aims at the residual sum. With one layer
    per pass (a tiny statistics budget), conv_a and conv_s share a level but not a pass."""
    from graphs import Graph

    import onnx_slim.apply.refit_layers as refit_layers
    from onnx_slim.data.calibration import CalibrationSet

    monkeypatch.setattr(refit_layers, "PASS_STATISTICS_BYTES", 1)

    g = Graph(seed=4)
    h = g.relu(g.conv(g.input("x", ["N", 3, 8, 8]), 8, name="conv0"), name="relu0")
    branch = g.conv(g.relu(g.conv(h, 8, name="conv_a"), name="relu_a"), 6, name="conv_b")
    joined = g.relu(g.add(branch, g.conv(h, 6, kernel=1, name="conv_s"), name="join"), name="relu_join")
    model = g.build(g.conv(joined, 2, name="conv_out"))
    calibration = CalibrationSet({"x": np.random.default_rng(0).standard_normal((40, 3, 8, 8)).astype(np.float32)})
    _, report = prune(model, ratio=0.5, criterion="l1", allocate="uniform", calibration=calibration,
                      reconstruct=True)
    layers = {layer["node"]: layer for layer in report.reconstruction["per_layer"]}
    assert {"conv_a", "conv_s", "conv_b"} <= set(layers) and report.reconstruction["passes"] == len(layers)
    assert layers["conv_b"]["residual"] and not layers["conv_s"]["residual"] and not layers["conv_a"]["residual"]



def text_mlp(vocab=50, seq=12, width=16, seed=0, pooled=True):
    """ids [N, S] -> embedding + position -> fc1 (4x wider) -> relu -> fc2 = hidden [N, S, width] -> the
    first token's row (pooled) or hidden itself. The pad token (0) embeds far from every real token,
    as padding's hidden states drift in real encoders."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((vocab, width)).astype(np.float32)
    emb[0] = 12 * rng.standard_normal(width)
    inits = [numpy_helper.from_array(emb, "emb"),
             numpy_helper.from_array(rng.standard_normal((seq, width)).astype(np.float32), "pos"),
             numpy_helper.from_array((rng.standard_normal((width, 4 * width)) / 4).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((4 * width, width)) / 8).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array(0, np.int64), "first")]
    node = helper.make_node
    nodes = [node("Gather", ["emb", "ids"], ["e"], name="embed"), node("Add", ["e", "pos"], ["x"], name="add_pos"),
             node("MatMul", ["x", "w1"], ["h"], name="fc1"), node("Relu", ["h"], ["r"], name="relu"),
             node("MatMul", ["r", "w2"], ["hidden"], name="fc2")]
    output = helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", seq, width])
    if pooled:
        nodes.append(node("Gather", ["hidden", "first"], ["cls"], name="pool", axis=1))
        output = helper.make_tensor_value_info("cls", TensorProto.FLOAT, ["batch", width])
    graph = helper.make_graph(
        nodes, "text_mlp", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", seq])], [output], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def right_padded_sentences(rng, n, seq=12, vocab=50):
    ids = np.zeros((n, seq), np.int64)
    for row, length in zip(ids, rng.integers(2, seq // 2, size=n)):
        row[:length] = rng.integers(1, vocab, size=length)
    return ids


def test_padding_is_left_out_of_the_refit_when_no_output_shows_it(monkeypatch):
    """70% of the calibration positions are padding and the output is pooled: fitted on real tokens
    only, fc2 follows the original at real tokens of unseen sentences better than when the fit also
    chases the padding."""
    import onnx_slim.apply.reconstruct as reconstruct_module
    from onnx_slim.data.activations import ActivationCapture
    from onnx_slim.data.calibration import CalibrationSet

    model = text_mlp()
    rng = np.random.default_rng(1)
    calibration = CalibrationSet({"ids": right_padded_sentences(rng, 256)})
    test = right_padded_sentences(rng, 128)
    reference = ActivationCapture(model, ["hidden"]).run({"ids": test})["hidden"]
    real = test != 0

    def error_at_real_tokens(candidate):
        hidden = ActivationCapture(candidate, ["hidden"]).run({"ids": test})["hidden"]
        return float(np.linalg.norm((hidden - reference)[real]) / np.linalg.norm(reference[real]))

    masked, report = prune(model, ratio=0.5, criterion="l1", calibration=calibration, reconstruct=True)
    assert report.reconstruction["padding"].startswith("70% of positions are padding (input 'ids'")
    monkeypatch.setattr(reconstruct_module, "padding_to_leave_out", lambda model, shapes, mask: None)
    every_row, report = prune(model, ratio=0.5, criterion="l1", calibration=calibration, reconstruct=True)
    assert report.reconstruction["padding"] is None
    sliced, _ = prune(model, ratio=0.5, criterion="l1")
    assert error_at_real_tokens(masked) < 0.85 * error_at_real_tokens(every_row)  # 0.23 against 0.29 when written
    assert error_at_real_tokens(every_row) < error_at_real_tokens(sliced)


def test_padding_is_fitted_like_any_token_when_an_output_keeps_the_token_axis():
    from onnx_slim.data.calibration import CalibrationSet

    model = text_mlp(pooled=False)  # hidden [batch, 12, 16] is the output: padded rows show
    calibration = CalibrationSet({"ids": right_padded_sentences(np.random.default_rng(1), 64)})
    assert calibration.token_mask() is not None
    _, report = prune(model, ratio=0.5, criterion="l1", calibration=calibration, reconstruct=True)
    assert report.reconstruction["padding"] is None


def test_targets_are_captured_a_few_passes_ahead_within_a_byte_budget(monkeypatch):
    """Each chunk here captures 2 tensors of 4 * 8 * 1024 bytes a batch of 8: 64 KiB."""
    from types import SimpleNamespace

    import onnx_slim.apply.reconstruct as reconstruct_module

    def chunk(index):
        node = SimpleNamespace(input=[f"x{index}"], output=[f"y{index}"], op_type="MatMul")
        return [SimpleNamespace(node=node, residual=None)]

    chunks = [chunk(i) for i in range(5)]
    shapes = {name: (1, 1024) for i in range(5) for name in (f"x{i}", f"y{i}")}
    monkeypatch.setattr(reconstruct_module, "TARGET_CAPTURE_BYTES", 3 * 64 * 1024)
    assert len(reconstruct_module._capture_group(chunks, 0, shapes, batch_size=8)) == 3
    assert len(reconstruct_module._capture_group(chunks, 3, shapes, batch_size=8)) == 2
    monkeypatch.setattr(reconstruct_module, "TARGET_CAPTURE_BYTES", 1)
    assert len(reconstruct_module._capture_group(chunks, 0, shapes, batch_size=8)) == 1  # at least one
    assert len(reconstruct_module._capture_group(chunks, 0, {}, batch_size=8)) == 5  # unknown sizes: 0 bytes


def unrolled_steps(steps=4, features=10, hidden=12, seed=5):
    """x [N, steps, features] -> MatMul + relu (the pruned group) -> one shared MatMul per step
    (Gather of step t, a weight every step reads, as an unrolled recurrent cell writes it) -> the
    steps' outputs summed -> y."""
    from graphs import Graph

    g = Graph(seed=seed)
    h = g.relu(g.add_bias(g.matmul(g.input("x", ["N", steps, features]), hidden, name="fc_in")))
    shared = g.weight("shared_w", [hidden, 5])
    outputs = [g.node("MatMul", [g.node("Gather", [h, g.ints(f"t{t}", t)], f"step{t}", axis=1), shared], f"cell{t}")
               for t in range(steps)]
    total = outputs[0]
    for t, part in enumerate(outputs[1:], 1):
        total = g.add(total, part, name=f"sum{t}")
    return g.build(total)


def test_copies_of_one_weight_are_fitted_together_and_stay_shared(tmp_path):
    """The steps' MatMuls read one weight (normalization gives each a copy): they are re-fitted as one
    family, on the rows of every step, with one solve, and the saved model holds one weight again."""
    from onnx_slim.data.calibration import CalibrationSet
    from onnx_slim.ir import model as model_io

    model = unrolled_steps()
    calibration = CalibrationSet({"x": np.random.default_rng(0).standard_normal((60, 4, 10)).astype(np.float32)})
    pruned, report = prune(model, ratio=0.5, criterion="l1", calibration=calibration, reconstruct=True)
    layers = report.reconstruction["per_layer"]
    assert [(layer["copies"], layer["method"]) for layer in layers] == [(4, "fit")]
    assert layers[0]["error_fit"] < layers[0]["error_slice"]
    path = tmp_path / "pruned.onnx"
    model_io.save_model(pruned, path)
    saved = onnx.load(str(path))
    cells = [node for node in saved.graph.node if node.name.startswith("cell")]
    assert len({node.input[1] for node in cells}) == 1  # the fitted copies are one tensor again
    assert_same_shapes_and_runs(model, saved)


def test_a_family_fit_is_no_worse_than_fitting_each_copy(monkeypatch):
    """Fitting the copies apart (the old way) unshares the weight; the family fit, on the rows of
    every step, is closer to the original's output on new data (more rows per unknown)."""
    import onnx_slim.apply.refit_layers as refit_layers
    from onnx_slim.data.calibration import CalibrationSet

    rng = np.random.default_rng(1)
    calibration = CalibrationSet({"x": rng.standard_normal((60, 4, 10)).astype(np.float32)})
    test = {"x": rng.standard_normal((40, 4, 10)).astype(np.float32)}
    model = unrolled_steps()
    together, _ = prune(model, ratio=0.5, criterion="l1", calibration=calibration, reconstruct=True)
    monkeypatch.setattr(refit_layers, "_link_families", lambda original, consumers: None)
    apart, report = prune(model, ratio=0.5, criterion="l1", calibration=calibration, reconstruct=True)
    assert [layer["copies"] for layer in report.reconstruction["per_layer"]] == [1, 1, 1, 1]
    reference = run_session(create_session(model), test)
    error = {name: float(np.square(next(iter(run_session(create_session(m), test).values()))
                                   - next(iter(reference.values()))).sum())
             for name, m in (("together", together), ("apart", apart))}
    assert error["together"] < error["apart"], error


def assert_same_shapes_and_runs(original, pruned):
    feeds = {"x": np.random.default_rng(3).standard_normal((2, 4, 10)).astype(np.float32)}
    before, after = run_session(create_session(original), feeds), run_session(create_session(pruned), feeds)
    assert [value.shape for value in before.values()] == [value.shape for value in after.values()]


def test_copies_with_other_layers_between_them_are_fitted_apart():
    """A1 -> B -> C -> gate -> A2, A1 and A2 copies of one weight: fitted as one family (in A2's pass)
    they would come after B and C, which read A1's sliced output; the re-fit fits them apart
    instead, each in its own pass, so no layer is fitted before a layer upstream of it."""
    from graphs import Graph

    from onnx_slim.data.calibration import CalibrationSet

    g = Graph(seed=2)
    h = g.relu(g.add_bias(g.matmul(g.input("x", ["N", 10]), 12, name="fc0")))
    shared, shared_bias = g.weight("S", [12, 12]), g.weight("SB", [12])
    a1 = g.relu(g.add(g.node("MatMul", [h, shared], "A1"), shared_bias))
    gate = g.node("Sigmoid", [g.add_bias(g.matmul(g.relu(g.add_bias(g.matmul(a1, 12, name="B"))), 12, name="C"))])
    a2 = g.relu(g.add(g.node("MatMul", [g.node("Mul", [h, gate], "gate"), shared], "A2"), shared_bias))
    model = g.build(g.matmul(a2, 3, name="head"))
    calibration = CalibrationSet({"x": np.random.default_rng(0).standard_normal((200, 10)).astype(np.float32)})
    _, report = prune(model, ratio=0.5, criterion="l1", calibration=calibration, reconstruct=True)
    layers = report.reconstruction["per_layer"]
    assert [(layer["node"], layer["copies"]) for layer in layers] == [("A1", 1), ("B", 1), ("C", 1), ("A2", 1),
                                                                      ("head", 1)]
    assert report.reconstruction["passes"] == 5


def test_a_refit_given_earlier_choices_solves_them_again_without_comparing(cnn):
    """`reconstruct(chosen=...)`: each layer takes the method and shrinkage an earlier re-fit chose on
    its held-out rows; on the same data it writes the very weights that re-fit wrote."""
    from onnx_slim.pipeline.candidates import Pruner, PruneOptions

    calibration, _ = data(cnn)
    pruner = Pruner(cnn, PruneOptions(ratio=0.5, criterion="thinet", reconstruct=True,
                                      calibration=calibration.take(64)))
    candidate = pruner.plan(ratio=0.5)
    first = pruner.build(candidate)
    again = pruner.build(candidate, choices_from=first)

    before, after = first.reconstruction.layers, again.reconstruction.layers
    assert [(layer.node, layer.method, layer.shrink) for layer in after] == \
        [(layer.node, layer.method, layer.shrink) for layer in before]
    assert {layer.method for layer in before} & {"fit", "bias"}  # something was written
    assert all(layer.chosen_before and layer.error_slice is None for layer in after)
    weights = {init.name: onnx.numpy_helper.to_array(init) for init in first.model.graph.initializer}
    for init in again.model.graph.initializer:
        np.testing.assert_allclose(onnx.numpy_helper.to_array(init), weights[init.name], rtol=1e-5, atol=1e-6)


def test_weighted_rows_give_the_statistics_of_rows_scaled_by_their_weight_with_the_bias_scaled_too():
    from onnx_slim.apply.least_squares import GramStats

    rng = np.random.default_rng(4)
    design, targets, weights = rng.standard_normal((50, 5)), rng.standard_normal((50, 3)), rng.uniform(0.5, 4, 50)
    weighted = GramStats.of(design, targets, intercept=True, row_weights=weights)
    explicit = GramStats.of(np.hstack([design * weights[:, None], weights[:, None]]), targets * weights[:, None])
    # float32 products, summed in different orders: equal to a millionth of the largest entry
    np.testing.assert_allclose(weighted.gram, explicit.gram, atol=1e-6 * np.abs(explicit.gram).max())
    np.testing.assert_allclose(weighted.cross, explicit.cross, atol=1e-6 * np.abs(explicit.cross).max())
    assert weighted.energy == pytest.approx(explicit.energy, rel=1e-6)


def post_layer_norm_block(seed=5, width=32, hidden=16):
    """x -> LayerNorm -> fc1 -> Relu -> fc2 -> + bias -> + x -> LayerNormalization -> y: a post-LN
    transformer's MLP, whose input is normalized and whose residual sum is normalized again."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    arrays = {"w1": rng.standard_normal((width, hidden)) / np.sqrt(width),
              "w2": rng.standard_normal((hidden, width)) / np.sqrt(hidden), "b2": 0.1 * rng.standard_normal(width),
              "ones": np.ones(width), "zeros": np.zeros(width), "gamma": rng.uniform(0.5, 1.5, width)}
    inits = [numpy_helper.from_array(value.astype(np.float32), name) for name, value in arrays.items()]
    node = helper.make_node
    nodes = [node("LayerNormalization", ["x", "ones", "zeros"], ["n"], name="ln_in", axis=-1),
             node("MatMul", ["n", "w1"], ["h"], name="fc1"), node("Relu", ["h"], ["r"], name="relu"),
             node("MatMul", ["r", "w2"], ["f"], name="fc2"), node("Add", ["f", "b2"], ["fb"], name="bias"),
             node("Add", ["fb", "x"], ["s"], name="residual"),
             node("LayerNormalization", ["s", "gamma", "zeros"], ["y"], name="ln", axis=-1)]
    graph = helper.make_graph(nodes, "post_ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_rows_of_a_sum_a_layer_norm_reads_are_weighted_by_its_sigma_and_its_output_follows_closer(monkeypatch):
    from onnx_slim.apply import reconstruct as reconstruct_module
    from onnx_slim.data.calibration import CalibrationSet

    model = post_layer_norm_block()
    rng = np.random.default_rng(6)
    # Two kinds of token along different directions, one with a 10x smaller stream: its sigma is
    # smaller and the LayerNorm amplifies its errors 10x. The MLP reads normalized inputs, so its
    # output and the fit's errors are as large for both: only weighting by 1 / sigma sees the difference.
    directions = rng.standard_normal((2, 8, 32))
    kind = rng.integers(0, 2, 2000)
    samples = np.einsum("nk,nkw->nw", rng.standard_normal((2000, 8)), directions[kind])
    samples = (samples * np.where(kind == 0, 0.1, 1.0)[:, None]).astype(np.float32)
    calibration, held_out = CalibrationSet({"x": samples[:1500]}), {"x": samples[1500:]}
    reference = run_session(create_session(model), held_out)["y"]

    def layer_norm_output_error(weighted: bool) -> tuple[float, list]:
        monkeypatch.setattr(reconstruct_module, "LAYER_NORM_ROWS", weighted)
        pruned, report = prune(model, ratio=0.5, criterion="l1", reconstruct=True, calibration=calibration)
        outputs = run_session(create_session(pruned), held_out)["y"]
        return float(np.square(outputs - reference).sum() / np.square(reference).sum()), \
            report.reconstruction["per_layer"]

    weighted_error, layers = layer_norm_output_error(True)
    plain_error, plain_layers = layer_norm_output_error(False)
    assert [(layer["node"], layer["rows_weighted"]) for layer in layers] == [("fc2", True)]
    assert [layer["rows_weighted"] for layer in plain_layers] == [False]
    assert weighted_error < 0.95 * plain_error  # 0.82-0.93 of it over six seeds of this set-up


def conv1d_chain() -> onnx.ModelProto:
    """x [N, 4, 32] -> Conv1d k3 dilation 2 pad 2 (12) -> Relu -> Conv1d k5 stride 2 pad 2 (10) -> Relu
    -> Conv1d k3 SAME_UPPER (2): the geometry of audio, EEG and text CNNs."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"w1": (12, 4, 3), "w2": (10, 12, 5), "w3": (2, 10, 3)}
    inits = [numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32),
                                     name) for name, shape in weights.items()]
    inits += [numpy_helper.from_array((rng.standard_normal(shape[0]) * 0.1).astype(np.float32), f"b{name[1]}")
              for name, shape in weights.items()]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[2, 2], dilations=[2]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[5], strides=[2],
                         pads=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="conv3", auto_pad="SAME_UPPER"),
    ]
    graph = helper.make_graph(nodes, "conv1d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("criterion", ["l1", "thinet", "obs"])
def test_1d_convs_are_refitted_and_follow_the_original_better_than_the_slice(criterion):
    """Conv1d consumers kept their slice before (silero-vad, EEG models: 're-fitted 0 layers')."""
    from onnx_slim.data.calibration import CalibrationSet

    model = conv1d_chain()
    rng = np.random.default_rng(1)
    latent = rng.standard_normal((160, 2, 32))  # 4 channels mixing 2 signals: what is cut can be compensated
    x = (np.einsum("cl,nlt->nct", rng.standard_normal((4, 2)), latent)
         + 0.05 * rng.standard_normal((160, 4, 32))).astype(np.float32)
    calibration, held_out = CalibrationSet({"x": x[:128]}), CalibrationSet({"x": x[128:]})
    sliced, _ = prune(model, ratio=0.5, criterion=criterion, calibration=calibration, allocate="uniform")
    refitted, report = prune(model, ratio=0.5, criterion=criterion, calibration=calibration, reconstruct=True,
                             allocate="uniform")

    fitted = {layer["node"]: layer for layer in report.reconstruction["per_layer"]}
    assert {"conv2", "conv3"} <= set(fitted) and any(layer["method"] == "fit" for layer in fitted.values())
    assert fitted["conv2"]["features"] == 6 * 5 and fitted["conv3"]["features"] == 5 * 3
    error_sliced = evaluate(model, sliced, held_out)["agreement"]["rel_l2"]
    error_refitted = evaluate(model, refitted, held_out)["agreement"]["rel_l2"]
    assert error_refitted < error_sliced
