"""The OpenAI-compatible HTTP app (Starlette + sse-starlette): /v1/completions, /v1/chat/completions, /v1/models,
/health, /metrics, /props, /slots (slots.py), /tokenize, /detokenize and /apply-template (tokenize.py), llama.cpp's
native /completion and /infill (llamacpp.py), Anthropic's /v1/messages (anthropic.py), OpenAI's Responses API
/v1/responses (responses.py), OpenAI's /v1/embeddings and llama.cpp's /embedding (embeddings.py), llama.cpp's
/rerank (rerank.py), and the chat page at / (page.py).

Handlers check the request on the event loop (a user's mistake is a 400 with OpenAI's error body, never a 500),
then hand the model work to the engine thread (engine.py) and relay what it produces: one JSON response, or
server-sent events ending with ``data: [DONE]``. A client that goes away cancels its rows at once. This module
builds the app (routes, exception handlers, the engine's lifespan) and runs it in a thread; the parts are named in
``onnxlm/serve/__init__.py``.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route

from onnxlm.runtime.embedding import check_pooling
from onnxlm.runtime.errors import OnnxlmError, ParameterError
from onnxlm.runtime.manifest import no_chat_template

from .anthropic import count_tokens, messages
from .engine import Engine
from .embeddings import llama_cpp_embedding, openai_embeddings
from .errors import api_error, http_error, server_error
from .llamacpp import completion, infill
from .rerank import rerank
from .page import page_routes
from .protocol import APIError
from .responses import responses
from .routes import change_props, chat_completions, completions, health, metrics, model, models, props
from .slots import slot_action, slots
from .state import ServeConfig, ServeState
from .tokenize import apply_template, detokenize, tokenize

__all__ = ["ServeConfig", "create_app", "start_in_thread"]

log = logging.getLogger("onnxlm.serve")


def _warn_without_chat(loader):
    """The loader, then one warning when the model cannot chat (no chat template): /v1/chat/completions will answer
    400 chat_not_supported, /v1/models' card says ``capabilities.chat: false``, and the page offers completions."""
    def load():
        model = loader()
        if getattr(model, "is_reranker", False):
            log.warning("this model is a reranker: /rerank (/v1/rerank, /reranking) answers, the embedding and "
                        "generating endpoints answer 400")
        elif not getattr(model, "can_generate", True):
            log.warning("this model only embeds (an embedding model): /v1/embeddings and /embedding answer, the "
                        "generating endpoints answer 400 generation_not_supported")
        elif not getattr(model, "chat_template", None):
            why = (no_chat_template(model.manifest) if isinstance(getattr(model, "manifest", None), dict)
                   else "this model has no chat template")
            log.warning("chat is unavailable: %s; /v1/chat/completions answers 400 chat_not_supported, "
                        "/v1/completions works (the page at / sends plain completions)", why)
        return model
    return load


def create_app(loader, config: ServeConfig, draft_loader=None) -> Starlette:
    """loader: () -> model (runs on the engine thread, so /health answers 503 while it loads); draft_loader: () ->
    a draft model for speculative decoding (``config.draft_*``; runtime/decoding/scheduler_draft.py), or None."""
    if config.pooling is not None:
        check_pooling(config.pooling)  # ParameterError naming pooling: one of runtime/embedding.py's POOLINGS
    if draft_loader is not None and config.prompt_lookup:
        raise ParameterError("draft", "a draft model or prompt lookup (prompt_lookup), not both")
    engine = Engine(_warn_without_chat(loader), max_rows=config.max_rows, prefix_cache_mb=config.prefix_cache_mb,
                    kv_pool_mb=config.kv_pool_mb, prompt_lookup=config.prompt_lookup,
                    prefill_chunk=config.prefill_chunk, draft_loader=draft_loader,
                    draft_settings=dict(max_tokens=config.draft_max, min_tokens=config.draft_min,
                                        p_min=config.draft_p_min))
    state = ServeState(config, engine)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        engine.stop()

    app = Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/v1/health", health, methods=["GET"]),  # llama.cpp's alias, as its other unversioned ones below
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/messages", messages, methods=["POST"]),  # Anthropic's Messages API (anthropic.py)
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        Route("/v1/responses", responses, methods=["POST"]),  # OpenAI's Responses API, stateless (responses.py)
        Route("/v1/embeddings", openai_embeddings, methods=["POST"]),  # OpenAI's embeddings (embeddings.py)
        Route("/embeddings", llama_cpp_embedding, methods=["POST"]),  # llama.cpp's native embeddings, both names
        Route("/embedding", llama_cpp_embedding, methods=["POST"]),
        Route("/rerank", rerank, methods=["POST"]),  # llama.cpp's reranking, its four names (rerank.py)
        Route("/reranking", rerank, methods=["POST"]),
        Route("/v1/rerank", rerank, methods=["POST"]),
        Route("/v1/reranking", rerank, methods=["POST"]),
        Route("/completion", completion, methods=["POST"]),  # llama.cpp's native endpoint (llamacpp.py)
        Route("/completions", completion, methods=["POST"]),
        Route("/infill", infill, methods=["POST"]),  # llama.cpp's fill-in-the-middle (llamacpp_infill.py)
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
        Route("/apply-template", apply_template, methods=["POST"]),
        Route("/props", props, methods=["GET"]),
        Route("/props", change_props, methods=["POST"]),
        Route("/slots", slots, methods=["GET"]),  # llama.cpp's monitoring endpoint (slots.py)
        Route("/slots/{id_slot}", slot_action, methods=["POST"]),
        *page_routes(),
    ], exception_handlers={APIError: api_error, HTTPException: http_error, Exception: server_error},
        lifespan=lifespan, middleware=_cors(config.allowed_origins))
    app.state.serve = state
    return app


def _cors(origins) -> list:
    """Cross-origin requests from browser pages of ``origins`` ("*": any): preflights answered before the API key
    is asked (a browser sends none with them), every method and header allowed, no cookies (the key is a header)."""
    if not origins:
        return []
    return [Middleware(CORSMiddleware, allow_origins=list(origins), allow_methods=["*"], allow_headers=["*"],
                       expose_headers=["*"])]


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
