// The chat page's conversations: kept in this browser (localStorage), each under its own key (CONV_PREFIX + its
// id), and the file a conversation is exported to and imported from. A conversation is {id, title, created, updated
// (ms since 1970), system (the system prompt sent, "" for none), settings (the sampling fields its last request sent,
// as the file has them), messages: its finished turns, user then assistant, each {role, content} (an answer also
// keeps its stats line as "stats")}.
// Several tabs share the storage, and a write to localStorage is not atomic across them (each tab's process keeps
// its own copy and passes its writes on later; the last write of a key wins). So no key holds more than one
// conversation: tabs saving or deleting different conversations never write the same key, and the list is rebuilt
// from the keys (newest first, by updated). A save never overwrites a version of its conversation that another tab
// wrote since this tab read it (convSave says "changed": the page keeps its own version as a new conversation); the
// check and the write (or the removal, convDelete) are done holding a Web Lock named after the conversation's key
// (navigator.locks, where the browser has it: a secure context, such as http://127.0.0.1 or https), so that two tabs
// saving the same conversation at the same moment take turns, the second one seeing the first one's write (each
// write is also named by a numbered lock of its own, and the next holder waits while its own storage still shows an
// older one's text: convMark, convFresh); without Web Locks, as before, the check and the write are done at once,
// which leaves a window of a millisecond or so. The page
// reloads its list on the storage event the other tabs' writes fire.
// No conversation is ever removed but by the user: there is no cap on how many are kept (one used to drop the oldest
// past 50, silently), only the storage's own room. What cannot be read is left in storage as it is (and out of the
// list). Storage that throws (blocked, or full) never breaks the page, and nothing is removed to make room: a
// conversation that could not be saved is kept in memory (convStore.unsaved), the page says so (convStore.failed:
// why), and it is saved again at its next save.
// Each tab keeps the id of the conversation it shows in its own sessionStorage. Earlier versions kept all the
// conversations under one key (CONV_OLD_KEY) and the one shown in localStorage: moved once, at load (convMigrate).
"use strict";

const CONV_PREFIX = "onnxlm.conversation.";
const CONV_OLD_KEY = "onnxlm.conversations";
const CONV_UNREADABLE_KEY = "onnxlm.conversations.unreadable";
const CONV_CURRENT_KEY = "onnxlm.current";
// how long a conversation's lock is held after its write (ms), the page going on meanwhile: the write reaches the
// other tabs' processes on its own way, not with the lock, so the next tab to take the lock gets it this much later
// (50 ms was too short on a loaded machine: a tab read the stored text from before the other tab's write)
const CONV_LOCK_HOLD = 250;
// each write (or removal) of a conversation is also named by a Web Lock of its own (convMark), held this long (ms),
// numbered by the writer while it holds the conversation's lock; a tab that takes that lock waits, at most
// CONV_FRESH_WAIT ms, while its own storage still shows the text of an older mark than the newest (convFresh): the
// lock manager is one for all tabs, the storage reaches each tab later
const CONV_MARK_HOLD = 10000;
const CONV_FRESH_WAIT = 5000;
const CONV_FILE_FORMAT = "onnxlm.conversation";
const CONV_FILE_MAX = 5 * 1024 * 1024;  // bytes: a file larger than this is not read
const SEED_MAX = 2n ** 63n - 1n;

// the conversations listed (newest first: those stored, and those kept in memory only), why storage failed at the
// last save or read ("blocked", "full"; "": it worked), how many stored entries could not be read at the last read,
// each stored entry as last read or written here (id -> {raw: its text, conv: the conversation, null: unreadable}),
// and the conversations this tab could not save (id -> the conversation, kept in memory)
const convStore = { list: [], failed: "", dropped: 0, cache: new Map(), unsaved: new Map() };

// a conversation (an object of convStore) -> the stored text it was read from or written as (for one that could not
// be saved: the text its key held when it was read or written before); set by convParse and convSave
const convBases = new WeakMap();

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

// a stored entry (``id``: its key's id) -> the conversation, or null when it is not one (left out)
function convFromStored(v, id = v && v.id) {
  if (!v || typeof v !== "object" || typeof id !== "string" || !id) return null;
  const turns = checkTurns(v.messages, "messages");
  if (turns instanceof Error) return null;
  const created = Number.isFinite(v.created) ? v.created : 0;
  return { id, title: typeof v.title === "string" && v.title ? v.title : convTitle(turns[0].content),
           created, updated: Number.isFinite(v.updated) ? v.updated : created,
           system: typeof v.system === "string" ? v.system : "",
           settings: v.settings && typeof v.settings === "object" && !Array.isArray(v.settings) ? v.settings : {},
           messages: turns };
}

// a conversation's id -> its localStorage key
function convKey(id) {
  return CONV_PREFIX + id;
}

// two conversations -> their order in the list: the newest (``updated``) first, then by id
function convNewestFirst(a, b) {
  return b.updated - a.updated || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

// the text stored under ``id``'s key -> the conversation, or null when it cannot be read (each text parsed once:
// convStore.cache)
function convParse(id, raw) {
  const hit = convStore.cache.get(id);
  if (hit && hit.raw === raw) return hit.conv;
  let conv = null;
  try { conv = convFromStored(JSON.parse(raw), id); } catch (e) { /* not JSON: unreadable */ }
  if (conv) convBases.set(conv, raw);
  convStore.cache.set(id, { raw, conv });
  return conv;
}

// localStorage -> its conversations, newest first (a key that cannot be read: counted in convStore.dropped, left as
// it is); null when storage throws
function convRead() {
  const list = [];
  const ids = new Set();
  let dropped = 0;
  try {
    for (let i = 0; i < localStorage.length; i++) {
      const key = localStorage.key(i);
      if (key === null || !key.startsWith(CONV_PREFIX)) continue;
      const id = key.slice(CONV_PREFIX.length);
      const raw = localStorage.getItem(key);
      if (raw === null) continue;
      ids.add(id);
      const conv = convParse(id, raw);
      if (conv) list.push(conv); else dropped += 1;
    }
  } catch (e) { return null; }
  for (const id of convStore.cache.keys()) if (!ids.has(id)) convStore.cache.delete(id);
  convStore.dropped = dropped;
  return list.sort(convNewestFirst);
}

// the stored conversations and those kept in memory only (this tab's version of those wins) -> convStore.list,
// newest first (storage that throws: "blocked", the ones in memory alone)
function convLoad() {
  const stored = convRead();
  if (stored === null) convStore.failed = "blocked";
  const rest = (stored || []).filter((c) => !convStore.unsaved.has(c.id));
  convStore.list = [...convStore.unsaved.values(), ...rest].sort(convNewestFirst);
}

// the text stored under ``id``'s key (null: none), undefined when storage throws
function convStoredText(id) {
  try { return localStorage.getItem(convKey(id)); } catch (e) { return undefined; }
}

// a conversation -> the stored text this tab last read it from or wrote it as (null: none, a new one)
function convBase(conv) {
  const base = conv ? convBases.get(conv) : undefined;
  return base === undefined ? null : base;
}

// ``fn(next)`` run holding the Web Lock of the conversation ``id`` (no other tab runs its own meanwhile; the lock is
// held CONV_LOCK_HOLD ms more, see there), once this tab's storage shows the newest marked write (convFresh; ``next``:
// the number a write made now marks itself with) -> a promise of what it returned. Where the browser has no Web
// Locks (not a secure context) or refuses one, ``fn(0)`` runs at once, as before.
function convLocked(id, fn) {
  const locks = typeof navigator !== "undefined" ? navigator.locks : undefined;
  if (!locks || typeof locks.request !== "function") return Promise.resolve(fn(0));
  let ran = false;
  return new Promise((resolve, reject) => {
    const now = (next) => {
      try { resolve(fn(next)); } catch (e) { reject(e); }
    };
    const refused = () => { if (!ran) now(0); };  // (e.g. a document no longer active): as without locks
    try {
      locks.request(convKey(id), async () => {
        ran = true;
        let next = 0;
        try { next = await convFresh(id); } catch (e) { /* no marks read: as before them */ }
        now(next);
        await new Promise((release) => setTimeout(release, CONV_LOCK_HOLD));
      }).catch(refused);
    } catch (e) {
      refused();
    }
  });
}

// a stored text (null: none) -> a short digest of it (FNV-1a over its UTF-16 units, and its length)
function convDigest(text) {
  if (text === null) return "none";
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0).toString(16) + "." + text.length;
}

// this tab just wrote ``text`` under ``id``'s key (null: removed it), holding its lock, as write ``seq`` (convFresh's
// next) -> a Web Lock named after that write (its number and the text's digest) held CONV_MARK_HOLD ms; nothing
// without Web Locks
function convMark(id, text, seq) {
  const locks = typeof navigator !== "undefined" ? navigator.locks : undefined;
  if (!locks || typeof locks.request !== "function" || !seq) return;
  const name = convKey(id) + "#" + String(seq).padStart(12, "0") + "#" + convDigest(text);
  try {
    locks.request(name, { mode: "shared" }, () => new Promise((r) => setTimeout(r, CONV_MARK_HOLD))).catch(() => {});
  } catch (e) { /* no mark: the lock's hold alone, as before */ }
}

// holding ``id``'s lock, before its check and write: the marks of its writes (convMark; numbered in the order the
// writers held the lock, whatever their tabs' clocks) -> while this tab's storage shows the text of an older mark
// than the newest (a write that has not reached this tab yet), waited for (a storage event or a 50 ms poll, at most
// CONV_FRESH_WAIT ms; a text no mark names, such as a write whose tab has closed since, is not waited on) -> the
// number the next write marks itself with (0: no Web Locks query)
async function convFresh(id) {
  const locks = typeof navigator !== "undefined" ? navigator.locks : undefined;
  if (!locks || typeof locks.query !== "function") return 0;
  const state = await locks.query();
  const prefix = convKey(id) + "#";
  const form = /^(\d{12})#(none|[0-9a-f]+\.\d+)$/;  // (another conversation's id may go on with '#')
  const marks = ((state && state.held) || []).map((l) => (l && l.name) || "").filter((n) => n.startsWith(prefix))
    .map((n) => form.exec(n.slice(prefix.length))).filter(Boolean)
    .map((m) => ({ seq: Number(m[1]), digest: m[2] })).sort((a, b) => a.seq - b.seq);
  if (!marks.length) return 1;
  const newest = marks[marks.length - 1];
  const older = new Set(marks.filter((m) => m.digest !== newest.digest).map((m) => m.digest));
  const until = Date.now() + CONV_FRESH_WAIT;
  for (;;) {
    const now = convStoredText(id);
    if (now === undefined || !older.has(convDigest(now)) || Date.now() >= until) return newest.seq + 1;
    await new Promise((r) => {
      const seen = (e) => { if (e.key === convKey(id) || e.key === null) done(); };
      const timer = setTimeout(() => done(), 50);
      function done() { clearTimeout(timer); window.removeEventListener("storage", seen); r(); }
      window.addEventListener("storage", seen);
    });
  }
}

// a conversation -> written under its own key; ``base``: the text this tab last read there or wrote (convBase; null:
// none). The key holding something else (another tab saved a newer version since, or it cannot be read): nothing is
// written, "changed" (the page then keeps its version as a new conversation). The key empty (a new conversation,
// or one deleted in another tab) or holding ``base``: written, "saved". Storage that throws (blocked, full):
// "failed", convStore.failed says why (until no conversation is left unsaved), the conversation kept in memory
// (convStore.unsaved) until a later save of it works; no other conversation is removed to make room.
// The check and the write hold the conversation's lock (convLocked). convStore.list read again. -> a promise of
// "saved", "changed" or "failed"
function convSave(conv, base) {
  return convLocked(conv.id, (next) => convSaveNow(conv, base, next));
}

// convSave's check and write, at once
function convSaveNow(conv, base, next = 0) {
  const now = convStoredText(conv.id);
  if (now !== undefined && now !== null && now !== base) {
    convLoad();
    return "changed";
  }
  const raw = JSON.stringify(conv);
  try {
    localStorage.setItem(convKey(conv.id), raw);
  } catch (e) {
    convStore.failed = e && (e.name === "QuotaExceededError" || e.code === 22) ? "full" : "blocked";
    convStore.unsaved.set(conv.id, conv);
    convBases.set(conv, now === undefined ? base : now);
    convLoad();
    return "failed";
  }
  convMark(conv.id, raw, next);
  convStore.unsaved.delete(conv.id);
  if (!convStore.unsaved.size) convStore.failed = "";  // all kept again
  convStore.cache.set(conv.id, { raw, conv });
  convBases.set(conv, raw);
  convLoad();
  return "saved";
}

// the conversation ``id`` -> no longer kept: its key removed and out of memory. ``base`` given (convBase): only
// while the key still holds it, so that a version another tab saved since stays. The check and the removal hold the
// conversation's lock (convLocked). -> a promise of whether it is gone
function convDelete(id, base) {
  return convLocked(id, (next) => convDeleteNow(id, base, next));
}

// convDelete's check and removal, at once
function convDeleteNow(id, base, next = 0) {
  if (convStore.unsaved.delete(id) && !convStore.unsaved.size) convStore.failed = "";  // none left unkept
  let gone = true;
  const now = convStoredText(id);
  if (now !== undefined && now !== null) {
    if (base === undefined || now === base) {
      try {
        localStorage.removeItem(convKey(id));
        convMark(id, null, next);
      } catch (e) { gone = false; }
    } else {
      gone = false;
    }
  }
  convLoad();
  return gone;
}

// the conversation ``id`` listed -> it, or null
function convGet(id) {
  return convStore.list.find((c) => c.id === id) || null;
}

// the conversations of earlier versions (CONV_OLD_KEY: one list of them all) -> each under its own key (an id twice,
// or one already stored: the newer kept), what could not be read (the entries, or the text when it is not a list)
// kept as it was under CONV_UNREADABLE_KEY, then the old key removed; the "current" conversation earlier versions
// kept for all tabs removed. Storage failing meanwhile: what was written taken back, the old key left as it was
// (moved at the next load), its conversations kept in memory. -> how many entries could not be read
function convMigrate() {
  let raw;
  try {
    localStorage.removeItem(CONV_CURRENT_KEY);
    raw = localStorage.getItem(CONV_OLD_KEY);
  } catch (e) { return 0; }
  if (raw === null) return 0;
  let parsed;
  try { parsed = JSON.parse(raw); } catch (e) { parsed = undefined; }
  const convs = new Map();  // id -> the newest conversation of that id
  const entries = new Map();  // id -> the entry it was read from
  const bad = [];  // the entries left as they were
  for (const v of Array.isArray(parsed) ? parsed : []) {
    const conv = convFromStored(v);
    const same = conv && convs.get(conv.id);
    if (!conv || (same && same.updated >= conv.updated)) {
      bad.push(v);
    } else {
      if (same) bad.push(entries.get(conv.id));
      convs.set(conv.id, conv);
      entries.set(conv.id, v);
    }
  }
  const move = [];  // the conversations to write: not stored yet, or newer than the one stored
  try {
    for (const conv of convs.values()) {
      const there = localStorage.getItem(convKey(conv.id));
      const stored = there === null ? null : convParse(conv.id, there);
      if (there === null || (stored && stored.updated < conv.updated)) move.push(conv);
      else if (!stored) bad.push(entries.get(conv.id));  // its key cannot be read: both left as they are
    }
  } catch (e) { return 0; }
  const unreadable = !Array.isArray(parsed) ? raw : bad.length ? JSON.stringify(bad) : null;
  const written = [];
  try {
    localStorage.removeItem(CONV_OLD_KEY);  // first: its room
    if (unreadable !== null) {
      let key = CONV_UNREADABLE_KEY;
      if (localStorage.getItem(key) !== null) key += "." + Date.now();
      localStorage.setItem(key, unreadable);
      written.push(key);
    }
    for (const conv of move) {
      localStorage.setItem(convKey(conv.id), JSON.stringify(conv));
      written.push(convKey(conv.id));
    }
  } catch (e) {
    try {
      for (const key of written) localStorage.removeItem(key);
      localStorage.setItem(CONV_OLD_KEY, raw);
    } catch (e2) { /* storage gone: nothing more to do */ }
    convStore.failed = e && (e.name === "QuotaExceededError" || e.code === 22) ? "full" : "blocked";
    for (const conv of convs.values()) convStore.unsaved.set(conv.id, conv);
    return 0;
  }
  return Array.isArray(parsed) ? bad.length : 1;
}

// a new conversation's id (time and chance: crypto.randomUUID needs a secure context, which plain http is not)
function convNewId() {
  return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 10);
}

// the conversation this tab shows, kept (sessionStorage: this tab's own) so that a reload shows it again (null: a
// new one)
function convSetCurrent(id) {
  try { sessionStorage.setItem(CONV_CURRENT_KEY, id || ""); } catch (e) { /* kept in memory: the page's own state */ }
}

// the id of the conversation this tab showed last: "" for a new one, null when it showed none yet (a new tab) or
// storage is blocked
function convCurrentId() {
  try { return sessionStorage.getItem(CONV_CURRENT_KEY); } catch (e) { return null; }
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
