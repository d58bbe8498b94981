"""Continuous batching (runtime/decoding/scheduler.py): requests that join a running batch at different steps, and
leave it when they finish, get exactly what they get alone (model.generate), greedy and seeded sampling, on the
plain and fused KV layouts and LFM2's convolution states; seq2seq requests run one at a time."""
from __future__ import annotations

import numpy as np
import pytest

import onnxlm
from onnxlm.runtime.constraints import make_constraint
from onnxlm.runtime.decoding.scheduler import Request, Scheduler
from onnxlm.runtime.errors import ParameterError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["Hello there", "The quick brown fox jumps", "a", "Once upon a time in a land far away, there",
           "1 2 3 4", "xyz xyz"]


@pytest.fixture(scope="session")
def tiny_llama_fused_dir(tmp_path_factory, tiny_llama):
    from onnxlm.export import export_model
    return export_model(tiny_llama.hf_dir, tmp_path_factory.mktemp("sched-fused") / "onnx", progress=False,
                        kv_layout="fused")


@pytest.fixture(scope="module", params=["gpt2", "llama", "llama-fused", "lfm2"])
def model(request, tiny_gpt2, tiny_llama):
    if request.param == "gpt2":
        return onnxlm.load(tiny_gpt2.onnx_dir)
    if request.param == "lfm2":  # convolution states joined, selected and dropped with the rows
        return onnxlm.load(request.getfixturevalue("tiny_lfm2").onnx_dir)
    if request.param == "llama":
        return onnxlm.load(tiny_llama.onnx_dir)
    return onnxlm.load(request.getfixturevalue("tiny_llama_fused_dir"))


def _params(i: int, sample: bool) -> dict:
    """Request i's parameters: lengths differ so rows leave at different steps; sampling varies per request."""
    p = {"max_new_tokens": 3 + 4 * (i % 3), "eos_token_id": None if i % 2 else 258}
    if sample:
        p.update(do_sample=True, seed=100 + i, temperature=0.7 + 0.2 * i, top_k=[0, 20, 5][i % 3],
                 top_p=[1.0, 0.9][i % 2], num_return_sequences=1 + i % 2)
    else:
        p.update(do_sample=False, repetition_penalty=[1.0, 1.3][i % 2])
    return p


def _staggered(model, params: list[dict], join_at: list[int], max_rows: int = 32) -> list[Request]:
    """Requests joining the batch at the given steps -> the finished requests."""
    sched = Scheduler(model, max_rows=max_rows)
    reqs = [Request(model.tokenizer.encode(p), model.resolve_config(kw)) for p, kw in zip(PROMPTS, params)]
    step, pending = 0, list(zip(join_at, reqs))
    while pending or sched.busy:
        for at, req in [x for x in pending if x[0] <= step]:
            sched.add(req)
            pending.remove((at, req))
        sched.step()
        step += 1
    assert all(r.done and r.error is None for r in reqs)
    return reqs


@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sample"])
def test_joined_rows_equal_solo(model, sample):
    params = [_params(i, sample) for i in range(len(PROMPTS))]
    # the eos id of the gpt2 fixture differs: drop the llama id there
    for p in params:
        if p["eos_token_id"] is not None:
            p["eos_token_id"] = model.generation_config.eos_token_id
    reqs = _staggered(model, params, join_at=[0, 0, 2, 3, 3, 7])
    for prompt, kw, req in zip(PROMPTS, params, reqs):
        solo = model.generate(prompt, **kw)
        assert req.new_ids == solo.new_tokens, (prompt, kw)
        assert req.final_text == solo.text
        assert [r or "length" for r in req.reasons] == solo.finish_reasons


def test_rows_leave_and_batch_shrinks(model):
    """A cancelled request's rows leave at the next step; the others still equal their solo answers; the batch
    never holds more than max_rows rows (a request waits for room)."""
    params = [{"max_new_tokens": 12, "do_sample": False, "eos_token_id": None} for _ in range(4)]
    sched = Scheduler(model, max_rows=3)
    reqs = [Request(model.tokenizer.encode(p), model.resolve_config(kw)) for p, kw in zip(PROMPTS, params)]
    for r in reqs:
        sched.add(r)
    sched.step()
    assert len(sched.rows) == 3 and len(sched.waiting) == 1
    sched.cancel(reqs[1])
    sched.step()
    assert len(sched.rows) == 3 and reqs[1].done  # the cancelled rows left, the waiting request took the room
    while sched.busy:
        sched.step()
    for prompt, kw, req in zip(PROMPTS, params, reqs):
        if req is not reqs[1]:
            assert req.new_ids == model.generate(prompt, **kw).new_tokens
    assert sched.state is None and not sched.rows


def test_logprobs_are_log_softmax_of_the_logits(tiny_llama):
    model = onnxlm.load(tiny_llama.onnx_dir)
    req = Request(model.tokenizer.encode("Hello"), model.resolve_config({"max_new_tokens": 4, "do_sample": False}),
                  logprobs=3)
    events = []
    sched = Scheduler(model)
    sched.add(req)
    while sched.busy:
        events += [e for _, evs in sched.step() for e in evs]
    res = model.generate("Hello", max_new_tokens=4, do_sample=False, output_logits=True)
    for ev, logits in zip(events, res.logits):
        lp = logits[0] - np.log(np.exp(logits[0] - logits[0].max()).sum()) - logits[0].max()
        assert abs(ev.logprob - lp[ev.token_id]) < 1e-4
        assert [i for i, _ in ev.top_logprobs] == list(np.argsort(-lp, kind="stable")[:3])
        assert ev.top_logprobs[0][0] == ev.token_id  # greedy: the top alternative is the token


def test_seq2seq_runs_one_request_at_a_time(tiny_t5):
    model = onnxlm.load(tiny_t5.onnx_dir)
    params = [{"max_new_tokens": 5, "do_sample": False}, {"max_new_tokens": 3, "do_sample": True, "seed": 1},
              {"max_new_tokens": 4, "decoder_start_token_id": 5}]  # a request's own start id
    sched = Scheduler(model)
    reqs = [Request(model.tokenizer.encode(p), model.resolve_config(kw)) for p, kw in zip(PROMPTS, params)]
    for r in reqs:
        sched.add(r)
    sched.step()
    assert [req for req, _ in sched.rows] == [reqs[0]]  # the second waits for an empty batch
    while sched.busy:
        sched.step()
    for prompt, kw, req in zip(PROMPTS, params, reqs):
        assert req.new_ids == model.generate(prompt, **kw).new_tokens


def test_a_request_whose_decoding_cannot_be_set_up_fails_alone(tiny_llama):
    """A request whose processors or stop check cannot be made at admission (here a stop string that is not text, a
    lone surrogate: no UTF-8) fails by itself through ``failed``; the one admitted with it and the batch go on."""
    model = onnxlm.load(tiny_llama.onnx_dir)
    sched = Scheduler(model)
    good = Request(model.tokenizer.encode(PROMPTS[0]), model.resolve_config({"max_new_tokens": 4, "eos_token_id": None}))
    bad = Request(model.tokenizer.encode(PROMPTS[1]), model.resolve_config({"max_new_tokens": 4, "stop": ["\ud800"]}))
    sched.add(good)
    sched.add(bad)
    while sched.busy:
        sched.step()
    assert sched.failed == [bad] and isinstance(bad.error, UnicodeEncodeError)
    assert good.done and good.error is None and len(good.new_ids[0]) == 4


# ---------------------------------------------------------------- speculation of a request alone (prompt lookup)
REPEATING = "ab cd ef ab cd ef ab cd ef ab"


def _alone(model, prompt, kw, prompt_lookup=6, cache=None) -> tuple[Request, Scheduler]:
    """One request through a scheduler that speculates by prompt lookup -> (the finished request, the scheduler)."""
    sched = Scheduler(model, prompt_lookup=prompt_lookup, prefix_cache=cache)
    req = sched.add(Request(model.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt),
                            model.resolve_config(kw)))
    while sched.busy:
        sched.step()
    assert req.done and req.error is None
    return req, sched


@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sample"])
def test_a_request_alone_speculates_and_gets_its_solo_tokens(model, sample):
    """Alone in the batch, a request picks several positions per pass (fewer passes than tokens) and gets what
    model.generate gives it without speculation: ids, text, finish reasons, for greedy and seeded sampling, with
    processors, stop strings and EOS deciding each position as plain steps do."""
    eos = model.generation_config.eos_token_id
    cases = [dict(max_new_tokens=48, do_sample=False),
             dict(max_new_tokens=40, do_sample=False, repetition_penalty=1.2, eos_token_id=eos),
             dict(max_new_tokens=40, do_sample=False, stop=[" four five"]),
             dict(max_new_tokens=3, do_sample=False)]
    if sample:
        cases = [dict(c, do_sample=True, seed=7 + i, temperature=0.6, top_k=5) for i, c in enumerate(cases)]
    accepted = 0
    for kw in cases:
        req, sched = _alone(model, REPEATING, kw)
        solo = model.generate(REPEATING, **kw)
        assert req.new_ids == solo.new_tokens, kw
        assert req.final_text == solo.text
        assert [r or "length" for r in req.reasons] == solo.finish_reasons
        accepted += sched.speculation.accepted
        assert sched.speculation.passes <= len(req.new_ids[0])
    assert accepted > 0  # some proposals held: the passes did decide several positions


def test_speculation_pauses_while_others_share_the_batch(model):
    """A speculating request joined by others decodes plainly while they are there and speculates again once
    alone; every request still gets its solo tokens, and an off scheduler (prompt_lookup=0) never speculates."""
    params = [dict(max_new_tokens=40, do_sample=False, eos_token_id=None), dict(max_new_tokens=6, do_sample=False),
              dict(max_new_tokens=5, do_sample=True, seed=3, num_return_sequences=2)]
    prompts = [REPEATING, PROMPTS[1], PROMPTS[3]]
    for lookup in (6, 0):
        sched = Scheduler(model, prompt_lookup=lookup)
        reqs = [Request(model.tokenizer.encode(p), model.resolve_config(kw)) for p, kw in zip(prompts, params)]
        sched.add(reqs[0])
        for step in range(100):
            if step == 3:
                sched.add(reqs[1])
                sched.add(reqs[2])
            if step > 3 and not sched.busy:
                break
            sched.step()
        for prompt, kw, req in zip(prompts, params, reqs):
            assert req.done and req.new_ids == model.generate(prompt, **kw).new_tokens, kw
        assert (sched.speculation.passes > 0) == bool(lookup)


def test_a_speculated_answer_is_kept_for_the_next_turn(model):
    """The prefix cache keeps a speculating request's whole sequence (its rolled-back positions gone): the next turn
    resumes from it and gets its solo tokens."""
    from onnxlm.runtime.prefix_cache import PrefixCache
    cache = PrefixCache(64 * 2**20)
    kw = dict(max_new_tokens=30, do_sample=False, eos_token_id=None)
    first, sched = _alone(model, REPEATING, kw, cache=cache)
    assert sched.speculation.passes > 0
    turn = model.tokenizer.encode(REPEATING) + first.new_ids[0] + model.tokenizer.encode(" seven")
    second, _ = _alone(model, turn, kw, cache=cache)
    assert second.cached_tokens >= len(model.tokenizer.encode(REPEATING)) + len(first.new_ids[0]) - 1
    assert second.new_ids == model.generate([turn], **kw).new_tokens


def test_who_speculates(tiny_llama, tiny_t5):
    """Not n > 1 rows, not a seq2seq model; a constrained request through its constraint's proposer; a request's
    own prompt_lookup_num_tokens turns it on where the scheduler's is off; a bad prompt_lookup is refused by name."""
    from onnxlm.runtime.decoding.scheduler_speculation import ConstrainedProposer
    llama = onnxlm.load(tiny_llama.onnx_dir)
    ids = llama.tokenizer.encode(REPEATING)
    _, sched = _alone(llama, ids, dict(max_new_tokens=20, do_sample=False, prompt_lookup_num_tokens=4),
                      prompt_lookup=None)
    assert sched.speculation.passes > 0
    sched = Scheduler(llama)  # row_progress (the server's /slots) says which rows speculate when alone
    for kw in (dict(prompt_lookup_num_tokens=4), {}):
        sched.add(Request(ids, llama.resolve_config(dict(max_new_tokens=5, do_sample=False, **kw))))
    sched.step()
    assert [row[-1] for row in sched.row_progress()] == [True, False]
    _, sched = _alone(llama, ids, dict(max_new_tokens=8, do_sample=True, seed=1, num_return_sequences=2))
    assert sched.speculation.passes == 0
    sched = Scheduler(llama, prompt_lookup=6)
    req = sched.add(Request(ids, llama.resolve_config(dict(max_new_tokens=8, do_sample=False)),
                            constraint=make_constraint("regex", "[a-z ]+")))
    assert sched._runs == {} and (sched.step() or True)
    assert isinstance(sched._runs[id(req)].proposer, ConstrainedProposer)
    t5 = onnxlm.load(tiny_t5.onnx_dir)
    _, sched = _alone(t5, t5.tokenizer.encode(REPEATING), dict(max_new_tokens=8, do_sample=False))
    assert sched.speculation.passes == 0
    for bad in (-1, 1.5, "4"):
        with pytest.raises(ParameterError, match="prompt_lookup"):
            Scheduler(llama, prompt_lookup=bad)


def test_a_cancelled_speculating_request_leaves(model):
    sched = Scheduler(model, prompt_lookup=6)
    req = sched.add(Request(model.tokenizer.encode(REPEATING),
                            model.resolve_config(dict(max_new_tokens=40, do_sample=False, eos_token_id=None))))
    for _ in range(3):
        sched.step()
    sched.cancel(req)
    sched.step()
    assert req.done and not sched.busy and sched.state is None


def test_a_prediction_is_proposed_and_the_answer_is_the_models_own(model):
    """A request with a ``prediction`` (OpenAI's predicted outputs) speculates from it alone in the batch, without
    prompt lookup: a prediction equal to the answer is accepted almost whole (a pass checks up to 16 of its ids), a
    half-wrong one costs rejected proposals; the ids are the solo ones either way."""
    kw = dict(max_new_tokens=40, do_sample=False, eos_token_id=None)
    ids = model.tokenizer.encode(PROMPTS[3])
    solo = model.generate(PROMPTS[3], **kw).new_tokens[0]
    wrong = solo[:20] + [(t + 1) % 200 for t in solo[20:30]] + solo[30:]
    for prediction, most_accepted in ((solo, True), (wrong, False), (list(reversed(solo)), False)):
        sched = Scheduler(model)  # no prompt lookup: the prediction alone proposes
        req = sched.add(Request(list(ids), model.resolve_config(kw), prediction=list(prediction)))
        steps = 0
        while sched.busy:
            sched.step()
            steps += 1
        assert req.new_ids[0] == solo
        assert req.accepted <= req.proposed and req.proposed == sched.speculation.proposed
        if most_accepted:
            assert req.accepted >= len(solo) - 6 and steps < len(solo) // 3, (req.accepted, steps)
        elif prediction is wrong:
            assert req.accepted > 0 and req.proposed > req.accepted


# ------------------------------------------------------------------------------------------------ chunked prefill
LONG = "The quick brown fox jumps over the lazy dog, twice."  # ~50 tokens on the tiny byte-level tokenizers


@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sample"])
def test_a_long_prompt_is_prefilled_in_parts_while_others_decode(model, sample):
    """prefill_chunk (scheduler_prefill.py): a long prompt arriving while a request decodes goes in a part per step
    (the running request gets a token every step meanwhile), joins once whole, and both get their solo tokens; n = 2
    sampling rows too. Alone it goes in parts as well, and a short request arriving meanwhile joins at once; a
    second long prompt waits for the first (in order); short prompts admitted together stay within a part's
    tokens a step."""
    kw = [dict(max_new_tokens=24, do_sample=False, eos_token_id=None),
          dict(max_new_tokens=6, do_sample=False, repetition_penalty=1.2)]
    if sample:
        kw = [dict(k, do_sample=True, seed=11 + i, top_k=8) for i, k in enumerate(kw)]
        kw[1]["num_return_sequences"] = 2
    prompts = [model.tokenizer.encode(PROMPTS[1])[:6], model.tokenizer.encode(LONG)]  # a short one, a long one
    assert len(prompts[1]) > 3 * 8
    sched = Scheduler(model, prefill_chunk=8)
    reqs = [Request(p, model.resolve_config(k)) for p, k in zip(prompts, kw)]
    sched.add(reqs[0])
    sched.step()
    sched.step()
    sched.add(reqs[1])
    made, parts = [], 0
    while sched.busy:
        before = len(reqs[0].new_ids[0])
        sched.step()
        if sched.prefilling:
            parts += 1
            made.append(len(reqs[0].new_ids[0]) - before)
    assert parts >= len(prompts[1]) // 8 - 1 and made and all(m == 1 for m in made)  # a token a step meanwhile
    for p, k, req in zip(prompts, kw, reqs):
        assert req.done and req.error is None and req.new_ids == model.generate([p], **k).new_tokens, k
    alone = Scheduler(model, prefill_chunk=8)
    first = alone.add(Request(prompts[1], model.resolve_config(kw[1])))
    alone.step()
    assert alone.prefilling and not alone.rows  # nobody decoding: in parts all the same
    second = alone.add(Request(prompts[1][:-3], model.resolve_config(kw[0])))
    short = alone.add(Request(prompts[0][:6], model.resolve_config(kw[0])))
    alone.step()
    assert [p.req for p in alone.prefilling] == [first, second] and short.new_ids and len(short.new_ids[0]) == 1
    order = []
    while alone.busy:
        alone.step()
        order += [r for r in (first, second) if r.new_ids and r not in order]
    assert order == [first, second]
    budget = Scheduler(model, prefill_chunk=8)
    few = [budget.add(Request(prompts[0][:5], model.resolve_config(kw[0]))) for _ in range(3)]
    budget.step()
    assert [bool(r.new_ids) for r in few] == [True, False, False] and len(budget.waiting) == 2  # 5 + 5 > 8
    while budget.busy:
        budget.step()
    assert all(r.new_ids == few[0].new_ids for r in few)


def test_a_prompt_in_parts_resumes_from_the_prefix_cache_and_is_kept(model):
    """A long prompt that shares a start with a cached answer resumes there (its first part is the rest's first
    part), and its whole prompt goes into the cache for the next turn; tokens equal solo; a cancelled prefilling
    request leaves and frees its rows."""
    from onnxlm.runtime.prefix_cache import PrefixCache
    cache = PrefixCache(64 * 2**20)
    kw = dict(max_new_tokens=8, do_sample=False, eos_token_id=None)
    long_ids = model.tokenizer.encode(LONG)
    sched = Scheduler(model, prefix_cache=cache, prefill_chunk=8, max_rows=2)
    first = sched.add(Request(long_ids[:20], model.resolve_config(kw)))
    while sched.busy:
        sched.step()
    runner = sched.add(Request(model.tokenizer.encode(PROMPTS[0])[:6], model.resolve_config(dict(kw, max_new_tokens=40))))
    sched.step()
    second = sched.add(Request(long_ids, model.resolve_config(kw)))
    sched.step()
    assert sched.prefilling and second.cached_tokens >= 19  # resumed from the first turn's prompt
    while sched.busy:
        sched.step()
    assert second.new_ids == model.generate([long_ids], **kw).new_tokens and runner.error is None
    assert first.new_ids == model.generate([long_ids[:20]], **kw).new_tokens
    third = sched.add(Request(long_ids + [5], model.resolve_config(kw)))
    sched.add(Request(model.tokenizer.encode(PROMPTS[2])[:6], model.resolve_config(dict(kw, max_new_tokens=30))))
    sched.step()  # the short one joins whole; the long one resumes from the second's prompt (nothing left in parts)
    assert third.cached_tokens >= len(long_ids) - 1
    while sched.busy:
        sched.step()
    assert third.new_ids == model.generate([long_ids + [5]], **kw).new_tokens
    # cancelled while prefilling: it leaves, its rows are free again
    sched = Scheduler(model, prefill_chunk=8, max_rows=2)
    sched.add(Request(model.tokenizer.encode(PROMPTS[0])[:6], model.resolve_config(dict(kw, max_new_tokens=30))))
    sched.step()
    gone = sched.add(Request(long_ids, model.resolve_config(kw)))
    sched.step()
    assert sched.prefilling
    sched.cancel(gone)
    sched.step()
    assert gone.done and not sched.prefilling and not gone.new_ids


def test_prefill_chunk_is_checked():
    with pytest.raises(ParameterError, match="prefill_chunk: got -1"):
        Scheduler(type("M", (), {"is_encoder_decoder": False})(), prefill_chunk=-1)


def test_a_next_turn_mostly_cached_is_not_prefilled_in_parts(model):
    """The chunk bounds the positions a prefill computes: a long prompt whose start the prefix cache holds (a chat's
    next turn) joins with the admission's others, not a part a step; its tokens equal solo."""
    from onnxlm.runtime.prefix_cache import PrefixCache
    cache = PrefixCache(64 * 2**20)
    kw = dict(max_new_tokens=4, do_sample=False, eos_token_id=None)
    long_ids = model.tokenizer.encode(LONG)
    sched = Scheduler(model, prefix_cache=cache, prefill_chunk=8)
    first = sched.add(Request(long_ids, model.resolve_config(kw)))
    while sched.busy:
        sched.step()
    turn = long_ids + first.new_ids[0] + long_ids[:5]
    assert cache.peek(turn) >= len(long_ids) and cache.hits == 0  # peek counts nothing
    nxt = sched.add(Request(turn, model.resolve_config(kw)))
    sched.step()
    assert not sched.prefilling and nxt.new_ids and nxt.cached_tokens >= len(long_ids)
    while sched.busy:
        sched.step()
    assert nxt.new_ids == model.generate([turn], **kw).new_tokens


# ---------------------------------------------------------------- speculation under a structured-output constraint
THING = {"type": "object", "properties": {"a": {"enum": ["x", "yy"]}, "n": {"type": "integer", "minimum": 0,
         "maximum": 99}, "ok": {"type": "boolean"}}, "required": ["a", "n", "ok"], "additionalProperties": False}
LISTING = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 6}, "count": {"type": "integer"}}, "required": ["name", "count"],
    "additionalProperties": False}, "maxItems": 3}}, "required": ["items"], "additionalProperties": False}


def test_a_constrained_request_alone_speculates_and_gets_its_solo_tokens(model):
    """A constrained request decoding alone speculates (scheduler_speculation.ConstrainedProposer): the schema's
    forced tokens (its keys, quotes, braces) and prompt lookup's candidates cut where the constraint refuses are
    checked in one pass, each position still picked under the constraint's mask, so the request gets what
    model.generate gives it with the same constraint and no speculation (greedy and seeded sampling, penalties,
    stop strings), in fewer passes than tokens."""
    prompt = '[{"name":"ab","count":1},{"name":"ab","count":1}]'
    regex = r"(ab cd ){2,5}[0-9]{3}"
    cases = [({"max_new_tokens": 70, "do_sample": False}, {"json_schema": LISTING}),
             ({"max_new_tokens": 70, "do_sample": True, "seed": 5, "temperature": 0.8, "top_k": 20},
              {"json_schema": LISTING}),
             ({"max_new_tokens": 40, "do_sample": False, "repetition_penalty": 1.3}, {"json_schema": THING}),
             ({"max_new_tokens": 40, "do_sample": False, "stop": ['"count"']}, {"json_schema": LISTING}),
             ({"max_new_tokens": 30, "do_sample": False}, {"regex": regex}),
             ({"max_new_tokens": 9, "do_sample": False}, {"json_schema": LISTING})]  # ends at its length
    looked = 0
    for kw, ckw in cases:
        (kind, value), = ckw.items()
        for lookup in (6, None):  # the scheduler's prompt lookup on, and a constrained request with it off
            sched = Scheduler(model, prompt_lookup=lookup)
            req = sched.add(Request(model.tokenizer.encode(prompt), model.resolve_config(kw),
                                    constraint=make_constraint(kind, value)))
            while sched.busy:
                sched.step()
            assert req.done and req.error is None
            solo = model.generate(prompt, **kw, **ckw)
            assert req.new_ids == solo.new_tokens, (kw, ckw, lookup)
            assert req.final_text == solo.text and [r or "length" for r in req.reasons] == solo.finish_reasons
            if lookup is None:
                assert sched.speculation.passes == 0  # nothing asks it to speculate: plain steps
                continue
            assert 0 < sched.speculation.passes < len(req.new_ids[0])  # the schema or regex forces a start
            looked += sched.speculation.accepted
    assert looked > 0


def test_a_constraints_forced_tokens_are_proposed_and_lookups_cut(tiny_llama):
    """ConstrainedProposer: the constraint's forced tokens first (within the length limit, never EOS); otherwise
    the lookup's candidates up to the first token the constraint refuses; the lookup's back-off hears only its own
    proposals; the matcher consumes nothing."""
    from onnxlm.runtime.constraints import ConstraintProcessor, engine_for
    from onnxlm.runtime.decoding.scheduler_speculation import ConstrainedProposer

    model = onnxlm.load(tiny_llama.onnx_dir)
    eos = [model.generation_config.eos_token_id]
    processor = ConstraintProcessor(engine_for(model, eos, "json_schema"), [make_constraint("json_schema", THING)])
    matcher = processor.matchers[0]

    class Lookup:  # stands in for PromptLookup: proposes what it is told, records its back-off
        def __init__(self):
            self.candidates, self.heard = np.zeros((1, 0), np.int64), []

        def propose(self, sequences, active):
            return self.candidates, None

        def update(self, matches, k):
            self.heard.append((matches, k))

    lookup = Lookup()
    proposer = ConstrainedProposer(lookup, processor, model=model, max_length=100, eos_token_ids=eos)
    forced = matcher.compute_ff_tokens()
    assert forced and model.tokenizer.decode(forced) == '{"a":"'[:len(model.tokenizer.decode(forced))]
    got, probs = proposer.propose(np.zeros((1, 5), np.int64), np.ones(1, bool))
    assert got.tolist() == [forced] and probs is None and not proposer.proposed_by_prediction
    proposer.update(len(forced), len(forced))
    assert lookup.heard == []  # the forced tokens were not the lookup's
    short = ConstrainedProposer(lookup, processor, model=model, max_length=7, eos_token_ids=eos)
    assert short.propose(np.zeros((1, 5), np.int64), np.ones(1, bool))[0].tolist() == [forced[:1]]  # k + 1 <= 2
    text = model.tokenizer.encode('{"a":"x","n":', add_special_tokens=False)
    assert matcher.consume_tokens(text) and not matcher.is_error()
    assert matcher.compute_ff_tokens() == []  # a number next: nothing forced
    good, bad = (model.tokenizer.encode(t, add_special_tokens=False) for t in ("42,", "x"))
    lookup.candidates = np.array([good + bad + good], np.int64)
    got, _ = proposer.propose(np.zeros((1, 5), np.int64), np.ones(1, bool))
    assert got.tolist() == [good]  # cut before the refused token
    proposer.update(1, len(good))
    assert lookup.heard == [(1, len(good + bad + good))]  # a cut proposal is heard as all the lookup gave
    assert matcher.compute_ff_tokens() == [] and matcher.validate_tokens(good + bad) == len(good)  # none consumed
