"""LFM2 (export/fused_lfm2.py, runtime/fused/hybrid_lm.py): what its convolution states change beyond the parity grids
of tests/test_fused_layouts.py (logits with past on a left-padded batch, greedy, beam, extend and rollback) and the
joined rows of tests/test_scheduler.py: speculative decoding (its rollbacks restore the states), a one-token prompt
(transformers' own cached step loses a value there; the graph convolves the true window), the limits of its rollback,
and the server's prefix cache, which resumes it only at its checkpoints (the states after a cached prompt or answer).
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="LFM2 tests need the 'export' extra")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

import onnxlm  # noqa: E402
from onnxlm.runtime.errors import ParameterError  # noqa: E402
from onnxlm.runtime.fused import FusedHybridLM  # noqa: E402
from onnxlm.runtime.fused.hybrid_lm import CHECKPOINT_EVERY, MAX_HISTORY  # noqa: E402
from onnxlm.runtime.prefix_cache import PrefixCache  # noqa: E402
from scheduler_util import run_scheduler  # noqa: E402
from torch_ref import tail_repeating_batch  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PERIOD = [17, 99, 142, 63, 200, 8, 77, 150, 31, 120, 54, 230]
PROMPT = [257] + PERIOD * 3 + PERIOD[:5]  # repeats: the n-gram lookups find continuations
LONG = [257] + [int(t) for t in np.random.default_rng(11).integers(3, 250, 110)]  # past the 64-position marks


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


def test_a_checkpoint_resumes_equal_to_a_cold_start(lfm2):
    """A left-padded batch's row snapshotted with its convolution states (``checkpoint``), resumed at its length with
    a rest fed in one pass, and with none: the next-token logits and the next step equal a cold start's. Without the
    states, or with ones of another shape, ``resume`` is a ParameterError naming them; zero states answer otherwise
    (the checkpoint is what makes it right)."""
    long, short = PROMPT[:30], PROMPT[:7]
    ids, mask = lfm2.prepare_inputs([short, long])
    state, first = lfm2.start(ids, mask)
    kv, held = state.snapshot(1), state.checkpoint(1)
    assert next(iter(kv.values())).shape[1] == len(long) and set(held) == set(lfm2.conv_names)
    prompt = long + [5, 250, 12, 77]
    cold_state, cold = lfm2.start(np.array([prompt]), np.ones((1, len(prompt)), np.int64))
    resumed, logits = lfm2.resume({**kv, **held}, len(long), prompt[len(long):])
    assert np.abs(logits - cold).max() <= 1e-4
    tok = np.array([int(cold.argmax())])
    assert np.abs(resumed.advance(tok) - cold_state.advance(tok)).max() <= 1e-4
    whole, none = lfm2.resume({**kv, **held}, len(long), [])  # no pass: the caller holds the logits (first[1])
    assert none is None and int(whole.lengths[0]) == len(long)
    want = lfm2.logits([long + [9]])[0, -1]
    assert np.abs(whole.advance(np.array([9]))[0] - want).max() <= 1e-4
    whole.rollback(np.array([1]))  # the resumed state's first step keeps its rollback state
    assert np.abs(whole.advance(np.array([9]))[0] - want).max() <= 1e-4
    zeros = {n: np.zeros_like(c) for n, c in held.items()}
    assert np.abs(lfm2.resume({**kv, **zeros}, len(long), prompt[len(long):])[1] - cold).max() > 1e-3
    with pytest.raises(ParameterError, match="kv: 'conv_state.0': none; a model with convolution layers"):
        lfm2.resume(kv, len(long), [1, 2])
    with pytest.raises(ParameterError, match=r"kv: 'conv_state.0': shape \[64\]; .* of shape \[2, 64\] each"):
        lfm2.resume({**kv, **held, "conv_state.0": held["conv_state.0"][0]}, len(long), [1, 2])


def test_a_prompt_pass_keeps_the_states_after_every_64th_position(lfm2, tiny_lfm2):
    """Once asked (``keep_prompt_checkpoints``; the scheduler does with a prefix cache), a prompt's pass keeps each
    row's convolution states after every multiple of 64 of its positions, counted from its start wherever the pass
    begins (a left-padded batch's rows; a resumed prompt's rest): each resumes the row's first 64 positions as a
    cold start of the longer prompt gives its logits; a later pass (decode steps past 64) keeps none; ``select``
    and ``concat`` carry them with their rows, ``take_prompt_checkpoints`` hands them over (the row keeps none after)
    and ``forget_rollback`` drops them. A model not asked keeps none."""
    fresh = onnxlm.load(tiny_lfm2.onnx_dir)  # not asked
    ids, mask = fresh.prepare_inputs([LONG[:100]])
    assert fresh.start(ids, mask)[0].take_prompt_checkpoints(0) == {}
    with pytest.raises(ParameterError, match="every: got 0; must be an integer >= 1"):
        fresh.keep_prompt_checkpoints(0)
    lfm2.keep_prompt_checkpoints()
    long = LONG[:100]
    ids, mask = lfm2.prepare_inputs([LONG[:60], long, LONG[:70]])
    state, _ = lfm2.start(ids, mask)
    state.advance(np.array([3, 4, 5]))
    for _ in range(5):  # row 0: 61 -> 66, past 64 in decode steps
        state.advance(np.array([3, 4, 5]))
    state.select(np.array([1, 1, 0, 2]))  # row 1's marks on two rows
    joined = type(state).concat([state, lfm2.start(np.array([long[:80]]), np.ones((1, 80), np.int64))[0]])
    marks = [joined.take_prompt_checkpoints(r) for r in range(5)]
    assert [sorted(m) for m in marks] == [[64], [64], [], [64], [64]] and set(marks[0][64]) == set(lfm2.conv_names)
    assert joined.take_prompt_checkpoints(0) == {}  # handed over
    prompt = long[:64] + [5, 250, 12, 77]
    cold = lfm2.start(np.array([prompt]), np.ones((1, len(prompt)), np.int64))[1]
    for r in (0, 3, 4):  # rows that share their first 64 ids with ``prompt``
        kv = {n: a[:, :64] for n, a in joined.snapshot(r).items()}
        assert np.abs(lfm2.resume({**kv, **marks[r][64]}, 64, prompt[64:])[1] - cold).max() <= 1e-4
    kv30 = {n: a[:, :30] for n, a in joined.snapshot(0).items()}
    at30 = lfm2.start(np.array([long[:30]]), np.ones((1, 30), np.int64))[0].checkpoint(0)
    resumed, _ = lfm2.resume({**kv30, **at30}, 30, long[30:])  # the rest's pass: its 34th token ends position 64
    kept = resumed.take_prompt_checkpoints(0)
    assert sorted(kept) == [64] and all(np.abs(kept[64][n] - marks[0][64][n]).max() <= 1e-5 for n in kept[64])
    again, _ = lfm2.start(np.array([long]), np.ones((1, 100), np.int64))
    again.forget_rollback()
    assert again.take_prompt_checkpoints(0) == {}


def test_the_scheduler_keeps_marks_only_around_its_own_prompt_passes(tiny_lfm2):
    """A scheduler with a prefix cache has its prompt passes keep the marks (its entry holds the state after 64)
    and leaves the model as it was: a prompt's pass outside it keeps none afterwards, a setting the user made
    stays and is the one the scheduler uses, ``every=None`` turns it off, and a cache of 0 bytes asks for none."""
    model = onnxlm.load(tiny_lfm2.onnx_dir)
    ids, mask = model.prepare_inputs([LONG[:100]])
    cache = PrefixCache(16 * 2**20)
    run_scheduler(model, [LONG[:90] + [5, 6, 7]], [GREEDY], cache)
    (entry,) = cache.entries.values()
    assert sorted(entry.checkpoints)[0] == CHECKPOINT_EVERY
    assert model.prompt_checkpoint_every is None and model.start(ids, mask)[0].take_prompt_checkpoints(0) == {}
    model.keep_prompt_checkpoints(16)
    cache = PrefixCache(16 * 2**20)
    run_scheduler(model, [LONG[:40] + [5]], [GREEDY], cache)
    (entry,) = cache.entries.values()
    assert model.prompt_checkpoint_every == 16 and {16, 32} <= set(entry.checkpoints)
    model.keep_prompt_checkpoints(None)
    assert model.start(ids, mask)[0].take_prompt_checkpoints(0) == {}
    seen = []
    real = type(model).keeping_prompt_checkpoints
    model.keeping_prompt_checkpoints = lambda: (seen.append(1), real(model))[1]
    run_scheduler(model, [LONG[:90]], [GREEDY], PrefixCache(0))
    assert seen == []


def test_a_batch_extended_as_a_prompt_keeps_each_rows_marks_and_rolls_back_after(lfm2):
    """``extend(ids, prompt=True)`` on two rows (a pass per row): each row keeps the marks its own positions reach,
    none of those passes' rollback states, and the decode step after them rolls back as any step does."""
    lfm2.keep_prompt_checkpoints()
    ids, mask = lfm2.prepare_inputs([LONG[:60], LONG[:40]])
    state, _ = lfm2.start(ids, mask)
    state.extend(np.array([LONG[60:70], LONG[40:50]]), prompt=True)  # row 0 passes 64, row 1 reaches 50
    assert [sorted(state.take_prompt_checkpoints(r)) for r in (0, 1)] == [[64], []]
    with pytest.raises(ParameterError, match="counts"):  # into the prompt: no states kept
        state.rollback(np.array([1, 0]))
    before = state.advance(np.array([5, 6]))
    state.rollback(np.array([1, 1]))
    np.testing.assert_allclose(state.advance(np.array([5, 6])), before, atol=1e-5)


GREEDY = {"max_new_tokens": 8, "eos_token_id": None, "do_sample": False}


def test_the_next_turn_of_a_chat_resumes_at_the_answers_checkpoint(lfm2, monkeypatch):
    """A lone client's chat: each turn's prompt is the last turn's sequence plus a new message, which the cache holds
    with its convolution states at its end; the next turn resumes all of it (the dropped state lent, no copy, its
    rollback states not kept while cached) and prefills only the message; three turns answer as a cold scheduler."""
    cache, prompt = PrefixCache(16 * 2**20), PROMPT[:20]
    copies = []
    resume = FusedHybridLM.resume
    monkeypatch.setattr(FusedHybridLM, "resume", lambda self, *a: copies.append(1) or resume(self, *a))
    held = 0  # the last turn's prompt and answer but its last token: the cached sequence
    for message in ([61, 62, 63], [64, 65], [66]):
        before = cache.reused_tokens
        (warm,) = run_scheduler(lfm2, [prompt], [GREEDY], cache)
        (cold,) = run_scheduler(lfm2, [prompt], [GREEDY])
        assert warm.new_ids == cold.new_ids and cache.reused_tokens - before == held
        (entry,) = [e for e in cache.entries.values() if e.owner is not None]
        assert [len(h) for h in entry.owner.buffers.history] == [0]
        held = len(prompt) + len(warm.new_ids[0]) - 1
        prompt = prompt + warm.new_ids[0] + message
    assert cache.hits == 2 and cache.misses == 1 and not copies


def test_a_prompt_sent_again_resumes_whole_and_a_shared_start_alone_does_not(lfm2, monkeypatch):
    """A prompt sent again resumes all its positions at the checkpoint after it (kept with its answer's entry) and
    takes its first token from the kept logits: no forward pass for a one-token answer, every answer a cold
    scheduler's (greedy and seeded sampling). A prompt sharing only a start with the cached ones finds no checkpoint
    there: a miss, still answered as cold."""
    passes = []
    run = FusedHybridLM._run
    monkeypatch.setattr(FusedHybridLM, "_run", lambda self, *a: passes.append(1) or run(self, *a))
    prompt = PROMPT[:25]
    for kw in (GREEDY, dict(GREEDY, max_new_tokens=1), dict(GREEDY, do_sample=True, seed=5, temperature=0.9)):
        (cold,) = run_scheduler(lfm2, [prompt], [kw])
        cache = PrefixCache(16 * 2**20)
        run_scheduler(lfm2, [prompt], [kw], cache, defer=True)
        (entry,) = cache.entries.values()
        assert sorted(entry.checkpoints) == sorted({len(prompt), len(prompt) + kw["max_new_tokens"] - 1})
        passes.clear()
        (again,) = run_scheduler(lfm2, [prompt], [kw], cache, defer=True)
        assert again.new_ids == cold.new_ids and cache.reused_tokens == len(prompt)
        assert len(passes) == kw["max_new_tokens"] - 1
    other = prompt[:15] + [3, 4, 5, 6]
    (cold,) = run_scheduler(lfm2, [other], [GREEDY])
    misses = cache.misses
    (warm,) = run_scheduler(lfm2, [other], [GREEDY], cache)
    assert warm.new_ids == cold.new_ids and cache.misses == misses + 1


def test_a_shared_start_resumes_at_the_last_64th_position_before_the_prompts_part(lfm2):
    """A system prompt asked two questions: the second prompt shares the first's 90 ids, and resumes at the state
    the first's prompt pass kept after position 64 (cached with its entry), answering as a cold scheduler; its own
    entry keeps that state too (from the entry it resumed from), so with the first entry gone a third question
    resumes there as well. A prompt sharing fewer than 64 ids finds no state to resume (a miss)."""
    system = LONG[:90]
    cache = PrefixCache(16 * 2**20)
    run_scheduler(lfm2, [system + [5, 6, 7]], [GREEDY], cache)
    (first,) = cache.entries.values()
    assert sorted(first.checkpoints)[0] == CHECKPOINT_EVERY
    for question in ([8, 9], [10, 11, 12]):
        (cold,) = run_scheduler(lfm2, [system + question], [GREEDY])
        before = cache.reused_tokens
        (warm,) = run_scheduler(lfm2, [system + question], [GREEDY], cache)
        assert warm.new_ids == cold.new_ids and warm.cached_tokens == cache.reused_tokens - before == 64
        if question == [8, 9]:  # the second question's entry holds the state after 64 too; the first entry goes
            (second,) = [e for e in cache.entries.values() if list(e.ids[:92]) == system + [8, 9]]
            assert CHECKPOINT_EVERY in second.checkpoints
            cache.bytes -= cache.entries.pop(first.ids.tobytes()).nbytes
    misses = cache.misses
    (cold,) = run_scheduler(lfm2, [LONG[:60] + [3, 3]], [GREEDY])
    (warm,) = run_scheduler(lfm2, [LONG[:60] + [3, 3]], [GREEDY], cache)
    assert warm.new_ids == cold.new_ids and cache.misses == misses + 1


def test_a_chats_long_next_message_keeps_its_states_inside(lfm2):
    """A chat's next turn resumes the lent state of the last turn's sequence (28 positions) and prefills a 60-token
    message, which crosses position 64: that pass keeps the state there as a prompt's does, so a turn that shares
    only the start of that message resumes at 64, answering as a cold scheduler."""
    cache, prompt = PrefixCache(16 * 2**20), PROMPT[:20]
    (turn,) = run_scheduler(lfm2, [prompt], [GREEDY], cache)
    message = LONG[1:61]
    prompt = prompt + turn.new_ids[0] + message
    (warm,) = run_scheduler(lfm2, [prompt], [GREEDY], cache)
    assert warm.cached_tokens == 20 + len(turn.new_ids[0]) - 1
    (entry,) = [e for e in cache.entries.values() if len(e.ids) >= len(prompt)]
    assert CHECKPOINT_EVERY in entry.checkpoints
    other = prompt[:70] + [9, 9]
    (cold,) = run_scheduler(lfm2, [other], [GREEDY])
    (warm,) = run_scheduler(lfm2, [other], [GREEDY], cache)
    assert warm.new_ids == cold.new_ids and warm.cached_tokens == 64


@pytest.mark.parametrize("defer", [False, True], ids=["stored-in-step", "deferred"])
def test_requests_joining_a_batch_resume_at_checkpoints_as_a_cold_scheduler(lfm2, defer):
    """Rows joining a running batch: a chat's next turn, two samples of a prompt sent again, another prompt sent again
    and a new one; three resumed from the cache (hits), all answered as a cold scheduler (the resumed rows' states
    concatenated with others')."""
    first = [PROMPT[:12], PROMPT[3:18]]
    kw = [GREEDY, dict(GREEDY, do_sample=True, seed=2, temperature=0.8, num_return_sequences=2)]
    cache = PrefixCache(16 * 2**20)
    answers = run_scheduler(lfm2, first, kw, cache, defer=defer)
    prompts = [first[0] + answers[0].new_ids[0] + [70, 71], first[1], first[0], PROMPT[20:31]]
    params = [GREEDY, kw[1], dict(GREEDY, max_new_tokens=3), dict(GREEDY, do_sample=True, seed=4)]
    cold = run_scheduler(lfm2, prompts, params, join_at=[0, 1, 1, 3])
    hits = cache.hits
    warm = run_scheduler(lfm2, prompts, params, cache, join_at=[0, 1, 1, 3], defer=defer)
    assert [r.new_ids for r in warm] == [r.new_ids for r in cold]
    assert cache.hits - hits == 3 and [r.cached_tokens for r in warm][:3] == [len(prompts[0]) - 3, 15, 12]


def test_the_server_caches_lfm2_prefixes(lfm2):
    """``onnxlm serve`` (its prefix cache on by default) on an LFM2 model keeps its cache: the same completion
    request twice is a hit reusing every prompt position, with equal answers."""
    from serve_util import sent_twice

    body = {"prompt": "The cat sat on the mat, and then", "max_tokens": 6, "temperature": 0}
    a, b, m = sent_twice(lambda: lfm2, "/v1/completions", body, prefix_cache_mb=8)
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    assert m["prefix_cache_hits"] == 1 and m["prefix_cache_reused_tokens"] == a["usage"]["prompt_tokens"]


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
