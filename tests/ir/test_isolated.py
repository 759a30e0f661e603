"""A model's first run in a child process: crashes are named, everything else is the caller's."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import conv_chain

from onnx_slim.errors import OnnxSlimError, RuntimeCrash
from onnx_slim.ir import isolated
from onnx_slim.ir.runtime import SessionSpec


def _feeds(channels: int = 3):
    return {"x": np.random.default_rng(0).standard_normal((1, channels, 8, 8)).astype(np.float32)}


@pytest.mark.parametrize("spec", [SessionSpec(), SessionSpec(threads=1, optimize=False)])
def test_a_model_that_runs_passes_with_the_spec_its_sessions_use(tmp_path, spec):
    isolated.check_survives_a_run(conv_chain(), _feeds(), spec, tmp_path)


def test_a_model_already_on_disk_is_run_from_its_file(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(conv_chain(), str(path))

    isolated.check_survives_a_run(path, _feeds(), SessionSpec(), tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["first_run_feeds.npz", "model.onnx"]


def test_an_error_onnxruntime_raises_is_left_to_the_callers_own_run(tmp_path):
    isolated.check_survives_a_run(conv_chain(), _feeds(channels=5), SessionSpec(), tmp_path)  # no crash: no error


def test_a_crash_in_the_child_is_named_and_this_process_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(isolated, "_CHILD", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")

    with pytest.raises(RuntimeCrash, match=r"onnxruntime crashed \(SIGSEGV\)"):
        isolated.check_survives_a_run(conv_chain(), _feeds(), SessionSpec(), tmp_path)


def test_a_child_that_cannot_run_its_check_is_an_error_not_a_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(isolated, "_CHILD", "raise ImportError('no onnxruntime here')\n")

    with pytest.raises(OnnxSlimError, match="no onnxruntime here"):
        isolated.check_survives_a_run(conv_chain(), _feeds(), SessionSpec(), tmp_path)
