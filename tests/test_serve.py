"""The OpenAI-compatible server against a live instance on 127.0.0.1 (uvicorn in a thread, the tiny llama with its
chat template), driven by the official ``openai`` client and raw HTTP (issue 10's reliability list)."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai", reason="the server tests need the test extra (openai)")
pytest.importorskip("starlette", reason="the server tests need the serve extra")

import onnxlm  # noqa: E402
from serve_util import live_tiny, post, same_or_tie, sse_events, start, wait_health, wait_idle  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["Hello there", "The quick brown fox", "a", "Once upon a time in a land far away", "1 2 3 4 5",
           "xyz xyz", "What is ONNX?", "zebra", "Q: why?\nA:", "cats and dogs", "0", "abc def ghi jkl"]


@pytest.fixture(scope="module")
def live(tiny_llama):
    yield from live_tiny(tiny_llama.onnx_dir)


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0, timeout=60)


def _greedy(client, prompt, max_tokens=12, **kw):
    return client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0, **kw)


# ---------------------------------------------------------------------------------------------------- basics
def test_health_models_and_help(live, client):
    h = wait_health(live.url)
    assert h["status"] == "ok" and h["in_flight"] == 0
    assert [m.id for m in client.models.list().data] == ["tiny"]
    from onnxlm.cli import main
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert exc.value.code == 0


def test_completion_equals_generate(live, client):
    r = _greedy(client, "Hello there", max_tokens=10)
    solo = live.model.generate("Hello there", max_new_tokens=10, do_sample=False)
    assert r.choices[0].text == solo.text[0]
    assert r.choices[0].finish_reason == {"eos": "stop", "length": "length"}[solo.finish_reasons[0]]
    assert r.usage.prompt_tokens == len(live.model.tokenizer.encode("Hello there"))
    assert r.usage.completion_tokens == len(solo.new_tokens[0])
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_equals_model_chat(live, client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=9, temperature=0)
    solo = live.model.chat(messages, max_new_tokens=9, do_sample=False)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == solo.text[0]
    assert r.usage.prompt_tokens == len(live.model.render_chat(messages, tokenize=True))


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_stream_equals_non_stream(live, path):
    """temperature 0: the streamed text equals the non-streamed one, exactly one finish_reason per choice, the
    stream ends with [DONE], usage adds up."""
    body = {"max_tokens": 20, "temperature": 0, "stop": ["\n\n"]}
    body.update({"prompt": "Q: why?\nA:"} if "chat" not in path else
                {"messages": [{"role": "user", "content": "Tell me a story"}]})
    whole = post(live.url, path, body).json()
    events = sse_events(live.url, path, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and all(c["usage"] is None for c in chunks[:-1])  # OpenAI: null until then
    with httpx.stream("POST", live.url + path, json={**body, "stream": True}, timeout=60) as r:
        raw = r.read()  # events end with a blank line of "\n"s, as OpenAI's and llama.cpp's (clients split on it)
    assert b"\r" not in raw and raw.endswith(b"data: [DONE]\n\n") and raw.count(b"\n\n") == raw.count(b"data:")
    if "chat" in path:
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
        assert text == whole["choices"][0]["message"]["content"]
    else:
        text = "".join(c["choices"][0]["text"] for c in chunks[:-1])
        assert text == whole["choices"][0]["text"]
    reasons = [c["choices"][0]["finish_reason"] for c in chunks[:-1] if c["choices"][0]["finish_reason"]]
    assert reasons == [whole["choices"][0]["finish_reason"]]
    cached = usage.pop("prompt_tokens_details")["cached_tokens"]  # the prefix cache held whole's prompt
    assert cached >= whole["usage"].pop("prompt_tokens_details")["cached_tokens"] and cached > 0
    assert usage == whole["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_openai_client_streams(client):
    stream = client.completions.create(model="tiny", prompt="Hello there", max_tokens=8, temperature=0, stream=True)
    text = "".join(c.choices[0].text for c in stream)
    assert text == _greedy(client, "Hello there", max_tokens=8).choices[0].text


def test_stop_cuts_the_text(live, client):
    full = _greedy(client, "The quick brown fox", max_tokens=24).choices[0].text
    stop = full[6:8]
    assert stop and stop not in "The quick brown fox"
    r = _greedy(client, "The quick brown fox", max_tokens=24, stop=[stop])
    assert r.choices[0].text == full[:full.find(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_logprobs(live, client):
    model = live.model
    r = _greedy(client, "Hello there", max_tokens=5, logprobs=3)
    lp = r.choices[0].logprobs
    ids = model.tokenizer.encode("Hello there")
    res = model.generate("Hello there", max_new_tokens=5, do_sample=False, output_logits=True)
    for k, logits in enumerate(res.logits):
        ref = np.log(np.exp(logits[0].astype(np.float64) - logits[0].max()).sum()) + logits[0].max()
        tok = res.new_tokens[0][k]
        assert abs(lp.token_logprobs[k] - (logits[0][tok] - ref)) < 1e-4
        assert len(lp.top_logprobs[k]) == 3
        assert max(lp.top_logprobs[k].values()) == pytest.approx(lp.token_logprobs[k], abs=1e-6)  # greedy: top 1
    assert len(ids) > 0
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    ended = chat.choices[0].finish_reason == "stop"  # on EOS: the end-of-turn token is counted, not listed
    assert len(content) == chat.usage.completion_tokens - ended and all(len(c.top_logprobs) == 2 for c in content)


def test_continue_final_message_continues_the_assistants_text(live, client):
    """vLLM's continue_final_message (add_generation_prompt false or left out): the prompt ends inside the final
    assistant message (render_chat(..., continue_final_message=True)) and the reply continues it; /tokenize and
    /apply-template give that prompt."""
    model = live.model
    msgs = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "My favourite colour is"}]
    ids = model.render_chat(msgs, tokenize=True, continue_final_message=True)
    want = model.generate([ids], max_new_tokens=8, do_sample=False)
    for extra in ({"continue_final_message": True}, {"continue_final_message": True, "add_generation_prompt": False}):
        r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=0, extra_body=extra)
        assert r.choices[0].message.content == want.text[0] and r.usage.prompt_tokens == len(ids)
    got = post(live.url, "/tokenize", {"messages": msgs, "continue_final_message": True}).json()["tokens"]
    assert got == ids
    bare = post(live.url, "/tokenize", {"messages": msgs[:1], "add_generation_prompt": False}).json()["tokens"]
    assert bare == model.render_chat(msgs[:1], tokenize=True, add_generation_prompt=False) != model.render_chat(
        msgs[:1], tokenize=True)  # the conversation as it stands, no assistant turn opened
    text = post(live.url, "/apply-template", {"messages": msgs, "continue_final_message": True}).json()["prompt"]
    assert text == model.render_chat(msgs, continue_final_message=True) and text.endswith("My favourite colour is")


def test_completions_top_logprobs_always_hold_the_sampled_token(live, client):
    """OpenAI: "the API will always return the logprob of the sampled token, so there may be up to logprobs+1
    elements": sampled tokens outside the top n are added (n + 1), logprobs 0 gives the sampled token alone; an
    echoed prompt's first token has none."""
    for n in (0, 1):
        r = client.completions.create(model="tiny", prompt="Hello there", max_tokens=12, temperature=1.5, seed=7,
                                      logprobs=n, echo=True)
        lp = r.choices[0].logprobs
        first = len(lp.tokens) - r.usage.completion_tokens
        assert lp.top_logprobs[0] is None
        for k in range(1, len(lp.tokens)):
            top = lp.top_logprobs[k]
            assert top[lp.tokens[k]] == pytest.approx(lp.token_logprobs[k]) and len(top) <= n + 1, (n, k, top)
        outside = [k for k in range(first, len(lp.tokens)) if len(lp.top_logprobs[k]) == n + 1]
        assert n == 0 or outside  # temperature 1.5 over 12 tokens samples some token outside the top 1


@pytest.mark.parametrize("rows", [256, 3])
def test_echo_prompt_logprobs_are_the_runtime_score(live, client, monkeypatch, rows):
    """echo + logprobs with max_tokens 0: the scoring use case; the prompt's token logprobs are model.score, whether
    the prompt goes through the model in one part or in parts of 3 tokens (jobs.PROMPT_ROWS)."""
    from onnxlm.serve import jobs

    monkeypatch.setattr(jobs, "PROMPT_ROWS", rows)
    r = client.completions.create(model="tiny", prompt="The cat sat on the mat.", max_tokens=0, echo=True,
                                  logprobs=1, temperature=0)
    lp = r.choices[0].logprobs
    sr = live.model.score("The cat sat on the mat.")
    assert r.choices[0].text == "The cat sat on the mat."
    assert lp.token_logprobs[0] is None
    np.testing.assert_allclose(lp.token_logprobs[1:], sr.token_logprobs[0], atol=1e-5)
    assert r.usage.completion_tokens == 0
    r2 = client.completions.create(model="tiny", prompt="The cat", max_tokens=3, echo=True, temperature=0)
    assert r2.choices[0].text == "The cat" + _greedy(client, "The cat", max_tokens=3).choices[0].text


def test_token_id_prompts_and_prompt_lists(live, client):
    ids = live.model.tokenizer.encode("Hello there")
    by_ids = _greedy(client, ids, max_tokens=6).choices[0].text
    assert by_ids == _greedy(client, "Hello there", max_tokens=6).choices[0].text
    r = _greedy(client, ["zebra", "Hello there"], max_tokens=6)
    assert [c.index for c in r.choices] == [0, 1] and r.choices[1].text == by_ids


def test_seed_repeats_and_n_keeps_indices(live, client):
    kw = dict(model="tiny", prompt="Once upon", max_tokens=10, temperature=1.0, top_p=0.95, n=3)
    a = client.completions.create(seed=7, **kw)
    b = client.completions.create(seed=7, **kw)
    c = client.completions.create(seed=8, **kw)
    assert [x.index for x in a.choices] == [0, 1, 2]
    assert [x.text for x in a.choices] == [x.text for x in b.choices]
    assert [x.text for x in a.choices] != [x.text for x in c.choices]
    # n = 3 streams keep their indices: each index's pieces join to the non-streamed choice of the same seed
    texts = {0: "", 1: "", 2: ""}
    finished = []
    for chunk in client.completions.create(seed=7, stream=True, **kw):
        for ch in chunk.choices:
            texts[ch.index] += ch.text
            if ch.finish_reason:
                finished.append(ch.index)
    assert [texts[i] for i in range(3)] == [x.text for x in a.choices]
    assert sorted(finished) == [0, 1, 2]


def test_penalties_and_extensions(live, client):
    """presence/frequency penalties (OpenAI's definition) and top_k / repetition_penalty / num_beams extensions:
    stream and non-stream agree, beam search equals the runtime's beam search."""
    kw = dict(model="tiny", prompt="aaaa", max_tokens=12, temperature=0, frequency_penalty=1.5,
              presence_penalty=0.5)
    plain = _greedy(client, "aaaa", max_tokens=12).choices[0].text
    pen = client.completions.create(**kw).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw))
    assert pen == streamed
    assert pen != plain  # the tiny model repeats itself without the penalty
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=6, temperature=0, n=2,
                                  extra_body={"num_beams": 3})
    solo = live.model.generate("Hello", max_new_tokens=6, num_beams=3, num_return_sequences=2,
                               early_stopping=True)
    assert [c.text for c in r.choices] == solo.text
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=6, temperature=0.8, seed=1,
                                  extra_body={"top_k": 5, "repetition_penalty": 1.2})
    assert r.choices[0].finish_reason in ("stop", "length")


def test_presence_frequency_processor_definition():
    from onnxlm.runtime.penalties import PresenceFrequencyPenaltyProcessor
    p = PresenceFrequencyPenaltyProcessor(0.5, 1.5, prompt_length=2)
    ids = np.array([[3, 3, 1, 1, 2], [0, 0, 0, 0, 0]])  # prompt [3, 3] does not count
    out = p(ids, np.zeros((2, 5), np.float32))
    np.testing.assert_allclose(out[0], [0, -(2 * 1.5 + 0.5), -(1.5 + 0.5), 0, 0])
    np.testing.assert_allclose(out[1], [-(3 * 1.5 + 0.5), 0, 0, 0, 0])


# ---------------------------------------------------------------------------------------------------- bad requests
BAD = [
    # (id, path, raw body or dict, headers, status, param)
    ("not-json", "/v1/completions", b"{not json", None, 400, None),
    ("string", "/v1/completions", b'"hello"', None, 400, None),
    ("list", "/v1/completions", b"[1, 2]", None, 400, None),
    ("int", "/v1/completions", b"42", None, 400, None),
    ("null", "/v1/completions", b"null", None, 400, None),
    ("content-type", "/v1/completions", b'{"prompt": "hi"}', {"Content-Type": "text/plain"}, 400, None),
    ("no-prompt", "/v1/completions", {"max_tokens": 3}, None, 400, "prompt"),
    ("empty-prompt", "/v1/completions", {"prompt": ""}, None, 400, "prompt"),
    ("no-messages", "/v1/chat/completions", {"max_tokens": 3}, None, 400, "messages"),
    ("empty-messages", "/v1/chat/completions", {"messages": []}, None, 400, "messages"),
    ("role-type", "/v1/chat/completions", {"messages": [{"role": 3, "content": "hi"}]}, None, 400,
     "messages[0].role"),
    ("content-type-msg", "/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, None, 400,
     "messages[0].content"),
    ("temperature-nan", "/v1/completions", b'{"prompt": "hi", "temperature": NaN}', None, 400, "temperature"),
    ("temperature-inf", "/v1/completions", b'{"prompt": "hi", "temperature": 1e999}', None, 400, "temperature"),
    ("temperature-neg", "/v1/completions", {"prompt": "hi", "temperature": -0.5}, None, 400, "temperature"),
    ("top-p-0", "/v1/completions", {"prompt": "hi", "top_p": 0}, None, 400, "top_p"),
    ("top-p-big", "/v1/completions", {"prompt": "hi", "top_p": 1.5}, None, 400, "top_p"),
    ("top-k-neg", "/v1/completions", {"prompt": "hi", "top_k": -1}, None, 400, "top_k"),
    ("top-k-float", "/v1/completions", {"prompt": "hi", "top_k": 2.5}, None, 400, "top_k"),
    ("max-tokens-0", "/v1/completions", {"prompt": "hi", "max_tokens": 0}, None, 400, "max_tokens"),
    ("max-tokens-neg", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": -2},
     None, 400, "max_tokens"),
    ("n-0", "/v1/completions", {"prompt": "hi", "n": 0}, None, 400, "n"),
    ("n-greedy", "/v1/completions", {"prompt": "hi", "n": 3, "temperature": 0}, None, 400, "n"),
    ("logprobs-cap", "/v1/completions", {"prompt": "hi", "logprobs": 6}, None, 400, "logprobs"),
    ("top-logprobs-cap", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                  "logprobs": True, "top_logprobs": 21}, None, 400, "top_logprobs"),
    ("context", "/v1/completions", {"prompt": "hi " * 80, "max_tokens": 100}, None, 400, "max_tokens"),
    ("message-field", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi", "foo": 1}]}, None,
     400, "messages[0].foo"),
    ("tool-field", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tools": [
        {"type": "function", "function": {"name": "f", "descripton": "typo"}}]}, None, 400,
     "tools[0].function.descripton"),
    # a field spelt with a lone surrogate is named with its escape (the body could not be encoded: a 500)
    ("surrogate-key", "/v1/completions", b'{"prompt": "hi", "\\ud800": 1}', None, 400, "\\ud800"),
    ("surrogate-message-key", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "hi", "\\ud800x": 1}]}', None, 400, "messages[0].\\ud800x"),
    ("include-usage", "/v1/completions", {"prompt": "hi", "stream": True, "stream_options": {"include_usage": "yes"}},
     None, 400, "stream_options.include_usage"),
    ("stream-options-key", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True,
                                                    "stream_options": {"include_usage": True, "usage": 1}},
     None, 400, "stream_options.usage"),
    ("bad-ids", "/v1/completions", {"prompt": [5, -1, 260, 7]}, None, 400, "prompt"),
    ("unknown-arg", "/v1/completions", {"prompt": "hi", "temprature": 0.5}, None, 400, "temprature"),
    ("unknown-model", "/v1/completions", {"prompt": "hi", "model": "gpt-5"}, None, 404, "model"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_requests_get_openai_errors(live, case):
    name, path, body, headers, status, param = case
    r = post(live.url, path, body, headers=headers or {})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    if name == "context":
        assert err["code"] == "context_length_exceeded"
    if name == "bad-ids":
        assert "[-1, 260]" in err["message"]
    ok = post(live.url, "/v1/completions", {"prompt": "hi", "max_tokens": 2, "temperature": 0})
    assert ok.status_code == 200  # the next request still succeeds


def test_bad_request_is_not_retried_by_the_client(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="tiny", prompt="hi", temperature=-1)
    assert exc.value.body["param"] == "temperature"


# ---------------------------------------------------------------------------------------------------- concurrency
@pytest.fixture(scope="module")
def solo(live, client):
    """The answer each prompt gets alone (greedy, one request at a time)."""
    return {p: _greedy(client, p, max_tokens=16).choices[0].text for p in PROMPTS}


def _check(live, solo, prompt, text, what):
    ids = live.model.tokenizer.encode(prompt)
    solo_ids = live.model.generate(prompt, max_new_tokens=16, do_sample=False).new_tokens[0]
    same_or_tie(live.model, ids, solo_ids, text, solo[prompt], what)


@pytest.mark.parametrize("workers,requests", [(1, 3), (2, 4), (4, 6)])
def test_concurrent_requests_equal_solo(live, client, solo, workers, requests):
    results, errors = {}, []

    def work(w):
        for k in range(w, requests, workers):
            prompt = PROMPTS[k % len(PROMPTS)]
            try:
                results[k] = (prompt, _greedy(client, prompt, max_tokens=16).choices[0].text)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == requests
    for k, (prompt, text) in results.items():
        _check(live, solo, prompt, text, f"request {k}")
    wait_idle(live.url)


def test_32_concurrent_streams_equal_solo(live, solo):
    """32 streaming clients at once: all 200, each text equals its prompt's solo answer (no cross-talk)."""
    async def one(client, k):
        prompt = PROMPTS[k % len(PROMPTS)]
        stream = await client.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0,
                                                 stream=True)
        text, reasons = "", []
        async for chunk in stream:
            text += chunk.choices[0].text
            if chunk.choices[0].finish_reason:
                reasons.append(chunk.choices[0].finish_reason)
        return prompt, text, reasons

    async def main():
        async with openai.AsyncOpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0,
                                      timeout=60) as client:
            return await asyncio.gather(*[one(client, k) for k in range(32)])

    results = asyncio.run(main())
    assert len(results) == 32
    for k, (prompt, text, reasons) in enumerate(results):
        assert len(reasons) == 1
        _check(live, solo, prompt, text, f"stream {k}")
    wait_idle(live.url)


def test_disconnect_mid_stream_cancels_and_frees_the_slot(live, monkeypatch):
    """A client that leaves a stream before [DONE] cancels its run: /metrics' ``cancelled`` grows by exactly one,
    nothing is left in flight or running (polled up to 5 s), and the next request is served. The decoder is slowed
    down (0.1 s a step, 120 tokens) so that the stream is surely still running when the client leaves."""
    import httpx
    before = wait_idle(live.url)["cancelled"]
    run = live.model.decoder.run
    monkeypatch.setattr(live.model.decoder, "run", lambda *a, **k: (time.sleep(0.1), run(*a, **k))[1])
    body = {"prompt": "Once upon a time", "max_tokens": 120, "temperature": 0.9, "seed": 3, "stream": True}
    with httpx.stream("POST", live.url + "/v1/completions", json=body, timeout=30) as r:
        got = [line for line, _ in zip(r.iter_lines(), range(6)) if line.startswith("data:")]
    assert got and all(json.loads(line[5:])["choices"][0]["finish_reason"] is None for line in got)
    end = time.monotonic() + 5
    while True:
        m = httpx.get(live.url + "/metrics", timeout=2).json()
        if m["cancelled"] > before and m["in_flight"] == 0 and m["running_rows"] == 0:
            break
        if time.monotonic() > end:
            raise AssertionError(f"5 s after the client left: cancelled {m['cancelled']} (was {before}), {m}")
        time.sleep(0.05)
    assert m["cancelled"] == before + 1
    monkeypatch.undo()
    r = post(live.url, "/v1/completions", {"prompt": "hi", "max_tokens": 3, "temperature": 0}, timeout=5)
    assert r.status_code == 200 and r.json()["choices"][0]["text"]
    assert wait_idle(live.url)["cancelled"] == before + 1


def test_200_timeouts_then_a_new_request_succeeds(live):
    """200 requests with a 0.5 s client timeout; then a new request succeeds within 5 s and nothing is left in
    flight (the server freed every abandoned request's rows)."""
    async def one(client, k):
        try:
            await client.completions.create(model="tiny", prompt=PROMPTS[k % len(PROMPTS)], max_tokens=100,
                                            temperature=0.7, seed=k)
            return "ok"
        except openai.APITimeoutError:
            return "timeout"
        except openai.RateLimitError:
            return "429"

    async def main():
        async with openai.AsyncOpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0,
                                      timeout=0.5) as client:
            return await asyncio.gather(*[one(client, k) for k in range(200)])

    outcomes = asyncio.run(main())
    assert set(outcomes) <= {"ok", "timeout", "429"}
    t0 = time.monotonic()
    r = post(live.url, "/v1/completions", {"prompt": "hi", "max_tokens": 3, "temperature": 0}, timeout=5)
    assert r.status_code == 200 and time.monotonic() - t0 < 5
    wait_idle(live.url, timeout=5)


def test_queue_full_answers_429(tiny_llama):
    """A bounded queue: with one row and no waiting room, a second concurrent request gets 429 (the decoder is
    slowed down so that the first request is surely still running)."""
    srv = start(lambda: onnxlm.load(tiny_llama.onnx_dir), max_rows=1, max_queue=0)
    try:
        wait_health(srv.url)
        import httpx
        assert srv.model.generate("Hello there", max_new_tokens=10, do_sample=False).finish_reasons == ["length"]
        run = srv.model.decoder.run
        srv.model.decoder.run = lambda *a, **k: (time.sleep(0.05), run(*a, **k))[1]
        body = {"prompt": "Hello there", "max_tokens": 10, "temperature": 0, "stream": True}
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            next(lines)
            second = post(srv.url, "/v1/completions", {"prompt": "hi", "max_tokens": 2})
            rest = list(lines)
        assert second.status_code == 429
        assert second.json()["error"]["code"] == "queue_full"
        assert "data: [DONE]" in rest  # the first request finished normally
        wait_idle(srv.url)
    finally:
        srv.stop()


def test_stream_json_is_well_formed(live):
    events = sse_events(live.url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hey"}],
                                                            "max_tokens": 5, "temperature": 0, "stream": True})
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])
    assert json.dumps(events[:-1])  # every chunk is plain JSON


# ---------------------------------------------------------------------------------------------- /tokenize, /detokenize

def test_tokenize_gives_the_ids_completions_feeds_the_model(live, client):
    prompt = "The quick brown fox"
    tok = live.model.tokenizer
    r = post(live.url, "/tokenize", {"model": "tiny", "prompt": prompt})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tokens"] == tok.encode(prompt) and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == live.model.max_positions and body["token_strs"] is None
    assert _greedy(client, prompt, max_tokens=1).usage.prompt_tokens == body["count"]
    plain = post(live.url, "/tokenize", {"prompt": prompt, "add_special_tokens": False,
                                         "return_token_strs": True}).json()
    assert plain["tokens"] == tok.encode(prompt, add_special_tokens=False)
    assert plain["token_strs"] == [tok.id_to_token(i) for i in plain["tokens"]]
    assert post(live.url, "/tokenize", {"prompt": ""}).json()["tokens"] == tok.encode("")


def test_tokenize_messages_gives_the_ids_chat_feeds_the_model(live, client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    r = post(live.url, "/tokenize", {"messages": messages, "add_generation_prompt": True})
    assert r.status_code == 200, r.text
    ids = r.json()["tokens"]
    assert ids == live.model.render_chat(messages, tokenize=True)
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=1, temperature=0)
    assert chat.usage.prompt_tokens == len(ids)


def test_detokenize_gives_the_text_of_ids(live):
    ids = live.model.tokenizer.encode("Hello there, world")
    r = post(live.url, "/detokenize", {"model": "tiny", "tokens": ids})
    assert r.status_code == 200, r.text
    text = live.model.tokenizer.decode(ids, skip_special_tokens=False)
    assert r.json() == {"prompt": text, "content": text}  # vLLM's name and llama.cpp's
    assert post(live.url, "/detokenize", {"tokens": []}).json() == {"prompt": "", "content": ""}


def test_tokenize_in_llama_cpps_form(live):
    """llama.cpp's server's /tokenize: content, no BOS unless add_special, parse_special, with_pieces."""
    tok = live.model.tokenizer
    text = "Hi</s> caf\u00e9 \U0001F600"
    r = post(live.url, "/tokenize", {"content": text})
    assert r.status_code == 200, r.text
    assert r.json() == {"tokens": tok.encode(text, add_special_tokens=False)}
    eos = tok.token_to_id("</s>")
    assert eos in r.json()["tokens"]  # the special token's string read as that token
    plain = post(live.url, "/tokenize", {"content": text, "parse_special": False}).json()["tokens"]
    assert plain == tok.encode(text, add_special_tokens=False, split_special_tokens=True) and eos not in plain
    assert tok.decode(plain) == text
    bos = post(live.url, "/tokenize", {"content": text, "add_special": True}).json()["tokens"]
    assert bos == tok.encode(text)
    pieces = post(live.url, "/tokenize", {"content": text, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == r.json()["tokens"]
    # each piece is the token's text, or its bytes where it holds part of a character: together the UTF-8 text
    raw = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces)
    assert raw.decode("utf-8") == text
    assert any(isinstance(p["piece"], list) for p in pieces)  # the emoji's bytes span tokens of this vocabulary


@pytest.mark.parametrize("path, body, param", [
    ("/tokenize", {}, "prompt"),
    ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "a"}]}, "prompt"),
    ("/tokenize", {"prompt": ["a"]}, "prompt"),
    ("/tokenize", {"prompt": "a", "tools": []}, "tools"),
    ("/tokenize", {"prompt": "a", "add_special_tokens": "yes"}, "add_special_tokens"),
    ("/tokenize", {"prompt": "a", "max_tokens": 3}, "max_tokens"),
    ("/tokenize", {"prompt": "a", "with_pieces": True}, "with_pieces"),
    ("/tokenize", {"messages": [{"role": "user", "content": "a"}], "return_token_strs": True, "parse_special": True},
     "parse_special"),
    ("/tokenize", {"content": "a", "add_special_tokens": True}, "add_special_tokens"),
    ("/tokenize", {"content": 3}, "content"),
    ("/tokenize", {"content": "a", "with_pieces": 1}, "with_pieces"),
    ("/tokenize", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "add_generation_prompt": False},
     "add_generation_prompt"),  # a reply is a new turn (or continues one: continue_final_message)
    ("/tokenize", {"messages": [{"role": "user", "content": "a"}], "add_special_tokens": True}, "add_special_tokens"),
    ("/tokenize", {"messages": [{"role": "user", "content": "a"}], "continue_final_message": True},
     "continue_final_message"),  # nothing of the assistant's to continue
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                              "continue_final_message": True, "add_generation_prompt": True},
     "continue_final_message"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                              "continue_final_message": "yes"}, "continue_final_message"),
    ("/detokenize", {}, "tokens"),
    ("/detokenize", {"tokens": [1, "2"]}, "tokens"),
    ("/detokenize", {"tokens": [1, 10 ** 9]}, "tokens"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
])
def test_tokenize_bad_requests_are_400_naming_the_parameter(live, path, body, param):
    r = post(live.url, path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_tokenize_other_model_name_is_404(live):
    r = post(live.url, "/tokenize", {"model": "gpt-4", "prompt": "a"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


# ---------------------------------------------------------------------------------------------- /metrics

def _metrics(live, **kw) -> httpx.Response:
    return httpx.get(live.url + "/metrics", timeout=5, **kw)


def test_metrics_count_the_tokens_of_every_request(live, client):
    before = _metrics(live).json()
    r = _greedy(client, ["Hello there", "abc"], max_tokens=5)
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi!"}], max_tokens=4,
                                          temperature=0, stream=True, stream_options={"include_usage": True})
    usage = [c.usage for c in chat if c.usage is not None][-1]
    after = _metrics(live).json()
    assert after["prompt_tokens"] - before["prompt_tokens"] == r.usage.prompt_tokens + usage.prompt_tokens
    assert after["completion_tokens"] - before["completion_tokens"] == \
        r.usage.completion_tokens + usage.completion_tokens
    assert after["requests"] - before["requests"] == 2


def test_metrics_count_the_tokens_of_a_request_whose_client_left(live, monkeypatch):
    """A non-streaming request hands its tokens over at its end; the tokens made before its client left count."""
    before = wait_idle(live.url)
    run = live.model.decoder.run
    monkeypatch.setattr(live.model.decoder, "run", lambda *a, **k: (time.sleep(0.05), run(*a, **k))[1])
    body = {"prompt": "Once upon a time", "max_tokens": 120, "temperature": 0.9, "seed": 3}
    with pytest.raises(httpx.ReadTimeout):
        post(live.url, "/v1/completions", body, timeout=1.0)  # ~20 steps, then the client leaves
    after = wait_idle(live.url)
    monkeypatch.undo()
    assert after["cancelled"] == before["cancelled"] + 1
    assert 5 <= after["completion_tokens"] - before["completion_tokens"] < 120
    assert after["steps"] - before["steps"] >= after["completion_tokens"] - before["completion_tokens"]


def _samples(text: str) -> dict:
    """Prometheus' text format -> {name: value}, every sample after its own # HELP and # TYPE lines."""
    import re

    lines, out = text.splitlines(), {}
    assert text.endswith("\n") and len(lines) % 3 == 0
    for k in range(0, len(lines), 3):
        help_, type_, sample = lines[k:k + 3]
        name, value = sample.split(" ")
        assert re.fullmatch(r"onnxlm_[a-z_]+", name) and help_.startswith(f"# HELP {name} ")
        assert type_ in (f"# TYPE {name} counter", f"# TYPE {name} gauge")
        assert (type_.endswith("counter")) == name.endswith("_total")
        out[name] = float(value)
    return out


def test_metrics_in_prometheus_text_format_when_a_scraper_asks(live):
    scrape = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"  # Prometheus'
    r = _metrics(live, headers={"Accept": scrape})
    assert r.status_code == 200 and r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = _samples(r.text)
    values = _metrics(live).json()  # curl's */*: the JSON object, as before
    assert samples["onnxlm_requests_total"] == values["requests"]
    assert samples["onnxlm_generation_tokens_total"] == values["completion_tokens"]
    assert samples["onnxlm_prompt_tokens_total"] == values["prompt_tokens"]
    assert samples["onnxlm_decode_steps_total"] == values["steps"] and samples["onnxlm_draining"] == 0
    assert samples["onnxlm_requests_in_flight"] == 0 and "onnxlm_running_rows" in samples
    assert _samples(_metrics(live, params={"format": "prometheus"}).text).keys() == samples.keys()
    forced = _metrics(live, params={"format": "json"}, headers={"Accept": scrape})
    assert forced.json()["requests"] == values["requests"]


# ---------------------------------------------------------------------------------------------- llama.cpp's endpoints

def test_apply_template_gives_the_text_chat_feeds_the_model(live):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    r = post(live.url, "/apply-template", {"messages": messages, "chat_template_kwargs": {"flag": True}})
    assert r.status_code == 200, r.text
    text = r.json()["prompt"]
    assert text == live.model.render_chat(messages, flag=True)
    ids = post(live.url, "/tokenize", {"messages": messages, "chat_template_kwargs": {"flag": True}}).json()["tokens"]
    assert live.model.tokenizer.encode(text, add_special_tokens=False) == ids
    for body, param in (({"messages": []}, "messages"), ({"messages": messages, "prompt": "x"}, "prompt"),
                        ({"messages": messages, "chat_template_kwargs": {"tokenize": True}}, "chat_template_kwargs")):
        r = post(live.url, "/apply-template", body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/tokenize"])
def test_render_chats_own_argument_is_no_template_variable(live, path):
    """``chat_template_kwargs`` naming render_chat's ``tokenize`` is a 400 naming it (it was a 500)."""
    r = post(live.url, path, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
                              "chat_template_kwargs": {"tokenize": False}} if "chat" in path else
             {"messages": [{"role": "user", "content": "Hi"}], "chat_template_kwargs": {"tokenize": False}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template_kwargs", r.text
    with pytest.raises(onnxlm.ParameterError, match="tokenize"):
        live.model.chat([{"role": "user", "content": "Hi"}], max_new_tokens=2, chat_template_kwargs={"tokenize": 1})


def test_props_describe_the_served_model(live):
    r = httpx.get(live.url + "/props", timeout=5)
    assert r.status_code == 200, r.text
    props = r.json()
    m = live.model
    assert props["default_generation_settings"]["n_ctx"] == m.max_positions
    assert props["total_slots"] == 32 and props["model_alias"] == "tiny" and props["chat_template"] == m.chat_template
    assert props["bos_token"] == m.manifest["special_tokens"]["bos_token"]
    assert props["eos_token"] == m.manifest["special_tokens"]["eos_token"]
    assert props["build_info"] == f"onnxlm {onnxlm.__version__}"
    # the defaults /completion applies (llama.cpp's, as llama.cpp's /props reports them): its generation_settings
    # when a request sets nothing; the OpenAI endpoints' own beside them
    from onnxlm.serve.llamacpp_request import DEFAULTS
    params = props["default_generation_settings"]["params"]
    assert {k: params[k] for k in ("temperature", "top_k", "top_p", "min_p")} == {
        "temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05}
    assert all(params[k] == v for k, v in DEFAULTS.items() if k in params)
    settings = post(live.url, "/completion", {"prompt": "Hi", "n_predict": 1}).json()["generation_settings"]
    assert {k: v for k, v in settings.items() if k not in ("n_ctx", "model", "n_predict", "max_tokens")} == {
        k: v for k, v in params.items() if k not in ("n_predict", "max_tokens")}
    assert props["openai_defaults"]["temperature"] == 1.0 and props["openai_defaults"]["top_p"] == 1.0


# ---------------------------------------------------------------------------------------------------- speculation
def test_prompt_lookup_speculates_for_a_lone_request_with_the_same_answers(tiny_llama, live, client):
    """``--prompt-lookup``: a request alone on the server checks proposals copied from its context in one pass; its
    completion, chat answer and stream equal those of the server without it, and /metrics (JSON and Prometheus)
    counts the passes and accepted tokens."""
    srv = start(lambda: onnxlm.load(tiny_llama.onnx_dir), prompt_lookup=6, max_tokens=64)
    try:
        wait_health(srv.url)
        spec = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)
        prompt = "ab cd ef ab cd ef ab cd ef ab"
        for kw in (dict(max_tokens=40), dict(max_tokens=30, stop=[" cd ef"]), dict(max_tokens=20, seed=5,
                                                                                    temperature=0.7)):
            kw = {"temperature": 0, **kw}
            want = client.completions.create(model="tiny", prompt=prompt, **kw)
            got = spec.completions.create(model="tiny", prompt=prompt, **kw)
            assert (got.choices[0].text, got.choices[0].finish_reason) == (want.choices[0].text,
                                                                           want.choices[0].finish_reason), kw
            streamed = spec.completions.create(model="tiny", prompt=prompt, stream=True, **kw)
            assert "".join(c.choices[0].text for c in streamed if c.choices) == want.choices[0].text
        messages = [{"role": "user", "content": prompt}]
        want = client.chat.completions.create(model="tiny", messages=messages, max_tokens=40, temperature=0)
        got = spec.chat.completions.create(model="tiny", messages=messages, max_tokens=40, temperature=0)
        assert got.choices[0].message.content == want.choices[0].message.content
        metrics = httpx.get(srv.url + "/metrics").json()
        assert metrics["speculative_passes"] > 0 and metrics["speculative_accepted_tokens"] > 0
        assert metrics["speculative_proposed_tokens"] >= metrics["speculative_accepted_tokens"]
        text = httpx.get(srv.url + "/metrics", params={"format": "prometheus"}).text
        assert "# TYPE onnxlm_speculative_accepted_tokens_total counter" in text
        assert httpx.get(live.url + "/metrics").json()["speculative_passes"] == 0  # off by default
        # a request's own prompt_lookup_num_tokens turns it on where the server's is off, streamed too
        want = spec.completions.create(model="tiny", prompt=prompt, max_tokens=40, temperature=0).choices[0].text
        streamed = client.completions.create(model="tiny", prompt=prompt, max_tokens=40, temperature=0, stream=True,
                                             extra_body={"prompt_lookup_num_tokens": 6})
        assert "".join(c.choices[0].text for c in streamed if c.choices) == want
        assert httpx.get(live.url + "/metrics").json()["speculative_passes"] > 0
        assert client.completions.create(model="tiny", prompt=prompt, max_tokens=40, temperature=0,
                                         extra_body={"prompt_lookup_num_tokens": 6}).choices[0].text == want
    finally:
        srv.stop()


def test_prompt_lookup_on_a_seq2seq_model_is_refused_by_name(tiny_t5):
    srv = start(lambda: onnxlm.load(tiny_t5.onnx_dir))
    try:
        wait_health(srv.url)
        r = post(srv.url, "/v1/completions", {"prompt": "ab", "max_tokens": 4, "prompt_lookup_num_tokens": 4})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt_lookup_num_tokens"
    finally:
        srv.stop()


def test_a_prediction_speeds_the_answer_and_never_changes_it(live, client):
    """OpenAI's Predicted Outputs (``prediction``: the text the answer is expected to follow): the answer equals the
    one without it, streamed or not, and usage counts the accepted and rejected prediction tokens; a prediction of
    the answer itself is mostly accepted (the tiny model's bytes are not all UTF-8: its text read back gives other
    ids in places), one of something else mostly rejected."""
    messages = [{"role": "user", "content": "abc def ghi jkl"}]
    kw = dict(model="tiny", messages=messages, max_tokens=40, temperature=0)
    plain = client.chat.completions.create(**kw)
    text = plain.choices[0].message.content
    assert plain.usage.completion_tokens_details is None  # no prediction: no such details
    for guess, good in ((text, True), ("0123456789" * 4, False),
                        ([{"type": "text", "text": text[:10]}, {"type": "text", "text": text[10:]}], True)):
        got = client.chat.completions.create(**kw, prediction={"type": "content", "content": guess})
        assert got.choices[0].message.content == text
        details = got.usage.completion_tokens_details
        if good:
            assert details.accepted_prediction_tokens > max(details.rejected_prediction_tokens, 10), details
        else:
            assert details.accepted_prediction_tokens <= details.rejected_prediction_tokens, details
        streamed = client.chat.completions.create(**kw, prediction={"type": "content", "content": guess},
                                                  stream=True, stream_options={"include_usage": True})
        chunks = list(streamed)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
        assert chunks[-1].usage.completion_tokens_details is not None


@pytest.mark.parametrize("prediction, param", [
    ("text", "prediction"), ({"type": "text", "content": "a"}, "prediction.type"),
    ({"type": "content", "content": 3}, "prediction.content"),
    ({"type": "content", "content": [{"type": "image_url"}]}, "prediction.content[0]"),
    ({"type": "content", "content": "a", "extra": 1}, "prediction.extra"),
])
def test_a_bad_prediction_is_a_400_naming_it(live, prediction, param):
    r = post(live.url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                                               "prediction": prediction})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


# ---------------------------------------------------------------------------------------------------- OpenAI's extras
NEUTRAL_EXTRAS = [{"store": False}, {"store": True, "metadata": {"team": "a"}}, {"service_tier": "auto"},
                  {"service_tier": "default", "modalities": ["text"], "audio": None},
                  {"reasoning_effort": "low", "verbosity": "medium"},
                  {"prompt_cache_key": "k", "safety_identifier": "u"}, {"metadata": None, "reasoning_effort": None}]


@pytest.mark.parametrize("extra", NEUTRAL_EXTRAS, ids=lambda e: "+".join(e))
def test_openai_chat_fields_at_their_usual_values_are_taken(live, extra):
    """Fields OpenAI's clients send by default or copy from its examples (store, metadata, service_tier, modalities,
    reasoning_effort, verbosity, prompt_cache_key, safety_identifier) at values that ask nothing of this server: a 200
    with the same answer as without them."""
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0}
    plain = post(live.url, "/v1/chat/completions", body).json()["choices"][0]["message"]["content"]
    r = post(live.url, "/v1/chat/completions", {**body, **extra})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == plain


@pytest.mark.parametrize("extra, param", [
    ({"store": "yes"}, "store"), ({"metadata": {"k": 1}}, "metadata.k"), ({"metadata": [1]}, "metadata"),
    ({"service_tier": "priority"}, "service_tier"), ({"modalities": ["text", "audio"]}, "modalities"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"), ({"reasoning_effort": "hihg"}, "reasoning_effort"),
    ({"verbosity": "loud"}, "verbosity"), ({"prompt_cache_key": 3}, "prompt_cache_key"),
])
def test_openai_chat_fields_asking_for_what_is_not_done_are_400s(live, extra, param):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}
    r = post(live.url, "/v1/chat/completions", body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


# ------------------------------------------------------------------------------------------------ chunked prefill
def test_a_long_prompt_is_prefilled_in_parts_while_a_stream_goes_on(tiny_llama):
    """``--prefill-chunk`` (runtime/decoding/scheduler_prefill.py): a long prompt sent while a stream decodes is
    prefilled a part per step (/metrics counts the parts), the stream keeps getting tokens meanwhile, and both
    answers are what the model gives them alone."""
    long_prompt = "The quick brown fox jumps over the lazy dog, twice."  # ~50 tokens on the tiny tokenizer
    srv = start(lambda: onnxlm.load(tiny_llama.onnx_dir), max_rows=4, max_queue=8, max_tokens=128, prefill_chunk=8)
    try:
        wait_health(srv.url)
        stream_body = {"prompt": "Hello", "max_tokens": 128, "temperature": 0, "stream": True, "ignore_eos": True}
        got = {}

        def streaming():
            got["stream"] = "".join(e["choices"][0]["text"] for e in sse_events(srv.url, "/v1/completions",
                                                                              stream_body)[:-1])
        t = threading.Thread(target=streaming)
        t.start()
        deadline = time.monotonic() + 30
        while httpx.get(srv.url + "/metrics", timeout=5).json()["running_rows"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        got["long"] = post(srv.url, "/v1/completions", {"prompt": long_prompt, "max_tokens": 5,
                                                         "temperature": 0}).json()["choices"][0]["text"]
        t.join(60)
        metrics = wait_idle(srv.url)
        assert metrics["prefill_parts"] >= 3 and metrics["prefilling_requests"] == 0
        model = srv.model  # the answers alone, prefilled whole
        assert got["long"] == model.generate(long_prompt, max_new_tokens=5).text[0]
        assert got["stream"] == model.generate("Hello", max_new_tokens=128, eos_token_id=[]).text[0]
        prom = httpx.get(srv.url + "/metrics?format=prometheus", timeout=5).text
        assert f"onnxlm_prefill_parts_total {wait_idle(srv.url)['prefill_parts']}" in prom
    finally:
        srv.stop()
