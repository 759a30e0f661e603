"""onnx_slim: structured channel pruning, re-fitting, quantization and benchmarking of ONNX models.

The public names are imported on first use, so `import onnx_slim` (and the
command line, before it installs its signal handling) does not wait for onnx.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ModelAnalysis": "onnx_slim.channels.analysis", "analyze": "onnx_slim.channels.analysis",
    "InvalidModelError": "onnx_slim.errors", "OnnxSlimError": "onnx_slim.errors",
    "QualityGateError": "onnx_slim.errors", "UsageError": "onnx_slim.errors",
    "VerificationError": "onnx_slim.errors",
    "load_model": "onnx_slim.ir.model", "save_model": "onnx_slim.ir.model",
    "PruneReport": "onnx_slim.pipeline.prune", "prune": "onnx_slim.pipeline.prune",
    "prune_file": "onnx_slim.pipeline.prune",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'onnx_slim' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
