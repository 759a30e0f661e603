"""A model's inputs: their specs (names, dims, dtypes), concrete shapes for analysis, random feeds,
and the inputs the user fixes to one value (`--input-value`: a sample rate, a recurrent state at 0)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from onnx_slim.errors import UsageError

# The size a symbolic dim other than the batch takes when nothing says better (--input-shape, data).
DEFAULT_SYMBOLIC_SIZE = 64
InputShapes = Mapping[str, Sequence[int]]  # input name -> concrete dims, as --input-shape gives them
# input name -> the value every element is fed, as --input-value gives them: made-up inputs would
# otherwise give a control input a random value (silero-vad's `sr` of 0 or 1 takes its 8 kHz branch).
InputValues = Mapping[str, float]


@dataclass(frozen=True)
class InputSpec:
    """One graph input: name, dims (int, or str for a symbolic dim, or None), numpy dtype."""

    name: str
    dims: tuple
    dtype: np.dtype


def concrete_dims(
    specs: Sequence[InputSpec],
    overrides: Mapping[str, Sequence[int]] | None = None,
    default_batch: int = 1,
    default_dim: int = DEFAULT_SYMBOLIC_SIZE,
) -> dict[str, tuple[int, ...]]:
    """Concrete shapes of all inputs: `overrides` first; a symbolic dim takes the same size
    wherever its name appears (a recurrent state [2, batch, 128] beside an input [batch, time]:
    sizing each input alone gave the state a batch of 64 and the model could not run). A
    name seen on some input's first axis defaults to `default_batch`, any other to `default_dim`.
    A name used twice in one input (["?", 3, "?", "?"]) is a placeholder, not a shared size:
    its axes take the positional defaults."""
    overrides = dict(overrides or {})
    placeholders = {dim for spec in specs for dim in spec.dims
                    if isinstance(dim, str) and dim and spec.dims.count(dim) > 1}

    def named(dim) -> bool:
        return isinstance(dim, str) and bool(dim) and dim not in placeholders

    sizes: dict[str, int] = {}
    for spec in specs:  # what the given shapes say of each symbolic name
        for dim, given in zip(spec.dims, overrides.get(spec.name, ())):
            if named(dim):
                sizes.setdefault(dim, int(given))
    for spec in specs:
        if spec.dims and named(spec.dims[0]):
            sizes.setdefault(spec.dims[0], default_batch)
    shapes = {}
    for spec in specs:
        if spec.name in overrides:
            shapes[spec.name] = tuple(int(d) for d in overrides[spec.name])
            continue
        shape = []
        for axis, dim in enumerate(spec.dims):
            if isinstance(dim, int) and dim > 0:
                shape.append(dim)
            elif named(dim):
                shape.append(sizes.setdefault(dim, default_dim))
            else:
                shape.append(default_batch if axis == 0 else default_dim)
        shapes[spec.name] = tuple(shape)
    return shapes


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


def fixed_batch_size(specs: Sequence[InputSpec], values: InputValues | None = None) -> int | None:
    """The leading dim when every input fixes it to the same number, else None (free batch). Inputs
    in `values` (fixed by --input-value, a state [2, 1, 128]) hold no samples and do not count."""
    leading = {spec.dims[0] if spec.dims else None for spec in specs if spec.name not in (values or {})}
    if len(leading) == 1:
        (dim,) = leading
        if isinstance(dim, int) and dim > 0:
            return dim
    return None


def feeds_for(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`feeds` with each float input cast to the float type the model declares (e.g. float16 inputs)."""
    dtypes = {spec.name: spec.dtype for spec in graph_inputs(model)}
    return {name: value.astype(dtypes[name]) if name in dtypes and np.issubdtype(dtypes[name], np.floating)
            and value.dtype != dtypes[name] else value for name, value in feeds.items()}


def leading_dim(feeds: Mapping[str, np.ndarray]) -> int:
    """Samples in a batch of feeds: the leading dimension of the first input (1 for a scalar)."""
    first = np.asarray(next(iter(feeds.values())))
    return int(first.shape[0]) if first.ndim else 1


def parse_input_shapes(entries) -> dict[str, list[int]]:
    """`NAME=1,3,224,224` entries -> {NAME: [1, 3, 224, 224]}."""
    shapes = _parse_entries(entries, lambda dims: [int(d) for d in dims.replace("x", ",").split(",")],
                            "bad input shape {entry!r}: expected NAME=D1,D2,... e.g. input=1,3,224,224")
    for entry in entries or ():
        if any(dim < 1 for dim in shapes[str(entry).partition("=")[0]]):
            raise UsageError(f"bad input shape {entry!r}: every dim must be at least 1 (a concrete size)")
    return shapes


def parse_input_values(entries) -> dict[str, float]:
    """`NAME=NUMBER` entries -> {NAME: NUMBER}."""
    return _parse_entries(entries, _finite_number,
                          "bad input value {entry!r}: expected NAME=NUMBER (finite) e.g. sr=16000")


def _parse_entries(entries, parse, message: str) -> dict:
    """`NAME=TEXT` entries -> {NAME: parse(TEXT)}; `message` (formatted with the entry) when one is malformed."""
    parsed = {}
    for entry in entries or ():
        name, sep, text = str(entry).partition("=")
        try:
            if not sep or not name:
                raise ValueError
            value = parse(text)
        except ValueError:
            raise UsageError(message.format(entry=entry)) from None
        if name in parsed:
            raise UsageError(f"{entry!r}: {name} is given twice")
        parsed[name] = value
    return parsed


def _finite_number(text: str) -> float:
    number = float(text)
    if not np.isfinite(number):
        raise ValueError(text)
    return number


def check_input_values(model: onnx.ModelProto, values: InputValues | None) -> None:
    """Given values must name real inputs and fit their type (an integer input takes whole numbers)."""
    specs = {spec.name: spec for spec in graph_inputs(model)}
    for name, value in (values or {}).items():
        if name not in specs:
            raise UsageError(f"--input-value {name}: the model has no such input (inputs: {', '.join(specs)})")
        dtype = specs[name].dtype
        if not np.issubdtype(dtype, np.floating) and value != int(value):
            raise UsageError(f"--input-value {name}={value:g}: the input is {dtype}, give a whole number")
        if dtype == np.bool_:
            inside = value in (0, 1)
        elif np.issubdtype(dtype, np.floating):
            inside = abs(value) <= float(np.finfo(dtype).max)
        else:  # compared as Python ints: 2**63 - 1 as a float is 2**63, which int64 cannot hold
            inside = int(np.iinfo(dtype).min) <= int(value) <= int(np.iinfo(dtype).max)
        if not inside:  # numpy would cast it to inf or wrap it around
            raise UsageError(f"--input-value {name}={value:g}: out of range for the input's {dtype}")


def with_values(feeds: dict[str, np.ndarray], specs: Sequence[InputSpec], values: InputValues | None,
                shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, np.ndarray]:
    """`feeds` (made up or read from data) with each fixed input filled with its value, sized by
    `fixed_input_shapes` from the fed ones."""
    if not values:
        return feeds
    fed = {name: np.shape(value) for name, value in feeds.items() if name not in values}
    sized = fixed_input_shapes(specs, values, fed, shapes)
    filled = {**feeds, **{spec.name: np.full(sized[spec.name], values[spec.name], dtype=spec.dtype)
                          for spec in specs if spec.name in values}}
    return {spec.name: filled[spec.name] for spec in specs if spec.name in filled}


def fixed_input_shapes(specs: Sequence[InputSpec], values: InputValues, fed: Mapping[str, Sequence[int]],
                       shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, tuple[int, ...]]:
    """The shape of each fixed input beside inputs fed at `fed` shapes: as `shapes` (--input-shape)
    gives it, else the model's dims (a symbolic size shared with a fed input takes its size there),
    with the batch of the fed inputs on the axes that carry it: those named like a fed input's
    first axis (a state [2, batch, 128]) or, when the model names none of the open dims, the first
    open one (silero-vad's state [2, ?, 128], whose anonymous dims share no name with the input)."""
    batch = next((int(shape[0]) for shape in fed.values() if len(shape)), 1)
    given = {name: dims for name, dims in (shapes or {}).items() if name not in fed}
    dims = concrete_dims(specs, {**given, **fed}, default_batch=batch)
    batch_names = {spec.dims[0] for spec in specs if spec.name in fed and spec.dims and isinstance(spec.dims[0], str)}
    sized = {}
    for spec in specs:
        if spec.name not in values:
            continue
        shape = list(dims[spec.name])
        open_axes = [axis for axis, dim in enumerate(spec.dims) if not (isinstance(dim, int) and dim > 0)]
        named = [axis for axis in open_axes if isinstance(spec.dims[axis], str) and spec.dims[axis]]
        batch_axes = [axis for axis in named if spec.dims[axis] in batch_names] if named else open_axes[:1]
        for axis in batch_axes:
            if axis < len(shape):
                shape[axis] = batch
        sized[spec.name] = tuple(shape)
    return sized


def random_scalars_hint(model: onnx.ModelProto, values: InputValues | None) -> str:
    """Why made-up feeds can fail at sizes the model runs at: a scalar input that no --input-value
    fixes got a random value (silero-vad's sample rate `sr`: 0 or 1 takes its 8 kHz branch). "" if none."""
    names = [spec.name for spec in graph_inputs(model) if not spec.dims and spec.name not in (values or {})]
    if not names:
        return ""
    return (f"; the scalar input{'s' if len(names) > 1 else ''} {', '.join(names)} got random values, which can "
            f"choose a path these sizes do not fit (a sample rate, a mode): give "
            + " ".join(f"--input-value {name}=NUMBER" for name in names))


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


def shapes_from_samples(
    model: onnx.ModelProto, sample_shapes: Mapping[str, Sequence[int]], given: Mapping[str, Sequence[int]] | None
) -> dict[str, tuple[int, ...]]:
    """`given` input shapes, completed from the shapes of the data's samples (`[N, ...]`, e.g. a
    calibration set's): an input not given takes its samples' sizes on every axis but the batch,
    which keeps the model's static size, or a given input's size for a shared symbolic name, or 1.
    So a detector with symbolic height and width is
    analyzed, costed and timed at the size of its data, not at a default (the data must fit the
    model: a contradiction is a UsageError, as for --input-shape)."""
    shapes = {name: tuple(int(d) for d in dims) for name, dims in (given or {}).items()}
    specs = {spec.name: spec for spec in graph_inputs(model)}
    batches = concrete_dims(list(specs.values()), shapes)  # a symbolic batch shared with a given input agrees
    derived = {}
    for name, sample in sample_shapes.items():
        if name in specs and name not in shapes and len(sample) == len(specs[name].dims) and sample:
            derived[name] = (batches[name][0], *map(int, sample[1:]))
    check_input_shapes(model, derived, option="the calibration data's sample shape")
    return {**shapes, **derived}


def shapes_at_batch(model: onnx.ModelProto, shapes: InputShapes | None, batch: int) -> dict[str, tuple[int, ...]] | None:
    """`shapes` (NAME -> dims, as --input-shape gives them) at another batch: every axis named by a
    symbol that is the first axis of an input of rank 2 or more (the batch) takes `batch`; the user's
    sequence length or image size stays."""
    if not shapes:
        return None
    specs = {spec.name: spec for spec in graph_inputs(model)}
    batch_symbols = {spec.dims[0] for spec in specs.values()
                     if len(spec.dims) >= 2 and isinstance(spec.dims[0], str) and spec.dims[0]}
    sized = {}
    for name, dims in shapes.items():
        symbols = specs[name].dims if name in specs else ()
        sized[name] = tuple(batch if axis < len(symbols) and symbols[axis] in batch_symbols else int(size)
                            for axis, size in enumerate(dims))
    return sized


def random_inputs(
    model: onnx.ModelProto,
    *,
    batch: int = 1,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
    values: InputValues | None = None,
) -> dict[str, np.ndarray]:
    """Random feeds shaped like the model's inputs (symbolic dims made concrete).

    `shapes` overrides the shape of named inputs. Floats are standard normal,
    integers small non-negative values (valid as token ids or indices); an input in
    `values` is filled with its value instead.
    """
    rng = np.random.default_rng(seed)
    specs = graph_inputs(model)
    concrete = concrete_dims(specs, shapes, default_batch=batch)
    feeds = {}
    for spec in specs:
        shape = concrete[spec.name]
        if np.issubdtype(spec.dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype == np.bool_:
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
    return with_values(feeds, specs, values, shapes)


@dataclass(frozen=True)
class MadeUpInputs:
    """How to make up feeds where there is no data: the sizes --input-shape gives and the values
    --input-value fixes, handed on as one."""

    shapes: InputShapes | None = None
    values: InputValues | None = None

    def feeds(self, model: onnx.ModelProto, batch: int | None = 1, seed: int = 0) -> dict[str, np.ndarray]:
        """Random feeds at `batch` (the given sizes' batch axes changed to it), or at the sizes as
        given, batch included, when `batch` is None."""
        shapes = self.shapes if batch is None else shapes_at_batch(model, self.shapes, batch)
        return random_inputs(model, batch=batch or 1, seed=seed, shapes=shapes, values=self.values)
