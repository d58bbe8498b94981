"""What the server holds across requests: its settings (``ServeConfig``), the shared state (the engine, counters,
requests in flight) and the admission slot that keeps the in-flight count honest (429 past the batch + queue)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from starlette.requests import Request as HTTPRequest

from onnxlm.runtime.decoding.scheduler_draft import DRAFT_MAX, DRAFT_MIN, DRAFT_P_MIN

from .engine import Engine
from .protocol import APIError


@dataclass
class ServeConfig:
    model_name: str
    api_key: str | None = None
    max_rows: int = 32  # rows decoded together (the batch)
    max_queue: int = 64  # rows (prompts x n) waiting beyond those the batch can hold; more -> 429
    max_tokens: int = 1024  # cap on max_tokens
    max_prompt_tokens: int | None = None  # cap on prompt length (default: the model's context)
    max_body_mb: float = 8  # larger request bodies -> 413 (1 MB = 2**20 bytes)
    prefix_cache_mb: int = 256  # keys/values of recent sequences kept for reuse (runtime/prefix_cache.py); 0: off
    kv_pool_mb: int = 256  # freed KV buffers kept resident for the next ones (runtime/fused/buffer_pool.py); 0: off
    prompt_lookup: int = 0  # tokens a request decoding alone proposes by prompt lookup (speculative decoding); 0: off
    # a draft model's speculation for a request decoding alone (runtime/decoding/scheduler_draft.py; the draft is
    # create_app's draft_loader): llama.cpp's --draft-max / --draft-min / --draft-p-min
    draft_max: int = DRAFT_MAX
    draft_min: int = DRAFT_MIN
    draft_p_min: float = DRAFT_P_MIN
    prefill_chunk: int = 256  # a longer prompt arriving while rows decode: this many tokens a step; 0: whole
    slots: bool = True  # GET /slots answers (llama.cpp's monitoring endpoint: slots.py); False: 501
    pooling: str | None = None  # the embedding endpoints' pooling (runtime/embedding.py); None: the model's own
    # origins whose browser pages may call the API (CORS, preflight included): "*" any, as llama.cpp's and vLLM's
    # servers allow by default; (): none (same-origin only, as the chat page)
    allowed_origins: tuple = ("*",)


@dataclass
class ServeState:
    config: ServeConfig
    engine: Engine
    in_flight: int = 0
    in_flight_rows: int = 0  # the rows (prompts x n) of the requests in flight: what admission counts
    draining: bool = False
    counters: dict = field(default_factory=lambda: {"requests": 0, "rejected_full": 0, "errors": 0,
                                                     "cancelled": 0, "prompt_tokens": 0, "embedding_requests": 0,
                                                     "embedding_tokens": 0, "rerank_requests": 0,
                                                     "rerank_tokens": 0})
    created: int = field(default_factory=lambda: int(time.time()))
    lock: threading.Lock = field(default_factory=threading.Lock)


    def count(self, name: str, amount: int = 1) -> None:
        """Add to a counter of /metrics (handlers on the event loop and worker threads both count)."""
        with self.lock:
            self.counters[name] += amount


def draft_settings(config: ServeConfig) -> dict:
    """The server's draft settings as ``Request.draft`` holds a request's (runtime/decoding/scheduler_draft.py)."""
    return {"max_tokens": config.draft_max, "min_tokens": config.draft_min, "p_min": config.draft_p_min}


def state_of(request: HTTPRequest) -> ServeState:
    return request.app.state.serve


class Slot:
    """One accepted API request of ``rows`` rows (prompts x n): counted in ``in_flight`` and ``in_flight_rows``
    until released (at most once). Refused (429) when its rows would pass the batch (``max_rows``) plus the queue
    (``max_queue``); a request alone on the server is always taken (it waits for nothing)."""

    def __init__(self, st: ServeState, rows: int = 1):
        self.st, self.held, self.rows = st, False, rows
        c = st.config
        with st.lock:
            if st.in_flight and st.in_flight_rows + rows > c.max_rows + c.max_queue:
                st.counters["rejected_full"] += 1
                raise APIError(429, f"the server is at capacity ({st.in_flight} requests, {st.in_flight_rows} rows in "
                                    f"flight; this one has {rows}); retry later", "rate_limit_error",
                               code="queue_full")
            st.in_flight += 1
            st.in_flight_rows += rows
            st.counters["requests"] += 1
            self.held = True

    def release(self) -> None:
        with self.st.lock:
            if self.held:
                self.st.in_flight -= 1
                self.st.in_flight_rows -= self.rows
                self.held = False
