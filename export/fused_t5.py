"""The fused T5 graphs (``kv_layout="fused"``, model_type t5 / mt5): our own fp32 encoder and decoder built with
onnx.helper from the transformers model's weights.

``encoder_model.onnx``: input_ids [b, S] int64, attention_mask [b, S] int64 -> ``cross_key_values.{i}.key|value``
[b, heads, S, head_dim] for every decoder layer i: the cross-attention keys/values, computed once per source.
Each encoder layer is one ``com.microsoft.MultiHeadAttention`` whose ``attention_bias`` is T5's relative position bias
plus the padding mask (``(1 - mask) * finfo.min``, transformers' arithmetic).

``decoder_model.onnx``: input_ids [b, s] int64 (rows all of one length: decoder ids are never padded),
seqlens_k [b] int32 (each row's length after the step, minus 1), total_sequence_length [] int32 (= that length),
encoder_attention_mask [b, S] int64, the cross keys/values, ``past_key_values.{i}.key|value`` [b, heads, capacity,
head_dim] (preallocated buffers, bound as both past and ``present.{i}.key|value`` by the runtime, so a step appends
in place) -> logits [b, s, V]. Self-attention: one ``GroupQueryAttention`` per layer (kv_num_heads = num_heads,
causal, no rotary) with the decoder's relative position bias as ``attention_bias`` [1, heads, s, total] (computed
once, shared by every layer, as transformers does). Cross-attention: ``MultiHeadAttention`` on the cached cross
keys/values (BNSH) with the padding mask as ``attention_bias``. T5 does not scale scores: scale = 1.0 everywhere.

Relative position buckets: a lookup table per stack, computed at export by the model's own
``_relative_position_bucket`` and embedding (exact): the decoder's over distances q - k in [0, max_distance], the
encoder's over k - q in [-max_distance, max_distance]; farther distances share the last bucket (checked at export).
The head: a tied ``shared`` embedding (stored once) after ``d_model ** -0.5`` scaling, or the untied ``lm_head``.
"""
from __future__ import annotations

import numpy as np

from onnxlm.runtime.errors import ExportError

from .fused_graph import Graph, check_head_dim, save_graph, to_numpy

FUSED_TYPES = ("t5", "mt5")
ACTIVATIONS = ("relu", "gelu_new", "gelu_pytorch_tanh", "gelu")
MIN = float(np.finfo(np.float32).min)


def check_supported(model) -> None:
    """Raise ExportError naming the first config setting the fused T5 graphs cannot express."""
    cfg = model.config
    if cfg.model_type not in FUSED_TYPES:
        raise ExportError(f"kv_layout='fused': model_type {cfg.model_type!r} is not a T5")
    if cfg.dense_act_fn not in ACTIVATIONS:
        raise ExportError(f"kv_layout='fused': T5 activation {cfg.dense_act_fn!r} is not supported; supported: "
                          f"{', '.join(ACTIVATIONS)}")
    check_head_dim(cfg.d_kv)


def bias_tables(model) -> tuple[np.ndarray, np.ndarray]:
    """-> encoder table [2 M + 1, heads] (row k - q + M), decoder table [M + 1, heads] (row q - k), M = max_distance:
    the relative position bias of every distance, by the model's own bucketing and embedding."""
    import torch

    cfg = model.config
    m = int(cfg.relative_attention_max_distance)
    tables = []
    for stack, rel in ((model.encoder, torch.arange(-m, m + 1)), (model.decoder, -torch.arange(0, m + 1))):
        att = stack.block[0].layer[0].SelfAttention
        bucket = att._relative_position_bucket
        kw = dict(bidirectional=not att.is_decoder, num_buckets=cfg.relative_attention_num_buckets, max_distance=m)
        far = bucket(torch.tensor([-m, -4 * m, m, 4 * m]), **kw)  # beyond max_distance: the edge buckets
        if far[0] != far[1] or (not att.is_decoder and far[2] != far[3]):
            raise ExportError("kv_layout='fused': T5 relative buckets keep changing past "
                              "relative_attention_max_distance")
        with torch.no_grad():
            tables.append(to_numpy(att.relative_attention_bias(bucket(rel, **kw))))
    return tables[0], tables[1]


def _norm(g: Graph, name: str, x: str, ln) -> str:
    """x [..., D] -> T5LayerNorm(x): RMS norm in fp32 times the weight."""
    return g.op("SimplifiedLayerNormalization", [x, g.init(name, to_numpy(ln.weight))], axis=-1,
                epsilon=float(ln.variance_epsilon), stash_type=1)


def _matmul(g: Graph, name: str, x: str, *linears) -> str:
    """x [..., in] -> [..., sum of outs]: one MatMul on the bias-free Linear layers' weights side by side."""
    return g.op("MatMul", [x, g.init(name, np.concatenate([to_numpy(lin.weight).T for lin in linears], axis=1))])


def _ff(g: Graph, name: str, x: str, ff, act: str) -> str:
    """T5LayerFF without its norm: x [b, s, D] -> wo(act(wi x)) or wo(act(wi_0 x) * wi_1 x) [b, s, D]."""
    dense = ff.DenseReluDense
    gated = hasattr(dense, "wi_0")
    h = _matmul(g, f"{name}.wi", x, dense.wi_0 if gated else dense.wi)
    if act == "relu":
        h = g.op("Relu", [h])
    elif act == "gelu":
        h = g.op("Gelu", [h], domain="com.microsoft")
    else:  # gelu_new / gelu_pytorch_tanh: the tanh formula
        h = g.op("FastGelu", [h], domain="com.microsoft")
    if gated:
        h = g.op("Mul", [h, _matmul(g, f"{name}.wi_1", x, dense.wi_1)])
    return _matmul(g, f"{name}.wo", h, dense.wo)


def _mask_bias(g: Graph, mask: str) -> str:
    """mask [b, S] int64 -> [b, 1, 1, S] float32: 0 where attended, finfo.min where padded."""
    inverted = g.op("Sub", [g.init("one", np.array(1.0, np.float32)), g.op("Cast", [mask], to=1)])
    return g.op("Unsqueeze", [g.op("Mul", [inverted, g.init("min", np.array(MIN, np.float32))]),
                              g.init("axes_1_2", np.array([1, 2], np.int64))])


def _bias_lookup(g: Graph, table: str, distance: str) -> str:
    """table [rows, heads], distance [q, k] int64 (a row index) -> bias [1, heads, q, k]."""
    values = g.op("Gather", [table, distance], axis=0)  # [q, k, heads]
    return g.op("Unsqueeze", [g.op("Transpose", [values], perm=[2, 0, 1]), g.init("axis_0", np.array([0]))])


def _seq_len(g: Graph, ids: str) -> str:
    """ids [b, s] -> s as an int64 scalar."""
    return g.op("Squeeze", [g.op("Shape", [ids], start=1, end=2)])


def build_encoder(model, out_path) -> dict:
    """The encoder graph: input_ids, attention_mask -> cross_key_values.{i}.key|value (see the module docstring)."""
    from onnx import TensorProto as TP
    from onnx import helper

    cfg = model.config
    N, H, M = cfg.num_heads, cfg.d_kv, int(cfg.relative_attention_max_distance)
    g = Graph()
    enc_table, _ = bias_tables(model)
    g.init("encoder.bias_table", enc_table)
    # relative position bias [1, N, S, S] (+ padding mask [b, 1, 1, S]) -> [b, N, S, S]
    seq = g.op("Range", [g.init("zero", np.array(0, np.int64)), _seq_len(g, "input_ids"),
                         g.init("one_i", np.array(1, np.int64))])  # [S]
    rel = g.op("Sub", [g.op("Unsqueeze", [seq, g.init("axis_0", np.array([0]))]),
                       g.op("Unsqueeze", [seq, g.init("axis_1", np.array([1]))])])  # [S, S]: k - q
    m = g.init("m", np.array(M, np.int64))
    row = g.op("Add", [g.op("Clip", [rel, g.init("neg_m", np.array(-M, np.int64)), m]), m])  # k - q + M
    bias = g.op("Add", [_bias_lookup(g, "encoder.bias_table", row), _mask_bias(g, "attention_mask")])

    g.init("shared.weight", to_numpy(model.shared.weight))
    x = g.op("Gather", ["shared.weight", "input_ids"], axis=0)  # [b, S, D]
    for i, block in enumerate(model.encoder.block):
        att_layer, ff_layer = block.layer[0], block.layer[-1]
        att = att_layer.SelfAttention
        h = _norm(g, f"encoder.{i}.ln_att", x, att_layer.layer_norm)
        q, k, v = g.op("Split", [_matmul(g, f"encoder.{i}.qkv", h, att.q, att.k, att.v)], n_out=3, axis=-1)
        a = g.op("MultiHeadAttention", [q, k, v, "", "", bias], domain="com.microsoft", num_heads=N, scale=1.0)
        x = g.op("Add", [x, _matmul(g, f"encoder.{i}.o", a, att.o)])
        h = _norm(g, f"encoder.{i}.ln_ff", x, ff_layer.layer_norm)
        x = g.op("Add", [x, _ff(g, f"encoder.{i}.ff", h, ff_layer, cfg.dense_act_fn)])
    x = _norm(g, "encoder.final_layer_norm", x, model.encoder.final_layer_norm)
    heads = g.init("bsnh", np.array([0, 0, N, H], np.int64))
    outputs = []
    for i, block in enumerate(model.decoder.block):
        cross = block.layer[1].EncDecAttention
        for kind, lin in (("key", cross.k), ("value", cross.v)):
            g.op("Transpose", [g.op("Reshape", [_matmul(g, f"decoder.{i}.cross.{kind[0]}", x, lin), heads])],
                 perm=[0, 2, 1, 3])  # [b, N, S, H]
            g.nodes[-1].output[0] = f"cross_key_values.{i}.{kind}"  # the Transpose writes the graph output
            outputs.append(helper.make_tensor_value_info(f"cross_key_values.{i}.{kind}", TP.FLOAT,
                                                         ["batch", N, "encoder_sequence", H]))
    inputs = [helper.make_tensor_value_info(n, TP.INT64, ["batch", "encoder_sequence"])
              for n in ("input_ids", "attention_mask")]
    external = save_graph(g, f"{cfg.model_type}-fused-encoder", inputs, outputs, out_path)
    return {"inputs": [i.name for i in inputs], "outputs": [o.name for o in outputs], "external_data": external}


def build_decoder(model, out_path) -> dict:
    """The decoder graph (see the module docstring)."""
    from onnx import TensorProto as TP
    from onnx import helper

    cfg = model.config
    N, H, D, V, M = cfg.num_heads, cfg.d_kv, cfg.d_model, cfg.vocab_size, int(cfg.relative_attention_max_distance)
    g = Graph()
    _, dec_table = bias_tables(model)
    g.init("decoder.bias_table", dec_table)
    # self-attention bias [1, N, s, T]: rows q - k of the table for queries T-s..T-1 and keys 0..T-1
    total = g.op("Cast", ["total_sequence_length"], to=TP.INT64)
    zero, one = g.init("zero", np.array(0, np.int64)), g.init("one_i", np.array(1, np.int64))
    queries = g.op("Range", [g.op("Sub", [total, _seq_len(g, "input_ids")]), total, one])  # [s]
    keys = g.op("Range", [zero, total, one])  # [T]
    dist = g.op("Sub", [g.op("Unsqueeze", [queries, g.init("axis_1", np.array([1]))]),
                        g.op("Unsqueeze", [keys, g.init("axis_0", np.array([0]))])])  # [s, T]
    row = g.op("Clip", [dist, zero, g.init("m", np.array(M, np.int64))])  # later keys: masked by causality
    self_bias = _bias_lookup(g, "decoder.bias_table", row)
    # cross-attention bias [b, 1, s, S]: the padding mask, one row per query
    cross_bias = g.op("Expand", [_mask_bias(g, "encoder_attention_mask"),
                                 g.op("Concat", [g.init("ones_2", np.array([1, 1], np.int64)),
                                                 g.op("Shape", ["input_ids"], start=1, end=2), "axis_1"], axis=0)])

    tied = model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()
    g.init("shared.weight", to_numpy(model.shared.weight))
    x = g.op("Gather", ["shared.weight", "input_ids"], axis=0)  # [b, s, D]
    for i, block in enumerate(model.decoder.block):
        self_layer, cross_layer, ff_layer = block.layer[0], block.layer[1], block.layer[2]
        att = self_layer.SelfAttention
        h = _norm(g, f"decoder.{i}.ln_self", x, self_layer.layer_norm)
        qkv = _matmul(g, f"decoder.{i}.qkv", h, att.q, att.k, att.v)  # [b, s, 3 N H], fed to GQA packed
        a = g.attention(qkv, i, self_bias, num_heads=N, kv_num_heads=N, do_rotary=0, scale=1.0)
        x = g.op("Add", [x, _matmul(g, f"decoder.{i}.o", a, att.o)])
        cross = cross_layer.EncDecAttention
        h = _norm(g, f"decoder.{i}.ln_cross", x, cross_layer.layer_norm)
        q = _matmul(g, f"decoder.{i}.cross.q", h, cross.q)
        a = g.op("MultiHeadAttention", [q, f"cross_key_values.{i}.key", f"cross_key_values.{i}.value", "", "",
                                        cross_bias], domain="com.microsoft", num_heads=N, scale=1.0)
        x = g.op("Add", [x, _matmul(g, f"decoder.{i}.cross.o", a, cross.o)])
        h = _norm(g, f"decoder.{i}.ln_ff", x, ff_layer.layer_norm)
        x = g.op("Add", [x, _ff(g, f"decoder.{i}.ff", h, ff_layer, cfg.dense_act_fn)])
    x = _norm(g, "decoder.final_layer_norm", x, model.decoder.final_layer_norm)
    if tied:  # transformers scales the hidden states before a tied head
        x = g.op("Mul", [x, g.init("head_scale", np.array(D ** -0.5, np.float32))])
    head = "shared.weight" if tied else g.init("lm_head.weight", to_numpy(model.lm_head.weight))
    flat = g.op("Reshape", [x, g.init("shape_2d", np.array([-1, D], np.int64))])  # [b*s, D]
    logits2d = g.op("Gemm", [flat, head], transB=1)  # [b*s, V]
    out_shape = g.op("Concat", [g.op("Shape", ["input_ids"]), g.init("vocab_dim", np.array([V], np.int64))], axis=0)
    g.nodes.append(helper.make_node("Reshape", [logits2d, out_shape], ["logits"], name="logits"))

    f = TP.FLOAT
    inputs = [helper.make_tensor_value_info("input_ids", TP.INT64, ["batch", "sequence"]),
              helper.make_tensor_value_info("seqlens_k", TP.INT32, ["batch"]),
              helper.make_tensor_value_info("total_sequence_length", TP.INT32, []),
              helper.make_tensor_value_info("encoder_attention_mask", TP.INT64, ["batch", "encoder_sequence"])]
    outputs = [helper.make_tensor_value_info("logits", f, ["batch", "sequence", V])]
    for i in range(cfg.num_decoder_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"cross_key_values.{i}.{kind}", f,
                                                        ["batch", N, "encoder_sequence", H]))
    for i in range(cfg.num_decoder_layers):
        for kind in ("key", "value"):
            shape = ["batch", N, "buffer_length", H]
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f, shape))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f, shape))
    external = save_graph(g, f"{cfg.model_type}-fused-decoder", inputs, outputs, out_path)
    return {"inputs": [i.name for i in inputs], "outputs": [o.name for o in outputs], "external_data": external}


def build_fused_graph(model, out_dir, max_positions: int | None = None) -> dict:
    """transformers T5ForConditionalGeneration -> encoder_model.onnx + decoder_model.onnx in ``out_dir``; returns
    {"files": {"encoder": ..., "decoder": ...}}."""
    from pathlib import Path

    check_supported(model)
    out_dir = Path(out_dir)
    build_encoder(model, out_dir / "encoder_model.onnx")
    build_decoder(model, out_dir / "decoder_model.onnx")
    return {"files": {"encoder": "encoder_model.onnx", "decoder": "decoder_model.onnx"}}
