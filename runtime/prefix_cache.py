"""Prefix caching: the keys/values of recent sequences kept, so that a new prompt that starts the same way is
prefilled only from where it differs (the server's repeated system prompts, and every new turn of a chat, whose
prompt is the last turn's prompt and answer plus the new message).

``PrefixCache`` holds snapshots (``state.snapshot(row)``: one row's keys/values of its held positions, ``name ->
[kv_heads, L, head_dim]`` float32 copies) keyed by the token ids they hold, least recently used first, bounded by
bytes. ``lookup(ids)`` finds the entry sharing the longest prefix with ``ids`` and returns how many of its positions
to reuse: at most ``len(ids) - 1``, so the prompt's last token is always fed and gives the first next-token logits.
The model resumes from the first ``p`` positions (``model.resume(kv, p, rest)``: fresh state, one forward pass over
the rest of the prompt, ``state.extend``), whose results equal a cold start's up to the float summation order of a
different pass shape. A snapshot also keeps the next-token logits after its last position where the scheduler has
them (a prompt after its prefill, a finished answer's last step), so the same prompt sent again resumes all of its
positions and needs no forward pass (``resume`` with no rest; "regenerate" in a chat page).

A model with recurrent layers beside its attention (LFM2's short convolutions) cannot resume from any prefix: the
recurrent state after position p is not in the keys/values. Its snapshots carry checkpoints, the recurrent state
after the lengths where it was taken (``state.checkpoint(row)``: a prompt after its prefill, a finished sequence;
``state.take_prompt_checkpoints(row)``: every 64th position inside a prompt, which the scheduler asks the model to
keep), and resume only at one of those (``Snapshot.checkpoints``; None for a model that resumes anywhere), as
llama.cpp's server does for such models: a chat's next turn and a prompt sent again find theirs, a shared system
prompt the one within 63 positions of its end.

The scheduler (runtime/decoding/scheduler.py) looks every admitted causal request up, stores each request's prompt
after its prefill and, when a one-row request finishes, its whole sequence (prompt + answer), so the next turn of a
chat finds both. Seq2seq models are not cached (their decoder starts from one token).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from .errors import ParameterError


@dataclass
class Snapshot:
    """Token ids [L], their keys/values (name -> [kv_heads, L, head_dim] float32: copies, or views of a dropped
    state's buffers) and the next-token logits known after some of its prefixes (length -> [V] float32: a prompt's,
    after its prefill; the whole sequence's): a prompt sent again exactly (a retry, "regenerate") needs no forward
    pass."""

    ids: np.ndarray
    kv: dict
    logits: dict = field(default_factory=dict)
    owner: object = None  # the dropped one-row decoding state whose buffers ``kv`` views, until lent out once
    # length -> the recurrent state after that many ids (name -> array; LFM2's convolution states), the only
    # lengths it resumes at; None: a model whose keys/values alone resume it at any length
    checkpoints: dict | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held: each array's own, or once the whole buffer block that views share."""
        blocks = {id(a.base if a.base is not None else a): (a.base if a.base is not None else a).nbytes
                  for a in self.kv.values()}
        held = sum(_state_bytes(c) for c in (self.checkpoints or {}).values())
        return int(sum(blocks.values()) + self.ids.nbytes + sum(v.nbytes for v in self.logits.values()) + held)

    def resumable(self, shared: int, limit: int) -> int:
        """How many of its positions a prompt sharing ``shared`` of its ids may resume from, at most ``limit``: any
        length, or the longest checkpoint within both (0: none)."""
        reach = min(shared, limit)
        if self.checkpoints is None:
            return reach
        return max((n for n in self.checkpoints if n <= reach), default=0)

    def state_at(self, reuse: int) -> dict:
        """What ``model.resume`` takes to continue after ``reuse`` positions: the keys/values, and the recurrent
        state there where the model has one (its checkpoint)."""
        return self.kv if self.checkpoints is None else {**self.kv, **self.checkpoints[reuse]}

    def within(self, reuse: int) -> dict:
        """The recurrent states after lengths up to ``reuse`` ({length: state}; {} without checkpoints): a prompt
        resumed from this entry keeps them in its own entry too."""
        return {n: c for n, c in (self.checkpoints or {}).items() if n <= reuse}


def _state_bytes(state: dict) -> int:
    """A checkpoint (name -> array) -> its bytes."""
    return sum(a.nbytes for a in state.values())


def feed_rest(state, rest) -> np.ndarray | None:
    """A one-row decoding state holding a prompt's reused positions, rest [k] ids of the prompt after them -> the
    next-token logits [1, V] after the last (one ``extend`` pass, the head on its last position only), or None for
    k = 0 (whoever resumed all positions holds those logits)."""
    rest = np.asarray(rest, dtype=np.int64).reshape(1, -1)
    return state.extend(rest, last_only=True, prompt=True)[:, -1] if rest.shape[1] else None


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
        """ids [t] -> (the snapshot sharing the longest prefix, positions of it to reuse), or (None, 0); counts a
        hit or a miss and marks the snapshot recently used. Reuse is at most t - 1 (the last token is fed for the
        next-token logits), or t from a snapshot that starts with these ids and holds the logits after them; a
        snapshot with checkpoints resumes at the longest of them within that."""
        best, reuse = self._best(ids)
        if best is None:
            self.misses += 1
            return None, 0
        self.entries.move_to_end(best)
        self.hits += 1
        self.reused_tokens += reuse
        return self.entries[best], reuse

    def peek(self, ids) -> int:
        """The positions ``lookup`` would reuse for ids [t], without counting a hit or a miss or marking anything
        used (the scheduler's admission asks how much of a prompt is left to compute)."""
        return self._best(ids)[1]

    def _best(self, ids) -> tuple[bytes | None, int]:
        """ids [t] -> (the key of the entry sharing the longest resumable prefix, positions to reuse), or (None, 0)."""
        ids = np.asarray(ids, dtype=np.int64)
        best, reuse = None, 0
        for key, snap in self.entries.items():
            p = common_prefix(ids, snap.ids)
            p = snap.resumable(p, len(ids) if p == len(ids) and p in snap.logits else len(ids) - 1)
            if p > reuse:
                best, reuse = key, p
        return best, reuse

    def covers(self, ids) -> bool:
        """Is there an entry whose ids start with these (marked recently used)? It serves every lookup an entry of
        ``ids`` would (one with checkpoints, once ``attach_logits`` has added the one after these ids, as it does
        where it fits), so callers skip snapshotting them (a repeated prompt whose answer is held, a one-token
        answer's prompt)."""
        return self._covering(ids) is not None

    def _covering(self, ids) -> Snapshot | None:
        ids = np.asarray(ids, dtype=np.int64)
        for key, snap in reversed(self.entries.items()):
            if len(snap.ids) >= len(ids) and common_prefix(ids, snap.ids) == len(ids):
                self.entries.move_to_end(key)
                return snap
        return None

    def put(self, ids, kv: dict, logits: np.ndarray | None = None, owner=None, first: int | None = None,
            checkpoint: dict | None = None, inside: dict | None = None) -> None:
        """Store the keys/values ``kv`` (name -> [kv_heads, L, head_dim]) of ids [L] and, if given, the next-token
        logits [V] after them, unless an entry covers them; entries whose ids are a prefix of these are superseded
        (this one serves every lookup they would, and takes their logits), then the least recently used others go
        until the cache fits ``max_bytes``. ``owner``: the dropped one-row state whose buffers ``kv`` views
        (``lend``). Views of a buffer block count the whole block: they are kept only where that fits beside the
        entries that stay; else a copy of the held positions is stored (no state to lend). The size, logits
        included, is checked before anything is dropped: where the entry with all those logits does not fit alone,
        it keeps the logits after its first ``first`` ids (a finished answer's prompt: a "regenerate" sends it
        again), then after its longest prefixes, while they fit; one that cannot fit even without logits is not
        kept and the cache stays as it was. The entry stored is never evicted by its own ``put``. ``checkpoint``: the
        recurrent state after these ids (name -> array) of a model that resumes only at checkpoints; ``inside``:
        such states after shorter prefixes ({length: state}: a prompt's pass kept them); the entry takes those of
        the entries it supersedes too (where not all fit: the longest first)."""
        if not self.enabled:
            return
        ids = np.asarray(ids, dtype=np.int64).copy()
        if len(ids) < 2 or self.covers(ids):
            return
        superseded = [k for k, s in self.entries.items()
                      if len(s.ids) <= len(ids) and common_prefix(s.ids, ids) == len(s.ids)]
        merged, checkpoints = {}, None if checkpoint is None else {}
        for k in superseded:  # the logits (and recurrent states) after their prefixes hold for this one
            merged.update(self.entries[k].logits)
            if checkpoints is not None:
                checkpoints.update(self.entries[k].checkpoints or {})
        if logits is not None:
            merged[len(ids)] = logits
        if checkpoint is not None:
            checkpoints.update({n: state for n, state in (inside or {}).items() if 0 < n < len(ids)})
            checkpoints[len(ids)] = checkpoint
        snap = Snapshot(ids, kv, merged, owner, checkpoints)
        staying = self.bytes - sum(self.entries[k].nbytes for k in superseded)
        if staying + snap.nbytes > self.max_bytes and any(a.base is not None for a in kv.values()):
            snap = Snapshot(ids, {name: np.array(a) for name, a in kv.items()}, merged,
                            checkpoints=checkpoints)  # the held positions only
        if snap.nbytes > self.max_bytes:  # the logits (and checkpoints) that fit, most likely asked for first
            snap.logits, snap.checkpoints = {}, None if checkpoints is None else {}
            room = self.max_bytes - snap.nbytes
            for n in sorted(set(merged) | set(checkpoints or ()), key=lambda n: (n != first, -n)):
                if checkpoints is not None:  # a length resumes only with its checkpoint: that first
                    held = checkpoints.get(n)
                    if held is None or _state_bytes(held) > room:
                        continue
                    snap.checkpoints[n], room = held, room - _state_bytes(held)
                if n in merged and merged[n].nbytes <= room:
                    snap.logits[n], room = merged[n], room - merged[n].nbytes
            if snap.nbytes > self.max_bytes or snap.checkpoints == {}:  # (no checkpoint: never resumed)
                return
        for k in superseded:
            self.bytes -= self.entries.pop(k).nbytes
        key = ids.tobytes()
        self.entries[key] = snap
        self.bytes += snap.nbytes
        self._evict(keep=key)

    def lend(self, snap: Snapshot, reuse: int):
        """The dropped one-row state behind ``snap`` (its keys/values are views of that state's buffers), for a
        request to decode on from ``reuse`` of its positions without a copy, or None (copies, lent already, or a
        recurrent state that cannot roll back there: an entry with checkpoints lends only at its whole length, its
        state keeping none of its rollback states, ``forget_rollback``). The
        entry is cut to those ``reuse`` positions, which the borrower never writes (a state writes only past its
        length), and is not lent again. Not for a share under half the entry (None: the borrower copies those few
        positions): a request sharing only a BOS or a system prompt with a long conversation's entry would cut it
        to that share, and the conversation's next turn would find nothing."""
        if snap.checkpoints is not None and reuse != len(snap.ids):
            return None
        if 2 * reuse < len(snap.ids):
            return None
        state, snap.owner = snap.owner, None
        if state is None:
            return None
        count = len(snap.ids) - reuse  # the state holds the entry's positions
        if count:
            before = snap.nbytes  # what the cache counted for it
            del self.entries[snap.ids.tobytes()]
            snap.ids, snap.kv = snap.ids[:reuse], {n: a[:, :reuse] for n, a in snap.kv.items()}
            snap.logits = {n: v for n, v in snap.logits.items() if n <= reuse}  # (checkpoints: never cut)
            if snap.ids.tobytes() in self.entries:  # an entry of exactly these ids already: this one goes
                self.bytes -= before
            else:
                self.entries[snap.ids.tobytes()] = snap
                self.bytes += snap.nbytes - before
        state.rollback(np.array([count], np.int64))
        return state

    def return_state(self, ids, kv: dict, owner) -> None:
        """A lent state dropped again holding exactly an entry's ids, whose keys/values ``kv`` view the same
        buffers as the entry's (a prompt sent again and answered in one token): the entry may lend it again."""
        snap = self.entries.get(np.asarray(ids, dtype=np.int64).tobytes())
        same_block = snap is not None and next(iter(snap.kv.values())).base is next(iter(kv.values())).base
        if same_block and snap.owner is None:
            snap.owner = owner

    def attach_logits(self, ids, logits: np.ndarray, checkpoint: dict | None = None,
                      inside: dict | None = None) -> None:
        """The next-token logits [V] after ids [L] (and ``checkpoint``, the recurrent state there, for an entry that
        keeps them, with ``inside``: those after shorter prefixes, ``put``'s), kept with an entry that starts with
        these ids (unless that entry would then exceed ``max_bytes`` alone; other entries may go)."""
        snap = self._covering(ids)
        if snap is None or (snap.checkpoints is not None and checkpoint is None):
            return  # (logits without their checkpoint: never resumed there)
        def add(held: dict, n: int, value) -> None:  # into the entry where it fits alone
            size = _state_bytes(value) if isinstance(value, dict) else value.nbytes
            if n not in held and snap.nbytes + size <= self.max_bytes:
                held[n] = value
                self.bytes += size

        if snap.checkpoints is not None:  # the checkpoint after these ids, then their logits, then the marks
            add(snap.checkpoints, len(ids), checkpoint)
        if snap.checkpoints is None or len(ids) in snap.checkpoints:
            add(snap.logits, len(ids), logits)
        for n, state in sorted((inside or {}).items(), reverse=True) if snap.checkpoints is not None else ():
            if 0 < n < len(ids):  # the longest first
                add(snap.checkpoints, n, state)
        self._evict(keep=snap.ids.tobytes())

    def _evict(self, keep: bytes | None = None) -> None:
        """The least recently used entries but ``keep`` (an entry just stored or grown, which fits alone) go until
        the cache fits ``max_bytes``."""
        for key in [k for k in self.entries if k != keep]:
            if self.bytes <= self.max_bytes:
                break
            self.bytes -= self.entries.pop(key).nbytes

    def stats(self) -> dict:
        return {"prefix_cache_hits": self.hits, "prefix_cache_misses": self.misses,
                "prefix_cache_reused_tokens": self.reused_tokens, "prefix_cache_entries": len(self.entries),
                "prefix_cache_bytes": self.bytes}
