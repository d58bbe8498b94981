"""Helpers of the server tests: a live server in a thread, raw HTTP, SSE parsing, solo-answer comparison."""
from __future__ import annotations

import json
import time
import warnings

import httpx
import numpy as np

from onnxlm.runtime.processors import log_softmax

TIE = 1e-5  # a top-2 logit gap below this is a numerical tie: a different answer there is reported, not failed


class Live:
    """A running server: base URL, the app's state, and a way to stop it."""

    def __init__(self, app, server, thread, port):
        self.app, self.server, self.thread, self.port = app, server, thread, port
        self.url = f"http://127.0.0.1:{port}"
        self.state = app.state.serve

    @property
    def model(self):
        return self.state.engine.model

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


def start(loader, draft_loader=None, **config) -> Live:
    from onnxlm.serve.app import ServeConfig, create_app, start_in_thread
    app = create_app(loader, ServeConfig(**{"model_name": "tiny", **config}), draft_loader=draft_loader)
    server, thread, port = start_in_thread(app)
    return Live(app, server, thread, port)


#: the tools the API-translation tests (Anthropic's Messages, OpenAI's Responses) offer the tiny tools model
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
SEARCH = {"type": "object", "properties": {"query": {"type": "string", "maxLength": 16}}, "required": ["query"],
          "additionalProperties": False}


def live_tiny(onnx_dir, **config):
    """The server of the server test modules (a module fixture yields from this): the tiny model in ``onnx_dir``,
    32 rows, a queue of 64, max_tokens 128 (``config``: other ServeConfig values); healthy before it is yielded,
    stopped after."""
    import onnxlm

    srv = start(lambda: onnxlm.load(onnx_dir), **{"max_rows": 32, "max_queue": 64, "max_tokens": 128, **config})
    wait_health(srv.url)
    yield srv
    srv.stop()


def live_thinking(onnx_dir, folder):
    """A server (a module fixture yields from this) of the tiny model in ``onnx_dir`` with a ChatML template that opens
    <think> in the prompt, written into ``folder``: the whole reply of the random-weight model is reasoning
    (tests/test_serve_reasoning.py's template); 4 rows, a queue of 8, max_tokens 64."""
    import onnxlm
    from test_serve_reasoning import OPENS
    from test_serve_tools import _with_template

    art = _with_template(onnx_dir, folder / "opens", OPENS)
    srv = start(lambda: onnxlm.load(art), max_rows=4, max_queue=8, max_tokens=64)
    wait_health(srv.url)
    yield srv
    srv.stop()


def wait_health(url: str, status: int = 200, timeout: float = 30) -> dict:
    end = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(url + "/health", timeout=2)
            if r.status_code == status:
                return r.json()
        except httpx.HTTPError:
            pass
        if time.monotonic() > end:
            raise AssertionError(f"{url}/health never answered {status}")
        time.sleep(0.05)


def post(url: str, path: str, body, **kw) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    return httpx.post(url + path, content=content, headers=headers, timeout=kw.pop("timeout", 30), **kw)



def sent_twice(loader, path: str, body: dict, prefix_cache_mb: int) -> tuple[dict, dict, dict]:
    """A fresh server of ``loader``'s model with that prefix cache, ``body`` POSTed to ``path`` twice -> (first answer,
    second answer, /metrics after them); the server stopped."""
    srv = start(loader, prefix_cache_mb=prefix_cache_mb)
    try:
        wait_health(srv.url)
        a = httpx.post(srv.url + path, json=body, timeout=60).json()
        b = httpx.post(srv.url + path, json=body, timeout=60).json()
        return a, b, httpx.get(srv.url + "/metrics", timeout=10).json()
    finally:
        srv.stop()

def sse_events(url: str, path: str, body: dict, headers=None) -> list:
    """POST a streaming request -> the data payloads in order (JSON objects, and the final '[DONE]' string)."""
    out = []
    with httpx.stream("POST", url + path, json=body, headers=headers or {}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data:"):
                data = line[5:].strip()
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def named_events(url: str, path: str, body: dict, headers=None) -> list[tuple[str, dict]]:
    """POST ``body`` with ``"stream": true`` to a stream of named events (Anthropic's, OpenAI's Responses) ->
    [(event name, data)] in order; the answer must be a 200 event stream."""
    out, name = [], None
    with httpx.stream("POST", url + path, json={**body, "stream": True}, headers=headers or {}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                out.append((name, json.loads(line[5:])))
    return out


def wait_idle(url: str, timeout: float = 5.0) -> dict:
    """Poll /metrics until nothing is in flight and no row is running -> the last metrics."""
    end = time.monotonic() + timeout
    while True:
        m = httpx.get(url + "/metrics", timeout=2).json()
        if m["in_flight"] == 0 and m["running_rows"] == 0 and m["waiting_requests"] == 0:
            return m
        if time.monotonic() > end:
            raise AssertionError(f"the server is not idle after {timeout} s: {m}")
        time.sleep(0.05)


def same_or_tie(model, prompt_ids: list[int], solo_ids: list[int], got_text: str, solo_text: str, what: str) -> None:
    """A concurrent answer must equal the solo one; where it differs, the greedy path must pass through a top-2
    logit gap < TIE (a numerical tie, reported as a warning), else it fails."""
    if got_text == solo_text:
        return
    logits = model.logits(np.asarray([prompt_ids + solo_ids], np.int64))[0, len(prompt_ids) - 1:-1]  # [n, V]
    top2 = np.sort(log_softmax(logits), axis=-1)[:, -2:]
    gap = float((top2[:, 1] - top2[:, 0]).min())
    assert gap < TIE, f"{what}: {got_text!r} != solo {solo_text!r} and the smallest top-2 gap is {gap:.2e}"
    warnings.warn(f"{what}: a numerical tie (top-2 gap {gap:.1e}) changed the answer; reported, not failed")


def nested_schema(depth: int) -> dict:
    """An object schema ``depth`` levels deep (llguidance reads JSON to a depth of about 128)."""
    s = {"type": "integer"}
    for _ in range(depth):  # wrap one level
        s = {"type": "object", "properties": {"a": s}, "required": ["a"]}
    return s
