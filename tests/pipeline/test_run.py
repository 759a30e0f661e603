"""`onnx-slim run`, `sweep`, `quantize` and `bench` on the trained demo model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from test_cli import run_cli

MODELS = Path(__file__).parents[2] / "models"
FAST = ["--runs", "3", "--warmup", "1", "--no-memory", "--quiet"]


@pytest.fixture
def demo(tmp_path):
    """The demo model with its data and its sibling config, in a scratch folder."""
    for name in ("digits_cnn.onnx", "digits_cnn.slim.toml", "digits_calib.npz", "digits_test.npz"):
        shutil.copy(MODELS / name, tmp_path / name)
    return tmp_path / "digits_cnn.onnx"


def test_run_with_sibling_config_tells_the_whole_story(capsys, demo, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, "run", demo, "-o", out, "--criterion", "l1", "--json", *FAST)
    assert code == 0
    report = json.loads(stdout)
    assert report["config_file"].endswith("digits_cnn.slim.toml")
    assert report["passed"] is True
    assert [gate["name"] for gate in report["gates"]] == ["max_drop"]
    assert report["prune"]["reconstruction"]["layers"] > 0
    assert report["quantize"]["mode"] == "static"
    final = report["evaluation"]["final"]
    assert final["accuracy_original"] > 0.97 and final["accuracy_drop_points"] <= 1.0
    assert len(report["bench"]["models"]) == 3
    for name in ("model.onnx", "pruned.onnx", "report.json", "report.md"):
        assert (out / name).exists()
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    assert "| final |" in (out / "report.md").read_text()


def test_failed_gate_exits_3_and_keeps_the_report(capsys, demo, tmp_path):
    out = tmp_path / "out"
    code, _, stderr = run_cli(capsys, "run", demo, "-o", out, "--criterion", "l1", "--no-reconstruct",
                              "--quantize", "none", "--min-speedup", "1000", *FAST)
    assert code == 3
    assert "quality gate failed" in stderr and "speedup" in stderr
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False


def test_command_line_overrides_config(capsys, demo, tmp_path):
    config = tmp_path / "pipeline.toml"
    config.write_text('target-macs = 0.8\nquantize = "none"\nround-to = 1\n')
    code, stdout, _ = run_cli(capsys, "run", demo, "-o", tmp_path / "o", "--config", config,
                              "--target-macs", "0.5", "--criterion", "l1", "--json", *FAST)
    report = json.loads(stdout)
    assert code == 0
    assert report["config"]["target_macs"] == 0.5 and report["config"]["quantize"] == "none"
    assert abs(report["prune"]["macs_fraction"] - 0.5) <= 0.02
    assert report["quantize"] is None


def test_unknown_config_key_is_a_usage_error(capsys, demo, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("target_mac = 0.5\n")
    code, _, stderr = run_cli(capsys, "run", demo, "-o", tmp_path / "o", "--config", config, *FAST)
    assert code == 2 and "unknown option 'target_mac'" in stderr


def test_existing_result_needs_force(capsys, demo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"old")
    code, _, stderr = run_cli(capsys, "run", demo, "-o", out, *FAST)
    assert code == 2 and "--force" in stderr
    assert (out / "model.onnx").read_bytes() == b"old"


def test_sweep_writes_a_table(capsys, demo, tmp_path):
    out = tmp_path / "sweep"
    code, stdout, _ = run_cli(capsys, "sweep", demo, "-o", out, "--target-macs", "0.8,0.5", "--criterion", "l1",
                              "--quantize", "none", "--json", *FAST)
    result = json.loads(stdout)
    assert code == 0
    assert [p["target_macs"] for p in result["points"]] == [0.8, 0.5]
    assert result["points"][0]["macs_fraction"] > result["points"][1]["macs_fraction"]
    assert (out / "sweep.md").read_text().count("|") > 10


def test_quantize_command(capsys, demo, tmp_path):
    out = tmp_path / "q.onnx"
    code, stdout, _ = run_cli(capsys, "quantize", demo, "-o", out, "--calib", demo.parent / "digits_calib.npz",
                              "--eval", demo.parent / "digits_test.npz", "--json", "--quiet")
    report = json.loads(stdout)
    assert code == 0
    assert report["size_after"] < report["size_before"]
    assert report["evaluation"]["agreement"]["top1"] > 0.95
    assert any(op in report["quantized_ops"] for op in ("QuantizeLinear", "DequantizeLinear"))


def test_bench_command(capsys, demo):
    code, stdout, _ = run_cli(capsys, "bench", demo, demo, "--runs", "3", "--warmup", "1", "--no-memory",
                              "--json", "--quiet")
    report = json.loads(stdout)
    assert code == 0
    for model in report["models"]:
        assert set(model["latency_ms"]) == {"mean", "min", "max", "p50", "p90", "p95", "p99", "spread", "runs"}
        assert model["agreement"]["max_abs_diff"] == 0


def test_bench_takes_the_option_names_the_other_commands_and_its_hints_use(capsys, demo):
    code, stdout, _ = run_cli(capsys, "bench", demo, "--runs", "2", "--warmup", "1", "--no-memory", "--json",
                              "--quiet", "--batch-size", "2", "--input-shape", "input=2,1,16,16")
    assert code == 0 and json.loads(stdout)["batch"] == 2


def test_sensitivity_command(capsys, demo):
    code, stdout, _ = run_cli(capsys, "sensitivity", demo, "--calib", demo.parent / "digits_calib.npz",
                              "--ratios", "0.2,0.5", "--samples", "16", "--json", "--quiet")
    report = json.loads(stdout)
    assert code == 0
    assert report["ratios"] == [0.2, 0.5]
    for group in report["groups"]:
        low, high = group["entries"]
        assert high["macs_saved"] > low["macs_saved"] > 0


def test_prune_with_sensitivity_allocation(capsys, demo, tmp_path):
    code, stdout, _ = run_cli(capsys, "prune", demo, "-o", tmp_path / "a.onnx", "--target-macs", "0.6",
                              "--allocate", "sensitivity", "--calib", demo.parent / "digits_calib.npz",
                              "--json", "--quiet")
    report = json.loads(stdout)
    assert code == 0
    assert report["allocate"] == "sensitivity"
    assert abs(report["macs_fraction"] - 0.6) <= 0.02
    kept = [g["kept"] / g["channels"] for g in report["groups"]]
    assert len(set(round(k, 2) for k in kept)) > 1  # groups got different ratios


def test_allocate_without_calibration_is_a_usage_error(capsys, demo, tmp_path):
    code, _, stderr = run_cli(capsys, "prune", demo, "-o", tmp_path / "a.onnx", "--target-macs", "0.6",
                              "--allocate", "sensitivity", "--quiet")
    assert code == 2 and "calibration" in stderr


def test_yaml_config(capsys, demo, tmp_path):
    pytest.importorskip("yaml")
    config = tmp_path / "pipeline.yaml"
    config.write_text("target-macs: 0.7\nquantize: none\ncriterion: l2\n")
    code, stdout, _ = run_cli(capsys, "run", demo, "-o", tmp_path / "o", "--config", config, "--json", *FAST)
    report = json.loads(stdout)
    assert code == 0
    assert report["prune"]["criterion"] == "l2" and report["config"]["target_macs"] == 0.7


def test_random_calibration_says_structure_only(capsys, tmp_path):
    model = tmp_path / "resnet.onnx"
    shutil.copy(MODELS / "resnet_torchscript.onnx", model)
    code, stdout, _ = run_cli(capsys, "run", model, "-o", tmp_path / "o", "--calib", "random",
                              "--quantize", "static", "--json", *FAST)
    report = json.loads(stdout)
    assert code == 0
    assert report["config_file"] is None
    assert report["prune"]["criterion"] == "consumer_l1" and report["prune"]["reconstruction"] is None
    assert "structure-only" in report["quantize"]["calibration"]


def test_run_never_overwrites_its_input(capsys, tmp_path):
    outdir = tmp_path / "od"
    outdir.mkdir()
    model = outdir / "model.onnx"
    shutil.copy(MODELS / "digits_cnn.onnx", model)
    before = model.read_bytes()
    code, _, stderr = run_cli(capsys, "run", model, "-o", outdir, "--force", "--ratio", "0.3", *FAST)
    assert code == 2 and "would be overwritten" in stderr
    assert model.read_bytes() == before


def test_failed_run_leaves_no_folder(capsys, demo, tmp_path):
    outdir = tmp_path / "new"
    code, _, stderr = run_cli(capsys, "run", demo, "-o", outdir, "--criterion", "magic", *FAST)
    assert code == 2 and stderr.startswith("error: ") and "unknown criterion" in stderr
    assert not outdir.exists()


def test_output_under_a_file_is_a_clean_error(capsys, demo, tmp_path):
    code, _, stderr = run_cli(capsys, "prune", demo, "-o", demo / "x.onnx", "--ratio", "0.5", "--quiet")
    assert code == 1 and stderr.strip().startswith("error: ") and "is a file" in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_ratio_on_the_command_line_replaces_the_configs_target(capsys, demo, tmp_path):
    code, stdout, _ = run_cli(capsys, "run", demo, "-o", tmp_path / "o", "--ratio", "0.25", "--criterion", "l1",
                              "--quantize", "none", "--json", *FAST)
    report = json.loads(stdout)
    assert code == 0
    assert report["config"]["ratio"] == 0.25 and report["config"]["target_macs"] is None


@pytest.mark.parametrize("line, message", [
    ('round-to = "8"', "round-to: '8' is not a whole number"),
    ("reconstruct = 1", "reconstruct: 1 is not true or false"),
    ('input-shape = "input=1,1,x"', "bad input shape"),
])
def test_config_values_are_checked(capsys, demo, tmp_path, line, message):
    config = tmp_path / "c.toml"
    config.write_text(line + "\n")
    code, _, stderr = run_cli(capsys, "run", demo, "-o", tmp_path / "o", "--config", config, *FAST)
    assert code == 2 and message in stderr


def test_exclude_as_a_single_string(capsys, demo, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('ratio = 0.3\nexclude = "/fc*"\nquantize = "none"\ncriterion = "l1"\nround-to = 1\n')
    code, stdout, _ = run_cli(capsys, "run", demo, "-o", tmp_path / "o", "--config", config, "--json", *FAST)
    report = json.loads(stdout)
    assert code == 0 and report["config"]["exclude"] == ["/fc*"]
    assert report["prune"]["groups_pruned"] == 3  # only the group feeding the classifier is left alone


@pytest.mark.parametrize("shape, message", [
    ("nope=1,1,16,16", "no such input"),
    ("input=1,1,8,8", "contradicts the model's [?,1,16,16]"),
])
def test_input_shapes_are_checked_against_the_model(capsys, demo, tmp_path, shape, message):
    code, _, stderr = run_cli(capsys, "prune", demo, "-o", tmp_path / "o.onnx", "--ratio", "0.5",
                              "--input-shape", shape, "--quiet")
    assert code == 2 and message in stderr


def test_the_terminal_summary_is_the_reports_summary(capsys, demo, tmp_path):
    """The CLI prints from the report object (it used to re-read report.md and split it on a heading)."""
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, "run", demo, "-o", out, "--criterion", "l1", *FAST)
    assert code == 0
    written = (out / "report.md").read_text()
    summary = written.split("\n\n## ")[0]  # a search's candidates, then the benchmark, follow it
    _, _, benchmark = written.partition("\n\n## Benchmark\n\n")
    assert stdout.startswith(summary + "\n")
    assert "| final |" in summary and "speedup (p50)" in benchmark
    assert json.loads((out / "report.json").read_text())["bench_markdown"].strip() == benchmark.strip()


def test_one_session_spec_reaches_every_stage(capsys, demo, tmp_path, monkeypatch):
    """--threads is read once: calibration passes, evaluation and the benchmark all get the same spec."""
    from onnx_slim.ir import runtime

    seen = []
    real = runtime.SessionSpec.session_options

    def recording(spec):
        seen.append(spec.threads)
        return real(spec)

    monkeypatch.setattr(runtime.SessionSpec, "session_options", recording)
    code, stdout, _ = run_cli(capsys, "run", demo, "-o", tmp_path / "out", "--threads", "1", "--json", *FAST)
    assert code == 0 and json.loads(stdout)["bench"]["threads"] == 1
    optimized = [threads for threads in seen if threads is not None]
    assert len(optimized) >= 8 and set(optimized) == {1}  # captures, re-fit, evaluations, timing, bench


def test_without_eval_data_the_report_marks_agreement_as_random_input_only(capsys, demo, tmp_path):
    config = tmp_path / "bare.toml"
    config.write_text("quantize = \"none\"\n")  # no calib, no eval
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, "run", demo, "-o", out, "--config", config, "--provider", "cpu", "--json",
                              *FAST)
    assert code == 0
    report = json.loads(stdout)
    assert report["bench"]["agreement_inputs"] == "random" and report["bench"]["agreement_samples"] == 1
    assert report["bench"]["providers"] == ["CPUExecutionProvider"]
    written = (out / "report.md").read_text()
    summary, _, benchmark = written.partition("\n\n## Benchmark\n\n")
    assert "not measured (no --eval)" in summary
    assert benchmark.startswith("Quality is the summary's 'quality vs original'")
    assert "| cosine (random inputs) | top-1 (random inputs) |" in benchmark
    assert "on 1 random-input sample: says little about a model" in benchmark
    assert "pass --eval for real agreement" in benchmark and "--data" not in benchmark


@pytest.mark.parametrize("limit, all_float", [("0", True), ("1", False)])
def test_run_passes_max_layer_error_to_int8_of_a_matmul_model(capsys, tmp_path, limit, all_float):
    model = tmp_path / "digits_mlp.onnx"
    shutil.copy(MODELS / "digits_mlp.onnx", model)
    code, stdout, _ = run_cli(capsys, "run", model, "-o", tmp_path / "out", "--ratio", "0.25", "--criterion", "l1",
                              "--no-reconstruct", "--calib", MODELS / "digits_calib.npz", "--quantize", "static",
                              "--max-layer-error", limit, "--json", *FAST)
    assert code == 0
    quantized = json.loads(stdout)["quantize"]
    assert quantized["mode"] == "static" and quantized["smoothed"] is not None
    assert bool(quantized["float_layers"]) == all_float


def test_run_sizes_symbolic_dims_from_the_calibration_data(capsys, tmp_path):
    """A detector with symbolic H and W calibrated on 40 x 96 samples is pruned, timed, verified and
    benchmarked at 40 x 96, not at the 64 x 64 default."""
    import numpy as np
    from test_prune import detector

    from onnx_slim.ops.cost import model_cost

    model = detector()
    path = tmp_path / "detector.onnx"
    onnx.save(model, path)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).random((8, 3, 40, 96), dtype=np.float32))
    code, stdout, _ = run_cli(capsys, "run", path, "-o", tmp_path / "out", "--ratio", "0.25", "--criterion", "l1",
                              "--no-reconstruct", "--calib", tmp_path / "calib.npz", "--quantize", "none", "--json",
                              *FAST)
    assert code == 0
    report = json.loads(stdout)
    at_data_size = model_cost(model, {"x": [1, 3, 40, 96]}).macs
    assert report["prune"]["macs_before"] == report["bench"]["models"][0]["macs"] == at_data_size


def test_a_final_model_that_is_the_pruned_one_is_timed_once(capsys, demo, tmp_path):
    """Timed twice, the same file read 1.17x and 1.36x in one report (the later one always faster)."""
    code, stdout, _ = run_cli(capsys, "run", demo, "-o", tmp_path / "o", "--quantize", "none", "--json", *FAST)
    assert code == 0
    pruned, final = json.loads(stdout)["bench"]["models"][1:]
    assert pruned["latency_ms"] == final["latency_ms"] and pruned["speedup"] == final["speedup"]
    assert pruned["path"].endswith("pruned.onnx") and final["path"].endswith("model.onnx")
