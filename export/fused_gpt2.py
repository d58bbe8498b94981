"""The fused GPT-2 graph (``kv_layout="fused"``): our own fp32 ONNX graph built with onnx.helper from the
transformers GPT-2 model's weights, one ``com.microsoft.GroupQueryAttention`` node per layer (kv_num_heads =
num_heads, do_rotary=0) whose KV cache lives in preallocated buffers appended in place (see ``fused_llama.py`` for
the buffer contract, which is the same).

Positions are learned (``wpe``): the graph takes ``position_ids`` [b, s] int64 besides the common inputs
(``fused_graph.io_values``); the runtime feeds each new token's index in its right-packed row (the plain graph's
``cumsum(mask) - 1``). Per layer: LayerNorm, the packed ``c_attn`` (Conv1D weights are already [in, out]) straight
into GQA, ``c_proj``, LayerNorm, ``c_fc`` + activation (``gelu_new``/``gelu_pytorch_tanh`` as FastGelu, the same tanh
formula; ``gelu`` as Gelu; ``relu``), ``c_proj``. The head is the tied ``wte`` (stored once) or ``lm_head``.
Attention scale: 1/sqrt(head_dim), divided by layer_idx + 1 with ``scale_attn_by_inverse_layer_idx`` (transformers'
eager semantics; the exporter validates such models eager, ``onnx_export.attn_implementation_for``).

Refused (``kv_layout="auto"`` then exports the plain graph): ``reorder_and_upcast_attn``, ``scale_attn_weights=False``
(transformers' SDPA attention ignores it, its eager attention honours it: no single answer to match),
``add_cross_attention``, other activations.
"""
from __future__ import annotations

import math

from onnxlm.runtime.errors import ExportError

from .fused_graph import (Graph, check_head_dim, hidden_output, io_values, layer_norm, logits_head, release_weights, save_graph,
                          to_numpy)

FUSED_TYPES = ("gpt2",)
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu", "relu")


def check_supported(model) -> None:
    """Raise ExportError naming the first config setting the fused GPT-2 graph cannot express."""
    cfg = model.config
    if cfg.model_type not in FUSED_TYPES:
        raise ExportError(f"kv_layout='fused': model_type {cfg.model_type!r} is not a GPT-2")
    refused = {"reorder_and_upcast_attn": True, "add_cross_attention": True, "scale_attn_weights": False}
    for name, bad in refused.items():
        if bool(getattr(cfg, name, not bad)) == bad:
            raise ExportError(f"kv_layout='fused': GPT-2 with {name}={bad} is not supported (use kv_layout='plain')")
    if cfg.activation_function not in ACTIVATIONS:
        raise ExportError(f"kv_layout='fused': activation_function {cfg.activation_function!r} is not supported; "
                          f"supported: {', '.join(ACTIVATIONS)}")
    check_head_dim(cfg.n_embd // cfg.n_head)


def _conv1d(g: Graph, name: str, x: str, conv) -> str:
    """x [..., in] -> [..., out] + bias: GPT-2's Conv1D (weight already [in, out])."""
    y = g.op("MatMul", [x, g.init(f"{name}.weight", to_numpy(conv.weight))])
    return g.op("Add", [y, g.init(f"{name}.bias", to_numpy(conv.bias))])


def _mlp(g: Graph, i: int, x: str, mlp, activation: str) -> str:
    """x [b, s, D] -> c_proj(act(c_fc(x))) [b, s, D]."""
    h = g.op("MatMul", [x, g.init(f"h{i}.mlp.c_fc.weight", to_numpy(mlp.c_fc.weight))])
    bias = g.init(f"h{i}.mlp.c_fc.bias", to_numpy(mlp.c_fc.bias))
    if activation in ("gelu_new", "gelu_pytorch_tanh"):  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        h = g.op("FastGelu", [h, bias], domain="com.microsoft")
    elif activation == "gelu":  # erf
        h = g.op("Gelu", [g.op("Add", [h, bias])], domain="com.microsoft")
    else:
        h = g.op("Relu", [g.op("Add", [h, bias])])
    return _conv1d(g, f"h{i}.mlp.c_proj", h, mlp.c_proj)


def build_fused_graph(model, out_path, max_positions: int | None = None, *, release: bool = False) -> dict:
    """transformers GPT2LMHeadModel -> the fused graph written to ``out_path``; returns
    {"inputs": [...], "outputs": [...], "external_data": file name or None, "max_positions": P}. ``release``: drop each
    layer's PyTorch weights once its arrays are made (``fused_graph.release_weights``; ``fused.build_fused_graphs``
    drops the rest once the graph is written)."""
    check_supported(model)
    cfg = model.config
    N, D, V = cfg.n_head, cfg.n_embd, cfg.vocab_size
    H = D // N
    inner = model.transformer
    g = Graph()

    g.init("wte.weight", to_numpy(inner.wte.weight))
    g.init("wpe.weight", to_numpy(inner.wpe.weight))
    x = g.op("Add", [g.op("Gather", ["wte.weight", "input_ids"], axis=0),  # [b, s, D]
                     g.op("Gather", ["wpe.weight", "position_ids"], axis=0)])
    for i, block in enumerate(inner.h):
        h = layer_norm(g, x, f"h{i}.ln_1", block.ln_1)
        qkv = _conv1d(g, f"h{i}.attn.c_attn", h, block.attn.c_attn)  # [b, s, 3D]: q | k | v, fed to GQA packed
        scale = 1.0 / math.sqrt(H)
        if cfg.scale_attn_by_inverse_layer_idx:
            scale /= float(i + 1)
        a = g.attention(qkv, i, num_heads=N, kv_num_heads=N, do_rotary=0, scale=scale)
        x = g.op("Add", [x, _conv1d(g, f"h{i}.attn.c_proj", a, block.attn.c_proj)])
        h = layer_norm(g, x, f"h{i}.ln_2", block.ln_2)
        x = g.op("Add", [x, _mlp(g, i, h, block.mlp, cfg.activation_function)])
        if release:  # this block's arrays are made: its PyTorch weights can go
            release_weights(block)
    x = layer_norm(g, x, "ln_f", inner.ln_f)
    tied = model.lm_head.weight.data_ptr() == inner.wte.weight.data_ptr()
    head = "wte.weight" if tied else g.init("lm_head.weight", to_numpy(model.lm_head.weight))
    hidden_output(g, x)
    logits_head(g, x, head, D, V)  # the tied embedding is stored once

    inputs, outputs = io_values(cfg.n_layer, N, H, V, extra_inputs=("position_ids",), hidden=D)
    external = save_graph(g, "gpt2-fused-gqa", inputs, outputs, out_path)
    return {"inputs": [i.name for i in inputs], "outputs": [o.name for o in outputs], "external_data": external,
            "max_positions": int(max_positions or cfg.n_positions)}
