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

from onnx_slim.channels.context import AnalysisContext
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
