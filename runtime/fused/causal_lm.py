"""Decoder-only models exported with ``kv_layout="fused"`` (manifest ``"kv_layout": "fused-gqa"``; GPT-2 and the
Llama family): one graph with GroupQueryAttention whose KV cache lives in preallocated buffers that each step
appends to in place (runtime/fused/kv_buffers.py): a step never copies, concatenates or transposes the cache, so its cost
grows with the context only by the attention's own reads of the held keys/values.

The graph wants RIGHT-padded rows: ``start``/``logits`` take left-padded inputs like every model and re-pack each
row's attended tokens (mask 1) to the front; a token's position is its index in the re-packed row, which is
``cumsum(mask) - 1`` of the original row, as the plain graph's position_ids; a graph with a ``position_ids`` input
(GPT-2's learned positions; a rotary turned before GroupQueryAttention) is fed those. CPU only (numpy-backed buffers).
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError, ModelFileError, ParameterError
from ..plain.causal_lm import CausalLM
from ..plain.kv_cache import past_input_names
from ..prefix_cache import feed_rest
from .buffer_pool import BufferPool
from .kv_buffers import NO_POOL, KVBuffers, initial_capacity, mapped_buffers

KV_LAYOUT = "fused-gqa"


def repack_right(input_ids: np.ndarray, attention_mask: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """input_ids, attention_mask [b, t] -> ids [b, s] int64 with each row's attended tokens first (s = the longest
    row), lengths [b] int64."""
    lengths = attention_mask.sum(axis=1).astype(np.int64)
    s = max(int(lengths.max()), 1)
    ids = np.full((len(input_ids), s), pad_id, np.int64)
    for b, row in enumerate(input_ids):
        ids[b, :lengths[b]] = row[attention_mask[b] == 1]
    return ids, lengths


def _checked_counts(counts, lengths: np.ndarray) -> np.ndarray:
    """counts (per row, or one int for all) -> [b] int64, each 0 <= count < the row's length (a row keeps one)."""
    counts = np.broadcast_to(np.asarray(counts, dtype=np.int64), lengths.shape)
    if (counts < 0).any() or (counts >= lengths).any():
        raise InputError(f"counts: {counts.tolist()}; each must be >= 0 and below its row's length "
                         f"{lengths.tolist()} (a row keeps at least one position)")
    return counts


def token_positions(past: np.ndarray, new: np.ndarray, width: int) -> np.ndarray:
    """past [b], new [b], width s -> position_ids [b, s] int64: a new token's index in its packed row; a padding
    slot (past its row's ``new``) 0, so that no slot reads past the graph's position tables."""
    # [b, s]: past + j for the row's new tokens, 0 after them
    j = np.arange(width)[None, :]
    return np.where(j < new[:, None], past[:, None] + j, 0).astype(np.int64)


class FusedState:
    """Decoding state of a batch: the KV buffers and each row's length (tokens held, all attended)."""

    def __init__(self, model: "FusedCausalLM", buffers: KVBuffers, lengths: np.ndarray):
        self.model, self.buffers, self.lengths = model, buffers, lengths

    def advance(self, tokens: np.ndarray) -> np.ndarray:
        """tokens [b] int64 -> next-token logits [b, V] float32; appends one position per row in place."""
        tokens = np.asarray(tokens, dtype=np.int64)
        self.buffers.ensure(int(self.lengths.max()) + 1)  # doubles the buffers when this step would overflow
        logits = self.model._run(tokens[:, None], self.lengths, np.ones_like(self.lengths),
                                 np.zeros((len(tokens), 1), np.int64), self.buffers)
        self.lengths = self.lengths + 1
        return logits[:, 0, :]

    def extend(self, ids: np.ndarray, *, last_only: bool = False, prompt: bool = False) -> np.ndarray:
        """ids [b, k] int64 -> logits [b, k, V] float32 after each of the k tokens ([b, 1, V] after the last one with
        ``last_only``); appends k positions per row in place (one forward pass: a speculative verify step, or the
        rest of a prompt after a reused prefix, which needs only the last: the head over 778 positions of a resumed
        SmolLM2 prompt cost more than the rest of the pass, and its 150 MB of logits). ``prompt``: the ids go on a
        prompt (nothing rolls back into them; a hybrid state's marks)."""
        ids = np.asarray(ids, dtype=np.int64)
        b, k = ids.shape
        self.buffers.ensure(int(self.lengths.max()) + k)
        keep = np.arange(k - 1 if last_only else 0, k, dtype=np.int64)[None, :]  # new positions through the head
        if b == 1 or k == 1:
            logits = self.model._run(ids, self.lengths, np.full(b, k, np.int64), np.repeat(keep, b, 0), self.buffers)
        else:  # GroupQueryAttention takes several new tokens after a past only for one row: a pass per row
            logits = np.concatenate([self.model._run(ids[r:r + 1], self.lengths[r:r + 1], np.array([k]), keep,
                                                     self.buffers.row(r)) for r in range(b)])
        self.lengths = self.lengths + k
        return logits

    def rollback(self, counts: np.ndarray) -> None:
        """counts [b] int64: forget each row's last counts[i] positions (rejected draft tokens). The buffers keep
        the stale keys/values past a row's length; the graph never reads them (seqlens_k) and the next step
        overwrites them."""
        counts = _checked_counts(counts, self.lengths)
        self.lengths = self.lengths - counts

    def snapshot(self, row: int, *, copy: bool = True) -> dict:
        """row -> name -> [kv_heads, L, head_dim] float32: the row's held keys/values (L = its length), for
        runtime/prefix_cache.py. copy=False: views of the buffers. A step only writes a row's positions past its
        length, and a ``select`` that changes the row count copies into new buffers, so the views keep these values
        until a ``rollback`` below L or a same-size ``select`` that reorders rows (beam search) writes over them."""
        held = int(self.lengths[row])
        return {name: a[row, :, :held].copy() if copy else a[row, :, :held] for name, a in self.buffers.arrays.items()}

    def forget_rollback(self) -> None:
        """Keep nothing for a rollback into the held positions (they become a prompt's, which nothing rolls back
        into): a state the prefix cache keeps to lend. The keys/values need nothing kept."""

    def checkpoint(self, row: int) -> dict | None:
        """The recurrent state after the row's held positions, which its keys/values do not hold (a hybrid model's);
        None: the keys/values alone resume any prefix of them."""
        return None

    def take_prompt_checkpoints(self, row: int) -> dict:
        """{length: recurrent state} inside the row's prompt (a hybrid model's, handed over); {}: none needed."""
        return {}

    def select(self, rows: np.ndarray) -> None:
        """rows [b] int64: reorder/duplicate rows of every buffer and of the lengths."""
        rows = np.asarray(rows, dtype=np.int64)
        if np.array_equal(rows, np.arange(len(self.lengths))):
            return
        self.lengths = self.lengths[rows]
        self.buffers.select(rows, held=max(1, int(self.lengths.max())))  # only the held positions are copied

    @classmethod
    def concat(cls, states: list["FusedState"]) -> "FusedState":
        """States of the same model, [b_i] right-packed rows each -> one state of [sum b_i] rows: every row copied
        into new buffers (the first state's pool) whose capacity holds the longest row (and the largest source
        capacity); lengths kept."""
        if len(states) == 1:
            return states[0]
        capacity = max(s.buffers.capacity for s in states)
        held = [max(1, int(s.lengths.max())) for s in states]  # positions a source row can hold
        batch = sum(len(s.lengths) for s in states)
        first = next(iter(states[0].buffers.arrays.values()))  # [b, kv_heads, capacity, head_dim], every name
        pool = states[0].buffers.pool
        arrays = mapped_buffers(list(states[0].buffers.arrays), (batch, first.shape[1], capacity, first.shape[3]),
                                first.dtype, pool)
        for name, out in arrays.items():
            row = 0
            for s, h in zip(states, held):
                out[row:row + len(s.lengths), :, :h] = s.buffers.arrays[name][:, :, :h]
                row += len(s.lengths)
        return cls(states[0].model, KVBuffers(arrays, pool), np.concatenate([s.lengths for s in states]))


class FusedCausalLM(CausalLM):
    """A decoder-only model on the fused GroupQueryAttention graph (in-place KV buffers)."""

    selects_positions = True  # logits(positions=) sends only the asked positions through the output head
    initial_buffer_length = 256  # positions a fresh buffer holds (doubled as needed)
    kv_pool = NO_POOL  # where KV buffers come from; keep_kv_buffers() makes it keep freed ones
    state_class = FusedState  # what start / empty_state / resume return

    def keep_kv_buffers(self, max_bytes: int) -> BufferPool:
        """Keep up to ``max_bytes`` of freed KV buffer sets resident for the next sets of the same size
        (runtime/fused/buffer_pool.py): a server's requests then neither map nor fault in fresh pages for their
        buffers (resuming a 1,000-token cached prefix: ~50 ms of page faults). 0: keep none (the default)."""
        self.kv_pool = BufferPool(max_bytes)
        return self.kv_pool

    def _init_graphs(self) -> None:
        self.decoder = self._runner("decoder")
        self.past_names = past_input_names(self.decoder.inputs)
        self.kv_heads, self.head_dim = int(self.manifest["num_kv_heads"]), int(self.manifest["head_dim"])

    def _run(self, ids: np.ndarray, past: np.ndarray, new: np.ndarray, keep: np.ndarray,
             buffers: KVBuffers) -> np.ndarray:
        """ids [b, s] (right-padded new tokens), past [b] (positions each row holds), new [b] (its real new tokens),
        keep [b, k] (which of the s positions go through the head) -> logits [b, k, V] float32; the graph writes
        the new keys/values into the buffers in place."""
        io = buffers.binding(self.decoder.session)  # the buffers already bound as past and present
        self._bind_step(io, ids, past, new, keep)
        return buffers.run_in_place(self.decoder.session, io, len(ids), keep.shape[1],
                                    self.logits_width)  # past = present: appended in place

    def _bind_step(self, io, ids: np.ndarray, past: np.ndarray, new: np.ndarray, keep: np.ndarray) -> None:
        """Bind a pass's own inputs (``_run``'s arguments) on ``io``."""
        io.bind_cpu_input("input_ids", np.ascontiguousarray(ids, np.int64))
        io.bind_cpu_input("seqlens_k", (past + new - 1).astype(np.int32))  # each row's length after the step - 1
        io.bind_cpu_input("total_sequence_length", np.array((past + new).max(), np.int32))  # the padded length
        io.bind_cpu_input("logits_positions", np.ascontiguousarray(keep, np.int64))
        if "position_ids" in self.decoder.inputs:  # learned positions (GPT-2), a rotary outside the attention
            io.bind_cpu_input("position_ids", token_positions(past, new, ids.shape[1]))

    def _fresh_buffers(self, rows: int, length: int) -> KVBuffers:
        """KV buffers for ``rows`` rows with room for ``length`` positions (``initial_capacity``), from the model's
        pool."""
        return KVBuffers.fresh(self.past_names, rows, self.kv_heads,
                               initial_capacity(length, self.initial_buffer_length), self.head_dim, self.kv_pool)

    def _prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray, positions, room: int = 0):
        """ids/mask [b, t] -> (logits at ``positions(lengths)`` [b, k, V], fresh buffers holding the prompt and
        making room for ``room`` positions, lengths [b])."""
        ids, lengths = repack_right(input_ids, attention_mask, self.pad_id)
        buffers = self._fresh_buffers(len(ids), max(ids.shape[1], room))
        logits = self._run(ids, np.zeros_like(lengths), lengths, positions(lengths), buffers)
        return logits, buffers, lengths

    def start(self, input_ids: np.ndarray, attention_mask: np.ndarray, *, max_length: int | None = None,
              decoder_start_token_id: int | None = None) -> tuple[FusedState, np.ndarray]:
        """input_ids [b, t] int64, attention_mask [b, t] int64 (left padded) -> state, next-token logits [b, V].
        ``max_length``: the positions a row may reach (generate's max length): the buffers make room for them now,
        so they need not grow (growing copies every held position into a new set while the old one is alive: a
        512-token SmolLM2 prompt's second new token had put its 24 MB of keys/values twice on the peak; unused
        capacity is never resident)."""
        input_ids, attention_mask = self._check_ids(input_ids, attention_mask)
        if (attention_mask[:, -1] == 0).any():
            raise InputError("attention_mask: a row ends in padding; decoder-only generation needs left padding "
                             "(pad at the start of each row, as onnxlm pads text inputs)")
        last = lambda lengths: (lengths - 1)[:, None]  # noqa: E731  - each row's last real token
        logits, buffers, lengths = self._prefill(input_ids, attention_mask, last, room=int(max_length or 0))
        return self.state_class(self, buffers, lengths), logits[:, 0, :]

    def empty_state(self, *, max_length: int = 0) -> FusedState:
        """A one-row state holding no position, its buffers with room for ``max_length`` positions: ``extend`` then
        runs a long text in parts, each part's pass appending to the keys/values of those before (the quality gate:
        a window's logits a share at a time, the window's tokens through the body once). A first part of k > 1
        tokens is the pass ``logits`` makes over them; a part of one token is a decode step, whose quantized
        products take onnxruntime's one-row kernels (other int8 roundings)."""
        if not isinstance(max_length, (int, np.integer)) or max_length < 0:
            raise ParameterError("max_length", f"got {max_length!r}; must be an integer >= 0")
        return self.state_class(self, self._fresh_buffers(1, int(max_length)), np.zeros(1, np.int64))

    def resume(self, kv: dict, reuse: int, rest) -> tuple[FusedState, np.ndarray | None]:
        """kv (a snapshot: name -> [kv_heads, L, head_dim]), reuse (1 <= reuse <= L positions of it), rest [k] ids
        that follow them -> a one-row state holding reuse + k positions, next-token logits [1, V] (one pass over
        ``rest``): what ``start`` on the whole prompt gives, without recomputing the reused positions. No rest
        (k = 0): the state alone and None (the caller holds those logits)."""
        # from the pool: a server's kept buffers are resident (faulting in a fresh mapping's pages cost ~35 ms of a
        # 55 ms resume of 774 SmolLM2 positions, the copy itself ~4 ms); positions past the held ones are never read
        buffers = self._fresh_buffers(1, reuse + len(rest))
        self._fill(buffers, kv, reuse)
        state = self.state_class(self, buffers, np.array([reuse], np.int64))
        return state, feed_rest(state, rest)

    def _fill(self, buffers, kv: dict, reuse: int) -> None:
        """One row's fresh buffers <- the first ``reuse`` positions of a snapshot's keys/values."""
        for name, a in buffers.arrays.items():
            a[0, :, :reuse] = kv[name][:, :reuse]

    def check_embeddings(self) -> None:
        if "last_hidden_state" not in self.decoder.outputs:
            raise ModelFileError(f"{self.path}: this artifact's graph gives no last_hidden_state (exported by an "
                                 "onnxlm before embeddings); export it again (`onnxlm export SOURCE DIR --force`; "
                                 "the demo's model: `onnxlm demo` exports it again; a .gguf given as it is is "
                                 "exported again by itself on its next run)", str(self.path))

    def hidden_states(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ids/mask [b, t] (padded on either side) -> last_hidden_state [b, t, D] float32 with row r's states at
        0..lengths[r]-1 (right-packed), lengths [b]: one pass (transformers' ``hidden_states[-1]``)."""
        self.check_embeddings()
        ids, lengths = repack_right(input_ids, attention_mask, self.pad_id)
        buffers = self._fresh_buffers(len(ids), ids.shape[1])
        width = self.decoder.session.get_outputs()[self.decoder.outputs.index("last_hidden_state")].shape[-1]
        hidden = np.empty((*ids.shape, int(width)), np.float32)
        io = buffers.binding(self.decoder.session)  # these buffers' own binding: used for this pass only
        io.bind_output("last_hidden_state", "cpu", 0, np.float32, list(hidden.shape), hidden.ctypes.data)
        zeros = np.zeros_like(lengths)
        self._run(ids, zeros, lengths, zeros[:, None], buffers)  # one position a row through the head
        return hidden, lengths

    def logits(self, input_ids, attention_mask=None, *, positions=None) -> np.ndarray:
        """input_ids [b, t] (or [t]), attention_mask [b, t] -> logits [b, t, V] float32 of one forward pass
        (a padded position gets the logits of its row's nearest earlier token, or of its first); ``positions`` [k]
        (of 0..t-1): only those positions' logits [b, k, V], the others never reach the output head (the same
        pass: the same values)."""
        input_ids, attention_mask = self._check_ids(input_ids, attention_mask)
        keep = self._check_positions(positions, input_ids.shape[1])
        if (attention_mask.sum(axis=1) == 0).any():
            raise InputError("attention_mask: a row attends to no token")
        index = np.maximum(np.cumsum(attention_mask, axis=1) - 1, 0)  # [b, t]: position j -> re-packed index
        index = index if keep is None else index[:, keep]  # [b, k]
        logits, _, _ = self._prefill(input_ids, attention_mask, lambda lengths: index)
        return logits
