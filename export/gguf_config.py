"""What llama.cpp reads from a GGUF and transformers' GGUF loader (4.57) leaves at its config defaults.

transformers maps a fixed list of ``{arch}.*`` keys into the config (``GGUF_CONFIG_MAPPING``) and ignores the rest, so
a model whose file says more than its family's defaults would run differently from llama.cpp, the file's home
runtime:

* ``{arch}.rope.scaling.type = "linear"`` (also when absent, as llama.cpp reads it) with ``rope.scaling.factor`` (or the
  older ``rope.scale_linear``) (Gemma 3 4B and larger: factor 8 on the global
  layers): ignored, every position rotates differently. Here: ``rope_scaling = {"rope_type": "linear", "factor": f}``
  (transformers' Gemma 3 applies it to the global layers only, as llama.cpp does; the local layers keep their own
  base). ``yarn`` in a Llama, Qwen2 or Qwen3 file (``YARN_ARCHS``; Qwen3 files made for a 128K context,
  Yarn-Mistral): dropped as well. Here: ``yarn_scaling`` (as OLMo 3's, below). Another scaling type (or YaRN in
  another architecture) is refused by name rather than silently dropped.
* ``rope_freqs.weight`` (Llama 3.1 / 3.2 files: llama3 rope scaling stored as one factor per frequency, which llama.cpp
  divides each frequency by): ignored. Here: every rotary embedding's ``inv_freq`` is divided by the factors.
* Gemma 2's ``attn_logit_softcapping`` / ``final_logit_softcapping``: the defaults (50, 30) are used whatever the
  file says. Here: the file's values.
* ``query_pre_attn_scalar`` (Gemma 2 / 3): transformers' default 256; llama.cpp scales queries by
  ``1/sqrt(head_dim)``, or ``1/sqrt(hidden / heads)`` for the 27B models (llama.cpp's LLM_TYPE_27B: 46 layers for
  Gemma 2, 62 for Gemma 3). Here: the same rule.

* A SmolLM3 or Gemma 3 file without ``rope.freq_base``: llama.cpp rotates with base 10000, transformers with its
  config's default (SmolLM3 2,000,000; Gemma 3's global layers 1,000,000). Here: llama.cpp's.
* An OLMo 3 file (``general.architecture = olmo2`` with ``attention.sliding_window``): transformers would build an
  OLMo 2 without the window, and refuses its YaRN rope scaling. Here: model_type ``olmo3`` with llama.cpp's layers
  (``attention.sliding_window_pattern``, an array of booleans or every n-th global, default 4) and its YaRN:
  ``rope.scaling.factor`` and ``original_context_length`` (default: the context), beta_fast 32 and beta_slow 1 (the
  keys llama.cpp does not read), the attention factor 1 + 0.1 ln(factor) times ``rope.scaling.attn_factor``; its
  sliding-window layers rotate unscaled (llama.cpp's olmo2 graph, transformers' Olmo3).
* EXAONE 4's sliding window: llama.cpp applies one only to the 64-layer model (the 32B: ``attention.sliding_window``,
  default 4096, on the layers ``attention.sliding_window_pattern`` names, an array of booleans or every n-th global,
  default 4, the global layers without rotary) and none to any other, whatever the file says; Exaone4Config's
  defaults (a window of 4096 on 3 of every 4 layers) would window every EXAONE 4.0 1.2B file. Here: llama.cpp's
  layers (``sliding_window``, ``layer_types``); ``rope.freq_base_swa`` is ignored, as llama.cpp's graph ignores it (one
  base for every layer); a file with multi-token-prediction layers is refused by name.
* Granite's ``attention.scale`` when a file has none: llama.cpp scales queries by ``1/sqrt(head size)``,
  transformers' GraniteConfig by its default ``attention_multiplier`` 1.0. Here: llama.cpp's.

* ``{arch}.attention.key_length`` (the head size) of Qwen2, Qwen3 and ERNIE 4.5 files: not mapped (Llama's and
  Mistral's head_dim comes from ``rope.dimension_count``), so the config keeps its class default: ``hidden / heads``
  (Qwen2) or 128 (Qwen3, ERNIE 4.5; whatever the file says). Here: ``head_dim`` = the file's key_length, else
  hidden / heads (llama.cpp's default).

* ``phi3.rope.dimension_count`` below the head size (Phi-4-mini: 96 of 128): not mapped, so every dim rotates.
  ``stablelm.rope.dimension_count``: not mapped either, so a quarter of each head rotates (StableLmConfig's default)
  whatever the file says (llama.cpp: the key, else every dim). Here: ``partial_rotary_factor`` = dimension_count
  (else the head size) / head size.
* Keys transformers maps to nothing for these architectures (``UNMAPPED_KEYS``): GPT-2's ``context_length`` and
  ``feed_forward_length`` (GPT2Config keeps 1,024 positions and 4 x hidden: a file of another context fails on its
  position table's size) and StableLM's ``rope.freq_base`` (llama.cpp's converter writes none, 10000; another tool's
  file may). Here: ``n_positions``, ``n_inner``, ``rope_theta``.
* LongRoPE's ``rope_factors_long`` / ``rope_factors_short`` tensors (Phi-3.5, Phi-3 128k files), with
  ``rope.scaling.original_context_length`` and ``rope.scaling.attn_factor``: dropped (a tiny Phi-3 file's logits 2.6
  from llama.cpp's). Here: ``rope_scaling = {"rope_type": "longrope", short/long factors, attention_factor}`` and
  ``original_max_position_embeddings`` (``longrope_overrides``); the export then holds the original context's
  positions (``onnx_export.position_limit``), where transformers rotates with the short factors and llama.cpp does
  too with a context up to that size (measured: 1.9e-3 from llama.cpp's logits at its context 256 of 256; at 512 it
  takes the long factors for every position).

A ``{arch}.rope.scaling.type`` other than none/linear (and yarn in ``YARN_ARCHS`` and OLMo 3 files) is refused by
name rather than dropped.

``config_overrides`` is applied to the config before the weights are loaded (the attention modules read it at
construction), ``apply_rope_freqs`` to the loaded model.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from onnxlm.runtime.errors import ExportError

#: architectures whose head size transformers' loader does not read (``{arch}.attention.key_length`` -> head_dim)
HEAD_DIM_ARCHS = ("qwen2", "qwen3", "ernie4_5", "exaone4")
#: architectures whose rotated dims (``{arch}.rope.dimension_count``, else the head size) transformers' loader
#: does not read
PARTIAL_ROTARY_ARCHS = ("phi3", "stablelm")
#: keys transformers' loader maps to no config attribute of these architectures -> the attribute that holds them
UNMAPPED_KEYS = {"gpt2": {"context_length": "n_positions", "feed_forward_length": "n_inner"},
                 "stablelm": {"rope.freq_base": "rope_theta"},
                 "lfm2": {"attention.layer_norm_rms_epsilon": "norm_eps"}}  # transformers maps it to rms_norm_eps
#: architectures whose transformers config has another rope base than llama.cpp's 10000 for a file without one
#: SmolLM3Config: 2,000,000; Gemma3TextConfig: 1,000,000 (global); Ernie4_5Config: 500,000; Lfm2Config: 1,000,000
ROPE_BASE_DEFAULT_DIFFERS = ("smollm3", "gemma3", "ernie4_5", "lfm2")
#: layers of the 27B models, whose queries llama.cpp scales by 1/sqrt(hidden / heads) instead of 1/sqrt(head_dim)
LAYERS_27B = {"gemma2": 46, "gemma3": 62}


def config_overrides(meta: Mapping[str, Any]) -> dict:
    """GGUF metadata -> config attributes transformers' loader would leave at their defaults (see the module doc)."""
    from .fused import head_multiple
    from .onnx_export import FUSED_ONLY_TYPES

    arch = meta.get("general.architecture")
    out: dict = {}
    kind = file_model_type(meta) or arch  # the model_type it builds (these architectures' own, but OLMo 3's)
    olmo3 = kind == "olmo3"  # a file of architecture olmo2 (see the module doc)
    # as llama.cpp reads them: the type defaults to linear; the factor is rope.scaling.factor, else the older
    # rope.scale_linear (original convert.py files, e.g. 16K Vicuna), 0 or absent meaning none
    scaling = meta.get(f"{arch}.rope.scaling.type", "linear")
    factor = meta.get(f"{arch}.rope.scaling.factor")
    factor = float((factor if factor is not None else meta.get(f"{arch}.rope.scale_linear")) or 1.0)
    if scaling == "linear" and factor != 1.0:
        out["rope_scaling"] = {"rope_type": "linear", "factor": factor}
    elif scaling == "yarn" and (olmo3 or arch in YARN_ARCHS):
        if factor <= 1.0:  # below 1 llama.cpp still mixes the frequencies, which transformers' YaRN does not (at 1:
            # plain rope times rope.scaling.attn_factor; refused alike)
            raise ExportError(f"{arch}.rope.scaling.type = 'yarn' with factor {factor}: onnxlm reads YaRN from GGUF "
                              "with a factor above 1 only")
        out["rope_scaling"] = yarn_scaling(meta, arch, factor)
    elif scaling not in (None, "none", "linear"):
        raise ExportError(f"{arch}.rope.scaling.type = {scaling!r} (factor {factor}): not supported for GGUF files "
                          f"(supported: none, linear, and yarn in {', '.join(YARN_ARCHS)} and OLMo 3 files; llama3 "
                          "scaling comes as a rope_freqs tensor)")
    if olmo3:
        out.update(model_type="olmo3", **swa_layers(meta, arch, default_window=None))
    if kind in FUSED_ONLY_TYPES:  # no plain graph to fall back to: a head the fused one cannot take is refused now
        head, multiple = _head_size(meta, arch), head_multiple(kind)
        if head % multiple:
            raise ExportError(f"{arch}: head size {head} is not a multiple of {multiple}, which onnxruntime's "
                              f"GroupQueryAttention needs in its fused graph, and model_type {kind!r} has no other")
    if arch in HEAD_DIM_ARCHS:  # as llama.cpp: key_length, else hidden / heads
        out["head_dim"] = _head_size(meta, arch)
    if arch in PARTIAL_ROTARY_ARCHS:
        out["partial_rotary_factor"] = partial_rotary_factor(meta, arch)
    for key, attribute in UNMAPPED_KEYS.get(arch, {}).items():
        if f"{arch}.{key}" in meta:
            out[attribute] = meta[f"{arch}.{key}"]
    if arch in LAYERS_27B:
        hidden, heads = int(meta[f"{arch}.embedding_length"]), int(meta[f"{arch}.attention.head_count"])
        big = int(meta[f"{arch}.block_count"]) == LAYERS_27B[arch]
        out["query_pre_attn_scalar"] = hidden // heads if big else _head_size(meta, arch)
    if arch in ROPE_BASE_DEFAULT_DIFFERS and f"{arch}.rope.freq_base" not in meta:  # llama.cpp's default
        out["rope_theta"] = 10000.0
    if arch == "exaone4":
        out.update(exaone4_layers(meta))
    if arch == "granite" and not meta.get("granite.attention.scale"):  # absent or 0: llama.cpp's default
        out["attention_multiplier"] = _head_size(meta, arch) ** -0.5      # (transformers' is 1.0; its 0 would
        #                                                                    make every attention weight equal)
    if arch == "granite":  # llama.cpp applies these only when not 0; transformers multiplies (divides) by the 0
        for key, attribute in (("embedding_scale", "embedding_multiplier"), ("residual_scale", "residual_multiplier"),
                               ("logit_scale", "logits_scaling")):
            if meta.get(f"granite.{key}") == 0:
                out[attribute] = 1.0
    if arch == "gemma2":
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if f"gemma2.{key}" in meta:
                out[key] = float(meta[f"gemma2.{key}"])
    return out


#: tensors llama.cpp applies that transformers' loader has no place for -> what they are (refused by name:
#: ``refuse_tensors``). StableLM 2 12B's per-head q/k LayerNorms: transformers' StableLM has them (qk_layernorm), its
#: loader neither sets that nor maps the stacked [heads, head_dim] rows onto its per-head norms
UNEXPORTED_TENSORS = {"stablelm": {"attn_q_norm": "StableLM 2 12B's per-head q/k LayerNorms"}}


def refuse_tensors(arch: str | None, tensor_names) -> None:
    """ExportError naming the first of ``UNEXPORTED_TENSORS[arch]`` among a GGUF's ``tensor_names``."""
    for kind, what in UNEXPORTED_TENSORS.get(arch, {}).items():
        found = sorted(n for n in tensor_names if n.split(".")[-2:-1] == [kind])
        if found:
            raise ExportError(f"{found[0]} ({len(found)} such tensors): {what}, which onnxlm does not export from "
                              "GGUF")


#: architectures whose every layer llama.cpp rotates with a file's YaRN as transformers' config rotates them with its
#: ``rope_scaling`` (Yarn-Mistral / Llama files, Qwen 2.5 and Qwen3 files made for a longer context); OLMo 3's global
#: layers alone: ``config_overrides``
YARN_ARCHS = ("llama", "qwen2", "qwen3")


def file_model_type(meta: Mapping[str, Any]) -> str | None:
    """A GGUF's metadata (or header fields) -> the model_type its export builds, where it is not its
    ``general.architecture``'s (``gguf_quant.model_type_of``): an OLMo 3 file (olmo2 with a sliding window) ->
    "olmo3"; else None."""
    if meta.get("general.architecture") == "olmo2" and meta.get("olmo2.attention.sliding_window"):
        return "olmo3"
    return None


EXAONE4_SWA_LAYERS = 64  # llama.cpp's LLM_TYPE_32B: the only EXAONE 4 it gives sliding-window layers


def exaone4_layers(meta: Mapping[str, Any]) -> dict:
    """An EXAONE 4 file's metadata -> ``sliding_window`` and ``layer_types`` as llama.cpp's ``exaone4`` loader sets
    them (see the module doc)."""
    layers = int(meta["exaone4.block_count"])
    if int(meta.get("exaone4.nextn_predict_layers") or 0):
        raise ExportError("exaone4.nextn_predict_layers is set: multi-token-prediction layers, which onnxlm does not "
                          "export")
    if layers != EXAONE4_SWA_LAYERS:
        return {"sliding_window": None, "layer_types": ["full_attention"] * layers}
    # rope.freq_base_swa: llama.cpp's exaone4 graph rotates every layer with rope.freq_base (the per-layer base
    # serves only its KV-cache shifts), as transformers' one rotary does: ignored here too
    return swa_layers(meta, "exaone4", default_window=4096)


def swa_layers(meta: Mapping[str, Any], arch: str, default_window: int | None) -> dict:
    """A file's ``attention.sliding_window`` (else ``default_window``) and the layers it windows, as llama.cpp's
    ``load_swa_pattern(ml, 4)`` reads ``attention.sliding_window_pattern``: an array of booleans, or every n-th
    layer global (default 4; 0: every layer windowed) -> ``sliding_window``, ``layer_types``. (OLMo 3 and EXAONE 4's
    ``rope.freq_base_swa`` serves only llama.cpp's KV-cache shifts: ignored.)"""
    layers = int(meta[f"{arch}.block_count"])
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern", 4)
    if isinstance(pattern, list):
        if len(pattern) != layers:
            raise ExportError(f"{arch}.attention.sliding_window_pattern: {len(pattern)} entries for {layers} layers")
        swa = [bool(s) for s in pattern]
    else:  # every n-th layer global (llama.cpp's set_swa_pattern; 0: every layer windowed)
        n = int(pattern)
        swa = [n == 0 or i % n < n - 1 for i in range(layers)]
    return {"sliding_window": int(meta.get(f"{arch}.attention.sliding_window", default_window)),
            "layer_types": ["sliding_attention" if s else "full_attention" for s in swa]}


def yarn_scaling(meta: Mapping[str, Any], arch: str, factor: float) -> dict:
    """A file's YaRN rope scaling as llama.cpp applies it -> transformers' ``rope_scaling``: ``factor``; the original
    context ``rope.scaling.original_context_length`` (default: ``context_length``); beta_fast 32 and beta_slow 1
    (llama.cpp's, whatever ``yarn_beta_*`` keys say: it does not read them); cos/sin scaled by 1 + 0.1 ln(factor)
    times ``rope.scaling.attn_factor`` (default 1; the ``yarn_attn_factor`` key is not read either)."""
    original = meta.get(f"{arch}.rope.scaling.original_context_length") or meta.get(f"{arch}.context_length")
    if not original:
        raise ExportError(f"{arch}.rope.scaling.type = 'yarn' with neither {arch}.rope.scaling.original_context_length "
                          f"nor {arch}.context_length: the original context YaRN needs")
    attention = (1.0 + 0.1 * math.log(factor)) * float(meta.get(f"{arch}.rope.scaling.attn_factor", 1.0))
    return {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": int(original),
            "beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": attention}


def partial_rotary_factor(meta: Mapping[str, Any], arch: str) -> float:
    """The share of each head's dims a file of a ``PARTIAL_ROTARY_ARCHS`` architecture rotates, as llama.cpp reads
    it: ``{arch}.rope.dimension_count`` / head size, every dim without the key."""
    rotated = meta.get(f"{arch}.rope.dimension_count")
    head = _head_size(meta, arch)
    return (head if rotated is None else int(rotated)) / head


def _head_size(meta: Mapping[str, Any], arch: str) -> int:
    """A GGUF's head size: ``{arch}.attention.key_length``, else hidden / heads."""
    return int(meta.get(f"{arch}.attention.key_length") or
               int(meta[f"{arch}.embedding_length"]) // int(meta[f"{arch}.attention.head_count"]))


#: the positions an export of a GGUF holds at most: 2**20 = 1,048,576 (the 1M-context files, Qwen2.5-1M's 1,010,000,
#: whole). An export holds rotary tables for every position it takes (``fused_llama.rotary_caches``: cos and sin,
#: [positions, head_dim / 2] in fp32, and torch's [positions, head_dim] on the way): 512 MiB at head_dim 128 here,
#: where a context_length of 4,000,000,000 (the most a uint32 holds) would ask 2 TB and die. llama.cpp never
#: allocates for a file's context_length either: it runs at the n_ctx its user asks for (llama-server's default 4096),
#: the trained context being only the default's bound. So a longer one (Llama-3-8B-Gradient-4194k's 4,194,304) is not
#: refused but capped: the artifact's manifest says its max_positions, and a longer prompt is refused by name at run
#: time; every position it holds rotates exactly as the file says (``cap_positions`` caps only where the rotary's
#: frequencies do not depend on the count).
MAX_POSITIONS = 1 << 20


def cap_positions(config) -> int | None:
    """Cap ``config.max_position_embeddings`` at ``MAX_POSITIONS`` (see there) -> the file's own count when it was
    capped, else None. Only for the rope types whose frequencies do not read it (none, linear, llama3, and YaRN with
    its original context given, as ``yarn_scaling`` gives it); a LongRoPE export holds its original context only
    (``onnx_export.position_limit``), which is refused past the cap (its factors read the full count); a GPT-2's
    positions are a tensor of the file's (gguf_header checks the count against its rows)."""
    from .onnx_export import rope_type_of

    positions = getattr(config, "max_position_embeddings", None)  # GPT2Config's: an alias of n_positions
    if config.model_type == "gpt2" or positions is None or int(positions) <= MAX_POSITIONS:
        return None
    rope = rope_type_of(config)
    original = getattr(config, "original_max_position_embeddings", None)
    if rope == "longrope":
        if original and int(original) <= MAX_POSITIONS:
            return None  # position_limit takes the original context
        raise ExportError(f"a LongRoPE model of {positions} positions and an original context of {original}: onnxlm "
                          f"exports at most {MAX_POSITIONS} positions, and LongRoPE's factors read the full count")
    if rope == "yarn" and not (config.rope_scaling or {}).get("original_max_position_embeddings"):
        raise ExportError(f"a YaRN model of {positions} positions without its original context: onnxlm exports at "
                          f"most {MAX_POSITIONS} positions, and YaRN would read the capped count as that context")
    config.max_position_embeddings = MAX_POSITIONS
    return int(positions)


LONGROPE_TENSORS = ("rope_factors_short.weight", "rope_factors_long.weight")
ROPE_FREQS_TENSOR = "rope_freqs.weight"  # llama3 rope scaling as one factor per frequency (Llama 3.1 / 3.2 files)
#: the tensors read here rather than through transformers' loader (``missing_weights.refuse_unused_tensors``)
READ_HERE = (ROPE_FREQS_TENSOR, *LONGROPE_TENSORS)


def longrope_overrides(path, meta: Mapping[str, Any]) -> dict:
    """A GGUF file with LongRoPE's factor tensors -> the config attributes that give transformers the same rotary
    ({} without them); ExportError when the file lacks its original context length or one of the two sets."""
    from .gguf_reader import gguf_reader

    found = {t.name: np.asarray(t.data, dtype=np.float32).reshape(-1) for t in gguf_reader(path).tensors
             if t.name in LONGROPE_TENSORS}
    if not found:
        return {}
    arch = meta.get("general.architecture")
    original = meta.get(f"{arch}.rope.scaling.original_context_length")
    if len(found) < 2 or not original:
        missing = [n for n in LONGROPE_TENSORS if n not in found]
        if not original:
            missing.append(f"{arch}.rope.scaling.original_context_length")
        raise ExportError(f"{path}: LongRoPE factors without {', '.join(missing)}: cannot rotate as llama.cpp does")
    rope = {"rope_type": "longrope", "short_factor": found[LONGROPE_TENSORS[0]].tolist(),
            "long_factor": found[LONGROPE_TENSORS[1]].tolist()}
    if f"{arch}.rope.scaling.attn_factor" in meta:  # llama.cpp's scale of cos/sin (transformers' default formula)
        rope["attention_factor"] = float(meta[f"{arch}.rope.scaling.attn_factor"])
    return {"rope_scaling": rope, "original_max_position_embeddings": int(original)}


def rope_freq_factors(path) -> np.ndarray | None:
    """The ``rope_freqs.weight`` tensor of a GGUF file ([head_dim / 2] float32), or None when it has none."""
    from .gguf_reader import gguf_reader

    for t in gguf_reader(path).tensors:
        if t.name == ROPE_FREQS_TENSOR:
            return np.asarray(t.data, dtype=np.float32).reshape(-1)
    return None


def apply_rope_freqs(model, factors: np.ndarray) -> int:
    """Divide every rotary embedding's ``inv_freq`` (and ``original_inv_freq``) of ``model`` by ``factors``
    [head_dim / 2], as llama.cpp divides each rotary frequency by its factor -> the number of modules changed."""
    import torch

    changed = 0
    for module in model.modules():
        inv = getattr(module, "inv_freq", None)
        if not isinstance(inv, torch.Tensor):
            continue
        if inv.shape != (len(factors),):
            raise ExportError(f"rope_freqs.weight: {len(factors)} factors, but the rotary embedding has "
                              f"{inv.shape[0]} frequencies")
        scale = torch.tensor(np.asarray(factors), dtype=inv.dtype)
        module.inv_freq = inv / scale
        if isinstance(getattr(module, "original_inv_freq", None), torch.Tensor):
            module.original_inv_freq = module.original_inv_freq / scale
        changed += 1
    return changed
