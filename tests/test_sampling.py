"""Sampling (GPT-2, T5, Llama): the processed scores we sample from equal transformers' processors on the same
prefixes; seeded runs are reproducible; the empirical next-token distribution of a tiny model matches
softmax(processed scores)."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig as HFGenerationConfig, T5ForConditionalGeneration

import onnxlm
from torch_ref import left_padded_batch, position_ids, right_padded_batch

CASES = [dict(temperature=0.7), dict(top_k=5), dict(top_p=0.8), dict(min_p=0.05), dict(typical_p=0.9),
         dict(repetition_penalty=1.4, temperature=1.3, top_k=20, top_p=0.95)]


@pytest.fixture(scope="module", params=["tiny_gpt2", "tiny_t5", "tiny_llama"])
def pair(request):
    art = request.getfixturevalue(request.param)
    cls = T5ForConditionalGeneration if request.param == "tiny_t5" else AutoModelForCausalLM
    return onnxlm.load(art.onnx_dir), cls.from_pretrained(art.hf_dir).eval()


@pytest.mark.parametrize("params", CASES, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_processed_scores_equal_transformers(pair, params):
    ours, ref = pair
    rng = np.random.default_rng(0)
    if ours.is_encoder_decoder:
        ids, mask = right_padded_batch(rng, [5, 3], ours.vocab_size - 4, ours.pad_id, ours.generation_config.eos_token_ids[0])
    else:
        ids, mask = left_padded_batch(rng, [5, 3], ours.vocab_size - 4, ours.pad_id)
    got = ours.generate(ids, attention_mask=mask, do_sample=True, seed=1, max_new_tokens=6, eos_token_id=[],
                        output_scores=True, **params)
    cfg = HFGenerationConfig(do_sample=True, max_new_tokens=6, pad_token_id=ours.pad_id, **params)
    t0 = ids.shape[1] if not ours.is_encoder_decoder else 1
    procs = ref._get_logits_processor(generation_config=cfg, input_ids_seq_length=t0, encoder_input_ids=torch.tensor(ids),
                                      prefix_allowed_tokens_fn=None, logits_processor=None, device="cpu")
    seqs = got.sequences
    for step, ours_scores in enumerate(got.scores):
        prefix = seqs[:, :t0 + step]
        with torch.no_grad():
            if ours.is_encoder_decoder:
                logits = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             decoder_input_ids=torch.tensor(prefix)).logits[:, -1]
            else:
                m = np.concatenate([mask, np.ones((len(ids), step), np.int64)], 1)
                logits = ref(input_ids=torch.tensor(prefix), attention_mask=torch.tensor(m),
                             position_ids=position_ids(m)).logits[:, -1]
            want = procs(torch.tensor(prefix), logits).numpy()
        finite = np.isfinite(want)
        np.testing.assert_array_equal(finite, np.isfinite(ours_scores))
        assert np.abs(ours_scores[finite] - want[finite]).max() <= 1e-5 * max(1.0, np.abs(want[finite]).max())


def test_seeded_sampling_is_reproducible_and_returns_n_sequences(pair):
    ours, _ = pair
    kw = dict(do_sample=True, top_k=50, temperature=1.5, max_new_tokens=8, eos_token_id=[], num_return_sequences=3)
    a = ours.generate(["hello", "a longer prompt"], seed=7, **kw)
    b = ours.generate(["hello", "a longer prompt"], seed=7, **kw)
    c = ours.generate(["hello", "a longer prompt"], seed=8, **kw)
    np.testing.assert_array_equal(a.sequences, b.sequences)
    assert a.sequences.shape[0] == 6 and len(a.text) == 6
    assert not np.array_equal(a.sequences, c.sequences)


@pytest.mark.parametrize("params", [dict(), dict(temperature=0.6), dict(top_k=8), dict(top_p=0.7)],
                         ids=["plain", "temperature", "top_k", "top_p"])
def test_empirical_next_token_distribution_matches_softmax(tiny_gpt2, params):
    from scipy_free_chi2 import chi2_sf
    ours = onnxlm.load(tiny_gpt2.onnx_dir)
    n = 4000
    res = ours.generate([[104, 105, 32]] * n, do_sample=True, seed=3, max_new_tokens=1, eos_token_id=[],
                        output_scores=True, temperature=params.get("temperature", 1.5), **{k: v for k, v in params.items() if k != "temperature"})
    scores = res.scores[0][0].astype(np.float64)
    p = np.exp(scores - scores.max()); p /= p.sum()
    counts = np.bincount(res.sequences[:, -1], minlength=len(p))
    assert counts[p == 0].sum() == 0                      # never a filtered-out token
    keep = p * n >= 5                                     # chi-square on cells with expected count >= 5 (+ the rest pooled)
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(p[keep] * n, p[~keep].sum() * n)
    obs, exp = obs[exp > 0], exp[exp > 0]
    stat = ((obs - exp) ** 2 / exp).sum()
    assert chi2_sf(stat, len(obs) - 1) > 1e-4, (stat, len(obs))
