"""Encoder-decoder models (T5): encoder graph once, decoder graph with past step by step.

Decoder graphs accepted: Optimum's merged decoder (`use_cache_branch` input), or the pair
decoder_model.onnx + decoder_with_past_model.onnx. Cross-attention KV ('.encoder.' presents) is taken from the
first decoder step and reused: the merged graph's encoder presents are dummies once use_cache_branch is true.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..model import LanguageModel
from ..processors import picked_logprobs
from ..tokenizer import pad_batch
from .kv_cache import KVCache, past_input_names, take_rows


class Seq2SeqState:
    """Decoding state: encoder output [b, s, d], encoder mask [b, s] int64, KV cache."""

    def __init__(self, model: "Seq2SeqLM", enc_hidden, enc_mask: np.ndarray, cache: KVCache):
        self.model, self.enc_hidden, self.enc_mask, self.cache = model, enc_hidden, enc_mask, cache

    def advance(self, tokens: np.ndarray) -> np.ndarray:
        """tokens [b] int64 -> next-token logits [b, V] float32 (decoder self-attention KV grows by one)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        runner = self.model.with_past
        feeds = {"input_ids": tokens[:, None], "encoder_attention_mask": self.enc_mask,
                 "encoder_hidden_states": self.enc_hidden, **self.cache.tensors}
        if runner.has_input("use_cache_branch"):
            feeds["use_cache_branch"] = np.array([True])
        out = runner.run(feeds)
        self.cache.update(out, only=".decoder.")  # keep the first step's cross-attention KV
        return out["logits"][:, -1, :].astype(np.float32, copy=False)

    def select(self, rows: np.ndarray) -> None:
        """rows [b] int64: reorder cache and encoder output/mask along the batch axis."""
        rows = np.asarray(rows, dtype=np.int64)
        if np.array_equal(rows, np.arange(len(self.enc_mask))):
            return
        self.cache.select(rows)
        self.enc_mask, self.enc_hidden = self.enc_mask[rows], take_rows(self.enc_hidden, rows)


class Seq2SeqLM(LanguageModel):
    """An encoder-decoder language model (T5 family)."""

    is_encoder_decoder = True

    def _init_graphs(self) -> None:
        self.encoder = self._runner("encoder")
        self.decoder = self._runner("decoder")
        self.with_past = self._runner("decoder_with_past") if "decoder_with_past" in self.manifest["graphs"] \
            else self.decoder
        self.past_names = past_input_names(self.with_past.inputs)
        if not self.past_names:
            raise InputError(f"{self.path}: the decoder graph has no past_key_values inputs; export with past")
        shape = self.with_past.inputs[self.past_names[0]].shape  # [batch, heads, past, head_dim]
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        self.kv_dtype = self.with_past.input_dtype(self.past_names[0])
        self.decoder_start_id = self._decoder_start_id()

    def _decoder_start_id(self) -> int:
        """The generation config's decoder_start_token_id, else the config's, else the pad id."""
        start = self.generation_config.decoder_start_token_id
        if start is None:
            start = self.config.get("decoder_start_token_id", self.pad_id)
        return int(start)

    def _run_encoder(self, input_ids: np.ndarray, attention_mask: np.ndarray):
        """[b, s] int64, [b, s] int64 -> encoder last_hidden_state [b, s, d]."""
        return self.encoder.run({"input_ids": input_ids, "attention_mask": attention_mask},
                                host_outputs=())["last_hidden_state"]

    def _decode_full(self, enc_hidden, enc_mask: np.ndarray, decoder_ids: np.ndarray) -> dict:
        """One no-cache decoder pass over decoder_ids [b, T] int64 -> outputs (logits [b, T, V], presents)."""
        b = len(decoder_ids)
        feeds = {"input_ids": decoder_ids, "encoder_attention_mask": enc_mask, "encoder_hidden_states": enc_hidden}
        if self.decoder.has_input("use_cache_branch"):  # merged graph: past inputs are ignored on this branch
            feeds.update(KVCache.empty(self.past_names, b, self.kv_heads, self.head_dim, self.kv_dtype).tensors)
            feeds["use_cache_branch"] = np.array([False])
        return self.decoder.run(feeds)

    def start(self, input_ids: np.ndarray, attention_mask: np.ndarray, *, max_length: int | None = None,
              decoder_start_token_id: int | None = None) -> tuple[Seq2SeqState, np.ndarray]:
        """Encoder input_ids [b, s], attention_mask [b, s] -> state, logits [b, V] float32 after the start token
        (``decoder_start_token_id``, default the model's). ``max_length`` (the length rows may reach) is a hint this
        model does not need (FusedCausalLM makes room)."""
        input_ids, attention_mask = self._check_ids(input_ids, attention_mask)
        enc_hidden = self._run_encoder(input_ids, attention_mask)
        out = self._decode_full(enc_hidden, attention_mask, self.initial_sequences(input_ids, decoder_start_token_id))
        cache = KVCache({})
        cache.update(out)  # decoder self-attention KV (length 1) and the cross-attention KV
        state = Seq2SeqState(self, enc_hidden, attention_mask, cache)
        return state, out["logits"][:, -1, :].astype(np.float32, copy=False)

    def initial_sequences(self, input_ids: np.ndarray, decoder_start_token_id: int | None = None) -> np.ndarray:
        """[b, s] encoder ids -> [b, 1] int64 decoder ids: the start token (the call's, else the model's)."""
        start = self.decoder_start_id if decoder_start_token_id is None else int(decoder_start_token_id)
        return np.full((len(input_ids), 1), start, dtype=np.int64)

    def logits(self, input_ids, decoder_input_ids, attention_mask=None) -> np.ndarray:
        """Encoder ids [b, s], decoder ids [b, T] (starting with the start token) -> logits [b, T, V] float32."""
        input_ids, attention_mask, decoder_input_ids = self._check_pair(input_ids, decoder_input_ids, attention_mask)
        enc_hidden = self._run_encoder(input_ids, attention_mask)
        return self._decode_full(enc_hidden, attention_mask, decoder_input_ids)["logits"].astype(np.float32, copy=False)

    def _check_pair(self, input_ids, decoder_input_ids, attention_mask):
        """-> input_ids [b, s], attention_mask [b, s], decoder_input_ids [b, T], all int64 and checked."""
        input_ids, attention_mask = self._check_ids(input_ids, attention_mask)
        try:
            decoder_input_ids, _ = self._check_ids(decoder_input_ids, None)
        except InputError as exc:  # the check names input_ids: these are the decoder's
            raise exc.naming("decoder_input_ids") from None
        if len(decoder_input_ids) != len(input_ids):
            raise InputError(f"decoder_input_ids: batch {len(decoder_input_ids)} != input_ids batch {len(input_ids)}")
        return input_ids, attention_mask, decoder_input_ids

    def _score_pairs(self, sources: list[list[int]], targets: list[list[int]]) -> list[np.ndarray]:
        """Source ids and target ids per row -> log p(target[i] | source, target[:i]) per row, float32."""
        src, src_mask = pad_batch(sources, self.pad_id, side="right")
        tgt, _ = pad_batch(targets, self.pad_id, side="right")
        dec_in = np.concatenate([np.full((len(tgt), 1), self.decoder_start_id, np.int64), tgt[:, :-1]], axis=1)
        picked = picked_logprobs(self.logits(src, dec_in, src_mask), tgt)       # [b, T]
        return [picked[i, :len(t)].copy() for i, t in enumerate(targets)]
