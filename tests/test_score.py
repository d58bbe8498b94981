"""Sequence scoring equals a direct PyTorch log_softmax computation on the same weights (within 1e-4)."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, T5ForConditionalGeneration

import onnxlm


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2):
    return onnxlm.load(tiny_gpt2.onnx_dir), AutoModelForCausalLM.from_pretrained(tiny_gpt2.hf_dir).eval()


@torch.no_grad()
def torch_token_logprobs(ref, ids: list[int]) -> np.ndarray:
    """log p(ids[i] | ids[:i]) for i >= 1, by a full forward and log_softmax in torch."""
    logits = ref(torch.tensor([ids])).logits[0, :-1]
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()


def test_causal_score_batch_of_texts_with_bos_and_eos(gpt2):
    ours, ref = gpt2
    texts = ["The alligator ate the apple.", "Hi", "See you soon, and then some more words"]
    res = ours.score(texts, prepend_bos=True, append_eos=True)
    bos, eos = ours.generation_config.bos_token_id, ours.generation_config.eos_token_ids[0]
    for text, toks, lps, total in zip(texts, res.tokens, res.token_logprobs, res.sequence_logprobs):
        ids = [bos] + ours.tokenizer.encode(text) + [eos]
        assert toks == ids[1:]
        want = torch_token_logprobs(ref, ids)
        assert np.abs(lps - want).max() <= 1e-4
        assert abs(total - want.sum()) <= 1e-4 * max(1, len(want))


def test_causal_score_of_ids_without_bos(gpt2):
    ours, ref = gpt2
    ids = [72, 101, 108, 108, 111]
    res = ours.score(ids)
    assert res.tokens == [ids[1:]]
    assert np.abs(res.token_logprobs[0] - torch_token_logprobs(ref, ids)).max() <= 1e-4


def test_seq2seq_score_is_log_p_target_given_source(tiny_t5):
    ours = onnxlm.load(tiny_t5.onnx_dir)
    ref = T5ForConditionalGeneration.from_pretrained(tiny_t5.hf_dir).eval()
    sources, targets = ["translate: the house", "hello"], ["das Haus ist", "hallo"]
    res = ours.score(sources, targets=targets)
    for src, tgt, lps, total in zip(sources, targets, res.token_logprobs, res.sequence_logprobs):
        s, t = ours.tokenizer.encode(src), ours.tokenizer.encode(tgt)
        with torch.no_grad():
            logits = ref(input_ids=torch.tensor([s]), labels=torch.tensor([t])).logits[0]
        want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(t)[:, None])[:, 0].numpy()
        assert np.abs(lps - want).max() <= 1e-4
        assert abs(total - want.sum()) <= 1e-4 * len(want)


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return onnxlm.load(tiny_llama.onnx_dir), AutoModelForCausalLM.from_pretrained(tiny_llama.hf_dir).eval()


def test_prepend_bos_never_doubles_the_tokenizers_bos(llama):
    """The Llama tokenizer already starts every text with <s>: prepend_bos must not add a second one."""
    ours, ref = llama
    bos = ours.generation_config.bos_token_id
    text = "The alligator ate the apple."
    encoded = ours.tokenizer.encode(text)
    assert encoded[0] == bos and encoded[1] != bos
    res = ours.score(text, prepend_bos=True)
    assert res.tokens == [encoded[1:]]
    assert np.abs(res.token_logprobs[0] - torch_token_logprobs(ref, encoded)).max() <= 1e-4
    ids_without_bos = encoded[1:]
    res_ids = ours.score(ids_without_bos, prepend_bos=True)  # ids without BOS: it is added once
    assert res_ids.tokens == [ids_without_bos]
    np.testing.assert_allclose(res_ids.token_logprobs[0], res.token_logprobs[0], atol=1e-6)


def test_append_eos_never_doubles_an_eos(llama):
    ours, ref = llama
    eos = ours.generation_config.eos_token_ids[0]
    ids = ours.tokenizer.encode("Hi there") + [eos]
    res = ours.score(ids, append_eos=True)
    assert res.tokens == [ids[1:]]
    assert np.abs(res.token_logprobs[0] - torch_token_logprobs(ref, ids)).max() <= 1e-4
