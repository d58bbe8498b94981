"""benchmarks/report_sections.py: a benchmark replaces only its own marked sections of docs/benchmarks.md, keeps every
other byte (hand-written text, other benchmarks' sections), appends a section it has not written yet, and refuses a
file whose markers do not pair up (without touching it)."""
from __future__ import annotations

import pytest

from benchmarks.report_sections import find_sections, update_sections

DOC = ("# Title\n\nHand-written intro.\r\n\n"
       "<!-- a:begin one -->\nold one\n<!-- a:end one -->\n"
       "Between, by hand: <!-- a:begin one --> in a sentence is not a marker.\n\n"
       "<!-- b:begin one -->\nb's text\n\n<!-- b:end one -->\n"
       "<!-- a:begin two -->\nold two\n<!-- a:end two -->\n\n"
       "Tail by hand, no final newline")


def test_replaces_only_its_own_section_and_keeps_every_other_byte(tmp_path):
    path = tmp_path / "bench.md"
    path.write_bytes(DOC.encode())
    new = update_sections(path, "a", {"one": "new one\nline 2\n"})
    assert path.read_bytes().decode() == new
    assert new == DOC.replace("old one\n", "new one\nline 2\n")
    # its second section, then both at once, then the same again: nothing else moves
    new = update_sections(path, "a", {"two": "", "one": "x"})
    assert new == DOC.replace("old one\n", "x\n").replace("old two\n", "")
    assert update_sections(path, "a", {"two": "", "one": "x"}) == new
    assert new.count("b's text\n\n") == 1 and new.endswith("Tail by hand, no final newline")


def test_appends_a_missing_section_at_the_end(tmp_path):
    path = tmp_path / "bench.md"
    path.write_bytes(DOC.encode())
    new = update_sections(path, "a", {"three": "third\n", "one": "1\n"})
    assert new == DOC.replace("old one\n", "1\n") + "\n\n<!-- a:begin three -->\nthird\n<!-- a:end three -->\n"
    assert find_sections(new)[("a", "three")] == (new.index("third"), new.index("<!-- a:end three"))
    fresh = tmp_path / "new.md"  # a file that does not exist yet starts with the head
    expected = "# T\n\n<!-- a:begin one -->\n1\n<!-- a:end one -->\n"
    assert update_sections(fresh, "a", {"one": "1"}, head="# T\n\n") == expected == fresh.read_text()


@pytest.mark.parametrize("broken, message", [
    ("<!-- a:begin one -->\ntext\n", "has no end marker"),
    ("text\n<!-- a:end one -->\n", "ends a section that was not begun"),
    ("<!-- a:begin one -->\n<!-- a:begin two -->\n<!-- a:end two -->\n<!-- a:end one -->\n", "inside"),
    ("<!-- a:begin one -->\n<!-- b:end one -->\n", "ends a section that was not begun"),
    ("<!-- a:begin one -->\n\n<!-- a:end one -->\n<!-- a:begin one -->\n<!-- a:end one -->\n", "appears twice"),
])
def test_refuses_unbalanced_markers_and_leaves_the_file(tmp_path, broken, message):
    path = tmp_path / "bench.md"
    path.write_text("# Title\n\n" + broken)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=message) as err:
        update_sections(path, "a", {"one": "new\n"})
    assert "line " in str(err.value)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_refuses_a_body_with_a_marker(tmp_path):
    path = tmp_path / "bench.md"
    with pytest.raises(ValueError, match="contains a section marker"):
        update_sections(path, "a", {"one": "<!-- a:end one -->\n"})
    assert not path.exists()
