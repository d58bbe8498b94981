"""Chunked prefill: a long prompt that arrives while other rows decode goes into its own one-row state a part at a
time, one part per scheduler step, and joins the batch once it is whole, so the running rows keep stepping (a
3,000-token prompt prefilled whole held every stream of the batch for its 6 s pass on SmolLM2's GGUF variant here).

``Scheduler(prefill_chunk=N)`` (``onnxlm serve --prefill-chunk``): a decoder-only request of more than N prompt
tokens, admitted while the batch has rows, is a ``PromptInParts``. Each step, after the running rows' pass and the
admissions, the first of them is fed its next N tokens (``feed_part``): the first part through ``model.start`` (or
``model.resume`` from the prefix cache's longest match, its rest as the part), the others through the state
protocol's ``extend`` (the rest of a prompt after held positions, as a resumed prompt's rest: ``feed_rest``); with
no row decoding, the whole rest goes in one pass (nobody waits). Its last part's logits are its first token's, as a
whole prefill's, and the scheduler then joins it as it joins a whole prefill (``Scheduler._join``): the same state
rows, the same logits, its prompt into the prefix cache. A prompt fed in parts gives the positions a whole pass
gives (the fused graph appends after past positions exactly as a resumed prompt's rest does; up to the float
reduction order of another pass shape, as any batching). The rows it will take are held while it fills, and a
request decoding alone does not speculate meanwhile (a step must not grow past one part).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..prefix_cache import feed_rest


@dataclass
class PromptInParts:
    """A request being prefilled a part at a time: its sequences and run (``_Run``) made at admission, its one-row
    state once the first part ran, the prompt positions it holds, the logits after them, and the prefix cache's
    match (snapshot, reused length, a hybrid's states within it) looked up at its first part."""

    req: object
    sequences: np.ndarray
    run: object
    state: object | None = None
    fed: int = 0
    logits: np.ndarray | None = None  # [1, V] after the last fed position
    earlier: dict = field(default_factory=dict)

    @property
    def whole(self) -> bool:
        return self.fed == len(self.req.ids)


def feed_part(sched, part: PromptInParts, limit: int) -> bool:
    """Feed ``part``'s next at most ``limit`` prompt tokens into its state (the first part: ``start``, or ``resume``
    from the prefix cache) -> whether its prompt is now whole."""
    ids, model = part.req.ids, sched.model
    with sched._prompt_marks():  # a hybrid model's states inside the prompt, for the cache
        if part.state is None:
            snap, reuse = sched.prefix_cache.lookup(part.req.ids) if sched.prefix_cache else (None, 0)
            if snap is not None:  # the cached positions, then the first part of the rest
                piece = ids[reuse:reuse + limit]
                part.req.cached_tokens = reuse
                part.earlier = {n: c for n, c in (snap.checkpoints or {}).items() if n <= reuse}
                part.state, first = model.resume(snap.state_at(reuse), reuse, piece)
                part.fed, part.logits = reuse + len(piece), snap.logits[reuse][None] if first is None else first
            else:
                piece = np.asarray([ids[:limit]], np.int64)
                part.state, part.logits = model.start(piece, np.ones_like(piece))
                part.fed = piece.shape[1]
        else:
            piece = ids[part.fed:part.fed + limit]
            part.logits = feed_rest(part.state, piece)
            part.fed += len(piece)
    return part.whole


def whole_state(sched, part: PromptInParts):
    """A whole prompt's state -> (state, logits [n, V]) as ``Scheduler._prefill`` gives a request's: its prompt
    into the prefix cache (after the step), its row repeated n times."""
    state, logits = part.state, part.logits
    if sched.prefix_cache is not None:
        sched._snapshots.append((part.req.ids, state.snapshot(0, copy=False), logits[0].copy(), state, None,
                                 state.checkpoint(0), {**part.earlier, **state.take_prompt_checkpoints(0)}))
    if part.req.n > 1:
        state.select(np.zeros(part.req.n, np.int64))
        logits = np.repeat(logits, part.req.n, axis=0)
    return state, logits
