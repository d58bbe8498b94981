"""llama.cpp's sampler chain as logits processors: its penalties and its samplers in the order a request names them.

llama.cpp samples through a chain (``common/sampling.cpp``): the logit biases, then by default ``penalties``,
``top_k``, ``typ_p``, ``top_p``, ``min_p`` and last ``temperature`` (transformers divides by the temperature first:
with a temperature other than 1, top-p, min-p and typical-p keep other tokens there). ``sampler_chain`` builds that
chain in any order of those names from this runtime's warpers (``processors.py``), so a request to the server's
llama.cpp endpoint (``onnxlm/serve/llamacpp.py``) samples from llama.cpp's distribution. Each step is a processor
``(ids [b, t] int64, scores [b, V] float32) -> [b, V] float32``; a step whose parameter disables it in llama.cpp
(``top_k <= 0``, ``top_p >= 1``, ``min_p <= 0``, ``typical_p >= 1``) is left out; at ``temperature <= 0`` the
temperature step keeps only the top token (``KeepTop``), as llama.cpp's does.

The penalties (``PenaltiesProcessor``) are llama.cpp's, not transformers' or OpenAI's: they count the last
``penalty_last_n`` ids of the row, the prompt included (llama.cpp's server feeds the prompt to the sampler first), and
apply the repetition penalty and the frequency and presence penalties together.

``infill`` (``InfillProcessor``, llama.cpp's ``llama_sampler_infill``, which llama.vim and llama.vscode put last in
their chain for fill-in-the-middle) needs the vocabulary: ``sampler_chain(..., vocab=InfillVocab(...))``.

llama.cpp's other samplers (``dry``, ``xtc``, ``top_n_sigma``, mirostat) have no processor here: naming one is a
ParameterError (the server drops the names whose parameters leave them off, as llama.cpp's steps then do nothing).
"""
from __future__ import annotations

import bisect
import math
import numbers
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import ParameterError
from .processors import MinPWarper, TemperatureWarper, TopKWarper, TopPWarper, TypicalWarper

SAMPLERS = ("penalties", "top_k", "typ_p", "top_p", "min_p", "temperature", "infill")  # the steps built here
FLOAT32_MAX = float(np.finfo(np.float32).max)
TINY = 1e-9  # typical_p <= 0: the most typical token(s) alone
DEFAULT_ORDER = SAMPLERS[:-1]  # llama.cpp's default order (its dry, top_n_sigma and xtc steps, off by default, left out)


class PenaltiesProcessor:
    """llama.cpp's ``penalties`` step. For every token seen c > 0 times among the last ``penalty_last_n`` ids of a
    row (-1: all of them; 0: none), as llama.cpp's ``llama_sampler_penalties_apply``:

        logit = logit * repeat_penalty if logit <= 0 else logit / repeat_penalty
        logit -= c * frequency_penalty + presence_penalty

    ids [b, t] int64, scores [b, V] float32 -> [b, V] float32 (float32 arithmetic, as llama.cpp's)."""

    def __init__(self, penalty_last_n: int = 64, repeat_penalty: float = 1.0, frequency_penalty: float = 0.0,
                 presence_penalty: float = 0.0):
        if not isinstance(penalty_last_n, numbers.Integral) or isinstance(penalty_last_n, bool) or penalty_last_n < -1:
            raise ParameterError("repeat_last_n", f"got {penalty_last_n!r}; must be an integer >= -1 (-1: every id, "
                                                  "0: none)")
        for name, v, low in (("repeat_penalty", repeat_penalty, 0.0), ("frequency_penalty", frequency_penalty, None),
                             ("presence_penalty", presence_penalty, None)):
            if not isinstance(v, numbers.Real) or isinstance(v, bool) or not abs(v) <= FLOAT32_MAX or (
                    low is not None and not np.float32(v) > low):  # > 0 in float32, where it divides
                raise ParameterError(name, f"got {v!r}; must be a finite float32 number (|x| <= {FLOAT32_MAX:.3g})"
                                           + (" > 0" if low is not None else ""))
        self.penalty_last_n = int(penalty_last_n)
        self.repeat = np.float32(repeat_penalty)
        self.frequency, self.presence = np.float32(frequency_penalty), np.float32(presence_penalty)

    @property
    def active(self) -> bool:
        """Whether it changes anything (llama.cpp skips it otherwise)."""
        return self.penalty_last_n != 0 and (self.repeat != 1 or self.frequency != 0 or self.presence != 0)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        ids = np.asarray(input_ids)                                              # [b, t]
        out = np.array(scores, dtype=np.float32, copy=True)                      # [b, V]
        if not self.active or ids.shape[1] == 0:
            return out
        window = ids if self.penalty_last_n < 0 else ids[:, max(0, ids.shape[1] - self.penalty_last_n):]
        for row in range(len(out)):
            tokens, counts = np.unique(window[row], return_counts=True)
            ok = (tokens >= 0) & (tokens < out.shape[1])
            tokens, counts = tokens[ok], counts[ok].astype(np.float32)
            x = out[row, tokens]
            x = np.where(x <= 0, x * self.repeat, x / self.repeat)
            out[row, tokens] = x - (counts * self.frequency + self.presence)
        return out

    def __repr__(self) -> str:
        return (f"PenaltiesProcessor(penalty_last_n={self.penalty_last_n}, repeat_penalty={float(self.repeat)}, "
                f"frequency_penalty={float(self.frequency)}, presence_penalty={float(self.presence)})")


class KeepTop:
    """llama.cpp's temperature step at temperature <= 0: only the highest score stays (the first of equal ones), the
    rest -inf. ids [b, t], scores [b, V] float32 -> [b, V] float32."""

    def __call__(self, input_ids, scores: np.ndarray) -> np.ndarray:
        out = np.full_like(scores, -np.inf, dtype=np.float32)
        top = np.argmax(scores, axis=1)                                          # [b]
        out[np.arange(len(scores)), top] = scores[np.arange(len(scores)), top]
        return out

    def __repr__(self) -> str:
        return "KeepTop()"


@dataclass
class InfillVocab:
    """What llama.cpp's infill step reads of the vocabulary: ``piece(id)``, a token's bytes as
    ``token_to_piece(..., special=false)`` gives them (b"" for a control token); ``eog``, the end-of-generation ids;
    ``eot``, the end-of-turn id it falls back to (the first of ``eog`` where the vocabulary has none)."""

    piece: Callable[[int], bytes]
    eog: frozenset
    eot: int


class InfillProcessor:
    """llama.cpp's ``infill`` step (``llama_sampler_infill_apply``) on the tokens earlier steps left (finite scores),
    taken by descending score: where the end-of-generation tokens hold enough mass (3 * p_eog * n > p_text) only
    they stay; otherwise a token whose text starts another's gives its probability to the likelier of the two (the
    other leaves), non-EOG tokens under 0.2 leave, and after renormalising those under 1 / (non-EOG left + 1); no
    text token left -> the end-of-turn token alone (score 1). The tokens kept keep their scores (llama.cpp's next
    step, ``dist``, draws from the logits again). ids [b, t], scores [b, V] float32 -> [b, V] float32."""

    def __init__(self, vocab: InfillVocab):
        self.vocab = vocab
        self.eog = np.fromiter(vocab.eog, np.int64, len(vocab.eog))  # [e] int64

    def __repr__(self) -> str:
        return f"InfillProcessor(eog={sorted(self.vocab.eog)}, eot={self.vocab.eot})"

    def __call__(self, input_ids, scores: np.ndarray) -> np.ndarray:
        return np.stack([self._row(row) for row in scores]).astype(np.float32, copy=False)

    def _row(self, row: np.ndarray) -> np.ndarray:
        # [V] float32 -> [V] float32
        ids = np.flatnonzero(np.isfinite(row))
        if ids.size == 0:
            return row
        ids = ids[np.argsort(-row[ids], kind="stable")]                         # 1. llama.cpp's softmax sorts
        logit = row[ids].astype(np.float64)
        p = np.exp(logit - logit[0])
        p /= p.sum()
        eog = np.isin(ids, self.eog)                                             # [n] bool
        out = np.full_like(row, -np.inf)
        if 3 * p[eog].sum() * len(ids) > p[~eog].sum():                         # 2. mostly the end: EOG alone
            out[ids[eog]] = row[ids[eog]]
            return out
        alive = self._merge(ids, p)                                             # 3. merge common prefixes
        keep = alive & ((p >= 0.2) | eog)                                       # 4. drop the unlikely texts
        n_text = int((keep & ~eog).sum())
        if n_text == 0:
            out[self.vocab.eot] = 1.0
            return out
        p = p / p[keep].sum()
        keep &= (p >= 1.0 / (n_text + 1)) | eog                                 # 5. and again, renormalised
        out[ids[keep]] = row[ids[keep]]
        return out

    def _merge(self, ids: np.ndarray, p: np.ndarray) -> np.ndarray:
        """llama.cpp's pairwise loop (for i0, for i1: token i0's text a prefix of token i1's -> the less likely
        gives its probability to the other and leaves; i0 gone -> next i0), visiting only the pairs where a prefix
        holds (the same merges in the same order, without n^2 comparisons) -> alive [n] bool; p [n] updated."""
        pieces = [self.vocab.piece(int(i)) for i in ids]
        order = sorted(range(len(ids)), key=lambda k: pieces[k])
        ordered = [pieces[k] for k in order]
        alive = np.ones(len(ids), bool)
        for i0, a in enumerate(pieces):
            if not a or not alive[i0]:  # (llama.cpp's inner loop breaks at once for a token already merged away)
                continue
            j = bisect.bisect_left(ordered, a)
            longer = []
            while j < len(ordered) and ordered[j].startswith(a):
                longer.append(order[j])
                j += 1
            for i1 in sorted(longer):
                if not alive[i0]:
                    break
                if i1 == i0 or not alive[i1]:
                    continue
                dst, src = (i1, i0) if p[i1] > p[i0] else (i0, i1)
                p[dst] += p[src]
                p[src] = 0.0
                alive[src] = False
        return alive


def sampler_chain(samplers=DEFAULT_ORDER, *, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                  min_p: float = 0.05, typical_p: float = 1.0, min_keep: int = 0, penalty_last_n: int = 64,
                  repeat_penalty: float = 1.0, frequency_penalty: float = 0.0,
                  presence_penalty: float = 0.0, vocab: InfillVocab | None = None) -> list:
    """llama.cpp's samplers in the order of ``samplers`` (names of ``SAMPLERS``; a name twice runs twice, a name left
    out does not run) -> processors to apply in that order. Defaults: llama.cpp's. ``min_keep``: the fewest tokens
    top-k/top-p/min-p/typical-p keep (llama.cpp's; at least 1). ``temperature <= 0``: the temperature step keeps the
    top token alone (a later step cannot bring others back: decode greedily). ``vocab``: what ``infill`` reads of
    the vocabulary (``InfillVocab``; required where ``samplers`` names it)."""
    if isinstance(samplers, str) or not all(isinstance(s, str) for s in samplers):
        raise ParameterError("samplers", f"expected a list of sampler names, got {samplers!r:.80}")
    unknown = [s for s in samplers if s not in SAMPLERS]
    if unknown:
        raise ParameterError("samplers", f"{unknown[0]!r} is not one of {', '.join(SAMPLERS)}")
    if not isinstance(min_keep, numbers.Integral) or isinstance(min_keep, bool) or min_keep < 0:
        raise ParameterError("min_keep", f"got {min_keep!r}; must be an integer >= 0")
    for name, v in (("temperature", temperature), ("top_p", top_p), ("min_p", min_p), ("typical_p", typical_p)):
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v):
            raise ParameterError(name, f"got {v!r}; must be a finite number")
    if abs(temperature) > FLOAT32_MAX:
        raise ParameterError("temperature", f"got {temperature!r}; must be a finite float32 number")
    if not isinstance(top_k, numbers.Integral) or isinstance(top_k, bool):
        raise ParameterError("top_k", f"got {top_k!r}; must be an integer (<= 0: off)")
    if "infill" in samplers and vocab is None:
        raise ParameterError("samplers", "the infill sampler needs the model's vocabulary (vocab=InfillVocab(...))")
    keep = max(1, int(min_keep))
    penalties = PenaltiesProcessor(penalty_last_n, repeat_penalty, frequency_penalty, presence_penalty)
    # past their ranges llama.cpp's steps keep their min_keep most likely / most typical tokens, as these do
    steps = {"penalties": lambda: penalties if penalties.active else None,
             "top_k": lambda: TopKWarper(int(top_k), keep) if top_k > 0 else None,
             "typ_p": lambda: TypicalWarper(max(float(typical_p), TINY), keep) if typical_p < 1 else None,
             "top_p": lambda: TopPWarper(max(float(top_p), 0.0), keep) if top_p < 1 else None,
             "min_p": lambda: MinPWarper(min(float(min_p), 1.0), keep) if min_p > 0 else None,
             "temperature": lambda: TemperatureWarper(float(temperature)) if temperature > 0 else KeepTop(),
             "infill": lambda: InfillProcessor(vocab)}
    return [p for p in (steps[name]() for name in samplers) if p is not None]
