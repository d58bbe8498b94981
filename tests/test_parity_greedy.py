"""Greedy token ids equal transformers' generate(do_sample=False) on the same weights: batch of 1, left-padded
batch, and a batch where EOS ends one row early (finished rows then emit pad, as transformers does)."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, T5ForConditionalGeneration

import onnxlm
from torch_ref import left_padded_batch, right_padded_batch

NEW = 12


@pytest.fixture(scope="module", params=["tiny_gpt2", "tiny_llama", "tiny_t5"])
def pair(request):
    art = request.getfixturevalue(request.param)
    cls = T5ForConditionalGeneration if request.param == "tiny_t5" else AutoModelForCausalLM
    return onnxlm.load(art.onnx_dir), cls.from_pretrained(art.hf_dir).eval()


def batch(ours, lengths, seed):
    rng = np.random.default_rng(seed)
    if ours.is_encoder_decoder:
        return right_padded_batch(rng, lengths, ours.vocab_size - 4, ours.pad_id, ours.generation_config.eos_token_ids[0])
    return left_padded_batch(rng, lengths, ours.vocab_size - 4, ours.pad_id)


@torch.no_grad()
def hf_greedy(ref, ids, mask, **kw):
    out = ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                       max_new_tokens=NEW, **kw)
    return out.numpy()


@pytest.mark.parametrize("lengths", [[5], [7, 2, 4]], ids=["batch1", "leftpad3"])
def test_greedy_ids_equal_transformers(pair, lengths):
    ours, ref = pair
    ids, mask = batch(ours, lengths, seed=len(lengths))
    pad = ours.pad_id
    # the tiny random models rarely emit EOS: disable it so every row runs the full length
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=[])
    want = hf_greedy(ref, ids, mask, eos_token_id=None, pad_token_id=pad)
    np.testing.assert_array_equal(got.sequences, want)
    assert got.finish_reasons == ["length"] * len(lengths)


def test_greedy_eos_reached_early_in_one_row(pair):
    ours, ref = pair
    ids, mask = batch(ours, [6, 3, 5], seed=11)
    pad = ours.pad_id
    free = hf_greedy(ref, ids, mask, eos_token_id=None, pad_token_id=pad)
    t0 = free.shape[1] - NEW
    # choose as EOS a token that one row emits early and another row never emits: one stops, the other runs on
    new = free[:, t0:]
    choice = next(((int(tok), stop, go) for stop in range(3) for tok in new[stop, 1:NEW - 2]
                   for go in range(3) if go != stop and tok not in new[go] and tok != pad), None)
    assert choice is not None, f"no separating token in {new}"
    eos, stop, go = choice
    want = hf_greedy(ref, ids, mask, eos_token_id=eos, pad_token_id=pad)
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=pad)
    np.testing.assert_array_equal(got.sequences, want[:, :got.sequences.shape[1]])
    assert want.shape[1] == got.sequences.shape[1]
    assert got.finish_reasons[stop] == "eos" and got.finish_reasons[go] == "length"
    assert got.sequences[stop, -1] == pad  # the finished row emits pad afterwards


def test_scores_and_logits_per_step_match_transformers(pair):
    ours, ref = pair
    ids, mask = batch(ours, [4, 6], seed=3)
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=5, eos_token_id=[], output_scores=True,
                        output_logits=True, repetition_penalty=1.3)
    with torch.no_grad():
        want = ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                            max_new_tokens=5, eos_token_id=None, pad_token_id=ours.pad_id, output_scores=True,
                            output_logits=True, return_dict_in_generate=True, repetition_penalty=1.3)
    np.testing.assert_array_equal(got.sequences, want.sequences.numpy())
    assert len(got.scores) == len(want.scores) == 5
    for a, b in zip(got.scores, want.scores):
        assert np.abs(a - b.numpy()).max() <= 1e-4
    for a, b in zip(got.logits, want.logits):
        assert np.abs(a - b.numpy()).max() <= 1e-4


@pytest.mark.parametrize("num_beams", [1, 3])
def test_defaults_from_generation_config_equal_transformers(pair, num_beams):
    """No length or EOS arguments: both sides take generation_config.json (20 new tokens, the model's EOS/pad)."""
    ours, ref = pair
    ids, mask = ours.prepare_inputs(["Hello there", "Hi"])
    got = ours.generate(ids, attention_mask=mask, num_beams=num_beams)
    with torch.no_grad():
        want = ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), num_beams=num_beams)
    np.testing.assert_array_equal(got.sequences, want.numpy())
