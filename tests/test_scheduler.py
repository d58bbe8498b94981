"""Continuous batching (runtime/decoding/scheduler.py): requests that join a running batch at different steps, and
leave it when they finish, get exactly what they get alone (model.generate), greedy and seeded sampling, on the
plain and fused KV layouts and LFM2's convolution states; seq2seq requests run one at a time."""
from __future__ import annotations

import numpy as np
import pytest

import onnxlm
from onnxlm.runtime.decoding.scheduler import Request, Scheduler

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
