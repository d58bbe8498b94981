"""kv_layout="fused": our GroupQueryAttention graph (export/fused_llama.py) with in-place KV buffers
(runtime/fused_causal.py), against transformers on the same weights (GPT-2: tests/test_fused_gpt2.py).

Recipes: tiny-llama (GQA, tied head: the embedding is stored once), tiny-mistral-sliding-window (window 4, shorter than
every sequence here: proves GQA's local_window_size = sliding_window), tiny-qwen2 (q/k/v bias, per-layer window),
tiny-llama-llama3-rope-bias-untied (llama3 rope scaling, attention + MLP bias, untied head). Each is exported fused
once per session, validated (export/validate_fused.py).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="fused tests need the 'export' extra")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

import onnxlm  # noqa: E402
from conftest import export_recipes, fused_manifest  # noqa: E402
from onnxlm.export import ExportError, export_model  # noqa: E402
from onnxlm.runtime.fused_causal import FusedCausalLM  # noqa: E402
from torch_ref import causal_logits, causal_steps_max_diff, left_padded_batch  # noqa: E402

ATOL = 1e-4
NEW = 6
PROMPTS = [7, 3, 5]  # left-padded batch of 3; 7 + NEW > the mistral window (4)
NAMES = ["tiny-llama", "families/tiny-mistral-sliding-window", "families/tiny-qwen2",
         "families/tiny-llama-llama3-rope-bias-untied"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def fused_dirs(tmp_path_factory, tiny_llama):
    """recipe name -> (hf dir, fused artifact dir); tiny-llama reuses conftest's checkpoint."""
    return export_recipes(tmp_path_factory, NAMES, tiny_llama, kv_layout="fused")


@pytest.fixture(scope="module", params=NAMES, ids=lambda n: n.split("/")[-1])
def fused(request, fused_dirs):
    hf, art = fused_dirs[request.param]
    return onnxlm.load(art), AutoModelForCausalLM.from_pretrained(hf).eval()


def _batch(ours, seed):
    return left_padded_batch(np.random.default_rng(seed), PROMPTS, ours.vocab_size - 4, ours.pad_id)


def test_artifact_is_fused(fused_dirs):
    _, art = fused_dirs["tiny-llama"]
    fused_manifest(art, FusedCausalLM)
    import onnx

    graph = onnx.load(str(art / "model.onnx")).graph
    assert sum(n.op_type == "GroupQueryAttention" for n in graph.node) == 2
    assert "lm_head.weight" not in {i.name for i in graph.initializer}  # tied: the embedding serves the head


def test_logits_left_padded_batch_then_steps_with_past(fused):
    ours, ref = fused
    ids, mask = _batch(ours, seed=1)
    on = mask.astype(bool)
    assert np.abs(ours.logits(ids, mask)[on] - causal_logits(ref, ids, mask)[on]).max() <= ATOL
    rng = np.random.default_rng(2)
    steps = [rng.integers(3, ours.vocab_size - 4, size=3) for _ in range(2)]
    assert causal_steps_max_diff(ours, ref, ids, mask, steps) <= ATOL  # start, then each step with past


@torch.no_grad()
def _hf_generate(ref, ids, mask, new=NEW, **kw):
    return ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                        max_new_tokens=new, eos_token_id=None, **kw).numpy()


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam3"])
def test_generate_ids_equal_transformers(fused, num_beams):
    ours, ref = fused
    ids, mask = _batch(ours, seed=3)
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=NEW, num_beams=num_beams, eos_token_id=[],
                        pad_token_id=ours.pad_id)  # beam search reorders the buffers' rows (select)
    np.testing.assert_array_equal(got.sequences, _hf_generate(ref, ids, mask, num_beams=num_beams,
                                                              pad_token_id=ours.pad_id))


def test_steps_append_in_place_and_buffers_grow_by_doubling(fused_dirs):
    hf, art = fused_dirs["families/tiny-mistral-sliding-window"]
    ours, ref = onnxlm.load(art), AutoModelForCausalLM.from_pretrained(hf).eval()
    ours.initial_buffer_length = 2
    ids, mask = _batch(ours, seed=4)
    state, _ = ours.start(ids, mask)
    assert state.buffers.capacity == 8  # 2 doubled until the 7-token prompt fits
    held = state.buffers.arrays["past_key_values.0.key"]
    state.advance(np.array([5, 6, 7]))  # 8 positions: fits, written in place
    assert state.buffers.arrays["past_key_values.0.key"] is held and np.abs(held[:, :, 7]).max() > 0
    state.advance(np.array([5, 6, 7]))  # 9 positions: the buffers double
    assert state.buffers.capacity == 16
    # generation across two growths gives transformers' ids
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=20, eos_token_id=[], pad_token_id=ours.pad_id)
    np.testing.assert_array_equal(got.sequences, _hf_generate(ref, ids, mask, new=20, pad_token_id=ours.pad_id))
    # a beam search reorders the rows in place, also after each growth (new buffers): still transformers' ids
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=20, eos_token_id=[], pad_token_id=ours.pad_id,
                        num_beams=3)
    np.testing.assert_array_equal(got.sequences, _hf_generate(ref, ids, mask, new=20, pad_token_id=ours.pad_id,
                                                              num_beams=3))


def _mapping_of(buffers):
    """The one anonymous mapping every array of a KV buffer set is a view of (runtime/kv_buffers.py)."""
    import mmap
    roots = set()
    for a in buffers.arrays.values():
        while isinstance(a, np.ndarray):
            a = a.base
        a = a.obj if isinstance(a, memoryview) else a  # np.frombuffer keeps a memoryview of the mapping
        assert isinstance(a, mmap.mmap)
        roots.add(a)
    assert len(roots) == 1
    return roots.pop()  # the mmap object itself: the test holds it, so a later mapping cannot reuse its id


def test_buffers_are_views_of_one_anonymous_mapping(fused_dirs):
    # fresh, grown, reordered by a beam step and concatenated sets: unused capacity is never resident
    ours = onnxlm.load(fused_dirs["tiny-llama"][1])
    ours.initial_buffer_length = 2
    ids, mask = _batch(ours, seed=6)
    state, _ = ours.start(ids, mask)
    fresh = _mapping_of(state.buffers)
    state.advance(np.array([5, 6, 7]))
    state.advance(np.array([5, 6, 7]))  # 9 positions: the buffers double into a new mapping
    grown = _mapping_of(state.buffers)
    held = {n: a[:, :, :9].copy() for n, a in state.buffers.arrays.items()}
    state.select(np.array([2, 0, 0]))  # a beam step (same row count): gathered in place, no new pages
    assert _mapping_of(state.buffers) is grown
    for name, a in state.buffers.arrays.items():
        np.testing.assert_array_equal(a[:, :, :9], held[name][[2, 0, 0]])
    state.select(np.array([0, 0, 1, 2]))  # more rows: a fresh mapping, the held positions copied, the rest zero
    assert all(_mapping_of(state.buffers) is not m for m in (fresh, grown))
    for name, a in state.buffers.arrays.items():
        np.testing.assert_array_equal(a[:, :, :9], held[name][[2, 2, 0, 0]])
        assert not a[:, :, 9:].any()
    other, _ = ours.start(ids[:1], mask[:1])
    assert _mapping_of(type(state).concat([state, other]).buffers) is not _mapping_of(state.buffers)


def test_score_equals_the_plain_artifact(fused_dirs, tiny_llama):
    fused_model, plain = onnxlm.load(fused_dirs["tiny-llama"][1]), onnxlm.load(tiny_llama.onnx_dir)
    texts = ["hello world", "a", "the quick brown fox"]
    got, want = fused_model.score(texts, append_eos=True), plain.score(texts, append_eos=True)
    assert [list(t) for t in got.tokens] == [list(t) for t in want.tokens]
    for g, w in zip(got.token_logprobs, want.token_logprobs):
        assert np.abs(g - w).max() <= ATOL
    assert np.abs(got.sequence_logprobs - want.sequence_logprobs).max() <= ATOL


def test_fused_refuses_other_model_types_and_bad_layouts(tiny_llama, tmp_path):
    from transformers import Qwen3Config

    torch.manual_seed(0)
    qwen3 = AutoModelForCausalLM.from_config(Qwen3Config(vocab_size=64, hidden_size=16, intermediate_size=32,
                                                         num_hidden_layers=1, num_attention_heads=2,
                                                         num_key_value_heads=1, head_dim=8)).eval()
    with pytest.raises(ExportError, match="'qwen3' is not supported; supported: gpt2, llama, mistral, mt5, qwen2, t5"):
        export_model(qwen3, tmp_path / "a", progress=False, kv_layout="fused", validate=False)
    with pytest.raises(ExportError, match="kv_layout.*'plain', 'fused'"):
        export_model(tiny_llama.hf_dir, tmp_path / "b", progress=False, kv_layout="paged")
    assert not (tmp_path / "a").exists()


def test_unknown_kv_layout_is_refused(fused_dirs, tmp_path):
    import shutil

    from onnxlm.runtime.errors import ManifestError

    art = shutil.copytree(fused_dirs["tiny-llama"][1], tmp_path / "art")
    manifest = json.loads((art / "onnxlm.json").read_text())
    (art / "onnxlm.json").write_text(json.dumps({**manifest, "kv_layout": "paged"}))
    with pytest.raises(ManifestError, match="kv_layout 'paged'.*'plain', 'fused-gqa'"):
        onnxlm.load(art)


def test_cli_exports_fused_and_info_shows_the_layout(capsys, tiny_llama, tmp_path):
    from onnxlm.cli import main

    assert main(["export", str(tiny_llama.hf_dir), str(tmp_path / "art"), "--kv-layout", "fused", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "art"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kv_layout"] == "fused-gqa"
    assert main(["info", str(tiny_llama.onnx_dir)]) == 0
    assert "kv layout plain" in capsys.readouterr().out


def test_large_weights_go_to_external_data(tiny_llama, tmp_path, monkeypatch):
    from onnxlm.export import fused_graph

    monkeypatch.setattr(fused_graph, "MAX_INLINE_BYTES", 0)  # as for a model over protobuf's 2 GB limit
    art = export_model(tiny_llama.hf_dir, tmp_path / "art", progress=False, kv_layout="fused")
    manifest = json.loads((art / "onnxlm.json").read_text())
    assert "model.onnx_data" in manifest["files"] and (art / "model.onnx").stat().st_size < 50_000
    plain = onnxlm.load(tiny_llama.onnx_dir)
    ids, mask = _batch(plain, seed=5)
    np.testing.assert_array_equal(
        onnxlm.load(art).generate(ids, attention_mask=mask, max_new_tokens=4, eos_token_id=[]).sequences,
        plain.generate(ids, attention_mask=mask, max_new_tokens=4, eos_token_id=[]).sequences)
