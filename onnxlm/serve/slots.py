"""llama.cpp's ``GET /slots``: what each of the batch's rows is doing, for monitoring (llama.cpp's dashboards and
proxies read it). onnxlm's batch has ``--max-batch`` rows where llama.cpp has ``--parallel`` slots: slot i is the
batch's row i, busy (``is_processing``) while a request's row decodes there. The snapshot is taken on the engine
thread between two decoding steps, so every figure in one answer comes from the same step; while the engine thread
is inside a long call (``Engine.in_call``: a beam search runs there alone, for its whole length), the rows are read as they stand instead (the batch is not stepping then), so that a
monitor's poll never waits for a search to end.

Per slot: ``id``, ``id_task`` (the request's task number, -1 when idle), ``n_ctx`` (the model's positions),
``speculative`` (the row's request speculates while it decodes alone: prompt lookup, ``--prompt-lookup`` or its
``prompt_lookup_num_tokens``; a prediction; the ``--draft`` model; runtime/decoding/scheduler_speculation.py),
``is_processing``, ``params`` (``n_predict``, ``seed``, ``n_probs``: what a row knows of its request; the sampling
fields, read by each endpoint in its own way, are not repeated here) and ``next_token`` (``has_next_token``,
``n_remain``: tokens it may still make, -1 when idle, ``n_decoded``). onnxlm adds ``n_prompt_tokens``,
``n_prompt_tokens_cached`` (from the prefix cache) and ``index`` (the row within its request, 0..n-1).
``?fail_on_no_slot=1`` answers 503 when every slot is busy; ``onnxlm serve --no-slots`` turns the endpoint off
(501), as llama.cpp's ``--no-slots`` does."""
from __future__ import annotations

import asyncio
import threading

from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse

from .gate import authorize, available
from .llamacpp_request import RANDOM_SEED
from .protocol import APIError, bad
from .state import state_of

#: seconds between two looks at whether the engine thread is inside a call while /slots waits for its snapshot
POLL_S = 0.05
_FLAGS = {"": False, "0": False, "false": False, "1": True, "true": True}


async def slots(request: HTTPRequest):
    authorize(request)
    st = state_of(request)
    if not st.config.slots:
        raise APIError(501, "the /slots endpoint is off on this server (onnxlm serve --no-slots)",
                       "not_supported_error", code="slots_disabled")
    fail_on_no_slot = _flag(request, "fail_on_no_slot")
    model = available(request)
    rows = await _rows_now(st.engine)
    if fail_on_no_slot and len(rows) >= st.config.max_rows:
        raise APIError(503, f"no slot available (all {st.config.max_rows} rows of the batch are busy)",
                       "unavailable_error", code="no_slot_available")
    return JSONResponse(slot_list(rows, st.config.max_rows, model.max_positions))


def slot_list(rows: list, total: int, n_ctx: int | None) -> list[dict]:
    """The engine's rows [(task, request, row, made, left, speculative)] -> llama.cpp's slot objects, ``total`` of
    them."""
    out = []
    for i in range(total):
        slot = {"id": i, "id_task": -1, "n_ctx": n_ctx or 0, "speculative": False, "is_processing": False,
                "params": {}, "next_token": {"has_next_token": False, "n_remain": -1, "n_decoded": 0}}
        if i < len(rows):
            task, req, r, made, left, speculative = rows[i]
            c = req.config
            slot.update(id_task=task, is_processing=True, speculative=speculative,
                        params={"n_predict": -1 if c.max_new_tokens is None else c.max_new_tokens,
                                "seed": RANDOM_SEED if c.seed is None else c.seed, "n_probs": req.logprobs or 0},
                        next_token={"has_next_token": True, "n_remain": left, "n_decoded": made},
                        n_prompt_tokens=req.prompt_tokens, n_prompt_tokens_cached=req.cached_tokens, index=r)
        out.append(slot)
    return out


async def _rows_now(engine) -> list:
    """The engine's rows, asked on its thread between two steps (a call, answered through a queue). While the engine
    thread is inside a call (a beam search runs there alone, for its whole length, while the batch stands still), the rows are read as they stand instead, so that a monitor's poll never
    waits for a search to end."""
    out: asyncio.Queue = asyncio.Queue()
    gone = threading.Event()
    engine.call(lambda model: engine.rows_now(), asyncio.get_running_loop(), out, "slots", gone)
    answer = asyncio.ensure_future(out.get())  # one get, never cancelled mid-way (its item would be lost)
    while not (await asyncio.wait({answer}, timeout=POLL_S))[0]:
        rows = _rows_aside(engine) if engine.in_call else None
        if rows is not None:
            gone.set()  # the call, not started yet, is skipped when its turn comes
            answer.cancel()
            return rows
    _, what, payload = answer.result()
    if what == "error":
        raise payload
    return payload


def _rows_aside(engine, tries: int = 3) -> list | None:
    """``engine.rows_now()`` read off the engine thread while a call holds it; should the call end and a step change
    the batch during the read (a row read as it leaves), read again; None if it keeps changing (then the caller
    waits for its call's answer)."""
    for _ in range(tries):
        try:
            return engine.rows_now()
        except (KeyError, IndexError, RuntimeError, AttributeError, TypeError):
            continue
    return None


def _flag(request: HTTPRequest, name: str) -> bool:
    """A query flag: absent, '', 0/1 or false/true; anything else is a 400 naming it."""
    value = request.query_params.get(name, "")
    if value.lower() not in _FLAGS:
        raise bad(name, f"got {value!r}; allowed: 0, 1, true or false")
    return _FLAGS[value.lower()]


async def slot_action(request: HTTPRequest):
    """llama.cpp's POST /slots/{id}?action=save|restore|erase: 501, as llama.cpp answers save and restore without a
    --slot-save-path: this server has no slots to save or erase (one prefix cache serves every request)."""
    authorize(request)
    action = request.query_params.get("action")
    if action not in ("save", "restore", "erase"):
        raise APIError(400, f"action: got {action!r:.40}; allowed: save, restore, erase", "invalid_request_error",
                       param="action")
    raise APIError(501, f"slot {action} is not supported: this server has no slots (one prefix cache serves every "
                        "request and keeps what it can)", "not_supported_error", code="not_supported")
