"""The deployment step's report: one typed object, written as report.json and report.md."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from onnx_slim.deploy.bench import BenchReport
from onnx_slim.deploy.quantize import QuantizeReport
from onnx_slim.errors import QualityGateError
from onnx_slim.formatting import human_bytes, human_count, table
from onnx_slim.pipeline.config import PipelineConfig
from onnx_slim.pipeline.prune import PruneReport


@dataclass
class Gate:
    name: str
    threshold: float
    value: float | None
    passed: bool
    detail: str


@dataclass
class RunOutputs:
    """Where the step's files are (in OUTDIR, once the result is moved in)."""

    model: str
    pruned: str
    report_json: str
    report_md: str


@dataclass
class PipelineReport:
    model: str
    outdir: str
    config_file: str | None
    config: PipelineConfig
    outputs: RunOutputs
    prune: PruneReport
    quantize: QuantizeReport | None
    bench: BenchReport
    evaluation_pruned: dict | None = None  # agreement/accuracy of the pruned model on --eval data
    evaluation_final: dict | None = None
    gates: list[Gate] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(gate.passed for gate in self.gates)

    def check_gates(self) -> None:
        """Raise QualityGateError (exit 3) naming every failed gate."""
        failed = [gate.detail for gate in self.gates if not gate.passed]
        if failed:
            raise QualityGateError("quality gate failed: " + "; ".join(failed))

    def to_dict(self) -> dict:
        """report.json"""
        return {
            "model": self.model,
            "outdir": self.outdir,
            "config_file": self.config_file,
            "config": asdict(self.config),
            "outputs": asdict(self.outputs),
            "prune": self.prune.to_dict(),
            "quantize": self.quantize.to_dict() if self.quantize is not None else None,
            "evaluation": {"pruned": self.evaluation_pruned, "final": self.evaluation_final},
            "bench": self.bench.to_dict(),
            "bench_markdown": self._bench_markdown(),
            "gates": [asdict(gate) for gate in self.gates],
            "passed": self.passed,
            "seconds": self.seconds,
        }

    def to_markdown(self) -> str:
        """report.md: the summary, the candidates a search measured, then the benchmark table."""
        search = self.prune.search_markdown()
        search = f"\n\n## Search: every candidate measured\n\n{search}" if search else ""
        return f"{self.summary_markdown()}{search}\n\n## Benchmark\n\n{self._bench_markdown()}\n"

    def _bench_markdown(self) -> str:
        # The benchmark's agreement columns compare outputs on its one timed input; quality is
        # the evaluation on --eval data in the summary, and the note says so.
        note = ("Quality is the summary's 'quality vs original' (held-out --eval data); the agreement "
                "columns here compare outputs on the benchmark's timed input only.\n\n")
        return note + self.bench.to_markdown(data_option="--eval")

    def summary_markdown(self) -> str:
        """One row per stage, then what pruning and quantization did, and the gates."""
        prune = self.prune
        quality = {"original": "reference", "pruned": _quality(self.evaluation_pruned),
                   "final": _quality(self.evaluation_final)}
        rows = []
        for label, entry in zip(("original", "pruned", "final"), self.bench.models):
            rows.append((
                label, human_count(entry.params or 0), human_count(entry.macs or 0),
                human_bytes(entry.size_bytes), f"{entry.latency_ms['p50']:.2f}",
                f"{entry.speedup['p50']:.2f}x", quality[label],
            ))
        lines = [
            f"# onnx-slim run: {self.model}",
            "",
            table(["model", "params", "MACs", "size", "p50 ms", "speedup", "quality vs original"], rows, markdown=True),
            "",
            f"- pruning: {prune.criterion}, {prune.groups_pruned} of {prune.groups_total} groups, "
            f"MACs kept {prune.macs_fraction * 100:.1f}%"
            + (f", re-fitted {prune.reconstruction['layers']} layers" if prune.reconstruction else ""),
        ]
        lines += [f"- {line}" for line in prune.choice_lines(speedup=False)]
        if self.quantize is not None:
            q = self.quantize
            lines.append(f"- quantization: {q.mode} {q.format}, calibration: {q.calibration}; {q.decision}")
            lines += [f"- quantization warning: {warning}" for warning in q.warnings]
        if prune.calibration:
            lines.append(f"- calibration: {prune.calibration}")
        for gate in self.gates:
            lines.append(f"- gate {gate.name}: {'passed' if gate.passed else 'FAILED'} ({gate.detail})")
        return "\n".join(lines)


def _quality(evaluation) -> str:
    if not evaluation:
        return "not measured (no --eval)"
    if "accuracy" in evaluation:
        return (f"accuracy {evaluation['accuracy'] * 100:.2f}% "
                f"({0.0 - evaluation['accuracy_drop_points']:+.2f} pts)")
    agreement = evaluation["agreement"]
    if agreement.get("top1") is not None:
        return f"top-1 agreement {agreement['top1'] * 100:.2f}%"
    if agreement["cosine"] is None:  # one value per sample: a cosine would only be its sign
        return f"rel. L2 {agreement['rel_l2']:.4f}"
    return f"cosine {agreement['cosine']:.4f}"
