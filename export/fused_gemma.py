"""The fused decoder graph (``kv_layout="fused"``) for Gemma, Gemma 2 and Gemma 3 (text): the Llama builder's graph
(``fused_llama.py``: one GroupQueryAttention per layer on in-place KV buffers, right-padded rows, the same inputs,
outputs and initializer names, so ``gguf_quant`` rewrites it the same way) with what Gemma changes:

* embeddings scaled by sqrt(hidden) (in float32, as transformers multiplies them);
* RMSNorm with the weight ``1 + w`` (transformers' Gemma norms compute ``norm(x) * (1 + w)`` in float32), and in
  Gemma 2/3 a norm after the attention and around the MLP (``post_attention``, ``pre_feedforward``,
  ``post_feedforward``) before each residual add;
* the MLP ``gelu_tanh(gate) * up`` (``FastGelu``: the tanh approximation transformers' ``gelu_pytorch_tanh`` is);
* the attention scale ``query_pre_attn_scalar ** -0.5`` (the module's own ``scaling``); Gemma 2's attention
  soft-capping as GroupQueryAttention's ``softcap``, its final-logit soft-capping as ``cap * tanh(logits / cap)``;
* Gemma 3's per-head q/k RMSNorm before the rotary (q and k unpacked, normed, packed again) and its two rotary
  tables: sliding-window layers rotate with ``rope_local_base_freq``, global ones with ``rope_theta``;
* sliding-window layers (``layer_types``) as GroupQueryAttention's ``local_window_size`` = ``sliding_window``: a
  local layer attends to the last ``window`` positions only, whatever the buffer holds.
"""
from __future__ import annotations

import numpy as np

from onnxlm.runtime.errors import ExportError

from .fused_graph import (Graph, check_head_dim, hidden_output, io_values, logits_head, qk_head_norms, release_weights, rms_norm,
                          save_graph, to_numpy)
from .fused_llama import _linear, _w, rotary_caches, sliding_windows

FUSED_TYPES = ("gemma", "gemma2", "gemma3_text")
HEAD_MULTIPLE = 16  # the head sizes this graph takes: GroupQueryAttention rotates q and k itself


def check_supported(model) -> None:
    """Raise ExportError naming the first config setting this builder cannot express."""
    cfg = model.config
    if cfg.model_type not in FUSED_TYPES:
        raise ExportError(f"kv_layout='fused': model_type {cfg.model_type!r} is not supported by the Gemma builder; "
                          f"supported: {', '.join(FUSED_TYPES)}")
    act = getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", None)
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ExportError(f"kv_layout='fused': hidden_activation {act!r} is not supported; supported: "
                          "'gelu_pytorch_tanh'")
    scaling = getattr(cfg, "rope_scaling", None) or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", "linear"):  # linear (Gemma 3 4B and larger): fixed tables, read from the model's own
        raise ExportError(f"kv_layout='fused': Gemma with rope_scaling {cfg.rope_scaling!r} is not supported; "
                          "supported rope_scaling types: default, linear")
    check_head_dim(cfg.head_dim, multiple=HEAD_MULTIPLE)


def _norm(g: Graph, name: str, x: str, module, eps: float) -> str:
    """x [..., D] -> Gemma's RMSNorm: norm(x) * (1 + w), the weight stored as 1 + w (float32)."""
    return rms_norm(g, x, name, 1.0 + to_numpy(module.weight).astype(np.float32), eps)


def build_fused_graph(model, out_path, max_positions: int | None = None, *, release: bool = False) -> dict:
    """transformers Gemma / Gemma 2 / Gemma 3 text model -> the fused graph written to ``out_path``; returns
    {"inputs": [...], "outputs": [...], "external_data": file name or None, "max_positions": P}. ``release``: drop each
    layer's PyTorch weights once its arrays are made (``fused_graph.release_weights``; ``fused.build_fused_graphs``
    drops the rest once the graph is written)."""
    check_supported(model)
    cfg = model.config
    L, N, D, V, H = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size, cfg.vocab_size, cfg.head_dim
    KVN = getattr(cfg, "num_key_value_heads", None) or N
    eps = float(cfg.rms_norm_eps)
    P = int(max_positions or cfg.max_position_embeddings)
    windows = sliding_windows(cfg)
    # Gemma 2's attention soft-capping; transformers' Gemma 3 attention never applies its config's value (4.57)
    softcap = getattr(cfg, "attn_logit_softcapping", None) if cfg.model_type == "gemma2" else None
    inner = model.model
    g = Graph()

    g.init("embed_tokens.weight", to_numpy(inner.embed_tokens.weight))
    tables = {None: ("cos_cache", "sin_cache")}  # rotary tables by kind: global (None) and local (sliding)
    local = hasattr(inner, "rotary_emb_local")  # Gemma 3: sliding-window layers rotate with their own base
    if not local or any(w is None for w in windows):  # only the tables some layer reads (an unused initializer:
        for name, value in zip(tables[None], rotary_caches(model, P)):  # onnxruntime warns at every load)
            g.init(name, value)
    if local and any(w is not None for w in windows):
        tables["local"] = ("cos_cache_local", "sin_cache_local")
        for name, value in zip(tables["local"], rotary_caches(model, P, inner.rotary_emb_local)):
            g.init(name, value)

    x = g.op("Gather", ["embed_tokens.weight", "input_ids"], axis=0)  # [b, s, D]
    x = g.op("Mul", [x, g.init("embed_scale", np.array(D ** 0.5, dtype=np.float32))])
    for i, layer in enumerate(inner.layers):
        att, mlp = layer.self_attn, layer.mlp
        h = _norm(g, f"l{i}.input_layernorm", x, layer.input_layernorm, eps)
        wqkv = np.concatenate([_w(att.q_proj), _w(att.k_proj), _w(att.v_proj)], axis=1)
        qkv = g.op("MatMul", [h, g.init(f"l{i}.qkv.weight", wqkv)])  # [b, s, (N + 2 KVN) H]
        if att.q_proj.bias is not None:  # attention_bias: true (before Gemma 3's q/k norms, as transformers adds it)
            bqkv = np.concatenate([to_numpy(p.bias).astype(np.float32) for p in (att.q_proj, att.k_proj, att.v_proj)])
            qkv = g.op("Add", [qkv, g.init(f"l{i}.qkv.bias", bqkv)])
        if hasattr(att, "q_norm"):  # Gemma 3: per-head RMSNorm of q and k before the rotary, weights 1 + w
            qkv = qk_head_norms(g, qkv, i, N, KVN, H, 1.0 + to_numpy(att.q_norm.weight),
                                1.0 + to_numpy(att.k_norm.weight), eps)
        attrs = dict(num_heads=N, kv_num_heads=KVN, do_rotary=1, rotary_interleaved=0, scale=float(att.scaling))
        if windows[i] is not None:
            attrs["local_window_size"] = int(windows[i])
        if softcap is not None:
            attrs["softcap"] = float(softcap)
        kind = "local" if windows[i] is not None and local else None
        a = g.attention(qkv, i, rotary=tables[kind], **attrs)
        o = _linear(g, f"l{i}.o_proj", a, att.o_proj)
        if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma 2 / 3: norms around each block's output
            x = g.op("Add", [x, _norm(g, f"l{i}.post_attention_layernorm", o, layer.post_attention_layernorm, eps)])
            h = _norm(g, f"l{i}.pre_feedforward_layernorm", x, layer.pre_feedforward_layernorm, eps)
        else:  # Gemma: as Llama
            x = g.op("Add", [x, o])
            h = _norm(g, f"l{i}.post_attention_layernorm", x, layer.post_attention_layernorm, eps)
        gate = _linear(g, f"l{i}.gate_proj", h, mlp.gate_proj)
        up = _linear(g, f"l{i}.up_proj", h, mlp.up_proj)
        act = g.op("FastGelu", [gate], domain="com.microsoft")  # gelu, tanh approximation
        down = _linear(g, f"l{i}.down_proj", g.op("Mul", [act, up]), mlp.down_proj)
        if hasattr(layer, "post_feedforward_layernorm"):
            down = _norm(g, f"l{i}.post_feedforward_layernorm", down, layer.post_feedforward_layernorm, eps)
        x = g.op("Add", [x, down])
        if release:  # this layer's arrays are made: its PyTorch weights can go
            release_weights(layer)
    x = _norm(g, "norm.weight", x, inner.norm, eps)
    head_w = model.lm_head.weight
    tied = head_w.data_ptr() == inner.embed_tokens.weight.data_ptr()
    head = "embed_tokens.weight" if tied else g.init("lm_head.weight", to_numpy(head_w))
    hidden_output(g, x)
    logits_head(g, x, head, D, V, softcap=getattr(cfg, "final_logit_softcapping", None))

    inputs, outputs = io_values(L, KVN, H, V, hidden=D)
    external = save_graph(g, f"{cfg.model_type}-fused-gqa", inputs, outputs, out_path)
    return {"inputs": [i.name for i in inputs], "outputs": [o.name for o in outputs], "external_data": external,
            "max_positions": P}
