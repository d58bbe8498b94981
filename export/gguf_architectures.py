"""GGUF architectures that transformers' GGUF loader (4.57) does not know, taught to it while onnxlm loads a file.

transformers reads a GGUF through three tables: ``GGUF_CONFIG_MAPPING[arch]`` (which ``{arch}.*`` keys become which
config attributes), ``GGUF_SUPPORTED_ARCHITECTURES`` (the architectures it accepts) and ``TENSOR_PROCESSORS[arch]``
(what undoes llama.cpp's converter on a tensor); the tensor names come from gguf-py's own tables, which know every
architecture llama.cpp writes. ``known_to_transformers()`` adds the entries of ``EXTRA`` to those tables while a
file loads and takes them out again after, so transformers builds the model of the family onnxlm already exports.

* ``gemma`` (Gemma 1 / 1.1, CodeGemma): llama.cpp's converter (``GemmaModel``) stores every RMSNorm weight as
  ``1 + w`` (ggml's norm multiplies by the weight; transformers' Gemma norm by ``1 + w``), writes no rope base
  (llama.cpp's default 10000 is GemmaConfig's), no sliding window and no head of its own (the embedding is tied), and
  keeps q/k rows as they are (Gemma rotates halves, as transformers does). Its keys are Gemma 2's without the
  sliding window.

* ``granite`` (IBM Granite 3.x dense): Llama's keys and layout (q/k rows permuted, as ``LlamaModel`` converts) and
  the four multipliers llama.cpp reads: ``attention.scale`` -> ``attention_multiplier``, ``embedding_scale`` ->
  ``embedding_multiplier``, ``residual_scale`` -> ``residual_multiplier``, ``logit_scale`` -> ``logits_scaling``
  (a file without ``attention.scale``: ``gguf_config`` puts llama.cpp's 1/sqrt(head size) in place of
  transformers' default 1.0).
* ``smollm3`` (SmolLM3): Llama's keys and layout; its NoPE layers (every 4th) are not in the file, llama.cpp and
  transformers' SmolLM3Config both take every 4th. A file without ``rope.freq_base``: ``gguf_config`` puts
  llama.cpp's 10000 in place of SmolLM3Config's 2,000,000.
* ``ernie4_5`` (Baidu ERNIE 4.5 dense, e.g. ERNIE-4.5-0.3B): Llama's keys and tensors, q/k rows as they are:
  llama.cpp rotates adjacent pairs (its NORM rope) as transformers' Ernie4_5 does (interleaved), and its converter
  does not permute them; the head size is ``attention.key_length`` (``gguf_config``: 128 in Ernie4_5Config, not
  hidden / heads), the rope base llama.cpp's 10000 for a file without one (Ernie4_5Config's is 500,000).
* ``exaone4`` (LG EXAONE 4.0): Llama's keys, q/k rows as they are (llama.cpp rotates halves, as transformers); OLMo
  2's post-norms with per-head q/k norms; its sliding-window layers as llama.cpp sets them (``gguf_config``).
* ``olmo2`` (OLMo 2): Llama's keys, q/k rows as they are (llama.cpp rotates halves, as transformers); its q/k norms
  over the full projections and post-norms are gguf-py's names. An OLMo 3 file says ``olmo2`` too, with a sliding
  window: ``gguf_config`` makes its config an ``olmo3`` one, whose tensors the loader then finds under OLMo 2's GGUF
  names (``MODEL_TYPE_ALIASES``: its ``get_gguf_hf_weights_map`` looks a model_type up among gguf-py's
  architectures).

``QK_PERMUTED``: the architectures whose q/k rows llama.cpp's converter permutes (``LlamaModel.permute``; some of
its subclasses do not), which ``gguf_quant`` puts back in transformers' order when it keeps the file's blocks.

The tables are transformers' module globals: loads in several threads share one registration (``SharedPatch``), and
the entries go when the last of them ends.
"""
from __future__ import annotations

from .shared_patch import SharedPatch

#: architectures whose attn_q / attn_k rows llama.cpp's converter interleaves (LlamaModel.permute)
QK_PERMUTED = ("llama", "granite", "smollm3")
#: transformers model_type -> the GGUF architecture whose tensor names its weights have (a model_type gguf-py does not
#: know: the loader's weight map would fail on it)
MODEL_TYPE_ALIASES = {"olmo3": "olmo2"}
_WEIGHTS_MAP = "get_gguf_hf_weights_map"  # the loader function ``_add`` wraps (an entry of its list)


def _gemma_config() -> dict:
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    keys = dict(GGUF_CONFIG_MAPPING["gemma2"])
    keys.pop("attention.sliding_window", None)
    return keys


def _llama_config(**extra: str) -> dict:
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return {**GGUF_CONFIG_MAPPING["llama"], **extra}


def _granite_config() -> dict:
    return _llama_config(**{"attention.scale": "attention_multiplier", "embedding_scale": "embedding_multiplier",
                            "residual_scale": "residual_multiplier", "logit_scale": "logits_scaling"})


#: architecture -> (its config key mapping (a function of transformers' own tables), its tensor processor's name in
#: transformers' modeling_gguf_pytorch_utils)
EXTRA = {
    "gemma": (_gemma_config, "Gemma2TensorProcessor"),  # norm weights stored as 1 + w: the processor subtracts 1
    "granite": (_granite_config, "LlamaTensorProcessor"),  # q/k rows permuted back
    "smollm3": (_llama_config, "LlamaTensorProcessor"),
    "olmo2": (_llama_config, "TensorProcessor"),
    "ernie4_5": (_llama_config, "TensorProcessor"),  # rows as they are: interleaved rotary on both sides
    "exaone4": (_llama_config, "TensorProcessor"),
}


def _add() -> list[str]:
    """Add ``EXTRA``'s architectures that transformers lacks to its tables -> those added (none when one fails)."""
    from transformers import modeling_gguf_pytorch_utils as loader
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    added: list[str] = []
    try:
        for arch in (a for a in EXTRA if a not in GGUF_CONFIG_MAPPING):
            config, processor = EXTRA[arch]
            added.append(arch)  # first: a failure part-way still takes out what went in
            GGUF_CONFIG_MAPPING[arch] = config()
            loader.GGUF_SUPPORTED_ARCHITECTURES.append(arch)
            loader.TENSOR_PROCESSORS[arch] = getattr(loader, processor)
        original = loader.get_gguf_hf_weights_map

        def weights_map(hf_model, model_type=None, *args, **kwargs):  # the model's type, or the one it aliases
            if model_type is None:
                model_type = MODEL_TYPE_ALIASES.get(hf_model.config.model_type, hf_model.config.model_type)
            return original(hf_model, model_type, *args, **kwargs)

        weights_map.__wrapped__ = original
        weights_map.onnxlm_alias = True  # ours: ``_remove`` puts back only this wrapper's original
        added.append(_WEIGHTS_MAP)
        loader.get_gguf_hf_weights_map = weights_map
    except BaseException:
        _remove(added)
        raise
    return added


def _remove(added: list[str]) -> None:
    from transformers import modeling_gguf_pytorch_utils as loader
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    if _WEIGHTS_MAP in added and getattr(loader.get_gguf_hf_weights_map, "onnxlm_alias", False):
        loader.get_gguf_hf_weights_map = loader.get_gguf_hf_weights_map.__wrapped__
    for arch in (a for a in added if a != _WEIGHTS_MAP):
        GGUF_CONFIG_MAPPING.pop(arch, None)
        loader.TENSOR_PROCESSORS.pop(arch, None)
        if arch in loader.GGUF_SUPPORTED_ARCHITECTURES:
            loader.GGUF_SUPPORTED_ARCHITECTURES.remove(arch)


#: ``with known_to_transformers():`` transformers' GGUF loader reads the architectures of ``EXTRA`` (see the module
#: doc); once the last open block (in any thread) ends, the tables are as they were, also when a load fails.
known_to_transformers = SharedPatch(_add, _remove)
