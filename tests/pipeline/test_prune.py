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
