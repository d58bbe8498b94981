"""Embeddings: OpenAI's POST /v1/embeddings and llama.cpp's POST /embedding (and /embeddings, its other name): one
vector per input, the model's last hidden states pooled (runtime/embedding.py) with the server's pooling
(``onnxlm serve --pooling``; default: the model's own, ``model.default_pooling``).

/v1/embeddings (OpenAI's shape)
    {"model", "input": str | [str] | [int] | [[int]], "encoding_format": "float" | "base64", "dimensions", "user"}
 -> {"object": "list", "data": [{"object": "embedding", "index", "embedding": [float] | base64 of little-endian
    float32}], "model", "usage": {"prompt_tokens", "total_tokens"}}; every vector at unit length (OpenAI's are);
    ``dimensions`` d: the first d values renormalised (OpenAI's shortened embeddings). Any other field is a 400 naming
    it, as on the other OpenAI endpoints (llama.cpp's ``content`` and ``embd_normalize`` go to /embedding).
/embedding (llama.cpp's server: ``server_routes::handle_embeddings_impl``, a pooled model's answer)
    {"content" (or "input", which llama.cpp reads first): str | ids | ids and strings mixed | a list of such,
     "embd_normalize": -1 none | 0 max-abs (int16 range) | 1 taxicab | 2 euclidean (default) | p > 2 p-norm}
 -> [{"index": i, "embedding": [[float]]}], one entry per input (a list even for one), the vector inside a list of
    one (llama.cpp's per-token list holds one pooled row).

A text is encoded with the tokenizer's special tokens (a BOS where the model has one), as ``LanguageModel.embed``
encodes it; ids go in as given. At most ``MAX_INPUTS`` inputs, each within the model's context (and the server's
``--max-prompt-tokens``); a mistake is a 400 naming the field. A model that cannot embed (an encoder-decoder, or an
artifact whose graph gives no last_hidden_state) answers 400 ``embeddings_not_supported``.

The vectors are computed on the engine thread as a call in parts (engine.py): one part a batch of similar-length
rows (``PART_ROWS`` rows and the server's ``--prefill-chunk`` padded positions at most, never more than
``MAX_BATCH_TOKENS``), so the running batch keeps decoding between them (its streams pause while a part runs, as for
a long prompt's part; but one input longer than that is one pass, its whole length), and a client that goes away
stops the parts left. The
vectors are ``LanguageModel.embed``'s (a batch's padding never reaches a row's own positions).
"""
from __future__ import annotations

import asyncio
import base64
import re
import threading

import numpy as np
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse

from onnxlm.runtime.embedding import (DEFAULT_POOLING, MAX_BATCH_TOKENS, appended_ids, batches, check_normalize,
                                      check_pooling, embed_batch, normalized, truncated)
from onnxlm.runtime.errors import InputError, ModelFileError, ParameterError

from . import protocol
from .errors import model_error
from .gate import authorize, available, check_model_name, read_body, read_limited
from .llamacpp_request import encode_prompt
from .protocol import APIError, _get_int, _is_int, bad, check_text, renamed
from .run import until_done_or_gone
from .state import Slot, state_of

MAX_INPUTS = 2048  # OpenAI: at most 2048 inputs per request
PART_ROWS = 16  # rows per forward pass, and per part of the engine call (LanguageModel.embed's batch_size)
OPENAI_KEYS = {"model", "input", "encoding_format", "dimensions", "user", "truncate"}
LLAMA_CPP_KEYS = {"model", "content", "input", "embd_normalize", "encoding_format", "truncate"}
ENCODINGS = ("float", "base64")
#: llama.cpp's fields, refused on /v1/embeddings with a pointer to where they are taken
ELSEWHERE = {"content": "llama.cpp's field: POST it to /embedding (or give OpenAI's input here)",
             "embd_normalize": "llama.cpp's field: POST it to /embedding (/v1/embeddings answers unit vectors)"}


async def openai_embeddings(request: HTTPRequest):
    """POST /v1/embeddings: OpenAI's request and answer (module docstring)."""
    authorize(request)
    model = available(request)
    st = state_of(request)
    body = protocol.parse_body(await read_limited(request, int(st.config.max_body_mb * 2**20)),
                               request.headers.get("content-type"))
    for name, why in ELSEWHERE.items():
        if name in body:
            raise bad(name, f"unrecognized request argument {name!r} on /v1/embeddings: {why}")
    protocol.check_keys(body, OPENAI_KEYS)
    if body.get("model") is not None:
        check_model_name(request, body["model"])
    _check_can_embed(model)
    encoding = _encoding(body)
    dimensions = _get_int(body, "dimensions", None, lo=1)
    width = model.manifest.get("hidden_size") if isinstance(getattr(model, "manifest", None), dict) else None
    if dimensions is not None and _is_int(width) and dimensions > width:
        raise _too_many_dimensions(dimensions, width)
    items = openai_inputs(body.get("input"), model.vocab_size)
    truncate = protocol._get_bool(body, "truncate", False)
    rows = await asyncio.to_thread(_encode_openai, model, st, items, truncate)
    raw = await _embed(request, st, rows)
    if raw is None:
        return JSONResponse({}, status_code=499)
    if dimensions is not None and dimensions > raw.shape[1]:
        raise _too_many_dimensions(dimensions, raw.shape[1])
    vectors = shortened(normalized(raw, 2), dimensions)
    tokens = sum(len(r) for r in rows)
    head = {"object": "list", "model": st.config.model_name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return await asyncio.to_thread(lambda: JSONResponse({**head, "data": openai_data(vectors, encoding)}))


async def llama_cpp_embedding(request: HTTPRequest):
    """POST /embedding and /embeddings: llama.cpp's native request and answer (module docstring)."""
    authorize(request)
    model = available(request)
    st = state_of(request)
    body = await read_body(request, LLAMA_CPP_KEYS, llama_cpp=True)
    _check_can_embed(model)
    param = "input" if "input" in body else "content"  # llama.cpp reads input first
    if body.get(param) is None:
        raise bad(param, "required: content (or input): a string, token ids, ids and strings mixed, or a list "
                             "of such inputs")
    try:
        norm = 2 if body.get("embd_normalize") is None else check_normalize(body["embd_normalize"])
    except ParameterError as exc:
        raise model_error(exc) from None
    _encoding(body)  # checked as llama.cpp checks it; its native answer is floats whatever it says
    forms = llama_cpp_inputs(body[param], param)
    truncate = protocol._get_bool(body, "truncate", False)
    rows = await asyncio.to_thread(_encode_llama_cpp, model, st, forms, param, truncate)
    raw = await _embed(request, st, rows)
    if raw is None:
        return JSONResponse({}, status_code=499)
    vectors = normalized(raw, norm)
    return await asyncio.to_thread(lambda: JSONResponse(
        [{"index": i, "embedding": [v]} for i, v in enumerate(vectors.tolist())]))


def _encoding(body: dict) -> str:
    value = body.get("encoding_format")
    if value is None:
        return "float"
    if value not in ENCODINGS:
        raise bad("encoding_format", f"got {value!r:.40}; allowed: 'float' or 'base64'")
    return value


def _too_many_dimensions(dimensions: int, width: int) -> APIError:
    return bad("dimensions", f"got {dimensions}; this model's embeddings have {width}: allowed 1 <= dimensions <= "
                             f"{width}")


def _check_can_embed(model) -> None:
    """400 ``embeddings_not_supported`` (naming ``model``) unless the model's graph gives the hidden states."""
    check = getattr(model, "check_embeddings", None)
    if check is None:
        raise bad("model", "this model cannot make embeddings", code="embeddings_not_supported")
    try:
        check()
    except ModelFileError as exc:
        why = str(exc).split(": ", 1)[-1]  # the artifact's path is the server's business
        raise bad("model", f"this model cannot make embeddings: {why}", code="embeddings_not_supported") from None


def can_embed(model) -> bool:
    """Whether the model answers the embedding endpoints (/v1/models' ``capabilities.embeddings``)."""
    try:
        _check_can_embed(model)
    except APIError:
        return False
    return True


def openai_inputs(value, vocab_size: int) -> list:
    """OpenAI's ``input``: a string, a list of strings, a list of token ids or a list of such lists (not mixed) ->
    the inputs (strings, or lists of ids within the vocabulary); 400 naming ``input`` for anything else."""
    items = protocol.text_or_id_items(value, "input", vocab_size, MAX_INPUTS, mixed=False)
    check_text([x for x in items if isinstance(x, str)], "input")
    return items


def _is_form(x) -> bool:
    """One llama.cpp input given as a list: token ids, or ids and strings mixed (at least one id)."""
    return isinstance(x, list) and bool(x) and all(_is_int(v) or isinstance(v, str) for v in x) and any(
        _is_int(v) for v in x)


def llama_cpp_inputs(value, param: str) -> list:
    """llama.cpp's ``content``: a string, token ids, ids and strings mixed, or a non-empty list of such inputs -> the
    inputs (llama.cpp's tokenize_input_prompts); 400 naming ``param`` for anything else."""
    if isinstance(value, str) or _is_form(value):
        items = [value]
    elif isinstance(value, list) and value and all(isinstance(x, str) or _is_form(x) for x in value):
        items = value
    else:
        raise bad(param, "expected a string, token ids, a list mixing token ids and strings, or a non-empty list of "
                         "such inputs")
    if len(items) > MAX_INPUTS:
        raise bad(param, f"{len(items)} inputs; at most {MAX_INPUTS} per request")
    for i, x in enumerate(items):
        if isinstance(x, str) and not x:
            raise bad(param, f"input {i} is an empty string")
    check_text([s for x in items for s in ([x] if isinstance(x, str) else x) if isinstance(s, str)], param)
    return items


def _encode_openai(model, st, items: list, truncate: bool = False) -> list[list[int]]:
    """Checked inputs -> rows of ids as ``LanguageModel.embed`` makes them (worker thread: long texts take a while);
    ``truncate``: rows past the context (or --max-prompt-tokens) cut to it (``_truncated``)."""
    try:
        rows = model._rows(items)
    except (InputError, ModelFileError) as exc:
        raise bad("input", _runtime_message(exc)) from None
    rows = _truncated(model, st, rows) if truncate else rows
    _check_lengths(model, st, rows, "input")
    return rows


def _truncated(model, st, rows: list[list[int]]) -> list[list[int]]:
    """onnxlm's extension ``truncate`` (ollama's and TEI's name): each row cut to the model's context and the server's
    --max-prompt-tokens, keeping the ids its tokenizer appends last (``embedding.truncated``, as ``embed``'s)."""
    caps = [c for c in (model.max_positions, st.config.max_prompt_tokens) if c]
    if not caps:
        return rows
    tail = appended_ids(model.tokenizer)
    return [truncated(list(r), min(caps), tail) for r in rows]


def _encode_llama_cpp(model, st, forms: list, param: str, truncate: bool = False) -> list[list[int]]:
    """llama.cpp's inputs -> rows of ids: a string or ids as ``LanguageModel.embed`` reads them, a mix as llama.cpp's
    server builds it (llamacpp_request.encode_prompt: the special tokens only for a string that comes first)."""
    rows = []
    for form in forms:
        try:
            if isinstance(form, str) or all(_is_int(v) for v in form):
                rows += model._rows(form if isinstance(form, str) else [form])
            else:
                rows.append(encode_prompt(model, form))
        except (InputError, ModelFileError) as exc:
            raise bad(param, _runtime_message(exc)) from None
        except APIError as exc:  # encode_prompt names /completion's prompt
            raise renamed(exc, [(re.compile(r"^prompt"), param)]) from None
    rows = _truncated(model, st, rows) if truncate else rows
    _check_lengths(model, st, rows, param)
    return rows


def _runtime_message(exc: Exception) -> str:
    """A runtime InputError's message without the runtime's own parameter name ("inputs: ...")."""
    text = str(exc)
    return text.split(": ", 1)[1] if re.match(r"(inputs|input_ids): ", text) else text


def _check_lengths(model, st, rows: list[list[int]], param: str) -> None:
    """400 ``context_length_exceeded`` naming ``param`` for an input past the model's context or the server's
    ``--max-prompt-tokens``."""
    ctx, cap = model.max_positions, st.config.max_prompt_tokens
    for i, row in enumerate(rows):
        if cap is not None and len(row) > cap:
            raise bad(param, f"input {i} has {len(row)} tokens; this server accepts at most {cap}",
                      code="context_length_exceeded")
        if ctx and len(row) > ctx:
            raise bad(param, f"input {i} has {len(row)} tokens; this model's context is {ctx} tokens",
                      code="context_length_exceeded")


async def _embed(request: HTTPRequest, st, rows: list[list[int]]) -> np.ndarray | None:
    """The rows' pooled vectors, unnormalised [n, D] float32, computed on the engine thread in parts (a slot held
    meanwhile: in flight, drained on shutdown); None when the client went away (the parts left are dropped)."""
    pooling = check_pooling(st.config.pooling or getattr(st.engine.model, "default_pooling", DEFAULT_POOLING))
    st.count("embedding_requests")
    st.count("embedding_tokens", sum(len(r) for r in rows))
    return await in_parts(request, st, rows, lambda model, part: embed_batch(model, part, pooling), "embed")


async def in_parts(request: HTTPRequest, st, rows: list[list[int]], compute, tag: str) -> np.ndarray | None:
    """``compute(model, rows) -> [c, ...]`` over the rows in parts on the engine thread (``batch_parts``; a slot
    held meanwhile: in flight, drained on shutdown) -> [n, ...] in the given order; None when the client went away
    (the parts left are dropped). The embedding and rerank endpoints' work."""
    slot = Slot(st, rows=1)
    try:
        call = _EngineCall(st, batch_parts(rows, compute, max_tokens=part_budget(st)), tag)
        return await until_done_or_gone(request, call, call.result)
    finally:
        slot.release()


def part_budget(st) -> int:
    """A part's padded positions: a prompt part's work (--prefill-chunk), at most ``MAX_BATCH_TOKENS``."""
    return min(st.config.prefill_chunk or MAX_BATCH_TOKENS, MAX_BATCH_TOKENS)


class _EngineCall:
    """One request's engine call (``run.until_done_or_gone`` cancels it when its client goes away)."""

    def __init__(self, st, fn, tag: str):
        self.st, self.loop, self.out = st, asyncio.get_running_loop(), asyncio.Queue()
        self.gone = threading.Event()
        st.engine.call(fn, self.loop, self.out, tag, self.gone)

    def cancel(self) -> None:
        self.gone.set()

    async def result(self) -> np.ndarray:
        _, what, payload = await self.out.get()
        if what == "error":
            error = model_error(payload)
            if error.status >= 500:  # the metric counts the server's failures, not a user's mistake
                self.st.count("errors")
            raise error
        return payload


def embedding_parts(rows: list[list[int]], pooling: str, part_rows: int = PART_ROWS,
                    max_tokens: int = MAX_BATCH_TOKENS):
    """``batch_parts`` of the rows' pooled vectors [n, D] float32, unnormalised (the vectors ``LanguageModel.embed``
    gives)."""
    return batch_parts(rows, lambda model, part: embed_batch(model, part, pooling), part_rows, max_tokens)


def batch_parts(rows: list[list[int]], compute, part_rows: int = PART_ROWS, max_tokens: int = MAX_BATCH_TOKENS):
    """-> fn(model), a generator (an engine call in parts, engine.py) returning ``compute(model, part)`` ([c, ...])
    of every row, [n, ...] in the given order. One part is one of ``embedding.batches`` (rows of similar length, at
    most ``part_rows`` of them and ``max_tokens`` padded positions), one forward pass; it yields between parts, so
    the batch's decoding steps run meanwhile, and stops there once its client went away."""
    def run(model):
        out = [None] * len(rows)
        for n, chunk in enumerate(batches([len(r) for r in rows], part_rows, max_tokens)):
            if n:
                yield                                                   # the engine's turn: others' steps
            for i, v in zip(chunk, compute(model, [rows[i] for i in chunk])):  # [c, ...]
                out[i] = v
        return np.stack(out)                                            # [n, ...]
    return run


def shortened(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    # [n, D] float32 at unit length -> [n, d] float32: the first d values, at unit length again (OpenAI's dimensions)
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    return normalized(np.ascontiguousarray(vectors[:, :dimensions]), 2)


def openai_data(vectors: np.ndarray, encoding: str) -> list[dict]:
    # [n, D] float32 -> OpenAI's embedding objects: floats, or base64 of the little-endian float32 bytes
    if encoding == "base64":
        values = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
    else:
        values = vectors.tolist()
    return [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(values)]
