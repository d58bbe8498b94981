"""Torch-free runtime: numpy + onnxruntime + tokenizers only."""
__all__ = ["load"]

def load(path, **kw):
    raise NotImplementedError
