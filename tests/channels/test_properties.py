"""Property tests: random CNN topologies hold invariants 1-4.

A network is a stem conv, 2-4 different random blocks (conv chain, residual,
concat, C2f-style split, slice chunks, depthwise, grouped conv, squeeze-excite,
max pool, BatchNormalization after an Add) and a head (GAP -> Flatten -> Gemm,
Reshape -> Gemm, or a conv).
Widths are even numbers 4..16, inputs 8x8, so one example takes a fraction of a second.
"""

from __future__ import annotations

import numpy as np
from conftest import assert_frozen_groups_kept, assert_lossless, assert_valid, random_feeds, run
from graphs import Graph
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from onnx_slim.channels.analysis import analyze
from onnx_slim.pipeline.prune import prune

BLOCKS = ["chain", "residual", "concat", "split", "slice", "depthwise", "grouped", "se", "pool", "norm"]
widths = st.integers(2, 8).map(lambda half: 2 * half)
# Ratio 0 has its own test (invariant 3); left in, the shrinker would draw it half the time.
ratios = st.floats(0.05, 0.9, allow_nan=False)
fast = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def add_block(g: Graph, h: str, kind: str, draw) -> str:
    """Append one block of `kind` after `h`; returns the block's output."""
    channels = g.channels(h)
    if kind == "residual":
        branch = g.conv(g.relu(g.conv(h, draw(widths))), channels)
        return g.relu(g.add(h, branch))
    if kind == "concat":
        left = g.relu(g.conv(h, draw(widths)))
        right = g.relu(g.conv(h, draw(widths))) if draw(st.booleans()) else h
        return g.concat([left, right])
    if kind == "split":
        first = draw(st.integers(1, channels - 1))
        head, tail = g.split(h, [first, channels - first])
        return g.concat([head, g.relu(g.conv(tail, draw(widths)))])
    if kind == "slice":  # YOLO-style chunk
        first = draw(st.integers(1, channels - 1))
        head, tail = g.slice(h, 0, first), g.slice(h, first, channels)
        return g.concat([g.relu(g.conv(tail, draw(widths))), head])
    if kind == "grouped" and channels % 2 == 0:  # both conv groups lose the same channels
        return g.relu(g.conv(h, 2 * draw(st.integers(2, 4)), group=2))
    if kind in ("grouped", "chain"):
        return g.relu(g.conv(h, draw(widths)))
    if kind == "pool":
        return g.node("MaxPool", [h], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    if kind == "norm":  # a BatchNormalization after an Add is not folded
        return g.relu(g.bn(g.add(h, g.conv(h, channels))))
    if kind == "depthwise":
        h = g.relu(g.depthwise(h, draw(st.sampled_from([1, 2]))))
        return g.relu(g.conv(h, draw(widths), kernel=1))
    return g.se_block(h, max(2, channels // 4), name=f"se{len(g.nodes)}")


@st.composite
def networks(draw):
    g = Graph(seed=draw(st.integers(0, 2**16)))
    h = g.relu(g.conv(g.input("x", [1, 3, 8, 8]), draw(widths), name="stem"))
    # A prefix of a permutation: every example mixes several different blocks.
    kinds = draw(st.permutations(BLOCKS))[:draw(st.integers(2, 4))]
    for kind in kinds:
        h = add_block(g, h, kind, draw)
    head = draw(st.sampled_from(["gap_gemm", "conv", "reshape_gemm"]))
    if head == "gap_gemm":
        return g.build(g.head(h))
    if head == "reshape_gemm":  # a constant shape that states C*H*W, rewritten when C shrinks
        return g.build(g.gemm(g.reshape(h, [1, g.channels(h) * 64]), 3, name="fc"))
    return g.build(g.conv(h, 2, name="conv_out"))


@fast
@given(networks(), ratios)
def test_pruned_model_is_valid_and_frozen_groups_stay(model, ratio):
    """Invariants 1 and 4."""
    analysis = analyze(model)
    pruned, report = prune(model, ratio=ratio)
    assert_valid(pruned, model)
    assert report.groups_pruned <= len(analysis.channels.prunable_groups())
    assert_frozen_groups_kept(analysis, pruned)


@fast
@given(networks(), ratios)
def test_pruning_zeroed_channels_is_lossless(model, ratio):
    """Invariant 2 (assert_lossless also checks invariant 1 on the result)."""
    groups = analyze(model).channels.prunable_groups()
    assume(groups)  # e.g. a grouped conv right after the stem leaves nothing to prune
    if not any(int(g.channels * ratio + 1e-9) for g in groups):
        ratio = 0.5  # every prunable group has at least 2 channels, so one goes
    assert_lossless(model, ratio)


@fast
@given(networks())
def test_ratio_zero_keeps_the_outputs(model):
    """Invariant 3."""
    pruned, report = prune(model, ratio=0.0)
    assert report.channels_removed == 0
    feeds = random_feeds(model)
    before, after = run(model, feeds), run(pruned, feeds)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value)
