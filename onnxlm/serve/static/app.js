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
// with each request ({role, content} pairs of finished turns; an answer also keeps its stats line as "stats"), the
// id of the conversation shown (null: a new one, not kept until its first turn finishes) and what was kept of it
// (its title, times, system prompt and settings, as last shown or saved here: it is kept again as it was when
// another tab deleted it), the AbortController of the request in flight (null when idle), the server's cap on
// max_tokens (GET /props; null: not known), and what keeping the conversation has to say at the end of the turn ("":
// nothing; it was saved as a new one: keepConversation)
const state = { model: null, chat: null, history: [], current: null, kept: null, controller: null, cap: null,
                note: "", embedsOnly: false };

// inputs kept in localStorage between visits; all but the API key go back to their defaults with "Reset settings"
const SAVED = ["system", ...SAMPLING.map((s) => s.id), "json-mode", "schema-name", "schema", "api-key"];

// the saved inputs (SAVED) back from localStorage (storage blocked: the defaults)
function loadSettings() {
  for (const id of SAVED) {
    let v = null;
    try { v = localStorage.getItem("onnxlm." + id); } catch (e) { return; }  // storage blocked: keep the defaults
    if (v === null) continue;
    const el = $(id);
    if (el.type === "checkbox") el.checked = v === "1"; else el.value = v;
  }
}

// the inputs of SAVED -> localStorage
function saveSettings() {
  for (const id of SAVED) {
    const el = $(id);
    try { localStorage.setItem("onnxlm." + id, el.type === "checkbox" ? (el.checked ? "1" : "0") : el.value); }
    catch (e) { return; }
  }
}

// the side panels, Settings and the conversation list (Chats): each open or closed as last left (localStorage), else
// open on a wide screen, closed on a narrow one, where they open above the conversation, one at a time
const NARROW = "(max-width: 700px)";
const PANELS = { settings: "toggle-settings", chats: "toggle-chats" };
function showPanel(id, open, save) {
  $(id).hidden = !open;
  $(PANELS[id]).setAttribute("aria-expanded", String(open));
  if (open && window.matchMedia(NARROW).matches) {
    for (const other of Object.keys(PANELS)) if (other !== id && !$(other).hidden) showPanel(other, false, false);
  }
  if (save) {
    try { localStorage.setItem("onnxlm." + id + "-open", open ? "1" : "0"); } catch (e) { /* storage blocked */ }
  }
}

// the settings panel opened or closed (``save``: remembered)
function showSettings(open, save) { showPanel("settings", open, save); }

// both panels as last left, or by the screen's width
function loadPanelsOpen() {
  for (const id of ["chats", "settings"]) {  // on a narrow screen, Settings wins when both were left open
    let v = null;
    try { v = localStorage.getItem("onnxlm." + id + "-open"); } catch (e) { /* storage blocked */ }
    showPanel(id, v === null ? !window.matchMedia(NARROW).matches : v === "1", false);
  }
}

// the line under the conversation (role=status: what a screen reader announces, once, instead of every token)
function say(message, kind) {
  const el = $("status");
  el.textContent = message || "";
  el.dataset.kind = kind || "";
}

// the API calls' headers: JSON, and the key typed in Settings as a Bearer token
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

// the error line above the conversation (role=alert): ``message``, or hidden when empty; ``owner`` names who set it
// ("model": the model lookup, which clears only its own message, so a lookup answering late, after an API key
// change or while the model loads, leaves a "Not sent" or failed request's message alone)
let bannerOwner = null;
function banner(message, owner = null) {
  const el = $("banner");
  el.textContent = message || "";
  el.hidden = !message;
  bannerOwner = message ? owner : null;
}

const PROMPT_HINT = { chat: "Ask something (Enter sends, Shift+Enter: a new line)",
                      plain: "Text for the model to continue (Enter sends, Shift+Enter: a new line)" };

// chat (true, or null: not known) or plain completions (false: the model has no chat template), with the notice;
// ``embedsOnly`` (capabilities.completions false: an embedding model) turns sending off, with its own notice
function setChat(chat, embedsOnly = false) {
  state.chat = chat;
  const plain = chat === false;
  const notice = $("notice");
  notice.textContent = embedsOnly
    ? "This model only embeds (an embedding model): it cannot chat or continue text (the generation endpoints " +
      "answer 400). POST /v1/embeddings (or llama.cpp's /embedding) gives its vectors."
    : plain
    ? "This model has no chat template, so it cannot chat (/v1/chat/completions answers 400). The page sends plain " +
      "completions instead (/v1/completions): the model continues the text you send, one turn at a time, without " +
      "the system prompt or earlier turns."
    : "";
  notice.hidden = !plain && !embedsOnly;
  document.body.dataset.mode = plain ? "completions" : "chat";
  $("prompt").placeholder = plain ? PROMPT_HINT.plain : PROMPT_HINT.chat;
  $("system").disabled = plain;
  state.embedsOnly = embedsOnly;
  $("prompt").disabled = embedsOnly;
  $("send").disabled = embedsOnly;
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
      banner(body + (r.status === 401 ? " (enter the API key in Settings)" : ""), "model");
      return;
    }
    const card = body.data && body.data.length ? body.data[0] : null;
    state.model = card ? card.id : null;
    $("model").textContent = state.model || "(no model)";
    if (bannerOwner === "model") banner("");
    const caps = card && card.capabilities;
    if (caps) { setChat(caps.chat !== false, caps.completions === false); loadCap(); }
    else if (card && ++capabilityTries <= 60) setTimeout(loadModel, 1000);  // still loading: ask again
  } catch (e) {
    if (call === modelCalls) banner("cannot reach the server: " + e.message, "model");
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

// text -> the element's children, as markdown (markdown.js: built from text nodes and elements, never HTML); each
// code block gets a copy button (addCopyButton)
function renderText(el, text) {
  renderMarkdown(el, text, addCopyButton);
}

// a code block's box (markdown.js) -> a copy button first in it (its label "Copy" is CSS: the block's text stays the
// code's)
function addCopyButton(box, code) {
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy";
  copy.setAttribute("aria-label", "Copy code");
  copy.title = "Copy code";
  copy.addEventListener("click", () => copyText(code.textContent, copy));
  box.prepend(copy);
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

// whether the conversation is scrolled to (near) its end: new text then keeps it there
function nearBottom() {
  const m = $("messages");
  return m.scrollHeight - m.scrollTop - m.clientHeight < 60;
}

// the conversation scrolled to its end
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

// the settings panel's sampling fields -> {params: the request's fields (empty ones, and those at their "off" value,
// left out), seed: its digits (undefined: random), invalid: the first field out of its range (null: none)}; each
// field is marked invalid, with its rule under it, or cleared
function readSampling() {
  const params = {};
  let seed;
  let invalid = null;
  for (const spec of SAMPLING) {
    const el = $(spec.id);
    const checked = el.validity && el.validity.badInput ? { error: spec.rule } : checkSetting(spec, el.value);
    markField(el, fieldName(el, spec), checked.error);
    if (checked.error) {
      invalid = invalid || { el, name: fieldName(el, spec), rule: spec.rule };
    } else if (!isDefaultSetting(spec, checked.value)) {
      if (spec.kind === "seed") seed = checked.value; else params[spec.key] = checked.value;
    }
  }
  return { params, seed, invalid };
}

// a settings field's name: its label's text (the request's field name when it has none)
function fieldName(el, spec) {
  const label = el.labels && el.labels[0];
  return label && label.firstChild ? label.firstChild.textContent.trim() : spec.key;
}

// a field -> marked invalid (aria-invalid, ``error`` in its note under it), or cleared (no error)
function markField(el, name, error) {
  const note = $(el.id + "-error");
  if (error) el.setAttribute("aria-invalid", "true"); else el.removeAttribute("aria-invalid");
  note.textContent = error ? name + ": expected " + error + "." : "";
  note.hidden = !error;
}

// a request's body -> its JSON text, with the seed (when set) last, written with all its digits (a JS number past
// 2**53 would lose some)
function requestJSON(body, seed) {
  const json = JSON.stringify(body);
  return seed === undefined ? json : json.slice(0, -1) + ',"seed":' + seed + "}";
}

// what a request sent -> the settings kept with its conversation (and written to its file): its sampling fields,
// the seed (a number; text past 2**53), response_format
function usedSettings(sampling, format) {
  const out = { ...sampling.params };
  if (sampling.seed !== undefined) {
    out.seed = Number.isSafeInteger(Number(sampling.seed)) ? Number(sampling.seed) : sampling.seed;
  }
  if (format) out.response_format = format;
  return out;
}

// "Reset settings": the fields back to the page's defaults (index.html's values), the API key kept; max tokens
// within the server's cap
function resetSettings() {
  for (const id of SAVED) {
    if (id === "api-key") continue;
    const el = $(id);
    if (el.type === "checkbox") el.checked = el.defaultChecked; else el.value = el.defaultValue;
  }
  maxTokensTyped = false;
  const v = numberOf("max-tokens");
  if (state.cap !== null && v !== undefined && v > state.cap) $("max-tokens").value = String(state.cap);
  $("json-fields").hidden = !$("json-mode").checked;
  readSampling();
  saveSettings();
  say("The settings are back to their defaults (the API key is kept).");
}

// a conversation file's system prompt and settings -> the settings panel, saved: a field the file leaves out gets
// its "off" value, or empty (the server's default) when it has none
function applySettings(system, settings) {
  $("system").value = system;
  for (const spec of SAMPLING) {
    const v = settings[spec.key];
    $(spec.id).value = v !== undefined ? String(v) : spec.def !== undefined ? String(spec.def) : "";
  }
  maxTokensTyped = true;
  const format = settings.response_format;
  $("json-mode").checked = Boolean(format);
  if (format) {
    $("schema-name").value = format.json_schema.name;
    $("schema").value = JSON.stringify(format.json_schema.schema);
  }
  $("json-fields").hidden = !$("json-mode").checked;
  readSampling();
  saveSettings();
}

// Send and Stop for a request in flight (busy) or none
function setBusy(busy) {
  $("send").disabled = busy || state.embedsOnly;
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
  const sampling = readSampling();
  if (sampling.invalid) {  // marked in Settings; nothing sent
    banner("Not sent: " + sampling.invalid.name + " must be " + sampling.invalid.rule + " (see Settings).");
    showSettings(true, false);
    sampling.invalid.el.focus();
    return;
  }
  banner("");
  saveSettings();
  dropFailed();
  if (before) before();
  for (const b of document.querySelectorAll("#messages .regenerate")) b.remove();  // only the newest answer's

  // the request: system prompt, the finished turns, this question (a model that cannot chat: the text alone, as a
  // plain completion); empty settings are left to the server
  const plain = state.chat === false;
  const body = { stream: true, stream_options: { include_usage: true }, ...sampling.params };
  const system = plain ? "" : $("system").value.trim();
  if (plain) {
    body.prompt = text;
  } else {
    const messages = [];
    if (system) messages.push({ role: "system", content: system });
    messages.push(...state.history.map((m) => ({ role: m.role, content: m.content })), { role: "user", content: text });
    body.messages = messages;
  }
  if (state.model) body.model = state.model;
  if (format) body.response_format = format;
  const used = { system, settings: usedSettings(sampling, format) };  // kept with the conversation

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
  // the answer as markdown: its blocks that can no longer change are rendered once and kept, the rest again at each
  // repaint (markdown.js: mdStream; the DOM is the one rendering the whole text gives)
  const shown = mdStream(content, addCopyButton);
  let painting = false;
  const paint = () => {  // at most one repaint per frame, however fast the tokens come
    if (painting) return;
    painting = true;
    requestAnimationFrame(() => {
      painting = false;
      if (bubble.dataset.state !== "streaming") return;  // ended meanwhile: the end paints
      const follow = nearBottom();
      showReasoning();
      shown.render(answer);
      if (follow) scrollDown();
    });
  };
  try {
    const url = plain ? "v1/completions" : "v1/chat/completions";
    const r = await fetch(url, { method: "POST", headers: headers(), body: requestJSON(body, sampling.seed),
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
    if (state.controller === controller) {  // else the page moved on (another conversation) and is idle already
      state.controller = null;
      setBusy(false);
    }
  }
  bubble.removeAttribute("aria-busy");
  showReasoning();
  shown.render(answer + (failure ? (answer ? "\n\n" : "") + failure : ""));
  if (!bubble.isConnected) { focusPrompt(); return; }  // another conversation shown meanwhile: this turn dropped
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
    if (inHistory) {
      state.history.push({ role: "user", content: text },
                         { role: "assistant", content: answer, stats: bubble.querySelector(".meta").textContent });
      await keepConversation(used);
    }
    turnActions(question, bubble, text, answer, inHistory, true);
    say(bubble.dataset.state === "stopped" ? "Stopped: the partial answer stays in the conversation."
                                           : "Answer complete (" + bubble.querySelector(".meta").textContent + ").");
  }
  if (state.note) {  // kept as a new conversation (keepConversation), during this turn or its Regenerate
    say($("status").textContent + " " + state.note);
    state.note = "";
  }
  focusPrompt();
  noteStorage();
}

// an answer's buttons: Copy, and on the newest answer Regenerate (the same question again, without this answer)
function turnActions(question, bubble, text, answer, inHistory, newest) {
  actionButton(bubble, "Copy", "Copy this answer", (e) => copyText(answer, e.currentTarget));
  if (!newest) return;
  actionButton(bubble, "Regenerate", "Ask the same question again, without this answer", () => ask(text, () => {
    // this turn is the last one of the conversation: out of it (and of what is kept), and off the screen
    if (inHistory) {
      state.history.splice(-2, 2);
      keepConversation(null);
    }
    question.remove();
    bubble.remove();
  })).classList.add("regenerate");
}

// Stop (or Esc): the answer in flight aborted; ask() ends it as "stopped"
function stop() {
  if (state.controller) state.controller.abort();
  $("prompt").focus();
}

// the request in flight (if any) aborted and forgotten at once: the page is idle; its turn, no longer on screen once
// the caller has changed it, is dropped (ask() ends without keeping it)
function abortRequest() {
  if (!state.controller) return;
  state.controller.abort();
  state.controller = null;
  setBusy(false);
}

// the conversation shown emptied: a new one, kept from its first finished turn
function clearConversation() {
  state.history = [];
  state.current = null;
  state.kept = null;
  convSetCurrent(null);
  $("messages").replaceChildren();
  banner("");
  say("");
}

// "New chat": the request in flight stopped, an empty conversation
function newChat() {
  abortRequest();
  clearConversation();
  renderChats();
  closeChatsWhenNarrow();
  $("prompt").focus();
}

// this tab's saves and deletions, one after another (each waits for the one before, e.g. a Regenerate's and then its
// new answer's), how many are still to finish, and whether another tab's write to the conversation shown was heard
// meanwhile (shown once they are done: keepersDone)
let keeping = Promise.resolve();
let keepsPending = 0;
let heardMeanwhile = false;

// ``job`` (a function -> a promise) run after this tab's saves and deletions before it -> a promise of its result
function inTurn(job) {
  keepsPending += 1;
  const run = keeping.then(job).finally(keepersDone);
  keeping = run.catch(() => {});
  return run;
}

// a save or deletion done: the last one -> another tab's change to the conversation shown, heard meanwhile, shown
// (once the turn that saved has said its last word)
function keepersDone() {
  keepsPending -= 1;
  if (keepsPending || !heardMeanwhile) return;
  setTimeout(() => {
    if (keepsPending || !heardMeanwhile) return;
    heardMeanwhile = false;
    otherTabWrote({ key: null });
  }, 0);
}

// the conversation shown -> kept (conversations.js), after its turns changed: created at its first finished turn,
// titled after its first question; ``used``: the system prompt and settings of the request that just finished (null:
// those kept before). Left with no turns (Regenerate of its only one), it leaves the list until a turn finishes
// (unless another tab saved it since: that version stays). Deleted in another tab meanwhile, it is kept again, its
// title and creation time as they were (state.kept). Changed in another tab since this tab showed or saved it (a
// turn asked there), the version there stays and this one is kept as a new conversation, "<title> (copy)", shown
// from now on (state.note says so at the end of the turn): no tab overwrites an answer another tab kept.
// The save waits for the conversation's lock (conversations.js: convSave), so it ends later: what it keeps is taken
// now (the turns, the conversation's id: a new one gets it now), and the saves of this tab are made in turn
// (inTurn). -> a promise, resolved once it is kept
function keepConversation(used) {
  const snap = { id: state.current, messages: state.history.map((m) => ({ ...m })), used,
                 kept: state.current ? state.kept || convGet(state.current) : null };
  if (snap.messages.length && !snap.id) {
    snap.id = state.current = convNewId();
    convSetCurrent(snap.id);
  }
  return inTurn(() => keepNow(snap));
}

// keepConversation's save, in turn: ``snap`` -> kept; the state (the id shown, what was kept of it, the note) set only
// while that conversation is still the one shown
async function keepNow(snap) {
  const here = () => state.current === snap.id;
  if (!snap.messages.length) {
    if (snap.id) await convDelete(snap.id, convBase(here() ? state.kept : snap.kept));
    renderChats();
    return;
  }
  const old = here() ? state.kept || convGet(snap.id) : snap.kept;
  const now = Date.now();
  let conv = { id: snap.id, title: old ? old.title : convTitle(snap.messages[0].content),
               created: old ? old.created : now, updated: now,
               system: snap.used ? snap.used.system : old ? old.system : "",
               settings: snap.used ? snap.used.settings : old ? old.settings : {},
               messages: snap.messages };
  if (await convSave(conv, convBase(old)) === "changed") {
    const original = conv;
    conv = { ...conv, id: convNewId(), title: conv.title + " (copy)", created: now };
    await convSave(conv, null);
    if (here()) {
      state.current = conv.id;
      convSetCurrent(conv.id);
      state.note = "“" + original.title + "” was changed in another tab: that version stays, and this one is " +
        "kept as a new conversation, “" + conv.title + "”.";
    }
  }
  if (state.current === conv.id) state.kept = conv;
  renderChats();
}

// a conversation -> shown: its turns on screen (each answer with its stats line, Copy; the newest with Regenerate)
// and sent as the context of the next question
function showConversation(conv) {
  state.current = conv.id;
  state.kept = conv;
  convSetCurrent(conv.id);
  state.history = conv.messages.map((m) => ({ ...m }));
  $("messages").replaceChildren();
  banner("");
  for (let i = 0; i + 1 < state.history.length; i += 2) {
    const q = state.history[i].content;
    const a = state.history[i + 1];
    const question = addMessage("user", q);
    const bubble = addMessage("assistant", a.content);
    bubble.dataset.state = "done";
    bubble.querySelector(".meta").textContent = a.stats || "";
    turnActions(question, bubble, q, a.content, true, i + 2 === state.history.length);
  }
  scrollDown();
  renderChats();
}

// a click on a conversation in the list -> shown (the request in flight stopped first, its turn dropped); the one
// already shown, while no answer streams: read again from storage, shown anew when another tab changed it
function openConversation(id) {
  const conv = convGet(id);
  if (!conv) return;
  if (id !== state.current) {
    abortRequest();
    showConversation(conv);
    say("Showing “" + conv.title + "”.");
  } else if (!state.controller && !keepsPending) {
    convLoad();
    const now = convGet(id);
    if (now && convBase(now) !== convBase(state.kept)) {
      showConversation(now);
      say("Showing “" + now.title + "” as another tab changed it.");
    } else {
      renderChats();
    }
  }
  closeChatsWhenNarrow();
  $("prompt").focus();
}

// a conversation's delete button: the first click asks ("Delete?"), the second deletes; leaving it (blur) undoes
// the first
function deleteClicked(button, conv) {
  if (button.dataset.confirm !== "yes") {
    askDelete(button, conv);
    say("Click Delete? again to delete “" + conv.title + "”.");
    return;
  }
  deleteConversation(conv.id);
}

// a delete button -> asking "Delete?" (its second click deletes)
function askDelete(button, conv) {
  button.dataset.confirm = "yes";
  button.textContent = "Delete?";
  button.setAttribute("aria-label", "Confirm: delete “" + conv.title + "”");
}

// a delete button that asked "Delete?" back to its first state
function unconfirm(button, conv) {
  if (button.dataset.confirm !== "yes") return;
  delete button.dataset.confirm;
  if ($("status").textContent.startsWith("Click Delete? again")) say("");
  button.textContent = "×";
  button.setAttribute("aria-label", "Delete “" + conv.title + "”");
}

// a conversation -> deleted (the one shown: its request stopped first, the screen emptied), after this tab's saves
// before it; the focus to the next one in the list (the one before it when last, else New chat)
async function deleteConversation(id) {
  const conv = convGet(id);
  if (!conv) return;
  const ids = convStore.list.map((c) => c.id);
  const at = ids.indexOf(id);
  if (id === state.current) {
    abortRequest();
    clearConversation();
  }
  await inTurn(() => convDelete(id));
  renderChats();
  const next = convStore.list[Math.min(at, convStore.list.length - 1)];
  const button = next && document.querySelector('#chat-list .chat-item[data-id="' + CSS.escape(next.id) + '"] .open');
  (button || $("new-chat")).focus();
  say("Deleted “" + conv.title + "”.");
  noteStorage();
}

// a time (ms) -> short text: the hour and minute today, the day before that
function formatTime(ms) {
  const d = new Date(ms);
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return d.toDateString() === new Date().toDateString() ? hm
    : d.toLocaleDateString([], { month: "short", day: "numeric" }) + ", " + hm;
}

// the conversation list: each one's title and time, the one shown marked (aria-current), a Delete button; the focus
// stays on the button it was on, a Delete? still asking
function renderChats() {
  const focused = document.activeElement && document.activeElement.closest &&
    document.activeElement.closest("#chat-list .chat-item");
  const focusedId = focused ? focused.dataset.id : null;
  const focusedClass = focused ? document.activeElement.className : null;
  const asking = focused && document.activeElement.dataset.confirm === "yes";
  if (asking) delete document.activeElement.dataset.confirm;  // so that its blur, as it is removed, undoes nothing
  const items = convStore.list.map((conv) => {
    const li = document.createElement("li");
    li.className = "chat-item";
    li.dataset.id = conv.id;
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.title = conv.title;
    if (conv.id === state.current) open.setAttribute("aria-current", "true");
    const title = textElement("span", conv.title);
    title.className = "title";
    const time = textElement("time", formatTime(conv.updated));
    time.dateTime = new Date(conv.updated).toISOString();
    open.append(title, time);
    open.addEventListener("click", () => openConversation(conv.id));
    const del = textElement("button", "×");
    del.type = "button";
    del.className = "delete";
    del.title = "Delete this conversation";
    del.setAttribute("aria-label", "Delete “" + conv.title + "”");
    del.addEventListener("click", () => deleteClicked(del, conv));
    del.addEventListener("blur", () => unconfirm(del, conv));
    li.append(open, del);
    return li;
  });
  $("chat-list").replaceChildren(...items);
  $("chats-empty").hidden = items.length > 0;
  if (focusedId) {
    const again = items.find((li) => li.dataset.id === focusedId);
    const button = again && again.querySelector("." + focusedClass.split(" ")[0]);
    if (button && asking) askDelete(button, convGet(focusedId));
    if (button) button.focus();
  }
}

// on a narrow screen the list closes once a conversation is chosen (it sits above the conversation)
function closeChatsWhenNarrow() {
  if (window.matchMedia(NARROW).matches && !$("chats").hidden) showPanel("chats", false, true);
}

// "Export": the conversation shown -> a JSON file downloaded (OpenAI's messages and the settings used); one deleted
// in another tab but still shown here: as it was last kept
function exportConversation() {
  const conv = state.current ? convGet(state.current) || (state.history.length ? state.kept : null) : null;
  if (!conv) {
    say("Nothing to export yet: a conversation is kept from its first finished answer.");
    return;
  }
  const url = URL.createObjectURL(new Blob([convToFile(conv, state.model)], { type: "application/json" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = "onnxlm-chat-" + (conv.title.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "")
    .slice(0, 40) || "conversation") + ".json";
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  say("Exported “" + conv.title + "”.");
}

// "Import": a file exported here (or any {"messages": [...]} of OpenAI's shape) -> checked (a bad one: the banner
// says why, nothing changes) -> a new conversation, shown, its system prompt and settings put in Settings
async function importFile(file) {
  if (!file) return;
  let parsed;
  try {
    if (file.size > CONV_FILE_MAX) throw new Error("the file is larger than " + CONV_FILE_MAX / 1024 / 1024 + " MB");
    parsed = convFromFile(await file.text());
  } catch (e) {
    banner("Import failed: " + e.message + ". Nothing was changed.");
    return;
  }
  abortRequest();
  const now = Date.now();
  const conv = { id: convNewId(), title: parsed.title, created: now, updated: now, system: parsed.system,
                 settings: parsed.settings, messages: parsed.messages };
  await inTurn(() => convSave(conv, null));
  applySettings(parsed.system, parsed.settings);
  showConversation(convGet(conv.id) || conv);
  say("Imported “" + conv.title + "” (" + conv.messages.length / 2 + " turns); its system prompt and settings " +
      "are in Settings now.");
  noteStorage();
}

// the storage event: another tab changed a conversation (e.key: its key; null: it cleared the storage) -> the list
// read again and shown; the message box's text, the one marked in the list and a Delete? waiting for its second
// click stay. The conversation shown, changed there while this tab is idle (no answer streaming): shown as it is
// now (while an answer streams it stays as it is: keepConversation then keeps this tab's version as a new
// conversation). Deleted there, the conversation shown stays on screen (out of the list: the status line says so)
// and is kept again, as it was with its new turn, when its next answer finishes; New chat or another conversation
// lets it go. While this tab is saving the conversation shown (keepsPending) only the list is redrawn: the rest is
// done once the save is (keepersDone), so that the save's base stays what this tab had.
function otherTabWrote(e) {
  if (e.key !== null && !e.key.startsWith(CONV_PREFIX)) return;
  convLoad();
  renderChats();
  if (!state.current || !state.history.length || (e.key !== null && e.key !== convKey(state.current))) return;
  if (keepsPending) {  // this tab is saving it: looked at again once that is done (keepersDone)
    heardMeanwhile = true;
    return;
  }
  const now = convGet(state.current);
  if (!now) {
    say("“" + state.kept.title + "” was deleted in another tab: it stays here, and is kept again when its next " +
        "answer finishes.");
  } else if (!state.controller && convBase(now) !== convBase(state.kept)) {
    showConversation(now);
    say("“" + now.title + "” was changed in another tab: it is shown as it is now.");
  }
}

// storage that failed at the last save (blocked, or full): the note shown with the reason, said once (again after
// a save that worked, which hides it)
let storageSaid = "";
function noteStorage() {
  if (!convStore.failed) {  // saved again: the note no longer holds
    storageSaid = "";
    $("store-note").hidden = true;
    return;
  }
  if (storageSaid === convStore.failed) return;
  storageSaid = convStore.failed;
  $("store-note-text").textContent = convStore.failed === "full"
    ? "This conversation is not kept: this browser's storage is full. Your other conversations were left as they " +
      "are: delete some (or free space) and this one is kept when its next answer finishes; until then it stays " +
      "until the page is closed."
    : "Conversations are not kept: this browser's storage is blocked. They stay until the page is closed.";
  $("store-note").hidden = false;
}

// the page's start: the settings and panels as last left, the conversations kept and the one shown last, the
// handlers, the model
function init() {
  loadSettings();
  loadPanelsOpen();
  readSampling();  // a value kept from before that is out of range: marked at once
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
  $("toggle-chats").addEventListener("click", () => showPanel("chats", $("chats").hidden, true));
  $("json-mode").addEventListener("change", () => {
    $("json-fields").hidden = !$("json-mode").checked;
    saveSettings();
  });
  $("max-tokens").addEventListener("input", () => { maxTokensTyped = true; });
  $("api-key").addEventListener("change", () => { saveSettings(); loadModel(); });
  for (const id of SAVED) $(id).addEventListener("change", saveSettings);
  for (const spec of SAMPLING) $(spec.id).addEventListener("input", readSampling);
  $("reset-settings").addEventListener("click", resetSettings);
  $("export").addEventListener("click", exportConversation);
  $("import").addEventListener("click", () => $("import-file").click());
  $("import-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    e.target.value = "";  // the same file may be chosen again
    importFile(file);
  });
  $("store-note-close").addEventListener("click", () => { $("store-note").hidden = true; $("prompt").focus(); });
  window.addEventListener("storage", otherTabWrote);

  const unreadable = convMigrate();
  convLoad();
  const id = convCurrentId();  // this tab's; a new tab: the newest conversation
  const current = id === null ? convStore.list[0] : convGet(id);
  if (current) showConversation(current); else renderChats();
  if (convStore.dropped + unreadable) {
    say("Some stored conversations could not be read: they were left out (and left in storage as they were).");
  }
  noteStorage();
  loadModel();
  $("prompt").focus();
}

init();
