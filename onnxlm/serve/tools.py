"""Tools on /v1/chat/completions, in OpenAI's shapes: ``tools`` and ``tool_choice`` checked (400 naming the
parameter), the prompt rendered with the tools in the template's own format (runtime/tool_calls.py), the constraint
that makes ``"required"`` or a named function always a call whose arguments follow its schema, and replies turned
back into ``message.tool_calls`` (``finish_reason: "tool_calls"``), whole or as streamed ``delta.tool_calls``.

``tool_choice``: ``"none"`` (the tools are not shown to the model and its reply is text), ``"auto"`` (the default
with tools: a reply in the call format becomes calls, anything else is text), ``"required"`` (one call of any tool)
or ``{"type": "function", "function": {"name": N}}`` (one call of N); the last two are constrained. A constrained call
that the token limit cuts short comes back as OpenAI returns one, a call whose ``arguments`` are the JSON written so
far with ``finish_reason: "length"`` (``cut_call``), not as its raw text.

Streaming: text that cannot be (the start of) a call streams as content; what may be a call is held until the reply
ends, then each call is sent as two ``delta.tool_calls`` chunks: ``{index, id, type, function: {name,
arguments: ""}}`` and ``{index, function: {arguments}}``, then the ``finish_reason`` chunk.
"""
from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import dataclass, field

from onnxlm.runtime import tool_calls as fmt
from onnxlm.runtime.constraints import engine_for, make_constraint
from onnxlm.runtime.errors import InputError, ModelFileError, ParameterError

from . import reasoning
from .choices import REASONS, Choices
from .protocol import bad, check_text_within, known_fields
from .run import Run
from .streaming import chat_chunks as plain_chat_chunks, role_chunks

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for a function name
CHOICES = ("none", "auto", "required")
TOOL_FIELDS = ("type", "function")  # OpenAI's fields of a tool and of its function
FUNCTION_FIELDS = ("name", "description", "parameters", "strict")


@dataclass
class ToolRequest:
    """A request's tools: as sent (OpenAI's = transformers' shape), the choice ("none" | "auto" | "required" |
    "function" with ``name``), and the template's call format (``fmt.STYLES``)."""

    tools: list[dict]
    choice: str
    name: str | None
    parallel: bool
    style: str
    names: set[str] = field(default_factory=set)

    @property
    def forced(self) -> bool:
        """The reply must be a call (constrained)."""
        return self.choice in ("required", "function")


def check(body: dict, template: str | None) -> ToolRequest:
    """``tools``, ``tool_choice``, ``parallel_tool_calls`` -> ToolRequest (400 naming the parameter)."""
    tools = body.get("tools")
    if tools is None:
        tools = []
    if not isinstance(tools, list):
        raise bad("tools", 'expected a list of {"type": "function", "function": {"name", "description", '
                           '"parameters"}} objects')
    names: list[str] = []
    for i, t in enumerate(tools):
        names.append(_check_tool(t, f"tools[{i}]", names))
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise bad("parallel_tool_calls", f"expected true or false, got {parallel!r}")
    choice, name = _choice(body.get("tool_choice"), names)
    for i, t in enumerate(tools):  # every tool's, whatever tool_choice: a malformed schema never reaches the prompt
        _check_parameters(t["function"].get("parameters"), f"tools[{i}].function.parameters")
    return ToolRequest(tools, choice, name, parallel is not False, fmt.template_style(template), set(names))


def _check_tool(t, where: str, names: list[str]) -> str:
    """One entry of ``tools``: its fields and its function's (not yet its schema's contents) -> the function's name
    (400 naming the field)."""
    if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
        raise bad(where, 'expected {"type": "function", "function": {"name", "description", "parameters"}}')
    known_fields(t, TOOL_FIELDS, where, "a tool")  # (a misspelt "parameters": a function without its schema)
    f = t["function"]
    known_fields(f, FUNCTION_FIELDS, f"{where}.function", "a function")
    if not isinstance(f.get("name"), str) or not NAME.match(f["name"]):
        raise bad(f"{where}.function.name", f"got {f.get('name')!r}; allowed: 1 to 64 of a-z, A-Z, 0-9, _ and -")
    if f["name"] in names:
        raise bad(f"{where}.function.name", f"{f['name']!r} is given twice; function names must be unique")
    if f.get("description") is not None and not isinstance(f["description"], str):
        raise bad(f"{where}.function.description", "expected a string")
    params = f.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise bad(f"{where}.function.parameters", "expected a JSON Schema object")
    kind = (params or {}).get("type", "object")
    if kind != "object" and not (isinstance(kind, list) and "object" in kind):
        raise bad(f"{where}.function.parameters", f'got "type": {json.dumps(kind)}; a call\'s arguments are '
                                                  'a JSON object: "type": "object" (or no type)')
    if f.get("strict") is not None and not isinstance(f["strict"], bool):
        raise bad(f"{where}.function.strict", "expected true or false")
    check_text_within(f, f"{where}.function")  # shown to the template: a lone surrogate named here, not in messages
    return f["name"]


def _check_parameters(params, where: str) -> None:
    """A function's ``parameters`` schema -> 400 naming ``where`` where JSON Schema's meta-schema refuses it
    (``_structure_problem``). Only that: a schema is read by llguidance only for a forced call (``constraint``,
    which refuses what it cannot enforce); without one it is shown to the model, and a well-formed schema that
    llguidance could not enforce (a pydantic set's uniqueItems, "not") must still pass."""
    if not params:
        return
    problem = _structure_problem(params)
    if problem:
        raise bad(where, f"invalid JSON Schema: {problem[:300]}")


def _structure_problem(schema) -> str | None:
    """The first mistake JSON Schema's own meta-schema finds in ``schema`` ("where: what"), or None: jsonschema's
    validation of the schema against the meta-schema of the draft its "$schema" names (else 2020-12): type names,
    schemas where schemas go, lists where lists go. A schema nested past Python's recursion limit is refused too."""
    from jsonschema import exceptions, validators

    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    try:
        error = exceptions.best_match(cls(cls.META_SCHEMA).iter_errors(schema))
    except RecursionError:
        return "parameters: nested too deeply to read"
    if error is None:
        return None
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"parameters{where}: {error.message}"


def _choice(value, names: list[str]) -> tuple[str, str | None]:
    """``tool_choice`` -> (choice, name); default "auto" with tools, "none" without."""
    if value is None:
        return ("auto" if names else "none"), None
    if isinstance(value, str):
        if value not in CHOICES:
            raise bad("tool_choice", f"got {value!r}; allowed: 'none', 'auto', 'required', or "
                                     '{"type": "function", "function": {"name": ...}}')
        if value != "none" and not names:
            raise bad("tool_choice", f"{value!r} needs tools: the request has none")
        return value, None
    f = value.get("function") if isinstance(value, dict) else None
    if not isinstance(f, dict) or value.get("type") != "function" or not isinstance(f.get("name"), str):
        raise bad("tool_choice", 'expected "none", "auto", "required" or {"type": "function", "function": '
                                 '{"name": ...}}')
    if f["name"] not in names:
        raise bad("tool_choice", f"function {f['name']!r} is not in tools (given: {', '.join(names) or 'none'})")
    return "function", f["name"]


def render(model, messages: list[dict], treq: ToolRequest, template_vars: dict | None = None, *,
           tokenize: bool = True) -> list[int] | str:
    """Chat messages (with calls and results) and the request's tools -> prompt ids through the model's template
    (the tools are shown unless tool_choice is "none"; ``template_vars``: the request's chat_template_kwargs); 400
    naming messages when the template refuses them. ``tokenize=False``: the prompt text those ids encode."""
    shown = treq.tools if treq.choice != "none" else []
    extra = template_vars or {}
    try:
        if not fmt.needs_tools_handling(messages, shown):
            return model.render_chat(messages, tokenize=tokenize, **extra)
        msgs, tools = fmt.prepare_messages(messages, shown, treq.style)
        if treq.style == "generic" and shown and not _shows_system(model, msgs, extra):
            # a template that refuses or drops system messages: the tools' description opens the first user message
            msgs, tools = fmt.prepare_messages(messages, shown, treq.style, system_role=False)
        return model.render_chat(msgs, tokenize=tokenize, tools=tools, **extra)
    except (InputError, ModelFileError) as exc:
        raise bad("messages", str(exc)) from None


def think_of(model, ids: list[int], split: bool, treq: ToolRequest) -> bool | None:
    """How a reply after the prompt ``ids`` is split (serve/reasoning.py): None (not split) or whether it begins
    inside a ``<think>`` block. ``split``: the request's reasoning_format asks for it. A forced call after a block
    the prompt left open is split whatever reasoning_format says: its constraint closes the block first (empty), and
    the call is the answer."""
    if not (split or treq.forced):
        return None
    opened = reasoning.prompt_opens(model.tokenizer, ids)
    return opened if split or opened else None


def _shows_system(model, msgs: list[dict], extra: dict) -> bool:
    """Does the template render the system message that ``prepare_messages`` put first (the generic tools'
    description)? Its prompt text is rendered and searched for that description's first line; a template that
    refuses it (raise_exception) does not (Phi-3-mini's drops it silently: only user / assistant)."""
    if msgs[0].get("role") != "system":
        return True
    try:
        return fmt.GENERIC_PROMPT.split("\n", 1)[0] in model.render_chat(msgs, tokenize=False, **extra)
    except InputError:
        return False


async def constraint(model, treq: ToolRequest, ids: list[int]):
    """The constraint of a forced call ("required" or a named function) after the prompt ``ids``, compiled off the
    event loop, or None. A prompt that leaves a ``<think>`` block open (QwQ, DeepSeek-R1's distills) has the call
    close it first (``fmt.THINK_CLOSED``), so that the call is the reply's content, not its reasoning."""
    if not treq.forced:
        return None
    prefix = fmt.THINK_CLOSED if reasoning.prompt_opens(model.tokenizer, ids) else ""
    try:  # without the 'structured' extra (or a tokenizer, an EOS): a 400 naming tool_choice
        engine = engine_for(model, model.generation_config.eos_token_ids, "tool_choice")
    except ParameterError as exc:
        raise bad("tool_choice", f"{treq.name or treq.choice!r} cannot be enforced: "
                                 f"{str(exc).split(': ', 1)[-1]}") from None
    try:  # a schema llguidance refuses: a 400 naming tools
        marker = {"calls_marker": _calls_marker(model)} if treq.style == "mistral" else {}
        c = make_constraint("grammar", fmt.call_grammar(treq.tools, treq.style, treq.name, prefix=prefix, **marker))
        await asyncio.to_thread(engine.compile, c)
        return c
    except ParameterError as exc:
        raise bad("tools", f"cannot constrain the call: {str(exc).split(': ', 1)[-1]}") from None


def _calls_marker(model) -> str:
    """Mistral's ``[TOOL_CALLS]`` in a grammar: its token (``<[id]>``) where the tokenizer holds it as one special
    token, as the model writes it, else its text."""
    tok = model.tokenizer
    token = tok.token_to_id(fmt.MISTRAL_CALLS) if tok is not None else None
    return f"<[{token}]>" if token is not None and token in tok.special_ids else json.dumps(fmt.MISTRAL_CALLS)


def _api_call(name: str, arguments: str) -> dict:
    """One of OpenAI's tool_calls (``arguments``: the JSON string)."""
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
            "function": {"name": name, "arguments": arguments}}


def _api_calls(calls: list[tuple[str, dict]], treq: ToolRequest) -> list[dict]:
    """[(name, arguments)] -> OpenAI's tool_calls (arguments as a JSON string); one when parallel calls are off."""
    if not treq.parallel:
        calls = calls[:1]
    return [_api_call(name, json.dumps(args, ensure_ascii=False)) for name, args in calls]


def cut_call(text: str, reason: str, treq: ToolRequest) -> dict | None:
    """A forced call that the token limit cut short (``reason`` "length", its text not a whole call) -> the call as
    far as it was written, as OpenAI returns one: a tool call whose ``arguments`` are the JSON written so far, which
    the finish reason "length" (the Responses API: the item's ``status: "incomplete"``) tells apart from a whole
    one; None for any other reply. Only a forced call's text is known to be a call: its constraint
    (``fmt.call_grammar``) writes exactly the style's opening, ``{"name": "N", "<arguments key>": `` and the
    arguments (an unforced reply cut mid-text stays text). The name is the function whose opening the text starts
    with, or, cut within it, the one function the text can still begin;
    the arguments are what follows, ending with the JSON value where only the closing of the call was cut. Cut
    before the name was settled (several tools still fit what was written), it is no call: None (the text stays
    text, which a client may send back; a call named "" or "get_" it could not)."""
    if not treq.forced or reason != "length" or not text:
        return None
    # runtime/tool_calls.py's format: the qwen style's opening line, mistral's array, the JSON styles' arguments key
    opening = {"qwen": fmt.QWEN_OPEN + "\n", "mistral": "["}.get(treq.style, "")
    if treq.style == "mistral":  # its marker as text (not one special token), and v0.3's space after it
        text = text[len(fmt.MISTRAL_CALLS):] if text.startswith(fmt.MISTRAL_CALLS) else text
        text = text.lstrip()
    names = [treq.name] if treq.name else [t["function"]["name"] for t in treq.tools]
    heads = {n: f'{opening}{{"name": {json.dumps(n)}, "{fmt.args_key(treq.style)}": ' for n in names}
    for name, head in heads.items():
        if text.startswith(head):
            return _api_call(name, _json_value_written(text[len(head):]))
    begun = [name for name, head in heads.items() if head.startswith(text)]
    if len(begun) != 1:  # not the constraint's call (a reasoning block took the text), or cut before its name was
        return None      # settled (several tools still fit): left as text, never a call of a name no tool has
    return _api_call(begun[0], "")


def _json_value_written(text: str) -> str:
    """The start of a JSON value and whatever follows -> the value where it is whole (the call's closing after it
    was cut), else all of ``text`` (the value was cut)."""
    try:
        _, end = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError):
        return text
    return text[:end]


def message(text: str, reason: str, treq: ToolRequest, think: bool | None = None) -> tuple[dict, str]:
    """A choice's reply and finish reason -> (OpenAI's message, finish reason): ``think`` (not None) splits off the
    reasoning (serve/reasoning.py: ``reasoning_content``), calls are parsed from the rest unless "none"."""
    head = {"role": "assistant"}
    if think is not None:
        thought, text = reasoning.split(text, think)
        if thought:
            head["reasoning_content"] = thought
    if treq.choice == "none":
        return {**head, "content": text}, reason
    content, calls = fmt.parse_reply(text, treq.style, treq.names)
    if not calls:
        cut = cut_call(text, reason, treq)
        if cut is not None:  # a forced call cut short: the call so far, finish reason "length"
            return {**head, "content": None, "tool_calls": [cut]}, reason
        return {**head, "content": text}, reason
    return {**head, "content": content, "tool_calls": _api_calls(calls, treq)}, _calls_reason(reason)


def _calls_reason(reason: str) -> str:
    """The finish reason of a reply holding calls: "tool_calls", unless the token limit cut it ("length", as OpenAI
    and llama.cpp's server say it)."""
    return "length" if reason == "length" else "tool_calls"


def reply_chunks(run: Run, samp, choices: Choices, head: dict, treq: ToolRequest, think: bool | None = None):
    """The chat stream a reply gets: the plain one (streaming.chat_chunks) where no call can come (``tool_choice``
    "none", or no tools), else the one that holds a possible call back (``chat_chunks``)."""
    if treq.choice == "none":
        return plain_chat_chunks(run, samp, choices, head, think)
    return chat_chunks(run, samp, choices, head, treq, think)


async def chat_chunks(run: Run, samp, choices: Choices, head: dict, treq: ToolRequest, think: bool | None = None):
    """The chat stream with tools: reasoning as ``delta.reasoning_content`` (``think``: serve/reasoning.py), content
    as it comes unless it may be a call (held to the end, then sent as ``delta.tool_calls``); the last chunk's finish
    reason is "tool_calls" when calls were sent."""
    streams, split = {}, reasoning.Splitter(think)
    for chunk in role_chunks(head, samp.n):
        yield chunk
    async for kind, i, what, payload in run.items():
        if what != "events":
            continue
        for index, ev in choices.add_events(i, payload):
            cs = streams.setdefault(index, fmt.CallStream(treq.style, treq.names))
            lp = choices.stream_logprobs_chat(index, ev) if samp.logprobs is not None else None
            thought, text = split.event(index, ev.text or "", ev.finished)
            if thought:
                yield _chunk(head, index, {"reasoning_content": thought}, None)
            shown = cs.feed(text) if text else ""
            if shown or lp is not None:
                yield _chunk(head, index, {"content": shown}, lp)
            if not ev.finished:
                continue
            rest, calls = cs.finish()
            cut = None if calls or cs.shown else cut_call(rest or "", REASONS[ev.reason], treq)
            if cut is not None:  # a forced call cut short (message): sent as the call so far, finish "length"
                rest = None
            if rest:
                yield _chunk(head, index, {"content": rest}, None)
            api = _api_calls(calls, treq) if cut is None else [cut]
            for k, call in enumerate(api):
                fn = call["function"]
                yield _chunk(head, index, {"tool_calls": [{"index": k, "id": call["id"], "type": "function",
                                                           "function": {"name": fn["name"], "arguments": ""}}]}, None)
                yield _chunk(head, index, {"tool_calls": [{"index": k, "function": {"arguments": fn["arguments"]}}]},
                             None)
            reason = _calls_reason(REASONS[ev.reason]) if api and cut is None else REASONS[ev.reason]
            yield {**head, "choices": [{"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}]}


def _chunk(head: dict, index: int, delta: dict, lp) -> dict:
    return {**head, "choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": None}]}
