"""The onnx-slim command: exit codes, one-line errors, JSON, no output left on failure."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_slim.cli import main
from onnx_slim.errors import UsageError
from onnx_slim.formatting import human_count

DEMO = Path(__file__).parent.parent / "models" / "digits_cnn.onnx"


def run_cli(capsys, *args):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return done.value.code or 0, captured.out, captured.err


@pytest.fixture
def demo(tmp_path):
    path = tmp_path / "demo.onnx"
    shutil.copy(DEMO, path)
    return path


def test_prune_json_report(capsys, demo, tmp_path):
    out = tmp_path / "slim.onnx"
    code, stdout, _ = run_cli(capsys, "prune", demo, "-o", out, "--ratio", "0.5", "--json", "--quiet")
    assert code == 0
    report = json.loads(stdout)
    for key in ("macs_before", "macs_after", "params_before", "params_after", "size_before",
                "size_after", "groups_pruned", "groups_total", "output"):
        assert key in report
    assert report["macs_after"] < report["macs_before"]
    assert report["size_after"] == out.stat().st_size
    onnx.checker.check_model(str(out), full_check=True)


def test_prune_table_and_progress(capsys, demo, tmp_path):
    code, stdout, stderr = run_cli(capsys, "prune", demo, "-o", tmp_path / "s.onnx", "--target-macs", "0.5")
    assert code == 0
    assert "MACs" in stdout and "groups pruned" in stdout
    assert "analyzing" in stderr


def test_target_macs_within_two_percent(capsys, demo, tmp_path):
    code, stdout, _ = run_cli(capsys, "prune", demo, "-o", tmp_path / "s.onnx", "--target-macs", "0.6",
                              "--json", "--quiet")
    report = json.loads(stdout)
    assert code == 0
    assert abs(report["macs_after"] / report["macs_before"] - 0.6) <= 0.02


def test_inspect_json(capsys, demo):
    code, stdout, _ = run_cli(capsys, "inspect", demo, "--json")
    data = json.loads(stdout)
    assert code == 0
    assert data["macs"] > 0 and data["params"] > 0
    assert 0 < data["prunable_macs_fraction"] <= 1
    frozen = [g for g in data["groups"] if not g["prunable"]]
    assert all(g["frozen_by"] or g["status"] != "frozen" for g in frozen)
    assert any("model output" in r["reason"] for g in frozen for r in g["frozen_by"])


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"this is not a model", "not a readable ONNX model"),
])
def test_bad_inputs_fail_cleanly(capsys, tmp_path, content, message):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    out = tmp_path / "out.onnx"
    code, _, stderr = run_cli(capsys, "prune", bad, "-o", out, "--ratio", "0.5", "--quiet")
    assert code == 1
    assert stderr.startswith("error: ") and message in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_truncated_model(capsys, demo, tmp_path):
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(demo.read_bytes()[: demo.stat().st_size // 2])
    code, _, stderr = run_cli(capsys, "prune", truncated, "-o", tmp_path / "o.onnx", "--ratio", "0.5", "--quiet")
    assert code == 1 and stderr.startswith("error: ")
    assert not (tmp_path / "o.onnx").exists()


def test_missing_input(capsys, tmp_path):
    code, _, stderr = run_cli(capsys, "prune", tmp_path / "nope.onnx", "-o", tmp_path / "o.onnx", "--ratio", "0.5", "--quiet")
    assert code == 1 and "no such file" in stderr


@pytest.mark.parametrize("args, message", [
    (["--ratio", "1.0"], "ratio"),
    (["--ratio", "-0.1"], "ratio"),
    (["--target-macs", "0"], "target"),
    (["--target-macs", "1.5"], "target"),
    ([], "exactly one"),
    (["--ratio", "0.5", "--target-macs", "0.5"], "exactly one"),
    (["--ratio", "0.5", "--criterion", "magic"], "unknown criterion"),
])
def test_usage_errors_exit_2(capsys, demo, tmp_path, args, message):
    out = tmp_path / "o.onnx"
    code, _, stderr = run_cli(capsys, "prune", demo, "-o", out, "--quiet", *args)
    assert code == 2
    assert stderr.startswith("error: ") and message in stderr
    assert not out.exists()


def test_refuses_to_overwrite_input_or_existing_output(capsys, demo, tmp_path):
    before = demo.read_bytes()
    code, _, stderr = run_cli(capsys, "prune", demo, "-o", demo, "--ratio", "0.5")
    assert code == 2 and "input" in stderr
    existing = tmp_path / "exists.onnx"
    existing.write_bytes(b"keep me")
    code, _, stderr = run_cli(capsys, "prune", demo, "-o", existing, "--ratio", "0.5")
    assert code == 2 and "--force" in stderr
    assert existing.read_bytes() == b"keep me"
    code, _, _ = run_cli(capsys, "prune", demo, "-o", existing, "--ratio", "0.5", "--force", "--quiet")
    assert code == 0 and existing.read_bytes() != b"keep me"
    assert demo.read_bytes() == before


def test_same_seed_gives_identical_bytes(capsys, demo, tmp_path):
    # An explicit --round-to: the default (auto) is a timing, which may choose differently from run to run.
    for name in ("a.onnx", "b.onnx"):
        run_cli(capsys, "prune", demo, "-o", tmp_path / name, "--ratio", "0.3", "--criterion", "random",
                "--round-to", "8", "--quiet")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_no_leftover_files_in_output_folder(capsys, demo, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    run_cli(capsys, "prune", demo, "-o", out_dir / "s.onnx", "--ratio", "0.5", "--quiet")
    assert [p.name for p in out_dir.iterdir()] == ["s.onnx"]


def test_module_entry_point(demo, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "onnx_slim", "prune", str(demo), "-o", str(tmp_path / "m.onnx"), "--ratio", "2"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: ratio must be in [0, 1), got 2.0"


def test_target_macs_within_two_percent_with_coarse_rounding(capsys, demo, tmp_path):
    """Groups of 32-128 channels rounded to 8: no uniform ratio lands within 2%, single steps do."""
    code, stdout, _ = run_cli(capsys, "prune", demo, "-o", tmp_path / "s.onnx", "--target-macs", "0.5",
                              "--round-to", "8", "--json", "--quiet")
    report = json.loads(stdout)
    assert code == 0
    assert abs(report["macs_after"] / report["macs_before"] - 0.5) <= 0.02
    assert all(group["kept"] % 8 == 0 for group in report["groups"])


@pytest.mark.parametrize("shape", ["input=-1,1,16,16", "input=0,1,16,16"])
def test_input_shape_dims_must_be_concrete(capsys, demo, tmp_path, shape):
    out = tmp_path / "o.onnx"
    code, _, stderr = run_cli(capsys, "prune", demo, "-o", out, "--ratio", "0.5", "--quiet", "--input-shape", shape)
    assert code == 2
    assert stderr.strip() == f"error: bad input shape '{shape}': every dim must be at least 1 (a concrete size)"
    assert not out.exists()


def test_input_shape_dims_must_be_concrete_in_the_api(demo):
    from onnx_slim.pipeline.prune import prune

    with pytest.raises(UsageError, match=r"--input-shape input=0,1,16,16: every dim must be at least 1"):
        prune(str(demo), ratio=0.5, input_shapes={"input": [0, 1, 16, 16]})


def test_bench_shape_must_name_an_input(capsys, demo):
    code, _, stderr = run_cli(capsys, "bench", demo, "--runs", "1", "--no-memory", "--quiet",
                              "--shape", "images=2,1,16,16")
    assert code == 2
    assert stderr.strip() == "error: --shape images: the model has no such input (inputs: input)"


def test_calibration_with_nan_is_one_line_error(capsys, demo, tmp_path):
    import numpy as np

    data = np.zeros((4, 1, 16, 16), np.float32)
    data[1, 0, 2, 3] = np.nan
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=data)
    out = tmp_path / "o.onnx"
    code, _, stderr = run_cli(capsys, "prune", demo, "-o", out, "--ratio", "0.5", "--criterion", "activation",
                              "--calib", calib, "--quiet")
    assert code == 1
    assert stderr.strip() == (f"error: {calib}: input 'input' holds 1 NaN or infinite value, "
                              "the first at sample 1, index [1, 0, 2, 3]; fix or drop those samples")
    assert not out.exists()


@pytest.mark.parametrize("error, message", [
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on device; free some space"),
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied; choose a writable folder"),
])
def test_failed_write_names_the_output_in_one_line(capsys, demo, tmp_path, monkeypatch, error, message):
    from onnx_slim.pipeline import prune as prune_module

    def failing_save(model, path, *layout):
        error.filename = str(path)  # the scratch file the user never asked for
        raise error

    monkeypatch.setattr(prune_module, "write_model_files", failing_save)
    out = tmp_path / "o.onnx"
    code, _, stderr = run_cli(capsys, "prune", demo, "-o", out, "--ratio", "0.5", "--quiet")
    assert code == 1
    assert stderr.strip() == f"error: cannot write {out}: {message}"
    assert not out.exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no procfs")
def test_an_output_folder_that_takes_no_files_is_one_line(capsys, demo):
    code, _, stderr = run_cli(capsys, "prune", demo, "-o", "/proc/o.onnx", "--ratio", "0.5", "--quiet")
    assert code == 1
    assert stderr.strip() == "error: cannot write /proc/o.onnx: no such file or directory; choose a writable folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(capsys, demo, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, _, stderr = run_cli(capsys, "prune", demo, "-o", folder / "o.onnx", "--ratio", "0.5", "--quiet")
    finally:
        folder.chmod(0o755)
    assert code == 1
    assert stderr.strip() == f"error: cannot write {folder / 'o.onnx'}: permission denied; choose a writable folder"


def test_weight_shape_that_contradicts_the_graph_is_one_line(capsys, tmp_path):
    """A Conv weight with fewer input channels than its input carries: refused at analysis."""
    import numpy as np
    from onnx import numpy_helper

    model = onnx.load(str(DEMO))
    conv = [node for node in model.graph.node if node.op_type == "Conv"][1]
    weight = next(init for init in model.graph.initializer if init.name == conv.input[1])
    value = numpy_helper.to_array(weight)
    weight.CopyFrom(numpy_helper.from_array(np.ones((value.shape[0], 20) + value.shape[2:], np.float32), weight.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    out = tmp_path / "o.onnx"
    code, _, stderr = run_cli(capsys, "prune", broken, "-o", out, "--ratio", "0.5", "--quiet")
    assert code == 1
    assert stderr.strip() == (f"error: node {conv.name} (Conv): weight {weight.name} has 20 channels on axis 1 "
                              f"but the graph gives it {value.shape[1]}: the model is inconsistent; re-export it")
    assert not out.exists()


def test_exclude_matching_nothing_and_a_prune_removing_nothing_are_warned(capsys, demo, tmp_path):
    code, stdout, stderr = run_cli(capsys, "prune", demo, "-o", tmp_path / "o.onnx", "--ratio", "0.5",
                                   "--round-to", "1000000", "--exclude", "/nope/*", "--exclude", "/fc/*", "--json")
    assert code == 0
    report = json.loads(stdout)
    assert report["channels_removed"] == 0
    expected = ["--exclude '/nope/*' matches no node",
                "nothing was removed: the ratio or target, --round-to and --min-channels leave every group whole; "
                "the model keeps all its channels"]
    assert report["notes"][:2] == expected
    assert all(f"warning: {warning}" in stderr for warning in expected)
    assert "'/fc/*'" not in stderr


@pytest.mark.parametrize("command", [
    ["bench", "{model}"],
    ["prune", "{model}", "-o", "{out}.onnx", "--ratio", "0.5"],
    ["sensitivity", "{model}", "--calib", "random"],
    ["quantize", "{model}", "-o", "{out}.onnx", "--mode", "dynamic"],
    ["run", "{model}", "-o", "{out}"],
    ["sweep", "{model}", "-o", "{out}"],
])
def test_an_unavailable_provider_is_one_line_listing_the_available_ones(capsys, demo, tmp_path, command):
    missing = next(name for name in ort.get_all_providers() if name not in ort.get_available_providers())
    short = missing.removesuffix("ExecutionProvider").lower()
    args = [arg.format(model=demo, out=tmp_path / "out") for arg in command]

    code, stdout, stderr = run_cli(capsys, *args, "--provider", f"cpu,{short}", "--quiet")

    assert code == 2 and stdout == ""
    assert stderr == (f"error: execution provider {missing} is not available in this onnxruntime "
                      f"({ort.__version__}); available: {', '.join(ort.get_available_providers())}\n")
    assert sorted(os.listdir(tmp_path)) == ["demo.onnx"]


def test_bench_on_the_cpu_provider_names_it(capsys, demo):
    code, stdout, _ = run_cli(capsys, "bench", demo, "--provider", "CPUExecutionProvider", "--runs", "2",
                              "--no-memory", "--json", "--quiet")
    assert code == 0
    assert json.loads(stdout)["providers"] == ["CPUExecutionProvider"]


def test_prune_without_data_on_synthetic_images(capsys, demo, tmp_path):
    """--calib synthetic: the data-driven criterion and the re-fit run, and the JSON report says the
    data was synthetic."""
    code, out, err = run_cli(capsys, "prune", demo, "-o", tmp_path / "slim.onnx", "--target-macs", "0.7",
                             "--criterion", "thinet", "--reconstruct", "--calib", "synthetic", "--calib-samples", "32",
                             "--json")
    assert code == 0, err
    report = json.loads(out)
    assert "synthetic dead-leaves images" in report["reconstruction"]["calibration"]
    assert report["allocate"] == "uniform"  # auto compares on held-out data, and there is none
    ort.InferenceSession(str(tmp_path / "slim.onnx"), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("damage", ["missing", "short"])
def test_a_model_whose_external_data_is_missing_or_short_says_so(capsys, demo, tmp_path, damage):
    source = tmp_path / "big.onnx"
    onnx.save_model(onnx.load(str(demo)), str(source), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="big.onnx.data", size_threshold=0)
    data = tmp_path / "big.onnx.data"
    if damage == "missing":
        data.unlink()
    else:
        data.write_bytes(data.read_bytes()[:100])

    code, _, stderr = run_cli(capsys, "inspect", source)

    assert code == 1 and len(stderr.strip().splitlines()) == 1
    assert stderr.startswith(f"error: {source}: its external data (big.onnx.data) is missing, short or outside")


def test_inspect_says_that_layers_inside_if_branches_are_not_analyzed(capsys, tmp_path):
    """silero-vad keeps its whole network in the branches of one If: its weights count, 0 MACs needs a reason."""
    rng = np.random.default_rng(0)

    def branch(name: str) -> onnx.GraphProto:
        weight = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), f"{name}_w")
        return helper.make_graph([helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_y"])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)], [weight])
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], then_branch=branch("then"), else_branch=branch("else"))], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "branches.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))

    code, out, _ = run_cli(capsys, "inspect", path)

    assert code == 0
    assert "note: 2 weight layer(s) sit inside If / Loop / Scan bodies: they are not analyzed, their MACs" in out
    assert out.startswith(f"{path}: 32 params, 0 MACs")  # the branches' two 4 x 4 weights count
    code, _, stderr = run_cli(capsys, "prune", path, "-o", tmp_path / "slim.onnx", "--target-macs", "0.5", "--quiet")
    assert code == 1 and stderr.strip() == ("error: the model has no countable MACs: its 2 weight layers sit inside "
                                            "If / Loop / Scan bodies, which onnx-slim does not analyze or prune")


@pytest.mark.parametrize("value, text", [(168_080e9, "168.08T"), (2.5e15, "2.50P"), (4.1e9, "4.10G"), (950, "950")])
def test_counts_read_in_the_largest_unit_that_fits(value, text):
    assert human_count(value) == text
