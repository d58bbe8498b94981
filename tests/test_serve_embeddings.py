"""The embedding endpoints of ``onnxlm serve`` (onnxlm/serve/embeddings.py), on a live server of the tiny Llama
exported with the fused layout (the plain twin of conftest gives no hidden states): OpenAI's /v1/embeddings (raw
HTTP and the official ``openai`` client) and llama.cpp's /embedding and /embeddings give ``LanguageModel.embed``'s
vectors for the same inputs; every mistake is a 400 naming the field; a model that cannot embed says so (4xx);
an embedding request shares the engine with a running stream without changing it; a client that leaves stops it."""
from __future__ import annotations

import base64
import json
import threading
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="the server tests need the test extra")
pytest.importorskip("starlette", reason="the server tests need the serve extra")

import onnxlm  # noqa: E402
from cli_util import run_cli  # noqa: E402
from serve_util import live_tiny, post, start, wait_health, wait_idle  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ATOL = 1e-6
TEXTS = ["hello world", "a", "the quick brown fox jumps", "ab"]  # different lengths: batched out of order
IDS = [[5, 17, 42, 99, 3], [7, 8]]
ERROR_KEYS = {"message", "type", "param", "code"}


def fused_tiny_llama(tmp_path_factory, tiny_llama):
    """The tiny Llama's checkpoint exported with the fused layout (its graph gives last_hidden_state), once per run
    (conftest's ``built_once``; tests/test_serve_fuzz.py uses it too) -> the artifact directory."""
    from conftest import built_once
    from onnxlm.export import export_model

    def build(base):
        export_model(tiny_llama.hf_dir, base / "onnx", progress=False, kv_layout="fused")
    return built_once(tmp_path_factory, "tiny-llama-fused-embeddings", build) / "onnx"


@pytest.fixture(scope="module")
def fused_dir(tmp_path_factory, tiny_llama):
    return fused_tiny_llama(tmp_path_factory, tiny_llama)


@pytest.fixture(scope="module")
def ref(fused_dir):
    """The same artifact loaded in the test process (the server's instance belongs to its engine thread)."""
    return onnxlm.load(fused_dir)


@pytest.fixture(scope="module")
def live(fused_dir):
    yield from live_tiny(fused_dir, max_rows=4, max_queue=8, max_tokens=64)


def _vectors(answer: dict) -> np.ndarray:
    """OpenAI's answer -> its vectors [n, D] in index order (after checking the shape of every entry)."""
    assert answer["object"] == "list" and answer["model"] == "tiny"
    data = answer["data"]
    assert [d["index"] for d in data] == list(range(len(data)))
    assert all(set(d) == {"object", "index", "embedding"} and d["object"] == "embedding" for d in data)
    return np.asarray([d["embedding"] for d in data], np.float64)


@pytest.mark.parametrize("given", [TEXTS[0], TEXTS, IDS[0], IDS], ids=["str", "strs", "ids", "id-lists"])
def test_v1_embeddings_give_the_vectors_of_embed(live, ref, given):
    r = post(live.url, "/v1/embeddings", {"model": "tiny", "input": given})
    assert r.status_code == 200, r.text
    got, want = _vectors(r.json()), ref.embed(given)
    assert got.shape == want.embeddings.shape and want.pooling == ref.default_pooling == "mean"
    np.testing.assert_allclose(got, want.embeddings, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert r.json()["usage"] == {"prompt_tokens": sum(want.token_counts), "total_tokens": sum(want.token_counts)}


def test_base64_is_the_little_endian_float32_bytes_of_the_same_vectors(live, ref):
    floats = post(live.url, "/v1/embeddings", {"input": TEXTS, "encoding_format": "float"}).json()
    r = post(live.url, "/v1/embeddings", {"input": TEXTS, "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert all(isinstance(d["embedding"], str) for d in data)
    got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data])
    np.testing.assert_array_equal(got, np.asarray([d["embedding"] for d in floats["data"]], np.float32))
    np.testing.assert_allclose(got, ref.embed(TEXTS).embeddings, atol=ATOL, rtol=0)
    assert r.json()["usage"] == floats["usage"]


def test_dimensions_keep_the_first_values_at_unit_length(live, ref):
    full = ref.embed(TEXTS).embeddings.astype(np.float64)
    width = full.shape[1]
    for d in (1, 8, width):
        r = post(live.url, "/v1/embeddings", {"input": TEXTS, "dimensions": d})
        assert r.status_code == 200, r.text
        got = _vectors(r.json())
        want = full[:, :d] / np.linalg.norm(full[:, :d], axis=1, keepdims=True)
        assert got.shape == (len(TEXTS), d)
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    for d in (0, width + 1, -3, 2.0, "8", True):
        r = post(live.url, "/v1/embeddings", {"input": TEXTS, "dimensions": d})
        assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions", (d, r.text)


def test_llama_cpp_embedding_answers_as_llama_server(live, ref):
    """llama.cpp's /embedding (and /embeddings): a list of {"index", "embedding": [[...]]}, one per input, the
    vector normalised as ``embd_normalize`` says (default 2: unit length)."""
    raw = ref.embed(TEXTS, normalize=False).embeddings.astype(np.float64)
    norms = {None: np.linalg.norm(raw, axis=1), 2: np.linalg.norm(raw, axis=1), -1: np.ones(len(raw)),
             1: np.abs(raw).sum(axis=1), 0: np.abs(raw).max(axis=1) / 32760.0,
             3: (np.abs(raw) ** 3).sum(axis=1) ** (1 / 3)}
    for path in ("/embedding", "/embeddings"):
        for norm, scale in norms.items():
            body = {"content": TEXTS} if norm is None else {"content": TEXTS, "embd_normalize": norm}
            r = post(live.url, path, body)
            assert r.status_code == 200, r.text
            answer = r.json()
            assert isinstance(answer, list) and [a["index"] for a in answer] == list(range(len(TEXTS)))
            assert all(set(a) == {"index", "embedding"} and len(a["embedding"]) == 1 for a in answer)
            got = np.asarray([a["embedding"][0] for a in answer])
            np.testing.assert_allclose(got, raw / scale[:, None], atol=ATOL / scale.min(), rtol=1e-5)
    one = post(live.url, "/embedding", {"content": TEXTS[0]}).json()  # one input: still a list of one
    assert len(one) == 1 and one[0]["index"] == 0
    np.testing.assert_allclose(one[0]["embedding"][0], ref.embed(TEXTS[0]).embeddings[0], atol=ATOL, rtol=0)


def test_llama_cpp_embedding_reads_input_first_and_mixed_prompts(live, ref):
    both = post(live.url, "/embedding", {"input": TEXTS[2], "content": TEXTS[0]}).json()
    np.testing.assert_allclose(both[0]["embedding"][0], ref.embed(TEXTS[2]).embeddings[0], atol=ATOL, rtol=0)
    ids = post(live.url, "/embedding", {"content": IDS}).json()
    np.testing.assert_allclose([a["embedding"][0] for a in ids], ref.embed(IDS).embeddings, atol=ATOL, rtol=0)
    mixed = [5, 17, " world"]  # llama.cpp's mix: ids as they are, a string after them without special tokens
    row = [5, 17] + ref.tokenizer.encode(" world", add_special_tokens=False)
    got = post(live.url, "/embedding", {"content": [mixed, TEXTS[1]]}).json()
    np.testing.assert_allclose(got[0]["embedding"][0], ref.embed([row]).embeddings[0], atol=ATOL, rtol=0)
    np.testing.assert_allclose(got[1]["embedding"][0], ref.embed(TEXTS[1]).embeddings[0], atol=ATOL, rtol=0)


TOO_LONG = [5] * 257  # the tiny model's context is 256 positions
BAD_BODIES = [
    ("/v1/embeddings", {"input": ""}, "input"),
    ("/v1/embeddings", {"input": []}, "input"),
    ("/v1/embeddings", {"input": [[]]}, "input"),
    ("/v1/embeddings", {}, "input"),
    ("/v1/embeddings", {"input": ["a", ""]}, "input"),
    ("/v1/embeddings", {"input": ["a"] * 2049}, "input"),
    ("/v1/embeddings", {"input": [1, 2.0]}, "input"),
    ("/v1/embeddings", {"input": [1, True]}, "input"),
    ("/v1/embeddings", {"input": [[1, 2], ["a"]]}, "input"),
    ("/v1/embeddings", {"input": ["a", [1, 2]]}, "input"),
    ("/v1/embeddings", {"input": [260]}, "input"),
    ("/v1/embeddings", {"input": [[1], [-1]]}, "input"),
    ("/v1/embeddings", {"input": TOO_LONG}, "input"),
    ("/v1/embeddings", {"input": "x" * 300}, "input"),
    ("/v1/embeddings", {"input": "\ud800"}, "input"),
    ("/v1/embeddings", {"input": {"text": "a"}}, "input"),
    ("/v1/embeddings", {"input": "a", "encoding_format": "hex"}, "encoding_format"),
    ("/v1/embeddings", {"input": "a", "user": 3}, "user"),
    ("/v1/embeddings", {"input": "a", "temperature": 0}, "temperature"),
    ("/v1/embeddings", {"input": "a", "content": "b"}, "content"),
    ("/v1/embeddings", {"input": "a", "embd_normalize": 2}, "embd_normalize"),
    ("/embedding", {}, "content"),
    ("/embedding", {"content": ""}, "content"),
    ("/embedding", {"content": []}, "content"),
    ("/embedding", {"content": [3.5]}, "content"),
    ("/embedding", {"content": [260]}, "content"),
    ("/embedding", {"content": [[5, "a"], 7]}, "content"),
    ("/embedding", {"content": TOO_LONG}, "content"),
    ("/embedding", {"input": ""}, "input"),
    ("/embedding", {"content": "a", "embd_normalize": -2}, "embd_normalize"),
    ("/embedding", {"content": "a", "embd_normalize": 1.5}, "embd_normalize"),
    ("/embedding", {"content": "a", "embd_normalize": True}, "embd_normalize"),
    ("/embedding", {"content": "a", "encoding_format": "hex"}, "encoding_format"),
    ("/embedding", {"content": "a", "dimensions": 4}, "dimensions"),
    ("/embeddings", {"content": "a", "n_predict": 4}, "n_predict"),
]


@pytest.mark.parametrize("path,body,param", BAD_BODIES, ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(BAD_BODIES)])
def test_a_bad_body_is_a_400_naming_the_field(live, path, body, param):
    r = post(live.url, path, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == ERROR_KEYS and error["param"] == param and error["type"] == "invalid_request_error", error
    if body.get("input") is TOO_LONG or body.get("content") is TOO_LONG:
        assert error["code"] == "context_length_exceeded" and "257 tokens" in error["message"]


def test_the_model_name_and_json_are_checked_as_elsewhere(live):
    r = post(live.url, "/v1/embeddings", {"model": "other", "input": "a"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = post(live.url, "/v1/embeddings", b"{not json")
    assert r.status_code == 400 and set(r.json()["error"]) == ERROR_KEYS
    r = post(live.url, "/v1/embeddings", {"input": "a"}, headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and "Content-Type" in r.json()["error"]["message"]
    r = post(live.url, "/embedding", {"content": "a"}, headers={"Content-Type": "text/plain"})
    assert r.status_code == 200  # llama.cpp's endpoint reads a JSON body whatever its Content-Type, as llama.cpp


def test_metrics_count_embedding_requests_and_tokens(live, ref):
    before = wait_idle(live.url)
    assert post(live.url, "/v1/embeddings", {"input": TEXTS}).status_code == 200
    assert post(live.url, "/embedding", {"content": IDS}).status_code == 200
    assert post(live.url, "/v1/embeddings", {"input": ""}).status_code == 400  # refused: not counted
    after = wait_idle(live.url)
    tokens = sum(ref.embed(TEXTS).token_counts) + sum(map(len, IDS))
    assert after["embedding_requests"] - before["embedding_requests"] == 2
    assert after["embedding_tokens"] - before["embedding_tokens"] == tokens
    assert after["requests"] - before["requests"] == 2
    text = httpx.get(live.url + "/metrics", params={"format": "prometheus"}).text
    assert f"onnxlm_embedding_requests_total {after['embedding_requests']}\n" in text
    assert f"onnxlm_embedding_tokens_total {after['embedding_tokens']}\n" in text
    assert "# TYPE onnxlm_embedding_tokens_total counter" in text


def test_the_model_card_says_the_model_embeds(live):
    card = httpx.get(live.url + "/v1/models").json()["data"][0]
    assert card["capabilities"]["embeddings"] is True


def test_a_model_that_cannot_embed_says_so_with_a_4xx(tiny_t5, tiny_llama):
    """T5 (encoder-decoder) and the plain layout's Llama (no last_hidden_state output): 400
    embeddings_not_supported on every embedding endpoint, capabilities.embeddings false; generation still works."""
    for art in (tiny_t5.onnx_dir, tiny_llama.onnx_dir):
        srv = start(lambda art=art: onnxlm.load(art), max_rows=2, max_queue=2, max_tokens=8)
        try:
            wait_health(srv.url)
            for path, body in (("/v1/embeddings", {"input": "hello"}), ("/embedding", {"content": "hello"}),
                               ("/embeddings", {"content": [5, 6]})):
                r = post(srv.url, path, body)
                assert 400 <= r.status_code < 500, r.text
                error = r.json()["error"]
                assert set(error) == ERROR_KEYS and error["code"] == "embeddings_not_supported"
                assert "cannot make embeddings" in error["message"]
            card = httpx.get(srv.url + "/v1/models").json()["data"][0]
            assert card["capabilities"]["embeddings"] is False
            assert post(srv.url, "/v1/completions", {"prompt": "Hi", "max_tokens": 2}).status_code == 200
        finally:
            srv.stop()


def _stream_text(url: str, body: dict, started: threading.Event | None = None) -> str:
    text = ""
    with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                text += json.loads(line[5:])["choices"][0]["text"]
                if started is not None:
                    started.set()
    return text


def test_an_embedding_request_runs_between_the_steps_of_a_stream(live, ref, monkeypatch):
    """While a stream decodes, an embedding request of several parts runs between its steps: both finish, the
    stream's text is the one it gives alone, the vectors are embed's, and decoding steps ran between the parts."""
    body = {"prompt": "Once upon a time", "max_tokens": 48, "temperature": 0, "ignore_eos": True}
    alone = _stream_text(live.url, body)
    model = live.model
    run, hidden = model._run, model.hidden_states  # _run: every forward pass of the fused layout
    steps_at_parts = []

    def counted(*a, **k):  # each part's forward pass, with the engine's step count when it began
        steps_at_parts.append(live.state.engine.steps)
        return hidden(*a, **k)
    monkeypatch.setattr(model, "_run", lambda *a, **k: (time.sleep(0.01), run(*a, **k))[1])
    monkeypatch.setattr(model, "hidden_states", counted)
    started, out = threading.Event(), {}
    stream = threading.Thread(target=lambda: out.setdefault("text", _stream_text(live.url, body, started)))
    stream.start()
    assert started.wait(30)
    texts = [f"text number {i}" for i in range(40)]  # 3 parts of 16 rows
    r = post(live.url, "/v1/embeddings", {"input": texts})
    stream.join(60)
    monkeypatch.undo()
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(_vectors(r.json()), ref.embed(texts).embeddings, atol=ATOL, rtol=0)
    assert out["text"] == alone
    assert len(steps_at_parts) == 3 and steps_at_parts[-1] > steps_at_parts[0], steps_at_parts
    wait_idle(live.url)


def test_a_client_that_leaves_stops_the_parts_left(live, monkeypatch):
    model = live.model
    hidden, calls = model.hidden_states, []

    def slow(*a, **k):
        calls.append(1)
        time.sleep(0.2)
        return hidden(*a, **k)
    before = wait_idle(live.url)
    monkeypatch.setattr(model, "hidden_states", slow)
    with pytest.raises(httpx.ReadTimeout):
        post(live.url, "/v1/embeddings", {"input": [f"row {i}" for i in range(16 * 8)]}, timeout=0.3)  # 8 parts
    engine, end = live.state.engine, time.monotonic() + 10
    while engine._calls or engine.in_call:  # the call dropped (or, were it not, run to its end)
        assert time.monotonic() < end, "the engine is still inside the embedding call"
        time.sleep(0.05)
    after = wait_idle(live.url)
    monkeypatch.undo()
    assert 1 <= len(calls) < 8, calls
    assert after["cancelled"] == before["cancelled"] + 1
    assert post(live.url, "/v1/embeddings", {"input": "a"}).status_code == 200


def test_the_openai_client_makes_embeddings(live, ref):
    openai = pytest.importorskip("openai", reason="needs the test extra (openai)")
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0)
    want = ref.embed(TEXTS)
    for kw in ({}, {"encoding_format": "float"}):  # the client asks for base64 unless told, and decodes it
        got = client.embeddings.create(model="tiny", input=TEXTS, **kw)
        np.testing.assert_allclose([d.embedding for d in got.data], want.embeddings, atol=ATOL, rtol=0)
        assert got.usage.prompt_tokens == got.usage.total_tokens == sum(want.token_counts)
    short = client.embeddings.create(model="tiny", input=TEXTS[0], dimensions=8).data[0].embedding
    assert len(short) == 8 and abs(np.linalg.norm(short) - 1) < 1e-5
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="tiny", input="")
    assert caught.value.body["param"] == "input"


def test_the_api_key_guards_the_embedding_endpoints_and_pooling_sets_the_vectors(fused_dir, ref):
    """--api-key: 401 without it on every embedding endpoint; --pooling last: the vectors of embed(pooling="last"),
    not the mean ones (the model's own)."""
    srv = start(lambda: onnxlm.load(fused_dir), api_key="sekrit", pooling="last", max_rows=2, max_queue=2)
    try:
        wait_health(srv.url)
        for path, body in (("/v1/embeddings", {"input": TEXTS}), ("/embedding", {"content": TEXTS}),
                           ("/embeddings", {"content": TEXTS})):
            r = post(srv.url, path, body)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert post(srv.url, path, body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = post(srv.url, "/v1/embeddings", {"input": TEXTS}, headers={"Authorization": "Bearer sekrit"})
        assert r.status_code == 200, r.text
        got, last, mean = _vectors(r.json()), ref.embed(TEXTS, pooling="last"), ref.embed(TEXTS)
        np.testing.assert_allclose(got, last.embeddings, atol=ATOL, rtol=0)
        assert np.abs(got - mean.embeddings).max() > 1e-2
        native = post(srv.url, "/embedding", {"content": TEXTS}, headers={"Authorization": "Bearer sekrit"}).json()
        np.testing.assert_allclose([a["embedding"][0] for a in native], last.embeddings, atol=ATOL, rtol=0)
    finally:
        srv.stop()


def test_serve_takes_pooling_from_the_command_line(fused_dir, capsys, monkeypatch):
    """``onnxlm serve --pooling last`` reaches the server's config (captured where the app is built); a pooling
    that is not one of mean, cls, last is argparse's usage error (and the app's ParameterError, built in Python)."""
    import onnxlm.serve.app as app
    from onnxlm.runtime.errors import OnnxlmError, ParameterError

    with pytest.raises(ParameterError, match="pooling"):
        app.create_app(lambda: None, app.ServeConfig(model_name="tiny", pooling="max"))
    seen = {}

    def capture(loader, config, draft_loader=None):
        seen["pooling"] = config.pooling
        raise OnnxlmError("stopped before serving")
    monkeypatch.setattr(app, "create_app", capture)
    for given, want in ((["--pooling", "last"], "last"), (["--pooling", "cls"], "cls"), ([], None)):
        code, _, err = run_cli(capsys, "serve", fused_dir, "--port", "0", *given)
        assert code != 0 and "stopped before serving" in err and seen.pop("pooling") == want
    code, _, err = run_cli(capsys, "serve", fused_dir, "--pooling", "max")
    assert code == 2 and "invalid choice: 'max'" in err and "pooling" not in seen


def test_truncate_extension_cuts_a_long_input_to_the_context(live, ref):
    """onnxlm's ``truncate`` (ollama's and TEI's name) on /v1/embeddings and /embedding: an input past the context is
    embedded cut to it, as ``embed(truncate=True)`` cuts it (usage counts what was embedded); without it 400
    context_length_exceeded; a value that is no boolean is a 400 naming it."""
    text = "word " * 300
    assert len(ref.tokenizer.encode(text)) > ref.max_positions
    r = post(live.url, "/v1/embeddings", {"input": [text, "short"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = post(live.url, "/v1/embeddings", {"input": [text, "short"], "truncate": True})
    assert r.status_code == 200, r.text
    want = ref.embed([text, "short"], truncate=True)
    np.testing.assert_allclose(_vectors(r.json()), want.embeddings, atol=ATOL, rtol=0)
    assert want.token_counts[0] == ref.max_positions
    assert r.json()["usage"]["prompt_tokens"] == sum(want.token_counts)
    native = post(live.url, "/embedding", {"content": text, "truncate": True})
    assert native.status_code == 200
    np.testing.assert_allclose(native.json()[0]["embedding"][0], want.embeddings[0], atol=ATOL, rtol=0)
    for path, body in (("/v1/embeddings", {"input": "a", "truncate": "yes"}),
                       ("/embedding", {"content": "a", "truncate": 1.5})):
        r = post(live.url, path, body)
        assert r.status_code == 400 and r.json()["error"]["param"] == "truncate", (path, r.text)
