"""The fused decoder graph (``kv_layout="fused"``) of a model: which builder serves its model_type
(``fused_llama.py``: llama, mistral, qwen2; ``fused_gpt2.py``: gpt2), and whether it supports the config."""
from __future__ import annotations

from onnxlm.runtime.errors import ExportError

from . import fused_gpt2, fused_llama

BUILDERS = {**{t: fused_llama for t in fused_llama.FUSED_TYPES}, **{t: fused_gpt2 for t in fused_gpt2.FUSED_TYPES}}


def _builder(model):
    """model -> its builder module; ExportError when no builder has its model_type or the config is refused."""
    kind = model.config.model_type
    if kind not in BUILDERS:
        raise ExportError(f"kv_layout='fused': model_type {kind!r} is not supported; supported: "
                          f"{', '.join(sorted(BUILDERS))} (use kv_layout='plain' for the others)")
    BUILDERS[kind].check_supported(model)
    return BUILDERS[kind]


def fused_supported(model) -> bool:
    """True when a fused builder supports ``model`` (kv_layout='auto' picks the fused graph then)."""
    try:
        _builder(model)
    except ExportError:
        return False
    return True


def build_fused_graph(model, out_path, max_positions: int | None = None) -> dict:
    """model -> its fused graph written to ``out_path`` (the builder's return value)."""
    return _builder(model).build_fused_graph(model, out_path, max_positions=max_positions)
