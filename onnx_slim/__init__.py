"""onnx_slim: structured channel pruning, re-fitting, quantization and benchmarking of ONNX models."""

from .errors import InvalidModelError, OnnxSlimError, QualityGateError, UsageError, VerificationError
from .model import load_model, save_model
from .pruning import ModelAnalysis, PruneReport, analyze, prune, prune_file

__version__ = "0.1.0"

__all__ = [
    "InvalidModelError", "ModelAnalysis", "OnnxSlimError", "PruneReport", "QualityGateError",
    "UsageError", "VerificationError", "analyze", "load_model", "prune", "prune_file",
    "save_model", "__version__",
]
