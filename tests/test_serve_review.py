"""The server as an OpenAI client meets it (a review's findings): GET /v1/models/{model}, errors naming the
parameter the body used, null for reasoning_format, streamed text_offset equal to the unstreamed one, chat
logprobs' bytes as the tokens' raw UTF-8 (a character split over tokens rebuilt by joining them), echo with
logprobs refused by name on a seq2seq model; and a client that goes away stops a beam search or a speculative run
(an engine call) instead of leaving it to decode for nobody while every other request waits."""
from __future__ import annotations

import threading

import numpy as np
import pytest

openai = pytest.importorskip("openai", reason="the server tests need the test extra (openai)")
pytest.importorskip("starlette", reason="the server tests need the serve extra")

import onnxlm  # noqa: E402
from onnxlm.serve.choices import token_bytes  # noqa: E402
from onnxlm.serve.engine import CallCancelled, cancelled_by  # noqa: E402
from serve_util import live_tiny, post, sse_events  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def live(tiny_llama):
    yield from live_tiny(tiny_llama.onnx_dir)


def test_a_model_by_its_id(live):
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0)
    card = client.models.retrieve("tiny")
    assert card.id == "tiny" and card.object == "model"
    import httpx

    r = httpx.get(live.url + "/v1/models/gpt-4")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found" and r.json()["error"]["param"] == "model"


def test_the_context_error_names_max_completion_tokens_when_the_body_does(live):
    long = " ".join(["word"] * 200)
    r = post(live.url, "/v1/chat/completions", {"messages": [{"role": "user", "content": long}],
                                                "max_completion_tokens": 120})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert r.json()["error"]["param"] == "max_completion_tokens", r.json()
    r = post(live.url, "/v1/completions", {"prompt": long, "max_tokens": 120})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_reasoning_format_null_is_absent(live):
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0}
    plain = post(live.url, "/v1/chat/completions", body)
    null = post(live.url, "/v1/chat/completions", {**body, "reasoning_format": None})
    assert null.status_code == 200 and null.json()["choices"] == plain.json()["choices"]


@pytest.mark.parametrize("echo", [False, True])
def test_streamed_text_offsets_equal_the_unstreamed(live, echo):
    body = {"prompt": "The quick brown fox", "max_tokens": 6, "temperature": 0, "logprobs": 2, "echo": echo}
    whole = post(live.url, "/v1/completions", body).json()["choices"][0]["logprobs"]
    events = [e for e in sse_events(live.url, "/v1/completions", {**body, "stream": True}) if e != "[DONE]"]
    offsets = [o for e in events for c in e["choices"] if c["logprobs"] for o in c["logprobs"]["text_offset"]]
    assert offsets == whole["text_offset"] and len(offsets) > 6 * echo


def test_chat_logprob_bytes_rebuild_the_content(live, tiny_llama):
    model = onnxlm.load(tiny_llama.onnx_dir)
    tok = model.tokenizer
    # a token that holds part of a character: its bytes are the raw UTF-8 bytes, not its vocabulary string's
    partial = [i for i in range(model.vocab_size) if "\ufffd" in tok.decode([i], skip_special_tokens=False)]
    assert partial, "the tiny vocabulary has byte tokens"
    for i in partial[:20]:
        assert len(token_bytes(model, i)) == 1 and token_bytes(model, i)[0] >= 0x80
    text = "日本語 éà ünïcode 😀 👨\u200d👩\u200d👧"
    ids = tok.encode(text, add_special_tokens=False)
    assert b"".join(bytes(token_bytes(model, i)) for i in ids).decode("utf-8") == text
    from onnxlm.serve.choices import Choices

    entries = Choices(model, 1, chat=True).logprobs_chat([(i, -1.0, [(i, -1.0)]) for i in ids])["content"]
    assert b"".join(bytes(e["bytes"]) for e in entries).decode("utf-8") == text
    assert all(e["top_logprobs"][0]["bytes"] == e["bytes"] for e in entries)
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": 8, "temperature": 0, "logprobs": True,
            "top_logprobs": 1}
    content = post(live.url, "/v1/chat/completions", body).json()["choices"][0]["logprobs"]["content"]
    assert len(content) == 8 and all(isinstance(e["bytes"], list) for e in content)


def test_echo_with_logprobs_on_a_seq2seq_model_is_refused_by_name(tiny_t5):
    for srv in live_tiny(tiny_t5.onnx_dir):
        r = post(srv.url, "/v1/completions", {"prompt": "translate: hi", "max_tokens": 2, "echo": True,
                                              "logprobs": 1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "echo", r.json()
        assert post(srv.url, "/v1/completions", {"prompt": "translate: hi", "max_tokens": 2,
                                                 "echo": True}).status_code == 200


def test_a_call_whose_client_went_away_is_skipped_or_stopped(tiny_llama):
    from onnxlm.serve.engine import Engine

    model = onnxlm.load(tiny_llama.onnx_dir)
    gone, ran = threading.Event(), []
    engine = Engine(lambda: model)
    engine.model = model
    out = []
    gone.set()
    engine._take(("call", (lambda m: ran.append(1), gone), out.append))
    assert not ran and isinstance(out[0][1], CallCancelled)  # skipped: never started
    # started, then the client goes: a beam search stops at its next step
    steps, live_gone = [], threading.Event()

    def count(ids, scores):
        steps.append(1)
        if len(steps) == 3:
            live_gone.set()
        return False

    with pytest.raises(CallCancelled):
        model.generate([[1, 2, 3]], num_beams=2, max_new_tokens=60, stopping_criteria=[count, cancelled_by(live_gone)])
    assert len(steps) == 3


def test_stopping_criteria_stop_rows_as_transformers_criteria_do(tiny_llama):
    model = onnxlm.load(tiny_llama.onnx_dir)
    prompt = [[5, 6, 7, 8]]
    want = model.generate(prompt, max_new_tokens=5)
    for beams in (1, 2):
        got = model.generate(prompt, max_new_tokens=20, num_beams=beams,
                             stopping_criteria=lambda ids, scores: np.asarray(ids).shape[1] >= 4 + 5)
        assert got.finish_reasons == ["stop"] and len(got.new_tokens[0]) == 5
        if beams == 1:
            assert got.new_tokens == want.new_tokens
    with pytest.raises(onnxlm.runtime.errors.ParameterError) as err:
        model.generate(prompt, max_new_tokens=2, stopping_criteria=["not callable"])
    assert err.value.parameter == "stopping_criteria"


def test_admission_counts_rows_not_requests():
    """--max-batch 2 --max-queue 0: two n=1 requests fill it, as one n=2 request does; a request alone is taken
    whatever its rows (it waits for nothing)."""
    from onnxlm.serve.protocol import APIError
    from onnxlm.serve.state import ServeConfig, ServeState, Slot

    st = ServeState(ServeConfig(model_name="tiny", max_rows=2, max_queue=0), engine=None)
    big = Slot(st, rows=2)
    with pytest.raises(APIError) as err:
        Slot(st, rows=1)
    assert err.value.status == 429 and "2 rows in flight" in str(err.value)
    big.release()
    a, b = Slot(st, rows=1), Slot(st, rows=1)
    with pytest.raises(APIError):
        Slot(st, rows=1)
    a.release(), b.release()
    assert (st.in_flight, st.in_flight_rows) == (0, 0)
    alone = Slot(st, rows=6)
    alone.release()


def test_chat_logprobs_leave_out_the_end_of_turn_token(tiny_llama):
    """OpenAI lists the content's tokens: the EOS that ended the turn is counted in usage, not in logprobs."""
    from onnxlm.runtime.decoding.scheduler import TokenEvent
    from onnxlm.serve.choices import Choices

    model = onnxlm.load(tiny_llama.onnx_dir)
    events = [TokenEvent(0, 40, "a", False, None), TokenEvent(0, 41, "b", False, None),
              TokenEvent(0, 258, "", True, "eos")]
    for e in events:
        e.logprob, e.top_logprobs = -0.5, [(e.token_id, -0.5)]
    chat, text = Choices(model, 1, chat=True), Choices(model, 1, chat=False)
    chat.add_events(0, events)
    text.add_events(0, events)
    assert [t for t, _, _ in chat.tokens[0]] == [40, 41] and chat.completion_tokens == 3
    assert [t for t, _, _ in text.tokens[0]] == [40, 41, 258]
    assert chat.event_logprobs_chat(events[-1]) is None and chat.event_logprobs_chat(events[0]) is not None
