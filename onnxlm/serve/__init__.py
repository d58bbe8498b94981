"""`onnxlm serve`: an OpenAI-compatible HTTP server (needs the `serve` extra: starlette, uvicorn, sse-starlette).

A request's path, one file per role:
* app.py: the Starlette app (routes table, exception handlers, the engine's lifespan) and ``start_in_thread``;
* routes.py: the endpoints (/health, /metrics, /props, /v1/models, /v1/completions, /v1/chat/completions);
* prometheus.py: /metrics in Prometheus' text format when a scraper asks for it;
* slots.py: llama.cpp's /slots (each batch row's request and progress, read between two steps);
* anthropic.py, anthropic_request.py, anthropic_reply.py: Anthropic's Messages API (/v1/messages and its
  count_tokens) as a translation over the chat endpoint's machinery, in Anthropic's shapes and errors;
* responses.py, responses_request.py, responses_reply.py: OpenAI's Responses API (/v1/responses), stateless, as a
  translation over the chat endpoint's machinery (its items, events and error body);
* embeddings.py: OpenAI's /v1/embeddings and llama.cpp's /embedding (/embeddings): pooled last hidden states,
  computed on the engine thread in parts between decoding steps;
* tokenize.py: /tokenize, /detokenize and /apply-template (vLLM's and llama.cpp's shapes: the ids and text the
  generation endpoints feed the model);
* llamacpp.py, llamacpp_request.py: llama.cpp's native /completion (its fields, defaults, sampler chain and
  answer);
* gate.py: what every request passes first (API key, a loaded model, the body, the sampling parameters);
* protocol.py: OpenAI request checks (types, ranges, keys) and error bodies;
* jobs.py: a checked request -> one job per prompt (ids within the context, a scheduler request or a beam call);
* run.py: admission (a slot, 429 past capacity) and the run on the engine thread (relay, cancel, gather);
* choices.py: the output as the API shapes it (texts, finish reasons, logprobs, usage);
* streaming.py: server-sent events (framing, [DONE], the completion and chat chunks);
* errors.py: exceptions -> OpenAI-style bodies (a user's mistake is a 400, never a 500);
* state.py: ``ServeConfig``, the shared state and counters, the admission slot;
* page.py: the chat page at ``/`` (static/index.html, app.js, style.css: plain JS over the API);
* engine.py: the one thread that owns the model and the continuous-batching scheduler
  (runtime/decoding/scheduler.py); handlers never run the model on the event loop.
"""
