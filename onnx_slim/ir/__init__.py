"""Model I/O, shapes, graph helpers, onnxruntime sessions and hardware facts: what every stage reads."""
