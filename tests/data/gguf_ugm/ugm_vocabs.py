"""The UGM (``tokenizer.ggml.model = "t5"``) vocabularies of tests/test_gguf_ugm.py, as GGUF metadata and files.

All are made from the real T5-small vocabulary (../shared/data/t5-small-tokenizer/tokenizer.json beside the repository: 32,000
SentencePiece Unigram pieces with their scores, and the precompiled charsmap of its ``Precompiled`` normalizer; no
``spiece.model`` ships there), written as llama.cpp's ``convert_hf_to_gguf.py`` writes them:

* ``t5``: ``T5Model.set_vocab`` for google-t5/t5-small: ``vocab_size`` 32,128 (its config.json), so the 32,000 pieces
  (``<pad>``, ``</s>`` CONTROL, ``<unk>`` UNKNOWN, the rest NORMAL) then ``[PAD32000]`` ... ``[PAD32127]`` UNUSED,
  score -10000 (no added_tokens.json there: the ``<extra_id_N>`` are not tokens of the GGUF); add_space_prefix and
  remove_extra_whitespaces true (T5's normalizer spec), the charsmap; specials by ``gguf.SpecialVocab`` from
  tokenizer.json + tokenizer_config.json: eos 1, unk 2, pad 0, ``add_eos_token`` true (from the ``$A </s>``
  TemplateProcessing), no add_bos key. Architecture ``t5`` with t5-small's hyperparameters.
* ``t5-extra-ids``: the same with an added_tokens.json holding ``<extra_id_0..99>`` (ids 32099..32000): the converter
  makes them USER_DEFINED, score -1000 (as fine-tuned T5 checkpoints saved by transformers have them).
* ``t5-keep-spaces``: ``t5`` with ``remove_extra_whitespaces`` false (llama.cpp's other whitespace path: every space
  a ``"▁"``, one more before the first character that is no space).
* ``xlmr``: XLM-RoBERTa's layout (bge-m3, multilingual-e5, bge-reranker: architecture ``bert``, tokenizer ``t5``), as
  ``_xlmroberta_set_vocab`` realigns a SentencePiece model: ``<s>`` ``<pad>`` ``</s>`` CONTROL, ``<unk>`` UNKNOWN, then
  the pieces from id 3 on shifted by one, and ``<mask>`` CONTROL last (32,002 tokens); bos 0, eos 2, unk 3, pad 1,
  sep 2, cls 0, mask 32001, add_bos and add_eos true (bge-m3's), the same flags and charsmap.

Needs the onnxlm venv (gguf); the reference script calls :func:`write_all` through that interpreter.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import json
import pathlib
import shutil
import tempfile
from typing import Any

# ../shared/data beside the repository (tests/conftest.py's shared_data), this file being tests/data/gguf_ugm/
SOURCE_DIR = pathlib.Path(__file__).resolve().parents[4] / "shared" / "data" / "t5-small-tokenizer"
SOURCE_FILES = ("tokenizer.json", "tokenizer_config.json")
VOCABS = ("t5", "t5-extra-ids", "t5-keep-spaces", "xlmr")
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED = 1, 2, 3, 4, 5
_T5_VOCAB_SIZE = 32128  # google-t5/t5-small config.json
# t5-small config.json (llama.cpp's T5Model.set_gguf_parameters reads these)
_T5_HPARAMS = {"context_length": 512, "embedding_length": 512, "feed_forward_length": 2048, "block_count": 6,
               "decoder_block_count": 6, "attention.head_count": 8, "attention.key_length": 64,
               "attention.value_length": 64, "attention.relative_buckets_count": 32}
_BERT_HPARAMS = {"context_length": 512, "embedding_length": 8, "feed_forward_length": 16, "block_count": 1,
                 "attention.head_count": 1}


def source_sha256() -> list[str]:
    return [hashlib.sha256((SOURCE_DIR / f).read_bytes()).hexdigest() for f in SOURCE_FILES]


@functools.lru_cache(maxsize=None)
def _source() -> tuple[list[str], list[float], bytes, bool, bool]:
    data = json.loads((SOURCE_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"][:32000]  # the SentencePiece pieces (then the 100 <extra_id_N> HF adds)
    charsmap = base64.b64decode(data["normalizer"]["precompiled_charsmap"])
    return [t for t, _ in vocab], [float(s) for _, s in vocab], charsmap, True, True  # add_dummy_prefix, remove_ws


def _special_vocab(n_vocab: int, added_tokens: dict[str, int] | None = None) -> dict[str, Any]:
    """What gguf.SpecialVocab (llama.cpp's converter) writes for the T5-small files: {metadata key: value}."""
    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        for f in SOURCE_FILES:
            shutil.copy(SOURCE_DIR / f, tmp)
        if added_tokens:
            (pathlib.Path(tmp) / "added_tokens.json").write_text(json.dumps(added_tokens), encoding="utf-8")
        sv = gguf.SpecialVocab(tmp, load_merges=False, n_vocab=n_vocab)
    out: dict[str, Any] = {}
    for typ, tid in sv.special_token_ids.items():
        key = {"pad": "padding_token_id", "unk": "unknown_token_id", "sep": "seperator_token_id",
               "cls": "cls_token_id", "mask": "mask_token_id"}.get(typ, f"{typ}_token_id")
        out[f"tokenizer.ggml.{key}"] = int(tid)
    for typ, value in sv.add_special_token.items():
        out[f"tokenizer.ggml.add_{typ}_token"] = bool(value)
    return out


def _t5_metadata(extra_ids: bool) -> dict[str, Any]:
    pieces, scores, charsmap, add_prefix, remove_ws = _source()
    n = _T5_VOCAB_SIZE
    tokens = [f"[PAD{i}]" for i in range(n)]
    sc = [-10000.0] * n
    types = [_UNUSED] * n
    for i, (p, s) in enumerate(zip(pieces, scores)):
        tokens[i], sc[i] = p, s
        types[i] = {"<pad>": _CONTROL, "</s>": _CONTROL, "<unk>": _UNKNOWN}.get(p, _NORMAL)
    added = {f"<extra_id_{k}>": 32099 - k for k in range(100)} if extra_ids else None
    for t, i in (added or {}).items():
        tokens[i], sc[i], types[i] = t, -1000.0, _USER_DEFINED
    meta = {
        "general.architecture": "t5",
        "tokenizer.ggml.model": "t5",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": sc,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.add_space_prefix": add_prefix,
        "tokenizer.ggml.remove_extra_whitespaces": remove_ws,
        "tokenizer.ggml.precompiled_charsmap": list(charsmap),
    }
    meta.update(_special_vocab(n, added))
    return meta


def _xlmr_metadata() -> dict[str, Any]:
    pieces, scores, charsmap, add_prefix, remove_ws = _source()
    tokens = ["<s>", "<pad>", "</s>", "<unk>"] + pieces[3:] + ["<mask>"]
    sc = [0.0] * 4 + scores[3:] + [0.0]
    types = [_CONTROL, _CONTROL, _CONTROL, _UNKNOWN] + [_NORMAL] * (len(pieces) - 3) + [_CONTROL]
    n = len(tokens)
    return {
        "general.architecture": "bert",
        "tokenizer.ggml.model": "t5",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": sc,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.add_space_prefix": add_prefix,
        "tokenizer.ggml.token_type_count": 1,
        "tokenizer.ggml.remove_extra_whitespaces": remove_ws,
        "tokenizer.ggml.precompiled_charsmap": list(charsmap),
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.seperator_token_id": 2,
        "tokenizer.ggml.padding_token_id": 1,
        "tokenizer.ggml.cls_token_id": 0,
        "tokenizer.ggml.mask_token_id": n - 1,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": True,
    }


@functools.lru_cache(maxsize=None)
def _metadata(name: str) -> dict[str, Any]:
    if name == "t5":
        return _t5_metadata(False)
    if name == "t5-extra-ids":
        return _t5_metadata(True)
    if name == "t5-keep-spaces":
        meta = dict(_t5_metadata(False))
        meta["tokenizer.ggml.remove_extra_whitespaces"] = False
        return meta
    if name == "xlmr":
        return _xlmr_metadata()
    raise ValueError(f"unknown UGM vocabulary {name!r}")


def vocab_metadata(name: str) -> dict[str, Any]:
    """The GGUF metadata (general.architecture and tokenizer.*) of vocabulary ``name`` (a fresh dict; the lists are
    shared, do not mutate them)."""
    return dict(_metadata(name))


def add_tokenizer_keys(w, meta: dict[str, Any]) -> None:
    """Every ``tokenizer.*`` key of ``meta`` on GGUFWriter ``w``, with the GGUF types llama.cpp's converter uses."""
    from gguf import GGUFValueType

    kinds = {"tokenizer.ggml.tokens": GGUFValueType.STRING, "tokenizer.ggml.scores": GGUFValueType.FLOAT32,
             "tokenizer.ggml.token_type": GGUFValueType.INT32,
             "tokenizer.ggml.precompiled_charsmap": GGUFValueType.UINT8}
    for key, value in meta.items():
        if not key.startswith("tokenizer."):
            continue
        if key in kinds:
            w.add_key_value(key, value, GGUFValueType.ARRAY, sub_type=kinds[key])
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        else:
            w.add_string(key, str(value))


def write_vocab_gguf(path: pathlib.Path, name: str) -> pathlib.Path:
    """A tokenizer-only GGUF of vocabulary ``name`` with the hyperparameters llama.cpp's loader reads for its
    architecture (``Llama(path, vocab_only=True)`` loads no tensors)."""
    from gguf import GGUFValueType, GGUFWriter

    meta = vocab_metadata(name)
    arch = meta["general.architecture"]
    w = GGUFWriter(str(path), arch)
    for key, value in (_T5_HPARAMS if arch == "t5" else _BERT_HPARAMS).items():
        w.add_uint32(f"{arch}.{key}", value)
    w.add_float32(f"{arch}.attention.layer_norm_epsilon", 1e-6)
    if arch == "t5":
        w.add_float32("t5.attention.layer_norm_rms_epsilon", 1e-6)
        w.add_uint32("t5.decoder_start_token_id", 0)
    else:
        w.add_bool("bert.attention.causal", False)
        w.add_uint32("bert.pooling_type", 2)  # CLS (bge-m3)
    add_tokenizer_keys(w, meta)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_all(workdir: str, names: list[str] | None = None) -> dict[str, str]:
    """{name: gguf path} for ``names`` (default: all); used by the reference script."""
    out = {}
    for name in names or list(VOCABS):
        out[name] = str(write_vocab_gguf(pathlib.Path(workdir) / f"{name}.gguf", name))
    return out
