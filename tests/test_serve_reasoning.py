"""A thinking model's ``<think>`` block as ``reasoning_content`` (onnxlm/serve/reasoning.py), as llama.cpp's server
returns it (the split itself: test_reasoning.py): which requests split, and the server's messages and streams on a
tiny model with a template that opens the block in the prompt (as DeepSeek-R1's distills do: the whole reply of the
random-weight model is reasoning) or writes none."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("starlette", reason="the server needs the 'serve' extra")

import onnxlm  # noqa: E402
from onnxlm.serve.reasoning import split, wanted  # noqa: E402
from serve_util import post, sse_events, start, wait_health  # noqa: E402
from test_serve_tools import CHATML, _reassemble, _with_template  # noqa: E402

OPENS = CHATML.replace("'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n<think>\\n'")


def test_which_requests_split():
    assert wanted({}, "... '<think>' ...") and not wanted({}, "no tags") and wanted({"reasoning_format": "deepseek"}, "")
    assert not wanted({"reasoning_format": "none"}, "<think>")


@pytest.fixture(scope="module")
def servers(tiny_qwen2_tools, tmp_path_factory):
    base = tmp_path_factory.mktemp("reasoning")
    dirs = {"opens": _with_template(tiny_qwen2_tools.onnx_dir, base / "opens", OPENS),
            "plain": _with_template(tiny_qwen2_tools.onnx_dir, base / "plain", CHATML)}
    live = {k: start(lambda d=d: onnxlm.load(d), max_rows=8, max_queue=16, max_tokens=64) for k, d in dirs.items()}
    for srv in live.values():
        wait_health(srv.url)
    yield live
    for srv in live.values():
        srv.stop()


BODY = {"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 12, "temperature": 0}


def _reassembled(events) -> tuple[str, str]:
    assert events[-1] == "[DONE]"
    deltas = [c["delta"] for e in events[:-1] for c in e["choices"]]
    return ("".join(d.get("reasoning_content") or "" for d in deltas),
            "".join(d.get("content") or "" for d in deltas))


def test_an_open_block_in_the_prompt_makes_the_reply_reasoning(servers):
    srv = servers["opens"]
    kept = post(srv.url, "/v1/chat/completions", {**BODY, "reasoning_format": "none"}).json()["choices"][0]
    raw = kept["message"]["content"]
    assert raw.strip() and "reasoning_content" not in kept["message"]
    msg = post(srv.url, "/v1/chat/completions", BODY).json()["choices"][0]["message"]  # "auto": the template thinks
    assert (msg.get("reasoning_content"), msg["content"]) == split(raw, inside=True)
    events = sse_events(srv.url, "/v1/chat/completions", {**BODY, "stream": True})
    assert _reassembled(events) == (msg["reasoning_content"], msg["content"])


def test_a_template_without_think_tags_is_left_alone_unless_asked(servers):
    srv = servers["plain"]
    plain = post(srv.url, "/v1/chat/completions", BODY).json()["choices"][0]["message"]
    assert "reasoning_content" not in plain
    forced = post(srv.url, "/v1/chat/completions", {**BODY, "reasoning_format": "deepseek"}).json()
    assert forced["choices"][0]["message"]["content"] == split(plain["content"])[1]
    r = post(srv.url, "/v1/chat/completions", {**BODY, "reasoning_format": "think"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "reasoning_format"


#: tools whose calls the random-weight model writes in a few tokens (a string's characters may be bytes each)
FLAGS = [{"type": "function", "function": {"name": name, "parameters": {
    "type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"], "additionalProperties": False}}}
    for name in ("lamp", "fan")]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "fan"}}])
def test_a_forced_call_closes_the_open_block_first(servers, choice):
    """Where the prompt leaves a <think> block open (QwQ, DeepSeek-R1's distills), a forced call's grammar closes it
    first: the call is the answer (tool_calls, finish "tool_calls"), not reasoning, whole and streamed, also with
    reasoning_format "none" (the block it closed is empty)."""
    srv = servers["opens"]
    body = {**BODY, "tools": FLAGS, "tool_choice": choice, "max_tokens": 64}
    got = post(srv.url, "/v1/chat/completions", body).json()["choices"][0]
    msg = got["message"]
    assert got["finish_reason"] == "tool_calls" and msg["content"] is None and not msg.get("reasoning_content")
    call = msg["tool_calls"][0]
    assert call["function"]["name"] in ("fan" if isinstance(choice, dict) else ("lamp", "fan"))
    assert json.loads(call["function"]["arguments"]) in ({"on": True}, {"on": False})
    streamed = _reassemble(sse_events(srv.url, "/v1/chat/completions", {**body, "stream": True}), 0)
    assert streamed["finish_reason"] == "tool_calls"
    assert streamed["tool_calls"][0]["function"] == call["function"]
    kept = post(srv.url, "/v1/chat/completions", {**body, "reasoning_format": "none"}).json()["choices"][0]
    assert kept["message"]["tool_calls"][0]["function"] == call["function"]  # the empty block split off anyway
