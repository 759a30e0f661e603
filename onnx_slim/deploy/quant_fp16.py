"""float16 conversion for GPU deployments, with onnxruntime's own converter (`onnxruntime.transformers.float16`).

Ops the chosen execution provider has no float16 kernel for stay float32
(the converter inserts the Casts around them): onnxruntime's kernel registry
says which, for the providers this onnxruntime build has. On the CPU provider
almost nothing computes in float16 (no Conv, MatMul or Gemm kernel), so fp16
there saves file size at best; auto tries fp16 only for a GPU provider.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from onnx_slim.ir.graph import subgraphs
from onnx_slim.ops.specs import WEIGHT_OPS

FP16_MAX = float(np.finfo(np.float16).max)  # 65504: larger magnitudes are clipped to it
# Execution providers that run on a GPU (or an accelerator) and have float16 kernels worth using.
GPU_PROVIDERS = frozenset({
    "CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider",
    "DmlExecutionProvider", "CoreMLExecutionProvider", "WebGpuExecutionProvider", "OpenVINOExecutionProvider",
})
_FLOAT16 = "tensor(float16)"


@dataclass
class Fp16Result:
    model: onnx.ModelProto
    blocked_ops: list[str]  # op types of the model kept in float32
    block_source: str  # where the block list came from
    warnings: list[str] = field(default_factory=list)


def float16_layers(model: onnx.ModelProto) -> list[str]:
    """Conv/Gemm/MatMul nodes that read a float16 constant (an initializer or a Constant node's): a model
    exported in half precision, which onnxruntime's int8 and int4 quantizers do not take (they expect
    float32 weights). A float16 weight cast to float32 before its layer (mixed precision) does not count."""
    halves = {init.name for init in model.graph.initializer if init.data_type == TensorProto.FLOAT16}
    halves |= {node.output[0] for node in model.graph.node if node.op_type == "Constant"
               and any(a.name == "value" and a.t.data_type == TensorProto.FLOAT16 for a in node.attribute)}
    return [node.name or node.op_type for node in model.graph.node
            if node.op_type in WEIGHT_OPS and any(name in halves for name in node.input)]


def is_gpu(providers: Sequence[str]) -> bool:
    return bool(providers) and providers[0] in GPU_PROVIDERS


def convert_to_fp16(
    model: onnx.ModelProto, providers: Sequence[str], *, keep_io_types: bool = True, exclude: Sequence[str] = ()
) -> Fp16Result:
    """The model in float16 except ops without a float16 kernel on `providers[0]` and the nodes in `exclude`.

    `keep_io_types`: graph inputs and outputs stay float32 (a Cast at each).
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    op_types = {node.op_type for node in _all_nodes(model.graph)}
    without_kernel, source = _ops_without_fp16_kernel(op_types, providers[0])
    blocked = sorted(op_types & (set(DEFAULT_OP_BLOCK_LIST) | without_kernel))
    clipped = _count_out_of_range(model, set(blocked), exclude)
    converted = convert_float_to_float16(
        model, keep_io_types=keep_io_types, op_block_list=blocked, node_block_list=list(exclude),
        disable_shape_infer=False,
    )
    warnings = []
    if clipped:
        warnings.append(f"{clipped} weight values exceed the float16 range (|w| > {FP16_MAX:g}) and were "
                        f"clipped to +-{FP16_MAX:g}; exclude their nodes (--exclude) to keep them float32")
    if not is_gpu(providers):
        warnings.append(f"fp16 on {providers[0]}: it has no float16 kernel for {', '.join(blocked) or 'none'}, "
                        "which stay float32; float16 pays off on a GPU provider")
    return Fp16Result(converted, blocked, source, warnings)


def _ops_without_fp16_kernel(op_types: set[str], provider: str) -> tuple[set[str], str]:
    """Op types (of the default domain) with no float16 kernel registered for `provider`, and a note saying whence."""
    import onnxruntime.capi._pybind_state as ort_c

    with_fp16, registered = set(), False
    for kernel in ort_c.get_all_opkernel_def():
        if kernel.provider != provider:
            continue
        registered = True
        if any(_FLOAT16 in types for types in kernel.type_constraints.values()):
            with_fp16.add(kernel.op_name)
    if not registered:  # not in this build, or a provider that compiles whole graphs (TensorRT)
        return set(), f"onnxruntime's default block list ({provider} kernels are not known to this build)"
    return op_types - with_fp16, f"{provider} kernels without float16"


def _count_out_of_range(model: onnx.ModelProto, blocked_ops: set[str], exclude: Sequence[str]) -> int:
    """Values beyond +-65504 in the float initializers that float16 nodes read (the converter clips them)."""
    float32_readers = {name for node in model.graph.node
                       if node.op_type in blocked_ops or node.name in exclude for name in node.input}
    count = 0
    for tensor in model.graph.initializer:
        if tensor.data_type == TensorProto.FLOAT and tensor.name not in float32_readers:
            count += int(np.count_nonzero(np.abs(numpy_helper.to_array(tensor)) > FP16_MAX))
    return count


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for body in subgraphs(node):
            yield from _all_nodes(body)
