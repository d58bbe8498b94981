"""Beam search on the ONNX artifacts: token ids and beam_indices identical, sequences_scores and every step's
processed scores within 1e-4 of transformers' generate on the same weights (GPT-2, T5, Llama with grouped-query
attention), over the grid num_beams x length_penalty x early_stopping x num_return_sequences x
(repetition_penalty + no_repeat_ngram_size on/off) x (batch of 1, left-padded batch of 3), with an EOS that beams
reach at different steps."""
import itertools

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, T5ForConditionalGeneration

import onnxlm
from torch_ref import assert_beam_equal, left_padded_batch, right_padded_batch

NEW = 8
GRID = list(itertools.product([2, 4], [0.5, 1.0, 2.0], [True, False, "never"], [1, 2], [False, True]))
_SETUPS = {}


@pytest.fixture(scope="module", params=["tiny_gpt2", "tiny_t5", "tiny_llama"])
def setup(request):
    return _setup(request, request.param)


def _setup(request, name):
    """(ours, ref, batches, eos) for a tiny model, built once per module."""
    if name not in _SETUPS:
        _SETUPS[name] = _build(request.getfixturevalue(name), name)
    return _SETUPS[name]


def _build(art, name):
    cls = T5ForConditionalGeneration if name == "tiny_t5" else AutoModelForCausalLM
    ours, ref = onnxlm.load(art.onnx_dir), cls.from_pretrained(art.hf_dir).eval()
    rng = np.random.default_rng(5)
    if ours.is_encoder_decoder:
        eos0 = ours.generation_config.eos_token_ids[0]
        batches = [right_padded_batch(rng, n, ours.vocab_size - 4, ours.pad_id, eos0) for n in ([6], [7, 3, 5])]
    else:
        batches = [left_padded_batch(rng, n, ours.vocab_size - 4, ours.pad_id) for n in ([6], [7, 3, 5])]
    # an EOS the beams actually reach mid-way: the most frequent token of step 3..5 in an unconstrained search
    ids, mask = batches[1]
    with torch.no_grad():
        free = ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), num_beams=4,
                            num_return_sequences=4, do_sample=False, max_new_tokens=NEW, eos_token_id=None,
                            pad_token_id=ours.pad_id).numpy()
    mid = free[:, -NEW + 2:-NEW + 5].ravel()
    mid = mid[mid != ours.pad_id]
    counts = np.bincount(mid)
    # the most frequent such token that ends some returned beams early (a finished beam can be evicted by
    # longer ones with a better length-normalised score, so check it)
    for eos in np.argsort(-counts, kind="stable")[:10]:
        got = ours.generate(ids, attention_mask=mask, num_beams=4, num_return_sequences=4, eos_token_id=int(eos),
                            pad_token_id=ours.pad_id, max_new_tokens=NEW)
        if "eos" in got.finish_reasons and len({len(t) for t in got.new_tokens}) > 1:
            break
    return ours, ref, batches, int(eos)


def hf_beam(ref, ids, mask, **kw):
    with torch.no_grad():
        out = ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                           return_dict_in_generate=True, output_scores=True, **kw)
    return out


@pytest.fixture(scope="module", params=["tiny_gpt2", "tiny_t5", "tiny_llama"])
def setup_full_grid(request):
    """Every model runs the full grid; tiny_llama's grouped-query KV cache is reordered by the same select."""
    return _setup(request, request.param)


@pytest.mark.parametrize("num_beams,length_penalty,early_stopping,nrs,procs", GRID)
def test_beam_search_equals_transformers(setup_full_grid, num_beams, length_penalty, early_stopping, nrs, procs):
    check_grid_point(setup_full_grid, num_beams, length_penalty, early_stopping, nrs, procs)




def check_grid_point(setup, num_beams, length_penalty, early_stopping, nrs, procs):
    ours, ref, batches, eos = setup
    kw = dict(num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
              num_return_sequences=nrs, eos_token_id=eos, pad_token_id=ours.pad_id, max_new_tokens=NEW)
    if procs:
        kw.update(repetition_penalty=1.5, no_repeat_ngram_size=2)
    finished_early = 0
    for ids, mask in batches:
        want = hf_beam(ref, ids, mask, **kw)
        got = ours.generate(ids, attention_mask=mask, output_scores=True, **kw)
        assert_beam_equal(got, want)  # ids, beam indices, sequence scores, every step's processed log-probs
        finished_early += sum(r == "eos" for r in got.finish_reasons)
    assert len(got.text) == 3 * nrs


def test_grid_reaches_eos_at_different_steps(setup):
    """The chosen EOS really ends some beams before max length (else the grid would not test EOS handling)."""
    ours, ref, batches, eos = setup
    ids, mask = batches[1]
    got = ours.generate(ids, attention_mask=mask, num_beams=4, num_return_sequences=4, eos_token_id=eos,
                        pad_token_id=ours.pad_id, max_new_tokens=NEW)
    lengths = {len(t) for t in got.new_tokens}
    assert "eos" in got.finish_reasons and len(lengths) > 1


@pytest.mark.parametrize("num_beams", [2, 4])
def test_beam_min_new_tokens_masks_eos_like_transformers(setup, num_beams):
    ours, ref, batches, eos = setup
    kw = dict(num_beams=num_beams, eos_token_id=eos, pad_token_id=ours.pad_id, max_new_tokens=NEW, min_new_tokens=5)
    for ids, mask in batches:
        want = hf_beam(ref, ids, mask, **kw)
        got = ours.generate(ids, attention_mask=mask, **kw)
        np.testing.assert_array_equal(got.sequences, want.sequences.numpy())
        assert np.abs(got.sequences_scores - want.sequences_scores.numpy()).max() <= 1e-4
        assert all(len(t) >= 5 for t in got.new_tokens)


def _tie_cases(ours, eos):
    """Beam searches whose top-k meets exact ties (torch's CPU topk order decides): forced EOS ids at log-prob 0
    each, fewer live candidates than beams (many EOS ids: the rest filled from -1e9 placeholders, which float32
    rounds to one value), one forced step with more returned rows than finite candidates."""
    common = dict(pad_token_id=ours.pad_id)
    yield dict(max_new_tokens=1, num_beams=2, forced_eos_token_id=[eos, eos + 1], **common)
    yield dict(max_new_tokens=3, num_beams=3, num_return_sequences=2, forced_eos_token_id=[eos + 1, eos], **common)
    yield dict(max_new_tokens=4, num_beams=3, eos_token_id=list(range(3, 40)), **common)
    yield dict(max_new_tokens=1, num_beams=4, num_return_sequences=2, forced_bos_token_id=eos, eos_token_id=None,
               **common)
    yield dict(max_new_tokens=1, num_beams=3, num_return_sequences=2, forced_eos_token_id=eos, **common)


def test_beam_ties_are_broken_as_torch_topk_breaks_them(setup):
    """Ids, beam indices, sequence scores and every step's scores equal transformers' where the top-k ties."""
    ours, ref, batches, eos = setup
    for kw in _tie_cases(ours, eos):
        for ids, mask in batches:
            want = hf_beam(ref, ids, mask, **kw)
            got = ours.generate(ids, attention_mask=mask, output_scores=True, **kw)
            assert_beam_equal(got, want)
