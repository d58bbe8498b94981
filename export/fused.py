"""The fused graphs (``kv_layout="fused"``) of a model: which builder serves its model_type (``fused_llama.py``:
llama, mistral, qwen2, qwen3, phi3, granite, smollm3, olmo2, olmo3, ernie4_5, exaone4, stablelm;
``fused_gemma.py``: gemma, gemma2, gemma3_text; ``fused_lfm2.py``: lfm2; ``fused_gpt2.py``: gpt2;
``fused_t5.py``: t5, mt5), and whether it supports the config."""
from __future__ import annotations

from pathlib import Path

from onnxlm.runtime.errors import ExportError

from . import fused_gemma, fused_gpt2, fused_lfm2, fused_llama, fused_t5
from .fused_graph import release_weights

BUILDERS = {t: module for module in (fused_llama, fused_gemma, fused_lfm2, fused_gpt2, fused_t5)
            for t in module.FUSED_TYPES}


def _builder(model):
    """model -> its builder module; ExportError when no builder has its model_type or the config is refused."""
    kind = model.config.model_type
    if kind not in BUILDERS:
        raise ExportError(f"kv_layout='fused': model_type {kind!r} is not supported; supported: "
                          f"{', '.join(sorted(BUILDERS))} (use kv_layout='plain' for the others)")
    BUILDERS[kind].check_supported(model)
    return BUILDERS[kind]


def head_multiple(model_type: str) -> int:
    """The multiple a head size must be for ``model_type``'s fused graph (its builder's ``HEAD_MULTIPLES[model_type]``,
    else its ``HEAD_MULTIPLE``: 16 where GroupQueryAttention rotates q and k itself, as for Gemma, LFM2 and olmo3,
    else GroupQueryAttention's 8)."""
    builder = BUILDERS.get(model_type)
    return getattr(builder, "HEAD_MULTIPLES", {}).get(model_type, getattr(builder, "HEAD_MULTIPLE", 8))


def check_fused_supported(model) -> None:
    """ExportError naming what the fused builders refuse in ``model`` (its model_type or a config setting)."""
    _builder(model)


def fused_supported(model) -> bool:
    """True when a fused builder supports ``model`` (kv_layout='auto' picks the fused graph then)."""
    try:
        _builder(model)
    except ExportError:
        return False
    return True


def build_fused_graphs(model, out_dir, max_positions: int | None = None, *, release: bool = False) -> dict[str, str]:
    """model -> its fused graph files written into ``out_dir``; returns role -> file name ({"decoder": "model.onnx"}
    for a decoder-only model; {"encoder": ..., "decoder": ...} for T5). ``release`` (decoder-only): drop each layer's
    PyTorch weights once its arrays are made and the rest once the graph is written, for a model nothing else will
    use (``fused_graph.release_weights``)."""
    builder = _builder(model)
    if builder is fused_t5:
        return fused_t5.build_fused_graph(model, out_dir)["files"]
    builder.build_fused_graph(model, Path(out_dir) / "model.onnx", max_positions=max_positions, release=release)
    if release:  # the rest (embedding, head, final norm): written
        release_weights(model)
    return {"decoder": "model.onnx"}
