"""The chat page at ``GET /`` of ``onnxlm serve``, in a real browser: Debian's ``chromium`` driven by playwright
(the ``test`` extra; scripts/setup.sh installs chromium). One server (the tiny llama, with an API key) and one
browser per module; each test gets a fresh browser context (its own localStorage).

Asking, streaming, the conversation, the settings and stop go to the live server; the injection case and an error
inside a stream are answered by playwright (``page.route``) with a scripted SSE body, since they test the page."""
from __future__ import annotations

import json
import os
import re
import shutil
import time

import httpx
import pytest

pytest.importorskip("starlette", reason="the server tests need the serve extra")

from serve_util import post, start, wait_health  # noqa: E402

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # a failure, not a skip: the page would go untested
    raise ImportError("the chat page tests need playwright (the test extra): pip install -e '.[test]'") from None

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEY = "page-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_TOKENS = 128  # the server's cap


def _chromium() -> str:
    """The Chromium binary: $ONNXLM_CHROMIUM, else chromium / chromium-browser / google-chrome on PATH."""
    for name in (os.environ.get("ONNXLM_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = name and shutil.which(name)
        if path:
            return path
    pytest.fail("the chat page tests need a Chromium browser: apt-get install -y chromium (scripts/setup.sh does "
                "it), or set ONNXLM_CHROMIUM=/path/to/chrome")


@pytest.fixture(scope="module")
def live(tiny_llama):
    import onnxlm

    srv = start(lambda: onnxlm.load(tiny_llama.onnx_dir), api_key=KEY, max_rows=8, max_queue=8, max_tokens=MAX_TOKENS)
    wait_health(srv.url)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium())
        yield b
        b.close()


@pytest.fixture
def page(browser, live):
    """A fresh page on the chat page, the API key typed in, the model's name shown."""
    ctx = browser.new_context(viewport={"width": 1000, "height": 700})
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(live.url + "/")
    pg.fill("#api-key", KEY)
    pg.dispatch_event("#api-key", "change")
    expect(pg.locator("#model")).to_have_text("tiny", timeout=5000)
    expect(pg.locator("#max-tokens")).to_have_attribute("max", str(MAX_TOKENS), timeout=5000)  # /props read
    assert pg.is_hidden("#notice")  # the model chats: no notice
    yield pg
    ctx.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def _ask(pg, text: str, state: str = "done", timeout: float = 15000):
    """Type ``text``, send it with Enter, wait until the newest answer's state is ``state`` -> that answer."""
    pg.fill("#prompt", text)
    pg.press("#prompt", "Enter")
    answer = pg.locator(".msg.assistant").last
    expect(answer).to_have_attribute("data-state", state, timeout=timeout)
    return answer


def _settings(pg, **values):
    for key, value in values.items():
        pg.fill("#" + key.replace("_", "-"), str(value))


def _sse(chunks: list[dict], tail: str = "data: [DONE]\r\n\r\n") -> str:
    """Chat chunks -> an SSE body as sse-starlette frames it (\\r\\n lines, a ping comment on the way)."""
    body = ": ping\r\n\r\n"
    for c in chunks:
        body += "data: " + json.dumps(c) + "\r\n\r\n"
    return body + tail


def _delta(text=None, finish=None) -> dict:
    delta = {} if text is None else {"content": text}
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


# ------------------------------------------------------------------------------------------------- loading
def test_page_loads_without_a_key_and_the_api_asks_for_it(browser, live):
    """GET / and its files need no key (the page holds no data) and come with a CSP; the API calls do: without the
    key the page says 401 and what to do, a question with a wrong key shows the 401 and gives the question back."""
    r = httpx.get(live.url + "/", timeout=5)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    for name, kind in [("app.js", "javascript"), ("style.css", "text/css")]:
        s = httpx.get(f"{live.url}/static/{name}", timeout=5)
        assert s.status_code == 200 and kind in s.headers["content-type"], name
    assert httpx.get(live.url + "/v1/models", timeout=5).status_code == 401
    ctx = browser.new_context()
    pg = ctx.new_page()
    try:
        pg.goto(live.url + "/")
        pg.wait_for_selector("#banner:not([hidden])", timeout=5000)
        assert "HTTP 401" in pg.text_content("#banner") and "API key" in pg.text_content("#banner")
        pg.fill("#api-key", "wrong")
        answer = _ask(pg, "Hello?", state="error")
        assert "HTTP 401" in answer.text_content() and "Incorrect or missing API key" in answer.text_content()
        assert pg.input_value("#prompt") == "Hello?"  # the question is given back to send again
        pg.dispatch_event("#api-key", "change")  # still wrong: still no model
        pg.fill("#api-key", KEY)
        pg.dispatch_event("#api-key", "change")
        expect(pg.locator("#model")).to_have_text("tiny", timeout=5000)
        assert pg.is_hidden("#banner")
    finally:
        ctx.close()


# ------------------------------------------------------------------------------------------------- asking
def test_ask_shows_the_servers_answer_with_stats_and_keeps_the_conversation(page, live):
    """Greedy: the streamed answer the page shows equals the server's non-streamed answer to the same messages;
    the stats line has the usage's token count, tokens/s and the finish reason; the next question carries the
    conversation and the settings; "New chat" starts again from the system prompt alone."""
    _settings(page, system="Be brief.", temperature=0, top_p=1, max_tokens=24)
    with page.expect_request("**/v1/chat/completions") as req:
        answer = _ask(page, "Hi!")
    sent = req.value.post_data_json
    assert sent["stream"] is True and sent["model"] == "tiny"
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0, 1, 24)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    assert sent["messages"] == messages
    want = post(live.url, "/v1/chat/completions", {"messages": messages, "max_tokens": 24, "temperature": 0},
                headers=AUTH).json()
    text = want["choices"][0]["message"]["content"]
    assert text and answer.locator(".content").text_content() == text
    meta = answer.locator(".meta").text_content()
    assert f"{want['usage']['completion_tokens']} tokens" in meta and "tok/s" in meta
    assert f"finish: {want['choices'][0]['finish_reason']}" in meta
    assert answer.get_attribute("data-finish") == want["choices"][0]["finish_reason"]

    with page.expect_request("**/v1/chat/completions") as req:
        _ask(page, "And then?")
    assert req.value.post_data_json["messages"] == messages + [{"role": "assistant", "content": text},
                                                               {"role": "user", "content": "And then?"}]
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0
    with page.expect_request("**/v1/chat/completions") as req:
        _ask(page, "Again")
    assert req.value.post_data_json["messages"] == [messages[0], {"role": "user", "content": "Again"}]


def test_stream_appears_then_stop_cancels_the_request(page, live, monkeypatch):
    """The answer grows while the request runs (greedy, 120 tokens that do not reach EOS, the decoder slowed to
    0.05 s a step); Stop aborts the fetch: the answer ends as "stopped", the server counts one cancelled request and
    frees its rows."""
    question = [{"role": "user", "content": "Tell me a long story"}]
    full = post(live.url, "/v1/chat/completions", {"messages": question, "max_tokens": 120, "temperature": 0},
                headers=AUTH).json()
    assert full["choices"][0]["finish_reason"] == "length"  # the request would run all 120 steps
    before = _metrics(live)["cancelled"]
    run = live.model.decoder.run
    monkeypatch.setattr(live.model.decoder, "run", lambda *a, **k: (time.sleep(0.05), run(*a, **k))[1])
    _settings(page, temperature=0, max_tokens=120)
    page.fill("#prompt", question[0]["content"])
    page.click("#send")
    answer = page.locator(".msg.assistant").last
    expect(answer.locator(".content")).to_have_text(re.compile(".{4}", re.S), timeout=10000)
    assert answer.get_attribute("data-state") == "streaming"  # text shown while the request runs
    assert page.is_disabled("#send") and page.is_enabled("#stop")
    page.click("#stop")
    expect(answer).to_have_attribute("data-state", "stopped", timeout=5000)
    assert "finish: stopped" in answer.locator(".meta").text_content()
    assert page.is_enabled("#send") and page.is_disabled("#stop")
    end = time.monotonic() + 5
    while True:
        m = _metrics(live)
        if m["cancelled"] > before and m["in_flight"] == 0 and m["running_rows"] == 0:
            break
        if time.monotonic() > end:
            raise AssertionError(f"5 s after Stop: cancelled {m['cancelled']} (was {before}), {m}")
        time.sleep(0.05)
    assert m["cancelled"] == before + 1
    shown = answer.locator(".content").text_content()
    assert len(shown) > 3 and full["choices"][0]["message"]["content"].startswith(shown)  # what came, then no more
    monkeypatch.undo()
    with page.expect_request("**/v1/chat/completions") as req:  # the stopped turn is part of the conversation
        _ask(page, "Go on")
    assert req.value.post_data_json["messages"][-2:] == [{"role": "assistant", "content": shown},
                                                         {"role": "user", "content": "Go on"}]


def _metrics(live) -> dict:
    return httpx.get(live.url + "/metrics", headers=AUTH, timeout=2).json()


def test_json_schema_mode_sends_response_format(page):
    """The JSON-schema mode sends OpenAI's response_format (name + schema); a schema that is not JSON is refused
    on the page, nothing sent."""
    pytest.importorskip("llguidance", reason="the server's json_schema needs the structured extra")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    page.check("#json-mode")
    page.fill("#schema-name", "count")
    page.fill("#schema", json.dumps(schema))
    _settings(page, temperature=0, max_tokens=40)
    with page.expect_request("**/v1/chat/completions") as req:
        answer = _ask(page, "A number as JSON")
    assert req.value.post_data_json["response_format"] == {"type": "json_schema",
                                                            "json_schema": {"name": "count", "schema": schema}}
    text = answer.locator(".content").text_content()
    if answer.get_attribute("data-finish") == "stop":
        assert isinstance(json.loads(text)["n"], int)
    else:
        assert text.startswith("{")
    sent = []
    page.on("request", lambda r: sent.append(r.url) if "/v1/chat" in r.url else None)
    page.fill("#schema", "{not json")
    page.fill("#prompt", "again")
    page.click("#send")
    page.wait_for_selector("#banner:not([hidden])", timeout=2000)
    assert "schema is not valid JSON" in page.text_content("#banner") and not sent
    assert page.locator(".msg").count() == 2


# -------------------------------------------------------------------------------------------- safety, errors
def test_markup_in_a_reply_shows_as_text_and_runs_nothing(page):
    """A reply holding <img onerror>, <script>, and HTML inside a code fence, **bold** and `code`, split across
    chunks: the page shows the characters, creates no element from them (only its own pre/code/strong), runs
    nothing; the user's own markup too."""
    img = '<img src=x onerror="window.__pwned=1">'
    script = "<script>window.__pwned=2</script>"
    reply = (f"Look: {img} and {script}\n```html\n<b onmouseover=\"window.__pwned=3\">bold</b>\n```\n"
             f"**<i onclick=x>strong</i>** and `<u>code</u>`")
    pieces = [reply[i:i + 7] for i in range(0, len(reply), 7)]
    body = _sse([_delta("")] + [_delta(p) for p in pieces] + [_delta(finish="stop")])
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=body))
    answer = _ask(page, f"say {img}")
    shown = reply.replace("```html\n", "").replace("\n```", "").replace("**", "").replace("`", "")
    assert answer.locator(".content").text_content() == shown
    assert answer.locator(".content pre code").text_content() == '<b onmouseover="window.__pwned=3">bold</b>'
    assert answer.locator(".content > strong").text_content() == "<i onclick=x>strong</i>"
    assert answer.locator(".content > code").text_content() == "<u>code</u>"
    assert page.locator("#messages :is(img, script, b, i, u)").count() == 0
    assert page.locator(".msg.user .content").text_content() == f"say {img}"
    page.wait_for_timeout(100)  # an image error handler would have run by now
    assert page.evaluate("window.__pwned") is None
    assert "finish: stop" in answer.locator(".meta").text_content()


def test_reasoning_shows_folded_above_the_answer_as_text(page):
    """A thinking model's stream (``delta.reasoning_content``, then ``delta.content``, as the server sends a
    ``<think>`` block apart: serve/reasoning.py): the reasoning in a closed <details> above the answer, as text
    (its markup creates nothing), the answer in the bubble; only the answer joins the conversation sent next."""
    thought = "Let me think <b>hard</b> about it.\nParis is in France."
    chunks = [_delta("")] + [{"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {
        "reasoning_content": thought[i:i + 9]}, "finish_reason": None}]} for i in range(0, len(thought), 9)]
    chunks += [_delta("The capital "), _delta("is Paris."), _delta(finish="stop")]
    sent = []

    def answer(route):
        sent.append(json.loads(route.request.post_data))
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=_sse(chunks))

    page.route("**/v1/chat/completions", answer)
    reply = _ask(page, "Capital of France?")
    assert reply.locator(".thinking summary").text_content() == "Thinking"
    assert reply.locator(".thinking .reasoning").text_content() == thought
    assert reply.locator(".thinking").get_attribute("open") is None  # folded until clicked
    assert reply.locator(".content").text_content() == "The capital is Paris."
    assert page.locator("#messages b").count() == 0
    _ask(page, "And Spain?")
    assert sent[1]["messages"][-2] == {"role": "assistant", "content": "The capital is Paris."}


def test_errors_are_shown(page):
    """A 400 from the server (max_tokens over its cap) shows OpenAI's error message; so does an error body that
    arrives inside a stream, after some text."""
    _settings(page, max_tokens=100000)
    answer = _ask(page, "Hi", state="error")
    assert f"HTTP 400: max_tokens: got 100000; allowed: 1 <= max_tokens <= {MAX_TOKENS}" in answer.text_content()
    assert "error" in answer.get_attribute("class")
    body = _sse([_delta("partial "), {"error": {"message": "the model failed: boom", "type": "server_error"}}])
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=body))
    _settings(page, max_tokens=10)
    answer = _ask(page, "Hi", state="error")
    assert answer.locator(".content").text_content() == "partial \n\nthe model failed: boom"


# ------------------------------------------------------------------------------------ a model that cannot chat
@pytest.fixture(scope="module")
def plain_live(tiny_llama):
    """The tiny Llama without its chat template (a base model), no API key."""
    import onnxlm

    def load():
        model = onnxlm.load(tiny_llama.onnx_dir)
        model.chat_template = None
        return model

    srv = start(load, max_rows=4, max_queue=4, max_tokens=MAX_TOKENS)
    wait_health(srv.url)
    yield srv
    srv.stop()


def test_a_model_without_a_chat_template_gets_plain_completions(browser, plain_live):
    """The page says at load that the model cannot chat (its /v1/models card: capabilities.chat false) and sends
    plain completions instead: the text typed as the prompt of /v1/completions, streamed; the answer equals the
    server's non-streamed one; no chat request is made, and no conversation is carried to the next question."""
    ctx = browser.new_context(viewport={"width": 1000, "height": 700})
    pg = ctx.new_page()
    errors, chat = [], []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("request", lambda r: chat.append(r.url) if "/v1/chat" in r.url else None)
    try:
        pg.goto(plain_live.url + "/")
        expect(pg.locator("#notice")).to_be_visible(timeout=5000)
        notice = pg.text_content("#notice")
        assert "no chat template" in notice and "/v1/completions" in notice
        assert "continue" in pg.get_attribute("#prompt", "placeholder") and pg.is_disabled("#system")
        _settings(pg, temperature=0, max_tokens=12)
        with pg.expect_request("**/v1/completions") as req:
            answer = _ask(pg, "Hello")
        sent = req.value.post_data_json
        assert sent["prompt"] == "Hello" and sent["stream"] is True and "messages" not in sent
        want = post(plain_live.url, "/v1/completions", {"prompt": "Hello", "max_tokens": 12, "temperature": 0}).json()
        text = want["choices"][0]["text"]
        assert text and answer.locator(".content").text_content() == text
        assert f"finish: {want['choices'][0]['finish_reason']}" in answer.locator(".meta").text_content()
        with pg.expect_request("**/v1/completions") as req:
            _ask(pg, "Again")
        assert req.value.post_data_json["prompt"] == "Again"
        assert not chat and not errors, (chat, errors)
        assert pg.is_hidden("#banner")
    finally:
        ctx.close()


# ------------------------------------------------------------------------------- layout, screen == context, keys
def _fulfil(replies: list[str], sent: list[dict]):
    """A route handler: each chat request's body into ``sent``, answered by the next of ``replies`` (SSE bodies;
    "hold" leaves the request open, as a server that has not answered yet)."""
    def handle(route):
        sent.append(json.loads(route.request.post_data))
        body = replies.pop(0)
        if body != "hold":
            route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)
    return handle


def _shown(pg) -> list[dict]:
    """The turns the conversation shows (failed ones left out), as the messages a request carries."""
    return pg.evaluate("""[...document.querySelectorAll('#messages .msg:not(.failed)')].map((m) => ({
        role: m.classList.contains('user') ? 'user' : 'assistant', content: m.querySelector('.content').textContent}))""")


def _active(pg) -> str:
    return pg.evaluate("document.activeElement && document.activeElement.id")


def _box(pg, selector: str) -> dict:
    return pg.locator(selector).first.bounding_box()


def test_a_long_code_line_scrolls_in_its_block_and_the_bubbles_stay_in_the_conversation(page):
    """A code line far wider than the screen, in the question and in the answer: each bubble stays within the
    conversation (desktop with Settings open, and 375 px wide), the list does not scroll sideways, the code block
    does."""
    line = "x = [" + ", ".join(str(i) for i in range(150)) + "]"
    page.route("**/v1/chat/completions", _fulfil([_sse([_delta("Here:\n```python\n" + line + "\n```\nDone."),
                                                        _delta(finish="stop")])], []))
    _ask(page, "```\n" + line + "\n```")
    for width in (1000, 375):
        page.set_viewport_size({"width": width, "height": 700})
        page.wait_for_timeout(50)
        area = _box(page, "#messages")
        for sel in (".msg.user", ".msg.assistant"):
            b = _box(page, sel)
            assert area["x"] <= b["x"] and b["x"] + b["width"] <= area["x"] + area["width"] + 0.5, (width, sel)
        sizes = page.evaluate("""[document.getElementById('messages'), document.documentElement,
                                  ...document.querySelectorAll('.msg pre')].map((e) => [e.scrollWidth, e.clientWidth])""")
        (list_w, list_c), (doc_w, doc_c), *pres = sizes
        assert list_w <= list_c and doc_w <= doc_c, (width, sizes)  # nothing scrolls sideways but the code
        assert len(pres) == 2 and all(w > c for w, c in pres), (width, pres)


def test_a_narrow_screen_opens_settings_only_when_asked_and_they_never_cover_the_message_box(browser, live):
    """At 375x700 the Settings panel starts closed, the header stays one line (a long model name cut), the
    panel opened does not cover the message box or Send, and open or closed it stays so after a reload."""
    ctx = browser.new_context(viewport={"width": 375, "height": 700})
    ctx.add_init_script(f"localStorage.setItem('onnxlm.api-key', {json.dumps(KEY)})")
    pg = ctx.new_page()
    try:
        pg.goto(live.url + "/")
        expect(pg.locator("#model")).to_have_text("tiny", timeout=5000)
        assert pg.is_hidden("#settings") and pg.get_attribute("#toggle-settings", "aria-expanded") == "false"
        pg.evaluate("document.getElementById('model').textContent = 'a-very-long-model-name-' + 'x'.repeat(80)")
        header = _box(pg, "header")
        assert header["height"] < 50 and pg.evaluate("document.querySelector('header').scrollWidth <= 375")
        for sel in ("#new-chat", "#toggle-settings"):
            b = _box(pg, sel)
            assert b["y"] >= header["y"] and b["x"] + b["width"] <= 375, sel

        def uncovered():  # what is on top at the middle of the message box and of Send is that element
            return pg.evaluate("""['prompt', 'send'].every((id) => {
                const r = document.getElementById(id).getBoundingClientRect();
                return document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2) === document.getElementById(id)
                    && r.bottom <= innerHeight; })""")

        assert uncovered()
        pg.click("#toggle-settings")
        assert pg.is_visible("#settings") and uncovered()
        assert _box(pg, "#settings")["y"] + _box(pg, "#settings")["height"] <= _box(pg, "#prompt")["y"]
        pg.fill("#prompt", "typed")
        pg.reload()
        expect(pg.locator("#model")).to_have_text("tiny", timeout=5000)
        assert pg.is_visible("#settings") and pg.get_attribute("#toggle-settings", "aria-expanded") == "true"
        pg.click("#toggle-settings")
        pg.reload()
        expect(pg.locator("#model")).to_have_text("tiny", timeout=5000)
        assert pg.is_hidden("#settings")
    finally:
        ctx.close()


def test_max_tokens_defaults_within_the_servers_cap(page, live):
    """The server caps max_tokens at 128 (--max-tokens): /props says so (llama.cpp's
    default_generation_settings.params.n_predict), the field's default 256 comes down to it, the answer is not a 400."""
    props = httpx.get(live.url + "/props", headers=AUTH, timeout=5).json()
    assert props["default_generation_settings"]["params"]["n_predict"] == MAX_TOKENS
    assert page.input_value("#max-tokens") == str(MAX_TOKENS)
    assert str(MAX_TOKENS) in page.text_content("#max-tokens-note")
    _settings(page, temperature=0)
    with page.expect_request("**/v1/chat/completions") as req:
        _ask(page, "Hi")
    assert req.value.post_data_json["max_tokens"] == MAX_TOKENS


def test_a_failed_or_cut_short_turn_is_marked_and_left_out_of_the_conversation(page):
    """An HTTP error: the turn shows as failed with Retry, the question back in the box; sending it again shows it
    once, and the request carries what the screen shows. A stream that ends with neither finish_reason nor [DONE]
    is an error too ("ended early"), not a complete answer, and stays out of the conversation."""
    sent = []
    replies = ["error", _sse([_delta("Fine.", finish="stop")]), _sse([_delta("Half an ans")], tail=""),
               _sse([_delta("Again.", finish="stop")]), _sse([_delta("Ok.", finish="stop")])]

    def handle(route):
        if replies[0] == "error":
            replies.pop(0)
            sent.append(json.loads(route.request.post_data))
            route.fulfill(status=500, headers={"Content-Type": "application/json"},
                          body=json.dumps({"error": {"message": "boom", "type": "server_error"}}))
        else:
            _fulfil(replies, sent)(route)

    page.route("**/v1/chat/completions", handle)
    answer = _ask(page, "First?", state="error")
    assert "HTTP 500: boom" in answer.text_content() and page.input_value("#prompt") == "First?"
    assert "failed" in page.get_attribute(".msg.user", "class") and answer.get_by_role("button", name="Retry").count()
    assert _shown(page) == []
    _ask(page, "First?")  # the text given back, sent again
    assert page.locator(".msg.user").count() == 1 and page.locator(".msg.failed").count() == 0
    assert sent[1]["messages"] == [{"role": "user", "content": "First?"}]

    cut = _ask(page, "Second?", state="error")
    assert "the stream ended early" in cut.text_content() and "finish:" not in cut.text_content()
    assert page.input_value("#prompt") == "Second?"
    cut.get_by_role("button", name="Retry").click()  # Retry: the same question, once on screen
    expect(page.locator(".msg.assistant").last).to_have_attribute("data-state", "done", timeout=5000)
    assert page.input_value("#prompt") == "" and page.locator(".msg.user").count() == 2
    shown = _shown(page)
    assert sent[3]["messages"] == shown[:-1] == [{"role": "user", "content": "First?"},
                                                 {"role": "assistant", "content": "Fine."},
                                                 {"role": "user", "content": "Second?"}]
    _ask(page, "Third?")
    assert sent[4]["messages"] == _shown(page)[:-1]  # the screen is the context


def test_stop_before_the_first_token_gives_the_question_back_and_keys_and_focus_work(page):
    """Stop (the button, or Esc) before any answer text: the turn leaves the screen and the conversation, its text
    goes back to the box, the focus too. While an answer runs Enter sends nothing and says why, the answer is
    aria-busy (no live region re-reads it per token), and a status line tells when it is complete. Send clicked:
    the focus returns to the box."""
    sent = []
    replies = ["hold", "hold", _sse([_delta("Hello there.", finish="stop")])]
    page.route("**/v1/chat/completions", _fulfil(replies, sent))
    assert page.get_attribute("#messages", "aria-live") is None
    assert page.evaluate("document.getElementById('prompt').labels[0].textContent") == "Message"
    assert page.get_by_label("Message", exact=True).evaluate("e => e.id") == "prompt"
    page.fill("#prompt", "Tell me")
    page.click("#send")
    answer = page.locator(".msg.assistant").last
    expect(answer).to_have_attribute("data-state", "streaming", timeout=5000)
    assert answer.get_attribute("aria-busy") == "true"
    page.press("#prompt", "Enter")  # a second question while the first runs: not sent, and it says so
    expect(page.locator("#status")).to_contain_text("still coming", timeout=2000)
    assert len(sent) == 1 and page.get_attribute("#status", "role") == "status"
    page.click("#stop")
    expect(page.locator(".msg")).to_have_count(0, timeout=5000)
    assert page.input_value("#prompt") == "Tell me" and _active(page) == "prompt"

    page.click("#send")
    expect(page.locator(".msg.assistant")).to_have_attribute("data-state", "streaming", timeout=5000)
    page.click("#temperature")  # the focus elsewhere: Esc still stops
    page.keyboard.press("Escape")
    expect(page.locator(".msg")).to_have_count(0, timeout=5000)
    assert page.input_value("#prompt") == "Tell me" and page.is_enabled("#send")

    page.click("#send")
    answer = page.locator(".msg.assistant").last
    expect(answer).to_have_attribute("data-state", "done", timeout=5000)
    assert sent[2]["messages"] == [{"role": "user", "content": "Tell me"}]
    assert answer.get_attribute("aria-busy") is None and "Answer complete" in page.text_content("#status")
    expect(page.locator("#prompt")).to_be_focused()


def _contrast(fg: str, bg: str) -> float:
    def lum(css):
        r, g, b = (int(v) / 255 for v in re.findall(r"\d+", css)[:3])
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    hi, lo = sorted((lum(fg), lum(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_send_button_contrast_in_light_and_dark(browser, live):
    """The Send button's text against its background: at least 4.5:1 (WCAG AA) in the light and the dark scheme."""
    for scheme in ("light", "dark"):
        ctx = browser.new_context(color_scheme=scheme)
        pg = ctx.new_page()
        try:
            pg.goto(live.url + "/")
            fg, bg = pg.evaluate("(() => { const s = getComputedStyle(document.getElementById('send'));"
                                 " return [s.color, s.backgroundColor]; })()")
            assert _contrast(fg, bg) >= 4.5, (scheme, fg, bg)
        finally:
            ctx.close()


def test_copy_buttons_and_regenerate(page):
    """Each answer has Copy (its text) and each code block a copy button (the code; the block's text stays the
    code's); the newest answer alone has Regenerate, which sends the same context again without that answer and
    shows the new one in its place."""
    sent = []
    reply = "Use this:\n```sh\nls -la\n```\nok"
    page.route("**/v1/chat/completions", _fulfil([_sse([_delta(reply, finish="stop")]),
                                                  _sse([_delta("Second.", finish="stop")]),
                                                  _sse([_delta("Third.", finish="stop")])], sent))
    page.evaluate("navigator.clipboard.writeText = async (t) => { window.__copied = t; }")
    answer = _ask(page, "How?")
    answer.get_by_role("button", name="Copy code").click()
    assert page.evaluate("window.__copied") == "ls -la"
    assert answer.locator(".content pre").text_content() == "ls -la"
    answer.get_by_role("button", name="Copy", exact=True).click()
    assert page.evaluate("window.__copied") == reply
    _ask(page, "More?")
    assert page.get_by_role("button", name="Regenerate").count() == 1  # on the newest answer only
    page.get_by_role("button", name="Regenerate").click()
    expect(page.locator(".msg.assistant").last.locator(".content")).to_have_text("Third.", timeout=5000)
    assert sent[2]["messages"] == sent[1]["messages"]
    assert sent[1]["messages"][-1] == {"role": "user", "content": "More?"}
    assert _shown(page)[2:] == [{"role": "user", "content": "More?"}, {"role": "assistant", "content": "Third."}]
    assert page.locator(".msg").count() == 4
