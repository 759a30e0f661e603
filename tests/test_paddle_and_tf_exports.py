"""Exports from the other frameworks users bring: paddle2onnx (models/*_paddle*.onnx, built by
scripts/make_paddle_models.py: BatchNorm left unfolded, biases as Adds, Identity chains, invented
symbolic dims, opset 11 and newer) and tf2onnx (models/resnet_tf2onnx.onnx, scripts/make_tf_models.py:
channels-last graphs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_slim.channels.analysis import analyze
from onnx_slim.data.calibration import CalibrationSet
from onnx_slim.ir.runtime import create_session, run_session
from onnx_slim.pipeline.prune import prune

MODELS = Path(__file__).parent.parent / "models"


def images(shape, seed=0) -> np.ndarray:
    """Smooth random images (a blurred noise field per channel): closer to photos than white noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((shape[0], shape[1], shape[2] // 8 + 1, shape[3] // 8 + 1))
    return np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)[:, :, :shape[2], :shape[3]].astype(np.float32)


def output_shapes(model, x) -> list:
    return [value.shape for value in run_session(create_session(model), {"x": x}).values()]


@pytest.mark.parametrize("name, analysis_shape, other_shapes", [
    ("dbnet_paddle", [1, 3, 64, 96], [(2, 3, 96, 160), (1, 3, 128, 64)]),
    ("dbnet_paddle_op14", [1, 3, 64, 96], [(2, 3, 96, 160)]),
    ("svtr_paddle", [1, 3, 48, 128], [(2, 3, 48, 320), (1, 3, 48, 64)]),
    ("svtr_paddle_op17", [1, 3, 48, 128], [(2, 3, 48, 320)]),
])
def test_dynamic_height_and_width_survive_pruning(name, analysis_shape, other_shapes):
    original = onnx.load(str(MODELS / f"{name}.onnx"))
    pruned, report = prune(original, ratio=0.3, input_shapes={"x": analysis_shape})
    assert report.macs_after < 0.75 * report.macs_before
    assert [d.dim_param != "" for d in pruned.graph.input[0].type.tensor_type.shape.dim] == \
        [d.dim_param != "" for d in original.graph.input[0].type.tensor_type.shape.dim]
    for shape in other_shapes:
        x = images(shape)
        assert output_shapes(pruned, x) == output_shapes(original, x)


@pytest.mark.parametrize("name, shape", [("pplcnet_paddle", (24, 3, 48, 192)), ("dbnet_paddle", (16, 3, 64, 96))])
def test_thinet_and_refit_on_unfolded_batchnorm_and_bias_adds(name, shape):
    """paddle2onnx never folds BatchNorm into the Conv and adds conv biases with a separate Add:
    normalization folds both, and the re-fit writes the new bias where it now lives."""
    original = onnx.load(str(MODELS / f"{name}.onnx"))
    calibration = CalibrationSet({"x": images(shape, seed=1)})
    pruned, report = prune(original, target_macs=0.6, criterion="thinet", reconstruct=True,
                           calibration=calibration, input_shapes={"x": [1, *shape[1:]]})
    assert abs(report.macs_fraction - 0.6) < 0.05
    assert report.reconstruction["methods"].get("fit", 0) > 0
    x = images((2, *shape[1:]), seed=2)
    before, after = run_session(create_session(original), {"x": x}), run_session(create_session(pruned), {"x": x})
    for key in before:
        assert after[key].shape == before[key].shape
        assert np.isfinite(after[key]).all()


def test_paddle_batchnorms_are_folded_and_identities_do_not_freeze():
    analysis = analyze(MODELS / "pplcnet_paddle.onnx")
    assert analysis.normalize_info.folded_batchnorms > 0
    assert not any(node.op_type == "BatchNormalization" for node in analysis.model.graph.node)
    reasons = [reason.reason for group in analysis.groups for reason in group.frozen]
    assert all("Identity" not in reason for reason in reasons), reasons
    assert len(analysis.channels.prunable_groups()) == len(analysis.groups) - 1  # all but the class scores


@pytest.mark.parametrize("name", ["svtr_paddle", "svtr_paddle_op17"])
def test_svtr_width_prunes_with_prune_layernorm(name):
    """The SVTR neck's width is LayerNorm-normalized (written out at opset 11) and its reshape
    back to NCHW reads C through Shape -> Slice -> Squeeze -> Identity -> Reshape -> Concat ->
    Identity: with --prune-layernorm the count follows and the width prunes."""
    original = onnx.load(str(MODELS / f"{name}.onnx"))

    def width_group(**options):  # the neck's 1x1 conv starts the transformer stream
        group = next(g for g in analyze(original, **options).groups if any(m.use.node == "Conv.10" for m in g.producers))
        assert group.channels == 32 and {m.use.op_type for m in group.producers} >= {"Conv", "MatMul"}
        return group

    assert not width_group().prunable
    assert width_group(prune_layernorm=True).prunable
    pruned, report = prune(original, ratio=0.3, prune_layernorm=True, input_shapes={"x": [1, 3, 48, 128]})
    assert report.groups_pruned == len(analyze(original, prune_layernorm=True).channels.prunable_groups())
    for shape in [(2, 3, 48, 320), (1, 3, 48, 64)]:
        x = images(shape)
        assert output_shapes(pruned, x) == output_shapes(original, x)


def test_shufflenet_channel_shuffle_prunes_losslessly():
    """paddle.vision's ShuffleNetV2: every unit's channel shuffle ties its two halves; with it the
    units prune (18 of 51 groups prunable before the shuffle was understood)."""
    from conftest import assert_lossless

    original = onnx.load(str(MODELS / "shufflenet_paddle.onnx"))
    pruned, report = prune(original, ratio=0.5)
    assert report.macs_after < 0.5 * report.macs_before
    x = images((2, 3, 64, 64))
    assert output_shapes(pruned, x) == output_shapes(original, x)
    assert_lossless(original, 0.5)


def test_keras_resnet_from_tf2onnx_prunes_through_its_channels_last_flatten():
    """tf2onnx (models/resnet_tf2onnx.onnx, scripts/make_tf_models.py): NHWC Transposes, a shape
    read as Gather(Shape, [0, 2, 3, 1]), Flatten of [N, 4, 4, 64] into a Dense."""
    from conftest import assert_lossless

    original = onnx.load(str(MODELS / "resnet_tf2onnx.onnx"))
    analysis = analyze(original)
    assert len(analysis.channels.prunable_groups()) == len(analysis.groups) - 1  # all but the 10 logits
    pruned, report = prune(original, ratio=0.3)
    assert report.macs_after < 0.56 * report.macs_before
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    before, after = run_session(create_session(original), {"image": x}), run_session(create_session(pruned), {"image": x})
    assert [v.shape for v in after.values()] == [v.shape for v in before.values()]
    assert_lossless(original, 0.5)
