"""Options of the deployment step: `PipelineConfig`, config files (TOML, or YAML with PyYAML).

Options come from, in rising order of precedence: defaults, a config file, the
command line. A config named `<model>.slim.toml` next to the model is used when
no --config is given, so a model can carry its own pipeline settings.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from onnx_slim.errors import UsageError, first_line
from onnx_slim.ir.inputs import parse_input_shapes, parse_input_values
from onnx_slim.pipeline.candidates import default_allocation, default_criterion

QUANTIZE_CHOICES = ("auto", "static", "dynamic", "int4", "fp16", "none")


@dataclass
class PipelineConfig:
    """Every option of `onnx-slim run`; the keys of a config file."""

    ratio: float | None = None
    target_macs: float | str | None = None  # a fraction, or "auto": the smallest model within max_drop on eval
    target_latency: float | None = None  # ms: prune until the pruned model's measured p50 is in [0.95, 1] x this
    criterion: str | None = None  # default: thinet with real calibration data, else l1
    global_ranking: bool = False
    allocate: str | None = None  # default: auto with real calibration data and a MACs fraction, else uniform
    reconstruct: bool | None = None  # default: on with real calibration data
    correct_statistics: bool = False  # match later layers' per-channel output statistics (needs calib)
    # Kept channel counts are multiples of this; "auto" times 1, 8, 16 and 32 on the session and keeps the
    # fastest (odd counts can run slower than more channels, and the best multiple depends on the hardware).
    round_to: int | str = "auto"
    min_channels: int = 1
    exclude: list = field(default_factory=list)
    prune_layernorm: bool = False
    grouped_conv: str = "channels"  # or "groups": grouped convs lose whole groups
    quantize: str = "auto"  # auto | static | dynamic | int4 | fp16 | none
    quant_format: str = "qdq"
    per_channel: bool | None = None
    max_layer_error: float | None = None  # int8 of MatMul models: see quantize_model (None: its default)
    measure_quantized: bool = True  # time int8 against float and, with quantize auto, keep the faster
    cleanup: bool = True  # the clean-up pass on the pruned and quantized models
    calib: str | None = None
    calib_samples: int | None = None
    eval: str | None = None
    batch_size: int | None = None  # None: each stage's own (pipeline.candidates)
    input_size: list | None = None
    mean: list | None = None
    std: list | None = None
    layout: str = "nchw"
    channel_order: str = "rgb"
    input_shapes: dict = field(default_factory=dict)
    input_values: dict = field(default_factory=dict)  # input name -> the value it is always fed (--input-value)
    max_drop: float | None = None
    min_speedup: float | None = None
    runs: int = 50
    warmup: int = 5
    threads: int | None = None
    providers: list = field(default_factory=list)  # execution providers in preference order (ir.providers)
    provider_options: list = field(default_factory=list)  # "[PROVIDER:]KEY=VALUE" strings
    memory: bool = True  # measure each model's peak memory (one subprocess per model)
    seed: int = 0

    def with_defaults(self) -> PipelineConfig:
        """Fill the choices that depend on other options."""
        filled = PipelineConfig(**asdict(self))
        given = [name for name in ("ratio", "target_macs", "target_latency") if getattr(filled, name) is not None]
        if len(given) > 1:
            raise UsageError(f"{' and '.join(_option_name(name) for name in given)} are alternatives: give one")
        if not given:
            filled.target_macs = 0.5
        if filled.target_macs == "auto" and (filled.max_drop is None or filled.eval is None):
            raise UsageError("target-macs auto needs max-drop (the largest drop allowed, in points) and eval "
                             "(held-out data to measure each candidate on)")
        real_data = filled.calib is not None and filled.calib != "random"
        if filled.grouped_conv not in ("channels", "groups"):
            raise UsageError(f"grouped-conv must be channels or groups, got {filled.grouped_conv!r}")
        if filled.criterion is None:
            filled.criterion = default_criterion(real_data)
        if filled.reconstruct is None:
            filled.reconstruct = real_data
        if filled.allocate is None:
            filled.allocate = default_allocation(real_data, filled.target_macs)
        if filled.quantize not in QUANTIZE_CHOICES:
            raise UsageError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got {filled.quantize!r}")
        return filled


CONFIG_KEYS = {f.name for f in fields(PipelineConfig)}

# What each option must be: the check turns a config file's mistakes into usage errors.
_NUMBERS = {"ratio", "target_macs", "target_latency", "max_drop", "min_speedup", "max_layer_error"}
_AUTO = {"target_macs", "round_to"}  # may also be "auto": measured for the model
_INTEGERS = {"round_to", "min_channels", "batch_size", "runs", "warmup", "threads", "seed", "calib_samples"}
_FLAGS = {"global_ranking", "reconstruct", "correct_statistics", "per_channel", "memory", "prune_layernorm",
          "measure_quantized", "cleanup"}
_STRINGS = {"grouped_conv", "criterion", "allocate", "quantize", "quant_format", "calib", "eval", "layout", "channel_order"}


def over_config(file_options: dict, command_line: dict, defaults: dict) -> dict:
    """A config file's options (checked, `load_config`) with the ones given on the command line over
    them, and the command line's defaults where the file is silent. --ratio, --target-macs and
    --target-latency are one choice: any on the command line replaces the file's. --input-shape and
    --input-value replace the file's entries name by name (`sr` given does not drop the file's `state`)."""
    merged = dict(file_options)
    targets = {"ratio", "target_macs", "target_latency"}
    if targets & set(command_line):
        for name in targets:
            merged.pop(name, None)
    for name, value in command_line.items():
        if name in ("input_shapes", "input_values") and merged.get(name):
            value = {**_coerce(name, merged[name]), **_coerce(name, value)}
        merged[name] = value
    for name, value in defaults.items():
        merged.setdefault(name, value)
    return merged


def config_from_mapping(options: dict) -> PipelineConfig:
    """A PipelineConfig from config-file and command-line values, checked and normalized.

    A None value (an option not given, or a YAML key without a value) keeps the default.
    """
    unknown = set(options) - CONFIG_KEYS
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return PipelineConfig(**{key: _coerce(key, value) for key, value in options.items() if value is not None})


def _coerce(key: str, value):
    """`value` checked against what option `key` must be, in its normal form."""
    if key in _AUTO and value == "auto":
        return value
    if key in _NUMBERS and not isinstance(value, bool) and isinstance(value, (int, float)):
        return _checked_number(key, float(value))
    if key in _INTEGERS and not isinstance(value, bool) and isinstance(value, int):
        return value
    if key in _FLAGS and isinstance(value, bool):
        return value
    if key in _STRINGS and isinstance(value, str):
        return value
    if key in ("exclude", "providers", "provider_options"):
        patterns = [value] if isinstance(value, str) else value
        if isinstance(patterns, (list, tuple)) and all(isinstance(p, str) for p in patterns):
            return list(patterns)
    if key == "input_shapes":
        shapes = _input_shapes(value)
        if shapes is not None:
            return shapes
    if key == "input_values":
        values = _input_values(value)
        if values is not None:
            return values
    if key in ("input_size", "mean", "std"):
        values = _number_list(key, value)
        if values is not None:
            return values
    raise UsageError(f"option {_option_name(key)}: {value!r} is not {_KIND_WORDS.get(key, 'valid')}")


def _checked_number(key: str, value: float) -> float:
    # nan passes every comparison a gate makes, so it would silently disable the gate.
    if not math.isfinite(value):
        raise UsageError(f"option {_option_name(key)}: {value} is not a finite number")
    if key in _NON_NEGATIVE and value < 0:
        raise UsageError(f"option {_option_name(key)}: {value} is negative")
    return value


def _input_shapes(value) -> dict | None:
    """{name: [dims]} from a table of dims (lists or "1,3,224,224"), or NAME=DIMS strings; None if neither."""
    if isinstance(value, dict):
        entries = []
        for name, dims in value.items():
            if isinstance(dims, str):
                entries.append(f"{name}={dims}")
            elif isinstance(dims, (list, tuple)) and all(_is_int(d) for d in dims):
                entries.append(f"{name}={','.join(str(d) for d in dims)}")
            else:
                return None
        return parse_input_shapes(entries)
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)) and all(isinstance(entry, str) for entry in value):
        return parse_input_shapes(value)
    return None


def _input_values(value) -> dict | None:
    """{name: number} from a table of numbers, or NAME=NUMBER strings; None if neither."""
    if isinstance(value, dict):
        if all(isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number)
               for number in value.values()):
            return {name: float(number) for name, number in value.items()}
        return None
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)) and all(isinstance(entry, str) for entry in value):
        return parse_input_values(value)
    return None


def _number_list(key: str, value) -> list | None:
    """input_size/mean/std as a list ("224,224", "224x224", [0.5, 0.5, 0.5], or one number)."""
    if isinstance(value, str):
        parts = value.replace("x", ",").split(",")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        parts = [value, value] if key == "input_size" else [value]
    else:
        return None
    if any(isinstance(part, bool) for part in parts):
        return None
    try:
        return [(int if key == "input_size" else float)(part) for part in parts]
    except (TypeError, ValueError):
        return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _option_name(key: str) -> str:
    return key.replace("_", "-")


_NON_NEGATIVE = {"max_drop", "min_speedup", "target_latency", "max_layer_error"}
_KIND_WORDS = {
    **{key: "a number" for key in _NUMBERS}, **{key: "a whole number" for key in _INTEGERS},
    **{key: "true or false" for key in _FLAGS}, **{key: "a string" for key in _STRINGS},
    "exclude": "a node-name pattern or a list of them",
    "providers": "a provider name or a list of them", "provider_options": "KEY=VALUE or a list of them", "input_shapes": "NAME=DIMS or a table of NAME = [DIMS]",
    "input_values": "NAME=NUMBER or a table of NAME = NUMBER",
    "input_size": "H,W", "mean": "a list of numbers", "std": "a list of numbers",
    "target_macs": "a number or 'auto'", "round_to": "a whole number or 'auto'",
}
# Config files may use the CLI spellings too.
_ALIASES = {"global": "global_ranking", "input_shape": "input_shapes", "input_value": "input_values", "calib_path": "calib",
            "provider": "providers", "provider_option": "provider_options"}


def load_config(path: str | os.PathLike) -> dict:
    """Options from a TOML or YAML file, checked; relative data paths are taken from the file's folder.

    Every mistake in the file is a UsageError starting with "config PATH: ".
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config {path}: file not found")
    text = _read_text(path)
    data = _parse_yaml(text, path) if path.suffix in (".yaml", ".yml") else _parse_toml(text, path)
    if data is None:
        data = {}  # an empty YAML file
    if not isinstance(data, dict):
        raise UsageError(f"config {path}: expected a table of options")
    options = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise UsageError(f"config {path}: option names must be text, got {key!r}")
        name = _ALIASES.get(key.replace("-", "_"), key.replace("-", "_"))
        if name not in CONFIG_KEYS:
            raise UsageError(f"config {path}: unknown option {key!r}; known: {', '.join(sorted(CONFIG_KEYS))}")
        try:
            options[name] = None if value is None else _coerce(name, value)
        except UsageError as exc:
            raise UsageError(f"config {path}: {exc}") from None
    for key in ("calib", "eval"):
        value = options.get(key)
        if isinstance(value, str) and value != "random" and not Path(value).is_absolute():
            options[key] = str(path.parent / value)
    return options


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"config {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"config {path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None


def _parse_yaml(text: str, path: Path):
    try:
        import yaml
    except ImportError:
        raise UsageError("YAML configs need PyYAML: pip install pyyaml (or use a .toml config)") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # PyYAML's messages span several lines (context, the line, a caret): keep the position and the problem.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or first_line(exc)
        raise UsageError(f"config {path}: invalid YAML{where}: {problem}") from None


def _parse_toml(text: str, path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise UsageError("TOML configs need Python 3.11+ or `pip install tomli`") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config {path}: invalid TOML: {first_line(exc)}") from None


def sibling_config(model_path: str | os.PathLike) -> Path | None:
    """`<model>.slim.toml` next to the model, if there is one."""
    path = Path(model_path)
    candidate = path.with_name(path.stem + ".slim.toml")
    return candidate if candidate.is_file() else None
