"""Marked sections of a Markdown file that a benchmark writes; every other byte of the file is left as it is.

Section NAME of OWNER (e.g. ``benchmarks.peers``, ``targets``) is the text between two lines of their own:

    <!-- OWNER:begin NAME -->
    ...
    <!-- OWNER:end NAME -->

``update_sections(path, owner, {name: text})`` replaces the text between each name's markers, appends a new marked
section at the end of the file for a name that has none yet, and writes the file atomically (a temp file in the
same folder, then a rename). A file whose markers do not pair up (a begin without its end, an end without its
begin, one section inside another, a section twice) is refused with a ValueError naming the marker and its line,
and left untouched: the sections around a broken marker cannot be told apart from the hand-written text.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

MARKER = re.compile(r"^<!-- ([\w.-]+):(begin|end) ([\w.-]+) -->[ \t]*$", re.M)


def begin_marker(owner: str, name: str) -> str:
    return f"<!-- {owner}:begin {name} -->"


def end_marker(owner: str, name: str) -> str:
    return f"<!-- {owner}:end {name} -->"


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def find_sections(text: str) -> dict[tuple[str, str], tuple[int, int]]:
    """Every marked section of ``text`` -> {(owner, name): (start, end)}: the span of its body (from the line after
    the begin marker to the start of the end marker's line). ValueError where the markers do not pair up."""
    spans, open_ = {}, None
    for m in MARKER.finditer(text):
        key, where = (m.group(1), m.group(3)), f"line {_line(text, m.start())}: {m.group(0)!r}"
        if m.group(2) == "begin":
            if open_ is not None:
                raise ValueError(f"{where} opens a section inside {open_[0]!r} (no end marker before it)")
            if key in spans:
                raise ValueError(f"{where}: section {key[0]}:{key[1]} appears twice")
            open_ = (m.group(0), key, m.end() + 1)
        elif open_ is None or open_[1] != key:
            inside = f" (inside {open_[0]!r})" if open_ else ""
            raise ValueError(f"{where} ends a section that was not begun{inside}")
        else:
            spans[key] = (open_[2], m.start())
            open_ = None
    if open_ is not None:
        raise ValueError(f"line {_line(text, open_[2] - 1)}: {open_[0]!r} has no end marker")
    return spans


def replace_sections(text: str, owner: str, sections: dict[str, str]) -> str:
    """``text`` with each of ``owner``'s sections set to its new body (appended, marked, where missing)."""
    find_sections(text)  # refuse a broken file before any change
    for name, body in sections.items():
        if MARKER.search(body):
            raise ValueError(f"the body of section {owner}:{name} contains a section marker")
        body = body if body == "" or body.endswith("\n") else body + "\n"
        spans = find_sections(text)  # the spans after the sections replaced so far
        if (owner, name) in spans:
            start, end = spans[(owner, name)]
            text = text[:start] + body + text[end:]
        else:
            if text and not text.endswith("\n"):
                text += "\n"
            if text and not text.endswith("\n\n"):
                text += "\n"
            text += f"{begin_marker(owner, name)}\n{body}{end_marker(owner, name)}\n"
    return text


def update_sections(path: Path, owner: str, sections: dict[str, str], head: str = "") -> str:
    """Replace (or append) ``owner``'s ``sections`` in the file at ``path``, atomically; -> the new text. A file
    that does not exist yet starts with ``head`` (e.g. its title). The file is checked before anything is written."""
    path = Path(path)
    text = path.read_bytes().decode("utf-8") if path.is_file() else head
    new = replace_sections(text, owner, sections)
    write_atomic(path, new)
    return new


def write_atomic(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temp file in the same folder and a rename (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
