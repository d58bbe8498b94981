"""Structured output in the server (OpenAI's ``response_format``) and in the continuous-batching scheduler, on the
tiny Llama (byte-level tokenizer.json that llguidance accepts, and a chat template).

Constrained requests decode in the shared batch with their own matchers: their greedy answers equal
``model.generate(json_schema=...)`` alone, whether they run alone, with unconstrained streams, or join a running
batch; bad ``response_format`` values are 400s naming it.
"""
from __future__ import annotations

import json
import os
import sys
import threading

import pytest

openai = pytest.importorskip("openai", reason="the server tests need the test extra (openai)")
pytest.importorskip("starlette", reason="the server tests need the serve extra")
if os.environ.get("CI") != "true":  # CI installs the 'structured' extra: there a missing engine is a failure
    pytest.importorskip("llguidance", reason="structured generation needs the 'structured' extra (llguidance)")
import jsonschema  # noqa: E402

import onnxlm  # noqa: E402
from onnxlm.runtime.constraints import make_constraint  # noqa: E402
from onnxlm.runtime.decoding.scheduler import Request, Scheduler  # noqa: E402
from serve_util import live_tiny, post, sse_events, wait_idle  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCHEMA = {"type": "object", "properties": {"a": {"enum": ["x", "yy"]},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "ok": {"type": "boolean"}},
          "required": ["a", "n", "ok"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}}
MESSAGES = [{"role": "user", "content": "Give me a thing as JSON."}]
PROMPTS = ["Hello there", "The quick brown fox", "Q: why?\nA:"]


@pytest.fixture(scope="module")
def live(tiny_llama):
    yield from live_tiny(tiny_llama.onnx_dir)


def _completion(live, prompt, max_tokens=40, **kw) -> dict:
    r = post(live.url, "/v1/completions", {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def _stream_text(events: list, chat: bool) -> tuple[str, str]:
    """SSE payloads of one choice -> (text, finish_reason)."""
    assert events[-1] == "[DONE]"
    chunks = [e["choices"][0] for e in events[:-1] if e["choices"]]
    text = "".join((c["delta"].get("content") or "") if chat else c["text"] for c in chunks)
    reasons = [c["finish_reason"] for c in chunks if c["finish_reason"]]
    assert len(reasons) == 1
    return text, reasons[0]


# ---------------------------------------------------------------------------------------------------- server
@pytest.mark.parametrize("prompt", PROMPTS)
def test_json_schema_completion_equals_generate(live, prompt):
    got = _completion(live, prompt, response_format=FORMAT)
    solo = live.model.generate(prompt, max_new_tokens=40, do_sample=False, json_schema=SCHEMA)
    choice = got["choices"][0]
    jsonschema.validate(json.loads(choice["text"]), SCHEMA)
    assert choice["text"] == solo.text[0] and solo.constraint_satisfied == [True]
    assert got["usage"]["completion_tokens"] == len(solo.new_tokens[0])
    assert choice["finish_reason"] == "stop" and solo.finish_reasons == ["eos"]


def test_json_schema_chat_equals_model_chat(live):
    r = post(live.url, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 40, "temperature": 0,
                                                 "response_format": FORMAT})
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["message"]["content"]
    jsonschema.validate(json.loads(content), SCHEMA)
    solo = live.model.chat(MESSAGES, max_new_tokens=40, do_sample=False, json_schema=SCHEMA)
    assert content == solo.text[0]
    assert r.json()["usage"]["completion_tokens"] == len(solo.new_tokens[0])


def test_openai_client_json_schema_and_json_object(live):
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0, timeout=60)
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=40, temperature=0,
                                       response_format=FORMAT)
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
    for path, body in [("/v1/completions", {"prompt": "Hello there"}), ("/v1/chat/completions",
                                                                        {"messages": MESSAGES})]:
        got = post(live.url, path, {**body, "max_tokens": 60, "temperature": 0,
                                    "response_format": {"type": "json_object"}}).json()
        choice = got["choices"][0]
        text = choice["message"]["content"] if "chat" in path else choice["text"]
        if choice["finish_reason"] == "stop":  # complete: a JSON object
            assert isinstance(json.loads(text), dict), text
        else:  # cut by max_tokens: still a prefix of one
            assert choice["finish_reason"] == "length" and text.startswith("{")


def test_sampled_constrained_rows_all_validate(live):
    got = _completion(live, "Hello there", max_tokens=60, response_format=FORMAT, temperature=1.0, n=3, seed=7)
    assert len(got["choices"]) == 3
    for choice in got["choices"]:
        if choice["finish_reason"] == "stop":
            jsonschema.validate(json.loads(choice["text"]), SCHEMA)
    solo = live.model.generate("Hello there", max_new_tokens=60, do_sample=True, seed=7, temperature=1.0,
                               num_return_sequences=3, top_k=None, json_schema=SCHEMA)
    assert [c["text"] for c in got["choices"]] == solo.text


def test_max_tokens_before_the_schema_completes_is_length(live):
    got = _completion(live, "Hello there", max_tokens=3, response_format=FORMAT)
    solo = live.model.generate("Hello there", max_new_tokens=3, do_sample=False, json_schema=SCHEMA)
    assert got["choices"][0]["finish_reason"] == "length" and solo.constraint_satisfied == [False]
    assert got["choices"][0]["text"] == solo.text[0]
    with pytest.raises(ValueError):
        json.loads(got["choices"][0]["text"])


def test_beam_search_with_response_format_equals_generate(live):
    got = _completion(live, "Hello there", response_format=FORMAT, num_beams=3, n=2)
    solo = live.model.generate("Hello there", max_new_tokens=40, do_sample=False, num_beams=3,
                               num_return_sequences=2, early_stopping=True, json_schema=SCHEMA)
    assert [c["text"] for c in got["choices"]] == solo.text
    for c in got["choices"]:
        jsonschema.validate(json.loads(c["text"]), SCHEMA)


def test_concurrent_constrained_and_free_streams_equal_solo(live):
    """Constrained and unconstrained streams decode in one batch (they start together); each equals its solo
    answer, and the batch held several rows at once."""
    jobs = []
    for i, prompt in enumerate(PROMPTS * 2):
        fmt = FORMAT if i % 2 == 0 else None
        chat = i % 3 == 2
        body = ({"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt})
        body.update(max_tokens=30, temperature=0, stream=True)
        if fmt:
            body["response_format"] = fmt
        jobs.append((prompt, chat, fmt, body))
    results: dict[int, tuple[str, str]] = {}
    barrier = threading.Barrier(len(jobs))
    steps = live.state.engine.steps

    def work(k):
        prompt, chat, fmt, body = jobs[k]
        barrier.wait()
        path = "/v1/chat/completions" if chat else "/v1/completions"
        results[k] = _stream_text(sse_events(live.url, path, body), chat)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == len(jobs)
    steps = live.state.engine.steps - steps
    m, tokens = live.model, 0
    for k, (prompt, chat, fmt, _) in enumerate(jobs):
        kw = {"max_new_tokens": 30, "do_sample": False, **({"json_schema": SCHEMA} if fmt else {})}
        solo = m.chat([{"role": "user", "content": prompt}], **kw) if chat else m.generate(prompt, **kw)
        text, reason = results[k]
        assert text == solo.text[0], (k, prompt, chat, fmt is not None)
        assert reason == {"eos": "stop", "length": "length"}[solo.finish_reasons[0]]
        if fmt:
            jsonschema.validate(json.loads(text), SCHEMA)
        tokens += len(solo.new_tokens[0])
    assert steps < tokens  # fewer decoding steps than tokens: the requests shared the batch
    wait_idle(live.url)


@pytest.mark.parametrize("fmt,words", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}}, "invalid"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "minLength": 5,
                                                                     "maxLength": 2}}}, ""),
    ({"type": "xml"}, "not supported"),
    ("json", "must be an object"),
    ({"type": "json_schema"}, "json_schema"),
])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_bad_response_format_is_400_and_the_server_goes_on(live, fmt, words, path):
    body = {"prompt": "Hello"} if "chat" not in path else {"messages": MESSAGES}
    r = post(live.url, path, {**body, "max_tokens": 5, "response_format": fmt})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "response_format" and err["type"] == "invalid_request_error"
    assert words in err["message"]
    assert post(live.url, path, {**body, "max_tokens": 2, "temperature": 0}).status_code == 200


GBNF = '''root ::= "Answer: " answer " because " reason "."
answer ::= "yes" | "no"
reason ::= "it is" | "I said so" | [0-9]'''  # llama.cpp's grammar syntax: a finite language


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_llama_cpp_grammar_equals_generate(live, path):
    """llama.cpp's server's ``grammar`` (GBNF): the reply follows it, equal to ``generate(grammar=...)`` alone,
    streamed or not."""
    import re

    chat = "chat" in path
    body = {"messages": MESSAGES} if chat else {"prompt": "Hello there"}
    r = post(live.url, path, {**body, "max_tokens": 48, "temperature": 0, "grammar": GBNF})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    text = choice["message"]["content"] if chat else choice["text"]
    solo = (live.model.chat(MESSAGES, max_new_tokens=48, do_sample=False, grammar=GBNF) if chat else
            live.model.generate("Hello there", max_new_tokens=48, do_sample=False, grammar=GBNF))
    assert text == solo.text[0]
    assert re.fullmatch(r"Answer: (yes|no) because (it is|I said so|[0-9])\.", text), text
    assert choice["finish_reason"] == "stop" and solo.finish_reasons == ["eos"]
    events = sse_events(live.url, path, {**body, "max_tokens": 48, "temperature": 0, "grammar": GBNF,
                                         "stream": True})
    assert _stream_text(events, chat)[0] == text


@pytest.mark.parametrize("extra, param, words", [
    ({"grammar": "root ::= ("}, "grammar", "invalid"),
    ({"grammar": 5}, "grammar", "non-empty"),
    ({"grammar": GBNF, "response_format": {"type": "json_object"}}, "grammar", "give one of them"),
])
def test_bad_grammar_is_400_naming_it(live, extra, param, words):
    r = post(live.url, "/v1/completions", {"prompt": "Hello", "max_tokens": 5, **extra})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err


@pytest.mark.parametrize("free", [{"response_format": {"type": "text"}}, {"grammar": ""}])
def test_text_response_format_and_an_empty_grammar_are_unconstrained(live, free):
    """An empty grammar is none, as llama.cpp's server reads it (its older web UI sends one)."""
    got = _completion(live, "Hello there", max_tokens=10, **free)
    assert got["choices"][0]["text"] == live.model.generate("Hello there", max_new_tokens=10, do_sample=False).text[0]


def test_without_llguidance_the_400_names_the_extra(live, monkeypatch):
    monkeypatch.setitem(sys.modules, "llguidance", None)  # `import llguidance` now raises ImportError
    for fmt in (FORMAT, {"type": "json_object"}):
        r = post(live.url, "/v1/completions", {"prompt": "Hello", "max_tokens": 5, "response_format": fmt})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "response_format" and "onnxlm[structured]" in err["message"]
    monkeypatch.undo()
    assert _completion(live, "Hello", max_tokens=2)["choices"][0]["finish_reason"]


# ---------------------------------------------------------------------------------------------------- scheduler
def test_constrained_request_joining_a_running_batch_equals_solo(tiny_llama):
    """Requests join a running batch at different steps, constrained ones among them (greedy and seeded sampling
    with n rows); rows leave as they finish. Each equals model.generate with the same constraint alone."""
    model = onnxlm.load(tiny_llama.onnx_dir)
    schema = make_constraint("json_schema", SCHEMA)
    date = make_constraint("regex", r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
    cases = [  # (prompt, params, constraint, constraint kwargs for generate, joins at step)
        ("Hello there", {"max_new_tokens": 25, "do_sample": False}, None, {}, 0),
        ("The quick brown fox", {"max_new_tokens": 40, "do_sample": False}, schema, {"json_schema": SCHEMA}, 3),
        ("a", {"max_new_tokens": 12, "do_sample": False}, date, {"regex": r"[0-9]{4}-[0-9]{2}-[0-9]{2}"}, 3),
        ("1 2 3", {"max_new_tokens": 40, "do_sample": True, "seed": 0, "temperature": 0.9,
                   "num_return_sequences": 3}, schema, {"json_schema": SCHEMA}, 6),
        ("xyz", {"max_new_tokens": 6, "do_sample": False}, schema, {"json_schema": SCHEMA}, 8),  # ends at length
    ]
    sched = Scheduler(model, max_rows=32)
    reqs = [Request(model.tokenizer.encode(p), model.resolve_config(kw), constraint=c) for p, kw, c, _, _ in cases]
    step, pending, widest = 0, list(zip([c[4] for c in cases], reqs)), 0
    while pending or sched.busy:
        for at, req in [x for x in pending if x[0] <= step]:
            sched.add(req)
            pending.remove((at, req))
        sched.step()
        widest = max(widest, len(sched.requests))
        step += 1
    assert widest >= 3 and not sched.failed
    for (prompt, kw, _, ckw, _), req in zip(cases, reqs):
        assert req.done and req.error is None
        solo = model.generate(prompt, **kw, **ckw)
        assert req.new_ids == solo.new_tokens, prompt
        assert req.final_text == solo.text
        assert [r or "length" for r in req.reasons] == solo.finish_reasons
    assert reqs[-1].reasons == ["length"]  # cut before the schema completes
    assert reqs[1].reasons == ["eos"]
    lens = [len(ids) for ids in reqs[3].new_ids]  # seed 0: a middle row outlives the others (they leave first)
    assert lens[1] > max(lens[0], lens[2]), lens


def test_scheduler_refuses_an_invalid_constraint_before_it_joins(tiny_llama):
    from onnxlm.runtime.constraints import Constraint
    from onnxlm.runtime.errors import ParameterError
    model = onnxlm.load(tiny_llama.onnx_dir)
    sched = Scheduler(model)
    bad = Constraint("json_schema", '{"grammars": [{"json_schema": {"type": "no-such-type"}}]}')
    with pytest.raises(ParameterError) as info:
        sched.add(Request(model.tokenizer.encode("Hi"), model.resolve_config({"max_new_tokens": 3}), constraint=bad))
    assert info.value.parameter == "json_schema" and not sched.waiting
    assert not sched.rows

