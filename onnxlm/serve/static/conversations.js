// The chat page's conversations: kept in this browser (localStorage, one key holding them all, newest first, at
// most CONV_MAX), and the file a conversation is exported to and imported from. A conversation is
// {id, title, created, updated (ms since 1970), system (the system prompt sent, "" for none), settings (the sampling
// fields its last request sent, as the file has them), messages: its finished turns, user then assistant, each
// {role, content} (an answer also keeps its stats line as "stats")}.
// Storage that throws (blocked, full) or holds something unreadable never breaks the page: the conversations are
// then kept in memory only (convStore.failed), and what cannot be read is dropped.
// Several tabs may share the key: each write reads it again and applies only this tab's change (convCommit), so no
// tab overwrites what another saved or brings back what another deleted; the page reloads its list on the storage
// event the other tabs' writes fire.
"use strict";

const CONV_KEY = "onnxlm.conversations";
const CONV_CURRENT_KEY = "onnxlm.current";
const CONV_MAX = 50;
const CONV_FILE_FORMAT = "onnxlm.conversation";
const CONV_FILE_MAX = 5 * 1024 * 1024;  // bytes: a file larger than this is not read
const SEED_MAX = 2n ** 63n - 1n;

// the conversations (newest first), whether storage failed (kept in memory only), and how many stored entries could
// not be read at the last load
const convStore = { list: [], failed: false, dropped: 0 };

// the sampling settings a request (and a conversation's file) may carry: key (the request's field), id (the
// settings panel's input), kind (number, int, seed: an integer as digits), range, and def: the value that means
// "off", not sent (no def: sent whenever the field is not empty; empty leaves the server's default)
const SAMPLING = [
  { key: "temperature", id: "temperature", kind: "number", min: 0, max: 2, rule: "a number from 0 to 2" },
  { key: "top_p", id: "top-p", kind: "number", min: 0, max: 1, minOpen: true, rule: "a number above 0, at most 1" },
  { key: "max_tokens", id: "max-tokens", kind: "int", min: 1, rule: "an integer of at least 1" },
  { key: "top_k", id: "top-k", kind: "int", min: 0, def: 0, rule: "an integer of at least 0 (0: off)" },
  { key: "min_p", id: "min-p", kind: "number", min: 0, max: 1, def: 0, rule: "a number from 0 to 1 (0: off)" },
  { key: "repetition_penalty", id: "repetition-penalty", kind: "number", min: 0, minOpen: true, def: 1,
    rule: "a number above 0 (1: off)" },
  { key: "presence_penalty", id: "presence-penalty", kind: "number", min: -2, max: 2, def: 0,
    rule: "a number from -2 to 2 (0: off)" },
  { key: "frequency_penalty", id: "frequency-penalty", kind: "number", min: -2, max: 2, def: 0,
    rule: "a number from -2 to 2 (0: off)" },
  { key: "seed", id: "seed", kind: "seed", def: "", rule: "an integer from 0 to 2^63-1 (empty: random)" },
];

// a setting's text (as typed, or a file's value made text) -> {value} (undefined: empty; a number, or the seed's
// digits as a string) or {error: the rule it breaks}
function checkSetting(spec, text) {
  const t = String(text).trim();
  if (t === "") return { value: undefined };
  if (spec.kind === "seed") {
    return /^\d{1,19}$/.test(t) && BigInt(t) <= SEED_MAX ? { value: String(BigInt(t)) } : { error: spec.rule };
  }
  const v = Number(t);
  const ok = Number.isFinite(v) && (spec.kind !== "int" || Number.isInteger(v))
    && (spec.min === undefined || (spec.minOpen ? v > spec.min : v >= spec.min))
    && (spec.max === undefined || v <= spec.max);
  return ok ? { value: v } : { error: spec.rule };
}

// whether a setting's value is its "off" value (not sent)
function isDefaultSetting(spec, value) {
  return value === undefined || (spec.def !== undefined && String(value) === String(spec.def));
}

// a value -> the messages of a conversation ({role, content}, user then assistant, at least one turn, an answer's
// "stats" kept when text), or an Error saying what is wrong (``where``: how the message names the list)
function checkTurns(value, where) {
  if (!Array.isArray(value)) return new Error(where + " is not a list");
  const turns = [];
  for (let i = 0; i < value.length; i++) {
    const m = value[i];
    const want = i % 2 === 0 ? "user" : "assistant";
    if (!m || typeof m !== "object" || Array.isArray(m)) return new Error(where + "[" + i + "] is not an object");
    if (typeof m.content !== "string") return new Error(where + "[" + i + "].content is not text");
    if (m.role !== want) {
      return new Error(where + "[" + i + "].role is " + JSON.stringify(m.role) + ", expected \"" + want +
                       "\" (turns alternate user and assistant, from the first question to its last answer)");
    }
    const turn = { role: m.role, content: m.content };
    if (want === "assistant" && typeof m.stats === "string") turn.stats = m.stats;
    turns.push(turn);
  }
  if (!turns.length) return new Error(where + " holds no turns");
  if (turns.length % 2) return new Error(where + " ends with a question: the last message must be an answer");
  return turns;
}

// a conversation's title: its first question, spaces collapsed, cut to 48 characters
function convTitle(text) {
  const t = text.replace(/\s+/g, " ").trim();
  return t.length > 48 ? t.slice(0, 47) + "…" : t || "(empty)";
}

// a stored entry -> the conversation, or null when it is not one (dropped)
function convFromStored(v) {
  if (!v || typeof v !== "object" || typeof v.id !== "string" || !v.id) return null;
  const turns = checkTurns(v.messages, "messages");
  if (turns instanceof Error) return null;
  const created = Number.isFinite(v.created) ? v.created : 0;
  return { id: v.id, title: typeof v.title === "string" && v.title ? v.title : convTitle(turns[0].content),
           created, updated: Number.isFinite(v.updated) ? v.updated : created,
           system: typeof v.system === "string" ? v.system : "",
           settings: v.settings && typeof v.settings === "object" && !Array.isArray(v.settings) ? v.settings : {},
           messages: turns };
}

// localStorage -> its conversations, newest first (unreadable JSON or entries: dropped, counted); null when
// storage throws
function convRead() {
  let raw;
  try { raw = localStorage.getItem(CONV_KEY); } catch (e) { return null; }
  if (raw === null) return [];
  let parsed;
  try { parsed = JSON.parse(raw); } catch (e) { convStore.dropped += 1; return []; }
  if (!Array.isArray(parsed)) { convStore.dropped += 1; return []; }
  const list = parsed.map(convFromStored).filter(Boolean);
  convStore.dropped += parsed.length - list.length;
  return list.sort((a, b) => b.updated - a.updated).slice(0, CONV_MAX);
}

// the stored conversations -> convStore.list (storage failing: kept in memory from now on)
function convLoad() {
  convStore.dropped = 0;
  if (convStore.failed) return;
  const list = convRead();
  if (list === null) convStore.failed = true; else convStore.list = list;
}

// convStore.list -> localStorage; full: the oldest dropped until it fits (never ``keep``, the conversation just
// saved); another failure, or full with that one alone: storage failed, the whole list kept in memory from now on
function convWrite(keep) {
  if (convStore.failed) return;
  const all = convStore.list;
  for (;;) {
    try {
      localStorage.setItem(CONV_KEY, JSON.stringify(convStore.list));
      return;
    } catch (e) {
      const full = e && (e.name === "QuotaExceededError" || e.code === 22);
      const oldest = convStore.list.map((c) => c.id).filter((id) => id !== keep).pop();
      if (!full || oldest === undefined) {
        convStore.failed = true;
        convStore.list = all;
        return;
      }
      convStore.list = convStore.list.filter((c) => c.id !== oldest);
    }
  }
}

// a change made in this tab -> merged into what storage holds now and written. Storage is read again first (another
// tab may have written since this tab last read it): its entries are the base, and only this change is applied to
// them: ``save`` (a conversation) added or replaced, ``remove`` (an id) taken out. This tab's own list is never
// written back whole, so another tab's conversations stay and one deleted there does not come back from here; the
// one saved here wins over the stored copy of it. Newest first (by ``updated``), the oldest past CONV_MAX dropped.
// Storage failing (now or before): the change applied to the list in memory
function convCommit({ save = null, remove = null }) {
  const stored = convStore.failed ? null : convRead();
  if (stored === null) convStore.failed = true; else convStore.list = stored;
  const id = save ? save.id : remove;
  const rest = convStore.list.filter((c) => c.id !== id);
  convStore.list = (save ? [save, ...rest] : rest).sort((a, b) => b.updated - a.updated).slice(0, CONV_MAX);
  convWrite(save ? save.id : null);
}

// a conversation -> kept (added or replaced; convCommit)
function convSave(conv) {
  convCommit({ save: conv });
}

// the conversation ``id`` -> no longer kept (taken out of what storage holds; convCommit)
function convDelete(id) {
  convCommit({ remove: id });
}

// the conversation ``id`` -> it, or null
function convGet(id) {
  return convStore.list.find((c) => c.id === id) || null;
}

// a new conversation's id (time and chance: crypto.randomUUID needs a secure context, which plain http is not)
function convNewId() {
  return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 10);
}

// the conversation shown, kept so that a reload shows it again (null: a new one)
function convSetCurrent(id) {
  if (convStore.failed) return;
  try {
    if (id) localStorage.setItem(CONV_CURRENT_KEY, id); else localStorage.removeItem(CONV_CURRENT_KEY);
  } catch (e) { /* kept in memory: the page's own state */ }
}

// the id of the conversation shown last (null: none, or storage blocked)
function convCurrentId() {
  try { return localStorage.getItem(CONV_CURRENT_KEY); } catch (e) { return null; }
}

// a conversation -> the exported file's JSON text: OpenAI's messages (the system prompt first, when there was one)
// and the sampling settings its last request sent
function convToFile(conv, model) {
  const messages = conv.system ? [{ role: "system", content: conv.system }] : [];
  for (const m of conv.messages) messages.push({ role: m.role, content: m.content });
  return JSON.stringify({ format: CONV_FILE_FORMAT, version: 1, title: conv.title,
                          created: new Date(conv.created).toISOString(), updated: new Date(conv.updated).toISOString(),
                          model: model || null, messages, settings: conv.settings }, null, 2);
}

// a file's text -> {title, system, settings, messages}, checked: its messages OpenAI's {role, content} (a system
// message first at most, then turns of a question and its answer), its settings those of SAMPLING within their
// ranges, and response_format a json_schema one; anything else throws an Error saying what is wrong
function convFromFile(text) {
  let v;
  try { v = JSON.parse(text); } catch (e) { throw new Error("the file is not JSON (" + e.message + ")"); }
  if (!v || typeof v !== "object" || Array.isArray(v)) throw new Error("the file does not hold a JSON object");
  if (v.format !== undefined && v.format !== CONV_FILE_FORMAT) {
    throw new Error("its format is " + JSON.stringify(v.format) + ", not \"" + CONV_FILE_FORMAT + "\"");
  }
  if (!Array.isArray(v.messages)) throw new Error("it has no \"messages\" list");
  let rest = v.messages;
  let system = "";
  if (rest.length && rest[0] && rest[0].role === "system") {
    if (typeof rest[0].content !== "string") throw new Error("messages[0].content is not text");
    system = rest[0].content;
    rest = rest.slice(1);
  }
  const turns = checkTurns(rest, "the messages after the system prompt");
  if (turns instanceof Error) throw turns;
  for (const t of turns) delete t.stats;  // a file's messages are OpenAI's: no stats
  const settings = {};
  const given = v.settings === undefined || v.settings === null ? {} : v.settings;
  if (typeof given !== "object" || Array.isArray(given)) throw new Error("its \"settings\" is not an object");
  for (const spec of SAMPLING) {
    const value = given[spec.key];
    if (value === undefined || value === null) continue;
    const ok = spec.kind === "seed" ? (typeof value === "string" || Number.isSafeInteger(value))
      : typeof value === "number";
    const checked = ok ? checkSetting(spec, value) : { error: spec.rule };
    if (checked.error) {
      throw new Error("settings." + spec.key + " is " + JSON.stringify(value) + ": expected " + spec.rule);
    }
    if (!isDefaultSetting(spec, checked.value)) settings[spec.key] = value;
  }
  if (given.response_format !== undefined && given.response_format !== null) {
    const f = given.response_format;
    const s = f && f.json_schema;
    if (!f || f.type !== "json_schema" || !s || typeof s !== "object" || !s.schema || typeof s.schema !== "object" ||
        (s.name !== undefined && typeof s.name !== "string")) {
      throw new Error("settings.response_format is not {\"type\": \"json_schema\", \"json_schema\": {\"name\": ..., " +
                      "\"schema\": {...}}}");
    }
    settings.response_format = { type: "json_schema", json_schema: { name: s.name || "answer", schema: s.schema } };
  }
  const title = typeof v.title === "string" && v.title.trim() ? convTitle(v.title) : convTitle(turns[0].content);
  return { title, system, settings, messages: turns };
}
