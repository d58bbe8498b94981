"""The KV cache: the past key/value tensors fed to each decoder step, keyed by input name.

Names follow Optimum: inputs `past_key_values.{i}.key|value` (decoder-only) or
`past_key_values.{i}.decoder|encoder.key|value` (seq2seq); outputs `present.{...}` with the same suffix.
Every tensor is [batch, kv_heads, length, head_dim] (np.ndarray on the CPU, OrtValue on CUDA).
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from ..device_gather import gather_rows

PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."


def past_input_names(input_names) -> list[str]:
    """All past-KV input names of a graph, in layer order."""
    return [n for n in input_names if n.startswith(PAST_PREFIX)]


def present_to_past(name: str) -> str:
    """'present.3.decoder.key' -> 'past_key_values.3.decoder.key'."""
    return PAST_PREFIX + name[len(PRESENT_PREFIX):]


def take_rows(value, rows: np.ndarray):
    """value [b, ...] (np.ndarray or OrtValue), rows [n] int64 -> [n, ...] of the same kind; OrtValues stay on
    their device (a Gather graph there, runtime/device_gather.py), numpy arrays use one numpy gather."""
    return gather_rows(value, rows) if isinstance(value, ort.OrtValue) else value[rows]


class KVCache:
    """Past tensors by input name; `update` takes a step's presents, `select` reorders batch rows."""

    def __init__(self, tensors: dict):
        self.tensors = tensors  # name -> [b, heads, length, head_dim]

    @classmethod
    def empty(cls, names: list[str], batch: int, kv_heads: int, head_dim: int, dtype) -> "KVCache":
        """names -> zero-length past: each [batch, kv_heads, 0, head_dim] of dtype."""
        return cls({n: np.zeros((batch, kv_heads, 0, head_dim), dtype=dtype) for n in names})

    def update(self, outputs: dict, only: str | None = None) -> None:
        """Replace past tensors by the step's presents (optionally only names containing `only`, e.g. '.decoder.')."""
        for name, value in outputs.items():
            if name.startswith(PRESENT_PREFIX) and (only is None or only in name):
                self.tensors[present_to_past(name)] = value

    def select(self, rows: np.ndarray) -> None:
        """rows [b'] int64: keep/duplicate/reorder batch rows of every tensor ([b, ...] -> [b', ...]); on CUDA
        the cache never visits the host (see take_rows)."""
        rows = np.asarray(rows, dtype=np.int64)
        for name, value in self.tensors.items():
            self.tensors[name] = take_rows(value, rows)
