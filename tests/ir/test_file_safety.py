"""Inputs are never lost, outputs never mislead, and signals clean up (issue 10).

Covers: outputs over the input's external data, hard links, results swapped in
whole, umask modes, exclusive creation, sweep folder names, the external-data
layout and its size, SIGINT/SIGTERM, and `--debug` after the subcommand.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import onnx
import pytest
from test_cli import run_cli

from onnx_slim import errors

ROOT = Path(__file__).parents[2]
MODELS = ROOT / "models"
DEMO = MODELS / "digits_cnn.onnx"
FAST = ["--runs", "2", "--warmup", "0", "--no-memory", "--quiet", "--quantize", "none"]


@pytest.fixture
def demo(tmp_path):
    path = tmp_path / "demo.onnx"
    shutil.copy(DEMO, path)
    return path


def external_model(folder: Path, name: str = "model.onnx", location: str = "weights.bin") -> Path:
    """The demo model with its weights in one external file `location`."""
    path = folder / name
    onnx.save_model(onnx.load(str(DEMO)), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=1024)
    return path


def snapshot(folder: Path) -> dict:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


# --- 8: the input's external data is an input too ------------------------------------


def test_output_over_the_inputs_external_data_is_refused(capsys, tmp_path):
    model = external_model(tmp_path, location="model.onnx.data")
    (tmp_path / "alias.bin").symlink_to("model.onnx.data")  # onnx refuses data files with hard links
    before = snapshot(tmp_path)
    for target in ("model.onnx.data", "alias.bin"):
        code, _, stderr = run_cli(capsys, "prune", model, "-o", tmp_path / target, "--ratio", "0.5", "--force",
                                  "--quiet")
        assert code == 2 and "input" in stderr, stderr
    assert snapshot(tmp_path) == before
    onnx.load(str(model))  # still whole


# --- 9: identity everywhere, never written through ------------------------------------


def test_run_refuses_an_output_that_is_a_hard_link_to_the_input(capsys, demo, tmp_path):
    outdir = tmp_path / "out"
    outdir.mkdir()
    os.link(demo, outdir / "model.onnx")
    before = demo.read_bytes()
    code, _, stderr = run_cli(capsys, "run", demo, "-o", outdir, "--force", "--ratio", "0.3", *FAST)
    assert code == 2 and "input" in stderr
    assert demo.read_bytes() == before


def test_forced_outputs_replace_files_instead_of_writing_through_them(capsys, demo, tmp_path):
    outdir = tmp_path / "out"
    outdir.mkdir()
    keep = tmp_path / "keep.onnx"
    keep.write_bytes(b"another file's content")
    for name in ("model.onnx", "pruned.onnx", "report.json", "report.md"):
        os.link(keep, outdir / name)
    os.link(keep, tmp_path / "single.onnx")
    code, _, _ = run_cli(capsys, "run", demo, "-o", outdir, "--force", "--ratio", "0.3", *FAST)
    assert code == 0
    code, _, _ = run_cli(capsys, "prune", demo, "-o", tmp_path / "single.onnx", "--force", "--ratio", "0.3",
                         "--quiet")
    assert code == 0
    assert keep.read_bytes() == b"another file's content"
    onnx.load(str(outdir / "model.onnx"))


@pytest.mark.parametrize("command", ["prune", "quantize", "run"])
def test_even_forced_an_output_that_is_a_pipe_or_device_is_refused(capsys, demo, tmp_path, command):
    """`prune -o /dev/full --force` replaced the machine's /dev/full with an ONNX file."""
    pipe = tmp_path / "out" / "model.onnx" if command == "run" else tmp_path / "pipe.onnx"
    pipe.parent.mkdir(exist_ok=True)
    os.mkfifo(pipe)
    options = {"prune": ["--ratio", "0.3", "--quiet"], "quantize": ["--mode", "dynamic", "--quiet"],
               "run": ["--ratio", "0.3", *FAST]}[command]
    code, _, stderr = run_cli(capsys, command, demo, "-o", pipe.parent if command == "run" else pipe, "--force",
                              *options)
    assert code == 2
    assert stderr.strip() == (f"error: {pipe} exists and is not a regular file (a device, a pipe or a socket): "
                              "choose another output path (-o)")
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)


# --- 10: a result is swapped in whole --------------------------------------------------


def test_a_run_that_fails_late_leaves_the_earlier_result_as_it_was(capsys, demo, tmp_path, monkeypatch):
    outdir = tmp_path / "out"
    code, _, _ = run_cli(capsys, "run", demo, "-o", outdir, "--ratio", "0.3", *FAST)
    assert code == 0
    before = snapshot(outdir)
    for report in ("report.json", "report.md"):  # they name the files where they ended up
        assert ".onnx_slim." not in before[report].decode() and str(outdir / "pruned.onnx") in before[report].decode()

    from onnx_slim.pipeline import run as pipeline_run

    def broken_benchmark(*args, **kwargs):
        raise errors.OnnxSlimError("benchmark failed")

    monkeypatch.setattr(pipeline_run, "benchmark", broken_benchmark)
    code, _, stderr = run_cli(capsys, "run", demo, "-o", outdir, "--ratio", "0.6", "--force", *FAST)
    assert code == 1 and "benchmark failed" in stderr
    assert snapshot(outdir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.onnx", "out"]


# --- 11: modes follow the umask --------------------------------------------------------


def test_written_files_follow_the_umask(capsys, demo, tmp_path, umask_022):
    existing = tmp_path / "forced.onnx"
    existing.write_bytes(b"old")
    existing.chmod(0o644)
    for target in (tmp_path / "new.onnx", existing):
        code, _, _ = run_cli(capsys, "prune", demo, "-o", target, "--ratio", "0.3", "--force", "--quiet")
        assert code == 0
        assert target.stat().st_mode & 0o777 == 0o644, target
    code, _, _ = run_cli(capsys, "run", demo, "-o", tmp_path / "out", "--ratio", "0.3", *FAST)
    assert code == 0
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()} == dict.fromkeys(
        ["model.onnx", "pruned.onnx", "report.json", "report.md"], 0o644)
    os.umask(0o027)
    code, _, _ = run_cli(capsys, "prune", demo, "-o", tmp_path / "group.onnx", "--ratio", "0.3", "--quiet")
    assert code == 0 and (tmp_path / "group.onnx").stat().st_mode & 0o777 == 0o640


# --- 13: without --force the final name is created exclusively ------------------------


def test_an_output_that_appears_meanwhile_is_not_replaced(demo, tmp_path, monkeypatch):
    from onnx_slim.pipeline import prune as pipeline_prune

    target = tmp_path / "same.onnx"
    real_verify = pipeline_prune.verify_model

    def verify_while_another_run_finishes(*args, **kwargs):
        target.write_bytes(b"the other run's result")
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(pipeline_prune, "verify_model", verify_while_another_run_finishes)
    with pytest.raises(errors.UsageError, match="exists"):
        pipeline_prune.prune_file(demo, target, ratio=0.3)
    assert target.read_bytes() == b"the other run's result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.onnx", "same.onnx"]


# --- 14: sweep folders ------------------------------------------------------------------


def test_sweep_targets_that_round_alike_get_their_own_folders(capsys, demo, tmp_path):
    out = tmp_path / "sweep"
    code, stdout, stderr = run_cli(capsys, "sweep", demo, "-o", out, "--target-macs", "0.5,0.504",
                                   "--criterion", "l1", "--json", *FAST)
    assert code == 0, stderr
    folders = [Path(point["outdir"]).name for point in json.loads(stdout)["points"]]
    assert folders == ["macs_0.500", "macs_0.504"]
    assert all((out / name / "model.onnx").exists() for name in folders)
    code, _, stderr = run_cli(capsys, "sweep", demo, "-o", tmp_path / "twice", "--target-macs", "0.5,0.5", *FAST)
    assert code == 2 and "twice" in stderr and not (tmp_path / "twice").exists()


# --- 15: the external-data layout is kept and counted ------------------------------------


def test_external_data_layout_is_kept_and_counted(capsys, tmp_path):
    model = external_model(tmp_path)
    out = tmp_path / "slim.onnx"
    code, stdout, _ = run_cli(capsys, "prune", model, "-o", out, "--ratio", "0.5", "--json", "--quiet")
    report = json.loads(stdout)
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "slim.onnx", "slim.weights.bin", "weights.bin"]
    header = onnx.load(str(out), load_external_data=False)
    assert {e.value for t in header.graph.initializer for e in t.external_data if e.key == "location"} == {
        "slim.weights.bin"}
    onnx.checker.check_model(str(out), full_check=True)
    inputs = (tmp_path / "model.onnx", tmp_path / "weights.bin")
    assert report["size_before"] == sum(p.stat().st_size for p in inputs)
    assert report["size_after"] == out.stat().st_size + (tmp_path / "slim.weights.bin").stat().st_size
    assert report["size_after"] < report["size_before"]

    code, stdout, _ = run_cli(capsys, "bench", model, out, "--runs", "1", "--warmup", "0", "--no-memory",
                              "--json", "--quiet")
    sizes = [entry["size_bytes"] for entry in json.loads(stdout)["models"]]
    assert sizes == [report["size_before"], report["size_after"]]


# --- 12, 19: signals and --debug ----------------------------------------------------------


@contextmanager
def started(*command, cwd: Path) -> Iterator[subprocess.Popen]:
    """A Python subprocess using this checkout; killed if the test leaves it running."""
    process = subprocess.Popen([sys.executable, *map(str, command)], cwd=cwd,
                               env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def wait_for(condition, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_a_signal_mid_run_cleans_up_and_exits_128_plus_the_signal(demo, tmp_path, signum, code):
    with started("-m", "onnx_slim", "run", demo, "-o", tmp_path / "new" / "out", "--ratio", "0.3",
                 "--runs", "100000", "--warmup", "0", "--no-memory", "--quantize", "none", cwd=tmp_path) as process:
        wait_for(lambda: any(p.name.startswith(".onnx_slim.") for p in tmp_path.glob("new/*")), process)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == code
    assert stderr.strip().splitlines()[-1] == "error: interrupted"
    assert "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.onnx"]


SWALLOWING = """
import sys, time
from pathlib import Path
from onnx_slim import interrupts
from onnx_slim.ir.files import made_folders, scratch_folder


def swallow_forever():  # what native code that clears errors amounts to
    while True:
        try:
            time.sleep(0.01)
        except BaseException:
            pass


interrupts.WATCHDOG_SECONDS = 0.2
with interrupts.unwind_on_signals(), made_folders(Path(sys.argv[1]), remove_contents=True):
    with scratch_folder(Path(sys.argv[1])):
        try:
            print("ready", flush=True)
            swallow_forever()
        except BaseException:  # raised between two of its statements
            swallow_forever()
"""


def test_a_signal_whose_exception_is_swallowed_still_cleans_up(tmp_path):
    with started("-c", SWALLOWING, tmp_path / "made", cwd=tmp_path) as process:
        assert process.stdout.readline() == "ready\n"
        assert (tmp_path / "made").is_dir()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert (process.returncode, stderr.strip()) == (143, "error: interrupted")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the imports under way")
def test_ctrl_c_while_starting_up_is_a_clean_interruption(demo, tmp_path):
    with started("-m", "onnx_slim", "inspect", demo, cwd=tmp_path) as process:
        maps = Path(f"/proc/{process.pid}/maps")
        wait_for(lambda: "numpy" in maps.read_text(), process)  # the heavy imports are under way
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in stderr and stderr.strip().endswith("error: interrupted")


def test_debug_after_the_subcommand_is_an_ordinary_usage_error(capsys, demo, tmp_path):
    code, _, stderr = run_cli(capsys, "prune", demo, "-o", tmp_path / "s.onnx", "--debug")
    assert code == 2
    assert stderr.strip().splitlines() == ["error: No such option '--debug'."]


def test_sweep_refuses_an_input_where_its_summary_goes(capsys, tmp_path):
    outdir = tmp_path / "sweep"
    outdir.mkdir()
    model = outdir / "sweep.md"  # read as ONNX: only .json and text suffixes mean another format
    shutil.copy(DEMO, model)
    code, _, stderr = run_cli(capsys, "sweep", model, "-o", outdir, "--target-macs", "0.5", "--force", *FAST)
    assert code == 2 and "would be overwritten" in stderr
    assert model.read_bytes() == DEMO.read_bytes()
