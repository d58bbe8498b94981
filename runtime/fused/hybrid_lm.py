"""LFM2's fused graph (``export/fused_lfm2.py``): GroupQueryAttention layers on KV buffers as ``FusedCausalLM``'s,
and short-convolution layers whose state is each row's last K - 1 convolved inputs (``conv_state.{i}`` [b, K - 1, D]).

``HybridBuffers`` carries those states beside the KV buffers: every pass binds them as inputs and writes the states
the graph gathers back into them in place (``row(r)``'s views write into the batch), so ``FusedState``'s steps,
``select`` and the prompt pass work unchanged. A KV cache forgets positions by its lengths alone; a convolution state
cannot, so each row also keeps its states before its last ``MAX_HISTORY`` positions, a prompt's excepted
(``HybridState.rollback``: speculative decoding's rejected drafts, a draft model's own; ``speculation_limit`` caps a
round's proposals so that its rollbacks stay within them). A snapshot cannot be resumed from an arbitrary prefix (the
state after position p is not kept): ``checkpoint(row)`` copies a row's states at its length, a prompt's pass keeps
those after every ``CHECKPOINT_EVERY``-th position too once ``keep_prompt_checkpoints()`` asks for them (the
scheduler does, with a prefix cache, around its own prompt passes: ``keeping_prompt_checkpoints``;
``take_prompt_checkpoints(row)``), and the prefix cache
(runtime/prefix_cache.py) resumes such a model only at the lengths it holds them for (``resume`` takes them beside
the keys/values): a chat's next turn, a prompt sent again, and within a multiple of ``CHECKPOINT_EVERY`` positions
the end of a shared start (a system prompt asked other questions).
"""
from __future__ import annotations

from collections import deque
from contextlib import contextmanager

import numpy as np

from ..errors import ParameterError
from .causal_lm import FusedCausalLM, FusedState, _checked_counts
from .kv_buffers import KVBuffers

MAX_HISTORY = 32  # positions a row can roll back (a speculative round's drafts and verify; LFM2-350M: 80 KB each)
# keep_prompt_checkpoints' default: a prompt's pass keeps each row's states after every 64th position (absolute), so
# the prefix cache resumes a prompt that shares a start with a cached one at most 63 positions before where they
# part; LFM2-350M: 80 KB each, ~5 % of the keys/values of those 64 positions
CHECKPOINT_EVERY = 64


class HybridBuffers(KVBuffers):
    """KV buffers plus ``conv``: name -> [b, K - 1, D] float32 states, ``history``: per row a deque of (length,
    {name: [K - 1, D]}), the row's states before its last positions (newest last), and ``marks``: per row {length:
    {name: [K - 1, D]}}, its states after every ``CHECKPOINT_EVERY``-th position of its prompt."""

    def __init__(self, arrays: dict, pool, conv: dict, history: list, record: bool = True,
                 marks: list | None = None):
        super().__init__(arrays, pool)
        self.conv, self.history = conv, history
        self.marks = [{} for _ in history] if marks is None else marks
        # whether the next pass keeps its states in the histories: not a prompt's pass (nothing rolls back into a
        # prompt; 32 states a row would be copied for nothing), every later one
        self.record = record

    def row(self, r: int) -> "HybridBuffers":
        """Row ``r`` alone: views of its KV buffers and states, and its own history deque (shared)."""
        return HybridBuffers({n: a[r:r + 1] for n, a in self.arrays.items()}, self.pool,
                             {n: c[r:r + 1] for n, c in self.conv.items()}, [self.history[r]], record=self.record,
                             marks=[self.marks[r]])

    def select(self, rows: np.ndarray, held: int | None = None) -> None:
        """rows [b'] int64: the KV buffers' rows (``KVBuffers.select``), the states', the histories' (copied:
        duplicated beams diverge) and the marks' (their states are never written)."""
        super().select(rows, held)
        self.conv = {n: c[rows] for n, c in self.conv.items()}
        self.history = [deque(self.history[r], maxlen=MAX_HISTORY) for r in rows]
        self.marks = [dict(self.marks[r]) for r in rows]

    def bind_states(self, io, past: np.ndarray, new: np.ndarray, width: int,
                    every: int | None = None) -> tuple[dict, np.ndarray]:
        """Bind the states and which window rows to gather for a pass of ``width`` new slots (row r's real ones:
        new[r]) -> (name -> the gathered states' array [b, m (K - 1), D], the offsets m: the states after those many
        new tokens [b, m], the last one the row's own new[r]). A later pass gathers those after its last tokens (for
        rollback), a prompt's those after each multiple of ``every`` among its positions (the marks; None: none)."""
        first = next(iter(self.conv.values()))
        b, taps, hidden = first.shape
        if self.record:
            span = min(width, MAX_HISTORY)  # the states after a pass's last tokens, for rollback
            steps = np.arange(width - span, width + 1) if width > 1 else np.array([width])  # [m]
            offsets = np.minimum(steps[None, :], new[:, None])  # [b, m]: a row with fewer new tokens repeats its last
        else:
            inside = [list(range(-int(p) % every or every, int(n), every)) if every else []
                      for p, n in zip(past, new)]  # the row's new tokens after which its length is a multiple
            m = 1 + max(map(len, inside))
            offsets = np.array([at + [int(n)] * (m - len(at)) for at, n in zip(inside, new)], np.int64)  # [b, m]
        gather = (offsets[:, :, None] + np.arange(taps)[None, None, :]).reshape(b, -1)  # [b, m (K - 1)]
        io.bind_cpu_input("conv_gather", gather.astype(np.int64))
        outs = {}
        for name, c in self.conv.items():
            io.bind_cpu_input(name, np.ascontiguousarray(c))
            out = np.empty((b, gather.shape[1], hidden), np.float32)
            io.bind_output("conv_states." + name[len("conv_state."):], "cpu", 0, np.float32, list(out.shape),
                           out.ctypes.data)
            outs[name] = out
        return outs, offsets

    def take_states(self, outs: dict, offsets: np.ndarray, past: np.ndarray, new: np.ndarray) -> None:
        """After the pass: each row's state after its new tokens into ``conv`` (in place); into its history the
        state it had before the pass and those after each of the pass's other gathered tokens (an extend's), in
        order. A prompt's pass (no row holds a position before it) keeps no history: nothing rolls back into a
        prompt."""
        b, m = offsets.shape
        taps = next(iter(self.conv.values())).shape[1]
        gathered = {n: o.reshape(b, m, taps, -1) for n, o in outs.items()}  # [b, m, K - 1, D]
        for r in range(b):
            if self.record:
                self.history[r].append((int(past[r]), {n: c[r].copy() for n, c in self.conv.items()}))
            seen = set()
            for j, at in enumerate(offsets[r, :-1].tolist()):
                if 0 < at < int(new[r]) and at not in seen:
                    seen.add(at)
                    kept = {n: g[r, j].copy() for n, g in gathered.items()}
                    if self.record:
                        self.history[r].append((int(past[r]) + at, kept))
                    else:
                        self.marks[r][int(past[r]) + at] = kept
        for name, g in gathered.items():
            self.conv[name][...] = g[:, -1]
        self.record = True


class HybridState(FusedState):
    """``FusedState`` whose rollback also restores the rows' convolution states from their histories."""

    def rollback(self, counts: np.ndarray) -> None:
        """counts [b] int64: forget each row's last counts[i] positions; its convolution state becomes the one kept
        before them (ParameterError when that is further back than the row's last ``MAX_HISTORY`` positions)."""
        counts = _checked_counts(counts, self.lengths)
        found = {}  # every row's kept state first: a refused row leaves the whole state as it was
        for r in np.flatnonzero(counts):
            target = int(self.lengths[r] - counts[r])
            found[r] = next((s for at, s in reversed(self.buffers.history[r]) if at == target), None)
            if found[r] is None:
                raise ParameterError("counts", f"row {r}: rolling back {int(counts[r])} positions goes further than "
                                     "this model's convolution states are kept (those of a prompt's positions are "
                                     f"not; of later ones, the last {MAX_HISTORY})")
        for r, kept in found.items():
            for name, c in self.buffers.conv.items():
                c[r] = kept[name]
        self.lengths = self.lengths - counts

    def extend(self, ids: np.ndarray, *, last_only: bool = False, prompt: bool = False) -> np.ndarray:
        """``FusedState.extend``; ``prompt``: the ids go on a prompt (a resumed or lent state's rest), so the pass
        keeps no rollback states but the prompt's marks, as a prompt's first pass."""
        if prompt:
            self.buffers.record = False
        try:
            return super().extend(ids, last_only=last_only)
        finally:  # the next pass keeps its rollback states again (a batch's per-row passes set only their views')
            self.buffers.record = True

    def forget_rollback(self) -> None:
        """``FusedState.forget_rollback``: every row's kept states dropped (up to ``MAX_HISTORY`` copies a row), its
        prompt's marks too."""
        for history, marks in zip(self.buffers.history, self.buffers.marks):
            history.clear()
            marks.clear()

    def checkpoint(self, row: int) -> dict:
        """row -> name -> [K - 1, D] float32: copies of the row's convolution states after its held positions, which
        ``resume`` takes beside the keys/values of ``snapshot(row)`` (they go on changing in place as it decodes)."""
        return {name: c[row].copy() for name, c in self.buffers.conv.items()}

    def take_prompt_checkpoints(self, row: int) -> dict:
        """row -> {length: name -> [K - 1, D]}: the row's convolution states after each multiple of the model's
        ``keep_prompt_checkpoints(every)`` inside its prompt (its prompt's passes kept them; ``resume`` takes one
        beside the first ``length`` positions of ``snapshot(row)``), handed over: the row keeps none after."""
        marks = self.buffers.marks[row]
        taken = dict(marks)
        marks.clear()
        return taken

    @classmethod
    def concat(cls, states: list["HybridState"]) -> "HybridState":
        """``FusedState.concat``, with the rows' states and histories."""
        if len(states) == 1:
            return states[0]
        merged = FusedState.concat(states)
        conv = {n: np.concatenate([s.buffers.conv[n] for s in states]) for n in states[0].buffers.conv}
        history = [deque(h, maxlen=MAX_HISTORY) for s in states for h in s.buffers.history]
        marks = [m for s in states for m in s.buffers.marks]
        buffers = HybridBuffers(merged.buffers.arrays, merged.buffers.pool, conv, history, record=True, marks=marks)
        return cls(states[0].model, buffers, merged.lengths)


class FusedHybridLM(FusedCausalLM):
    """A decoder-only model on LFM2's fused graph: GroupQueryAttention KV buffers and convolution states."""

    state_class = HybridState
    speculation_limit = MAX_HISTORY - 1  # tokens a speculative round proposes at most: its rollbacks stay in history
    prompt_checkpoint_every: int | None = None  # keep_prompt_checkpoints(): a prompt's pass keeps marks that often

    def keep_prompt_checkpoints(self, every: int | None = CHECKPOINT_EVERY) -> None:
        """From now on a prompt's pass keeps each row's convolution states after every ``every``-th position of it
        (``HybridState.take_prompt_checkpoints``): the prefix cache resumes a prompt that shares a start with a
        cached one there. Off by default (nothing else reads them); ``every=None`` turns it off again. The
        scheduler asks for them only around its own prompt passes (``keeping_prompt_checkpoints``)."""
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ParameterError("every", f"got {every!r}; must be an integer >= 1, or None (off)")
        self.prompt_checkpoint_every = every

    @contextmanager
    def keeping_prompt_checkpoints(self):
        """Within: prompt passes keep marks (``keep_prompt_checkpoints``) every ``prompt_checkpoint_every`` positions
        if that is set, else every ``CHECKPOINT_EVERY``; after: the setting as it was (the scheduler's prefill with
        a prefix cache: the model's other callers, ``generate`` and ``logits`` on it included, keep none)."""
        before = self.prompt_checkpoint_every
        self.prompt_checkpoint_every = before or CHECKPOINT_EVERY
        try:
            yield
        finally:
            self.prompt_checkpoint_every = before

    def _init_graphs(self) -> None:
        super()._init_graphs()
        self.conv_names = [n for n in self.decoder.inputs if n.startswith("conv_state.")]
        _, self.conv_taps, self.conv_width = self.decoder.inputs[self.conv_names[0]].shape  # [b, K - 1, D]

    def _fresh_buffers(self, rows: int, length: int) -> HybridBuffers:
        kv = super()._fresh_buffers(rows, length)
        conv = {n: np.zeros((rows, self.conv_taps, self.conv_width), np.float32) for n in self.conv_names}
        return HybridBuffers(kv.arrays, kv.pool, conv, [deque(maxlen=MAX_HISTORY) for _ in range(rows)], record=False)

    def empty_state(self, *, max_length: int = 0) -> HybridState:
        """``FusedCausalLM.empty_state``; its first ``extend`` keeps its states (the quality gate rolls back a
        one-token share's second token)."""
        state = super().empty_state(max_length=max_length)
        state.buffers.record = True
        return state

    def _run(self, ids: np.ndarray, past: np.ndarray, new: np.ndarray, keep: np.ndarray,
             buffers: HybridBuffers) -> np.ndarray:
        """``FusedCausalLM._run`` with the convolution states fed and updated in place."""
        io = buffers.binding(self.decoder.session)
        self._bind_step(io, ids, past, new, keep)
        outs, offsets = buffers.bind_states(io, past, new, ids.shape[1], self.prompt_checkpoint_every)
        logits = buffers.run_in_place(self.decoder.session, io, len(ids), keep.shape[1], self.logits_width)
        buffers.take_states(outs, offsets, past, new)
        return logits

    def resume(self, kv: dict, reuse: int, rest) -> tuple[HybridState, np.ndarray | None]:
        """``FusedCausalLM.resume``; ``kv`` also holds the convolution states after its first ``reuse`` positions
        (``state.checkpoint``: name -> [K - 1, D]; ``Snapshot.state_at``), else a ParameterError naming them. A
        resumed prompt's rest keeps no rollback history (as a prompt's pass); a state resumed whole keeps its next
        step's."""
        shape = (self.conv_taps, self.conv_width)
        wrong = [name for name in self.conv_names if np.shape(kv.get(name)) != shape]
        if wrong:
            got = "none" if wrong[0] not in kv else f"shape {list(np.shape(kv[wrong[0]]))}"
            raise ParameterError("kv", f"{wrong[0]!r}: {got}; a model with convolution layers (LFM2) resumes only "
                                 "with its convolution states after the reused positions (state.checkpoint(row)), "
                                 f"of shape {list(shape)} each")
        state, logits = super().resume(kv, reuse, rest)
        state.buffers.record = True
        return state, logits

    def _fill(self, buffers: HybridBuffers, kv: dict, reuse: int) -> None:
        super()._fill(buffers, kv, reuse)
        for name, c in buffers.conv.items():
            c[0] = kv[name]
