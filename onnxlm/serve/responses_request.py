"""OpenAI's Responses API request (POST /v1/responses) checked and translated into the chat request
/v1/chat/completions runs: OpenAI's chat messages, tools and tool_choice, a ``response_format``, and the sampling
(``protocol.Sampling``). Every mistake is a 400 naming the field as the Responses API spells it (``input[2].call_id``,
``tools[0].parameters``, ``text.format.schema``) in OpenAI's error body.

The stateless subset vLLM and Ollama serve. The mapping: ``instructions`` -> a system message first; ``input`` (a
string: one user message; or a list of items) -> the messages in order: a ``message`` item (``type`` optional; role
user | assistant | system | developer; content a string or ``input_text`` / ``output_text`` parts, joined) -> a
message of that role, a ``function_call`` item (an earlier call of the model) -> ``tool_calls`` of an assistant
message (it joins the assistant message or calls just before it: one turn), a ``function_call_output`` item -> a
tool message (``tool_call_id``: its ``call_id``), a ``reasoning`` item dropped (not carried into
``reasoning_content``, which the chat endpoint passes to the template), an assistant's ``refusal`` part dropped (as the chat endpoint drops
``refusal``); ``tools`` (function tools: ``name``, ``description``, ``parameters``, ``strict``) -> functions;
``tool_choice`` "auto" | "none" | "required" | {"type": "function", "name"} -> the same choice;
``parallel_tool_calls`` as is; ``text.format`` text | json_object | json_schema {name, schema, strict} ->
``response_format``; ``max_output_tokens`` (16, OpenAI's least, to ``--max-tokens``), ``temperature`` (0..2),
``top_p``. Checked and ignored: ``reasoning`` (the chat template decides whether the model thinks), ``text.verbosity``,
``metadata``, ``user``, ``safety_identifier``, ``prompt_cache_key`` (the prefix cache needs no key), ``store`` (nothing
is stored: the reply says ``"store": false``), ``stream_options.include_obfuscation`` (nothing is obfuscated); the
reply repeats ``reasoning``, ``metadata``, ``user``, ``safety_identifier`` and ``prompt_cache_key`` as OpenAI's does.

Refused: what needs state kept between requests (``previous_response_id``, ``conversation``, ``background: true``,
``prompt``, an ``item_reference`` item), ``include`` values (none can be honoured here), ``truncation: "auto"`` (the
input is never cut), built-in tools (a ``tools[i].type`` other than "function") and tool choices, image / file /
audio parts (this server reads text), and fields the Responses API does not define.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from . import protocol
from .openai_fields import REASONING_VALUES, check_kept_nowhere, check_neutral
from .protocol import APIError, bad, known_fields

#: what needs state kept between requests -> what to send instead (its 400 when set: null is accepted as absent)
STATEFUL = {"previous_response_id": "send the whole conversation in input, the earlier output items included",
            "conversation": "send the whole conversation in input, the earlier output items included",
            "background": "nothing runs after its request: leave background out (stream to read the reply as it "
                          "comes)",
            "prompt": "stored prompts are not kept here: send the prompt's text as instructions and input"}
#: the request fields /v1/responses takes
FIELDS = {"model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "tools", "tool_choice",
          "parallel_tool_calls", "stream", "stream_options", "text", "store", "metadata", "user", "reasoning",
          "include", "truncation", "safety_identifier", "prompt_cache_key", "service_tier", "max_tool_calls",
          "top_logprobs", "prompt_cache_retention", "context_management", *STATEFUL}
#: optional fields of OpenAI's request taken only at the values that ask nothing of this server (null: absent)
NEUTRAL = {"service_tier": (None, "auto", "default"), "max_tool_calls": (None,), "top_logprobs": (None, 0),
           "prompt_cache_retention": (None, "in-memory", "in_memory"), "context_management": (None,)}  # (the SDK: in_memory)
ROLES = ("user", "assistant", "system", "developer")
#: the fields of each input item type read here (id, status, phase, and a call's async / caller / namespace /
#: name: what an output item sent back carries; accepted at their neutral values, ignored: ``_check_call_echo``)
ITEM_FIELDS = {"message": {"type", "role", "content", "id", "status", "phase"},
               "function_call": {"type", "call_id", "name", "arguments", "id", "status", "async", "caller",
                                 "namespace"},
               "function_call_output": {"type", "call_id", "output", "id", "status", "caller", "name", "namespace"},
               "reasoning": {"type", "id", "summary", "content", "encrypted_content", "status"}}
#: the fields of each text content part (annotations, logprobs: an output part sent back; accepted, ignored)
PART_FIELDS = {"input_text": {"type", "text", "prompt_cache_breakpoint"},
               "output_text": {"type", "text", "annotations", "logprobs"},
               "refusal": {"type", "refusal"}}
MEDIA = ("input_image", "input_file", "input_audio")
TOOL_FIELDS = {"type", "name", "description", "parameters", "strict"}
CHOICES = ("auto", "none", "required")
FORMAT_FIELDS = {"text": {"type"}, "json_object": {"type"},
                 "json_schema": {"type", "name", "schema", "strict", "description"}}
VERBOSITY = ("low", "medium", "high")
MIN_OUTPUT_TOKENS = 16  # OpenAI's least max_output_tokens


@dataclass
class ResponsesRequest:
    """A Responses request as the chat machinery takes it: ``messages`` in OpenAI's chat shape, ``tools_body``
    ({"tools", "tool_choice", "parallel_tool_calls"}, the chat endpoint's shapes, for ``tools.check``),
    ``response_format`` (the chat endpoint's, or None), the sampling fields, and ``echo``: the request's settings as
    the reply repeats them (instructions, tools, tool_choice, text, ...)."""

    messages: list[dict]
    tools_body: dict
    response_format: dict | None
    max_output_tokens: int | None
    temperature: float
    top_p: float
    stream: bool
    echo: dict

    def sampling(self) -> protocol.Sampling:
        """The runtime's sampling for one reply of at most ``max_output_tokens`` tokens (None: up to the context and
        ``--max-tokens``, as chat without max_tokens); no stop strings, logprobs, penalties or beams."""
        return protocol.Sampling(max_tokens=self.max_output_tokens, temperature=self.temperature, top_p=self.top_p,
                                 n=1, stop=[], seed=None, stream=self.stream, include_usage=False,
                                 presence_penalty=0.0, frequency_penalty=0.0, top_k=0, repetition_penalty=1.0,
                                 num_beams=1, logprobs=None, max_tokens_param="max_output_tokens")


def parse(body: dict, *, max_tokens_cap: int) -> ResponsesRequest:
    """A /v1/responses body (its keys already checked against ``FIELDS``) and the server's ``--max-tokens`` ->
    ResponsesRequest (400 naming the field for any mistake)."""
    _check_stateless(body)
    stream = protocol._get_bool(body, "stream", False)
    _check_ignored(body, stream)
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise bad("instructions", f"expected a string, got {type(instructions).__name__}")
        protocol.check_text([instructions], "instructions")
    tools, echo_tools = _tools(body.get("tools"))
    names = [t["function"]["name"] for t in tools]
    choice = _tool_choice(body.get("tool_choice"), names)
    parallel = body.get("parallel_tool_calls")
    response_format, text = _text_config(body.get("text"))
    max_output_tokens = protocol._get_int(body, "max_output_tokens", None, lo=MIN_OUTPUT_TOKENS, hi=max_tokens_cap)
    temperature = protocol._get_num(body, "temperature", 1.0, 0.0, 2.0)
    top_p = protocol._get_num(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    system = [{"role": "system", "content": instructions}] if instructions is not None else []
    messages = system + _input(body.get("input"))
    tools_body = {"tools": tools, "tool_choice": choice,
                  **({"parallel_tool_calls": parallel} if parallel is not None else {})}
    echo = {"instructions": instructions, "max_output_tokens": max_output_tokens,
            "metadata": body.get("metadata") or {}, "parallel_tool_calls": parallel is not False,
            "temperature": temperature, "text": text,
            "tool_choice": _echo_choice(body.get("tool_choice")), "tools": echo_tools, "top_p": top_p,
            "user": body.get("user"), **_echo_ignored(body)}
    protocol.check_text_within(echo, "")  # what the reply repeats: a lone surrogate is a 400 now, not a 500 later
    return ResponsesRequest(messages, tools_body, response_format, max_output_tokens, temperature, top_p, stream, echo)


def _check_stateless(body: dict) -> None:
    """400 for what needs state kept between requests (``STATEFUL``; ``background`` only when true)."""
    for name, instead in STATEFUL.items():
        value = body.get(name)
        if value is None or (name == "background" and value is False):
            continue
        if name == "background" and not isinstance(value, bool):
            raise bad(name, f"expected true or false, got {value!r:.40}")
        raise bad(name, f"not supported: this server keeps no state between requests; {instead}")


def _check_ignored(body: dict, stream: bool) -> None:
    """The fields checked and then ignored (``store``, ``metadata``, ``reasoning``, strings, ``stream_options``) and
    those refused unless empty (``include``) or "disabled" (``truncation``)."""
    check_kept_nowhere(body)
    for name, allowed in NEUTRAL.items():
        check_neutral(name, body.get(name), allowed)
    _check_reasoning(body.get("reasoning"))
    include = body.get("include")
    if include is not None:
        if not isinstance(include, list) or not all(isinstance(v, str) for v in include):
            raise bad("include", "expected a list of strings")
        if include:
            raise bad("include[0]", f"{include[0]!r:.60} cannot be honoured here: this server returns no "
                                    "encrypted reasoning, logprobs or tool outputs (send an empty list)")
    truncation = body.get("truncation")
    if truncation not in (None, "disabled"):
        raise bad("truncation", f"got {truncation!r:.40}; allowed: 'disabled' (the input is never cut: a prompt "
                                "past the context is a 400)")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise bad("stream_options", "only allowed when stream is true")
        if not isinstance(options, dict):
            raise bad("stream_options", 'expected {"include_obfuscation": true|false}')
        known_fields(options, ("include_obfuscation",), "stream_options", "stream_options")
        if options.get("include_obfuscation") is not None and not isinstance(options["include_obfuscation"], bool):
            raise bad("stream_options.include_obfuscation", "expected true or false")


def _echo_ignored(body: dict) -> dict:
    """The fields checked and ignored that OpenAI's response repeats, as the request gave them: ``reasoning`` (over
    OpenAI's ``{"effort": null, "summary": null}`` of a request without it), ``prompt_cache_key`` and
    ``safety_identifier`` and ``prompt_cache_retention`` (null when absent). A client reads its settings back from
    the response, as from OpenAI's."""
    return {"reasoning": {"effort": None, "summary": None, **(body.get("reasoning") or {})},
            "prompt_cache_key": body.get("prompt_cache_key"), "safety_identifier": body.get("safety_identifier"),
            "prompt_cache_retention": body.get("prompt_cache_retention")}


def _check_reasoning(value) -> None:
    """``reasoning`` ({"effort", "summary", ...}: strings or null): checked, then ignored: whether the model thinks is
    its chat template's choice; a reply's <think> block comes back as a reasoning item either way."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise bad("reasoning", 'expected {"effort": ..., "summary": ...}')
    known_fields(value, ("effort", "summary", "generate_summary", "context", "mode"), "reasoning", "reasoning")
    for name, v in value.items():
        if v is not None and not isinstance(v, str):
            raise bad(f"reasoning.{name}", f"expected a string or null, got {type(v).__name__}")
        allowed = REASONING_VALUES.get(name)
        if v is not None and allowed and v not in allowed:
            raise bad(f"reasoning.{name}", f"got {v!r:.40}; allowed: {', '.join(allowed)} or null")


# ---------------------------------------------------------------------------------------------------- input
def _input(value) -> list[dict]:
    """``input`` -> OpenAI's chat messages, in order (400 naming the item, part or field)."""
    if isinstance(value, str):
        protocol.check_text([value], "input")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise bad("input", "required: a string or a non-empty list of items (messages, function_call, "
                           "function_call_output)")
    out: list[dict] = []
    calls: set[str] = set()  # the call_ids of the function_call items so far: an output answers one of them
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad(where, "expected an object: a message, function_call, function_call_output or reasoning item")
        kind = item.get("type", "message")
        if kind == "item_reference":
            raise bad(f"{where}.type", "item_reference needs stored items: this server keeps no state; send the "
                                       "item itself")
        if not isinstance(kind, str) or kind not in ITEM_FIELDS:  # a list or object as the type: unhashable
            raise bad(f"{where}.type", f"got {kind!r:.60}; allowed: {', '.join(ITEM_FIELDS)}")
        known_fields(item, ITEM_FIELDS[kind], where, f"a {kind} item")
        if kind == "message":
            out.append(_message(item, where))
        elif kind == "function_call":
            call = _call(item, where)
            calls.add(call["id"])
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":  # the same turn: its text, then its calls
                last["tool_calls"] = last.get("tool_calls", []) + [call]
                last["content"] = last["content"] or None
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append(_call_output(item, where))
            if item["call_id"] not in calls:  # as OpenAI: a result must answer a call sent before it
                raise bad(f"{where}.call_id", f"no function_call item before it has call_id {item['call_id']!r:.60}")
        else:  # reasoning: checked, then dropped
            _check_reasoning_item(item, where)
    if not out:
        raise bad("input", "holds no message or function call (reasoning items are dropped): send at least one "
                           "message")
    return out


def _message(item: dict, where: str) -> dict:
    """A message item -> a chat message of its role (content parts' text joined)."""
    role = item.get("role")
    if not isinstance(role, str) or role not in ROLES:
        hint = " (a tool's result is a function_call_output item)" if role == "tool" else ""
        raise bad(f"{where}.role", f"got {role!r:.60}; allowed: {', '.join(ROLES)}{hint}")
    content = item.get("content")
    if isinstance(content, list):
        content = _parts(content, role, f"{where}.content")
    elif not isinstance(content, str):
        raise bad(f"{where}.content", "required: a string or a list of input_text / output_text parts")
    protocol.check_text([content], f"{where}.content")
    return {"role": role, "content": content}


def _parts(parts: list, role: str, where: str) -> str:
    """Content parts -> their text joined: ``input_text`` / ``output_text`` (either, in any role), an assistant's
    ``refusal`` dropped; 400 naming the part for media or anything else."""
    texts = []
    for k, part in enumerate(parts):
        here = f"{where}[{k}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in MEDIA:
            raise _media(here, kind)
        if not isinstance(kind, str) or kind not in PART_FIELDS or (kind == "refusal" and role != "assistant"):
            raise bad(here, f"got a part of type {kind!r:.40}; allowed: input_text, output_text (text only)")
        known_fields(part, PART_FIELDS[kind], here, f"an {kind} part" if kind[0] in "io" else f"a {kind} part")
        field = "refusal" if kind == "refusal" else "text"
        if not isinstance(part.get(field), str):
            raise bad(f"{here}.{field}", "required: a string")
        if kind != "refusal":
            texts.append(part["text"])
    return "\n".join(texts)  # as the chat endpoint joins text parts (llama.cpp's server, vLLM)


def _media(where: str, kind: str) -> APIError:
    """The 400 for an image, file or audio part."""
    return bad(where, f"{kind} parts are not supported: this server's models read text only")


def _check_call_echo(item: dict, where: str) -> None:
    """The fields the SDK's call items carry when sent back: ``async`` false, ``caller`` {"type": "direct"},
    ``namespace`` empty, a function_call_output's ``name`` a string (or each null): accepted, ignored; anything else
    (a call made asynchronously, by another caller or in a namespace) is a 400 naming the field."""
    if item.get("async") not in (None, False):
        raise bad(f"{where}.async", "only false: this server makes no asynchronous calls")
    caller = item.get("caller")
    if caller is not None and caller != {"type": "direct"}:
        raise bad(f"{where}.caller", 'only {"type": "direct"} (or null): calls here come from the model itself')
    if item.get("namespace") not in (None, ""):
        raise bad(f"{where}.namespace", "only null or empty: this server's function tools have no namespaces")
    if item.get("type") == "function_call_output" and item.get("name") is not None \
            and not isinstance(item["name"], str):
        raise bad(f"{where}.name", "expected a string")


def _call(item: dict, where: str) -> dict:
    """A function_call item -> OpenAI's chat tool call (``call_id`` as its id, ``arguments`` the JSON string)."""
    _check_call_echo(item, where)
    for name in ("call_id", "name"):
        if not isinstance(item.get(name), str) or not item[name]:
            raise bad(f"{where}.{name}", "required: a non-empty string")
    if not isinstance(item.get("arguments"), str):
        raise bad(f"{where}.arguments", "required: the call's arguments, a JSON string")
    protocol.check_text([item["name"], item["arguments"]], f"{where}.arguments")
    return {"id": item["call_id"], "type": "function", "function": {"name": item["name"],
                                                                    "arguments": item["arguments"]}}


def _call_output(item: dict, where: str) -> dict:
    """A function_call_output item -> a tool message (its output: a string, or input_text parts joined)."""
    _check_call_echo(item, where)
    if not isinstance(item.get("call_id"), str) or not item["call_id"]:
        raise bad(f"{where}.call_id", "required: the call_id of the function_call this answers")
    output = item.get("output")
    if isinstance(output, list):
        output = _parts(output, "tool", f"{where}.output")
    elif not isinstance(output, str):
        raise bad(f"{where}.output", "required: a string or a list of input_text parts")
    protocol.check_text([output], f"{where}.output")
    return {"role": "tool", "tool_call_id": item["call_id"], "content": output}


def _check_reasoning_item(item: dict, where: str) -> None:
    """A reasoning item sent back ({"summary": [...], "content": [...]}): its lists checked, then it is dropped."""
    for name in ("summary", "content"):
        if item.get(name) is not None and not isinstance(item[name], list):
            raise bad(f"{where}.{name}", f"expected a list, got {type(item[name]).__name__}")
    if item.get("encrypted_content") is not None and not isinstance(item["encrypted_content"], str):
        raise bad(f"{where}.encrypted_content", "expected a string")


# ---------------------------------------------------------------------------------------------------- tools
def _tools(value) -> tuple[list[dict], list[dict]]:
    """``tools`` -> (the chat endpoint's function tools, the tools as the reply repeats them); their names and
    schemas are checked by ``tools.check`` (errors renamed by ``renamed``)."""
    if value is None:
        return [], []
    if not isinstance(value, list):
        raise bad("tools", 'expected a list of {"type": "function", "name", "description", "parameters"} objects')
    chat, echo = [], []
    for i, t in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(t, dict):
            raise bad(where, 'expected {"type": "function", "name", "description", "parameters"}')
        if t.get("type") != "function":
            raise bad(f"{where}.type", f"{t.get('type')!r:.60} is not supported: built-in tools (web search, file "
                                       "search, ...) run on OpenAI's servers; this server runs none (function tools "
                                       "only: type, name, description, parameters, strict)")
        known_fields(t, TOOL_FIELDS, where, "a function tool")
        if not isinstance(t.get("name"), str):
            raise bad(f"{where}.name", "required: a string")
        function = {k: t[k] for k in ("name", "description", "parameters", "strict") if t.get(k) is not None}
        chat.append({"type": "function", "function": function})
        echo.append({"type": "function", "name": t["name"], "description": t.get("description"),
                     "parameters": t.get("parameters"), "strict": t.get("strict")})
    return chat, echo


def _tool_choice(value, names: list[str]):
    """``tool_choice`` -> the chat endpoint's (None when absent: "auto" with tools, "none" without)."""
    if value is None or (isinstance(value, str) and value in CHOICES):
        return value
    kind = value.get("type") if isinstance(value, dict) else None
    if kind != "function":
        raise bad("tool_choice", f"got {value!r:.80}; allowed: 'auto', 'none', 'required' or "
                                 '{"type": "function", "name": ...} (this server runs no built-in tools)')
    known_fields(value, ("type", "name"), "tool_choice", "a function tool_choice")
    if value.get("name") not in names:
        raise bad("tool_choice.name", f"{value.get('name')!r:.60} is not one of the tools "
                                      f"({', '.join(names) or 'none given'})")
    return {"type": "function", "function": {"name": value["name"]}}


def _echo_choice(value):
    """The reply's ``tool_choice``: the request's ("auto" when absent)."""
    return "auto" if value is None else value


def _text_config(value) -> tuple[dict | None, dict]:
    """``text`` ({"format", "verbosity"}) -> (the chat endpoint's response_format or None, ``text`` as the reply
    repeats it). ``verbosity`` is checked and ignored."""
    if value is None:
        return None, {"format": {"type": "text"}}
    if not isinstance(value, dict):
        raise bad("text", 'expected {"format": {"type": "text" | "json_object" | "json_schema", ...}}')
    known_fields(value, ("format", "verbosity"), "text", "text")
    verbosity = value.get("verbosity")
    if verbosity is not None and verbosity not in VERBOSITY:
        raise bad("text.verbosity", f"got {verbosity!r:.40}; allowed: {', '.join(VERBOSITY)}")
    fmt = value.get("format")
    echo = {"format": fmt if fmt is not None else {"type": "text"},
            **({"verbosity": verbosity} if verbosity is not None else {})}
    if fmt is None:
        return None, echo
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if not isinstance(kind, str) or kind not in FORMAT_FIELDS:
        raise bad("text.format", 'expected {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", '
                                 '"name", "schema"}')
    known_fields(fmt, FORMAT_FIELDS[kind], "text.format", f"a {kind} format")
    if kind == "text":
        return None, echo
    if kind == "json_object":
        return {"type": "json_object"}, echo
    name = fmt.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise bad("text.format.name", f"got {name!r:.60}; required: 1 to 64 of a-z, A-Z, 0-9, _ and -")
    if not isinstance(fmt.get("schema"), dict):
        raise bad("text.format.schema", "required: the JSON Schema the reply must follow (an object)")
    if fmt.get("strict") is not None and not isinstance(fmt["strict"], bool):
        raise bad("text.format.strict", "expected true or false")
    spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
    return {"type": "json_schema", "json_schema": spec}, echo


#: the chat machinery's names (OpenAI's chat fields) -> the Responses API's
_NAMES = [(re.compile(r"\.function\."), "."), (re.compile(r"^messages"), "input"),
          (re.compile(r"^response_format"), "text.format")]


def renamed(exc: APIError) -> APIError:
    """An error of the chat machinery naming its fields (``tools[0].function.parameters``, ``messages``,
    ``response_format``) -> the same error naming the Responses API's (``tools[0].parameters``, ``input``,
    ``text.format``)."""
    out = protocol.renamed(exc, _NAMES)
    if exc.param is None or not exc.param.startswith("response_format"):
        return out
    # runtime/constraints.py names the schema json_schema.schema: text.format's is its schema
    message = out.message.replace("json_schema.schema", "schema").replace("json_schema.", "")
    return APIError(out.status, message, out.type, out.param, out.code)
