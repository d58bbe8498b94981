"""The parity checks on the CUDA execution provider (onnxruntime-gpu); skipped where CUDA is unavailable."""
import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import AutoModelForCausalLM, T5ForConditionalGeneration

import onnxlm
from torch_ref import causal_logits, left_padded_batch, right_padded_batch, seq2seq_logits

pytestmark = pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                                reason="CUDA execution provider not available (install onnxruntime-gpu on a GPU host)")


def test_cuda_causal_logits_steps_and_greedy(tiny_gpt2):
    ours = onnxlm.load(tiny_gpt2.onnx_dir, provider="cuda")
    ref = AutoModelForCausalLM.from_pretrained(tiny_gpt2.hf_dir).eval()
    ids, mask = left_padded_batch(np.random.default_rng(0), [6, 2, 4], ours.vocab_size - 4, ours.pad_id)
    state, logits = ours.start(ids, mask)
    assert np.abs(logits - causal_logits(ref, ids, mask)[:, -1]).max() <= 1e-4
    for t in range(3):
        tokens = np.array([5 + t, 9, 11])
        ids = np.concatenate([ids, tokens[:, None]], 1)
        mask = np.concatenate([mask, np.ones((3, 1), np.int64)], 1)
        assert np.abs(state.advance(tokens) - causal_logits(ref, ids, mask)[:, -1]).max() <= 1e-4
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=[])
    with torch.no_grad():
        want = ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                            max_new_tokens=8, eos_token_id=None, pad_token_id=ours.pad_id).numpy()
    np.testing.assert_array_equal(got.sequences, want)


def test_cuda_t5_logits_and_beam(tiny_t5):
    ours = onnxlm.load(tiny_t5.onnx_dir, provider="cuda")
    ref = T5ForConditionalGeneration.from_pretrained(tiny_t5.hf_dir).eval()
    eos = ours.generation_config.eos_token_ids[0]
    src, m = right_padded_batch(np.random.default_rng(1), [5, 3], ours.vocab_size - 4, ours.pad_id, eos)
    state, logits = ours.start(src, m)
    dec = ours.initial_sequences(src)
    assert np.abs(logits - seq2seq_logits(ref, src, m, dec)[:, -1]).max() <= 1e-4
    got = ours.generate(src, attention_mask=m, num_beams=2, max_new_tokens=6, eos_token_id=[])
    with torch.no_grad():
        want = ref.generate(input_ids=torch.tensor(src), attention_mask=torch.tensor(m), num_beams=2,
                            do_sample=False, max_new_tokens=6, eos_token_id=None).numpy()
    np.testing.assert_array_equal(got.sequences, want)
