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
runtime's mean where it says none), and a ``cls.*`` classifier head beside an embedding pooling is left out, as
llama.cpp uses it for rank only. 4 (rank: a reranker such as bge-reranker-v2-m3 or an ms-marco cross-encoder) keeps
the head (``rank_head``): llama.cpp's ``build_pooling`` for LLAMA_POOLING_TYPE_RANK takes the first token's state,
then ``cls.weight``/``cls.bias`` and tanh, then ``cls.output.weight``/``cls.output.bias`` (each optional; a rank file
with neither is refused), no sigmoid; its server's /rerank score is that output's first value. The pair's ids are
llama.cpp's ``format_prompt_rerank`` (``rank_pair_tokens``).
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
    head: dict | None = field(repr=False, default=None)  # a reranker's: {"cls.weight", ...: fp32 arrays} (rank_head)
    rank: dict | None = None   # a reranker's manifest entry: {"n_labels", "labels", "pair"} (rank_manifest)


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
    if pooling is not None and int(pooling) == RANK and arch != "bert":  # a bert reranker exports with its head
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


#: a rank file's head tensors: llama.cpp's cls, cls_b, cls_out, cls_out_b
RANK_HEAD = ("cls.weight", "cls.bias", "cls.output.weight", "cls.output.bias")


def is_rank(meta: dict) -> bool:
    value = meta.get(f"{meta.get('general.architecture')}.pooling_type")
    return value is not None and int(value) == RANK


def rank_head(tensors: dict[str, np.ndarray], hidden: int, path) -> dict[str, np.ndarray]:
    """A rank file's classifier head (llama.cpp's ``build_pooling``, RANK: ``cls`` D->D with ``cls_b`` then tanh,
    then ``cls_out`` D->n with ``cls_out_b``; each optional, as jina-reranker-v1-tiny has no ``cls.output``) ->
    {name: array}; ExportError for a rank file with neither matrix, a ``cls.*`` tensor llama.cpp does not read, or a
    shape that does not chain."""
    head = {k: v for k, v in tensors.items() if k.startswith("cls.")}
    unknown = sorted(set(head) - set(RANK_HEAD))
    if unknown:
        raise ExportError(f"{path}: tensor {unknown[0]!r} is not part of llama.cpp's BERT rank head "
                          f"({', '.join(RANK_HEAD)})")
    if "cls.weight" not in head and "cls.output.weight" not in head:
        raise ExportError(f"{path}: a reranker (bert.pooling_type {RANK}, rank) without its classifier head: the file "
                          "has neither cls.weight nor cls.output.weight, so there is no score to compute")
    width = hidden
    for w, b in (("cls.weight", "cls.bias"), ("cls.output.weight", "cls.output.bias")):
        if w in head:
            if head[w].ndim != 2 or head[w].shape[1] != width:
                raise ExportError(f"{path}: {w} is {list(head[w].shape)}; the head needs [n, {width}]")
            if w == "cls.weight" and head[w].shape[0] != hidden:
                raise ExportError(f"{path}: cls.weight is {list(head[w].shape)}; llama.cpp's head needs "
                                  f"[{hidden}, {hidden}]")
            width = head[w].shape[0]
            if b in head and head[b].reshape(-1).shape != (width,):
                raise ExportError(f"{path}: {b} is {list(head[b].shape)}; the head needs [{width}]")
        elif b in head:
            raise ExportError(f"{path}: {b} without {w}")
    return {k: np.asarray(v, np.float32).reshape(-1) if k.endswith("bias") else np.asarray(v, np.float32)
            for k, v in head.items()}


def rank_pair_tokens(meta: dict) -> dict:
    """llama.cpp's ``format_prompt_rerank`` (tools/server/server-common.cpp) without a ``rerank`` chat template:
    [BOS if add_bos] query [EOS if add_eos] [SEP if add_sep] document [EOS if add_eos], the EOS falling back to the
    SEP where the vocabulary has none, query and document tokenized without special tokens (parse_special false).
    The flags' and ids' defaults are llama-vocab.cpp's: WordPiece (``bert``) add_bos, add_sep, bos 101, sep 102,
    no eos; Unigram (``t5``) add_eos, eos 1; the metadata's ``tokenizer.ggml.add_*_token`` / ``*_token_id`` win.
    So bge-reranker-v2-m3 (RobertaProcessing: all three flags, sep = eos = </s>) is ``<s> q </s></s> d </s>``, an
    ms-marco BERT (add_bos, add_eos with [SEP] as EOS, no add_sep) ``[CLS] q [SEP] d [SEP]``.
    -> {"prefix": [ids], "middle": [ids], "suffix": [ids]} (+ "template" where the file has one)."""
    wpm = meta.get("tokenizer.ggml.model") == "bert"

    def flag(name, default):
        v = meta.get(f"tokenizer.ggml.add_{name}_token")
        return bool(default if v is None else v)

    def tid(key, default):
        v = meta.get(f"tokenizer.ggml.{key}")
        return int(v) if v is not None else default

    bos, eos = tid("bos_token_id", 101 if wpm else None), tid("eos_token_id", None if wpm else 1)
    sep = tid("seperator_token_id", 102 if wpm else None)
    end = eos if eos is not None else sep
    add_bos, add_eos, add_sep = flag("bos", wpm), flag("eos", not wpm), flag("sep", wpm)
    out = {"prefix": [bos] if add_bos and bos is not None else [],
           "middle": ([end] if add_eos and end is not None else []) + ([sep] if add_sep and sep is not None else []),
           "suffix": [end] if add_eos and end is not None else []}
    template = meta.get("tokenizer.chat_template.rerank")
    if template:
        out["template"] = str(template)  # llama.cpp: {query}/{document} replaced, tokenized with parse_special
    return out


def rank_manifest(meta: dict, head: dict) -> dict:
    """A reranker's manifest entry: the head's outputs (``n_labels``; ``labels`` from ``{arch}.classifier.
    output_labels`` where written) and the pair's ids (``rank_pair_tokens``)."""
    arch = meta.get("general.architecture")
    last = head.get("cls.output.weight", head.get("cls.weight"))
    labels = meta.get(f"{arch}.classifier.output_labels")
    return {"n_labels": int(last.shape[0]), "labels": [str(x) for x in labels] if labels else None,
            "pair": rank_pair_tokens(meta)}


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
    head = rank_head(tensors, config.hidden_size, path) if is_rank(meta) else None
    state = _state_dict(tensors, config.num_hidden_layers, path)
    model = BertModel(config, add_pooling_layer=False)
    wanted = model.state_dict()
    for key, array in state.items():
        if tuple(wanted[key].shape) != array.shape:
            raise ExportError(f"{path}: the tensor for {key} is {list(array.shape)}, the metadata's model needs "
                              f"{list(wanted[key].shape)}")
    model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}, strict=True)
    return BertGGUF(path=path, model=model.eval(), tokenizer=tokenizer, pooling="rank" if head else pooling,
                    special_tokens=specials, metadata=meta, head=head,
                    rank=rank_manifest(meta, head) if head else None)

