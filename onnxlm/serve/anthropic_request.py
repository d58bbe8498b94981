"""Anthropic's Messages API request (POST /v1/messages and /v1/messages/count_tokens) checked and translated into
the chat request /v1/chat/completions runs: OpenAI's message list, tools and tool_choice, and its sampling
(``protocol.Sampling``). Every mistake is a 400 naming the field as Anthropic's API spells it
(``messages[1].content[0].source``, ``tools[0].input_schema``); anthropic.py sends it in Anthropic's error body.

The mapping: ``system`` (a string or text blocks) -> a system message first; a user turn's ``tool_result`` blocks ->
tool messages (``tool_call_id``: its ``tool_use_id``; with ``is_error: true`` the content after "Error: ", since the
template renders a tool message's text alone and the model learns of the failure only from it: ``error_marked``),
its text blocks -> a user message after them; an assistant turn's text -> ``content``, its ``tool_use`` blocks ->
``tool_calls`` (``input`` as the JSON arguments), its ``thinking`` blocks dropped (not carried into
``reasoning_content``, which the chat endpoint passes to the template); ``tools`` (``name``, ``description``, ``input_schema``) -> functions;
``tool_choice`` auto / any / tool {name} / none -> "auto" / "required" / the named function / "none"
(``disable_parallel_tool_use`` -> ``parallel_tool_calls``);
``stop_sequences`` -> ``stop``; ``temperature`` (0..1, 0 greedy), ``top_p``, ``top_k`` as the runtime's.
``metadata`` and ``thinking`` are checked and ignored (the chat template decides whether the model thinks);
``cache_control`` is accepted wherever Anthropic takes it and ignored (the server's prefix cache needs no marks).
A last message from the assistant is a prefill: the prompt ends inside it (the runtime's ``continue_final_message``)
and the reply continues it (its text, not repeated in the reply; not with a forced tool call). Refused: image and
document blocks (this server reads text), server tools, and fields Anthropic's API does not define.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from . import protocol
from .protocol import APIError, bad, known_fields

#: the request fields /v1/messages and /v1/messages/count_tokens take (count_tokens: max_tokens optional)
FIELDS = {"model", "max_tokens", "messages", "system", "stop_sequences", "temperature", "top_p", "top_k", "stream",
          "tools", "tool_choice", "metadata", "thinking", "cache_control"}
ROLES = ("user", "assistant")
MAX_STOP_SEQUENCES = 16
#: the fields of each content block type read here (cache_control, citations: accepted, ignored)
BLOCK_FIELDS = {"text": {"type", "text", "cache_control", "citations"},
                "tool_use": {"type", "id", "name", "input", "cache_control"},
                "tool_result": {"type", "tool_use_id", "content", "is_error", "cache_control"},
                "thinking": {"type", "thinking", "signature"},
                "redacted_thinking": {"type", "data"}}
#: the roles each block type may appear in
BLOCK_ROLES = {"text": ROLES, "tool_use": ("assistant",), "tool_result": ("user",), "thinking": ("assistant",),
               "redacted_thinking": ("assistant",)}
MEDIA = ("image", "document")
TOOL_FIELDS = {"type", "name", "description", "input_schema", "cache_control", "strict"}
CHOICE_FIELDS = {"auto": {"type", "disable_parallel_tool_use"}, "any": {"type", "disable_parallel_tool_use"},
                 "tool": {"type", "name", "disable_parallel_tool_use"}, "none": {"type"}}
CHOICES = {"auto": "auto", "any": "required", "none": "none"}  # "tool": the named function
THINKING_TYPES = ("enabled", "disabled", "adaptive")
#: what opens the content of a tool_result with is_error: true, so that the model is told the tool failed
ERROR_MARK = "Error: "


@dataclass
class MessagesRequest:
    """An Anthropic request as the chat machinery takes it: ``messages`` in OpenAI's shape (``protocol.messages``'
    output), ``tools_body`` ({"tools", "tool_choice", "parallel_tool_calls"}, OpenAI's shapes, for ``tools.check``)
    and the sampling fields."""

    messages: list[dict]
    tools_body: dict
    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    stop: list[str]
    stream: bool
    prefill: bool = False  # the last message is the assistant's: the reply continues it (Anthropic's prefill)

    def sampling(self, *, max_tokens: int) -> protocol.Sampling:
        """The runtime's sampling for one reply of at most ``max_tokens`` tokens (no logprobs, penalties, beams)."""
        return protocol.Sampling(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, n=1,
                                 stop=self.stop, seed=None, stream=self.stream, include_usage=False,
                                 presence_penalty=0.0, frequency_penalty=0.0, top_k=self.top_k,
                                 repetition_penalty=1.0, num_beams=1, logprobs=None)


def parse(body: dict, *, counting: bool) -> MessagesRequest:
    """A /v1/messages body (its keys already checked against ``FIELDS``) -> MessagesRequest; ``counting``: for
    /v1/messages/count_tokens, where max_tokens may be left out."""
    max_tokens = protocol._get_int(body, "max_tokens", None, lo=1)
    if max_tokens is None and not counting:
        raise bad("max_tokens", "required: the most tokens the reply may have (an integer >= 1)")
    _check_metadata(body.get("metadata"))
    if body.get("cache_control") is not None and not isinstance(body["cache_control"], dict):
        raise bad("cache_control", 'expected {"type": "ephemeral"} (accepted and ignored: the prefix cache needs '
                                   'no marks)')
    _check_thinking(body.get("thinking"))
    tools = _tools(body.get("tools"))
    messages = _messages(body.get("messages"))
    choice = _tool_choice(body.get("tool_choice"), [t["function"]["name"] for t in tools])
    prefill = messages[-1]["role"] == "assistant"
    if prefill and choice.get("tool_choice") not in (None, "auto", "none"):
        raise bad("tool_choice", "a forced tool call cannot continue a final assistant message (a prefill): send "
                                 "auto or none, or end with the user's message")
    return MessagesRequest(
        messages=_system(body.get("system")) + messages,
        tools_body={"tools": tools, **choice},
        prefill=prefill,
        max_tokens=max_tokens,
        temperature=protocol._get_num(body, "temperature", 1.0, 0.0, 1.0),
        top_p=protocol._get_num(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        top_k=protocol._get_int(body, "top_k", 0, lo=0),
        stop=_stop_sequences(body.get("stop_sequences")),
        stream=protocol._get_bool(body, "stream", False))


def _system(value) -> list[dict]:
    """``system``: a string or a list of text blocks -> [the system message], or [] when absent."""
    if value is None:
        return []
    if isinstance(value, list):
        value = "\n".join(_text(block, f"system[{k}]") for k, block in enumerate(value))  # as chat's parts
    if not isinstance(value, str):
        raise bad("system", f"expected a string or a list of text blocks, got {type(value).__name__}")
    protocol.check_text([value], "system")
    return [{"role": "system", "content": value}]


def _text(block, where: str) -> str:
    """A text block {"type": "text", "text"} -> its text (400 naming ``where`` for any other block)."""
    if not isinstance(block, dict) or block.get("type") != "text":
        kind = block.get("type") if isinstance(block, dict) else type(block).__name__
        raise bad(where, f'only text blocks ({{"type": "text", "text": ...}}) are read here, got {kind!r:.40}')
    known_fields(block, BLOCK_FIELDS["text"], where, "a text block")
    if not isinstance(block.get("text"), str):
        raise bad(f"{where}.text", "expected a string")
    if block.get("citations") is not None and not isinstance(block["citations"], list):
        raise bad(f"{where}.citations", "expected a list (or null)")
    return block["text"]


def _messages(value) -> list[dict]:
    """``messages`` -> OpenAI's chat messages, in order (400 naming the message or block)."""
    if not isinstance(value, list) or not value:
        raise bad("messages", "required: a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(where, "expected an object with role and content")
        role = m.get("role")
        if role not in ROLES:
            hint = " (the system prompt is the top-level system field)" if role == "system" else ""
            raise bad(f"{where}.role", f"got {role!r:.60}; allowed: {', '.join(ROLES)}{hint}")
        known_fields(m, ("role", "content"), where, f"a {role} message")
        out += _turn(role, m.get("content"), where)
    if value[-1]["role"] == "assistant" and not protocol.continuable(out[-1]):
        raise bad(f"messages[{len(value) - 1}]", "a final assistant message is a prefill the reply continues: it "
                                                 "needs text, and no tool_use blocks")
    return out


def _turn(role: str, content, where: str) -> list[dict]:
    """One Anthropic message -> its OpenAI messages: a user turn's tool results (tool messages) then its text, an
    assistant turn's text and tool calls in one message."""
    if isinstance(content, str):
        protocol.check_text([content], f"{where}.content")
        return [{"role": role, "content": content}]
    if not isinstance(content, list) or not content:
        raise bad(f"{where}.content", "expected a string or a non-empty list of content blocks")
    texts, calls, results = [], [], []
    for k, block in enumerate(content):
        here = f"{where}.content[{k}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind in MEDIA:
            raise _media(here, kind)
        if not isinstance(kind, str) or kind not in BLOCK_FIELDS:  # a list or object as the type: unhashable
            raise bad(here, f"got a block of type {kind!r:.40}; allowed: {', '.join(BLOCK_FIELDS)}")
        if role not in BLOCK_ROLES[kind]:
            raise bad(here, f"a {kind} block belongs in an {' or '.join(BLOCK_ROLES[kind])} message, not a {role} one")
        known_fields(block, BLOCK_FIELDS[kind], here, f"a {kind} block")
        if kind == "text":
            texts.append(_text(block, here))
        elif kind == "tool_use":
            calls.append(_call(block, here))
        elif kind == "tool_result":
            results.append(_result(block, here))
        else:  # thinking, redacted_thinking: checked, then dropped
            _check_thinking_block(block, kind, here)
    text = "\n".join(texts)  # text blocks joined as the chat endpoint joins text parts
    protocol.check_text([text], f"{where}.content")
    if role == "assistant":
        return [{"role": "assistant", "content": text or None, "tool_calls": calls} if calls
                else {"role": "assistant", "content": text}]
    return results + ([{"role": "user", "content": text}] if texts or not results else [])


def _call(block: dict, where: str) -> dict:
    """A tool_use block -> OpenAI's tool call (its input as the JSON arguments)."""
    for name in ("id", "name"):
        if not isinstance(block.get(name), str) or not block[name]:
            raise bad(f"{where}.{name}", "required: a non-empty string")
    if not isinstance(block.get("input"), dict):
        raise bad(f"{where}.input", "required: the call's input, a JSON object")
    return {"id": block["id"], "type": "function",
            "function": {"name": block["name"], "arguments": json.dumps(block["input"], ensure_ascii=False)}}


def _result(block: dict, where: str) -> dict:
    """A tool_result block -> a tool message (its content: a string, or text blocks joined; absent: empty; with
    ``is_error``: marked, ``error_marked``)."""
    if not isinstance(block.get("tool_use_id"), str) or not block["tool_use_id"]:
        raise bad(f"{where}.tool_use_id", "required: the id of the tool_use block this answers")
    if block.get("is_error") is not None and not isinstance(block["is_error"], bool):
        raise bad(f"{where}.is_error", "expected true or false")
    content = block.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") in MEDIA:
                raise _media(f"{where}.content[{j}]", part["type"])
            parts.append(_text(part, f"{where}.content[{j}]"))
        content = "\n".join(parts)
    elif not isinstance(content, str):
        raise bad(f"{where}.content", "expected a string or a list of text blocks")
    protocol.check_text([content], f"{where}.content")
    if block.get("is_error"):
        content = error_marked(content)
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": content}


def error_marked(content: str) -> str:
    """A failed tool's result (``is_error: true``) as the model reads it: ``ERROR_MARK`` before its content. Chat
    templates render a tool message's content alone, with no place for a flag, so without a mark the model would
    take an error message for the tool's answer; Anthropic's docs show error results written this way
    ("Error: Missing required 'location' parameter"), so content that already begins so is left as it is."""
    if content.startswith(ERROR_MARK):
        return content
    return ERROR_MARK + content if content else ERROR_MARK.rstrip()


def _media(where: str, kind: str) -> APIError:
    """The 400 for an image or document block."""
    return bad(where, f"{kind} blocks are not supported: this server's models read text only")


def _check_thinking_block(block: dict, kind: str, where: str) -> None:
    """A thinking block ({"thinking", "signature"}) or redacted_thinking block ({"data"}) of an assistant turn:
    its fields checked (strings), then the block dropped."""
    for name in (("thinking", "signature") if kind == "thinking" else ("data",)):
        if block.get(name) is not None and not isinstance(block[name], str):
            raise bad(f"{where}.{name}", f"expected a string, got {type(block[name]).__name__}")


def _tools(value) -> list[dict]:
    """``tools`` -> OpenAI's function tools (their schemas are checked by ``tools.check``, errors renamed by
    ``renamed``)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad("tools", 'expected a list of {"name", "description", "input_schema"} objects')
    out = []
    for i, t in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(t, dict):
            raise bad(where, 'expected {"name", "description", "input_schema"}')
        if t.get("type") not in (None, "custom"):
            raise bad(f"{where}.type", f"{t['type']!r:.60} is a server tool Anthropic runs; this server runs none "
                                       "(client tools only: name, description, input_schema)")
        known_fields(t, TOOL_FIELDS, where, "a tool")
        if not isinstance(t.get("name"), str):
            raise bad(f"{where}.name", "required: a string")
        if not isinstance(t.get("input_schema"), dict):
            raise bad(f"{where}.input_schema", "required: the JSON Schema of the tool's input (an object)")
        function = {"name": t["name"], "parameters": t["input_schema"]}
        for name in ("description", "strict"):
            if t.get(name) is not None:
                function[name] = t[name]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(value, names: list[str]) -> dict:
    """``tool_choice`` -> {"tool_choice", "parallel_tool_calls"} in OpenAI's shapes ({} when absent)."""
    if value is None:
        return {}
    kind = value.get("type") if isinstance(value, dict) else None
    if not isinstance(kind, str) or kind not in CHOICE_FIELDS:  # a list or object as the type: unhashable
        raise bad("tool_choice", 'expected {"type": "auto" | "any" | "none"} or {"type": "tool", "name": ...}')
    known_fields(value, CHOICE_FIELDS[kind], "tool_choice", f"a tool_choice of type {kind!r}")
    if kind != "none" and not names:
        raise bad("tool_choice", f"{kind!r} needs tools: the request has none")
    out = {}
    if kind == "tool":
        if value.get("name") not in names:
            raise bad("tool_choice.name", f"{value.get('name')!r:.60} is not one of the tools "
                                          f"({', '.join(names)})")
        out["tool_choice"] = {"type": "function", "function": {"name": value["name"]}}
    else:
        out["tool_choice"] = CHOICES[kind]
    disable = value.get("disable_parallel_tool_use")
    if disable is not None:
        if not isinstance(disable, bool):
            raise bad("tool_choice.disable_parallel_tool_use", "expected true or false")
        out["parallel_tool_calls"] = not disable
    return out


def _stop_sequences(value) -> list[str]:
    """``stop_sequences`` -> the stop strings (a list of up to ``MAX_STOP_SEQUENCES`` non-empty strings)."""
    if value is None:
        return []
    if (not isinstance(value, list) or len(value) > MAX_STOP_SEQUENCES
            or not all(isinstance(s, str) and s for s in value)):
        raise bad("stop_sequences", f"expected a list of up to {MAX_STOP_SEQUENCES} non-empty strings")
    protocol.check_text(value, "stop_sequences")
    return list(value)


def _check_metadata(value) -> None:
    """``metadata`` ({"user_id": string | null}): checked, then ignored."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise bad("metadata", 'expected {"user_id": ...}')
    known_fields(value, ("user_id",), "metadata", "metadata")
    if value.get("user_id") is not None and not isinstance(value["user_id"], str):
        raise bad("metadata.user_id", "expected a string")


def _check_thinking(value) -> None:
    """``thinking`` ({"type": "enabled", "budget_tokens"} | {"type": "disabled"} | {"type": "adaptive"}): checked,
    then ignored: whether the model thinks is its chat template's choice; a reply's <think> block comes back as a
    thinking content block either way (anthropic_reply.py)."""
    if value is None:
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in THINKING_TYPES:
        raise bad("thinking", f"expected {{\"type\": {' | '.join(repr(t) for t in THINKING_TYPES)}}}")
    known_fields(value, ("type", "budget_tokens", "display"), "thinking", "thinking")
    budget = value.get("budget_tokens")
    if kind == "enabled" and (not protocol._is_int(budget) or budget < 0):
        raise bad("thinking.budget_tokens", f"expected an integer >= 0, got {budget!r:.40}")


#: tools.check's names (OpenAI's) -> Anthropic's
_NAMES = [(re.compile(r"\.function\.parameters"), ".input_schema"), (re.compile(r"\.function\."), "."),
          (re.compile(r"^parallel_tool_calls"), "tool_choice.disable_parallel_tool_use")]


def renamed(exc: APIError) -> APIError:
    """An error of ``tools.check`` naming OpenAI's fields (``tools[0].function.parameters``) -> the same error
    naming Anthropic's (``tools[0].input_schema``)."""
    return protocol.renamed(exc, _NAMES)
