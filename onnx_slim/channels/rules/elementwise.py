"""Element-wise ops: activations pass channels through; binary ops tie their inputs' channels."""

from __future__ import annotations

from onnx_slim.channels.rules.registry import join_channels, joined_inputs, pass_through, rule, side_input_role

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
    roles = {"param": [], "gather": []}
    for position, name in enumerate(node.input):
        if not name or name in tracked:
            continue
        shape = ctx.shape(name)
        if shape is None:
            ctx.freeze_inputs(node, f"shape of input {name} unknown")
            return
        axis = out_axis - (out_rank - len(shape))
        role = "broadcast" if axis < 0 else side_input_role(ctx, name, shape[axis], channels)
        if role is None:
            ctx.freeze_inputs(node, f"input {name} spans the channel axis but is not tracked")
            return
        if role != "broadcast":
            roles[role].append((name, axis) if role == "param" else (position, axis))
    # Coarsening lets a plain gate multiply whole groups of a grouped Conv's filters.
    join_channels(ctx, node, layouts, out_axis, roles["param"], roles["gather"], output)
