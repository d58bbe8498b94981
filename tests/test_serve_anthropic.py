"""Anthropic's Messages API on ``onnxlm serve`` (onnxlm/serve/anthropic.py, anthropic_request.py,
anthropic_reply.py), driven by the official ``anthropic`` client and raw HTTP against a live server of the tiny
Qwen2 with a tools template (recipe tiny-qwen2-tools).

A message equals /v1/chat/completions' reply to the same conversation at temperature 0 (text, token counts, stop
reason); the stream's events come in Anthropic's order and join to the unstreamed message; stop_sequences and
max_tokens give their stop reasons; a forced tool gives a tool_use block whose input follows its schema, whose
tool_result the next turn takes, and whose conversation renders to the same prompt as its OpenAI twin;
count_tokens equals usage.input_tokens; the API key is read from x-api-key; bad requests are 400s in Anthropic's
error body naming the field; an error mid-stream is an ``error`` event.
"""
from __future__ import annotations

import asyncio
import json
import os
from types import SimpleNamespace

import httpx
import pytest

anthropic = pytest.importorskip("anthropic", reason="the Anthropic API tests need the test extra (anthropic)")
pytest.importorskip("starlette", reason="the server tests need the serve extra")
if os.environ.get("CI") != "true":  # CI installs the 'structured' extra: there a missing engine is a failure
    pytest.importorskip("llguidance", reason="a forced tool call needs the 'structured' extra (llguidance)")
import jsonschema  # noqa: E402

import onnxlm  # noqa: E402
from onnxlm.serve import anthropic_reply, anthropic_request, tools  # noqa: E402
from onnxlm.serve.protocol import APIError  # noqa: E402
from serve_util import SEARCH, WEATHER, live_thinking, live_tiny, named_events, post, start, wait_health  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOOLS = [{"name": "get_weather", "description": "The weather in a city", "input_schema": WEATHER},
         {"name": "search", "description": "Search the web", "input_schema": SEARCH}]
SYSTEM = "You are brief."
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
#: the stream's event names, in the order Anthropic sends them
GREEDY = {"temperature": 0}  # the anthropic SDK (2.x) takes no temperature argument: sent as an extra field
ORDER = ("message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
         "message_stop")


CAP = 256  # the server's --max-tokens: a forced call takes about 110 tokens of the tiny model's vocabulary


@pytest.fixture(scope="module")
def live(tiny_qwen2_tools):
    yield from live_tiny(tiny_qwen2_tools.onnx_dir, max_rows=16, max_queue=32, max_tokens=CAP)


@pytest.fixture(scope="module")
def client(live):
    return anthropic.Anthropic(base_url=live.url, api_key="none", max_retries=0, timeout=60)


def _text(message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def _prompt_tokens(usage) -> int:
    """A usage block's (the SDK's or a dict) whole prompt, as Anthropic splits it: the tokens read from the cache,
    those written to it and the rest."""
    get = usage.get if isinstance(usage, dict) else lambda name: getattr(usage, name)
    return get("input_tokens") + get("cache_creation_input_tokens") + get("cache_read_input_tokens")


def _events(url: str, body: dict, headers=None) -> list[tuple[str, dict]]:
    """POST a streaming /v1/messages -> [(event name, data)] in order."""
    return named_events(url, "/v1/messages", body, headers)


def _check_order(events: list[tuple[str, dict]]) -> None:
    """Anthropic's grammar: message_start ping (content_block_start delta* stop)* message_delta message_stop;
    each event's data names it, block indexes count from 0."""
    names = [n for n, _ in events]
    assert all(data["type"] == n for n, data in events)
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"], names
    assert events[1][1] == {"type": "ping"}
    index = -1
    open_block = False
    for n, data in events[2:-2]:
        if n == "content_block_start":
            assert not open_block and data["index"] == index + 1
            index, open_block = data["index"], True
        else:
            assert n in ("content_block_delta", "content_block_stop") and open_block and data["index"] == index, n
            open_block = n == "content_block_delta"
    assert not open_block


# ---------------------------------------------------------------------------------------------------- messages
def test_message_equals_chat_completion(live, client):
    """The same conversation at temperature 0: the same text and token counts as /v1/chat/completions, the stop
    reason its finish reason's."""
    history = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
               {"role": "user", "content": [{"type": "text", "text": "Tell me "}, {"type": "text", "text": "a joke"}]}]
    m = client.messages.create(model="tiny", max_tokens=16, extra_body=GREEDY, system=SYSTEM, messages=history)
    openai_history = [{"role": "system", "content": SYSTEM}, *history[:2],  # text blocks joined as text parts
                      {"role": "user", "content": [{"type": "text", "text": "Tell me "}, {"type": "text", "text": "a joke"}]}]
    chat = post(live.url, "/v1/chat/completions", {"messages": openai_history, "max_tokens": 16, "temperature": 0})
    assert chat.status_code == 200, chat.text
    want = chat.json()
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant" and m.model == "tiny"
    assert _text(m) == want["choices"][0]["message"]["content"]
    assert _prompt_tokens(m.usage) == want["usage"]["prompt_tokens"]
    assert m.usage.output_tokens == want["usage"]["completion_tokens"]
    assert m.stop_reason == {"stop": "end_turn", "length": "max_tokens"}[want["choices"][0]["finish_reason"]]
    assert m.stop_sequence is None


def test_a_final_assistant_message_is_a_prefill_the_reply_continues(live, client):
    """Anthropic's prefill: the prompt ends inside the last (assistant) message, as transformers'
    continue_final_message renders it, and the reply is its continuation (greedy: the tokens generate gives that
    prompt); streamed the same; count_tokens counts that prompt."""
    model = live.model
    msgs = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "My favourite colour is"}]
    m = client.messages.create(model="tiny", max_tokens=8, extra_body=GREEDY, messages=msgs)
    ids = model.render_chat([{"role": r["role"], "content": r["content"]} for r in msgs], tokenize=True,
                            continue_final_message=True)
    assert model.tokenizer.decode(ids, skip_special_tokens=False).endswith("My favourite colour is")
    want = model.generate([ids], max_new_tokens=8, do_sample=False)
    assert _text(m) == want.text[0] and m.usage.output_tokens == len(want.new_tokens[0])
    assert client.messages.count_tokens(model="tiny", messages=msgs).input_tokens == len(ids)
    streamed = "".join(d.get("delta", {}).get("text", "") for e, d in _events(
        live.url, {"model": "tiny", "max_tokens": 8, **GREEDY, "messages": msgs, "stream": True})
        if e == "content_block_delta")
    assert streamed == _text(m)


def test_stream_events_join_to_the_message(live, client):
    body = {"model": "tiny", "max_tokens": 20, "system": [{"type": "text", "text": SYSTEM}], "messages": USER}
    whole = client.messages.create(**body, extra_body=GREEDY)
    events = _events(live.url, {**body, **GREEDY})
    _check_order(events)
    start = events[0][1]["message"]
    assert _prompt_tokens(start["usage"]) == _prompt_tokens(whole.usage) and start["content"] == []
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == _text(whole) != ""
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": whole.stop_reason, "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == whole.usage.output_tokens
    assert delta["usage"] == {**start["usage"], "output_tokens": whole.usage.output_tokens}
    with client.messages.stream(**body, extra_body=GREEDY) as stream:  # the SDK's own accumulation of the events
        final = stream.get_final_message()
    assert [(b.type, b.text) for b in final.content] == [(b.type, b.text) for b in whole.content]
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_stop_sequences(live, client):
    """A string from the free reply as a stop sequence: the reply ends before it, stop_reason "stop_sequence" and
    the sequence named, streamed too."""
    body = {"model": "tiny", "max_tokens": 40, "messages": USER}
    free = _text(client.messages.create(**body, extra_body=GREEDY))
    at = next(k for k in range(len(free) // 3, len(free) - 2)
              if free[k:k + 2].strip() and free.find(free[k:k + 2]) == k)  # a 2-character string, first there
    seq = free[at:at + 2]
    m = client.messages.create(**body, stop_sequences=["never in it", seq], extra_body=GREEDY)
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", seq)
    assert _text(m) == free[:at]
    events = _events(live.url, {**body, **GREEDY, "stop_sequences": ["never in it", seq]})
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": seq}


def test_max_tokens(live, client):
    """max_tokens reached: stop_reason "max_tokens" after that many tokens; a max_tokens past the server's cap is
    capped, not refused (Anthropic's clients send large ones)."""
    m = client.messages.create(model="tiny", max_tokens=3, extra_body=GREEDY, messages=USER)
    assert (m.stop_reason, m.usage.output_tokens) == ("max_tokens", 3)
    big = client.messages.create(model="tiny", max_tokens=64000, extra_body=GREEDY, messages=USER)
    assert 0 < big.usage.output_tokens <= CAP
    assert (big.stop_reason == "max_tokens") == (big.usage.output_tokens == CAP)


# ---------------------------------------------------------------------------------------------------- tools
def test_forced_tool_use_round_trip(live, client):
    """tool_choice {"type": "tool"}: a tool_use block whose input follows the schema; the reply and a tool_result
    go back in the next turn, which renders exactly as the same conversation in OpenAI's shapes."""
    m = client.messages.create(model="tiny", max_tokens=200, extra_body=GREEDY, system=SYSTEM, messages=USER,
                               tools=TOOLS, tool_choice={"type": "tool", "name": "get_weather"})
    assert m.stop_reason == "tool_use"
    (call,) = [b for b in m.content if b.type == "tool_use"]
    assert call.id.startswith("toolu_") and call.name == "get_weather"
    jsonschema.validate(call.input, WEATHER)
    history = USER + [{"role": "assistant", "content": m.content},
                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                    "content": [{"type": "text", "text": "3 degrees"}]},
                                                   {"type": "text", "text": "And tomorrow?"}]}]
    follow = client.messages.create(model="tiny", max_tokens=5, extra_body=GREEDY, system=SYSTEM, messages=history,
                                    tools=TOOLS)
    assert follow.stop_reason in ("end_turn", "max_tokens", "tool_use")
    counted = client.messages.count_tokens(model="tiny", system=SYSTEM, messages=history, tools=TOOLS)
    assert counted.input_tokens == _prompt_tokens(follow.usage)
    twin = [{"role": "system", "content": SYSTEM}, *USER,
            {"role": "assistant", "content": _text(m) or None, "tool_calls": [
                {"id": call.id, "type": "function", "function": {"name": call.name,
                                                                 "arguments": json.dumps(call.input)}}]},
            {"role": "tool", "tool_call_id": call.id, "content": "3 degrees"},
            {"role": "user", "content": "And tomorrow?"}]
    openai_tools = [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                                      "parameters": t["input_schema"]}} for t in TOOLS]
    ids = post(live.url, "/tokenize", {"messages": twin, "tools": openai_tools}).json()["tokens"]
    assert counted.input_tokens == len(ids)
    assert "3 degrees" in live.model.tokenizer.decode(ids)


def test_streamed_tool_use(live, client):
    body = {"model": "tiny", "max_tokens": 200, "messages": USER, "tools": TOOLS,
            "tool_choice": {"type": "tool", "name": "search"}}
    whole = client.messages.create(**body, extra_body=GREEDY)
    events = _events(live.url, {**body, **GREEDY})
    _check_order(events)
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert [b["type"] for b in starts] == ["tool_use"] and starts[0]["name"] == "search"
    partial = "".join(d["delta"]["partial_json"] for n, d in events
                      if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta")
    assert json.loads(partial) == whole.content[-1].input
    jsonschema.validate(json.loads(partial), SEARCH)
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def _failed_search(**flag) -> list[dict]:
    """A conversation whose last turn answers a search call with a tool_result (``flag``: its is_error)."""
    call = {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"query": "weather Paris"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "the search service is down", **flag}
    return USER + [{"role": "assistant", "content": [call]}, {"role": "user", "content": [result]}]


def test_a_failed_tool_result_is_marked_for_the_model(live, client):
    """A tool_result with is_error: true: the tool message the template renders begins with "Error: " (the flag
    has no place in a chat template's tool message, so the model would read the error as the tool's answer); the
    prompt differs from the unflagged one by that mark alone, and count_tokens counts it."""
    def prompt(messages) -> str:  # the prompt /v1/messages renders (anthropic._prompt's steps), as text
        req = anthropic_request.parse({"model": "tiny", "messages": messages, "tools": TOOLS}, counting=True)
        treq = tools.check(req.tools_body, live.model.chat_template)
        return tools.render(live.model, req.messages, treq, tokenize=False)

    plain, failed = prompt(_failed_search()), prompt(_failed_search(is_error=True))
    assert prompt(_failed_search(is_error=False)) == plain
    assert failed != plain
    assert failed == plain.replace("the search service is down", "Error: the search service is down")
    counted = [client.messages.count_tokens(model="tiny", messages=_failed_search(**flag), tools=TOOLS).input_tokens
               for flag in ({}, {"is_error": True})]
    assert counted[1] > counted[0]
    # content that already says so is not marked twice; an empty one is the mark alone
    assert anthropic_request.error_marked("Error: timed out") == "Error: timed out"
    assert anthropic_request.error_marked("") == "Error:"


def test_a_forced_tool_use_cut_by_max_tokens(live, client):
    """A forced tool that max_tokens cuts inside its input: stop_reason "max_tokens" and its tool_use block (input
    {}: what was written is not whole JSON), not the call's raw text as a text block; streamed, the block's
    input_json_delta carries what was written (the start of the whole call's input), as Anthropic's own streams
    do, and the SDK's stream helper reads it."""
    body = {"model": "tiny", "messages": USER, "tools": TOOLS, "tool_choice": {"type": "tool", "name": "search"}}
    whole = json.dumps(client.messages.create(**body, max_tokens=200, extra_body=GREEDY).content[-1].input,
                       ensure_ascii=False)
    head = len(live.model.tokenizer.encode('<tool_call>\n{"name": "search", "arguments": '))  # the qwen style's
    m = client.messages.create(**body, max_tokens=head + 6, extra_body=GREEDY)
    assert m.stop_reason == "max_tokens"
    assert [(b.type, b.name, b.input) for b in m.content] == [("tool_use", "search", {})]
    events = _events(live.url, {**body, **GREEDY, "max_tokens": head + 6})
    _check_order(events)
    assert [d["content_block"]["type"] for n, d in events if n == "content_block_start"] == ["tool_use"]
    assert "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta") == whole[:6]
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"
    with client.messages.stream(**body, max_tokens=head + 6, extra_body=GREEDY) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens" and [b.type for b in final.content] == ["tool_use"]


def test_count_tokens_equals_input_tokens(client):
    body = {"model": "tiny", "system": SYSTEM, "messages": USER, "tools": TOOLS}
    counted = client.messages.count_tokens(**body)
    m = client.messages.create(**body, max_tokens=2)
    assert counted.input_tokens == _prompt_tokens(m.usage) > 0
    assert client.messages.count_tokens(model="tiny", messages=USER).input_tokens < counted.input_tokens


def test_usage_splits_off_the_prefix_caches_share(live, client):
    """Usage as Anthropic reports a prompt cache's: the prompt's tokens the prefix cache held are
    cache_read_input_tokens, the rest input_tokens, cache_creation_input_tokens 0, adding up to count_tokens. The
    same long prompt twice: the first computes it (past the template's opening, which earlier prompts share), the
    second reads it from the cache; streamed, message_start and message_delta carry the split too."""
    system = "You answer questions about the weather in one word, and never more. " * 4  # this test's own prompt
    body = {"model": "tiny", "max_tokens": 4, "system": system, "messages": USER}
    counted = client.messages.count_tokens(model="tiny", system=system, messages=USER).input_tokens
    first = client.messages.create(**body, extra_body=GREEDY)
    second = client.messages.create(**body, extra_body=GREEDY)
    for m in (first, second):
        assert m.usage.cache_creation_input_tokens == 0 and _prompt_tokens(m.usage) == counted
    assert first.usage.input_tokens > len(system) // 2  # computed: only the template's opening could be held
    assert second.usage.cache_read_input_tokens > first.usage.cache_read_input_tokens
    assert second.usage.cache_read_input_tokens >= counted - 1  # all of it (or all but the last token, fed again)
    events = _events(live.url, {**body, **GREEDY})
    start, delta = events[0][1]["message"]["usage"], events[-2][1]["usage"]
    assert start == {"input_tokens": counted - start["cache_read_input_tokens"], "cache_creation_input_tokens": 0,
                     "cache_read_input_tokens": start["cache_read_input_tokens"], "output_tokens": 0}
    assert start["cache_read_input_tokens"] >= counted - 1
    assert delta == {**start, "output_tokens": second.usage.output_tokens}


@pytest.fixture(scope="module")
def thinking(tiny_qwen2_tools, tmp_path_factory):
    """serve_util.live_thinking: the whole reply of the tiny model is reasoning."""
    yield from live_thinking(tiny_qwen2_tools.onnx_dir, tmp_path_factory.mktemp("anthropic-thinking"))


def test_reasoning_is_a_thinking_block(thinking):
    """The reply's reasoning (/v1/chat/completions' reasoning_content) as a thinking block, whole and streamed as
    thinking_delta events; a thinking block sent back in the history is dropped from the prompt, as
    reasoning_content is."""
    hi = [{"role": "user", "content": "Hi!"}]
    chat = post(thinking.url, "/v1/chat/completions", {"messages": hi, "max_tokens": 12, "temperature": 0}).json()
    said = chat["choices"][0]["message"]
    assert said.get("reasoning_content")
    body = {"model": "tiny", "max_tokens": 12, "messages": hi, **GREEDY}
    m = post(thinking.url, "/v1/messages", body).json()
    text = [{"type": "text", "text": said["content"]}] if said["content"] else []
    assert m["content"] == [{"type": "thinking", "thinking": said["reasoning_content"], "signature": ""}, *text]
    events = _events(thinking.url, body)
    _check_order(events)
    assert "".join(d["delta"].get("thinking", "") for n, d in events if n == "content_block_delta") == \
        said["reasoning_content"]
    history = [*hi, {"role": "assistant", "content": [m["content"][0], {"type": "text", "text": "Ok."}]},
               {"role": "user", "content": "More"}]
    counted = post(thinking.url, "/v1/messages/count_tokens", {"model": "tiny", "messages": history}).json()
    twin = [*hi, {"role": "assistant", "content": "Ok."}, {"role": "user", "content": "More"}]
    assert counted["input_tokens"] == post(thinking.url, "/tokenize", {"messages": twin}).json()["count"]


# ---------------------------------------------------------------------------------------------------- errors
def test_api_key_from_x_api_key(tiny_qwen2_tools):
    """--api-key: Anthropic's x-api-key header or Authorization: Bearer (which the anthropic SDK 2.x sends for its
    api_key); a wrong or missing key is 401 in Anthropic's error body, on both endpoints."""
    srv = start(lambda: onnxlm.load(tiny_qwen2_tools.onnx_dir), api_key="sekrit")
    try:
        wait_health(srv.url)
        body = {"model": "tiny", "max_tokens": 2, "messages": USER}
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            assert post(srv.url, path, body, headers={"x-api-key": "sekrit"}).status_code == 200
            for headers in ({"x-api-key": "wrong"}, {}, {"Authorization": "Bearer wrong"}):
                r = post(srv.url, path, body, headers=headers)
                assert r.status_code == 401, r.text
                assert r.json() == {"type": "error", "error": {"type": "authentication_error",
                                                               "message": r.json()["error"]["message"]}}
        ok = anthropic.Anthropic(base_url=srv.url, api_key="sekrit", max_retries=0, timeout=60)
        assert ok.messages.create(**body).usage.output_tokens > 0
        bearer = anthropic.Anthropic(base_url=srv.url, auth_token="sekrit", max_retries=0, timeout=60)
        assert bearer.messages.count_tokens(model="tiny", messages=USER).input_tokens > 0
        wrong = anthropic.Anthropic(base_url=srv.url, api_key="wrong", max_retries=0, timeout=60)
        with pytest.raises(anthropic.AuthenticationError) as exc:
            wrong.messages.create(**body)
        assert exc.value.status_code == 401 and exc.value.body["error"]["type"] == "authentication_error"
    finally:
        srv.stop()


BAD = [
    ({"max_tokens": None}, "max_tokens"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "system", "content": "Be brief."}, *USER]}, "messages[0].role"),
    ({"temperature": 1.5}, "temperature"),
    ({"messages": []}, "messages"),
    ({"messages": "Hi"}, "messages"),
    ({"top_p": 0}, "top_p"),
    ({"stop_sequences": [""]}, "stop_sequences"),
    ({"frequency_penalty": 1}, "frequency_penalty"),  # an OpenAI field: not Anthropic's
    ({"messages": [{"role": "user", "content": "Hi", "name": "x"}]}, "messages[0].name"),
    ({"messages": [*USER, {"role": "assistant", "content": " "}]}, "messages[1]"),  # a prefill needs text
    ({"messages": [*USER, {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "search",
                                                             "input": {"query": "x"}}]}]}, "messages[1]"),
    ({"messages": [*USER, {"role": "assistant", "content": "Sure"}], "tools": TOOLS, "tool_choice": {"type": "any"}},
     "tool_choice"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}, *USER]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
        {"type": "document", "source": {}}]}]}]}, "messages[0].content[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "txt": "Hi"}]}]}, "messages[0].content[0].txt"),
    ({"system": [{"type": "image"}]}, "system[0]"),
    ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
    ({"tools": [{"name": "f", "input_schema": {"type": "string"}}]}, "tools[0].input_schema"),
    ({"tools": [{"name": "f", "input_schema": {"type": "object", "properties": {"a": {"type": "bogus"}}}}]},
     "tools[0].input_schema"),
    ({"tools": [{"name": "no spaces", "input_schema": {"type": "object"}}]}, "tools[0].name"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
    ({"tools": TOOLS, "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice.name"),
    ({"tool_choice": {"type": "any"}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "auto"}, "tool_choice"),
    ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
    ({"metadata": {"user": "x"}}, "metadata.user"),
    # a list or an object as a type (unhashable): a 400, not the 500 of a failed lookup
    ({"messages": [{"role": "user", "content": [{"type": ["text"], "text": "Hi"}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": {"text": 1}, "text": "Hi"}]}]}, "messages[0].content[0]"),
    ({"tools": TOOLS, "tool_choice": {"type": ["auto"]}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": {}}}, "tool_choice"),
    ({"messages": [*USER, {"role": "assistant", "content": [{"type": "thinking", "thinking": 5, "signature": ""},
                                                             {"type": "text", "text": "Sunny"}]}, *USER]},
     "messages[1].content[0].thinking"),
    ({"messages": [*USER, {"role": "assistant", "content": [{"type": "redacted_thinking", "data": 5},
                                                             {"type": "text", "text": "Sunny"}]}, *USER]},
     "messages[1].content[0].data"),
]


@pytest.mark.parametrize("change,field", BAD, ids=[f for _, f in BAD])
def test_bad_request_is_400_naming_the_field(live, change, field):
    body = {"model": "tiny", "max_tokens": 4, "messages": USER, **change}
    body = {k: v for k, v in body.items() if v is not None}
    r = post(live.url, "/v1/messages", body)
    assert r.status_code == 400, r.text
    error = r.json()
    assert error == {"type": "error", "error": {"type": "invalid_request_error", "message": error["error"]["message"]}}
    assert error["error"]["message"].startswith(field + ":"), error


def test_the_sdk_raises_anthropics_errors(live, client):
    with pytest.raises(anthropic.BadRequestError) as exc:
        client.messages.create(model="tiny", max_tokens=4, messages=USER, extra_body={"temperature": 1.5})
    assert exc.value.body["error"]["type"] == "invalid_request_error" and "temperature" in exc.value.message
    with pytest.raises(anthropic.NotFoundError) as exc:  # another model's name: the served one only
        client.messages.create(model="claude-sonnet-4-5", max_tokens=4, messages=USER)
    assert exc.value.body["error"]["type"] == "not_found_error"
    r = post(live.url, "/v1/messages", b"{not json")
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert client.messages.create(model="tiny", max_tokens=2, messages=USER).usage.output_tokens > 0


def test_a_wrong_method_or_an_unknown_path_under_messages_answers_in_anthropics_body(live):
    """Starlette's own 405 / 404 under /v1/messages in Anthropic's error body (a 405 with its Allow header);
    elsewhere they keep OpenAI's."""
    r = httpx.get(live.url + "/v1/messages")
    assert r.status_code == 405 and r.headers["allow"] == "POST", r.headers
    assert r.json() == {"type": "error", "error": {"type": "invalid_request_error", "message": "Method Not Allowed"}}
    r = post(live.url, "/v1/messages/batches", {"requests": []})
    assert r.status_code == 404
    assert r.json() == {"type": "error", "error": {"type": "not_found_error", "message": "Not Found"}}
    r = httpx.get(live.url + "/v1/no-such-path")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error" and "type" not in r.json()
    assert httpx.get(live.url + "/v1/chat/completions").headers["allow"] == "POST"


def test_an_error_mid_stream_is_an_error_event():
    """The framing alone: an APIError raised by the chunks after some text becomes Anthropic's error event (no
    message_stop), and the run is cancelled and the slot released."""
    done = []

    async def chunks():
        yield {"choices": [{"delta": {"content": "Hi"}, "finish_reason": None}]}
        raise APIError(400, "stop: broken", param="stop")

    async def nothing():
        pass

    run = SimpleNamespace(cancel=lambda: done.append("cancel"), wait=nothing, close=nothing)
    slot = SimpleNamespace(release=lambda: done.append("release"), st=SimpleNamespace(count=done.append))
    choices = SimpleNamespace(cut=set(), tokens={}, completion_tokens=1)
    jobs = [SimpleNamespace(ids=[1, 2, 3], req=SimpleNamespace(cached_tokens=2, prediction=None))]
    start = anthropic_reply.head("msg_1", "tiny", jobs)

    async def collect():
        return [e async for e in anthropic_reply.events(chunks(), run, slot, choices, start, [], jobs)]
    events = asyncio.run(collect())
    assert [e["event"] for e in events] == ["message_start", "ping", "content_block_start", "content_block_delta",
                                             "error"]
    assert json.loads(events[0]["data"])["message"]["usage"] == {
        "input_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2, "output_tokens": 0}
    assert json.loads(events[-1]["data"]) == {"type": "error", "error": {"type": "invalid_request_error",
                                                                         "message": "stop: broken"}}
    assert done == ["cancel", "release"]


def test_readme_example_runs_as_written(live, capsys):
    """The README's Anthropic example against this server (port 8000 -> its port, SmolLM2's name -> the served
    one): it prints the greedy reply's text, its stop reason and both token counts, as /v1/messages answers them
    (the request sent once before, so that both runs find the whole prompt in the prefix cache: the same split of
    the input tokens)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("Anthropic's Messages API too", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace("http://127.0.0.1:8000", live.url).replace('"smollm2-135m-instruct"', '"tiny"')
    body = {"model": "tiny", "max_tokens": 64, "system": "Be brief.", "temperature": 0,
            "messages": [{"role": "user", "content": "What is ONNX?"}]}
    assert post(live.url, "/v1/messages", body).status_code == 200
    capsys.readouterr()
    exec(compile(code, "README", "exec"), {})
    printed = capsys.readouterr().out
    want = post(live.url, "/v1/messages", body)
    assert want.status_code == 200, want.text
    body = want.json()
    text = "".join(b["text"] for b in body["content"] if b["type"] == "text")
    assert printed == f"{text} {body['stop_reason']} {body['usage']['input_tokens']} {body['usage']['output_tokens']}\n"
