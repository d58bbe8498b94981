"""llama.cpp's line limits of a completion, for code completion clients (llama.vim, llama.vscode): ``n_indent`` (every
new line must be indented by at least that many spaces or tabs: the first one that is not ends the answer, cut where
its text starts) and ``t_max_predict_ms`` (once a newline was generated, the answer ends at a newline that comes
after that many milliseconds of generation). Checked on the text as it is generated, in the order llama.cpp's server
checks them after each token (``process_token``); the handler (llamacpp.py) cancels the prompt's row when one ends
it.
"""
from __future__ import annotations

import time


class LineLimits:
    """One prompt's limits: ``push`` each generated piece of text -> whether the answer ends here; ``text``: the
    answer so far (cut where llama.cpp cuts it)."""

    def __init__(self, n_indent: int, t_max_predict_ms: int):
        self.n_indent, self.t_max_ms = n_indent, t_max_predict_ms
        self.text = ""
        self.has_new_line = False
        self.last_nl = 0  # where the line after the last newline checked starts (0: none yet)
        self.started: float | None = None  # the first token's time: generation's start

    @property
    def active(self) -> bool:
        return self.n_indent > 0 or self.t_max_ms > 0

    def push(self, piece: str, now: float | None = None) -> bool:
        """The next piece of generated text -> True when the answer ends with it."""
        now = time.perf_counter() if now is None else now
        if self.started is None:
            self.started = now
        self.text += piece
        stop = False
        if self.has_new_line and self.n_indent > 0:
            if self.last_nl > 0:  # the indentation of the line after the last newline, once it has text
                pos = self.last_nl
                while pos < len(self.text) and self.text[pos] in " \t":
                    pos += 1
                if pos < len(self.text) and pos - self.last_nl < self.n_indent:
                    self.text, stop = self.text[:pos], True  # cut the line where its text starts
            nl = self.text.find("\n", self.last_nl)
            if nl != -1:
                self.last_nl = nl + 1
        if "\n" in piece:
            self.has_new_line = True
            if self.t_max_ms > 0 and (now - self.started) * 1000 > self.t_max_ms:
                stop = True
        return stop
