// The chat page's markdown: a message's text -> DOM nodes, a small subset of CommonMark built only with
// createElement, text nodes and, on links, an href whose URL was checked (http:, https:, mailto:). Nothing in the text
// is ever parsed as HTML: markup in it shows as the characters it is.
// Blocks: ``` (or ~~~) fenced code, # headings, - * + and 1. lists (one nested level), > blockquotes, --- rules; other
// lines stay text with their line breaks (the bubble is white-space: pre-wrap). Inline: `code`, **bold**, *italic*,
// _italic_ (not inside words), [text](url).
// The text's line breaks stay in the nodes' text, so textContent is the text less the markers: the break after a
// block goes inside it, at its end, where it draws nothing (a trailing line break makes no line in pre-wrap, and the
// code block's box and lists are white-space: normal).
"use strict";

const MD_FENCE = /^ {0,3}(`{3,}|~{3,})(.*)$/;
const MD_HEADING = /^ {0,3}(#{1,6})[ \t]+(\S.*?)(?:[ \t]+#+)?[ \t]*$/;
const MD_RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const MD_ITEM = /^( *)([-*+]|\d{1,9}[.)])[ \t]+(\S.*)$/;
const MD_QUOTE = /^ {0,3}> ?(.*)$/;
// inline: `code` (any run of backticks), [text](url), **bold**, *italic*, _italic_ (not inside a word); a code span
// or bold text longer than 1000 characters is left as text, so that a long line never costs more than linear time
const MD_INLINE = new RegExp([
  "(`+)([^`\\n](?:[^\\n]{0,1000}?[^`\\n])?)\\1(?!`)",
  "\\[([^\\[\\]\\n]+)\\]\\(([^()\\s]+)\\)",
  "\\*\\*(?=\\S)([^\\n]{0,1000}?\\S)\\*\\*(?!\\*)",
  "\\*(?=[^\\s*])([^*\\n]*?[^\\s*])\\*",
  "(?<![\\p{L}\\p{N}_\\\\])_(?=[^\\s_])([^_\\n]*?[^\\s_])_(?![\\p{L}\\p{N}_])",
].join("|"), "gu");
const MD_PLAIN = /^[^`*_[]*$/;  // a line with no inline marker: one string, nothing to parse
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
    } else {
      items.push(MD_PLAIN.test(line) ? [line] : mdInline(line));
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
  if (el.classList.contains("code")) { el.append("\n"); return; }  // the box is white-space: normal
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

// a line's text -> strings and inline elements: `code` as <code> (its text as it is), **bold** as <strong>,
// *italic* and _italic_ as <em>, [text](url) as <a> for http:, https: and mailto: URLs (any other link stays text)
function mdInline(text) {
  const parts = [];
  let at = 0;
  for (const m of text.matchAll(MD_INLINE)) {
    if (m.index > at) parts.push(text.slice(at, m.index));
    at = m.index + m[0].length;
    if (m[1] !== undefined) {
      const code = document.createElement("code");
      code.textContent = m[2];
      parts.push(code);
    } else if (m[3] !== undefined) {
      const href = mdSafeUrl(m[4]);
      if (!href) { parts.push(m[0]); continue; }
      const a = document.createElement("a");
      a.href = href;
      a.rel = "noopener noreferrer";
      a.target = "_blank";
      a.append(...mdMerge(mdInline(m[3])));
      parts.push(a);
    } else {
      const el = document.createElement(m[5] !== undefined ? "strong" : "em");
      el.append(...mdMerge(mdInline(m[5] !== undefined ? m[5] : m[6] !== undefined ? m[6] : m[7])));
      parts.push(el);
    }
  }
  if (at < text.length) parts.push(text.slice(at));
  return parts;
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
