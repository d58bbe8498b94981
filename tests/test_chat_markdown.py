"""The chat page's markdown (onnxlm/serve/static/markdown.js) on its own: loaded into a blank page in Debian's
``chromium`` driven by playwright, no server; ``renderMarkdown`` is called on texts and the DOM it builds is checked
(tag names, text, hrefs, classes). tests/test_chat_page.py checks it inside the page, streamed from a server.

Covered here: lines that would cost quadratic time (a model stuck repeating one character), fenced code and other
blocks inside list items, loose lists, links as GitHub writes them, and GFM's strikethrough, task lists, setext
headings and character references."""
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
}


def _timings(pg, size: int, lines: int):
    """Each pattern, ``size`` characters in all as ``lines`` lines (each made by the pattern), rendered once after a
    warm-up on a short one -> {name: ms}."""
    texts = {name: "\n".join([f(size // lines)] * lines) for name, f in PATTERNS.items()}
    return pg.evaluate("""(texts) => {
        const out = document.getElementById('out');
        const result = {};
        for (const [name, text] of Object.entries(texts)) {
            renderMarkdown(out, text.slice(0, 2000));
            const t0 = performance.now();
            renderMarkdown(out, text);
            result[name] = performance.now() - t0;
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
              "[z](data:text/html,hi \"t\") <a@b.example> wwwx.example")
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
