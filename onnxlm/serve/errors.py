"""Errors -> OpenAI-style bodies (Anthropic's under /v1/messages): the app's exception handlers, and the mapping of a
runtime exception to a 400 (a user's mistake: a bad parameter, named as the API names it) or a 500."""
from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from onnxlm.runtime.errors import InputError, ModelFileError, ParameterError

from .protocol import APIError, bad

#: runtime parameter names -> the API's
API_NAMES = {"max_new_tokens": "max_tokens", "max_length": "max_tokens", "num_return_sequences": "n",
             "stop_strings": "stop", "do_sample": "temperature", "json_schema": "response_format",
             "constraints": "response_format", "sequence_bias": "logit_bias"}


#: HTTP status -> Anthropic's error type (others: "api_error" from 500 on, else "invalid_request_error")
ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                         404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                         503: "overloaded_error", 529: "overloaded_error"}


def anthropic_error_body(exc: APIError) -> dict:
    """An APIError -> Anthropic's error body {"type": "error", "error": {"type", "message"}} (/v1/messages)."""
    kind = ANTHROPIC_ERROR_TYPES.get(exc.status, "api_error" if exc.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


def anthropic_error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(anthropic_error_body(exc), status_code=exc.status)


async def api_error(request, exc: APIError):
    return JSONResponse(exc.body(), status_code=exc.status)


async def http_error(request, exc: HTTPException):
    """Starlette's 404 / 405 (an unknown path, a method the path does not take) in the API's error body: Anthropic's
    under /v1/messages (its clients read that shape), OpenAI's elsewhere; a 405 keeps its ``Allow`` header."""
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    error = APIError(exc.status_code, str(exc.detail), kind)
    if request.url.path == "/v1/messages" or request.url.path.startswith("/v1/messages/"):
        body = anthropic_error_body(error)
    else:
        body = error.body()
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def server_error(request, exc: Exception):
    return JSONResponse(APIError(500, f"internal error: {exc}", "server_error").body(), status_code=500)


def users_mistake(exc: BaseException) -> bool:
    """Does the runtime's exception say the request was wrong (a 400 from ``model_error``), not the server?"""
    return isinstance(exc, (ParameterError, InputError, ModelFileError))


def model_error(exc: BaseException) -> APIError:
    """An exception from the runtime -> 400 for a user's mistake (``users_mistake``: bad parameter or input), else
    500."""
    if not users_mistake(exc):
        return APIError(500, f"the model failed: {type(exc).__name__}: {exc}", "server_error")
    if isinstance(exc, ParameterError):
        param = API_NAMES.get(exc.parameter, exc.parameter)
        return bad(param, str(exc).split(": ", 1)[-1])
    return bad(None, str(exc))
