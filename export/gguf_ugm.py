"""SentencePiece Unigram GGUF vocabularies (``tokenizer.ggml.model = "t5"``, llama.cpp's UGM) as a
:class:`tokenizers.Tokenizer`: T5, and the XLM-RoBERTa embedding / reranker models (bge-m3, multilingual-e5,
bge-reranker: architecture ``bert``, tokenizer ``t5``).

The reference is llama.cpp (``src/llama-vocab.cpp``: ``tokenizer_st_partition``, then ``llm_tokenizer_ugm_session`` on
each text fragment). What it does, and the tokenizers building block that reproduces each step:

1. Partition on added tokens, as for SPM (export/gguf_tokenizer.py): CONTROL and UNKNOWN tokens (types as llama.cpp
   reads them, export/gguf_token_types.py) only with special-token parsing, USER_DEFINED ones always. Here: special
   and plain added tokens, ``normalized=False``; tokenizers' ``encode_special_tokens=True`` is ``special=False``.
2. Each text fragment is normalized: the precompiled charsmap (``tokenizer.ggml.precompiled_charsmap``: SentencePiece's
   XOR-compressed double array) replaces the longest key at each position, left to right; then, with
   ``tokenizer.ggml.remove_extra_whitespaces``, runs of ``" "`` collapse and every run of other characters gets one
   ``"▁"`` before it (leading and trailing spaces vanish); without it every ``" "`` becomes ``"▁"`` and, with
   ``tokenizer.ggml.add_space_prefix``, one ``"▁"`` goes before the first character that is no space. Here: the
   normalizer ``Sequence[<pre-replacements>, NFC, Precompiled(charsmap), <the space rules as Replace/Prepend>]``.
3. Viterbi over the whole normalized fragment: the best-scoring segmentation into NORMAL, USER_DEFINED (score 0) and
   UNUSED tokens; a code point no such token covers alone is the unknown token, scored ``min(NORMAL scores) - 10``;
   consecutive unknown tokens become one. Here: ``models.Unigram`` on the fragment as it is (no pre-tokenizer, so
   no per-word split), with ``fuse_unk``; both keep the first of equal-scored paths in the same order.
   CONTROL, UNKNOWN and BYTE tokens are no candidates in llama.cpp; here they get a score below anything that competes
   with them, and where one of their characters has no token (T5's ``"<"``) their first character is marked so they
   cannot match (:func:`ugm_vocab`). The low score also lowers tokenizers' unknown score (its minimum is over every
   token): that changes ids only where a code point with no token of its own sits inside a longer token, which the
   builder checks (:func:`unknown_score_caveats`) and warns about; none does in T5's vocabulary.
4. BOS / EOS per ``tokenizer.ggml.add_bos_token`` / ``add_eos_token`` (UGM defaults: false / true; T5's EOS is
   appended, bge-m3 has both), as a TemplateProcessing post-processor.
5. Scores are scaled by a power of two to integers (:func:`_exact_scale`) so that tokenizer.json reads them back
   exactly (it does not round decimals correctly) and exact ties break as llama.cpp's.

Known differences, all in the charsmap step (tokenizers' ``Precompiled`` works on grapheme clusters and takes the
shortest key, llama.cpp the longest key at each position of the byte string). ``NFC`` first composes what the
charsmap would compose from a decomposed sequence (NFD Latin, Vietnamese, Greek and Korean text come out as
llama.cpp's), and the ``"\\r\\n"`` pair and half-width katakana with their voiced sound marks (``ｶﾞ`` -> ``ガ``) are
replaced beforehand (:func:`charsmap_pre_replacements`). Still different: a character the charsmap maps followed by
a grapheme extender (combining mark, U+FE0F, U+200D, U+3099/U+309A) in one grapheme under 6 bytes (``"Ａ\\u0301"``,
``"½\\ufe0f"``: tokenizers drops the extender; a fuzz of 3,000 texts dense in such characters against llama.cpp found
no other kind of difference), combining marks out of
canonical order (NFC reorders them, llama.cpp does not), and multi-character keys inside graphemes of 6 or more bytes
in rarer scripts (half-width Hangul jamo, circled katakana, mathematical letters with combining marks).
"""
from __future__ import annotations

import struct
import warnings
from typing import Any, Mapping

from onnxlm.runtime.errors import ExportError

from .gguf_added_overlap import warn_if_overlapping
from .gguf_tokenizer import bos_eos_template
from .gguf_token_types import CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, llama_cpp_token_types, vocabulary_lists

__all__ = ["build_ugm_tokenizer", "ugm_special_tokens", "ugm_vocab", "charsmap_lookup", "charsmap_pre_replacements",
           "unknown_score_caveats"]

_SPACE = "\u2581"  # "▁", SentencePiece's escaped space
_CHARSMAP_KEY = "tokenizer.ggml.precompiled_charsmap"
_MATCHABLE = (NORMAL, USER_DEFINED, UNUSED)  # the types llama.cpp's UGM token trie holds
_HALFWIDTH_KANA = range(0xFF61, 0xFFA0)  # U+FF61..U+FF9F: half-width katakana and their sound marks
_MARK = "\uffff"  # a noncharacter: follows every first character of a non-candidate token (ugm_vocab)


def _flag(meta: Mapping[str, Any], key: str, default: bool) -> bool:
    value = meta.get(key, default)
    if not isinstance(value, (bool, int)):
        raise ExportError(f"GGUF metadata {key}={value!r} is not a boolean")
    return bool(value)


def ugm_special_tokens(meta: Mapping[str, Any]) -> dict[str, Any]:
    """bos/eos/pad/unk ids and strings, add_bos_token / add_eos_token, with llama.cpp's UGM defaults where the keys
    are absent (eos 1, unk 2, pad 0, no bos; add_bos false, add_eos true) -> the dict shape of
    :func:`onnxlm.export.gguf.gguf_special_tokens` (without ``eog_token_ids``). A default id outside the vocabulary
    is none (llama.cpp disables it); a key's id outside it is an ExportError naming the key."""
    tokens = meta.get("tokenizer.ggml.tokens") or []
    out: dict[str, Any] = {}
    for name, key, default in (("bos", "bos_token_id", None), ("eos", "eos_token_id", 1),
                               ("pad", "padding_token_id", 0), ("unk", "unknown_token_id", 2)):
        tid = meta.get(f"tokenizer.ggml.{key}")
        if tid is None:
            tid = default if default is not None and default < len(tokens) else None
        elif not 0 <= int(tid) < len(tokens):
            raise ExportError(f"GGUF metadata tokenizer.ggml.{key}={tid} is outside the vocabulary "
                              f"(0..{len(tokens) - 1})")
        out[f"{name}_token_id"] = None if tid is None else int(tid)
        out[f"{name}_token"] = None if tid is None else tokens[int(tid)]
    out["add_bos_token"] = _flag(meta, "tokenizer.ggml.add_bos_token", False)
    out["add_eos_token"] = _flag(meta, "tokenizer.ggml.add_eos_token", True)
    return out


# --------------------------------------------------------------------------------------------------- charsmap

def _charsmap_bytes(meta: Mapping[str, Any]) -> bytes | None:
    """``tokenizer.ggml.precompiled_charsmap`` as bytes (None when absent or empty), checked as llama.cpp checks it."""
    raw = meta.get(_CHARSMAP_KEY)
    if raw is None or len(raw) == 0:
        return None
    try:
        blob = bytes(raw) if not isinstance(raw, (bytes, bytearray)) else bytes(raw)
    except (TypeError, ValueError) as e:
        raise ExportError(f"GGUF metadata {_CHARSMAP_KEY} is not an array of bytes ({e})") from e
    if len(blob) < 4:
        raise ExportError(f"GGUF metadata {_CHARSMAP_KEY} is too small ({len(blob)} bytes) for its size header")
    size = struct.unpack_from("<I", blob, 0)[0]
    if size + 4 >= len(blob) or size % 4:
        raise ExportError(f"GGUF metadata {_CHARSMAP_KEY}: its double array ({size} bytes) does not fit the "
                          f"{len(blob)} bytes")
    return blob


def charsmap_lookup(blob: bytes, key: bytes) -> bytes | None:
    """The replacement a SentencePiece precompiled charsmap (``[uint32 n][n bytes of XCDA entries][NUL-terminated
    replacements]``) holds for exactly ``key`` (UTF-8), or None; the walk of llama.cpp's ``normalize_prefix``."""
    size = struct.unpack_from("<I", blob, 0)[0]
    n_units = size // 4

    def unit(i: int) -> int:
        if i >= n_units:
            raise ExportError(f"GGUF metadata {_CHARSMAP_KEY}: an entry points outside its double array")
        return struct.unpack_from("<I", blob, 4 + 4 * i)[0]

    def base(u: int) -> int:
        return (u >> 10) << ((u & (1 << 9)) >> 6)

    node = base(unit(0))
    value = None
    for i, c in enumerate(key):
        node ^= c
        if node >= n_units or unit(node) & ((1 << 31) | 0xFF) != c:
            return None
        u = unit(node)
        node ^= base(u)
        value = unit(node) & ((1 << 31) - 1) if (u >> 8) & 1 and i == len(key) - 1 else None
    if value is None:
        return None
    pool = blob[4 + size:]
    end = pool.find(b"\0", value)
    if value >= len(pool) or end < 0:
        raise ExportError(f"GGUF metadata {_CHARSMAP_KEY}: a replacement lies outside its strings")
    return pool[value:end]


def charsmap_pre_replacements(blob: bytes) -> list[tuple[str, str]]:
    """(text, replacement) pairs the tokenizer replaces before ``Precompiled``, longest first, where tokenizers'
    grapheme-wise lookup would miss llama.cpp's longest match: ``"\\r\\n"`` (one grapheme: tokenizers maps it as its
    ``"\\r"`` and drops the ``"\\n"``) and the two-character keys of half-width katakana (``ｶﾞ`` -> ``ガ``: 6 bytes,
    which tokenizers maps character by character)."""
    def get(text: str) -> str | None:
        value = charsmap_lookup(blob, text.encode("utf-8"))
        if value is None:
            return None
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None

    pairs = {}
    kana = [chr(c) for c in _HALFWIDTH_KANA]
    for a in kana:
        for b in kana:
            value = get(a + b)
            if value is not None:
                pairs[a + b] = value
    crlf = get("\r\n")
    if crlf is None:
        cr, lf = get("\r"), get("\n")
        if cr is not None or lf is not None:
            crlf = (cr if cr is not None else "\r") + (lf if lf is not None else "\n")
    if crlf is not None:
        pairs["\r\n"] = crlf
    return sorted(pairs.items(), key=lambda kv: (-len(kv[0]), kv[0]))


def _normalizer(charsmap_blob: bytes | None, add_space_prefix: bool, remove_extra_whitespaces: bool,
                marked: list[str]):
    """The normalizer of steps 2 (module docstring) -> a tokenizers Normalizer."""
    from tokenizers import Regex, normalizers

    steps = []
    if charsmap_blob is not None:
        for old, new in charsmap_pre_replacements(charsmap_blob):
            steps.append(normalizers.Replace(old, new))
        steps.append(normalizers.NFC())
        try:
            steps.append(normalizers.Precompiled(charsmap_blob))
        except Exception as e:  # tokenizers raises a bare Exception for a charsmap it cannot parse
            raise ExportError(f"GGUF metadata {_CHARSMAP_KEY} is not a precompiled charsmap tokenizers reads: "
                              f"{e}") from e
    if remove_extra_whitespaces:  # "▁" before every run of non-spaces, no other spaces
        steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Replace(Regex(r"\A | \z"), ""),
                  normalizers.Prepend(_SPACE), normalizers.Replace(" ", _SPACE)]
    else:
        if add_space_prefix:  # one "▁" before the first character that is no space (none in a run of spaces)
            steps += [normalizers.Prepend(_SPACE), normalizers.Replace(Regex(f"\\A{_SPACE}(?= *\\z)"), "")]
        steps.append(normalizers.Replace(" ", _SPACE))
    steps += [normalizers.Replace(c, c + _MARK) for c in marked]  # ugm_vocab
    return normalizers.Sequence(steps)


# ------------------------------------------------------------------------------------------------------ model

def ugm_vocab(tokens: list[str], scores: list[float], file_types: list[int]
              ) -> tuple[list[tuple[str, float]], list[str]]:
    """The Unigram model's ``[(piece, score)]`` with llama.cpp's candidates, and the characters marked (below).

    Scores are scaled by :func:`_exact_scale`'s power of two. ``file_types``: ``tokenizer.ggml.token_type`` as in the
    file (llama.cpp builds its token trie before it promotes
    tokens by text, and a promotion keeps the NORMAL bit). NORMAL and UNUSED tokens keep their score, USER_DEFINED ones
    score 0 (llama.cpp's). Every other token (CONTROL, UNKNOWN, BYTE) is no candidate for llama.cpp; here it gets a
    score so low that its characters one by one always score better, ``(L + 1) * (min(NORMAL scores, 0) - 1)`` (L: the
    longest such token in code points), which is enough where each of its characters is a candidate token. Where one
    is not (T5 has no ``"<"``: ``"</s>"`` as text would be the unknown token plus pieces, yet tokenizers' unknown score
    is below every token's), the token's first character is marked: the normalizer puts U+FFFF after each occurrence
    of it (:data:`_MARK`) and the NORMAL / UNUSED pieces holding it hold the mark there too, so the token can no longer
    match and the mark, no candidate itself, joins the unknown token before it (consecutive unknowns are one);
    the decoder drops the marks. T5's marked character is ``"<"``, which no NORMAL piece holds.
    """
    normal = [float(s) for s, tt in zip(scores, file_types) if tt == NORMAL]
    floor = min(min(normal, default=0.0), 0.0) - 1.0
    longest = max((len(t) for t, tt in zip(tokens, file_types) if tt not in _MATCHABLE), default=0)
    excluded = (longest + 1) * floor
    singles = {t for t, tt in zip(tokens, file_types) if tt in _MATCHABLE and len(t) == 1}
    marked = sorted({t[0] for t, tt in zip(tokens, file_types)
                     if tt not in _MATCHABLE and len(t) > 1 and any(c not in singles for c in t)})
    scale = _exact_scale([float(s) for s in scores] + [excluded])
    vocab = []
    for t, s, tt in zip(tokens, scores, file_types):
        if tt == USER_DEFINED:  # cut out as added tokens before the model: left as they are (their ids)
            vocab.append((t, 0.0))
        elif tt in _MATCHABLE:
            for c in marked:
                t = t.replace(c, c + _MARK)
            vocab.append((t, float(s) * scale))
        else:
            vocab.append((t, excluded * scale))
    return vocab, marked


def _exact_scale(scores: list[float]) -> float:
    """The power of two that makes every score an integer (below 2**50): the Unigram model gets the scores times it.

    Why: tokenizers writes a score to tokenizer.json as its shortest decimal and reads it back without correct
    rounding (T5's ``-2.0122928619384766`` comes back as ``-2.012292861938477``, a third of T5's scores move by an
    ulp), and llama.cpp's exact ties (``"---"`` + ``"-"`` against ``"-"`` + ``"---"`` in a run of dashes) then break the
    other way in the saved tokenizer. Integers below 2**53 read back exactly, and scaling by a power of two changes no
    comparison and no rounding of the sums. 1.0 (no scaling) where no such power exists.
    """
    from fractions import Fraction

    k = 0
    for s in scores:
        if s != s or s in (float("inf"), float("-inf")):
            return 1.0
        k = max(k, Fraction(s).denominator.bit_length() - 1)
    top = max((abs(s) for s in scores), default=0.0)
    if top * 2.0 ** k >= 2.0 ** 50:
        return 1.0
    return 2.0 ** k


def unknown_score_caveats(tokens: list[str], file_types: list[int]) -> list[str]:
    """Code points where this tokenizer's unknown score (below every token's) can give other ids than llama.cpp's
    (``min(NORMAL scores) - 10``): those inside a longer NORMAL or UNUSED token with no candidate token of their own
    (a USER_DEFINED token scores 0, above any unknown path in both), and
    those that are alone a non-candidate token (tokenizers would take that token where llama.cpp has the unknown
    one). In code point order; none for T5's vocabulary."""
    singles = {t for t, tt in zip(tokens, file_types) if tt in _MATCHABLE and len(t) == 1}
    inside = {c for t, tt in zip(tokens, file_types) if tt in (NORMAL, UNUSED) and len(t) > 1 for c in t}
    alone = {t for t, tt in zip(tokens, file_types) if tt not in _MATCHABLE and len(t) == 1}
    return sorted((inside | alone) - singles)


def build_ugm_tokenizer(meta: Mapping[str, Any]):
    """A :class:`tokenizers.Tokenizer` giving llama.cpp's UGM ids for the GGUF metadata ``meta`` (module docstring).

    Raises ExportError naming the key when the vocabulary metadata is missing or inconsistent; warns (UserWarning)
    where ids can differ from llama.cpp's for a reason the vocabulary shows (:func:`unknown_score_caveats`, added
    tokens that overlap).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models

    tokens, scores, file_types = vocabulary_lists(meta)
    n = len(tokens)
    if len(set(tokens)) != n:
        raise ExportError("GGUF metadata tokenizer.ggml.tokens has duplicated strings (llama.cpp refuses them too)")
    if any(t == "" for t in tokens):
        raise ExportError("GGUF metadata tokenizer.ggml.tokens has an empty string (llama.cpp renames it; "
                          "a Unigram model cannot hold it)")
    specials = ugm_special_tokens(meta)
    if specials["unk_token_id"] is None:
        raise ExportError("GGUF metadata names no unknown token (tokenizer.ggml.unknown_token_id) and the default, "
                          "id 2, is outside the vocabulary")
    add_space_prefix = _flag(meta, "tokenizer.ggml.add_space_prefix", False)
    remove_extra_whitespaces = _flag(meta, "tokenizer.ggml.remove_extra_whitespaces", False)
    charsmap = _charsmap_bytes(meta)

    vocab, marked = ugm_vocab(tokens, [float(s) for s in scores], file_types)
    caveats = unknown_score_caveats(tokens, file_types)
    if caveats:
        warnings.warn(
            f"GGUF tokenizer.ggml.tokens: {len(caveats)} code points (e.g. {caveats[:3]!r}) have no token of their "
            "own but are part of longer tokens, or are alone a control token; llama.cpp scores them as unknown "
            "tokens differently from this tokenizer, so ids can differ from llama.cpp's where they occur",
            UserWarning, stacklevel=2,
        )
    tokenizer = Tokenizer(models.Unigram(vocab, specials["unk_token_id"], False))
    tokenizer.normalizer = _normalizer(charsmap, add_space_prefix, remove_extra_whitespaces, marked)
    steps = [decoders.Replace(_MARK, "")] if marked else []
    steps += [decoders.Replace(_SPACE, " "), decoders.Fuse()]
    if add_space_prefix:  # llama.cpp's detokenize drops one leading space then
        steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(steps)

    types = llama_cpp_token_types(tokens, file_types)  # by-text promotions: which are cut out as added tokens
    named = {specials.get(f"{k}_token") for k in ("bos", "eos", "pad", "unk")} - {None}
    special, added = [], []
    for t, tt in zip(tokens, types):
        is_special = tt in (CONTROL, UNKNOWN) or t in named
        if is_special:
            special.append(AddedToken(t, normalized=False, special=True))
        elif tt == USER_DEFINED:
            added.append(AddedToken(t, normalized=False, special=False))
    warn_if_overlapping([t.content for t in special + added])
    if special:
        tokenizer.add_special_tokens(special)
    if added:
        tokenizer.add_tokens(added)

    template = bos_eos_template(specials, {t: tokens.index(t) for t in (specials["bos_token"], specials["eos_token"])
                                           if t is not None})
    if template is not None:
        tokenizer.post_processor = template
    return tokenizer
