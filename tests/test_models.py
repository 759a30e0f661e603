"""Every committed exported model (both PyTorch exporters, trained and random) prunes validly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_slim.model import random_inputs
from onnx_slim.pruning import analyze, prune
from onnx_slim.runtime import create_session, run_session

MODELS = sorted((Path(__file__).parent.parent / "models").glob("*.onnx"))


def outputs_of(model, feeds):
    return run_session(create_session(model), feeds)


@pytest.fixture(scope="module", params=MODELS, ids=lambda path: path.stem)
def model_path(request):
    return request.param


def test_models_are_committed():
    names = {path.stem for path in MODELS}
    for arch in ("resnet", "mobilenetv3", "efficientnet", "densenet", "yolov8", "transformer"):
        assert {f"{arch}_torchscript", f"{arch}_dynamo"} <= names, arch
    assert "digits_cnn" in names


def test_half_ratio_prunes_and_keeps_outputs(model_path):
    original = onnx.load(str(model_path))
    pruned, report = prune(original, ratio=0.5, criterion="l1")
    assert report.groups_pruned > 0
    assert report.macs_after < report.macs_before
    onnx.checker.check_model(pruned, full_check=True)
    feeds = random_inputs(original, batch=2, seed=1)
    before, after = outputs_of(original, feeds), outputs_of(pruned, feeds)
    assert list(before) == list(after)
    for name in before:
        assert before[name].shape == after[name].shape


def test_ratio_zero_is_identity(model_path):
    original = onnx.load(str(model_path))
    pruned, report = prune(original, ratio=0.0)
    assert report.groups_pruned == 0
    feeds = random_inputs(original, seed=2)
    before, after = outputs_of(original, feeds), outputs_of(pruned, feeds)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-5)


def test_every_model_has_prunable_groups(model_path):
    analysis = analyze(str(model_path))
    assert analysis.channels.prunable_groups()
    assert 0 < analysis.prunable_macs_fraction() <= 1
