"""Speculation under a structured-output constraint: proposals the constraint's matcher would take.

A constrained row speculates as an unconstrained one does (prompt lookup, a prediction, a draft model), each fed
position still picked under the constraint's mask, the matcher consuming only picked tokens, so nothing of it is
rolled back and the tokens are the ones the row gets without speculation. What the constraint changes is the
proposal (``ConstrainedProposer``): where it forces the next tokens (a JSON schema's keys and punctuation:
llguidance's ``compute_ff_tokens``) those are the proposal; otherwise the inner proposer's candidates, made with the
processors but the constraint (a stateful matcher cannot be shown hypothetical continuations), cut before the first
token the matcher refuses now (``validate_tokens``, which consumes nothing).

Used by the scheduler's speculative pass (scheduler_speculation.py; its matcher has consumed every picked token when
it asks) and by ``generate`` / ``stream`` with ``prompt_lookup_num_tokens`` or ``assistant_model``
(speculative.py's loop, whose constraint is a ``constraints.FollowingConstraint``: it consumes the decided tokens
when it next sees the rows, so the proposer first lets it catch up).
"""
from __future__ import annotations

import numpy as np

from .candidates import speculation_limit

FORCED_TOKENS = 16  # a constraint's forced tokens proposed per pass at most


class ConstrainedProposer:
    """A proposer under a structured-output constraint (``constraint``: the rows' ``ConstraintProcessor``). Where
    every active row's constraint forces its next tokens, each row proposes its own (up to ``FORCED_TOKENS``, the
    batch as far as its shortest, within the length and rollback limits, never EOS); otherwise the inner proposer's
    candidates, cut before the first token a row's constraint refuses after the tokens picked so far. The inner
    proposer's back-off hears only its own proposals; its attributes read through. ``catch_up(sequences)``, where
    given, brings the matchers up to the rows before they are asked (``FollowingConstraint.catch_up``).

    A draft's probabilities are dropped: a sampled position is then drawn from the target's (masked) distribution
    as a plain step draws it and kept where it equals the proposal. Rejection sampling against the draft would not
    give the target's distribution once its refused tokens are cut (a refused token is always rejected there, the
    position then drawn from max(p - q, 0); cut, it would be drawn from p)."""

    def __init__(self, inner, constraint, *, model, max_length: int, eos_token_ids, catch_up=None):
        self.inner, self.constraint, self.max_length, self.catch_up = inner, constraint, max_length, catch_up
        self.eos = set(int(e) for e in eos_token_ids)
        cap = speculation_limit(model)
        self.most = min(FORCED_TOKENS, cap or FORCED_TOKENS)
        self.forced = False  # the last proposal was the constraint's forced tokens
        self.drafted = 0     # how many tokens the inner proposer gave last (before the cut)

    def __repr__(self) -> str:
        return f"ConstrainedProposer({self.inner!r})"

    @property
    def proposed_by_prediction(self) -> bool:
        return not self.forced and getattr(self.inner, "proposed_by_prediction", False)

    def propose(self, sequences: np.ndarray, active: np.ndarray):
        # sequences [b, t] int64, active [b] bool -> (candidates [b, k] int64, draft probs [b, k, V] | None)
        if self.catch_up is not None:
            self.catch_up(sequences)                                    # 1. matchers up to the rows' last tokens
        rows = np.flatnonzero(active)
        matchers = [self.constraint.matchers[r] if self.constraint.live[r] else None for r in rows]
        forced = self._forced(matchers, sequences.shape[1])             # 2. the constraints' own next tokens
        self.forced = forced is not None
        if self.forced:
            out = np.zeros((len(sequences), forced.shape[1]), np.int64)  # finished rows: any id (their output is pad)
            out[rows] = forced
            return out, None
        candidates, _ = self.inner.propose(sequences, active)          # 3. else the inner proposal, cut where a
        k = self.drafted = candidates.shape[1]                          #    row's constraint refuses a token
        for r, m in zip(rows, matchers):
            if k and m is not None:
                k = min(k, m.validate_tokens(candidates[r, :k].tolist()))
        if k < getattr(self.inner, "min_tokens", 0):  # a draft cut under its minimum (--draft-min) is not checked
            k = 0
        return candidates[:, :k], None  # no draft probabilities: see the class docstring

    def _forced(self, matchers, length: int) -> np.ndarray | None:
        """The active rows' matchers (None: unconstrained now), the rows' length -> their forced tokens [r, k] int64
        (k >= 1: the shortest row's, before any EOS), or None where a row has none."""
        room = min(self.most, self.max_length - length - 1)            # the pass's k + 1 stay within max_length
        if room <= 0 or not matchers or any(m is None for m in matchers):
            return None
        found = []
        for m in matchers:
            tokens = m.compute_ff_tokens()[:room]
            cut = next((i for i, tok in enumerate(tokens) if tok in self.eos), len(tokens))
            if cut == 0:
                return None
            found.append(tokens[:cut])
        k = min(len(f) for f in found)
        return np.asarray([f[:k] for f in found], np.int64)

    def update(self, matches: int, k: int) -> None:
        """The inner proposer hears its own rounds only, and a cut proposal as one not wholly accepted (matches of
        all it drafted: a draft's "heuristic" schedule then shrinks, a lookup backs off)."""
        if not self.forced:
            self.inner.update(matches, max(k, self.drafted))

    def __getattr__(self, name: str):
        return getattr(self.inner, name)
