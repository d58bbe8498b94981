"""onnxlm: export once with torch, run with numpy + onnxruntime + tokenizers."""
from onnxlm.runtime import *  # noqa: F401,F403
from onnxlm.runtime import __all__ as _runtime_all

__all__ = list(_runtime_all)
__version__ = "0.1.0"
