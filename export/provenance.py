"""What an artifact was made from, recorded without the building machine's paths.

A manifest's ``source`` (and a quantized artifact's ``quantization.source_gguf`` / ``source_fp32``) names its source
and pins its bytes, so the same manifest comes out of any machine and a reader can check a file it holds against it:

* a file (a ``.gguf``): ``{"name": "x.gguf", "sha256": ..., "bytes": n}``; a split GGUF's first file adds
  ``"splits": [<the same record of each other file, in order>]``;
* a directory (a transformers checkpoint, a recipe): ``{"name": "<dir name>", "files": {"<relative path>":
  {"sha256": ..., "bytes": n}}}``;
* an onnxlm artifact (the fp32 source of a quantized variant): the same directory form, its files' hashes taken
  from its own manifest (already computed at its export, verified when it is loaded) instead of read again;
* a hub name (or ``<ClassName>`` for a model object without a name): that string.

Manifests written before this module kept an absolute path string; readers accept both (``onnxlm info``,
``gguf_quant.gguf_source``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .gguf_splits import split_files
from .manifest import MANIFEST_FILE, file_table, sha256_file


def file_record(path: Path) -> dict[str, Any]:
    """A file -> {"name", "sha256", "bytes"}; the first file of a split GGUF (``gguf_splits``) also lists its other
    files' records under "splits", in order."""
    path = Path(path)
    rest = split_files(path)[1:] if path.suffix == ".gguf" else []
    return _one_file(path) | ({"splits": [_one_file(p) for p in rest]} if rest else {})


def _one_file(path: Path) -> dict[str, Any]:
    return {"name": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def bytes_difference(held: dict[str, Any], record: dict[str, Any]) -> str | None:
    """How the file ``held`` (a ``file_record``) differs from the recorded one: None when they pin the same bytes
    (the same sha256, of every file of a split GGUF too), else what differs, in words."""
    if held.get("sha256") != record.get("sha256"):
        return f"its sha256 differs from the recorded {str(record.get('sha256'))[:12]}... of {record.get('name')!r}"
    mine, theirs = held.get("splits") or [], record.get("splits") or []
    if len(mine) != len(theirs):
        def what(splits: list) -> str:
            return f"a split GGUF of {len(splits) + 1} files" if splits else "one whole file"
        return f"it is {what(mine)}, the recorded source {what(theirs)}"
    for got, want in zip(mine, theirs):
        if not isinstance(want, dict) or got.get("sha256") != want.get("sha256"):
            name = want.get("name") if isinstance(want, dict) else want
            return f"its split file {got['name']} differs from the recorded {name!r}"
    return None


def source_record(source: str | Path) -> dict[str, Any] | str:
    """A source as ``load_source`` names it (a path string or a hub name) -> its record (module docstring)."""
    path = Path(str(source)).expanduser()
    if path.is_file():
        return file_record(path)
    if path.is_dir():
        manifest = path / MANIFEST_FILE
        if manifest.is_file():  # an onnxlm artifact: its own, verified file table
            return {"name": path.name, "files": json.loads(manifest.read_text(encoding="utf-8"))["files"]}
        return {"name": path.name, "files": file_table(path)}
    if path.is_absolute():  # a model object loaded from a path that is gone: keep its name only
        return path.name
    return str(source)

