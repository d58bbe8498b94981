"""Incremental detokenization: turn a growing list of ids into text increments that never split a character."""
from __future__ import annotations

from typing import Callable


class IncrementalText:
    """Feed ids one at a time; `push` returns the newly printable text.

    Bytes of an unfinished multi-byte character decode to U+FFFD at the end; such a tail is held back until a
    later token completes it. With stop strings, the last `hold` characters are held back too (they could be
    the start of a stop string), so that streamed text equals the final, cut text.
    """

    def __init__(self, decode: Callable[[list[int]], str], hold: int = 0):
        self.decode, self.hold = decode, hold
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already returned

    def push(self, token_id: int | None) -> str:
        """Add one id (None adds nothing) -> new text, '' when nothing is safely printable yet."""
        if token_id is not None:
            self.ids.append(int(token_id))
        text = self.decode(self.ids)
        end = len(text)
        while end > self.emitted and text[end - 1] == "\ufffd":
            end -= 1
        end = max(self.emitted, end - self.hold)
        new, self.emitted = text[self.emitted:end], end
        return new

    def finish(self, final_text: str) -> str:
        """At the row's end: the rest of `final_text` (the cut, complete text) not yet returned."""
        rest = final_text[self.emitted:]
        self.emitted = len(final_text)
        return rest
