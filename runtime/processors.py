"""Numpy logits processors with transformers' (4.57 ``generation/logits_process.py``) semantics.

Every processor is ``proc(input_ids [b, t] int64, scores [b, V] float32) -> [b, V] float32``; it never modifies its
inputs, works in float32 and marks removed tokens with ``-inf`` like transformers.  Arguments are checked in
``__init__`` (ParameterError naming the parameter and the bad value).

``build_processors`` mirrors ``GenerationMixin._get_logits_processor`` and applies, in this order:

 processors (always)
   0. SequenceBias             sequence_bias set (transformers puts it first, before the repetition penalty)
   1. RepetitionPenalty        repetition_penalty not None and != 1.0
   2. NoRepeatNGram            no_repeat_ngram_size > 0
   3. NoBadWords               bad_words_ids (single-token bad words equal to an EOS id are dropped)
   4. MinLength                eos set and min_length > 0 (min_length = min_new_tokens + input_length when
                               min_new_tokens is set, as transformers' ``_prepare_generated_length`` does)
   5. MinNewTokensLength       eos set and min_new_tokens > 0
   6. ForcedBOS                forced_bos_token_id set (forces it when t == 1)
   7. ForcedEOS                forced_eos_token_id set (forces it when t == max_length - 1)
   8. SuppressTokens           suppress_tokens
   9. SuppressTokensAtBegin    begin_suppress_tokens, at t == input_length (+1 if input_length == 1 and forced_bos)
 extra processors (``logits_processor=``, where transformers merges a user ``logits_processor``)
   -. ConstraintProcessor      json_schema / regex / choices / grammar (runtime/constraints.py): disallowed -> -inf
 warpers (only when do_sample; min_tokens_to_keep = len(eos ids) + 1 (2 without eos) for beam sampling, else 1)
  10. Temperature              temperature not None and != 1.0
  11. TopK                     top_k not None and != 0
  12. TopP                     top_p not None and < 1.0
  13. MinP                     min_p not None
  14. Typical                  typical_p not None and < 1.0

Also ``sample_tokens`` (one inverse-CDF draw per row from softmax(scores)), ``greedy_tokens``, ``log_softmax`` and
``softmax`` (float32, stable, rows that are all -inf give -inf / 0 instead of NaN).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from .errors import InputError, ParameterError
from .generation_config import GenerationConfig, sequence_bias_items

__all__ = [
    "LogitsProcessor", "ProcessorList", "build_processors", "SequenceBiasProcessor",
    "RepetitionPenaltyProcessor", "NoRepeatNGramProcessor", "NoBadWordsProcessor", "SuppressTokensProcessor",
    "SuppressTokensAtBeginProcessor", "MinLengthProcessor", "MinNewTokensLengthProcessor", "ForcedBOSProcessor",
    "ForcedEOSProcessor", "InfNanRemoveProcessor", "TemperatureWarper", "TopKWarper", "TopPWarper", "MinPWarper",
    "TypicalWarper", "sample_tokens", "greedy_tokens", "log_softmax", "softmax",
]

NEG_INF = np.float32(-np.inf)


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _token_ids(name: str, v: Any) -> list[int]:
    """int or iterable of ints >= 0 -> list[int] (ParameterError otherwise)."""
    items = [v] if _is_int(v) else v
    try:
        items = list(items)
    except TypeError:
        raise ParameterError(name, f"got {v!r}; must be a token id >= 0 or a list of token ids >= 0") from None
    if not all(_is_int(i) and i >= 0 for i in items):
        raise ParameterError(name, f"got {v!r}; must be a token id >= 0 or a list of token ids >= 0")
    return [int(i) for i in items]


def _check_min_keep(v: Any) -> int:
    if not _is_int(v) or v < 1:
        raise ParameterError("min_tokens_to_keep", f"got {v!r}; must be an integer >= 1")
    return int(v)


def _banned(scores: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """[b, V] float32 -> a copy with the columns ``ids`` set to -inf (ids >= V are ignored, like transformers' isin
    over arange(V)): one copy and a column write, where a mask and ``np.where`` made three passes over the
    vocabulary (~0.2 ms a step at Gemma's 262,144 tokens)."""
    out = scores.astype(np.float32, copy=True)
    out[:, [i for i in ids if i < scores.shape[1]]] = NEG_INF
    return out


def _scatter_back(sorted_mask: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Mask given in sorted order [b, V] -> mask in vocabulary order [b, V]."""
    out = np.empty_like(sorted_mask)
    np.put_along_axis(out, order, sorted_mask, axis=1)
    return out


def _cumsum_like_torch(probs: np.ndarray) -> np.ndarray:
    """[b, V] float32 -> [b, V] float32 running sums accumulated in float64, as torch's CPU ``cumsum`` does for
    float32 (a float32 accumulator drifts by ~1e-5 over 50k terms and moves the top-p / typical-p boundary)."""
    return np.cumsum(probs, axis=1, dtype=np.float64).astype(np.float32)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Stable float32 softmax; a row of all -inf gives all zeros."""
    x = np.asarray(x, dtype=np.float32)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, np.float32(0))
    e = np.exp(x - m)
    s = np.sum(e, axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(s > 0, e / s, np.float32(0)).astype(np.float32, copy=False)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Stable float32 log-softmax; -inf entries stay -inf, a row of all -inf stays all -inf."""
    x = np.asarray(x, dtype=np.float32)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, np.float32(0))
    shifted = x - m
    with np.errstate(divide="ignore"):
        lse = np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
    lse = np.where(np.isfinite(lse), lse, np.float32(0))  # all -inf row: keep it all -inf, not NaN
    return (shifted - lse).astype(np.float32, copy=False)


PICK_CHUNK = 256  # positions whose log-softmax ``picked_logprobs`` holds at once


def picked_logprobs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[b, t, V] logits, [b, t] int64 targets -> [b, t] float32 log_softmax(logits)[target], as ``log_softmax``
    computes it, ``PICK_CHUNK`` positions at a time: a long text's whole [t, V] log-softmax (and its temporaries) is
    never held beside the logits."""
    out = np.empty(targets.shape, np.float32)
    for s in range(0, targets.shape[1], PICK_CHUNK):
        part = log_softmax(logits[:, s:s + PICK_CHUNK])                          # [b, c, V]
        out[:, s:s + PICK_CHUNK] = np.take_along_axis(part, targets[:, s:s + PICK_CHUNK, None], axis=-1)[..., 0]
    return out


def top_logprobs(row: np.ndarray, k: int) -> list[tuple[int, float]]:
    """[V] log-probabilities -> the k largest as (id, logprob), descending, the lower id first on ties (a stable
    sort's order, also at the k-th place), without sorting the whole vocabulary."""
    kth = np.partition(row, -k)[-k]
    ids = np.flatnonzero(row >= kth)                                            # k or more (ties at the k-th)
    ids = ids[np.lexsort((ids, -row[ids]))][:k]
    return [(int(i), float(row[i])) for i in ids]


def greedy_tokens(scores: np.ndarray) -> np.ndarray:
    """scores [b, V] -> [b] int64 argmax (first index on ties, like torch.argmax on CPU). Raises InputError for a
    row whose best score is not finite (every token masked, NaN, +inf): never an arbitrary token, as
    ``sample_tokens`` refuses to draw from such a row."""
    idx = np.argmax(scores, axis=-1)
    best = np.take_along_axis(scores, idx[:, None], axis=-1)[:, 0]  # [b]; NaN where a row holds one (argmax picks it)
    dead = ~np.isfinite(best)
    if dead.any():
        raise InputError(f"scores: rows {np.flatnonzero(dead).tolist()} have no finite maximum (every token masked "
                         "by the generation parameters, NaN, or +inf scores); cannot decode")
    return idx.astype(np.int64)


def sample_tokens(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """scores [b, V] float32 -> [b] int64: one draw per row from softmax(scores), -inf = probability 0.

    Inverse CDF with one uniform per row (computed in float64). Raises InputError for a row that is all -inf or
    holds NaN (e.g. every token was suppressed)."""
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"scores: expected a [batch, vocab] array, got shape {x.shape}")
    if np.isnan(x).any():
        raise InputError("scores: NaN in next-token scores; cannot sample")
    m = x.max(axis=1, keepdims=True)
    dead = ~np.isfinite(m[:, 0]) | (m[:, 0] == np.inf)
    if dead.any():
        rows = np.nonzero(dead)[0].tolist()
        raise InputError(f"scores: rows {rows} have no finite maximum (every token masked by the generation "
                         "parameters, or +inf logits); cannot sample")
    cdf = np.cumsum(np.exp(x - m), axis=1)
    u = rng.random(x.shape[0]) * cdf[:, -1]
    idx = np.argmax(cdf > u[:, None], axis=1)  # first index whose cdf exceeds u: always a token with mass > 0
    return idx.astype(np.int64)


class LogitsProcessor:
    """Base class: ``__call__(input_ids [b, t] int64, scores [b, V] float32) -> [b, V] float32``."""

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class ProcessorList(list):
    """Applies its processors in order: ``(ids [b, t], scores [b, V]) -> [b, V] float32``."""

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float32)
        input_ids = np.asarray(input_ids, dtype=np.int64)
        for p in self:
            scores = p(input_ids, scores)
        return scores


# ---------------------------------------------------------------------------------------------------- processors
class SequenceBiasProcessor(LogitsProcessor):
    """Adds a bias to the last token of each biased sequence: always for a one-token sequence, and for a longer one
    in the rows whose last ids equal the sequence minus its last token (transformers' SequenceBiasLogitsProcessor;
    a sequence longer than the ids so far is skipped). A bias of -inf bans the token there. [b,t],[b,V] -> [b,V]

    ``sequence_bias``: {tuple of ids: bias} or [[[ids], bias], ...] (``generation_config.sequence_bias_items``)."""

    def __init__(self, sequence_bias: Any):
        self.sequence_bias = sequence_bias_items(sequence_bias)
        single = {ids[0]: b for ids, b in self.sequence_bias.items() if len(ids) == 1}
        self._single_ids = np.asarray(list(single), dtype=np.int64)       # [s]
        self._single_bias = np.asarray(list(single.values()), np.float32)  # [s]
        self._multi = [(np.asarray(ids[:-1], np.int64), ids[-1], np.float32(b))
                       for ids, b in self.sequence_bias.items() if len(ids) > 1]
        self._checked_vocab = -1

    def __call__(self, input_ids, scores):
        vocab, t = scores.shape[1], input_ids.shape[1]
        if self._checked_vocab != vocab:  # ids past the vocabulary: an error, as in transformers
            big = sorted({i for ids in self.sequence_bias for i in ids if i >= vocab})
            if big:
                raise ParameterError("sequence_bias", f"token ids {big[:20]} are out of the vocabulary; must be "
                                                      f"< {vocab}")
            self._checked_vocab = vocab
        bias = np.zeros_like(scores)  # [b, V] float32
        bias[:, self._single_ids] = self._single_bias  # one-token sequences: every row, every step
        for prefix, last, b in self._multi:  # longer sequences: the rows about to complete them
            if len(prefix) + 1 > t:
                continue
            match = np.all(input_ids[:, t - len(prefix):] == prefix, axis=1)  # [b]
            bias[:, last] += np.where(match, b, np.float32(0))
        return (scores + bias).astype(np.float32, copy=False)


class RepetitionPenaltyProcessor(LogitsProcessor):
    """Tokens present in input_ids: score < 0 -> score * penalty, else score / penalty. [b,t],[b,V] -> [b,V]"""

    def __init__(self, penalty: float):
        tiny = float(np.finfo(np.float32).tiny)
        if not _is_num(penalty) or not penalty >= tiny:  # NaN fails too; inf is transformers' too
            raise ParameterError("repetition_penalty", f"got {penalty!r}; must be a number >= {tiny:.3g} (float32's "
                                 "smallest normal: a smaller one is 0 for the float32 scores)")
        self.penalty = float(penalty)

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == 0:
            return scores.copy()
        score = np.take_along_axis(scores, input_ids, axis=1)
        p = np.float32(self.penalty)
        score = np.where(score < 0, score * p, score / p).astype(np.float32)
        out = scores.copy()
        np.put_along_axis(out, input_ids, score, axis=1)
        return out


class NoRepeatNGramProcessor(LogitsProcessor):
    """Bans tokens completing an n-gram already present in the row (prompt included). [b,t],[b,V] -> [b,V]"""

    def __init__(self, ngram_size: int):
        if not _is_int(ngram_size) or ngram_size <= 0:
            raise ParameterError("no_repeat_ngram_size", f"got {ngram_size!r}; must be an integer > 0")
        self.ngram_size = int(ngram_size)

    def __call__(self, input_ids, scores):
        n = self.ngram_size
        cur_len = input_ids.shape[1]
        out = scores.copy()
        if cur_len + 1 < n:
            return out
        for row in range(scores.shape[0]):
            toks = input_ids[row].tolist()
            prefix = tuple(toks[cur_len + 1 - n:cur_len])  # the last n-1 tokens
            banned = {toks[i + n - 1] for i in range(cur_len - n + 1) if tuple(toks[i:i + n - 1]) == prefix}
            if banned:
                out[row, sorted(banned)] = NEG_INF
        return out


class NoBadWordsProcessor(LogitsProcessor):
    """Bans bad words: single tokens always, multi-token words when the row ends with their prefix.
    [b,t],[b,V] -> [b,V]"""

    def __init__(self, bad_words_ids: Sequence[Sequence[int]], eos_token_id: Any = None):
        if (not isinstance(bad_words_ids, (list, tuple)) or len(bad_words_ids) == 0
                or not all(isinstance(w, (list, tuple)) and len(w) > 0 for w in bad_words_ids)
                or not all(_is_int(i) and i >= 0 for w in bad_words_ids for i in w)):
            raise ParameterError("bad_words_ids", f"got {bad_words_ids!r}; must be a non-empty list of non-empty "
                                                  "lists of token ids >= 0")
        words = [tuple(int(i) for i in w) for w in bad_words_ids]
        if eos_token_id is not None:  # transformers drops single-token bad words that are an EOS id
            eos = set(_token_ids("eos_token_id", eos_token_id))
            words = [w for w in words if not (len(w) == 1 and w[0] in eos)]
        self.bad_words_ids = list(dict.fromkeys(words))
        self._single = sorted({w[0] for w in self.bad_words_ids if len(w) == 1})
        self._multi = [w for w in self.bad_words_ids if len(w) > 1]
        self._checked_vocab = -1

    def __call__(self, input_ids, scores):
        vocab = scores.shape[1]
        if self._checked_vocab != vocab:
            big = sorted({i for w in self.bad_words_ids for i in w if i >= vocab})
            if big:
                raise ParameterError("bad_words_ids", f"token ids {big} are out of the vocabulary; must be < {vocab}")
            self._checked_vocab = vocab
        bias = np.zeros_like(scores)
        if self._single:
            bias[:, self._single] = NEG_INF
        t = input_ids.shape[1]
        for w in self._multi:
            if len(w) > t:
                continue
            match = np.all(input_ids[:, t - (len(w) - 1):] == np.asarray(w[:-1], dtype=input_ids.dtype), axis=1)
            bias[match, w[-1]] += NEG_INF
        return (scores + bias).astype(np.float32, copy=False)


class SuppressTokensProcessor(LogitsProcessor):
    """Sets the given tokens to -inf at every step. [b,t],[b,V] -> [b,V]"""

    def __init__(self, suppress_tokens: Iterable[int]):
        self.suppress_tokens = _token_ids("suppress_tokens", suppress_tokens)

    def __call__(self, input_ids, scores):
        return _banned(scores, self.suppress_tokens)


class SuppressTokensAtBeginProcessor(LogitsProcessor):
    """Sets the given tokens to -inf when input_ids has exactly begin_index columns. [b,t],[b,V] -> [b,V]"""

    def __init__(self, begin_suppress_tokens: Iterable[int], begin_index: int):
        self.begin_suppress_tokens = _token_ids("begin_suppress_tokens", begin_suppress_tokens)
        if not _is_int(begin_index) or begin_index < 0:
            raise ParameterError("begin_index", f"got {begin_index!r}; must be an integer >= 0")
        self.begin_index = int(begin_index)

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] != self.begin_index:
            return scores
        return _banned(scores, self.begin_suppress_tokens)


class MinLengthProcessor(LogitsProcessor):
    """EOS ids set to -inf while input_ids has fewer than min_length columns. [b,t],[b,V] -> [b,V]"""

    def __init__(self, min_length: int, eos_token_id: Any):
        if not _is_int(min_length) or min_length < 0:
            raise ParameterError("min_length", f"got {min_length!r}; must be an integer >= 0")
        self.min_length = int(min_length)
        self.eos_token_id = _token_ids("eos_token_id", eos_token_id)

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] >= self.min_length:
            return scores.copy()
        return _banned(scores, self.eos_token_id)


class MinNewTokensLengthProcessor(LogitsProcessor):
    """EOS ids set to -inf while fewer than min_new_tokens columns follow the prompt. [b,t],[b,V] -> [b,V]"""

    def __init__(self, prompt_length_to_skip: int, min_new_tokens: int, eos_token_id: Any):
        for name, v in (("prompt_length_to_skip", prompt_length_to_skip), ("min_new_tokens", min_new_tokens)):
            if not _is_int(v) or v < 0:
                raise ParameterError(name, f"got {v!r}; must be an integer >= 0")
        self.prompt_length_to_skip = int(prompt_length_to_skip)
        self.min_new_tokens = int(min_new_tokens)
        self.eos_token_id = _token_ids("eos_token_id", eos_token_id)

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_length_to_skip >= self.min_new_tokens:
            return scores.copy()
        return _banned(scores, self.eos_token_id)


class ForcedBOSProcessor(LogitsProcessor):
    """When input_ids has 1 column: every token -inf except bos (0). [b,t],[b,V] -> [b,V]"""

    def __init__(self, bos_token_id: int):
        if not _is_int(bos_token_id) or bos_token_id < 0:
            raise ParameterError("forced_bos_token_id", f"got {bos_token_id!r}; must be a token id >= 0")
        self.bos_token_id = int(bos_token_id)

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] != 1:
            return scores
        out = np.full_like(scores, NEG_INF)
        out[:, self.bos_token_id] = 0
        return out


class ForcedEOSProcessor(LogitsProcessor):
    """When input_ids has max_length - 1 columns: every token -inf except the EOS ids (0). [b,t],[b,V] -> [b,V]"""

    def __init__(self, max_length: int, eos_token_id: Any):
        if not _is_int(max_length) or max_length < 1:
            raise ParameterError("max_length", f"got {max_length!r}; must be an integer >= 1")
        self.max_length = int(max_length)
        self.eos_token_id = _token_ids("forced_eos_token_id", eos_token_id)

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] != self.max_length - 1:
            return scores
        out = np.full_like(scores, NEG_INF)
        out[:, self.eos_token_id] = 0
        return out


class InfNanRemoveProcessor(LogitsProcessor):
    """NaN -> 0, +inf -> float32 max, -inf -> float32 min. [b,t],[b,V] -> [b,V]"""

    def __call__(self, input_ids, scores):
        fi = np.finfo(np.float32)
        out = np.where(np.isnan(scores), np.float32(0), scores)
        out = np.where(scores == np.inf, fi.max, out)
        out = np.where(scores == -np.inf, fi.min, out)
        return out.astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------------------- warpers
class TemperatureWarper(LogitsProcessor):
    """scores / temperature. [b,t],[b,V] -> [b,V]"""

    def __init__(self, temperature: float):
        if not _is_num(temperature) or not temperature > 0:  # NaN fails too
            raise ParameterError("temperature", f"got {temperature!r}; must be a number > 0 "
                                                "(for greedy decoding set do_sample=False)")
        if np.float32(temperature) == 0:  # scores are float32: it would divide by zero
            raise ParameterError("temperature", f"got {temperature!r}, which is 0 in float32 (the scores' type); "
                                                "allowed: a number >= 1.4e-45, or do_sample=False for greedy")
        self.temperature = float(temperature)

    def __call__(self, input_ids, scores):
        with np.errstate(over="ignore"):  # a score past float32's range is refused by name below
            out = (scores / np.float32(self.temperature)).astype(np.float32, copy=False)
        if self.temperature < 1.0 and np.isposinf(out).any() and not np.isposinf(scores).any():
            peak = float(np.abs(scores[np.isposinf(out)]).max())
            raise ParameterError("temperature", f"got {self.temperature!r}: a score of {peak:.4g} (a logit or "
                                                "sequence bias that large?) divided by it passes float32's range "
                                                "(3.4e38); allowed: a larger temperature, or do_sample=False")
        return out


class TopKWarper(LogitsProcessor):
    """Keeps tokens scoring >= the k-th largest score (ties kept), the rest -inf. [b,t],[b,V] -> [b,V]"""

    def __init__(self, top_k: int, min_tokens_to_keep: int = 1, filter_value: float = -math.inf):
        if not _is_int(top_k) or top_k <= 0:
            raise ParameterError("top_k", f"got {top_k!r}; must be an integer > 0")
        self.top_k = max(int(top_k), _check_min_keep(min_tokens_to_keep))
        self.filter_value = np.float32(filter_value)

    def __call__(self, input_ids, scores):
        vocab = scores.shape[1]
        k = min(self.top_k, vocab)
        kth = np.partition(scores, vocab - k, axis=1)[:, vocab - k:vocab - k + 1]
        return np.where(scores < kth, self.filter_value, scores).astype(np.float32, copy=False)


class TopPWarper(LogitsProcessor):
    """Nucleus: removes the least likely tokens whose cumulative probability is <= 1 - top_p. [b,t],[b,V] -> [b,V]"""

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1, filter_value: float = -math.inf):
        if not _is_num(top_p) or math.isnan(top_p) or not 0 <= top_p <= 1:
            raise ParameterError("top_p", f"got {top_p!r}; must be a number in [0, 1]")
        self.top_p = float(top_p)
        self.min_tokens_to_keep = _check_min_keep(min_tokens_to_keep)
        self.filter_value = np.float32(filter_value)

    def __call__(self, input_ids, scores):
        order = np.argsort(scores, axis=1, kind="stable")  # ascending
        sorted_logits = np.take_along_axis(scores, order, axis=1)
        cum = _cumsum_like_torch(softmax(sorted_logits))
        remove = cum <= np.float32(1 - self.top_p)
        remove[:, -self.min_tokens_to_keep:] = False
        return np.where(_scatter_back(remove, order), self.filter_value, scores).astype(np.float32, copy=False)


class MinPWarper(LogitsProcessor):
    """Removes tokens with probability < min_p * (top token's probability). [b,t],[b,V] -> [b,V]"""

    def __init__(self, min_p: float, min_tokens_to_keep: int = 1, filter_value: float = -math.inf):
        if not _is_num(min_p) or math.isnan(min_p) or not 0 <= min_p <= 1:
            raise ParameterError("min_p", f"got {min_p!r}; must be a number in [0, 1]")
        self.min_p = float(min_p)
        self.min_tokens_to_keep = _check_min_keep(min_tokens_to_keep)
        self.filter_value = np.float32(filter_value)

    def __call__(self, input_ids, scores):
        probs = softmax(scores)
        top = probs.max(axis=1, keepdims=True)
        remove = probs < np.float32(self.min_p) * top
        order = np.argsort(-scores, axis=1, kind="stable")  # descending
        sorted_remove = np.take_along_axis(remove, order, axis=1)
        sorted_remove[:, :self.min_tokens_to_keep] = False
        return np.where(_scatter_back(sorted_remove, order), self.filter_value, scores).astype(np.float32,
                                                                                                copy=False)


class TypicalWarper(LogitsProcessor):
    """Locally typical sampling: keeps the tokens whose -log p is closest to the entropy, up to mass typical_p.
    [b,t],[b,V] -> [b,V]"""

    def __init__(self, mass: float = 0.9, min_tokens_to_keep: int = 1, filter_value: float = -math.inf):
        if not _is_num(mass) or math.isnan(mass) or not 0 < mass <= 1:
            raise ParameterError("typical_p", f"got {mass!r}; must be a number in (0, 1]")
        self.mass = float(mass)
        self.min_tokens_to_keep = _check_min_keep(min_tokens_to_keep)
        self.filter_value = np.float32(filter_value)

    def __call__(self, input_ids, scores):
        normalized = log_softmax(scores)
        p = np.exp(normalized)
        with np.errstate(invalid="ignore"):
            ent = -np.nansum(normalized * p, axis=1, keepdims=True, dtype=np.float32)
        shifted = np.abs(-normalized - ent)
        order = np.argsort(shifted, axis=1, kind="stable")
        sorted_scores = np.take_along_axis(shifted, order, axis=1)
        sorted_logits = np.take_along_axis(scores, order, axis=1)
        cum = _cumsum_like_torch(softmax(sorted_logits))
        last_ind = np.minimum((cum < np.float32(self.mass)).sum(axis=1), scores.shape[1] - 1)
        remove = sorted_scores > np.take_along_axis(sorted_scores, last_ind[:, None], axis=1)
        remove[:, :self.min_tokens_to_keep] = False
        return np.where(_scatter_back(remove, order), self.filter_value, scores).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------------------- builder
def build_processors(config: GenerationConfig, *, input_length: int, max_length: Optional[int] = None,
                     is_encoder_decoder: bool = False, vocab_size: Optional[int] = None,
                     logits_processor: Optional[Sequence[LogitsProcessor]] = None) -> ProcessorList:
    """Processors for ``config`` in transformers' ``_get_logits_processor`` order (see the module docstring).

    ``input_length``: columns of the ids the processors will first see (causal: prompt length incl. left padding;
    seq2seq: decoder input length, usually 1). ``max_length``: total max length used by ForcedEOS (default:
    ``config.lengths(input_length)[1]``). ``is_encoder_decoder`` is accepted for API symmetry; transformers' order
    does not depend on it. ``vocab_size``: when given, token-id parameters are checked against it up front. ``logits_processor``: extra
    processors (e.g. the structured-output mask) applied after the processors and before the warpers."""
    config.validate()
    if vocab_size is not None:
        config.check_vocab(vocab_size)
    min_length, default_max = config.lengths(input_length)
    if max_length is None:
        max_length = default_max
    eos = config.eos_token_ids or None
    procs = ProcessorList()
    c = config
    if c.sequence_bias is not None:
        procs.append(SequenceBiasProcessor(c.sequence_bias))
    if c.repetition_penalty is not None and c.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyProcessor(c.repetition_penalty))
    if c.no_repeat_ngram_size is not None and c.no_repeat_ngram_size > 0:
        procs.append(NoRepeatNGramProcessor(c.no_repeat_ngram_size))
    if c.bad_words_ids is not None:
        procs.append(NoBadWordsProcessor(c.bad_words_ids, eos))
    if eos is not None and min_length > 0:
        procs.append(MinLengthProcessor(min_length, eos))
    if eos is not None and c.min_new_tokens is not None and c.min_new_tokens > 0:
        procs.append(MinNewTokensLengthProcessor(input_length, c.min_new_tokens, eos))
    if c.forced_bos_token_id is not None:
        procs.append(ForcedBOSProcessor(c.forced_bos_token_id))
    if c.forced_eos_token_id is not None:
        procs.append(ForcedEOSProcessor(max_length, c.forced_eos_token_id))
    if c.suppress_tokens is not None:
        procs.append(SuppressTokensProcessor(c.suppress_tokens))
    if c.begin_suppress_tokens is not None:
        begin = input_length if (input_length > 1 or c.forced_bos_token_id is None) else input_length + 1
        procs.append(SuppressTokensAtBeginProcessor(c.begin_suppress_tokens, begin))
    procs.extend(logits_processor or [])
    if c.do_sample:
        keep = (len(eos) + 1 if eos is not None else 2) if c.num_beams > 1 else 1
        if c.temperature is not None and c.temperature != 1.0:
            procs.append(TemperatureWarper(c.temperature))
        if c.top_k is not None and c.top_k != 0:
            procs.append(TopKWarper(c.top_k, min_tokens_to_keep=keep))
        if c.top_p is not None and c.top_p < 1.0:
            procs.append(TopPWarper(c.top_p, min_tokens_to_keep=keep))
        if c.min_p is not None:
            procs.append(MinPWarper(c.min_p, min_tokens_to_keep=keep))
        if c.typical_p is not None and c.typical_p < 1.0:
            procs.append(TypicalWarper(c.typical_p, min_tokens_to_keep=keep))
    return procs
