"""`--mode auto` keeps the candidate the measurement favours, among those that agree with the float model."""

from __future__ import annotations

import onnx
import pytest
from test_quantize import matmul_net

from onnx_slim.deploy import quant_auto, quant_speed
from onnx_slim.deploy import quantize as quantize_module
from onnx_slim.deploy.quantize import quantize_model
from onnx_slim.ir.inputs import random_inputs


def timer(p50_by_model: dict[str, float]):
    """A measure_latencies that reports the given p50 per model name ("float", "static", "dynamic", "int4")."""
    def measure_latencies(models, feeds, **options):
        assert list(models)[0] == "float"
        return {name: {"p50": p50_by_model[name], "mean": p50_by_model[name]} for name in models}
    return measure_latencies


def change_agreement(monkeypatch, mode: str, change):
    """The real check and score, then `change(agreement)` for the candidate of `mode`."""
    real_check = quantize_module.check_and_score

    def changed(candidate, reference, outputs):
        real_check(candidate, reference, outputs)
        if candidate.mode == mode:
            candidate.agreement = change(candidate.agreement)

    monkeypatch.setattr(quantize_module, "check_and_score", changed)


def calibration():
    return [random_inputs(matmul_net(), batch=8, seed=seed) for seed in range(3)]


@pytest.mark.parametrize("fastest", ["static", "dynamic", "int4"])
def test_auto_keeps_the_candidate_measured_fastest(tmp_path, monkeypatch, fastest):
    latencies = {"float": 5.0, "static": 3.0, "dynamic": 3.0, "int4": 3.0, fastest: 1.0}
    monkeypatch.setattr(quant_speed, "measure_latencies", timer(latencies))

    report = quantize_model(matmul_net(), tmp_path / "q.onnx", calibration=calibration())

    assert [c["mode"] for c in report.candidates] == ["static", "dynamic", "int4"]
    assert all(c["agrees"] and c["score"] >= quant_auto.AGREEMENT_COSINE for c in report.candidates)
    assert {c["mode"]: c["p50_ms"] for c in report.candidates} == {m: latencies[m] for m in ("static", "dynamic", "int4")}
    assert report.mode == fastest and report.kept == ("int4" if fastest == "int4" else "int8")
    assert report.decision.startswith(f"kept {report.kept}") and "5.00x faster" in report.decision
    assert report.latency_ms == {"float": {"p50": 5.0, "mean": 5.0}, report.kept: {"p50": 1.0, "mean": 1.0}}
    written = onnx.load(str(tmp_path / "q.onnx"))
    op_types = {node.op_type for node in written.graph.node}
    expected = {"static": "QuantizeLinear", "dynamic": "DynamicQuantizeLinear", "int4": "MatMulNBits"}[fastest]
    assert expected in op_types


def test_a_faster_candidate_that_disagrees_is_not_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(quant_speed, "measure_latencies",
                        timer({"float": 5.0, "static": 2.0, "dynamic": 3.0, "int4": 1.0}))
    change_agreement(monkeypatch, "int4", lambda agreement: {**agreement, "cosine": 0.9})

    report = quantize_model(matmul_net(), tmp_path / "q.onnx", calibration=calibration())

    assert report.mode == "static" and report.kept == "int8"
    rows = {c["mode"]: c for c in report.candidates}
    assert rows["int4"]["agrees"] is False and rows["int4"]["p50_ms"] == 1.0
    assert "fastest of 2 agreeing (cosine >= 0.99)" in report.decision
    assert "int4 p50 1.000 ms, cosine 0.9000" in report.decision


def test_no_candidate_faster_keeps_the_float_model_and_lists_them_all(tmp_path, monkeypatch):
    monkeypatch.setattr(quant_speed, "measure_latencies", timer({"float": 1.0, "dynamic": 1.5, "int4": 1.2}))
    source = tmp_path / "mm.onnx"
    onnx.save(matmul_net(), str(source))

    report = quantize_model(source, tmp_path / "q.onnx")

    assert report.kept == "float" and report.mode == "int4"  # the best that lost is described
    assert report.decision.startswith("kept the float model: int4 is 1.20x slower")
    assert "also tried int8 (dynamic) p50 1.500 ms" in report.decision
    assert "static int8: no calibration data" in report.skipped
    assert onnx.load(str(tmp_path / "q.onnx")).SerializeToString() == onnx.load(str(source)).SerializeToString()


@pytest.mark.parametrize("int4_ms, kept", [(0.97, "float"), (0.94, "int4")])
def test_a_gain_within_timing_noise_keeps_the_float_model(tmp_path, monkeypatch, int4_ms, kept):
    """A quantized model must be MIN_SPEEDUP faster: 3% is noise on a busy machine, not worth its accuracy."""
    assert quant_auto.MIN_SPEEDUP == 1.05
    monkeypatch.setattr(quant_speed, "measure_latencies", timer({"float": 1.0, "dynamic": 1.5, "int4": int4_ms}))
    source = tmp_path / "mm.onnx"
    onnx.save(matmul_net(), str(source))

    report = quantize_model(source, tmp_path / "q.onnx")

    assert report.kept == kept
    if kept == "float":
        assert "under the 1.05x a quantized model must gain" in report.decision
        assert onnx.load(str(tmp_path / "q.onnx")).SerializeToString() == onnx.load(str(source)).SerializeToString()


def test_auto_does_not_try_int4_where_its_matmuls_carry_few_macs():
    """int4 leaves Conv float: a CNN whose only MatMul is a small classifier cannot gain from it, and
    a timing that says it does is noise. A MatMul-heavy model still gets the candidate."""
    from graphs import Graph

    g = Graph(seed=3)
    features = g.flatten(g.gap(g.relu(g.conv(g.input("x", ["N", 3, 32, 32]), 32, name="conv"))))
    cnn = g.build(g.matmul(features, 4, name="classifier"))
    modes, skipped = quant_auto.candidate_modes(cnn, None, ["CPUExecutionProvider"])
    assert "int4" not in modes
    assert any(note.startswith("int4: the MatMuls it quantizes carry") for note in skipped), skipped
    assert "int4" in quant_auto.candidate_modes(matmul_net(), None, ["CPUExecutionProvider"])[0]


def test_int4_share_counts_unnamed_nodes():
    """`quantize` reads the user's model as it is: nodes without names still count their MACs."""
    model = matmul_net()
    for node in model.graph.node:
        node.name = ""
    assert "int4" in quant_auto.candidate_modes(model, None, ["CPUExecutionProvider"])[0]


def test_a_one_value_output_is_judged_by_its_error_not_its_sign(tmp_path, monkeypatch):
    """int8 that moves a [N, 1] score by a half keeps a per-sample cosine of 1.0 (two positive
    numbers); auto must not call it agreeing."""
    monkeypatch.setattr(quant_speed, "measure_latencies",
                        timer({"float": 5.0, "static": 1.0, "dynamic": 3.0, "int4": 3.0}))
    score = {"cosine": None, "rel_l2": 0.5, "top1": None, "max_abs_diff": 0.3, "samples": 8}
    change_agreement(monkeypatch, "static",
                     lambda agreement: {**agreement, "outputs": {**agreement["outputs"], "score": score}})

    report = quantize_model(matmul_net(), tmp_path / "q.onnx", calibration=calibration())

    rows = {c["mode"]: c for c in report.candidates}
    assert rows["static"]["agrees"] is False and rows["static"]["score"] == pytest.approx(1 - 0.5 ** 2 / 2)
    assert rows["static"]["agreement"] == "rel. L2 0.5000 on a one-value output (as a cosine 0.8750)"
    assert report.mode != "static"


def test_quantize_extends_noisy_timings_and_warns(monkeypatch, tmp_path):
    from onnx_slim.deploy import timing as deploy_timing

    rounds = []

    def spread_runs(runners, *, runs, warmup, **_):  # every model's runs at 2 ms or 14 ms
        rounds.append(runs)
        return [[(2.0, 14.0)[i % 2] for i in range(runs)] for _ in runners]

    monkeypatch.setattr(deploy_timing, "interleaved_timings", spread_runs)
    report = quantize_model(matmul_net(), tmp_path / "q.onnx", mode="dynamic")
    assert sum(rounds) == 60 and any(warning.startswith("timings were noisy") for warning in report.warnings)
