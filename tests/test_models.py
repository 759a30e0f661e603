"""Every committed exported model (both PyTorch exporters, trained and random) prunes validly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_slim.channels.analysis import analyze
from onnx_slim.ir.inputs import random_inputs
from onnx_slim.ir.runtime import create_session, run_session
from onnx_slim.pipeline.prune import prune

MODEL_DIR = Path(__file__).parent.parent / "models"
MODELS = sorted(MODEL_DIR.glob("*.onnx"))


def outputs_of(model, feeds):
    return run_session(create_session(model), feeds)


@pytest.fixture(scope="module", params=MODELS, ids=lambda path: path.stem)
def model_path(request):
    return request.param


def test_models_are_committed():
    names = {path.stem for path in MODELS}
    for arch in ("resnet", "mobilenetv3", "efficientnet", "densenet", "yolov8", "transformer", "vit", "crnn"):
        assert {f"{arch}_torchscript", f"{arch}_dynamo"} <= names, arch
    assert {"pplcnet_paddle", "dbnet_paddle", "dbnet_paddle_op14", "svtr_paddle", "svtr_paddle_op17",
            "shufflenet_paddle"} <= names
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


def test_model_with_external_data_is_read_and_left_alone(tmp_path):
    source = tmp_path / "big.onnx"
    onnx.save_model(onnx.load(str(MODEL_DIR / "digits_cnn.onnx")), str(source),
                    save_as_external_data=True, all_tensors_to_one_file=True, location="big.onnx.data",
                    size_threshold=0)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    from onnx_slim.pipeline.prune import prune_file

    report = prune_file(source, tmp_path / "slim.onnx", ratio=0.5)
    assert report.macs_after < report.macs_before
    assert report.size_before > 600_000  # the data file counts
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.name.startswith("big")} == before
    onnx.checker.check_model(str(tmp_path / "slim.onnx"), full_check=True)


def at_opset(model, opset):
    """Upgrades go through onnx's converter; downgrades (which it cannot do) relabel the
    import: this ResNet uses only ops whose semantics are the same back to opset 9."""
    from onnx import version_converter

    if opset > model.opset_import[0].version:
        return version_converter.convert_version(model, opset)
    relabeled = onnx.ModelProto()
    relabeled.CopyFrom(model)
    relabeled.opset_import[0].version = opset
    return relabeled


@pytest.mark.parametrize("opset", [11, 13, 21])
def test_opsets_11_to_21(opset):
    converted = at_opset(onnx.load(str(MODEL_DIR / "resnet_torchscript.onnx")), opset)
    pruned, report = prune(converted, ratio=0.5)
    assert report.groups_pruned > 0
    assert next(o.version for o in pruned.opset_import if o.domain in ("", "ai.onnx")) == opset
    feeds = random_inputs(converted, seed=3)
    assert outputs_of(pruned, feeds)["output"].shape == outputs_of(converted, feeds)["output"].shape


def test_old_opset_is_converted_first_and_said_so():
    old = at_opset(onnx.load(str(MODEL_DIR / "resnet_torchscript.onnx")), 9)
    pruned, report = prune(old, ratio=0.5)
    assert next(o.version for o in pruned.opset_import if o.domain in ("", "ai.onnx")) == 13
    assert any("converted from opset 9 to 13" in note for note in report.notes)
    feeds = random_inputs(old, seed=3)
    assert outputs_of(pruned, feeds)["output"].shape == outputs_of(old, feeds)["output"].shape
    unpruned, _ = prune(old, ratio=0.0)
    np.testing.assert_allclose(outputs_of(unpruned, feeds)["output"], outputs_of(old, feeds)["output"],
                               rtol=1e-5, atol=1e-5)


def test_old_opset_that_cannot_be_converted_is_refused_in_one_line(monkeypatch):
    from onnx_slim import InvalidModelError

    def refuse(model, target):
        raise RuntimeError("No Adapter For Upsample\nmore detail")

    monkeypatch.setattr(onnx.version_converter, "convert_version", refuse)
    old = at_opset(onnx.load(str(MODEL_DIR / "resnet_torchscript.onnx")), 9)
    with pytest.raises(InvalidModelError, match="opset 9 is too old .* converter failed: No Adapter For Upsample more detail$"):  # its lines joined
        prune(old, ratio=0.5)


def test_saving_with_external_data_leaves_the_model_whole(tmp_path, monkeypatch):
    from onnx_slim.ir import model as model_io

    monkeypatch.setattr(model_io, "_EXTERNAL_DATA_THRESHOLD", 0)
    model = onnx.load(str(MODEL_DIR / "digits_cnn.onnx"))
    size = model.ByteSize()
    model_io.save_model(model, tmp_path / "a.onnx")
    model_io.save_model(model, tmp_path / "b.onnx")
    assert model.ByteSize() == size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "a.onnx.data", "b.onnx", "b.onnx.data"]
    feeds = random_inputs(model)
    np.testing.assert_allclose(outputs_of(str(tmp_path / "b.onnx"), feeds)["logits"], outputs_of(model, feeds)["logits"])


@pytest.mark.parametrize("name", ["transformer_torchscript", "transformer_dynamo", "digits_mlp", "yolov8_dynamo"])
def test_removing_zeroed_channels_is_lossless_on_exported_models(name):
    """Invariant 2 on real exports, transformers included (their LayerNorm groups stay frozen)."""
    from conftest import assert_lossless

    assert_lossless(onnx.load(str(MODEL_DIR / f"{name}.onnx")), ratio=0.5)
