"""Candidate generators for speculative decoding (runtime/decoding/speculative.py), after transformers 4.57's
``generation/candidate_generator.py``.

A generator proposes tokens that may follow each row: ``propose(sequences [b, t] int64, active [b] bool) ->
(candidates [b, k] int64, draft probabilities [b, k, V] float64 or None)``, the same k for every row (the batch
speculates as far as its shortest proposal; k = 0: nothing to propose, the loop decodes one token plainly), and
``update(matches, k)`` hears how many of the k were accepted.

- ``PromptLookup``: transformers' ``PromptLookupCandidateGenerator``: for n from max_matching_ngram_size down to 1,
  the first (leftmost) earlier occurrence of the row's last n ids whose continuation is non-empty gives up to
  ``prompt_lookup_num_tokens`` candidates, cropped where the logits processors forbid a token (fed all-ones logits)
  and before the first EOS. No draft probabilities. onnxlm adds a back-off (``update``): after a failed proposal
  the next proposes at most one token more than were accepted, so text that does not copy its input costs about
  plain decoding.
- ``DraftModel``: transformers' ``AssistedCandidateGenerator`` with an onnxlm model of the same vocabulary: it decodes
  up to ``num_assistant_tokens`` tokens (greedy, or sampling from its processed distribution) with the target's
  processors, stopping early at EOS, a stop string, the length limit, or a token whose probability is below
  ``assistant_confidence_threshold``. The schedule ``"heuristic"`` / ``"heuristic_transient"`` adds 2 after a
  fully accepted proposal and removes 1 (down to 1) otherwise. Batch 1 only (as transformers).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import ParameterError
from ..processors import greedy_tokens, sample_tokens, softmax

_NONE = (np.zeros((0, 0), np.int64), None)


def lookup(row: np.ndarray, *, num_tokens: int, max_ngram: int, max_length: int, eos: np.ndarray,
           processors: Callable | None, vocab_size: int) -> np.ndarray:
    """row [t] int64 (one row, newest id last) -> [k] int64 candidates (k may be 0), as transformers'
    ``PromptLookupCandidateGenerator.get_candidates``."""
    t = len(row)
    if max_length == t + 1:                                       # the target's own token is the last one allowed
        return row[:0]
    for n in range(min(max_ngram, t - 1), 0, -1):                 # longest n-gram first
        windows = np.lib.stride_tricks.sliding_window_view(row, n)            # [t - n + 1, n]
        for start in np.flatnonzero((windows == row[-n:]).all(axis=1)) + n:   # leftmost occurrence first
            chosen = row[start:min(start + num_tokens, t, start + max_length - t - 1)]  # the verify pass's
            # k + 1 new positions stay within max_length (transformers trims its matches there instead)
            if not len(chosen):
                continue
            if processors is not None and len(processors):        # crop at the first forbidden token
                chosen = _allowed_prefix(row, chosen, processors, vocab_size)
                if not len(chosen):
                    continue
            cut = np.flatnonzero(np.isin(chosen, eos))            # never propose EOS or what follows it
            return chosen[:cut[0]] if len(cut) else chosen
    return row[:0]


def _allowed_prefix(row: np.ndarray, chosen: np.ndarray, processors: Callable, vocab_size: int) -> np.ndarray:
    """The longest prefix of chosen [k] whose every token the processors leave finite on all-ones logits, each
    seen after row + the candidates before it (transformers' forbidden-token check)."""
    ones = np.ones((1, vocab_size), np.float32)
    for i, token in enumerate(chosen):
        scores = processors(np.concatenate([row, chosen[:i]])[None, :], ones)
        if not np.isfinite(scores[0, token]) or scores[0, token] == np.finfo(np.float32).min:
            return chosen[:i]
    return chosen


class PromptLookup:
    """Prompt lookup: candidates copied from the row's own earlier ids (see ``lookup``)."""

    def __init__(self, *, num_tokens: int, max_ngram: int, max_length: int, eos_token_ids: list[int],
                 processors: Callable | None, vocab_size: int):
        num_tokens = min(num_tokens, max_length)  # more could never fit (and 2**63 would overflow int64 indices)
        self.num_tokens, self.max_ngram, self.max_length = num_tokens, max_ngram, max_length
        self.eos = np.asarray(eos_token_ids, np.int64)
        self.processors, self.vocab_size = processors, vocab_size
        self.cap = num_tokens  # back-off: tokens proposed at most this round (see update)

    def propose(self, sequences: np.ndarray, active: np.ndarray):
        """sequences [b, t] int64, active [b] bool -> candidates [b, k] int64 (k: the shortest active row's), None."""
        found = [lookup(row, num_tokens=self.cap, max_ngram=self.max_ngram, max_length=self.max_length,
                        eos=self.eos, processors=self.processors, vocab_size=self.vocab_size)
                 for row, on in zip(sequences, active) if on]
        k = min(len(c) for c in found) if found else 0
        if k == 0:
            return _NONE
        out = np.zeros((len(sequences), k), np.int64)             # finished rows: any id (their output is pad)
        out[np.flatnonzero(active)] = np.stack([c[:k] for c in found])
        return out, None

    def update(self, matches: int, k: int) -> None:
        """Back-off (onnxlm's; transformers always proposes up to num_tokens): after a proposal that failed, propose
        at most one more token than were accepted; after a fully accepted one, 2 more (up to num_tokens). So free
        text, whose lookups rarely hold, checks 1-2 tokens per pass (about a plain step's cost), not num_tokens."""
        if k:
            self.cap = min(self.num_tokens, 2 * self.cap + 1) if matches == k else max(1, matches + 1)

    def close(self) -> None:
        """Nothing held."""


class DraftModel:
    """A smaller onnxlm model of the same vocabulary proposing tokens (batch 1). ``start`` prefills its prompt."""

    def __init__(self, model, *, num_tokens: int, schedule: str, threshold: float | None, max_length: int,
                 eos_token_ids: list[int], processors: Callable, do_sample: bool, rng, stop_check,
                 cap: int | None = None):
        self.model, self.schedule, self.threshold, self.cap = model, schedule, threshold, cap
        self.num_tokens = float(min(num_tokens, cap or num_tokens))  # the schedules move from what a round proposes
        self.max_length, self.eos = max_length, np.asarray(eos_token_ids, np.int64)
        self.processors, self.do_sample, self.rng, self.stop_check = processors, do_sample, rng, stop_check
        self.state, self.fed = None, None  # the draft's decoding state and the ids it holds [t]

    def start(self, ids: np.ndarray, mask: np.ndarray) -> None:
        """ids/mask [1, t]: the prompt, fed once (the draft then holds it)."""
        self.state, _ = self.model.start(ids, mask)
        self.fed = ids[0].copy()

    def propose(self, sequences: np.ndarray, active: np.ndarray):
        """sequences [1, t] int64 -> candidates [1, k] int64, draft probabilities [1, k, V] float64."""
        most = self._most(sequences[0])
        if most <= 0 or not active[0]:
            return _NONE
        logits = self._catch_up(sequences[0])        # 1. the draft holds the row: its next-token logits [1, V]
        # 2. decode up to `most` tokens, stopping as transformers' assistant does
        seq, tokens, probs = sequences, [], []
        for i in range(most):
            scores = self.processors(seq, logits)                                 # [1, V] processed draft scores
            p = softmax(scores).astype(np.float64)
            token = sample_tokens(scores, self.rng) if self.do_sample else greedy_tokens(scores)
            seq = np.concatenate([seq, token[:, None]], axis=1)
            tokens.append(int(token[0]))
            probs.append(p[0])
            done = (token[0] in self.eos or i == most - 1
                    or (self.threshold is not None and self.threshold > 0 and p[0, token[0]] < self.threshold)
                    or (self.stop_check is not None and self.stop_check(seq)[0]))
            if done:
                break
            logits = self.state.advance(token)                                    # the last token is not fed
            self.fed = np.append(self.fed, token)
        return np.asarray([tokens], np.int64), np.stack(probs)[None]

    def _most(self, row: np.ndarray) -> int:
        """row [t] int64 -> the most tokens this round may draft (its schedule, the cap, the length limit)."""
        return min(int(self.num_tokens), self.cap or int(self.num_tokens), self.max_length - len(row) - 1)

    def _catch_up(self, row: np.ndarray) -> np.ndarray:
        """row [t] int64 -> the draft's next-token logits [1, V] after it: what the draft holds past the ids it shares
        with the row is forgotten (rolled back), then the row's ids it does not hold are fed in one pass."""
        m = min(len(self.fed), len(row) - 1)                                      # the row's last id is never held
        same = int(np.argmin(np.append(self.fed[:m] == row[:m], False)))          # common prefix length
        if same < len(self.fed):
            self.state.rollback(np.array([len(self.fed) - same]))
        new = row[same:]
        logits = (self.state.extend(new[None, :])[:, -1] if len(new) > 1 else self.state.advance(new))
        self.fed = row.copy()
        return logits

    def update(self, matches: int, k: int) -> None:
        """transformers' schedule: all k accepted -> 2 more next time, else 1 fewer (at least 1)."""
        if self.schedule in ("heuristic", "heuristic_transient"):
            grown = min(self.num_tokens + 2.0, float(self.cap or np.inf))  # never past what a round may propose
            self.num_tokens = grown if matches == k else max(1.0, self.num_tokens - 1.0)

    def close(self) -> None:
        """"heuristic": the reached number of tokens persists on the draft model for its next call."""
        if self.schedule == "heuristic":
            self.model._speculative_tokens = self.num_tokens


def speculation_limit(*models) -> int | None:
    """The most tokens a speculative round may propose for these models (target, draft), or None for no limit: a
    model whose state keeps a bounded history to roll back into (LFM2's convolution states:
    ``speculation_limit``) caps its rounds, whatever ``prompt_lookup_num_tokens`` / ``num_assistant_tokens`` and
    their schedules ask (the tokens are the same; only the rounds are shorter)."""
    caps = [c for c in (getattr(m, "speculation_limit", None) for m in models if m is not None) if c]
    return min(caps) if caps else None


def check_speculation(model, config, assistant, *, rows: int) -> bool:
    """Refuse what speculative decoding does not run (ParameterError naming the parameter) -> True when the call
    asks for it (prompt_lookup_num_tokens or assistant_model)."""
    if config.prompt_lookup_num_tokens is None and assistant is None:
        return False
    name = "assistant_model" if assistant is not None else "prompt_lookup_num_tokens"
    if assistant is not None and config.prompt_lookup_num_tokens is not None:
        raise ParameterError("assistant_model", "pass either assistant_model or prompt_lookup_num_tokens, not both")
    if config.num_beams > 1:
        raise ParameterError(name, "speculative decoding runs greedy and sampling only (num_beams=1), as in "
                             "transformers")
    if model.is_encoder_decoder:
        raise ParameterError(name, "speculative decoding runs on decoder-only models; this is a seq2seq model")
    if assistant is not None:
        if not all(hasattr(assistant, a) for a in ("start", "vocab_size")) or assistant.is_encoder_decoder:
            raise ParameterError("assistant_model", f"got {type(assistant).__name__}; must be a decoder-only model "
                                 "loaded with onnxlm.load")
        if assistant.vocab_size != model.vocab_size:
            raise ParameterError("assistant_model", f"its vocabulary has {assistant.vocab_size} ids, the model's "
                                 f"{model.vocab_size}; the draft must share the model's vocabulary")
        if rows != 1:
            raise ParameterError("assistant_model", f"got {rows} rows (prompts x num_return_sequences); a draft "
                                 "model speculates for one row only, as in transformers")
    return True


def proposer_for(model, config, assistant, ids: np.ndarray, mask: np.ndarray, *, processors, rng,
                 max_length: int, stop_check):
    """The candidate generator a checked call asks for; a draft model prefills the prompt ids/mask [1, t] now."""
    cap = speculation_limit(model, assistant)
    if assistant is None:
        num_tokens = min(config.prompt_lookup_num_tokens, cap or config.prompt_lookup_num_tokens)
        return PromptLookup(num_tokens=num_tokens, max_ngram=config.max_matching_ngram_size or 2,
                            max_length=max_length, eos_token_ids=config.eos_token_ids, processors=processors,
                            vocab_size=model.vocab_size)
    limit = getattr(assistant, "max_positions", None)
    if limit and max_length > limit:  # the draft holds every id of the row, as the model does
        raise ParameterError("assistant_model", f"the draft model's context is {limit} positions (max_positions); "
                             f"this call reaches {max_length} (prompt + new tokens): pass a draft with as many "
                             "positions, fewer new tokens, or no assistant_model")
    start = config.num_assistant_tokens
    if config.num_assistant_tokens_schedule == "heuristic" and "num_assistant_tokens" not in config._explicit:
        start = getattr(assistant, "_speculative_tokens", start)  # where the last "heuristic" call left it
    draft = DraftModel(assistant, num_tokens=start, schedule=config.num_assistant_tokens_schedule,
                       threshold=config.assistant_confidence_threshold, max_length=max_length,
                       eos_token_ids=config.eos_token_ids, processors=processors, do_sample=bool(config.do_sample),
                       rng=rng, stop_check=stop_check, cap=cap)
    draft.start(ids, mask)
    return draft
