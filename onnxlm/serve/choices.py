"""A request's output as the API shapes it: per choice its tokens, text, finish reason and logprobs (completions'
and chat's forms), token names for ``top_logprobs``, and the usage block."""
from __future__ import annotations

from onnxlm.runtime.tokenizer import bytes_to_unicode

from .jobs import Job

REASONS = {"eos": "stop", "stop": "stop", "length": "length", None: "length"}


def token_str(model, token_id: int) -> str:
    """A token's text; a token holding part of a multi-byte character (decodes to U+FFFD) is named by its
    vocabulary string instead, so that distinct tokens never share a name in ``top_logprobs``."""
    return token_str_bytes(model, token_id)[0]


def token_str_bytes(model, token_id: int) -> tuple[str, list[int]]:
    """A token's name (``token_str``) and its raw UTF-8 bytes (OpenAI's ``bytes``: a character split over tokens is
    rebuilt by joining them): its text's, or for a token holding part of a character, the byte-level BPE string's
    bytes (GPT-2's byte alphabet) or a SentencePiece byte token's ``<0xNN>``; one decode."""
    if model.tokenizer is None:
        return str(token_id), list(str(token_id).encode("utf-8"))
    text = model.tokenizer.decode([int(token_id)], skip_special_tokens=False)
    if "\ufffd" not in text:
        return text, list(text.encode("utf-8"))
    piece = model.tokenizer.id_to_token(int(token_id))
    if not piece:
        return text, list(text.encode("utf-8"))
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return piece, [int(piece[3:5], 16)]
        except ValueError:
            pass
    if all(c in _BYTE_OF for c in piece):
        return piece, [_BYTE_OF[c] for c in piece]
    return piece, list(text.encode("utf-8"))


def token_bytes(model, token_id: int) -> list[int]:
    """A token's raw UTF-8 bytes (``token_str_bytes``)."""
    return token_str_bytes(model, token_id)[1]


_BYTE_OF = {c: b for b, c in bytes_to_unicode().items()}  # GPT-2's byte alphabet: character -> the byte it spells


def usage(jobs: list[Job], completion: int) -> dict:
    prompt = sum(len(j.ids) for j in jobs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Choices:
    """Per choice (prompt i, row j -> index i * n + j): text, tokens, logprobs, finish reason."""

    def __init__(self, model, n: int, chat: bool):
        self.model, self.n, self.chat = model, n, chat
        self.tokens: dict[int, list] = {}  # index -> [(id, logprob, top)]
        self.reasons: dict[int, str] = {}
        self.texts: dict[int, str] = {}
        self.completion_tokens = 0

    def add_events(self, i: int, events) -> list[tuple[int, object]]:
        out = []
        for ev in events:
            index = i * self.n + ev.row
            if not (self.chat and ev.reason == "eos"):  # chat: the end-of-turn token is no part of the content
                self.tokens.setdefault(index, []).append((ev.token_id, ev.logprob, ev.top_logprobs))
            self.completion_tokens += 1
            if ev.finished:
                self.reasons[index] = REASONS[ev.reason]
            out.append((index, ev))
        return out

    def logprobs_completions(self, entries, offset: int = 0) -> dict:
        tokens = [token_str(self.model, t) for t, _, _ in entries]
        offsets, pos = [], offset
        for s in tokens:
            offsets.append(pos)
            pos += len(s)
        return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries],
                "top_logprobs": [None if top is None else {token_str(self.model, a): b for a, b in top}
                                 for _, _, top in entries],
                "text_offset": offsets}

    def event_logprobs_chat(self, ev) -> dict | None:
        """A streamed chat event's logprobs (None for the end-of-turn token, as OpenAI leaves it out)."""
        return None if ev.reason == "eos" else self.logprobs_chat([(ev.token_id, ev.logprob, ev.top_logprobs)])

    def logprobs_chat(self, entries) -> dict:
        def one(t, lp):
            s, raw = token_str_bytes(self.model, t)
            return {"token": s, "logprob": lp, "bytes": raw}
        return {"content": [{**one(t, lp), "top_logprobs": [one(a, b) for a, b in (top or [])]}
                            for t, lp, top in entries]}
