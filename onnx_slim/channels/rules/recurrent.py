"""Recurrent layers (LSTM, GRU, RNN): they consume their input's features through W and
produce hidden units, a channel group of their own.

Removing hidden unit j removes row j of every gate block of W and R (in every direction:
both directions of a bidirectional layer keep the same units, as `hidden_size` is one
number), column j of R (the unit's own state, read back at the next step), its entries of
the biases, peepholes and initial states, and index j of the last axis of Y and the last
states. The layer then computes exactly what the other units computed before, provided that
nothing downstream reads unit j: the group's consumers.
"""

from __future__ import annotations

from onnx import helper

from onnx_slim.channels.context import CONSUMER, PARAM, PRODUCER
from onnx_slim.channels.rules.registry import gather_kept, input_at, rule
from onnx_slim.channels.space import Layout
from onnx_slim.ops.specs import RECURRENT_OPS, Recurrent

_STATES = {Recurrent.INITIAL_H: "initial hidden state", Recurrent.INITIAL_C: "initial cell state"}


@rule(*RECURRENT_OPS)
def recurrent(ctx, node):
    spec = RECURRENT_OPS[node.op_type]
    _read_input_features(ctx, node, spec)
    _produce_hidden_units(ctx, node, spec)


def _read_input_features(ctx, node, spec: Recurrent) -> None:
    """W reads the input's features on its axis 2 (a consumer, like MatMul's weight)."""
    data, weight = node.input[0], node.input[1]
    for position, name in enumerate(node.input[1:], 1):
        tracked = ctx.get(name)
        if tracked is not None and position not in _STATES:  # a state is tied to the units (below)
            ctx.freeze(tracked.layout, node, "reaches a recurrent layer's weights, bias or lengths")
    tracked = ctx.get(data)
    if tracked is None:
        return
    if not ctx.is_const(weight):
        ctx.freeze(tracked.layout, node, "weights are computed at run time")
    elif ctx.rank(data) != 3 or tracked.axis != 2:
        ctx.freeze(tracked.layout, node, "channels are not the feature axis")
    else:
        ctx.use(CONSUMER, node, weight, spec.in_axis, tracked.layout)


def _produce_hidden_units(ctx, node, spec: Recurrent) -> None:
    """The hidden units: a new layout on the last axis of Y and of the last states."""
    weight, recurrence = node.input[1], node.input[2]
    if not (ctx.is_const(weight) and ctx.is_const(recurrence)):
        return  # weights computed at run time: the outputs carry no group
    hidden = ctx.initializers[recurrence].dims[2]
    layout = ctx.new_layout(hidden, node)
    gates = layout * spec.gates
    ctx.use(PRODUCER, node, weight, 1, gates)
    ctx.use(PRODUCER, node, recurrence, 1, gates)
    ctx.use(PARAM, node, recurrence, spec.hidden_axis, layout)
    for position, blocks, what in ((spec.B, 2 * spec.gates, "bias"), (spec.P, 3, "peepholes")):
        name = input_at(node, position)
        if name and ctx.is_const(name):
            ctx.use(PARAM, node, name, 1, layout * blocks)
        elif name:
            ctx.freeze(layout, node, f"{what} computed at run time")
    for position, what in _STATES.items():
        _initial_state(ctx, node, position, what, layout, hidden)
    ctx.fix(node, [layout], _set_hidden_size(node.name, layout))
    for index, name in enumerate(node.output):
        rank = ctx.rank(name)
        if name and rank is not None:
            ctx.track(name, rank - 1, layout)
        elif name:
            ctx.freeze(layout, node, f"rank of output {index} unknown")


def _initial_state(ctx, node, position: int, what: str, layout: Layout, hidden: int) -> None:
    """A constant initial state loses the removed units; one computed from nothing the pruning
    resizes (zeros sized from the batch, as exporters write them) is gathered where it is read;
    another layer's units (an encoder's last state starting a decoder) are tied to these."""
    name = input_at(node, position)
    if not name:
        return
    shape, tracked = ctx.shape(name), ctx.get(name)
    if shape is None or len(shape) != 3 or shape[2] != hidden:
        ctx.freeze(layout, node, f"{what}: shape unknown or not [.., .., hidden]")
        if tracked is not None:
            ctx.freeze(tracked.layout, node, f"reaches a recurrent layer's {what} of another size")
    elif tracked is not None:
        if tracked.axis != 2 or not ctx.atoms.unify(tracked.layout, layout):
            ctx.freeze(tracked.layout, node, f"{what}: its units cannot be tied to the layer's")
            ctx.freeze(layout, node, f"{what}: its units cannot be tied to the layer's")
    elif ctx.is_const(name):
        ctx.use(PARAM, node, name, 2, layout)
    elif ctx.independent_of_channels(name):
        ctx.fix(node, [layout], gather_kept(node.name, position, 2, layout))
    else:
        ctx.freeze(layout, node, f"{what} depends on pruned channels")


def _set_hidden_size(node_name: str, layout: Layout):
    def apply(editor, kept_length):
        node = editor.node(node_name)
        kept = kept_length(layout)
        for attribute in node.attribute:
            if attribute.name == "hidden_size":
                attribute.i = kept
                return
        node.attribute.append(helper.make_attribute("hidden_size", kept))
    return apply
