"""`prune` as a library call: invariants 3-6 (ratio 0 is the identity, the input is untouched,
results are deterministic, excluded groups stay whole) and option checks."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import group_with, random_feeds, run, weight_dims
from graphs import conv_chain

from onnx_slim.channels.analysis import analyze
from onnx_slim.errors import OnnxSlimError
from onnx_slim.pipeline.prune import prune


def test_ratio_zero_outputs_identical():
    model = conv_chain((8, 8, 6))
    pruned, report = prune(model, ratio=0.0)
    assert report.channels_removed == 0
    feeds = random_feeds(model)
    for name, value in run(model, feeds).items():
        np.testing.assert_array_equal(run(pruned, feeds)[name], value)


def test_prune_leaves_the_input_model_unchanged():
    model = conv_chain((8, 8))
    before = model.SerializeToString()
    prune(model, ratio=0.5)
    analyze(model)
    assert model.SerializeToString() == before


@pytest.mark.parametrize("criterion", ["l1", "random"])
def test_same_inputs_and_seed_give_identical_bytes(criterion):
    model = conv_chain((8, 8, 8))
    first, _ = prune(model, ratio=0.5, criterion=criterion, seed=3)
    second, _ = prune(model, ratio=0.5, criterion=criterion, seed=3)
    assert first.SerializeToString() == second.SerializeToString()


def test_exclude_pattern_freezes_the_group():
    model = conv_chain((8, 8))
    analysis = analyze(model, exclude=["conv1"])
    assert not group_with(analysis, "conv1").prunable
    assert any("exclude" in r.reason for r in group_with(analysis, "conv1").frozen)
    pruned, _ = prune(model, ratio=0.5, exclude=["conv1*"])
    assert weight_dims(pruned, "conv1") == (8, 3, 3, 3)
    assert weight_dims(pruned, "conv2") == (4, 8, 3, 3)


def test_options_out_of_range_are_refused():
    model = conv_chain((8,))
    for options in ({"ratio": 1.0}, {"ratio": 0.5, "target_macs": 0.5}, {"ratio": 0.5, "round_to": 0}):
        with pytest.raises(OnnxSlimError):
            prune(model, **options)


def detector(height="H", width="W"):
    """A fully convolutional net with symbolic height and width, as text detectors are exported."""
    from graphs import Graph

    g = Graph(seed=7)
    h = g.relu(g.conv(g.input("x", ["N", 3, height, width]), 8, name="conv1"))
    return g.build(g.conv(g.relu(g.conv(h, 8, name="conv2")), 1, kernel=1, name="head"))


def test_calibration_data_sizes_the_symbolic_height_and_width():
    """With no --input-shape, the analysis, the MACs and the checks take the calibration samples'
    size, not the 64 x 64 default: the plan is costed at the size the model will run at."""
    from onnx_slim.data.calibration import CalibrationSet
    from onnx_slim.ops.cost import model_cost

    model = detector()
    calibration = CalibrationSet({"x": np.random.default_rng(0).random((12, 3, 40, 96), dtype=np.float32)})
    _, report = prune(model, ratio=0.25, criterion="thinet", calibration=calibration, round_to=1)
    assert report.macs_before == model_cost(model, {"x": [1, 3, 40, 96]}).macs != model_cost(model).macs
    _, given = prune(model, ratio=0.25, criterion="thinet", calibration=calibration, round_to=1,
                     input_shapes={"x": [1, 3, 32, 32]})
    assert given.macs_before == model_cost(model, {"x": [1, 3, 32, 32]}).macs  # --input-shape still rules


def test_calibration_samples_that_do_not_fit_the_model_are_a_usage_error():
    from onnx_slim.data.calibration import CalibrationSet
    from onnx_slim.errors import UsageError

    calibration = CalibrationSet({"x": np.random.default_rng(0).random((4, 3, 40, 96), dtype=np.float32)})
    with pytest.raises(UsageError, match="calibration data's sample shape x=1,3,40,96 contradicts"):
        prune(detector(height=32, width=32), ratio=0.25, criterion="thinet", calibration=calibration)


def test_the_default_criterion_follows_the_data(tmp_path):
    """thinet on calibration data (synthetic images too), consumer_l1 without (l1 keeps the wrong
    channels of BatchNorm-folded CNNs: README, Results)."""
    from onnx_slim.data.calibration import load_calibration

    model = conv_chain((16, 16), size=8)
    assert prune(model, ratio=0.25)[1].criterion == "consumer_l1"
    for source in ("random", "synthetic"):
        data = load_calibration(source, model, samples=16)
        assert prune(model, ratio=0.25, calibration=data)[1].criterion == ("thinet" if source == "synthetic"
                                                                           else "consumer_l1")
    assert prune(model, ratio=0.25, criterion="l1")[1].criterion == "l1"
