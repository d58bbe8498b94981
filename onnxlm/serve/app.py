"""The OpenAI-compatible HTTP app (Starlette + sse-starlette): /v1/completions, /v1/chat/completions, /v1/models,
/health, /metrics.

Handlers check the request on the event loop (a user's mistake is a 400 with OpenAI's error body, never a 500),
then hand the model work to the engine thread (engine.py) and relay what it produces: one JSON response, or
server-sent events ending with ``data: [DONE]``. A client that goes away cancels its rows at once.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse
from starlette.routing import Route

from onnxlm.runtime.constraints import engine_for, make_constraint, response_format_to_params
from onnxlm.runtime.decoding.scheduler import Request
from onnxlm.runtime.errors import InputError, ModelFileError, OnnxlmError, ParameterError
from onnxlm.runtime.penalties import PresenceFrequencyPenaltyProcessor
from onnxlm.runtime.processors import log_softmax

from . import protocol
from .engine import Engine
from .protocol import APIError, bad

#: runtime parameter names -> the API's
API_NAMES = {"max_new_tokens": "max_tokens", "max_length": "max_tokens", "num_return_sequences": "n",
             "stop_strings": "stop", "do_sample": "temperature", "json_schema": "response_format",
             "constraints": "response_format"}
REASONS = {"eos": "stop", "stop": "stop", "length": "length", None: "length"}


@dataclass
class ServeConfig:
    model_name: str
    api_key: str | None = None
    max_rows: int = 32  # rows decoded together (the batch)
    max_queue: int = 64  # requests waiting beyond those the batch can hold; more -> 429
    max_tokens: int = 1024  # cap on max_tokens
    max_prompt_tokens: int | None = None  # cap on prompt length (default: the model's context)


@dataclass
class ServeState:
    config: ServeConfig
    engine: Engine
    in_flight: int = 0
    draining: bool = False
    counters: dict = field(default_factory=lambda: {"requests": 0, "rejected_full": 0, "errors": 0,
                                                     "cancelled": 0})
    created: int = field(default_factory=lambda: int(time.time()))
    lock: threading.Lock = field(default_factory=threading.Lock)


def create_app(loader, config: ServeConfig) -> Starlette:
    """loader: () -> model (runs on the engine thread, so /health answers 503 while it loads)."""
    engine = Engine(loader, max_rows=config.max_rows)
    state = ServeState(config, engine)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        engine.stop()

    app = Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ], exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan)
    app.state.serve = state
    return app


# ---------------------------------------------------------------------------------------------------- errors
async def _api_error(request, exc: APIError):
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request, exc: HTTPException):
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(APIError(exc.status_code, str(exc.detail), kind).body(), status_code=exc.status_code)


async def _server_error(request, exc: Exception):
    return JSONResponse(APIError(500, f"internal error: {exc}", "server_error").body(), status_code=500)


def _model_error(exc: BaseException) -> APIError:
    """An exception from the runtime -> 400 for a user's mistake (bad parameter or input), else 500."""
    if isinstance(exc, ParameterError):
        param = API_NAMES.get(exc.parameter, exc.parameter)
        return bad(param, str(exc).split(": ", 1)[-1])
    if isinstance(exc, (InputError, ModelFileError)):
        return bad(None, str(exc))
    return APIError(500, f"the model failed: {type(exc).__name__}: {exc}", "server_error")


# ---------------------------------------------------------------------------------------------------- gate
def _state(request: HTTPRequest) -> ServeState:
    return request.app.state.serve


def _authorize(request: HTTPRequest) -> None:
    key = _state(request).config.api_key
    if key is None:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(token.encode(), key.encode()):
        raise APIError(401, "Incorrect or missing API key (send 'Authorization: Bearer <key>')",
                       "authentication_error", code="invalid_api_key")


def _available(request: HTTPRequest):
    """503 while loading, after a failed load and while draining; -> the model."""
    st = _state(request)
    if st.draining:
        raise APIError(503, "the server is shutting down", "server_error", code="shutting_down")
    if not st.engine.ready.is_set() or st.engine.load_error is not None:
        raise APIError(503, "the model is not loaded yet" if st.engine.load_error is None else
                       f"the model failed to load: {st.engine.load_error}", "server_error", code="model_not_ready")
    return st.engine.model


async def _body(request: HTTPRequest, allowed: set) -> dict:
    body = protocol.parse_body(await request.body(), request.headers.get("content-type"))
    protocol.check_keys(body, allowed)
    name = body.get("model")
    if name is not None and name != _state(request).config.model_name:
        raise APIError(404, f"The model {name!r} does not exist; this server serves "
                            f"{_state(request).config.model_name!r}", param="model", code="model_not_found")
    return body


class _Slot:
    """One accepted API request: counted in ``in_flight`` until released (at most once)."""

    def __init__(self, st: ServeState):
        self.st, self.held = st, False
        c = st.config
        with st.lock:
            if st.in_flight >= c.max_rows + c.max_queue:
                st.counters["rejected_full"] += 1
                raise APIError(429, f"the server is at capacity ({st.in_flight} requests in flight); retry later",
                               "rate_limit_error", code="queue_full")
            st.in_flight += 1
            st.counters["requests"] += 1
            self.held = True

    def release(self) -> None:
        with self.st.lock:
            if self.held:
                self.st.in_flight -= 1
                self.held = False


# ---------------------------------------------------------------------------------------------------- small routes
async def health(request: HTTPRequest):
    st = _state(request)
    e = st.engine
    status = ("error" if e.load_error is not None else "loading" if not e.ready.is_set()
              else "draining" if st.draining else "ok")
    body = {"status": status, "in_flight": st.in_flight, **e.stats()}
    return JSONResponse(body, status_code=200 if status == "ok" else 503)


async def metrics(request: HTTPRequest):
    _authorize(request)
    st = _state(request)
    return JSONResponse({"in_flight": st.in_flight, "draining": st.draining, **st.counters, **st.engine.stats()})


async def models(request: HTTPRequest):
    _authorize(request)
    st = _state(request)
    return JSONResponse({"object": "list", "data": [{"id": st.config.model_name, "object": "model",
                                                     "created": st.created, "owned_by": "onnxlm"}]})


# ---------------------------------------------------------------------------------------------------- the work
@dataclass
class Job:
    """One prompt of an API request: its ids, text, and either a scheduler request or a beam-search call."""

    ids: list[int]
    text: str
    req: Request | None = None
    beam_params: dict | None = None
    prompt_logprobs: list | None = None  # echo: [(id, logprob | None, top | None)]


def _encode(model, prompt, param: str) -> list[int]:
    if isinstance(prompt, list):
        return [int(i) for i in prompt]
    if model.tokenizer is None:
        raise bad(param, "this model has no tokenizer.json: send token ids")
    try:
        return model._encode(prompt)
    except InputError as exc:
        raise bad(param, str(exc)) from None


def _limits(model, st: ServeState, ids: list[int], max_tokens: int | None, param: str) -> int:
    """Prompt length and context checks -> the max new tokens (400 context_length_exceeded past the context)."""
    cap = st.config.max_prompt_tokens
    if cap is not None and len(ids) > cap:
        raise bad(param, f"the prompt has {len(ids)} tokens; this server accepts at most {cap}",
                  code="context_length_exceeded")
    ctx = model.max_positions
    if max_tokens is None:  # chat without max_tokens: up to the context (and the server's cap)
        max_tokens = st.config.max_tokens if not ctx else min(st.config.max_tokens, ctx - len(ids))
        if max_tokens <= 0:
            raise bad(param, f"the prompt has {len(ids)} tokens and fills this model's context of {ctx} tokens",
                      code="context_length_exceeded")
    if ctx and len(ids) + max_tokens > ctx:
        raise bad("max_tokens", f"this model's maximum context length is {ctx} tokens; the prompt has {len(ids)} "
                                f"and max_tokens is {max_tokens} ({len(ids) + max_tokens} in all); shorten the prompt "
                                "or lower max_tokens", code="context_length_exceeded")
    return max_tokens


async def _constraint(model, body: dict):
    """OpenAI's ``response_format`` -> a compiled Constraint every row follows, or None (absent / "text");
    400 naming response_format for a bad one, or without the 'structured' extra.  Compiling (and, once per model,
    building the llguidance tokenizer) runs in a worker thread, off the event loop."""
    try:
        params = response_format_to_params(body.get("response_format"))
        if not params:
            return None
        constraint = make_constraint("json_schema", params["json_schema"])
        engine = engine_for(model, model.generation_config.eos_token_ids, "response_format")
        await asyncio.to_thread(engine.compile, constraint)
        return constraint
    except ParameterError as exc:
        raise _model_error(exc) from None


def _make_jobs(model, st: ServeState, samp: protocol.Sampling, prompts: list, texts: list,
               param: str, constraint=None) -> list[Job]:
    jobs = []
    for prompt, text in zip(prompts, texts):
        ids = prompt if isinstance(prompt, list) else _encode(model, prompt, param)
        max_new = _limits(model, st, ids, samp.max_tokens, param)
        job = Job(ids, text)
        if max_new == 0:  # echo with max_tokens 0: scoring only
            jobs.append(job)
            continue
        params = samp.generation_params(max_new)
        try:
            config = model.resolve_config(params)
        except (ParameterError, InputError) as exc:
            raise _model_error(exc) from None
        if samp.num_beams > 1:
            job.beam_params = params if constraint is None else {**params, "constraints": [constraint]}
        else:
            extra = []
            if samp.presence_penalty or samp.frequency_penalty:
                t0 = model.initial_sequences(np.asarray([ids])).shape[1]
                extra.append(PresenceFrequencyPenaltyProcessor(samp.presence_penalty, samp.frequency_penalty, t0))
            job.req = Request(ids, config, logprobs=samp.logprobs, extra_processors=extra, constraint=constraint)
            try:
                st.engine.scheduler.prepare(job.req)
            except (ParameterError, InputError) as exc:
                raise _model_error(exc) from None
        jobs.append(job)
    return jobs


def _prompt_logprobs(ids: list[int], k: int):
    """-> fn(model) giving [(id, logprob | None, top | None)] for every prompt token (the first has none): the
    runtime's ``score`` (log p(ids[i] | ids[:i])), and the top k of the logits when k > 0."""
    def run(model):
        if len(ids) < 2:
            return [(ids[0], None, None)]
        lps = model.score([ids]).token_logprobs[0]
        tops = [None] * (len(ids) - 1)
        if k:
            logp = log_softmax(model.logits(np.asarray([ids], np.int64))[0, :-1])  # [t-1, V]
            order = np.argsort(-logp, axis=-1, kind="stable")[:, :k]
            tops = [[(int(i), float(logp[p, i])) for i in order[p]] for p in range(len(ids) - 1)]
        return [(ids[0], None, None)] + [(int(t), float(lp), top) for t, lp, top in zip(ids[1:], lps, tops)]
    return run


class _Run:
    """Sends a request's jobs to the engine and gathers what comes back (one asyncio queue for all of them)."""

    def __init__(self, st: ServeState, jobs: list[Job], n: int, echo_logprobs: int | None):
        self.st, self.jobs, self.n = st, jobs, n
        self.loop = asyncio.get_running_loop()
        self.out: asyncio.Queue = asyncio.Queue()
        self.pending = 0
        for i, job in enumerate(jobs):
            if echo_logprobs is not None:
                st.engine.call(_prompt_logprobs(job.ids, echo_logprobs), self.loop, self.out, ("echo", i))
                self.pending += 1
            if job.req is not None:
                st.engine.submit(job.req, self.loop, self.out, ("gen", i))
                self.pending += 1
            elif job.beam_params is not None:
                params = job.beam_params
                st.engine.call(lambda m, ids=job.ids, p=params: m.generate([ids], **p), self.loop, self.out,
                               ("beam", i))
                self.pending += 1

    def cancel(self) -> None:
        for job in self.jobs:
            if job.req is not None and not job.req.done:
                self.st.engine.cancel(job.req)

    async def items(self):
        """Yield (kind, job index, payload) until every job is done; an error raises APIError."""
        while self.pending:
            (kind, i), what, payload = await self.out.get()
            if what == "error":
                self.cancel()
                self.st.counters["errors"] += 1
                raise _model_error(payload)
            if what in ("done", "result"):
                self.pending -= 1
            yield kind, i, what, payload


def _token_str(model, token_id: int) -> str:
    """A token's text; a token holding part of a multi-byte character (decodes to U+FFFD) is named by its
    vocabulary string instead, so that distinct tokens never share a name in ``top_logprobs``."""
    if model.tokenizer is None:
        return str(token_id)
    text = model.tokenizer.decode([int(token_id)], skip_special_tokens=False)
    if "\ufffd" in text:
        return model.tokenizer.id_to_token(int(token_id)) or text
    return text


def _usage(jobs: list[Job], completion: int) -> dict:
    prompt = sum(len(j.ids) for j in jobs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _until_done_or_gone(request: HTTPRequest, run: _Run, consume):
    """Run ``consume()`` (a coroutine) while watching for the client going away (non-streaming requests)."""
    task = asyncio.ensure_future(consume())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.2)
            if done:
                return task.result()
            if await request.is_disconnected():
                run.cancel()
                _state(request).counters["cancelled"] += 1
                task.cancel()
                return None
    finally:
        if not task.done():
            task.cancel()


# ---------------------------------------------------------------------------------------------------- completions
class _Choices:
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
            self.tokens.setdefault(index, []).append((ev.token_id, ev.logprob, ev.top_logprobs))
            self.completion_tokens += 1
            if ev.finished:
                self.reasons[index] = REASONS[ev.reason]
            out.append((index, ev))
        return out

    def logprobs_completions(self, entries, offset: int = 0) -> dict:
        tokens = [_token_str(self.model, t) for t, _, _ in entries]
        offsets, pos = [], offset
        for s in tokens:
            offsets.append(pos)
            pos += len(s)
        return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries],
                "top_logprobs": [None if top is None else {_token_str(self.model, a): b for a, b in top}
                                 for _, _, top in entries],
                "text_offset": offsets}

    def logprobs_chat(self, entries) -> dict:
        def one(t, lp):
            s = _token_str(self.model, t)
            return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}
        return {"content": [{**one(t, lp), "top_logprobs": [one(a, b) for a, b in (top or [])]}
                            for t, lp, top in entries]}


async def _open(request: HTTPRequest, schema, chat: bool):
    """What both generation endpoints check first, in this order: the API key, a loaded model, the JSON body
    against ``schema``, the sampling parameters (max_tokens capped by the server) -> (model, state, body, sampling)."""
    _authorize(request)
    model = _available(request)
    st = _state(request)
    body = await _body(request, schema)
    return model, st, body, protocol.sampling(body, chat=chat, max_tokens_cap=st.config.max_tokens)


async def completions(request: HTTPRequest):
    model, st, body, samp = await _open(request, protocol.COMPLETIONS, chat=False)
    prompts = protocol.prompts(body, model.vocab_size)
    echo = protocol._get_bool(body, "echo", False)
    constraint = await _constraint(model, body)
    texts = [p if isinstance(p, str) else (model.tokenizer.decode(p, skip_special_tokens=False)
                                           if model.tokenizer else "") for p in prompts]
    jobs = _make_jobs(model, st, samp, prompts, texts, "prompt", constraint)
    slot, run = _admit(st, jobs, samp.n, samp.logprobs if echo and samp.logprobs is not None else None)
    rid, created = "cmpl-" + uuid.uuid4().hex, int(time.time())
    choices = _Choices(model, samp.n, chat=False)
    head = {"id": rid, "object": "text_completion", "created": created, "model": st.config.model_name}
    if samp.stream:
        return EventSourceResponse(_stream(_completion_chunks(run, jobs, samp, choices, head, echo), run, slot,
                                           jobs, samp, choices, head))
    result = await _collect(request, run, slot, choices, jobs)
    if result is None:
        return JSONResponse({}, status_code=499)
    out = []
    for i, job in enumerate(jobs):
        for j in range(samp.n):
            index = i * samp.n + j
            text = result["texts"].get(index, "")
            entries = choices.tokens.get(index, [])
            prompt_entries = job.prompt_logprobs or []
            lp = None
            if samp.logprobs is not None:
                lp = choices.logprobs_completions((prompt_entries if echo else []) + entries)
            out.append({"index": index, "text": (job.text + text) if echo else text, "logprobs": lp,
                        "finish_reason": choices.reasons.get(index, "length")})
    return JSONResponse({**head, "choices": out, "usage": _usage(jobs, choices.completion_tokens)})


def _admit(st, jobs: list[Job], n: int, echo_logprobs) -> tuple[_Slot, _Run]:
    """Take a slot and start the request's run -> (slot, run); the slot is given back if the run cannot start."""
    slot = _Slot(st)
    try:
        return slot, _Run(st, jobs, n, echo_logprobs)
    except BaseException:
        slot.release()
        raise


async def _collect(request: HTTPRequest, run: _Run, slot: _Slot, choices: _Choices, jobs: list[Job]):
    """A non-streaming request's whole output ({"texts": ...}, None when the client went away); frees the slot."""
    try:
        return await _until_done_or_gone(request, run, lambda: _gather(run, choices, jobs))
    finally:
        slot.release()


async def _gather(run: _Run, choices: _Choices, jobs: list[Job]) -> dict:
    """Collect a non-streaming request's output -> {"texts": {index: final text}}."""
    texts = {}
    async for kind, i, what, payload in run.items():
        if what == "events":
            choices.add_events(i, payload)
        elif kind == "echo":
            jobs[i].prompt_logprobs = payload
        elif kind == "beam":
            for j, (text, new, reason) in enumerate(zip(payload.text, payload.new_tokens, payload.finish_reasons)):
                index = i * run.n + j
                texts[index], choices.reasons[index] = text, REASONS[reason]
                choices.tokens[index] = [(t, None, None) for t in new]
                choices.completion_tokens += len(new)
        elif what == "done" and payload is not None:
            for j, text in enumerate(payload.final_text):
                texts[i * run.n + j] = text
    return {"texts": texts}


def _sse(obj) -> dict:
    return {"data": json.dumps(obj, ensure_ascii=False)}


async def _stream(chunks, run: _Run, slot: _Slot, jobs, samp, choices: _Choices, head: dict):
    """The SSE framing both streams share: each chunk of ``chunks`` (an async iterator of dicts), then the usage
    chunk when asked, then [DONE]; an APIError on the way becomes its error body and [DONE]; the run is cancelled and
    the slot released however the stream ends (the client went away, or we are done: its rows are freed now)."""
    try:
        async for chunk in chunks:
            yield _sse(chunk)
        if samp.include_usage:
            yield _sse({**head, "choices": [], "usage": _usage(jobs, choices.completion_tokens)})
        yield {"data": "[DONE]"}
    except APIError as exc:
        yield _sse(exc.body())
        yield {"data": "[DONE]"}
    finally:
        await chunks.aclose()
        run.cancel()
        slot.release()


async def _completion_chunks(run: _Run, jobs, samp, choices: _Choices, head: dict, echo: bool):
    if echo and samp.logprobs is None:
        for i, job in enumerate(jobs):
            for j in range(samp.n):
                yield {**head, "choices": [{"index": i * samp.n + j, "text": job.text, "logprobs": None,
                                            "finish_reason": None}]}
    async for kind, i, what, payload in run.items():
        if kind == "echo":
            jobs[i].prompt_logprobs = payload
            for j in range(samp.n):
                lp = choices.logprobs_completions(payload)
                yield {**head, "choices": [{"index": i * samp.n + j, "text": jobs[i].text, "logprobs": lp,
                                            "finish_reason": None}]}
        elif what == "events":
            for index, ev in choices.add_events(i, payload):
                lp = (choices.logprobs_completions([(ev.token_id, ev.logprob, ev.top_logprobs)])
                      if samp.logprobs is not None else None)
                if not ev.text and not ev.finished and lp is None:
                    continue
                yield {**head, "choices": [{"index": index, "text": ev.text, "logprobs": lp,
                                            "finish_reason": REASONS[ev.reason] if ev.finished else None}]}


# ---------------------------------------------------------------------------------------------------- chat
async def chat_completions(request: HTTPRequest):
    model, st, body, samp = await _open(request, protocol.CHAT, chat=True)
    msgs = protocol.messages(body)
    constraint = await _constraint(model, body)
    if not model.chat_template:
        raise bad("messages", "this model has no chat template (chat_template.jinja); use /v1/completions",
                  code="chat_not_supported")
    try:
        ids = model.render_chat(msgs, tokenize=True)
    except (InputError, ModelFileError) as exc:
        raise bad("messages", str(exc)) from None
    jobs = _make_jobs(model, st, samp, [ids], [""], "messages", constraint)
    slot, run = _admit(st, jobs, samp.n, None)
    rid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())
    choices = _Choices(model, samp.n, chat=True)
    head = {"id": rid, "object": "chat.completion", "created": created, "model": st.config.model_name}
    if samp.stream:
        head["object"] = "chat.completion.chunk"
        return EventSourceResponse(_stream(_chat_chunks(run, samp, choices, head), run, slot, jobs, samp, choices,
                                           head))
    result = await _collect(request, run, slot, choices, jobs)
    if result is None:
        return JSONResponse({}, status_code=499)
    out = []
    for j in range(samp.n):
        lp = choices.logprobs_chat(choices.tokens.get(j, [])) if samp.logprobs is not None else None
        out.append({"index": j, "message": {"role": "assistant", "content": result["texts"].get(j, "")},
                    "logprobs": lp, "finish_reason": choices.reasons.get(j, "length")})
    return JSONResponse({**head, "choices": out, "usage": _usage(jobs, choices.completion_tokens)})


async def _chat_chunks(run: _Run, samp, choices: _Choices, head: dict):
    for j in range(samp.n):
        yield {**head, "choices": [{"index": j, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                    "finish_reason": None}]}
    async for kind, i, what, payload in run.items():
        if what != "events":
            continue
        for index, ev in choices.add_events(i, payload):
            lp = (choices.logprobs_chat([(ev.token_id, ev.logprob, ev.top_logprobs)])
                  if samp.logprobs is not None else None)
            if ev.text or lp is not None:
                yield {**head, "choices": [{"index": index, "delta": {"content": ev.text}, "logprobs": lp,
                                            "finish_reason": None}]}
            if ev.finished:
                yield {**head, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                            "finish_reason": REASONS[ev.reason]}]}


# ---------------------------------------------------------------------------------------------------- running
def start_in_thread(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0):
    """Run the app under uvicorn in a background thread (tests, notebooks) -> (server, thread, port).
    ``port=0`` picks a free port. Stop it with ``server.should_exit = True; thread.join()``."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    end = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > end or not thread.is_alive():
            raise OnnxlmError("the server did not start")
        time.sleep(0.02)
    return server, thread, sock.getsockname()[1]
