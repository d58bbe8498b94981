"""What every request passes before any work: the API key, a loaded model (503 while loading or draining), the body
(at most ``--max-body-mb``, JSON, known keys, the served model's name), and for the generation endpoints their
sampling parameters."""
from __future__ import annotations

import hmac

from starlette.requests import Request as HTTPRequest

from . import protocol
from .protocol import APIError
from .state import state_of


def authorize(request: HTTPRequest, *, key_header: str | None = None) -> None:
    """The server's API key from ``Authorization: Bearer``, or from ``key_header`` first where an API names its own
    (Anthropic's ``x-api-key``); 401 otherwise. A browser page of an origin ``--allowed-origins`` does not list (its
    ``Origin`` header; the server's own pages are its own origin) is refused with a 403 first: a form post or a
    text/plain fetch needs no preflight, and the llama.cpp endpoints read such bodies."""
    config = state_of(request).config
    origin = request.headers.get("origin")
    if origin is not None and "*" not in config.allowed_origins and not _own_or_listed(request, origin, config):
        raise APIError(403, f"requests from pages of {origin[:100]!r} are not allowed here (onnxlm serve "
                            "--allowed-origins lists the origins that are; behind a proxy, list its public origin)",
                       "permission_error", code="origin_not_allowed")
    key = config.api_key
    if key is None:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given.lower().startswith("bearer ") else ""
    if key_header is not None:
        token = request.headers.get(key_header) or token
    if not hmac.compare_digest(token.encode(), key.encode()):
        how = f"'{key_header}: <key>' or " if key_header is not None else ""
        raise APIError(401, f"Incorrect or missing API key (send {how}'Authorization: Bearer <key>')",
                       "authentication_error", code="invalid_api_key")


def _origin(value: str) -> str:
    """An origin as browsers compare them: lowercase, no trailing slash, no default port."""
    value = value.strip().lower().rstrip("/")
    for scheme, port in (("http://", ":80"), ("https://", ":443")):
        if value.startswith(scheme) and value.endswith(port):
            value = value[:-len(port)]
    return value


def _own_or_listed(request: HTTPRequest, origin: str, config) -> bool:
    """A page of this server (the browser says same-origin, or the origin is this request's own, by its Host or a
    proxy's X-Forwarded-Host / -Proto), or of an origin --allowed-origins lists."""
    if request.headers.get("sec-fetch-site") == "same-origin":  # set by the browser; a page cannot forge it
        return True
    seen = _origin(origin)
    host = request.headers.get("x-forwarded-host") or request.headers.get("host", "")
    scheme = request.headers.get("x-forwarded-proto") or request.url.scheme
    return seen == _origin(f"{scheme}://{host}") or seen in {_origin(o) for o in config.allowed_origins}


def available(request: HTTPRequest):
    """503 while loading, after a failed load and while draining; -> the model."""
    st = state_of(request)
    if st.draining:
        raise APIError(503, "the server is shutting down", "server_error", code="shutting_down")
    if not st.engine.ready.is_set() or st.engine.load_error is not None:
        raise APIError(503, "the model is not loaded yet" if st.engine.load_error is None else
                       f"the model failed to load: {st.engine.load_error}", "server_error", code="model_not_ready")
    return st.engine.model


def generating(request: HTTPRequest):
    """``available``, and 400 ``generation_not_supported`` for a model that only embeds (an embedding encoder:
    runtime/encoder_embedder.py) -> the model. Every generating endpoint asks it first."""
    model = available(request)
    if not getattr(model, "can_generate", True):
        if getattr(model, "is_reranker", False):
            raise APIError(400, "this model only reranks (a reranker): it cannot generate text; use /rerank (or "
                                "/v1/rerank)", code="generation_not_supported")
        raise APIError(400, "this model only embeds (an embedding model): it cannot generate text; use "
                            "/v1/embeddings (or llama.cpp's /embedding)", code="generation_not_supported")
    return model


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than this server's limit of {limit} bytes "
                         f"({limit / 2**20:g} MB, --max-body-mb)", code="request_too_large")


async def read_limited(request: HTTPRequest, limit: int) -> bytes:
    """The body's bytes, or 413 past ``limit`` bytes: at once when Content-Length says so (nothing read), else as
    soon as the chunks received so far pass it (chunked uploads), so an oversized body is never held whole."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():  # count as it arrives
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    request._body = b"".join(chunks)  # cached where Starlette's own body() keeps it, so request.body() still works
    return request._body


async def read_body(request: HTTPRequest, allowed: set, *, llama_cpp: bool = False) -> dict:
    """The body's JSON object, its fields among ``allowed`` and its ``model`` this server's (404 otherwise).
    ``llama_cpp``: one of llama.cpp's own endpoints, which read a JSON body whatever its Content-Type and a single
    model's server answers whatever ``model`` names (a string)."""
    limit = int(state_of(request).config.max_body_mb * 2**20)
    body = protocol.parse_body(await read_limited(request, limit), request.headers.get("content-type"),
                               any_type=llama_cpp)
    protocol.check_keys(body, allowed)
    name = body.get("model")
    if name is not None and not llama_cpp:
        check_model_name(request, name)
    elif name is not None and not isinstance(name, str):
        raise protocol.bad("model", "expected a string")
    return body


def check_model_name(request: HTTPRequest, name) -> None:
    """OpenAI's 404 ``model_not_found`` for a model this server does not serve (a body's ``model``, the name in
    GET /v1/models/{model})."""
    served = state_of(request).config.model_name
    if name != served:
        raise APIError(404, f"The model {name!r} does not exist; this server serves {served!r}", param="model",
                       code="model_not_found")


async def open_request(request: HTTPRequest, schema, chat: bool):
    """What both generation endpoints check first, in this order: the API key, a loaded model, the JSON body
    against ``schema``, the sampling parameters (max_tokens capped by the server) -> (model, state, body, sampling)."""
    authorize(request)
    model = generating(request)
    st = state_of(request)
    body = await read_body(request, schema)
    return model, st, body, protocol.sampling(body, chat=chat, max_tokens_cap=st.config.max_tokens)
