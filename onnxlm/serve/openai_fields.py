"""OpenAI's request fields that ask nothing of this server at their usual values, checked and then ignored, shared by
``/v1/chat/completions`` (``check_chat_extras``) and ``/v1/responses`` (responses_request.py): clients copy them
from OpenAI's examples or send them by default (``store``, ``metadata``, ``service_tier``, ``reasoning_effort``,
``modalities``, ``prompt_cache_key``, ``safety_identifier``, ``verbosity``). A value that would ask for something
this server does not do (audio, a priority tier) is a 400 naming the field and what it takes.
"""
from __future__ import annotations

from .protocol import bad

MAX_METADATA = (16, 64, 512)  # OpenAI's metadata: pairs, key length, value length
#: the values OpenAI's reasoning settings take (openai.types.shared: ReasoningEffort, Reasoning.summary)
REASONING_VALUES = {"effort": ("none", "minimal", "low", "medium", "high", "xhigh", "max"),
                    "summary": ("auto", "concise", "detailed"), "generate_summary": ("auto", "concise", "detailed")}
#: chat's fields taken at these values only (null: absent), and what each is
CHAT_NEUTRAL = {"service_tier": ((None, "auto", "default"), "a priority tier"),
                "modalities": ((None, ["text"]), "output other than text"),
                "audio": ((None,), "audio output"),
                # null where a client serialises its whole request model (OpenAI's deprecated function calling: send
                # tools and tool_choice; web search)
                "functions": ((None,), "deprecated functions (send tools)"),
                "function_call": ((None,), "deprecated function_call (send tool_choice)"),
                "web_search_options": ((None,), "web search")}


def check_metadata(value) -> None:
    """``metadata``: up to 16 string pairs (keys up to 64 characters, values up to 512), as OpenAI's."""
    if value is None:
        return
    pairs, key_len, value_len = MAX_METADATA
    if not isinstance(value, dict) or len(value) > pairs:
        raise bad("metadata", f"expected an object of up to {pairs} string pairs")
    for k, v in value.items():
        if len(k) > key_len or not isinstance(v, str) or len(v) > value_len:
            raise bad(f"metadata.{k:.64}", f"expected a string of up to {value_len} characters under a key of up to "
                                           f"{key_len}")


def check_kept_nowhere(body: dict) -> None:
    """What both endpoints check and then ignore alike: ``store`` (nothing is kept either way), ``metadata`` and the
    strings ``prompt_cache_key`` (the prefix cache needs no key) and ``safety_identifier``."""
    if body.get("store") is not None and not isinstance(body["store"], bool):
        raise bad("store", "expected true or false (nothing is stored either way)")
    check_metadata(body.get("metadata"))
    for name in ("prompt_cache_key", "safety_identifier"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise bad(name, "expected a string")


def check_neutral(name: str, value, allowed: tuple, what: str | None = None) -> None:
    """400 naming ``name`` unless ``value`` is one of ``allowed`` (the values that ask nothing of this server; None:
    absent), compared by type too (False is not 0); ``what``: what another value would ask for."""
    if not any(value is v or (type(value) is type(v) and value == v) for v in allowed):
        shown = ", ".join("null" if v is None else repr(v) for v in allowed)
        asked = f"this server gives no {what}: it takes only" if what else "this server takes only"
        raise bad(name, f"got {value!r:.40}; {asked} {shown}")


def check_chat_extras(body: dict) -> None:
    """The chat endpoint's OpenAI fields that are checked and then ignored (module docstring): those of
    ``check_kept_nowhere``, ``reasoning_effort`` (whether and how long the model thinks is its chat template's
    choice: ``chat_template_kwargs`` sets what a template reads), ``verbosity``, and those of ``CHAT_NEUTRAL`` at
    their neutral values only."""
    check_kept_nowhere(body)
    for name, allowed in (("reasoning_effort", REASONING_VALUES["effort"]), ("verbosity", ("low", "medium", "high"))):
        value = body.get(name)
        if value is not None and value not in allowed:
            raise bad(name, f"got {value!r:.40}; allowed: {', '.join(allowed)} or null")
    for name, (allowed, what) in CHAT_NEUTRAL.items():
        check_neutral(name, body.get(name), allowed, what)
