"""Chunked prefill: a long prompt goes into its own one-row state a part at a time, one part per scheduler step,
and joins the batch once it is whole, so the running rows keep stepping and a short request arriving meanwhile
starts at once (a 3,000-token prompt prefilled whole held every stream of the batch for its 6 s pass on SmolLM2's
GGUF variant here).

``Scheduler(prefill_chunk=N)`` (``onnxlm serve --prefill-chunk``): a decoder-only request whose prefill computes
more than N positions (its prompt less what the prefix cache holds) is a ``PromptInParts``, whether or not rows
decode. Each step, after the running rows' pass and the admissions, the first of them (in arrival order) is fed its
next N tokens (``feed_part``): the first part through ``model.start`` (or ``Scheduler._resume`` from the prefix
cache's longest match, its rest as the part, as a whole prefill resumes), the others through the state protocol's
``extend`` (the rest of a prompt after held positions, as a resumed prompt's rest: ``feed_rest``). Its last part's
logits are its first token's, as a whole prefill's, and the scheduler then joins it as it joins a whole prefill
(``Scheduler._prefilled``, ``_join``): the same state rows, the same logits, its prompt into the prefix cache. A prompt fed in parts gives the positions a whole pass
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
            if snap is not None:  # the cached positions (copied: the rest takes several steps), then a part
                piece = ids[reuse:reuse + limit]
                part.earlier = snap.within(reuse)
                part.state, part.logits = sched._resume(part.req, snap, reuse, piece, lend=False)
                part.fed = reuse + len(piece)
            else:
                piece = np.asarray([ids[:limit]], np.int64)
                part.state, part.logits = model.start(piece, np.ones_like(piece))
                part.fed = piece.shape[1]
        else:
            piece = ids[part.fed:part.fed + limit]
            part.logits = feed_rest(part.state, piece)
            part.fed += len(piece)
    return part.whole
