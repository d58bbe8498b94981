"""GET /metrics in Prometheus' text exposition format (version 0.0.4), what llama.cpp's and vLLM's servers give a
scraper: chosen by ``?format=prometheus``, or by an Accept header that asks for ``text/plain`` or OpenMetrics (a
Prometheus scrape does) and not for JSON. Otherwise /metrics stays the JSON object it always was (curl's ``*/*``).

Each JSON field becomes one metric: the counters below as ``onnxlm_..._total`` counters, every other number as an
``onnxlm_<field>`` gauge (``draining``: 0 or 1)."""
from __future__ import annotations

from starlette.requests import Request as HTTPRequest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: JSON field -> (metric name, help) of the fields that only grow
COUNTERS = {
    "requests": ("onnxlm_requests_total", "API requests accepted"),
    "rejected_full": ("onnxlm_requests_rejected_total", "requests refused with 429 (the queue was full)"),
    "errors": ("onnxlm_request_errors_total", "requests the model failed (500)"),
    "cancelled": ("onnxlm_requests_cancelled_total", "requests whose client went away before the end"),
    "prompt_tokens": ("onnxlm_prompt_tokens_total", "prompt tokens of the requests accepted"),
    "embedding_requests": ("onnxlm_embedding_requests_total",
                           "embedding requests accepted (/v1/embeddings, /embedding)"),
    "embedding_tokens": ("onnxlm_embedding_tokens_total", "input tokens of the embedding requests accepted"),
    "rerank_requests": ("onnxlm_rerank_requests_total", "rerank requests accepted (/rerank, /v1/rerank, /reranking)"),
    "rerank_tokens": ("onnxlm_rerank_tokens_total", "tokens of the (query, document) pairs of the rerank requests"),
    "completion_tokens": ("onnxlm_generation_tokens_total", "tokens generated"),
    "steps": ("onnxlm_decode_steps_total", "continuous-batching steps (one forward pass of the running rows each)"),
    "prefix_cache_hits": ("onnxlm_prefix_cache_hits_total", "prompts that reused a cached prefix"),
    "prefix_cache_misses": ("onnxlm_prefix_cache_misses_total", "prompts that found no cached prefix"),
    "prefix_cache_reused_tokens": ("onnxlm_prefix_cache_reused_tokens_total", "prompt tokens not computed again"),
    "speculative_passes": ("onnxlm_speculative_passes_total", "passes that checked speculative proposals"),
    "speculative_proposed_tokens": ("onnxlm_speculative_proposed_tokens_total",
                                    "tokens proposed (prompt lookup, prediction, draft)"),
    "speculative_accepted_tokens": ("onnxlm_speculative_accepted_tokens_total",
                                    "proposed tokens accepted (each saved a forward pass)"),
    "prefill_parts": ("onnxlm_prefill_parts_total", "parts of long prompts prefilled a part per step"),
    "kv_pool_reused": ("onnxlm_kv_pool_reused_total", "KV buffers taken from the pool"),
    "kv_pool_fresh": ("onnxlm_kv_pool_fresh_total", "KV buffers allocated anew"),
}
#: JSON field -> (metric name, help) of the gauges named here (any other number: ``onnxlm_<field>``)
GAUGES = {
    "in_flight": ("onnxlm_requests_in_flight", "requests in flight"),
    "draining": ("onnxlm_draining", "1 while the server shuts down (SIGTERM): new requests get 503"),
    "running_rows": ("onnxlm_running_rows", "rows decoding in the batch now"),
    "waiting_requests": ("onnxlm_waiting_requests", "requests waiting for a place in the batch"),
    "prefilling_requests": ("onnxlm_prefilling_requests", "long prompts being prefilled a part per step"),
    "prefix_cache_entries": ("onnxlm_prefix_cache_entries", "cached prompt prefixes"),
    "prefix_cache_bytes": ("onnxlm_prefix_cache_bytes", "bytes the prefix cache holds"),
    "kv_pool_bytes": ("onnxlm_kv_pool_bytes", "bytes of freed KV buffers kept for reuse"),
}


def wanted(request: HTTPRequest) -> bool:
    """Whether the client asked for the text format (``?format=``, else its Accept header)."""
    fmt = request.query_params.get("format")
    if fmt is not None:
        return fmt.lower() in ("prometheus", "text", "openmetrics")
    accept = request.headers.get("accept", "").lower()
    return ("text/plain" in accept or "openmetrics" in accept) and "application/json" not in accept


def exposition(values: dict) -> str:
    """/metrics' JSON fields -> the text format: ``# HELP``, ``# TYPE`` and one sample per metric."""
    lines = []
    for field, value in values.items():
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, (int, float)):
            continue
        if field in COUNTERS:
            name, text, kind = *COUNTERS[field], "counter"
        else:
            name, text, kind = *GAUGES.get(field, (f"onnxlm_{field}", field.replace("_", " "))), "gauge"
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return "\n".join(lines) + "\n"
