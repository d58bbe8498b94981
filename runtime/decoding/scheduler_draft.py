"""A draft model for the continuous-batching scheduler (scheduler.py): llama.cpp's server speculation with a draft
model (``llama-server -md``; onnxlm's ``serve --draft``) for a request that decodes alone.

``ServerDraft`` holds the draft model and the settings of every request's speculation, checked once: the draft is a
decoder-only onnxlm model with the model's vocabulary (``vocabulary_mismatch``: llama.cpp's check, the same token
texts; widths up to 128 apart, as padded vocabularies are: its scores are cut or padded to the model's ids); a round
drafts up to ``max_tokens`` tokens (llama.cpp's ``--draft-max``, 16), greedily from the draft's scores under the
request's logits processors, stopping after a token the draft gives less than ``p_min`` probability
(``--draft-p-min``, 0.75) or at EOS; a draft of fewer than ``min_tokens`` tokens (``--draft-min``, 0) is not checked
(the step runs plainly). The scheduler checks the draft in
one pass of the model exactly as it checks prompt lookup's proposals (scheduler_speculation.py: each position picked
by the request's own processors and random draws), so a request's tokens are the ones it gets without the draft.

``LoneDraft`` is one request's draft (candidates.py's ``DraftModel``): it holds no state until the request first
decodes alone (a request that never does costs no draft pass); then the draft prefills the request's ids but its
last one, and each later round feeds only the ids the draft does not hold (rolling back what the model did not
accept). A request may bring its own settings (``Request.draft``: llama.cpp's per-request ``speculative.n_max``,
``n_min``, ``p_min``; n_max 0: no draft). Its state goes with the request (the scheduler drops a finished request's
run). A request the draft cannot follow to its length limit (the draft's ``max_positions``) does not speculate.
"""
from __future__ import annotations

import numpy as np

from ..errors import ParameterError
from .candidates import _NONE, DraftModel, speculation_limit

DRAFT_MAX = 16      # llama.cpp's --draft-max default
DRAFT_MIN = 0       # llama.cpp's --draft-min default
DRAFT_P_MIN = 0.75  # llama.cpp's --draft-p-min default
MAX_SIZE_DIFFERENCE = 128  # llama.cpp's SPEC_VOCAB_MAX_SIZE_DIFFERENCE: padded vocabularies (Qwen 2.5's) differ so
CHECK_FROM = 5             # llama.cpp's SPEC_VOCAB_CHECK_START_TOKEN_ID: the first ids (specials) may differ


def vocabulary_mismatch(draft, model) -> str | None:
    """Why ``draft`` cannot draft for ``model``, or None: llama.cpp's ``common_speculative_are_compatible``: the
    logits' widths at most ``MAX_SIZE_DIFFERENCE`` apart, the same BOS and EOS ids, and every token text from id
    ``CHECK_FROM`` to the smaller vocabulary's end the same (where both have tokenizers)."""
    if abs(draft.vocab_size - model.vocab_size) > MAX_SIZE_DIFFERENCE:
        return (f"its vocabulary has {draft.vocab_size} ids, the model's {model.vocab_size} (more than "
                f"{MAX_SIZE_DIFFERENCE} apart); the draft must share the model's vocabulary")
    specials = [getattr(m, "manifest", {}).get("special_tokens", {}) for m in (draft, model)]
    for name in ("bos_token_id", "eos_token_id"):
        a, b = (s.get(name) for s in specials)
        if a is not None and b is not None and a != b:
            return f"its {name} is {a}, the model's {b}; the draft must share the model's vocabulary"
    if draft.tokenizer is None or model.tokenizer is None:
        return None
    texts = [_token_texts(m.tokenizer.tokenizer) for m in (draft, model)]
    n = min(len(texts[0]), len(texts[1]), draft.vocab_size, model.vocab_size)
    for i in range(CHECK_FROM, n):
        if texts[0][i] != texts[1][i]:
            return (f"its token {i} is {texts[0][i]!r}, the model's {texts[1][i]!r}; the draft must share the "
                    "model's vocabulary (the same token for every id)")
    return None


def _token_texts(tokenizer) -> list:
    # tokenizers.Tokenizer -> [text of id 0, 1, ...] (None where an id has no token)
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    out = [None] * (max(vocab.values(), default=-1) + 1)
    for text, i in vocab.items():
        out[i] = text
    return out


def conformed(logits: np.ndarray, width: int) -> np.ndarray:
    # [1, V_draft] float32 -> [1, width] float32: the draft's scores over the model's ids (cut, or padded with -inf:
    # ids the draft has no row for are never proposed)
    if logits.shape[-1] == width:
        return logits
    if logits.shape[-1] > width:
        return logits[..., :width]
    pad = np.full(logits.shape[:-1] + (width - logits.shape[-1],), -np.inf, logits.dtype)
    return np.concatenate([logits, pad], axis=-1)


def top_probability(scores: np.ndarray) -> float:
    """scores [V] float32 -> the largest softmax probability (1 / sum(exp(s - max)); 0 when every score is -inf)."""
    top = scores.max()
    if not np.isfinite(top):
        return 0.0
    return float(1.0 / np.exp(scores - top).sum())


class LoneDraft(DraftModel):
    """A request's draft: prefills lazily (see the module docstring); drafts under ``min_tokens`` are dropped."""

    def __init__(self, model, *, min_tokens: int, width: int, **settings):
        super().__init__(model, **settings)
        self.min_tokens, self.width = min_tokens, width  # width: the model's logits' (the draft's may differ)

    def propose(self, sequences: np.ndarray, active: np.ndarray):
        """sequences [1, t] int64, active [1] bool -> (candidates [1, k] int64, None)."""
        row, most = sequences[0], self._most(sequences[0])
        if most <= 0 or not active[0]:
            return _NONE
        if self.state is None:                                  # first round alone: hold the row but its last id
            held = sequences[:, :-1]                            # [1, t - 1] (its newest id is fed by _catch_up)
            self.start(held, np.ones_like(held))
        logits = conformed(self._catch_up(row), self.width)     # [1, V] the draft's logits after the row
        seq, tokens = sequences, []
        for i in range(most):                                   # greedy drafts under the request's processors
            scores = self.processors(seq, logits)[0]            # [V] processed draft scores
            token = int(np.argmax(scores))
            tokens.append(token)
            if token in self.eos or i == most - 1 or top_probability(scores) < self.threshold:
                break                                           # EOS, the round's length, or the draft unsure
            seq = np.append(seq, [[token]], axis=1)             # [1, t + i + 1]
            logits = conformed(self.state.advance(np.array([token], np.int64)), self.width)
            self.fed = np.append(self.fed, token)
        if len(tokens) < max(self.min_tokens, 1):
            return _NONE
        return np.asarray([tokens], np.int64), None


class ServerDraft:
    """The scheduler's draft model and its settings (see the module docstring)."""

    def __init__(self, draft, model, *, max_tokens: int = DRAFT_MAX, min_tokens: int = DRAFT_MIN,
                 p_min: float = DRAFT_P_MIN):
        if not all(hasattr(draft, a) for a in ("start", "vocab_size")) or draft.is_encoder_decoder:
            kind = "a seq2seq model" if getattr(draft, "is_encoder_decoder", False) else type(draft).__name__
            raise ParameterError("draft", f"got {kind}; the draft must be a decoder-only language model")
        if model.is_encoder_decoder:
            raise ParameterError("draft", "speculative decoding runs on decoder-only models; this is a seq2seq model")
        why = vocabulary_mismatch(draft, model)
        if why:
            raise ParameterError("draft", why)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= 64:
            raise ParameterError("draft_max", f"got {max_tokens!r}; allowed: an integer from 1 to 64")
        if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or not 0 <= min_tokens <= max_tokens:
            raise ParameterError("draft_min", f"got {min_tokens!r}; allowed: an integer from 0 to draft_max "
                                 f"({max_tokens})")
        if isinstance(p_min, bool) or not isinstance(p_min, (int, float)) or not 0.0 <= p_min <= 1.0:
            raise ParameterError("draft_p_min", f"got {p_min!r}; allowed: a number from 0 to 1")
        self.model, self.max_tokens, self.min_tokens, self.p_min = draft, max_tokens, min_tokens, float(p_min)
        self.target = model  # the model the draft drafts for
        self.width = model.vocab_size  # the model's logits' width: the draft's are conformed to it
        self.cap = speculation_limit(model, draft)  # a hybrid model's bounded rollback caps a round

    def shorter_context(self) -> str | None:
        """What a server's log says when the draft's context is shorter than the model's (a request whose prompt and
        max_tokens may outgrow the draft's then decodes without it), else None."""
        own, theirs = getattr(self.model, "max_positions", None), getattr(self.target, "max_positions", None)
        if own and theirs and own < theirs:
            return (f"the draft's context is {own} tokens, the model's {theirs}: a request whose prompt plus "
                    f"max_tokens can pass {own} tokens decodes without the draft")
        return None

    def proposer(self, req, processors, max_length: int) -> LoneDraft | None:
        """A request being admitted (decoder-only, one row: checked by the caller; ``processors`` without its
        constraint, whose ``ConstrainedProposer`` cuts the draft's proposals) -> its draft, or None where the draft's
        context is shorter than the request may grow."""
        limit = getattr(self.model, "max_positions", None)
        own = req.draft or {}                                  # the request's settings over these (checked by it)
        most = own.get("max_tokens", self.max_tokens)
        if (limit and max_length > limit) or most == 0:
            return None
        return LoneDraft(self.model, min_tokens=min(own.get("min_tokens", self.min_tokens), most),
                         width=self.width, num_tokens=most,
                         schedule="constant", threshold=own.get("p_min", self.p_min), max_length=max_length,
                         eos_token_ids=req.config.eos_token_ids, processors=processors, do_sample=False, rng=None,
                         stop_check=None, cap=self.cap)

    def __repr__(self) -> str:
        return (f"ServerDraft(model={self.model!r}, max_tokens={self.max_tokens}, min_tokens={self.min_tokens}, "
                f"p_min={self.p_min})")
