"""A request's output as the API shapes it: per choice its tokens, text, finish reason and logprobs (completions'
and chat's forms), token names for ``top_logprobs``, and the usage block."""
from __future__ import annotations

from onnxlm.runtime.streaming import IncrementalText, decode_after
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
    anchor = _anchor(model)  # after a plain character: a SentencePiece word's '▁t' reads ' t', as in the text
    text = (decode_after(model.tokenizer, [anchor], [int(token_id)], skip_special_tokens=False) if anchor is not None
            else model.tokenizer.decode([int(token_id)], skip_special_tokens=False))
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


def _anchor(model) -> int | None:
    """An ordinary token a token is decoded after for its name (``decode_after``): the vocabulary's "a" (cached on
    the model), or None where it has none. Decoded alone, a SentencePiece decoder strips the space of a word's
    first token ('▁t' -> 't'): the name then lost the space its text has in the reply, and two tokens shared one."""
    cache = model.__dict__
    if "_name_anchor" not in cache:
        lookup = getattr(model.tokenizer, "token_to_id", None)
        found = lookup("a") if lookup is not None else None
        ok = found is not None and model.tokenizer.decode([found], skip_special_tokens=False) == "a"
        cache["_name_anchor"] = int(found) if ok else None
    return cache["_name_anchor"]


def token_bytes(model, token_id: int) -> list[int]:
    """A token's raw UTF-8 bytes (``token_str_bytes``)."""
    return token_str_bytes(model, token_id)[1]


_BYTE_OF = {c: b for b, c in bytes_to_unicode().items()}  # GPT-2's byte alphabet: character -> the byte it spells


def usage(jobs: list[Job], completion: int) -> dict:
    """OpenAI's usage block; ``prompt_tokens_details.cached_tokens``: the prompt tokens whose keys and values the
    prefix cache held (not computed again); with a ``prediction``, ``completion_tokens_details``'
    ``accepted_prediction_tokens`` (proposed tokens the model kept) and ``rejected_prediction_tokens`` (proposed
    tokens a pass checked and dropped)."""
    prompt = sum(len(j.ids) for j in jobs)
    cached = sum(j.req.cached_tokens for j in jobs if j.req is not None)
    out = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
           "prompt_tokens_details": {"cached_tokens": cached}}
    predicted = [j.req for j in jobs if j.req is not None and j.req.prediction is not None]
    if predicted:
        accepted = sum(r.accepted for r in predicted)
        out["completion_tokens_details"] = {"accepted_prediction_tokens": accepted,
                                            "rejected_prediction_tokens": sum(r.proposed for r in predicted) - accepted}
    return out


class Choices:
    """Per choice (prompt i, row j -> index i * n + j): text, tokens, logprobs, finish reason."""

    def __init__(self, model, n: int, chat: bool, jobs: list[Job] | None = None):
        self.model, self.n, self.chat = model, n, chat
        # prompt i -> its ids: a choice's text continues its prompt's (runtime/streaming.decode_after), and so do
        # the offsets of its tokens in that text
        self.prompts = [j.ids for j in jobs or []]
        self.tokens: dict[int, list] = {}  # index -> [(id, logprob, top)]
        self.reasons: dict[int, str] = {}
        self.texts: dict[int, str] = {}
        self.completion_tokens = 0  # every generated token, those a stop string cut included (usage)
        self.cut: set[int] = set()  # choices a stop string ended: their text is cut where it starts
        self._prompt_offsets: dict[int, list[int]] = {}  # prompt i -> its text_offsets (echo)
        self._streamed: dict[int, StreamOffsets] = {}  # chat streams: index -> the logprobs held back

    def add_events(self, i: int, events) -> list[tuple[int, object]]:
        out = []
        for ev in events:
            index = i * self.n + ev.row
            if not (self.chat and ev.reason == "eos"):  # chat: the end-of-turn token is no part of the content
                self.tokens.setdefault(index, []).append((ev.token_id, ev.logprob, ev.top_logprobs))
            self.completion_tokens += 1
            if ev.finished:
                self.reasons[index] = REASONS[ev.reason]
                if ev.reason == "stop":
                    self.cut.add(index)
            out.append((index, ev))
        return out

    def kept(self, index: int, text: str) -> list:
        """Choice ``index``'s entries [(id, logprob, top)] as its logprobs list them, ``text`` being its returned
        text: where a stop string cut it, those of the tokens whose text begins before the cut (``before_cut``)."""
        entries = self.tokens.get(index, [])
        return before_cut(self.model, entries, text, self.context(index)) if index in self.cut else entries

    def context(self, index: int) -> list[int]:
        """The ids choice ``index``'s text continues: its prompt's (none where the jobs were not given)."""
        i = index // self.n
        return list(self.prompts[i]) if i < len(self.prompts) else []

    def logprobs_completions(self, entries, offsets: list[int]) -> dict:
        """Completions' logprobs of ``entries`` [(id, logprob, top)]; ``offsets``: each token's ``text_offset``, the
        character of the choice's returned text where the token's text starts (``prompt_offsets``,
        ``completion_offsets``, ``StreamOffsets``)."""
        def top_of(t, lp, top) -> dict | None:  # OpenAI: "always the logprob of the sampled token" (up to n + 1)
            if lp is None:  # the prompt's first token: nothing before it
                return None
            out = {token_str(self.model, a): b for a, b in (top or [])}
            out.setdefault(token_str(self.model, t), lp)
            return out
        return {"tokens": [token_str(self.model, t) for t, _, _ in entries],
                "token_logprobs": [lp for _, lp, _ in entries],
                "top_logprobs": [top_of(*e) for e in entries],
                "text_offset": list(offsets)}

    def prompt_offsets(self, i: int, ids: list[int], text: str) -> list[int]:
        """Prompt i's text_offsets into its echoed ``text`` (the same for its n choices: kept)."""
        if i not in self._prompt_offsets:
            self._prompt_offsets[i] = prompt_offsets(self.model, ids, text)
        return self._prompt_offsets[i]

    def event_logprobs_chat(self, ev) -> dict | None:
        """A streamed chat event's logprobs (None for the end-of-turn token, as OpenAI leaves it out)."""
        return None if ev.reason == "eos" else self.logprobs_chat([(ev.token_id, ev.logprob, ev.top_logprobs)])

    def stream_logprobs_chat(self, index: int, ev) -> dict | None:
        """The logprobs a chat stream's chunk for ``ev`` carries, or None: a token's once the text streamed passed
        its start, so that a token a stop string then cuts is never sent (``StreamOffsets``); the end-of-turn
        token's never (``event_logprobs_chat``)."""
        held = self._streamed.setdefault(index, StreamOffsets(self.model, context=self.context(index)))
        entry = None if ev.reason == "eos" else (ev.token_id, ev.logprob, ev.top_logprobs)
        entries, _ = held.add(entry, ev.text or "", ev.finished, cut=ev.reason == "stop")
        return self.logprobs_chat(entries) if entries else None

    def logprobs_chat(self, entries) -> dict:
        def one(t, lp):
            s, raw = token_str_bytes(self.model, t)
            return {"token": s, "logprob": lp, "bytes": raw}
        return {"content": [{**one(t, lp), "top_logprobs": [one(a, b) for a, b in (top or [])]}
                            for t, lp, top in entries]}


# ------------------------------------------------------------------------------------------------ text_offset
# OpenAI's (and vLLM's) text_offset[i]: the character of the returned text where token i's text starts. Offsets come
# from decoding the ids incrementally as the text was decoded: a token that adds no text (a special token the text
# skips, such as an added BOS, or the first bytes of a character split over tokens) gets the offset of the next
# character, so offsets never decrease and never pass the end of the text.

def _tokenizer(model):
    return model.tokenizer.tokenizer if model.tokenizer is not None else None


def decoded_offsets(tokenizer, ids, skip_special_tokens: bool = True, context=()) -> tuple[list[int], str]:
    """ids -> (each id's offset in the incrementally decoded text, that text: what they add after ``context``, the
    ids before them); one pass (DecodeStream)."""
    stream = IncrementalText(tokenizer, skip_special_tokens=skip_special_tokens, context=context)
    offsets, pieces = [], []
    for t in ids:
        offsets.append(stream.emitted)
        pieces.append(stream.push(int(t)))
    return offsets, "".join(pieces)


def _bounded(offsets, end: int) -> list[int]:
    """Offsets made non-decreasing and at most ``end``."""
    out, low = [], 0
    for o in offsets:
        low = max(low, min(int(o), end))
        out.append(low)
    return out


def prompt_offsets(model, ids: list[int], text: str) -> list[int]:
    """A prompt's text_offsets into ``text``, the prompt as echoed (the string sent, or for token ids their
    decoding with special tokens). The decoding of ``ids`` that gives ``text`` back (special tokens skipped: an added
    BOS takes no characters; or kept: ids sent as such), else the tokenizer's character spans of ``text`` when
    encoding it gives ``ids`` (a normalizer changed characters, or the text spells special tokens), else the
    skipped decoding's offsets bounded to ``text``."""
    tok = _tokenizer(model)
    if tok is None:
        return [0] * len(ids)
    first = None
    for skip in (True, False):
        offsets, decoded = decoded_offsets(tok, ids, skip)
        if decoded == text:
            return offsets
        first = offsets if first is None else first
    try:
        enc = model.tokenizer.encoding(text) if text else None
    except Exception:  # noqa: BLE001 - tokenizers raises plain exceptions; fall through to the bounded offsets
        enc = None
    if enc is not None and list(enc.ids) == [int(i) for i in ids]:
        return _spans(enc.offsets, len(text))
    return _bounded(first, len(text))


def _spans(spans, end: int) -> list[int]:
    """Encoding character spans -> offsets: a token without characters (a special token the post-processor added)
    gets the start of the next token that has some (``end`` when none follows)."""
    starts, after = [], end
    for a, b in reversed(spans):
        if b > a:
            after = a
        starts.append(after)
    return _bounded(reversed(starts), end)


def before_cut(model, entries: list, text: str, context=()) -> list:
    """The entries [(id, logprob, top)] of a choice a stop string ended -> those of the tokens whose text begins
    before the cut (``text``: the returned text, which ends there), in the incremental decoding ``text_offset``
    uses: a token that straddles the cut stays (part of it is in the text), the tokens wholly in the stop string or
    after it go, so the tokens join to the text (and the straddling token's tail). usage still counts them all."""
    tok = _tokenizer(model)
    if tok is None:  # no tokenizer: no stop strings either
        return entries
    offsets, _ = decoded_offsets(tok, [t for t, _, _ in entries], context=context)
    return [e for e, o in zip(entries, offsets) if o < len(text)]


def completion_offsets(model, ids, text: str, base: int = 0, context=()) -> list[int]:
    """A completion's text_offsets: ``base`` (where its text starts in the returned text: after an echoed prompt)
    plus each token's offset in its incremental decoding after ``context`` (its prompt's ids), at most
    ``len(text)`` (the text ends where a stop string cut it; EOS adds none)."""
    offsets, _ = decoded_offsets(_tokenizer(model), ids, context=context)
    return [base + o for o in _bounded(offsets, len(text))]


class StreamOffsets:
    """A streamed choice's logprobs entries and text_offsets, equal to the unstreamed ones (``completion_offsets``,
    ``Choices.kept``): each token's offset is known when it comes, but may lie where a stop string will cut the
    text; so a token is handed out once the streamed text passed its offset (the text held back because it might
    start a stop string is final once sent: a token whose text begins in it is final too). At the choice's end the
    rest are handed out, bounded to the final text, but where a stop string cut it: then only those whose text begins
    before the cut (``before_cut``); the others are dropped."""

    def __init__(self, model, base: int = 0, context=()):
        self.stream = IncrementalText(_tokenizer(model), context=context)
        self.base = self.sent = base  # sent: the end of the text streamed so far
        self.pending: list[tuple[tuple, int]] = []

    def add(self, entry: tuple | None, text: str, finished: bool, cut: bool = False) -> tuple[list, list[int]]:
        """A token's entry (id, logprob, top; None: a token not listed, chat's end of turn) and the text its event
        streams, whether the choice ends here and whether a stop string cut it -> (entries, offsets) to hand out."""
        if entry is not None:
            self.pending.append((entry, self.base + self.stream.emitted))
            self.stream.push(int(entry[0]))
        self.sent += len(text)
        if finished and not cut:
            k = len(self.pending)
        else:  # pending offsets never decrease: those before the streamed end go out
            k = sum(1 for _, o in self.pending if o < self.sent)
        ready, self.pending = self.pending[:k], ([] if finished else self.pending[k:])
        return [e for e, _ in ready], [min(o, self.sent) for _, o in ready]
