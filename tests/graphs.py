"""A tiny builder for test graphs: one method per op, seeded numpy weights.

    g = Graph()
    x = g.input("x", [1, 3, 8, 8])
    y = g.relu(g.conv(x, 8, name="conv1"))
    model = g.build(y)

Every node gets the name passed in (or `<op>_<n>`), every weight is
`<node>_w` / `<node>_b`, so tests can find them again. Shapes are read back with
onnx shape inference, so helpers only need the sizes they create.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Graph:
    def __init__(self, seed: int = 0, opset: int = 17) -> None:
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.extra_opsets: dict[str, int] = {}
        self._count = 0
        self._shapes: dict[str, tuple] = {}
        self._shapes_at = -1

    # -- plumbing -------------------------------------------------------------

    def input(self, name: str, shape) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    def const(self, name: str, value) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def ints(self, name: str, values) -> str:
        return self.const(name, np.asarray(values, dtype=np.int64))

    def weight(self, name: str, shape, scale: float = 0.5) -> str:
        return self.const(name, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def node(self, op_type: str, inputs, name: str | None = None, outputs: int = 1,
             domain: str = "", **attributes):
        """Add a node; returns its output name (or a list when `outputs` > 1)."""
        self._count += 1
        name = name or f"{op_type.lower()}_{self._count}"
        names = [name if i == 0 else f"{name}_out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=name, domain=domain, **attributes))
        return names[0] if outputs == 1 else names

    def shape(self, tensor: str) -> tuple:
        """The inferred shape of any tensor built so far (symbolic dims by name)."""
        if self._shapes_at != len(self.nodes):
            model = self._model([])
            inferred = onnx.shape_inference.infer_shapes(model)
            values = list(inferred.graph.input) + list(inferred.graph.value_info)
            self._shapes = {
                v.name: tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim) for v in values
            }
            self._shapes.update({init.name: tuple(init.dims) for init in self.initializers})
            self._shapes_at = len(self.nodes)
        return self._shapes[tensor]

    def channels(self, tensor: str, axis: int = 1) -> int:
        return self.shape(tensor)[axis]

    def _model(self, outputs) -> onnx.ModelProto:
        opsets = [helper.make_opsetid("", self.opset)]
        opsets += [helper.make_opsetid(domain, version) for domain, version in self.extra_opsets.items()]
        graph = helper.make_graph(self.nodes, "test", self.inputs, outputs, self.initializers)
        return helper.make_model(graph, opset_imports=opsets)

    def build(self, *outputs: str) -> onnx.ModelProto:
        """The model with `outputs` as graph outputs, their shapes inferred."""
        declared = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(self.shape(name)))
                    for name in outputs]
        model = self._model(declared)
        onnx.checker.check_model(model, full_check=True)
        return model

    # -- producers ------------------------------------------------------------

    def conv(self, x: str, out_channels: int, kernel: int = 3, group: int = 1, bias: bool = True,
             name: str | None = None, stride: int = 1) -> str:
        name = name or f"conv_{self._count + 1}"
        in_channels = self.channels(x)
        w = self.weight(f"{name}_w", (out_channels, in_channels // group, kernel, kernel))
        inputs = [x, w] + ([self.weight(f"{name}_b", (out_channels,))] if bias else [])
        return self.node("Conv", inputs, name, pads=[kernel // 2] * 4, group=group, strides=[stride] * 2)

    def depthwise(self, x: str, multiplier: int = 1, name: str | None = None) -> str:
        channels = self.channels(x)
        return self.conv(x, channels * multiplier, group=channels, name=name)

    def conv_transpose(self, x: str, out_channels: int, name: str | None = None) -> str:
        name = name or f"convt_{self._count + 1}"
        w = self.weight(f"{name}_w", (self.channels(x), out_channels, 2, 2))
        b = self.weight(f"{name}_b", (out_channels,))
        return self.node("ConvTranspose", [x, w, b], name, strides=[2, 2])

    def gemm(self, x: str, features: int, trans_b: int = 1, bias: str = "vector",
             name: str | None = None) -> str:
        """Gemm on [N, K]; bias "vector" ([features]), "scalar" ([1]) or "none"."""
        name = name or f"gemm_{self._count + 1}"
        k = self.channels(x)
        w = self.weight(f"{name}_w", (features, k) if trans_b else (k, features))
        inputs = [x, w]
        if bias == "vector":
            inputs.append(self.weight(f"{name}_b", (features,)))
        elif bias == "scalar":
            inputs.append(self.weight(f"{name}_b", (1,)))
        return self.node("Gemm", inputs, name, transB=trans_b)

    def matmul(self, x: str, features: int, name: str | None = None) -> str:
        """x[..., K] @ W[K, features]."""
        name = name or f"matmul_{self._count + 1}"
        w = self.weight(f"{name}_w", (self.shape(x)[-1], features))
        return self.node("MatMul", [x, w], name)

    def add_bias(self, x: str, name: str | None = None) -> str:
        """x + b with b over the last axis (the MatMul + Add of the dynamo exporter)."""
        name = name or f"bias_{self._count + 1}"
        return self.node("Add", [x, self.weight(f"{name}_b", (self.shape(x)[-1],))], name)

    # -- per-channel ------------------------------------------------------------

    def bn(self, x: str, name: str | None = None) -> str:
        name = name or f"bn_{self._count + 1}"
        c = self.channels(x)
        scale = self.const(f"{name}_scale", self.rng.uniform(0.5, 1.5, c).astype(np.float32))
        bias = self.weight(f"{name}_bias", (c,))
        mean = self.weight(f"{name}_mean", (c,))
        var = self.const(f"{name}_var", self.rng.uniform(0.5, 1.5, c).astype(np.float32))
        return self.node("BatchNormalization", [x, scale, bias, mean, var], name)

    def instance_norm(self, x: str, name: str | None = None) -> str:
        name = name or f"in_{self._count + 1}"
        c = self.channels(x)
        return self.node("InstanceNormalization",
                         [x, self.weight(f"{name}_scale", (c,)), self.weight(f"{name}_bias", (c,))], name)

    def layer_norm(self, x: str, name: str | None = None) -> str:
        name = name or f"ln_{self._count + 1}"
        c = self.shape(x)[-1]
        return self.node("LayerNormalization",
                         [x, self.weight(f"{name}_scale", (c,)), self.weight(f"{name}_bias", (c,))],
                         name, axis=-1)

    def prelu(self, x: str, name: str | None = None) -> str:
        name = name or f"prelu_{self._count + 1}"
        slope = self.const(f"{name}_slope", self.rng.uniform(0.1, 0.3, (self.channels(x), 1, 1)).astype(np.float32))
        return self.node("PRelu", [x, slope], name)

    def per_channel(self, op_type: str, x: str, name: str | None = None) -> str:
        """x <op> c with a [C,1,1] constant (positive, so Div is safe)."""
        name = name or f"{op_type.lower()}_{self._count + 1}"
        value = self.rng.uniform(0.5, 1.5, (self.channels(x), 1, 1)).astype(np.float32)
        return self.node(op_type, [x, self.const(f"{name}_c", value)], name)

    def scalar(self, op_type: str, x: str, value: float = 1.5, name: str | None = None) -> str:
        name = name or f"{op_type.lower()}_{self._count + 1}"
        return self.node(op_type, [x, self.const(f"{name}_c", np.array(value, dtype=np.float32))], name)

    # -- element-wise and structure --------------------------------------------------

    def relu(self, x: str, name: str | None = None) -> str:
        return self.node("Relu", [x], name)

    def act(self, op_type: str, x: str, name: str | None = None, **attributes) -> str:
        return self.node(op_type, [x], name, **attributes)

    def add(self, a: str, b: str, name: str | None = None) -> str:
        return self.node("Add", [a, b], name)

    def concat(self, parts, axis: int = 1, name: str | None = None) -> str:
        return self.node("Concat", list(parts), name, axis=axis)

    def split(self, x: str, sizes, axis: int = 1, name: str | None = None, style: str = "input"):
        """Split with sizes as an input (opset >= 13), an attribute ("attribute", opset 11)
        or equal parts from `num_outputs` ("num_outputs", opset 18)."""
        name = name or f"split_{self._count + 1}"
        if style == "input":
            return self.node("Split", [x, self.ints(f"{name}_sizes", sizes)], name, outputs=len(sizes), axis=axis)
        if style == "attribute":
            return self.node("Split", [x], name, outputs=len(sizes), axis=axis, split=list(sizes))
        return self.node("Split", [x], name, outputs=len(sizes), axis=axis, num_outputs=len(sizes))

    def slice(self, x: str, start: int, end: int, axis: int = 1, name: str | None = None) -> str:
        name = name or f"slice_{self._count + 1}"
        inputs = [x, self.ints(f"{name}_starts", [start]), self.ints(f"{name}_ends", [end]),
                  self.ints(f"{name}_axes", [axis])]
        return self.node("Slice", inputs, name)

    def gap(self, x: str, name: str | None = None) -> str:
        return self.node("GlobalAveragePool", [x], name)

    def flatten(self, x: str, name: str | None = None) -> str:
        return self.node("Flatten", [x], name, axis=1)

    def reshape(self, x: str, shape, name: str | None = None) -> str:
        name = name or f"reshape_{self._count + 1}"
        return self.node("Reshape", [x, self.ints(f"{name}_shape", shape)], name)

    def reduce_mean(self, x: str, axes, keepdims: int = 1, name: str | None = None) -> str:
        name = name or f"reducemean_{self._count + 1}"
        if self.opset >= 18:
            return self.node("ReduceMean", [x, self.ints(f"{name}_axes", axes)], name, keepdims=keepdims)
        return self.node("ReduceMean", [x], name, axes=list(axes), keepdims=keepdims)

    def se_block(self, x: str, squeeze: int, name: str = "se") -> str:
        """Squeeze-excite: x * Sigmoid(Conv2(Relu(Conv1(GAP(x)))))."""
        pooled = self.gap(x, name=f"{name}_gap")
        inner = self.relu(self.conv(pooled, squeeze, kernel=1, name=f"{name}_conv1"))
        gate = self.act("Sigmoid", self.conv(inner, self.channels(x), kernel=1, name=f"{name}_conv2"))
        return self.node("Mul", [x, gate], f"{name}_mul")

    def head(self, x: str, classes: int = 3, name: str = "fc") -> str:
        """GAP -> Flatten -> Gemm: the classifier of a CNN."""
        return self.gemm(self.flatten(self.gap(x, name=f"{name}_gap"), name=f"{name}_flatten"), classes, name=name)


def conv_chain(widths=(8, 8), in_channels: int = 3, size: int = 8, seed: int = 0) -> onnx.ModelProto:
    """x -> (conv_i -> relu)* -> conv_out(2 channels) -> y: one prunable group per hidden conv."""
    g = Graph(seed)
    h = g.input("x", [1, in_channels, size, size])
    for index, width in enumerate(widths):
        h = g.relu(g.conv(h, width, name=f"conv{index + 1}"), name=f"relu{index + 1}")
    return g.build(g.conv(h, 2, name="conv_out"))


def runs_only_at_batch_one() -> onnx.ModelProto:
    """Convs, then a Reshape to a constant [1, ...] target (as exporters write for a traced batch
    of 1): onnxruntime fails at any other batch, though the input's batch axis is symbolic."""
    g = Graph(0)
    h = g.input("x", ["batch", 3, 8, 8])
    for index in range(2):
        h = g.relu(g.conv(h, 8, name=f"conv{index + 1}"), name=f"relu{index + 1}")
    out = g.conv(h, 2, name="conv_out")
    return g.build(g.node("Reshape", [out, g.ints("one", [1, 2, 8, 8])]))


def computed_reshape_encoder(width: int = 16, hidden: int = 32, out: int = 8, seed: int = 0) -> onnx.ModelProto:
    """An encoder block as the TorchScript exporter writes it for symbolic batch and sequence.

    x[batch, sequence, width] + positions[:, :sequence] (a Slice whose end is read
    through Shape, which static inference cannot follow) -> fc1 MatMul + Add -> Relu
    -> Reshape to [batch * sequence, hidden] -> fc2 Gemm -> Reshape to
    [batch, sequence, out] -> y. Both Reshape targets are Concats of
    Gather(Shape(...)) parts and a constant channel count.
    """
    g = Graph(seed)
    x = g.input("x", ["batch", "sequence", width])

    def dim(tensor, index):
        """Unsqueeze(Gather(Shape(tensor), index)): one dim read at run time, as a 1-D tensor."""
        name = f"{tensor}_dim{index}_{g._count}"
        gathered = g.node("Gather", [g.node("Shape", [tensor]), g.ints(f"{name}_index", index)], axis=0)
        return g.node("Unsqueeze", [gathered, g.ints(f"{name}_axes", [0])])

    positions = g.node("Slice", [g.weight("positions", (1, 128, width)), g.ints("pos_start", [0]),
                                 dim(x, 1), g.ints("pos_axes", [1])], "positions_slice")
    h = g.relu(g.add_bias(g.matmul(g.add(x, positions), hidden, name="fc1"), name="fc1_bias"), name="fc1_relu")
    rows = g.node("Mul", [dim(h, 0), dim(h, 1)], "rows")
    flat = g.node("Reshape", [h, g.concat([rows, g.ints("hidden", [hidden])], axis=0, name="flat_shape")], "flat")
    w2 = g.weight("fc2_w", (out, hidden))
    o = g.node("Gemm", [flat, w2, g.weight("fc2_b", (out,))], "fc2", transB=1)
    target = g.concat([dim(x, 0), dim(x, 1), g.ints("out", [out])], axis=0, name="unflat_shape")
    y = g.node("Reshape", [o, target], "unflat")
    model = g._model([helper.make_tensor_value_info(y, TensorProto.FLOAT, ["batch", "sequence", out])])
    onnx.checker.check_model(model, full_check=True)
    return model


# -- single-purpose models of the activation and patch tests ---------------------------------


def conv_relu_model(seed: int = 0) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv(4, 3x3, pad 1) -> Relu -> Conv(2, 1x1) -> y; plus Shape(x) -> shape (int64)."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["conv1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("Conv", ["relu1", "w2"], ["y"]),
        helper.make_node("Shape", ["relu1"], ["relu_shape"]),
        helper.make_node("Cast", ["relu_shape"], ["shape_float"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 8, 8]),
            helper.make_tensor_value_info("shape_float", TensorProto.FLOAT, [4]),
        ],
        [w1, b1, w2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_model(in_channels, out_channels, kernel, strides, pads, dilations, seed=0):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((out_channels, in_channels, *kernel)).astype(np.float32)
    bias = rng.standard_normal(out_channels).astype(np.float32)
    node = helper.make_node(
        "Conv", ["x", "w", "b"], ["y"], kernel_shape=list(kernel), strides=list(strides),
        pads=list(pads), dilations=list(dilations),
    )
    graph = helper.make_graph(
        [node], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weight, bias


def random_images(n=3, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)
