"""The endpoints: /health, /metrics (JSON, or Prometheus' text: prometheus.py), /props, /v1/models,
/v1/completions and /v1/chat/completions. Each checks its request (gate.py), builds its jobs (jobs.py), runs them
(run.py) and answers one JSON body or a stream (streaming.py)."""
from __future__ import annotations

import asyncio
import time
import uuid

from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response

from onnxlm import __version__
from onnxlm.runtime.manifest import no_chat_template

from . import llamacpp_request, prometheus, protocol, reasoning, tools
from .choices import Choices, completion_offsets, usage
from .embeddings import can_embed
from .gate import authorize, available, check_model_name, open_request
from .jobs import make_jobs, output_constraint
from .openai_fields import check_chat_extras
from .protocol import APIError, bad
from .run import admit, collect
from .state import draft_settings, state_of
from .streaming import completion_chunks, sse_response, stream


async def health(request: HTTPRequest):
    st = state_of(request)
    e = st.engine
    status = ("error" if e.load_error is not None else "loading" if not e.ready.is_set()
              else "draining" if st.draining else "ok")
    body = {"status": status, "in_flight": st.in_flight, **e.stats()}
    return JSONResponse(body, status_code=200 if status == "ok" else 503)


async def metrics(request: HTTPRequest):
    """The counters and the engine's figures: JSON, or Prometheus' text format when asked (prometheus.py)."""
    authorize(request)
    st = state_of(request)
    with st.lock:
        counters = dict(st.counters)
    values = {"in_flight": st.in_flight, "draining": st.draining, **counters, **st.engine.stats()}
    if prometheus.wanted(request):
        return Response(prometheus.exposition(values), media_type=prometheus.CONTENT_TYPE)
    return JSONResponse(values)


async def models(request: HTTPRequest):
    authorize(request)
    return JSONResponse({"object": "list", "data": [_model_card(state_of(request))]})


async def model(request: HTTPRequest):
    """GET /v1/models/{model}: the served model's card, or OpenAI's 404 for another name."""
    authorize(request)
    check_model_name(request, request.path_params["model"])
    return JSONResponse(_model_card(state_of(request)))


async def change_props(request: HTTPRequest):
    """llama.cpp's POST /props: 501, as llama.cpp answers it unless started with --props."""
    authorize(request)
    raise APIError(501, "changing the server's properties is not supported (llama.cpp takes it only with --props)",
                   "not_supported_error", code="not_supported")


async def props(request: HTTPRequest):
    """llama.cpp's GET /props, what its clients read to set themselves up: the context, the defaults of llama.cpp's
    own endpoint, /completion (``default_generation_settings.params``: the ``generation_settings`` a /completion
    request that sets nothing runs with, llama.cpp's defaults, as llama.cpp's /props reports them), its batch rows,
    the chat template, the special tokens; ``openai_defaults`` (onnxlm's field) gives those /v1/completions and
    /v1/chat/completions apply instead (OpenAI's)."""
    authorize(request)
    model = available(request)
    st = state_of(request)
    specials = model.manifest.get("special_tokens", {}) if isinstance(model.manifest, dict) else {}
    params = llamacpp_request.parse({"prompt": ""}, max_tokens_cap=st.config.max_tokens,
                                    draft=draft_settings(st.config)).settings()
    openai = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
              "presence_penalty": 0.0, "frequency_penalty": 0.0}
    return JSONResponse({
        "default_generation_settings": {"n_ctx": model.max_positions, "params": params},
        "openai_defaults": openai,
        "total_slots": st.config.max_rows, "model_alias": st.config.model_name, "model_path": str(model.path),
        "chat_template": model.chat_template or "", "bos_token": specials.get("bos_token") or "",
        "eos_token": specials.get("eos_token") or "", "modalities": {"vision": False, "audio": False},
        "build_info": f"onnxlm {__version__}"})


def _model_card(st) -> dict:
    """OpenAI's model object, plus onnxlm's ``capabilities`` once the model is loaded: which endpoints it serves
    (``chat``: false for a model without a chat template; the chat page reads it; ``embeddings``: whether
    /v1/embeddings and /embedding answer, embeddings.py)."""
    card = {"id": st.config.model_name, "object": "model", "created": st.created, "owned_by": "onnxlm"}
    model = st.engine.model if st.engine.ready.is_set() else None
    if model is not None:
        card["capabilities"] = {"completions": bool(getattr(model, "can_generate", True)),
                                "chat": bool(getattr(model, "chat_template", None)),
                                "embeddings": can_embed(model), "rerank": bool(getattr(model, "is_reranker", False))}
    return card


async def completions(request: HTTPRequest):
    model, st, body, samp = await open_request(request, protocol.COMPLETIONS, chat=False)
    prompts = protocol.prompts(body, model.vocab_size)
    echo = protocol._get_bool(body, "echo", False)
    if echo and samp.logprobs is not None and model.is_encoder_decoder:
        raise bad("echo", "with logprobs it scores the prompt's tokens as the model's continuation; an "
                          "encoder-decoder model reads its prompt instead (echo without logprobs works)")
    constraint = await output_constraint(model, body)
    texts = [p if isinstance(p, str) else (model.tokenizer.decode(p, skip_special_tokens=False)
                                           if model.tokenizer else "") for p in prompts]
    # encoding a long prompt takes a while (an 8 MB body: seconds): off the event loop, so other streams go on
    jobs = await asyncio.to_thread(make_jobs, model, st, samp, prompts, texts, "prompt", constraint)
    slot, run = admit(st, jobs, samp.n, samp.logprobs if echo and samp.logprobs is not None else None,
                      stream=bool(samp.stream))
    rid, created = "cmpl-" + uuid.uuid4().hex, int(time.time())
    choices = Choices(model, samp.n, chat=False, jobs=jobs)
    head = {"id": rid, "object": "text_completion", "created": created, "model": st.config.model_name}
    if samp.stream:
        return sse_response(stream(completion_chunks(run, jobs, samp, choices, head, echo), run, slot,
                                           jobs, choices, head, include_usage=samp.include_usage))
    result = await collect(request, run, slot, choices, jobs)
    if result is None:
        return JSONResponse({}, status_code=499)
    out = []
    for i, job in enumerate(jobs):
        for j in range(samp.n):
            index = i * samp.n + j
            text = result["texts"].get(index, "")
            entries = choices.kept(index, text)  # where a stop string cut the text: the tokens before the cut
            prompt_entries = job.prompt_logprobs or []
            lp = None
            if samp.logprobs is not None:  # text_offset indexes the text returned: the echoed prompt, then this
                base = len(job.text) if echo else 0
                offsets = completion_offsets(model, [t for t, _, _ in entries], text, base, choices.context(index))
                if echo:
                    offsets = choices.prompt_offsets(i, [t for t, _, _ in prompt_entries], job.text) + offsets
                lp = choices.logprobs_completions((prompt_entries if echo else []) + entries, offsets)
            out.append({"index": index, "text": (job.text + text) if echo else text, "logprobs": lp,
                        "finish_reason": choices.reasons.get(index, "length")})
    return JSONResponse({**head, "choices": out, "usage": usage(jobs, choices.completion_tokens)})


async def chat_completions(request: HTTPRequest):
    model, st, body, samp = await open_request(request, protocol.CHAT, chat=True)
    check_chat_extras(body)
    msgs = protocol.developer_as_system(protocol.messages(body), model.chat_template)
    template_vars = {**protocol.template_kwargs(body), **protocol.continuation(body, msgs)}
    split = reasoning.wanted(body, model.chat_template)  # the reply's <think> block as reasoning_content
    constraint = await output_constraint(model, body)
    if not model.chat_template:
        raise bad("messages", f"{no_chat_template(model.manifest)}; use /v1/completions",
                  code="chat_not_supported")
    treq = await asyncio.to_thread(tools.check, body, model.chat_template)  # schemas read: off the loop
    if treq.forced and constraint is not None:
        raise bad("grammar" if constraint.kind == "grammar" else "response_format",
                  "cannot be combined with tool_choice 'required' or a named function")
    if treq.forced and template_vars.get("continue_final_message"):
        raise bad("continue_final_message", "cannot be combined with tool_choice 'required' or a named function")
    ids = await asyncio.to_thread(tools.render, model, msgs, treq, template_vars)  # off the event loop
    forced = await tools.constraint(model, treq, ids)  # "required" / a named function: the reply must be a call
    constraint = forced if forced is not None else constraint
    # None: no split; else whether the prompt leaves a <think> block open (the reply begins inside it)
    think = tools.think_of(model, ids, split, treq)
    jobs = await asyncio.to_thread(make_jobs, model, st, samp, [ids], [""], "messages", constraint)
    slot, run = admit(st, jobs, samp.n, None, stream=bool(samp.stream))
    rid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())
    choices = Choices(model, samp.n, chat=True, jobs=jobs)
    head = {"id": rid, "object": "chat.completion", "created": created, "model": st.config.model_name}
    if samp.stream:
        head["object"] = "chat.completion.chunk"
        chunks = tools.reply_chunks(run, samp, choices, head, treq, think)
        return sse_response(stream(chunks, run, slot, jobs, choices, head, include_usage=samp.include_usage))
    result = await collect(request, run, slot, choices, jobs)
    if result is None:
        return JSONResponse({}, status_code=499)
    out = []
    for j in range(samp.n):
        text = result["texts"].get(j, "")
        lp = choices.logprobs_chat(choices.kept(j, text)) if samp.logprobs is not None else None
        msg, reason = tools.message(text, choices.reasons.get(j, "length"), treq, think)
        out.append({"index": j, "message": msg, "logprobs": lp, "finish_reason": reason})
    return JSONResponse({**head, "choices": out, "usage": usage(jobs, choices.completion_tokens)})
