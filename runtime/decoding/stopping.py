"""Stop strings with the semantics of transformers 4.57's `StopStringCriteria`, without torch or transformers
(``StopStringMatcher``); OpenAI's stop sequences on the decoded new text (``NewTextStopMatcher``, the ``stop``
parameter); the call's own ``stopping_criteria`` beside them (``any_stop``).

transformers' rule, reproduced exactly:

- every token id has one fixed *token string*: the tokenizer's decoder applied to the token alone, after a static
  prefix ("abcdef", then stripped) so that word-start markers (Ġ, ▁) become the spaces they stand for
  (`clean_tokenizer_vocab`). Special tokens keep their text ("<|im_end|>" is a 10-character token string), bytes of
  an unfinished UTF-8 character decode to U+FFFD; an id outside the tokenizer's vocabulary matches nothing;
- only the last `max(len(stop))` ids of a row count, prompt (and left padding) included: a stop string matches when
  it occurs in the concatenated token strings of that window *and ends inside the last token's string* (so it may
  overhang the last token at its end, and the first token of the match at its start). The window counts tokens, not
  characters: a token whose string is empty still takes a slot, so it can hide a match, in transformers too.

A row is checked in O(window) per step: token strings are looked up in a cache filled lazily (the vocabulary is
never scanned at load), and only the window's strings are joined.

Differences from transformers (documented in docs/design.md): transformers raises at set-up when no vocabulary token
can end a stop string (it scans the whole vocabulary); here such a stop string simply never matches.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..streaming import CONTEXT, decode_after

__all__ = ["StopStringMatcher"]

_STATIC_PREFIX = "abcdef"  # transformers' `clean_tokenizer_vocab(static_prefix="abcdef")`


class StopStringMatcher:
    """Stop strings + a `tokenizers.Tokenizer` -> matches at the end of id rows (see the module docstring)."""

    def __init__(self, tokenizer, stop_strings: Sequence[str]):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self.window = max(len(s) for s in self.stop_strings)  # transformers' `maximum_token_len`
        prefix_ids = tokenizer.encode(_STATIC_PREFIX, add_special_tokens=False).ids
        self._prefix_tokens = [tokenizer.id_to_token(i) for i in prefix_ids]
        self._strings: dict[int, str | None] = {}  # token id -> token string (None: not in the vocabulary)
        self.lookups = 0  # token strings read so far (tests use it to show the per-step cost is bounded)

    # ------------------------------------------------------------------ token strings
    def token_string(self, token_id: int) -> str | None:
        """id -> its token string as transformers' StopStringCriteria sees it (None for an id outside the vocab)."""
        self.lookups += 1
        if token_id not in self._strings:
            self._strings[token_id] = self._clean(token_id)
        return self._strings[token_id]

    def _clean(self, token_id: int) -> str | None:
        token = self.tokenizer.id_to_token(int(token_id)) if token_id >= 0 else None
        if token is None:
            return None
        tokens = self._prefix_tokens + [token]
        decoder = self.tokenizer.decoder
        text = decoder.decode(tokens) if decoder is not None else " ".join(tokens)  # convert_tokens_to_string
        at = text.find(_STATIC_PREFIX)
        return text[at + len(_STATIC_PREFIX):] if at >= 0 else None

    # ------------------------------------------------------------------ matching
    def find(self, ids: Sequence[int]) -> tuple[int, int] | None:
        """ids [t] of one row -> (k, c): the earliest stop-string match that ends in the last token starts at
        character c of token ids[k]; None when no stop string ends in the last token."""
        t = len(ids)
        first = max(0, t - self.window)
        strings: list[str] = []
        for i in range(first, t):  # the window's token strings; an unknown id cuts everything before it
            s = self.token_string(int(ids[i]))
            if s is None:
                strings, first = [], i + 1
            else:
                strings.append(s)
        if not strings or not strings[-1]:
            return None
        text = "".join(strings)
        last_start = len(text) - len(strings[-1])  # a match must end after this character
        starts = [text.find(stop, max(0, last_start - len(stop) + 1)) for stop in self.stop_strings]
        starts = [s for s in starts if s >= 0]
        if not starts:
            return None
        start, offset = min(starts), 0
        for k, s in enumerate(strings):  # which token holds the match's first character
            if start < offset + len(s):
                return first + k, start - offset
            offset += len(s)
        return None  # unreachable: start < len(text)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """ids [n, t] int64 -> [n] bool: rows where a stop string ends in the last token (transformers' criterion).

        Rows with the same window of last ids (beam candidates of one beam) are checked once.
        """
        ids = np.asarray(ids)
        windows = ids[:, -self.window:]
        seen: dict[bytes, bool] = {}
        out = np.zeros(len(ids), dtype=bool)
        for row, w in enumerate(windows):
            key = w.tobytes()
            if key not in seen:
                seen[key] = self.find(w) is not None
            out[row] = seen[key]
        return out

    def cut(self, decode, ids: Sequence[int], t0: int, special_ids: set[int]) -> str | None:
        """Final text of a row that stopped on a stop string: its new text cut where the match starts.

        decode: new ids -> text (special tokens skipped); ids [t] the whole row (prompt first, t0 ids); the match
        ends in ids[-1]. A match that starts in the prompt leaves "" (the new text cut at 0). None: no match.
        """
        hit = self.find(ids)
        if hit is None:
            return None
        k, c = hit
        if k < t0:
            return ""
        new = [int(i) for i in ids[t0:k + 1]]
        if new[-1] in special_ids:  # a special token's text is not in the decoded text: cut before it
            return decode(new[:-1])
        full = decode(new)
        drop = len(self.token_string(new[-1]) or "") - c  # the token's characters from the match start on
        return full[:max(0, len(full) - drop)]


class NewTextStopMatcher:
    """OpenAI's / vLLM's stop sequences (``GenerationConfig.stop``): a row stops when its decoded new text (the ids
    after ``t0``, special tokens skipped) contains a stop string, and its text is cut where the first one starts.
    The prompt is never searched; a stop string made of a character whose bytes several tokens hold matches once
    the character is whole. Each check decodes only the last ids a match ending in the newest token can span (a
    token holds at least one byte of the text, or none: then it spans nothing)."""

    def __init__(self, tokenizer, stops: Sequence[str], t0: int | None = None):
        self.tokenizer, self.stops, self.t0 = tokenizer, tuple(stops), t0
        self.span = 2 * max(len(s.encode("utf-8")) for s in self.stops) + 8  # ids decoded per check

    def _ends_here(self, row) -> bool:
        """row [t] ids (prompt first) -> whether a stop string ends in the last one's text: the window of the last
        ``span`` new ids decoded after the ids before it (``decode_after``: the text as the row's new text reads)."""
        start = max(self.t0, len(row) - self.span)
        context, window = row[max(0, start - CONTEXT):start], row[start:]
        text = decode_after(self.tokenizer, context, window)
        before = decode_after(self.tokenizer, context, window[:-1]).rstrip("\ufffd")  # what the newest did not add
        return any(text.find(stop, max(0, len(before) - len(stop) + 1)) >= 0 for stop in self.stops)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """ids [n, t] int64 (prompt first, ``t0`` ids) -> [n] bool: rows whose new text now holds a stop string."""
        ids = np.asarray(ids)
        return np.array([len(row) > self.t0 and self._ends_here(row) for row in ids], dtype=bool)

    def cut(self, decode, ids: Sequence[int], t0: int, special_ids: set[int]) -> str | None:
        """ids [t] the whole row (prompt first, t0 ids) -> its new text cut before the first stop string; None
        when it holds none."""
        text = decode([int(i) for i in ids[t0:]])
        starts = [at for at in (text.find(stop) for stop in self.stops) if at >= 0]
        return text[:min(starts)] if starts else None


def any_stop(stop_strings, stopping_criteria):
    """The stop-string criterion (or None) and the call's ``stopping_criteria`` -> one check, ids [n, t] int64 ->
    [n] bool (a row stops when any says so), or None when there is nothing to check.

    ``stopping_criteria``: a callable or a list of them with transformers' ``StoppingCriteria`` signature,
    ``(input_ids [n, t] int64, scores) -> [n] bool`` (a single bool stops every row; ``scores`` is None here), asked
    after every new token (a beam search: every step) about the rows still generating: ``input_ids`` holds those
    rows only (transformers passes the whole batch; a criterion that keeps state per row index sees fewer rows once
    some have finished), and an answer of another length or of non-bools is a ParameterError. One may raise to abandon the call (a server whose client went
    away); the exception leaves ``generate``."""
    from ..errors import ParameterError

    if stopping_criteria is None:
        return stop_strings
    criteria = list(stopping_criteria) if isinstance(stopping_criteria, (list, tuple)) else [stopping_criteria]
    if not all(callable(c) for c in criteria):
        raise ParameterError("stopping_criteria", "expected a callable (input_ids, scores) -> [n] bool, or a list "
                             f"of them; got {stopping_criteria!r:.80}")
    if not criteria:
        return stop_strings

    def check(ids: np.ndarray) -> np.ndarray:
        hit = np.zeros(len(ids), bool) if stop_strings is None else np.asarray(stop_strings(ids), bool).copy()
        for c in criteria:
            hit |= _criterion_rows(c(ids, None), len(ids), c)
        return hit
    return check


def _criterion_rows(answer, n: int, criterion) -> np.ndarray:
    """A stopping criterion's answer for n rows -> [n] bool: a bool (every row) or n bools; anything else (None,
    a string, numbers, another length) a ParameterError naming ``stopping_criteria``, never read by its truthiness."""
    from ..errors import ParameterError

    rows = np.asarray(answer)
    if rows.dtype != np.bool_ or rows.size not in (1, n) or rows.ndim > 1 + (rows.size == 1):
        raise ParameterError("stopping_criteria", f"{criterion!r:.60} answered {answer!r:.60} for {n} rows; allowed: "
                             f"True/False, or {n} bools (one per row, [n] as transformers' StoppingCriteria)")
    return np.broadcast_to(rows.reshape(-1), (n,))
