"""Freed KV buffer mappings kept resident for the next buffers of the same size (the server's engine turns it on).

Fresh KV buffers are a fresh anonymous mapping (``kv_buffers.mapped_buffers``), whose pages fault in one by one as a
step first writes them: ~4 µs a page on the machine of docs/benchmarks.md, so a request resuming 1,000 cached
SmolLM2 positions (a 47 MB buffer set) spent ~50 ms faulting pages in against ~5 ms copying the keys/values. A server
sees the same few buffer sizes again and again (capacities double from 256 positions), so a ``BufferPool`` keeps the
mappings of freed buffer sets, up to ``max_bytes``, and hands one back out for the next set of exactly that size: its
pages are resident, and it holds the keys/values of an earlier request past whatever the new owner writes, which the
graph never reads (``seqlens_k`` bounds every row).

A mapping returns to the pool when the last array viewing it is freed (``weakref.finalize`` on the array made over
it, which every view's ``.base`` points to; the pool holds the ``mmap`` object, never an array). Past ``max_bytes`` the
oldest kept mappings go; ``max_bytes = 0`` keeps none, which is what every model starts with.
"""
from __future__ import annotations

import mmap
import threading
import weakref
from collections import OrderedDict

import numpy as np

from ..errors import ParameterError


class BufferPool:
    """mmap objects of freed buffer sets, by size, oldest first; bounded by ``max_bytes``; counts reuses."""

    def __init__(self, max_bytes: int = 0):
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
            raise ParameterError("max_bytes", f"got {max_bytes!r}; must be an integer >= 0 (0: keep none)")
        self.max_bytes = max_bytes
        self._kept: OrderedDict[int, mmap.mmap] = OrderedDict()  # id(mapping) -> mapping, oldest first
        self.bytes = 0
        self.reused = self.fresh = 0
        self._lock = threading.Lock()  # a buffer set may be freed on any thread

    def block(self, nbytes: int, dtype, shape: tuple[int, ...]) -> np.ndarray:
        """-> an array of ``shape``/``dtype`` (``nbytes`` bytes) over a kept mapping of exactly that size (resident,
        stale contents), or a fresh private anonymous one (the kernel's zero pages until written); its mapping comes
        back to the pool when the array and every view of it are freed."""
        mapping = None
        with self._lock:
            for key, m in self._kept.items():
                if len(m) == nbytes:
                    mapping = self._kept.pop(key)
                    self.bytes -= nbytes
                    break
            self.reused += mapping is not None
            self.fresh += mapping is None
        if mapping is None:
            mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        owner = np.frombuffer(mapping, dtype)  # every view's .base (numpy collapses view chains to it)
        if self.max_bytes:
            weakref.finalize(owner, self._give_back, mapping)
        return owner.reshape(shape)

    def _give_back(self, mapping: mmap.mmap) -> None:
        """A freed block's mapping: kept (the oldest dropped past max_bytes) or left to be unmapped."""
        if len(mapping) > self.max_bytes:
            return
        with self._lock:
            self._kept[id(mapping)] = mapping
            self.bytes += len(mapping)
            while self.bytes > self.max_bytes:
                self.bytes -= len(self._kept.popitem(last=False)[1])

    def stats(self) -> dict:
        with self._lock:  # (read between _give_back's keep and its eviction, bytes is above max_bytes for a moment)
            return {"kv_pool_bytes": self.bytes, "kv_pool_reused": self.reused, "kv_pool_fresh": self.fresh}
