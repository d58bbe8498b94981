"""Every documented decoding parameter through `generate()`: bad_words_ids (single- and multi-token),
suppress_tokens, begin_suppress_tokens, forced_bos_token_id, forced_eos_token_id, max_length, min_length — on a
decoder-only (tiny Llama, left-padded batch) and a seq2seq model (tiny T5, right-padded batch), greedy and beam
search: ids equal to transformers' `generate`, every per-step `scores` array by value (identical -inf pattern),
and for beams `sequences_scores` and `beam_indices`.

Parameter values are read off a run without the parameter (tokens that run actually generates), and each case
asserts that its output differs from that run, so no case can pass vacuously."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, T5ForConditionalGeneration

import onnxlm
from torch_ref import assert_scores_equal, left_padded_batch, right_padded_batch

NEW = 6
NUM_BEAMS = 3
CASES = ["bad_words_single", "bad_words_multi", "suppress_tokens", "begin_suppress_tokens", "forced_bos_token_id",
         "forced_eos_token_id", "max_length", "min_length"]


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_t5"])
def setup(request):
    art = request.getfixturevalue(request.param)
    cls = T5ForConditionalGeneration if request.param == "tiny_t5" else AutoModelForCausalLM
    ours, ref = onnxlm.load(art.onnx_dir), cls.from_pretrained(art.hf_dir).eval()
    rng = np.random.default_rng(11)
    if ours.is_encoder_decoder:
        batch = right_padded_batch(rng, [6, 4, 5], ours.vocab_size - 4, ours.pad_id,
                                   ours.generation_config.eos_token_ids[0])
    else:
        batch = left_padded_batch(rng, [6, 3, 5], ours.vocab_size - 4, ours.pad_id)
    return ours, ref, batch, {}


def hf_generate(ref, ids, mask, **kw):
    with torch.no_grad():
        return ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                            return_dict_in_generate=True, output_scores=True, **kw)


def new_tokens(out, ours, t0):
    """transformers output -> list of rows of generated ids (decoder-only: after the prompt)."""
    seqs = out.sequences.numpy()
    return seqs[:, 1:] if ours.is_encoder_decoder else seqs[:, t0:]


def baseline(setup, num_beams):
    """(eos, base kwargs, transformers' run with them) for a mode; cached on the setup.

    eos: the token the unconstrained run generates 3rd in row 0, so it is reached mid-way (min_length bites)."""
    ours, ref, (ids, mask), cache = setup
    if num_beams not in cache:
        kw = dict(num_beams=num_beams, pad_token_id=ours.pad_id, max_new_tokens=NEW)
        free = new_tokens(hf_generate(ref, ids, mask, eos_token_id=None, **kw), ours, ids.shape[1])
        eos = int(free[0, 2])
        kw["eos_token_id"] = eos
        cache[num_beams] = eos, kw, hf_generate(ref, ids, mask, **kw)
    return cache[num_beams]


def case_params(name, ours, base_new, eos, t0):
    """Parameter values (read off the run without them) that change the output."""
    first = [int(r[0]) for r in base_new]
    if name == "bad_words_single":
        return dict(bad_words_ids=[[first[0]]])
    if name == "bad_words_multi":  # ban the 2nd token of row 1 after its 1st, plus a 3-token word from row 2
        r1, r2 = base_new[1], base_new[2]
        return dict(bad_words_ids=[[int(r1[0]), int(r1[1])], [int(r2[0]), int(r2[1]), int(r2[2])]])
    if name == "suppress_tokens":
        return dict(suppress_tokens=sorted({first[0], int(base_new[0][1]), first[2]} - {eos}))
    if name == "begin_suppress_tokens":
        return dict(begin_suppress_tokens=sorted(set(first) - {eos}))
    if name == "forced_bos_token_id":  # acts when cur_len == 1: T5's first step; decoder-only needs 1-token prompts
        return dict(forced_bos_token_id=next(t for t in (7, 8, 9) if t not in first))
    if name == "forced_eos_token_id":  # the last position is forced to the EOS
        return dict(forced_eos_token_id=eos)
    if name == "max_length":  # total length (decoder-only: prompt incl. padding; T5: decoder ids incl. start)
        return dict(max_length=t0 + 3)
    if name == "min_length":  # EOS is reached at the 3rd new token in row 0: forbid it until 5
        return dict(min_length=t0 + 5)
    raise KeyError(name)


@pytest.mark.parametrize("num_beams", [1, NUM_BEAMS], ids=["greedy", "beam"])
@pytest.mark.parametrize("name", CASES)
def test_parameter_through_generate_equals_transformers(setup, name, num_beams):
    ours, ref, (ids, mask), _ = setup
    eos, base_kw, base = baseline(setup, num_beams)
    if name == "forced_bos_token_id" and not ours.is_encoder_decoder:
        # ForcedBOS acts only when the sequence has 1 id: a batch of 1-token prompts
        ids, mask = ids[:, -1:], mask[:, -1:]
        base = hf_generate(ref, ids, mask, **base_kw)
    t0 = 1 if ours.is_encoder_decoder else ids.shape[1]
    params = case_params(name, ours, new_tokens(base, ours, t0), eos, t0)
    kw = dict(base_kw, **params)
    if "max_length" in params:
        del kw["max_new_tokens"]  # max_new_tokens would win over max_length
    want = hf_generate(ref, ids, mask, **kw)
    got = ours.generate(ids, attention_mask=mask, output_scores=True, **kw)
    want_seqs = want.sequences.numpy()
    np.testing.assert_array_equal(got.sequences, want_seqs)
    assert_scores_equal(got.scores, want.scores)
    if num_beams > 1:
        assert np.abs(got.sequences_scores - want.sequences_scores.numpy()).max() <= 1e-4
        np.testing.assert_array_equal(got.beam_indices, want.beam_indices.numpy())
    # the parameter changed the result (else this case would test nothing)
    base_seqs = base.sequences.numpy()
    assert base_seqs.shape != want_seqs.shape or not np.array_equal(base_seqs, want_seqs), params
