"""Beam search, a numpy mirror of transformers 4.57's vectorized ``GenerationMixin._beam_search``.

Shapes: ``b`` batch, ``nb`` num_beams, ``k`` candidates kept per step (``max(2, 1 + n_eos) * nb``), ``V`` vocab,
``L`` max_length.  The loop talks to the model only through the decoding state protocol (docs/design.md):
``state.select(rows)`` once per step to reorder the KV cache, then ``state.advance(tokens)``.

Beam sampling (``rng`` given) differs only in step c: the k candidates are drawn, not the k best.

Arithmetic is float32 in the same order as transformers (log_softmax, processors, ``+ running score``,
``/ length ** length_penalty``, ``+ flag * -1e9``), so scores agree to float rounding.

Ties: every top-k is ``torch_topk`` (torch_topk.py), torch's CPU ``topk`` replayed, equal values included: a list
of forced EOS ids (each at log-prob 0), ``-inf`` rows and the ``-1e9``-penalised fillers (float32 rounds them to
one value) come out in torch's order, so the beams kept, the returned rows and the per-step scores are
transformers' (on Linux; torch's macOS build may order ties otherwise).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError, ParameterError
from ..processors import log_softmax
from .torch_topk import torch_topk as _topk

__all__ = ["BeamOutput", "beam_search"]

_NEG = -1.0e9  # transformers' "impossible" score offset


@dataclass
class BeamOutput:
    sequences: np.ndarray  # [b * num_return_sequences, T] int64, right-padded (see _fill_value)
    sequences_scores: np.ndarray  # [b * num_return_sequences] float32, length-penalised sum of log-probs
    scores: list[np.ndarray] | None  # per step [b * nb, V] float32 processed log-probs (output_scores)
    logits: list[np.ndarray] | None  # per step [b * nb, V] float32 raw logits (output_logits)
    beam_indices: np.ndarray | None  # [b * num_return_sequences, T - t0] int64, -1 padded
    finish_reasons: list[str]  # "eos" | "length" (| "stop" via stopping_criteria) per returned row


# ----------------------------------------------------------------------------------------------- helpers
def _gather_beams(x: np.ndarray, idx: np.ndarray) -> np.ndarray:  # [b, m, ...], [b, j] -> [b, j, ...]
    return x[np.arange(x.shape[0])[:, None], idx]


def _fill_value(pad_token_id: int | None, eos: Sequence[int]) -> int:
    # transformers: `pad_token_id or eos_token_id[0] if eos_token_id is not None else -1`, i.e. pad id 0 (falsy!)
    # or None falls back to the first EOS id, and without any EOS the fill is -1.
    if not eos:
        return -1
    return pad_token_id if pad_token_id else eos[0]


def _softmax32(x: np.ndarray) -> np.ndarray:  # [r, n] float32 -> [r, n] float32, as torch's softmax
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32, copy=False)


def _sample_without_replacement(acc: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """acc [r, n] accumulated log-probs -> [r, k] int64 indices: k draws without replacement from softmax(acc),
    in draw order (transformers: ``torch.multinomial(softmax(acc), k)``).

    Gumbel-top-k: the k largest ``log p + Gumbel(0, 1)`` are distributed exactly as k successive draws without
    replacement (the first one is a draw from p itself).  Entries with p == 0 (float32 underflow, -inf scores)
    are never drawn while a positive one is left; if fewer than k are positive, zero-probability entries fill
    the rest (lowest index first), as torch's multinomial does instead of failing.
    """
    p = _softmax32(acc).astype(np.float64)
    with np.errstate(divide="ignore"):
        keys = np.log(p) + rng.gumbel(size=p.shape)  # [r, n]; -inf where p == 0
    return np.argsort(-keys, axis=-1, kind="stable")[:, :k].astype(np.int64)


def _top_k_continuations(acc, running_seqs, running_bidx, cur_len, prompt_len, k, nb, V, rng=None):
    """acc [b, nb*V] accumulated log-probs -> topk_lp [b, k], topk_seqs [b, k, L], topk_bidx [b, k, L-t0].

    rng None: the k best (beam search); else k candidates drawn without replacement (beam sampling), kept in
    draw order as transformers 4.57 does (it does not sort them)."""
    if rng is None:
        topk_lp, topk_idx = _topk(acc, k)
    else:
        topk_idx = _sample_without_replacement(acc, k, rng)
        topk_lp = np.take_along_axis(acc, topk_idx, axis=-1)
    beam = topk_idx // V  # [b, k] beam within its batch item
    topk_seqs = _gather_beams(running_seqs, beam)  # [b, k, L] (copy)
    topk_bidx = _gather_beams(running_bidx, beam)  # [b, k, L-t0] (copy)
    topk_seqs[:, :, cur_len] = topk_idx % V
    topk_bidx[:, :, cur_len - prompt_len] = beam + np.arange(acc.shape[0])[:, None] * nb  # flat row b*nb + beam
    return topk_lp, topk_seqs, topk_bidx


def _refuse_dead_items(acc, improvable, running_scores):
    """acc [b, nb*V], improvable [b, 1], running_scores [b, nb] -> None, or InputError naming the batch items still
    searching whose live beams have no finite continuation (every token masked by the generation parameters):
    their top-k would be arbitrary -inf candidates (as ``greedy_tokens`` refuses such a row)."""
    searching = improvable[:, 0] & (running_scores.max(axis=1) > _NEG / 2)  # [b] (beams at -1e9: stopped ones)
    dead = searching & ~np.isfinite(acc.max(axis=1))
    if dead.any():
        raise InputError(f"scores: batch items {np.flatnonzero(dead).tolist()} have no finite continuation on any "
                         "beam (every token masked by the generation parameters); cannot decode")


def _stopping_hits(seqs, eos, max_length, stopping_criteria):
    """seqs [b, k, t+1] candidate sequences -> [b, k] bool (EosTokenCriteria | MaxLengthCriteria | custom)."""
    b, k, t = seqs.shape
    hits = np.isin(seqs[:, :, -1], np.asarray(eos, dtype=np.int64)) if eos else np.zeros((b, k), bool)
    if t >= max_length:
        hits[:] = True
    if stopping_criteria is not None:
        hits |= np.asarray(stopping_criteria(seqs.reshape(b * k, t)), dtype=bool).reshape(b, k)
    return hits


def _next_running_beams(topk_lp, topk_seqs, topk_bidx, hits, nb):
    """Best nb unfinished of the k candidates -> running seqs [b, nb, L], scores [b, nb], bidx [b, nb, L-t0]."""
    running_lp = topk_lp + hits.astype(np.float32) * np.float32(_NEG)  # [b, k]
    _, nxt = _topk(running_lp, nb)
    return _gather_beams(topk_seqs, nxt), _gather_beams(running_lp, nxt), _gather_beams(topk_bidx, nxt)


def _update_finished_beams(fin_seqs, fin_scores, fin_bidx, is_fin, topk_lp, topk_seqs, topk_bidx, hits,
                           improvable, top_nb_mask, nb, cur_len, prompt_len, length_penalty, early_stopping):
    """Merge the finished store [b, nb, ...] with candidates that just hit a stop criterion and keep the best nb."""
    just_finished = hits & top_nb_mask[None, :]  # [b, k]: only the top nb candidates may finish
    lp = topk_lp / np.float32((cur_len + 1 - prompt_len) ** length_penalty)  # [b, k] length-penalised
    full = np.all(is_fin, axis=-1, keepdims=True) & (early_stopping is True)  # [b, 1]
    lp = lp + full.astype(np.float32) * np.float32(_NEG)
    lp = lp + (~improvable).astype(np.float32) * np.float32(_NEG)
    lp = lp + (~just_finished).astype(np.float32) * np.float32(_NEG)
    merged_scores = np.concatenate([fin_scores, lp], axis=1)  # [b, nb + k]
    _, keep = _topk(merged_scores, nb)  # [b, nb]
    return (_gather_beams(np.concatenate([fin_seqs, topk_seqs], axis=1), keep),
            _gather_beams(merged_scores, keep),
            _gather_beams(np.concatenate([fin_bidx, topk_bidx], axis=1), keep),
            _gather_beams(np.concatenate([is_fin, just_finished], axis=1), keep))


def _early_stop_heuristic(improvable, running_scores, fin_scores, is_fin, cur_len, max_length, prompt_len,
                          early_stopping, length_penalty):
    """-> [b, 1] bool: can a running beam still beat the worst finished one (transformers' heuristic)?"""
    if early_stopping == "never" and length_penalty > 0.0:
        best_len = max_length - prompt_len
    else:
        best_len = cur_len - prompt_len
    best_running = running_scores[:, :1] / np.float32(best_len ** length_penalty)  # [b, 1]
    worst_fin = np.where(is_fin, fin_scores.min(axis=1, keepdims=True), np.float32(_NEG))  # [b, nb]
    return improvable & np.any(best_running > worst_fin, axis=-1, keepdims=True)


def _has_unfinished(improvable, is_fin, hits, early_stopping) -> bool:
    improvement_possible = bool(np.any(improvable))
    exists_open_beam = not (bool(np.all(is_fin)) and early_stopping is True)
    valid_continuations = not bool(np.all(hits))
    return improvement_possible and exists_open_beam and valid_continuations


def _finish_reasons(seqs, bidx, eos, prompt_len, max_length) -> list[str]:
    reasons = []
    for row, gen_len in zip(seqs, (bidx != -1).sum(axis=1)):
        if gen_len > 0 and int(row[prompt_len + gen_len - 1]) in eos:
            reasons.append("eos")
        elif gen_len == 0 or prompt_len + gen_len >= max_length:
            reasons.append("length")
        else:
            reasons.append("stop")
    return reasons


def _check_args(sequences, logits, num_beams, num_return_sequences, max_length, early_stopping, prompt_len):
    if isinstance(early_stopping, (bool, np.bool_)):
        early_stopping = bool(early_stopping)
    elif early_stopping != "never":
        raise ParameterError("early_stopping", f"must be True, False or 'never', got {early_stopping!r}")
    if not isinstance(num_beams, (int, np.integer)) or num_beams < 1:
        raise ParameterError("num_beams", f"must be an integer >= 1, got {num_beams!r}")
    if not 1 <= num_return_sequences <= num_beams:
        raise ParameterError("num_return_sequences",
                             f"must be between 1 and num_beams ({num_beams}), got {num_return_sequences!r}")
    if sequences.ndim != 2 or sequences.shape[0] % num_beams or logits.shape[0] != sequences.shape[0]:
        raise ParameterError("num_beams", f"sequences {sequences.shape} / logits {logits.shape} rows must be "
                                          f"batch * num_beams ({num_beams}) and agree")
    t0 = sequences.shape[1]
    if prompt_len is not None and prompt_len != t0:
        raise ParameterError("decoder_prompt_len", f"must equal the sequence length so far ({t0}), got {prompt_len}")
    if max_length <= t0:
        raise ParameterError("max_length", f"must exceed the current sequence length {t0}, got {max_length}")
    return early_stopping


def _check_length_penalty(length_penalty: float, longest: int) -> None:
    """``length ** length_penalty`` must be a float for every length from 1 to ``longest`` (transformers' Python
    power raises OverflowError past float64's range): ParameterError naming it otherwise."""
    try:
        for n in (1.0, float(longest)):
            n ** float(length_penalty)
    except OverflowError:
        raise ParameterError("length_penalty", f"got {length_penalty!r}: length ** length_penalty overflows for the "
                                               f"lengths this run reaches (up to {longest} new tokens); allowed: a "
                                               "number whose power of those lengths is finite") from None


# ------------------------------------------------------------------------------------------------- loop
def beam_search(state, sequences, logits, *, num_beams: int, processors: Callable | None,
                eos_token_ids: Sequence[int], pad_token_id: int | None, max_length: int,
                length_penalty: float = 1.0, early_stopping: bool | str = False, num_return_sequences: int = 1,
                output_scores: bool = False, output_logits: bool = False, decoder_prompt_len: int | None = None,
                stopping_criteria: Callable[[np.ndarray], np.ndarray] | None = None,
                rng: np.random.Generator | None = None) -> BeamOutput:
    """Run beam search from ``sequences`` [b*nb, t0] (inputs already np.repeat-ed by nb) and their next-token
    ``logits`` [b*nb, V].  ``decoder_prompt_len`` defaults to (and must equal) t0, as in transformers.
    ``stopping_criteria`` (optional): ``ids [n, t] -> bool [n]``, OR-ed with EOS / max_length (e.g. stop strings).
    ``rng`` (optional): beam sampling (transformers' ``do_sample=True`` with ``num_beams > 1``): the k candidates
    of each step are drawn from softmax of the accumulated scores instead of taken as the k best; the warpers
    belong in ``processors``.
    """
    sequences = np.asarray(sequences, dtype=np.int64)
    logits = np.asarray(logits, dtype=np.float32)
    early_stopping = _check_args(sequences, logits, num_beams, num_return_sequences, max_length, early_stopping,
                                 decoder_prompt_len)
    _check_length_penalty(length_penalty, max_length - sequences.shape[1])
    eos = [int(e) for e in (eos_token_ids or [])]
    n, t0 = sequences.shape
    nb, b, V, P, cur_len = int(num_beams), n // num_beams, logits.shape[-1], t0, t0
    k = max(2, 1 + len(eos)) * nb  # candidates kept per step, enough to leave nb unfinished
    top_nb_mask = np.arange(k) < nb  # [k]
    running_seqs = np.full((b, nb, max_length), _fill_value(pad_token_id, eos), dtype=np.int64)  # [b, nb, L]
    running_seqs[:, :, :t0] = sequences.reshape(b, nb, t0)
    fin_seqs = running_seqs.copy()
    running_scores = np.zeros((b, nb), np.float32)  # only beam 0 is live at first: the rows are identical
    running_scores[:, 1:] = _NEG
    fin_scores = np.full((b, nb), _NEG, np.float32)
    is_fin = np.zeros((b, nb), bool)
    improvable = np.ones((b, 1), bool)
    running_bidx = np.full((b, nb, max_length - t0), -1, np.int64)  # flat source row of every generated token
    fin_bidx = running_bidx.copy()
    all_scores: list[np.ndarray] | None = [] if output_scores else None
    all_logits: list[np.ndarray] | None = [] if output_logits else None

    while True:
        # a. processed log-probs of the next token on every running beam: [b*nb, V]
        flat = running_seqs[:, :, :cur_len].reshape(n, cur_len)
        log_probs = log_softmax(logits)
        if processors is not None:
            log_probs = np.asarray(processors(flat, log_probs), dtype=np.float32)
        if all_logits is not None:
            all_logits.append(logits.copy())
        if all_scores is not None:
            all_scores.append(log_probs.copy())
        # b. accumulate with the running beam scores: [b*nb, V] -> [b, nb*V]
        acc = (log_probs.reshape(b, nb, V) + running_scores[:, :, None]).reshape(b, nb * V)
        _refuse_dead_items(acc, improvable, running_scores)
        # c. best k continuations over all beams of each batch item (beam sampling: k drawn without replacement)
        topk_lp, topk_seqs, topk_bidx = _top_k_continuations(acc, running_seqs, running_bidx, cur_len, P, k, nb, V,
                                                             rng)
        # d. which candidates hit EOS / max_length / custom criteria: [b, k]
        hits = _stopping_hits(topk_seqs[:, :, :cur_len + 1], eos, max_length, stopping_criteria)
        # e. the best nb unfinished candidates keep running
        running_seqs, running_scores, running_bidx = _next_running_beams(topk_lp, topk_seqs, topk_bidx, hits, nb)
        # f. finished candidates among the top nb enter the finished store if they beat it
        fin_seqs, fin_scores, fin_bidx, is_fin = _update_finished_beams(
            fin_seqs, fin_scores, fin_bidx, is_fin, topk_lp, topk_seqs, topk_bidx, hits, improvable, top_nb_mask,
            nb, cur_len, P, length_penalty, early_stopping)
        # g. global stop test (heuristic / all finished with early_stopping=True / every candidate stopped)
        cur_len += 1
        improvable = _early_stop_heuristic(improvable, running_scores, fin_scores, is_fin, cur_len, max_length, P,
                                           early_stopping, length_penalty)
        if not _has_unfinished(improvable, is_fin, hits, early_stopping):
            break
        # h. reorder the KV cache to the surviving beams' source rows, then feed their new tokens
        state.select(running_bidx[:, :, cur_len - 1 - P].reshape(n))
        logits = np.asarray(state.advance(running_seqs[:, :, cur_len - 1].reshape(n)), dtype=np.float32)

    # best num_return_sequences per batch item (the store is sorted by score), cropped to the longest generation
    r = num_return_sequences
    out_seqs = fin_seqs[:, :r].reshape(b * r, max_length)
    out_bidx = fin_bidx[:, :r].reshape(b * r, max_length - t0)
    gen_len = int((out_bidx != -1).sum(axis=1).max())
    out_seqs, out_bidx = out_seqs[:, :P + gen_len], out_bidx[:, :gen_len]
    return BeamOutput(sequences=np.ascontiguousarray(out_seqs),
                      sequences_scores=np.ascontiguousarray(fin_scores[:, :r].reshape(b * r)),
                      scores=all_scores, logits=all_logits, beam_indices=np.ascontiguousarray(out_bidx),
                      finish_reasons=_finish_reasons(out_seqs, out_bidx, eos, P, max_length))
