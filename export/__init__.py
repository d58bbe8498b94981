"""Export (needs the `export` extra: torch, transformers, optimum-onnx)."""
