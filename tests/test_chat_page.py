"""The chat page at ``GET /`` of ``onnxlm serve``, in a real browser: Debian's ``chromium`` driven by playwright
(the ``test`` extra; scripts/setup.sh installs chromium). One server (the tiny llama, with an API key) and one
browser per module; each test gets a fresh browser context (its own localStorage).

Asking, streaming, the conversation, the settings and stop go to the live server; the injection case and an error
inside a stream are answered by playwright (``page.route``) with a scripted SSE body, since they test the page."""
from __future__ import annotations

import json
import re
import time

import httpx
import pytest

pytest.importorskip("starlette", reason="the server tests need the serve extra")

from serve_util import post, start, wait_health  # noqa: E402

try:
    from playwright.sync_api import expect
except ImportError:  # a failure, not a skip: the page would go untested
    raise ImportError("the chat page tests need playwright (the test extra): pip install -e '.[test]'") from None

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEY = "page-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_TOKENS = 128  # the server's cap


@pytest.fixture(scope="module")
def live(tiny_llama):
    import onnxlm

    srv = start(lambda: onnxlm.load(tiny_llama.onnx_dir), api_key=KEY, max_rows=8, max_queue=8, max_tokens=MAX_TOKENS)
    wait_health(srv.url)
    yield srv
    srv.stop()


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
    """Type ``text``, send it with Enter, wait until the newest answer's state is ``state`` and its buttons (Copy or
    Retry) are there -> that answer. The buttons come once the turn is kept: the state is set a moment before (the
    stream's reader is closed in between)."""
    pg.fill("#prompt", text)
    pg.press("#prompt", "Enter")
    answer = pg.locator(".msg.assistant").last
    expect(answer).to_have_attribute("data-state", state, timeout=timeout)
    expect(answer.locator(".actions button").first).to_be_attached(timeout=timeout)
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
        expect(pg.locator("#max-tokens")).to_have_attribute("max", re.compile(r"\d+"), timeout=5000)  # /props read
        _settings(pg, temperature=0, max_tokens=12)  # (before it, the page's /props answer could land in the field)
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
    "hold" leaves the request open, as a server that has not answered yet; "error" answers HTTP 500 "boom" in
    OpenAI's error body)."""
    def handle(route):
        sent.append(json.loads(route.request.post_data))
        body = replies.pop(0)
        if body == "error":
            route.fulfill(status=500, headers={"Content-Type": "application/json"},
                          body=json.dumps({"error": {"message": "boom", "type": "server_error"}}))
        elif body != "hold":
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

    page.route("**/v1/chat/completions", _fulfil(replies, sent))
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
    assert answer.get_attribute("aria-busy") is None
    # said once the turn is kept (an await on the conversation's storage): a moment after the state says done
    expect(page.locator("#status")).to_contain_text("Answer complete", timeout=5000)
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


# ------------------------------------------------------------------------- conversations kept in the browser
USAGE = {"object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7,
                                                                      "total_tokens": 12}}


def _reply(text: str) -> str:
    """A finished answer's SSE body: ``text``, stop, the usage chunk (include_usage), [DONE]."""
    return _sse([_delta(text), _delta(finish="stop"), USAGE])


def _open(browser, live, init: str | None = None, width: int = 1000):
    """A fresh context and page (the ``page`` fixture's steps; ``init``: JS run before the page's own) -> (context,
    page, the page's uncaught errors)."""
    ctx = browser.new_context(viewport={"width": width, "height": 700})
    if init:
        ctx.add_init_script(init)
    pg, errors = _tab(ctx, live)
    return ctx, pg, errors


def _tab(ctx, live, init: str | None = None):
    """Another page (a tab) of ``ctx`` on the chat page, the key typed in (``init``: JS run before the page's own, in
    this tab only) -> (page, the page's uncaught errors). The tabs of one context share localStorage."""
    pg = ctx.new_page()
    if init:
        pg.add_init_script(init)
    errors = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(live.url + "/")
    pg.evaluate("(key) => { const e = document.getElementById('api-key'); e.value = key; "
                "e.dispatchEvent(new Event('change')); }", KEY)  # Settings may be closed (a narrow screen)
    expect(pg.locator("#model")).to_have_text("tiny", timeout=5000)
    return pg, errors


def _stored(pg) -> list[dict]:
    """The conversations in the page's localStorage (conversations.js: each under its own key,
    onnxlm.conversation.<id>; those still in the single key of earlier versions too), newest first; what is not JSON
    left out."""
    return pg.evaluate("""(() => {
        const all = [];
        for (const key of Object.keys(localStorage)) {
            let v;
            try { v = JSON.parse(localStorage.getItem(key)); } catch (e) { continue; }
            if (key.startsWith('onnxlm.conversation.')) all.push(v);
            else if (key === 'onnxlm.conversations' && Array.isArray(v)) all.push(...v);
        }
        return all.sort((a, b) => b.updated - a.updated); })()""")


def _until(pg, js: str, timeout: float = 5.0):
    """Wait until the function ``js`` returns true in ``pg`` (polled with evaluate: wait_for_function evaluates a
    string, which the page's CSP refuses)."""
    end = time.monotonic() + timeout
    while not pg.evaluate(js):
        assert time.monotonic() < end, f"not true within {timeout} s: {js}"
        pg.wait_for_timeout(20)


def _titles(pg) -> list[str]:
    return pg.locator("#chat-list .chat-item .title").all_text_contents()


def _chat(pg, title: str):
    """The conversation list's entry titled ``title``."""
    title = pg.locator(".title", has_text=re.compile("^" + re.escape(title) + "$"))
    return pg.locator("#chat-list .chat-item").filter(has=title)


def test_a_conversation_is_kept_after_each_finished_turn_and_comes_back_after_a_reload(page):
    """Each finished turn is saved (localStorage); the list shows the conversation, titled after its first question
    (spaces collapsed, cut at 48 characters) with its time; a failed turn is not saved. After a reload the same
    turns are shown, with their stats lines (the usage's token count: the request asks for it), and the next
    question carries them."""
    sent = []
    replies = [_reply("First **answer**."), _reply("Second answer."), "error", _reply("Third answer.")]

    page.route("**/v1/chat/completions", _fulfil(replies, sent))
    assert page.locator("#chat-list .chat-item").count() == 0 and page.is_visible("#chats-empty")
    question = "What  is\nthe first question of this rather long conversation?"
    first = _ask(page, question)
    assert sent[0]["stream_options"] == {"include_usage": True}
    assert first.locator(".meta").text_content().startswith("7 tokens")
    _ask(page, "Second?")
    _ask(page, "Failing?", state="error")
    title = "What is the first question of this rather long conversation?"[:47] + "…"
    assert _titles(page) == [title]
    entry = _chat(page, title)
    assert entry.locator(".open").get_attribute("aria-current") == "true"
    assert re.search(r"\d\d:\d\d", entry.locator("time").text_content())
    shown = _shown(page)  # as the screen shows it: the markdown's markers are not text
    turns = [question, "First **answer**.", "Second?", "Second answer."]
    assert len(shown) == 4 and [m["content"] for m in _stored(page)[0]["messages"]] == turns

    page.reload()
    expect(page.locator("#model")).to_have_text("tiny", timeout=5000)
    assert _shown(page) == shown and page.locator(".msg.failed").count() == 0
    assert page.locator(".msg.assistant .content strong").text_content() == "answer"
    assert [m.startswith("7 tokens") for m in page.locator(".msg.assistant .meta").all_text_contents()] == [True] * 2
    assert page.get_by_role("button", name="Regenerate").count() == 1
    assert _chat(page, title).locator(".open").get_attribute("aria-current") == "true"
    _ask(page, "Third?")
    assert sent[3]["messages"] == [{"role": "user", "content": question}, {"role": "assistant",
                                   "content": "First **answer**."}, {"role": "user", "content": "Second?"},
                                   {"role": "assistant", "content": "Second answer."},
                                   {"role": "user", "content": "Third?"}]
    assert [m["content"] for m in _stored(page)[0]["messages"]] == turns + ["Third?", "Third answer."]


def test_switching_conversations_shows_and_sends_that_ones_turns_and_stops_a_running_answer(page):
    """Two conversations: the list has both, newest first; clicking one shows its turns and the next question
    carries them (and no other). Switching while an answer streams stops that request first: the page is idle at
    once, the unfinished turn is dropped (not saved in the conversation it was asked in)."""
    sent = []
    page.route("**/v1/chat/completions", _fulfil([_reply("Answer A."), _reply("Answer B."), _reply("More A."),
                                                  "hold", _reply("More B.")], sent))
    _ask(page, "Question A")
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0
    _ask(page, "Question B")
    assert sent[1]["messages"] == [{"role": "user", "content": "Question B"}]
    assert _titles(page) == ["Question B", "Question A"]
    _chat(page, "Question A").locator(".open").click()
    turn_a = [{"role": "user", "content": "Question A"}, {"role": "assistant", "content": "Answer A."}]
    assert _shown(page) == turn_a
    assert _chat(page, "Question A").locator(".open").get_attribute("aria-current") == "true"
    assert _chat(page, "Question B").locator(".open").get_attribute("aria-current") is None
    _ask(page, "Again A")
    assert sent[2]["messages"] == turn_a + [{"role": "user", "content": "Again A"}]
    assert _titles(page) == ["Question A", "Question B"]  # the newest turn first

    _chat(page, "Question B").locator(".open").click()
    page.fill("#prompt", "Held in B")
    page.click("#send")
    expect(page.locator(".msg.assistant").last).to_have_attribute("data-state", "streaming", timeout=5000)
    with page.expect_event("requestfailed") as failed:
        _chat(page, "Question A").locator(".open").click()
    assert "/v1/chat/completions" in failed.value.url  # the held request was aborted
    assert page.is_enabled("#send") and page.is_disabled("#stop")
    assert _shown(page)[:2] == turn_a and len(_shown(page)) == 4
    stored_b = [c for c in _stored(page) if c["title"] == "Question B"][0]
    assert [m["content"] for m in stored_b["messages"]] == ["Question B", "Answer B."]
    _chat(page, "Question B").locator(".open").click()
    _ask(page, "Last B")
    assert sent[4]["messages"] == [{"role": "user", "content": "Question B"},
                                   {"role": "assistant", "content": "Answer B."}, {"role": "user", "content": "Last B"}]


def test_deleting_a_conversation_asks_once_more_and_the_shown_one_leaves_the_screen(page):
    """Delete asks first ("Delete?"; leaving the button takes the question back); the second click deletes it from
    the list and from storage. Deleting the conversation shown, while its answer streams, stops the request and
    empties the screen; after a reload nothing comes back."""
    page.route("**/v1/chat/completions", _fulfil([_reply("A."), _reply("B."), "hold"], []))
    _ask(page, "Keep or not")
    page.click("#new-chat")
    _ask(page, "Shown one")
    delete = _chat(page, "Keep or not").locator(".delete")
    delete.click()
    expect(delete).to_have_text("Delete?")
    assert delete.get_attribute("aria-label") == "Confirm: delete “Keep or not”" and len(_stored(page)) == 2
    page.click("#prompt")  # the focus leaves: no longer asking
    expect(delete).to_have_text("×")
    delete.click()
    delete.click()
    expect(page.locator("#chat-list .chat-item .title")).to_have_text(["Shown one"])  # deleted (its lock taken)
    assert [c["title"] for c in _stored(page)] == ["Shown one"]
    assert _shown(page) == [{"role": "user", "content": "Shown one"}, {"role": "assistant", "content": "B."}]

    page.fill("#prompt", "Held")
    page.click("#send")
    expect(page.locator(".msg.assistant").last).to_have_attribute("data-state", "streaming", timeout=5000)
    delete = _chat(page, "Shown one").locator(".delete")
    delete.click()
    with page.expect_event("requestfailed"):
        delete.click()
    assert page.locator(".msg").count() == 0 and page.is_enabled("#send") and page.is_disabled("#stop")
    expect(page.locator("#chats-empty")).to_be_visible()
    assert _titles(page) == [] and _stored(page) == []
    page.reload()
    expect(page.locator("#model")).to_have_text("tiny", timeout=5000)
    assert page.locator(".msg").count() == 0 and _titles(page) == []


def test_corrupt_stored_conversations_start_empty_and_no_count_drops_the_oldest(browser, live):
    """Storage holding what is not JSON (or a conversation id that is gone): the page loads without an error, the
    list empty, a new turn is saved, and the text that could not be read is kept aside as it was. Storage holding 60
    good conversations and two bad entries: the bad ones are left out, all 60 are listed, and a new conversation
    drops none (the page kept the newest 50 once, dropping the oldest silently: now only the storage's room limits
    them, and full storage removes nothing and says so)."""
    ctx, pg, errors = _open(browser, live, init="""if (!sessionStorage.getItem('seeded')) {
        sessionStorage.setItem('seeded', '1');
        localStorage.setItem('onnxlm.conversations', '{not json');
        localStorage.setItem('onnxlm.current', 'gone'); }""")
    try:
        pg.route("**/v1/chat/completions", _fulfil([_reply("Fine.")], []))
        assert _titles(pg) == [] and pg.locator(".msg").count() == 0
        assert "could not be read" in pg.text_content("#status")
        _ask(pg, "Works?")
        assert [c["title"] for c in _stored(pg)] == ["Works?"] and _titles(pg) == ["Works?"]
        assert pg.evaluate("localStorage.getItem('onnxlm.conversations.unreadable')") == "{not json"  # kept
        assert not errors, errors
    finally:
        ctx.close()

    good = [{"id": f"c{i}", "title": f"Old {i}", "created": 1000 + i, "updated": 1000 + i,
             "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(60)]
    bad = [{"id": "x", "messages": [{"role": "tool", "content": "?"}]}, "not a conversation"]
    ctx, pg, errors = _open(browser, live, init=f"""if (!sessionStorage.getItem('seeded')) {{
        sessionStorage.setItem('seeded', '1');
        localStorage.setItem('onnxlm.conversations', {json.dumps(json.dumps(good + bad))}); }}""")
    try:
        pg.route("**/v1/chat/completions", _fulfil([_reply("New.")], []))
        assert len(_titles(pg)) == 60 and _titles(pg)[0] == "Old 59" and _titles(pg)[-1] == "Old 0"
        _chat(pg, "Old 7").locator(".open").click()
        assert _shown(pg) == good[7]["messages"]
        pg.click("#new-chat")
        _ask(pg, "Newest")
        titles = _titles(pg)
        assert titles == ["Newest"] + [f"Old {i}" for i in reversed(range(60))]
        assert [c["title"] for c in _stored(pg)] == titles
        assert pg.is_hidden("#store-note") and "Old 0" not in pg.text_content("#status")
        assert not errors, errors
    finally:
        ctx.close()


def test_blocked_or_full_storage_keeps_conversations_in_memory_and_says_so_once(browser, live):
    """localStorage that throws on access (blocked) or on every write (full): the page loads and chats, says once
    that conversations are not kept, and the list still switches between this visit's conversations."""
    blocked = """Object.defineProperty(window, 'localStorage', { get() {
        throw new DOMException('The operation is insecure.', 'SecurityError'); } });"""
    full = """Storage.prototype.setItem = function () {
        throw new DOMException('The quota has been exceeded.', 'QuotaExceededError'); };"""
    for init in (blocked, full):
        ctx, pg, errors = _open(browser, live, init=init)
        try:
            sent = []
            pg.route("**/v1/chat/completions", _fulfil([_reply("One."), _reply("Two."), _reply("Three.")], sent))
            _ask(pg, "First")
            expect(pg.locator("#store-note")).to_be_visible()
            assert "not kept" in pg.text_content("#store-note")
            pg.click("#store-note-close")
            pg.click("#new-chat")
            _ask(pg, "Second")
            assert pg.is_hidden("#store-note")  # said once
            assert _titles(pg) == ["Second", "First"]
            _chat(pg, "First").locator(".open").click()
            _ask(pg, "More")
            first = [{"role": "user", "content": "First"}, {"role": "assistant", "content": "One."}]
            assert sent[2]["messages"] == first + [{"role": "user", "content": "More"}]
            assert not errors, errors
        finally:
            ctx.close()


# localStorage filled with junk keys until about ``leave`` characters are left
FILL = """(leave) => {
  const chunk = 'x'.repeat(1 << 20);
  let k = 0;
  for (let size = 1 << 20; size >= 16; ) {
    try { localStorage.setItem('junk' + k, chunk.slice(0, size)); k += 1; } catch (e) { size >>= 1; }
  }
  let freed = 0;
  for (let i = k - 1; i >= 0 && freed < leave; i--) {
    const v = localStorage.getItem('junk' + i);
    const cut = Math.min(v.length, leave - freed);
    localStorage.setItem('junk' + i, v.slice(cut));
    freed += cut;
  }
}"""


def test_full_storage_removes_no_other_conversation_says_so_and_saves_again_once_there_is_room(browser, live):
    """Six conversations kept, then storage filled until about 3,000 characters are left: a new conversation with a
    9,000-character answer is not kept (still listed and shown here), the note says storage is full, and none of the
    six is removed to make room. Once room is freed (in another tab), the next answer keeps it, the note goes."""
    ctx, pg, errors = _open(browser, live)
    try:
        replies = [_reply(f"Answer {i} " + "y" * 2000) for i in range(6)] + [_reply("Big " + "z" * 9000),
                                                                             _reply("Small.")]
        pg.route("**/v1/chat/completions", _fulfil(replies, []))
        for i in range(6):
            pg.click("#new-chat")
            _ask(pg, f"Old {i}")
        old = [f"Old {i}" for i in reversed(range(6))]
        assert [c["title"] for c in _stored(pg)] == old
        pg.evaluate(FILL, 3000)
        pg.click("#new-chat")
        _ask(pg, "A long answer")
        expect(pg.locator("#store-note")).to_be_visible()
        assert "storage is full" in pg.text_content("#store-note") and "not kept" in pg.text_content("#store-note")
        assert [c["title"] for c in _stored(pg)] == old  # nothing removed to make room
        assert _titles(pg) == ["A long answer", *old]  # kept in memory

        other, errors_b = _tab(ctx, live)
        other.evaluate("() => { for (const k of Object.keys(localStorage)) "
                       "if (k.startsWith('junk')) localStorage.removeItem(k); }")
        _until(pg, "() => !Object.keys(localStorage).some((k) => k.startsWith('junk'))")  # heard here
        _ask(pg, "Now?")
        assert [c["title"] for c in _stored(pg)] == ["A long answer", *old]
        assert [m["content"] for m in _stored(pg)[0]["messages"]][2:] == ["Now?", "Small."]
        expect(pg.locator("#store-note")).to_be_hidden()
        expect(other.locator("#chat-list .chat-item .title")).to_have_text(["A long answer", *old], timeout=5000)
        assert not errors + errors_b
    finally:
        ctx.close()


def test_unreadable_stored_conversations_are_left_as_they_were_and_listed_once(browser, live):
    """Storage holding, next to good conversations, entries that cannot be read (not JSON, a turn of another role,
    one ending with a question) and an id twice: the list shows each good conversation once (the newer of the
    twice-stored one), the status line says some could not be read, and after new turns and a delete the unreadable
    ones are still in storage as they were: under their own keys, or (the single key of earlier versions, moved to
    one key each at load) under onnxlm.conversations.unreadable."""
    def conv(i, **kw):
        return {"id": f"g{i}", "title": f"Good {i}", "created": 1000 + i, "updated": 1000 + i,
                "messages": _answer(f"q{i}"), **kw}
    bad = [None, "not a conversation", {"id": "t", "messages": [{"role": "tool", "content": "?"}]},
           conv(3, messages=[{"role": "user", "content": "asked later"}])]
    old = [conv(1), conv(2, title="Good 2, older"), *bad, conv(2, updated=2000)]
    ending = json.dumps(conv(4, messages=_answer("q4") + [{"role": "user", "content": "a question"}]))
    ctx, pg, errors = _open(browser, live, init=f"""if (!sessionStorage.getItem('seeded')) {{
        sessionStorage.setItem('seeded', '1');
        localStorage.setItem('onnxlm.conversations', {json.dumps(json.dumps(old))});
        localStorage.setItem('onnxlm.conversation.broken', '{{not json');
        localStorage.setItem('onnxlm.conversation.g4', {json.dumps(ending)}); }}""")
    try:
        pg.route("**/v1/chat/completions", _fulfil([_reply("Fine."), _reply("More.")], []))
        assert "could not be read" in pg.text_content("#status")
        assert pg.evaluate("[...document.querySelectorAll('#chat-list .chat-item')].map((li) => li.dataset.id)") == [
            "g2", "g1"]
        assert _titles(pg) == ["Good 2", "Good 1"] and _shown(pg) == _answer("q2")
        _ask(pg, "More on 2")
        pg.click("#new-chat")
        _ask(pg, "Another")
        delete = _chat(pg, "Good 1").locator(".delete")
        delete.click()
        delete.click()
        expect(pg.locator("#chat-list .chat-item .title")).to_have_text(["Another", "Good 2"])
        raw = pg.evaluate("() => Object.fromEntries(Object.keys(localStorage)"
                          ".filter((k) => k.startsWith('onnxlm.con')).map((k) => [k, localStorage.getItem(k)]))")
        assert raw.get("onnxlm.conversations") is None  # moved
        assert raw["onnxlm.conversation.broken"] == "{not json" and raw["onnxlm.conversation.g4"] == ending
        assert json.loads(raw["onnxlm.conversations.unreadable"]) == [*bad, conv(2, title="Good 2, older")]
        assert sorted(k for k in raw if k.startswith("onnxlm.conversation.")) == sorted(
            ["onnxlm.conversation.broken", "onnxlm.conversation.g4", "onnxlm.conversation.g2",
             "onnxlm.conversation." + _stored(pg)[0]["id"]])
        pg.reload()
        expect(pg.locator("#model")).to_have_text("tiny", timeout=5000)
        assert _titles(pg) == ["Another", "Good 2"] and "could not be read" in pg.text_content("#status")
        assert not errors, errors
    finally:
        ctx.close()


# ------------------------------------------------------------------------------- two tabs on the same server
# a tab that does not hear the other tabs' writes (its list stays as it loaded it): the storage event stopped before
# the page's own handler sees it
DEAF = "window.addEventListener('storage', (e) => e.stopImmediatePropagation());"


def _answer(text: str) -> list[dict]:
    return [{"role": "user", "content": text}, {"role": "assistant", "content": "Re: " + text}]


def _route_echo(pg, sent: list | None = None):
    """Each chat request of ``pg`` answered "Re: <its question>" (its body into ``sent``)."""
    def handle(route):
        body = json.loads(route.request.post_data)
        if sent is not None:
            sent.append(body)
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"},
                      body=_reply("Re: " + body["messages"][-1]["content"]))
    pg.route("**/v1/chat/completions", handle)


def test_two_tabs_keep_each_others_conversations(browser, live):
    """Two tabs on the same server each finish a conversation: both are in storage, and each tab's list shows both
    (the other tab's write arrives as a storage event) while each still shows its own. A tab that has not heard of
    the other's writes (its list stale) still keeps them when it saves: each write merges into what storage holds."""
    ctx, a, errors = _open(browser, live)
    try:
        b, errors_b = _tab(ctx, live)
        stale, errors_c = _tab(ctx, live, init=DEAF)
        for pg in (a, b, stale):
            _route_echo(pg)
        _ask(a, "Asked in A")
        expect(b.locator("#chat-list .chat-item .title")).to_have_text(["Asked in A"], timeout=5000)
        _ask(b, "Asked in B")
        both = ["Asked in B", "Asked in A"]
        expect(a.locator("#chat-list .chat-item .title")).to_have_text(both, timeout=5000)
        assert _titles(b) == both and [c["title"] for c in _stored(a)] == both
        assert _shown(a) == _answer("Asked in A") and _shown(b) == _answer("Asked in B")
        assert _chat(a, "Asked in A").locator(".open").get_attribute("aria-current") == "true"
        assert _chat(b, "Asked in B").locator(".open").get_attribute("aria-current") == "true"
        assert _titles(stale) == []  # loaded before both, deaf since

        _ask(stale, "Asked in the stale tab")
        three = ["Asked in the stale tab", *both]
        assert [c["title"] for c in _stored(stale)] == three
        assert [[{k: m[k] for k in ("role", "content")} for m in c["messages"]] for c in _stored(stale)] == [
            _answer(t) for t in three]
        for pg in (a, b):
            expect(pg.locator("#chat-list .chat-item .title")).to_have_text(three, timeout=5000)
        assert not errors + errors_b + errors_c
    finally:
        ctx.close()


def test_a_conversation_deleted_in_one_tab_stays_deleted_when_another_tab_saves(browser, live):
    """Tab A deletes a conversation: tab B's list drops it (storage event), and neither B saving another conversation
    nor a tab whose list still holds it (it did not hear) saving one brings it back; after a reload it is still
    gone."""
    ctx, a, errors = _open(browser, live)
    try:
        _route_echo(a)
        _ask(a, "Doomed")
        a.click("#new-chat")
        _ask(a, "Kept")
        b, errors_b = _tab(ctx, live)
        stale, errors_c = _tab(ctx, live, init=DEAF)
        for pg in (b, stale):
            _route_echo(pg)
            assert _titles(pg) == ["Kept", "Doomed"] and _shown(pg) == _answer("Kept")  # the one shown last
            pg.click("#new-chat")
        delete = _chat(a, "Doomed").locator(".delete")
        delete.click()
        delete.click()
        expect(a.locator("#chat-list .chat-item .title")).to_have_text(["Kept"])
        assert [c["title"] for c in _stored(a)] == ["Kept"]
        expect(b.locator("#chat-list .chat-item .title")).to_have_text(["Kept"], timeout=5000)

        _ask(b, "From B")
        assert [c["title"] for c in _stored(b)] == ["From B", "Kept"]
        assert _titles(stale) == ["Kept", "Doomed"]  # never heard of the deletion
        _ask(stale, "From the stale tab")
        titles = ["From the stale tab", "From B", "Kept"]
        assert [c["title"] for c in _stored(stale)] == titles
        for pg in (a, b):
            expect(pg.locator("#chat-list .chat-item .title")).to_have_text(titles, timeout=5000)
        a.reload()
        expect(a.locator("#model")).to_have_text("tiny", timeout=5000)
        assert _titles(a) == titles
        assert not errors + errors_b + errors_c
    finally:
        ctx.close()


def test_the_conversation_shown_stays_when_another_tab_writes(browser, live):
    """Another tab's writes re-render the list only: the conversation shown, the text being typed, the one marked
    and a Delete? waiting for its second click stay. The conversation shown, deleted in the other tab, stays on
    screen (the status line says so) and is kept again, as it was and with the new turn, when its next answer
    finishes."""
    ctx, a, errors = _open(browser, live)
    try:
        b, errors_b = _tab(ctx, live)
        _route_echo(a)
        _route_echo(b)
        _ask(b, "Shown in B")
        b.fill("#prompt", "a draft")
        _ask(a, "Asked in A")
        expect(b.locator("#chat-list .chat-item .title")).to_have_text(["Asked in A", "Shown in B"], timeout=5000)
        assert _shown(b) == _answer("Shown in B") and b.input_value("#prompt") == "a draft"
        assert _chat(b, "Shown in B").locator(".open").get_attribute("aria-current") == "true"
        created = _stored(a)[0]["created"]

        delete = _chat(b, "Asked in A").locator(".delete")
        delete.click()
        expect(delete).to_have_text("Delete?")
        time_a = _chat(b, "Asked in A").locator("time")
        before = time_a.get_attribute("datetime")
        _ask(a, "More in A")
        expect(time_a).not_to_have_attribute("datetime", before, timeout=5000)  # b's list shows the new turn's time
        assert _titles(b) == ["Asked in A", "Shown in B"]
        assert _shown(b) == _answer("Shown in B") and b.input_value("#prompt") == "a draft"
        expect(delete).to_have_text("Delete?")  # still waiting for its second click
        assert delete.evaluate("(e) => e === document.activeElement")
        assert b.text_content("#status") == "Click Delete? again to delete “Asked in A”."
        delete.click()
        expect(b.locator("#chat-list .chat-item .title")).to_have_text(["Shown in B"])
        assert [c["title"] for c in _stored(b)] == ["Shown in B"]

        expect(a.locator("#chat-list .chat-item .title")).to_have_text(["Shown in B"], timeout=5000)
        assert _shown(a) == _answer("Asked in A") + _answer("More in A")
        assert "deleted in another tab" in a.text_content("#status")
        _ask(a, "Once more")
        kept = _stored(a)[0]
        assert kept["title"] == "Asked in A" and kept["created"] == created
        assert [{k: m[k] for k in ("role", "content")} for m in kept["messages"]] == (
            _answer("Asked in A") + _answer("More in A") + _answer("Once more"))
        expect(b.locator("#chat-list .chat-item .title")).to_have_text(["Asked in A", "Shown in B"], timeout=5000)
        assert _shown(b) == _answer("Shown in B")
        assert not errors + errors_b
    finally:
        ctx.close()


# each chat request answered at once in the page itself ("Re: <its question>", streamed by a fetch shim): tabs that
# send at the same moment then save at nearly the same moment (playwright's route answers one request at a time)
RACE_ROUNDS = 10  # the rounds of test_two_tabs_saving_the_same_conversation_...: the old page lost a turn in each

ECHO_SHIM = """(() => {
  const real = window.fetch.bind(window);
  window.fetch = (url, opts) => {
    if (!String(url).includes('chat/completions')) return real(url, opts);
    const q = JSON.parse(opts.body).messages.at(-1).content;
    const chunk = (delta, finish) => 'data: ' + JSON.stringify({ object: 'chat.completion.chunk',
      choices: [{ index: 0, delta, finish_reason: finish }] }) + '\\r\\n\\r\\n';
    const body = chunk({ content: 'Re: ' + q }, null) + chunk({}, 'stop') + 'data: [DONE]\\r\\n\\r\\n';
    return Promise.resolve(new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } }));
  };
})();"""


def test_tabs_saving_or_deleting_at_the_same_moment_lose_nothing(browser, live):
    """Three tabs each start a new conversation and send at the same moment, five times over: every conversation is
    stored and listed in every tab (each under its own key: a write of one tab never replaces another's), and no tab
    says its own conversation was deleted elsewhere. Then each tab deletes a different one at the same moment: all
    three are gone, none comes back."""
    ctx, a, errors = _open(browser, live, init=ECHO_SHIM)
    try:
        tabs, errs = [a], [errors]
        for _ in range(2):
            pg, e = _tab(ctx, live)
            tabs.append(pg)
            errs.append(e)
        asked = []
        for r in range(5):
            at = a.evaluate("Date.now()") + 300
            for k, pg in enumerate(tabs):
                asked.append(f"Round {r} in tab {k}")
                pg.evaluate("""([q, at]) => {
                    document.getElementById('new-chat').click();
                    document.getElementById('prompt').value = q;
                    setTimeout(() => document.getElementById('send').click(), at - Date.now()); }""", [asked[-1], at])
            for k, pg in enumerate(tabs):
                expect(pg.locator("#messages .msg.assistant .actions button").first).to_be_attached(timeout=5000)
                assert _shown(pg) == _answer(f"Round {r} in tab {k}")
        for pg in tabs:
            expect(pg.locator("#chat-list .chat-item")).to_have_count(len(asked), timeout=5000)
            assert sorted(_titles(pg)) == sorted(asked)
            assert "deleted in another tab" not in pg.text_content("#status")
        assert sorted(c["title"] for c in _stored(a)) == sorted(asked)

        doomed = asked[:3]
        at = a.evaluate("Date.now()") + 300
        for pg, title in zip(tabs, doomed):
            pg.evaluate("""([title, at]) => setTimeout(() => {
                const item = [...document.querySelectorAll('#chat-list .chat-item')].find(
                    (li) => li.querySelector('.title').textContent === title);
                const del = item.querySelector('.delete');
                del.click();
                del.click(); }, at - Date.now())""", [title, at])
        left = sorted(set(asked) - set(doomed))
        for pg in tabs:
            expect(pg.locator("#chat-list .chat-item")).to_have_count(len(left), timeout=5000)
            assert sorted(_titles(pg)) == left
        assert sorted(c["title"] for c in _stored(a)) == left
        a.reload()
        expect(a.locator("#model")).to_have_text("tiny", timeout=5000)
        assert sorted(_titles(a)) == left
        assert not sum(errs, [])
    finally:
        ctx.close()


def _turns(conv: dict) -> list[dict]:
    return [{k: m[k] for k in ("role", "content")} for m in conv["messages"]]


def _at_once(tabs, questions, delay: int = 200):
    """Each tab of ``tabs`` sends its question of ``questions`` at the same moment (``delay`` ms from now, by the
    first tab's clock: the tabs share it), without waiting."""
    at = tabs[0].evaluate("Date.now()") + delay
    for pg, q in zip(tabs, questions):
        pg.evaluate("""([q, at]) => { document.getElementById('prompt').value = q;
            setTimeout(() => document.getElementById('send').click(), at - Date.now()); }""", [q, at])


def test_two_tabs_saving_the_same_conversation_at_the_same_moment_lose_no_turn(browser, live):
    """Two tabs show the same conversation and each sends a question at the same moment (answered at once in the
    page: their saves of that conversation come within a millisecond or so), many times over: every finished turn
    is kept, either in the conversation itself or in the "(copy)" the page makes of a tab's version when the other
    tab saved first; never one save replacing the other's (localStorage's check-then-write is not atomic across
    tabs: conversations.js holds a Web Lock per conversation across it)."""
    ctx, a, errors = _open(browser, live, init=ECHO_SHIM)
    try:
        b, errors_b = _tab(ctx, live)
        assert a.evaluate("Boolean(navigator.locks)")  # http://127.0.0.1 is a secure context
        lost = []
        for r in range(RACE_ROUNDS):
            seed = f"Seed {r}"
            # clicked in the page: playwright's click waits for frames, which a tab in the background does not draw
            a.evaluate("""(q) => { document.getElementById('new-chat').click();
                document.getElementById('prompt').value = q;
                document.getElementById('send').click(); }""", seed)
            _until(a, "() => document.querySelectorAll('#messages .msg.assistant .actions').length === 1")
            _until(b, "() => [...document.querySelectorAll('#chat-list .title')].some((t) => t.textContent === "
                      f"'{seed}')")
            _chat(b, seed).locator(".open").evaluate("(e) => e.click()")
            assert _shown(b) == _answer(seed)
            asked = [f"Round {r} from A", f"Round {r} from B"]
            _at_once((a, b), asked)
            for pg in (a, b):  # both answers kept (their buttons come after the save)
                _until(pg, "() => document.querySelectorAll('#messages .msg.assistant .actions').length === 2")
            kept = [_turns(c) for c in _stored(a) if c["title"].startswith(seed)]  # it and its "(copy)"
            for q in asked:  # in the conversation after its seed (alone, or after the other tab's turn), or a copy
                if not any(t[:2] == _answer(seed) and t[-2:] == _answer(q) for t in kept):
                    lost.append((q, kept))
        assert not lost, f"{len(lost)} of {2 * RACE_ROUNDS} turns lost: {lost[:3]}"
        assert not errors + errors_b
    finally:
        ctx.close()


def test_a_save_waits_for_its_conversations_lock_and_works_without_web_locks(browser, live):
    """A finished turn's save takes the Web Lock named after its conversation's key: while another tab holds it, the
    turn is not written (nor its buttons shown); released, it is. A browser without Web Locks (plain http to another
    host is no secure context) saves and deletes at once, as before."""
    ctx, a, errors = _open(browser, live)
    try:
        _route_echo(a)
        _ask(a, "Locked?")
        key = "onnxlm.conversation." + _stored(a)[0]["id"]
        b, errors_b = _tab(ctx, live)
        b.evaluate("""(key) => { window.__release = null;
            navigator.locks.request(key, () => new Promise((r) => { window.__release = r; })); }""", key)
        _until(b, "() => window.__release !== null")
        a.fill("#prompt", "While held")
        a.press("#prompt", "Enter")
        answer = a.locator(".msg.assistant").last
        expect(answer).to_have_attribute("data-state", "done")
        a.wait_for_timeout(300)
        assert [m["content"] for m in _stored(a)[0]["messages"]] == ["Locked?", "Re: Locked?"]
        assert answer.locator(".actions").count() == 0
        b.evaluate("window.__release()")
        expect(answer.locator(".actions button").first).to_be_attached()
        assert [m["content"] for m in _stored(a)[0]["messages"]][2:] == ["While held", "Re: While held"]
        assert not errors + errors_b
    finally:
        ctx.close()

    ctx, pg, errors = _open(browser, live, init="Object.defineProperty(Navigator.prototype, 'locks', "
                                                 "{ get() { return undefined; } });")
    try:
        _route_echo(pg)
        assert pg.evaluate("navigator.locks === undefined")
        _ask(pg, "No locks")
        pg.click("#new-chat")
        _ask(pg, "Still none")
        assert [c["title"] for c in _stored(pg)] == ["Still none", "No locks"]
        delete = _chat(pg, "No locks").locator(".delete")
        delete.click()
        delete.click()
        assert [c["title"] for c in _stored(pg)] == ["Still none"] and _titles(pg) == ["Still none"]
        assert not errors, errors
    finally:
        ctx.close()


def test_a_conversation_continued_in_two_tabs_keeps_every_answer(browser, live):
    """Tab A asks in a conversation that tabs B and C (C deaf to the other tabs' writes) show too. B, idle, shows the
    new turn at once (the storage event). C, stale, asks its own next question: the turn A kept stays, and C's
    version is kept as a new conversation ("… (copy)"), shown in C, the status line says so. Clicking the
    conversation already shown reads it again from storage."""
    ctx, a, errors = _open(browser, live)
    try:
        _route_echo(a)
        _ask(a, "First question")
        b, errors_b = _tab(ctx, live)
        stale, errors_c = _tab(ctx, live, init=DEAF)
        for pg in (b, stale):
            _route_echo(pg)
            assert _shown(pg) == _answer("First question")  # a new tab: the newest conversation
        _ask(a, "Second, from A")
        both = _answer("First question") + _answer("Second, from A")
        expect(b.locator("#messages .msg")).to_have_count(4, timeout=5000)
        assert _shown(b) == both and "changed in another tab" in b.text_content("#status")
        assert _shown(stale) == _answer("First question")  # never heard

        _ask(stale, "Third, from the stale tab")
        stored = {c["title"]: [{k: m[k] for k in ("role", "content")} for m in c["messages"]]
                  for c in _stored(stale)}
        assert stored == {"First question": both,
                          "First question (copy)": _answer("First question") + _answer("Third, from the stale tab")}
        status = stale.text_content("#status")
        assert "changed in another tab" in status and "“First question (copy)”" in status
        assert _chat(stale, "First question (copy)").locator(".open").get_attribute("aria-current") == "true"
        assert _shown(stale) == _answer("First question") + _answer("Third, from the stale tab")
        expect(a.locator("#chat-list .chat-item .title")).to_have_text(
            ["First question (copy)", "First question"], timeout=5000)
        assert _shown(a) == both and _shown(b) == both  # the copy is another conversation: theirs stays

        _chat(stale, "First question").locator(".open").click()
        assert _shown(stale) == both
        _ask(a, "Fourth, from A")
        _until(stale, "() => Object.keys(localStorage).some((k) => (localStorage.getItem(k) || '')"
                      ".includes('Fourth, from A'))")  # in the stale tab's storage, unheard
        assert _shown(stale) == both
        _chat(stale, "First question").locator(".open").click()  # the one shown: read again
        assert _shown(stale) == both + _answer("Fourth, from A")
        _ask(stale, "Fifth, from the stale tab")  # up to date now: saved in place
        assert [c["title"] for c in _stored(stale)] == ["First question", "First question (copy)"]
        assert [m["content"] for m in _stored(stale)[0]["messages"]][6:] == ["Fifth, from the stale tab",
                                                                         "Re: Fifth, from the stale tab"]
        expect(b.locator("#messages .msg")).to_have_count(8, timeout=5000)
        assert not errors + errors_b + errors_c
    finally:
        ctx.close()


def test_each_tab_shows_its_own_conversation_after_a_reload(browser, live):
    """The conversation shown is kept per tab: a reload shows the one that tab showed (or an empty one after New
    chat there), whatever the other tabs showed since; a new tab shows the newest."""
    ctx, a, errors = _open(browser, live)
    try:
        _route_echo(a)
        _ask(a, "Shown in A")
        b, errors_b = _tab(ctx, live)
        _route_echo(b)
        assert _shown(b) == _answer("Shown in A")
        b.click("#new-chat")
        _ask(b, "Shown in B")
        for pg, shown in ((a, "Shown in A"), (b, "Shown in B")):
            pg.reload()
            expect(pg.locator("#model")).to_have_text("tiny", timeout=5000)
            assert _shown(pg) == _answer(shown)
            assert _chat(pg, shown).locator(".open").get_attribute("aria-current") == "true"
        a.click("#new-chat")
        a.reload()
        expect(a.locator("#model")).to_have_text("tiny", timeout=5000)
        assert a.locator(".msg").count() == 0 and _titles(a) == ["Shown in B", "Shown in A"]
        c, errors_c = _tab(ctx, live)
        assert _shown(c) == _answer("Shown in B")
        b.reload()
        expect(b.locator("#model")).to_have_text("tiny", timeout=5000)
        assert _shown(b) == _answer("Shown in B")
        assert not errors + errors_b + errors_c
    finally:
        ctx.close()


# ------------------------------------------------------------------------------------------- export, import
def test_export_and_import_round_trip(browser, live, page):
    """Export downloads the conversation shown as JSON: OpenAI's messages (the system prompt first) and the settings
    its request sent. Imported into another browser, it is shown and listed, its system prompt and settings go into
    Settings, and the next request carries the same messages and settings."""
    sent = []
    page.route("**/v1/chat/completions", _fulfil([_reply("Exported **answer**.")], sent))
    page.click("#export")  # nothing yet
    assert "Nothing to export" in page.text_content("#status")
    _settings(page, system="Be brief.", top_k=5, seed=42, temperature=0.5)
    _ask(page, "Export me")
    with page.expect_download() as download:
        page.click("#export")
    assert download.value.suggested_filename == "onnxlm-chat-export-me.json"
    data = json.loads(open(download.value.path(), encoding="utf-8").read())
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Export me"},
                {"role": "assistant", "content": "Exported **answer**."}]
    assert data["messages"] == messages and data["format"] == "onnxlm.conversation" and data["model"] == "tiny"
    settings = {"temperature": 0.5, "top_p": 1, "max_tokens": MAX_TOKENS, "top_k": 5, "seed": 42}
    assert data["settings"] == settings and data["title"] == "Export me"
    assert {k: sent[0][k] for k in settings} == settings

    ctx, pg, errors = _open(browser, live)
    try:
        asked = []
        pg.route("**/v1/chat/completions", _fulfil([_reply("Continued.")], asked))
        pg.set_input_files("#import-file", files=[{"name": "chat.json", "mimeType": "application/json",
                                                   "buffer": json.dumps(data).encode()}])
        expect(pg.locator("#chat-list .chat-item")).to_have_count(1, timeout=5000)
        assert _titles(pg) == ["Export me"] and _shown(pg) == [messages[1], {"role": "assistant",
                                                                            "content": "Exported answer."}]
        assert pg.locator(".msg.assistant .content strong").text_content() == "answer"
        assert (pg.input_value("#system"), pg.input_value("#top-k"), pg.input_value("#seed"),
                pg.input_value("#temperature")) == ("Be brief.", "5", "42", "0.5")
        assert "Imported" in pg.text_content("#status")
        _ask(pg, "And now?")
        assert asked[0]["messages"] == messages + [{"role": "user", "content": "And now?"}]
        assert {k: asked[0][k] for k in settings} == settings
        assert not errors, errors
    finally:
        ctx.close()


def test_a_bad_import_file_is_refused_with_a_message_and_changes_nothing(page):
    """Files that are not JSON, not an object, whose turns do not alternate or end with a question, with an
    unknown role, or a setting out of range: the banner says what is wrong, the conversation shown, the list,
    storage and Settings stay as they were."""
    page.route("**/v1/chat/completions", _fulfil([_reply("Here.")], []))
    _ask(page, "Before")
    before = (_shown(page), _titles(page), _stored(page), page.input_value("#top-k"), page.input_value("#system"))
    turn = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    cases = [("{not json", "not JSON"),
             ("[1, 2]", "does not hold a JSON object"),
             (json.dumps({"title": "x"}), 'no "messages" list'),
             (json.dumps({"messages": turn[:1]}), "ends with a question"),
             (json.dumps({"messages": [turn[1], turn[0]]}), 'role is "assistant", expected "user"'),
             (json.dumps({"messages": [{"role": "tool", "content": "x"}, turn[1]]}), 'role is "tool"'),
             (json.dumps({"messages": [{"role": "user", "content": 5}, turn[1]]}), "content is not text"),
             (json.dumps({"messages": turn, "settings": {"top_k": -1}}), "settings.top_k is -1"),
             (json.dumps({"messages": turn, "settings": {"seed": "12x"}}), "settings.seed"),
             (json.dumps({"messages": turn, "settings": {"response_format": {"type": "text"}}}),
              "settings.response_format")]
    for i, (text, message) in enumerate(cases):
        page.set_input_files("#import-file", files=[{"name": f"bad{i}.json", "mimeType": "application/json",
                                                     "buffer": text.encode()}])
        expect(page.locator("#banner")).to_contain_text(message, timeout=5000)
        banner = page.text_content("#banner")
        assert banner.startswith("Import failed: ") and "Nothing was changed" in banner, banner
        assert before == (_shown(page), _titles(page), _stored(page), page.input_value("#top-k"),
                          page.input_value("#system")), message
        page.evaluate("document.getElementById('banner').hidden = true")


# ------------------------------------------------------------------------------------------------- markdown
def test_markdown_is_built_as_elements_and_only_safe_links_become_links(page):
    """Streamed in 7-character pieces: headings, bullet and numbered lists (one nested), a blockquote, a rule,
    *italic*, _italic_ (not inside snake_case), **bold** holding italic and a link, `code`, links for http(s) and
    mailto only (rel noopener noreferrer, a new tab); javascript:, data: and relative links stay text, HTML shows
    as text, nothing runs. The text (textContent) is the reply less its markers."""
    lines = ["# Title",
             "### Small *heading*",
             "Text with *italic*, _also_, **bold *inner* [in link](https://example.com/b)**, `a <b>code</b>` and "
             "snake_case_words.",
             "- one [site](https://example.com/path?q=1)",
             "- two",
             "  - nested `x`",
             "3. three",
             "4. four",
             "> quoted **loud**",
             "---",
             "[js](javascript:window.__pwned=3) [js2](javascript:alert(1)) [data](data:text/html,hi) [rel](/local) "
             "[mail](mailto:a@b.example)",
             '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"> <a href="https://evil">x</a>']
    reply = "\n".join(lines)
    page.route("**/v1/chat/completions", _fulfil(
        [_sse([_delta(reply[i:i + 7]) for i in range(0, len(reply), 7)] + [_delta(finish="stop")])], []))
    content = _ask(page, "Markdown?").locator(".content")
    assert content.locator("h1").text_content() == "Title\n"  # the line break after a block: inside it, at its end
    assert content.locator("h3 > em").text_content() == "heading"
    assert content.locator("> em").all_text_contents() == ["italic", "also"]
    assert content.locator("> strong").text_content() == "bold inner in link"
    assert content.locator("> strong > em").text_content() == "inner"
    assert content.locator("> code").text_content() == "a <b>code</b>"
    assert "snake_case_words" in content.text_content()
    assert content.locator("> ul > li").count() == 2 and content.locator("ul ul > li").text_content() == "nested x\n"
    assert content.locator("ul ul code").text_content() == "x"
    assert content.locator("> ol").get_attribute("start") == "3" and content.locator("ol > li").count() == 2
    assert content.locator("blockquote").text_content() == "quoted loud\n"
    assert content.locator("blockquote strong").text_content() == "loud" and content.locator("hr").count() == 1
    links = content.locator("a")
    assert links.evaluate_all("(as) => as.map((a) => [a.textContent, a.getAttribute('href'), a.rel, a.target])") == [
        ["in link", "https://example.com/b", "noopener noreferrer", "_blank"],
        ["site", "https://example.com/path?q=1", "noopener noreferrer", "_blank"],
        ["mail", "mailto:a@b.example", "noopener noreferrer", "_blank"]]
    text = content.text_content()
    for kept in ("[js](javascript:window.__pwned=3)", "[js2](javascript:alert(1))", "[data](data:text/html,hi)",
                 "[rel](/local)", lines[-1]):
        assert kept in text, kept
    assert page.locator("#messages :is(script, img, b)").count() == 0
    page.wait_for_timeout(100)
    assert page.evaluate("window.__pwned") is None
    shown = "\n".join(["Title", "Small heading", "Text with italic, also, bold inner in link, a <b>code</b> and "
                       "snake_case_words.", "one site", "two", "nested x", "three", "four", "quoted loud"])
    assert text.startswith(shown) and "four\nquoted loud\n" in text


def _streamed(pg, reply: str, question: str = "Markdown?"):
    """``reply`` answered in 7-character pieces (each repaint renders the text so far) -> the answer's .content."""
    pg.route("**/v1/chat/completions", _fulfil(
        [_sse([_delta(reply[i:i + 7]) for i in range(0, len(reply), 7)] + [_delta(finish="stop")])], []))
    return _ask(pg, question).locator(".content")


def test_markdown_pipe_tables_with_alignment_inline_markdown_and_github_rows(page):
    """A GFM table right after a line of text: header cells as <th>, the delimiter row's colons as each column's
    alignment (class align-*, drawn as text-align), cells taking inline markdown (`code` holding an escaped pipe,
    **bold**, a link), a short row padded with empty cells, extra cells dropped; the text after a blank line is text
    again. Rows whose delimiter row has another number of cells, or no delimiter row, stay text. A wide table scrolls
    sideways in its own box: the bubble stays in the conversation, the page does not scroll."""
    wide = " | ".join(f"column_heading_number_{i}" for i in range(12))
    lines = ["Intro line",
             "| Name | Count | Note |",
             "|:-----|:-----:|-----:|",
             "| `a\\|b` | **2** | [doc](https://example.com/doc) |",
             "| short |",
             "| x | y | z | dropped |",
             "",
             "After the table.",
             "",
             "| not | a | table |",
             "|---|---|",
             "| 1 | 2 | 3 |",
             "",
             "a | b",
             "",
             "| " + wide + " |",
             "|" + "---|" * 12]
    content = _streamed(page, "\n".join(lines))
    assert content.locator("table").count() == 2 and content.locator("> div.table > table").count() == 2
    table = content.locator("table").first
    assert table.locator("thead th").all_text_contents() == ["Name", "Count", "Note"]
    aligns = ["align-left", "align-center", "align-right"]
    assert table.locator("th").evaluate_all("(cs) => cs.map((c) => c.className)") == aligns
    rows = table.locator("tbody tr").evaluate_all(
        "(rs) => rs.map((r) => [...r.cells].map((c) => [c.textContent, c.className, getComputedStyle(c).textAlign]))")
    assert rows == [[["a|b", aligns[0], "left"], ["2", aligns[1], "center"], ["doc", aligns[2], "right"]],
                    [["short", aligns[0], "left"], ["", aligns[1], "center"], ["", aligns[2], "right"]],
                    [["x", aligns[0], "left"], ["y", aligns[1], "center"], ["z", aligns[2], "right"]]]
    assert table.locator("td code").text_content() == "a|b" and table.locator("td strong").text_content() == "2"
    assert table.locator("td a").get_attribute("href") == "https://example.com/doc"
    text = content.text_content()
    assert text.startswith("Intro line\n") and "dropped" not in text and "|:-----|" not in text
    for kept in ("After the table.", "| not | a | table |\n|---|---|\n| 1 | 2 | 3 |", "\na | b\n"):
        assert kept in text, kept
    assert content.locator("table").nth(1).locator("th").count() == 12

    for width in (1000, 375):
        page.set_viewport_size({"width": width, "height": 700})
        _until(page, f"window.innerWidth === {width}")
        area = _box(page, "#messages")
        b = _box(page, ".msg.assistant")
        assert area["x"] <= b["x"] and b["x"] + b["width"] <= area["x"] + area["width"] + 0.5, width
        sizes = page.evaluate("""[document.getElementById('messages'), document.documentElement,
            ...document.querySelectorAll('.msg .table')].map((e) => [e.scrollWidth, e.clientWidth])""")
        (list_w, list_c), (doc_w, doc_c), small, big = sizes
        assert list_w <= list_c and doc_w <= doc_c, (width, sizes)  # nothing scrolls sideways but the wide table
        assert small[0] <= small[1] and big[0] > big[1], (width, sizes)


def test_markdown_bare_urls_become_links_without_trailing_punctuation(page):
    """Bare http(s):// URLs in text, a list and bold become links (a new tab, noopener) as GitHub ends them: a
    sentence's . , : ; ! ? after them and a ) without its ( are not part of the link. Not in a code span or a code
    block, not inside a link's text, not glued to a word or a scheme before it (javascript:https://...), and no
    other scheme: javascript: (bare or as a link) never becomes a link, nothing runs."""
    lines = ["See https://example.com/docs. Then (https://example.org/a_(b)), http://127.0.0.1:8000/v1? "
             "and https://example.net/x;",
             "- item **https://example.com/bold**!",
             "Code `https://example.com/in-code` and [named https://example.com/inner](https://example.com/outer).",
             "```",
             "curl https://example.com/in-block",
             "```",
             "javascript:alert(1) javascript:https://example.com/glued xhttps://example.com/word "
             "javascript://example.com/%0awindow.__pwned=1 [js](javascript:window.__pwned=2)"]
    content = _streamed(page, "\n".join(lines))
    links = content.locator("a").evaluate_all(
        "(as) => as.map((a) => [a.textContent, a.getAttribute('href'), a.rel, a.target])")
    tab = ["noopener noreferrer", "_blank"]
    assert links == [["https://example.com/docs", "https://example.com/docs", *tab],
                     ["https://example.org/a_(b)", "https://example.org/a_(b)", *tab],
                     ["http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1", *tab],
                     ["https://example.net/x", "https://example.net/x", *tab],
                     ["https://example.com/bold", "https://example.com/bold", *tab],
                     ["named https://example.com/inner", "https://example.com/outer", *tab]]
    assert content.locator("li > strong > a").count() == 1 and content.locator("a a").count() == 0
    assert content.locator("> code").text_content() == "https://example.com/in-code"
    assert content.locator("pre code").text_content() == "curl https://example.com/in-block"
    text = content.text_content()
    for kept in ("https://example.com/docs. Then (https://example.org/a_(b)), http://127.0.0.1:8000/v1? and "
                 "https://example.net/x;\n", "https://example.com/bold!", lines[-1]):
        assert kept in text, kept
    page.wait_for_timeout(100)
    assert page.evaluate("window.__pwned") is None


# each chat request answered in the page itself, its SSE events a few milliseconds apart (several frames repaint the
# answer while it streams): window.__pieces, set by the test, are the answer's pieces; window.__mid is the answer's
# first heading as shown once half of them came
SLOW_SHIM = """() => {
  const real = window.fetch.bind(window);
  window.fetch = (url, opts) => {
    if (!String(url).includes('chat/completions')) return real(url, opts);
    const pieces = window.__pieces;
    const event = (delta, finish) => new TextEncoder().encode('data: ' + JSON.stringify({
      object: 'chat.completion.chunk', choices: [{ index: 0, delta, finish_reason: finish }] }) + '\\r\\n\\r\\n');
    let k = 0;
    const body = new ReadableStream({ pull(controller) {
      return new Promise((resolve) => setTimeout(() => {
        if (k === Math.floor(pieces.length / 2)) window.__mid = document.querySelector('.msg.assistant .content h1');
        if (k < pieces.length) controller.enqueue(event({ content: pieces[k] }, null));
        else if (k === pieces.length) controller.enqueue(event({}, 'stop'));
        else { controller.enqueue(new TextEncoder().encode('data: [DONE]\\r\\n\\r\\n')); controller.close(); }
        k += 1;
        resolve();
      }, 3));
    } });
    return Promise.resolve(new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } }));
  };
}"""


def test_a_streamed_answer_renders_its_finished_blocks_once_and_ends_as_the_whole_text(page):
    """A long answer (code fences, a loose numbered list holding a fence and a nested list, tables, indented code, a
    quote, a setext heading, task items, a reference link) streamed in 5-character pieces a few milliseconds apart:
    its first heading, rendered while the answer streams, is the same node at the end (finished blocks are rendered
    once and kept, not the whole answer again at each frame), and the answer's final DOM is the one rendering the
    whole text at once gives (innerHTML equal, copy buttons included)."""
    part = "\n".join([
        "Intro with **bold**, `code`, a [reference][docs] and snake_case.",
        "",
        "1. First step:",
        "",
        "   ```bash",
        "   pip install foo",
        "",
        "   foo --help",
        "   ```",
        "",
        "2. Second step",
        "   - nested *item*",
        "   - another",
        "",
        "| Name | Value |",
        "|:-----|------:|",
        "| a | 1 |",
        "| `b` | **2** |",
        "",
        "    indented code",
        "",
        "> a quote",
        "> on two lines",
        "",
        "Setext heading",
        "--------------",
        "",
        "```python",
        "def f():",
        "",
        "    return 1",
        "```",
        "",
        "- [x] done",
        "- [ ] todo",
        ""])
    reply = "# Streaming check\n\n[docs]: https://docs.example/ \"Docs\"\n\n" + "\n".join([part] * 4) + "Last line."
    pieces = [reply[i:i + 5] for i in range(0, len(reply), 5)]
    page.evaluate("(pieces) => { window.__pieces = pieces; window.__mid = null; }", pieces)
    page.evaluate(SLOW_SHIM)
    answer = _ask(page, "Stream a long answer")
    result = page.evaluate("""(reply) => {
        const content = document.querySelector('.msg.assistant .content');
        const whole = document.createElement('div');
        whole.className = 'content';
        renderText(whole, reply);
        return { same: content.innerHTML === whole.innerHTML, mid: window.__mid !== null,
                 kept: window.__mid === content.querySelector('h1'), shown: content.innerHTML.length };
    }""", reply)
    assert result == {"same": True, "mid": True, "kept": True, "shown": result["shown"]}, result
    content = answer.locator(".content")
    assert content.locator("h1").count() == 1 and content.locator("div.code").count() == 12
    assert content.locator("div.code > button.copy").count() == 12 and content.locator("table").count() == 4
    assert content.locator("a").evaluate_all("(as) => as.map((a) => a.href)") == ["https://docs.example/"] * 4
    assert "https://docs.example" not in content.text_content()


def test_rendering_a_long_markdown_answer_stays_fast(page):
    """A 17 KB answer dense with markdown (about 4000 tokens), rendered whole as each repaint of a stream does (its
    headings, lists, quotes, code blocks, links built): well under a frame's worth of script per render, and long
    lines of stray markers render in linear time."""
    timings = page.evaluate("""() => {
        const para = "Some *italic* text, **bold**, `code`, a [link](https://example.com) and snake_case words. ";
        const parts = [];
        for (let i = 0; i < 40; i++) parts.push("## Part " + i, para + para, "- item " + para, "  - nested", "1. one",
                                                "> quoted " + para, "```js", "let x = " + i + ";", "```", "");
        const text = parts.join("\\n");
        const el = document.createElement("div");
        document.getElementById("messages").append(el);
        const time = (t, n) => { const t0 = performance.now(); for (let i = 0; i < n; i++) renderText(el, t);
                                 return (performance.now() - t0) / n; };
        time(text, 3);  // warm up
        const built = ["h2", "ul ul li", "blockquote", "pre", "a", "em", "strong"]
            .map((s) => el.querySelectorAll(s).length);
        const best = (t) => Math.min(time(t, 1), time(t, 1), time(t, 1));  // the least disturbed of 3 runs
        const stray = ["**a ", "`a ``", "_a ", "[a](", "- a\\n  "];
        return { length: text.length, built, full: time(text, 20),
                 stray: stray.map((s) => best(s.repeat(5000))), stray4: stray.map((s) => best(s.repeat(20000))) };
    }""")
    assert timings["length"] > 16000 and timings["built"] == [40, 40, 40, 40, 160, 160, 160], timings
    # about 5 ms a render here; stray markers: 4x the text costs about 4x the time (linear), not 16x (quadratic),
    # with a margin for a busy machine's noise rather than a bound in milliseconds
    assert timings["full"] < 100, timings
    assert sum(timings["stray4"]) < 8 * sum(timings["stray"]) + 40, timings


# ------------------------------------------------------------------------------------- more sampling settings
EXTRA = {"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1, "presence_penalty": -0.5, "frequency_penalty": 1.5,
         "seed": 2**53 + 1}


def test_more_sampling_settings_are_sent_only_away_from_their_defaults_kept_and_reset(page):
    """top_k, min_p, repetition_penalty, presence/frequency_penalty and seed: absent from the request at their
    defaults (0, 0, 1, 0, 0, empty), sent when set (the seed with all its digits, past 2**53), kept after a reload;
    Reset settings brings every field back to its default (max tokens within the server's cap), the API key kept."""
    sent = []
    page.route("**/v1/chat/completions", _fulfil([_reply("1."), _reply("2."), _reply("3."), _reply("4.")], sent))
    _ask(page, "Defaults")
    assert not set(EXTRA) & set(sent[0]), sent[0]
    _settings(page, **EXTRA)
    _ask(page, "Set")
    assert {k: sent[1].get(k) for k in EXTRA} == EXTRA
    page.reload()
    expect(page.locator("#model")).to_have_text("tiny", timeout=5000)
    assert [page.input_value("#" + k.replace("_", "-")) for k in EXTRA] == [str(v) for v in EXTRA.values()]
    _ask(page, "Kept")
    assert {k: sent[2].get(k) for k in EXTRA} == EXTRA
    _settings(page, system="Old system", temperature=0.2)
    page.click("#reset-settings")
    assert [page.input_value("#" + k.replace("_", "-")) for k in EXTRA] == ["0", "0", "1", "0", "0", ""]
    assert (page.input_value("#system"), page.input_value("#temperature"), page.input_value("#max-tokens"),
            page.input_value("#api-key")) == ("", "0.7", str(MAX_TOKENS), KEY)
    _ask(page, "Reset")
    assert not set(EXTRA) & set(sent[3]) and sent[3]["temperature"] == 0.7 and sent[3]["max_tokens"] == MAX_TOKENS
    assert sent[3]["messages"][0] == {"role": "user", "content": "Defaults"}  # no system prompt any more


def test_a_setting_out_of_its_range_is_marked_and_nothing_is_sent(page):
    """A value out of the server's range (protocol.py's) is marked next to its field (aria-invalid, the rule
    under it) as it is typed; sending then sends nothing and the banner says which field and why; set back, it is
    clear and the question goes."""
    sent = []
    page.route("**/v1/chat/completions", _fulfil([_reply("Ok.")], sent))
    cases = [("top_k", "-1", "an integer of at least 0"), ("top_k", "1.5", "an integer of at least 0"),
             ("min_p", "2", "a number from 0 to 1"), ("repetition_penalty", "0", "a number above 0"),
             ("presence_penalty", "3", "a number from -2 to 2"), ("frequency_penalty", "-2.5", "a number from -2 to 2"),
             ("seed", "-3", "an integer from 0 to 2^63-1"), ("seed", str(2**63), "an integer from 0 to 2^63-1"),
             ("seed", "abc", "an integer from 0 to 2^63-1"), ("temperature", "2.5", "a number from 0 to 2")]
    for key, value, rule in cases:
        field = "#" + key.replace("_", "-")
        default = page.input_value(field)
        page.fill(field, value)
        error = page.locator(field + "-error")
        expect(error).to_be_visible()
        assert rule in error.text_content() and page.get_attribute(field, "aria-invalid") == "true", key
        page.fill("#prompt", "Question")
        page.press("#prompt", "Enter")
        expect(page.locator("#banner")).to_contain_text(rule)
        assert page.text_content("#banner").startswith("Not sent: ") and _active(page) == field[1:]
        assert not sent and page.locator(".msg").count() == 0 and page.input_value("#prompt") == "Question"
        page.fill(field, default)
        assert page.is_hidden(field + "-error") and page.get_attribute(field, "aria-invalid") is None
    _ask(page, "Question")
    assert len(sent) == 1 and page.is_hidden("#banner")


def test_a_model_lookup_answering_late_leaves_a_not_sent_message(page):
    """The model lookup (GET /v1/models, asked again on an API key change and while the model loads) clears only
    the banner it set itself: one answering after a "Not sent" message leaves that message (it once cleared it, a
    race the CI met)."""
    page.fill("#top-k", "-1")
    page.fill("#prompt", "Question")
    page.press("#prompt", "Enter")
    expect(page.locator("#banner")).to_contain_text("Not sent: ")
    page.evaluate("document.getElementById('model').textContent = 'asking'")
    with page.expect_response("**/v1/models") as answer:
        page.dispatch_event("#api-key", "change")
    assert answer.value.ok
    # the answer's handler has run: it shows the name, then (the same task) decides about the banner
    expect(page.locator("#model")).to_have_text("tiny", timeout=5000)  # (wait_for_function: refused by the CSP)
    assert page.is_visible("#banner") and page.text_content("#banner").startswith("Not sent: ")
    page.fill("#api-key", "wrong")  # the lookup's own message still goes once it answers again
    with page.expect_response("**/v1/models"):
        page.dispatch_event("#api-key", "change")
    expect(page.locator("#banner")).to_contain_text("HTTP 401")
    page.fill("#api-key", KEY)
    with page.expect_response("**/v1/models"):
        page.dispatch_event("#api-key", "change")
    expect(page.locator("#banner")).to_be_hidden()
    page.fill("#top-k", "0")


# ---------------------------------------------------------------------------------------------- narrow screen
def test_a_narrow_screen_opens_the_conversation_list_as_a_panel_above_the_conversation(browser, live):
    """At 375 px: the list starts closed; opened it closes Settings (one panel at a time), sits above the
    conversation without covering the message box or Send, the header stays one line; choosing a conversation
    (keyboard) shows it and closes the list, as New chat does."""
    ctx, pg, errors = _open(browser, live, width=375)
    try:
        pg.route("**/v1/chat/completions", _fulfil([_reply("A."), _reply("B.")], []))
        assert pg.is_hidden("#chats") and pg.get_attribute("#toggle-chats", "aria-expanded") == "false"
        _ask(pg, "Phone question")
        pg.click("#toggle-settings")
        pg.click("#toggle-chats")
        assert pg.is_visible("#chats") and pg.is_hidden("#settings")
        assert pg.get_attribute("#toggle-settings", "aria-expanded") == "false"
        header = _box(pg, "header")
        assert header["height"] < 50 and pg.evaluate("document.querySelector('header').scrollWidth <= 375")
        assert _box(pg, "#chats")["y"] + _box(pg, "#chats")["height"] <= _box(pg, "#prompt")["y"]
        assert pg.evaluate("""['prompt', 'send'].every((id) => {
            const r = document.getElementById(id).getBoundingClientRect();
            return document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2) === document.getElementById(id)
                && r.bottom <= innerHeight; })""")
        pg.click("#new-chat")
        assert pg.is_hidden("#chats") and pg.locator(".msg").count() == 0
        _ask(pg, "Second")
        pg.click("#toggle-chats")
        _chat(pg, "Phone question").locator(".open").focus()
        pg.keyboard.press("Enter")
        assert pg.is_hidden("#chats") and _shown(pg)[0] == {"role": "user", "content": "Phone question"}
        assert _active(pg) == "prompt" and not errors, errors
    finally:
        ctx.close()


def test_a_save_waits_until_its_storage_shows_the_newest_marked_write(browser, live):
    """Each write of a conversation is also named by a Web Lock of its own (conversations.js convMark: a number taken
    under the conversation's lock, and its text's digest), and a tab that takes the conversation's lock waits while
    its own storage still shows an older marked write than the newest (convFresh): a write that has not reached this
    tab's process yet is never overwritten (the lock's 250 ms hold alone lost a turn under load once). Here another
    tab marks a version it has not stored yet: the save waits and writes nothing; stored, the save finds the
    conversation changed and keeps this tab's turns as a "(copy)", the other version staying. A stored text that no
    mark names (its tab closed since, taking its mark along) is not waited on: the next save is prompt."""
    ctx, a, errors = _open(browser, live)
    try:
        _route_echo(a)
        _ask(a, "First")
        conv = _stored(a)[0]
        key = "onnxlm.conversation." + conv["id"]
        other = json.dumps({**conv, "title": "Other tab's", "updated": conv["updated"] + 1})
        b, errors_b = _tab(ctx, live)
        b.evaluate("""([key, raw]) => { window.__release = null;
            navigator.locks.request(key + '#999999999999#' + convDigest(raw), { mode: 'shared' },
                                    () => new Promise((r) => { window.__release = r; })); }""", [key, other])
        _until(b, "() => window.__release !== null")
        a.fill("#prompt", "Second")
        a.press("#prompt", "Enter")
        expect(a.locator(".msg.assistant").last).to_have_attribute("data-state", "done")
        a.wait_for_timeout(400)
        assert [m["content"] for m in _stored(a)[0]["messages"]] == ["First", "Re: First"]  # waiting: not written
        b.evaluate("([key, raw]) => localStorage.setItem(key, raw)", [key, other])
        _until(a, "() => [...document.querySelectorAll('#chat-list .title')].some((t) => t.textContent === "
                  "'First (copy)')")
        kept = {c["title"]: [m["content"] for m in c["messages"]] for c in _stored(a)}
        assert kept["Other tab's"] == ["First", "Re: First"]
        assert kept["First (copy)"] == ["First", "Re: First", "Second", "Re: Second"]
        b.evaluate("window.__release()")
        assert not errors + errors_b
        # a text no mark names: written by a tab that then closed (its marks gone with it)
        _chat(a, "Other tab's").locator(".open").evaluate("(e) => e.click()")
        third = json.dumps({**json.loads(other), "title": "Closed tab's", "updated": conv["updated"] + 2})
        b.evaluate("([key, raw]) => localStorage.setItem(key, raw)", [key, third])
        b.close()
        _until(a, "() => [...document.querySelectorAll('#chat-list .title')].some((t) => t.textContent === "
                  "\"Closed tab's\")")
        a.fill("#prompt", "Third")
        began = time.monotonic()
        a.press("#prompt", "Enter")
        _until(a, "() => Object.keys(localStorage).some((k) => k.startsWith('onnxlm.conversation.') && "
                  "localStorage.getItem(k).includes('Re: Third'))", timeout=10)
        assert time.monotonic() - began < 3.5  # the old rule waited 5 s for this tab's own older mark
        assert any(t.endswith("(copy)") or t == "Closed tab's" for t in [c["title"] for c in _stored(a)
                                                                          if "Re: Third" in json.dumps(c)])
        assert not errors
    finally:
        ctx.close()
