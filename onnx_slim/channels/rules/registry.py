"""The rule registry (op type -> rule) and helpers the rule families share.

A rule tells how one op moves, ties, creates or consumes channels. Fix callbacks
receive a `GraphEditor` (see apply/surgery.py) and `kept_length`, a function giving
the size a layout keeps after pruning (`kept_length.indices` gives the kept channels).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import helper

from onnx_slim.channels.context import PARAM, AnalysisContext
from onnx_slim.channels.space import Layout

Rule = Callable[[AnalysisContext, onnx.NodeProto], None]
RULES: dict[str, Rule] = {}


def rule(*op_types: str):
    def register(function: Rule) -> Rule:
        for op_type in op_types:
            RULES[op_type] = function
        return function
    return register


def input_at(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def unknown_op(ctx: AnalysisContext, node: onnx.NodeProto) -> None:
    ctx.freeze_inputs(node, f"op {node.op_type} is not understood")


def tracked_with_rank(ctx: AnalysisContext, node: onnx.NodeProto):
    """(tracked layout, rank) of input 0; None when it carries no channels, or (after freezing
    them) when its rank is unknown."""
    tracked = ctx.get(input_at(node, 0))
    if tracked is None:
        return None
    rank = ctx.rank(node.input[0])
    if rank is None:
        ctx.freeze(tracked.layout, node, "rank unknown")
        return None
    return tracked, rank


def pass_through(ctx: AnalysisContext, node: onnx.NodeProto, outputs=None) -> None:
    """Output channels are input 0's channels, same axis."""
    tracked = ctx.get(input_at(node, 0))
    if tracked is None:
        return
    for name in outputs if outputs is not None else node.output[:1]:
        ctx.track(name, tracked.axis, tracked.layout)


def set_const_entry(tensor_name: str, index: int, layout: Layout):
    def apply(editor, kept_length):
        values = editor.value(tensor_name).copy()
        values[index] = kept_length(layout)
        editor.set_value(tensor_name, values)
    return apply


def gather_kept(node_name: str, position: int, axis: int, layout):
    """A fix: feed input `position` of the node through a Gather of the kept channels on `axis`
    (a computed side input that carries the channels but is not tracked)."""
    def apply(editor, kept_length):
        node = editor.node(node_name)
        source = node.input[position]
        indices = editor.add_initializer(f"{node_name}_in{position}_kept",
                                         np.asarray(kept_length.indices(layout), dtype=np.int64))
        gathered = f"{source}__kept_for_{node_name}_in{position}"
        editor.insert_before(node_name, helper.make_node("Gather", [source, indices], [gathered],
                                                         name=gathered, axis=axis))
        editor.node(node_name).input[position] = gathered
    return apply


def joined_inputs(ctx, node):
    """(output, its rank, the inputs, the tracked ones) of a node joining several inputs;
    None when nothing is tracked or (after freezing the inputs) the rank is unknown."""
    output = node.output[0]
    rank = ctx.rank(output)
    inputs = [name for name in node.input if name]
    tracked = {name: ctx.get(name) for name in inputs if ctx.get(name) is not None}
    if not tracked:
        return None
    if rank is None:
        ctx.freeze_inputs(node, "output rank unknown")
        return None
    return output, rank, inputs, tracked


def elementwise_same_axis(ctx, node, tracked_list):
    """Tie the channel layouts of inputs that are joined along another axis."""
    axes = {t.axis for t in tracked_list}
    if len(axes) != 1:
        ctx.freeze_inputs(node, "inputs carry channels on different axes")
        return
    first = tracked_list[0].layout
    for other in tracked_list[1:]:
        if not ctx.atoms.unify(first, other.layout):
            ctx.freeze_inputs(node, "inputs' channel layouts cannot be aligned")
            return
    ctx.track(node.output[0], tracked_list[0].axis, first)


def side_input_role(ctx: AnalysisContext, name: str, size: int, channels: int) -> str | None:
    """How an untracked input whose axis of `size` meets `channels` tracked channels joins them:
    "broadcast" (size 1), "param" (a per-channel constant, sliced with them), "gather" (computed
    from nothing pruning resizes, as a relative-position bias: a Gather of the kept channels in
    front), or None (it spans the channels without carrying them: they freeze)."""
    if size == 1:
        return "broadcast"
    if size == channels and ctx.is_const(name):
        return "param"
    if size == channels and ctx.independent_of_channels(name):
        return "gather"
    return None


def join_channels(ctx: AnalysisContext, node: onnx.NodeProto, layouts, out_axis: int, params=(), gathered=(),
                  output: str | None = None) -> bool:
    """Tie `layouts` channel by channel (coarsening where one side's channels cover more indices, as
    a gate on whole conv groups or k/v heads repeated for several query heads), slice the per-channel
    constants `params` [(name, axis)], put a Gather of the kept channels in front of the inputs
    `gathered` [(position, axis)], and track the output; False, after freezing, when they do not tie."""
    if not all(ctx.atoms.unify(layouts[0], other, coarsen=True) for other in layouts[1:]):
        ctx.freeze_inputs(node, "inputs' channel layouts cannot be aligned")
        return False
    for name, axis in params:
        ctx.use(PARAM, node, name, axis, layouts[0])
    for position, axis in gathered:
        ctx.fix(node, [layouts[0]], gather_kept(node.name, position, axis, layouts[0]))
    ctx.track(output or node.output[0], out_axis, layouts[0])
    return True
