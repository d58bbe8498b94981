"""Server-sent events: the framing both streams share (chunks, the usage chunk, ``[DONE]``, an error body, cancel
and release however the stream ends) and the chunks of /v1/completions and /v1/chat/completions."""
from __future__ import annotations

import json

from sse_starlette.sse import EventSourceResponse

from . import reasoning
from .choices import REASONS, Choices, StreamOffsets, usage
from .protocol import APIError
from .run import Run
from .state import Slot


def sse_response(events) -> EventSourceResponse:
    """The response of a stream of server-sent events, lines ended by "\n" (each event by a blank line) as OpenAI's
    and llama.cpp's servers end them: a client that splits on "\n\n" reads them (sse-starlette's default is
    "\r\n")."""
    return EventSourceResponse(events, sep="\n")


def _sse(obj) -> dict:
    return {"data": json.dumps(obj, ensure_ascii=False)}


async def stream(chunks, run: Run, slot: Slot, jobs, choices: Choices, head: dict, *, include_usage: bool = False,
                 done: bool = True):
    """The SSE framing the streams share: each chunk of ``chunks`` (an async iterator of dicts), then the usage
    chunk when asked (``include_usage``), then [DONE] (``done=False``: none, as llama.cpp's /completion); an
    APIError on the way becomes its error body (and [DONE]); the run is cancelled and the slot released however the
    stream ends (the client went away, or we are done: its rows are freed now). A stream that ends before its end
    (the client went away) counts in the ``cancelled`` metric."""
    ended = False
    try:
        async for chunk in chunks:  # with include_usage OpenAI's chunks say "usage": null until the usage chunk
            yield _sse({**chunk, "usage": None} if include_usage and "usage" not in chunk else chunk)
        if include_usage:
            yield _sse({**head, "choices": [], "usage": usage(jobs, choices.completion_tokens)})
        ended = True
        if done:
            yield {"data": "[DONE]"}
    except APIError as exc:
        ended = True
        yield _sse(exc.body())
        if done:
            yield {"data": "[DONE]"}
    finally:
        await end_stream(chunks, run, slot, ended)


async def end_stream(chunks, run: Run, slot, ended: bool) -> None:
    """A stream's end, however it came: its chunks closed, its rows cancelled (nothing left to cancel once done), a
    client that went away first counted, its slot given back."""
    await chunks.aclose()
    run.cancel()
    if not ended:
        slot.st.count("cancelled")
    slot.release()


async def completion_chunks(run: Run, jobs, samp, choices: Choices, head: dict, echo: bool):
    if echo and samp.logprobs is None:
        for i, job in enumerate(jobs):
            for j in range(samp.n):
                yield {**head, "choices": [{"index": i * samp.n + j, "text": job.text, "logprobs": None,
                                            "finish_reason": None}]}
    # index -> its tokens' text_offsets as the unstreamed answer's (after the echoed prompt's text)
    offsets: dict[int, StreamOffsets] = {}
    async for kind, i, what, payload in run.items():
        if kind == "echo":
            jobs[i].prompt_logprobs = payload
            ids = [t for t, _, _ in payload]
            # the prompt's: the same for each of its n choices
            lp = choices.logprobs_completions(payload, choices.prompt_offsets(i, ids, jobs[i].text))
            for j in range(samp.n):
                yield {**head, "choices": [{"index": i * samp.n + j, "text": jobs[i].text, "logprobs": lp,
                                            "finish_reason": None}]}
        elif what == "events":
            for index, ev in choices.add_events(i, payload):
                lp = None
                if samp.logprobs is not None:
                    if index not in offsets:
                        offsets[index] = StreamOffsets(choices.model, len(jobs[i].text) if echo else 0,
                                                       context=choices.context(index))
                    entries, at = offsets[index].add((ev.token_id, ev.logprob, ev.top_logprobs), ev.text or "",
                                                     ev.finished, cut=ev.reason == "stop")
                    lp = choices.logprobs_completions(entries, at) if entries else None
                if not ev.text and not ev.finished and lp is None:
                    continue
                yield {**head, "choices": [{"index": index, "text": ev.text, "logprobs": lp,
                                            "finish_reason": REASONS[ev.reason] if ev.finished else None}]}


def role_chunks(head: dict, n: int) -> list[dict]:
    """The chat stream's first chunk per choice: the assistant role, empty content."""
    return [{**head, "choices": [{"index": j, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                  "finish_reason": None}]} for j in range(n)]


async def chat_chunks(run: Run, samp, choices: Choices, head: dict, think: bool | None = None):
    """The chat stream: content as it comes; ``think`` (not None): the reply's reasoning as
    ``delta.reasoning_content`` first (serve/reasoning.py)."""
    for chunk in role_chunks(head, samp.n):
        yield chunk
    split = reasoning.Splitter(think)
    async for kind, i, what, payload in run.items():
        if what != "events":
            continue
        for index, ev in choices.add_events(i, payload):
            lp = choices.stream_logprobs_chat(index, ev) if samp.logprobs is not None else None
            thought, text = split.event(index, ev.text or "", ev.finished)
            if thought:
                yield {**head, "choices": [{"index": index, "delta": {"reasoning_content": thought},
                                            "logprobs": None, "finish_reason": None}]}
            if text or lp is not None:
                yield {**head, "choices": [{"index": index, "delta": {"content": text}, "logprobs": lp,
                                            "finish_reason": None}]}
            if ev.finished:
                yield {**head, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                            "finish_reason": REASONS[ev.reason]}]}
