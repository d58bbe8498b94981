"""Predicted outputs (OpenAI's ``prediction``): speculative decoding whose proposals come from a text the answer is
expected to follow closely (the file being edited, a document to restate), given by the caller.

``PredictionLookup`` is a candidate generator (candidates.py's protocol: ``propose`` / ``update``): it finds where
the row's newest ids occur in the prediction's ids (for n from ``max_ngram`` down to 1, the occurrence of the last n
ids that ends nearest after the place the last proposal reached, else the first one) and proposes the prediction's
ids that follow, up to ``cap`` of them, within ``max_length``, cropped where the processors forbid a token and before
an EOS (as prompt lookup crops). Where the prediction has no such occurrence it asks ``fallback`` (prompt lookup over
the row itself, or nothing). The back-off is prompt lookup's: after a proposal that failed, at most one token more
than were accepted; after one accepted whole, 2k + 1 (up to ``num_tokens``), so an answer that leaves the prediction
costs about plain decoding and one that follows it checks up to ``num_tokens`` a pass.

The tokens picked are the model's own either way (each proposed token is kept only where it is what the model picks):
a prediction changes how fast an answer comes, never what it is.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .candidates import _NONE, _allowed_prefix


def follow(row: np.ndarray, prediction: np.ndarray, *, at: int, num_tokens: int, max_ngram: int,
           max_length: int) -> tuple[np.ndarray, int]:
    """row [t] int64 (newest id last), prediction [p] int64 -> (candidates [k] int64, where they start in the
    prediction): the ids after the occurrence of the row's last n ids (n = max_ngram .. 1, longest first) that ends
    at or after ``at`` (the nearest), else the first one; k = 0 where none occurs or nothing may follow."""
    t, room = len(row), max_length - len(row) - 1            # the verify pass's k + 1 positions stay within max_length
    if room <= 0 or not len(prediction):
        return row[:0], at
    for n in range(min(max_ngram, t, len(prediction)), 0, -1):
        windows = np.lib.stride_tricks.sliding_window_view(prediction, n)           # [p - n + 1, n]
        ends = np.flatnonzero((windows == row[-n:]).all(axis=1)) + n                 # where a match ends
        ends = ends[ends < len(prediction)]                                          # something follows it
        if len(ends):
            after = ends[ends >= at]
            end = int(after[0] if len(after) else ends[0])
            return prediction[end:end + min(num_tokens, room)], end
    return row[:0], at


class PredictionLookup:
    """Proposals from a prediction's ids (see the module docstring); one row."""

    def __init__(self, prediction, *, num_tokens: int, max_ngram: int, max_length: int, eos_token_ids: list[int],
                 processors: Callable | None, vocab_size: int, fallback=None):
        self.prediction = np.asarray(prediction, np.int64)
        self.num_tokens, self.max_ngram, self.max_length = num_tokens, max_ngram, max_length
        self.eos = np.asarray(eos_token_ids, np.int64)
        self.processors, self.vocab_size, self.fallback = processors, vocab_size, fallback
        self.cap = num_tokens     # back-off: tokens proposed at most this round (see update)
        self.at = 0               # where in the prediction the last proposal started, then how far it was accepted
        self._asked = None        # who made the last proposal: self, or the fallback

    def propose(self, sequences: np.ndarray, active: np.ndarray):
        """sequences [1, t] int64, active [1] bool -> (candidates [1, k] int64, None)."""
        self._asked = None
        if not active[0]:
            return _NONE
        row = sequences[0]
        chosen, start = follow(row, self.prediction, at=self.at, num_tokens=self.cap, max_ngram=self.max_ngram,
                               max_length=self.max_length)
        if len(chosen) and self.processors is not None and len(self.processors):    # crop at a forbidden token
            chosen = _allowed_prefix(row, chosen, self.processors, self.vocab_size)
        cut = np.flatnonzero(np.isin(chosen, self.eos))                            # never propose EOS or after it
        chosen = chosen[:cut[0]] if len(cut) else chosen
        if len(chosen):
            self._asked, self.at = self, start
            return chosen[None, :], None
        if self.fallback is not None:
            self._asked = self.fallback
            return self.fallback.propose(sequences, active)
        return _NONE

    @property
    def proposed_by_prediction(self) -> bool:
        """Whether the last proposal came from the prediction, not the fallback (what ``Request.proposed`` counts)."""
        return self._asked is self

    def update(self, matches: int, k: int) -> None:
        """The last proposal's k tokens, ``matches`` of them accepted: prompt lookup's back-off, and the place in the
        prediction moves past the accepted ones (or the fallback hears it, where it proposed)."""
        if self._asked is self.fallback and self.fallback is not None:
            self.fallback.update(matches, k)
        elif self._asked is self and k:
            self.at += matches
            self.cap = min(self.num_tokens, 2 * self.cap + 1) if matches == k else max(1, matches + 1)

    def close(self) -> None:
        """Nothing held."""
