"""Beams and num_return_sequences run the encoder (seq2seq) / the prompt's prefill (decoder-only) once per input
row and then expand the state, as transformers does (it expands after encoding); the results are identical to
expanding the inputs before the first pass."""
import numpy as np
import pytest

import onnxlm
from onnxlm.runtime.decoding.beam import beam_search
from onnxlm.runtime.processors import build_processors
from torch_ref import left_padded_batch, right_padded_batch


@pytest.fixture(scope="module", params=["tiny_gpt2", "tiny_t5"])
def model(request):
    return onnxlm.load(request.getfixturevalue(request.param).onnx_dir)


def inputs(model):
    rng = np.random.default_rng(2)
    if model.is_encoder_decoder:
        eos = model.generation_config.eos_token_ids[0]
        return right_padded_batch(rng, [6, 4], model.vocab_size - 4, model.pad_id, eos)
    return left_padded_batch(rng, [6, 4], model.vocab_size - 4, model.pad_id)


def first_pass_rows(model, monkeypatch) -> list:
    """Record the batch size of every encoder run (seq2seq) or prompt prefill (decoder-only: runs with t > 1)."""
    rows = []
    runner = model.encoder if model.is_encoder_decoder else model.decoder
    run = runner.run

    def counting(feeds, *a, **k):
        if model.is_encoder_decoder or feeds["input_ids"].shape[1] > 1:
            rows.append(feeds["input_ids"].shape[0])
        return run(feeds, *a, **k)

    monkeypatch.setattr(runner, "run", counting)
    return rows


@pytest.mark.parametrize("params", [dict(num_beams=3, num_return_sequences=2), dict(num_beams=2, do_sample=True),
                                    dict(do_sample=True, num_return_sequences=3)], ids=["beam", "beam-sample", "nrs"])
def test_each_row_encoded_once(model, params, monkeypatch):
    ids, mask = inputs(model)
    rows = first_pass_rows(model, monkeypatch)
    res = model.generate(ids, attention_mask=mask, max_new_tokens=4, seed=0, **params)
    assert rows == [len(ids)]
    assert len(res.sequences) == len(ids) * params.get("num_return_sequences", 1)


def test_expanding_after_the_first_pass_gives_the_same_beams(model):
    ids, mask = inputs(model)
    nb = 3
    kw = dict(num_beams=nb, num_return_sequences=2, max_new_tokens=6, eos_token_id=[], output_scores=True)
    got = model.generate(ids, attention_mask=mask, **kw)
    # the inputs expanded before the first pass (the former path): same ids, scores and beam indices
    config = model.resolve_config(kw)
    state, logits = model.start(np.repeat(ids, nb, axis=0), np.repeat(mask, nb, axis=0))
    seqs = model.initial_sequences(np.repeat(ids, nb, axis=0))
    t0 = seqs.shape[1]
    want = beam_search(state, seqs, logits, num_beams=nb, num_return_sequences=2, output_scores=True,
                       processors=build_processors(config, input_length=t0, max_length=t0 + 6),
                       eos_token_ids=[], pad_token_id=model.pad_id, max_length=t0 + 6)
    np.testing.assert_array_equal(got.sequences, want.sequences)
    np.testing.assert_array_equal(got.beam_indices, want.beam_indices)
    np.testing.assert_allclose(got.sequences_scores, want.sequences_scores, atol=1e-5, rtol=0)
    for g, w in zip(got.scores, want.scores):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)
