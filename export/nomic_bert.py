"""A ``nomic-bert`` GGUF (``general.architecture = "nomic-bert"``: nomic-embed-text v1 / v1.5 as llama.cpp's converter
writes them) -> a small torch encoder of its own (transformers has no NomicBert class), its tokenizer and pooling.

The graph is llama.cpp's (``src/models/bert.cpp``, ``llama_model_bert::graph``, which ``llama_model_nomic_bert``
uses; tensors from ``llama_model_nomic_bert::load_arch_tensors``), a post-norm BERT encoder:

* ``x = LayerNorm_emb(token_embd[ids] + token_types[type])``: no position table (llama.cpp adds ``token_types``' row
  0, "sentence A", as onnxlm's runtime feeds ``token_type_ids`` of zeros);
* per block: ``q, k, v`` = the rows of one ``attn_qkv`` (q, then k, then v; an optional bias; or ``attn_q`` /
  ``attn_k`` / ``attn_v``), rotary positions on q and k (NEOX: the two halves of the first ``rope.dimension_count``
  dims of a head rotate as pairs ``(i, i + n_rot / 2)``, angle ``pos * freq_base ** (-2 i / n_rot)`` rounded as
  llama.cpp's rope cache rounds it: ``rope_tables``, a [context_length, n_rot / 2] table), softmax
  attention over the row's own tokens with scale ``1 / sqrt(head_dim)``, ``attn_output`` (optional bias);
  ``h = LayerNorm_attn_output_norm(x + attn)``;
* ``x = LayerNorm_layer_output_norm(h + ffn_down(silu(ffn_gate(h)) * ffn_up(h)))``: SwiGLU (llama.cpp's
  ``build_ffn(..., LLM_FFN_SILU, LLM_FFN_PAR)``: ``ggml_swiglu_split(gate, up)``), no biases (the converter asserts
  nomic's ``mlp_fc1_bias`` / ``mlp_fc2_bias`` false, and llama.cpp's graph leaves an ``ffn_*.bias`` unused: such a
  file is refused by name);
* the output is the last block's, after its ``layer_output_norm`` (no final norm).

Keys (``nomic-bert.*``, the converter's): ``context_length`` (2048 for v1 / v1.5), ``embedding_length``,
``feed_forward_length``, ``block_count``, ``attention.head_count`` (``attention.head_count_kv``, if written, must
equal it), ``attention.layer_norm_epsilon``, ``rope.freq_base`` (nomic's ``rotary_emb_base``, 1000; llama.cpp's
default 10000 where absent), ``rope.dimension_count`` (default: the head size), ``pooling_type`` (1 mean: nomic's;
2 cls), ``attention.causal`` (false); ``tokenizer.ggml.token_type_count`` (llama.cpp refuses a file without it);
the vocabulary is WordPiece (``tokenizer.ggml.model = "bert"``, export/gguf_wpm.py). A block-quantized tensor is
dequantised with gguf-py. A key or tensor this graph does not read the way llama.cpp does (rope scaling, a causal
mask, a ``position_embd`` table, ffn biases, a classifier head) is refused by name.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from typing import Any, NamedTuple

import numpy as np

from onnxlm.runtime.errors import ExportError

__all__ = ["ARCH", "NomicBertConfig", "NomicBertModel", "EncoderOutput", "nomic_bert_config", "nomic_bert_state",
           "load_nomic_bert_gguf"]

ARCH = "nomic-bert"


@dataclasses.dataclass
class NomicBertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    rope_theta: float = 10000.0
    rotary_dim: int | None = None          # None: the whole head
    qkv_bias: bool = False
    attn_output_bias: bool = False
    model_type: str = "nomic_bert"         # the Hugging Face model_type of nomic-embed-text

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def n_rot(self) -> int:
        return self.head_dim if self.rotary_dim is None else self.rotary_dim

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "architectures": ["NomicBertModel"], "activation_function": "swiglu",
                "rotary_emb_base": self.rope_theta, "rotary_emb_interleaved": False, "prenorm": False}

    def to_json_file(self, path) -> None:
        pathlib.Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


class EncoderOutput(NamedTuple):
    last_hidden_state: Any  # torch.Tensor [b, s, D]


@functools.lru_cache(maxsize=None)
def _module_classes():
    """The torch modules, built once on first use (torch is imported lazily, as the rest of export/ does)."""
    import torch

    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, c: NomicBertConfig):
            super().__init__()
            D = c.hidden_size
            self.heads, self.head_dim, self.n_rot = c.num_attention_heads, c.head_dim, c.n_rot
            self.attn_qkv = nn.Linear(D, 3 * D, bias=c.qkv_bias)        # rows: q, k, v
            self.attn_output = nn.Linear(D, D, bias=c.attn_output_bias)
            self.attn_output_norm = nn.LayerNorm(D, eps=c.layer_norm_eps)
            self.ffn_up = nn.Linear(D, c.intermediate_size, bias=False)
            self.ffn_gate = nn.Linear(D, c.intermediate_size, bias=False)
            self.ffn_down = nn.Linear(c.intermediate_size, D, bias=False)
            self.layer_output_norm = nn.LayerNorm(D, eps=c.layer_norm_eps)

        def rope(self, x, cos, sin):
            # x [b, H, s, hd]; cos, sin [b, 1, s, n_rot / 2] -> x with its first n_rot dims rotated (NEOX halves)
            half = self.n_rot // 2
            x1, x2, rest = x[..., :half], x[..., half:self.n_rot], x[..., self.n_rot:]
            return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], dim=-1)

        def forward(self, x, bias, cos, sin):
            # x [b, s, D]; bias [b, 1, 1, s] additive key mask; cos, sin [b, 1, s, n_rot / 2] -> [b, s, D]
            b, s, D = x.shape
            q, k, v = self.attn_qkv(x).split(D, dim=-1)                  # [b, s, D] each
            q, k, v = (t.reshape(b, s, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))  # [b, H, s, hd]
            q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
            scores = q @ k.transpose(-1, -2) * (1.0 / self.head_dim ** 0.5) + bias  # [b, H, s, s]
            attn = torch.softmax(scores, dim=-1) @ v                     # [b, H, s, hd]
            attn = self.attn_output(attn.transpose(1, 2).reshape(b, s, D))
            h = self.attn_output_norm(x + attn)
            ffn = self.ffn_down(torch.nn.functional.silu(self.ffn_gate(h)) * self.ffn_up(h))
            return self.layer_output_norm(h + ffn)

    class Model(nn.Module):
        def __init__(self, c: NomicBertConfig):
            super().__init__()
            self.config = c
            self.token_embd = nn.Embedding(c.vocab_size, c.hidden_size)
            self.token_types = nn.Embedding(c.type_vocab_size, c.hidden_size)
            self.token_embd_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
            self.blocks = nn.ModuleList(Block(c) for _ in range(c.num_hidden_layers))
            cos, sin = rope_tables(c.max_position_embeddings, c.n_rot, c.rope_theta)  # [P, n_rot/2] each
            self.register_buffer("rope_cos", torch.from_numpy(cos), persistent=False)
            self.register_buffer("rope_sin", torch.from_numpy(sin), persistent=False)

        def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
            # input_ids [b, s] int64; attention_mask [b, s] 0/1 (None: all held); token_type_ids [b, s] (None: 0);
            # position_ids [b, s] (None: 0 .. s-1) -> EncoderOutput(last_hidden_state [b, s, D])
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            if position_ids is None:
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0).expand_as(
                    input_ids)
            x = self.token_embd_norm(self.token_embd(input_ids) + self.token_types(token_type_ids))  # [b, s, D]
            cos, sin = self.rope_cos[position_ids].unsqueeze(1), self.rope_sin[position_ids].unsqueeze(1)
            #                                                                             [b, 1, s, n_rot/2] each
            held = attention_mask[:, None, None, :].to(x.dtype)                           # [b, 1, 1, s]
            bias = (1.0 - held) * torch.finfo(x.dtype).min                                # 0 held, -3.4e38 not
            for block in self.blocks:
                x = block(x, bias, cos, sin)
            return EncoderOutput(x)

    return Block, Model


def rope_tables(positions: int, n_rot: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [positions, n_rot / 2] float32 of the rotary angles as llama.cpp computes them (ggml-cpu's
    ``rope_cache_init``, no scaling): ``theta_scale = powf(base, -2 / n_rot)``, and for position p the angles
    p, p * theta_scale, (p * theta_scale) * theta_scale, ... each product rounded to float32 (a running product:
    ``np.cumprod`` in float32 rounds as that loop does). They differ from the exact ``p * base ** (-2 i / n_rot)`` by
    up to 1.6e-4 rad by position 1,300 (head size 64), which moved a peaked tiny model's states by 1e-2."""
    half = n_rot // 2
    scale = np.float32(np.power(np.float32(base), np.float32(-2.0) / np.float32(n_rot)))  # powf, float32 exponent
    steps = np.full((positions, half), scale, dtype=np.float32)
    steps[:, 0] = np.arange(positions, dtype=np.float32)
    theta = np.cumprod(steps, axis=1, dtype=np.float32)                                      # [positions, half]
    theta64 = theta.astype(np.float64)  # cosf / sinf of a float32 angle: correctly rounded from float64
    return np.cos(theta64).astype(np.float32), np.sin(theta64).astype(np.float32)


def NomicBertModel(config: NomicBertConfig):
    """A fresh (randomly initialised) nomic-bert encoder of ``config``: a torch.nn.Module whose state-dict names are
    the GGUF's tensor names without ``blk.`` (``blocks.N.attn_qkv.weight`` is ``blk.N.attn_qkv.weight``)."""
    return _module_classes()[1](config)


def _key(meta: dict, key: str, default=None, *, required: bool = True):
    value = meta.get(f"{ARCH}.{key}", default)
    if value is None and required:
        raise ExportError(f"GGUF metadata {ARCH}.{key} is missing: a nomic-bert file needs it (llama.cpp's converter "
                          "writes it)")
    return value


def nomic_bert_config(meta: dict, tensors: dict) -> NomicBertConfig:
    """``nomic-bert.*`` metadata (and the tensors, for the optional biases) -> NomicBertConfig; ExportError naming
    the key llama.cpp would read otherwise."""
    hidden = int(_key(meta, "embedding_length"))
    heads = int(_key(meta, "attention.head_count"))
    if hidden % heads:
        raise ExportError(f"GGUF metadata {ARCH}.embedding_length={hidden} is not a multiple of "
                          f"{ARCH}.attention.head_count={heads}")
    kv = meta.get(f"{ARCH}.attention.head_count_kv")
    if kv is not None and (isinstance(kv, list) or int(kv) != heads):
        raise ExportError(f"GGUF metadata {ARCH}.attention.head_count_kv is {kv!r}: onnxlm exports nomic-bert with "
                          f"as many key/value heads as query heads ({ARCH}.attention.head_count = {heads})")
    if meta.get(f"{ARCH}.attention.causal"):
        raise ExportError(f"GGUF metadata {ARCH}.attention.causal is true: a nomic-bert embedding encoder attends both "
                          "ways (the converter writes false)")
    head_dim = hidden // heads
    n_rot = int(meta.get(f"{ARCH}.rope.dimension_count") or head_dim)
    if n_rot % 2 or n_rot > head_dim:
        raise ExportError(f"GGUF metadata {ARCH}.rope.dimension_count is {n_rot}: it must be even and at most the "
                          f"head size {head_dim}")
    scaling = meta.get(f"{ARCH}.rope.scaling.type")
    factor = meta.get(f"{ARCH}.rope.scaling.factor")
    if (scaling not in (None, "none")) or (factor not in (None, 0, 0.0, 1, 1.0)):
        raise ExportError(f"GGUF metadata {ARCH}.rope.scaling.type / .factor say {scaling!r} / {factor!r}: onnxlm "
                          "exports nomic-bert with plain rotary positions (the converter writes no scaling)")
    types = meta.get("tokenizer.ggml.token_type_count")
    if not types:
        raise ExportError("GGUF metadata tokenizer.ggml.token_type_count is missing or 0: llama.cpp refuses such a "
                          "nomic-bert file ('model needs to define token type count')")
    eps = _key(meta, "attention.layer_norm_epsilon")
    vocab = len(meta.get("tokenizer.ggml.tokens") or []) or tensors["token_embd.weight"].shape[0]
    return NomicBertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=int(_key(meta, "block_count")),
        num_attention_heads=heads, intermediate_size=int(_key(meta, "feed_forward_length")),
        max_position_embeddings=int(_key(meta, "context_length")), type_vocab_size=int(types),
        layer_norm_eps=float(eps), rope_theta=float(meta.get(f"{ARCH}.rope.freq_base") or 10000.0),
        rotary_dim=None if n_rot == head_dim else n_rot,
        qkv_bias="blk.0.attn_qkv.bias" in tensors or "blk.0.attn_q.bias" in tensors,
        attn_output_bias="blk.0.attn_output.bias" in tensors)


_BLOCK_TENSORS = ("attn_qkv.weight", "attn_qkv.bias", "attn_output.weight", "attn_output.bias",
                  "attn_output_norm.weight", "attn_output_norm.bias", "ffn_up.weight", "ffn_gate.weight",
                  "ffn_down.weight", "layer_output_norm.weight", "layer_output_norm.bias")
_UNUSED = {"ffn_up.bias": "llama.cpp's nomic-bert graph leaves ffn_up.bias unused",
           "ffn_down.bias": "llama.cpp's nomic-bert graph leaves ffn_down.bias unused",
           "ffn_gate.bias": "llama.cpp reads no ffn_gate.bias",
           "position_embd.weight": "nomic-bert's positions are rotary: llama.cpp reads no position table"}


def nomic_bert_state(tensors: dict[str, np.ndarray], config: NomicBertConfig, path) -> dict[str, np.ndarray]:
    """GGUF tensors (fp32 arrays, [rows, cols] = ggml [ne1, ne0]) -> the module's state dict; a tensor with no place
    in llama.cpp's nomic-bert graph, a missing one, or one of the wrong shape refused by name."""
    D, F, V, T = config.hidden_size, config.intermediate_size, config.vocab_size, config.type_vocab_size
    shapes = {"token_embd.weight": (V, D), "token_types.weight": (T, D),
              "token_embd_norm.weight": (D,), "token_embd_norm.bias": (D,)}
    for i in range(config.num_hidden_layers):
        p = f"blk.{i}."
        shapes.update({p + "attn_qkv.weight": (3 * D, D), p + "attn_output.weight": (D, D),
                       p + "attn_output_norm.weight": (D,), p + "attn_output_norm.bias": (D,),
                       p + "ffn_up.weight": (F, D), p + "ffn_gate.weight": (F, D), p + "ffn_down.weight": (D, F),
                       p + "layer_output_norm.weight": (D,), p + "layer_output_norm.bias": (D,)})
        if config.qkv_bias:
            shapes[p + "attn_qkv.bias"] = (3 * D,)
        if config.attn_output_bias:
            shapes[p + "attn_output.bias"] = (D,)
    tensors = dict(tensors)
    for i in range(config.num_hidden_layers):  # separate q / k / v (create_tensor_qkv takes either): one qkv
        p = f"blk.{i}."
        for kind in ("weight", "bias"):
            parts = [p + f"attn_{x}.{kind}" for x in "qkv"]
            if any(n in tensors for n in parts):
                if p + f"attn_qkv.{kind}" in tensors or not all(n in tensors for n in parts):
                    raise ExportError(f"{path}: block {i} holds {', '.join(n for n in parts if n in tensors)} beside "
                                      f"or without the rest of q / k / v ({kind}): a damaged or hand-made file")
                tensors[p + f"attn_qkv.{kind}"] = np.concatenate([tensors.pop(n) for n in parts], axis=0)
    state = {}
    for name, array in tensors.items():
        tail = name.split(".", 2)[-1] if name.startswith("blk.") else name
        if name not in shapes:
            why = _UNUSED.get(tail) or ("a classifier head or another architecture's tensor"
                                        if tail not in _BLOCK_TENSORS else "the metadata's model has no such block")
            raise ExportError(f"{path}: tensor {name!r} has no place in a nomic-bert encoder ({why}); onnxlm exports "
                              "nomic-bert embedding models as llama.cpp runs them")
        if tuple(array.shape) != shapes[name]:
            raise ExportError(f"{path}: tensor {name!r} is {list(array.shape)}, the metadata's model needs "
                              f"{list(shapes[name])}")
        state[name] = array
    missing = sorted(set(shapes) - set(state))
    if missing:
        raise ExportError(f"{path}: the file lacks the tensors {', '.join(missing[:4])}"
                          + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""))
    return {("blocks." + k[4:] if k.startswith("blk.") else k): v for k, v in state.items()}


def load_nomic_bert_gguf(path: str | os.PathLike):
    """A ``nomic-bert`` GGUF -> ``gguf_bert.BertGGUF`` holding the dequantised fp32 NomicBertModel (eval), the WPM
    tokenizer, the pooling and the special ids."""
    import torch

    from .gguf import read_gguf_metadata
    from .gguf_bert import BertGGUF, bert_tokenizer, encoder_refusal, gguf_tensors
    from .loader import gguf_pooling

    path = pathlib.Path(path)
    meta = read_gguf_metadata(path)
    arch = meta.get("general.architecture")
    if arch != ARCH:
        raise ExportError(f"{path}: general.architecture is {arch!r}, not {ARCH!r}")
    why = encoder_refusal(meta.get)  # a reranker, a missing key, a vocabulary other than WordPiece
    if why:
        raise ExportError(f"{path}: {why}")
    pooling = gguf_pooling(meta)  # mean / cls / last, or None (the runtime's default, mean)
    tokenizer, specials = bert_tokenizer(meta, path)
    tensors = gguf_tensors(path)
    if "token_embd.weight" not in tensors:
        raise ExportError(f"{path}: the file lacks the tensor token_embd.weight")
    config = nomic_bert_config(meta, tensors)
    state = nomic_bert_state(tensors, config, path)
    model = NomicBertModel(config)
    model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}, strict=True)
    return BertGGUF(path=path, model=model.eval(), tokenizer=tokenizer, pooling=pooling,
                    special_tokens=specials, metadata=meta)
