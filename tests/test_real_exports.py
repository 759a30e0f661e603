"""Real exports from the real-model cache (built by scripts/real_models.py, see scripts/REAL_MODELS.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_slim.channels.analysis import analyze
from onnx_slim.ir.runtime import create_session, run_session
from onnx_slim.pipeline.prune import prune

EFFICIENTNET = Path(__file__).parent.parent / ".cache" / "real" / "efficientnet_lite0"

needs_efficientnet = pytest.mark.skipif(not (EFFICIENTNET / "model.onnx").exists(),
                                        reason="run scripts/real_models.py --only efficientnet_lite0 first")


@needs_efficientnet
def test_efficientnet_lite0_torchscript_padding_is_understood():
    """TorchScript writes static "same" padding as a shape-computation chain feeding each Pad:
    once folded, every Conv is counted (385M MACs, the script's own count) and its groups prune."""
    analysis = analyze(EFFICIENTNET / "model.onnx")
    assert 380e6 < analysis.cost.macs < 390e6
    assert not analysis.cost.uncounted
    assert analysis.prunable_macs_fraction() > 0.9


@needs_efficientnet
def test_efficientnet_lite0_prunes_and_runs_on_its_test_inputs():
    original = onnx.load(str(EFFICIENTNET / "model.onnx"))
    pruned, report = prune(original, ratio=0.3)
    assert report.macs_after < 0.7 * report.macs_before
    onnx.checker.check_model(pruned, full_check=True)
    assert pruned.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    with np.load(EFFICIENTNET / "test.npz") as data:
        feeds = {"input": data["input"][:3]}
    before = run_session(create_session(original), feeds)
    after = run_session(create_session(pruned), feeds)
    assert after["logits"].shape == before["logits"].shape == (3, 1000)
    assert np.isfinite(after["logits"]).all()
