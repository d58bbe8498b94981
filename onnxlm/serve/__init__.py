"""`onnxlm serve`: an OpenAI-compatible HTTP server (needs the `serve` extra: starlette, uvicorn, sse-starlette).

app.py (routes), protocol.py (request checks and OpenAI error bodies), engine.py (the thread that owns the model
and the continuous-batching scheduler of runtime/decoding/scheduler.py).
"""
