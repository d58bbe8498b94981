"""LFM2 (export/fused_lfm2.py, runtime/fused/hybrid_lm.py): what its convolution states change beyond the parity grids
of tests/test_fused_layouts.py (logits with past on a left-padded batch, greedy, beam, extend and rollback) and the
joined rows of tests/test_scheduler.py: speculative decoding (its rollbacks restore the states), a one-token prompt
(transformers' own cached step loses a value there; the graph convolves the true window), the limits of its rollback,
and the server's prefix cache, which it cannot use."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="LFM2 tests need the 'export' extra")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

import onnxlm  # noqa: E402
from onnxlm.runtime.decoding.scheduler import Scheduler  # noqa: E402
from onnxlm.runtime.errors import ParameterError  # noqa: E402
from onnxlm.runtime.fused import FusedHybridLM  # noqa: E402
from onnxlm.runtime.fused.hybrid_lm import MAX_HISTORY  # noqa: E402
from onnxlm.runtime.prefix_cache import PrefixCache  # noqa: E402
from torch_ref import tail_repeating_batch  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PERIOD = [17, 99, 142, 63, 200, 8, 77, 150, 31, 120, 54, 230]
PROMPT = [257] + PERIOD * 3 + PERIOD[:5]  # repeats: the n-gram lookups find continuations


@pytest.fixture(scope="module")
def lfm2(tiny_lfm2):
    model = onnxlm.load(tiny_lfm2.onnx_dir)
    assert isinstance(model, FusedHybridLM)
    return model


@pytest.fixture(scope="module")
def hf(tiny_lfm2):
    return AutoModelForCausalLM.from_pretrained(tiny_lfm2.hf_dir).eval()


def test_prompt_lookup_greedy_equals_plain_greedy(lfm2):
    """Prompt lookup's verify passes extend several tokens and roll the rejected ones back: the same ids as plain
    greedy decoding, on one row and on a left-padded batch."""
    plain = lfm2.generate([PROMPT], max_new_tokens=40)
    spec = lfm2.generate([PROMPT], max_new_tokens=40, prompt_lookup_num_tokens=6)
    assert spec.new_tokens == plain.new_tokens and spec.speculation.accepted > 0
    ids, mask = tail_repeating_batch(np.random.default_rng(4), [9, 5, 7], 250, lfm2.pad_id)
    plain = lfm2.generate(ids, attention_mask=mask, max_new_tokens=30)
    spec = lfm2.generate(ids, attention_mask=mask, max_new_tokens=30, prompt_lookup_num_tokens=4)
    np.testing.assert_array_equal(spec.sequences, plain.sequences)
    assert spec.speculation.proposed > spec.speculation.accepted  # rejected: rolled back


def test_long_proposals_are_capped_to_the_kept_states(lfm2, tiny_llama):
    """40-token proposals (more than the 32 states a row keeps) rejected early, from a Llama draft for LFM2 and from
    an LFM2 draft for Llama, and prompt_lookup_num_tokens=40: the rounds propose at most ``speculation_limit``
    tokens, so the rollbacks stay within the kept states (they had raised), and the ids are plain greedy's."""
    llama = onnxlm.load(tiny_llama.onnx_dir)
    rng = np.random.default_rng(9)
    text = [257] + rng.integers(3, 250, 42).tolist()
    prompt = text + text[1:3]  # the lookup finds the first copy's continuation
    assert lfm2.speculation_limit == MAX_HISTORY - 1
    for target, draft in ((lfm2, llama), (llama, lfm2)):
        plain = target.generate([prompt], max_new_tokens=40)
        spec = target.generate([prompt], max_new_tokens=40, assistant_model=draft, num_assistant_tokens=40,
                               assistant_confidence_threshold=0.0)
        assert spec.new_tokens == plain.new_tokens
        assert spec.speculation.accepted < spec.speculation.proposed <= (MAX_HISTORY - 1) * spec.speculation.passes
    plain = lfm2.generate([prompt], max_new_tokens=40)
    assert lfm2.generate([prompt], max_new_tokens=40, prompt_lookup_num_tokens=40).new_tokens == plain.new_tokens
    # the schedules start from the cap, not above it ("heuristic"'s first rejection proposes one token fewer than it)
    from onnxlm.runtime.decoding.candidates import DraftModel

    kw = dict(schedule="heuristic", threshold=None, max_length=99, eos_token_ids=[], processors=None, do_sample=False,
              rng=None, stop_check=None)
    assert DraftModel(lfm2, num_tokens=40, cap=lfm2.speculation_limit, **kw).num_tokens == MAX_HISTORY - 1
    assert DraftModel(llama, num_tokens=40, cap=None, **kw).num_tokens == 40


def test_a_draft_model_either_way_equals_plain_greedy(lfm2, tiny_llama, tiny_lfm2):
    """LFM2 as the target of a Llama draft (every verify pass rolls rejected drafts back), as the draft of a Llama
    target (its own steps roll back across several decode steps), and as its own twin's draft (all accepted): plain
    greedy's ids every way."""
    llama = onnxlm.load(tiny_llama.onnx_dir)
    for target, draft in ((lfm2, llama), (llama, lfm2), (lfm2, onnxlm.load(tiny_lfm2.onnx_dir))):
        plain = target.generate([PROMPT], max_new_tokens=30)
        spec = target.generate([PROMPT], max_new_tokens=30, assistant_model=draft, num_assistant_tokens=5,
                               assistant_confidence_threshold=0.0)
        assert spec.new_tokens == plain.new_tokens
        stats = spec.speculation
        assert stats.accepted == stats.proposed > 0 if draft.__class__ is target.__class__ else \
            stats.accepted < stats.proposed


def test_a_one_token_prompt_convolves_the_true_window(lfm2, hf):
    """One prompt token, then steps: every step's logits are transformers' forward over the whole sequence (its own
    cached step writes the new value at slot min(position, taps - 1) of a rolled state, which drops the prompt's
    value at position 1: the graph does not follow it there)."""
    seq = [42]
    state, logits = lfm2.start(np.array([seq]), np.ones((1, 1), np.int64))
    for token in (7, 99, 150, 3):
        with torch.no_grad():
            want = hf(torch.tensor([seq])).logits[0, -1].numpy()
        assert np.abs(logits[0] - want).max() <= 1e-4
        seq.append(token)
        logits = state.advance(np.array([token]))


def test_rollback_is_bounded_by_the_kept_states(lfm2):
    """A row rolls back up to MAX_HISTORY positions (the states before each are kept); further, or into the prompt,
    is a ParameterError naming counts, and the state is unchanged."""
    state, _ = lfm2.start(np.array([PROMPT[:5]]), np.ones((1, 5), np.int64))
    for t in range(MAX_HISTORY + 2):
        state.advance(np.array([10 + t]))
    held = int(state.lengths[0])
    with pytest.raises(ParameterError, match=f"counts: row 0: rolling back {MAX_HISTORY + 1} positions goes further"):
        state.rollback(np.array([MAX_HISTORY + 1]))
    assert int(state.lengths[0]) == held
    state.rollback(np.array([MAX_HISTORY]))
    kept = PROMPT[:5] + [10 + t for t in range(2)]
    np.testing.assert_allclose(state.advance(np.array([5]))[0], lfm2.logits([kept + [5]])[0, -1], atol=1e-4)
    fresh, _ = lfm2.start(np.array([PROMPT[:5]]), np.ones((1, 5), np.int64))
    with pytest.raises(ParameterError, match="counts: row 0"):  # into the prompt: no state of it is kept
        fresh.rollback(np.array([1]))


def test_a_refused_rollback_leaves_every_row_as_it_was(lfm2):
    """Two rows, one of which cannot roll back so far: the ParameterError leaves both rows' states and lengths as they
    were (the other row's had been restored before the refusal)."""
    ids = np.array([PROMPT[:6], PROMPT[6:12]])
    state, _ = lfm2.start(ids, np.ones_like(ids))
    for t in (40, 41, 42):
        state.advance(np.array([t, t + 10]))
    with pytest.raises(ParameterError, match="counts: row 1"):
        state.rollback(np.array([2, 6]))
    got = state.advance(np.array([5, 5]))
    rows = [PROMPT[:6] + [40, 41, 42, 5], PROMPT[6:12] + [50, 51, 52, 5]]
    np.testing.assert_allclose(got, lfm2.logits(np.array(rows))[:, -1], atol=1e-4)


def test_the_quality_gate_rolls_back_a_two_token_window(lfm2, tiny_lfm2, tmp_path):
    """A forced gate on a two-token text: its one-token share takes a second token along and rolls it back from the
    empty state's first pass (a prompt's pass keeps no states; that one must)."""
    from onnxlm.export.quantize import quantize_artifact

    out = quantize_artifact(tiny_lfm2.onnx_dir, tmp_path / "q", scheme="int8", force_quality=True, quality_text="ab",
                            progress=False)
    assert onnxlm.load(out).generate([PROMPT[:5]], max_new_tokens=3).new_tokens


def test_no_prefix_is_resumed(lfm2):
    """A snapshot or a resume is a ParameterError saying why; the scheduler drops a prefix cache it is given for
    such a model (onnxlm serve's --prefix-cache-mb then changes nothing) and still answers."""
    state, _ = lfm2.start(np.array([PROMPT[:5]]), np.ones((1, 5), np.int64))
    with pytest.raises(ParameterError, match="snapshot: a model with convolution layers"):
        state.snapshot(0)
    with pytest.raises(ParameterError, match="kv: a model with convolution layers"):
        lfm2.resume({}, 3, [1, 2])
    assert not lfm2.resumes_prefix
    assert Scheduler(lfm2, prefix_cache=PrefixCache(2**20)).prefix_cache is None


def test_the_server_says_its_prefix_cache_is_off(lfm2, caplog):
    """``onnxlm serve`` (its prefix cache on by default) on an LFM2 model: the engine loads it, says once (info: the
    default would warn on every such server) that the prefix cache is off and why, and its scheduler holds none."""
    import logging

    from onnxlm.serve.engine import Engine

    engine = Engine(lambda: lfm2, prefix_cache_mb=8)
    with caplog.at_level(logging.INFO):
        engine.start()
        assert engine.ready.wait(30)
        engine.stop()
    assert engine.load_error is None and engine.scheduler.prefix_cache is None
    said = [r for r in caplog.records if "the prefix cache is off" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in said] == [
        (logging.INFO, "the prefix cache is off: this model cannot resume from a cached prefix (LFM2's convolution "
                       "states)")]


@pytest.mark.parametrize("layer_types", [["full_attention"] * 4, ["conv"] * 4], ids=["attention-only", "conv-only"])
def test_a_config_without_both_layer_kinds_is_refused_by_name(tiny_lfm2, layer_types):
    """The graph holds convolution states beside KV buffers: a config with only one kind of layer is refused,
    naming layer_types (it had failed with an IndexError in the runtime)."""
    from types import SimpleNamespace

    from transformers import AutoConfig

    from onnxlm.export import ExportError
    from onnxlm.export import fused_lfm2

    config = AutoConfig.from_pretrained(tiny_lfm2.hf_dir, layer_types=layer_types)
    with pytest.raises(ExportError, match="an LFM2 config needs both attention and convolution layers"):
        fused_lfm2.check_supported(SimpleNamespace(config=config))


def test_the_block_rewrite_refuses_a_layer_it_does_not_know(tiny_lfm2, tmp_path):
    """gguf_quant.rewrite_graph on a graph whose layer 0 lacks its out_proj product: an ExportError naming the
    layer's products (a missing product had been skipped silently, its weight left in fp32 and not counted)."""
    import onnx
    from gguf_writers import write_tiny_gguf

    from onnxlm.export import ExportError
    from onnxlm.export.gguf_quant import GGUFTensors, rewrite_graph

    path = tmp_path / "lfm2.gguf"
    write_tiny_gguf(path, "lfm2", block_type="Q8_0")
    model = onnx.load(str(tiny_lfm2.onnx_dir / "model.onnx"))
    for t in model.graph.initializer:
        if t.name == "l0.out_proj.weight":
            t.name = "l0.renamed.weight"
    for node in model.graph.node:
        node.input[:] = ["l0.renamed.weight" if i == "l0.out_proj.weight" else i for i in node.input]
    onnx.save(model, str(tmp_path / "model.onnx"))
    with pytest.raises(ExportError, match=r"layer 0 has the products \['in_proj', 'down_proj'\]: not a fused graph"):
        rewrite_graph(tmp_path / "model.onnx", tmp_path / "out.onnx", GGUFTensors(path, 4, 2), 4)


def test_a_file_of_a_head_its_graph_cannot_take_is_refused_from_its_header(tmp_path, monkeypatch, capsys,
                                                                          no_weight_loads):
    """An LFM2 file of head size 8 (its fused graph rotates inside GroupQueryAttention: a multiple of 16), whose only
    graph is the fused one: refused from its header before any weight loads, with or without quantize, and onnxlm
    info says onnxlm does not export it (no fp32 artifact to fall back to)."""
    import gguf_writers
    from cli_util import run_cli

    from onnxlm.export import ExportError, export_model

    monkeypatch.setitem(gguf_writers.CASES, "lfm2-head-8", ("lfm2", {"block_count": 4, "heads": 8, "head_dim": 8},
                                                            None))
    path = tmp_path / "lfm2.gguf"
    gguf_writers.write_tiny_gguf(path, "lfm2-head-8", block_type="Q8_0")
    why = ("lfm2: head size 8 is not a multiple of 16, which onnxruntime's GroupQueryAttention needs in its fused "
           "graph, and model_type 'lfm2' has no other")
    for kw in ({}, {"quantize": "gguf"}):
        with pytest.raises(ExportError, match=why):
            export_model(path, tmp_path / "out", progress=False, **kw)
    assert not (tmp_path / "out").exists()
    from onnxlm.export.gguf_artifact import ensure_gguf_artifact

    with pytest.raises(ExportError, match=why):  # `onnxlm generate file.gguf`'s cache: no fp32 export tried
        ensure_gguf_artifact(path, cache_dir=tmp_path / "cache")
    assert "exporting it in fp32" not in capsys.readouterr().err
    code, out, _ = run_cli(capsys, "info", path)
    assert code == 0 and f"lfm2: onnxlm does not export this file: {why}" in out
