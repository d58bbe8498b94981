"""llama.cpp's GET /slots on a live server (onnxlm/serve/slots.py): every batch row a slot, idle or busy with a
request's row, its figures from one step; ?fail_on_no_slot=1; --no-slots; the API key."""
from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

pytest.importorskip("starlette", reason="the server tests need the serve extra")

from serve_util import start, wait_health  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = 2
TOKENS = 120


@pytest.fixture(scope="module")
def live(tiny_llama):
    import onnxlm

    srv = start(lambda: onnxlm.load(tiny_llama.onnx_dir), max_rows=ROWS, max_queue=4, max_tokens=TOKENS)
    wait_health(srv.url)
    yield srv
    srv.stop()


def _long_request(url: str, done: threading.Event, n: int) -> threading.Thread:
    """A sampled request of n rows decoding TOKENS tokens each (ignore_eos), in a thread; ``done`` set after."""
    def run():
        try:
            httpx.post(url + "/v1/completions", json={"prompt": "Once upon a time", "max_tokens": TOKENS,
                                                     "ignore_eos": True, "n": n, "temperature": 1.0, "seed": 7,
                                                     "logprobs": 2}, timeout=60).raise_for_status()
        finally:
            done.set()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_idle_slots(live, tiny_llama):
    import onnxlm

    r = httpx.get(live.url + "/slots")
    assert r.status_code == 200
    slots = r.json()
    n_ctx = onnxlm.load(tiny_llama.onnx_dir).max_positions
    assert [s["id"] for s in slots] == list(range(ROWS))
    for s in slots:
        assert s["is_processing"] is False and s["id_task"] == -1 and s["n_ctx"] == n_ctx
        assert s["next_token"] == {"has_next_token": False, "n_remain": -1, "n_decoded": 0}
    assert httpx.get(live.url + "/slots?fail_on_no_slot=1").status_code == 200


def test_busy_slots_while_a_request_decodes(live):
    """Polled while a 2-row request decodes: both slots busy with the same task, rows 0 and 1, their counts from
    one step (made + left = max_tokens), the request's seed and logprobs; all idle again once it is done. (The tiny
    model's request lasts a fraction of a second: on a loaded machine a poll may miss it, so it is sent again, up to
    5 times, until both polls have seen it.)"""
    for _ in range(5):
        done = threading.Event()
        thread = _long_request(live.url, done, n=ROWS)
        seen = []
        while not done.is_set():
            slots = httpx.get(live.url + "/slots", timeout=10).json()
            busy = [s for s in slots if s["is_processing"]]
            if len(busy) == ROWS:
                seen.append(busy)
            no_slot = httpx.get(live.url + "/slots?fail_on_no_slot=1", timeout=10)
            if no_slot.status_code == 503:
                assert no_slot.json()["error"]["type"] == "unavailable_error"
                seen.append(None)
        thread.join()
        if None in seen and any(b is not None for b in seen):
            break
    full = [b for b in seen if b is not None]
    assert full, "the request was never seen decoding"
    assert None in seen, "fail_on_no_slot=1 never answered 503 while every slot was busy"
    for busy in full:
        assert len({s["id_task"] for s in busy}) == 1 and busy[0]["id_task"] >= 0
        assert sorted(s["index"] for s in busy) == [0, 1]
        made = {s["next_token"]["n_decoded"] for s in busy}
        assert len(made) == 1 and 1 <= made.pop() <= TOKENS  # two rows of one request: one step's count
        for s in busy:
            assert s["next_token"]["has_next_token"] is True
            assert s["next_token"]["n_decoded"] + s["next_token"]["n_remain"] == TOKENS
            assert s["params"] == {"n_predict": TOKENS, "seed": 7, "n_probs": 2}
            assert s["n_prompt_tokens"] > 0
    after = httpx.get(live.url + "/slots").json()
    assert not any(s["is_processing"] for s in after)


def test_slots_answer_while_a_long_call_holds_the_engine(live):
    """A beam search (or prompt-lookup request) runs on the engine thread alone, for its whole length: /slots
    answers at once with the rows as they stand (the engine's ``in_call``), rather than after the search."""
    done = threading.Event()
    thread = _long_request(live.url, done, n=ROWS)
    while not any(s["is_processing"] for s in httpx.get(live.url + "/slots", timeout=10).json()):
        assert not done.is_set(), "the request was never seen decoding"
    held, loop = threading.Event(), asyncio.new_event_loop()
    live.state.engine.call(lambda model: held.wait(30), loop, asyncio.Queue())  # a long call, as a beam search
    try:
        time.sleep(0.2)  # the engine thread is in the call now
        t0 = time.monotonic()
        r = httpx.get(live.url + "/slots", timeout=10)
        took = time.monotonic() - t0
        assert r.status_code == 200 and took < 2, took
        busy = [s for s in r.json() if s["is_processing"]]
        assert sorted(s["index"] for s in busy) == [0, 1]
        for s in busy:
            assert s["next_token"]["n_decoded"] + s["next_token"]["n_remain"] == TOKENS
    finally:
        held.set()
        thread.join(60)
        loop.close()
    assert not any(s["is_processing"] for s in httpx.get(live.url + "/slots", timeout=10).json())


def test_bad_flag_is_a_400(live):
    r = httpx.get(live.url + "/slots?fail_on_no_slot=maybe")
    assert r.status_code == 400
    assert "fail_on_no_slot" in r.json()["error"]["message"]


def test_no_slots_and_the_api_key(tiny_llama):
    import onnxlm

    srv = start(lambda: onnxlm.load(tiny_llama.onnx_dir), max_rows=2, slots=False, api_key="k")
    try:
        wait_health(srv.url)
        assert httpx.get(srv.url + "/slots").status_code == 401
        r = httpx.get(srv.url + "/slots", headers={"Authorization": "Bearer k"})
        assert r.status_code == 501 and r.json()["error"]["type"] == "not_supported_error"
    finally:
        srv.stop()


def test_cli_flag(capsys):
    from onnxlm.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "--no-slots" in capsys.readouterr().out
