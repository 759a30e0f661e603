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


class RuntimeCrash(OnnxSlimError):
    """onnxruntime crashed (a signal, not an exception) running a model, in a child process (`ir.isolated`)."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message (or its type) on one line, for one-line errors: its lines joined
    (the checker names the node on the line after its sentence). Past `limit` characters the
    middle goes, cut at words: onnxruntime nests its messages, what failed first and the
    innermost cause last ("... running If node ... running LSTM node ... Input X must have 3
    dimensions only")."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) <= limit:
        return text
    head = text[:limit // 3].rsplit(" ", 1)[0]
    tail = text[-(limit - len(head) - 5):].split(" ", 1)[-1]
    return f"{head} ... {tail}"
