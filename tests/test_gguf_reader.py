"""One parsed GGUF reader per file (export/gguf_reader.py): the same fields and tensors as gguf-py's own reader, built
once while the file is unchanged and again when it changes, and the same reader handed to transformers' loader only
while it loads (gguf.GGUFReader restored after, also on an error)."""
from __future__ import annotations

import os

import gguf
import numpy as np
import pytest
from gguf_writers import CASES, write_tiny_gguf

from onnxlm.export.gguf_reader import gguf_reader, readers_shared_with_transformers


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, next(iter(CASES)))
    return path


def test_fields_and_tensors_equal_gguf_pys_reader(tiny):
    ours, theirs = gguf_reader(tiny), gguf.GGUFReader(str(tiny), "r")
    assert list(ours.fields) == list(theirs.fields)
    for key, field in theirs.fields.items():
        mine = ours.fields[key]
        assert mine.types == field.types and mine.data == field.data
        assert all(np.array_equal(a, b) for a, b in zip(mine.parts, field.parts)), key
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors):
        assert a.tensor_type == b.tensor_type and np.array_equal(a.data, b.data), a.name


def test_built_once_while_unchanged_and_again_after_a_change(tiny):
    first = gguf_reader(tiny)
    assert gguf_reader(str(tiny)) is first and gguf_reader(tiny.parent / "." / tiny.name) is first
    write_tiny_gguf(tiny, list(CASES)[-1])  # rewritten: another size or mtime
    st = os.stat(tiny)
    os.utime(tiny, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert gguf_reader(tiny) is not first


def test_transformers_gets_the_shared_reader_only_inside_the_block(tiny):
    original = gguf.GGUFReader
    with readers_shared_with_transformers():
        assert gguf.GGUFReader(str(tiny)) is gguf_reader(tiny)
    assert gguf.GGUFReader is original
    with pytest.raises(RuntimeError), readers_shared_with_transformers():
        raise RuntimeError("a failed load")
    assert gguf.GGUFReader is original
