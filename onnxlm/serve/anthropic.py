"""Anthropic's Messages API, so that tools built on Anthropic's SDK can use the served model (as llama.cpp's server
offers it): POST /v1/messages (one message, or its server-sent events with ``stream``) and POST
/v1/messages/count_tokens (``{"input_tokens"}``: the prompt /v1/messages would feed the model).

A thin translation over /v1/chat/completions' machinery, not a second generation path: the request becomes the chat
request (anthropic_request.py), which goes through the same chat template, tools (rendering, the forced call's
constraint, parsing the reply's calls), stop strings, jobs and scheduler; the reply comes back in Anthropic's shapes
(anthropic_reply.py). Errors, before or during a stream, are Anthropic's ``{"type": "error", "error": {"type",
"message"}}`` with the same statuses as the other endpoints (400 for a bad request, naming the field). The API key
(``--api-key``) is read from Anthropic's ``x-api-key`` header or ``Authorization: Bearer``.

``max_tokens`` is required, as Anthropic's API requires it; since Anthropic's clients send large values (4096 to
64000) whatever the model, it is capped at the server's ``--max-tokens`` and at what the context leaves after the
prompt, rather than refused (the reply then ends with stop_reason "max_tokens" there).
"""
from __future__ import annotations

import asyncio
import logging
import uuid

from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse

from onnxlm.runtime.manifest import no_chat_template

from . import anthropic_reply, anthropic_request, reasoning, tools
from .choices import Choices
from .errors import anthropic_error_response
from .gate import authorize, generating, read_body
from .jobs import make_jobs
from .protocol import APIError, bad
from .run import admit, collect
from .state import state_of
from .streaming import sse_response

log = logging.getLogger("onnxlm.serve")


async def messages(request: HTTPRequest):
    """POST /v1/messages: one message, or its events with ``stream``."""
    return await _in_anthropic_shape(_messages, request)


async def count_tokens(request: HTTPRequest):
    """POST /v1/messages/count_tokens: ``{"input_tokens"}``, the tokens of the prompt /v1/messages renders for the
    same body (``max_tokens`` may be left out)."""
    return await _in_anthropic_shape(_count_tokens, request)


async def _in_anthropic_shape(handler, request: HTTPRequest):
    """Run ``handler``; its errors (and any failure) answered in Anthropic's error body."""
    try:
        return await handler(request)
    except APIError as exc:
        return anthropic_error_response(exc)
    except Exception as exc:  # noqa: BLE001 - a server fault, still in the client's error shape
        log.exception("%s failed", request.url.path)
        return anthropic_error_response(APIError(500, f"internal error: {exc}", "server_error"))


async def _prompt(request: HTTPRequest, *, counting: bool):
    """What both endpoints do first: the key, a loaded model, the body checked and translated, its tools checked,
    the prompt rendered -> (model, state, request, tool request, prompt ids)."""
    authorize(request, key_header="x-api-key")
    model = generating(request)
    st = state_of(request)
    body = await read_body(request, anthropic_request.FIELDS)
    req = anthropic_request.parse(body, counting=counting)
    if not model.chat_template:
        raise bad("messages", f"{no_chat_template(model.manifest)}; use /v1/completions",
                  code="chat_not_supported")
    try:
        treq = await asyncio.to_thread(tools.check, req.tools_body, model.chat_template)  # schemas read: off the loop
    except APIError as exc:
        raise anthropic_request.renamed(exc) from None
    prefill = {"continue_final_message": True} if req.prefill else None  # the reply continues the last message
    ids = await asyncio.to_thread(tools.render, model, req.messages, treq, prefill)
    return model, st, req, treq, ids


async def _count_tokens(request: HTTPRequest):
    *_, ids = await _prompt(request, counting=True)
    return JSONResponse({"input_tokens": len(ids)})


def _room(model, st, ids: list[int], wanted: int) -> int:
    """``max_tokens`` -> at most the server's ``--max-tokens`` and what the context leaves after the prompt (a
    prompt that leaves nothing keeps ``wanted``: make_jobs' 400 then names the prompt)."""
    ctx = model.max_positions
    room = st.config.max_tokens if not ctx else min(st.config.max_tokens, ctx - len(ids))
    return min(wanted, room) if room >= 1 else wanted


async def _messages(request: HTTPRequest):
    model, st, req, treq, ids = await _prompt(request, counting=False)
    constraint = await tools.constraint(model, treq, ids)  # "any" / a named tool: the reply must be a call
    # None: no split; else whether the prompt leaves a <think> block open (the reply begins inside it)
    think = tools.think_of(model, ids, reasoning.wanted({}, model.chat_template), treq)
    samp = req.sampling(max_tokens=_room(model, st, ids, req.max_tokens))
    jobs = await asyncio.to_thread(make_jobs, model, st, samp, [ids], [""], "messages", constraint)
    slot, run = admit(st, jobs, 1, None, stream=samp.stream)
    choices = Choices(model, 1, chat=True, jobs=jobs)
    start = anthropic_reply.head("msg_" + uuid.uuid4().hex, st.config.model_name, jobs)
    if samp.stream:
        ahead = anthropic_reply.FirstItemAhead(run)  # message_start waits for the prompt: the cache's share known
        chunks = tools.reply_chunks(ahead, samp, choices, {}, treq, think)
        return sse_response(anthropic_reply.events(chunks, ahead, slot, choices, start, samp.stop, jobs))
    result = await collect(request, run, slot, choices, jobs)
    if result is None:
        return JSONResponse({}, status_code=499)
    chat_message, reason = tools.message(result["texts"].get(0, ""), choices.reasons.get(0, "length"), treq, think)
    return JSONResponse(anthropic_reply.message(start, chat_message, reason, choices, samp.stop, jobs))
