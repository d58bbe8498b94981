"""What every fused decoder graph (``kv_layout="fused"``) shares: the node/initializer accumulator, the output head
(only the asked positions go through it; a tied embedding is stored once), the KV buffer inputs/outputs, and saving
(a model's weights over 64 MiB go to ``model.onnx_data``, which onnxruntime memory-maps). The model-specific builders are ``fused_llama.py``,
``fused_gemma.py``, ``fused_gpt2.py`` and ``fused_t5.py``; ``fused.py`` picks one by model_type.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

OPSET = 17
MAX_INLINE_BYTES = 64 << 20  # weights above this in all go to model.onnx_data, memory-mapped (protobuf's limit: 2 GB)


def check_head_dim(head_dim: int, model_type: str = "", multiple: int = 8) -> None:
    """onnxruntime's CPU GroupQueryAttention needs head_dim % 8 == 0, and % 16 where it rotates q and k itself
    (``multiple=16``: a builder's ``HEAD_MULTIPLE``): ExportError otherwise."""
    from onnxlm.runtime.errors import ExportError

    if head_dim % 8:
        raise ExportError(f"kv_layout='fused': head_dim {head_dim} is not a multiple of 8, which onnxruntime's "
                          f"GroupQueryAttention needs ({plain_hint(model_type)})")
    if head_dim % multiple:
        raise ExportError(f"kv_layout='fused': head_dim {head_dim} is not a multiple of {multiple}, which onnxruntime's "
                          f"GroupQueryAttention needs to rotate q and k itself ({plain_hint(model_type)})")


def plain_hint(model_type: str) -> str:
    """What to do when the fused builder refuses a model: the plain layout, or, for a model_type the plain exporter
    cannot export (``onnx_export.FUSED_ONLY_TYPES``), that there is no other graph."""
    from .onnx_export import FUSED_ONLY_TYPES

    return (f"model_type {model_type!r} has no other graph: optimum-onnx cannot export it"
            if model_type in FUSED_ONLY_TYPES else "use kv_layout='plain'")


def release_weights(module) -> None:
    """Drop ``module``'s PyTorch parameters (each becomes an empty tensor) once its graph arrays are made. Only for a
    model the export loaded itself (``export_model`` on a path): its weights' memory then goes back layer by layer
    while the graph is built, where the PyTorch weights and the graph's transposed copies had been held at once (a
    Llama-3.2-1B-shaped GGUF: 9.8 GB at the end of the build, 4.9 GB of it the PyTorch weights)."""
    import torch

    for p in module.parameters():
        p.data = torch.empty(0, dtype=p.dtype)


class Graph:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self):
        self.nodes, self.n, self.arrays = [], 0, {}  # arrays: the initializers by name, in order (``save_graph``)

    def init(self, name: str, array: np.ndarray) -> str:
        """An initializer ``name`` holding ``array``; a name given twice must hold the same array (stored once)."""
        if name in self.arrays:
            if not np.array_equal(self.arrays[name], array):
                raise ValueError(f"initializer {name!r} given two different values")
            return name
        self.arrays[name] = np.ascontiguousarray(array)
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs):
        from onnx import helper

        self.n += 1
        outs = [f"{op_type}_{self.n}_{j}" for j in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=f"{op_type}_{self.n}", domain=domain,
                                           **attrs))
        return outs[0] if n_out == 1 else outs

    def attention(self, qkv: str, layer: int, bias: str | None = None,
                  rotary: tuple[str, str] = ("cos_cache", "sin_cache"), **attrs) -> str:
        """Packed q/k/v [b, s, (N + 2 KVN) H] -> attention output [b, s, N H] through one GroupQueryAttention node
        whose past and present are layer ``layer``'s KV buffers (``attrs``: the node's attributes; with
        do_rotary=1 the graph must hold the ``rotary`` cos/sin tables; ``bias``: an attention_bias
        [b or 1, N, s, total])."""
        rotary = list(rotary) if attrs.get("do_rotary") else ["", ""]
        extra = ["", bias] if bias is not None else []  # position_ids (unused), attention_bias
        inputs = [qkv, "", "", f"past_key_values.{layer}.key", f"past_key_values.{layer}.value", "seqlens_k",
                  "total_sequence_length", *rotary, *extra]
        while inputs[-1] == "":
            inputs.pop()
        a, _, _ = self.op("GroupQueryAttention", inputs, n_out=3, domain="com.microsoft", **attrs)
        self.nodes[-1].output[1], self.nodes[-1].output[2] = f"present.{layer}.key", f"present.{layer}.value"
        return a


def rotate_qk(g: Graph, qkv: str, heads: int, kv_heads: int, head_dim: int, rotary_dim: int,
              interleaved: bool = False) -> str:
    """Packed q/k/v [b, s, (N + 2 KVN) H] -> the same with the first ``rotary_dim`` dims of each q and k head rotated
    at the graph input ``position_ids`` [b, s] by the ``cos_cache`` / ``sin_cache`` tables [P, rotary_dim / 2]
    (``com.microsoft.RotaryEmbedding``; ``interleaved``: adjacent pairs): a partial rotary GroupQueryAttention cannot
    take itself (its node then has do_rotary=0)."""
    return _each_qk(g, qkv, heads, kv_heads, head_dim, lambda x, role, n: g.op(
        "RotaryEmbedding", [x, "position_ids", "cos_cache", "sin_cache"], domain="com.microsoft", num_heads=n,
        rotary_embedding_dim=rotary_dim, interleaved=int(interleaved)))


def rms_norm(g: Graph, x: str, name: str, weight: np.ndarray, eps: float) -> str:
    """x [..., n] -> RMSNorm(x) * weight (``weight`` [n], stored as float32 initializer ``name``)."""
    return g.op("SimplifiedLayerNormalization", [x, g.init(name, weight.astype(np.float32))], axis=-1, epsilon=eps,
                stash_type=1)


def layer_norm(g: Graph, x: str, name: str, ln) -> str:
    """x [..., n] -> LayerNorm(x) with the nn.LayerNorm ``ln``'s weight, bias and eps (initializers ``name.weight``,
    ``name.bias``)."""
    return g.op("LayerNormalization", [x, g.init(f"{name}.weight", to_numpy(ln.weight)),
                                       g.init(f"{name}.bias", to_numpy(ln.bias))], axis=-1, epsilon=float(ln.eps))


def qk_head_norms(g: Graph, qkv: str, layer: int, heads: int, kv_heads: int, head_dim: int, q_weight: np.ndarray,
                  k_weight: np.ndarray, eps: float) -> str:
    """Packed q/k/v [b, s, (N + 2 KVN) H] -> the same with a per-head RMSNorm on q and on k (weights [H] float32,
    initializers ``l{layer}.q_norm`` / ``.k_norm``): Gemma 3's and Qwen 3's q_norm / k_norm before the rotary. q and k
    are unpacked, normed over each head's H values, and packed again with v."""
    def norm(x: str, name: str, weight: np.ndarray, n: int) -> str:  # [b, s, n H] -> [b, s, n, H] -> normed, flat
        split = g.op("Reshape", [x, g.init(f"shape_heads_{n}", np.array([0, 0, n, head_dim], np.int64))])
        normed = rms_norm(g, split, name, weight, eps)
        return g.op("Reshape", [normed, g.init(f"shape_flat_{n}", np.array([0, 0, n * head_dim], np.int64))])

    return _qk_norms(g, qkv, layer, heads, kv_heads, head_dim, q_weight, k_weight, norm)


def qk_full_norms(g: Graph, qkv: str, layer: int, heads: int, kv_heads: int, head_dim: int, q_weight: np.ndarray,
                  k_weight: np.ndarray, eps: float) -> str:
    """Packed q/k/v [b, s, (N + 2 KVN) H] -> the same with an RMSNorm over all of q's N H values (weight [N H]) and
    over all of k's KVN H (weight [KVN H]): OLMo 2's q_norm / k_norm, before the heads are split."""
    return _qk_norms(g, qkv, layer, heads, kv_heads, head_dim, q_weight, k_weight,
                     lambda x, name, weight, n: rms_norm(g, x, name, weight, eps))


def _qk_norms(g: Graph, qkv: str, layer: int, heads: int, kv_heads: int, head_dim: int, q_weight: np.ndarray,
              k_weight: np.ndarray, norm) -> str:
    """Packed q/k/v [b, s, (N + 2 KVN) H] -> q and k each through ``norm(x, name, weight, its heads)``
    (initializers ``l{layer}.q_norm`` / ``.k_norm``), packed again with v."""
    weights = {"q": q_weight, "k": k_weight}
    return _each_qk(g, qkv, heads, kv_heads, head_dim,
                    lambda x, role, n: norm(x, f"l{layer}.{role}_norm", weights[role], n))


def _each_qk(g: Graph, qkv: str, heads: int, kv_heads: int, head_dim: int, transform) -> str:
    """Packed q/k/v [b, s, (N + 2 KVN) H] -> q and k split off, each through ``transform(x, "q" | "k", its heads)``
    ([b, s, n H] -> the same), packed again with v."""
    sizes = g.init(f"qkv_split_{heads}_{kv_heads}", np.array([heads * head_dim, kv_heads * head_dim,
                                                               kv_heads * head_dim]))
    q, k, v = g.op("Split", [qkv, sizes], n_out=3, axis=-1)
    return g.op("Concat", [transform(q, "q", heads), transform(k, "k", kv_heads), v], axis=-1)


def to_numpy(t) -> np.ndarray:
    """A torch tensor / parameter -> float32 numpy array (a copy)."""
    return t.detach().float().numpy().copy()


def hidden_output(g: Graph, x: str) -> None:
    """x [b, s, D] (the final norm's output, before any logit scaling) -> graph output ``last_hidden_state``
    [b, s, D]: transformers' ``hidden_states[-1]`` at every position, which ``embed`` pools (runtime/embedding.py);
    a pass that does not bind it only computes what it computes anyway."""
    from onnx import helper

    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="last_hidden_state"))


def logits_head(g: Graph, x: str, head: str, hidden: int, vocab: int, softcap: float | None = None) -> None:
    """x [b, s, D] (after the final norm), head = the name of a [V, D] initializer -> graph output ``logits``
    [b, k, V] for the positions in ``logits_positions`` [b, k]; ``softcap``: ``cap * tanh(logits / cap)``."""
    from onnx import helper

    # keep the asked positions: [b, s, D] gather [b, k, 1] -> [b, k, D]
    picked = g.op("GatherND", [x, g.op("Unsqueeze", ["logits_positions", g.init("axis_last", np.array([-1]))])],
                  batch_dims=1)
    flat = g.op("Reshape", [picked, g.init("shape_2d", np.array([-1, hidden], np.int64))])  # [b*k, D]
    logits2d = g.op("Gemm", [flat, head], transB=1)  # [b*k, V]
    if softcap is not None:  # Gemma 2's final-logit soft-capping
        cap = g.init("final_logit_softcap", np.array(softcap, np.float32))
        logits2d = g.op("Mul", [g.op("Tanh", [g.op("Div", [logits2d, cap])]), cap])
    bk = g.op("Shape", ["logits_positions"])  # [b, k]
    out_shape = g.op("Concat", [bk, g.init("vocab_dim", np.array([vocab], np.int64))], axis=0)
    g.nodes.append(helper.make_node("Reshape", [logits2d, out_shape], ["logits"], name="logits"))


def io_values(layers, kv_heads: int, head_dim: int, vocab: int, extra_inputs: tuple[str, ...] = (), *, hidden: int):
    """The fused graph's inputs (input_ids, seqlens_k, total_sequence_length, logits_positions, then
    ``extra_inputs`` [b, s] int64 such as position_ids, then the buffers) and outputs (logits, the buffers, then
    last_hidden_state [b, s, ``hidden``]: ``hidden_output``);
    ``layers``: how many layers hold KV buffers (0..layers-1), or their indices (LFM2's attention layers)."""
    from onnx import TensorProto as TP
    from onnx import helper

    f = TP.FLOAT
    inputs = [helper.make_tensor_value_info("input_ids", TP.INT64, ["batch", "sequence"]),
              helper.make_tensor_value_info("seqlens_k", TP.INT32, ["batch"]),
              helper.make_tensor_value_info("total_sequence_length", TP.INT32, []),
              helper.make_tensor_value_info("logits_positions", TP.INT64, ["batch", "kept"])]
    inputs += [helper.make_tensor_value_info(n, TP.INT64, ["batch", "sequence"]) for n in extra_inputs]
    outputs = [helper.make_tensor_value_info("logits", f, ["batch", "kept", vocab])]
    for i in range(layers) if isinstance(layers, int) else layers:
        for kind in ("key", "value"):
            shape = ["batch", kv_heads, "buffer_length", head_dim]
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f, shape))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f, shape))
    outputs.append(helper.make_tensor_value_info("last_hidden_state", f, ["batch", "sequence", hidden]))
    return inputs, outputs


def _alias_tied_lookup(g: Graph) -> dict[str, str]:
    """A weight read by both a Gather (the lookup) and the head's Gemm -> the Gathers read ``{weight}.lookup``, an
    alias of its bytes; returns {alias: weight}. onnxruntime packs the head's copy and frees its mapping, which the
    lookup would otherwise pin whole (Gemma 3 270M fp32: 671 MB resident, only the looked-up rows so)."""
    heads = {n.input[1] for n in g.nodes if n.op_type == "Gemm" and n.input[1] in g.arrays}
    aliases = {}
    for node in g.nodes:
        if node.op_type == "Gather" and node.input[0] in heads:
            aliases[f"{node.input[0]}.lookup"] = node.input[0]
            node.input[0] = f"{node.input[0]}.lookup"
    return aliases


def save_graph(g: Graph, name: str, inputs, outputs, out_path) -> str | None:
    """Write the graph to ``out_path``; returns the external data file's name, or None when the weights are inline
    (``MAX_INLINE_BYTES`` or less: one self-contained file). Above it each weight goes from its array straight to
    ``out_path.name + "_data"`` at an aligned offset (``mapped_weights.write_arrays``), which onnxruntime memory-maps:
    building protobuf tensors of a model's weights copied them four times over (Gemma 3 270M fp32: 46 s and ~5 GB of
    transient memory to save 1.1 GB); a tied embedding's lookup then reads an alias of the head's weight
    (``_alias_tied_lookup``), and a head over ``nbits.HEAD_PART_BYTES`` is cut by rows (``head_parts.cut``)."""
    import onnx
    from onnx import helper, numpy_helper

    from .head_parts import cut
    from .mapped_weights import write_arrays

    out_path = Path(out_path)
    external = None
    if sum(a.nbytes for a in g.arrays.values()) <= MAX_INLINE_BYTES:
        inits = [numpy_helper.from_array(a, n) for n, a in g.arrays.items()]
    else:
        external = out_path.name + "_data"
        aliases = _alias_tied_lookup(g)
        parts = cut(g)  # a big head by rows: packed one part at a time (head_parts.py)
        aliases = {a: parts.get(w, w) for a, w in aliases.items()}
        inits = write_arrays(g.arrays, out_path.parent / external, aliases)
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              producer_name="onnxlm")
    proto.ir_version = 8
    onnx.save_model(proto, str(out_path))
    return external
