"""Loading, saving and describing ONNX models.

`load_model` turns every way a model can be broken into one `InvalidModelError`;
`save_model` writes through a scratch folder and renames into place (see
`onnx_slim.ir.files`), so a failure never leaves a half-written output. A model
whose weights live in external files is written the same way (`output_layout`),
and its size counts every file it reads (`model_file_size`).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterator, Mapping, Union

import onnx

from onnx_slim.errors import InvalidModelError, OnnxSlimError, UsageError, first_line
from onnx_slim.ir.files import check_replaceable, publish, same_file, scratch_folder
from onnx_slim.ir.progress import Reporter

ModelSource = Union[str, os.PathLike, onnx.ModelProto]
Progress = Reporter  # what stages take as `progress`: a plain message callable or an ir.progress.Progress

# Protobuf cannot serialize a single message over 2 GiB; past this size weights go
# to an external data file next to the model.
_EXTERNAL_DATA_THRESHOLD = 1_800_000_000
# Smaller tensors stay in the model file (onnx's own default when it writes external data).
_INLINE_LIMIT = 1024

# Ops that only quantized models hold; besides these, every QLinear* and *Integer op (see is_quantized_op).
QUANTIZED_OPS = frozenset({
    "MatMulNBits", "GatherBlockQuantized",  # int4 (and other n-bit) weights
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
        model = onnx.load(str(path), load_external_data=False)
        locations = external_locations(model)
        _remember_locations(path, locations)
    except Exception as exc:  # protobuf raises DecodeError, onnx raises others
        raise InvalidModelError(
            f"{path}: not a readable ONNX model (truncated or not ONNX?): {first_line(exc)}"
        ) from None
    try:
        if locations:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # the model file itself was fine
        raise InvalidModelError(
            f"{path}: its external data ({', '.join(sorted(set(locations.values())))}) is missing, short or outside "
            f"its folder: {first_line(exc)}"
        ) from None
    if not model.graph.node or not model.graph.output:
        raise InvalidModelError(f"{path}: not an ONNX model (no graph nodes or outputs)")
    return model


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    force: bool = True,
    external_data: Mapping[str, str] | None = None,
) -> Path:
    """Write `model` to `path` atomically; returns the path.

    The files are written in a scratch folder next to `path` and renamed into
    place: an existing file is replaced, or refused (UsageError) when `force` is
    false. `external_data` maps tensor names to data file names (see
    `output_layout`); without it the weights stay in the model file unless
    protobuf's 2 GiB limit sends them to `<name>.data`.
    """
    path = Path(path)
    _check_folder(path.parent)
    with scratch_folder(path.parent) as scratch:
        publish(write_model_files(model, scratch / path.name, external_data), path.parent, force=force)
    return path


def write_model_files(
    model: onnx.ModelProto, path: Path, external_data: Mapping[str, str] | None = None
) -> list[Path]:
    """Write `model` to the new file `path` and its data files beside it; returns them, the model last.

    The weights are moved out of `model` while it is serialized and put back
    afterwards, so `model` ends as it was without a second copy in memory.
    """
    data_file_of = _data_files(model, path, external_data)
    files: dict[str, object] = {}
    moved = []  # (tensor, its fields without the weights, the weights)
    try:
        for tensor in _all_tensors(model.graph):
            location = data_file_of(tensor)
            if location is None or not tensor.HasField("raw_data"):
                continue
            if location not in files:
                files[location] = open(path.parent / location, "xb")
            handle = files[location]
            raw = tensor.raw_data
            tensor.ClearField("raw_data")
            fields = onnx.TensorProto()
            fields.CopyFrom(tensor)
            moved.append((tensor, fields, raw))
            offset = handle.tell()
            handle.write(raw)
            _point_at(tensor, location, offset, len(raw))
        for handle in files.values():
            handle.close()
        with open(path, "xb") as handle:
            handle.write(model.SerializeToString())
    finally:
        for handle in files.values():
            handle.close()
        for tensor, fields, raw in moved:
            tensor.CopyFrom(fields)
            tensor.raw_data = raw
    return [*(path.parent / location for location in files), path]


def _point_at(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Make `tensor` refer to its bytes in a data file (what onnx.external_data_helper writes)."""
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)


def _data_files(model: onnx.ModelProto, path: Path, external_data: Mapping[str, str] | None):
    """tensor -> the data file it goes to, or None to keep it in the model file."""
    if external_data:
        # Tensors the input did not have (copies made by normalization) join the main data file.
        main = Counter(external_data.values()).most_common(1)[0][0]
        return lambda tensor: external_data.get(
            tensor.name, main if tensor.ByteSize() >= _INLINE_LIMIT else None)
    if model.ByteSize() > _EXTERNAL_DATA_THRESHOLD:
        return lambda tensor: path.name + ".data" if tensor.ByteSize() >= _INLINE_LIMIT else None
    return lambda tensor: None


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise OnnxSlimError(f"{folder}: output folder {what}: choose an existing folder")


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and attribute tensors of `graph` and of its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _all_tensors(subgraph)


def external_locations(model: onnx.ModelProto) -> dict[str, str]:
    """Tensor name -> data file, for the tensors of a model loaded without its external data."""
    locations = {}
    for tensor in _all_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations[tensor.name] = entry.value
    return locations


# external_locations of the model files read lately, by file signature: the checks before a
# load, the load and the size report after it then parse a file once between them.
_LOCATIONS_READ: dict[tuple, dict[str, str]] = {}
_LOCATIONS_KEPT = 16


def _signature(path: Path) -> tuple:
    status = path.stat()
    return str(path.resolve()), status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


def _remember_locations(path: Path, locations: dict[str, str]) -> None:
    _LOCATIONS_READ[_signature(path)] = dict(locations)
    while len(_LOCATIONS_READ) > _LOCATIONS_KEPT:
        del _LOCATIONS_READ[next(iter(_LOCATIONS_READ))]


def _input_locations(source: ModelSource) -> dict[str, str]:
    """external_locations of a model file (empty for a ModelProto or a file that does not load)."""
    if isinstance(source, onnx.ModelProto):
        return {}
    path = Path(source)
    try:
        known = _LOCATIONS_READ.get(_signature(path))
        if known is not None:
            return dict(known)
        header = onnx.load(str(path), load_external_data=False)
    except Exception:  # missing, a folder, not ONNX...: load_model reports it in its own words
        return {}
    locations = external_locations(header)
    _remember_locations(path, locations)
    return locations


def input_files(source: ModelSource, locations: Mapping[str, str] | None = None) -> list[Path]:
    """The files reading `source` touches: the model file and its external data files."""
    if isinstance(source, onnx.ModelProto):
        return []
    path = Path(source)
    locations = _input_locations(path) if locations is None else locations
    return [path, *(path.parent / location for location in dict.fromkeys(locations.values()))]


def model_file_size(path: str | os.PathLike) -> int:
    """Bytes on disk of a model file and of every external data file it reads."""
    return sum(file.stat().st_size for file in input_files(path))


def output_layout(
    source: ModelSource, output_path: str | os.PathLike, locations: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The input's external-data layout renamed for `output_path`: tensor name -> data file.

    Empty when the input keeps its weights inside. Each data file keeps its name
    with the input's name (or stem) replaced by the output's, or gets the
    output's stem in front (`weights.bin` -> `slim.weights.bin`), so an output
    beside its input never shares or replaces the input's files. `locations`
    (the input's `external_locations`) saves reading the input again.
    """
    if isinstance(source, onnx.ModelProto):
        return {}
    source, output = Path(source), Path(output_path)
    locations = _input_locations(source) if locations is None else locations
    return {name: _renamed(location, source, output) for name, location in locations.items()}


def _renamed(location: str, source: Path, output: Path) -> str:
    name = Path(location).name
    if name.startswith(source.name):
        return output.name + name[len(source.name):]
    if name.startswith(source.stem) and name[len(source.stem):][:1] in (".", "_", "-"):
        return output.stem + name[len(source.stem):]
    return f"{output.stem}.{name}"


def check_output_path(source: ModelSource, output_path: str | os.PathLike, force: bool) -> dict[str, str]:
    """Refuse to write over the input or a file it reads, over a folder, or over an existing file without force.

    The files checked are the output and the data files it will get; returns
    its layout (`output_layout`).
    """
    target = Path(output_path)
    locations = _input_locations(source)
    layout = output_layout(source, target, locations)
    data_files = [target.with_name(name) for name in dict.fromkeys(layout.values())]
    inputs = input_files(source, locations)
    for written in [target, *data_files, target.with_name(target.name + ".data")]:
        if any(same_file(written, path) for path in inputs):
            raise UsageError(f"{written}: output is the input model or one of its data files: "
                             "choose another output path (-o)")
    if target.is_dir():
        raise UsageError(f"{target} is a directory: give a file path for -o")
    for written in (target, *data_files):
        check_replaceable(written)
    if not force:
        for written in (target, *data_files):
            if written.exists() or written.is_symlink():
                raise UsageError(f"{written} exists: pass --force to overwrite it")
    _check_folder(target.parent)
    return layout


def check_not_quantized(model: onnx.ModelProto, advice: str = "prune the float model, then quantize") -> None:
    """Refuse models that are already quantized: pruning and quantization start from the float model."""
    found = sorted({node.op_type for node in model.graph.node if is_quantized_op(node.op_type)})
    if found:
        raise InvalidModelError(f"model is already quantized ({', '.join(found)}): {advice}")
