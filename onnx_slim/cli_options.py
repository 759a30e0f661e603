"""What the commands of `cli.py` share: options, the console, reading data, reporting a failed write.

Light imports only, like `cli.py`: the heavy modules load once the signal handlers are set.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from contextlib import contextmanager

import click

from onnx_slim.errors import OnnxSlimError, UsageError


class Console:
    """Progress on stderr (unless quiet); results on stdout.

    Implements `ir.progress.Progress`: `say` prints a timestamped line; `steps` draws a
    bar with count and time left when stderr is a terminal and `bars` is on (off for
    --json), and prints nothing more otherwise, so logs of pipelines keep their lines.
    """

    def __init__(self, quiet: bool = False, bars: bool = True, stream=None) -> None:
        self.quiet = quiet
        self.started = time.perf_counter()
        self.stream = stream  # None: stderr at the time of writing (tests swap it)
        self.bars = bars and not quiet and _is_terminal(stream if stream is not None else sys.stderr)
        self._bar = None  # the bar on screen, if any

    def say(self, message: str) -> None:
        if self.quiet:
            return
        if self._bar is not None:  # a line in the middle of a bar: clear the bar's line, redraw it after
            click.echo("\r\033[K", file=self.stream, err=True, nl=False)
        click.echo(f"[{time.perf_counter() - self.started:6.1f}s] {message}", file=self.stream, err=True)
        if self._bar is not None:
            self._bar.render_progress()

    progress = say
    __call__ = say

    @contextmanager
    def steps(self, label: str, total: int):
        if not self.bars or total < 1 or self._bar is not None:  # one bar at a time: an inner loop goes uncounted
            yield _ignore_steps
            return
        stream = self.stream if self.stream is not None else sys.stderr
        with click.progressbar(length=total, label=label, file=stream, show_eta=True, show_pos=True) as bar:
            self._bar = bar
            try:
                yield lambda steps=1: bar.update(steps)
            finally:
                self._bar = None


def _ignore_steps(steps: int = 1) -> None:
    pass


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class CriterionOption(click.Option):
    """`--criterion`, whose help lists the criteria registry when help is shown (the registry
    imports numpy and onnx, which must not load before the signal handlers)."""

    def get_help_record(self, ctx):
        from onnx_slim.criteria import criteria_help

        self.help = self.help.format(criteria=criteria_help())
        return super().get_help_record(ctx)


class NumberOrAuto(click.ParamType):
    """A number of `kind`, or the word `auto` (a value measured for you)."""

    def __init__(self, kind=float) -> None:
        self.kind = kind
        self.name = "auto|" + ("integer" if kind is int else "number")

    def convert(self, value, param, ctx):
        if value == "auto" or (isinstance(value, self.kind) and not isinstance(value, bool)):
            return value
        try:
            return self.kind(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither {'a whole number' if self.kind is int else 'a number'} nor 'auto'",
                      param, ctx)


grouped_conv_option = click.option(
    "--grouped-conv", type=click.Choice(["channels", "groups"]), default="channels", show_default=True,
    help="Grouped convs (1 < group < C): remove the same channels from every group, or whole groups.",
)

layernorm_option = click.option(
    "--prune-layernorm", is_flag=True,
    help="Also prune groups a LayerNormalization (or a mean over the channels) spans (not lossless).",
)

value_option = click.option(
    "--input-value", "input_values", multiple=True, metavar="NAME=NUMBER",
    help="Feed this input NUMBER (every element) wherever inputs are made up or read from data: a control "
         "input such as a sample rate (sr=16000), a recurrent state (state=0). Repeatable.",
)


def parse_inputs(input_shapes, input_values) -> dict:
    """--input-shape and --input-value entries as the `input_shapes` and `input_values` keywords stages take."""
    from onnx_slim.ir.inputs import parse_input_shapes, parse_input_values

    return {"input_shapes": parse_input_shapes(input_shapes), "input_values": parse_input_values(input_values)}


def shape_option(command):
    """--input-shape, and --input-value: what to feed the inputs a model leaves open."""
    return click.option(
        "--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS",
        help="Concrete shape for an input with symbolic dims, e.g. input=1,3,224,224 (repeatable).",
    )(value_option(command))

# `run --quantize`: the modes of `quantize --mode`, or none (pipeline/config.py checks config files the same way).
QUANTIZE_CHOICES = ("auto", "static", "dynamic", "int4", "fp16", "none")
# The allocations of pipeline.candidates (ALLOCATIONS and "auto"), spelled out: the CLI imports no pipeline at start-up.
ALLOCATE_OPTION = click.option(
    "--allocate", type=click.Choice(["uniform", "interior", "sensitivity", "auto"]),
    help="uniform: one ratio for every group; interior: the same, sparing residual streams; sensitivity: per-group "
         "ratios from measured sensitivity; auto: build each, keep the closest to the original on held-out "
         "--calib samples (default with --calib data and --target-macs F; else uniform).",
)

CLEANUP_OPTION = click.option(
    "--cleanup/--no-cleanup", default=True, show_default=True,
    help="Clean the written model: bypass Identity chains, fold constant subgraphs, merge duplicated constants.",
)


def calibration_options(function):
    """--calib and the options that say how to read it (shared by several commands)."""
    options = [
        click.option("--calib", metavar="PATH", help="Calibration data: .npz, folder of .npy or images, 'synthetic' (dead-leaves images) or 'random'."),
        click.option("--calib-samples", type=int, help="Use only the first N calibration samples."),
        click.option("--batch-size", type=int, default=None,
                     help="Samples per run of every pass over the data (default: 8 for calibration, 32 for "
                          "evaluation; give 1 for a model that only runs at batch 1)."),
        click.option("--input-size", metavar="H,W", help="Image folders: resize to this size (default: the model's); 'synthetic': the size to make."),
        click.option("--mean", metavar="R,G,B", help="Image folders: per-channel mean, 0..1 units."),
        click.option("--std", metavar="R,G,B", help="Image folders: per-channel std, 0..1 units."),
        click.option("--layout", type=click.Choice(["nchw", "nhwc"]), default="nchw", show_default=True),
        click.option("--channel-order", type=click.Choice(["rgb", "bgr"]), default="rgb", show_default=True),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def provider_options(function):
    """--provider and --provider-option (every command that opens onnxruntime sessions)."""
    options = [
        click.option("--provider", "providers", multiple=True, metavar="NAME",
                     help="onnxruntime execution provider, in preference order (repeatable or a comma list): "
                          "cpu, cuda, tensorrt, openvino, dml, coreml, rocm... or the full name; "
                          "the CPU is always the last fallback."),
        click.option("--provider-option", "provider_options", multiple=True, metavar="[PROVIDER:]KEY=VALUE",
                     help="An option of a provider (default: the first), e.g. cuda:device_id=1 (repeatable)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def session_spec(threads=None, providers=(), provider_options=()):
    """The SessionSpec every stage of a command runs with; an unavailable provider is a usage error."""
    from onnx_slim.ir.runtime import SessionSpec

    return SessionSpec.of(threads, providers, provider_options)


def load_data(path, model, params, samples=None):
    """A CalibrationSet from CLI options, or None without a path."""
    if not path:
        return None
    from onnx_slim.data.calibration import load_calibration

    return load_calibration(
        path, model, samples=samples, input_size=floats(params.get("input_size"), int),
        mean=floats(params.get("mean")), std=floats(params.get("std")),
        layout=params.get("layout", "nchw"), channel_order=params.get("channel_order", "rgb"),
        seed=params.get("seed", 0), input_shapes=params.get("input_shapes"), input_values=params.get("input_values"),
    )


def floats(text, kind=float):
    if not text:
        return None
    try:
        return [kind(part) for part in text.replace("x", ",").split(",")]
    except ValueError:
        raise UsageError(f"expected comma-separated numbers, got {text!r}") from None


# Errors of writing the output that the user can fix: a read-only folder, a full disk or quota, a
# folder that takes no new files (/proc: the scratch folder's mkdir fails with ENOENT, or, made in
# its parent, cannot be moved into it: EXDEV).
_WRITE_ERRORS = {
    errno.EACCES: "choose a writable folder", errno.EPERM: "choose a writable folder",
    errno.EROFS: "choose a writable folder", errno.ENOENT: "choose a writable folder",
    errno.EXDEV: "choose a writable folder",
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space", errno.EFBIG: "free some space",
}


@contextmanager
def writing_output(output):
    """Report a failed write as one line naming the output, not the scratch file it failed on."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _WRITE_ERRORS:
            raise
        reason = (exc.strerror or os.strerror(exc.errno)).lower()
        raise OnnxSlimError(f"cannot write {output}: {reason}; {_WRITE_ERRORS[exc.errno]}") from None


class _LogFormat(logging.Formatter):
    """Log records as the CLI's own lines read ("warning: ..."); --debug adds the logger's name."""

    def __init__(self, debug: bool) -> None:
        super().__init__("%(message)s")
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        where = f" {record.name}" if self.debug else ""
        return f"{record.levelname.lower()}{where}: {super().format(record)}"


def configure_logging(debug: bool) -> None:
    """Warnings and errors on stderr (everything with `debug`), one style for all of them."""
    handler = logging.StreamHandler()
    handler.setFormatter(_LogFormat(debug))
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, handlers=[handler])
