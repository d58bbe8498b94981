"""The chat page's markdown (onnxlm/serve/static/markdown.js) on its own: loaded into a blank page in Debian's
``chromium`` driven by playwright, no server; ``renderMarkdown`` is called on texts and the DOM it builds is checked
(tag names, text, hrefs, classes). tests/test_chat_page.py checks it inside the page, streamed from a server.

Covered here: lines that would cost quadratic time (a model stuck repeating one character), fenced code and other
blocks inside list items, loose lists, links as GitHub writes them, and GFM's strikethrough, task lists, setext
headings and character references; indented code, reference links, underscore emphasis and email autolinks; a
streamed text (mdStream) rendered as the whole text is at every step."""
from __future__ import annotations

from pathlib import Path

import pytest

try:
    import playwright.sync_api  # noqa: F401  (conftest's browser fixture drives it)
except ImportError:  # a failure, not a skip: the markdown would go untested
    raise ImportError("the chat page tests need playwright (the test extra): pip install -e '.[test]'") from None


MARKDOWN_JS = Path(__file__).resolve().parents[1] / "onnxlm" / "serve" / "static" / "markdown.js"
TAB = ["noopener noreferrer", "_blank"]


@pytest.fixture
def page(browser):
    """A blank page holding <div id=out> and markdown.js (nothing else of the chat page)."""
    pg = browser.new_page()
    errors = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.set_content("<div id=out></div>")
    pg.add_script_tag(path=str(MARKDOWN_JS))
    yield pg
    pg.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def _render(pg, text: str):
    """``text`` rendered into #out, with an onCode hook that adds a button.copy to each code block as the page's does
    -> the locator of #out."""
    pg.evaluate("""(t) => renderMarkdown(document.getElementById('out'), t, (box, code) => {
        const b = document.createElement('button'); b.className = 'copy'; box.prepend(b); })""", text)
    return pg.locator("#out")


def _links(out):
    """The links in ``out`` -> [text, href, rel, target, title] each."""
    return out.locator("a").evaluate_all(
        "(as) => as.map((a) => [a.textContent, a.getAttribute('href'), a.rel, a.target, a.title])")


def _tags(out, selector: str = ":scope > *"):
    return out.locator(selector).evaluate_all("(es) => es.map((e) => e.tagName.toLowerCase())")


# --------------------------------------------------------------------------------------------------- linear time
#: degenerate texts a model stuck in a loop may write: a function of a length -> a text about that long
PATTERNS = {
    "heading + spaces": lambda n: "# a" + " " * n + "x",
    "heading + ' #'": lambda n: "# a" + " #" * (n // 2) + "x",
    "backticks": lambda n: "x" + "`" * n,
    "backtick pairs": lambda n: "x " + "`` a " * (n // 5),
    "delimiter row + spaces": lambda n: "a|b\n|---" + " " * n + "x",
    "stars": lambda n: "*" * n,
    "bold opened": lambda n: "x " + "**a " * (n // 4),
    "underscores": lambda n: "_" * n,
    "tildes": lambda n: "~" * n,
    "strike opened": lambda n: "x " + "~~a " * (n // 4),
    "brackets": lambda n: "[" * n,
    "links opened": lambda n: "x " + "[a](" * (n // 4),
    "link + spaces": lambda n: "[a](b" + " " * n + "x",
    "parens": lambda n: "(" * n,
    "pipes": lambda n: "|" * n,
    "colons": lambda n: ":" * n,
    "dashes": lambda n: "-" * n,
    "rule + spaces": lambda n: "-" + " " * n + "x",
    "gts": lambda n: ">" * n,
    "lts": lambda n: "<https://a" * (n // 10),
    "spaces": lambda n: " " * n + "x",
    "item + spaces": lambda n: "1." + " " * n + "\u00a0",
    "mixed": lambda n: ("*_`[(|:->~ " * (n // 11 + 1))[:n],
    "url + parens": lambda n: "https://a.com/" + ")" * n,
    "entities": lambda n: "&amp" * (n // 4),
    # indented code, reference links and definitions, __bold__ and _em_ with intraword underscores, email autolinks
    "tabs": lambda n: "\t" * n + "x",
    "refs": lambda n: "[a]" * (n // 3),
    "refs opened": lambda n: "x " + "[a][" * (n // 4),
    "label + spaces": lambda n: "[a" + " " * n + "]",
    "definition + spaces": lambda n: "[a]: https://a.example" + " " * n + "x",
    "definition + title": lambda n: "[a]: https://a.example \"" + "t " * (n // 2),
    "definition quoted": lambda n: "> " * (n // 2) + "[a]: https://a.example",
    "strong opened": lambda n: "x " + "__a " * (n // 4),
    "snake": lambda n: "x _" + "a_" * (n // 2),
    "snake opened": lambda n: "x " + "_a_a " * (n // 5),
    "emails": lambda n: "<a@" * (n // 3),
    "email labels": lambda n: "<a@b" + ".b" * (n // 2),
    "email long labels": lambda n: "<a@" + ("b" * 62 + ".") * (n // 63),
    "email local part": lambda n: "<" + "a" * n + "@",
}


def _timings(pg, size: int, lines: int):
    """Each pattern, ``size`` characters in all as ``lines`` lines (each made by the pattern), rendered three times
    after a warm-up on a short one -> {name: the least ms} (the least: a busy machine's stall in one render is not
    the renderer's time)."""
    texts = {name: "\n".join([f(size // lines)] * lines) for name, f in PATTERNS.items()}
    return pg.evaluate("""(texts) => {
        const out = document.getElementById('out');
        const result = {};
        for (const [name, text] of Object.entries(texts)) {
            renderMarkdown(out, text.slice(0, 2000));
            result[name] = Infinity;
            for (let i = 0; i < 3; i++) {
                const t0 = performance.now();
                renderMarkdown(out, text);
                result[name] = Math.min(result[name], performance.now() - t0);
            }
        }
        out.replaceChildren();
        return result;
    }""", texts)


def test_degenerate_lines_render_in_linear_time(page):
    """100,000 characters of each degenerate pattern (runs of spaces after a heading or in a delimiter row, runs of
    backticks, stars, underscores, brackets, pipes, ...) render in well under a second, both as one line (past the
    length where a line is shown as plain text) and as 6 lines of about 16,700 characters that are parsed; doubling
    the lines' length (50,000 characters in all to 100,000) costs about twice the time, not four times (generous
    margins: linear takes a few milliseconds here, the quadratic regexes took seconds)."""
    one = _timings(page, 100_000, 1)
    half = _timings(page, 50_000, 6)
    full = _timings(page, 100_000, 6)
    slow = {name: (round(one[name]), round(full[name])) for name in PATTERNS if max(one[name], full[name]) > 1000}
    assert not slow, slow
    assert sum(full.values()) < 3 * sum(half.values()) + 150, (half, full)
    assert sum(full.values()) < 2000, full


def test_code_spans_are_paired_by_hand_as_commonmark_does(page):
    """A code span closes at the next run of as many backticks (other runs inside it are its text), loses one space
    at each end when it has one at both; an unpaired run is text; code spans bind before links and emphasis; the
    character standing in for code spans inside the parser shows as itself where the text has it."""
    out = _render(page, "`` `x` `` and `a``b` and ``` x ``y and *`a*b`* and \uE000`q`\uE000")
    assert out.locator("code").all_text_contents() == ["`x`", "a``b", "a*b", "q"]
    assert out.text_content() == "`x` and a``b and ``` x ``y and a*b and \uE000q\uE000"
    assert out.locator("em > code").count() == 1


# ------------------------------------------------------------------------------------------ blocks in list items
def test_fenced_code_inside_a_list_item_is_a_code_block_in_the_item(page):
    """A fence indented under a numbered item is a code block inside that item (its indent removed, a copy button,
    its text never parsed as markdown), and the next number continues the same list; also with a blank line before
    the fence, under a bullet indented 2 spaces, and when the closing fence is not indented."""
    for text in ("1. Install:\n   ```bash\n   pip install foo_bar *x*\n   ```\n2. Run it",
                 "1. Install:\n\n   ```bash\n   pip install foo_bar *x*\n   ```\n\n2. Run it",
                 "1. Install:\n  ```bash\n  pip install foo_bar *x*\n  ```\n2. Run it",
                 "1. Install:\n   ```bash\n   pip install foo_bar *x*\n```\n2. Run it"):
        out = _render(page, text)
        assert _tags(out) == ["ol"], text
        items = out.locator("ol > li")
        assert items.count() == 2 and out.locator("ol").get_attribute("start") is None, text
        code = items.first.locator(":scope > div.code > pre > code")
        assert code.text_content() == "pip install foo_bar *x*" and out.locator("em").count() == 0, text
        assert items.first.locator(":scope > div.code > button.copy").count() == 1, text
        assert items.first.text_content().startswith("Install:\n"), text
        assert items.nth(1).text_content() == "Run it", text
    out = _render(page, "- step\n\n  ```python\n  print(1)\n\n  print(2)\n  ```\n- next\n\nAfter")
    assert _tags(out) == ["ul"] and out.locator("ul > li").count() == 2
    assert out.locator("li div.code code").text_content() == "print(1)\n\nprint(2)"
    assert out.text_content().endswith("next\n\nAfter")
    out = _render(page, "- item\n  | a | b |\n  |---|---|\n  | 1 | **2** |\n- > quoted")  # other blocks too
    assert out.locator("li").first.locator("table td strong").text_content() == "2"
    assert out.locator("li").nth(1).locator("blockquote").text_content() == "quoted"


def test_a_loose_list_stays_one_list_and_keeps_its_items_paragraphs(page):
    """Blank lines between items keep one list (numbered on from its first number); an item's indented paragraph
    after a blank line stays in the item; text that is not indented after a blank line ends the list. Nested lists
    and a list of another kind after it are as before."""
    out = _render(page, "1. one\n\n2. two\n\n3. three")
    assert _tags(out) == ["ol"] and out.locator("li").all_text_contents() == ["one\n", "two\n", "three"]
    out = _render(page, "3. one\n\n   more about one\n\n4. two\n\nOutside")
    assert _tags(out) == ["ol"] and out.locator("ol").get_attribute("start") == "3"
    assert out.locator("li").all_text_contents() == ["one\n\nmore about one\n", "two\n"]
    assert out.text_content().endswith("two\n\nOutside")
    out = _render(page, "- a\n      indented past its text\n   b")  # an item's lines of text: their spaces cut
    assert out.locator("li").text_content() == "a\nindented past its text\nb"
    out = _render(page, "- one\n- two\n  - nested `x`\n    - deeper\n3. three\n4. four")
    assert _tags(out) == ["ul", "ol"] and out.locator("ol").get_attribute("start") == "3"
    assert out.locator("ul ul > li").first.text_content() == "nested x\ndeeper\n"
    assert out.locator("ul ul ul > li").text_content() == "deeper\n"


# ------------------------------------------------------------------------------------------------------ links
def test_links_as_github_writes_them(page):
    """<https://...> autolinks; balanced parentheses in a link's destination (Wikipedia's); a link's "title"; a
    trailing ] that does not belong to a bare URL; ![alt](url) as a link labelled with its alt text (no image); www.
    autolinks (href http://www...); still only http:, https: and mailto: links."""
    out = _render(page, "see <https://example.com/a_b> and <mailto:a@b.example> "
                        "[wiki](https://en.wikipedia.org/wiki/Foo_(bar)) [x](https://a.example \"The title\") "
                        "[see https://example.com/a] ![a logo](https://x.example/logo.png) visit www.example.com/docs.")
    assert _links(out) == [
        ["https://example.com/a_b", "https://example.com/a_b", *TAB, ""],
        ["mailto:a@b.example", "mailto:a@b.example", *TAB, ""],
        ["wiki", "https://en.wikipedia.org/wiki/Foo_(bar)", *TAB, ""],
        ["x", "https://a.example/", *TAB, "The title"],
        ["https://example.com/a", "https://example.com/a", *TAB, ""],
        ["a logo", "https://x.example/logo.png", *TAB, ""],
        ["www.example.com/docs", "http://www.example.com/docs", *TAB, ""]]
    assert out.text_content() == ("see https://example.com/a_b and mailto:a@b.example wiki x [see "
                                  "https://example.com/a] a logo visit www.example.com/docs.")
    assert page.locator("img").count() == 0
    unsafe = ("<javascript:alert(1)> ![x](javascript:alert(1)) [y](javascript:alert((1))) "
              "[z](data:text/html,hi \"t\") wwwx.example")
    out = _render(page, unsafe)
    assert out.locator("a").count() == 0 and out.text_content() == unsafe


# ------------------------------------------------------------------------------------------------ GFM constructs
def test_strikethrough_and_task_lists(page):
    """~~text~~ is <del> (holding other inline markdown, not across a lone ~); - [ ] and - [x] items get a disabled
    checkbox (checked for x) and the class task, their text after it."""
    out = _render(page, "~~gone **now**~~ and ~~https://z.example~~ but ~~ no ~~ and ~one~")
    assert out.locator("del").all_text_contents() == ["gone now", "https://z.example"]
    assert out.locator("del strong").count() == 1 and out.locator("del a").count() == 1
    assert out.text_content() == "gone now and https://z.example but ~~ no ~~ and ~one~"
    out = _render(page, "- [ ] todo\n- [x] done *now*\n- [X] also\n- [] not a task")
    boxes = out.locator("li > input").evaluate_all("(bs) => bs.map((b) => [b.type, b.disabled, b.checked])")
    assert boxes == [["checkbox", True, False], ["checkbox", True, True], ["checkbox", True, True]]
    assert out.locator("li").evaluate_all("(ls) => ls.map((l) => [l.className, l.textContent])") == [
        ["task", " todo\n"], ["task", " done now\n"], ["task", " also\n"], ["", "[] not a task"]]


def test_setext_headings_and_atx_closing_hashes(page):
    """A paragraph underlined with === is an h1, with --- (3 or more) an h2 (all its lines); --- after a blank line,
    *** and - - - stay rules; --- under a line holding a pipe is no heading (it may be becoming a table's delimiter
    row); a heading's closing #s are cut (not when glued to its text)."""
    out = _render(page, "Title\n=====\nSome\ntext\n---\nbody\n\n---\ntext\n***\ntext\n- - -\na | b\n---\nx\n-")
    assert _tags(out) == ["h1", "h2", "hr", "hr", "hr", "hr"]
    assert out.locator("h1").text_content() == "Title\n" and out.locator("h2").text_content() == "Some\ntext\n"
    assert out.text_content() == "Title\nSome\ntext\nbody\n\ntext\ntext\na | b\nx\n-"
    out = _render(page, "# foo ##\n## bar #   \n### a#\n#### #")
    assert out.locator("h1, h2, h3, h4").all_text_contents() == ["foo\n", "bar\n", "a#\n", ""]


def test_character_references_become_characters_never_markup(page):
    """&amp; &lt; &gt; &quot; &#39; &nbsp; and numeric references become their characters, as text (never parsed
    as HTML, never as markdown); unknown names stay; not inside code; also in a link's destination and title."""
    out = _render(page, "&amp; &lt;b&gt;bold&lt;/b&gt; &quot;q&quot; &#39;s &nbsp;x &#x2014; &#8212; &#0; &bogus; "
                        "&ast;no&ast; `&amp;` [l](https://a.example/?a=1&amp;b=2 \"&quot;t&quot;\")")
    assert out.text_content() == ("& <b>bold</b> \"q\" 's \u00a0x \u2014 \u2014 \ufffd &bogus; &ast;no&ast; &amp; l")
    assert page.locator("#out b, #out em").count() == 0
    assert _links(out) == [["l", "https://a.example/?a=1&b=2", *TAB, "\"t\""]]
    out = _render(page, "```\n&amp;\n```")
    assert out.locator("code").text_content() == "&amp;"


# ------------------------------------------------------------------------------------------------ indented code
def test_indented_code_blocks(page):
    """Lines indented 4 spaces or a tab (after a blank line or another block, not right under a paragraph's line,
    which they continue) are a code block: the indent removed (a tab to 4 columns), blank lines inside kept, never
    parsed as markdown, with a copy button; inside a list item too, and an item's own lines are not code."""
    out = _render(page, "Intro:\n\n    def f(x):\n        return *x* <b>\n\n\tprint(1)\n  \tdone\n\nAfter")
    assert _tags(out) == ["div"] and out.locator("div.code > button.copy").count() == 1
    assert out.locator("pre code").text_content() == "def f(x):\n    return *x* <b>\n\nprint(1)\ndone"
    assert out.locator("em, b").count() == 0
    assert out.text_content() == "Intro:\n\ndef f(x):\n    return *x* <b>\n\nprint(1)\ndone\n\nAfter"
    out = _render(page, "Text\n    not code\n# Title\n    code after a heading")
    assert out.locator("pre code").all_text_contents() == ["code after a heading"]
    assert out.text_content().startswith("Text\n    not code\nTitle\n")
    out = _render(page, "- item\n\n      code in the item\n- next\n  - nested\n      continued")
    assert _tags(out) == ["ul"] and out.locator("li").first.locator("pre code").text_content() == "code in the item"
    assert out.locator("ul ul li").text_content() == "nested\ncontinued" and out.locator("pre").count() == 1


# ------------------------------------------------------------------------------------------- reference links
def test_reference_links_and_their_definitions(page):
    """[text][label], [label][] and [label] link to the URL of [label]: url "title" defined anywhere in the text
    (before or after; labels match case-insensitively, spaces collapsed); the definitions are not shown; an
    undefined label stays text (its brackets and all); a definition of a javascript: or data: URL defines nothing (its
    line stays text, its references too); a definition inside a code block is code."""
    text = "\n".join([
        "[early]: https://early.example/",
        "See [the docs][Docs], [Docs][] and [docs], [a **bold** one][X  y], ![logo][img] and [early].",
        "Undefined [stays] text, [so][this] one, *[em]* and [inline](https://inline.example/).",
        "Unsafe: [js], [evil][] and [click][js].",
        "```",
        "[code]: https://code.example/",
        "```",
        "and [code]",
        "",
        "[docs]: https://docs.example/guide \"The Guide\"",
        "   [x Y]: <https://xy.example/a>",
        "[img]: https://img.example/logo.png 'Logo'",
        "[docs]: https://second.example/ (ignored: the first wins)",
        "[js]: javascript:alert(1)",
        "[evil]: data:text/html,hi"])
    out = _render(page, text)
    docs = ["https://docs.example/guide", *TAB, "The Guide"]
    assert _links(out) == [
        ["the docs", *docs], ["Docs", *docs], ["docs", *docs],
        ["a bold one", "https://xy.example/a", *TAB, ""],
        ["logo", "https://img.example/logo.png", *TAB, "Logo"],
        ["early", "https://early.example/", *TAB, ""],
        ["inline", "https://inline.example/", *TAB, ""]]
    assert out.locator("a > strong").text_content() == "bold" and out.locator("em").text_content() == "[em]"
    shown = out.text_content()
    assert shown.startswith("See the docs, Docs and docs, a bold one, logo and early.\n")
    for kept in ("Undefined [stays] text, [so][this] one, [em] and inline.", "Unsafe: [js], [evil][] and [click][js].",
                 "[js]: javascript:alert(1)\n[evil]: data:text/html,hi"):
        assert kept in shown, kept
    for gone in ("early.example", "docs.example", "xy.example", "img.example", "second.example"):
        assert gone not in shown, gone
    assert out.locator("pre code").text_content() == "[code]: https://code.example/"
    assert "and [code]" in shown
    assert out.locator("a[href^='javascript'], a[href^='data']").count() == 0 and page.locator("img").count() == 0


# --------------------------------------------------------------------------------------- underscores, emails
def test_underscore_emphasis_keeps_intraword_underscores(page):
    """__bold__ and _italic_ (CommonMark): not opened or closed inside a word, so snake_case_names, mid_word_ and
    under__score__d stay as they are; underscores inside a word within the emphasis are letters; nesting works."""
    out = _render(page, "__bold__ and __bold _em_ in__, _em_, _a_b_, snake_case_names, mid_word_ end, "
                        "under__score__d, __x__y and _open")
    assert out.locator("> strong").all_text_contents() == ["bold", "bold em in"]
    assert out.locator("strong > em").text_content() == "em"
    assert out.locator("> em").all_text_contents() == ["em", "a_b"]
    assert out.text_content() == ("bold and bold em in, em, a_b, snake_case_names, mid_word_ end, under__score__d, "
                                  "__x__y and _open")


def test_email_autolinks_become_mailto_links(page):
    """<user@host> (CommonMark's email autolink) links to mailto:user@host, shown without the scheme; not an address
    (a space, a label starting with -, no >), or inside a link's text, it stays text."""
    out = _render(page, "Mail <a@b.example>, <first.last+tag@sub.example-x.org> or <a_b_c@x.example>; not "
                        "<a @b.example>, <a@-b.example>, <a@b.example or [<c@d.example>](https://e.example/).")
    assert _links(out) == [["a@b.example", "mailto:a@b.example", *TAB, ""],
                           ["first.last+tag@sub.example-x.org", "mailto:first.last+tag@sub.example-x.org", *TAB, ""],
                           ["a_b_c@x.example", "mailto:a_b_c@x.example", *TAB, ""],
                           ["<c@d.example>", "https://e.example/", *TAB, ""]]
    assert out.text_content() == ("Mail a@b.example, first.last+tag@sub.example-x.org or a_b_c@x.example; not "
                                  "<a @b.example>, <a@-b.example>, <a@b.example or <c@d.example>.")
    assert out.locator("em").count() == 0


# ----------------------------------------------------------------------------------------------- streaming
#: texts streamed by test_a_streamed_text_renders_as_the_whole_text_at_every_step: each block kind, blank lines
#: inside and between lists, code and quotes, a definition arriving after its references, a paragraph becoming a
#: setext heading or a table's header row after its lines came
STREAMED = [
    "\n".join(["# Title", "", "Intro with [a ref][r] and *em*.", "", "- one", "- two", "", "  more about two", "",
               "- three", "", "```python", "def f():", "", "    return 1", "```", "", "| a | b |", "|:--|--:|",
               "| 1 | 2 |", "", "Some text", "===", "", "    indented", "", "    code", "", "> quote", "> more",
               "", "after", "", "1. a", "", "   ```", "   x", "", "   ```", "", "2. b", "", "[r]: https://r.example/",
               "", "Tail [r] and [late].", "", "[late]: https://late.example/ \"T\"", ""]),
    "# Head\n\nPara\n\nline one\nline two\n---\n\n~~~\nunclosed\n\nfence",
    "a | b\n\n|---|---|\n\nx\n\n\n\n- [ ] task\n\n\t\tcode\n\n[x]: https://x.example/\n\nuse [x]\n\n"
    "[x]: https://y.example/",
]


def test_a_streamed_text_renders_as_the_whole_text_at_every_step(page):
    """mdStream fed a text a few characters at a time (1, 3, 7 and 13) renders, after each piece, the DOM that
    renderMarkdown gives for the text so far (innerHTML equal: code blocks, lists continued after blank lines,
    fences, tables, setext headings, indented code, references defined after their use); and its early blocks are
    rendered once and kept (the first heading's node is the same at the end; not where a definition came after kept
    blocks that use it: those are rendered again), the copy hook called far less than once a step."""
    result = page.evaluate("""(texts) => {
        const bad = [];
        const kept = texts.map(() => 0);
        let hooks = 0;
        const hook = (box) => { hooks++; const b = document.createElement('button'); b.className = 'copy';
                                box.prepend(b); };
        for (const [t, text] of texts.entries()) {
            for (const step of [1, 3, 7, 13]) {
                const el = document.createElement('div');
                const whole = document.createElement('div');
                const stream = mdStream(el, hook);
                let first = null;  // the heading, once the line after the blank line after it is complete
                const settled = text.indexOf('\\n\\n', text.indexOf('\\n\\n') + 2) + 2;
                for (let n = step; ; n += step) {
                    const part = text.slice(0, n);
                    stream.render(part);
                    renderMarkdown(whole, part, hook);
                    if (el.innerHTML !== whole.innerHTML) { bad.push([step, part, el.innerHTML, whole.innerHTML]);
                                                           break; }
                    if (!first && n >= settled) first = el.querySelector('h1');
                    if (n >= text.length) break;
                }
                if (first && first === el.querySelector('h1')) kept[t]++;
            }
        }
        const el = document.createElement('div');
        const stream = mdStream(el, hook);
        hooks = 0;
        const text = texts[0];
        for (let n = 1; n <= text.length; n++) stream.render(text.slice(0, n));
        return { bad: bad.slice(0, 3), kept, hooks };
    }""", STREAMED)
    assert result["bad"] == [], result["bad"]
    assert result["kept"] == [0, 4, 0], result  # the first text's definitions come after their references
    # the first text streamed a character at a time (about 400 steps): its 3 code blocks rendered at each step
    # while in the tail, then once to be kept
    assert result["hooks"] < 200, result


def test_a_streamed_text_that_starts_again_or_changes_a_used_definition(page):
    """A text that is not the last one grown starts again (shown as renderMarkdown shows it); a definition arriving
    (or streamed character by character) after kept blocks that use its label renders them again with the link."""
    html = page.evaluate("""() => {
        const el = document.createElement('div');
        const whole = document.createElement('div');
        const stream = mdStream(el);
        const out = [];
        const text = "See [x].\\n\\nmore\\n\\nand more\\n\\n[x]: https://x.example/";
        for (let n = 1; n <= text.length; n++) {
            stream.render(text.slice(0, n));
            renderMarkdown(whole, text.slice(0, n));
            if (el.innerHTML !== whole.innerHTML) out.push(text.slice(0, n));
        }
        stream.render("Another *text*");
        renderMarkdown(whole, "Another *text*");
        out.push(el.innerHTML === whole.innerHTML);
        return [out, el.innerHTML];
    }""")
    assert html == [[True], "Another <em>text</em>"]
