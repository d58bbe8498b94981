// The chat page's markdown: a message's text -> DOM nodes, a small subset of CommonMark and GFM built only with
// createElement, text nodes and, on links, an href whose URL was checked (http:, https:, mailto:). Nothing in the text
// is ever parsed as HTML: markup in it shows as the characters it is.
// Blocks: ``` (or ~~~) fenced code, code indented 4 spaces (or a tab; not right under a paragraph's line, which it
// continues), # headings and setext headings (a line underlined with === or ---), - * + and 1. lists (nested; an
// item's indented lines are blocks of their own: code, tables, paragraphs; blank lines between items keep one list),
// task items (- [ ] and - [x]: a disabled checkbox), > blockquotes, --- rules, GFM pipe tables, link reference
// definitions ([label]: url "title", anywhere in the text: not shown); other lines stay text with their line breaks
// (the bubble is white-space: pre-wrap). Inline: `code`, **bold** and __bold__, *italic* and _italic_ (an underscore
// inside a word is a letter: snake_case stays as it is), ~~strike~~, [text](url "title"), reference links
// ([text][label], [label][], [label]), ![alt](url) (a link labelled with its alt text: no image is loaded),
// <https://...> and <user@host> autolinks, bare http(s):// and www. URLs (GFM's autolinks), and character references
// (&amp; &lt; &#39; ...: the character, as text).
// The text's line breaks stay in the nodes' text, so textContent is the text less the markers: the break after a
// block goes inside it, at its end, where it draws nothing (a trailing line break makes no line in pre-wrap, and the
// code block's box and lists are white-space: normal).
// Time: every step is linear in the text's length (no regex here backtracks over more than what it then consumes or
// skips, and code spans are paired by hand), so a model stuck repeating one character never freezes the page; a line
// longer than MD_LONG_LINE characters is shown as plain text all the same.
// A streamed text (mdStream) is rendered in two parts: its blocks that no text added at its end can change any more,
// rendered once and kept, and the rest, rendered again at each call; the result is the one renderMarkdown gives.
"use strict";

const MD_LONG_LINE = 20000;
const MD_MAX_DEPTH = 4;  // lists and blockquotes nested deeper than this stay text
const MD_FENCE = /^ {0,3}(`{3,}|~{3,})(.*)$/;
// an ATX heading: 1 to 6 #, then a space and its text (its closing #s are cut by mdHeadingText, not by a regex: a lazy
// text against an optional closing group backtracks quadratically over a run of spaces)
const MD_HEADING = /^ {0,3}(#{1,6})[ \t]+(\S.*)$/;
// a setext heading's underline: = (level 1) or at least three - (level 2; shorter ones are still being streamed, or a
// list's marker), no spaces between them
const MD_SETEXT = /^ {0,3}(=+|-{3,})[ \t]*$/;
// a list item: its indent, its marker (a bullet or a number and . or )), the spaces after it, its text
const MD_ITEM = /^( *)([-*+]|\d{1,9}[.)])([ \t]+)(\S.*)$/;
const MD_QUOTE = /^ {0,3}> ?(.*)$/;
const MD_TASK = /^\[([ xX])\][ \t]+(?=\S)/;  // a task item's box at the start of its text: [ ], [x] or [X]
const MD_PIPE = /(?<!\\)\|/;  // a pipe not escaped (\| is a pipe in a cell's text)
const MD_DELIM_CELL = /^:?-+:?$/;  // a delimiter row's cell, trimmed: dashes, a colon at either end for its alignment
const MD_CODE_MARK = "\uE000";  // stands in mdInline's text for a code span (or for this character where it was)
// inline, in the text with its code spans replaced by MD_CODE_MARK (mdCodeSpans); each alternative stops at the first
// character that can neither be in it nor close it, so that trying it from every position costs linear time (a
// reference whose label is not defined is tried again one character on: its scan stopped at the first bracket):
// [text](dest "title") or ![alt](...) (img, text, adest: <dest>, dest: with balanced (parentheses), one level deep,
// t1 and t2: a "title" or 'title'), a reference [text][label], [label][] or [label] (rimg, rtext, rlabel), **bold**
// (no ** inside), __bold__ (no __ inside, not inside a word), *italic* (no * inside), _italic_ (not inside a word;
// underscores inside words in it are letters), ~~strike~~ (no ~~ inside), <scheme:...> autolink, <user@host> email
// autolink (CommonMark's address), a bare http(s):// or www. URL at the start, after a space or after one of * _ ~ (
// (GFM's rule); none of a URL, a destination, a label or a title holds a code span
const MD_INLINE = new RegExp([
  "(?<img>!?)\\[(?<text>[^\\[\\]\\n]+)\\]\\([ \\t]*(?:<(?<adest>[^<>\\n\\uE000]*)>|" +
    "(?<dest>(?:[^()\\s\\uE000]|\\([^()\\s\\uE000]*\\))+))" +
    "(?:[ \\t]+(?:\"(?<t1>[^\"\\n\\uE000]*)\"|'(?<t2>[^'\\n\\uE000]*)'))?[ \\t]*\\)",
  "(?<rimg>!?)\\[(?<rtext>[^\\[\\]\\n]+)\\](?:\\[(?<rlabel>[^\\[\\]\\n\\uE000]*)\\])?",
  "\\*\\*(?=\\S)(?<strong>(?:[^*\\n]|\\*(?!\\*))*?\\S)\\*\\*(?!\\*)",
  "(?<![\\p{L}\\p{N}_\\\\])__(?=[^\\s_])(?<ustrong>(?:[^_\\n]|_(?!_))*?[^\\s_])__(?![\\p{L}\\p{N}_])",
  "\\*(?=[^\\s*])(?<em>[^*\\n]*?[^\\s*])\\*",
  "(?<![\\p{L}\\p{N}_\\\\])_(?=[^\\s_])(?<uem>(?:[^_\\n]|(?<=[\\p{L}\\p{N}])_(?=[\\p{L}\\p{N}]))*?[^\\s_])_" +
    "(?![\\p{L}\\p{N}_])",
  "~~(?=[^\\s~])(?<del>(?:[^~\\n]|~(?!~))*?[^\\s~])~~(?!~)",
  "<(?<auto>(?:https?|mailto):[^\\s<>\\uE000]+)>",
  "<(?<email>[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?" +
    "(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*)>",
  "(?<=^|[\\s*_~(])(?<bare>(?:https?://(?:[\\p{L}\\p{N}]|\\[)|www\\.[\\p{L}\\p{N}])[^\\s<>`\\uE000]*)",
].join("|"), "gu");
const MD_PLAIN = /^[^`*_[~&<\uE000]*$/;  // a line with no inline marker: one string, nothing to parse (unless a URL)
const MD_URL_END = /[.,:;!?*_~'"]/;  // trailing characters that end a sentence, not a bare URL
// a character reference: &#decimal; &#xhex; or &name; (the names in MD_ENTITIES; others stay as they are)
const MD_ENTITY = /&(?:#([0-9]{1,7})|#[xX]([0-9a-fA-F]{1,6})|([A-Za-z][A-Za-z0-9]{1,15}));/g;
const MD_ENTITIES = {
  amp: "&", lt: "<", gt: ">", quot: "\"", apos: "'", nbsp: "\u00a0", copy: "\u00a9", reg: "\u00ae",
  trade: "\u2122", hellip: "\u2026", mdash: "\u2014", ndash: "\u2013", laquo: "\u00ab", raquo: "\u00bb",
  lsquo: "\u2018", rsquo: "\u2019", ldquo: "\u201c", rdquo: "\u201d", middot: "\u00b7", bull: "\u2022",
  times: "\u00d7", divide: "\u00f7", deg: "\u00b0", plusmn: "\u00b1", le: "\u2264", ge: "\u2265", ne: "\u2260",
  rarr: "\u2192", larr: "\u2190", uarr: "\u2191", darr: "\u2193", harr: "\u2194", euro: "\u20ac",
  pound: "\u00a3", yen: "\u00a5", cent: "\u00a2", sect: "\u00a7", para: "\u00b6", shy: "\u00ad",
};
const MD_LINK_SCHEMES = ["http:", "https:", "mailto:"];
// a link reference definition's line: up to 3 spaces, [label]: then the destination (<...> or no spaces), then
// maybe a "title", 'title' or (title), nothing after it; each part stops at the first character that cannot be in it
const MD_LINK_DEF = new RegExp("^ {0,3}\\[([^\\[\\]\\n]+)\\]:[ \\t]*(?:<([^<>\\n]*)>|(\\S+))" +
  "(?:[ \\t]+(?:\"([^\"\\n]*)\"|'([^'\\n]*)'|\\(([^()\\n]*)\\)))?[ \\t]*$");

// the link reference definitions of the text being rendered (normalized label -> {href, title}: mdScanDefs), and the
// labels looked up in them meanwhile (a Set while mdStream renders a part it keeps, else null)
let mdDefs = new Map();
let mdUsed = null;

// ``text`` as the children of ``el``; ``onCode(box, code)`` may add to each code block's box (the page's copy button)
function renderMarkdown(el, text, onCode) {
  const lines = text.split("\n");
  mdDefs = text.includes("]:") ? mdScanDefs(lines, mdScanStart()).defs : new Map();
  el.replaceChildren(mdFragment(mdBlocks(lines, 0, onCode)));
}

// a text that grows at its end (a streamed answer) rendered into ``el`` -> {render(text)}: each call shows the text as
// renderMarkdown would (the same DOM), rendering again only its tail. The blocks before the last blank line that is
// no block's (at the top level: not in a list, a fence, a quote or indented code) are kept once the line after it is
// complete (and is no definition): nothing added to the text can change them (a list ends there for good, a
// paragraph is closed). Kept blocks that looked up a reference label are rendered again when its definition changes;
// a text that does not start with the last one starts again
function mdStream(el, onCode) {
  const s = { text: "", chars: 0, nodes: 0, scan: mdScanStart(), used: new Map() };
  const reset = () => {
    Object.assign(s, { text: "", chars: 0, nodes: 0, scan: mdScanStart(), used: new Map() });
    el.replaceChildren();
  };
  const render = (text) => {
    if (!text.startsWith(s.text)) reset();
    s.text = text;
    const lines = text.slice(s.chars).split("\n");  // the tail: from the first line not kept
    const defs = mdScanDefs(lines, s.scan).defs;
    for (const [label, sig] of s.used) {
      if (mdDefSig(defs.get(label)) !== sig) {  // a kept block's reference changed: everything again
        reset();
        render(text);
        return;
      }
    }
    mdDefs = defs;
    const spans = [];
    let nodes = mdBlocks(lines, 0, onCode, false, false, spans);
    const keep = mdStableLines(lines, spans);
    if (keep) {  // its first ``keep`` lines can change no more: rendered once more to be kept, the rest again
      const used = new Set();
      let kept;
      mdUsed = used;
      try { kept = mdBlocks(lines.slice(0, keep), 0, onCode, false, true); } finally { mdUsed = null; }
      for (const label of used) s.used.set(label, mdDefSig(defs.get(label)));
      while (el.childNodes.length > s.nodes) el.lastChild.remove();
      el.append(mdFragment(kept));
      s.nodes += kept.length;
      s.scan = mdScanDefs(lines.slice(0, keep), s.scan);
      for (let k = 0; k < keep; k++) s.chars += lines[k].length + 1;
      nodes = mdBlocks(lines.slice(keep), 0, onCode);
    }
    while (el.childNodes.length > s.nodes) el.lastChild.remove();
    el.append(mdFragment(nodes));
  };
  return { render };
}

// a stream's tail and its top-level items (mdBlocks' spans: [line, blank], one for each line it looked at first,
// in order) -> how many of its first lines can be kept: those up to the first non-blank line after the last blank
// line that is an item of its own, when that line is complete (not the last) and no definition (which makes no item:
// the break after what comes before would go); 0: none. Read backwards once (a run of blank lines is not read again
// for each of them)
function mdStableLines(lines, spans) {
  let next = lines.length;  // the first line of the last non-blank item seen (the first after those before)
  for (let k = spans.length - 1; k >= 0; k--) {
    const [at, blank] = spans[k];
    if (!blank) {
      next = at;
    } else if (next < lines.length - 1 && !MD_LINK_DEF.test(lines[next])) {
      return next;
    }
  }
  return 0;
}

// a definition found (or none: undefined) -> a string that changes when it does
function mdDefSig(def) {
  return def ? def.href + "\n" + def.title : "";
}

// the state of mdScanDefs before a text's first line
function mdScanStart() {
  return { fence: null, defs: new Map() };
}

// lines and the state before them ({fence: the fence open, defs}) -> the state after them (a new object; the first
// definition of a label wins): the definitions of lines outside fenced code (at any indent, inside > quotes), each
// indented at most 3 spaces, of an http(s) or mailto URL (another URL's is no definition: its line stays text)
function mdScanDefs(lines, state) {
  let fence = state.fence;
  let defs = state.defs;
  for (const line of lines) {
    if (line.length > MD_LONG_LINE) continue;
    const t = line.slice(mdQuoteMarks(line));
    if (fence) {
      fence = mdFenceOpen(t.trimStart(), fence);
      continue;
    }
    fence = mdFenceOpen(t.trimStart(), null);
    if (fence) continue;
    const def = mdDefLine(t);
    if (def && !defs.has(def.label)) {
      if (defs === state.defs) defs = new Map(defs);
      defs.set(def.label, def);
    }
  }
  return { fence, defs };
}

// a line -> where its text starts after the > of the blockquotes it is in (at most MD_MAX_DEPTH of them: deeper
// ones stay text), each after up to 3 spaces and with one space after it; counted by hand (a regex taking the rest
// of the line at each level would cost quadratic time over a run of >)
function mdQuoteMarks(line) {
  let at = 0;
  for (let depth = 0; depth < MD_MAX_DEPTH; depth++) {
    let k = at;
    while (k < line.length && k - at < 3 && line[k] === " ") k++;
    if (line[k] !== ">") break;
    at = line[k + 1] === " " ? k + 2 : k + 1;
  }
  return at;
}

// a line -> the link reference definition it is ({label: normalized, href: checked, title}), or null
function mdDefLine(line) {
  if (!line.includes("]:")) return null;
  const m = MD_LINK_DEF.exec(line);
  if (!m) return null;
  const label = mdLabel(m[1]);
  const href = label ? mdSafeUrl(mdEntities(m[2] !== undefined ? m[2] : m[3])) : null;
  if (!href) return null;
  const title = m[4] !== undefined ? m[4] : m[5] !== undefined ? m[5] : m[6];
  return { label, href, title: title ? mdEntities(title) : "" };
}

// a reference's label -> its normalized form (CommonMark: case folded, spaces collapsed, trimmed)
function mdLabel(text) {
  return text.trim().replace(/\s+/g, " ").toLowerCase();
}

// a label -> its definition in the text being rendered (undefined: none); noted in mdUsed
function mdLookup(label) {
  const key = mdLabel(label);
  if (mdUsed) mdUsed.add(key);
  return mdDefs.get(key);
}

// nodes -> a DocumentFragment holding them (appended one by one: spreading a long array into a call can overflow)
function mdFragment(nodes) {
  const frag = document.createDocumentFragment();
  for (const n of nodes) frag.append(n);
  return frag;
}

// lines -> nodes: the blocks found, the other lines as inline nodes, a "\n" between each two (inside a block when it
// comes after one); ``depth`` counts the lists and blockquotes around (deeper than MD_MAX_DEPTH they stay text);
// ``inItem``: the lines are a list item's, whose lines of text lose the spaces before them; ``more``: more items
// follow these (mdStream's kept part: the last one gets its break too); ``spans``: an array to which each item's
// [first line, whether it is a blank line] is added
function mdBlocks(lines, depth, onCode, inItem = false, more = false, spans = null) {
  const items = [];  // each: an element (a block) or an array of strings and nodes (a line of text)
  let para = 0;  // how many of the last items are the lines of a paragraph (text, not blank): a setext heading's
  let paraPipe = false;  // whether the paragraph's last line holds a pipe (a --- under it may become a table's row)
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const inPara = para;
    para = 0;
    if (spans) spans.push([i, !line.trim()]);
    let m;
    let def;
    if (line.length > MD_LONG_LINE) {
      items.push([line]);
      i++;
    } else if (!inPara && line.trim() && mdIndent(line) >= 4) {
      // indented code: to the last line indented 4 or more before a line that is not (blank lines inside it)
      let end = i + 1;
      for (let k = i + 1; k < lines.length && (!lines[k].trim() || mdIndent(lines[k]) >= 4); k++) {
        if (lines[k].trim()) end = k + 1;
      }
      items.push(mdCodeBlock(lines.slice(i, end).map(mdDedent4).join("\n"), onCode));
      i = end;
    } else if ((m = MD_FENCE.exec(line)) && !(m[1][0] === "`" && m[2].includes("`"))) {
      const close = new RegExp("^ {0,3}" + (m[1][0] === "`" ? "`" : "~") + "{" + m[1].length + ",}[ \\t]*$");
      let end = i + 1;
      while (end < lines.length && !close.test(lines[end])) end++;
      items.push(mdCodeBlock(lines.slice(i + 1, end).join("\n"), onCode));  // unclosed (still streaming): to the end
      i = end + 1;
    } else if ((m = MD_HEADING.exec(line))) {
      const h = document.createElement("h" + m[1].length);
      h.append(...mdMerge(mdInline(mdHeadingText(m[2]))));
      items.push(h);
      i++;
    } else if (inPara && (m = MD_SETEXT.exec(line)) && !(m[1][0] === "-" && paraPipe)) {
      const h = document.createElement(m[1][0] === "=" ? "h1" : "h2");
      const text = items.splice(items.length - inPara, inPara);
      text.forEach((parts, k) => { if (k) h.append("\n"); h.append(...mdMerge(parts)); });
      items.push(h);
      i++;
    } else if (mdIsRule(line)) {
      items.push(document.createElement("hr"));
      i++;
    } else if (depth < MD_MAX_DEPTH && MD_ITEM.test(line)) {
      const list = mdList(lines, i, depth, onCode);
      items.push(list.el);
      i = list.next;
    } else if (depth < MD_MAX_DEPTH && MD_QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && MD_QUOTE.test(lines[i])) inner.push(MD_QUOTE.exec(lines[i++])[1]);
      const quote = document.createElement("blockquote");
      quote.append(...mdBlocks(inner, depth + 1, onCode));
      items.push(quote);
    } else if (MD_PIPE.test(line) && i + 1 < lines.length && mdIsDelimRow(lines[i + 1]) &&
               mdCells(line).length === mdCells(lines[i + 1]).length) {
      const table = mdTable(lines, i);
      items.push(table.el);
      i = table.next;
    } else if ((def = mdDefLine(line)) && mdLookup(def.label)) {  // a definition: not shown
      i++;
    } else {
      const text = inItem ? line.trimStart() : line;
      items.push(MD_PLAIN.test(text) && !text.includes("://") && !text.includes("www.") ? [text] : mdInline(text));
      if (line.trim()) {
        para = inPara + 1;
        paraPipe = MD_PIPE.test(line);
      }
      i++;
    }
  }
  const parts = [];
  items.forEach((item, k) => {
    const after = more || k < items.length - 1;
    if (Array.isArray(item)) {
      for (const p of item) parts.push(p);
      if (after) parts.push("\n");
    } else {
      if (after) mdBreakAfter(item);
      parts.push(item);
    }
  });
  return mdMerge(parts);
}

// a line -> the columns of its indent (spaces and tabs, a tab to the next multiple of 4), counted up to 4
function mdIndent(line) {
  let col = 0;
  for (let k = 0; k < line.length && col < 4; k++) {
    if (line[k] === " ") col++;
    else if (line[k] === "\t") col += 4 - (col % 4);
    else break;
  }
  return col;
}

// a line of indented code -> the line less 4 columns of indent (a tab past them leaves its rest as spaces)
function mdDedent4(line) {
  let col = 0;
  let k = 0;
  while (k < line.length && col < 4 && (line[k] === " " || line[k] === "\t")) {
    col += line[k] === "\t" ? 4 - (col % 4) : 1;
    k++;
  }
  return " ".repeat(Math.max(0, col - 4)) + line.slice(k);
}

// an ATX heading's text after its #s -> the text without its closing sequence (a run of # after a space, or the whole
// text when it is only #s) and the spaces around it; cut by hand, in linear time
function mdHeadingText(text) {
  let t = text.trimEnd();
  let end = t.length;
  while (end > 0 && t[end - 1] === "#") end--;
  if (end === 0) return "";
  if (end < t.length && (t[end - 1] === " " || t[end - 1] === "\t")) t = t.slice(0, end).trimEnd();
  return t;
}

// a line -> whether it is a thematic break: 3 or more of one of - * _, spaces and tabs between them, indented 0 to 3
// spaces (checked by hand: a regex repeating [ \t]*\1 backtracks over long runs of spaces)
function mdIsRule(line) {
  const t = line.trimStart();
  if (line.length - t.length > 3 || !"-*_".includes(t[0] || " ")) return false;
  let n = 0;
  for (const ch of t) {
    if (ch === t[0]) n++; else if (ch !== " " && ch !== "\t") return false;
  }
  return n >= 3;
}

// a line -> whether it is a table's delimiter row: cells of dashes (a colon at either end sets the alignment) between
// pipes, the outer ones optional, at least one pipe (``---`` alone is a rule), indented 0 to 3 spaces; split by hand
function mdIsDelimRow(line) {
  if (line.length - line.trimStart().length > 3 || !line.includes("|")) return false;
  let t = line.trim();
  if (t.startsWith("|")) t = t.slice(1);
  if (t.endsWith("|")) t = t.slice(0, -1);
  return t.split("|").every((c) => MD_DELIM_CELL.test(c.trim()));
}

// strings and nodes -> nodes, each run of strings as one text node
function mdMerge(parts) {
  const nodes = [];
  let text = "";
  for (const p of parts) {
    if (typeof p === "string") { text += p; continue; }
    if (text) { nodes.push(document.createTextNode(text)); text = ""; }
    nodes.push(p);
  }
  if (text) nodes.push(document.createTextNode(text));
  return nodes;
}

// the line break after a block, put at the end of its last line (a rule has none: it draws its own)
function mdBreakAfter(el) {
  if (el.tagName === "HR") return;
  if (el.classList.contains("code") || el.classList.contains("table")) {  // the box is white-space: normal
    el.append("\n");
    return;
  }
  const last = el.lastChild;
  if (last && last.nodeType === Node.ELEMENT_NODE && /^(UL|OL|LI|BLOCKQUOTE|DIV|HR|H[1-6])$/.test(last.tagName)) {
    mdBreakAfter(last);
  } else {
    el.append("\n");
  }
}

// a fenced block's code -> div.code > pre > code, as text; ``onCode`` adds to it
function mdCodeBlock(text, onCode) {
  const box = document.createElement("div");
  box.className = "code";
  const pre = document.createElement("pre");
  const code = document.createElement("code");
  code.textContent = text;
  pre.append(code);
  box.append(pre);
  if (onCode) onCode(box, code);
  return box;
}

// the list starting at lines[start] -> {el: <ul> or <ol>, next: the index of the first line after it}. Its items
// start at the lines with the same kind of marker (bullet or number) indented less than 2 spaces past the first one's;
// an item goes on over the lines indented at least as far as its text (or 2 spaces past its marker), that indent
// removed, and over every line of a fenced block opened in it; blank lines go inside it when more of it, or another
// item, follows. Its lines are blocks of their own (mdBlocks, one level deeper): text, code, tables, nested lists. A
// task item ([ ] or [x] first) gets a disabled checkbox and the class "task"
function mdList(lines, start, depth, onCode) {
  const first = MD_ITEM.exec(lines[start]);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const list = document.createElement(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) list.start = parseInt(first[2], 10);
  let li = null;
  let i = start;
  while (i < lines.length) {
    const m = MD_ITEM.exec(lines[i]);
    if (!m || m[1].length < indent || m[1].length >= indent + 2 || /\d/.test(m[2]) !== ordered) break;
    const spaces = m[3].length <= 4 ? m[3].length : 1;  // 5 or more: the text starts after one (CommonMark)
    const col = m[1].length + m[2].length + spaces;  // where its text starts: the indent its lines lose
    const need = Math.min(col, indent + 2);  // the indent a line needs to go on in it (2 past the marker will do)
    const body = [m[4]];
    let fence = mdFenceOpen(m[4], null);
    i++;
    while (i < lines.length) {
      const line = lines[i];
      const lead = line.length - line.trimStart().length;
      if (fence) {  // inside a fenced block: every line is the item's, to its closing fence
        body.push(line.slice(Math.min(lead, col)));
        fence = mdFenceOpen(body[body.length - 1], fence);
        i++;
        continue;
      }
      if (!line.trim()) {  // blank: the item's when more of it or another item follows
        let next = i + 1;
        while (next < lines.length && !lines[next].trim()) next++;
        if (next === lines.length) break;
        const after = lines[next];
        const n = MD_ITEM.exec(after);
        const goesOn = after.length - after.trimStart().length >= need;
        const sibling = n && n[1].length >= indent && n[1].length < indent + 2 && /\d/.test(n[2]) === ordered;
        if (!goesOn && !sibling) break;
        while (i < next) { body.push(""); i++; }
        continue;
      }
      if (lead < need) break;  // not indented: the next item, or the end of the list
      body.push(line.slice(Math.min(lead, col)));
      fence = mdFenceOpen(body[body.length - 1], null);
      i++;
    }
    while (body.length > 1 && !body[body.length - 1].trim()) body.pop();
    if (li) mdBreakAfter(li);
    li = document.createElement("li");
    const task = MD_TASK.exec(body[0]);
    if (task) {
      const box = document.createElement("input");
      box.type = "checkbox";
      box.disabled = true;
      box.checked = task[1] !== " ";
      li.className = "task";
      li.append(box, " ");
      body[0] = body[0].slice(task[0].length);
    }
    li.append(...mdBlocks(body, depth + 1, onCode, true));
    list.append(li);
  }
  return { el: list, next: i };
}

// a line of a list item and the fence open before it (null: none) -> the fence open after it: {mark, length}
function mdFenceOpen(line, fence) {
  if (fence) {
    const t = line.trimStart();
    const n = t.length - t.replace(fence.mark === "`" ? /^`+/ : /^~+/, "").length;
    return n >= fence.length && !t.slice(n).trim() && line.length - t.length <= 3 ? null : fence;
  }
  const m = MD_FENCE.exec(line);
  return m && !(m[1][0] === "`" && m[2].includes("`")) ? { mark: m[1][0], length: m[1].length } : null;
}

// the table whose header row is lines[start] (its delimiter row next: the same number of cells) -> {el: div.table
// (the box that scrolls sideways) > table, next: the index of the first line after it}. Its body rows go on to a
// blank line or the start of another block; a row with fewer cells is padded with empty ones, extra cells are
// dropped (as GitHub does). A column's alignment (:-- left, :-: center, --: right) is its cells' class align-*.
// A line break comes before each body row (drawn as nothing: the table is white-space: normal); the one after the
// last row is mdBreakAfter's
function mdTable(lines, start) {
  const aligns = mdCells(lines[start + 1]).map((c) => {
    const left = c.startsWith(":");
    const right = c.endsWith(":");
    return left && right ? "center" : right ? "right" : left ? "left" : "";
  });
  const row = (line, tag) => {
    const tr = document.createElement("tr");
    const cells = mdCells(line);
    aligns.forEach((align, k) => {
      const cell = document.createElement(tag);
      if (align) cell.className = "align-" + align;
      if (k < cells.length) cell.append(...mdMerge(mdInline(cells[k])));
      tr.append(cell);
    });
    return tr;
  };
  const head = document.createElement("thead");
  head.append(row(lines[start], "th"));
  const table = document.createElement("table");
  table.append(head);
  let i = start + 2;
  const body = document.createElement("tbody");
  while (i < lines.length && lines[i].trim() && lines[i].length <= MD_LONG_LINE && !MD_FENCE.test(lines[i]) &&
         !MD_HEADING.test(lines[i]) && !mdIsRule(lines[i]) && !MD_ITEM.test(lines[i]) && !MD_QUOTE.test(lines[i])) {
    body.append("\n", row(lines[i++], "td"));
  }
  if (body.firstChild) table.append(body);
  const box = document.createElement("div");
  box.className = "table";
  box.append(table);
  return { el: box, next: i };
}

// a table row's line -> its cells' text, trimmed: split at the pipes not escaped (the outer ones optional), \| made
// a pipe (also inside `code`, as GitHub does)
function mdCells(line) {
  let t = line.trim();
  if (t.startsWith("|")) t = t.slice(1);
  if (t.endsWith("|") && !t.endsWith("\\|")) t = t.slice(0, -1);
  return t.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
}

// a line's text -> strings and inline elements: `code` as <code> (its text as it is), **bold** and __bold__ as
// <strong>, *italic* and _italic_ as <em>, ~~strike~~ as <del>, [text](url "title"), ![alt](url), references to a
// definition of the text (mdDefs) and <url> as <a> for http:, https: and mailto: URLs (any other link stays text),
// <user@host> as a mailto: <a>, a bare http(s):// or www. URL as <a> (mdBareUrl), character references as their
// characters
function mdInline(text) {
  const spans = mdCodeSpans(text);
  return mdInlineRun(spans.text, false, { tokens: spans.tokens, next: 0 });
}

// a line -> {text: the line with each code span, and each MD_CODE_MARK already in it, replaced by MD_CODE_MARK,
// tokens: for each mark in order, the <code> or the character it stands for}. A code span opens at a run of backticks
// and closes at the next run of as many (CommonMark; a run with none after it is text); its text loses one space at
// each end when it has one at both and is not only spaces. Runs are paired by hand in linear time (a regex's (`+)
// backtracks quadratically over a long run of backticks)
function mdCodeSpans(line) {
  const runs = [];  // [start, length] of each run of backticks
  for (let k = 0; k < line.length; k++) {
    if (line[k] !== "`") continue;
    const s = k;
    while (k + 1 < line.length && line[k + 1] === "`") k++;
    runs.push([s, k - s + 1]);
  }
  const byLength = new Map();  // a run's length -> the indexes of the runs that long, in order, and a cursor
  runs.forEach(([, n], r) => {
    if (!byLength.has(n)) byLength.set(n, { at: 0, runs: [] });
    byLength.get(n).runs.push(r);
  });
  const tokens = [];
  let out = "";
  let at = 0;  // the end of what is in ``out``
  const plain = (s) => {
    const bits = s.split(MD_CODE_MARK);
    for (let k = 1; k < bits.length; k++) tokens.push(MD_CODE_MARK);
    return bits.join(MD_CODE_MARK);
  };
  for (let r = 0; r < runs.length; r++) {
    const [s, n] = runs[r];
    const same = byLength.get(n);
    while (same.at < same.runs.length && same.runs[same.at] <= r) same.at++;
    if (same.at === same.runs.length) continue;  // no closing run: text
    const close = same.runs[same.at];
    let body = line.slice(s + n, runs[close][0]);
    if (body.length > 2 && body[0] === " " && body[body.length - 1] === " " && body.trim()) body = body.slice(1, -1);
    const code = document.createElement("code");
    code.textContent = body;
    out += plain(line.slice(at, s)) + MD_CODE_MARK;
    tokens.push(code);
    at = runs[close][0] + n;
    r = close;
  }
  return { text: out + plain(line.slice(at)), tokens };
}

// text (code spans as marks) -> strings and inline elements (mdInline's); ``inLink``: inside a link's text, where
// URLs stay text; ``ctx``: {tokens, next: the index of the next mark's token} (the marks are met in order)
function mdInlineRun(text, inLink, ctx) {
  const parts = [];
  let at = 0;
  const plain = (s) => { for (const p of mdText(s, ctx)) parts.push(p); };
  const re = new RegExp(MD_INLINE);  // its own lastIndex: the runs nest
  for (let m = re.exec(text); m; m = re.exec(text)) {
    const g = m.groups;
    if ((g.auto !== undefined || g.email !== undefined || g.bare !== undefined) && inLink) continue;  // text
    let def;
    if (g.rtext !== undefined) {
      def = mdLookup(g.rlabel ? g.rlabel : g.rtext);  // [text][label]; [label][] and [label]: the text is the label
      if (!def) {  // not a reference: its brackets are text, what is inside them is tried one character on
        re.lastIndex = m.index + 1;
        continue;
      }
    }
    if (m.index > at) plain(text.slice(at, m.index));
    at = m.index + m[0].length;
    if (g.text !== undefined || def) {
      const href = def ? def.href : mdSafeUrl(mdEntities(g.adest !== undefined ? g.adest : g.dest));
      if (!href) { plain(m[0]); continue; }
      const inner = def ? g.rtext : g.text;
      const label = (def ? g.rimg : g.img) ? mdText(inner, ctx) : mdInlineRun(inner, true, ctx);  // an image: alt
      const a = mdLink(href, mdMerge(label));
      const title = def ? def.title : mdEntities(g.t1 !== undefined ? g.t1 : g.t2 !== undefined ? g.t2 : "");
      if (title) a.title = title;
      parts.push(a);
    } else if (g.auto !== undefined) {
      const href = mdSafeUrl(g.auto);
      parts.push(href ? mdLink(href, [document.createTextNode(g.auto)]) : m[0]);
    } else if (g.email !== undefined) {
      const href = mdSafeUrl("mailto:" + g.email);
      parts.push(href ? mdLink(href, [document.createTextNode(g.email)]) : m[0]);
    } else if (g.bare !== undefined) {
      for (const p of mdBareUrl(g.bare)) parts.push(p);
    } else {
      const strong = g.strong !== undefined ? g.strong : g.ustrong;
      const em = g.em !== undefined ? g.em : g.uem;
      const el = document.createElement(strong !== undefined ? "strong" : em !== undefined ? "em" : "del");
      el.append(...mdMerge(mdInlineRun(strong !== undefined ? strong : em !== undefined ? em : g.del, inLink, ctx)));
      parts.push(el);
    }
  }
  if (at < text.length) plain(text.slice(at));
  return parts;
}

// text between inline elements -> strings (character references decoded) and the tokens of the marks in it
function mdText(s, ctx) {
  const bits = s.split(MD_CODE_MARK);
  const parts = [mdEntities(bits[0])];
  for (let k = 1; k < bits.length; k++) parts.push(ctx.tokens[ctx.next++], mdEntities(bits[k]));
  return parts.filter((p) => p !== "");
}

// text -> the text with its character references (&amp; &#39; &#x2014; ...) as their characters (a code point 0, a
// surrogate or past U+10FFFF as U+FFFD, as CommonMark does); an unknown name stays as written
function mdEntities(s) {
  if (!s.includes("&")) return s;
  return s.replace(MD_ENTITY, (all, dec, hex, name) => {
    if (name !== undefined) return Object.hasOwn(MD_ENTITIES, name) ? MD_ENTITIES[name] : all;
    const cp = dec !== undefined ? parseInt(dec, 10) : parseInt(hex, 16);
    return cp > 0 && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff) ? String.fromCodePoint(cp) : "\uFFFD";
  });
}

// a bare URL as found (up to a space, <, > or `) -> [<a>, the characters after it that are not part of it] as GitHub
// ends it: trailing . , : ; ! ? * _ ~ ' " and a ) or ] without its ( or [ left out; [the text] when it is no http(s)
// URL. A www. URL links to http://www...
function mdBareUrl(found) {
  let end = found.length;
  const count = { "(": 0, ")": 0, "[": 0, "]": 0 };
  for (const ch of found) {
    if (ch in count) count[ch]++;
  }
  while (end > 0) {
    const ch = found[end - 1];
    if (MD_URL_END.test(ch)) {
      end--;
    } else if (ch === ")" && count[")"] > count["("]) {
      end--;
      count[")"]--;
    } else if (ch === "]" && count["]"] > count["["]) {
      end--;
      count["]"]--;
    } else {
      break;
    }
  }
  const url = found.slice(0, end);
  const full = url.startsWith("www.") ? "http://" + url : url;
  const href = /^https?:\/\/./.test(full) && !/^http:\/\/www\.$/.test(full) ? mdSafeUrl(full) : null;
  if (!href) return [found];
  return [mdLink(href, [document.createTextNode(url)]), found.slice(end)].filter((p) => p !== "");
}

// an href checked by mdSafeUrl and the link's nodes -> <a> opening in a new tab, without the opener or a referrer
function mdLink(href, nodes) {
  const a = document.createElement("a");
  a.href = href;
  a.rel = "noopener noreferrer";
  a.target = "_blank";
  a.append(...nodes);
  return a;
}

// a link's URL -> itself (as the URL parser writes it) when absolute and http:, https: or mailto:, else null
function mdSafeUrl(url) {
  try {
    const u = new URL(url);
    return MD_LINK_SCHEMES.includes(u.protocol) ? u.href : null;
  } catch (e) {
    return null;  // relative, or not a URL
  }
}
