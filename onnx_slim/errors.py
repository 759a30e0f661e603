"""Exceptions of onnx_slim. Each message says what was wrong and what to do."""


class OnnxSlimError(Exception):
    """A failure the user can act on; the CLI prints it on one line and exits 1."""

    exit_code = 1


class UsageError(OnnxSlimError):
    """Options that contradict each other or are out of range (CLI exit code 2)."""

    exit_code = 2


class InvalidModelError(OnnxSlimError):
    """The input is not a usable ONNX model (missing, empty, truncated, quantized...)."""


class VerificationError(OnnxSlimError):
    """A written model failed the checker, onnxruntime, or the output-shape check."""


class QualityGateError(OnnxSlimError):
    """A pipeline quality gate (accuracy drop, speedup) failed (CLI exit code 3)."""

    exit_code = 3


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type): for one-line errors."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
