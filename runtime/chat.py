"""Chat templates: render a list of messages with a model's jinja2 chat template, like transformers does.

The environment mirrors transformers' ``render_jinja_template`` (transformers/utils/chat_template_utils.py):
``ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`` with the ``loopcontrols`` extension, a
``{% generation %}`` block tag (rendered as-is), the ``raise_exception`` and ``strftime_now`` globals and a ``tojson``
filter that does not HTML-escape. Torch/transformers-free.
"""
from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any, Mapping, Sequence

from .errors import InputError

__all__ = ["render_chat", "validate_messages", "check_template_vars"]


#: the variables render_chat itself gives a template, which no extra variable may replace
RENDER_VARS = ("messages", "add_generation_prompt", "bos_token", "eos_token")
#: names no extra template variable (``chat_template_kwargs``) may take: those above, the render's own arguments
#: (``LanguageModel.render_chat``'s), and ``self`` (a bound method's, and jinja2's name for the template itself)
RESERVED_VARS = (*RENDER_VARS, "continue_final_message", "tokenize", "self")


def check_template_vars(variables, param: str = "chat_template_kwargs", *, reserved: Sequence[str] = RESERVED_VARS,
                        setter: str = "the chat rendering itself", container: str = "a dict") -> dict:
    """Extra chat-template variables -> a dict of them; a ParameterError naming ``param`` for anything but
    ``container`` (a dict) whose keys are identifiers other than ``reserved`` (names ``setter`` gives the template:
    the server adds its own)."""
    from .errors import ParameterError

    if variables is None:
        return {}
    if not isinstance(variables, dict):
        raise ParameterError(param, f"expected {container} of template variables, got {type(variables).__name__}")
    for key in variables:
        if not isinstance(key, str) or not key.isidentifier():
            raise ParameterError(param, f"{str(key)[:40]!r} is not a template variable name (an identifier)")
        if key in reserved:
            raise ParameterError(param, f"{key!r} is set by {setter}; a template variable cannot be one of "
                                        f"{', '.join(reserved)}")
    return dict(variables)


class _TemplateRaised(Exception):
    """raise_exception() called from inside a template."""


def _raise_exception(message):
    raise _TemplateRaised(str(message))


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Same as transformers: jinja's built-in tojson HTML-escapes, which chat templates do not want.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


@functools.lru_cache(maxsize=16)
def _compile(template: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _GenerationTag(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` (transformers' assistant-mask marker): renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise InputError(f"chat template: not a valid jinja2 template (line {e.lineno}: {e.message})") from e


def validate_messages(messages: Any) -> list[dict]:
    """Check ``messages`` is a non-empty list of ``{"role": str, "content": str, ...}`` dicts; return it as a list.
    A message with a non-empty ``tool_calls`` list may leave ``content`` out or None (OpenAI's form; the template
    gets the message as given).

    Extra keys are allowed (and passed to the template). Raises InputError naming the offending message.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InputError(
            f"messages: expected a list of {{'role': str, 'content': str}} dicts, got {type(messages).__name__}"
        )
    if len(messages) == 0:
        raise InputError("messages: the list is empty; give at least one {'role': ..., 'content': ...} message")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise InputError(f"messages[{i}]: expected a dict with 'role' and 'content', got {type(m).__name__}")
        calls_only = m.get("content") is None and isinstance(m.get("tool_calls"), list) and m["tool_calls"]
        for key in ("role",) if calls_only else ("role", "content"):  # OpenAI's form: tool_calls, content absent/None
            if key not in m:
                raise InputError(f"messages[{i}]: missing the {key!r} key (a message needs 'role' and 'content', "
                                 "or 'tool_calls')")
            if not isinstance(m[key], str):
                raise InputError(f"messages[{i}][{key!r}]: expected a str, got {type(m[key]).__name__}")
        if not m["role"]:
            raise InputError(f"messages[{i}]['role']: must be a non-empty string such as 'system', 'user', 'assistant'")
        out.append(dict(m))
    return out


def render_chat(
    template: str,
    messages: list[dict],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    continue_final_message: bool = False,
    **extra: Any,
) -> str:
    """Render ``messages`` with the jinja2 chat ``template`` (same output as transformers'
    ``apply_chat_template(messages, tokenize=False, add_generation_prompt=...)``).

    ``continue_final_message``: the text ends inside the last message, right after its content, so that a reply
    continues it (an assistant prefill: Anthropic's; transformers' argument of that name, with its rule: the content
    rendered with a tag after it, the text cut at the tag; an InputError where the template drops them).

    ``extra`` keyword arguments become template variables (e.g. ``tools``, ``documents``, ``pad_token``).
    Raises InputError for invalid messages, an invalid template, a template that calls ``raise_exception``, or one
    whose expressions fail on the messages and variables given (``1 / n`` with n = 0, a call of a non-function).
    """
    if not isinstance(template, str) or not template.strip():
        raise InputError("chat template: expected a non-empty jinja2 template string (the model has no chat template?)")
    messages = validate_messages(messages)
    compiled = _compile(template)
    import jinja2

    context = {"tools": None, "documents": None, **extra}
    gen = bool(add_generation_prompt) and not continue_final_message
    final = None
    if continue_final_message:  # transformers' rule: the content with a tag after it; the prompt ends at the tag
        messages, final = _tagged(messages)
    try:
        text = compiled.render(messages=messages, add_generation_prompt=gen, bos_token=bos_token,
                               eos_token=eos_token, **context)
    except _TemplateRaised as e:
        raise InputError(f"chat template rejected the messages: {e}") from None
    except jinja2.TemplateError as e:
        raise InputError(f"chat template: rendering failed: {e}") from e
    except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as e:
        # the template's own expressions on the messages and variables it was given (`1 / n`, `x[9]`, `n(...)`)
        raise InputError(f"chat template: rendering failed: {type(e).__name__}: {e}") from e
    return _continued(text, final) if continue_final_message else text


_TAG = "CONTINUE_FINAL_MESSAGE_TAG "  # transformers' tag, after the last message's text


def _tagged(messages: list[dict]) -> tuple[list[dict], str]:
    """messages -> (a copy whose last message's text ends with ``_TAG``: its string content, or its last text part,
    the text before it), as transformers' ``continue_final_message`` marks it."""
    last = dict(messages[-1])
    content = last.get("content")
    if isinstance(content, (list, tuple)):
        parts = [dict(p) if isinstance(p, dict) else p for p in content]
        for part in reversed(parts):
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                final, part["text"] = part["text"], part["text"] + _TAG
                break
        else:
            raise InputError("continue_final_message: the last message has no text to continue")
        last["content"] = parts
    elif isinstance(content, str):
        final, last["content"] = content, content + _TAG
    else:
        raise InputError("continue_final_message: the last message has no text to continue")
    if not final.strip():
        raise InputError("continue_final_message: the last message has no text to continue")
    return [*messages[:-1], last], final


def _continued(text: str, final: str) -> str:
    """A rendering of the tagged messages -> the prompt ending where the tag is (right after the last message's text
    as the template writes it; its trailing whitespace dropped where the template trimmed the tag's space), as
    transformers' ``continue_final_message``; an InputError where the template dropped the text or the tag."""
    if final.strip() not in text or _TAG.strip() not in text:
        raise InputError("continue_final_message: the chat template does not write the last message's content as "
                         "given, so the prompt cannot end inside it")
    at = text.rindex(_TAG.strip())
    return text[:at] if text[at:at + len(_TAG)] == _TAG else text[:at].rstrip()

