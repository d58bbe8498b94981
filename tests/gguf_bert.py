"""A tiny BERT embedding model as a GGUF file, laid out as llama.cpp's converter (``convert_hf_to_gguf.py``,
``BertModel``) writes the files llama.cpp users hold for embeddings (all-MiniLM, bge-small/base, mxbai-embed-large):
the inputs of tests/test_gguf_bert.py and of tests/data/gguf_bert/make_reference.py, which stores llama.cpp's ids and
vectors for them.

* the model: transformers' ``BertModel`` from ``CONFIG`` with torch's seed 0 (no pooler: the converter drops it), its
  LayerNorm weights and biases moved off 1 / 0 by a seeded numpy generator so that every tensor matters;
* the vocabulary: tests/data/gguf_bert/vocab.txt (3,000 WordPiece tokens, [PAD] [UNK] [CLS] [SEP] [MASK] first) in
  llama.cpp's "phantom space" form (``BertModel.set_vocab``: ``hello`` -> ``▁hello``, ``##ing`` -> ``ing``, the five
  CONTROL tokens as they are) with the special ids gguf-py's ``SpecialVocab`` writes for a BERT tokenizer.json
  ([CLS] as BOS and CLS, [SEP] as EOS and separator, add_bos / add_eos true);
* the metadata: ``bert.*`` hyperparameters, ``bert.attention.causal`` false, ``bert.pooling_type`` (1 mean, 2 cls),
  ``tokenizer.ggml.token_type_count``.

Every matrix F32, or in a GGUF block type (``block_type="Q8_0"``: gguf-py's quantize, the position and token-type
tables kept F32 as the converter keeps them). Seeded: the same call writes the same bytes.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "gguf_bert"
CONFIG = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
              max_position_embeddings=128, type_vocab_size=2, layer_norm_eps=1e-12, initializer_range=0.1)
SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
POOLING = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}


def unicode_16(text: str) -> bool:
    """Code points first assigned in Unicode 16.0 (2024): llama.cpp's tables (llama-cpp-python 0.3.36) leave them
    unassigned (kept inside a word, no lowercase), tokenizers' (onig, Rust) class them (a mark dropped, punctuation
    split off, Garay and Cyrillic TJE lowercased). This Python (3.11: Unicode 14) does not know them either."""
    import unicodedata

    return any(unicodedata.category(c) == "Cn" and 0x0800 <= ord(c) for c in text) and any(
        0x0897 == ord(c) or 0x1B4E == ord(c) or 0x1C89 <= ord(c) <= 0x1C8A or 0x10D40 <= ord(c) <= 0x10D8F
        for c in text)


def check_ids_equal_llama_cpp(tok, reference: dict, mode: str) -> None:
    """A WordPiece tokenizer's ids for the reference's texts, in ``mode`` ("special": special tokens added and read;
    "special_no_add": read, not added; "plain": special-token strings read as text) == llama.cpp's stored ids, but
    for a text or two of Unicode 16.0 code points (``unicode_16``)."""
    texts = reference["texts"]
    if mode == "special":
        ours = [tok.encode(t) for t in texts]
    elif mode == "special_no_add":
        ours = [tok.encode(t, add_special_tokens=False) for t in texts]
    else:
        ours = [tok.encode(t, split_special_tokens=True) for t in texts]
    bad = [(t, o, r) for t, o, r in zip(texts, ours, reference["ids"][mode]) if o != r]
    known = [b for b in bad if unicode_16(b[0])]
    assert len(known) <= 2, "the Unicode 16.0 difference should set aside a text or two, not the corpus"
    bad = [b for b in bad if b not in known]
    assert not bad, f"{mode}: {len(bad)} of {len(texts)} texts differ from llama.cpp, first: {bad[0]!r}"


def wordpiece_vocab() -> list[str]:
    return (DATA / "vocab.txt").read_text(encoding="utf-8").splitlines()


def phantom(token: str) -> str:
    """llama.cpp's converter's spelling of a WordPiece token (CONTROL tokens kept)."""
    if token in SPECIALS.values():
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


def add_wordpiece_vocab(w) -> None:
    """The vocabulary's ``tokenizer.ggml.*`` keys on GGUFWriter ``w``, as llama.cpp's converter writes a BERT
    tokenizer (phantom-space tokens, the five CONTROL specials, [CLS] as BOS, [SEP] as EOS and separator)."""
    import gguf

    words = wordpiece_vocab()
    ids = {k: words.index(v) for k, v in SPECIALS.items()}
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("jina-v2-en")
    w.add_token_list([phantom(t) for t in words])
    w.add_token_types([int(gguf.TokenType.CONTROL if t in SPECIALS.values() else gguf.TokenType.NORMAL)
                       for t in words])
    w.add_bos_token_id(ids["cls"])
    w.add_eos_token_id(ids["sep"])
    w.add_unk_token_id(ids["unk"])
    w.add_sep_token_id(ids["sep"])
    w.add_pad_token_id(ids["pad"])
    w.add_mask_token_id(ids["mask"])
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)


def perturbed(model):
    """``model`` with its LayerNorm weights and biases moved off 1 / 0 by a seeded numpy generator (every tensor
    matters), in place -> model."""
    import torch

    rng = np.random.default_rng(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith(".bias"):
                base = 1.0 if name.endswith("LayerNorm.weight") else 0.0
                p.copy_(torch.from_numpy((base + 0.1 * rng.standard_normal(tuple(p.shape))).astype(np.float32)))
    return model


def tiny_bert(**overrides):
    """transformers' BertModel (fp32, eval) of ``CONFIG`` (``overrides`` over it) and the vocabulary, torch seed 0,
    LayerNorms perturbed."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(wordpiece_vocab()), pad_token_id=0, **{**CONFIG, **overrides})
    return perturbed(BertModel(config, add_pooling_layer=False).eval())


def write_tiny_bert_gguf(path: Path, pooling: str = "mean", block_type: str | None = None,
                         metadata: dict | None = None, extra_tensors: dict | None = None,
                         one_token_type: bool = False) -> str:
    """The tiny BERT to ``path`` as llama.cpp's converter writes it -> the file's sha256. ``metadata``: full key ->
    bool / int / str written as well (e.g. ``tokenizer.ggml.normalizer.lowercase``); ``extra_tensors``: name ->
    array written as well (a ``cls.*`` head); ``one_token_type``: one token type, its table stored 1-D as llama.cpp's
    quantizer leaves XLM-RoBERTa's."""
    import gguf

    model = tiny_bert(**({"type_vocab_size": 1} if one_token_type else {}))
    c = model.config
    w = gguf.GGUFWriter(str(path), "bert")
    w.add_name("tiny-bert")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_head_count(c.num_attention_heads)
    w.add_layer_norm_eps(c.layer_norm_eps)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if block_type is None else gguf.LlamaFileType[f"MOSTLY_{block_type}"])
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType(POOLING[pooling]))
    w.add_token_type_count(c.type_vocab_size)
    add_wordpiece_vocab(w)
    for key, value in (metadata or {}).items():
        (w.add_bool if isinstance(value, bool) else w.add_uint32 if isinstance(value, int) else w.add_string)(
            key, value)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, c.num_hidden_layers)
    kept_f32 = ("position_embd.weight", "token_types.weight")
    for key, tensor in model.state_dict().items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        array = tensor.numpy().astype(np.float32)
        if one_token_type and name == "token_types.weight":
            array = array[0]
        add_weight(w, name, array, block_type, keep_f32=name in kept_f32)
    for name, array in (extra_tensors or {}).items():
        w.add_tensor(name, np.asarray(array, np.float32))
    return finish(w, path)


def add_weight(w, name: str, array: np.ndarray, block_type: str | None, keep_f32: bool = False) -> None:
    """One tensor on GGUFWriter ``w``: F32, or a matrix in ``block_type``'s blocks (gguf-py's quantize) unless
    ``keep_f32`` (the converter keeps the position and token-type tables F32)."""
    import gguf

    if block_type is None or array.ndim != 2 or keep_f32:
        w.add_tensor(name, array)
        return
    kind = gguf.GGMLQuantizationType[block_type]
    codes = gguf.quants.quantize(array, kind)
    w.add_tensor(name, codes, raw_shape=codes.shape, raw_dtype=kind)


def finish(w, path: Path) -> str:
    """Write GGUFWriter ``w``'s header, keys and tensors to ``path`` and close it -> the file's sha256."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_xlmr_gguf(path: Path, model, meta: dict, pooling: int) -> str:
    """A transformers XLM-RoBERTa (``XLMRobertaModel``, or ``...ForSequenceClassification``: its head as
    ``cls`` / ``cls.output``) to ``path`` as llama.cpp's converter writes bge-m3 / bge-reranker: a ``bert`` file, the
    position table cut to start at pad_token_id + 1 (RoBERTa's first position), ``meta``'s tokenizer keys
    (tests/data/gguf_ugm/ugm_vocabs.py), ``pooling_type`` ``pooling`` -> the file's sha256."""
    import gguf
    import ugm_vocabs

    c = model.config
    offset = c.pad_token_id + 1
    w = gguf.GGUFWriter(str(path), "bert")
    w.add_context_length(c.max_position_embeddings - offset)  # the converter's cut table
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_head_count(c.num_attention_heads)
    w.add_layer_norm_eps(c.layer_norm_eps)
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType(pooling))
    ugm_vocabs.add_tokenizer_keys(w, meta)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, c.num_hidden_layers)
    for key, tensor in model.state_dict().items():
        key = key.removeprefix("roberta.")
        array = tensor.numpy().astype(np.float32)
        if key == "embeddings.position_embeddings.weight":
            array = array[offset:]
        w.add_tensor(names.get_name(key, try_suffixes=(".weight", ".bias")), array)
    return finish(w, path)
