"""Human-readable tables for reports (JSON comes from each report's to_dict)."""

from __future__ import annotations

import json
from typing import Iterable, Sequence


def human_count(value: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def human_bytes(value: float) -> str:
    """Sizes in binary units, named as such (1 MiB = 1024 KiB)."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


def table(headers: Sequence[str], rows: Iterable[Sequence], markdown: bool = False) -> str:
    """A plain (aligned) or Markdown table."""
    rows = [[str(cell) for cell in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(h)), *(len(row[i]) for row in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def before_after_table(report: dict, markdown: bool = False) -> str:
    """Params, MACs (and the measured p50 latency, when there is one), file size and groups, before and after."""
    def change(before, after):
        return f"{(after - before) / before * 100:+.1f}%" if before else "n/a"

    rows = [
        ("params", human_count(report["params_before"]), human_count(report["params_after"]),
         change(report["params_before"], report["params_after"])),
        ("MACs", human_count(report["macs_before"]), human_count(report["macs_after"]),
         change(report["macs_before"], report["macs_after"])),
    ]
    latency = report.get("latency_ms")
    if latency:  # measured when the rounding or a latency search timed the model
        rows.append(("p50 latency", f"{latency['original']:.3g} ms", f"{latency['pruned']:.3g} ms",
                     f"{latency['speedup']:.2f}x faster"))
    rows += [
        ("file size", human_bytes(report["size_before"]), human_bytes(report["size_after"]),
         change(report["size_before"], report["size_after"])),
        ("groups pruned", "", f"{report['groups_pruned']} of {report['groups_total']}", ""),
    ]
    return table(["", "before", "after", "change"], rows, markdown)


def to_json(data: dict) -> str:
    return json.dumps(data, indent=2, default=_jsonable)


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


def evaluation_line(evaluation: dict) -> str:
    """One line on held-out data: accuracy before -> after, top-1 agreement, cosine."""
    agreement = evaluation["agreement"]
    parts = [f"on {evaluation['samples']} held-out samples:"]
    if "accuracy" in evaluation:
        parts.append(f"accuracy {evaluation['accuracy_original'] * 100:.2f}% -> {evaluation['accuracy'] * 100:.2f}% "
                     f"({0.0 - evaluation['accuracy_drop_points']:+.2f} points)")
    if agreement.get("top1") is not None:
        parts.append(f"top-1 agreement {agreement['top1'] * 100:.2f}%")
    one_value = [row["rel_l2"] for row in agreement.get("outputs", {}).values() if row["cosine"] is None]
    if agreement["cosine"] is not None:
        parts.append(f"cosine {agreement['cosine']:.4f}")
    if one_value or agreement["cosine"] is None:  # a one-value output has no cosine: its error, then
        parts.append(f"rel. L2 {max(one_value or [agreement['rel_l2']]):.4f}"
                     + (" on its one-value outputs" if agreement["cosine"] is not None else ""))
    return " ".join(parts[:1]) + " " + ", ".join(parts[1:])


def quantize_summary(report: dict) -> str:
    """`quantize`'s report (QuantizeReport.to_dict()) as lines for a terminal."""
    lines = [f"{report['mode']} {report['format']} quantization ({report['mode_reason']}); "
             f"calibration: {report['calibration']}"]
    for candidate in report["candidates"] if len(report["candidates"]) > 1 else ():
        measured = f"p50 {candidate['p50_ms']:.3f} ms, " if candidate["p50_ms"] is not None else ""
        lines.append(f"candidate {candidate['mode']}: {measured}{candidate['agreement']}"
                     + ("" if candidate["agrees"] else " (disagrees)"))
    lines.append(report["decision"])
    if report["smoothed"] or report["float_layers"]:
        lines.append(f"activation outliers: {len(report['smoothed'])} activation(s) smoothed, "
                     f"{len(report['float_layers'])} layer(s) kept float")
    if report["cleanup"]:
        lines.append(f"clean-up: {report['cleanup']['nodes_before']} -> {report['cleanup']['nodes_after']} nodes")
    ops = ", ".join(f"{count} {op}" for op, count in sorted(report["quantized_ops"].items()))
    lines.append(f"size {human_bytes(report['size_before'])} -> {human_bytes(report['size_after'])}"
                 + (f"; {ops}" if ops else ""))
    lines += [f"note: {warning}" for warning in report["warnings"]]
    return "\n".join(lines)
