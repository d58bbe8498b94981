"""The reply of /v1/responses in the Responses API's shapes, made from what the chat machinery gives: the response
object (``output`` items, ``status``, ``usage``, the request's settings repeated) and its server-sent events.

Output items, in order: a thinking model's reasoning (the reply's <think> block, split as /v1/chat/completions splits
it) as ``{"type": "reasoning", "id": "rs_...", "summary": [], "content": [{"type": "reasoning_text", "text"}]}``, the
text as ``{"type": "message", "id": "msg_...", "role": "assistant", "content": [{"type": "output_text", "text",
"annotations": [], "logprobs": []}]}`` (none when empty), each tool call as ``{"type": "function_call", "id":
"fc_...", "call_id": "call_...", "name", "arguments"}``; each with a ``status``: "completed", or "incomplete" for
the last one when max_output_tokens (or the context) cut the reply. The response's ``status`` is "completed" or
"incomplete" (``incomplete_details.reason`` "max_output_tokens", as the chat endpoint's finish_reason "length");
``usage``: ``input_tokens`` (the prompt's; ``input_tokens_details.cached_tokens`` the prefix cache's share, as the
chat endpoint's ``prompt_tokens_details``), ``output_tokens`` (its ``completion_tokens``),
``output_tokens_details.reasoning_tokens`` (the tokens of the reasoning item: up to the one that closes the block).
Nothing is stored: ``"store": false``.

The stream (``events``) translates the chat stream's chunks (tools.reply_chunks), each event with the next
``sequence_number``: ``response.created`` and ``response.in_progress`` (the response without output); per item
``response.output_item.added``, its content (a message: ``response.content_part.added``, ``response.output_text.delta``
events, ``response.output_text.done``, ``response.content_part.done``; reasoning: the same with ``reasoning_text``;
a call: ``response.function_call_arguments.delta`` with its whole arguments, as the chat stream sends them, and
``.done``) and ``response.output_item.done``; then ``response.completed`` or ``response.incomplete`` carrying the
whole response. An error on the way closes the open item as ``incomplete`` (its ``.done`` events: what was written
before the failure), then comes an ``error`` event (``code``, ``message``, ``param``) and ``response.failed`` (the
response with ``status: "failed"``, its ``error`` and every item), and the stream ends.
"""
from __future__ import annotations

import json
import time
import uuid

from onnxlm.runtime.reasoning import CLOSE

from .choices import Choices, usage as chat_usage
from .jobs import Job
from .protocol import APIError
from .run import Run
from .state import Slot
from .streaming import end_stream


def head(response_id: str, created_at: int, model_name: str, echo: dict) -> dict:
    """The response without its output (status "in_progress"): the stream's ``response.created``, and the start of
    every answer; ``echo``: the request's settings the reply repeats (responses_request.ResponsesRequest.echo)."""
    return {"id": response_id, "object": "response", "created_at": created_at, "status": "in_progress",
            "background": False, "error": None, "incomplete_details": None, "model": model_name, "output": [],
            "previous_response_id": None, "store": False,
            "truncation": "disabled", "max_tool_calls": None, "usage": None, **echo}


def reasoning_item(item_id: str, text: str | None, status: str) -> dict:
    """A reasoning item (``text`` None: the stream's opening one, without content yet)."""
    content = [] if text is None else [{"type": "reasoning_text", "text": text}]
    return {"type": "reasoning", "id": item_id, "summary": [], "content": content, "status": status}


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str) -> dict:
    """An assistant message item with one output_text part (``text`` None: the stream's opening one, no parts)."""
    content = [] if text is None else [_text_part(text)]
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict:
    """A function_call item."""
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def output(chat_message: dict, reason: str) -> list[dict]:
    """The chat endpoint's message (tools.message: reasoning_content, content, tool_calls) and finish reason -> the
    output items (the last "incomplete" when the reply was cut: reason "length")."""
    out = []
    if chat_message.get("reasoning_content"):
        out.append(reasoning_item(_new_id("rs_"), chat_message["reasoning_content"], "completed"))
    if chat_message.get("content"):
        out.append(message_item(_new_id("msg_"), chat_message["content"], "completed"))
    for call in chat_message.get("tool_calls") or []:
        fn = call["function"]
        out.append(call_item(_new_id("fc_"), call["id"], fn["name"], fn["arguments"], "completed"))
    if out and reason == "length":
        out[-1]["status"] = "incomplete"
    return out


def reasoning_tokens(choices: Choices, reasoned: bool) -> int:
    """The reply's tokens up to the one that completes the reasoning block's ``</think>`` (all of them when the
    block never closes); 0 without a reasoning item (``reasoned``). The smallest such prefix is found by bisection,
    decoding O(log n) prefixes."""
    ids = [t for t, _, _ in choices.tokens.get(0, [])]
    if not reasoned or not ids:
        return 0

    def closed(k: int) -> bool:
        return CLOSE in choices.model.tokenizer.decode(ids[:k], skip_special_tokens=False)

    if not closed(len(ids)):
        return len(ids)
    lo, hi = 1, len(ids)  # closed(hi) holds
    while lo < hi:
        mid = (lo + hi) // 2
        if closed(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def response(start: dict, items: list[dict], reason: str, choices: Choices, jobs: list[Job]) -> dict:
    """The whole response: ``start`` (``head``) with the output items, the status and the usage."""
    counts = chat_usage(jobs, choices.completion_tokens)
    reasoned = any(item["type"] == "reasoning" for item in items)
    incomplete = reason == "length"
    done = {"status": "incomplete" if incomplete else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "output": items,
            "usage": {"input_tokens": counts["prompt_tokens"],
                      "input_tokens_details": {"cached_tokens": counts["prompt_tokens_details"]["cached_tokens"]},
                      "output_tokens": counts["completion_tokens"],
                      "output_tokens_details": {"reasoning_tokens": reasoning_tokens(choices, reasoned)},
                      "total_tokens": counts["total_tokens"]}}
    if not incomplete:
        done["completed_at"] = int(time.time())
    return {**start, **done}


class _Items:
    """The chat stream's deltas -> output item events: one item open at a time (reasoning, the message, or the k-th
    tool call), closed when another kind of delta comes or the reply ends; ``items``: those closed, whole."""

    def __init__(self):
        self.sequence = 0
        self.items: list[dict] = []
        self.key = None  # the open item's: "reasoning", "message" or ("call", k)
        self.item: dict = {}  # the open item, as output_item.added sent it
        self.text = ""  # its text (or arguments) so far

    def event(self, kind: str, **data) -> dict:
        """One server-sent event: ``kind`` as its name and ``type``, the next sequence number, ``data``."""
        payload = {"type": kind, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return {"event": kind, "data": json.dumps(payload, ensure_ascii=False)}

    def _where(self) -> dict:
        return {"item_id": self.item["id"], "output_index": len(self.items)}

    def _open(self, key, item: dict) -> list[dict]:
        """Events that make ``key``'s item the open one (nothing when it is)."""
        if key == self.key:
            return []
        out = self.close("completed")
        self.key, self.item, self.text = key, item, ""
        out.append(self.event("response.output_item.added", output_index=len(self.items), item=item))
        if item["type"] == "reasoning":
            out.append(self.event("response.content_part.added", **self._where(), content_index=0,
                                  part={"type": "reasoning_text", "text": ""}))
        elif item["type"] == "message":
            out.append(self.event("response.content_part.added", **self._where(), content_index=0,
                                  part=_text_part("")))
        return out

    def close(self, status: str) -> list[dict]:
        """Events that close the open item with ``status`` (nothing when none is open)."""
        if self.key is None:
            return []
        item, text, where, out = self.item, self.text, self._where(), []
        if item["type"] == "reasoning":
            done = reasoning_item(item["id"], text, status)
            out.append(self.event("response.reasoning_text.done", **where, content_index=0, text=text))
            out.append(self.event("response.content_part.done", **where, content_index=0,
                                  part=done["content"][0]))
        elif item["type"] == "message":
            done = message_item(item["id"], text, status)
            out.append(self.event("response.output_text.done", **where, content_index=0, text=text, logprobs=[]))
            out.append(self.event("response.content_part.done", **where, content_index=0, part=_text_part(text)))
        else:
            done = call_item(item["id"], item["call_id"], item["name"], text, status)
            out.append(self.event("response.function_call_arguments.done", **where, arguments=text))
        out.append(self.event("response.output_item.done", output_index=len(self.items), item=done))
        self.items.append(done)
        self.key = None
        return out

    def take(self, delta: dict) -> list[dict]:
        """One chat delta -> its events."""
        out = []
        if delta.get("reasoning_content"):
            out += self._open("reasoning", reasoning_item(_new_id("rs_"), None, "in_progress"))
            self.text += delta["reasoning_content"]
            out.append(self.event("response.reasoning_text.delta", **self._where(), content_index=0,
                                  delta=delta["reasoning_content"]))
        if delta.get("content"):
            out += self._open("message", message_item(_new_id("msg_"), None, "in_progress"))
            self.text += delta["content"]
            out.append(self.event("response.output_text.delta", **self._where(), content_index=0,
                                  delta=delta["content"], logprobs=[]))
        for call in delta.get("tool_calls") or []:
            if call.get("id"):  # a call's first chunk: its id and name
                out += self._open(("call", call["index"]), call_item(_new_id("fc_"), call["id"],
                                                                     call["function"]["name"], "", "in_progress"))
            arguments = call.get("function", {}).get("arguments")
            if arguments:
                self.text += arguments
                out.append(self.event("response.function_call_arguments.delta", **self._where(), delta=arguments))
        return out


#: an APIError's status -> the response error's ``code`` (the SDK's ResponseError codes)
ERROR_CODES = {429: "rate_limit_exceeded", 400: "invalid_prompt"}


async def events(chunks, run: Run, slot: Slot, choices: Choices, jobs: list[Job], start: dict):
    """The chat stream's chunks (one choice) -> the Responses API's server-sent events; an APIError on the way is
    an ``error`` event then ``response.failed``. The run is cancelled and the slot released however the stream
    ends (a client that went away counts in the ``cancelled`` metric), as streaming.stream does for the chat
    stream."""
    ended = False
    items = _Items()
    try:
        yield items.event("response.created", response=start)
        yield items.event("response.in_progress", response=start)
        async for chunk in chunks:
            choice = chunk["choices"][0]
            for event in items.take(choice["delta"]):
                yield event
            reason = choice["finish_reason"]
            if reason is not None:
                for event in items.close("incomplete" if reason == "length" else "completed"):
                    yield event
                whole = response(start, items.items, reason, choices, jobs)
                yield items.event(f"response.{whole['status']}", response=whole)
        ended = True
    except APIError as exc:
        ended = True
        for event in items.close("incomplete"):  # the item open when it failed: closed, and in the failed response
            yield event
        code = ERROR_CODES.get(exc.status, "server_error" if exc.status >= 500 else "invalid_prompt")
        yield items.event("error", code=exc.code or code, message=exc.message, param=exc.param)
        failed = {**start, "status": "failed", "output": items.items,
                  "error": {"code": code, "message": exc.message}}
        yield items.event("response.failed", response=failed)
    finally:
        await end_stream(chunks, run, slot, ended)
