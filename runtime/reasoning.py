"""A thinking model's reasoning apart from its answer: the reply's ``<think> ... </think>`` block (Qwen3, DeepSeek-R1's
distills, SmolLM3) as reasoning, the rest as the answer, as llama.cpp's ``--reasoning-format deepseek`` and vLLM's
reasoning parsers split it. The server sends it as ``reasoning_content`` (onnxlm/serve/reasoning.py); ``onnxlm chat``
prints it apart from the answer.

``reasoning_format``: ``"auto"`` (split when the chat template writes ``<think>``), ``"deepseek"`` (always split),
``"none"`` (the block stays in the answer). A reply begins inside the block when the prompt ends in an open ``<think>``
(a template that opens it, as DeepSeek-R1's distills do); a reply that ends before ``</think>`` is all reasoning. The
reasoning is stripped of the whitespace around it, the answer of the whitespace before it (``split``);
``ReasoningStream`` gives the same text piece by piece, holding back only what may be the start of a tag or of
trailing whitespace.
"""
from __future__ import annotations

from .errors import ParameterError

OPEN, CLOSE = "<think>", "</think>"
FORMATS = ("auto", "deepseek", "none")


def wanted(reasoning_format: str, template: str | None) -> bool:
    """``reasoning_format`` (ParameterError unless one of ``FORMATS``) and the chat template -> whether to split."""
    if reasoning_format not in FORMATS:
        raise ParameterError("reasoning_format", f"got {reasoning_format!r:.40}; allowed: {', '.join(FORMATS)}")
    return reasoning_format == "deepseek" or (reasoning_format == "auto" and OPEN in (template or ""))


def opened(prompt_tail: str) -> bool:
    """The prompt's last characters -> whether it leaves a ``<think>`` block open for the reply."""
    return prompt_tail.rfind(OPEN) > prompt_tail.rfind(CLOSE)


def prompt_opens(tokenizer, prompt_ids: list[int]) -> bool:
    """A rendered chat prompt's token ids -> whether the reply begins inside a ``<think>`` block: its last tokens
    decoded with the special ones, 8 of them (a template that opens the block writes it just before the reply), then
    8 times as many until a tag shows or the prompt is read whole (a prefill the reply continues may hold a long
    open block: ``continue_final_message``)."""
    n = 8
    while True:
        tail = tokenizer.decode(list(prompt_ids[-n:]), skip_special_tokens=False)
        if OPEN in tail or CLOSE in tail or n >= len(prompt_ids):
            return opened(tail)
        n *= 8


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
