"""onnxruntime's fused transformer ops (domain com.microsoft), as its transformer optimizer
writes them into "optimized" ONNX files: BiasGelu / FastGelu, EmbedLayerNormalization,
SkipLayerNormalization and Attention (whose heads are pruned like the unfused ones). The
same op names in another domain are not these ops: they are left to `unknown_op`.
"""

from __future__ import annotations

from onnx_slim.channels.context import CONSUMER, PARAM, PRODUCER
from onnx_slim.channels.rules.elementwise import elementwise
from onnx_slim.channels.rules.registry import input_at, pass_through, rule, unknown_op
from onnx_slim.channels.space import Block
from onnx_slim.ir.graph import attr
from onnx_slim.ops.specs import ATTENTION_PART, CONTRIB_DOMAIN


def _contrib(function):
    """Apply `function` to com.microsoft nodes only."""
    def apply(ctx, node):
        (function if node.domain == CONTRIB_DOMAIN else unknown_op)(ctx, node)
    apply.__doc__ = function.__doc__
    return apply


# Gelu(x + bias): the bias is a per-channel constant, as in Add.
rule("BiasGelu", "FastGelu")(_contrib(elementwise))
rule("QuickGelu")(_contrib(pass_through))


@rule("EmbedLayerNormalization")
@_contrib
def embed_layer_norm(ctx, node):
    """LayerNorm(word + position + segment embeddings): the tables' columns make the hidden
    channels, normalized together. Without --prune-layernorm the outputs stay untracked, which
    leaves the stream they start whole."""
    tables = [name for name in (input_at(node, 2), input_at(node, 3), input_at(node, 4)) if name]
    params = [name for name in (input_at(node, 5), input_at(node, 6)) if name]
    if not ctx.prune_layernorm or not all(ctx.is_const(name) for name in tables + params):
        return
    layout = ctx.new_layout(ctx.initializers[tables[0]].dims[1], node)
    for name in tables:
        ctx.use(PRODUCER, node, name, 1, layout)
    for name in params:
        ctx.use(PARAM, node, name, 0, layout)
    for position in (0, 2):  # the normalized sum, and the sum itself when asked for
        if len(node.output) > position and node.output[position]:
            ctx.track(node.output[position], 2, layout)


@rule("SkipLayerNormalization", "SkipSimplifiedLayerNormalization")
@_contrib
def skip_layer_norm(ctx, node):
    """LayerNorm(input + skip + bias) (RMS norm for the Simplified form): the residual Add and the
    normalization in one node. Output 3, when present, is the sum itself."""
    data, skip = node.input[0], node.input[1]
    tracked = [ctx.get(name) for name in (data, skip) if ctx.get(name) is not None]
    if not tracked:
        return
    if not ctx.prune_layernorm:
        ctx.freeze_inputs(node, "LayerNormalization statistics span these channels (--prune-layernorm allows it)")
        return
    rank = ctx.rank(data)
    if len(tracked) != 2 or rank is None or any(t.axis != rank - 1 for t in tracked):
        ctx.freeze_inputs(node, "input and skip do not both carry channels on the last axis")
        return
    params = [name for name in node.input[2:] if name]  # gamma, beta, bias: [channels] each
    if not all(ctx.is_const(name) for name in params):
        ctx.freeze_inputs(node, "a parameter is computed at run time")
        return
    if not ctx.atoms.unify(tracked[0].layout, tracked[1].layout):
        ctx.freeze_inputs(node, "inputs' channel layouts cannot be aligned")
        return
    for name in params:
        ctx.use(PARAM, node, name, 0, tracked[0].layout)
    for position in (0, 3):
        if len(node.output) > position:
            ctx.track(node.output[position], rank - 1, tracked[0].layout)


@rule("Attention")
@_contrib
def fused_attention(ctx, node):
    """q, k and v of every head from one weight [features, 3 * hidden]: a head is D = hidden /
    num_heads columns of each third (and of the bias), and D features of the output, which
    the output projection reads. Pruning heads rewrites num_heads."""
    why = _unsupported_attention(ctx, node)
    if why and not _splits_into_heads(ctx, node):
        ctx.freeze_inputs(node, why)
        return
    weight, bias = node.input[1], input_at(node, 2)
    heads = attr(node, "num_heads", 0)
    head_size = ctx.initializers[weight].dims[1] // 3 // heads
    tracked = ctx.get(node.input[0])
    if tracked is not None and tracked.axis != ctx.rank(node.input[0]) - 1:
        ctx.freeze(tracked.layout, node, "channels are not the contracted axis")
    elif tracked is not None:
        ctx.use(CONSUMER, node, weight, 0, tracked.layout)
    q, k, v = ((Block(ctx.atoms.new_atom(heads, node.name, unit=head_size)),) for _ in range(3))
    ctx.atoms.unify(q, k)
    ctx.atoms.unify(q, v)
    ctx.use(PRODUCER, node, weight, 1, q + k + v)
    if bias:
        ctx.use(PARAM, node, bias, 0, q + k + v)
    ctx.track(node.output[0], ctx.rank(node.output[0]) - 1, v)
    if why:  # the heads are a group `inspect` lists, frozen with the reason
        ctx.freeze(q, node, why)
        return
    ctx.fix(node, [q], _set_heads(node.name, q, head_size))
    ctx.scaled[node.name + ATTENTION_PART] = q


def _splits_into_heads(ctx, node) -> bool:
    """Whether the weight is a constant [features, 3 * heads * D] and the output [B, S, heads * D]."""
    weight, bias, heads = node.input[1], input_at(node, 2), attr(node, "num_heads", 0)
    if not ctx.is_const(weight) or (bias and not ctx.is_const(bias)) or ctx.rank(node.output[0]) != 3:
        return False
    dims = list(ctx.initializers[weight].dims)
    return len(dims) == 2 and heads >= 1 and dims[1] % (3 * heads) == 0 and ctx.rank(node.input[0]) == 3


def _unsupported_attention(ctx, node) -> str | None:
    """Why this Attention's heads cannot be pruned here, or None (its shape is `_splits_into_heads`'s)."""
    if not _splits_into_heads(ctx, node):
        return "weights or input are not a constant [features, 3 * heads * D] and [batch, sequence, features]"
    sizes = attr(node, "qkv_hidden_sizes", None)
    if sizes is not None and len(set(sizes)) != 1:
        return "q, k and v have different sizes"
    if any(input_at(node, index) for index in (4, 5, 6)):  # past state, attention bias, past length
        return "past state or an attention bias spans the heads"
    if len(node.output) > 1 and node.output[1]:
        return "the present state is an output"
    if attr(node, "do_rotary", 0):
        return "rotary embedding"
    return None


def _set_heads(node_name: str, layout, head_size: int):
    def apply(editor, kept_length):
        node = editor.node(node_name)
        kept = kept_length(layout)
        for attribute in node.attribute:
            if attribute.name == "num_heads":
                attribute.i = kept // head_size
            elif attribute.name == "qkv_hidden_sizes":
                attribute.ints[:] = [kept] * 3
    return apply
