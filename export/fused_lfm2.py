"""The fused decoder graph (``kv_layout="fused"``) for LFM2 (Liquid AI's hybrid: short gated convolutions beside
grouped-query attention layers), built like ``fused_llama.py``'s graph (right-padded rows, the same inputs, one
GroupQueryAttention per attention layer on in-place KV buffers), with what LFM2 adds:

* an attention layer (``layer_types[i] == "full_attention"``): per-head RMSNorm of q and k (``q_layernorm`` /
  ``k_layernorm``) before the rotary, as Qwen 3's; its KV buffers ``past_key_values.{i}.*`` are named by the layer's
  index, so the graph holds buffers for its attention layers only;
* a convolution layer: ``in_proj`` gives B, C and x; ``B * x`` goes through a depthwise causal convolution of
  ``conv_L_cache`` (K) taps over time; ``C *`` its output goes through ``out_proj``. Its state is the last K - 1
  values of ``B * x`` of each row: input ``conv_state.{i}`` [b, K - 1, D] (zeros before a row's first token), output
  ``conv_states.{i}`` [b, r, D]: the rows ``conv_gather`` [b, r] int64 picks from the window (the state, then this
  pass's ``B * x``: [b, K - 1 + s, D]). The runtime asks for each row's state after its last new token
  (``runtime/fused/hybrid_lm.py``), or after every new token of an ``extend`` (to roll back rejected drafts);
* the SwiGLU feed-forward ``w2(silu(w1 x) * w3 x)`` under the graph's names ``gate_proj`` / ``up_proj`` /
  ``down_proj``; the final norm (transformers' ``embedding_norm``) before the head.

transformers' own decode step (``Lfm2ShortConv.slow_forward``) writes the new value at slot ``min(position, K - 1)``
of its rolled state, which loses a value while a row holds fewer than K - 1 positions (a one-token prompt's first
step); the graph convolves the true window there, as its prompt pass does.
"""
from __future__ import annotations

import numpy as np

from onnxlm.runtime.errors import ExportError

from .fused_graph import (Graph, check_head_dim, hidden_output, io_values, logits_head, qk_head_norms, release_weights, rms_norm,
                          save_graph, to_numpy)
from .fused_llama import _linear, _w, rotary_caches
from .onnx_export import position_limit, rope_type_of

FUSED_TYPES = ("lfm2",)
HEAD_MULTIPLE = 16  # the head sizes this graph takes: GroupQueryAttention rotates q and k itself


def check_supported(model) -> None:
    """Raise ExportError naming the first config setting this builder cannot express."""
    cfg = model.config
    if cfg.model_type not in FUSED_TYPES:
        raise ExportError(f"kv_layout='fused': model_type {cfg.model_type!r} is not supported by the LFM2 builder")
    if rope_type_of(cfg) not in ("default", "linear"):
        raise ExportError(f"kv_layout='fused': LFM2 with rope_scaling {cfg.rope_scaling!r} is not supported; "
                          "supported rope_scaling types: default, linear")
    if int(cfg.conv_L_cache) < 2:
        raise ExportError(f"kv_layout='fused': conv_L_cache {cfg.conv_L_cache} is not supported (2 or more taps)")
    check_head_dim(cfg.hidden_size // cfg.num_attention_heads, cfg.model_type, HEAD_MULTIPLE)
    if not attention_layers(cfg) or len(attention_layers(cfg)) == cfg.num_hidden_layers:
        raise ExportError("kv_layout='fused': an LFM2 config needs both attention and convolution layers "
                          f"(layer_types {cfg.layer_types!r})")


def attention_layers(config) -> list[int]:
    """The indices of an LFM2 config's attention layers (the others convolve)."""
    return [i for i, t in enumerate(config.layer_types) if t == "full_attention"]


def _short_conv(g: Graph, x: str, i: int, conv, hidden: int, taps: int) -> str:
    """x [b, s, D] (normed) -> the convolution layer's output [b, s, D]; adds output ``conv_states.{i}``."""
    bcx = _linear(g, f"l{i}.in_proj", x, conv.in_proj)                                  # [b, s, 3D]
    sizes = g.init(f"conv_split_{hidden}", np.array([hidden, hidden, hidden], np.int64))
    b, c, xx = g.op("Split", [bcx, sizes], n_out=3, axis=-1)
    window = g.op("Concat", [f"conv_state.{i}", g.op("Mul", [b, xx])], axis=1)         # [b, K-1+s, D]
    # depthwise causal convolution over time: [b, D, K-1+s] -> [b, D, s]
    weight = g.init(f"l{i}.conv.weight", to_numpy(conv.conv.weight))                  # [D, 1, K]
    inputs = [g.op("Transpose", [window], perm=[0, 2, 1]), weight]
    if conv.conv.bias is not None:
        inputs.append(g.init(f"l{i}.conv.bias", to_numpy(conv.conv.bias)))
    out = g.op("Transpose", [g.op("Conv", inputs, group=hidden, kernel_shape=[taps])], perm=[0, 2, 1])
    # the states the runtime asks for: rows of the window [b, r, D]
    from onnx import helper

    g.nodes.append(helper.make_node("GatherND", [window, g.op("Unsqueeze", ["conv_gather", "axis_last"])],
                                    [f"conv_states.{i}"], name=f"conv_states_{i}", batch_dims=1))
    return _linear(g, f"l{i}.out_proj", g.op("Mul", [c, out]), conv.out_proj)


def build_fused_graph(model, out_path, max_positions: int | None = None, *, release: bool = False) -> dict:
    """transformers Lfm2ForCausalLM -> the fused graph written to ``out_path``; returns {"inputs": [...], "outputs":
    [...], "external_data": file name or None, "max_positions": P}. ``release``: drop each layer's PyTorch weights once
    its arrays are made."""
    from onnx import TensorProto as TP
    from onnx import helper

    check_supported(model)
    cfg = model.config
    N, KVN, D, V = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size, cfg.vocab_size
    H, K, eps = D // N, int(cfg.conv_L_cache), float(cfg.norm_eps)
    P = int(max_positions or position_limit(cfg))
    inner = model.model
    g = Graph()
    g.init("axis_last", np.array([-1]))
    g.init("embed_tokens.weight", to_numpy(inner.embed_tokens.weight))
    cos, sin = rotary_caches(model, P, rot=inner.pos_emb)  # the module forward() rotates with
    g.init("cos_cache", cos)
    g.init("sin_cache", sin)

    x = g.op("Gather", ["embed_tokens.weight", "input_ids"], axis=0)  # [b, s, D]
    for i, layer in enumerate(inner.layers):
        h = rms_norm(g, x, f"l{i}.input_layernorm", to_numpy(layer.operator_norm.weight), eps)
        if layer.is_attention_layer:
            att = layer.self_attn
            wqkv = np.concatenate([_w(att.q_proj), _w(att.k_proj), _w(att.v_proj)], axis=1)
            qkv = g.op("MatMul", [h, g.init(f"l{i}.qkv.weight", wqkv)])      # [b, s, (N + 2 KVN) H]
            qkv = qk_head_norms(g, qkv, i, N, KVN, H, to_numpy(att.q_layernorm.weight),
                                to_numpy(att.k_layernorm.weight), eps)
            a = g.attention(qkv, i, num_heads=N, kv_num_heads=KVN, do_rotary=1, scale=float(att.scaling))
            o = _linear(g, f"l{i}.o_proj", a, att.out_proj)
        else:
            o = _short_conv(g, h, i, layer.conv, D, K)
        x = g.op("Add", [x, o])
        h = rms_norm(g, x, f"l{i}.post_attention_layernorm", to_numpy(layer.ffn_norm.weight), eps)
        mlp = layer.feed_forward
        gate = _linear(g, f"l{i}.gate_proj", h, mlp.w1)
        up = _linear(g, f"l{i}.up_proj", h, mlp.w3)
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate])])  # SiLU
        x = g.op("Add", [x, _linear(g, f"l{i}.down_proj", g.op("Mul", [act, up]), mlp.w2)])
        if release:
            release_weights(layer)
    x = rms_norm(g, x, "norm.weight", to_numpy(inner.embedding_norm.weight), eps)
    head_w = model.lm_head.weight
    tied = head_w.data_ptr() == inner.embed_tokens.weight.data_ptr()
    head = "embed_tokens.weight" if tied else g.init("lm_head.weight", to_numpy(head_w))
    hidden_output(g, x)
    logits_head(g, x, head, D, V)

    inputs, outputs = io_values(attention_layers(cfg), KVN, H, V, hidden=D)  # KV buffers of the attention layers only
    inputs.append(helper.make_tensor_value_info("conv_gather", TP.INT64, ["batch", "gathered"]))
    for i in (i for i in range(cfg.num_hidden_layers) if i not in attention_layers(cfg)):
        inputs.append(helper.make_tensor_value_info(f"conv_state.{i}", TP.FLOAT, ["batch", K - 1, D]))
        outputs.append(helper.make_tensor_value_info(f"conv_states.{i}", TP.FLOAT, ["batch", "gathered", D]))
    external = save_graph(g, "lfm2-fused-gqa-conv", inputs, outputs, out_path)
    return {"inputs": [i.name for i in inputs], "outputs": [o.name for o in outputs], "external_data": external,
            "max_positions": P}
