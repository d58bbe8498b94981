"""Speculative decoding: the plain loop (sample.py) deciding several positions per forward pass.

Each round feeds the last chosen token and k proposed tokens in one pass (``state.extend``), then decides the k + 1
positions one by one exactly as ``sample_steps`` decides one: the processors see the row extended by the tokens
decided before (so a repetition penalty or min_new_tokens acts as in the plain loop), EOS / stop strings / length
end a row at its own token, and one ``BatchStep`` is yielded per position. The round stops at the first position
whose decided token is not the proposed one (in any active row of a batch: every row keeps the same length); the
positions fed past it are forgotten (``state.rollback``). Without a proposal the round is one plain ``advance``.

Token choice at a position with a proposed token c (transformers 4.57 ``_assisted_decoding``):
- greedy, or sampling without draft probabilities (prompt lookup): the token is picked from the processed scores as
  in the plain loop; c is accepted when it equals that token;
- sampling with a draft model: ``_speculative_sampling``: c is accepted with probability min(1, p(c) / q(c)) (p, q:
  target and draft distributions after the processors and warpers); on rejection the token is drawn from
  normalize(max(p - q, 0)). Either way the tokens follow the target's distribution.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from ..processors import greedy_tokens, sample_tokens, softmax
from .sample import BatchStep, append_step


@dataclass
class SpeculationStats:
    """Counts of one run (a scheduler's: of all its speculative steps): passes (forward passes after the prefill; a
    scheduler's: its verify passes), proposed and accepted candidate tokens."""

    passes: int = 0
    proposed: int = 0
    accepted: int = 0


def speculative_steps(state, sequences: np.ndarray, logits: np.ndarray, *, proposer, processors: Callable,
                      do_sample: bool, rng: np.random.Generator | None, eos_token_ids: list[int], pad_token_id: int,
                      max_length: int, stop_check: Callable | None = None,
                      stats: SpeculationStats | None = None) -> Iterator[BatchStep]:
    """state (causal: extend/rollback), sequences [b, t0] int64, first logits [b, V] -> one BatchStep per new token.

    proposer (candidates.py): propose(sequences, active) -> (candidates [b, k], draft probs [b, k, V] | None)."""
    b, t0 = sequences.shape
    stats = stats if stats is not None else SpeculationStats()
    active = np.ones(b, dtype=bool)
    eos = np.asarray(eos_token_ids, dtype=np.int64)
    block, candidates, draft = logits[:, None, :], np.zeros((b, 0), np.int64), None    # [b, k+1, V], [b, k]
    index = 0
    while True:
        k = candidates.shape[1]
        for i in range(k + 1):                                                # 1. decide the fed positions in order
            scores = processors(sequences, block[:, i])                       # [b, V] processed, prefix as plain
            proposed = candidates[:, i] if i < k else None
            tokens, accepted = _choose(scores, proposed, None if draft is None or i == k else draft[:, i],
                                       do_sample, rng)
            rows = np.flatnonzero(active)
            tokens, sequences, reasons = append_step(tokens, sequences, active, eos, pad_token_id, max_length,
                                                     stop_check)              # as the plain loop appends
            finished = np.array([r is not None for r in reasons])
            stats.accepted += int(proposed is not None and bool(accepted[rows].all()))
            yield BatchStep(index, tokens, scores, block[:, i], active.copy(), finished, reasons)
            index += 1
            active &= ~finished                                               # retire finished rows
            if not active.any():
                return
            if proposed is None or not accepted[active].all():                # a row diverged: the round ends
                break
        if k > i:                                                             # 2. forget the rejected proposals
            state.rollback(np.full(b, k - i, np.int64))
        if stats.passes:                                                      # 3. the draft's schedule learns
            proposer.update(i, k)                                             #    (from verify passes, not the prefill)
        candidates, draft = proposer.propose(sequences, active)               # 4. propose after the new token
        candidates = candidates.reshape(b, -1) if candidates.size else np.zeros((b, 0), np.int64)
        stats.passes += 1
        stats.proposed += candidates.shape[1]
        if candidates.shape[1]:                                               # 5. verify: one pass, k + 1 logits
            block = state.extend(np.concatenate([tokens[:, None], candidates], axis=1))
        else:                                                                 #    no proposal: a plain step
            block = state.advance(tokens)[:, None, :]


def _choose(scores: np.ndarray, proposed: np.ndarray | None, q: np.ndarray | None, do_sample: bool, rng):
    """scores [b, V] processed, proposed [b] int64 | None, q [b, V] draft probabilities | None -> (tokens [b]
    int64, accepted [b] bool: the token is the proposed one)."""
    if q is None or not do_sample:                                            # pick as the plain loop picks
        tokens = sample_tokens(scores, rng) if do_sample else greedy_tokens(scores)
        accepted = tokens == proposed if proposed is not None else np.zeros(len(tokens), bool)
        return tokens.astype(np.int64), accepted
    p = softmax(scores).astype(np.float64)                                    # rejection sampling (Leviathan et al.)
    rows = np.arange(len(proposed))
    accepted = rng.random(len(proposed)) <= p[rows, proposed] / q[rows, proposed]
    residual = np.maximum(p - q, 0.0)                                         # where the draft under-proposes
    with np.errstate(divide="ignore"):
        redraw = sample_tokens(np.log(np.where(residual.sum(1, keepdims=True) > 0, residual, p)), rng)
    return np.where(accepted, proposed, redraw).astype(np.int64), accepted
