"""The reply of /v1/messages in Anthropic's shapes, made from what the chat machinery gives: the message
(``content`` blocks, ``stop_reason``, ``stop_sequence``, ``usage``) and its server-sent events (Anthropic's error
body: ``errors.anthropic_error_body``, which the app's 404 / 405 under /v1/messages use too).

Content blocks: a thinking model's reasoning (the reply's <think> block, split as /v1/chat/completions splits it) as
``{"type": "thinking", "thinking", "signature": ""}``, the text as ``{"type": "text", "text"}`` (none when empty),
each tool call as ``{"type": "tool_use", "id": "toolu_...", "name", "input"}`` (a forced call cut by max_tokens:
its input ``{}``, the stream's input_json_delta what was written). Stop reasons: the end of the turn
("end_turn"), a stop sequence ("stop_sequence", with the sequence), max_tokens ("max_tokens"), a tool call
("tool_use"). ``usage`` as Anthropic counts a prompt cache's tokens: ``cache_read_input_tokens`` (the prompt's tokens
the prefix cache held, /v1/chat/completions' ``prompt_tokens_details.cached_tokens``), ``input_tokens`` (the rest: the
prompt is ``input_tokens + cache_creation_input_tokens + cache_read_input_tokens``), ``cache_creation_input_tokens``
(0: nothing is written to a cache on request, the prefix cache keeps every prompt by itself) and ``output_tokens``
(as /v1/chat/completions' completion_tokens).

The stream (``events``) translates the chat stream's chunks (streaming.chat_chunks, tools.chat_chunks):
``message_start`` (sent once the prompt is in, with the first tokens, as Anthropic's own streams send it: its usage
then splits off the prefix cache's share; ``FirstItemAhead``), a ``ping`` (as Anthropic's API sends one there); per
block ``content_block_start``, its ``content_block_delta`` events (``thinking_delta``, ``text_delta``,
``input_json_delta``: a call's input arrives whole, as the chat stream sends its arguments) and
``content_block_stop``; then ``message_delta`` (stop_reason, stop_sequence, and the whole usage: Anthropic's SDK
takes its counts as the totals) and ``message_stop``. An error on the way is an ``error`` event with Anthropic's
error body, and the stream ends.
"""
from __future__ import annotations

import json

from .choices import Choices, usage as chat_usage
from .errors import anthropic_error_body as error_body
from .jobs import Job
from .llamacpp import stopping_word
from .protocol import APIError
from .run import Run
from .state import Slot
from .streaming import end_stream

#: the chat endpoint's finish reasons -> Anthropic's stop reasons ("stop": "stop_sequence" where one cut the text)
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def tool_use_id(call_id: str) -> str:
    """The chat endpoint's call id ("call_<hex>") -> Anthropic's form ("toolu_<hex>")."""
    return "toolu_" + call_id.removeprefix("call_")


def blocks(message: dict) -> list[dict]:
    """The chat endpoint's message (tools.message: reasoning_content, content, tool_calls) -> content blocks."""
    out = []
    if message.get("reasoning_content"):
        out.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
    if message.get("content"):
        out.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        out.append({"type": "tool_use", "id": tool_use_id(call["id"]), "name": call["function"]["name"],
                    "input": _input(call["function"]["arguments"])})
    return out


def _input(arguments: str) -> dict:
    """A call's arguments (a JSON string) -> a tool_use block's ``input``; {} for a forced call that max_tokens cut
    short (tools.cut_call), whose arguments are not whole JSON: a block's input must be an object (the stream's
    input_json_delta carries what was written, as Anthropic's own streams do; stop_reason "max_tokens" tells it)."""
    try:
        value = json.loads(arguments)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def stop(reason: str, choices: Choices, stop_sequences: list[str]) -> tuple[str, str | None]:
    """The chat endpoint's finish reason of the one choice -> (stop_reason, stop_sequence): the sequence that cut
    the text is the first of ``stop_sequences`` to occur in the reply's tokens."""
    if reason == "stop" and 0 in choices.cut:
        ids = [t for t, _, _ in choices.tokens.get(0, [])]
        return "stop_sequence", stopping_word(choices.model, ids, stop_sequences, choices.context(0)) or None
    return STOP_REASONS.get(reason, "end_turn"), None


def usage(jobs: list[Job], output_tokens: int) -> dict:
    """Anthropic's usage block from the chat endpoint's counts (choices.usage): the prompt's tokens the prefix cache
    held are ``cache_read_input_tokens``, the others ``input_tokens`` (Anthropic's split: the prompt is their sum
    with ``cache_creation_input_tokens``, 0 here: no request writes a cache, the prefix cache keeps every prompt by
    itself). Known once the prompt is in (the scheduler sets a request's cached tokens at its prefill)."""
    counts = chat_usage(jobs, output_tokens)
    cached = counts["prompt_tokens_details"]["cached_tokens"]
    return {"input_tokens": counts["prompt_tokens"] - cached, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached, "output_tokens": output_tokens}


def head(message_id: str, model_name: str, jobs: list[Job]) -> dict:
    """The message without its reply: the non-streamed answer's start, the stream's ``message_start`` (its usage
    as far as it is known: the prefix cache's share once the prompt is in)."""
    return {"id": message_id, "type": "message", "role": "assistant", "model": model_name, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage(jobs, 0)}


def message(start: dict, chat_message: dict, reason: str, choices: Choices, stop_sequences: list[str],
            jobs: list[Job]) -> dict:
    """The whole reply: ``start`` (``head``) with the content blocks, stop reason and sequence, and the usage."""
    stop_reason, sequence = stop(reason, choices, stop_sequences)
    return {**start, "content": blocks(chat_message), "stop_reason": stop_reason, "stop_sequence": sequence,
            "usage": usage(jobs, choices.completion_tokens)}


def _event(name: str, data: dict) -> dict:
    return {"event": name, "data": json.dumps({"type": name, **data}, ensure_ascii=False)}


class _Blocks:
    """The chat stream's deltas -> content block events: one block open at a time (thinking, text, or the k-th
    tool call), closed when another kind of delta comes or the reply ends."""

    def __init__(self):
        self.open, self.index = None, -1

    def switch(self, key, block: dict) -> list[dict]:
        """Events that make ``key``'s block the open one (nothing when it is)."""
        if key == self.open:
            return []
        out = self.close()
        self.open, self.index = key, self.index + 1
        return out + [_event("content_block_start", {"index": self.index, "content_block": block})]

    def delta(self, delta: dict) -> dict:
        return _event("content_block_delta", {"index": self.index, "delta": delta})

    def close(self) -> list[dict]:
        if self.open is None:
            return []
        self.open = None
        return [_event("content_block_stop", {"index": self.index})]

    def take(self, delta: dict) -> list[dict]:
        """One chat delta -> its events."""
        out = []
        if delta.get("reasoning_content"):
            out += self.switch("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out.append(self.delta({"type": "thinking_delta", "thinking": delta["reasoning_content"]}))
        if delta.get("content"):
            out += self.switch("text", {"type": "text", "text": ""})
            out.append(self.delta({"type": "text_delta", "text": delta["content"]}))
        for call in delta.get("tool_calls") or []:
            if call.get("id"):  # a call's first chunk: its id and name
                out += self.switch(("tool", call["index"]), {"type": "tool_use", "id": tool_use_id(call["id"]),
                                                             "name": call["function"]["name"], "input": {}})
            arguments = call.get("function", {}).get("arguments")
            if arguments:
                out.append(self.delta({"type": "input_json_delta", "partial_json": arguments}))
        return out


class FirstItemAhead:
    """A run whose first item is awaited before the chat stream asks for it (``wait``), then handed to it first, as
    if never taken (``items``): the stream's message_start waits for it, so that its usage splits off the prefix
    cache's share, which the scheduler sets at the prompt's prefill, before the first tokens come back."""

    def __init__(self, run: Run):
        self.run = run
        self._items = run.items()
        self._first: list = []

    async def wait(self) -> None:
        """Until the run's first item (tokens, its end, or its error: raised here) has come."""
        try:
            self._first.append(await anext(self._items))
        except StopAsyncIteration:
            pass

    async def items(self):
        """The run's items (run.items()), the one ``wait`` took first."""
        try:
            while self._first:
                yield self._first.pop(0)
            async for item in self._items:
                yield item
        finally:
            await self._items.aclose()

    def cancel(self) -> None:
        self.run.cancel()

    async def close(self) -> None:
        """The run's items closed, also where the chat stream never asked for them (it ended first)."""
        await self._items.aclose()


async def events(chunks, run: FirstItemAhead, slot: Slot, choices: Choices, start: dict, stop_sequences: list[str],
                 jobs: list[Job]):
    """The chat stream's chunks (one choice, over ``run``) -> Anthropic's server-sent events; message_start once the
    run's first item came (``FirstItemAhead.wait``); an APIError on the way is an ``error`` event. The run is
    cancelled and the slot released however the stream ends (a client that went away counts in the ``cancelled``
    metric), as streaming.stream does for the chat stream."""
    ended = False
    try:
        await run.wait()
        yield _event("message_start", {"message": {**start, "usage": usage(jobs, 0)}})
        yield _event("ping", {})  # as Anthropic's own streams send one after the start
        open_blocks = _Blocks()
        async for chunk in chunks:
            choice = chunk["choices"][0]
            for event in open_blocks.take(choice["delta"]):
                yield event
            if choice["finish_reason"] is not None:
                for event in open_blocks.close():
                    yield event
                stop_reason, sequence = stop(choice["finish_reason"], choices, stop_sequences)
                yield _event("message_delta", {"delta": {"stop_reason": stop_reason, "stop_sequence": sequence},
                                               "usage": usage(jobs, choices.completion_tokens)})
        yield _event("message_stop", {})
        ended = True
    except APIError as exc:
        ended = True
        yield {"event": "error", "data": json.dumps(error_body(exc), ensure_ascii=False)}
    finally:
        await end_stream(chunks, run, slot, ended)
        await run.close()
