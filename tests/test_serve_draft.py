"""``onnxlm serve --draft`` (runtime/decoding/scheduler_draft.py): a request alone on the server checks a draft
model's proposals in one pass; its completion, chat answer, stream and llama.cpp /completion answer equal those of a
server without the draft; llama.cpp's per-request speculative.n_max / n_min / p_min are taken (and shown in
generation_settings and /props), bad ones are 400s naming them; a draft of another vocabulary stops the server's
start with the reason; the command line refuses draft options that cannot apply."""
from __future__ import annotations

import httpx
import pytest

pytest.importorskip("starlette")
openai = pytest.importorskip("openai")

import onnxlm  # noqa: E402
from cli_util import run_cli  # noqa: E402
from onnxlm.runtime.errors import ParameterError  # noqa: E402
from serve_util import post, start, wait_health  # noqa: E402

PROMPT = "ab cd ef ab cd ef ab cd"


@pytest.fixture(scope="module")
def servers(tiny_llama):
    """(a server with the draft: the same weights, so it guesses well; one without)."""
    load = lambda: onnxlm.load(tiny_llama.onnx_dir)  # noqa: E731
    spec = start(load, draft_loader=load, max_tokens=64, draft_p_min=0.0)
    plain = start(load, max_tokens=64)
    wait_health(spec.url)
    wait_health(plain.url)
    yield spec, plain
    spec.stop()
    plain.stop()


def _client(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)


def test_answers_equal_the_plain_servers_with_fewer_passes(servers):
    spec, plain = servers
    a, b = _client(spec), _client(plain)
    for kw in (dict(max_tokens=40), dict(max_tokens=30, stop=[" cd ef"]), dict(max_tokens=20, seed=5, temperature=0.7),
               dict(max_tokens=25, frequency_penalty=0.5)):
        kw = {"temperature": 0, **kw}
        want, got = (c.completions.create(model="tiny", prompt=PROMPT, **kw).choices[0] for c in (b, a))
        assert (got.text, got.finish_reason) == (want.text, want.finish_reason), kw
        streamed = a.completions.create(model="tiny", prompt=PROMPT, stream=True, **kw)
        assert "".join(c.choices[0].text for c in streamed if c.choices) == want.text
    messages = [{"role": "user", "content": PROMPT}]
    want, got = (c.chat.completions.create(model="tiny", messages=messages, max_tokens=40, temperature=0)
                 for c in (b, a))
    assert got.choices[0].message.content == want.choices[0].message.content
    body = {"prompt": PROMPT, "n_predict": 30, "temperature": 0, "cache_prompt": False}
    native = post(spec.url, "/completion", body).json()
    assert native["content"] == post(plain.url, "/completion", body).json()["content"]
    metrics = httpx.get(spec.url + "/metrics").json()
    assert metrics["speculative_passes"] > 0 and metrics["speculative_accepted_tokens"] > 0
    assert metrics["speculative_proposed_tokens"] >= metrics["speculative_accepted_tokens"]
    assert httpx.get(plain.url + "/metrics").json()["speculative_passes"] == 0


def test_streamed_counts_timings_and_prediction_usage(servers):
    """A speculative pass's tokens come together: each streamed /completion chunk still counts its own
    ``tokens_predicted``; the final ``timings`` give llama.cpp's draft_n / draft_n_accepted; a chat request's
    ``prediction`` counts only what the prediction proposed, not the draft's fallback proposals."""
    import json

    spec, plain = servers
    body = {"prompt": PROMPT, "n_predict": 24, "temperature": 0, "stream": True, "cache_prompt": False}
    with httpx.stream("POST", spec.url + "/completion", json=body, timeout=60) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    counts = [e["tokens_predicted"] for e in events if not e["stop"]]
    assert counts == list(range(1, len(counts) + 1)) and len(counts) > 1
    timings = events[-1]["timings"]
    assert timings["draft_n"] >= timings["draft_n_accepted"] > 0
    messages = [{"role": "user", "content": PROMPT}]
    usage = [c.chat.completions.create(model="tiny", messages=messages, max_tokens=24, temperature=0,
                                       prediction={"type": "content", "content": "zzzz qqqq xxxx"}).usage
             for c in (_client(plain), _client(spec))]
    details = [u.completion_tokens_details for u in usage]
    assert (details[1].accepted_prediction_tokens, details[1].rejected_prediction_tokens) == (
        details[0].accepted_prediction_tokens, details[0].rejected_prediction_tokens)


def test_the_openai_endpoints_take_llama_cpps_draft_fields(servers):
    """As llama-server's OpenAI endpoints do: speculative.n_max 0 turns the draft off for that request, other values
    are taken (the answer is the same), bad ones are 400s naming them."""
    spec, _ = servers
    before = httpx.get(spec.url + "/metrics").json()["speculative_passes"]
    body = {"prompt": PROMPT, "max_tokens": 20, "temperature": 0, "speculative.n_max": 0}
    off = post(spec.url, "/v1/completions", body).json()["choices"][0]["text"]
    assert httpx.get(spec.url + "/metrics").json()["speculative_passes"] == before
    chat = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 20, "temperature": 0}
    assert post(spec.url, "/v1/chat/completions", dict(chat, **{"speculative.n_max": 3})).status_code == 200
    assert httpx.get(spec.url + "/metrics").json()["speculative_passes"] > before
    on = post(spec.url, "/v1/completions", dict(body, **{"speculative.n_max": 4, "speculative.p_min": 0.2})).json()
    assert on["choices"][0]["text"] == off
    for name, value in (("speculative.n_max", 65), ("speculative.n_min", -1), ("speculative.p_min", 2)):
        r = post(spec.url, "/v1/completions", {"prompt": "ab", "max_tokens": 2, name: value})
        assert r.status_code == 400 and r.json()["error"]["param"] == name, (name, r.text)


def test_llama_cpps_per_request_draft_settings(servers):
    spec, _ = servers
    before = httpx.get(spec.url + "/metrics").json()["speculative_passes"]
    body = {"prompt": PROMPT, "n_predict": 20, "temperature": 0, "speculative.n_max": 0}
    r = post(spec.url, "/completion", body).json()
    assert httpx.get(spec.url + "/metrics").json()["speculative_passes"] == before  # n_max 0: no draft
    settings = r["generation_settings"]
    assert (settings["speculative.n_max"], settings["speculative.n_min"], settings["speculative.p_min"]) == (0, 0, 0.0)
    r = post(spec.url, "/completion", dict(body, **{"speculative.n_max": 3, "speculative.n_min": 9})).json()
    assert r["generation_settings"]["speculative.n_min"] == 3  # clamped to n_max, as llama.cpp does
    after = httpx.get(spec.url + "/metrics").json()
    assert after["speculative_passes"] > before
    props = httpx.get(spec.url + "/props").json()["default_generation_settings"]["params"]
    assert (props["speculative.n_max"], props["speculative.n_min"], props["speculative.p_min"]) == (16, 0, 0.0)
    for name, value in (("speculative.n_max", 65), ("speculative.n_max", -1), ("speculative.n_min", -1),
                        ("speculative.p_min", 1.5), ("speculative.p_min", "high"), ("speculative.n_max", 2.5)):
        r = post(spec.url, "/completion", {"prompt": "ab", "n_predict": 2, name: value})
        assert r.status_code == 400 and r.json()["error"]["param"] == name, (name, value)


def _other_vocabulary(onnx_dir):
    model = onnxlm.load(onnx_dir)
    model.vocab_size = 390  # more than 128 ids apart (a padded vocabulary may be fewer apart: next test)
    return model


@pytest.mark.parametrize("which", ["vocabulary", "seq2seq"])
def test_a_draft_that_cannot_draft_stops_the_start(tiny_llama, tiny_t5, which):
    draft = (lambda: _other_vocabulary(tiny_llama.onnx_dir)) if which == "vocabulary" else (
        lambda: onnxlm.load(tiny_t5.onnx_dir))
    srv = start(lambda: onnxlm.load(tiny_llama.onnx_dir), draft_loader=draft)
    try:
        srv.state.engine.ready.wait(60)
        err = srv.state.engine.load_error
        assert isinstance(err, ParameterError) and err.parameter == "draft"
        assert ("its vocabulary has 390 ids, the model's 260" if which == "vocabulary" else "decoder-only") in str(err)
        assert srv.state.engine.loading == "draft"
        assert httpx.get(srv.url + "/health").status_code == 503
    finally:
        srv.stop()


def test_create_app_refuses_a_draft_with_prompt_lookup(tiny_llama):
    from onnxlm.serve.app import ServeConfig, create_app
    with pytest.raises(ParameterError, match="not both"):
        create_app(lambda: None, ServeConfig(model_name="m", prompt_lookup=4), draft_loader=lambda: None)


@pytest.mark.parametrize("argv, refusal", [
    (["--draft-max", "4"], "--draft-max needs --draft MODEL"),
    (["--draft-max", "16"], "--draft-max needs --draft MODEL"),  # the default's value, given: refused all the same
    (["--draft-p-min", "0.5"], "--draft-p-min needs --draft MODEL"),
    (["--draft", "D", "--prompt-lookup", "4"], "--draft and --prompt-lookup: give one of them"),
    (["--draft", "D", "--draft-max", "4", "--draft-min", "5"], "--draft-min 5 is more than --draft-max 4"),
])
def test_the_command_line_refuses_draft_options_that_cannot_apply(capsys, tiny_llama, argv, refusal):
    code, out, err = run_cli(capsys, "serve", tiny_llama.onnx_dir, "--port", "0", *argv)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and refusal in lines[0], err


@pytest.mark.parametrize("flag, value, refusal", [
    ("--draft-p-min", "1.5", "expected a number from 0 to 1"), ("--draft-p-min", "nan", "expected a number from 0"),
    ("--draft-p-min", "x", "expected a number from 0 to 1"), ("--draft-max", "65", "expected an integer from 1 to 64"),
    ("--draft-max", "0", "expected an integer >= 1")])
def test_draft_numbers_out_of_range_are_usage_errors(capsys, flag, value, refusal):
    code, _, err = run_cli(capsys, "serve", "m", "--draft", "d", flag, value)
    assert code == 2 and f"argument {flag}: {refusal}" in err


@pytest.mark.parametrize("what", ["missing", "not-a-model"])
def test_a_draft_that_is_no_model_is_one_error_line_before_the_start(capsys, tiny_llama, tmp_path, what):
    path = tmp_path / what
    if what == "not-a-model":
        path.mkdir()
    code, out, err = run_cli(capsys, "serve", tiny_llama.onnx_dir, "--port", "0", "--draft", str(path))
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("onnxlm: error: --draft: "), err
    assert "Uvicorn" not in out + err and "Started server" not in out + err


def test_a_draft_load_error_names_the_draft(capsys, tiny_llama, tiny_t5):
    """A draft that loads but cannot draft (a seq2seq model) stops the start; the error says it is the draft."""
    code, out, err = run_cli(capsys, "serve", tiny_llama.onnx_dir, "--port", "0", "--draft", tiny_t5.onnx_dir)
    line = err.strip().splitlines()[-1]
    assert code == 1 and f"loading the draft model {tiny_t5.onnx_dir} (--draft) failed" in line, err
    assert "got a seq2seq model; the draft must be a decoder-only language model" in line
