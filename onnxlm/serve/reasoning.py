"""A thinking model's reasoning apart from its answer on /v1/chat/completions, as llama.cpp's server returns it
(``--reasoning-format deepseek``, its default for templates that think) and vLLM's reasoning parsers do: the reply's
``<think> ... </think>`` block as ``message.reasoning_content`` (streamed as ``delta.reasoning_content``), the rest
as ``content`` (tool calls are read from the rest only).

``reasoning_format`` (a request field, llama.cpp's name): ``"auto"`` (the default: split when the chat template
writes ``<think>``: Qwen3, DeepSeek-R1's distills, SmolLM3), ``"deepseek"`` (always split), ``"none"`` (the block stays
in ``content``). A reply begins inside the block when the prompt ends in an open ``<think>`` (a template that opens
it, as DeepSeek-R1's distills do); a reply that ends before ``</think>`` is all reasoning. The reasoning is stripped
of the whitespace around it, the content of the whitespace before it (``split``); ``ReasoningStream`` gives the same
text piece by piece, holding back only what may be the start of a tag or of trailing whitespace.
"""
from __future__ import annotations

from .protocol import bad

OPEN, CLOSE = "<think>", "</think>"
FORMATS = ("auto", "deepseek", "none")


def wanted(body: dict, template: str | None) -> bool:
    """The request's ``reasoning_format`` (400 naming it unless one of ``FORMATS``) -> whether to split."""
    fmt = body.get("reasoning_format", "auto")
    if fmt not in FORMATS:
        raise bad("reasoning_format", f"got {fmt!r:.40}; allowed: {', '.join(FORMATS)}")
    return fmt == "deepseek" or (fmt == "auto" and OPEN in (template or ""))


def opened(prompt_tail: str) -> bool:
    """The prompt's last characters -> whether it leaves a ``<think>`` block open for the reply."""
    return prompt_tail.rfind(OPEN) > prompt_tail.rfind(CLOSE)


def split(text: str, inside: bool = False) -> tuple[str | None, str]:
    """A whole reply -> (reasoning or None, content); ``inside``: the reply begins inside the block."""
    if not inside:
        if not text.lstrip().startswith(OPEN):
            return None, text
        text = text.lstrip()[len(OPEN):]
    reasoning, found, rest = text.partition(CLOSE)
    return reasoning.strip(), rest.lstrip() if found else ""


def _partial_tail(text: str, tag: str) -> int:
    """How many of ``text``'s last characters are a proper prefix of ``tag`` (they may start it)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ReasoningStream:
    """``split`` piece by piece: ``feed(piece)`` and ``finish()`` return [(kind, text)], kind "reasoning" or
    "content"; their texts joined by kind equal ``split`` of the whole reply."""

    def __init__(self, inside: bool = False):
        self.state = "reasoning" if inside else "start"  # start -> reasoning -> after -> content
        self.held = ""  # text not yet given out: a possible tag start, or whitespace whose fate is open
        self.started = False  # the reasoning has given out a non-whitespace character

    def feed(self, piece: str) -> list[tuple[str, str]]:
        self.held += piece
        out: list[tuple[str, str]] = []
        while True:
            before = (self.state, self.held)
            out += self._step()
            if (self.state, self.held) == before:
                return [(k, t) for k, t in out if t]

    def finish(self) -> list[tuple[str, str]]:
        """What is held when the reply ends: an unclosed block's text (a partial tag included) less its trailing
        whitespace as reasoning, the whitespace after a block dropped, anything else as content."""
        held, self.held = self.held, ""
        if self.state == "reasoning":
            out = [("reasoning", self._reasoning(held.rstrip()))]
        else:
            out = [] if self.state == "after" else [("content", held)]
        return [(k, t) for k, t in out if t]

    def take(self, piece: str) -> tuple[str, str]:
        """``feed`` as (reasoning, content) texts: a piece may end the block and begin the answer."""
        return _by_kind(self.feed(piece))

    def rest(self) -> tuple[str, str]:
        """``finish`` as (reasoning, content) texts."""
        return _by_kind(self.finish())

    def _step(self) -> list[tuple[str, str]]:
        h = self.held
        if self.state == "start":
            s = h.lstrip()
            if s.startswith(OPEN):
                self.state, self.held = "reasoning", s[len(OPEN):]
            elif not OPEN.startswith(s):  # not a block: everything is content
                self.state = "content"
            return []
        if self.state == "reasoning":
            body, found, rest = h.partition(CLOSE)
            if found:
                self.state, self.held = "after", rest
                return [("reasoning", self._reasoning(body.rstrip()))]
            keep = _partial_tail(h, CLOSE)
            body = h[:len(h) - keep]
            text = body.rstrip()  # trailing whitespace waits: it is dropped if the block closes after it
            self.held = h[len(text):]
            return [("reasoning", self._reasoning(text))]
        if self.state == "after":
            s = h.lstrip()
            if s:
                self.state, self.held = "content", s
            else:
                self.held = ""
            return []
        self.held = ""
        return [("content", h)]

    def _reasoning(self, text: str) -> str:
        """Reasoning text given out: the block's leading whitespace dropped."""
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        return text


def _by_kind(parts: list[tuple[str, str]]) -> tuple[str, str]:
    return "".join(t for k, t in parts if k == "reasoning"), "".join(t for k, t in parts if k == "content")


class Splitter:
    """A chat stream's split, one ``ReasoningStream`` per choice: ``think`` None (no split) or whether replies begin
    inside the block."""

    def __init__(self, think: bool | None):
        self.think, self.streams = think, {}

    def event(self, index: int, text: str, finished: bool) -> tuple[str, str]:
        """Choice ``index``'s next piece (its last when ``finished``) -> (reasoning, content) to send now."""
        if self.think is None:
            return "", text
        stream = self.streams.get(index)
        if stream is None:
            stream = self.streams[index] = ReasoningStream(self.think)
        thought, content = stream.take(text)
        if finished:
            more, last = stream.rest()
            thought, content = thought + more, content + last
        return thought, content
