"""onnx_slim: structured channel pruning, re-fitting, quantization and benchmarking of ONNX models."""

from onnx_slim.channels.analysis import ModelAnalysis, analyze
from onnx_slim.errors import InvalidModelError, OnnxSlimError, QualityGateError, UsageError, VerificationError
from onnx_slim.ir.model import load_model, save_model
from onnx_slim.pipeline.prune import PruneReport, prune, prune_file

__version__ = "0.1.0"

__all__ = [
    "InvalidModelError", "ModelAnalysis", "OnnxSlimError", "PruneReport", "QualityGateError",
    "UsageError", "VerificationError", "analyze", "load_model", "prune", "prune_file",
    "save_model", "__version__",
]
