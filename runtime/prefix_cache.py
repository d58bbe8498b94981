"""Prefix caching: the keys/values of recent sequences kept, so that a new prompt that starts the same way is
prefilled only from where it differs (the server's repeated system prompts, and every new turn of a chat, whose
prompt is the last turn's prompt and answer plus the new message).

``PrefixCache`` holds snapshots (``state.snapshot(row)``: one row's keys/values of its held positions, ``name ->
[kv_heads, L, head_dim]`` float32 copies) keyed by the token ids they hold, least recently used first, bounded by
bytes. ``lookup(ids)`` finds the entry sharing the longest prefix with ``ids`` and returns how many of its positions
to reuse: at most ``len(ids) - 1``, so the prompt's last token is always fed and gives the first next-token logits.
The model resumes from the first ``p`` positions (``model.resume(kv, p, rest)``: fresh state, one forward pass over
the rest of the prompt, ``state.extend``), whose results equal a cold start's up to the float summation order of a
different pass shape.

The scheduler (runtime/decoding/scheduler.py) looks every admitted causal request up, stores each request's prompt
after its prefill and, when a one-row request finishes, its whole sequence (prompt + answer), so the next turn of a
chat finds both. Seq2seq models are not cached (their decoder starts from one token).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .errors import ParameterError


@dataclass
class Snapshot:
    """Token ids [L] and their keys/values: name -> [kv_heads, L, head_dim] float32 (copies)."""

    ids: np.ndarray
    kv: dict

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.kv.values()) + self.ids.nbytes)


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """a [n], b [m] int64 -> the length of their longest common prefix."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


class PrefixCache:
    """Snapshots keyed by their ids, least recently used evicted past ``max_bytes``; counts hits, misses, reused
    tokens."""

    def __init__(self, max_bytes: int):
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise ParameterError("prefix_cache_bytes", f"got {max_bytes!r}; must be an integer >= 0 (0: off)")
        self.max_bytes = max_bytes
        self.entries: OrderedDict[bytes, Snapshot] = OrderedDict()  # ids.tobytes() -> snapshot, oldest first
        self.bytes = 0
        self.hits = self.misses = self.reused_tokens = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def lookup(self, ids) -> tuple[Snapshot | None, int]:
        """ids [t] -> (the snapshot sharing the longest prefix, positions of it to reuse <= t - 1), or (None, 0);
        counts a hit or a miss and marks the snapshot recently used."""
        ids = np.asarray(ids, dtype=np.int64)
        best, reuse = None, 0
        for key, snap in self.entries.items():
            p = min(common_prefix(ids, snap.ids), len(ids) - 1)
            if p > reuse:
                best, reuse = key, p
        if best is None:
            self.misses += 1
            return None, 0
        self.entries.move_to_end(best)
        self.hits += 1
        self.reused_tokens += reuse
        return self.entries[best], reuse

    def holds(self, ids) -> bool:
        """Is there an entry of exactly these ids (marked recently used)? Callers skip snapshotting it again."""
        key = np.asarray(ids, dtype=np.int64).tobytes()
        if key in self.entries:
            self.entries.move_to_end(key)
            return True
        return False

    def put(self, ids, kv: dict) -> None:
        """Store the keys/values ``kv`` (name -> [kv_heads, L, head_dim]) of ids [L]; an entry whose ids are a prefix
        of these is dropped (this one serves every lookup it would), then the least recently used go until the
        cache fits ``max_bytes`` (a snapshot larger than that is not kept)."""
        if not self.enabled:
            return
        snap = Snapshot(np.asarray(ids, dtype=np.int64).copy(), kv)
        if snap.nbytes > self.max_bytes or len(snap.ids) < 2:
            return
        for key in [k for k, s in self.entries.items()
                    if len(s.ids) <= len(snap.ids) and common_prefix(s.ids, snap.ids) == len(s.ids)]:
            self.bytes -= self.entries.pop(key).nbytes
        self.entries[snap.ids.tobytes()] = snap
        self.bytes += snap.nbytes
        while self.bytes > self.max_bytes:
            self.bytes -= self.entries.popitem(last=False)[1].nbytes

    def stats(self) -> dict:
        return {"prefix_cache_hits": self.hits, "prefix_cache_misses": self.misses,
                "prefix_cache_reused_tokens": self.reused_tokens, "prefix_cache_entries": len(self.entries),
                "prefix_cache_bytes": self.bytes}
