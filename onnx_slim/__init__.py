"""onnx_slim: structured channel pruning, re-fitting, quantization and benchmarking of ONNX models."""

from .errors import InvalidModelError, OnnxSlimError, QualityGateError, UsageError, VerificationError
from .model import load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "InvalidModelError", "OnnxSlimError", "QualityGateError", "UsageError", "VerificationError",
    "load_model", "save_model", "__version__",
]
