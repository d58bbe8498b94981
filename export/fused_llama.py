"""The fused decoder graph (``kv_layout="fused"``): our own fp32 ONNX graph for Llama / Mistral / Qwen2 / Qwen3 /
Phi-3 / StableLM and the others of ``FUSED_TYPES``, built with onnx.helper from the transformers model's weights, one ``com.microsoft.GroupQueryAttention`` node
per layer.

The KV cache lives in preallocated buffers ``past_key_values.{i}.key|value`` [b, kv_heads, L, head_dim] that the
runtime binds as both the past input and the ``present.{i}.key|value`` output (IO binding): each step writes the new
keys/values in place at each row's own position: no per-step copy of the cache (only the attention's own reads of
the held keys/values grow with the context).

Rows are RIGHT padded (the runtime re-packs left-padded inputs). Inputs:
  input_ids [b, s] int64; seqlens_k [b] int32 = each row's total length incl. the new tokens, minus 1;
  total_sequence_length [] int32 = the padded total (past + s); logits_positions [b, k] int64 = which of the s new
  positions go through the head; position_ids [b, s] int64 where the rotary turns before GQA (below); the buffers.
Outputs: logits [b, k, V] float32, present.{i}.key|value (the buffers).

Rotary: GQA rotates q/k itself (do_rotary=1) with cos/sin caches [max_positions, head_dim/2] computed in fp32 by the
model's own ``rotary_emb`` (exact for default/linear/llama3/yarn, and longrope up to its original context, whose
short factors these are; the attention scaling of yarn and longrope is folded into cos/sin as transformers does).
Position of a token = its index in its (right-padded) row.
Qwen3: q and k get a per-head RMSNorm (``q_norm`` / ``k_norm``) before the rotary (``fused_graph.qk_head_norms``,
as Gemma 3's).
Phi-3: its packed ``qkv_proj`` is the graph's q/k/v weight as it is; its ``gate_up_proj`` (gate rows first) becomes the
two MatMuls ``gate_proj`` / ``up_proj`` of every other family (the names ``gguf_quant`` rewrites). A partial rotary
(Phi-4-mini: 96 of 128 dims) is GQA's own: cos/sin caches of half the rotary dims rotate that many leading dims of
each head (onnxruntime requires a multiple of 8 there and a head size that is a multiple of 16, ``gqa_rotates``). Any
other even count (StableLM 3B: 20 of 80), or any rotary of a head of 8 mod 16 (24, 40), is turned before GQA (do_rotary=0) by ``com.microsoft.RotaryEmbedding`` on q and k with the same tables, at the extra
graph input ``position_ids`` [b, s] int64 (a token's index in its row, as GQA's own positions).
Sliding window: GQA's ``local_window_size`` = transformers' ``sliding_window`` gives the same mask (measured: the
values -1 and +1 give wrong logits; tests/test_fused_layouts.py checks Mistral with a window of 4 on sequences of 11+).
Granite: its four multipliers as transformers applies them: the embedding's (``embedding_multiplier``), the attention
scale (``attention_multiplier``, the attention module's ``scaling``), each residual branch's
(``residual_multiplier``, on o_proj's and down_proj's outputs) and the logits divided by ``logits_scaling`` (here the
final norm's output, before the head: the same values up to rounding).
SmolLM3: its NoPE layers (``no_rope_layers[i] == 0``, every 4th by default) attend without the rotary
(``do_rotary=0``).
ERNIE 4.5: Llama's blocks, its rotary on adjacent pairs of each head's dims (transformers' Ernie4_5 rotates
``x[..., 0::2]`` with ``x[..., 1::2]``, llama.cpp's NORM rope): GQA's ``rotary_interleaved=1`` with the same cos/sin
tables (the pair i turns by the i-th frequency both ways).
EXAONE 4: OLMo 2's post-norms with Qwen 3's per-head q/k norms; with a sliding window (the 32B), its global layers
(every ``sliding_window_pattern``-th) attend without the rotary (``do_rotary=0``), as transformers' Exaone4
(llama.cpp's too).
StableLM: LayerNorms (weight and bias, ``layer_norm_eps``) where the others have RMSNorm; its partial rotary GQA's
(StableLM 2 1.6B: 16 of 64 dims) or turned before GQA (3B's 20 of 80, as above); queries scaled by
1/sqrt(head size); ``use_parallel_residual``: attention and MLP read the same normed input and add to the residual
together (``Sum``); the 12B's per-head q/k LayerNorms (``qk_layernorm``) are refused.
OLMo 2: no norm before attention or MLP; q and k RMS-normed over their full width (``fused_graph.qk_full_norms``)
before the rotary; each branch's output normed (``post_attention_layernorm``, ``post_feedforward_layernorm``) before
its residual add.
OLMo 3: OLMo 2's layers, three sliding-window layers to each global one (``layer_types``); its global layers rotate
with the configured rope scaling (YaRN in the long-context models) and its sliding-window ones without it
(transformers' ``rotary_embs``: a second pair of tables, ``cos_cache_local`` / ``sin_cache_local``, as Gemma 3's).
"""
from __future__ import annotations

import numpy as np

from onnxlm.runtime.errors import ExportError

from .fused_graph import (Graph, check_head_dim, hidden_output, io_values, layer_norm, logits_head, plain_hint, qk_full_norms,
                          qk_head_norms, release_weights, rms_norm, rotate_qk, save_graph, to_numpy)
from .onnx_export import SUPPORTED_ROPE_SCALING, position_limit, rope_type_of

FUSED_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "granite", "smollm3", "olmo2", "olmo3", "ernie4_5",
               "exaone4", "stablelm")
HEAD_MULTIPLE = 8  # the head sizes this graph takes (a rotary GroupQueryAttention cannot take turns before it)
# model_types whose head size must be a multiple of more: OLMo 3's second rotary table is GroupQueryAttention's own
# input (no turn before it), which needs 16 to rotate q and k itself
HEAD_MULTIPLES = {"olmo3": 16}


def check_supported(model) -> None:
    """Raise ExportError naming the first config setting this builder cannot express."""
    cfg = model.config
    if cfg.model_type not in FUSED_TYPES:
        raise ExportError(f"kv_layout='fused': model_type {cfg.model_type!r} is not supported; supported: "
                          f"{', '.join(FUSED_TYPES)} (use kv_layout='plain' for the others)")
    hint = plain_hint(cfg.model_type)
    if getattr(cfg, "qk_layernorm", False):  # StableLM 2 12B
        raise ExportError(f"kv_layout='fused': qk_layernorm (StableLM's per-head q/k LayerNorms) is not supported "
                          f"({hint})")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise ExportError(f"kv_layout='fused': hidden_act {cfg.hidden_act!r} is not supported; supported: 'silu' "
                          f"({hint})")
    rope_type = rope_type_of(cfg)
    if rope_type not in SUPPORTED_ROPE_SCALING:  # the plain exporter's list: the same rotary tables
        raise ExportError(f"kv_layout='fused': rope_scaling type {rope_type!r} is not supported; supported: "
                          f"{', '.join(SUPPORTED_ROPE_SCALING)}")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    why = partial_rotary_refusal(head_dim, int(head_dim * (getattr(cfg, "partial_rotary_factor", None) or 1.0)))
    if why:
        raise ExportError(f"kv_layout='fused': {why} ({hint})")
    check_head_dim(head_dim, cfg.model_type, HEAD_MULTIPLES.get(cfg.model_type, HEAD_MULTIPLE))


def partial_rotary_refusal(head_dim: int, rotary: int) -> str | None:
    """Why the graph cannot rotate ``rotary`` of each head's ``head_dim`` dims (an odd count, none, or more than the
    head), or None when it can."""
    if rotary % 2 or not 0 < rotary <= head_dim:
        return f"a rotary of {rotary} of {head_dim} head dims is not supported (an even count up to the head size is)"
    return None


def gqa_rotates(head_dim: int, rotary: int) -> bool:
    """Whether GroupQueryAttention rotates ``rotary`` of ``head_dim`` dims itself: its rotary needs a head size that
    is a multiple of 16 and cos/sin tables of a width that is a multiple of 8 (it rotates the first 2 * width dims:
    all of them, or StableLM 2 1.6B's 16 of 64). Any other (StableLM 3B's 20 of 80; a head of 24 or 40) is rotated
    before it (``fused_graph.rotate_qk``)."""
    return head_dim % 16 == 0 and (rotary // 2) % 8 == 0


def sliding_windows(config) -> list[int | None]:
    """config -> per layer the transformers sliding window (positions attended incl. the query) or None."""
    n = config.num_hidden_layers
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if config.model_type in ("qwen2", "smollm3") and not getattr(config, "use_sliding_window", False):
        window = None
    if window is None:
        return [None] * n
    if types is None:
        return [window] * n
    return [window if t == "sliding_attention" else None for t in types]


def rotary_caches(model, max_positions: int, rot=None) -> tuple[np.ndarray, np.ndarray]:
    """The model's own rotary embedding (``rot``, default ``model.model.rotary_emb``) for positions
    0..max_positions-1 -> cos, sin [max_positions, head_dim/2]."""
    import torch

    rot = model.model.rotary_emb if rot is None else rot
    pos = torch.arange(max_positions, dtype=torch.int64)[None, :]
    x = torch.zeros(1, dtype=torch.float32)
    with torch.no_grad():
        cos, sin = rot(x, pos)  # [1, P, head_dim]: the half repeated (rotate_half layout)
    half = cos.shape[-1] // 2
    return (cos[0, :, :half].float().numpy().astype(np.float32), sin[0, :, :half].float().numpy().astype(np.float32))


def _w(linear) -> np.ndarray:
    """nn.Linear weight [out, in] -> [in, out] float32 for MatMul."""
    return linear.weight.detach().float().numpy().T.copy()


def _linear(g: Graph, name: str, x: str, linear) -> str:
    """x [..., in] -> [..., out]: MatMul on the transposed weight, + bias when the layer has one."""
    y = g.op("MatMul", [x, g.init(f"{name}.weight", _w(linear))])
    if linear.bias is not None:
        y = g.op("Add", [y, g.init(f"{name}.bias", linear.bias.detach().float().numpy())])
    return y


def _norm(g: Graph, x: str, name: str, norm, eps: float) -> str:
    """x [b, s, n] -> RMSNorm(x) * weight (the module ``norm``'s, initializer ``name``), or StableLM's LayerNorm
    (weight and bias, its own eps)."""
    if getattr(norm, "bias", None) is not None:
        return layer_norm(g, x, name.removesuffix(".weight"), norm)  # initializers name.weight, name.bias
    return rms_norm(g, x, name, to_numpy(norm.weight), eps)


def _residual_scaled(g: Graph, branch: str, cfg) -> str:
    """A residual branch's output [b, s, D] -> times Granite's ``residual_multiplier``."""
    return g.op("Mul", [branch, g.init("residual_multiplier", np.array([cfg.residual_multiplier], np.float32))])


def build_fused_graph(model, out_path, max_positions: int | None = None, *, release: bool = False) -> dict:
    """transformers Llama / Mistral / Qwen2 / Qwen3 / Phi-3 / Granite / SmolLM3 / OLMo 2 / 3 / ERNIE 4.5 / EXAONE 4 /
    StableLM model -> the fused graph written to ``out_path``; returns
    {"inputs": [...], "outputs": [...], "external_data": file name or None, "max_positions": P}. ``release``: drop each
    layer's PyTorch weights once its arrays are made (``fused_graph.release_weights``; ``fused.build_fused_graphs``
    drops the rest once the graph is written)."""
    check_supported(model)
    cfg = model.config
    L = cfg.num_hidden_layers
    N = cfg.num_attention_heads
    KVN = getattr(cfg, "num_key_value_heads", None) or N
    D = cfg.hidden_size
    H = getattr(cfg, "head_dim", None) or D // N
    V = cfg.vocab_size
    eps = float(cfg.layer_norm_eps if cfg.model_type == "stablelm" else cfg.rms_norm_eps)
    P = int(max_positions or position_limit(cfg))  # longrope: its short factors' positions only
    windows = sliding_windows(cfg)
    rotates = [bool(r) for r in getattr(cfg, "no_rope_layers", None) or [1] * L]  # SmolLM3: 0 on its NoPE layers
    if cfg.model_type == "exaone4" and cfg.sliding_window is not None:  # EXAONE 4: its global layers without rotary
        rotates = [t == "sliding_attention" for t in cfg.layer_types]
    granite = cfg.model_type == "granite"
    post_norms = cfg.model_type in ("olmo2", "olmo3", "exaone4")  # branches normed after, not before (module doc)
    interleaved = cfg.model_type == "ernie4_5"  # ERNIE 4.5: adjacent pairs rotate (see the module doc)
    inner = model.model
    g = Graph()

    emb = inner.embed_tokens.weight.detach().float().numpy()
    g.init("embed_tokens.weight", emb)
    by_kind = getattr(inner, "rotary_embs", None)  # OLMo 3: its sliding-window layers rotate without the scaling
    cos, sin = rotary_caches(model, P, by_kind["full_attention"] if by_kind is not None else None)
    g.init("cos_cache", cos)
    g.init("sin_cache", sin)
    tables = {None: ("cos_cache", "sin_cache")}  # rotary tables by kind: global (None) and local (sliding)
    if by_kind is not None and rope_type_of(cfg) != "default":  # (unscaled: both kinds the same table)
        tables["local"] = ("cos_cache_local", "sin_cache_local")
        for name, value in zip(tables["local"], rotary_caches(model, P, by_kind["sliding_attention"])):
            g.init(name, value)
    rotary_dim = 2 * cos.shape[1]  # the model's own tables say how many dims turn
    outside = not gqa_rotates(H, rotary_dim)  # a partial rotary GQA cannot take: turned before it, at position_ids

    x = g.op("Gather", ["embed_tokens.weight", "input_ids"], axis=0)  # [b, s, D]
    if granite:
        x = g.op("Mul", [x, g.init("embedding_multiplier", np.array([cfg.embedding_multiplier], np.float32))])
    for i, layer in enumerate(inner.layers):
        att, mlp = layer.self_attn, layer.mlp
        h = x if post_norms else _norm(g, x, f"l{i}.input_layernorm", layer.input_layernorm, eps)
        # q, k, v in one MatMul: [b, s, D] -> [b, s, (N + 2 KVN) H], fed to GQA packed (Phi-3 stores them so)
        packed = getattr(att, "qkv_proj", None)
        wqkv = _w(packed) if packed is not None else np.concatenate([_w(att.q_proj), _w(att.k_proj),
                                                                     _w(att.v_proj)], axis=1)
        qkv = g.op("MatMul", [h, g.init(f"l{i}.qkv.weight", wqkv)])
        parts = [packed] if packed is not None else [att.q_proj, att.k_proj, att.v_proj]
        if parts[0].bias is not None:
            bqkv = np.concatenate([p.bias.detach().float().numpy() for p in parts])
            qkv = g.op("Add", [qkv, g.init(f"l{i}.qkv.bias", bqkv)])
        if hasattr(att, "q_norm"):  # RMSNorm of q and k before the rotary: per head (Qwen 3, EXAONE 4) or over all
            # of q and all of k (OLMo 2), as the norm's weight is wide
            norms = qk_head_norms if att.q_norm.weight.numel() == H else qk_full_norms
            qkv = norms(g, qkv, i, N, KVN, H, to_numpy(att.q_norm.weight), to_numpy(att.k_norm.weight), eps)
        if outside and rotates[i]:
            qkv = rotate_qk(g, qkv, N, KVN, H, rotary_dim, interleaved)
        attrs = dict(num_heads=N, kv_num_heads=KVN, do_rotary=int(rotates[i] and not outside),
                     rotary_interleaved=int(interleaved),
                     scale=float(att.scaling if hasattr(att, "scaling") else H ** -0.5))  # StableLM: 1/sqrt(head)
        if windows[i] is not None:
            attrs["local_window_size"] = int(windows[i])  # same semantics (measured, tests/test_fused_layouts.py)
        a = g.attention(qkv, i, rotary=tables["local" if windows[i] is not None and "local" in tables else None],
                        **attrs)
        o = _linear(g, f"l{i}.o_proj", a, att.o_proj)
        if post_norms:
            o = _norm(g, o, f"l{i}.post_attention_layernorm", layer.post_attention_layernorm, eps)
        parallel = getattr(layer, "use_parallel_residual", False)  # StableLM: the MLP reads the attention's input
        if not parallel:
            x = g.op("Add", [x, _residual_scaled(g, o, cfg) if granite else o])
            h = x if post_norms else _norm(g, x, f"l{i}.post_attention_layernorm", layer.post_attention_layernorm, eps)
        if hasattr(mlp, "gate_up_proj"):  # Phi-3 (no bias): gate and up in one weight, gate first: two MatMuls here
            wgu = _w(mlp.gate_up_proj)
            ffn = wgu.shape[1] // 2
            gate, up = (g.op("MatMul", [h, g.init(f"l{i}.{n}.weight", wgu[:, j * ffn:(j + 1) * ffn].copy())])
                        for j, n in enumerate(("gate_proj", "up_proj")))
        else:
            gate = _linear(g, f"l{i}.gate_proj", h, mlp.gate_proj)
            up = _linear(g, f"l{i}.up_proj", h, mlp.up_proj)
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate])])  # SiLU
        down = _linear(g, f"l{i}.down_proj", g.op("Mul", [act, up]), mlp.down_proj)
        if post_norms:
            down = _norm(g, down, f"l{i}.post_feedforward_layernorm", layer.post_feedforward_layernorm, eps)
        if parallel:  # x + attention(h) + mlp(h)
            x = g.op("Sum", [x, o, down])
        else:
            x = g.op("Add", [x, _residual_scaled(g, down, cfg) if granite else down])
        if release:  # this layer's arrays are made: its PyTorch weights can go
            release_weights(layer)
    x = _norm(g, x, "norm.weight", inner.norm, eps)
    hidden_output(g, x)  # before Granite's logit scaling, as transformers' hidden_states[-1]
    if granite:  # logits / logits_scaling, as the head's input divided
        x = g.op("Div", [x, g.init("logits_scaling", np.array([cfg.logits_scaling], np.float32))])
    head_w = model.lm_head.weight
    tied = head_w.data_ptr() == inner.embed_tokens.weight.data_ptr()
    head = "embed_tokens.weight" if tied else g.init("lm_head.weight", head_w.detach().float().numpy())
    logits_head(g, x, head, D, V)  # the tied embedding is stored once

    inputs, outputs = io_values(L, KVN, H, V, extra_inputs=("position_ids",) if outside else (), hidden=D)
    external = save_graph(g, f"{cfg.model_type}-fused-gqa", inputs, outputs, out_path)
    return {"inputs": [i.name for i in inputs], "outputs": [o.name for o in outputs], "external_data": external,
            "max_positions": P}
