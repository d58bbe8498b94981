"""The fused T5 graphs (export/fused_t5.py: encoder giving the cross keys/values once, decoder with
GroupQueryAttention self-attention on in-place KV buffers + relative position bias, MultiHeadAttention cross-attention;
runtime/fused_seq2seq.py) against transformers on the same weights.

Recipes: tiny-t5 (relu, untied head; conftest's checkpoint) and families/tiny-t5-gated-gelu-tied (gated gelu_new, tied
head scaled by d_model ** -0.5). Each is exported once per session with the default kv_layout ("auto" must pick the
fused graphs).
"""
from __future__ import annotations


import numpy as np
import pytest

pytest.importorskip("torch", reason="fused tests need the 'export' extra")

import torch  # noqa: E402
from transformers import T5ForConditionalGeneration  # noqa: E402

import onnxlm  # noqa: E402
from conftest import export_recipes, fused_manifest  # noqa: E402
from onnxlm.export import export_model  # noqa: E402
from onnxlm.runtime.fused_seq2seq import FusedSeq2SeqLM  # noqa: E402
from torch_ref import (assert_beam_equal, right_padded_batch, seq2seq_logits,  # noqa: E402
                       seq2seq_steps_max_diff)

ATOL = 1e-4
NEW = 6
SOURCES = [7, 3, 5]  # right-padded encoder batch of 3
NAMES = ["tiny-t5", "families/tiny-t5-gated-gelu-tied"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def fused_t5_dirs(tmp_path_factory, tiny_t5):
    """recipe name -> (hf dir, artifact dir exported with the default kv_layout)."""
    return export_recipes(tmp_path_factory, NAMES, tiny_t5)  # kv_layout="auto"


@pytest.fixture(scope="module", params=NAMES, ids=lambda n: n.split("/")[-1])
def fused(request, fused_t5_dirs):
    hf, art = fused_t5_dirs[request.param]
    return onnxlm.load(art), T5ForConditionalGeneration.from_pretrained(hf).eval()


def _batch(ours, seed):
    eos = ours.generation_config.eos_token_ids[0]
    return right_padded_batch(np.random.default_rng(seed), SOURCES, ours.vocab_size - 4, ours.pad_id, eos)


@pytest.mark.parametrize("name", NAMES, ids=lambda n: n.split("/")[-1])
def test_auto_layout_is_the_fused_graph(fused_t5_dirs, name):
    import onnx

    _, art = fused_t5_dirs[name]
    manifest = fused_manifest(art, FusedSeq2SeqLM)
    assert manifest["kind"] == "seq2seq-lm"
    decoder = onnx.load(str(art / manifest["graphs"]["decoder"]["file"])).graph
    ops = [n.op_type for n in decoder.node]
    assert ops.count("GroupQueryAttention") == 2 and ops.count("MultiHeadAttention") == 2
    assert ("lm_head.weight" in {i.name for i in decoder.initializer}) == ("tied" not in name)


def test_logits_every_position_then_steps_with_past(fused):
    ours, ref = fused
    src, mask = _batch(ours, seed=1)
    rng = np.random.default_rng(2)
    dec = np.concatenate([ours.initial_sequences(src), rng.integers(3, ours.vocab_size - 4, size=(3, 4))], axis=1)
    assert np.abs(ours.logits(src, dec, mask) - seq2seq_logits(ref, src, mask, dec)).max() <= ATOL
    steps = [rng.integers(3, ours.vocab_size - 4, size=3) for _ in range(4)]
    assert seq2seq_steps_max_diff(ours, ref, src, mask, steps) <= ATOL


@torch.no_grad()
def _hf_generate(ref, src, mask, new=NEW, **kw):
    return ref.generate(input_ids=torch.tensor(src), attention_mask=torch.tensor(mask), do_sample=False,
                        max_new_tokens=new, eos_token_id=None, return_dict_in_generate=True, output_scores=True,
                        **kw)


def test_greedy_ids_and_scores_equal_transformers(fused):
    ours, ref = fused
    src, mask = _batch(ours, seed=3)
    got = ours.generate(src, attention_mask=mask, max_new_tokens=NEW, eos_token_id=[], output_scores=True,
                        repetition_penalty=1.3)
    want = _hf_generate(ref, src, mask, repetition_penalty=1.3)
    np.testing.assert_array_equal(got.sequences, want.sequences.numpy())
    assert len(got.scores) == len(want.scores) == NEW
    for g, w in zip(got.scores, want.scores):
        assert np.abs(g - w.numpy()).max() <= ATOL


def test_beam_ids_and_scores_equal_transformers(fused):
    ours, ref = fused
    src, mask = _batch(ours, seed=4)
    kw = dict(num_beams=3, num_return_sequences=2, length_penalty=0.5)
    got = ours.generate(src, attention_mask=mask, max_new_tokens=NEW, eos_token_id=[], output_scores=True, **kw)
    want = _hf_generate(ref, src, mask, **kw)  # beam search reorders the buffers' rows (select)
    assert_beam_equal(got, want, ATOL)


def test_buffers_grow_by_doubling_through_a_beam_search(fused_t5_dirs):
    hf, art = fused_t5_dirs["tiny-t5"]
    ours, ref = onnxlm.load(art), T5ForConditionalGeneration.from_pretrained(hf).eval()
    ours.initial_buffer_length = 2
    src, mask = _batch(ours, seed=5)
    state, _ = ours.start(src, mask)
    held = state.buffers.arrays["past_key_values.0.key"]
    state.advance(np.array([5, 6, 7]))  # 2 positions: fits, written in place
    assert state.buffers.arrays["past_key_values.0.key"] is held and np.abs(held[:, :, 1]).max() > 0
    state.advance(np.array([5, 6, 7]))  # 3 positions: the buffers double
    assert state.buffers.capacity == 4
    got = ours.generate(src, attention_mask=mask, max_new_tokens=12, eos_token_id=[], num_beams=2)
    want = _hf_generate(ref, src, mask, new=12, num_beams=2)
    np.testing.assert_array_equal(got.sequences, want.sequences.numpy())


def test_score_equals_the_plain_artifact(fused_t5_dirs, tiny_t5):
    fused_model, plain = onnxlm.load(fused_t5_dirs["tiny-t5"][1]), onnxlm.load(tiny_t5.onnx_dir)
    sources, targets = ["hello world", "a", "the quick brown fox"], ["hi", "a b c", "x"]
    got, want = fused_model.score(sources, targets=targets), plain.score(sources, targets=targets)
    assert [list(t) for t in got.tokens] == [list(t) for t in want.tokens]
    for g, w in zip(got.token_logprobs, want.token_logprobs):
        assert np.abs(g - w).max() <= ATOL
    assert np.abs(got.sequence_logprobs - want.sequence_logprobs).max() <= ATOL


@pytest.mark.parametrize("setting,message", [({"d_kv": 4}, "head_dim 4 is not a multiple of 8"),
                                             ({"feed_forward_proj": "gated-silu"}, "activation 'silu'")])
def test_configs_the_graphs_cannot_express_fall_back_to_plain(setting, message, tmp_path):
    from transformers import T5Config

    from onnxlm.export import ExportError
    from onnxlm.export.fused import fused_supported

    torch.manual_seed(0)
    config = T5Config(**{"vocab_size": 64, "d_model": 16, "d_kv": 8, "d_ff": 32, "num_layers": 1, "num_heads": 2,
                         "decoder_start_token_id": 0, **setting})
    model = T5ForConditionalGeneration(config).eval()
    assert not fused_supported(model)
    with pytest.raises(ExportError, match=message):
        export_model(model, tmp_path / "fused", progress=False, kv_layout="fused", validate=False)
