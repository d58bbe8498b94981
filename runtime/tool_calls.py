"""Tool calls and chat templates: which call format a template speaks, how tools and past calls are rendered, the
grammar that makes a model write a call, and reading calls back out of a reply (whole, or as it streams).

Tools are OpenAI's / transformers' shape: ``{"type": "function", "function": {"name", "description", "parameters"}}``
(``parameters`` a JSON Schema). Past calls are an assistant message's ``tool_calls`` (``[{"id", "type": "function",
"function": {"name", "arguments"}}]``) and their results ``{"role": "tool", "tool_call_id", "content"}`` messages.

Formats (``template_style``):

``"qwen"``     Qwen 2.5/3 and Hermes-style templates (they write ``<tool_call>`` and their code reads the variable
               ``tools``, not only e.g. SmolLM3's ``xml_tools``): the template
               renders the tools itself (``tools=`` as transformers' ``apply_chat_template(messages, tools=...)``);
               a call is ``<tool_call>\\n{"name": N, "arguments": {...}}\\n</tool_call>``, several in a row, text may
               come before. (Templates whose calls inside ``<tool_call>`` are not JSON, ``<function=...>`` or
               ``<arg_key>``, are not this style: generic.)
``"llama3"``   Llama 3.1-3.3 templates (``<|start_header_id|>``, ``"parameters": ``): the template renders the tools;
               a call is the whole reply ``{"name": N, "parameters": {...}}``, optionally after ``<|python_tag|>``.
``"mistral"``  Mistral's v3 templates (Mistral Nemo, 7B v0.3: ``[AVAILABLE_TOOLS]`` / ``[TOOL_CALLS]``, reading
               ``tools``): the template renders the tools; a call is the whole reply ``[TOOL_CALLS][{"name": N,
               "arguments": {...}, "id": I}, ...]`` (the control token decodes to nothing: the JSON array alone is
               read too; a forced call writes the 9-character id as the model was trained to);
               call ids are given to the template as 9 letters and digits, as it requires (``mistral_id``).
``"generic"``  any other template: the template never sees ``tools``; they are described in a system message
               (``GENERIC_PROMPT``: appended to the first system message, or a new first one; for a template that
               refuses system messages, the start of the first user message) and a call is the whole reply
               ``{"name": N, "arguments": {...}}``. Past calls become the assistant's text in that format, tool results
               a user message ``The tool N returned: ...`` (consecutive results, and a user message right after
               them, merged into one), so templates that only know system/user/assistant render them.

Arguments in past calls may be JSON strings (OpenAI's wire form): native templates get them as dicts, as
transformers documents. A reply is read back with ``parse_reply``; a stream with ``CallStream``.
"""
from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["STYLES", "GENERIC_PROMPT", "template_style", "needs_tools_handling", "prepare_messages",
           "call_grammar", "parse_reply", "CallStream", "mistral_id"]

STYLES = ("qwen", "llama3", "mistral", "generic")
QWEN_OPEN, QWEN_CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
MISTRAL_CALLS = "[TOOL_CALLS]"  # Mistral's control token before a reply's JSON array of calls
MISTRAL_ID_LENGTH = 9  # Mistral's templates take call ids of 9 letters and digits
THINK_CLOSED = "</think>\n\n"  # a forced call's start where the prompt leaves a <think> block open (Qwen3's form)
NOT_JSON_CALLS = ("<function=", "<arg_key>")  # <tool_call> templates whose calls are not JSON (Qwen3-Coder, GLM-4.5)
NO_PARAMETERS = {"type": "object", "properties": {}}  # a function without (or with empty) parameters: {} arguments
TOOLS_VARIABLE = re.compile(r"\btools\b")  # a template reading the variable ``tools`` (a word of its own)
_JINJA_CODE = re.compile(r"\{[{%](.*?)[%}]\}", re.DOTALL)  # a jinja statement's or expression's code
_JINJA_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", re.DOTALL)  # a string literal in it
_QWEN_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)

GENERIC_PROMPT = (
    "You can call the following tools (functions). Each is given as JSON with its name, description and the JSON "
    "Schema of its arguments:\n{tools}\n\n"
    'To call a tool, reply with only a JSON object {{"name": <tool name>, "arguments": <the arguments as an '
    "object>}} and nothing else. Otherwise reply normally."
)


# ---------------------------------------------------------------------------------------------------- formats
def template_style(template: str | None) -> str:
    """A chat template's text -> "qwen" | "llama3" | "generic" (see the module doc)."""
    t = template or ""
    takes_tools = _reads_tools(t)  # not SmolLM3's xml_tools / python_tools (nor "<tools>" in its strings)
    if takes_tools and QWEN_OPEN in t and not any(x in t for x in NOT_JSON_CALLS):
        return "qwen"
    if takes_tools and "<|start_header_id|>" in t and '"parameters": ' in t:
        return "llama3"
    if takes_tools and MISTRAL_CALLS in t and "[ARGS]" not in t:  # Nemo / v3's JSON array (not v11's name[ARGS]{})
        return "mistral"
    return "generic"


def _reads_tools(template: str) -> bool:
    """Does the template's jinja code (``{% ... %}``, ``{{ ... }}``, its string literals aside) read the variable
    ``tools``? SmolLM3's writes "<tools></tools>" in strings and reads only its own ``xml_tools``."""
    return any(TOOLS_VARIABLE.search(_JINJA_STRING.sub("", code)) for code in _JINJA_CODE.findall(template))


def mistral_id(call_id: Any, turn: int, index: int) -> str:
    """An OpenAI call id ("call_..." or any string) -> 9 letters and digits, the same for a call and the tool result
    that names it (a hash of it); a missing id -> one made of its place in the conversation."""
    import hashlib
    key = call_id if isinstance(call_id, str) and call_id else f"turn{turn}-call{index}"
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:MISTRAL_ID_LENGTH]


def args_key(style: str) -> str:
    return "parameters" if style == "llama3" else "arguments"


def needs_tools_handling(messages: list[dict], tools: list[dict] | None) -> bool:
    """Tools given, or a past call / tool result in the history."""
    return bool(tools) or any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)


# ---------------------------------------------------------------------------------------------------- rendering
def _as_object(arguments: Any) -> Any:
    """A call's arguments as sent (a JSON string, OpenAI's form, or already an object) -> the object when it is one."""
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments)
        except (ValueError, RecursionError):
            return arguments
        return value if isinstance(value, dict) else arguments
    return arguments


def _call_text(name: str, arguments: Any, style: str) -> str:
    """One call in a JSON style's text (a past call rendered for a generic template)."""
    return json.dumps({"name": name, args_key(style): _as_object(arguments)}, ensure_ascii=False)


def _tool_brief(tool: dict) -> dict:
    f = tool.get("function", {})
    out = {"name": f.get("name")}
    if f.get("description"):
        out["description"] = f["description"]
    out["parameters"] = f.get("parameters") or NO_PARAMETERS
    return out


def generic_system_text(tools: list[dict]) -> str:
    """The generic format's description of ``tools`` (one JSON line per tool)."""
    return GENERIC_PROMPT.format(tools="\n".join(json.dumps(_tool_brief(t), ensure_ascii=False) for t in tools))


def prepare_messages(messages: list[dict], tools: list[dict] | None, style: str, *,
                     system_role: bool = True) -> tuple[list[dict], list[dict] | None]:
    """Chat messages with tool calls/results and the tools to show -> (messages for the template, ``tools=`` for
    the template). Native styles: calls' arguments as objects, a tool result named after its call, the tools
    passed through. Generic: calls and results turned into text, the tools described in a system message (or in the
    first user message when ``system_role`` is False), ``tools=`` None. ``tools`` empty/None: no tools shown."""
    names = {}  # call id -> function name, to name tool results
    unanswered: list[str] = []  # mistral: the last calls' ids their results have not named yet
    out: list[dict] = []
    pending: list[str] = []  # generic: tool results waiting to become one user message
    for m in messages:
        m = dict(m)
        calls = m.get("tool_calls") or []
        for c in calls:
            if c.get("id"):
                names[c["id"]] = c.get("function", {}).get("name")
        if style != "generic":
            if calls:
                m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": _as_object(
                    c["function"].get("arguments"))}} for c in calls]
                if style == "mistral":  # the ids the template requires; a result without one takes its call's
                    m["tool_calls"] = [{**c, "id": mistral_id(c.get("id"), len(out), k)}
                                       for k, c in enumerate(m["tool_calls"])]
                    unanswered = [c["id"] for c in m["tool_calls"]]
            if m.get("content") is None:
                m["content"] = ""
            if m.get("role") == "tool" and not m.get("name") and names.get(m.get("tool_call_id")):
                m["name"] = names[m["tool_call_id"]]
            if style == "mistral" and m.get("role") == "tool":
                given = m.get("tool_call_id")
                m["tool_call_id"] = (mistral_id(given, len(out), 0) if isinstance(given, str) and given
                                     else unanswered[0] if unanswered else mistral_id(None, len(out), 0))
                if m["tool_call_id"] in unanswered:
                    unanswered.remove(m["tool_call_id"])
            out.append(m)
            continue
        # generic: 1. a tool result waits, to be merged with the next results and a user message after them
        if m.get("role") == "tool":
            name = m.get("name") or names.get(m.get("tool_call_id")) or "tool"
            pending.append(f"The tool {name} returned: {m.get('content') or ''}")
            continue
        if pending:
            text = "\n\n".join(pending)
            pending = []
            if m.get("role") == "user":
                m["content"] = text + "\n\n" + (m.get("content") or "")
            else:
                out.append({"role": "user", "content": text})
        # 2. a past call becomes the assistant's text in the generic format
        if calls:
            lines = [_call_text(c["function"]["name"], c["function"].get("arguments"), style) for c in calls]
            m["content"] = "\n".join(([m["content"]] if m.get("content") else []) + lines)
            m.pop("tool_calls")
        if m.get("content") is None:
            m["content"] = ""
        out.append(m)
    if pending:
        out.append({"role": "user", "content": "\n\n".join(pending)})
    if style != "generic":
        return out, (list(tools) if tools else None)
    if tools:
        text = generic_system_text(tools)
        if not system_role:  # 3. no system role: the description opens the first user message
            first = next((i for i, m in enumerate(out) if m.get("role") == "user"), None)
            if first is None:
                out.insert(0, {"role": "user", "content": text})
            else:
                out[first] = {**out[first], "content": text + "\n\n" + out[first]["content"]}
        elif out and out[0].get("role") == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + text}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out, None


# ---------------------------------------------------------------------------------------------------- grammar
def call_grammar(tools: list[dict], style: str, name: str | None = None, *, prefix: str = "",
                 calls_marker: str = json.dumps(MISTRAL_CALLS)) -> str:
    """A Lark grammar (llguidance's syntax) for exactly one call in ``style``: of the function ``name``, or of any of
    ``tools``; its arguments follow that function's ``parameters`` schema. JSON is written with ``", "`` and
    ``": "`` separators (as the templates render calls) and no other free whitespace. ``prefix``: text written
    before the call (``THINK_CLOSED``: the prompt left a ``<think>`` block open, which the reply closes first).
    ``calls_marker``: the mistral style's opening in Lark (its text, or ``<[id]>`` where the tokenizer holds it as one
    special token)."""
    key = args_key(style)
    options, defs = [], {}
    for t in tools:
        f = t["function"]
        if name is not None and f["name"] != name:
            continue
        params = f.get("parameters") or NO_PARAMETERS
        if _has_local_ref(params):  # its "#..." refs resolve against it: it moves to the root's $defs, refs along
            where = f"arguments_of_{f['name']}"
            defs[where] = _rebased(params, f"#/$defs/{where}")
            params = {**({"type": "object"} if params.get("type") == "object" else {}),
                      "$ref": f"#/$defs/{where}"}
        if params.get("type") != "object":  # arguments are an object, also where the schema only implies it
            params = {"allOf": [{"type": "object"}, params]}
        fields = {"name": {"const": f["name"]}, key: params}
        if style == "mistral":  # Mistral's calls carry their id last (mistral-common's encoding, llama.cpp's grammar)
            fields["id"] = {"type": "string", "pattern": f"^[a-zA-Z0-9]{{{MISTRAL_ID_LENGTH}}}$"}
        options.append({"type": "object", "properties": fields, "required": list(fields),
                        "additionalProperties": False})
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    schema = {**schema, **({"$defs": defs} if defs else {}),
              "x-guidance": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}}
    from .constraints import closed_objects  # objects listing properties take no other keys, as json_schema's do
    call = "call: %json " + json.dumps(closed_objects(schema))  # ASCII: a lone surrogate stays an escape for
    # llguidance to refuse
    head = f"{json.dumps(prefix)} " if prefix else ""
    if style == "qwen":
        return f'start: {head}"{QWEN_OPEN}\\n" call "\\n{QWEN_CLOSE}"\n{call}\n'
    if style == "mistral":  # v0.3's SentencePiece template writes "[TOOL_CALLS] [": the space is the model's
        return f'start: {head}{calls_marker} " "? "[" call "]"\n{call}\n'
    return f"start: {head}call\n{call}\n"


_NOT_SCHEMAS = ("enum", "const", "default", "examples")  # keywords whose values are data, not schemas


def _has_local_ref(schema) -> bool:
    """Does a JSON Schema hold a "$ref" into itself ("#", "#/$defs/...")? (Walked with a stack: no recursion.)"""
    stack = [schema]
    while stack:
        s = stack.pop()
        if isinstance(s, dict):
            if isinstance(s.get("$ref"), str) and s["$ref"].startswith("#"):
                return True
            stack += [v for k, v in s.items() if k not in _NOT_SCHEMAS]
        elif isinstance(s, list):
            stack += s
    return False


def _rebased(schema, base: str):
    """A JSON Schema -> a copy whose refs into itself ("#<pointer>") point at ``base<pointer>``: where the schema
    sits inside the call's grammar schema (a function's parameters nested there; their $defs stay theirs)."""
    if isinstance(schema, list):
        return [_rebased(v, base) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (v if k in _NOT_SCHEMAS else _rebased(v, base)) for k, v in schema.items()}
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        out["$ref"] = base + ref[1:]
    return out


# ---------------------------------------------------------------------------------------------------- parsing
def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


_STRICT = json.JSONDecoder(parse_constant=_refuse_constant)  # NaN / Infinity: Python's extension, not JSON


def _call_of(obj: Any, style: str, names: set[str]) -> tuple[str, dict] | None:
    """A parsed JSON value -> (name, arguments) when it is a call of a known function, else None."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or obj["name"] not in names:
        return None
    args = obj.get(args_key(style), obj.get("arguments" if style == "llama3" else "parameters"))
    if isinstance(args, str):
        try:
            args = _STRICT.decode(args)
        except (ValueError, RecursionError):
            return None
    args = {} if args is None else args
    if not isinstance(args, dict):
        return None
    try:  # a lone surrogate's escape ("\ud83d") decodes to a str no UTF-8 reply can carry: not a call
        json.dumps(args, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return None
    return obj["name"], args


def _json_calls(text: str, style: str, names: set[str]) -> list[tuple[str, dict]] | None:
    """The whole text as one or more JSON calls (separated by blanks or ';', after an optional <|python_tag|>)
    -> the calls, or None when it is anything else."""
    s = text.strip()
    if s.startswith(PYTHON_TAG):
        s = s[len(PYTHON_TAG):].lstrip()
    decoder, calls, pos = _STRICT, [], 0
    while pos < len(s):
        try:
            obj, end = decoder.raw_decode(s, pos)
        except (ValueError, RecursionError):  # not JSON, or nested past Python's stack
            return None
        call = _call_of(obj, style, names)
        if call is None:
            return None
        calls.append(call)
        pos = end
        while pos < len(s) and (s[pos].isspace() or s[pos] == ";"):  # between calls
            pos += 1
    return calls or None


def parse_reply(text: str, style: str, names: set[str]) -> tuple[str | None, list[tuple[str, dict]]]:
    """A model's reply -> (content, [(function name, arguments)]). When the reply holds calls in the style's format
    (every one of a known function, with an object of arguments), content is the text around them (None when
    blank); otherwise no calls and the whole text is the content."""
    if style == "qwen":
        at = text.find(QWEN_OPEN)
        if at < 0:
            return text, []
        before, calls = text[:at].rstrip(), _qwen_calls(text[at:], names)
        if calls is None:
            return text, []
        return _join(before, _QWEN_BLOCK.sub("", text[at:]).strip()) or None, calls
    calls = _mistral_calls(text, names) if style == "mistral" else _json_calls(text, style, names)
    return (None, calls) if calls else (text, [])


def _mistral_calls(text: str, names: set[str]) -> list[tuple[str, dict]] | None:
    """The whole text as ``[TOOL_CALLS]`` (or nothing: a decoded control token) and a JSON array of calls -> the
    calls, or None when it is anything else."""
    s = text.strip()
    if s.startswith(MISTRAL_CALLS):
        s = s[len(MISTRAL_CALLS):].lstrip()
    try:
        obj, end = _STRICT.raw_decode(s)
    except (ValueError, RecursionError):
        return None
    if s[end:].strip() or not isinstance(obj, list) or not obj:
        return None
    calls = [_call_of(o, "mistral", names) for o in obj]
    return None if any(c is None for c in calls) else calls


def _qwen_calls(text: str, names: set[str]) -> list[tuple[str, dict]] | None:
    """The <tool_call> blocks of ``text`` -> their calls, or None when one is not a call of a known function."""
    calls = []
    for block in _QWEN_BLOCK.finditer(text):
        try:
            call = _call_of(_STRICT.decode(block.group(1)), "qwen", names)
        except (ValueError, RecursionError):  # not JSON, or nested past Python's stack
            call = None
        if call is None:
            return None
        calls.append(call)
    return calls


def _join(before: str, after: str) -> str:
    """Text before the calls and after them -> the content (a newline between when both are there)."""
    return before + "\n" + after if before and after else before or after


class CallStream:
    """A reply's text as it streams -> the text that can be shown now as content, holding back whatever may be a
    call: in the qwen style everything from ``<tool_call>`` on (and a tail that may begin it, or is blank), in the
    JSON styles the whole reply once it starts with ``{`` or ``<|python_tag|>`` (mistral: ``[`` or ``[TOOL_CALLS]``;
    blank text first waits until that is known). ``finish()`` then parses what was held: (content still to show, calls). The content shown in all is
    ``parse_reply``'s content of the whole reply."""

    def __init__(self, style: str, names: set[str]):
        self.style, self.names = style, names
        self.held = ""
        self.holding = False  # the held text may be a call: keep it to the end
        self.text_mode = False  # JSON styles: the reply is text, nothing more is held
        self.shown = False  # some content was shown

    def feed(self, piece: str) -> str:
        """A piece of the reply -> the content that can be shown now ('' when all is held)."""
        out = self._feed(piece)
        self.shown = self.shown or bool(out)
        return out

    def _feed(self, piece: str) -> str:
        self.held += piece
        if self.holding:
            return ""
        if self.style == "qwen":
            at = self.held.find(QWEN_OPEN)
            if at >= 0:  # 1. a call starts: show what came before but its trailing blanks, hold the rest
                out = self.held[:at].rstrip()
                self.held, self.holding = self.held[len(out):], True
                return out
            # 2. hold a tail that may begin <tool_call>, and blanks before it (dropped if a call follows)
            cut = len(self.held) - _prefix_tail(self.held, QWEN_OPEN)
            cut = len(self.held[:cut].rstrip())
            out, self.held = self.held[:cut], self.held[cut:]
            return out
        if self.text_mode:
            out, self.held = self.held, ""
            return out
        s = self.held.lstrip()
        tag, opening = (MISTRAL_CALLS, "[") if self.style == "mistral" else (PYTHON_TAG, "{")
        if not s or tag.startswith(s):  # 3. blank, or a possible <|python_tag|> / [TOOL_CALLS]: not known yet
            return ""
        if s.startswith(opening) or s.startswith(tag):
            self.holding = True
            return ""
        self.text_mode = True  # 4. anything else is text: show it all from now on
        out, self.held = self.held, ""
        return out

    def finish(self) -> tuple[str | None, list[tuple[str, dict]]]:
        """The reply ended -> (held content to show, or None; calls)."""
        held, self.held = self.held, ""
        if not held:
            return None, []
        if self.style == "qwen":
            calls = _qwen_calls(held, self.names) if self.holding else None
            if calls is None:
                return held, []
            after = _QWEN_BLOCK.sub("", held).strip()
            return (("\n" if self.shown and after else "") + after) or None, calls
        return parse_reply(held, self.style, self.names)


def _prefix_tail(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that begins ``marker`` (0 when none)."""
    for k in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0
