"""onnxlm accepts what transformers' generate accepts and refuses what it refuses (same call, same weights), and
the length/pad divergences found in review: max_length at or below the prompt, a prompt that fills max_positions,
pad_token_id=-1, harmless transformers keys."""
import math
import warnings

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import onnxlm
from onnxlm.runtime.errors import ParameterError
from torch_ref import left_padded_batch

#: (generate kwargs) -> both accept or both refuse; every case runs through both libraries
CASES = [
    dict(do_sample=True, top_p=0.0),            # accepted: keeps the top token (min_tokens_to_keep)
    dict(do_sample=True, top_p=1.5),            # accepted: top_p >= 1 disables the warper
    dict(do_sample=True, top_p=-0.1),           # refused
    dict(do_sample=True, temperature=0.0),      # refused
    dict(do_sample=True, temperature=-1.0),     # refused
    dict(do_sample=False, temperature=0.0),     # accepted: temperature unused by greedy
    dict(do_sample=False, temperature=-1.0),    # accepted (transformers only warns)
    dict(do_sample=True, top_k=-1),             # refused
    dict(do_sample=False, top_k=-1),            # accepted: unused
    dict(do_sample=True, top_k=0),              # accepted: 0 disables top-k
    dict(do_sample=True, typical_p=0.0),        # refused
    dict(do_sample=True, typical_p=1.5),        # accepted: >= 1 disables it
    dict(do_sample=True, min_p=1.5),            # refused
    dict(do_sample=False, min_p=1.5),           # accepted: unused
    dict(repetition_penalty=0.0),               # refused
    dict(repetition_penalty=-1.0),              # refused
    dict(repetition_penalty=float("inf")),      # accepted
    dict(no_repeat_ngram_size=-2),              # accepted: <= 0 disables it
    dict(min_length=-1),                        # accepted: <= 0 disables it
    dict(max_new_tokens=0),                     # refused
    dict(max_new_tokens=-3),                    # refused
    dict(num_return_sequences=2),               # refused: greedy returns one sequence
    dict(num_beams=2, num_return_sequences=3),  # refused
    dict(early_stopping="always", num_beams=2),  # refused
    dict(use_cache=False),                      # accepted (no effect here)
    dict(output_attentions=True),               # accepted (no effect here)
    dict(output_hidden_states=True),            # accepted (no effect here)
    dict(return_dict_in_generate=True),         # accepted (no effect here)
]


@pytest.fixture(scope="module")
def pair(tiny_gpt2):
    return onnxlm.load(tiny_gpt2.onnx_dir), AutoModelForCausalLM.from_pretrained(tiny_gpt2.hf_dir).eval()


def _accepts(call) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call()
        return True
    except (ValueError, TypeError):  # ParameterError is a ValueError
        return False


@pytest.mark.parametrize("kw", CASES, ids=[",".join(f"{k}={v}" for k, v in c.items()) for c in CASES])
def test_accepts_exactly_what_transformers_accepts(pair, kw):
    ours, ref = pair
    ids = np.array([[72, 101, 108, 108, 111]])
    theirs = _accepts(lambda: ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.ones_like(torch.tensor(ids)),
                                           max_new_tokens=kw.get("max_new_tokens", 2), pad_token_id=ours.pad_id,
                                           **{k: v for k, v in kw.items() if k != "max_new_tokens"}))
    mine = _accepts(lambda: ours.generate(ids, max_new_tokens=kw.get("max_new_tokens", 2),
                                          **{k: v for k, v in kw.items() if k != "max_new_tokens"}))
    assert mine == theirs, f"transformers {'accepts' if theirs else 'refuses'} {kw}, onnxlm does not agree"


def test_nan_is_refused_where_transformers_would_answer_nonsense(pair):
    """A deliberate difference: transformers lets a NaN temperature through when it is unused; onnxlm refuses NaN
    for every numeric parameter (it can only be a mistake)."""
    ours, _ = pair
    with pytest.raises(ParameterError, match="temperature.*not NaN"):
        ours.generate("hi", max_new_tokens=2, temperature=math.nan)


def test_no_effect_keys_warn_once(pair):
    ours, _ = pair
    from onnxlm.runtime import generation_config as gc
    gc._WARNED.discard("no-effect:output_hidden_states")
    with pytest.warns(UserWarning, match="output_hidden_states.*no effect"):
        ours.generate("hi", max_new_tokens=2, output_hidden_states=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is silent
        ours.generate("hi", max_new_tokens=2, output_hidden_states=True)


@pytest.mark.parametrize("kw", [dict(max_length=5), dict(max_length=3)], ids=["equal", "below"])
def test_max_length_at_or_below_the_prompt_is_refused_like_transformers(pair, kw):
    ours, ref = pair
    ids = np.array([[72, 101, 108, 108, 111]])  # 5 tokens
    with pytest.raises(ValueError, match="max_length"):
        ref.generate(input_ids=torch.tensor(ids), pad_token_id=ours.pad_id, **kw)
    for extra in (dict(), dict(do_sample=True, seed=0), dict(num_beams=2)):
        with pytest.raises(ParameterError) as e:
            ours.generate(ids, **kw, **extra)
        assert e.value.parameter == "max_length" and "5" in str(e.value)


def test_prompt_filling_max_positions_is_refused(pair):
    ours, _ = pair
    full = np.full((1, ours.max_positions), 72)
    with pytest.raises(ParameterError, match="max_positions"):
        ours.generate(full)  # default length: 20 new tokens capped at max_positions -> none left
    with pytest.raises(ParameterError, match="max_positions"):
        ours.generate(full, max_new_tokens=1)


def test_pad_token_id_minus_one_falls_back_to_eos(tiny_llama):
    """Old Llama configs carry pad_token_id=-1: transformers' batch generation then fails on the embedding; onnxlm
    pads with the EOS id (transformers' own fallback when no pad is set) and says so once. The ids equal
    transformers' generate given that pad explicitly."""
    ours = onnxlm.load(tiny_llama.onnx_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama.hf_dir).eval()
    eos = ours.generation_config.eos_token_ids[0]
    from onnxlm.runtime import generation_config as gc
    gc._WARNED.clear()
    with pytest.warns(UserWarning, match="pad_token_id=-1"):
        res = ours.generate(["Hello there", "Hi"], pad_token_id=-1, max_new_tokens=5, eos_token_id=[])
    assert ours.pad_for(ours.generation_config.replace(pad_token_id=-1)) == eos
    ids, mask = left_padded_batch(np.random.default_rng(0), [6, 3], ours.vocab_size - 4, eos)
    got = ours.generate(ids, attention_mask=mask, pad_token_id=-1, max_new_tokens=5, eos_token_id=[])
    with torch.no_grad():
        want = ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                            max_new_tokens=5, pad_token_id=eos, eos_token_id=None)
    np.testing.assert_array_equal(got.sequences, want.numpy())
    assert res.sequences.shape == (2, res.sequences.shape[1]) and (res.sequences >= 0).all()


def test_beam_new_tokens_keep_a_generated_pad_id(pair):
    """Without EOS, a beam row whose last generated token happens to be the pad id keeps it in new_tokens/text
    (the new length comes from beam_indices, not from stripping trailing pads)."""
    ours, _ = pair
    free = ours.generate([[72, 101, 108], [104, 105, 32]], num_beams=2, max_new_tokens=5, eos_token_id=[])
    last = free.new_tokens[0][-1]
    got = ours.generate([[72, 101, 108], [104, 105, 32]], num_beams=2, max_new_tokens=5, eos_token_id=[],
                        pad_token_id=last)
    t0 = 3
    assert got.new_tokens[0] == got.sequences[0, t0:].tolist() and got.new_tokens[0][-1] == last
    assert all(len(t) == 5 for t in got.new_tokens)
