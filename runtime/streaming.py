"""Incremental detokenization: turn a growing list of ids into text increments that never split a character."""
from __future__ import annotations

from typing import Sequence

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream


#: prompt ids a continuation's text is decoded after (vLLM's incremental detokenizer reads ~5 the same way)
CONTEXT = 4


def decode_after(tokenizer: Tokenizer, context: Sequence[int], ids: Sequence[int],
                 skip_special_tokens: bool = True) -> str:
    """The text ``ids`` add after ``context`` (the last prompt ids): ``decode(context + ids)`` less
    ``decode(context)``. A SentencePiece decoder strips the space of a text's first word (``▁world`` alone is
    "world"), so new ids decoded alone lost the space a continuation begins with ("hello" + "world"); after their
    context they keep it, as llama.cpp's and vLLM's streams do. Where the context's text is no prefix of the whole
    (the prompt ends inside a character), the ids alone. [c] + [k] ids -> str."""
    ids = [int(i) for i in ids]
    context = [int(i) for i in context][-CONTEXT:]
    if context:
        head = tokenizer.decode(context, skip_special_tokens=skip_special_tokens)
        whole = tokenizer.decode(context + ids, skip_special_tokens=skip_special_tokens)
        if whole.startswith(head) and not head.endswith("\ufffd"):
            return whole[len(head):]
    return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


class IncrementalText:
    """Feed ids one at a time; `push` returns the newly printable text (after ``context``, the prompt's last ids:
    the text ``decode_after`` gives).

    tokenizers' `DecodeStream` decodes incrementally: each step decodes only the ids since the last complete
    character (bytes of an unfinished multi-byte character wait for the token that completes them), so a step costs
    the same however long the row is. With stop strings (`stops`), the text's longest end that begins one of them is
    held back (llama.cpp's partial-stop check: it could be the start of a stop string), so that streamed text equals
    the final, cut text (`finish`) and the rest streams with its own token. Without a tokenizer every increment is
    ''.
    """

    def __init__(self, tokenizer: Tokenizer | None, skip_special_tokens: bool = True, stops: Sequence[str] = (),
                 context: Sequence[int] = ()):
        self.tokenizer, self.skip = tokenizer, skip_special_tokens
        self.stops = [s for s in stops if s]
        self.context = [int(i) for i in context][-CONTEXT:]  # the prompt's last ids: the text continues theirs
        if self.context and tokenizer is not None and tokenizer.decode(
                self.context, skip_special_tokens=skip_special_tokens).endswith("\ufffd"):
            self.context = []  # the prompt ends inside a character: the ids alone, as decode_after reads them
        self.stream = (DecodeStream(ids=self.context, skip_special_tokens=skip_special_tokens)
                       if tokenizer is not None else None)
        self.pending = ""  # decoded, not yet returned (the held-back tail)
        self.emitted = 0  # characters already returned
        self.ids: list[int] = []  # every id pushed (re-decoded only if DecodeStream fails)
        self.fallback = False

    def push(self, token_id: int | None) -> str:
        """Add one id (None adds nothing) -> new text, '' when nothing is safely printable yet."""
        if self.tokenizer is None:
            return ""
        if token_id is not None:
            self.ids.append(int(token_id))
            self.pending += self._step(int(token_id))
        end = len(self.pending) - self._stop_start()
        new, self.pending = self.pending[:end], self.pending[end:]
        self.emitted += len(new)
        return new

    def _stop_start(self) -> int:
        """-> the length of the longest end of the held text that begins a stop string (0: none). A match to come
        begins there or later: text returned earlier could not begin one (it would have been held back then)."""
        return max((next((k for k in range(min(len(s), len(self.pending)), 0, -1) if self.pending.endswith(s[:k])), 0)
                    for s in self.stops), default=0)  # per stop string its longest such end first

    def _step(self, token_id: int) -> str:
        """-> the text this id completes, '' while a multi-byte character is unfinished."""
        if not self.fallback:
            try:
                return self.stream.step(self.tokenizer, token_id) or ""
            except Exception:  # noqa: BLE001 - DecodeStream refuses decoders whose output is not prefix-stable
                self.fallback = True  # then re-decode the whole row each step (such decoders are rare)
        text = decode_after(self.tokenizer, self.context, self.ids, self.skip)
        if text.endswith("\ufffd"):
            return ""
        return text[self.emitted + len(self.pending):]

    def finish(self, final_text: str) -> str:
        """At the row's end: the rest of `final_text` (the cut, complete text) not yet returned."""
        rest = final_text[self.emitted:]
        self.emitted = len(final_text)
        self.pending = ""
        return rest
