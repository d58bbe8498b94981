"""Server lifecycle: /health before and after loading, the API key, an onnxruntime failure mid-decode, and SIGTERM
under load on a real `onnxlm serve` process."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

openai = pytest.importorskip("openai", reason="the server tests need the test extra (openai)")
pytest.importorskip("starlette", reason="the server tests need the serve extra")

import httpx  # noqa: E402

import onnxlm  # noqa: E402
from serve_util import post, sse_events, start, wait_health, wait_idle  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_health_503_until_loaded_and_api_key(tiny_llama):
    """/health is 503 while the model loads (and API calls too), 200 once it is ready; with an API key a wrong or
    missing key gets 401 authentication_error while /health stays public."""
    gate = threading.Event()

    def loader():
        gate.wait(30)
        return onnxlm.load(tiny_llama.onnx_dir)

    srv = start(loader, api_key="sekret")
    try:
        r = httpx.get(srv.url + "/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = post(srv.url, "/v1/completions", {"prompt": "hi"}, headers={"Authorization": "Bearer sekret"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
        gate.set()
        assert wait_health(srv.url)["status"] == "ok"  # no key needed
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekret"}):
            r = post(srv.url, "/v1/completions", {"prompt": "hi", "max_tokens": 2}, headers=headers)
            assert r.status_code == 401
            assert r.json()["error"]["type"] == "authentication_error"
        assert httpx.get(srv.url + "/v1/models").status_code == 401
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="sekret", max_retries=0)
        assert client.completions.create(model="tiny", prompt="hi", max_tokens=2, temperature=0).choices
    finally:
        srv.stop()


def test_browser_pages_of_other_origins_may_call_the_api(tiny_llama):
    """CORS, as llama.cpp's and vLLM's servers: a preflight (OPTIONS, no key, as browsers send it) is answered for any
    origin by default, and the answers carry Access-Control-Allow-Origin; with allowed_origins set only those
    origins; with none, no CORS headers at all; a request from a page of an origin not allowed (but the server's
    own) is a 403, simple requests too."""
    model = onnxlm.load(tiny_llama.onnx_dir)
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    for origins, allowed in ((("*",), "*"), (("https://app.example.com",), "https://app.example.com"), ((), None)):
        srv = start(lambda: model, api_key="sekret", allowed_origins=origins)
        try:
            wait_health(srv.url)
            r = httpx.options(srv.url + "/v1/chat/completions", headers=preflight)
            assert r.headers.get("access-control-allow-origin") == allowed, (origins, r.status_code, r.headers)
            if allowed:
                assert r.status_code == 200 and "authorization" in r.headers["access-control-allow-headers"].lower()
            r = post(srv.url, "/v1/completions", {"prompt": "hi", "max_tokens": 2},
                     headers={"Authorization": "Bearer sekret", "Origin": "https://app.example.com"})
            assert r.status_code == (200 if allowed else 403) and r.headers.get("access-control-allow-origin") == allowed
            other = httpx.options(srv.url + "/v1/models", headers={**preflight, "Origin": "https://evil.example"})
            assert other.headers.get("access-control-allow-origin") == ("*" if origins == ("*",) else None)
            # a simple request (no preflight: text/plain) from a page of an origin not listed: 403 before anything
            r = httpx.post(srv.url + "/completion", content=b'{"prompt": "hi", "n_predict": 2}',
                           headers={"Origin": "https://evil.example", "Content-Type": "text/plain"})
            assert r.status_code == (401 if origins == ("*",) else 403), r.text  # (401: the key is asked)
            for own in ({"Origin": srv.url}, {"Origin": srv.url.upper() + "/"},  # the server's own pages
                        {"Origin": "https://llm.example.org", "Sec-Fetch-Site": "same-origin"},  # behind a proxy
                        {"Origin": "https://llm.example.org", "X-Forwarded-Host": "llm.example.org",
                         "X-Forwarded-Proto": "https"}):
                r = post(srv.url, "/v1/completions", {"prompt": "hi", "max_tokens": 2},
                         headers={"Authorization": "Bearer sekret", **own})
                assert r.status_code == 200, (own, r.text)
        finally:
            srv.stop()


def test_onnxruntime_failure_mid_decode_is_a_500_and_the_server_goes_on(tiny_llama):
    """A forward pass that raises inside onnxruntime (on the 3rd decoding step) fails the requests of that batch
    with a 500 error object (streaming: an error event, then [DONE]); the next requests are served."""
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    srv = start(lambda: onnxlm.load(tiny_llama.onnx_dir))
    try:
        wait_health(srv.url)
        model = srv.model
        run = model.decoder.run
        calls = {"n": 0}

        def failing(feeds, *a, **k):
            if feeds["input_ids"].shape[1] == 1:  # a decoding step (not a prefill)
                calls["n"] += 1
                if calls["n"] == 3:
                    raise RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : injected failure")
            return run(feeds, *a, **k)

        model.decoder.run = failing
        body = {"prompt": "Hello there", "max_tokens": 8, "temperature": 0}
        r = post(srv.url, "/v1/completions", body)
        assert r.status_code == 500
        err = r.json()["error"]
        assert err["type"] == "server_error" and "injected failure" in err["message"]
        ok = post(srv.url, "/v1/completions", body)
        assert ok.status_code == 200 and ok.json()["choices"][0]["text"]

        calls["n"] = 0
        events = sse_events(srv.url, "/v1/completions", {**body, "stream": True})
        assert events[-1] == "[DONE]"
        assert events[-2]["error"]["type"] == "server_error"
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        assert client.completions.create(model="tiny", **body).choices[0].text == ok.json()["choices"][0]["text"]
        wait_idle(srv.url)
    finally:
        srv.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_under_load_drains_and_exits(tiny_llama):
    """`onnxlm serve` as a process: SIGTERM while requests run -> those finish (200, complete streams), new
    requests get 503, and the process exits by itself within its shutdown timeout."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "ONNXLM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "onnxlm", "serve", str(tiny_llama.onnx_dir), "--port", str(port),
                             "--max-batch", "1", "--shutdown-timeout", "30", "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_health(url, timeout=60)
        results, started = {}, threading.Semaphore(0)

        def stream(k):  # one row at a time (--max-batch 1): the later requests wait in the queue
            body = {"prompt": "Hello there", "max_tokens": 200, "temperature": 0, "stream": True}
            lines = []
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
                started.release()
                for line in r.iter_lines():
                    lines.append(line)
            results[k] = (r.status_code, lines)

        threads = [threading.Thread(target=stream, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for _ in threads:
            started.acquire(timeout=30)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        late = None
        while time.monotonic() - t0 < 10:  # new requests get 503 while the others drain
            try:
                late = post(url, "/v1/completions", {"prompt": "hi", "max_tokens": 2}, timeout=5)
                break
            except httpx.HTTPError:
                time.sleep(0.02)
        for t in threads:
            t.join(60)
        assert proc.wait(timeout=40) == 0
        assert late is not None and late.status_code == 503, late and late.text
        assert late.json()["error"]["code"] == "shutting_down"
        assert len(results) == 6
        for status, lines in results.values():
            assert status == 200 and "data: [DONE]" in lines and not any('"error"' in x for x in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_gpt2_has_no_chat_and_t5_is_served_one_request_at_a_time(tiny_gpt2, tiny_t5):
    """A model without a chat template answers /v1/chat/completions with a 400 (completions work); a seq2seq
    model serves concurrent requests one at a time, each equal to model.generate alone."""
    srv = start(lambda: onnxlm.load(tiny_gpt2.onnx_dir))
    try:
        wait_health(srv.url)
        r = post(srv.url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "chat_not_supported"
        r = post(srv.url, "/v1/completions", {"prompt": "Hello", "max_tokens": 5, "temperature": 0})
        assert r.json()["choices"][0]["text"] == srv.model.generate("Hello", max_new_tokens=5, do_sample=False).text[0]
    finally:
        srv.stop()
    srv = start(lambda: onnxlm.load(tiny_t5.onnx_dir))
    try:
        wait_health(srv.url)
        prompts = ["translate: hello", "summarize: a b c d e f", "x"]
        out = {}

        def one(p):
            out[p] = post(srv.url, "/v1/completions", {"prompt": p, "max_tokens": 6, "temperature": 0}).json()

        threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for p in prompts:
            assert out[p]["choices"][0]["text"] == srv.model.generate(p, max_new_tokens=6, do_sample=False).text[0]
        wait_idle(srv.url)
    finally:
        srv.stop()


def test_a_slow_prompt_encoding_leaves_the_event_loop_free(tiny_llama):
    """Prompts are encoded (and chat templates rendered) in a worker thread: while one request's encoding takes
    1.5 s (an 8 MB body takes seconds), /health and another request are answered at once. On the event loop
    they waited for it."""
    srv = start(lambda: onnxlm.load(tiny_llama.onnx_dir))
    try:
        wait_health(srv.url)
        model = srv.model
        encode = model._encode

        def slow(text, *a, **k):
            if "SLOW" in text:
                time.sleep(1.5)
            return encode(text, *a, **k)

        model._encode = slow
        slow_answer = {}
        for path, body in [("/v1/completions", {"prompt": "SLOW prompt", "max_tokens": 2, "temperature": 0}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "SLOW"}],
                                                     "max_tokens": 2, "temperature": 0})]:
            t = threading.Thread(target=lambda p=path, b=body: slow_answer.update({p: post(srv.url, p, b)}))
            t.start()
            time.sleep(0.3)  # the slow request is being encoded now
            t0 = time.monotonic()
            assert httpx.get(srv.url + "/health", timeout=5).status_code == 200
            quick = post(srv.url, "/v1/completions", {"prompt": "quick", "max_tokens": 2, "temperature": 0})
            waited = time.monotonic() - t0
            t.join(10)
            assert quick.status_code == 200 and slow_answer[path].status_code == 200, slow_answer[path].text
            assert waited < 1.0, f"{path}: /health and a quick request took {waited:.2f} s behind a slow encoding"
    finally:
        srv.stop()


def test_a_non_streaming_requests_tokens_arrive_in_one_item_before_done():
    """engine.submit(stream=False): the per-step events are held back and handed over once, just before "done" (or
    an error), so the event loop is not woken at every step of a non-streaming answer."""
    from onnxlm.serve.engine import _held_back

    got = []
    put = _held_back(got.append)
    put(("events", ["a"]))
    put(("events", ["b", "c"]))
    assert got == []
    put(("done", "req"))
    assert got == [("events", ["a", "b", "c"]), ("done", "req")]
    got.clear()
    put(("events", ["d"]))
    put(("error", "boom"))
    assert got == [("events", ["d"]), ("error", "boom")]
