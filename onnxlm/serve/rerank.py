"""Reranking: llama.cpp's POST /rerank (and its other names /v1/rerank, /reranking, /v1/reranking): a reranker's
relevance score for each document against one query (``EncoderEmbedder.rerank``: llama.cpp's RANK pooling, the pair's
ids as its ``format_prompt_rerank`` builds them, the score the classifier head's first output, no sigmoid).

The request and answer are llama.cpp's (tools/server: ``handle_rerank``, ``format_response_rerank``):

    {"model", "query": str, "documents": [str] (or TEI's "texts"), "top_n": int (default: all),
     "return_text": bool (TEI's form only)}
 -> Jina's form (``documents``): {"model", "object": "list", "usage": {"prompt_tokens", "total_tokens"},
    "results": [{"index", "relevance_score"}]}; TEI's form (a body with ``texts``): [{"index", "score"(, "text")}].
    The results are sorted by score, best first, and cut to ``top_n``; ``documents`` is read first where both are
    given (llama.cpp's ``json_value(body, "documents", json_value(body, "texts", ...))``).

A mistake is a 400 naming the field (an unknown one, a query that is no string, documents that are no non-empty list
of strings, a pair past the model's context: ``context_length_exceeded``); a model that is not a reranker answers 400
``rerank_not_supported`` (llama.cpp answers 501 "This server does not support reranking"). The scores are computed
on the engine thread as a call in parts, one batch of similar-length pairs a part (as embeddings.py's).
"""
from __future__ import annotations

import asyncio

import numpy as np
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse

from onnxlm.runtime.encoder_embedder import ranked
from onnxlm.runtime.errors import InputError, ModelFileError

from .embeddings import MAX_INPUTS, _check_lengths, _runtime_message, in_parts
from .gate import authorize, available, read_body
from .protocol import _get_bool, _get_int, bad, check_text
from .state import state_of

KEYS = {"model", "query", "documents", "texts", "top_n", "return_text"}


def is_reranker(model) -> bool:
    return bool(getattr(model, "is_reranker", False))


async def rerank(request: HTTPRequest):
    """POST /rerank, /v1/rerank, /reranking, /v1/reranking: llama.cpp's request and answer (module docstring)."""
    authorize(request)
    model = available(request)
    st = state_of(request)
    body = await read_body(request, KEYS)
    if not is_reranker(model):
        raise bad("model", "this model is not a reranker (a GGUF with pooling_type 4, rank, and its classifier "
                           "head); /rerank needs one", code="rerank_not_supported")
    tei = "texts" in body  # llama.cpp: TEI's answer for a body with texts, Jina's otherwise
    query = body.get("query")
    if query is None:
        raise bad("query", "required: a string")
    if not isinstance(query, str):
        raise bad("query", f"expected a string, got {type(query).__name__}")
    field = "texts" if "texts" in body and "documents" not in body else "documents"  # named: documents unless texts
    docs = body.get(field)
    if not isinstance(docs, list) or not docs or not all(isinstance(d, str) for d in docs):
        raise bad(field, "expected a non-empty array of strings")
    if len(docs) > MAX_INPUTS:
        raise bad(field, f"{len(docs)} documents; at most {MAX_INPUTS} per request")
    check_text([query], "query")
    check_text(docs, field)
    top_n = _get_int(body, "top_n", len(docs), lo=0)
    return_text = tei and _get_bool(body, "return_text", False)
    rows = await asyncio.to_thread(_pairs, model, st, query, docs, field)
    scores = await _score(request, st, rows)
    if scores is None:
        return JSONResponse({}, status_code=499)
    label = "score" if tei else "relevance_score"
    results = []
    for r in ranked(scores, top_n):
        item = {"index": r.index, label: r.score}
        if return_text:
            item["text"] = docs[r.index]
        results.append(item)
    if tei:
        return JSONResponse(results)
    tokens = sum(len(r) for r in rows)
    return JSONResponse({"model": st.config.model_name, "object": "list",
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, "results": results})


def _pairs(model, st, query: str, docs: list[str], field: str) -> list[list[int]]:
    """(query, document) pairs -> their ids (``EncoderEmbedder.pair_ids``: llama.cpp's), each within the context."""
    try:
        rows = [model.pair_ids(query, d) for d in docs]
    except (InputError, ModelFileError) as exc:
        raise bad(field, _runtime_message(exc)) from None
    _check_lengths(model, st, rows, field)
    return rows


async def _score(request: HTTPRequest, st, rows: list[list[int]]) -> np.ndarray | None:
    """The pairs' scores [n] float32 in order, on the engine thread in parts (a slot held meanwhile); None when the
    client went away."""
    st.count("rerank_requests")
    st.count("rerank_tokens", sum(len(r) for r in rows))
    return await in_parts(request, st, rows, lambda model, part: model.rank_scores(part)[:, 0], "rerank")