"""Decoder-only models (GPT-2, Llama family): one ONNX graph with past key values, past length 0 at the first step."""
from __future__ import annotations

import numpy as np

from ..errors import InputError, ModelFileError
from ..manifest import MANIFEST_NAME
from ..model import LanguageModel
from ..prefix_cache import feed_rest
from ..processors import picked_logprobs
from ..session import GraphRunner, to_numpy
from ..tokenizer import pad_batch
from .kv_cache import KVCache, past_input_names


def position_ids_from_mask(mask: np.ndarray) -> np.ndarray:
    """attention_mask [b, t] int64 -> position_ids [b, t] int64: cumsum(mask) - 1, padded slots set to 1
    (what transformers' generate passes, so left-padded rows start at position 0)."""
    pos = np.cumsum(mask, axis=-1) - 1
    return np.where(mask == 0, 1, pos).astype(np.int64)


# ``logits_to_keep`` feeds (graphs exported by onnxlm have this input; a plain Optimum graph ignores the feed)
LAST_ONLY = np.array([1], dtype=np.int64)  # logits of the last position: generation
ALL_POSITIONS = np.array([0], dtype=np.int64)  # every position: logits(), score()
FED_INPUTS = ("input_ids", "attention_mask", "position_ids", "logits_to_keep")  # besides past_key_values.*


class CausalState:
    """Decoding state of a batch: KV cache, attention mask [b, T] int64, position of each row's last token [b]."""

    def __init__(self, runner: GraphRunner, cache: KVCache, mask: np.ndarray):
        self.runner, self.cache, self.mask = runner, cache, mask
        self.positions = mask.sum(axis=-1).astype(np.int64) - 1  # [b]: position of each row's last token

    def advance(self, tokens: np.ndarray) -> np.ndarray:
        """tokens [b] int64 -> next-token logits [b, V] float32; appends one attended position per row."""
        tokens = np.asarray(tokens, dtype=np.int64)
        self.mask = np.concatenate([self.mask, np.ones((len(tokens), 1), np.int64)], axis=1)
        self.positions = self.positions + 1
        out = self.runner.run({"input_ids": tokens[:, None], "attention_mask": self.mask,
                               "position_ids": self.positions[:, None], "logits_to_keep": LAST_ONLY,
                               **self.cache.tensors})
        self.cache.update(out)
        return out["logits"][:, -1, :].astype(np.float32, copy=False)

    def extend(self, ids: np.ndarray, *, last_only: bool = False, prompt: bool = False) -> np.ndarray:
        """ids [b, k] int64 -> logits [b, k, V] float32 after each of the k tokens ([b, 1, V] after the last with
        ``last_only``); appends k attended positions per row (one forward pass: a speculative verify step, or the
        rest of a prompt after a reused prefix)."""
        ids = np.asarray(ids, dtype=np.int64)
        b, k = ids.shape
        self.mask = np.concatenate([self.mask, np.ones((b, k), np.int64)], axis=1)
        positions = self.positions[:, None] + 1 + np.arange(k)                 # [b, k]
        out = self.runner.run({"input_ids": ids, "attention_mask": self.mask, "position_ids": positions,
                               "logits_to_keep": LAST_ONLY if last_only else ALL_POSITIONS, **self.cache.tensors})
        self.cache.update(out)
        self.positions = self.positions + k
        return out["logits"][:, -1 if last_only else -k:, :].astype(np.float32, copy=False)

    def rollback(self, counts: np.ndarray) -> None:
        """counts [b] int64 (or one int): forget each row's last counts[i] attended positions (rejected draft
        tokens). Their mask goes to 0, so rows may hold holes that no later step attends to; trailing columns no
        row attends to are cut from the mask and the cache."""
        counts = np.broadcast_to(np.asarray(counts, dtype=np.int64), self.positions.shape)
        held = self.mask.sum(axis=1)
        if (counts < 0).any() or (counts >= held).any():
            raise InputError(f"counts: {counts.tolist()}; each must be >= 0 and below its row's length "
                             f"{held.tolist()} (a row keeps at least one position)")
        self.mask = self.mask.copy()
        for row, count in enumerate(counts):
            if count:
                self.mask[row, np.flatnonzero(self.mask[row])[-count:]] = 0   # the row's last `count` positions
        self.positions = self.positions - counts
        used = np.flatnonzero(self.mask.any(axis=0))
        end = int(used[-1]) + 1                                                 # columns some row still attends
        if end < self.mask.shape[1]:
            self.mask = self.mask[:, :end]
            self.cache.tensors = {n: to_numpy(v)[:, :, :end] for n, v in self.cache.tensors.items()}

    def snapshot(self, row: int, *, copy: bool = True) -> dict:
        """row -> name -> [kv_heads, L, head_dim]: copies of the keys/values at the row's attended positions (L of
        them), for runtime/prefix_cache.py (always copies: ``copy`` is the fused state's option)."""
        cols = np.flatnonzero(self.mask[row])
        return {n: np.ascontiguousarray(to_numpy(v)[row][:, cols]) for n, v in self.cache.tensors.items()}

    def checkpoint(self, row: int) -> None:
        """No recurrent state beside the keys/values: a snapshot resumes at any of its lengths (``FusedState``'s)."""
        return None

    def take_prompt_checkpoints(self, row: int) -> dict:
        """None needed inside the prompt either (``FusedState``'s)."""
        return {}

    def select(self, rows: np.ndarray) -> None:
        """rows [b] int64: reorder the cache, mask and positions along the batch axis."""
        rows = np.asarray(rows, dtype=np.int64)
        if np.array_equal(rows, np.arange(len(self.mask))):
            return
        self.cache.select(rows)
        self.mask, self.positions = self.mask[rows], self.positions[rows]
        unused = int(np.argmax(self.mask.any(axis=0)))  # leading columns no row attends to (rows that left)
        if unused:
            self.mask = self.mask[:, unused:]
            self.cache.tensors = {n: to_numpy(v)[:, :, unused:] for n, v in self.cache.tensors.items()}

    @classmethod
    def concat(cls, states: list["CausalState"]) -> "CausalState":
        """States of the same model, each [b_i] rows of length T_i -> one state of [sum b_i] rows: the shorter
        ones LEFT padded to max T_i (mask 0, zero keys/values); every row keeps its own positions."""
        if len(states) == 1:
            return states[0]
        length = max(s.mask.shape[1] for s in states)
        pads = [length - s.mask.shape[1] for s in states]
        mask = np.concatenate([np.pad(s.mask, ((0, 0), (p, 0))) for s, p in zip(states, pads)], axis=0)
        tensors = {name: np.concatenate([np.pad(to_numpy(s.cache.tensors[name]), ((0, 0), (0, 0), (p, 0), (0, 0)))
                                         for s, p in zip(states, pads)], axis=0)
                   for name in states[0].cache.tensors}  # [b, kv_heads, length, head_dim] each
        merged = cls(states[0].runner, KVCache(tensors), mask)
        merged.positions = np.concatenate([s.positions for s in states])
        return merged


class CausalLM(LanguageModel):
    """A decoder-only language model: generate, score, logits, stream on numpy + onnxruntime."""

    is_encoder_decoder = False
    selects_positions = False  # logits(positions=) computes every position's logits and keeps the asked ones

    def _init_graphs(self) -> None:
        self.decoder = self._runner("decoder")
        self.past_names = past_input_names(self.decoder.inputs)
        if not self.past_names:
            raise InputError(f"{self.path}: the decoder graph has no past_key_values inputs; export with past "
                             "(onnxlm export, or optimum task text-generation-with-past)")
        unfed = [n for n in self.decoder.inputs if n not in FED_INPUTS and n not in self.past_names]
        if unfed:  # e.g. an onnxlm fused graph (seqlens_k, ...) whose onnxlm.json is gone: read as an Optimum one
            raise ModelFileError(f"{self.path}: its decoder graph takes inputs an Optimum decoder has not "
                                 f"({', '.join(unfed[:4])}); an onnxlm artifact whose {MANIFEST_NAME} is missing? "
                                 "restore it, or export the model again", str(self.path / MANIFEST_NAME))
        shape = self.decoder.inputs[self.past_names[0]].shape  # [batch, kv_heads, past, head_dim]
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        self.kv_dtype = self.decoder.input_dtype(self.past_names[0])

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 logits_to_keep: np.ndarray = ALL_POSITIONS) -> tuple[dict, KVCache]:
        """input_ids [b, t], attention_mask [b, t] -> graph outputs (logits [b, t, V], or [b, 1, V] with
        LAST_ONLY where the graph has a logits_to_keep input) and the filled cache."""
        cache = KVCache.empty(self.past_names, len(input_ids), self.kv_heads, self.head_dim, self.kv_dtype)
        out = self.decoder.run({"input_ids": input_ids, "attention_mask": attention_mask,
                                "position_ids": position_ids_from_mask(attention_mask),
                                "logits_to_keep": logits_to_keep, **cache.tensors})
        cache.update(out)
        return out, cache

    def start(self, input_ids: np.ndarray, attention_mask: np.ndarray, *, max_length: int | None = None,
              decoder_start_token_id: int | None = None) -> tuple[CausalState, np.ndarray]:
        """input_ids [b, t] int64, attention_mask [b, t] int64 -> state, next-token logits [b, V] float32.
        ``max_length`` (the length rows may reach) is a hint this model does not need (FusedCausalLM makes room);
        ``decoder_start_token_id`` is a seq2seq model's (a decoder-only one has none)."""
        input_ids, attention_mask = self._check_ids(input_ids, attention_mask)
        if (attention_mask[:, -1] == 0).any():
            raise InputError("attention_mask: a row ends in padding; decoder-only generation needs left padding "
                             "(pad at the start of each row, as onnxlm pads text inputs)")
        out, cache = self._forward(input_ids, attention_mask, LAST_ONLY)  # prefill: the last position's logits
        state = CausalState(self.decoder, cache, attention_mask)
        return state, out["logits"][:, -1, :].astype(np.float32, copy=False)

    def resume(self, kv: dict, reuse: int, rest) -> tuple[CausalState, np.ndarray | None]:
        """kv (a snapshot: name -> [kv_heads, L, head_dim]), reuse (1 <= reuse <= L positions of it), rest [k] ids
        that follow them -> a one-row state holding reuse + k positions, next-token logits [1, V] (one pass over
        ``rest``): what ``start`` on the whole prompt gives, without recomputing the reused positions. No rest
        (k = 0): the state alone and None (the caller holds those logits)."""
        cache = KVCache({n: np.ascontiguousarray(kv[n][None, :, :reuse]) for n in self.past_names})
        state = CausalState(self.decoder, cache, np.ones((1, reuse), np.int64))
        return state, feed_rest(state, rest)

    def initial_sequences(self, input_ids: np.ndarray, decoder_start_token_id: int | None = None) -> np.ndarray:
        """[b, t] prompt ids -> [b, t] int64: the ids the logits processors see before the first new token
        (``decoder_start_token_id``: a seq2seq model's)."""
        return np.asarray(input_ids, dtype=np.int64)

    def logits(self, input_ids, attention_mask=None, *, positions=None) -> np.ndarray:
        """input_ids [b, t] (or [t]), attention_mask [b, t] -> logits [b, t, V] float32 of one forward pass;
        ``positions`` [k] (of 0..t-1): only those positions' logits [b, k, V] (this graph computes all of them)."""
        input_ids, attention_mask = self._check_ids(input_ids, attention_mask)
        keep = self._check_positions(positions, input_ids.shape[1])
        out, _ = self._forward(input_ids, attention_mask)
        logits = out["logits"].astype(np.float32, copy=False)
        return logits if keep is None else logits[:, keep]

    @staticmethod
    def _check_positions(positions, length: int) -> np.ndarray | None:
        """positions (None, or ints in [0, length)) -> [k] int64 or None; InputError naming ``positions``."""
        if positions is None:
            return None
        keep = np.asarray(positions)
        if keep.ndim != 1 or keep.size == 0 or not np.issubdtype(keep.dtype, np.integer):
            raise InputError(f"positions: expected a non-empty 1-D sequence of integer positions, got shape "
                             f"{keep.shape} of dtype {keep.dtype}")
        bad = keep[(keep < 0) | (keep >= length)]
        if bad.size:
            raise InputError(f"positions: position {int(bad[0])} is out of range; allowed: 0 <= position < {length} "
                             "(the input's length)")
        return keep.astype(np.int64, copy=False)

    def _score_batch(self, rows: list[list[int]]) -> list[np.ndarray]:
        """rows of ids (>= 2 each) -> per row log p(ids[i] | ids[:i]) for i >= 1, float32 [len-1]."""
        ids, mask = pad_batch(rows, self.pad_id, side="left")
        picked = picked_logprobs(self.logits(ids, mask)[:, :-1, :], ids[:, 1:])  # [b, t-1]
        return [picked[i, ids.shape[1] - len(r):].copy() for i, r in enumerate(rows)]

