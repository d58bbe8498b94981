"""OpenAI's Responses API, statelessly, as vLLM, Ollama and LM Studio serve it, so that code written against it
(the ``openai`` SDK's ``client.responses``) can use the served model: POST /v1/responses (one response, or its
server-sent events with ``stream``). Clients that need more (Codex CLI's ``include`` of encrypted reasoning, its
shell and custom tools) get a 400 naming the field.

A thin translation over /v1/chat/completions' machinery, not a second generation path: the request becomes the chat
request (responses_request.py), which goes through the same chat template, tools (rendering, the forced call's
constraint, parsing the reply's calls), structured output (``text.format`` as ``response_format``), jobs and
scheduler; the reply comes back as the Responses API's response object and events (responses_reply.py). Errors are
OpenAI's error body with the statuses the other endpoints use (400 for a bad request, naming the field as the
Responses API spells it); the API key is read from ``Authorization: Bearer``.

Nothing is kept between requests: ``previous_response_id``, ``conversation``, ``background`` and stored prompts are
400s, and each reply says ``"store": false`` (the client sends the whole conversation every time, as with chat).
``max_output_tokens`` is checked as the chat endpoint checks ``max_tokens``: over ``--max-tokens`` is a 400 (and
under 16, OpenAI's least).
"""
from __future__ import annotations

import asyncio
import time
import uuid

from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse

from onnxlm.runtime.manifest import no_chat_template

from . import protocol, reasoning, responses_reply, responses_request, tools
from .choices import Choices
from .gate import authorize, generating, read_body
from .jobs import make_jobs, output_constraint
from .protocol import APIError, bad
from .run import admit, collect
from .state import state_of
from .streaming import sse_response


async def responses(request: HTTPRequest):
    """POST /v1/responses: one response, or its events with ``stream``."""
    authorize(request)
    model = generating(request)
    st = state_of(request)
    body = await read_body(request, responses_request.FIELDS)
    req = responses_request.parse(body, max_tokens_cap=st.config.max_tokens)
    if not model.chat_template:
        raise bad("input", f"{no_chat_template(model.manifest)}; use /v1/completions", code="chat_not_supported")
    try:
        constraint = await output_constraint(model, {"response_format": req.response_format})
        treq = await asyncio.to_thread(tools.check, req.tools_body, model.chat_template)  # schemas read: off the loop
        if treq.forced and constraint is not None:
            raise bad("text.format", "cannot be combined with tool_choice 'required' or a named function")
        messages = protocol.developer_as_system(req.messages, model.chat_template)
        ids = await asyncio.to_thread(tools.render, model, messages, treq)
        forced = await tools.constraint(model, treq, ids)  # "required" / a named function: the reply must be a call
        constraint = forced if forced is not None else constraint
    except APIError as exc:
        raise responses_request.renamed(exc) from None
    # None: no split; else whether the prompt leaves a <think> block open (the reply begins inside it)
    think = tools.think_of(model, ids, reasoning.wanted({}, model.chat_template), treq)
    samp = req.sampling()
    jobs = await asyncio.to_thread(make_jobs, model, st, samp, [ids], [""], "input", constraint)
    slot, run = admit(st, jobs, 1, None, stream=samp.stream)
    choices = Choices(model, 1, chat=True, jobs=jobs)
    start = responses_reply.head("resp_" + uuid.uuid4().hex, int(time.time()), st.config.model_name, req.echo)
    if samp.stream:
        chunks = tools.reply_chunks(run, samp, choices, {}, treq, think)
        return sse_response(responses_reply.events(chunks, run, slot, choices, jobs, start))
    result = await collect(request, run, slot, choices, jobs)
    if result is None:
        return JSONResponse({}, status_code=499)
    chat_message, reason = tools.message(result["texts"].get(0, ""), choices.reasons.get(0, "length"), treq, think)
    items = responses_reply.output(chat_message, reason)
    return JSONResponse(responses_reply.response(start, items, reason, choices, jobs))
