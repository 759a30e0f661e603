"""onnxruntime sessions, created one way everywhere from a `SessionSpec`, and quiet logging."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import onnx
import onnxruntime as ort

from onnx_slim.errors import OnnxSlimError, UsageError, first_line
from onnx_slim.ir.inputs import DEFAULT_SYMBOLIC_SIZE
from onnx_slim.ir.providers import CPU, DEVICE_OF, parse_provider_options, provider_arguments, resolve_providers

_ORT_WARNING, _ORT_FATAL = 2, 4  # onnxruntime's log severities
# Every onnxruntime error reaches us as an exception that becomes our own one-line message: its C++
# log would print the same error again, in colour, before it (and for failures that are expected,
# such as measuring shapes at guessed sizes). --debug shows its warnings and errors.
_session_severity = _ORT_FATAL
_ORT_PACKAGE = os.path.dirname(ort.__file__)


def quiet_onnxruntime_logs(verbose: bool = False) -> None:
    """Keep onnxruntime's log quiet (warnings and errors when `verbose`): its C++ log and its Python quantization tools.

    Sessions set their own severity (see `create_session`), but the sessions the
    quantizer and its pre-processing open use the process-wide default logger,
    and `onnxruntime.quantization` warns through the root Python logger (e.g.
    "Axis 1 is out-of-range for weight ..."), which a logger name cannot select.
    """
    global _session_severity
    _session_severity = _ORT_WARNING if verbose else _ORT_FATAL
    ort.set_default_logger_severity(_session_severity)
    logging.getLogger("onnxruntime").setLevel(logging.NOTSET if verbose else logging.ERROR)
    root = logging.getLogger()
    root.removeFilter(_ONNXRUNTIME_FILTER)
    if not verbose:
        root.addFilter(_ONNXRUNTIME_FILTER)


class _BelowErrorFromOnnxruntime(logging.Filter):
    """Drops records below ERROR that onnxruntime's own Python files log straight to the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not record.pathname.startswith(_ORT_PACKAGE)


_ONNXRUNTIME_FILTER = _BelowErrorFromOnnxruntime()


@dataclass(frozen=True)
class SessionSpec:
    """How an onnxruntime session is made: threads, execution providers, graph optimizations.

    Built once from the command line or a config and handed to every stage that
    runs the model (calibration passes, the masked model, evaluation, bench), so
    they all measure the same thing.
    """

    threads: int | None = None  # intra-op threads; None lets onnxruntime choose
    providers: tuple[str, ...] = (CPU,)  # onnxruntime's names, in preference order (see ir.providers)
    optimize: bool = True  # False skips graph optimizations: faster to create, for one-off checks
    provider_options: tuple = ()  # ((provider, ((key, value), ...)), ...), as ir.providers parses them

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be at least 1, got {self.threads}")

    @classmethod
    def of(cls, threads: int | None = None, providers=None, provider_options=None) -> SessionSpec:
        """A spec from command-line or config values: provider names short or full, checked
        against this onnxruntime; `provider_options` as `[PROVIDER:]KEY=VALUE` strings."""
        resolved = resolve_providers(providers)
        return cls(threads, resolved, provider_options=parse_provider_options(provider_options, resolved))

    @property
    def device(self) -> tuple[str, int] | None:
        """(OrtValue device name, device id) when the preferred provider runs on a device
        whose memory inputs can be bound to; None for the CPU and providers without one."""
        name = DEVICE_OF.get(self.providers[0])
        if name is None:
            return None
        device_id = dict(dict(self.provider_options).get(self.providers[0], ())).get("device_id", "0")
        if not str(device_id).isdigit():
            raise UsageError(f"provider option device_id must be a whole number, got {device_id!r}")
        return name, int(device_id)

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.log_severity_level = _session_severity
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        if not self.optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return options


CHECK = SessionSpec(optimize=False)  # one-off verification runs


def create_session(
    model: onnx.ModelProto | str | os.PathLike | bytes, spec: SessionSpec = SessionSpec()
) -> ort.InferenceSession:
    """A session for a model given as a path, serialized bytes or a ModelProto."""
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, os.PathLike):
        model = os.fspath(model)
    try:
        providers = provider_arguments(spec.providers, {name: dict(pairs) for name, pairs in spec.provider_options})
        session = ort.InferenceSession(model, spec.session_options(), providers=providers)
    except Exception as exc:
        raise OnnxSlimError(f"onnxruntime cannot load the model: {first_line(exc)}") from None
    # A GPU build lists CUDA as available even where its libraries are missing; the session then
    # quietly runs on the CPU, and every figure would be the CPU's under the GPU's name. (A provider
    # this build does not have at all is refused earlier, by the command line's check.)
    available = ort.get_available_providers()
    missing = [name for name in spec.providers if name in available and name not in session.get_providers()]
    if missing:
        raise OnnxSlimError(f"onnxruntime could not start {', '.join(missing)} (the session has "
                            f"{', '.join(session.get_providers())}): check its libraries (CUDA, cuDNN, TensorRT "
                            f"versions); `onnx-slim --debug` shows onnxruntime's log")
    return session


def run_session(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run and return the outputs by name."""
    names = [output.name for output in session.get_outputs()]
    try:
        values = session.run(names, dict(feeds))
    except Exception as exc:
        error = first_line(exc)
        raise OnnxSlimError(f"onnxruntime failed to run the model: {error}{_guessed_sizes_hint(session, feeds, error)}") \
            from None
    return dict(zip(names, values))


def _guessed_sizes_hint(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray], error: str) -> str:
    """A hint when a shape error follows feeds whose symbolic size other than the batch is the default
    guess: a raw audio input [batch, samples] of 64 samples shrinks to nothing in a conv front end."""
    if "shape" not in error.lower() and "dimension" not in error.lower():
        return ""
    guessed = [
        f"{spec.name}={','.join(str(d) for d in np.shape(feeds[spec.name]))}" for spec in session.get_inputs()
        if spec.name in feeds and any(
            not isinstance(dim, int) and axis > 0 and axis < np.ndim(feeds[spec.name])
            and np.shape(feeds[spec.name])[axis] == DEFAULT_SYMBOLIC_SIZE
            for axis, dim in enumerate(spec.shape))
    ]
    if guessed:
        return (f" (symbolic sizes were guessed: {' '.join(guessed)}; give the real ones with --input-shape NAME=DIMS "
                f"or real data with --calib)")
    batches = {np.shape(feeds[spec.name])[0] for spec in session.get_inputs()
               if spec.name in feeds and np.ndim(feeds[spec.name]) and spec.shape
               and not isinstance(spec.shape[0], int)}
    if len(batches) == 1 and max(batches) > 1:
        # An export can declare a symbolic batch yet fix the traced one inside (a view to [1, ...]).
        return f" (at a batch of {max(batches)}: if the model only runs at batch 1, give --batch-size 1)"
    return ""
