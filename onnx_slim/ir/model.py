"""Loading, saving and describing ONNX models.

`load_model` turns every way a model can be broken into one `InvalidModelError`;
`save_model` writes atomically (temporary file in the target folder, then rename)
so a failure never leaves a half-written output.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np
import onnx
from onnx import helper

from onnx_slim.errors import InvalidModelError, OnnxSlimError, UsageError, first_line

ModelSource = Union[str, os.PathLike, onnx.ModelProto]

# Protobuf cannot serialize a single message over 2 GiB; past this size weights go
# to an external data file next to the model.
_EXTERNAL_DATA_THRESHOLD = 1_800_000_000

# Ops that only quantized models hold; besides these, every QLinear* and *Integer op (see is_quantized_op).
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
    "QGemm", "QAttention", "QEmbedLayerNormalization", "MatMulIntegerToFloat",
})


def is_quantized_op(op_type: str) -> bool:
    """Q/DQ pairs, QLinear*, *Integer and onnxruntime's dynamic-quantization ops."""
    return op_type in QUANTIZED_OPS or op_type.startswith("QLinear") or op_type.endswith("Integer")


def load_model(source: ModelSource, *, copy: bool = True) -> onnx.ModelProto:
    """Load a model from a path (external data included) or take a ModelProto.

    A given ModelProto is copied unless ``copy=False``, so the caller's object is
    never modified by later stages.
    """
    if isinstance(source, onnx.ModelProto):
        if not copy:
            return source
        model = onnx.ModelProto()
        model.CopyFrom(source)
        return model
    path = Path(source)
    if not path.exists():
        raise InvalidModelError(f"{path}: no such file")
    if path.is_dir():
        raise InvalidModelError(f"{path}: is a directory, expected an .onnx file")
    if path.stat().st_size == 0:
        raise InvalidModelError(f"{path}: file is empty")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except Exception as exc:  # protobuf raises DecodeError, onnx raises others
        raise InvalidModelError(
            f"{path}: not a readable ONNX model (truncated or not ONNX?): {first_line(exc)}"
        ) from None
    if not model.graph.node or not model.graph.output:
        raise InvalidModelError(f"{path}: not an ONNX model (no graph nodes or outputs)")
    return model


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write `model` to `path` atomically; returns the path."""
    path = Path(path)
    if not path.parent.is_dir():
        what = "is a file" if path.parent.exists() else "does not exist"
        raise OnnxSlimError(f"{path.parent}: output folder {what}: choose an existing folder")
    external = model.ByteSize() > _EXTERNAL_DATA_THRESHOLD
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    tmp = Path(tmp_name)
    data_name = path.name + ".data"
    tmp_data = tmp.with_name(tmp.name + ".data")
    try:
        if external:
            # onnx moves the weights of the proto it saves out to the data file: give it
            # a copy so the caller's model stays whole (twice the memory, only past 1.8 GB).
            duplicate = onnx.ModelProto()
            duplicate.CopyFrom(model)
            onnx.save_model(
                duplicate, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                location=tmp_data.name, size_threshold=1024,
            )
            # The model refers to its data file by name: point it at the final name.
            reloaded = onnx.load(str(tmp), load_external_data=False)
            for tensor in _external_tensors(reloaded):
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = data_name
            onnx.save_model(reloaded, str(tmp))
            os.replace(tmp_data, path.with_name(data_name))
        else:
            with open(tmp, "wb") as handle:
                handle.write(model.SerializeToString())
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, tmp_data):
            if leftover.exists():
                leftover.unlink()
        raise
    return path


def check_output_path(source: ModelSource, output_path: str | os.PathLike, force: bool) -> None:
    """Refuse to write over the input, over a folder, or over an existing file without force."""
    target = Path(output_path)
    if not isinstance(source, onnx.ModelProto):
        source = Path(source)
        if source.resolve() == target.resolve() or (
                target.exists() and source.exists() and os.path.samefile(source, target)):
            raise UsageError(f"{target}: output is the input model: choose another output path (-o)")
    if target.is_dir():
        raise UsageError(f"{target} is a directory: give a file path for -o")
    if target.exists() and not force:
        raise UsageError(f"{target} exists: pass --force to overwrite it")
    if not target.parent.is_dir():
        what = "is a file" if target.parent.exists() else "does not exist"
        raise OnnxSlimError(f"{target.parent}: output folder {what}: choose an existing folder")


def _external_tensors(model: onnx.ModelProto):
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor


def check_not_quantized(model: onnx.ModelProto) -> None:
    """Refuse models that are already quantized: pruning must happen on the float model."""
    found = sorted({node.op_type for node in model.graph.node if is_quantized_op(node.op_type)})
    if found:
        raise InvalidModelError(
            f"model is already quantized ({', '.join(found)}): prune the float model, then quantize"
        )


@dataclass(frozen=True)
class InputSpec:
    """One graph input: name, dims (int, or str for a symbolic dim, or None), numpy dtype."""

    name: str
    dims: tuple
    dtype: np.dtype

    def concrete_shape(self, default_batch: int = 1, default_dim: int = 64) -> tuple[int, ...]:
        """Dims with symbolic ones replaced: the first by `default_batch`, others by `default_dim`."""
        shape = []
        for axis, dim in enumerate(self.dims):
            if isinstance(dim, int) and dim > 0:
                shape.append(dim)
            else:
                shape.append(default_batch if axis == 0 else default_dim)
        return tuple(shape)


def graph_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The real inputs of the graph (initializers listed as inputs are left out)."""
    initializer_names = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializer_names:
            continue
        tensor_type = value.type.tensor_type
        dims = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(dim.dim_value)
            elif dim.HasField("dim_param"):
                dims.append(dim.dim_param)
            else:
                dims.append(None)
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        specs.append(InputSpec(value.name, tuple(dims), np.dtype(dtype)))
    return specs


def fixed_batch_size(specs: Sequence[InputSpec]) -> int | None:
    """The leading dim when every input fixes it to the same number, else None (free batch)."""
    leading = {spec.dims[0] if spec.dims else None for spec in specs}
    if len(leading) == 1:
        (dim,) = leading
        if isinstance(dim, int) and dim > 0:
            return dim
    return None


def leading_dim(feeds: Mapping[str, np.ndarray]) -> int:
    """Samples in a batch of feeds: the leading dimension of the first input (1 for a scalar)."""
    first = np.asarray(next(iter(feeds.values())))
    return int(first.shape[0]) if first.ndim else 1


def parse_input_shapes(entries) -> dict[str, list[int]]:
    """`NAME=1,3,224,224` entries -> {NAME: [1, 3, 224, 224]}."""
    shapes = {}
    for entry in entries or ():
        name, sep, dims = str(entry).partition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.replace("x", ",").split(",")]
        except ValueError:
            raise UsageError(f"bad input shape {entry!r}: expected NAME=D1,D2,... e.g. input=1,3,224,224") from None
        if any(dim < 1 for dim in shapes[name]):
            raise UsageError(f"bad input shape {entry!r}: every dim must be at least 1 (a concrete size)")
    return shapes


def check_input_shapes(
    model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None, option: str = "--input-shape"
) -> None:
    """Given shapes must name real inputs, be concrete (dims >= 1) and agree with their rank and static dims."""
    specs = {spec.name: spec for spec in graph_inputs(model)}
    for name, dims in (shapes or {}).items():
        if name not in specs:
            raise UsageError(f"{option} {name}: the model has no such input (inputs: {', '.join(specs)})")
        if any(int(dim) < 1 for dim in dims):
            raise UsageError(f"{option} {name}={','.join(map(str, dims))}: every dim must be at least 1")
        declared = specs[name].dims
        clash = len(dims) != len(declared) or any(
            isinstance(d, int) and d > 0 and d != given for d, given in zip(declared, dims))
        if clash:
            shown = ",".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in declared)
            raise UsageError(f"{option} {name}={','.join(map(str, dims))} contradicts the model's [{shown}]")


def random_inputs(
    model: onnx.ModelProto,
    *,
    batch: int = 1,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Random feeds shaped like the model's inputs (symbolic dims made concrete).

    `shapes` overrides the shape of named inputs. Floats are standard normal,
    integers small non-negative values (valid as token ids or indices).
    """
    rng = np.random.default_rng(seed)
    shapes = dict(shapes or {})
    feeds = {}
    for spec in graph_inputs(model):
        shape = tuple(shapes.get(spec.name) or spec.concrete_shape(default_batch=batch))
        if np.issubdtype(spec.dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype == np.bool_:
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
    return feeds
