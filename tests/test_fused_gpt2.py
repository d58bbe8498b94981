"""The fused GPT-2 graph (export/fused_gpt2.py: GroupQueryAttention with in-place KV buffers, learned positions fed
as ``position_ids`` by the runtime) against transformers on the same weights.

Recipes: tiny-gpt2 (tied head: wte stored once; exported with the default kv_layout="auto", which must pick the
fused graph) and families/tiny-gpt2-untied-inverse-layer-scale (untied head, scores of layer i divided by i + 1:
compared with transformers' eager attention, the only one that honours it). Each is exported once per session.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="fused tests need the 'export' extra")

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel  # noqa: E402

import onnxlm  # noqa: E402
from conftest import RECIPES, export_recipes, fused_manifest  # noqa: E402
from onnxlm.export import ExportError, export_model  # noqa: E402
from onnxlm.export.fused import fused_supported  # noqa: E402
from onnxlm.export.onnx_export import attn_implementation_for  # noqa: E402
from onnxlm.runtime.fused_causal import FusedCausalLM  # noqa: E402
from torch_ref import assert_beam_equal, causal_logits, causal_steps_max_diff, left_padded_batch  # noqa: E402

ATOL = 1e-4
NEW = 6
PROMPTS = [7, 3, 5]  # left-padded batch of 3
NAMES = ["tiny-gpt2", "families/tiny-gpt2-untied-inverse-layer-scale"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def fused_gpt2_dirs(tmp_path_factory, tiny_gpt2):
    """recipe name -> (hf dir, artifact dir exported with the default kv_layout); tiny-gpt2 reuses conftest's
    checkpoint."""
    return export_recipes(tmp_path_factory, NAMES, tiny_gpt2)  # kv_layout="auto"


def _reference(hf):
    """transformers on the same weights, with the attention whose semantics the graph follows."""
    impl = attn_implementation_for(AutoConfig.from_pretrained(hf))
    return AutoModelForCausalLM.from_pretrained(hf, **({"attn_implementation": impl} if impl else {})).eval()


@pytest.fixture(scope="module", params=NAMES, ids=lambda n: n.split("/")[-1])
def fused(request, fused_gpt2_dirs):
    hf, art = fused_gpt2_dirs[request.param]
    return onnxlm.load(art), _reference(hf)


def _batch(ours, seed):
    return left_padded_batch(np.random.default_rng(seed), PROMPTS, ours.vocab_size - 4, ours.pad_id)


@pytest.mark.parametrize("name", NAMES, ids=lambda n: n.split("/")[-1])
def test_auto_layout_is_the_fused_graph(fused_gpt2_dirs, name):
    import onnx

    _, art = fused_gpt2_dirs[name]
    manifest = fused_manifest(art, FusedCausalLM)
    assert manifest["model_type"] == "gpt2"
    assert "position_ids" in manifest["graphs"]["decoder"]["inputs"]
    graph = onnx.load(str(art / "model.onnx")).graph
    assert sum(n.op_type == "GroupQueryAttention" for n in graph.node) == 2
    assert ("lm_head.weight" in {i.name for i in graph.initializer}) == ("untied" in name)  # tied: wte serves


def test_logits_left_padded_batch_then_steps_with_past(fused):
    ours, ref = fused
    ids, mask = _batch(ours, seed=1)
    on = mask.astype(bool)
    assert np.abs(ours.logits(ids, mask)[on] - causal_logits(ref, ids, mask)[on]).max() <= ATOL
    rng = np.random.default_rng(2)
    steps = [rng.integers(3, ours.vocab_size - 4, size=3) for _ in range(3)]
    assert causal_steps_max_diff(ours, ref, ids, mask, steps) <= ATOL  # start, then each step with past


@torch.no_grad()
def _hf_generate(ref, ids, mask, **kw):
    return ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                        max_new_tokens=NEW, eos_token_id=None, return_dict_in_generate=True, output_scores=True,
                        **kw)


def test_greedy_ids_and_scores_equal_transformers(fused):
    ours, ref = fused
    ids, mask = _batch(ours, seed=3)
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=[], pad_token_id=ours.pad_id,
                        output_scores=True, repetition_penalty=1.3)
    want = _hf_generate(ref, ids, mask, pad_token_id=ours.pad_id, repetition_penalty=1.3)
    np.testing.assert_array_equal(got.sequences, want.sequences.numpy())
    assert len(got.scores) == len(want.scores) == NEW
    for g, w in zip(got.scores, want.scores):
        assert np.abs(g - w.numpy()).max() <= ATOL


def test_beam_ids_and_scores_equal_transformers(fused):
    ours, ref = fused
    ids, mask = _batch(ours, seed=4)
    kw = dict(num_beams=3, num_return_sequences=2, pad_token_id=ours.pad_id, length_penalty=0.5)
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=[], output_scores=True, **kw)
    want = _hf_generate(ref, ids, mask, **kw)  # beam search reorders the buffers' rows (select)
    assert_beam_equal(got, want, ATOL)


def test_score_equals_the_plain_artifact(fused_gpt2_dirs, tiny_gpt2):
    fused_model, plain = onnxlm.load(fused_gpt2_dirs["tiny-gpt2"][1]), onnxlm.load(tiny_gpt2.onnx_dir)
    texts = ["hello world", "a", "the quick brown fox"]
    got, want = fused_model.score(texts, append_eos=True), plain.score(texts, append_eos=True)
    assert [list(t) for t in got.tokens] == [list(t) for t in want.tokens]
    for g, w in zip(got.token_logprobs, want.token_logprobs):
        assert np.abs(g - w).max() <= ATOL
    assert np.abs(got.sequence_logprobs - want.sequence_logprobs).max() <= ATOL


@pytest.mark.parametrize("setting", [{"reorder_and_upcast_attn": True}, {"scale_attn_weights": False},
                                     {"activation_function": "silu"}])
def test_variants_the_graph_cannot_express_fall_back_to_plain(setting, tmp_path):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=64,
                                       **setting)).eval()
    assert not fused_supported(model)
    name = next(iter(setting))
    with pytest.raises(ExportError, match=name):
        export_model(model, tmp_path / "fused", progress=False, kv_layout="fused", validate=False)
    assert fused_supported(GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32,
                                                      vocab_size=64)))


def test_beam_select_copies_only_the_held_positions_in_place(fused_gpt2_dirs):
    ours = onnxlm.load(fused_gpt2_dirs["tiny-gpt2"][1])
    ids, mask = _batch(ours, seed=5)
    state, _ = ours.start(ids, mask)
    held = int(state.lengths.max())
    buf = state.buffers.arrays["past_key_values.0.key"]
    buf[:, :, held:] = np.arange(len(buf))[:, None, None, None] + 7.0  # whatever each row holds past its length
    before = buf.copy()
    state.select(np.array([2, 0, 0]))  # same batch size (a beam step): rows copied within the same buffer
    got = state.buffers.arrays["past_key_values.0.key"]
    assert got is buf
    np.testing.assert_array_equal(got[:, :, :held], before[[2, 0, 0], :, :held])
    np.testing.assert_array_equal(got[:, :, held:], before[:, :, held:])  # past held: untouched
    np.testing.assert_array_equal(state.lengths, (mask.sum(axis=1))[[2, 0, 0]])
    state.select(np.array([0, 0, 1, 2]))  # another batch size: fresh buffers, zero past held
    got = state.buffers.arrays["past_key_values.0.key"]
    np.testing.assert_array_equal(got[:, :, :held], before[[2, 0, 0]][[0, 0, 1, 2], :, :held])
    assert got.shape == (4,) + buf.shape[1:] and not got[:, :, held:].any()


def test_a_failed_validation_leaves_nothing(tiny_gpt2, tmp_path, monkeypatch):
    real = FusedCausalLM._run
    monkeypatch.setattr(FusedCausalLM, "_run", lambda self, *a: real(self, *a) + 0.01)  # a graph off by 0.01
    with pytest.raises(ExportError, match="validation failed"):
        export_model(tiny_gpt2.hf_dir, tmp_path / "out", progress=False, kv_layout="fused")
    assert list(tmp_path.iterdir()) == []


def test_inverse_layer_scale_is_validated_eager_and_the_callers_setting_restored(tmp_path):
    """The fused graph follows transformers' eager attention (its SDPA path drops the 1/(layer_idx+1) scale): the
    export validates against eager and hands a passed model back with its own attention implementation."""
    from onnxlm.export.recipes import instantiate_recipe

    model, tok, *_ = instantiate_recipe(RECIPES / "families" / "tiny-gpt2-untied-inverse-layer-scale")
    assert model.config._attn_implementation == "sdpa"
    art = export_model(model, tmp_path / "out", progress=False, tokenizer=tok, kv_layout="fused")
    assert model.config._attn_implementation == "sdpa"
    assert json.loads((art / "onnxlm.json").read_text())["validation"]["max_abs_diff"] <= ATOL
