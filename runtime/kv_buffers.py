"""Preallocated KV buffers of a fused artifact (kv_layout "fused-gqa"): one numpy array per past name, each
[b, kv_heads, capacity, head_dim] float32, wrapped as an OrtValue that shares its memory.

The fused graph's GroupQueryAttention writes each step's keys/values into the buffer in place (the runtime binds the
same OrtValue as ``past_key_values.{i}.*`` input and ``present.{i}.*`` output), so a step never copies the cache.
A step that would run past the capacity first grows every buffer by doubling (one copy into a bigger buffer).
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort


class KVBuffers:
    """name -> [b, kv_heads, capacity, head_dim] float32 buffers and their OrtValues."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self.values = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in arrays.items()}  # share the memory

    @classmethod
    def zeros(cls, names: list[str], batch: int, kv_heads: int, capacity: int, head_dim: int) -> "KVBuffers":
        return cls({n: np.zeros((batch, kv_heads, capacity, head_dim), np.float32) for n in names})

    @property
    def capacity(self) -> int:
        return next(iter(self.arrays.values())).shape[2]

    def ensure(self, length: int) -> None:
        """Make room for ``length`` positions: double the capacity until it fits (copies the held positions)."""
        if length <= self.capacity:
            return
        capacity = initial_capacity(length, self.capacity)
        grown = {}
        for name, a in self.arrays.items():
            b = np.zeros(a.shape[:2] + (capacity,) + a.shape[3:], a.dtype)
            b[:, :, :a.shape[2]] = a
            grown[name] = b
        self.__init__(grown)

    @property
    def batch(self) -> int:
        return next(iter(self.arrays.values())).shape[0]

    def select(self, rows: np.ndarray, held: int | None = None) -> None:
        """rows [b'] int64: keep/duplicate/reorder batch rows of every buffer ([b, ...] -> [b', ...]). With
        ``held`` (the longest selected row) only the first ``held`` positions are copied.

        Same batch size (a beam step): rows are copied within the buffers in place (``reorder_in_place``; the
        OrtValues stay bound to the same memory; positions past ``held`` keep what they held). Another size: new
        buffers, whose positions past ``held`` are zero (fresh pages, never touched by the copy)."""
        if len(rows) == self.batch:
            reorder_in_place(self.arrays.values(), rows, held)
            return
        if held is None:
            self.__init__({n: a[rows] for n, a in self.arrays.items()})
            return
        out = {}
        for n, a in self.arrays.items():
            b = np.zeros((len(rows),) + a.shape[1:], a.dtype)
            b[:, :, :held] = a[rows, :, :held]
            out[n] = b
        self.__init__(out)

    def run_in_place(self, session, io) -> np.ndarray:
        """Bind every buffer as both its past input and its present output (the step appends in place), run the
        session on ``io`` (the other inputs already bound) -> the first output, the logits [b, k, V] float32."""
        io.bind_output("logits")
        for name, value in self.values.items():
            io.bind_ortvalue_input(name, value)
            io.bind_ortvalue_output("present." + name[len("past_key_values."):], value)
        session.run_with_iobinding(io)
        return io.get_outputs()[0].numpy()


def reorder_plan(rows: np.ndarray) -> list[tuple[int, int]]:
    """rows [b] int64 (row i becomes old row rows[i]) -> in-place copy steps [(dst, src)], in order. ``(d, s)``,
    d >= 0: copy row s (s >= 0) or saved copy -1 - s (s < 0) into row d; ``(-1 - j, s)``: save row s as copy j
    (only to break a cycle, e.g. a swap). Rows already in place are skipped; a row is overwritten only after
    every step that reads it."""
    pending = {d: int(s) for d, s in enumerate(rows) if int(s) != d}  # dst -> src (a row, or a saved copy < 0)
    readers = np.bincount([s for s in pending.values()], minlength=len(rows)) if pending else None
    steps: list[tuple[int, int]] = []
    saved = 0
    while pending:
        ready = [d for d in pending if readers[d] == 0]  # rows nobody still has to read: overwrite them
        if not ready:  # only cycles are left: save one row, its readers read the copy
            d = next(iter(pending))
            steps.append((-1 - saved, d))
            for j, s in pending.items():
                if s == d:
                    pending[j] = -1 - saved
            readers[d], saved = 0, saved + 1
            continue
        for d in ready:
            s = pending.pop(d)
            steps.append((d, s))
            if s >= 0:
                readers[s] -= 1
    return steps


def reorder_in_place(arrays, rows: np.ndarray, held: int | None = None) -> None:
    """arrays: [b, h, T, d] each; rows [b] int64 -> each array's row i becomes its old row rows[i], in place (no
    new buffers: a row is copied only where it changes, cycles through one saved row). With ``held``, only
    positions [:held] of axis 2 are copied; the rest of a changed row keeps what it held."""
    steps = reorder_plan(rows)
    if not steps:
        return
    part = (slice(None), slice(None, held)) if held is not None else ()
    for a in arrays:
        saved = []
        for d, s in steps:
            if d < 0:
                saved.append(a[(s,) + part].copy())
            else:
                a[(d,) + part] = saved[-1 - s] if s < 0 else a[(s,) + part]


def initial_capacity(length: int, minimum: int) -> int:
    """Positions a buffer holds: ``minimum`` doubled until ``length`` fits (a fresh buffer, or a grown one)."""
    capacity = max(1, minimum)
    while capacity < length:
        capacity *= 2
    return capacity
