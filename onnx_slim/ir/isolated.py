"""A model's first run, in a child process: does onnxruntime survive it?

onnxruntime can crash on a model it loaded without complaint (a segfault in a fused int8 kernel:
its QLinearConcat on a pruned EEG model), and a crash in our own process would take the command's
clean-up and its one-line error with it. A model we made runs once in a child first; errors that
onnxruntime raises (not crashes) are left to the caller's own run, which words them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx

from onnx_slim.errors import OnnxSlimError, RuntimeCrash
from onnx_slim.ir.model import save_model
from onnx_slim.ir.providers import provider_arguments
from onnx_slim.ir.runtime import SessionSpec

# onnxruntime and numpy only: importing onnx (or this package) would add most of a second per child.
_CHILD = r"""
import json, sys
import numpy as np
import onnxruntime as ort
model, feeds_path, settings = sys.argv[1:4]
settings = json.loads(settings)
options = ort.SessionOptions()
for name, value in settings["options"].items():
    setattr(options, name, ort.GraphOptimizationLevel(value) if name == "graph_optimization_level" else value)
providers = [tuple(entry) if isinstance(entry, list) else entry for entry in settings["providers"]]
with np.load(feeds_path) as data:
    feeds = {name: data[name] for name in data.files}
try:
    ort.InferenceSession(model, options, providers=providers).run(None, feeds)
except Exception:
    sys.exit(3)  # onnxruntime's own error: the caller's run words it
"""
_OPTIONS = ("intra_op_num_threads", "inter_op_num_threads", "graph_optimization_level", "log_severity_level")


def check_survives_a_run(model: onnx.ModelProto | Path, feeds: Mapping[str, np.ndarray], spec: SessionSpec,
                         folder: Path) -> None:
    """Raise RuntimeCrash (naming the signal) if onnxruntime crashes running `model` (a file, or a
    proto written to `folder`) on `feeds` in a child process, as `spec` makes sessions."""
    model_path = model if isinstance(model, Path) else save_model(model, folder / "first_run.onnx")
    feeds_path = folder / "first_run_feeds.npz"
    np.savez(feeds_path, **dict(feeds))
    options = spec.session_options()
    settings = {
        "options": {name: int(getattr(options, name)) for name in _OPTIONS},
        "providers": provider_arguments(spec.providers, {name: dict(pairs) for name, pairs in spec.provider_options}),
    }
    result = subprocess.run([sys.executable, "-c", _CHILD, str(model_path), str(feeds_path), json.dumps(settings)],
                            capture_output=True, text=True)
    if result.returncode < 0:
        raise RuntimeCrash(f"onnxruntime crashed ({signal.Signals(-result.returncode).name}) running the model")
    if result.returncode not in (0, 3):
        lines = result.stderr.strip().splitlines()
        raise OnnxSlimError(f"the child process that runs the model first failed: {lines[-1] if lines else result.returncode}")
