"""A chat reply printed as it comes, a thinking model's ``<think>`` block apart from its answer (``onnxlm chat``).

With a split (``think`` not None, runtime/reasoning.py): the reasoning goes to stderr (dim on a terminal, left out with
``hide``), then a line end, the answer to stdout; a script that reads stdout gets the answer only, as the server's
``content``. Without one, the whole reply goes to stdout. ``close()`` gives ``split``'s (reasoning, answer) of the
whole reply (also kept as ``.reasoning`` and ``.answer``): the conversation keeps the answer.
"""
from __future__ import annotations

import sys

from onnxlm.runtime.reasoning import ReasoningStream, split

DIM, RESET = "\x1b[2m", "\x1b[0m"


class ReplyPrinter:
    """``write(piece)`` as the reply streams (or once with the whole reply), then ``close()``."""

    def __init__(self, think: bool | None, *, hide: bool = False, out=None, err=None):
        self.think = think  # None: no split; else whether the reply begins inside the block
        self.stream = None if think is None else ReasoningStream(think)
        self.out, self.err, self.hide = out or sys.stdout, err or sys.stderr, hide
        self.dim = _isatty(self.err)
        self.pieces: list[str] = []  # the raw reply
        self.thinking = False  # reasoning shown, its line not yet ended
        self.reasoning: str | None = None  # once closed: the whole reply split
        self.answer = ""

    def write(self, piece: str) -> None:
        self.pieces.append(piece)
        self._show([("content", piece)] if self.stream is None else self.stream.feed(piece))

    def close(self, *, failed: bool = False) -> tuple[str | None, str]:
        """End the reply's lines -> (reasoning or None, answer). ``failed``: the reply was refused before any of it
        came (a prompt past the context): no empty line is left for it."""
        if self.stream is not None:
            self._show(self.stream.finish())
        self._end_reasoning()
        if not failed or self.pieces:
            self.out.write("\n")
        self.out.flush()
        raw = "".join(self.pieces)
        self.reasoning, self.answer = (None, raw) if self.think is None else split(raw, self.think)
        return self.reasoning, self.answer

    def _show(self, parts: list[tuple[str, str]]) -> None:
        for kind, text in parts:
            if kind == "content":
                self._end_reasoning()
                self.out.write(text)
                self.out.flush()
            elif not self.hide:
                if not self.thinking and self.dim:
                    self.err.write(DIM)
                self.thinking = True
                self.err.write(text)
                self.err.flush()

    def _end_reasoning(self) -> None:
        if self.thinking:
            self.err.write((RESET if self.dim else "") + "\n")
            self.err.flush()
            self.thinking = False


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a terminal
        return False
