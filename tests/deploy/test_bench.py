from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_slim.deploy import bench as bench_module
from onnx_slim.deploy.bench import benchmark, interleaved_timings, latency_stats, speedup
from onnx_slim.errors import OnnxSlimError, UsageError
from onnx_slim.ir.runtime import SessionSpec

FAST = dict(runs=3, warmup=1, measure_memory=False)


def mlp(width: int = 32, seed: int = 0, input_name: str = "x", output_name: str = "y") -> onnx.ModelProto:
    """x [batch, 16] -> MatMul(16 x width) -> Relu -> MatMul(width x 4) -> y [batch, 4]."""
    rng = np.random.default_rng(seed)
    initializers = [
        numpy_helper.from_array(rng.standard_normal((16, width)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((width, 4)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", [input_name, "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["a"], name="act"),
        helper.make_node("MatMul", ["a", "w2"], [output_name], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", 4])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def saved(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def test_interleaved_timings_warm_up_first_then_alternate():
    calls = []
    runners = [lambda: calls.append("A"), lambda: calls.append("B")]
    ticks = iter(range(0, 10**9, 1_000_000))  # every clock read advances 1 ms

    timings = interleaved_timings(runners, runs=3, warmup=2, clock=lambda: next(ticks))

    assert calls == ["A", "A", "B", "B"] + ["A", "B"] * 3
    assert timings == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]


def test_latency_stats_match_numpy_percentiles():
    latencies = [5.0, 1.0, 3.0, 2.0, 10.0, 4.0, 7.5]

    stats = latency_stats(latencies)

    assert stats["mean"] == pytest.approx(np.mean(latencies))
    assert (stats["min"], stats["max"]) == (1.0, 10.0)
    for percentile in (50, 90, 95, 99):
        assert stats[f"p{percentile}"] == pytest.approx(np.percentile(latencies, percentile))
    assert stats["spread"] == pytest.approx(np.percentile(latencies, 90) / np.percentile(latencies, 10))
    assert stats["runs"] == 7


def test_speedup_is_baseline_over_model_latency():
    result = speedup({"mean": 10.0, "p50": 9.0}, {"mean": 4.0, "p50": 3.0})

    assert result == {"mean": 2.5, "p50": 3.0}


def test_benchmark_report_shape_speedup_and_self_agreement(tmp_path):
    wide = saved(mlp(width=256), tmp_path / "wide.onnx")
    narrow = saved(mlp(width=8, seed=1), tmp_path / "narrow.onnx")

    report = benchmark([wide, narrow, mlp(width=256)], batch=2, **FAST)

    data = json.loads(json.dumps(report.to_dict()))
    assert set(data) == {"models", "baseline", "runs", "warmup", "threads", "batch", "cpu", "notes", "providers",
                         "device", "include_copies", "agreement_inputs", "agreement_samples"}
    assert (data["providers"], data["device"], data["include_copies"]) == (["CPUExecutionProvider"], "cpu", False)
    assert (data["baseline"], data["runs"], data["warmup"], data["batch"]) == (wide, 3, 1, 2)
    assert set(data["models"][0]) == {
        "path", "latency_ms", "throughput", "session_ms", "peak_memory_bytes", "size_bytes",
        "params", "macs", "speedup", "agreement", "agreement_note",
    }
    assert set(data["models"][0]["latency_ms"]) == {"mean", "min", "max", "p50", "p90", "p95", "p99", "spread", "runs"}
    baseline, small, same = report.models
    assert baseline.speedup == {"mean": 1.0, "p50": 1.0}
    assert small.speedup["mean"] == baseline.latency_ms["mean"] / small.latency_ms["mean"]
    assert small.speedup["p50"] == baseline.latency_ms["p50"] / small.latency_ms["p50"]
    assert small.throughput == pytest.approx(2 / (small.latency_ms["mean"] / 1000))
    assert len(small.latencies_ms) == 3
    assert baseline.size_bytes == os.path.getsize(wide)
    assert same.size_bytes == mlp(width=256).ByteSize()
    assert same.path == "<in-memory model 2>"
    assert baseline.params == 16 * 256 + 256 * 4
    assert baseline.macs == 16 * 256 + 256 * 4  # one sample
    assert same.agreement["cosine"] == pytest.approx(1.0)
    assert same.agreement["max_abs_diff"] == 0.0
    assert same.agreement["rel_l2"] == 0.0
    assert small.agreement["cosine"] < 0.99  # different weights
    assert baseline.peak_memory_bytes is None
    markdown = report.to_markdown()
    assert markdown.startswith("| model | mean ms |")
    assert markdown.count("\n| `") == 3


def test_benchmark_interleaves_timed_runs(tmp_path, monkeypatch):
    calls = []
    make_runner = bench_module.timed_call

    def recording_runner(session, feeds, *where):
        run = make_runner(session, feeds, *where)
        label = f"model{len(recording_runners)}"
        recording_runners.append(label)
        return lambda: (calls.append(label), run())

    recording_runners: list[str] = []
    monkeypatch.setattr(bench_module, "timed_call", recording_runner)

    benchmark([mlp(), mlp(seed=1)], runs=3, warmup=2, measure_memory=False)

    assert calls == ["model0"] * 2 + ["model1"] * 2 + ["model0", "model1"] * 3


def test_baseline_by_index_and_by_outside_path(tmp_path):
    first = saved(mlp(), tmp_path / "a.onnx")
    second = saved(mlp(width=8), tmp_path / "b.onnx")
    outside = saved(mlp(width=64), tmp_path / "base.onnx")

    by_index = benchmark([first, second], baseline=1, **FAST)
    by_path = benchmark([first, second], baseline=outside, **FAST)

    assert by_index.baseline == second and by_index.models[1].speedup["mean"] == 1.0
    assert by_path.baseline == outside
    assert [model.path for model in by_path.models] == [outside, first, second]


def test_data_gives_the_inputs_and_the_batch():
    data = [{"x": np.ones((4, 16), dtype=np.float64)}, {"x": np.zeros((9, 16))}]

    report = benchmark([mlp()], data=data, **FAST)

    assert report.batch == 4  # first batch only, cast to the model's float32
    assert "the data's first batch holds 4: timed at batch 4, not the 1 asked for" in report.notes


def test_a_batch_the_model_fixes_otherwise_is_timed_as_fixed_and_said_so():
    model = mlp()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # an export with batch 1 fixed

    report = benchmark([model], batch=4, **FAST)

    assert report.batch == 1
    assert "the model's inputs fix the batch at 1: timed at batch 1, not the 4 asked for" in report.notes


def test_models_with_different_inputs_are_refused():
    with pytest.raises(OnnxSlimError, match="different inputs"):
        benchmark([mlp(), mlp(input_name="pixels")], **FAST)


def test_different_output_names_give_no_agreement_and_a_note():
    report = benchmark([mlp(), mlp(output_name="scores")], **FAST)

    assert report.models[1].agreement is None
    assert "output names differ" in report.models[1].agreement_note
    assert any("output names differ" in note for note in report.notes)


def test_bad_counts_are_usage_errors():
    with pytest.raises(UsageError, match="runs must be at least 1"):
        benchmark([mlp()], runs=0)
    with pytest.raises(UsageError, match="baseline index 3"):
        benchmark([mlp()], baseline=3)


def test_peak_memory_is_measured_in_a_subprocess(tmp_path):
    path = saved(mlp(width=512), tmp_path / "m.onnx")

    report = benchmark([path], runs=1, warmup=0, session=SessionSpec(threads=1), measure_memory=True)

    peak = report.models[0].peak_memory_bytes
    assert isinstance(peak, int) and peak > 0
    assert report.threads == 1
    assert report.cpu["logical_cores"] == os.cpu_count()


def test_agreement_on_random_inputs_is_labeled_as_such():
    report = benchmark([mlp(), mlp(seed=1)], batch=3, **FAST)

    assert (report.agreement_inputs, report.agreement_samples) == ("random", 3)
    markdown = report.to_markdown()
    assert "| cosine (random inputs) | top-1 (random inputs) |" in markdown.splitlines()[0]
    assert "- agreement with the baseline on 3 random-input samples: says little about a model" in markdown
    assert "pass --data for real agreement" in markdown


def test_agreement_on_data_says_how_many_samples():
    data = [{"x": np.ones((4, 16), dtype=np.float32)}]

    report = benchmark([mlp(), mlp(seed=1)], data=data, **FAST)

    assert report.to_dict()["agreement_inputs"] == "data" and report.to_dict()["agreement_samples"] == 4
    markdown = report.to_markdown()
    assert markdown.splitlines()[0].endswith("| cosine | top-1 |")
    assert "- agreement with the baseline on 4 samples of the data" in markdown
    assert "random" not in markdown


def test_the_setup_line_names_the_providers():
    markdown = benchmark([mlp()], **FAST).to_markdown()

    assert "providers CPUExecutionProvider; CPU " in markdown


def test_timed_runs_advance_a_progress_count():
    counted = []

    class Counting:
        def say(self, message):
            pass

        __call__ = say

        @contextlib.contextmanager
        def steps(self, label, total):
            counted.append(total)
            yield lambda steps=1: counted.append(steps)

    benchmark([mlp(), mlp(seed=1)], progress=Counting(), runs=3, warmup=0, measure_memory=False)

    assert counted[0] == 6 and sum(counted[1:]) == 6  # 3 rounds of 2 models


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs CUDA")
def test_cuda_bench_binds_inputs_and_outputs_on_the_device():
    session = SessionSpec.of(providers=["cuda"])

    report = benchmark([mlp(), mlp(seed=1)], session=session, **FAST)
    copies = benchmark([mlp()], session=session, include_copies=True, **FAST)

    assert report.device == "cuda:0" and report.providers[0] == "CUDAExecutionProvider"
    assert report.warmup >= 10  # a device warms up longer
    assert report.models[0].agreement["cosine"] == pytest.approx(1.0)
    assert "host-device copies not timed" in report.to_markdown()
    assert copies.include_copies and "copies timed" in copies.to_markdown()


def test_a_one_value_output_shows_its_relative_error_not_a_dash(tmp_path):
    """A detector's [N, 1] score has no cosine: the column read "-" for an int8 model 70% off."""
    def scorer(scale: float) -> onnx.ModelProto:
        weight = numpy_helper.from_array(np.full((16, 1), scale, np.float32), "w")
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "score",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])], [weight])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    report = benchmark([scorer(1.0), scorer(0.5)], batch=4, **FAST)
    rows = report.to_markdown().splitlines()[2:4]
    assert "rel. L2 0.0000 (one-value output)" in rows[0] and "rel. L2 0.5000 (one-value output)" in rows[1]
