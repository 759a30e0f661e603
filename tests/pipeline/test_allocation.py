"""`allocate="auto"`: every allocation built with the final settings and compared with the original
on calibration samples the candidates were not fitted on."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import random_feeds, run
from graphs import runs_only_at_batch_one

from onnx_slim.data.calibration import load_calibration
from onnx_slim.errors import OnnxSlimError, UsageError
from onnx_slim.pipeline.candidates import ALLOCATIONS
from onnx_slim.pipeline.prune import prune

MODELS = Path(__file__).resolve().parents[2] / "models"
RESNET = MODELS / "digits_resnet.onnx"


@pytest.fixture(scope="module")
def auto_result():
    calibration = load_calibration(MODELS / "digits_calib.npz", RESNET).take(80)
    pruned, report = prune(str(RESNET), target_macs=0.6, criterion="thinet", reconstruct=True,
                           calibration=calibration, allocate="auto", round_to=1)
    return calibration, pruned, report


def test_every_allocation_is_built_and_the_closest_is_kept(auto_result):
    _, pruned, report = auto_result
    rows = report.search["candidates"]
    assert report.search["kind"] == "allocation"
    assert [row["allocate"] for row in rows] == list(ALLOCATIONS)
    built = [row for row in rows if "skipped" not in row]
    assert len(built) >= 2  # the digits ResNet has a stream: interior differs from uniform
    chosen = [row for row in built if row["chosen"]]
    assert len(chosen) == 1
    assert chosen[0]["rel_l2"] == min(row["rel_l2"] for row in built)
    assert report.allocate == f"auto: {chosen[0]['allocate']}"
    assert abs(report.macs_fraction - 0.6) < 0.03
    feeds = random_feeds(pruned)
    assert {name: value.shape for name, value in run(pruned, feeds).items()} == \
        {name: value.shape for name, value in run(str(RESNET), feeds).items()}


def test_candidates_are_fitted_on_other_samples_than_they_are_compared_on(auto_result):
    calibration, _, report = auto_result
    assert report.search["held_out"]
    held_out = round(len(calibration) * 0.2)
    assert report.search["data"].endswith(f"({held_out} held out, spread over the set): {held_out} samples")
    fitted = len(calibration) - held_out
    assert report.calibration.endswith(f"({fitted} not held out): {fitted} samples")


def test_the_kept_candidate_is_fitted_again_on_every_calibration_sample(auto_result):
    calibration, _, report = auto_result
    assert report.search["refit_on_all"] and "fitted again on all" in report.search["note"]
    assert report.reconstruction["calibration"] == calibration.description
    assert all(layer["chosen_before"] for layer in report.reconstruction["per_layer"])  # as its held-out rows chose


def test_a_candidate_with_nan_outputs_is_never_kept(monkeypatch):
    """Comparisons with NaN are all false: a NaN candidate built first must not stay the best."""
    from onnx_slim.pipeline import allocation

    errors = iter([math.nan, 0.5, 0.25])
    monkeypatch.setattr(allocation, "evaluate", lambda *args, **kwargs: {
        "agreement": {"rel_l2": next(errors), "top1": None, "cosine": 0.0}})
    calibration = load_calibration(MODELS / "digits_calib.npz", RESNET).take(80)
    _, report = prune(str(RESNET), target_macs=0.6, criterion="l1", calibration=calibration, allocate="auto",
                      round_to=1)
    built = [row for row in report.search["candidates"] if "skipped" not in row]
    assert [row["allocate"] for row in built] == list(ALLOCATIONS)
    assert [row["chosen"] for row in built] == [False, False, True]


def test_too_few_samples_are_compared_where_they_were_fitted():
    calibration = load_calibration(MODELS / "digits_calib.npz", RESNET).take(20)
    _, report = prune(str(RESNET), target_macs=0.7, criterion="thinet", reconstruct=True, calibration=calibration,
                      allocate="auto", round_to=1)
    assert not report.search["held_out"] and not report.search["refit_on_all"]
    assert "fitted on" in report.search["note"]


@pytest.mark.parametrize("options, message", [
    ({"ratio": 0.3}, "needs --target-macs F"),
    ({"target_macs": 0.5}, "needs calibration data"),
])
def test_auto_needs_a_macs_fraction_and_calibration(options, message):
    with pytest.raises(UsageError, match=message):
        prune(str(RESNET), allocate="auto", **options)


def test_the_chosen_allocation_is_written_in_the_report_lines(auto_result):
    _, _, report = auto_result
    (line,) = [line for line in report.choice_lines() if line.startswith("allocation:")]
    assert all(name in line for name in ALLOCATIONS if not any(
        row["allocate"] == name and "skipped" in row for row in report.search["candidates"]))
    assert "| allocation |" in report.search_markdown()
    assert report.search["target_macs"] == 0.6


def test_an_allocation_that_cannot_reach_the_target_is_skipped_with_the_reason():
    calibration = load_calibration(MODELS / "digits_calib.npz", RESNET).take(40)
    # Counts in steps of 16: sparing the streams cannot go below 0.30 of the MACs.
    _, report = prune(str(RESNET), target_macs=0.15, criterion="thinet", reconstruct=True, calibration=calibration,
                      allocate="auto", round_to=16)
    (interior,) = [row for row in report.search["candidates"] if row["allocate"] == "interior"]
    assert interior["skipped"].startswith("with the residual streams spared, target 0.15 of MACs is out of reach")
    assert report.allocate in ("auto: uniform", "auto: sensitivity")
    assert abs(report.macs_fraction - 0.15) < 0.03


def test_every_pass_of_an_auto_allocation_runs_at_the_batch_size_given():
    model = runs_only_at_batch_one()
    calibration = load_calibration("random", model, samples=12, input_shapes={"x": [1, 3, 8, 8]})

    with pytest.raises(OnnxSlimError, match="batch"):
        prune(model, target_macs=0.6, allocate="auto", reconstruct=True, criterion="thinet",
              calibration=calibration)
    pruned, report = prune(model, target_macs=0.6, allocate="auto", reconstruct=True, criterion="thinet",
                           calibration=calibration, batch_size=1)

    assert report.allocate.startswith("auto") and report.macs_fraction < 0.7
    assert [d.dim_value for d in pruned.graph.output[0].type.tensor_type.shape.dim] == [1, 2, 8, 8]
