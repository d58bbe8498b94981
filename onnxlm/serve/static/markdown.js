// The chat page's markdown: a message's text -> DOM nodes, a small subset of CommonMark built only with
// createElement, text nodes and, on links, an href whose URL was checked (http:, https:, mailto:). Nothing in the text
// is ever parsed as HTML: markup in it shows as the characters it is.
// Blocks: ``` (or ~~~) fenced code, # headings, - * + and 1. lists (one nested level), > blockquotes, --- rules, GFM
// pipe tables; other lines stay text with their line breaks (the bubble is white-space: pre-wrap). Inline: `code`,
// **bold**, *italic*, _italic_ (not inside words), [text](url), bare http(s):// URLs (GFM's autolinks).
// The text's line breaks stay in the nodes' text, so textContent is the text less the markers: the break after a
// block goes inside it, at its end, where it draws nothing (a trailing line break makes no line in pre-wrap, and the
// code block's box and lists are white-space: normal).
"use strict";

const MD_FENCE = /^ {0,3}(`{3,}|~{3,})(.*)$/;
const MD_HEADING = /^ {0,3}(#{1,6})[ \t]+(\S.*?)(?:[ \t]+#+)?[ \t]*$/;
const MD_RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const MD_ITEM = /^( *)([-*+]|\d{1,9}[.)])[ \t]+(\S.*)$/;
const MD_QUOTE = /^ {0,3}> ?(.*)$/;
// a table's delimiter row: a cell of dashes (a colon at either end sets its alignment) between pipes, the outer ones
// optional; the row needs one pipe at least (``---`` alone is a rule)
const MD_TABLE_DELIM = /^ {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;
const MD_PIPE = /(?<!\\)\|/;  // a pipe not escaped (\| is a pipe in a cell's text)
// inline: `code` (any run of backticks), [text](url), **bold**, *italic*, _italic_ (not inside a word), a bare
// http(s):// URL at the start, after a space or after one of * _ ~ ( (GFM's rule); a code span or bold text longer
// than 1000 characters is left as text, so that a long line never costs more than linear time
const MD_INLINE = new RegExp([
  "(`+)([^`\\n](?:[^\\n]{0,1000}?[^`\\n])?)\\1(?!`)",
  "\\[([^\\[\\]\\n]+)\\]\\(([^()\\s]+)\\)",
  "\\*\\*(?=\\S)([^\\n]{0,1000}?\\S)\\*\\*(?!\\*)",
  "\\*(?=[^\\s*])([^*\\n]*?[^\\s*])\\*",
  "(?<![\\p{L}\\p{N}_\\\\])_(?=[^\\s_])([^_\\n]*?[^\\s_])_(?![\\p{L}\\p{N}_])",
  "(?<=^|[\\s*_~(])(https?://[\\p{L}\\p{N}][^\\s<>`]*)",
].join("|"), "gu");
const MD_PLAIN = /^[^`*_[]*$/;  // a line with no inline marker: one string, nothing to parse (unless it holds a URL)
const MD_URL_END = /[.,:;!?*_~'"]/;  // trailing characters that end a sentence, not a bare URL
const MD_LINK_SCHEMES = ["http:", "https:", "mailto:"];

// ``text`` as the children of ``el``; ``onCode(box, code)`` may add to each code block's box (the page's copy button)
function renderMarkdown(el, text, onCode) {
  el.replaceChildren(...mdBlocks(text.split("\n"), 0, onCode));
}

// lines -> nodes: the blocks found, the other lines as inline nodes, a "\n" between each two (inside a block when it
// comes after one); ``depth`` counts the blockquotes around (quotes deeper than 3 stay text)
function mdBlocks(lines, depth, onCode) {
  const items = [];  // each: an element (a block) or an array of strings and nodes (a line of text)
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if ((m = MD_FENCE.exec(line))) {
      const close = new RegExp("^ {0,3}" + (m[1][0] === "`" ? "`" : "~") + "{" + m[1].length + ",}[ \\t]*$");
      let end = i + 1;
      while (end < lines.length && !close.test(lines[end])) end++;
      items.push(mdCodeBlock(lines.slice(i + 1, end).join("\n"), onCode));  // unclosed (still streaming): to the end
      i = end + 1;
    } else if ((m = MD_HEADING.exec(line))) {
      const h = document.createElement("h" + m[1].length);
      h.append(...mdMerge(mdInline(m[2])));
      items.push(h);
      i++;
    } else if (MD_RULE.test(line)) {
      items.push(document.createElement("hr"));
      i++;
    } else if (MD_ITEM.test(line)) {
      const list = mdList(lines, i, 0);
      items.push(list.el);
      i = list.next;
    } else if (depth < 3 && MD_QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && MD_QUOTE.test(lines[i])) inner.push(MD_QUOTE.exec(lines[i++])[1]);
      const quote = document.createElement("blockquote");
      quote.append(...mdBlocks(inner, depth + 1, onCode));
      items.push(quote);
    } else if (MD_PIPE.test(line) && i + 1 < lines.length && MD_TABLE_DELIM.test(lines[i + 1]) &&
               MD_PIPE.test(lines[i + 1]) && mdCells(line).length === mdCells(lines[i + 1]).length) {
      const table = mdTable(lines, i);
      items.push(table.el);
      i = table.next;
    } else {
      items.push(MD_PLAIN.test(line) && !line.includes("://") ? [line] : mdInline(line));
      i++;
    }
  }
  const parts = [];
  items.forEach((item, k) => {
    const more = k < items.length - 1;
    if (Array.isArray(item)) {
      parts.push(...item);
      if (more) parts.push("\n");
    } else {
      if (more) mdBreakAfter(item);
      parts.push(item);
    }
  });
  return mdMerge(parts);
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

// the list starting at lines[start] -> {el: <ul> or <ol>, next: the index of the first line after it}. Its items are
// the lines with the same kind of marker (bullet or number); a line indented 2 or more spaces past the marker
// continues the item above (an item of a nested list when it has a marker: one level, deeper ones join it)
function mdList(lines, start, depth) {
  const first = MD_ITEM.exec(lines[start]);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const list = document.createElement(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) list.start = parseInt(first[2], 10);
  let li = null;
  let i = start;
  while (i < lines.length) {
    const line = lines[i];
    const m = MD_ITEM.exec(line);
    const lead = line.length - line.trimStart().length;
    const nested = li !== null && li.querySelector("ul, ol") === null;  // this item can still take a nested list
    if (m && m[1].length < indent) break;  // back to the list around
    if (m && (depth > 0 || m[1].length < indent + 2)) {
      if (/\d/.test(m[2]) !== ordered) break;  // another kind of list
      if (li) mdBreakAfter(li);
      li = document.createElement("li");
      li.append(...mdMerge(mdInline(m[3])));
      list.append(li);
      i++;
    } else if (m && nested) {  // indented further: a nested list in this item
      const sub = mdList(lines, i, depth + 1);
      li.append("\n", sub.el);
      i = sub.next;
    } else if (!m && nested && line.trim() && lead >= indent + 2) {  // the item's text goes on
      li.append("\n", ...mdMerge(mdInline(line.trim())));
      i++;
    } else {
      break;
    }
  }
  return { el: list, next: i };
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
  while (i < lines.length && lines[i].trim() && !MD_FENCE.test(lines[i]) && !MD_HEADING.test(lines[i]) &&
         !MD_RULE.test(lines[i]) && !MD_ITEM.test(lines[i]) && !MD_QUOTE.test(lines[i])) {
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

// a line's text -> strings and inline elements: `code` as <code> (its text as it is), **bold** as <strong>,
// *italic* and _italic_ as <em>, [text](url) as <a> for http:, https: and mailto: URLs (any other link stays text),
// a bare http(s):// URL as <a> (mdBareUrl; none inside a link's text: ``inLink``)
function mdInline(text, inLink = false) {
  const parts = [];
  let at = 0;
  for (const m of text.matchAll(MD_INLINE)) {
    if (m[8] !== undefined && inLink) continue;  // stays text, with what is around it
    if (m.index > at) parts.push(text.slice(at, m.index));
    at = m.index + m[0].length;
    if (m[1] !== undefined) {
      const code = document.createElement("code");
      code.textContent = m[2];
      parts.push(code);
    } else if (m[3] !== undefined) {
      const href = mdSafeUrl(m[4]);
      if (!href) { parts.push(m[0]); continue; }
      parts.push(mdLink(href, mdMerge(mdInline(m[3], true))));
    } else if (m[8] !== undefined) {
      parts.push(...mdBareUrl(m[8]));
    } else {
      const el = document.createElement(m[5] !== undefined ? "strong" : "em");
      el.append(...mdMerge(mdInline(m[5] !== undefined ? m[5] : m[6] !== undefined ? m[6] : m[7], inLink)));
      parts.push(el);
    }
  }
  if (at < text.length) parts.push(text.slice(at));
  return parts;
}

// a bare URL as found (up to a space, <, > or `) -> [<a>, the characters after it that are not part of it] as GitHub
// ends it: trailing . , : ; ! ? * _ ~ ' " and a ) without its ( left out; [the text] when it is no http(s) URL
function mdBareUrl(found) {
  let end = found.length;
  let open = 0;
  let close = 0;
  for (const ch of found) {
    if (ch === "(") open++; else if (ch === ")") close++;
  }
  while (end > 0) {
    const ch = found[end - 1];
    if (MD_URL_END.test(ch)) {
      end--;
    } else if (ch === ")" && close > open) {
      end--;
      close--;
    } else {
      break;
    }
  }
  const url = found.slice(0, end);
  const href = /^https?:\/\/./.test(url) ? mdSafeUrl(url) : null;
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
