"""Typed results: what generate, score, stream, next_token_distribution and embed return."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _short(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


@dataclass
class GenerationResult:
    """sequences [n, T] int64 (causal: prompt + new ids, left padded; seq2seq: decoder ids with the start token),
    text (decoded new tokens per row, cut at a stop string), finish_reasons ('eos' | 'length' | 'stop' per row),
    scores / logits (per step [n*beams, V] float32, when asked), sequences_scores [n] and beam_indices (beam search),
    constraint_satisfied (with json_schema / regex / choices / grammar: per row, does its new text up to EOS match
    the whole constraint; False for a row cut short, e.g. finish reason 'length'; None for an unconstrained row;
    the field is None when no row is constrained), speculation (with prompt_lookup_num_tokens / assistant_model: the
    run's SpeculationStats: forward passes after the prefill, proposed and accepted tokens; else None)."""

    sequences: np.ndarray
    text: list[str]
    finish_reasons: list[str]
    new_tokens: list[list[int]] = field(default_factory=list)
    scores: list[np.ndarray] | None = None
    logits: list[np.ndarray] | None = None
    sequences_scores: np.ndarray | None = None
    beam_indices: np.ndarray | None = None
    constraint_satisfied: list[bool | None] | None = None
    speculation: object | None = None

    def __repr__(self) -> str:
        rows = ", ".join(_short(t) for t in self.text[:3]) + (", ..." if len(self.text) > 3 else "")
        extra = f", steps={len(self.scores)}" if self.scores is not None else ""
        return (f"GenerationResult(n={len(self.text)}, shape={tuple(self.sequences.shape)}, "
                f"finish_reasons={self.finish_reasons}, text=[{rows}]{extra})")


@dataclass
class ScoringResult:
    """tokens: the scored ids per row; token_logprobs: log p(token | prefix) per scored token (float32);
    sequence_logprobs [n] float64: their sums."""

    tokens: list[list[int]]
    token_logprobs: list[np.ndarray]
    sequence_logprobs: np.ndarray

    def __repr__(self) -> str:
        vals = ", ".join(f"{v:.4f}" for v in self.sequence_logprobs[:4])
        return f"ScoringResult(n={len(self.tokens)}, sequence_logprobs=[{vals}{', ...' if len(self.tokens) > 4 else ''}])"


@dataclass
class EmbeddingResult:
    """embeddings [n, D] float32: one per input row, in order (``runtime/embedding.py``); token_counts: each row's
    tokens (special tokens included: what the model read); pooling: 'mean' | 'cls' | 'last'; normalize: True when
    each vector has unit length."""

    embeddings: np.ndarray
    token_counts: list[int]
    pooling: str
    normalize: bool

    def __repr__(self) -> str:
        return (f"EmbeddingResult(n={len(self.embeddings)}, dim={self.embeddings.shape[1]}, pooling={self.pooling!r}, "
                f"normalize={self.normalize}, tokens={sum(self.token_counts)})")


@dataclass
class StepResult:
    """One generated token of one row while streaming. `text` is the newly printable text (may be '' while
    the bytes of a multi-byte character are held back); `is_last` marks the row's final step."""

    step: int
    batch_index: int
    token_id: int
    text: str
    is_last: bool = False
    finish_reason: str | None = None

    def __repr__(self) -> str:
        return (f"StepResult(step={self.step}, batch_index={self.batch_index}, token_id={self.token_id}, "
                f"text={self.text!r}, is_last={self.is_last}, finish_reason={self.finish_reason!r})")


@dataclass
class TokenDistribution:
    """Top-k next tokens after a prompt: ids, their strings and their probabilities (descending)."""

    prompt: str
    token_ids: list[int]
    tokens: list[str]
    probs: list[float]

    def __repr__(self) -> str:
        body = ", ".join(f"{t!r}: {p:.4f}" for t, p in zip(self.tokens[:5], self.probs[:5]))
        return f"TokenDistribution(prompt={_short(self.prompt)}, top=[{body}{', ...' if len(self.tokens) > 5 else ''}])"

    def table(self) -> str:
        """A plain-text table: rank, token, id, probability."""
        lines = [f"{'rank':>4}  {'token':<20} {'id':>7}  prob"]
        for rank, (tid, tok, p) in enumerate(zip(self.token_ids, self.tokens, self.probs), 1):
            lines.append(f"{rank:>4}  {tok!r:<20} {tid:>7}  {p:.4f}")
        return "\n".join(lines)
