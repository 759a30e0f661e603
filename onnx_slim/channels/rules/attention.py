"""MatMul and Einsum of activations (attention's q·kᵀ and probabilities·v): heads ride along their batch axes."""

from __future__ import annotations

from onnx_slim.channels.rules.registry import join_channels, rule, side_input_role
from onnx_slim.ir.graph import attr


def matmul_of_activations(ctx, node) -> None:
    """[..., M, K] @ [..., K, N]: the leading (batch) axes broadcast as in an element-wise op,
    so channels there (the heads of q, k and v) are tied across both inputs; A's rows and B's
    columns pass through to the output. Channels on the contracted axis are summed over:
    removing one would change every output, so they freeze. Grouped-query attention meets q's
    heads with k's repeated ones (each k/v head covering n_rep query heads): q's heads are then
    coarsened so that each k/v head goes with the query heads it serves.

    Multi-query attention (one k/v head, as Gemma-2B and Falcon export it) views k and v with
    their head_dim features as channels: those freeze (summed over, or a second channel axis),
    and the heads axis of the repeated k or v is cut to the kept query heads by a Gather, since
    its position h is what query head h reads."""
    names = node.input[:2]
    tracked = {name: ctx.get(name) for name in names if ctx.get(name) is not None}
    if not tracked:
        return
    ranks = [ctx.rank(name) for name in names]
    out_rank = ctx.rank(node.output[0])
    if None in ranks or out_rank is None or min(ranks) < 2:
        ctx.freeze_inputs(node, "MatMul of activations with unknown or 1-D shapes")
        return
    heads = [name for name, rank in zip(names, ranks) if name in tracked and tracked[name].axis < rank - 2]
    multi_query = [name for name in tracked if name not in heads] if len(heads) == 1 else []
    if len(heads) == 2:  # Falcon's single k/v head, repeated along the heads axis
        single = [name for name in heads if _one_channel_classes(ctx, tracked[name].layout)]
        multi_query = single if len(single) == 1 else []
        heads = [name for name in heads if name not in multi_query]
    for name in multi_query:  # its own features freeze; its heads axis is gathered below
        ctx.freeze(tracked.pop(name).layout, node, "MatMul between activations reads these channels beside "
                   "the other input's heads")
    out_axes = set()
    for position, (name, rank) in enumerate(zip(names, ranks)):
        if name not in tracked:
            continue
        contracted = rank - 1 if position == 0 else rank - 2
        if tracked[name].axis == contracted:
            ctx.freeze_inputs(node, "MatMul between activations contracts over the channel axis")
            return
        out_axes.add(tracked[name].axis + out_rank - rank)  # batch axes align from the right
    if len(out_axes) != 1:
        ctx.freeze_inputs(node, "inputs carry channels on different axes")
        return
    out_axis = out_axes.pop()
    layouts = [t.layout for t in tracked.values()]
    gathered = []
    for position, (name, rank) in enumerate(zip(names, ranks)):
        axis = out_axis - (out_rank - rank)
        shape = ctx.shape(name)
        if name in tracked or axis < 0 or out_axis >= out_rank - 2 or shape is not None and shape[axis] == 1:
            continue
        if name in multi_query and shape is not None and shape[axis] == ctx.length(layouts[0]):
            gathered.append((position, axis))
            continue
        ctx.freeze_inputs(node, f"input {name} spans the channel axis but is not tracked")
        return
    if join_channels(ctx, node, layouts, out_axis, gathered=gathered):
        ctx.scaled[node.name] = layouts[0]


def _one_channel_classes(ctx, layout) -> bool:
    """Whether every class in `layout` has a single channel (repeated: one k/v head for all heads)."""
    return all(ctx.atoms.sizes[block.atom] == 1 for block in ctx.atoms.expand(layout))


@rule("Einsum")
def einsum(ctx, node):
    """An Einsum (Funnel's and XLNet's attention: "bind,bjnd->bnij") keeps channels whose label
    every tracked input carries and the output keeps; a summed label freezes them, as in a MatMul.
    Other inputs with that label are per-channel constants (sliced with the channels), tensors
    computed from nothing pruning resizes (a Gather of the kept channels in front), or size 1."""
    tracked = {name: ctx.get(name) for name in node.input if ctx.get(name) is not None}
    if not tracked:
        return
    equation = attr(node, "equation", b"")
    equation = (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")
    inputs_part, _, output = equation.partition("->")
    terms = inputs_part.split(",")
    if "." in equation or not output or len(terms) != len(node.input):
        ctx.freeze_inputs(node, f"Einsum equation {equation!r} is not followed")
        return
    labels = {terms[position][t.axis] for position, name in enumerate(node.input) if (t := tracked.get(name))}
    if len(labels) != 1 or next(iter(labels)) not in output:
        ctx.freeze_inputs(node, "Einsum sums over the channel axis, or inputs carry channels on different labels")
        return
    label = labels.pop()
    layouts = [t.layout for t in tracked.values()]
    channels = ctx.length(layouts[0])
    roles = {"param": [], "gather": []}
    for position, (name, term) in enumerate(zip(node.input, terms)):
        if name in tracked or label not in term:
            continue
        axis, shape = term.index(label), ctx.shape(name)
        role = None if shape is None else side_input_role(ctx, name, shape[axis], channels)
        if role is None:
            ctx.freeze_inputs(node, f"input {name} spans the channel axis but is not tracked")
            return
        if role != "broadcast":
            roles[role].append((name, axis) if role == "param" else (position, axis))
    join_channels(ctx, node, layouts, output.index(label), roles["param"], roles["gather"])
