"""Added tokens whose occurrences can overlap, where llama.cpp and tokenizers cut the text differently.

llama.cpp (``tokenizer_st_partition``) cuts added tokens out of the text one token at a time, longest token first,
each at all its occurrences; tokenizers finds them in one leftmost-longest pass. The two agree unless an occurrence
of one token can overlap a later-starting occurrence of another that is at least as long: tokens ``ab`` and
``bcd`` in ``abcd`` are ``a`` + ``bcd`` for llama.cpp and ``ab`` + ``cd`` for tokenizers (equal lengths: llama.cpp's
order is an unstable sort's). Runs of one character (Gemma's runs of 1-31 spaces, newlines or tabs) overlap each
other but cut the same way in both: as many of the longest as fit, from the left, then the longest that fits the rest.

The GGUF builders warn with :func:`overlapping_added_tokens`'s pairs; none of the tested vocabularies has any.
"""
from __future__ import annotations

import warnings

__all__ = ["overlapping_added_tokens", "warn_if_overlapping"]


def _run_of_one(text: str) -> bool:
    return len(set(text)) == 1


def overlapping_added_tokens(texts: list[str]) -> list[tuple[str, str]]:
    """Pairs ``(x, y)`` of ``texts`` where a proper suffix of ``x`` is a proper prefix of ``y`` and ``y`` is at least
    as long, runs of one and the same character aside; in the order of ``texts``."""
    by_prefix: dict[str, list[str]] = {}
    for y in dict.fromkeys(texts):
        for k in range(1, len(y)):
            by_prefix.setdefault(y[:k], []).append(y)
    pairs = []
    for x in dict.fromkeys(texts):
        for k in range(1, len(x)):
            for y in by_prefix.get(x[k:], ()):
                if y != x and len(y) >= len(x) and not (_run_of_one(x) and set(x) == set(y)):
                    pairs.append((x, y))
    return pairs


def warn_if_overlapping(texts: list[str], stacklevel: int = 4) -> None:
    """A UserWarning naming ``tokenizer.ggml.tokens`` and the first pairs when :func:`overlapping_added_tokens`;
    ``stacklevel`` as :func:`warnings.warn`'s, counted from this function (default: two builders deep)."""
    pairs = overlapping_added_tokens(texts)
    if pairs:
        warnings.warn(
            f"GGUF tokenizer.ggml.tokens: {len(pairs)} pairs of added tokens can overlap in a text (e.g. "
            f"{pairs[:3]!r}); llama.cpp cuts them out longest first, tokenizers leftmost first, so ids can differ "
            "from llama.cpp's where they meet",
            UserWarning, stacklevel=stacklevel,
        )
