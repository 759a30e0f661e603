"""MatMul of two activations (attention's q·kᵀ and probabilities·v): heads ride along its batch axes."""

from __future__ import annotations


def matmul_of_activations(ctx, node) -> None:
    """[..., M, K] @ [..., K, N]: the leading (batch) axes broadcast as in an element-wise op,
    so channels there (the heads of q, k and v) are tied across both inputs; A's rows and B's
    columns pass through to the output. Channels on the contracted axis are summed over:
    removing one would change every output, so they freeze. Grouped-query attention meets q's
    heads with k's repeated ones (each k/v head covering n_rep query heads): q's heads are then
    coarsened so that each k/v head goes with the query heads it serves."""
    names = node.input[:2]
    tracked = {name: ctx.get(name) for name in names if ctx.get(name) is not None}
    if not tracked:
        return
    ranks = [ctx.rank(name) for name in names]
    out_rank = ctx.rank(node.output[0])
    if None in ranks or out_rank is None or min(ranks) < 2:
        ctx.freeze_inputs(node, "MatMul of activations with unknown or 1-D shapes")
        return
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
    for name, rank in zip(names, ranks):
        axis = out_axis - (out_rank - rank)
        shape = ctx.shape(name)
        if name in tracked or axis < 0 or out_axis >= out_rank - 2:
            continue
        if shape is None or shape[axis] != 1:  # an untracked input spanning the heads' batch axis
            ctx.freeze_inputs(node, f"input {name} spans the channel axis but is not tracked")
            return
    layouts = [t.layout for t in tracked.values()]
    if not all(ctx.atoms.unify(layouts[0], other, coarsen=True) for other in layouts[1:]):
        ctx.freeze_inputs(node, "inputs' channel layouts cannot be aligned")
        return
    ctx.track(node.output[0], out_axis, layouts[0])
    ctx.scaled[node.name] = layouts[0]
