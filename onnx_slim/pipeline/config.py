"""Options of the deployment step: `PipelineConfig`, config files (TOML, or YAML with PyYAML).

Options come from, in rising order of precedence: defaults, a config file, the
command line. A config named `<model>.slim.toml` next to the model is used when
no --config is given, so a model can carry its own pipeline settings.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from onnx_slim.errors import UsageError
from onnx_slim.ir.model import parse_input_shapes


@dataclass
class PipelineConfig:
    """Every option of `onnx-slim run`; the keys of a config file."""

    ratio: float | None = None
    target_macs: float | None = None
    criterion: str | None = None  # default: thinet with real calibration data, else l1
    global_ranking: bool = False
    allocate: str = "uniform"
    reconstruct: bool | None = None  # default: on with real calibration data
    round_to: int = 8  # kept channel counts SIMD kernels like (odd counts can be slower than more channels)
    min_channels: int = 1
    exclude: list = field(default_factory=list)
    prune_layernorm: bool = False
    quantize: str = "auto"  # auto | static | dynamic | none
    quant_format: str = "qdq"
    per_channel: bool | None = None
    calib: str | None = None
    calib_samples: int | None = None
    eval: str | None = None
    batch_size: int = 8
    input_size: list | None = None
    mean: list | None = None
    std: list | None = None
    layout: str = "nchw"
    channel_order: str = "rgb"
    input_shapes: dict = field(default_factory=dict)
    max_drop: float | None = None
    min_speedup: float | None = None
    runs: int = 50
    warmup: int = 5
    threads: int | None = None
    memory: bool = True  # measure each model's peak memory (one subprocess per model)
    seed: int = 0

    def with_defaults(self) -> PipelineConfig:
        """Fill the choices that depend on other options."""
        filled = PipelineConfig(**asdict(self))
        if filled.ratio is None and filled.target_macs is None:
            filled.target_macs = 0.5
        real_data = filled.calib is not None and filled.calib != "random"
        if filled.criterion is None:
            filled.criterion = "thinet" if real_data else "l1"
        if filled.reconstruct is None:
            filled.reconstruct = real_data
        if filled.quantize not in ("auto", "static", "dynamic", "none"):
            raise UsageError(f"quantize must be auto, static, dynamic or none, got {filled.quantize!r}")
        return filled


CONFIG_KEYS = {f.name for f in fields(PipelineConfig)}

# What each option must be: the check turns a config file's mistakes into usage errors.
_NUMBERS = {"ratio", "target_macs", "max_drop", "min_speedup"}
_INTEGERS = {"round_to", "min_channels", "batch_size", "runs", "warmup", "threads", "seed", "calib_samples"}
_FLAGS = {"global_ranking", "reconstruct", "per_channel", "memory", "prune_layernorm"}
_STRINGS = {"criterion", "allocate", "quantize", "quant_format", "calib", "eval", "layout", "channel_order"}


def config_from_mapping(options: dict) -> PipelineConfig:
    """A PipelineConfig from config-file and command-line values, checked and normalized."""
    unknown = set(options) - CONFIG_KEYS
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return PipelineConfig(**{key: value if value is None else _coerce(key, value) for key, value in options.items()})


def _coerce(key: str, value):
    if key in _NUMBERS and not isinstance(value, bool) and isinstance(value, (int, float)):
        return float(value)
    if key in _INTEGERS and not isinstance(value, bool) and isinstance(value, int):
        return value
    if key in _FLAGS and isinstance(value, bool):
        return value
    if key in _STRINGS and isinstance(value, str):
        return value
    if key == "exclude":
        return [value] if isinstance(value, str) else [str(v) for v in value]
    if key == "input_shapes":
        if isinstance(value, dict):
            return {str(k): [int(d) for d in v] for k, v in value.items()}
        return parse_input_shapes([value] if isinstance(value, str) else list(value))
    if key in ("input_size", "mean", "std"):
        parts = value.replace("x", ",").split(",") if isinstance(value, str) else list(value)
        try:
            return [(int if key == "input_size" else float)(part) for part in parts]
        except (TypeError, ValueError):
            pass
    raise UsageError(f"option {key.replace('_', '-')}: {value!r} is not {_KIND_WORDS.get(key, 'valid')}")


_KIND_WORDS = {
    **{key: "a number" for key in _NUMBERS}, **{key: "a whole number" for key in _INTEGERS},
    **{key: "true or false" for key in _FLAGS}, **{key: "a string" for key in _STRINGS},
    "input_size": "H,W", "mean": "a list of numbers", "std": "a list of numbers",
}
# Config files may use the CLI spellings too.
_ALIASES = {"global": "global_ranking", "input_shape": "input_shapes", "calib_path": "calib"}


def load_config(path: str | os.PathLike) -> dict:
    """Options from a TOML or YAML file; relative data paths are taken from the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: config file not found")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UsageError("YAML configs need PyYAML: pip install pyyaml (or use a .toml config)") from None
        data = yaml.safe_load(text) or {}
    else:
        data = _parse_toml(text, path)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a table of options")
    options = {}
    for key, value in data.items():
        name = _ALIASES.get(key.replace("-", "_"), key.replace("-", "_"))
        if name not in CONFIG_KEYS:
            raise UsageError(f"{path}: unknown option {key!r}; known: {', '.join(sorted(CONFIG_KEYS))}")
        options[name] = value
    for key in ("calib", "eval"):
        value = options.get(key)
        if isinstance(value, str) and value != "random" and not Path(value).is_absolute():
            options[key] = str(path.parent / value)
    return options


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
        raise UsageError(f"{path}: not valid TOML: {exc}") from None


def sibling_config(model_path: str | os.PathLike) -> Path | None:
    """`<model>.slim.toml` next to the model, if there is one."""
    path = Path(model_path)
    candidate = path.with_name(path.stem + ".slim.toml")
    return candidate if candidate.is_file() else None
