"""Build a ResNet-50-sized ONNX model with onnx.helper (no torch), for benchmarks.

Bottleneck blocks [3, 4, 6, 3], widths 64..512 with expansion 4, BatchNorm
already folded into conv biases (as the TorchScript exporter writes it), random
He-initialized weights. About 25.5M parameters, 4.1 GMACs at 224x224: the same
graph, sizes and file size (~100 MB) as torchvision's resnet50.

    python scripts/resnet50.py OUT.onnx [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes, self.initializers = [], []
        self.count = 0

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}_{self.count}"

    def conv(self, x, in_ch, out_ch, kernel, stride=1, relu=True):
        name = self._name("conv")
        fan_in = in_ch * kernel * kernel
        weight = (self.rng.standard_normal((out_ch, in_ch, kernel, kernel)) * np.sqrt(2 / fan_in)).astype(np.float32)
        bias = (self.rng.standard_normal(out_ch) * 0.01).astype(np.float32)
        self.initializers += [numpy_helper.from_array(weight, f"{name}.weight"),
                              numpy_helper.from_array(bias, f"{name}.bias")]
        pad = kernel // 2
        self.nodes.append(helper.make_node(
            "Conv", [x, f"{name}.weight", f"{name}.bias"], [f"{name}_out"], name=name,
            kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4))
        out = f"{name}_out"
        return self.relu(out) if relu else out

    def relu(self, x):
        name = self._name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [f"{name}_out"], name=name))
        return f"{name}_out"

    def add_relu(self, a, b):
        name = self._name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [f"{name}_out"], name=name))
        return self.relu(f"{name}_out")

    def bottleneck(self, x, in_ch, width, stride):
        out_ch = width * 4
        y = self.conv(x, in_ch, width, 1)
        y = self.conv(y, width, width, 3, stride)
        y = self.conv(y, width, out_ch, 1, relu=False)
        shortcut = x
        if stride != 1 or in_ch != out_ch:
            shortcut = self.conv(x, in_ch, out_ch, 1, stride, relu=False)
        return self.add_relu(y, shortcut), out_ch


def build_resnet50(seed: int = 0, num_classes: int = 1000) -> onnx.ModelProto:
    b = _Builder(seed)
    x = b.conv("input", 3, 64, 7, stride=2)
    b.nodes.append(helper.make_node("MaxPool", [x], ["pool"], name="maxpool",
                                    kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    x, channels = "pool", 64
    for stage, (blocks, width) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512])):
        for block in range(blocks):
            stride = 2 if block == 0 and stage > 0 else 1
            x, channels = b.bottleneck(x, channels, width, stride)
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    b.nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1))
    fc_weight = (b.rng.standard_normal((num_classes, channels)) * np.sqrt(1 / channels)).astype(np.float32)
    b.initializers += [numpy_helper.from_array(fc_weight, "fc.weight"),
                       numpy_helper.from_array(np.zeros(num_classes, np.float32), "fc.bias")]
    b.nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        b.nodes, "resnet50",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])],
        b.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnx_slim.scripts")
    model.ir_version = 8
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = build_resnet50(args.seed)
    onnx.checker.check_model(model)
    onnx.save(model, args.output)


if __name__ == "__main__":
    main()
