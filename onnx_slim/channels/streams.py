"""Which groups are a residual stream: channels that a sum of two activations carries.

In a residual network every block adds its output to the stream, so each of the
stream's channels is written by every block and read by every later one. Removing
one costs far more than removing a block's interior channel, which one layer reads
and whose loss the re-fit of that layer can compensate (reports/bench_real.md:
MobileNetV2 at 80% of the MACs, re-fitted, keeps 65.5% top-1 with its streams
spared and 50.5% without). The "interior" allocation prunes the other groups only.
"""

from __future__ import annotations

from onnx_slim.channels.groups import ChannelAnalysis

SUMS = ("Add", "Sum")


def stream_roots(channels: ChannelAnalysis) -> set[int]:
    """Class roots of the groups that some Add or Sum carries in two or more of its inputs
    that are activations (a constant added per channel, like a bias or a position
    embedding, does not make a stream)."""
    context, atoms = channels.context, channels.atoms
    roots = set()
    for node in context.model.graph.node:
        if node.op_type not in SUMS:
            continue
        layouts = [context.get(name) for name in node.input if name and name not in context.initializers]
        seen = [set(atoms.classes_in(tracked.layout)) for tracked in layouts if tracked is not None]
        if len(seen) >= 2:
            roots |= set.intersection(*seen)
    return roots
