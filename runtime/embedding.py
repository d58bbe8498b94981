"""Embeddings: one vector per text, its last hidden states pooled, as llama.cpp's server and sentence-transformers
make them.

A fused decoder graph also gives ``last_hidden_state`` [b, t, D] (the final norm's output at every position:
transformers' ``hidden_states[-1]``; ``export/fused_graph.hidden_output``); ``FusedCausalLM.hidden_states`` runs it
over a batch. Here the rows are pooled and normalised:

* pooling (``POOLINGS``): ``mean`` over a row's tokens (sentence-transformers' default), ``cls`` its first token's
  state (a causal decoder's first state has seen that token only: nearly one vector for every text, the same one
  where a BOS comes first; for models trained so), ``last`` its last token's (the pooling of decoder embedding
  models such as Qwen3-Embedding); an artifact
  names its own where its files said (a GGUF's ``{arch}.pooling_type``, a sentence-transformers folder's
  ``1_Pooling/config.json``: the manifest's ``pooling``), else ``mean``;
* normalisation (``normalized``, llama.cpp's ``embd_normalize``): -1 none, 0 max-absolute scaled to int16's range, 1
  taxicab, 2 euclidean (unit length: OpenAI's and llama.cpp's default), p > 2 the p-norm.

A text is encoded with the tokenizer's special tokens, as ``generate`` encodes a prompt (a BOS where the model has
one; an EOS where the tokenizer appends it, as embedding GGUFs with ``tokenizer.ggml.add_eos_token`` do). Rows run in
batches of similar length (``batches``: ``batch_size`` rows and ``MAX_BATCH_TOKENS`` padded positions at most); the
vectors come back in the order given.
"""
from __future__ import annotations

import numpy as np

from .errors import ParameterError
from .tokenizer import pad_batch

POOLINGS = ("mean", "cls", "last")
DEFAULT_POOLING = "mean"  # where an artifact names none (a generative model)
MAX_BATCH_TOKENS = 2048  # padded positions a batch holds at most (``batches``): ~0.2 GB of activations on SmolLM2


def manifest_refusal(path, manifest: dict) -> str | None:
    """Why the artifact at ``path`` cannot embed, from its manifest alone (a T5, a plain-layout graph), or None.
    (A fused graph exported before embeddings, without last_hidden_state, only its loaded model can tell.)"""
    kind, layout = manifest.get("kind", "model"), manifest.get("kv_layout", "plain")
    if (kind == "causal-lm" and layout == "fused-gqa") or kind == "embedding":  # an encoder: runtime/encoder_embedder
        return None
    return (f"{path}: embeddings need a decoder-only model on the fused graph (what export picks wherever the "
            f"family has one); this artifact is a {kind} on the {layout} layout")


def manifest_pooling(manifest: dict) -> str:
    """An artifact's default pooling: its manifest's ``pooling`` (the model's own), else ``DEFAULT_POOLING``."""
    pooling = manifest.get("pooling")
    return pooling if pooling in POOLINGS else DEFAULT_POOLING


def appended_ids(tokenizer) -> list[int]:
    """The ids a tokenizer appends to every text it encodes with its special tokens (a BERT's [SEP], an embedding
    GGUF's EOS), found by encoding one character both ways; [] for none or no tokenizer."""
    if tokenizer is None:
        return []
    plain, full = tokenizer.encode("a", add_special_tokens=False), tokenizer.encode("a", add_special_tokens=True)
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[start + len(plain):]
    return []


def truncated(row: list[int], limit: int, tail: list[int]) -> list[int]:
    # [t] ids -> [min(t, limit)] ids: the first ones, and where the row ends with ``tail`` (the ids the tokenizer
    # appends: appended_ids), that tail kept last, as a tokenizer truncating the text itself would end it
    if len(row) <= limit:
        return row
    keep = tail if tail and len(tail) < limit and row[-len(tail):] == tail else []
    return row[:limit - len(keep)] + keep


def check_batch_size(batch_size) -> int:
    """``batch_size`` of ``embed`` / ``rerank``: an integer >= 1 (ParameterError naming it otherwise)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ParameterError("batch_size", f"got {batch_size!r}; allowed: an integer >= 1")
    return int(batch_size)


def check_pooling(pooling) -> str:
    if pooling not in POOLINGS:
        raise ParameterError("pooling", f"got {pooling!r}; allowed: {', '.join(map(repr, POOLINGS))}")
    return pooling


def check_normalize(norm) -> int:
    """llama.cpp's ``embd_normalize`` value, checked: an integer >= -1."""
    if isinstance(norm, bool) or not isinstance(norm, (int, np.integer)) or norm < -1:
        raise ParameterError("embd_normalize", f"got {norm!r}; allowed: -1 (none), 0 (max absolute, int16 range), "
                             "1 (taxicab), 2 (euclidean), or a p-norm's p > 2")
    return int(norm)


def pool(hidden: np.ndarray, lengths: np.ndarray, pooling: str) -> np.ndarray:
    # [b, t, D] float32 (row r's states at 0..lengths[r]-1), [b] int -> [b, D] float32
    rows = np.arange(len(hidden))
    if pooling == "cls":
        return hidden[:, 0].copy()
    if pooling == "last":
        return hidden[rows, lengths - 1]
    held = np.arange(hidden.shape[1])[None, :] < lengths[:, None]  # [b, t]: the row's own tokens
    return (hidden * held[:, :, None]).sum(axis=1, dtype=np.float32) / lengths[:, None].astype(np.float32)


def pool_masked(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    # [b, t, D] float32, [b, t] 0/1 (a row's own tokens, padded on either side) -> [b, D] float32: ``pool`` for any
    # padding (an encoder's batch): mean over the held positions, cls the first held one, last the last held one
    held = np.asarray(mask).astype(bool)
    rows = np.arange(len(hidden))
    if pooling == "cls":
        return hidden[rows, held.argmax(axis=1)]
    if pooling == "last":
        return hidden[rows, held.shape[1] - 1 - held[:, ::-1].argmax(axis=1)]
    return (hidden * held[:, :, None]).sum(axis=1, dtype=np.float32) / held.sum(axis=1, keepdims=True).astype(
        np.float32)


def normalized(vectors: np.ndarray, norm: int) -> np.ndarray:
    # [n, D] float32 -> [n, D] float32, each row divided by its norm (llama.cpp's common_embd_normalize)
    if norm == -1:
        return vectors
    v = vectors.astype(np.float64)
    if norm == 0:
        scale = np.abs(v).max(axis=1) / 32760.0
    elif norm == 2:
        scale = np.sqrt((v * v).sum(axis=1))
    else:
        scale = (np.abs(v) ** norm).sum(axis=1) ** (1.0 / norm)
    scale = np.where(scale > 0, scale, 1.0)  # an all-zero vector stays zero
    return (v / scale[:, None]).astype(np.float32)


def batches(lengths: list[int], batch_size: int, max_tokens: int = MAX_BATCH_TOKENS) -> list[list[int]]:
    """Rows' lengths -> the rows' indices in batches: sorted by length (similar lengths together), at most
    ``batch_size`` rows and ``max_tokens`` padded positions (rows x the longest) a batch; a row longer than
    ``max_tokens`` runs alone. Every padded position costs a full position's compute and memory (~100 KB on
    SmolLM2): 15 short texts beside one of 2,048 tokens in one batch of 16 took 42 s and 3.7 GB, each alone 4 s."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out: list[list[int]] = []
    for i in order:  # ascending: a row is the longest of its batch so far
        if out and len(out[-1]) < batch_size and (len(out[-1]) + 1) * lengths[i] <= max_tokens:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def embed_batch(model, rows: list[list[int]], pooling: str) -> np.ndarray:
    # rows of ids (unpadded) -> [n, D] float32: one ``model.hidden_states`` pass, pooled, not normalised
    ids, mask = pad_batch(rows, model.pad_id, side="right")
    hidden, lengths = model.hidden_states(ids, mask)
    return pool(hidden, lengths, pooling)


def embed_rows(model, rows: list[list[int]], pooling: str, norm: int, batch_size: int) -> np.ndarray:
    """Rows of token ids (unpadded) -> their embeddings [n, D] float32 in the given order: ``embed_batch`` over
    ``batches`` of similar length, normalised."""
    check_pooling(pooling)  # never a silent mean for a misspelt name
    out: list[np.ndarray | None] = [None] * len(rows)
    for chunk in batches([len(r) for r in rows], batch_size):
        for i, v in zip(chunk, embed_batch(model, [rows[i] for i in chunk], pooling)):
            out[i] = v
    return normalized(np.stack(out), norm)
