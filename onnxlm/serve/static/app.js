// The chat page of `onnxlm serve`: plain JS, no build step, no outside resources.
// It streams /v1/chat/completions (server-sent events read with fetch + ReadableStream) and shows model text only as
// text: nodes are built with createElement/textContent, never innerHTML, so a reply holding markup shows the markup.
// A model without a chat template (/v1/models' capabilities.chat is false) cannot chat: the page says so at load
// and streams plain completions from /v1/completions instead (the text typed is continued, one turn at a time).
// What the conversation shows is what the next request sends: a turn that failed (an error, a stream cut short) is
// marked failed, left out, and goes when the next question is sent (its text is back in the message box); a turn
// stopped before any answer text is taken off the screen, its text back in the box; a stopped turn with some answer
// stays, that partial answer included (as llama.cpp keeps it).
"use strict";

const $ = (id) => document.getElementById(id);

// what the page holds: the served model's name, whether it can chat (null: not known yet), the conversation sent
// with each request ({role, content} pairs of finished turns), and the AbortController of the request in flight
// (null when idle), the server's cap on max_tokens (GET /props; null: not known)
const state = { model: null, chat: null, history: [], controller: null, cap: null };

// inputs kept in localStorage between visits
const SAVED = ["system", "temperature", "top-p", "max-tokens", "json-mode", "schema-name", "schema", "api-key"];

function loadSettings() {
  for (const id of SAVED) {
    let v = null;
    try { v = localStorage.getItem("onnxlm." + id); } catch (e) { return; }  // storage blocked: keep the defaults
    if (v === null) continue;
    const el = $(id);
    if (el.type === "checkbox") el.checked = v === "1"; else el.value = v;
  }
}

function saveSettings() {
  for (const id of SAVED) {
    const el = $(id);
    try { localStorage.setItem("onnxlm." + id, el.type === "checkbox" ? (el.checked ? "1" : "0") : el.value); }
    catch (e) { return; }
  }
}

// the settings panel: open or closed as last left (localStorage), else open on a wide screen, closed on a narrow one
const NARROW = "(max-width: 700px)";
function showSettings(open, save) {
  $("settings").hidden = !open;
  $("toggle-settings").setAttribute("aria-expanded", String(open));
  if (save) {
    try { localStorage.setItem("onnxlm.settings-open", open ? "1" : "0"); } catch (e) { /* storage blocked */ }
  }
}

function loadSettingsOpen() {
  let v = null;
  try { v = localStorage.getItem("onnxlm.settings-open"); } catch (e) { /* storage blocked */ }
  showSettings(v === null ? !window.matchMedia(NARROW).matches : v === "1", false);
}

// the line under the conversation (role=status: what a screen reader announces, once, instead of every token)
function say(message, kind) {
  const el = $("status");
  el.textContent = message || "";
  el.dataset.kind = kind || "";
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

// a failed response -> "HTTP 400: <the OpenAI error body's message>" (or the raw text when it is not that body)
async function apiError(response) {
  const text = await response.text();
  let message = text;
  try {
    const body = JSON.parse(text);
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (e) { /* not JSON: the text as it came */ }
  return "HTTP " + response.status + ": " + (message || response.statusText);
}

function banner(message) {
  const el = $("banner");
  el.textContent = message || "";
  el.hidden = !message;
}

const PROMPT_HINT = { chat: "Ask something (Enter sends, Shift+Enter: a new line)",
                      plain: "Text for the model to continue (Enter sends, Shift+Enter: a new line)" };

// chat (true, or null: not known) or plain completions (false: the model has no chat template), with the notice
function setChat(chat) {
  state.chat = chat;
  const plain = chat === false;
  const notice = $("notice");
  notice.textContent = plain
    ? "This model has no chat template, so it cannot chat (/v1/chat/completions answers 400). The page sends plain " +
      "completions instead (/v1/completions): the model continues the text you send, one turn at a time, without " +
      "the system prompt or earlier turns."
    : "";
  notice.hidden = !plain;
  document.body.dataset.mode = plain ? "completions" : "chat";
  $("prompt").placeholder = plain ? PROMPT_HINT.plain : PROMPT_HINT.chat;
  $("system").disabled = plain;
}

// GET /v1/models -> the name shown in the header and sent as "model", and whether the model can chat (its card's
// capabilities, given once the model is loaded: asked again meanwhile); only the latest call's answer counts (the
// key may change while an earlier call is still out)
let modelCalls = 0;
let capabilityTries = 0;
async function loadModel() {
  const call = ++modelCalls;
  try {
    const r = await fetch("v1/models", { headers: headers() });
    const body = r.ok ? await r.json() : await apiError(r);
    if (call !== modelCalls) return;
    if (!r.ok) {
      state.model = null;
      $("model").textContent = "(no model)";
      banner(body + (r.status === 401 ? " (enter the API key in Settings)" : ""));
      return;
    }
    const card = body.data && body.data.length ? body.data[0] : null;
    state.model = card ? card.id : null;
    $("model").textContent = state.model || "(no model)";
    banner("");
    const caps = card && card.capabilities;
    if (caps) { setChat(caps.chat !== false); loadCap(); }
    else if (card && ++capabilityTries <= 60) setTimeout(loadModel, 1000);  // still loading: ask again
  } catch (e) {
    if (call === modelCalls) banner("cannot reach the server: " + e.message);
  }
}

// GET /props -> the server's cap on max_tokens (its --max-tokens): llama.cpp's default_generation_settings.params
// .n_predict, what a request that sets none gets, which onnxlm reports as the cap. The field gets it as its max,
// and a value past it (the page's default 256, or one kept from another server) comes down to it, unless the user
// typed it: a request past the cap would answer 400.
let maxTokensTyped = false;
async function loadCap() {
  try {
    const r = await fetch("props", { headers: headers() });
    if (!r.ok) return;
    const body = await r.json();
    const params = body && body.default_generation_settings && body.default_generation_settings.params;
    const cap = params ? Number(params.n_predict) : NaN;
    if (!Number.isInteger(cap) || cap < 1) return;
    state.cap = cap;
    const field = $("max-tokens");
    field.max = String(cap);
    field.placeholder = "server default (at most " + cap + ")";
    const note = $("max-tokens-note");
    note.textContent = "This server allows at most " + cap + " (--max-tokens).";
    note.hidden = false;
    const v = numberOf("max-tokens");
    if (!maxTokensTyped && v !== undefined && v > cap) field.value = String(cap);
  } catch (e) { /* an older server without /props: the field as it is */ }
}

// an element holding ``text`` as its text
function textElement(tag, text) {
  const el = document.createElement(tag);
  el.textContent = text;
  return el;
}

// text outside code fences -> nodes: **bold** as <strong>, `code` as <code>, the rest as text nodes
function inlineNodes(text) {
  return text.split(/(\*\*[^*\n]+\*\*|`[^`\n]+`)/).filter(Boolean).map((piece) => {
    if (piece.length > 4 && piece.startsWith("**") && piece.endsWith("**")) {
      return textElement("strong", piece.slice(2, -2));
    }
    if (piece.length > 2 && piece.startsWith("`") && piece.endsWith("`")) return textElement("code", piece.slice(1, -1));
    return document.createTextNode(piece);
  });
}

// text -> the element's children, a small markdown subset: ``` fenced blocks as <pre><code> (the fence's first
// line, the language tag, and the newline before the closing fence are dropped), **bold** and `code` elsewhere.
// Every piece goes in as text (textContent, text nodes), never as HTML.
function renderText(el, text) {
  const nodes = [];
  text.split("```").forEach((part, i) => {
    if (i % 2 === 1) {  // inside a fence
      const nl = part.indexOf("\n");
      const pre = document.createElement("pre");
      const code = textElement("code", (nl >= 0 ? part.slice(nl + 1) : part).replace(/\n$/, ""));
      pre.append(code);
      const box = document.createElement("div");
      box.className = "code";
      const copy = document.createElement("button");  // its label "Copy" is CSS: the text stays the code's
      copy.type = "button";
      copy.className = "copy";
      copy.setAttribute("aria-label", "Copy code");
      copy.title = "Copy code";
      copy.addEventListener("click", () => copyText(code.textContent, copy));
      box.append(copy, pre);
      nodes.push(box);
    } else {
      nodes.push(...inlineNodes(part));
    }
  });
  el.replaceChildren(...nodes);
}

// text -> the clipboard (navigator.clipboard; where the page is not a secure context, e.g. plain http to another
// host, the old execCommand("copy") on a hidden textarea) -> whether it worked, shown on the button and the status
async function copyText(text, button) {
  let ok = false;
  try {
    if (navigator.clipboard && window.isSecureContext) { await navigator.clipboard.writeText(text); ok = true; }
  } catch (e) { /* refused: try the fallback */ }
  if (!ok) {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    area.remove();
    button.focus();
  }
  button.dataset.copied = ok ? "yes" : "no";
  setTimeout(() => { delete button.dataset.copied; }, 1500);
  say(ok ? "Copied." : "Could not copy: select the text and copy it by hand.");
}

function nearBottom() {
  const m = $("messages");
  return m.scrollHeight - m.scrollTop - m.clientHeight < 60;
}

function scrollDown() {
  const m = $("messages");
  m.scrollTop = m.scrollHeight;
}

// a message bubble: .msg.<role> > .content (+ .meta for answers) -> the bubble
function addMessage(role, text) {
  const follow = nearBottom();
  const div = document.createElement("div");
  div.className = "msg " + role;
  const content = document.createElement("div");
  content.className = "content";
  renderText(content, text);
  div.append(content);
  if (role === "assistant") {
    const meta = document.createElement("div");
    meta.className = "meta";
    div.append(meta);
  }
  $("messages").append(div);
  if (follow) scrollDown();
  return div;
}

// the response's server-sent events -> their data payloads, one string per event (sse-starlette ends lines with
// \r\n; pings are comments without data)
async function* sseData(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf = (buf + decoder.decode(value, { stream: true })).replace(/\r\n/g, "\n");
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {  // one event per blank-line-terminated block
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data) yield data;
    }
  }
}

// a number input -> its number, or undefined when empty (the server's default then)
function numberOf(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
}

// the JSON-schema mode -> OpenAI's response_format (throws with a message the user sees when the schema is not JSON)
function responseFormat() {
  if (!$("json-mode").checked) return undefined;
  let schema;
  try {
    schema = JSON.parse($("schema").value);
  } catch (e) {
    throw new Error("the schema is not valid JSON: " + e.message);
  }
  return { type: "json_schema", json_schema: { name: $("schema-name").value.trim() || "answer", schema } };
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

// the answer's line under it: tokens, tokens/s (decode rate after the first token), time to the first token, why
// it ended
function showStats(bubble, s) {
  const parts = [];
  const n = s.usage ? s.usage.completion_tokens : s.chunks;
  parts.push((s.usage ? "" : "~") + n + " tokens");
  if (s.tFirst !== null && s.tLast > s.tFirst && n > 1) {
    parts.push(((n - 1) / ((s.tLast - s.tFirst) / 1000)).toFixed(1) + " tok/s");
  }
  if (s.tFirst !== null) parts.push("first token " + ((s.tFirst - s.t0) / 1000).toFixed(2) + " s");
  parts.push("finish: " + s.reason);
  bubble.querySelector(".meta").textContent = parts.join(" · ");
  bubble.dataset.finish = s.reason;
}

// the message box gets the focus back when nothing else the user chose holds it (Send and Stop are disabled as the
// answer starts and ends, which leaves the focus on the page's body)
function focusPrompt() {
  const a = document.activeElement;
  if (!a || a === document.body || a === $("send") || a === $("stop") || !a.isConnected) $("prompt").focus();
}

// a button under an answer (.actions)
function actionButton(bubble, label, title, onClick) {
  let bar = bubble.querySelector(".actions");
  if (!bar) {
    bar = document.createElement("div");
    bar.className = "actions";
    bubble.append(bar);
  }
  const b = textElement("button", label);
  b.type = "button";
  b.title = title;
  b.addEventListener("click", onClick);
  bar.append(b);
  return b;
}

// the failed turns on screen (an error and its question): not in the conversation; they go when the next one starts
function dropFailed() {
  for (const el of document.querySelectorAll("#messages .failed")) el.remove();
}

// Enter / Send -> the message box's text as the next question; while an answer streams: a word why nothing is sent
async function send() {
  if (state.controller) {
    say("An answer is still coming: wait for it, or stop it first (Stop or Esc).", "busy");
    return;
  }
  const text = $("prompt").value;
  if (!text.trim()) return;
  await ask(text, null);
}

// one question -> its streamed answer. ``before`` (Retry, Regenerate) runs once the settings are checked, to take
// the turn it replaces off the screen and out of the conversation; without it the text comes from the message box.
async function ask(text, before) {
  if (state.controller) return;
  let format;
  try { format = responseFormat(); } catch (e) { banner(e.message); return; }
  banner("");
  saveSettings();
  dropFailed();
  if (before) before();
  for (const b of document.querySelectorAll("#messages .regenerate")) b.remove();  // only the newest answer's

  // the request: system prompt, the finished turns, this question (a model that cannot chat: the text alone, as a
  // plain completion); empty settings are left to the server
  const plain = state.chat === false;
  const body = { stream: true, stream_options: { include_usage: true },
                 temperature: numberOf("temperature"), top_p: numberOf("top-p"), max_tokens: numberOf("max-tokens") };
  if (plain) {
    body.prompt = text;
  } else {
    const messages = [];
    const system = $("system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...state.history, { role: "user", content: text });
    body.messages = messages;
  }
  if (state.model) body.model = state.model;
  if (format) body.response_format = format;

  if (!before || $("prompt").value === text) $("prompt").value = "";
  const question = addMessage("user", text);
  const bubble = addMessage("assistant", "");
  const content = bubble.querySelector(".content");
  bubble.dataset.state = "streaming";
  bubble.setAttribute("aria-busy", "true");  // read once it is complete, not at every token
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  say("Answering… (Stop or Esc ends it)");
  $("prompt").focus();  // the next question can be typed meanwhile

  // the answer so far, its reasoning (a thinking model's, shown folded above it), and what the stats line needs
  // (times in ms from performance.now())
  const s = { t0: performance.now(), tFirst: null, tLast: null, chunks: 0, usage: null, reason: null };
  let answer = "";
  let reasoning = "";
  let thinking = null;  // <details class="thinking"> once reasoning arrives
  let failure = "";
  const showReasoning = () => {
    if (!reasoning) return;
    if (!thinking) {
      thinking = document.createElement("details");
      thinking.className = "thinking";
      thinking.append(textElement("summary", "Thinking"), textElement("div", ""));
      thinking.lastChild.className = "reasoning";
      content.before(thinking);
    }
    thinking.lastChild.textContent = reasoning;  // text only, never markup
  };
  let painting = false;
  const paint = () => {  // at most one repaint per frame, however fast the tokens come
    if (painting) return;
    painting = true;
    requestAnimationFrame(() => {
      painting = false;
      if (bubble.dataset.state !== "streaming") return;  // ended meanwhile: the end paints
      const follow = nearBottom();
      showReasoning();
      renderText(content, answer);
      if (follow) scrollDown();
    });
  };
  try {
    const url = plain ? "v1/completions" : "v1/chat/completions";
    const r = await fetch(url, { method: "POST", headers: headers(), body: JSON.stringify(body),
                                 signal: controller.signal });
    if (!r.ok) throw new Error(await apiError(r));
    let done = false;
    for await (const data of sseData(r)) {
      if (data === "[DONE]") { done = true; break; }
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);  // a failure after the stream began
      if (chunk.usage) s.usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const delta = plain ? choice.text : choice.delta && choice.delta.content;
        const thought = choice.delta && choice.delta.reasoning_content;
        if (delta || thought) {
          s.tLast = performance.now();
          if (s.tFirst === null) s.tFirst = s.tLast;
          s.chunks += 1;
          answer += delta || "";
          reasoning += thought || "";
          paint();
        }
        if (choice.finish_reason) s.reason = choice.finish_reason;
      }
    }
    // neither a finish_reason nor [DONE]: the connection closed mid-answer (a server restart, a proxy's timeout)
    if (!done && !s.reason) throw new Error("the stream ended early: the answer is incomplete");
    s.reason = s.reason || "none";
    bubble.dataset.state = "done";
  } catch (e) {
    if (controller.signal.aborted) {  // the stop button, Esc (or a new chat): the server cancels the rows
      s.reason = "stopped";
      bubble.dataset.state = "stopped";
    } else {
      bubble.dataset.state = "error";
      bubble.classList.add("error");
      failure = e.message;
    }
  } finally {
    state.controller = null;
    setBusy(false);
  }
  bubble.removeAttribute("aria-busy");
  showReasoning();
  renderText(content, answer + (failure ? (answer ? "\n\n" : "") + failure : ""));
  if (!bubble.isConnected) { focusPrompt(); return; }  // a new chat started meanwhile
  const giveBack = () => { if (!$("prompt").value.trim()) $("prompt").value = text; };
  if (bubble.dataset.state === "error") {
    // not part of the conversation: marked failed, the question back in the box; Retry sends it again
    question.classList.add("failed");
    bubble.classList.add("failed");
    bubble.querySelector(".meta").textContent = "Failed: not sent with the next message. The question is back in " +
      "the message box.";
    actionButton(bubble, "Retry", "Send this question again", () => ask(text, () => {}));
    giveBack();
    say("The answer failed: " + failure);
  } else if (bubble.dataset.state === "stopped" && !answer) {
    // stopped before any answer: nothing to keep; the question goes back to the box
    question.remove();
    bubble.remove();
    giveBack();
    say("Stopped before the answer began: the question is back in the message box.");
  } else {
    showStats(bubble, s);
    const inHistory = !plain;
    if (inHistory) state.history.push({ role: "user", content: text }, { role: "assistant", content: answer });
    actionButton(bubble, "Copy", "Copy this answer", (e) => copyText(answer, e.currentTarget));
    actionButton(bubble, "Regenerate", "Ask the same question again, without this answer", () => ask(text, () => {
      // this turn is the last one of the conversation: out of it, and off the screen
      if (inHistory) state.history.splice(-2, 2);
      question.remove();
      bubble.remove();
    })).classList.add("regenerate");
    say(bubble.dataset.state === "stopped" ? "Stopped: the partial answer stays in the conversation."
                                           : "Answer complete (" + bubble.querySelector(".meta").textContent + ").");
  }
  focusPrompt();
}

function stop() {
  if (state.controller) state.controller.abort();
  $("prompt").focus();
}

function newChat() {
  if (state.controller) state.controller.abort();
  state.history = [];
  $("messages").replaceChildren();
  banner("");
  say("");
  $("prompt").focus();
}

function init() {
  loadSettings();
  loadSettingsOpen();
  $("json-fields").hidden = !$("json-mode").checked;
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  document.addEventListener("keydown", (e) => {  // Esc stops the answer, wherever the focus is
    if (e.key === "Escape" && state.controller) { e.preventDefault(); stop(); }
  });
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", newChat);
  $("toggle-settings").addEventListener("click", () => showSettings($("settings").hidden, true));
  $("json-mode").addEventListener("change", () => {
    $("json-fields").hidden = !$("json-mode").checked;
    saveSettings();
  });
  $("max-tokens").addEventListener("input", () => { maxTokensTyped = true; });
  $("api-key").addEventListener("change", () => { saveSettings(); loadModel(); });
  for (const id of SAVED) $(id).addEventListener("change", saveSettings);
  loadModel();
  $("prompt").focus();
}

init();
