"""Deployment: quantization and latency benchmarks with onnxruntime."""
