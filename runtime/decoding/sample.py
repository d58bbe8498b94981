"""Greedy decoding and sampling: one loop (as transformers' `_sample`), a generator of per-step results.

Closing the generator stops the compute: no forward pass runs after the consumer stops asking.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from ..processors import greedy_tokens, sample_tokens


@dataclass
class BatchStep:
    """One step for the whole batch: tokens [b] int64 (pad for rows already done), processed scores and raw
    logits [b, V] float32, active [b] bool (row was still generating), finished [b] (row ends at this step),
    reasons (per row: 'eos' | 'stop' | 'length' where finished, else None)."""

    index: int
    tokens: np.ndarray
    scores: np.ndarray
    logits: np.ndarray
    active: np.ndarray
    finished: np.ndarray
    reasons: list


def append_step(tokens: np.ndarray, sequences: np.ndarray, active: np.ndarray, eos: np.ndarray, pad_token_id: int,
                max_length: int, stop_check: Callable | None) -> tuple[np.ndarray, np.ndarray, list]:
    """One chosen token per row appended, as transformers' ``_sample``: tokens [b] (finished rows emit pad when there
    is an EOS criterion), sequences [b, t] -> (tokens [b] int64, sequences [b, t+1], per row 'eos' | 'stop' |
    'length' where an active row ends at this token, else None)."""
    b = len(tokens)
    if eos.size:                                                             # finished rows emit pad
        tokens = np.where(active, tokens, pad_token_id)
    tokens = tokens.astype(np.int64)
    sequences = np.concatenate([sequences, tokens[:, None]], axis=1)        # [b, t+1]
    rows = np.flatnonzero(active)
    stops = np.zeros(b, dtype=bool)                                          # a stop string ends here
    if stop_check is not None:
        stops[rows] = stop_check(sequences[rows])
    reasons = [None] * b                                                     # why each row stops now
    for row in rows:
        if tokens[row] in eos:
            reasons[row] = "eos"
        elif stops[row]:
            reasons[row] = "stop"
        elif sequences.shape[1] >= max_length:
            reasons[row] = "length"
    return tokens, sequences, reasons


def sample_steps(state, sequences: np.ndarray, logits: np.ndarray, *, processors: Callable, do_sample: bool,
                 rng: np.random.Generator | None, eos_token_ids: list[int], pad_token_id: int, max_length: int,
                 stop_check: Callable[[np.ndarray], np.ndarray] | None = None) -> Iterator[BatchStep]:
    """state (protocol), sequences [b, t0] int64, first logits [b, V] float32 -> yields one BatchStep per new token.

    stop_check (stop strings): ids [n, t] (whole rows, prompt included) -> [n] bool, rows that stop now.
    As transformers, finished rows emit pad only when there is an EOS criterion; otherwise they keep their tokens.
    """
    b, t0 = sequences.shape
    active = np.ones(b, dtype=bool)
    eos = np.asarray(eos_token_ids, dtype=np.int64)
    for index in range(max(0, max_length - t0)):
        scores = processors(sequences, logits)                                   # [b, V] processed scores
        tokens = sample_tokens(scores, rng) if do_sample else greedy_tokens(scores)  # [b] chosen ids
        tokens, sequences, reasons = append_step(tokens, sequences, active, eos, pad_token_id, max_length,
                                                 stop_check)                     # [b], [b, t+1], why rows stop
        finished = np.array([r is not None for r in reasons])
        yield BatchStep(index, tokens, scores, logits, active.copy(), finished, reasons)
        active &= ~finished                                                      # retire finished rows
        if not active.any():
            return
        logits = state.advance(tokens)                                           # one forward pass, KV grows
