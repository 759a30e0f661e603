"""Residual streams: the groups a sum of two activations carries, which `inspect` marks and
`allocate="interior"` spares."""

from __future__ import annotations

from pathlib import Path

from conftest import group_with, weight_dims
from graphs import Graph, conv_chain

from onnx_slim.channels.analysis import analyze
from onnx_slim.channels.streams import stream_roots
from onnx_slim.pipeline.prune import prune

MODELS = Path(__file__).resolve().parents[2] / "models"


def residual_model():
    """stem -> [conv_in -> relu -> depthwise -> conv_out] + stem -> bias Add -> head: the stem's
    channels are the stream; conv_in's (read by the depthwise and conv_out) are interior."""
    g = Graph()
    x = g.input("x", [1, 3, 8, 8])
    stem = g.relu(g.conv(x, 8, name="stem"))
    inner = g.depthwise(g.relu(g.conv(stem, 16, kernel=1, name="conv_in")), name="dw")
    block = g.conv(g.relu(inner), 8, kernel=1, name="conv_out")
    stream = g.add(stem, block, name="residual")
    return g.build(g.conv(g.add_bias(stream, name="bias"), 4, name="head"))


def _streams(model) -> set[str]:
    analysis = analyze(model)
    roots = stream_roots(analysis.channels)
    return {producer.use.node for group in analysis.channels.prunable_groups() if group.root in roots
            for producer in group.producers}


def test_the_residual_sum_marks_its_group_and_only_it():
    model = residual_model()
    analysis = analyze(model)
    roots = stream_roots(analysis.channels)
    assert group_with(analysis, "stem").root in roots
    assert group_with(analysis, "conv_in").root not in roots  # a depthwise conv and one reader
    assert _streams(model) == {"stem", "conv_out"}


def test_a_chain_and_a_constant_added_per_channel_make_no_stream():
    assert _streams(conv_chain((8, 8, 8))) == set()
    g = Graph()
    h = g.relu(g.conv(g.input("x", [1, 3, 8, 8]), 8, name="conv1"))
    assert _streams(g.build(g.conv(g.add_bias(h), 2, name="out"))) == set()


def test_interior_allocation_keeps_the_stream_whole():
    model = residual_model()
    pruned, report = prune(model, target_macs=0.8, allocate="interior")
    assert report.allocate == "interior" and report.channels_removed > 0
    assert weight_dims(pruned, "stem")[0] == 8 and weight_dims(pruned, "conv_out")[0] == 8
    assert weight_dims(pruned, "conv_in")[0] < 16
    _, uniform = prune(model, target_macs=0.8, allocate="uniform")
    kept = {group["id"]: group["kept"] for group in uniform.groups}
    stem_group = group_with(analyze(model), "stem").id
    assert kept[stem_group] < 8  # the uniform plan does cut the stream


def test_inspect_marks_the_stream(capsys):
    from onnx_slim.cli import main

    path = MODELS / "digits_resnet.onnx"
    analysis = analyze(path)
    marked = {group["id"] for group in analysis.to_dict()["groups"] if group["stream"]}
    assert marked == {group.id for group in analysis.groups if group.root in stream_roots(analysis.channels)}
    assert marked  # the digits ResNet adds its blocks to a stream
    try:
        main(["inspect", str(path)])
    except SystemExit as done:
        assert not done.code
    assert "prunable, stream" in capsys.readouterr().out
