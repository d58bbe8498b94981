"""OpenAI's Responses API on ``onnxlm serve`` (onnxlm/serve/responses.py, responses_request.py,
responses_reply.py), driven by the official ``openai`` client and raw HTTP against a live server of the tiny Qwen2
with a tools template (recipe tiny-qwen2-tools).

A response equals /v1/chat/completions' reply to the same conversation at temperature 0 (text, token counts, status
as the finish reason: incomplete at max_output_tokens); ``instructions`` is a system message; the stream's events come
in the documented order with sequence numbers 0, 1, ... and join to the unstreamed response, read raw, by
``responses.create(stream=True)`` and by the SDK's ``responses.stream()``; a forced function call's arguments follow
its schema and equal the chat endpoint's, and the call and its output go back as input items (rendering as their
chat twin); ``text.format`` json_schema gives JSON valid against the schema; a <think> block is a reasoning item;
bad requests are 400s in OpenAI's error body naming the field; the API key is read from ``Authorization: Bearer``;
an error mid-stream is an ``error`` event then ``response.failed``.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

openai = pytest.importorskip("openai", reason="the Responses API tests need the test extra (openai)")
pytest.importorskip("starlette", reason="the server tests need the serve extra")
if os.environ.get("CI") != "true":  # CI installs the 'structured' extra: there a missing engine is a failure
    pytest.importorskip("llguidance", reason="a forced tool call needs the 'structured' extra (llguidance)")
import jsonschema  # noqa: E402
from openai.types.responses import Response, ResponseUsage  # noqa: E402

import onnxlm  # noqa: E402
from onnxlm.serve import responses_reply  # noqa: E402
from onnxlm.serve.protocol import APIError  # noqa: E402
from serve_util import SEARCH, WEATHER, live_thinking, live_tiny, named_events, post, start, wait_health  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOOLS = [{"type": "function", "name": "get_weather", "description": "The weather in a city", "parameters": WEATHER},
         {"type": "function", "name": "search", "description": "Search the web", "parameters": SEARCH}]
CHAT_TOOLS = [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}} for t in TOOLS]
THING = {"type": "object", "properties": {"a": {"enum": ["x", "yy"]}, "n": {"type": "integer", "minimum": 0,
                                                                          "maximum": 99}},
         "required": ["a", "n"], "additionalProperties": False}
SYSTEM = "You are brief."
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
CAP = 256  # the server's --max-tokens: a forced call takes about 110 tokens of the tiny model's vocabulary
README = Path(__file__).resolve().parents[1] / "README.md"
#: one output item's events, as names (``added:<item type>`` for response.output_item.added)
ITEM = (r"(added:message content_part\.added (output_text\.delta )*output_text\.done content_part\.done "
        r"|added:reasoning content_part\.added (reasoning_text\.delta )*reasoning_text\.done content_part\.done "
        r"|added:function_call (function_call_arguments\.delta )*function_call_arguments\.done )output_item\.done")
ORDER = re.compile(rf"created in_progress ({ITEM} )*(completed|incomplete)")


@pytest.fixture(scope="module")
def live(tiny_qwen2_tools):
    yield from live_tiny(tiny_qwen2_tools.onnx_dir, max_rows=16, max_queue=32, max_tokens=CAP)


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0, timeout=60)


def _events(url: str, body: dict, headers=None) -> list[tuple[str, dict]]:
    """POST a streaming /v1/responses -> [(event name, data)] in order."""
    return named_events(url, "/v1/responses", body, headers)


def _check_order(events: list[tuple[str, dict]]) -> dict:
    """The Responses grammar (``ORDER``): each event's data names it, sequence numbers count from 0, an item's
    events carry its id and output index, and the last event's response holds the items output_item.done sent ->
    that response."""
    assert all(data["type"] == n for n, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    names = " ".join(f"added:{d['item']['type']}" if n == "response.output_item.added" else n.removeprefix("response.")
                     for n, d in events)
    assert ORDER.fullmatch(names), names
    item, done = None, []
    for n, data in events[2:-1]:
        if n == "response.output_item.added":
            item = data["item"]
            assert data["output_index"] == len(done) and item["status"] == "in_progress"
        elif n == "response.output_item.done":
            assert data["output_index"] == len(done) and data["item"]["id"] == item["id"]
            done.append(data["item"])
        else:
            assert (data["item_id"], data["output_index"]) == (item["id"], len(done)), data
    final = events[-1][1]["response"]
    assert final["output"] == done and final["status"] == events[-1][0].removeprefix("response.")
    for head in (events[0][1]["response"], events[1][1]["response"]):
        assert head["status"] == "in_progress" and head["output"] == [] and head["id"] == final["id"]
    return final


def _strict(body: dict) -> Response:
    """The SDK's Response validated strictly (pydantic, not the SDK's lenient construction); ``usage`` apart, since
    the SDK's InputTokensDetails requires ``cache_write_tokens``, which this server cannot count."""
    usage = body["usage"]
    assert set(usage["input_tokens_details"]) == {"cached_tokens"}
    ResponseUsage.model_validate({**usage, "input_tokens_details": {**usage["input_tokens_details"],
                                                                    "cache_write_tokens": 0}})
    return Response.model_validate({**body, "usage": None})


def _text_of(body: dict) -> str:
    return "".join(p["text"] for item in body["output"] if item["type"] == "message" for p in item["content"])


# ---------------------------------------------------------------------------------------------------- responses
def test_response_equals_chat_completion(live, client):
    """The same conversation at temperature 0: the same text and token counts as /v1/chat/completions, cut at
    max_output_tokens as the chat reply at max_tokens (status incomplete <-> finish_reason length); the SDK parses
    the reply and output_text gives the text."""
    history = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
               {"role": "user", "content": [{"type": "input_text", "text": "Tell me "},
                                            {"type": "input_text", "text": "a joke"}]}]
    r = client.responses.create(model="tiny", instructions=SYSTEM, input=history, max_output_tokens=16, temperature=0)
    chat = post(live.url, "/v1/chat/completions", {"messages": [
        {"role": "system", "content": SYSTEM}, *history[:2], {"role": "user", "content": [  # parts joined alike
            {"type": "text", "text": "Tell me "}, {"type": "text", "text": "a joke"}]}],
        "max_tokens": 16, "temperature": 0})
    assert chat.status_code == 200, chat.text
    want = chat.json()
    assert r.id.startswith("resp_") and r.object == "response" and r.model == "tiny"
    assert r.output_text == want["choices"][0]["message"]["content"] != ""
    assert [item.type for item in r.output] == ["message"] and r.output[0].id.startswith("msg_")
    assert r.usage.input_tokens == want["usage"]["prompt_tokens"]
    assert r.usage.output_tokens == want["usage"]["completion_tokens"] == 16
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    finish = want["choices"][0]["finish_reason"]
    assert r.status == {"stop": "completed", "length": "incomplete"}[finish] == "incomplete"
    assert r.incomplete_details.reason == "max_output_tokens" and r.output[0].status == "incomplete"
    assert (r.instructions, r.max_output_tokens, r.temperature, r.tools, r.tool_choice) == (SYSTEM, 16, 0, [], "auto")
    raw = post(live.url, "/v1/responses", {"model": "tiny", "instructions": SYSTEM, "input": history,
                                          "max_output_tokens": 16, "temperature": 0}).json()
    assert _strict(raw).output_text == r.output_text
    assert raw["store"] is False and raw["error"] is None


def test_instructions_are_a_system_message(live, client):
    """``instructions`` renders as a system message before the input (the same prompt and reply); a string input is
    one user message."""
    a = client.responses.create(model="tiny", instructions=SYSTEM, input=USER[0]["content"], max_output_tokens=16,
                                temperature=0)
    b = client.responses.create(model="tiny", input=[{"type": "message", "role": "system", "content": SYSTEM}, *USER],
                                max_output_tokens=16, temperature=0)
    assert (a.output_text, a.usage.input_tokens) == (b.output_text, b.usage.input_tokens)
    ids = post(live.url, "/tokenize", {"messages": [{"role": "system", "content": SYSTEM}, *USER]}).json()["tokens"]
    assert a.usage.input_tokens == len(ids)
    assert SYSTEM in live.model.tokenizer.decode(ids)
    assert client.responses.create(model="tiny", input=USER, max_output_tokens=16).usage.input_tokens != len(ids)


def test_stream_events_join_to_the_response(live, client):
    """The events in the documented order, sequence numbers 0, 1, ...; their deltas join to the unstreamed text,
    read raw, by responses.create(stream=True) and by the SDK's responses.stream() helper."""
    body = {"model": "tiny", "input": USER, "max_output_tokens": 20, "temperature": 0}
    whole = post(live.url, "/v1/responses", body).json()
    events = _events(live.url, body)
    final = _check_order(events)
    text = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    assert text == _text_of(whole) == _text_of(final) != ""
    assert final["usage"] == whole["usage"] and final["status"] == whole["status"] == "incomplete"
    _strict(final)
    typed = list(client.responses.create(**body, stream=True))
    assert [e.type for e in typed] == [n for n, _ in events]
    assert "".join(e.delta for e in typed if e.type == "response.output_text.delta") == text
    assert typed[-1].response.output_text == text
    with client.responses.stream(**body) as stream:  # the SDK's own accumulation of the events
        seen = list(stream)
    deltas = [e for e in seen if e.type == "response.output_text.delta"]
    assert deltas[-1].snapshot == text and seen[-1].type == "response.incomplete"


# ---------------------------------------------------------------------------------------------------- tools
def test_forced_function_call_round_trip(live, client):
    """tool_choice {"type": "function", "name"}: one function_call item whose arguments follow the tool's schema and
    equal the chat endpoint's forced call's; the call and its output go back as input items, and the next turn's
    prompt renders as the same conversation in the chat endpoint's shapes."""
    choice = {"type": "function", "name": "get_weather"}
    r = client.responses.create(model="tiny", instructions=SYSTEM, input=USER, tools=TOOLS, tool_choice=choice,
                                max_output_tokens=200, temperature=0)
    assert r.status == "completed" and r.output_text == ""
    (call,) = r.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert call.id.startswith("fc_") and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    chat = post(live.url, "/v1/chat/completions", {"messages": [{"role": "system", "content": SYSTEM}, *USER],
                                                   "tools": CHAT_TOOLS, "max_tokens": 200, "temperature": 0,
                                                   "tool_choice": {"type": "function",
                                                                   "function": {"name": "get_weather"}}}).json()
    assert chat["choices"][0]["finish_reason"] == "tool_calls"
    assert chat["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == call.arguments
    assert r.usage.output_tokens == chat["usage"]["completion_tokens"]
    history = [*USER, *r.output, {"type": "function_call_output", "call_id": call.call_id, "output": "3 degrees"},
               {"role": "user", "content": "And tomorrow?"}]
    follow = client.responses.create(model="tiny", instructions=SYSTEM, input=history, tools=TOOLS,
                                     max_output_tokens=16, temperature=0)
    assert follow.status in ("completed", "incomplete")
    twin = [{"role": "system", "content": SYSTEM}, *USER,
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call.call_id, "type": "function", "function": {"name": call.name,
                                                                      "arguments": call.arguments}}]},
            {"role": "tool", "tool_call_id": call.call_id, "content": "3 degrees"},
            {"role": "user", "content": "And tomorrow?"}]
    ids = post(live.url, "/tokenize", {"messages": twin, "tools": CHAT_TOOLS}).json()["tokens"]
    assert follow.usage.input_tokens == len(ids)
    assert "3 degrees" in live.model.tokenizer.decode(ids)
    # the call as frameworks keep history (the SDK's JSON dump with its aliases: async, caller, namespace as null)
    # and an output naming its function: the same prompt
    dumped = call.model_dump(mode="json", by_alias=True)
    assert "async" in dumped
    again = client.responses.create(model="tiny", instructions=SYSTEM, tools=TOOLS, max_output_tokens=16,
                                    temperature=0, input=[*USER, dumped, {
                                        "type": "function_call_output", "call_id": call.call_id, "output": "3 degrees",
                                        "name": "get_weather", "caller": {"type": "direct"}, "namespace": None},
                                        {"role": "user", "content": "And tomorrow?"}])
    assert again.usage.input_tokens == follow.usage.input_tokens and again.output_text == follow.output_text


def test_streamed_function_call(live, client):
    """A forced call streamed: its item's arguments deltas join to the unstreamed call's arguments; the SDK's helper
    gives the final response."""
    body = {"model": "tiny", "input": USER, "tools": TOOLS, "tool_choice": {"type": "function", "name": "search"},
            "max_output_tokens": 200, "temperature": 0}
    whole = post(live.url, "/v1/responses", body).json()
    events = _events(live.url, body)
    final = _check_order(events)
    assert [d["item"]["type"] for n, d in events if n == "response.output_item.added"] == ["function_call"]
    arguments = "".join(d["delta"] for n, d in events if n == "response.function_call_arguments.delta")
    assert arguments == whole["output"][0]["arguments"] == final["output"][0]["arguments"]
    jsonschema.validate(json.loads(arguments), SEARCH)
    assert final["status"] == "completed" and events[-1][0] == "response.completed"
    with client.responses.stream(**body) as stream:
        got = stream.get_final_response()
    assert [(o.type, o.name, o.arguments) for o in got.output] == [("function_call", "search", arguments)]


def test_a_forced_call_cut_by_max_output_tokens_is_an_incomplete_function_call(live, client):
    """A forced call that max_output_tokens cuts inside its arguments: a function_call item with status
    "incomplete" whose arguments are the JSON written so far (the start of the whole call's), in a response with
    status "incomplete" and incomplete_details.reason "max_output_tokens", as OpenAI answers, not a message holding
    the call's raw text; streamed the same (the SDK's stream helper wants a response.completed event: not used)."""
    body = {"model": "tiny", "input": USER, "tools": TOOLS, "tool_choice": {"type": "function", "name": "search"},
            "temperature": 0}
    whole = client.responses.create(**body, max_output_tokens=200).output[0].arguments
    head = len(live.model.tokenizer.encode('<tool_call>\n{"name": "search", "arguments": '))  # the qwen style's
    cut = {**body, "max_output_tokens": head + 6}
    r = client.responses.create(**cut)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text == ""
    (call,) = r.output
    assert (call.type, call.name, call.status, call.arguments) == ("function_call", "search", "incomplete", whole[:6])
    assert call.id.startswith("fc_") and call.call_id.startswith("call_")
    _strict(post(live.url, "/v1/responses", cut).json())
    final = _check_order(_events(live.url, cut))
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [(o["type"], o["name"], o["status"], o["arguments"]) for o in final["output"]] == \
        [("function_call", "search", "incomplete", whole[:6])]


def test_text_format_json_schema(live, client):
    """text.format json_schema: the reply is JSON valid against the schema (the chat endpoint's response_format's
    reply), unstreamed and through the SDK's stream helper; json_object gives an object."""
    fmt = {"type": "json_schema", "name": "thing", "schema": THING, "strict": True}
    r = client.responses.create(model="tiny", input=[{"role": "user", "content": "A thing as JSON."}],
                                text={"format": fmt}, max_output_tokens=60, temperature=0)
    assert r.status == "completed", r
    jsonschema.validate(json.loads(r.output_text), THING)
    assert r.text.format.type == "json_schema" and r.text.format.name == "thing"
    chat = post(live.url, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "A thing as JSON."}], "max_tokens": 60, "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "thing", "schema": THING}}}).json()
    assert chat["choices"][0]["message"]["content"] == r.output_text
    with client.responses.stream(model="tiny", input="A thing as JSON.", text={"format": fmt},
                                 max_output_tokens=60, temperature=0) as stream:
        final = stream.get_final_response()
    jsonschema.validate(json.loads(final.output_text), THING)
    obj = client.responses.create(model="tiny", input="JSON", text={"format": {"type": "json_object"}},
                                  max_output_tokens=40, temperature=0)
    assert obj.output_text.startswith("{")
    if obj.status == "completed":
        assert isinstance(json.loads(obj.output_text), dict)


@pytest.fixture(scope="module")
def thinking(tiny_qwen2_tools, tmp_path_factory):
    """serve_util.live_thinking: the whole reply of the tiny model is reasoning."""
    yield from live_thinking(tiny_qwen2_tools.onnx_dir, tmp_path_factory.mktemp("responses-thinking"))


def test_reasoning_is_a_reasoning_item(thinking):
    """The reply's reasoning (/v1/chat/completions' reasoning_content) as a reasoning item, whole and streamed as
    reasoning_text deltas, counted in reasoning_tokens; a reasoning item sent back in the input is dropped from the
    prompt, as reasoning_content is."""
    hi = [{"role": "user", "content": "Hi!"}]
    chat = post(thinking.url, "/v1/chat/completions", {"messages": hi, "max_tokens": 16, "temperature": 0}).json()
    said = chat["choices"][0]["message"]
    assert said.get("reasoning_content")
    body = {"model": "tiny", "input": hi, "max_output_tokens": 16, "temperature": 0}
    r = post(thinking.url, "/v1/responses", body).json()
    item = r["output"][0]
    assert item["type"] == "reasoning" and item["id"].startswith("rs_") and item["summary"] == []
    assert item["content"] == [{"type": "reasoning_text", "text": said["reasoning_content"]}]
    assert _text_of(r) == (said["content"] or "")
    details = r["usage"]["output_tokens_details"]
    assert 0 < details["reasoning_tokens"] <= r["usage"]["output_tokens"]
    if not said["content"]:  # the block never closed: every token is reasoning
        assert details["reasoning_tokens"] == r["usage"]["output_tokens"]
    _strict(r)
    events = _events(thinking.url, body)
    final = _check_order(events)
    joined = "".join(d["delta"] for n, d in events if n == "response.reasoning_text.delta")
    assert joined == said["reasoning_content"] == final["output"][0]["content"][0]["text"]
    assert final["usage"] == r["usage"]
    history = [*hi, item, {"role": "assistant", "content": "Ok."}, {"role": "user", "content": "More"}]
    again = post(thinking.url, "/v1/responses", {**body, "input": history}).json()
    twin = [*hi, {"role": "assistant", "content": "Ok."}, {"role": "user", "content": "More"}]
    assert again["usage"]["input_tokens"] == post(thinking.url, "/tokenize", {"messages": twin}).json()["count"]


def test_reasoning_tokens_count_up_to_the_closing_tag():
    """reasoning_tokens: the tokens up to the one that completes </think> (a tag split over tokens), all of them
    when the block never closes, none without a reasoning item."""
    pieces = ["<th", "ink>", "a", "b", "</th", "ink>", "\n\n", "c"]

    def choices(n: int):
        decode = lambda ids, skip_special_tokens: "".join(pieces[i] for i in ids)  # noqa: E731
        return SimpleNamespace(tokens={0: [(i, None, None) for i in range(n)]},
                               model=SimpleNamespace(tokenizer=SimpleNamespace(decode=decode)))
    assert responses_reply.reasoning_tokens(choices(8), True) == 6
    assert responses_reply.reasoning_tokens(choices(5), True) == 5
    assert responses_reply.reasoning_tokens(choices(8), False) == 0


# ---------------------------------------------------------------------------------------------------- errors
def test_api_key_from_bearer(tiny_qwen2_tools):
    """--api-key: Authorization: Bearer (the SDK's api_key); a wrong or missing key is 401 in OpenAI's error body."""
    srv = start(lambda: onnxlm.load(tiny_qwen2_tools.onnx_dir), api_key="sekrit")
    try:
        wait_health(srv.url)
        body = {"model": "tiny", "input": "Hi", "max_output_tokens": 16}
        for headers in ({"Authorization": "Bearer wrong"}, {}, {"x-api-key": "sekrit"}):
            r = post(srv.url, "/v1/responses", body, headers=headers)
            assert r.status_code == 401, r.text
            assert r.json()["error"]["type"] == "authentication_error"
        ok = openai.OpenAI(base_url=srv.url + "/v1", api_key="sekrit", max_retries=0, timeout=60)
        assert 0 < ok.responses.create(**body).usage.output_tokens <= 16  # sampled: may stop early
        wrong = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0, timeout=60)
        with pytest.raises(openai.AuthenticationError):
            wrong.responses.create(**body)
    finally:
        srv.stop()


STATELESS = "this server keeps no state"
CALL = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
BAD = [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input"),
    ({"input": [*USER, {"type": "function_call_output", "call_id": "call_1", "output": "3"}]}, "input[1].call_id"),
    ({"input": [*USER, CALL, {"type": "function_call_output", "call_id": "call_2", "output": "3"}]},
     "input[2].call_id"),
    ({"input": [*USER, {**CALL, "async": True}]}, "input[1].async"),
    ({"input": [*USER, {**CALL, "caller": {"type": "mcp"}}]}, "input[1].caller"),
    ({"input": [*USER, {**CALL, "namespace": "tools"}]}, "input[1].namespace"),
    ({"input": [*USER, CALL, {"type": "function_call_output", "call_id": "call_1", "output": "3", "name": 3}]},
     "input[2].name"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"max_tool_calls": 3}, "max_tool_calls"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"top_logprobs": False}, "top_logprobs"),
    ({"prompt_cache_retention": "24h"}, "prompt_cache_retention"),
    ({"context_management": [{"type": "compaction"}]}, "context_management"),
    ({"conversation": "conv_123"}, "conversation"),
    ({"background": True}, "background"),
    ({"prompt": {"id": "pmpt_123"}}, "prompt"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type"),
    ({"tools": [{"type": ["function"], "name": "f"}]}, "tools[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,iVBO"}]}]},
     "input[0].content[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]}, "input[0].content[0]"),
    ({"input": [*USER, {"type": "function_call_output", "call_id": "c", "output": [
        {"type": "input_image", "image_url": "x"}]}]}, "input[1].output[0]"),
    ({"frequency_penalty": 1}, "frequency_penalty"),  # a chat field: not the Responses API's
    ({"messages": USER}, "messages"),
    ({"input": [{"role": "tool", "content": "3 degrees"}]}, "input[0].role"),
    ({"input": [{"role": "wizard", "content": "Hi"}]}, "input[0].role"),
    ({"tools": TOOLS, "tool_choice": "any"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice.name"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "search"}}}, "tool_choice.function"),
    ({"tools": TOOLS, "tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"temperature": 3}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"max_output_tokens": 15}, "max_output_tokens"),  # OpenAI's least is 16
    ({"max_output_tokens": CAP + 1}, "max_output_tokens"),  # over --max-tokens: refused as chat's max_tokens
    ({"input": [{"type": ["message"], "role": "user", "content": "Hi"}]}, "input[0].type"),
    ({"input": [{"type": {"message": 1}, "role": "user", "content": "Hi"}]}, "input[0].type"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type"),
    ({"input": []}, "input"),
    ({"input": 5}, "input"),
    ({"input": None}, "input"),
    ({"input": ["Hi"]}, "input[0]"),
    ({"input": [{"role": "user", "content": "Hi", "name": "x"}]}, "input[0].name"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "txt": "Hi"}]}]}, "input[0].content[0].txt"),
    ({"input": [{"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}]}, "input[0].content[0]"),
    ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
    ({"input": [*USER, {"type": "function_call", "name": "search", "arguments": "{}"}]}, "input[1].call_id"),
    ({"input": [*USER, {"type": "function_call", "call_id": "c", "name": "search", "arguments": {"query": "x"}}]},
     "input[1].arguments"),
    ({"input": [*USER, {"type": "function_call_output", "output": "3 degrees"}]}, "input[1].call_id"),
    ({"input": [*USER, {"type": "reasoning", "id": "rs_1", "summary": "no"}]}, "input[1].summary"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "string"}}]}, "tools[0].parameters"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {
        "a": {"type": "bogus"}}}}]}, "tools[0].parameters"),
    ({"tools": [{"type": "function", "name": "no spaces", "parameters": {"type": "object"}}]}, "tools[0].name"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools[0].function"),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].name"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"text": {"format": {"type": "xml"}}}, "text.format"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"text": {"format": {"type": "json_schema", "schema": THING}}}, "text.format.name"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "no-such-type"}}}}, "text.format"),
    ({"text": {"format": {"type": "json_object"}}, "tools": TOOLS, "tool_choice": "required"}, "text.format"),
    ({"text": {"verbosity": "loud"}}, "text.verbosity"),
    ({"include": ["reasoning.encrypted_content"]}, "include[0]"),
    ({"include": "message.output_text.logprobs"}, "include"),
    ({"truncation": "auto"}, "truncation"),
    ({"reasoning": {"effort": 5}}, "reasoning.effort"),
    ({"reasoning": {"effort": "bogus"}}, "reasoning.effort"),
    ({"reasoning": {"summary": "long"}}, "reasoning.summary"),
    ({"reasoning": {"budget": "high"}}, "reasoning.budget"),
    ({"metadata": {"k": 5}}, "metadata.k"),
    ({"metadata": {"k": "\ud800"}}, "metadata.k"),  # a lone surrogate the reply would repeat: no 500 after the answer
    ({"metadata": {"\ud800": "v"}, "stream": True}, "metadata.\\ud800"),  # named with the surrogate escaped
    ({"user": "\ud800"}, "user"),
    ({"safety_identifier": "a\ud800"}, "safety_identifier"),
    ({"prompt_cache_key": "\udfff"}, "prompt_cache_key"),
    ({"stream_options": {"include_obfuscation": False}}, "stream_options"),
    ({"instructions": ["Be brief."]}, "instructions"),
    ({"store": "yes"}, "store"),
    ({"user": 5}, "user"),
]


@pytest.mark.parametrize("change,field", BAD, ids=[f for _, f in BAD])
def test_bad_request_is_400_naming_the_field(live, change, field):
    body = {"model": "tiny", "input": USER, "max_output_tokens": 16, **change}
    body = {k: v for k, v in body.items() if v is not None}
    r = post(live.url, "/v1/responses", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == field, error
    assert error["message"].startswith(field + ":"), error
    if field in ("previous_response_id", "conversation", "background", "prompt"):
        assert STATELESS in error["message"]


def test_optional_fields_at_their_neutral_values_are_accepted(live):
    """OpenAI's optional request fields a client may copy from a reply or send by default, at the values that ask
    nothing of this server (null; service_tier auto / default; top_logprobs 0): a 200 like the plain request."""
    plain = post(live.url, "/v1/responses", {"model": "tiny", "input": USER, "max_output_tokens": 16,
                                             "temperature": 0}).json()
    for extra in ({"service_tier": None, "max_tool_calls": None, "top_logprobs": None, "prompt_cache_retention": None,
                   "context_management": None}, {"service_tier": "auto", "top_logprobs": 0},
                  {"service_tier": "default", "prompt_cache_retention": "in-memory"},
                  {"prompt_cache_retention": "in_memory"}):  # (the openai SDK's spelling)
        r = post(live.url, "/v1/responses", {"model": "tiny", "input": USER, "max_output_tokens": 16,
                                             "temperature": 0, **extra})
        assert r.status_code == 200, (extra, r.text)
        assert _text_of(r.json()) == _text_of(plain), extra


def test_ignored_settings_are_repeated_in_the_response(live, client):
    """reasoning, prompt_cache_key, safety_identifier, prompt_cache_retention and metadata (checked, then ignored) come back in the response
    as the request gave them, as OpenAI's responses repeat them, and at OpenAI's values when absent (reasoning's
    effort and summary null, metadata {}, the others null); the stream's created and final responses too."""
    settings = {"reasoning": {"effort": "low"}, "prompt_cache_key": "conversation-7",
                "safety_identifier": "user-hash-1", "metadata": {"topic": "weather"},
                "prompt_cache_retention": "in_memory"}
    r = client.responses.create(model="tiny", input=USER, max_output_tokens=16, **settings)
    assert (r.reasoning.effort, r.reasoning.summary) == ("low", None)
    assert (r.prompt_cache_key, r.safety_identifier, r.metadata) == ("conversation-7", "user-hash-1",
                                                                     {"topic": "weather"})
    assert r.prompt_cache_retention == "in_memory"
    bare = client.responses.create(model="tiny", input=USER, max_output_tokens=16)
    assert (bare.reasoning.effort, bare.reasoning.summary) == (None, None)
    assert (bare.prompt_cache_key, bare.safety_identifier, bare.metadata) == (None, None, {})
    raw = post(live.url, "/v1/responses", {"model": "tiny", "input": USER, "max_output_tokens": 16, **settings})
    want = {"reasoning": {"effort": "low", "summary": None}, **{k: v for k, v in settings.items() if k != "reasoning"}}
    assert {k: raw.json()[k] for k in settings} == want
    _strict(raw.json())
    events = _events(live.url, {"model": "tiny", "input": USER, "max_output_tokens": 16, **settings})
    for _, data in (events[0], events[-1]):
        assert {k: data["response"][k] for k in settings} == want


def test_a_developer_message_is_a_system_message_for_a_template_without_that_role(live, client):
    """The Responses API's developer role: the test model's template knows only system / user / assistant / tool,
    so a developer message is its system message (after instructions: joined to them), the same prompt and reply;
    a template that names the role gets it as it is."""
    from onnxlm.serve.protocol import developer_as_system

    assert "developer" not in live.model.chat_template
    dev = client.responses.create(model="tiny", input=[{"role": "developer", "content": SYSTEM}, *USER],
                                  max_output_tokens=16, temperature=0)
    sys_ = client.responses.create(model="tiny", input=[{"role": "system", "content": SYSTEM}, *USER],
                                   max_output_tokens=16, temperature=0)
    assert dev.usage.input_tokens == sys_.usage.input_tokens and dev.output_text == sys_.output_text
    both = client.responses.create(model="tiny", instructions="Be kind.", input=[
        {"role": "developer", "content": SYSTEM}, *USER], max_output_tokens=16, temperature=0)
    joined = post(live.url, "/tokenize", {"messages": [{"role": "system", "content": "Be kind.\n\n" + SYSTEM},
                                                       *USER]}).json()["tokens"]
    assert both.usage.input_tokens == len(joined)
    messages = [{"role": "developer", "content": "x"}, {"role": "user", "content": "y"}]
    assert developer_as_system(messages, "{% if m.role == 'developer' %}") == messages
    assert developer_as_system([*messages, {"role": "developer", "content": "z"}], None)[2] == \
        {"role": "system", "content": "z"}


def test_the_sdk_raises_openais_errors(live, client):
    """The SDK's exceptions: a 400 naming the field, another model's name a 404, a stored response's retrieval a
    404 (nothing is stored); the server goes on."""
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="tiny", input="Hi", previous_response_id="resp_1")
    assert exc.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError) as exc:
        client.responses.create(model="gpt-5", input="Hi")
    assert exc.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_1")
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="tiny", input="Hi", stream=True, temperature=3)
    after = client.responses.create(model="tiny", input="Hi", max_output_tokens=16)  # sampled: may stop early
    assert 0 < after.usage.output_tokens <= 16
    assert after.status == "completed" or (after.status == "incomplete" and after.usage.output_tokens == 16)


def test_an_error_mid_stream_is_an_error_event_then_failed():
    """The framing alone: an APIError raised by the chunks after some text becomes an ``error`` event then
    ``response.failed`` (the response with its error and its items: the one open at the failure closed first as
    incomplete, holding what was written), and the run is cancelled and the slot released."""
    done = []

    async def chunks():
        yield {"choices": [{"delta": {"reasoning_content": "Hmm"}, "finish_reason": None}]}
        yield {"choices": [{"delta": {"content": "Hi"}, "finish_reason": None}]}
        raise APIError(500, "the model failed: boom", "server_error")

    run = SimpleNamespace(cancel=lambda: done.append("cancel"))
    slot = SimpleNamespace(release=lambda: done.append("release"), st=SimpleNamespace(count=done.append))
    start = responses_reply.head("resp_1", 0, "tiny", {})

    async def collect():
        return [e async for e in responses_reply.events(chunks(), run, slot, None, [], start)]
    events = [(e["event"], json.loads(e["data"])) for e in asyncio.run(collect())]
    assert [n.removeprefix("response.") for n, _ in events] == [
        "created", "in_progress", "output_item.added", "content_part.added", "reasoning_text.delta",
        "reasoning_text.done", "content_part.done", "output_item.done", "output_item.added", "content_part.added",
        "output_text.delta", "output_text.done", "content_part.done", "output_item.done", "error", "failed"]
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    error, failed = events[-2][1], events[-1][1]["response"]
    assert (error["code"], error["message"], error["param"]) == ("server_error", "the model failed: boom", None)
    assert failed["status"] == "failed" and failed["error"] == {"code": "server_error",
                                                                "message": "the model failed: boom"}
    assert [(item["type"], item["status"]) for item in failed["output"]] == [("reasoning", "completed"),
                                                                             ("message", "incomplete")]
    assert failed["output"][1]["content"][0]["text"] == "Hi"  # what was written before the failure
    assert done == ["cancel", "release"]


def test_readme_example_runs_as_written(live, capsys):
    """The README's Responses API example against this server (port 8000 -> its port, SmolLM2's name -> the served
    one): it prints the greedy reply's text, its status and both token counts, as /v1/responses answers them."""
    readme = README.read_text(encoding="utf-8")
    assert "OpenAI's Responses API too" in readme, "the README's Responses API paragraph is missing"
    section = readme.split("OpenAI's Responses API too", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace("http://127.0.0.1:8000", live.url).replace('"smollm2-135m-instruct"', '"tiny"')
    capsys.readouterr()
    exec(compile(code, "README", "exec"), {})
    printed = capsys.readouterr().out
    want = post(live.url, "/v1/responses", {"model": "tiny", "instructions": "Be brief.", "input": "What is ONNX?",
                                           "max_output_tokens": 64, "temperature": 0})
    assert want.status_code == 200, want.text
    body = want.json()
    assert printed == f"{_text_of(body)} {body['status']} {body['usage']['input_tokens']} " \
                      f"{body['usage']['output_tokens']}\n"
