"""Synthetic calibration images (dead leaves) for users without data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import Graph

from onnx_slim import OnnxSlimError, prune
from onnx_slim.data.calibration import load_calibration
from onnx_slim.data.synthetic import dead_leaves, image_layout
from onnx_slim.ir.inputs import graph_inputs


def test_dead_leaves_are_standardised_piecewise_flat_images():
    images = dead_leaves(6, 48, 40, channels=3, seed=1)
    assert images.shape == (6, 3, 48, 40) and images.dtype == np.float32
    assert np.allclose(images.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    assert np.allclose(images.std(axis=(0, 2, 3)), 1, atol=1e-4)
    # Flat disks: most neighbouring pixels are equal, unlike noise; many colours per image.
    flat = np.mean(images[:, :, :, 1:] == images[:, :, :, :-1])
    assert flat > 0.5  # 0.65 at this small size (0.0 for noise)
    assert all(len(np.unique(image[0])) > 10 for image in images)
    assert not np.array_equal(images[0], images[1])
    assert np.array_equal(dead_leaves(2, 16, 16, seed=3), dead_leaves(2, 16, 16, seed=3))


def image_model(shape, layout="nchw"):
    g = Graph()
    x = g.input("x", shape)
    if layout == "nhwc":
        x = g.node("Transpose", [x], perm=[0, 3, 1, 2])
    y = g.relu(g.conv(g.relu(g.conv(x, 8)), 8))
    return g.build(g.flatten(g.gap(y)))


def test_which_inputs_are_images():
    specs = {spec.name: spec for spec in graph_inputs(image_model(["batch", 3, 32, 32]))}
    assert image_layout(specs["x"]) == "nchw"
    nhwc = graph_inputs(image_model(["batch", 32, 32, 3], layout="nhwc"))[0]
    assert image_layout(nhwc) == "nhwc"
    symbolic = graph_inputs(image_model(["batch", 3, "height", "width"]))[0]
    assert image_layout(symbolic) is None


def test_synthetic_calibration_prunes_and_says_it_was_synthetic(tmp_path):
    model = image_model(["batch", 3, 32, 32])
    calibration = load_calibration("synthetic", model, samples=32)
    assert calibration.is_synthetic and calibration.is_random  # not real data: not for quantization
    assert "synthetic dead-leaves images" in calibration.description
    pruned, report = prune(model, ratio=0.5, criterion="thinet", calibration=calibration, reconstruct=True)
    assert report.reconstruction["calibration"] == calibration.description
    assert {layer["method"] for layer in report.reconstruction["per_layer"]} <= {"fit", "bias", "slice"}
    onnx.checker.check_model(pruned, full_check=True)


def test_synthetic_data_follows_the_models_layout_and_input_size():
    nhwc = load_calibration("synthetic", image_model(["batch", 24, 20, 3], layout="nhwc"), samples=3)
    assert next(nhwc.batches(3))["x"].shape == (3, 24, 20, 3)
    sized = load_calibration("synthetic", image_model(["batch", 3, "h", "w"]), samples=2, input_size=[40, 36])
    assert next(sized.batches(2))["x"].shape == (2, 3, 40, 36)


def test_a_model_without_image_inputs_is_refused_plainly():
    g = Graph()
    model = g.build(g.gemm(g.input("x", ["batch", 16]), 8))
    with pytest.raises(OnnxSlimError, match="synthetic calibration data is made for image inputs"):
        load_calibration("synthetic", model)
    with pytest.raises(OnnxSlimError, match="made for image inputs"):  # symbolic sides and no --input-size
        load_calibration("synthetic", image_model(["batch", 3, "h", "w"]))


def test_large_images_make_fewer_default_samples(monkeypatch):
    import onnx_slim.data.calibration as calibration_module

    monkeypatch.setattr(calibration_module, "SYNTHETIC_BUDGET_BYTES", 3 * 64 * 64 * 4 * 20)  # 20 images' worth
    assert len(load_calibration("synthetic", image_model(["batch", 3, 64, 64]))) == 20
    assert len(load_calibration("synthetic", image_model(["batch", 3, 64, 64]), samples=5)) == 5
