"""PyTorch/transformers reference computations for the parity tests (tests only: torch is allowed here)."""
from __future__ import annotations

import numpy as np
import torch


def position_ids(mask: np.ndarray) -> torch.Tensor:
    """[b, t] 0/1 -> [b, t] cumsum(mask) - 1 with padded slots at 1, as transformers' generate builds them."""
    m = torch.tensor(mask)
    pos = m.long().cumsum(-1) - 1
    return pos.masked_fill(m == 0, 1)


@torch.no_grad()
def causal_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[b, t] ids, [b, t] mask -> [b, t, V] float32 logits of a transformers causal LM."""
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=position_ids(mask))
    return out.logits.float().numpy()


@torch.no_grad()
def seq2seq_logits(model, src: np.ndarray, src_mask: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """encoder ids/mask [b, s], decoder ids [b, T] -> [b, T, V] float32 logits of a transformers seq2seq LM."""
    out = model(input_ids=torch.tensor(src), attention_mask=torch.tensor(src_mask), decoder_input_ids=torch.tensor(dec))
    return out.logits.float().numpy()


def left_padded_batch(rng: np.random.Generator, lengths: list[int], vocab: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ids for rows of the given lengths -> input_ids [b, t], attention_mask [b, t], left padded."""
    t = max(lengths)
    ids = np.full((len(lengths), t), pad, dtype=np.int64)
    mask = np.zeros((len(lengths), t), dtype=np.int64)
    for i, n in enumerate(lengths):
        ids[i, t - n:] = rng.integers(3, vocab, size=n)
        mask[i, t - n:] = 1
    return ids, mask


def tail_repeating_batch(rng: np.random.Generator, lengths: list[int], vocab: int, pad: int):
    """``left_padded_batch`` with each row's last 4 ids repeated twice after it (prompt lookup finds them) -> ids,
    mask [b, t + 8]."""
    ids, mask = left_padded_batch(rng, lengths, vocab, pad)
    ids = np.concatenate([ids, ids[:, -4:], ids[:, -4:]], axis=1)
    return ids, np.concatenate([mask, np.ones((len(lengths), 8), np.int64)], axis=1)


def right_padded_batch(rng: np.random.Generator, lengths: list[int], vocab: int, pad: int, eos: int):
    """Random encoder inputs ending in eos, right padded -> ids [b, s], mask [b, s]."""
    s = max(lengths)
    ids = np.full((len(lengths), s), pad, dtype=np.int64)
    mask = np.zeros((len(lengths), s), dtype=np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n - 1] = rng.integers(3, vocab, size=n - 1)
        ids[i, n - 1] = eos
        mask[i, :n] = 1
    return ids, mask


def causal_steps_max_diff(ours, ref, ids: np.ndarray, mask: np.ndarray, steps: list[np.ndarray]) -> float:
    """onnxlm's decoding state (start on the left-padded ids/mask, then advance by each of ``steps``, [b] token ids)
    vs transformers' logits of the whole sequence so far -> the largest |difference| of the next-token logits over
    every step."""
    state, logits = ours.start(ids, mask)
    worst = float(np.abs(logits - causal_logits(ref, ids, mask)[:, -1]).max())
    for tokens in steps:
        ids = np.concatenate([ids, tokens[:, None]], axis=1)
        mask = np.concatenate([mask, np.ones((len(tokens), 1), np.int64)], axis=1)
        worst = max(worst, float(np.abs(state.advance(tokens) - causal_logits(ref, ids, mask)[:, -1]).max()))
    return worst


def seq2seq_steps_max_diff(ours, ref, src: np.ndarray, src_mask: np.ndarray, steps: list[np.ndarray]) -> float:
    """onnxlm's decoding state (start, then advance by each of ``steps``, [b] token ids) vs transformers' logits on
    the whole decoder sequence so far -> the largest |difference| of the next-token logits over every step."""
    state, logits = ours.start(src, src_mask)
    dec = ours.initial_sequences(src)
    worst = float(np.abs(logits - seq2seq_logits(ref, src, src_mask, dec)[:, -1]).max())
    for tokens in steps:
        dec = np.concatenate([dec, tokens[:, None]], axis=1)
        logits = state.advance(tokens)
        worst = max(worst, float(np.abs(logits - seq2seq_logits(ref, src, src_mask, dec)[:, -1]).max()))
    return worst


def assert_scores_equal(got, want, atol: float = 1e-4) -> None:
    """onnxlm's per-step scores (numpy [b, V] each) vs transformers' (torch): as many steps, the same -inf pattern,
    the finite values within ``atol``."""
    assert len(got) == len(want)
    for step, (g, w) in enumerate(zip(got, want)):
        w = w.numpy()
        finite = np.isfinite(w)
        np.testing.assert_array_equal(np.isfinite(g), finite, err_msg=f"-inf pattern, step {step}")
        assert np.abs(g[finite] - w[finite]).max() <= atol, step


def assert_beam_equal(got, want, atol: float = 1e-4) -> None:
    """An onnxlm beam-search result vs transformers' generate output: identical sequences and beam indices,
    sequence scores and per-step scores within ``atol``."""
    np.testing.assert_array_equal(got.sequences, want.sequences.numpy())
    np.testing.assert_array_equal(got.beam_indices, want.beam_indices.numpy())
    assert np.abs(got.sequences_scores - want.sequences_scores.numpy()).max() <= atol
    assert_scores_equal(got.scores, want.scores, atol)


def llguidance_mask_processor(tokenizer_json: str, n_vocab: int, eos: int, grammars: list, t0: int,
                              rows_per_item: int = 1):
    """A transformers LogitsProcessor applying llguidance's mask: for each row a fresh matcher (no state carried
    between steps) consumes the row's new tokens (columns t0..) and the tokens it does not allow next get -inf.
    Row r uses grammars[r // rows_per_item] (None: no mask); finished rows (EOS seen) and rows holding a token the
    grammar refuses (beams kept at -inf) are left unmasked."""
    import llguidance
    import llguidance.numpy as llnp
    from transformers import LogitsProcessor

    tok = llguidance.LLTokenizer(tokenizer_json, n_vocab=n_vocab, eos_token=eos)

    class Mask(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores = scores.clone()
            vocab = scores.shape[1]
            for row in range(input_ids.shape[0]):
                grammar = grammars[row // rows_per_item]
                new = input_ids[row, t0:].tolist()
                if grammar is None or eos in new:
                    continue
                m = llguidance.LLMatcher(tok, grammar)
                if m.try_consume_tokens(new) != len(new):
                    continue
                bits = llnp.allocate_token_bitmask(1, n_vocab)
                llnp.fill_next_token_bitmask(m, bits)
                allowed = np.unpackbits(bits.view(np.uint8), bitorder="little")[:vocab].astype(bool)
                scores[row, torch.from_numpy(~allowed)] = -float("inf")
            return scores

    return Mask()



def pad_blind(model, pad_id: int):
    """A transformers causal LM whose input embedding of ``pad_id`` is zero (its head, tied or not, unchanged): the
    reference for a model whose transformers batch reads its pad tokens (LFM2: its convolutions' padding mask applies
    to a 2-D mask only, and the model passes them a 4-D one). A zero embedding is RMS-normed to zero and convolves to
    nothing, so each left-padded row's logits are those of the row alone (measured: 1.2e-6 apart; with the pad's own
    embedding, 1.76). With ``conv_bias`` the in_proj bias would still reach the convolutions: their in_proj outputs
    are zeroed at the pad positions too (``_mask_lfm2_conv_inputs``)."""
    weight = model.model.embed_tokens.weight.detach().clone()
    weight[pad_id] = 0
    model.model.embed_tokens = torch.nn.Embedding.from_pretrained(weight, freeze=True)
    if model.config.model_type == "lfm2":
        _fix_lfm2_beam_reorder()
        if model.config.conv_bias:
            _mask_lfm2_conv_inputs(model)
    return model


class _MaskedProjection(torch.nn.Module):
    """A convolution layer's in_proj whose output is zero at the pad positions of the model's 2-D attention mask
    (``mask["now"]``, its last columns: the positions this pass feeds)."""

    def __init__(self, proj: torch.nn.Module, mask: dict):
        super().__init__()
        self.proj, self.mask = proj, mask

    def forward(self, x):
        out = self.proj(x)
        mask = self.mask.get("now")
        if mask is None:
            return out
        return out * mask[:, -x.shape[1]:, None].to(out.dtype)


def _mask_lfm2_conv_inputs(model) -> None:
    """LFM2 with ``conv_bias``: a zero pad embedding still projects to the in_proj bias, which its convolutions read;
    each convolution layer's in_proj output is zeroed at the pad positions instead (a 2-D attention mask taken from
    each forward call), so a left-padded row convolves only its own tokens, as the row alone."""
    mask: dict = {}

    def take_mask(module, args, kwargs):
        m = kwargs.get("attention_mask")
        mask["now"] = m if m is not None and m.dim() == 2 else None

    model.model.register_forward_pre_hook(take_mask, with_kwargs=True)
    for layer in model.model.layers:
        conv = getattr(layer, "conv", None)
        if conv is not None and hasattr(conv, "in_proj"):
            conv.in_proj = _MaskedProjection(conv.in_proj, mask)


def _fix_lfm2_beam_reorder() -> None:
    """transformers 4.57's ``Lfm2HybridConvCache.reorder_cache`` index-selects the empty key/value placeholders of
    its convolution layers (IndexError: LFM2's beam search fails): this process's class gets one that reorders the
    attention layers' keys/values and every convolution state, as it means to."""
    from transformers.models.lfm2.modeling_lfm2 import Lfm2HybridConvCache

    def reorder_cache(self, beam_idx):
        for i in range(len(self.key_cache)):
            if self.key_cache[i].numel():
                self.key_cache[i] = self.key_cache[i].index_select(0, beam_idx.to(self.key_cache[i].device))
                self.value_cache[i] = self.value_cache[i].index_select(0, beam_idx.to(self.value_cache[i].device))
        for i in range(len(self.conv_cache)):
            self.conv_cache[i] = self.conv_cache[i].index_select(0, beam_idx.to(self.conv_cache[i].device))

    Lfm2HybridConvCache.reorder_cache = reorder_cache
