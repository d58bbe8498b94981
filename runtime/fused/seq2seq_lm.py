"""Encoder-decoder models exported with ``kv_layout="fused"`` (T5; manifest ``"kv_layout": "fused-gqa"``,
export/fused_t5.py): the encoder graph gives each decoder layer's cross-attention keys/values once per source; the
decoder's self-attention KV cache lives in preallocated buffers (runtime/fused/kv_buffers.py) that each step appends to in
place (bound as both past and present), so a step never copies or concatenates the cache.

Every decoder row has the same length (decoder ids are never padded), so ``seqlens_k`` is that length minus 1 for
all rows. CPU only (numpy-backed buffers).
"""
from __future__ import annotations

import numpy as np

from ..plain.kv_cache import past_input_names
from ..plain.seq2seq_lm import Seq2SeqLM
from .kv_buffers import KVBuffers, initial_capacity, reorder_in_place

CROSS_PREFIX = "cross_key_values."


class FusedSeq2SeqState:
    """Decoding state: the cross keys/values (name -> [b, heads, S, head_dim]), the encoder mask [b, S], the
    self-attention KV buffers and the decoder length (positions every row holds)."""

    def __init__(self, model: "FusedSeq2SeqLM", cross: dict, enc_mask: np.ndarray, buffers: KVBuffers, length: int):
        self.model, self.cross, self.enc_mask, self.buffers, self.length = model, cross, enc_mask, buffers, length

    def advance(self, tokens: np.ndarray) -> np.ndarray:
        """tokens [b] int64 -> next-token logits [b, V] float32; appends one position per row in place."""
        tokens = np.asarray(tokens, dtype=np.int64)
        self.buffers.ensure(self.length + 1)  # doubles the buffers when this step would overflow
        logits = self.model._run(tokens[:, None], self.length, self.cross, self.enc_mask, self.buffers)
        self.length += 1
        return logits[:, 0, :]

    def select(self, rows: np.ndarray) -> None:
        """rows [b] int64: reorder/duplicate rows of the buffers (held positions only), cross keys/values and mask."""
        rows = np.asarray(rows, dtype=np.int64)
        if np.array_equal(rows, np.arange(len(self.enc_mask))):
            return
        if len(rows) == len(self.enc_mask):  # a beam step: rows copied in place where they change
            reorder_in_place(self.cross.values(), rows)
        else:
            self.cross = {name: value[rows] for name, value in self.cross.items()}
        self.buffers.select(rows, self.length)
        self.enc_mask = self.enc_mask[rows]


class FusedSeq2SeqLM(Seq2SeqLM):
    """A T5-family model on the fused graphs (cross keys/values computed once, in-place self-attention buffers)."""

    initial_buffer_length = 64  # decoder positions a fresh buffer holds (doubled as needed)

    def _init_graphs(self) -> None:
        self.encoder = self._runner("encoder")
        self.decoder = self._runner("decoder")
        self.past_names = past_input_names(self.decoder.inputs)
        self.kv_heads, self.head_dim = int(self.manifest["num_kv_heads"]), int(self.manifest["head_dim"])
        self.decoder_start_id = self._decoder_start_id()

    def _cross(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict:
        """[b, S] ids, [b, S] mask -> cross keys/values by name, each [b, heads, S, head_dim] float32."""
        names = [o.name for o in self.encoder.session.get_outputs()]
        values = self.encoder.session.run(names, {"input_ids": input_ids, "attention_mask": attention_mask})
        return {n: v for n, v in zip(names, values) if n.startswith(CROSS_PREFIX)}

    def _run(self, ids: np.ndarray, past: int, cross: dict, enc_mask: np.ndarray, buffers: KVBuffers) -> np.ndarray:
        """ids [b, s] new decoder tokens after ``past`` held positions -> logits [b, s, V] float32; the graph writes
        the new keys/values into the buffers in place."""
        io = buffers.binding(self.decoder.session)  # the buffers already bound as past and present
        total = past + ids.shape[1]
        io.bind_cpu_input("input_ids", np.ascontiguousarray(ids, np.int64))
        io.bind_cpu_input("seqlens_k", np.full(len(ids), total - 1, np.int32))
        io.bind_cpu_input("total_sequence_length", np.array(total, np.int32))
        io.bind_cpu_input("encoder_attention_mask", np.ascontiguousarray(enc_mask, np.int64))
        for name, value in cross.items():
            io.bind_cpu_input(name, np.ascontiguousarray(value))
        return buffers.run_in_place(self.decoder.session, io, len(ids), ids.shape[1],
                                    self.logits_width)  # past = present: appended in place

    def _decode_fresh(self, input_ids, attention_mask, decoder_ids: np.ndarray):
        """Encoder ids/mask [b, S], decoder ids [b, T] -> (logits [b, T, V], cross keys/values, fresh buffers holding
        the T positions)."""
        cross = self._cross(input_ids, attention_mask)
        b, t = decoder_ids.shape
        buffers = KVBuffers.fresh(self.past_names, b, self.kv_heads, initial_capacity(t, self.initial_buffer_length),
                                  self.head_dim)
        return self._run(decoder_ids, 0, cross, attention_mask, buffers), cross, buffers

    def start(self, input_ids: np.ndarray, attention_mask: np.ndarray, *, max_length: int | None = None,
              decoder_start_token_id: int | None = None) -> tuple[FusedSeq2SeqState, np.ndarray]:
        """Encoder input_ids [b, S], attention_mask [b, S] -> state, logits [b, V] float32 after the start token
        (``decoder_start_token_id``, default the model's). ``max_length`` (the length rows may reach) is a hint this
        model does not need (FusedCausalLM makes room)."""
        input_ids, attention_mask = self._check_ids(input_ids, attention_mask)
        logits, cross, buffers = self._decode_fresh(input_ids, attention_mask,
                                                    self.initial_sequences(input_ids, decoder_start_token_id))
        return FusedSeq2SeqState(self, cross, attention_mask, buffers, 1), logits[:, -1, :]

    def logits(self, input_ids, decoder_input_ids, attention_mask=None) -> np.ndarray:
        """Encoder ids [b, S], decoder ids [b, T] (starting with the start token) -> logits [b, T, V] float32."""
        input_ids, attention_mask, decoder_input_ids = self._check_pair(input_ids, decoder_input_ids, attention_mask)
        return self._decode_fresh(input_ids, attention_mask, decoder_input_ids)[0]
