"""WordPiece GGUF vocabularies (``tokenizer.ggml.model = "bert"``, llama.cpp's WPM) as a :class:`tokenizers.Tokenizer`.

The reference is llama.cpp (``src/llama-vocab.cpp``: ``tokenizer_st_partition``, then ``llm_tokenizer_wpm_session``
on each text fragment), not transformers' BertTokenizer: llama.cpp's converter (``convert_hf_to_gguf.py``,
``BertModel.set_vocab``) rewrites the WordPiece vocabulary into a "phantom space" one (a word-start token ``hello``
becomes ``▁hello``, a continuation ``##ing`` becomes ``ing``, CONTROL tokens such as ``[CLS]`` stay as they are), and
llama.cpp's own splitting rules and Unicode tables decide the words. What llama.cpp does, and the tokenizers building
block that reproduces each step:

1. Partition on added tokens, as for every vocabulary (export/gguf_tokenizer.py): CONTROL and UNKNOWN tokens are
   special added tokens, USER_DEFINED ones plain added tokens, all ``normalized=False``; ``encode_special_tokens=True``
   is llama.cpp's ``special=False``.
2. ``preprocess``, per code point, with ``tokenizer.ggml.normalizer.lowercase`` (default true) and
   ``tokenizer.ggml.normalizer.strip_accents`` (default: the lowercase setting):

   * strip_accents: the code point becomes the FIRST code point of its NFD (``unicode_cpts_normalize_nfd``), then a
     mark (``\\p{M}``) is dropped. Every NFD but a Hangul syllable's is a base plus marks, so: ``NFD`` then
     ``Replace(\\p{M}, "")``, after a Hangul syllable is replaced by its leading consonant (19 ranges of 588
     syllables: llama.cpp keeps ``ᄋ`` of ``안``, where tokenizers' NFD keeps all three jamo);
   * whitespace (llama.cpp's list: U+0009-000D, U+0020, U+0085, U+00A0, U+1680, U+2000-200A, U+2028, U+2029,
     U+202F, U+205F, U+3000) ends a word;
   * U+0000, U+FFFD and controls (``\\p{Cc}``, ``\\p{Cf}``, ``\\p{Co}``: zero-width space, soft hyphen, BOM) are
     dropped: ``Replace``;
   * lowercase: llama.cpp's one-code-point mapping (UnicodeData's simple lowercase). tokenizers' ``Lowercase`` is
     Rust's full mapping, the same but for ``İ`` (``i̇``: ``i`` here) and a final ``Σ`` (``ς``: ``σ`` here), which
     are replaced first;
   * punctuation (``\\p{P}``), an ASCII symbol (``$ + < = > ^ ` | ~``) or a CJK ideograph (llama.cpp's
     ``is_chinese_char`` ranges) is a word of its own: ``Split(..., "isolated")``.

3. Each word gets a ``▁`` in front and is matched greedily, longest vocabulary token first from the left; a word
   with a part no token matches is one UNK. Here: ``Metaspace(prepend_scheme="always", split=False)`` and a
   ``WordPiece`` model over the GGUF's own token strings with ``continuing_subword_prefix=""`` (a continuation is
   looked up as it is, as llama.cpp does). Metaspace prepends nothing to a word that already starts with a ``▁``
   (U+2581 is a symbol llama.cpp keeps inside words): a ``▁`` at a word's start is doubled first (``Replace`` with a
   look-behind), so such a word is ``▁▁...`` as llama.cpp makes it.
4. ``add_special`` (llama-cpp-python's ``add_bos``): llama.cpp puts its BOS (``tokenizer.ggml.bos_token_id``,
   default 101; a BERT converter writes ``[CLS]``) first and its SEP (``tokenizer.ggml.seperator_token_id``,
   default 102) last, whatever ``add_bos_token`` / ``add_sep_token`` say: a ``TemplateProcessing``.

Unicode tables: llama.cpp's are generated from one Unicode version (``scripts/gen-unicode-data.py``), onig's and
Rust's (inside tokenizers) from theirs; code points assigned since the older of them may be classed differently.
"""
from __future__ import annotations

from typing import Any, Mapping

from onnxlm.runtime.errors import ExportError

from .gguf_added_overlap import warn_if_overlapping
from .gguf_token_types import CONTROL, NORMAL, UNKNOWN, USER_DEFINED, llama_cpp_token_types

__all__ = ["build_wpm_tokenizer", "wpm_specials", "WHITESPACE", "ISOLATED"]

_SPACE = "\u2581"  # "▁", the phantom space of llama.cpp's WPM vocabularies
#: llama.cpp's whitespace (unicode-data.cpp ``unicode_set_whitespace``: Unicode's White_Space)
WHITESPACE = "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
#: llama.cpp's ``llm_tokenizer_wpm_session::is_chinese_char`` ranges
_CJK = ("\\x{4E00}-\\x{9FFF}\\x{3400}-\\x{4DBF}\\x{20000}-\\x{2A6DF}\\x{2A700}-\\x{2B73F}\\x{2B740}-\\x{2B81F}"
        "\\x{2B920}-\\x{2CEAF}\\x{F900}-\\x{FAFF}\\x{2F800}-\\x{2FA1F}")
#: a word of its own: punctuation, an ASCII symbol (``cpt < 0x7F && is_symbol``), a CJK ideograph
ISOLATED = "\\p{P}$+<=>^`|~" + _CJK
#: dropped: NUL, U+FFFD, controls (\\p{C} but unassigned code points, which llama.cpp's tables mark undefined) that
#: are not whitespace (tab, newline, U+0085 are both)
_DROPPED = "(?![\\t-\\r\\x{85}])[\\p{Cc}\\p{Cf}\\p{Co}\\x{FFFD}]"
_HANGUL_FIRST, _HANGUL_PER_LEAD, _HANGUL_LEADS = 0xAC00, 588, 19  # syllable = 0xAC00 + (lead * 21 + vowel) * 28 + tail


def _flag(meta: Mapping[str, Any], key: str, default: bool) -> bool:
    value = meta.get(key, default)
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise ExportError(f"GGUF metadata {key}={value!r}: expected a boolean")


def _special_id(meta: Mapping[str, Any], key: str, default: int, n: int) -> int:
    """llama.cpp's rule: the file's id where it is a token, else the WPM default where that is one."""
    value = meta.get(f"tokenizer.ggml.{key}")
    if value is not None and 0 <= int(value) < n:
        return int(value)
    if 0 <= default < n:
        return default
    raise ExportError(f"GGUF metadata tokenizer.ggml.{key} is " + ("absent" if value is None else f"{value}")
                      + f" and llama.cpp's default {default} is outside the vocabulary (0..{n - 1}): a WordPiece "
                        "('bert') vocabulary needs it (llama.cpp refuses such a file)")


def wpm_specials(meta: Mapping[str, Any]) -> dict[str, int]:
    """The ids llama.cpp's WPM tokenizer uses: ``bos`` (put first: BERT's [CLS]), ``sep`` (put last), ``unk``, ``pad``
    (the file's, else the WPM defaults 101, 102, 100, 0)."""
    n = len(meta.get("tokenizer.ggml.tokens") or [])
    out = {"bos": _special_id(meta, "bos_token_id", 101, n), "sep": _special_id(meta, "seperator_token_id", 102, n),
           "unk": _special_id(meta, "unknown_token_id", 100, n)}
    pad = meta.get("tokenizer.ggml.padding_token_id", 0)
    out["pad"] = int(pad) if pad is not None and 0 <= int(pad) < n else out["sep"]
    return out


def _normalizer(lowercase: bool, strip_accents: bool):
    from tokenizers import Regex, normalizers

    steps = []
    if strip_accents:
        for lead in range(_HANGUL_LEADS):  # a syllable -> its leading consonant, U+1100 + lead
            lo = _HANGUL_FIRST + lead * _HANGUL_PER_LEAD
            steps.append(normalizers.Replace(Regex(f"[\\x{{{lo:X}}}-\\x{{{lo + _HANGUL_PER_LEAD - 1:X}}}]"),
                                             chr(0x1100 + lead)))
        steps += [normalizers.NFD(), normalizers.Replace(Regex("\\p{M}"), "")]
    steps.append(normalizers.Replace(Regex(_DROPPED), ""))
    if lowercase:
        steps += [normalizers.Replace("\u0130", "i"), normalizers.Replace("\u03a3", "\u03c3"), normalizers.Lowercase()]
    # a "▁" that starts a word (after the start, whitespace or a word-of-its-own character) is doubled: Metaspace
    # then prepends none to it, and the word is "▁" + itself, as llama.cpp's
    steps.append(normalizers.Replace(Regex(f"(?<![^{WHITESPACE}{ISOLATED}]){_SPACE}"), _SPACE * 2))
    return normalizers.Sequence(steps)


def build_wpm_tokenizer(meta: Mapping[str, Any]):
    """The GGUF metadata of a ``bert`` vocabulary -> a :class:`tokenizers.Tokenizer` giving llama.cpp's ids (see the
    module doc)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    tokens = list(meta.get("tokenizer.ggml.tokens") or [])
    if not tokens:
        raise ExportError("GGUF metadata has no tokenizer.ggml.tokens: a WPM vocabulary needs its tokens")
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    if len(types) != len(tokens):
        raise ExportError(f"GGUF metadata has {len(tokens)} tokens but {len(types)} token types")
    types = llama_cpp_token_types(tokens, types)
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t in vocab:  # llama.cpp refuses the file
            raise ExportError(f"GGUF tokenizer.ggml.tokens holds {t!r} twice (ids {vocab[t]} and {i}); llama.cpp "
                              "refuses such a vocabulary")
        vocab[t] = i
    ids = wpm_specials(meta)
    lowercase = _flag(meta, "tokenizer.ggml.normalizer.lowercase", True)
    strip_accents = _flag(meta, "tokenizer.ggml.normalizer.strip_accents", lowercase)

    # [n] tokens -> WordPiece over the GGUF's strings: a word is "▁" + word, a continuation looked up as it is
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=tokens[ids["unk"]], continuing_subword_prefix="",
                                           max_input_chars_per_word=1 << 30))
    tokenizer.normalizer = _normalizer(lowercase, strip_accents)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(f"[{WHITESPACE}]+"), "removed"),
        pre_tokenizers.Split(Regex(f"[{ISOLATED}]"), "isolated"),
        pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="always", split=False),
    ])
    tokenizer.decoder = decoders.Metaspace(replacement=_SPACE, prepend_scheme="always", split=False)

    special = [AddedToken(t, normalized=False, special=True) for t, k in zip(tokens, types) if k in (CONTROL, UNKNOWN)]
    added = [AddedToken(t, normalized=False, special=False) for t, k in zip(tokens, types) if k == USER_DEFINED]
    warn_if_overlapping([t.content for t in special + added], stacklevel=3)
    if special:
        tokenizer.add_special_tokens(special)
    if added:
        tokenizer.add_tokens(added)
    bos, sep = tokens[ids["bos"]], tokens[ids["sep"]]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {sep}", pair=f"{bos} $A {sep} $B:1 {sep}:1",
        special_tokens=[(t, vocab[t]) for t in dict.fromkeys((bos, sep))])
    return tokenizer
