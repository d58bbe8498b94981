"""A ``bert`` GGUF (``general.architecture = "bert"``: all-MiniLM, bge-small/base, mxbai-embed-large as llama.cpp's
converter writes them) -> transformers' ``BertModel`` (fp32, eval, no pooler), its tokenizer and pooling.

The tensors are llama.cpp's names for BERT (gguf-py's ``MODEL_TENSORS[BERT]``, ``src/llama-arch.cpp``):
``token_embd``, ``token_types``, ``position_embd``, ``token_embd_norm`` (weight, bias); per block ``attn_q`` /
``attn_k`` / ``attn_v`` (or one ``attn_qkv``, q then k then v rows) and ``attn_output`` with biases,
``attn_output_norm``, ``ffn_up`` / ``ffn_down`` with biases, ``layer_output_norm``. gguf-py's own name map turns each
into the transformers parameter it came from (the converter's map, read backwards), and a block-quantized tensor is
dequantised with gguf-py (as transformers' GGUF loader does). A tensor the model has no place for (a classifier head
``cls.*``, a ``output_norm``) or a parameter no tensor fills is refused by name, before the model is built.

The hyperparameters are the converter's ``bert.*`` keys: ``context_length`` (max_position_embeddings),
``embedding_length``, ``feed_forward_length``, ``block_count``, ``attention.head_count``,
``attention.layer_norm_epsilon``; ``tokenizer.ggml.token_type_count`` (type_vocab_size, else ``token_types``'
rows). The activation is GELU (erf), llama.cpp's ``LLM_FFN_GELU`` for BERT (``ggml_gelu``, a tanh approximation of
it). ``bert.pooling_type`` (1 mean, 2 cls, 3 last; ``loader.gguf_pooling``) is the artifact's default pooling (the
runtime's mean where it says none); 4 (rank: a reranker) is refused (``encoder_refusal``), and a ``cls.*`` classifier
head beside an embedding pooling is left out, as llama.cpp uses it for rank only.
"""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxlm.runtime.errors import ExportError

from .gguf_header import ENCODER_GGUF_ARCHITECTURES

__all__ = ["ENCODER_ARCHITECTURES", "BertGGUF", "bert_config", "bert_tokenizer", "load_bert_gguf", "is_encoder_gguf",
           "gguf_tensors"]

#: GGUF architectures onnxlm exports as embedding-only encoders: "bert" here, "nomic-bert" in export/nomic_bert.py
#: (gguf_header's list: one list for the export, ``onnxlm info`` and the header checks)
ENCODER_ARCHITECTURES = ENCODER_GGUF_ARCHITECTURES


@dataclass
class BertGGUF:
    path: pathlib.Path
    model: Any                 # fp32, eval: transformers BertModel (no pooler) / nomic_bert.NomicBertModel
    tokenizer: Any             # tokenizers.Tokenizer (export/gguf_wpm.py)
    pooling: str | None        # "mean" | "cls" | "last", or None where the file names none
    special_tokens: dict       # {"bos_token_id" (CLS), "sep_token_id", "pad_token_id", "unk_token_id"}
    metadata: dict = field(repr=False, default_factory=dict)


def is_encoder_gguf(path) -> bool:
    """True for a GGUF file whose ``general.architecture`` is an encoder onnxlm exports (header only)."""
    from .gguf_reader import field_value, gguf_reader

    return field_value(gguf_reader(path), "general.architecture") in ENCODER_ARCHITECTURES


def _key(meta: dict, key: str, default=None, *, required: bool = True):
    value = meta.get(f"bert.{key}", default)
    if value is None and required:
        raise ExportError(f"GGUF metadata bert.{key} is missing: a BERT file needs it (llama.cpp's converter "
                          "writes it)")
    return value


def bert_config(meta: dict, tensors: dict):
    """``bert.*`` metadata (and the tables' shapes) -> transformers' BertConfig."""
    from transformers import BertConfig

    hidden = int(_key(meta, "embedding_length"))
    heads = int(_key(meta, "attention.head_count"))
    if hidden % heads:
        raise ExportError(f"GGUF metadata bert.embedding_length={hidden} is not a multiple of "
                          f"bert.attention.head_count={heads}")
    types = tensors.get("token_types.weight")
    type_vocab = int(meta.get("tokenizer.ggml.token_type_count") or (types.shape[0] if types is not None else 2))
    positions = tensors.get("position_embd.weight")
    context = int(_key(meta, "context_length"))
    if positions is not None and positions.shape[0] != context:
        raise ExportError(f"GGUF metadata bert.context_length is {context}, but position_embd.weight holds "
                          f"{positions.shape[0]} positions")
    vocab = len(meta.get("tokenizer.ggml.tokens") or []) or tensors["token_embd.weight"].shape[0]
    return BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=int(_key(meta, "block_count")),
                      num_attention_heads=heads, intermediate_size=int(_key(meta, "feed_forward_length")),
                      max_position_embeddings=context, type_vocab_size=type_vocab,
                      layer_norm_eps=float(_key(meta, "attention.layer_norm_epsilon", 1e-12)), hidden_act="gelu",
                      pad_token_id=0)


RANK = 4  # llama.cpp's LLAMA_POOLING_TYPE_RANK: a reranker, its classifier head scoring a (query, document) pair
REQUIRED_KEYS = ("context_length", "embedding_length", "feed_forward_length", "block_count", "attention.head_count")


def encoder_refusal(get) -> str | None:
    """Why an encoder GGUF is not exported, from its metadata alone (``get(key)`` -> value or None: a metadata
    dict's ``get``, or the header reader's), or None: a reranker (``pooling_type`` 4, rank: llama.cpp's /rerank), a
    hyperparameter llama.cpp's converter writes missing, a vocabulary onnxlm does not build for it. ``onnxlm info``
    says it before an export would; the loaders raise it."""
    arch = get("general.architecture")
    pooling = get(f"{arch}.pooling_type")
    if pooling is not None and int(pooling) == RANK:
        return (f"a reranker ({arch}.pooling_type {RANK}, rank: llama.cpp's /rerank scores query/document pairs with "
                "its classifier head); onnxlm exports embedding models")
    missing = [k for k in REQUIRED_KEYS if get(f"{arch}.{k}") is None]
    if missing:
        return f"GGUF metadata {arch}.{missing[0]} is missing: an encoder needs it (llama.cpp's converter writes it)"
    tok, allowed = get("tokenizer.ggml.model"), (("bert", "t5") if arch == "bert" else ("bert",))
    if tok not in allowed:
        return (f"tokenizer.ggml.model is {tok!r}; a {arch} file's vocabulary is "
                + " or ".join(repr(a) for a in allowed))
    return None


def gguf_tensors(path) -> dict[str, np.ndarray]:
    """Every tensor of the file as an fp32 array in transformers' orientation ([rows, cols] = ggml [ne1, ne0]). A
    one-row ``token_types`` table stored 1-D (llama.cpp's quantizer writes XLM-RoBERTa's so) is [1, D]."""
    from gguf.quants import dequantize

    from .gguf_reader import gguf_reader

    out = {}
    for t in gguf_reader(path).tensors:
        array = dequantize(t.data, t.tensor_type)  # F32 / F16 / BF16 / block types -> float32 of the logical shape
        array = np.asarray(array, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
        out[t.name] = array[None, :] if t.name == "token_types.weight" and array.ndim == 1 else array
    return out


def _state_dict(tensors: dict[str, np.ndarray], layers: int, path) -> dict[str, np.ndarray]:
    """GGUF tensors -> transformers BertModel parameters; unknown tensors refused by name."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, layers)
    hf_of = {}  # gguf name -> transformers name, from the converter's map read backwards
    from transformers import BertConfig, BertModel
    import torch

    with torch.device("meta"):
        shape_model = BertModel(BertConfig(num_hidden_layers=layers), add_pooling_layer=False)
    for key in shape_model.state_dict():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is not None:
            hf_of[name] = key
    state = {}
    for name, array in tensors.items():
        if name.startswith("cls."):  # a classifier head beside an embedding pooling: llama.cpp uses it for rank only
            continue
        qkv = name.split(".")
        if len(qkv) == 4 and qkv[2] == "attn_qkv":  # q, k, v rows in one tensor
            parts = np.split(array, 3, axis=0)
            for part, p in zip(parts, "qkv"):
                state[hf_of[f"blk.{qkv[1]}.attn_{p}.{qkv[3]}"]] = part
            continue
        if name not in hf_of:
            raise ExportError(f"{path}: tensor {name!r} has no place in a BERT encoder (a classifier head or "
                              "another architecture's tensor); onnxlm exports BERT embedding models")
        state[hf_of[name]] = array
    missing = sorted(set(hf_of.values()) - set(state))
    if missing:
        raise ExportError(f"{path}: the file lacks the tensors for {', '.join(missing[:4])}"
                          + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""))
    return state


def bert_tokenizer(meta: dict, path) -> tuple[Any, dict]:
    """A ``bert`` file's vocabulary -> (tokenizers.Tokenizer, {"bos_token_id": put first, "sep_token_id": put last,
    "pad_token_id", "unk_token_id"}): WordPiece (``tokenizer.ggml.model = "bert"``: BERT, all-MiniLM, bge, mxbai;
    export/gguf_wpm.py) or SentencePiece Unigram (``"t5"``: XLM-RoBERTa models such as bge-m3 and multilingual-e5,
    ``<s> text </s>``; export/gguf_ugm.py), as llama.cpp tokenizes them."""
    model = meta.get("tokenizer.ggml.model")
    if model == "bert":
        from .gguf_wpm import build_wpm_tokenizer, wpm_specials

        ids = wpm_specials(meta)
        return build_wpm_tokenizer(meta), {"bos_token_id": ids["bos"], "sep_token_id": ids["sep"],
                                           "pad_token_id": ids["pad"], "unk_token_id": ids["unk"]}
    if model == "t5":
        from .gguf_ugm import build_ugm_tokenizer, ugm_special_tokens

        s = ugm_special_tokens(meta)
        return build_ugm_tokenizer(meta), {"bos_token_id": s["bos_token_id"] if s["add_bos_token"] else None,
                                           "sep_token_id": s["eos_token_id"] if s["add_eos_token"] else None,
                                           "pad_token_id": s["pad_token_id"], "unk_token_id": s["unk_token_id"]}
    raise ExportError(f"{path}: tokenizer.ggml.model is {model!r}; a BERT file's vocabulary is WordPiece ('bert') "
                      "or, for XLM-RoBERTa models, SentencePiece Unigram ('t5')")


def load_bert_gguf(path: str | os.PathLike) -> BertGGUF:
    """A ``bert`` GGUF -> ``BertGGUF``: the dequantised fp32 BertModel, its tokenizer (``bert_tokenizer``), pooling,
    special ids. An XLM-RoBERTa file is a BERT one here: llama.cpp's converter cut its position table to start at
    the first token's row (RoBERTa counts positions from pad_token_id + 1) and it has one token type."""
    import torch
    from transformers import BertModel

    from .gguf import read_gguf_metadata
    from .loader import gguf_pooling

    path = pathlib.Path(path)
    meta = read_gguf_metadata(path)
    arch = meta.get("general.architecture")
    if arch != "bert":
        raise ExportError(f"{path}: general.architecture is {arch!r}, not 'bert'")
    why = encoder_refusal(meta.get)
    if why:
        raise ExportError(f"{path}: {why}")
    tokenizer, specials = bert_tokenizer(meta, path)
    pooling = gguf_pooling(meta)  # mean / cls / last, or None (none: the runtime's default, mean)
    tensors = gguf_tensors(path)
    config = bert_config(meta, tensors)
    state = _state_dict(tensors, config.num_hidden_layers, path)
    model = BertModel(config, add_pooling_layer=False)
    wanted = model.state_dict()
    for key, array in state.items():
        if tuple(wanted[key].shape) != array.shape:
            raise ExportError(f"{path}: the tensor for {key} is {list(array.shape)}, the metadata's model needs "
                              f"{list(wanted[key].shape)}")
    model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}, strict=True)
    return BertGGUF(path=path, model=model.eval(), tokenizer=tokenizer, pooling=pooling,
                    special_tokens=specials, metadata=meta)

