"""Element-wise ops: activations pass channels through; binary ops tie their inputs' channels."""

from __future__ import annotations

from onnx_slim.channels.context import PARAM
from onnx_slim.channels.rules.registry import gather_kept, joined_inputs, pass_through, rule

rule(
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Neg",
    "Abs", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "ThresholdedRelu",
    "Shrink", "Identity", "Cast", "CastLike", "Clip", "Not", "IsNaN", "IsInf",
)(pass_through)


@rule("Dropout")
def dropout(ctx, node):
    pass_through(ctx, node, outputs=node.output)  # the mask has the data's shape


@rule("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu",
      "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod")
def elementwise(ctx, node):
    """Broadcasting ops: tracked inputs tie channel by channel; constants may be per-channel."""
    found = joined_inputs(ctx, node)
    if found is None:
        return
    output, out_rank, inputs, tracked = found
    out_axes = {t.axis + out_rank - ctx.rank(name) for name, t in tracked.items()}
    if len(out_axes) != 1:
        ctx.freeze_inputs(node, "inputs carry channels on different axes")
        return
    out_axis = out_axes.pop()
    layouts = [t.layout for t in tracked.values()]
    channels = ctx.length(layouts[0])
    per_channel_params, side_inputs = [], []
    for position, name in enumerate(node.input):
        if not name or name in tracked:
            continue
        shape = ctx.shape(name)
        if shape is None:
            ctx.freeze_inputs(node, f"shape of input {name} unknown")
            return
        axis = out_axis - (out_rank - len(shape))
        if axis < 0 or shape[axis] == 1:
            continue  # broadcast along the channel axis
        if ctx.is_const(name) and shape[axis] == channels:
            per_channel_params.append((name, axis))
            continue
        if shape[axis] == channels and ctx.independent_of_channels(name):
            # Computed from nothing that pruning resizes (a relative-position bias shared by
            # every layer, an input): each reader takes its kept channels with a Gather.
            side_inputs.append((position, axis))
            continue
        ctx.freeze_inputs(node, f"input {name} spans the channel axis but is not tracked")
        return
    for other in layouts[1:]:
        # Coarsening lets a plain gate multiply whole groups of a grouped Conv's filters.
        if not ctx.atoms.unify(layouts[0], other, coarsen=True):
            ctx.freeze_inputs(node, "inputs' channel layouts cannot be aligned")
            return
    for name, axis in per_channel_params:
        ctx.use(PARAM, node, name, axis, layouts[0])
    for position, axis in side_inputs:
        ctx.fix(node, [layouts[0]], gather_kept(node.name, position, axis, layouts[0]))
    ctx.track(output, out_axis, layouts[0])
