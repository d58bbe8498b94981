"""fp32 logits of the onnxruntime artifacts equal PyTorch's on the same weights (max abs diff <= 1e-4)."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, T5ForConditionalGeneration

import onnxlm
from torch_ref import causal_logits, left_padded_batch, right_padded_batch, seq2seq_logits, seq2seq_steps_max_diff

ATOL = 1e-4


@pytest.fixture(scope="module", params=["tiny_gpt2", "tiny_llama"])
def causal(request):
    art = request.getfixturevalue(request.param)
    return onnxlm.load(art.onnx_dir), AutoModelForCausalLM.from_pretrained(art.hf_dir).eval()


@pytest.fixture(scope="module")
def t5(tiny_t5):
    return onnxlm.load(tiny_t5.onnx_dir), T5ForConditionalGeneration.from_pretrained(tiny_t5.hf_dir).eval()


def test_causal_full_sequence_left_padded_batch_of_3(causal):
    ours, ref = causal
    ids, mask = left_padded_batch(np.random.default_rng(0), [7, 3, 5], ours.vocab_size, ours.pad_id)
    got, want = ours.logits(ids, mask), causal_logits(ref, ids, mask)
    assert got.shape == want.shape
    on = mask.astype(bool)  # padded positions carry no meaning
    assert np.abs(got[on] - want[on]).max() <= ATOL


def test_causal_first_step_and_steps_with_past(causal):
    ours, ref = causal
    ids, mask = left_padded_batch(np.random.default_rng(1), [6, 2, 4], ours.vocab_size, ours.pad_id)
    state, logits = ours.start(ids, mask)
    assert np.abs(logits - causal_logits(ref, ids, mask)[:, -1]).max() <= ATOL   # first step, past length 0
    rng = np.random.default_rng(2)
    for _ in range(4):                                                             # steps with past
        tokens = rng.integers(0, ours.vocab_size, size=len(ids))
        ids = np.concatenate([ids, tokens[:, None]], axis=1)
        mask = np.concatenate([mask, np.ones((len(ids), 1), np.int64)], axis=1)
        logits = state.advance(tokens)
        assert np.abs(logits - causal_logits(ref, ids, mask)[:, -1]).max() <= ATOL


def test_causal_beam_reorder_keeps_logits_exact(causal):
    ours, ref = causal
    ids, mask = left_padded_batch(np.random.default_rng(3), [5, 3, 4], ours.vocab_size, ours.pad_id)
    state, _ = ours.start(ids, mask)
    rows = np.array([2, 2, 0])
    state.select(rows)
    ids, mask = ids[rows], mask[rows]
    tokens = np.array([7, 9, 11])
    logits = state.advance(tokens)
    ids = np.concatenate([ids, tokens[:, None]], axis=1)
    mask = np.concatenate([mask, np.ones((3, 1), np.int64)], axis=1)
    assert np.abs(logits - causal_logits(ref, ids, mask)[:, -1]).max() <= ATOL


def test_t5_full_decoder_logits_padded_batch_of_3(t5):
    ours, ref = t5
    eos = ours.generation_config.eos_token_ids[0]
    src, src_mask = right_padded_batch(np.random.default_rng(4), [6, 3, 8], ours.vocab_size - 4, ours.pad_id, eos)
    dec = np.concatenate([np.full((3, 1), ours.decoder_start_id), np.random.default_rng(5).integers(3, 200, (3, 5))], 1)
    got, want = ours.logits(src, dec, src_mask), seq2seq_logits(ref, src, src_mask, dec)
    assert np.abs(got - want).max() <= ATOL


def test_t5_first_step_and_steps_with_past(t5):
    ours, ref = t5
    eos = ours.generation_config.eos_token_ids[0]
    src, src_mask = right_padded_batch(np.random.default_rng(6), [5, 9, 2], ours.vocab_size - 4, ours.pad_id, eos)
    rng = np.random.default_rng(7)
    steps = [rng.integers(0, ours.vocab_size, size=3) for _ in range(4)]
    assert seq2seq_steps_max_diff(ours, ref, src, src_mask, steps) <= ATOL
