"""Real third-party files, as users bring them (fetched by scripts/fetch_third_party.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_slim.ir.runtime import create_session, run_session
from onnx_slim.pipeline.prune import prune

CACHE = Path(__file__).parent.parent / ".cache" / "third_party"
NUDENET = CACHE / "nudenet_320n.onnx"

needs_nudenet = pytest.mark.skipif(not NUDENET.exists(), reason="run scripts/fetch_third_party.py first")


@needs_nudenet
@pytest.mark.parametrize("shape", [(1, 3, 320, 320), (2, 3, 256, 384)])
def test_ultralytics_yolov8_prunes_and_keeps_dynamic_shapes(shape):
    original = onnx.load(str(NUDENET))
    pruned, report = prune(original, ratio=0.5, input_shapes={"images": [1, 3, 320, 320]})
    assert report.groups_pruned >= 50
    assert report.macs_after < 0.35 * report.macs_before
    onnx.checker.check_model(pruned, full_check=True)
    feeds = {"images": np.random.default_rng(0).random(shape, dtype=np.float32)}
    before = run_session(create_session(original), feeds)
    after = run_session(create_session(pruned), feeds)
    assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}


@needs_nudenet
def test_ultralytics_yolov8_ratio_zero_is_identity():
    original = onnx.load(str(NUDENET))
    pruned, _ = prune(original, ratio=0.0)
    feeds = {"images": np.random.default_rng(1).random((1, 3, 320, 320), dtype=np.float32)}
    before = run_session(create_session(original), feeds)
    after = run_session(create_session(pruned), feeds)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-4, atol=1e-4)
