"""Speculative decoding inside the continuous-batching scheduler (scheduler.py): prompt lookup for a request that
decodes alone.

When the batch holds one row (one request with n = 1, nobody waiting) that may speculate, a step feeds its last
chosen token and up to k tokens copied from its own ids (``candidates.PromptLookup``: transformers' prompt lookup with
onnxlm's back-off) in one pass (``state.extend``), then picks the k + 1 positions one by one with the request's own
``_pick`` (processors, samplers, random draws, stop strings, logprobs, streams: exactly as k + 1 plain steps would),
stopping at the first picked token that is not the proposed one or where the row finishes; the positions fed past it
are forgotten (``state.rollback``). So a request's tokens are the ones it gets without speculation (greedy: the same
ids up to the float reduction order of a pass of several positions; seeded sampling: the same draws), in fewer
passes where its answer copies its context (code edits, quotes, lists, a document's names): llama.cpp's server's
speculation for one slot; with a draft model (``Scheduler(draft=...)``, the server's ``--draft``: scheduler_draft.py)
the proposals are the draft's instead.

A batch of several rows decodes plainly: rows of several requests would speculate only as far as the shortest
proposal, and a pass of several rows with several positions each runs a pass per row in the fused layout.

Which requests speculate (``proposer_for_request``): decoder-only models, one row (n = 1); the number of tokens is
the request config's
``prompt_lookup_num_tokens``, else the scheduler's draft model where it has one, else its ``prompt_lookup`` (the
server's ``--prompt-lookup``), capped by a model whose state keeps a bounded rollback history (LFM2:
``speculation_limit``). A request with a ``prediction`` (OpenAI's predicted outputs: ids its answer is expected to
follow) speculates from it (prediction.py; up to ``PREDICTION_TOKENS`` a pass unless those settings say otherwise),
falling back to prompt lookup where they ask for it, else to the draft. Each request counts the tokens its
passes checked and kept (``Request.speculated`` / ``speculated_accepted``: llama.cpp's ``draft_n`` /
``draft_n_accepted``) and, apart, those its prediction proposed (``Request.proposed`` / ``accepted``: the server's
``accepted_prediction_tokens`` / ``rejected_prediction_tokens``; a fallback's proposals are not the prediction's).

A request under a structured-output constraint (JSON schema, regex, choices, grammar) speculates too
(``ConstrainedProposer``): where the constraint forces the next tokens (a JSON schema's keys and punctuation:
llguidance's ``compute_ff_tokens``) those are the proposal; otherwise its proposer's candidates, made without the
constraint, cut before the first token the matcher would refuse now (``validate_tokens``, which consumes nothing).
The pass then picks each position with the constraint's mask as a plain step does, and the matcher consumes only the
picked tokens (``_pick``), so nothing of it is rolled back and the tokens are the ones the request gets without
speculation.
"""
from __future__ import annotations

import numpy as np

from .candidates import PromptLookup, speculation_limit
from .constrained_proposer import ConstrainedProposer
from .prediction import PredictionLookup
from .speculative import SpeculationStats

PREDICTION_TOKENS = 16  # a prediction's proposals per pass at most, unless the request or the scheduler says


def proposer_for_request(model, req, processors, max_length: int, default: int | None, draft=None,
                         constraint=None):
    """A request being admitted -> its candidate generator, or None where it does not speculate (see the module
    docstring). ``processors``: the request's logits processors but its constraint (a candidate they forbid is not
    proposed); ``draft``: the scheduler's ``ServerDraft`` (scheduler_draft.py) or None; ``constraint``: the
    request's ``ConstraintProcessor`` or None (``ConstrainedProposer``). A
    request's own ``prompt_lookup_num_tokens`` wins over the draft, the draft over the scheduler's
    ``prompt_lookup``."""
    proposer = _proposer(model, req, processors, max_length, default, draft)
    if proposer is None or constraint is None:
        return proposer
    return ConstrainedProposer(proposer, constraint, model=model, max_length=max_length,
                               eos_token_ids=req.config.eos_token_ids)


def _proposer(model, req, processors, max_length: int, default: int | None, draft):
    """``proposer_for_request``'s candidate generator before a constraint's cut."""
    c = req.config
    own = c.prompt_lookup_num_tokens
    num_tokens = own or (None if draft is not None else default)
    predicted = req.prediction
    if (not num_tokens and not predicted and draft is None) or model.is_encoder_decoder or req.n != 1:
        return None
    cap = speculation_limit(model)
    common = dict(max_length=max_length, eos_token_ids=c.eos_token_ids, processors=processors,
                  vocab_size=model.vocab_size)
    lookup = None if not num_tokens else PromptLookup(num_tokens=min(num_tokens, cap or num_tokens),
                                                      max_ngram=c.max_matching_ngram_size or 2, **common)
    if lookup is None and draft is not None:
        lookup = draft.proposer(req, processors, max_length)
    if not predicted:
        return lookup
    most = num_tokens or PREDICTION_TOKENS
    return PredictionLookup(predicted, num_tokens=min(most, cap or most), max_ngram=c.max_matching_ngram_size or 3,
                            fallback=lookup, **common)


def speculative_pass(sched, req, proposer, token: np.ndarray, counts: SpeculationStats):
    """The batch's one row (request ``req``), its chosen token [1] int64 not yet fed -> (its TokenEvents, the tokens
    of the row if it goes on: [] or [next token]), or None when nothing is proposed (the caller runs a plain step).
    Leaves ``sched.state`` holding the row's ids up to its last picked token (not fed) and ``sched.logits`` the
    logits after them, as a plain step leaves them."""
    candidates, _ = proposer.propose(req.sequences, req.active)    # [1, k] (the sequences end with ``token``)
    k = candidates.shape[1]
    if k == 0:
        return None
    block = sched.state.extend(np.concatenate([token[:, None], candidates], axis=1))   # [1, k + 1, V], one pass
    events = []
    for i in range(k + 1):                                   # 1. pick the fed positions in order, as plain steps
        sched.logits = block[:, i]                           # [1, V]: after the token fed at position i
        picked, going = sched._pick(req)
        events += picked
        if not going or i == k or going[0] != candidates[0, i]:
            break                                            # finished, all used, or the proposal parted here
    if k - i:
        sched.state.rollback(np.array([k - i], np.int64))    # 2. forget the proposed tokens fed past the pick
    proposer.update(i, k)                                    # 3. the back-off hears how many were accepted
    counts.passes, counts.proposed, counts.accepted = counts.passes + 1, counts.proposed + k, counts.accepted + i
    req.speculated, req.speculated_accepted = req.speculated + k, req.speculated_accepted + i
    if getattr(proposer, "proposed_by_prediction", False):  # OpenAI's prediction counts: its own proposals only
        req.proposed, req.accepted = req.proposed + k, req.accepted + i
    return events, going
