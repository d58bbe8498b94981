"""Byte-level BPE pre-tokenizers for GGUF ``tokenizer.ggml.pre`` values, as llama.cpp splits text before BPE.

llama.cpp (``src/llama-vocab.cpp``, ``llm_tokenizer_bpe``) gives each pre type a list of regexes applied in turn,
each match and each text between matches a piece of its own, then maps each piece's bytes to GPT-2's printable
characters. tokenizers reproduces that with ``Sequence[Split(Regex(r), "isolated") for r in regexes] +
ByteLevel(use_regex=False)``. Where llama.cpp rewrote a tokenizer.json regex for its own regex engine
(``(?i:'s|...)`` as ``'[sS]|...``), the table keeps llama.cpp's form.

Per pre type also: ``ignore_merges`` (llama.cpp: a piece that is a vocabulary token is taken whole, before any merge;
tokenizers: ``BPE(ignore_merges=True)``) and the default of ``tokenizer.ggml.add_bos_token`` when the GGUF lacks it.

``"gpt2"`` is not a llama.cpp name (llama.cpp says ``"gpt-2"``); it is kept as an alias for GGUF files written by
older onnxlm-adjacent tools. An unknown pre type is refused by name (ExportError listing the known ones).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from onnxlm.runtime.errors import ExportError

__all__ = ["PreType", "PRE_TYPES", "pre_type", "bpe_pre_tokenizer", "default_add_bos"]

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# Seed-Coder: Qwen 2's with single digits and punctuation runs that stop before a line break
_SEED_CODER = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)"
               r"|\s+")
# BLOOM's (Viking's first): a run of anything but whitespace and these punctuation marks (the class as
# llama.cpp spells it, "(", "|" and ")" included)
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"
_QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")


# tekken (Mistral Nemo) and gpt-4o (Phi-4): llama.cpp's rewrites of the tokenizer.json regexes, whose case classes
# ([\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]* then [\p{Ll}\p{Lm}\p{Lo}\p{M}]+) it cannot run: a letter counts as "upper" if it is
# not a-z and as "lower" if it is not A-Z, so every non-ASCII letter is both ("aÉ" is one piece there, two in
# tokenizer.json's split), and a combining mark is no letter. llama.cpp runs them with std::regex on its "collapsed"
# text (each non-ASCII code point one byte of its category; non-ASCII whitespace U+000B): the same regex over the
# code points gives the same pieces.
_UPPER_LOWER = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
_UPPER_ONLY = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
_TEKKEN = _UPPER_LOWER + "|" + _UPPER_ONLY + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_GPT4O = (_UPPER_LOWER + _CONTRACTIONS + "?|" + _UPPER_ONLY + _CONTRACTIONS
          + r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")


# deepseek-coder's "[一-龥ࠀ-一가-퟿]+" has no \p{..} class, so llama.cpp runs it with std::wregex on the text with every
# non-ASCII whitespace code point replaced by U+000B: the Unicode spaces inside U+0800..U+4E00 (ideographic space,
# en/em/thin spaces, line/paragraph separators, ...) never match it. The same class without them (onig's "&&").
_CJK_NO_SPACE = r"[一-龥ࠀ-一가-퟿&&[^\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]]+"

# deepseek-llm (DeepSeek LLM, a Llama): no \p{..} class but in its last regex, so llama.cpp runs the others with
# std::wregex on the text whose non-ASCII whitespace is U+000B (as deepseek-coder's CJK class): the ideographic space
# at the start of its punctuation range "　-。" never matches there (the range starts at "、" here); its "\s+$" ends
# at the end of each piece ("\z": Oniguruma's "$" also matches before a line break).
_DEEPSEEK_LLM_LETTERS = ("A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅ"
                         "ὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-"
                         "ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃")
_DEEPSEEK_LLM = (r"[\r\n]", r"\s?[" + _DEEPSEEK_LLM_LETTERS + "]+", r"\s?[!-/:-~！-／：-～‘-‟、-。]+", r"\s+\z",
                 _CJK_NO_SPACE, r"\p{N}+")


@dataclass(frozen=True)
class PreType:
    regexes: tuple[str, ...]
    ignore_merges: bool = False
    add_bos: bool = False  # llama.cpp's default when tokenizer.ggml.add_bos_token is absent


_DEFAULT = PreType((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"))
_GPT2_TYPE = PreType((_GPT2,))
_DIGITS_GPT2 = PreType((r"\p{N}", _GPT2))
_LLAMA3_TYPE = PreType((_LLAMA3,), ignore_merges=True, add_bos=True)
_LLAMA3_REGEX = PreType((_LLAMA3,))
_QWEN2_TYPE = PreType((_QWEN2,))

# llama.cpp's tokenizer.ggml.pre names (llama_vocab::impl::load) -> what it does
PRE_TYPES: dict[str, PreType] = {
    "default": _DEFAULT,
    # GPT-2's regex alone
    "gpt-2": _GPT2_TYPE, "gpt2": _GPT2_TYPE, "phi-2": _GPT2_TYPE, "mpt": _GPT2_TYPE, "olmo": _GPT2_TYPE,
    "jais": _GPT2_TYPE, "trillion": _GPT2_TYPE, "granite-docling": _GPT2_TYPE, "a.x-4.0": _GPT2_TYPE,
    "mellum": _GPT2_TYPE, "exaone4": _GPT2_TYPE,
    # every digit on its own, then GPT-2's regex
    "smollm": _DIGITS_GPT2, "starcoder": _DIGITS_GPT2, "refact": _DIGITS_GPT2, "command-r": _DIGITS_GPT2,
    "codeshell": _DIGITS_GPT2, "exaone": _DIGITS_GPT2, "minerva-7b": _DIGITS_GPT2,
    # Llama 3's regex (digits in runs of up to three); the llama-bpe family also takes whole-token pieces unmerged
    "llama-bpe": _LLAMA3_TYPE, "llama3": _LLAMA3_TYPE, "llama-v3": _LLAMA3_TYPE, "falcon3": _LLAMA3_TYPE,
    "pixtral": _LLAMA3_TYPE, "midm-2.0": _LLAMA3_TYPE, "lfm2": _LLAMA3_TYPE,
    "dbrx": _LLAMA3_REGEX, "smaug-bpe": _LLAMA3_REGEX,
    # Qwen 2's regex (single digits)
    "qwen2": _QWEN2_TYPE, "deepseek-r1-qwen": _QWEN2_TYPE, "stablelm2": _QWEN2_TYPE, "megrez": _QWEN2_TYPE,
    "seed-coder": PreType((_SEED_CODER,)),
    # Viking (a Llama): BLOOM's split, then every digit on its own
    "viking": PreType((_BLOOM, r"\p{N}")),
    "qwen35": PreType((_QWEN35,)),
    "falcon": PreType((r"[\p{P}\$\+<=>\^~\|`]+",
                       r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
                       r"[0-9][0-9][0-9]")),
    "deepseek-coder": PreType((r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK_NO_SPACE, r"\p{N}")),
    "deepseek-llm": PreType(_DEEPSEEK_LLM),
    # Mistral Nemo / Small 3 / Pixtral's tekken: whole-token pieces unmerged, BOS by default
    "tekken": PreType((_TEKKEN,), ignore_merges=True, add_bos=True),
    # Phi-4 and Llama 4 (o200k-style): case classes, contractions attached, digits in runs of up to three
    "gpt-4o": PreType((_GPT4O,)), "llama4": PreType((_GPT4O,)), "kanana2": PreType((_GPT4O,)),
}


def pre_type(meta: Mapping[str, Any]) -> PreType:
    """The :class:`PreType` of ``tokenizer.ggml.pre`` (absent: ``"default"``); ExportError for an unknown one."""
    name = meta.get("tokenizer.ggml.pre", "default")
    try:
        return PRE_TYPES[name]
    except (KeyError, TypeError):
        raise ExportError(
            f"GGUF tokenizer.ggml.pre={name!r} is not supported; supported: {sorted(PRE_TYPES)}"
        ) from None


def bpe_pre_tokenizer(meta: Mapping[str, Any]):
    """The tokenizers pre-tokenizer reproducing llama.cpp's split for the GGUF's ``tokenizer.ggml.pre``."""
    from tokenizers import Regex, pre_tokenizers

    from .unicode_gap import as_unicode_15_1

    splits = [pre_tokenizers.Split(Regex(as_unicode_15_1(r)), behavior="isolated", invert=False)  # llama.cpp's
              for r in pre_type(meta).regexes]                                                   # categories
    return pre_tokenizers.Sequence(
        splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)]
    )


def default_add_bos(meta: Mapping[str, Any]) -> bool:
    """llama.cpp's add_bos when ``tokenizer.ggml.add_bos_token`` is absent: SPM yes, BPE per pre type."""
    model = meta.get("tokenizer.ggml.model", "gpt2")
    if model == "llama":
        return True
    if model != "gpt2":
        return False
    spec = PRE_TYPES.get(meta.get("tokenizer.ggml.pre", "default"))
    return bool(spec and spec.add_bos)
