"""SentencePiece GGUF vocabularies (``tokenizer.ggml.model = "llama"``) as a :class:`tokenizers.Tokenizer`.

The reference is llama.cpp's SPM tokenizer (``src/llama-vocab.cpp``: ``tokenizer_st_partition`` then
``llm_tokenizer_spm_session`` on each text fragment), not transformers' GGUF converter (which gets Gemma's
``capital`` wrong). What llama.cpp does, and the tokenizers building block that reproduces each step:

1. Partition on added tokens: every CONTROL, UNKNOWN and USER_DEFINED token (types as llama.cpp reads them:
   export/gguf_token_types.py) is cut out of the raw text before
   anything else, longest first; with ``special=False`` (no special-token parsing) only the USER_DEFINED ones
   (Gemma's ``<table>`` ..., its runs of 2-31 spaces, 1-31 newlines and tabs). Here: CONTROL and UNKNOWN tokens
   are special added tokens, USER_DEFINED ones plain added tokens, all ``normalized=False``; tokenizers'
   ``encode_special_tokens=True`` is llama.cpp's ``special=False``.
2. Each remaining text fragment gets a leading space when ``tokenizer.ggml.add_space_prefix`` (llama.cpp's default
   for SPM: true) - every fragment, since a fragment always follows the start or an added token - then every
   ``" "`` becomes ``"▁"``. Here: the normalizer ``Sequence[Prepend("▁"), Replace(" ", "▁")]`` (tokenizers
   normalizes each fragment between added tokens; ``Prepend`` skips empty ones as llama.cpp has none).
   ``Metaspace`` would not do: it prepends nothing to a fragment that already starts with a space.
3. Bigram merging from single UTF-8 characters: repeatedly merge the adjacent pair whose concatenation is a
   vocabulary token with the highest score (``tokenizer.ggml.scores``), ties to the leftmost pair. Here: a BPE model
   whose merges are every split ``a + b`` of every token into two vocabulary tokens, ranked by the token's score
   (highest first); tokenizers' BPE applies the lowest rank first, ties to the leftmost position. Exact while no two
   tokens that merges make share a score (Gemma 3: none do; Mistral: only its runs of ``▁``, harmless):
   llama.cpp takes equal scores leftmost first, whichever the token, a BPE rank orders them by token; where other
   scores tie (or ``tokenizer.ggml.scores`` is absent: all 0.0) the builder warns (:func:`spm_score_ties`). Shown on
   a toy vocabulary: "ab" and "bc" both scored -5, llama.cpp gives "abc" as "ab" + "c", this tokenizer as "a" + "bc"
   when "bc" has the lower id.
4. A character that is no token becomes its UTF-8 bytes as ``<0xNN>`` tokens. Here: ``BPE(byte_fallback=True)``.
5. BOS / EOS when ``tokenizer.ggml.add_bos_token`` / ``add_eos_token`` (defaults for SPM: true / false), as a
   TemplateProcessing post-processor (``add_special_tokens=True``).

Phi-3 (general.name contains ``phi-3``/``phi3``): llama.cpp strips whitespace right of every added token except
``<unk>``, ``<s>``, ``<|endoftext|>``; here ``rstrip=True`` on the same tokens. Proven on Phi-3's layout (Llama 2
format pieces + its 11 added tokens, tests/gguf_vocabs.py ``phi3``) except one known difference: llama.cpp strips
only ASCII whitespace there (C ``isspace``), tokenizers every Unicode space, so ``"<|user|>\u00a0hi"`` keeps its
NBSP as a token in llama.cpp and loses it here; tokenizers' AddedToken has no ASCII-only strip.

Known difference: llama.cpp cuts added tokens out longest token first over the whole text, tokenizers leftmost-longest.
They differ only where one added token's occurrence overlaps another's (tokens ``ab`` and ``bcd`` in ``abcd``), or,
with Phi-3's rstrip, where an added token is followed by a longer whitespace added token; the builder warns about
the first (export/gguf_added_overlap.py); none of the tested vocabularies has either (Gemma's added whitespace runs
are each one repeated character, which cut the same way).
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

from onnxlm.runtime.errors import ExportError

from .gguf_added_overlap import warn_if_overlapping
from .gguf_token_types import CONTROL, UNKNOWN, USER_DEFINED, llama_cpp_token_types, vocabulary_lists

__all__ = ["build_spm_tokenizer", "spm_merges", "spm_score_ties"]

_SPACE = "\u2581"  # "▁", SentencePiece's escaped space

_PHI3_NAMES = ("phi-3", "phi3")
_PHI3_NO_RSTRIP = ("<unk>", "<s>", "<|endoftext|>")


def spm_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's score-driven bigram merging over ``tokens``.

    Every way of writing a token as the concatenation of two vocabulary tokens is a merge; merges are ordered by the
    score of the token they make, highest first (then token id, then split position, for a fixed order).
    """
    vocab = set(tokens)
    ranked = []
    for i, t in enumerate(tokens):
        for k in range(1, len(t)):
            a, b = t[:k], t[k:]
            if a in vocab and b in vocab:
                ranked.append((-float(scores[i]), i, k, a, b))
    ranked.sort()
    return [(a, b) for _, _, _, a, b in ranked]


def spm_score_ties(merges: list[tuple[str, str]], tokens: list[str], scores: list[float],
                   token_types: list[int]) -> list[str]:
    """The tokens made by ``merges`` (:func:`spm_merges`) whose score another such token shares, in id order.

    Where two of them can be merged at once, llama.cpp takes the leftmost and the BPE model the lower rank.
    Not counted: USER_DEFINED tokens (both cut their text out before merging, so no merge ever makes them: Gemma's
    runs of newlines, all scored 0.0), and a score shared only by runs of one character (Llama 2 and Mistral score
    every run of 2-16 ``▁`` -1e9: the tie only decides how a run of spaces is cut, and on Mistral's vocabulary that
    equals llama.cpp for every run of 1-300 spaces). ``token_types``: as llama.cpp reads them
    (:func:`llama_cpp_token_types`).
    """
    ids = {t: i for i, t in enumerate(tokens)}
    made = sorted({ids[a + b] for a, b in merges} - {i for i, tt in enumerate(token_types) if tt == USER_DEFINED})
    by_score: dict[float, list[int]] = {}
    for i in made:
        by_score.setdefault(float(scores[i]), []).append(i)
    tied = [g for g in by_score.values() if len(g) > 1 and any(len(set(tokens[i])) > 1 for i in g)]
    return [tokens[i] for i in sorted(i for g in tied for i in g)]


def _flag(meta: Mapping[str, Any], key: str, default: bool) -> bool:
    value = meta.get(key, default)
    if not isinstance(value, (bool, int)):
        raise ExportError(f"GGUF metadata {key}={value!r} is not a boolean")
    return bool(value)


def build_spm_tokenizer(meta: Mapping[str, Any], specials: Mapping[str, Any]):
    """A :class:`tokenizers.Tokenizer` giving llama.cpp's SPM ids for the GGUF metadata ``meta``.

    ``specials``: :func:`onnxlm.export.gguf.gguf_special_tokens` of the same metadata (bos/eos/unk, add_bos_token,
    add_eos_token). Raises ExportError naming the key when the vocabulary metadata is missing or inconsistent.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    tokens, scores, token_types = vocabulary_lists(meta)
    n = len(tokens)
    token_types = llama_cpp_token_types(tokens, token_types)
    if len(set(tokens)) != n:
        raise ExportError("GGUF metadata tokenizer.ggml.tokens has duplicated strings (llama.cpp refuses them too)")
    add_space_prefix = _flag(meta, "tokenizer.ggml.add_space_prefix", True)

    vocab = {t: i for i, t in enumerate(tokens)}
    unk = specials.get("unk_token")
    merges = spm_merges(tokens, scores)
    ties = spm_score_ties(merges, tokens, scores, token_types)
    if ties:
        warnings.warn(
            f"GGUF tokenizer.ggml.scores: {len(ties)} tokens made by merges share a score with another (e.g. "
            f"{ties[:3]!r}); llama.cpp merges equal scores leftmost first, this tokenizer in token order, so ids "
            "can differ from llama.cpp's where such merges meet",
            UserWarning, stacklevel=3,
        )
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=False, byte_fallback=True))
    replace = normalizers.Replace(" ", _SPACE)
    tokenizer.normalizer = (normalizers.Sequence([normalizers.Prepend(_SPACE), replace]) if add_space_prefix
                            else replace)
    steps = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(steps)

    name = str(meta.get("general.name", "")).lower()
    phi3 = any(p in name for p in _PHI3_NAMES)
    named = {specials.get(f"{k}_token") for k in ("bos", "eos", "pad", "unk")} - {None}
    special, added = [], []
    for t, tt in zip(tokens, token_types):
        is_special = tt in (CONTROL, UNKNOWN) or t in named
        if not is_special and tt != USER_DEFINED:
            continue
        rstrip = phi3 and t not in _PHI3_NO_RSTRIP
        tok = AddedToken(t, normalized=False, special=is_special, rstrip=rstrip)
        (special if is_special else added).append(tok)
    warn_if_overlapping([t.content for t in special + added])
    if special:
        tokenizer.add_special_tokens(special)
    if added:
        tokenizer.add_tokens(added)

    template = bos_eos_template(specials, vocab)
    if template is not None:
        tokenizer.post_processor = template
    return tokenizer


def bos_eos_template(specials: dict, ids) -> object | None:
    """``add_bos_token`` / ``add_eos_token`` of ``gguf_special_tokens``' dict (``ids``: token -> id) -> the
    tokenizers ``TemplateProcessing`` that puts the BOS first and the EOS last, as llama.cpp's ``add_special`` does,
    or None where neither is added."""
    from tokenizers import processors

    add_bos = bool(specials.get("add_bos_token")) and specials.get("bos_token") is not None
    add_eos = bool(specials.get("add_eos_token")) and specials.get("eos_token") is not None
    if not (add_bos or add_eos):
        return None
    b = [specials["bos_token"]] if add_bos else []
    e = [specials["eos_token"]] if add_eos else []
    return processors.TemplateProcessing(single=" ".join(b + ["$A"] + e),
                                         pair=" ".join(b + ["$A"] + e + b + ["$B:1"] + e),
                                         special_tokens=[(t, ids[t]) for t in dict.fromkeys(b + e)])
