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
from onnxlm.serve.choices import (  # noqa: E402
    Choices, StreamOffsets, completion_offsets, token_bytes, token_str)
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
    long = " ".join(["word"] * 30)  # fits the tiny Llama's context of 256 alone (about 150 tokens), not with 120 more
    n = len(live.model.tokenizer.encode(long))
    assert n + 20 < live.model.max_positions < n + 120  # room for the chat template's tokens, not for 120 more
    r = post(live.url, "/v1/chat/completions", {"messages": [{"role": "user", "content": long}],
                                                "max_completion_tokens": 120})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert r.json()["error"]["param"] == "max_completion_tokens", r.json()
    r = post(live.url, "/v1/completions", {"prompt": long, "max_tokens": 120})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


@pytest.mark.parametrize("body", [{}, {"max_tokens": 1}, {"max_tokens": 120}])
def test_a_prompt_that_fills_the_context_alone_is_named(live, body):
    """A prompt that leaves no room for one new token is the prompt's fault (it named max_tokens, also when the body
    had none): param "prompt" on /v1/completions, "messages" on chat, whatever max_tokens says."""
    ctx = live.model.max_positions
    for ids in ([1] * ctx, [1] * (ctx + 1)):
        r = post(live.url, "/v1/completions", {"prompt": ids, **body})
        err = r.json()["error"]
        assert r.status_code == 400 and err["code"] == "context_length_exceeded", r.text
        assert err["param"] == "prompt" and "max_tokens" not in err["message"], err
    chat = {"messages": [{"role": "user", "content": " ".join(["word"] * 200)}], **body}
    r = post(live.url, "/v1/chat/completions", chat)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text
    # scoring alone (echo, max_tokens 0) of a prompt as long as the context still fits
    r = post(live.url, "/v1/completions", {"prompt": [1] * ctx, "max_tokens": 0, "echo": True})
    assert r.status_code == 200, r.text


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


def test_a_call_in_parts_runs_between_decoding_steps_and_stops_once_its_client_went_away(tiny_llama):
    """A call whose function is a generator (echo's prompt pass) runs one part per engine turn, after that turn's
    decoding step, so a request decoding beside it goes on between its parts; once its client went away it is closed
    at its next turn."""
    from onnxlm.runtime.decoding.scheduler import Request, Scheduler
    from onnxlm.serve.engine import Engine

    model = onnxlm.load(tiny_llama.onnx_dir)
    engine = Engine(lambda: model)
    engine.model, engine.scheduler = model, Scheduler(model)
    out, parts = [], []

    def three_parts(m):
        for _ in range(3):
            parts.append(engine.steps)
            yield
        return "done"

    engine._take(("call", (three_parts, None), out.append))
    assert out == [] and len(engine._calls) == 1                                # taken, not run through
    engine._take(("request", Request([1, 2, 3], model.resolve_config({"max_new_tokens": 10, "do_sample": False})),
                  out.append))
    while engine._calls:
        engine._step()
        engine._call_part()
    assert parts == [1, 2, 3] and [o for o in out if o[0] == "result"] == [("result", "done")]
    gone, closed = threading.Event(), []

    def endless(m):
        try:
            while True:
                yield
        finally:
            closed.append(1)

    engine._take(("call", (endless, gone), out.append))
    engine._call_part()
    gone.set()
    engine._call_part()
    assert closed and isinstance(out[-1][1], CallCancelled) and not engine._calls


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


# ----------------------------------------------------------------------------------- text_offset (OpenAI, vLLM)
def _check_offsets(model, choice, echo_ids_sent: bool = False):
    """OpenAI's text_offset: token i's text starts at text[text_offset[i]]: offsets from 0, never decreasing, within
    the text; the pieces between them join to the text; a whole token's piece is its text (after the U+FFFD of any
    invalid bytes before it), a special token the text skips (an added BOS, the EOS) has none (ids sent as such are
    echoed with their special tokens spelled out)."""
    tok = model.tokenizer
    specials = {tok.id_to_token(i) for i in tok.special_ids}
    partial = {token_str(model, i) for i in range(model.vocab_size)
               if "\ufffd" in tok.decode([i], skip_special_tokens=False)}
    text, lp = choice["text"], choice["logprobs"]
    offsets, tokens = lp["text_offset"], lp["tokens"]
    assert len(offsets) == len(tokens) > 0 and offsets[0] == 0, (offsets, tokens)
    ends = offsets[1:] + [len(text)]
    assert all(0 <= a <= b <= len(text) for a, b in zip(offsets, ends)), (offsets, len(text))
    pieces = [text[a:b] for a, b in zip(offsets, ends)]
    assert "".join(pieces) == text
    for t, piece in zip(tokens, pieces):
        if t in partial:
            continue  # bytes of a character split over tokens: the last of them holds the character
        if t in specials:
            assert piece in ((t, "") if echo_ids_sent else ("",)), (t, piece, text, offsets)
        else:  # a random model writes bytes that start no valid character: shown as U+FFFD with the next token
            assert piece.lstrip("\ufffd") == t, (t, piece, text, offsets)


TEXTS = ["The cat sat on the mat.", "Ünïcödé: 日本語 😀 done"]


@pytest.mark.parametrize("max_tokens", [0, 6])
def test_echo_text_offsets_index_the_returned_text(live, tiny_llama, max_tokens):
    """The tiny Llama's tokenizer adds <s> and splits characters into bytes: with echo, text_offset indexes the
    returned text (the prompt as sent, then the completion), the added <s> takes no characters; streamed the same;
    for several prompts and n=2; for a prompt sent as ids (echoed with its special tokens)."""
    model = onnxlm.load(tiny_llama.onnx_dir)
    body = {"prompt": TEXTS, "max_tokens": max_tokens, "echo": True, "logprobs": 1,
            "temperature": 0.8, "seed": 7, "n": 2}
    r = post(live.url, "/v1/completions", body)
    assert r.status_code == 200, r.json()
    out = r.json()["choices"]
    assert len(out) == 4
    for c in out:
        assert c["text"].startswith(TEXTS[c["index"] // 2]) and c["logprobs"]["tokens"][0] == "<s>"
        _check_offsets(model, c)
    if max_tokens:
        events = [e for e in sse_events(live.url, "/v1/completions", {**body, "stream": True}) if e != "[DONE]"]
        for c in out:
            mine = [x for e in events for x in e["choices"] if x["index"] == c["index"]]
            assert "".join(x["text"] for x in mine) == c["text"]
            streamed = [o for x in mine if x["logprobs"] for o in x["logprobs"]["text_offset"]]
            assert streamed == c["logprobs"]["text_offset"]
    ids = model.tokenizer.encode(TEXTS[1])
    c = post(live.url, "/v1/completions", {**body, "prompt": ids, "n": 1}).json()["choices"][0]
    assert c["text"].startswith("<s>" + TEXTS[1])
    _check_offsets(model, c, echo_ids_sent=True)


def test_completion_text_offsets_start_at_the_completion(live, tiny_llama):
    """Without echo the offsets index the completion's text from 0, characters split over tokens included."""
    model = onnxlm.load(tiny_llama.onnx_dir)
    body = {"prompt": TEXTS[1], "max_tokens": 12, "logprobs": 0, "temperature": 0}
    c = post(live.url, "/v1/completions", body).json()["choices"][0]
    _check_offsets(model, c)
    # a completion that writes characters of 2 to 4 bytes (one token a byte): each character's offset is its own
    ids = model.tokenizer.encode(TEXTS[1], add_special_tokens=False) + [258]
    choices = Choices(model, 1, chat=False)
    entries = [(i, -1.0, None) for i in ids]
    lp = choices.logprobs_completions(entries, completion_offsets(model, ids, TEXTS[1], base=0))
    _check_offsets(model, {"text": TEXTS[1], "logprobs": lp})
    starts = sorted(set(lp["text_offset"]))
    assert starts == list(range(len(TEXTS[1]) + 1)), starts  # every character starts at one token, EOS at the end


def test_text_offsets_stop_at_a_stop_string_streamed_or_not(live, tiny_llama):
    """A stop string over several tokens cuts the text where it starts: the offsets of its tokens stay within the
    text, and the stream hands them out equal to the unstreamed ones (not past the text the stream sends)."""
    body = {"prompt": "Hello", "max_tokens": 24, "logprobs": 1, "temperature": 0}
    free = post(live.url, "/v1/completions", body).json()["choices"][0]
    text, tokens = free["text"], free["logprobs"]["tokens"]
    # a stop string of 3 printable ASCII tokens, after the 2nd token, where it first occurs in the text ("...")
    k = next(k for k in range(2, len(tokens) - 3) if all(t.isascii() and t.isprintable() for t in tokens[k:k + 3])
             and text.find("".join(tokens[k:k + 3])) == free["logprobs"]["text_offset"][k])
    stop = "".join(tokens[k:k + 3])
    cut = post(live.url, "/v1/completions", {**body, "stop": stop}).json()["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["text"] == text[:text.find(stop)]
    offsets = cut["logprobs"]["text_offset"]
    assert all(o <= len(cut["text"]) for o in offsets) and offsets == sorted(offsets)
    events = [e for e in sse_events(live.url, "/v1/completions", {**body, "stop": stop, "stream": True})
              if e != "[DONE]"]
    assert "".join(c["text"] for e in events for c in e["choices"]) == cut["text"]
    assert [o for e in events for c in e["choices"] if c["logprobs"] for o in c["logprobs"]["text_offset"]] == offsets



def _stop_in(text: str, starts: list[int]) -> tuple[str, int, int]:
    """A stop string over 3 tokens (k >= 2) of printable ASCII, first occurring in ``text`` where token k begins ->
    (stop, the tokens whose text begins before it, the tokens made up to the one that completes it)."""
    ends = starts[1:] + [len(text)]
    for k in range(2, len(starts) - 3):
        a = starts[k]
        stop = text[a:starts[k + 3]]
        if a > 0 and len(stop) > 1 and stop.isascii() and stop.isprintable() and text.find(stop) == a:
            made = next(j for j, e in enumerate(ends) if e >= a + len(stop)) + 1
            return stop, sum(1 for o in starts if o < a), made
    raise AssertionError(f"no stop string to cut {text!r} with")


def test_completion_logprobs_end_at_the_stop_strings_cut(live):
    """Where a stop string cut the text, the logprobs list the tokens whose text begins before the cut, streamed or
    not; usage still counts every generated token. (They listed the stop string's tokens.)"""
    body = {"prompt": "Hello", "max_tokens": 24, "logprobs": 1, "temperature": 0}
    whole = post(live.url, "/v1/completions", body).json()["choices"][0]
    free = whole["logprobs"]
    stop, kept, made = _stop_in(whole["text"], free["text_offset"])
    r = post(live.url, "/v1/completions", {**body, "stop": stop}).json()
    text, cut = r["choices"][0]["text"], r["choices"][0]["logprobs"]
    assert r["choices"][0]["finish_reason"] == "stop" and cut["tokens"] == free["tokens"][:kept], (r, stop)
    assert cut["token_logprobs"] == free["token_logprobs"][:kept] and len(cut["top_logprobs"]) == kept
    assert cut["text_offset"] == free["text_offset"][:kept] and all(o < len(text) for o in cut["text_offset"])
    assert r["usage"]["completion_tokens"] == made > kept  # the stop string's tokens were made: counted
    events = [e for e in sse_events(live.url, "/v1/completions", {**body, "stop": stop, "stream": True})
              if e != "[DONE]"]
    streamed = [c["logprobs"] for e in events for c in e["choices"] if c["logprobs"]]
    assert [t for lp in streamed for t in lp["tokens"]] == cut["tokens"]
    assert [o for lp in streamed for o in lp["text_offset"]] == cut["text_offset"]


def test_chat_logprobs_end_at_the_stop_strings_cut(live):
    """The same on chat, streamed or not: logprobs.content ends before the stop string's tokens."""
    from onnxlm.serve.choices import decoded_offsets
    messages = [{"role": "user", "content": "The quick brown fox"}]
    body = {"messages": messages, "max_tokens": 24, "temperature": 0, "logprobs": True, "top_logprobs": 1}
    free = post(live.url, "/v1/chat/completions", body).json()["choices"][0]
    solo = live.model.chat(messages, max_new_tokens=24, do_sample=False)
    assert free["message"]["content"] == solo.text[0]
    starts, text = decoded_offsets(live.model.tokenizer.tokenizer, solo.new_tokens[0])
    stop, kept, made = _stop_in(text, starts)
    r = post(live.url, "/v1/chat/completions", {**body, "stop": stop}).json()
    cut = r["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["message"]["content"] == text[:text.find(stop)]
    assert cut["logprobs"]["content"] == free["logprobs"]["content"][:kept], (cut, stop)
    assert r["usage"]["completion_tokens"] == made > kept
    events = [e for e in sse_events(live.url, "/v1/chat/completions", {**body, "stop": stop, "stream": True})
              if e != "[DONE]"]
    assert "".join(c["delta"].get("content") or "" for e in events for c in e["choices"]) == cut["message"]["content"]
    assert [x for e in events for c in e["choices"] if c["logprobs"]
            for x in c["logprobs"]["content"]] == cut["logprobs"]["content"]


def _pieces_model():
    """A model stand-in whose tokenizer has multi-character tokens: 0 "ab", 1 "cd", 2 "ef", 3 "gh" (the tiny models'
    tokens are single bytes, so no token of theirs straddles a cut)."""
    from types import SimpleNamespace

    from tokenizers import Tokenizer, decoders, models
    tok = Tokenizer(models.BPE({"ab": 0, "cd": 1, "ef": 2, "gh": 3}, []))
    tok.decoder = decoders.Fuse()
    wrapper = SimpleNamespace(tokenizer=tok, decode=lambda ids, skip_special_tokens=True: tok.decode(ids),
                              id_to_token=tok.id_to_token)
    return SimpleNamespace(tokenizer=wrapper)


@pytest.mark.parametrize("stop,kept", [("defgh", [0, 1]), ("efgh", [0, 1]), ("bcd", [0]), ("gh", [0, 1, 2])])
def test_a_token_straddling_the_cut_keeps_its_logprobs(stop, kept):
    """Text "abcdefgh" from tokens ab|cd|ef|gh, cut before ``stop``: the tokens whose text begins before the cut
    are listed (cd straddles the cut of "defgh": it stays), unstreamed and streamed (events made as the scheduler
    makes them: an end that could begin the stop held back, then the cut text's rest), on both endpoints' forms."""
    from onnxlm.runtime.decoding.scheduler import TokenEvent
    from onnxlm.runtime.streaming import IncrementalText
    model = _pieces_model()
    text = "abcdefgh"[:"abcdefgh".find(stop)]
    last = next(k for k in range(4) if stop in "abcdefgh"[:2 * k + 2])  # the token whose text completes the stop
    held = IncrementalText(model.tokenizer.tokenizer, stops=[stop])
    events = [TokenEvent(0, k, held.push(k), False, None, -0.5, None) for k in range(last)]
    events.append(TokenEvent(0, last, held.finish(text), True, "stop", -0.5, None))
    assert "".join(e.text for e in events) == text
    for chat in (False, True):
        choices = Choices(model, 1, chat=chat)
        choices.add_events(0, events)
        assert [t for t, _, _ in choices.kept(0, text)] == kept and choices.completion_tokens == last + 1
    streamed = Choices(model, 1, chat=True)
    got = [x["token"] for ev in events for lp in [streamed.stream_logprobs_chat(0, ev)] if lp for x in lp["content"]]
    assert got == ["ab", "cd", "ef", "gh"][:len(kept)]
    offsets = StreamOffsets(model)
    sent = [e for ev in events for e in offsets.add((ev.token_id, ev.logprob, None), ev.text, ev.finished,
                                                    cut=True)[0]]
    assert [t for t, _, _ in sent] == kept


# ------------------------------------------------------------------------------------------ a model that cannot chat
def without_chat_template(model):
    """The tiny Llama as a base model: no chat template (as a GGUF without tokenizer.chat_template)."""
    model.chat_template = None
    return model


def test_a_model_without_a_chat_template_says_so(live, tiny_llama, caplog):
    """The server warns once at startup that chat is unavailable, /v1/models' card says so (onnxlm's
    ``capabilities``, OpenAI's fields unchanged), chat answers 400 chat_not_supported, completions work; a model
    with a template says chat: true."""
    import logging

    from serve_util import start, wait_health

    client = openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0)
    card = client.models.list().data[0]
    assert card.id == "tiny" and card.model_extra["capabilities"] == {"completions": True, "chat": True,
                                                                                "embeddings": False, "rerank": False}
    caplog.set_level(logging.WARNING, logger="onnxlm.serve")
    srv = start(lambda: without_chat_template(onnxlm.load(tiny_llama.onnx_dir)), max_rows=2, max_queue=2)
    try:
        wait_health(srv.url)
        warned = [r for r in caplog.records if r.name == "onnxlm.serve" and "chat is unavailable" in r.getMessage()]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING
        assert "no chat template" in warned[0].getMessage()
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        card = client.models.list().data[0]
        assert (card.id, card.object, card.owned_by) == ("tiny", "model", "onnxlm")
        assert card.model_extra["capabilities"] == {"completions": True, "chat": False, "embeddings": False,
                                                    "rerank": False}
        assert client.models.retrieve("tiny").model_extra["capabilities"]["chat"] is False
        r = post(srv.url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert r.status_code == 400 and r.json()["error"]["code"] == "chat_not_supported"
        assert post(srv.url, "/v1/completions", {"prompt": "Hi", "max_tokens": 2}).status_code == 200
    finally:
        srv.stop()
