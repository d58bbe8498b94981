"""Preallocated KV buffers of a fused artifact (kv_layout "fused-gqa"): one numpy array per past name, each
[b, kv_heads, capacity, head_dim] float32, wrapped as an OrtValue that shares its memory.

The fused graph's GroupQueryAttention writes each step's keys/values into the buffer in place (the runtime binds the
same OrtValue as ``past_key_values.{i}.*`` input and ``present.{i}.*`` output), so a step never copies the cache.
A step that would run past the capacity first grows every buffer by doubling (one copy into a bigger buffer).

The buffers are views of one private anonymous memory mapping (`mapped_buffers`): a page becomes resident only when a
step writes keys/values into it, so the unused capacity costs no memory, and dropped buffers go straight back to the
kernel, or to the set's ``BufferPool`` when one keeps freed mappings for reuse (buffer_pool.py; the server turns it
on). A beam step's `select` gathers in place; one that changes the row count copies the held positions into another
mapping. From np.zeros a buffer under malloc's mmap threshold would come from the heap, zeroed whole (all resident)
and kept by malloc after it is freed: GPT-2 small, batch 8, 24 new tokens peaked 103 MiB above the loaded model with
np.zeros buffers, 18 MiB with the mapping.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .buffer_pool import BufferPool

NO_POOL = BufferPool(0)  # fresh mappings, unmapped when freed


class KVBuffers:
    """name -> [b, kv_heads, capacity, head_dim] float32 buffers (one shape for all) and their OrtValues; ``pool``
    gives the mappings of the sets this one grows or resizes into."""

    def __init__(self, arrays: dict[str, np.ndarray], pool: BufferPool | None = None):
        self.pool = pool or NO_POOL
        self._use(arrays)

    def _use(self, arrays: dict[str, np.ndarray]) -> None:
        """Hold ``arrays`` (new or grown buffers; what else the set holds stays)."""
        self.arrays = arrays
        self.values = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in arrays.items()}  # share the memory
        self._binding = None  # (session, its IOBinding with these buffers bound), made by binding()

    def binding(self, session):
        """An IOBinding of ``session`` with every buffer bound as both its past input and its present output (the
        step appends in place), made once per buffer set and session: the buffers never move between steps (a beam
        step reorders them in place; growing or resizing makes a new set), so a step binds only its own inputs."""
        if self._binding is None or self._binding[0] is not session:
            io = session.io_binding()
            io.bind_output("logits")  # the first output (run_in_place returns output 0), rebound every step
            for name, value in self.values.items():
                io.bind_ortvalue_input(name, value)
                io.bind_ortvalue_output("present." + name[len("past_key_values."):], value)
            self._binding = (session, io)
        return self._binding[1]

    @classmethod
    def fresh(cls, names: list[str], batch: int, kv_heads: int, capacity: int, head_dim: int,
              pool: BufferPool | None = None) -> "KVBuffers":
        """New buffers from ``pool`` (zeros, or an earlier set's stale values past what is written)."""
        return cls(mapped_buffers(names, (batch, kv_heads, capacity, head_dim), np.float32, pool), pool)

    @property
    def capacity(self) -> int:
        return next(iter(self.arrays.values())).shape[2]

    def ensure(self, length: int) -> None:
        """Make room for ``length`` positions: double the capacity until it fits (copies the held positions)."""
        if length <= self.capacity:
            return
        capacity = initial_capacity(length, self.capacity)
        first = next(iter(self.arrays.values()))
        grown = mapped_buffers(list(self.arrays), first.shape[:2] + (capacity,) + first.shape[3:], first.dtype,
                               self.pool)
        for name, a in self.arrays.items():
            grown[name][:, :, :a.shape[2]] = a
        self._use(grown)

    def row(self, r: int) -> "KVBuffers":
        """Buffers of batch row ``r`` alone ([1, kv_heads, capacity, head_dim] views sharing this set's memory): a
        step run on them writes into this set in place."""
        return KVBuffers({n: a[r:r + 1] for n, a in self.arrays.items()}, self.pool)

    @property
    def batch(self) -> int:
        return next(iter(self.arrays.values())).shape[0]

    def select(self, rows: np.ndarray, held: int | None = None) -> None:
        """rows [b'] int64: keep/duplicate/reorder batch rows of every buffer ([b, ...] -> [b', ...]). With
        ``held`` (the longest selected row) only the first ``held`` positions are copied.

        Same batch size (a beam step): rows are copied within the buffers in place (``reorder_in_place``; the
        OrtValues stay bound to the same memory; positions past ``held`` keep what they held). Another size: new
        buffers (from the pool), whose positions past ``held`` are never read."""
        if len(rows) == self.batch:
            reorder_in_place(self.arrays.values(), rows, held)
            return
        if held is None:
            self._use({n: a[rows] for n, a in self.arrays.items()})
            return
        first = next(iter(self.arrays.values()))
        out = mapped_buffers(list(self.arrays), (len(rows),) + first.shape[1:], first.dtype, self.pool)
        for n, a in self.arrays.items():
            out[n][:, :, :held] = a[rows, :, :held]
        self._use(out)

    def run_in_place(self, session, io, rows: int, kept: int, width: int | None) -> np.ndarray:
        """Run ``session`` on ``io`` (``binding(session)`` with the step's other inputs bound) -> the logits
        [rows, kept, width] float32 (a fresh array each step); the buffers are appended to in place. With the
        ``width`` known (the graph fixes V), the graph writes them straight into a new numpy array: no copy out of
        onnxruntime's output, and no ``io.get_outputs()``, which wraps every bound output (the 2L present buffers
        too: ~0.15 ms of a 5.5 ms SmolLM2 step)."""
        if width is None:
            io.bind_output("logits")
            session.run_with_iobinding(io)
            return io.get_outputs()[0].numpy()
        logits = np.empty((rows, kept, width), np.float32)
        io.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        session.run_with_iobinding(io)
        return logits


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


def mapped_buffers(names: list[str], shape: tuple[int, ...], dtype,
                   pool: BufferPool | None = None) -> dict[str, np.ndarray]:
    """names, shape -> name -> an array of ``shape``/``dtype``, all of them views of one mapping from ``pool``: a
    fresh one (the kernel's zero pages until written, unmapped once every view is freed), or a kept one of the same
    size (resident, holding an earlier set's values, back in the pool once every view is freed)."""
    size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if size == 0 or not names:
        return {n: np.zeros(shape, dtype) for n in names}
    block = (pool or NO_POOL).block(size * len(names), dtype, (len(names),) + tuple(shape))
    return {n: block[i] for i, n in enumerate(names)}


def initial_capacity(length: int, minimum: int) -> int:
    """Positions a buffer holds: ``minimum`` doubled until ``length`` fits (a fresh buffer, or a grown one)."""
    capacity = max(1, minimum)
    while capacity < length:
        capacity *= 2
    return capacity
