"""OpenAI's presence and frequency penalties as a logits processor (the runtime's processors follow transformers,
which has neither): for every token j already generated c[j] times (the prompt does not count),

    logits[j] -= c[j] * frequency_penalty + (c[j] > 0) * presence_penalty

applied to the raw logits before any other processor (OpenAI's definition; vLLM does the same).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import ParameterError


class PresenceFrequencyPenaltyProcessor:
    """ids [b, t] int64 (prompt first, ``prompt_length`` ids), scores [b, V] float32 -> [b, V] float32."""

    def __init__(self, presence_penalty: float, frequency_penalty: float, prompt_length: int):
        for name, v in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)):
            if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v) or not -2 <= v <= 2:
                raise ParameterError(name, f"got {v!r}; must be a number in [-2, 2]")
        if not isinstance(prompt_length, numbers.Integral) or prompt_length < 0:
            raise ParameterError("prompt_length", f"got {prompt_length!r}; must be an integer >= 0")
        self.presence_penalty, self.frequency_penalty = float(presence_penalty), float(frequency_penalty)
        self.prompt_length = int(prompt_length)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        new = np.asarray(input_ids)[:, self.prompt_length:]  # [b, n] generated ids
        out = np.array(scores, dtype=np.float32, copy=True)
        if new.shape[1] == 0:
            return out
        for row in range(len(out)):
            ids, counts = np.unique(new[row], return_counts=True)
            ok = ids < out.shape[1]
            ids, counts = ids[ok], counts[ok]
            out[row, ids] -= (counts * self.frequency_penalty + self.presence_penalty).astype(np.float32)
        return out

    def __repr__(self) -> str:
        return (f"PresenceFrequencyPenaltyProcessor(presence_penalty={self.presence_penalty}, "
                f"frequency_penalty={self.frequency_penalty}, prompt_length={self.prompt_length})")
