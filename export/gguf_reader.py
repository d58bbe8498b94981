"""One parsed ``gguf.GGUFReader`` per GGUF file in an export process.

gguf-py's reader parses every metadata field when it is built, element by element (a 262,144-token vocabulary, as
Gemma 3's: ~15 s on the machine of docs/benchmarks.md), and exporting one GGUF built five of them: the metadata
(``gguf.read_gguf_metadata``), the rope factors (``gguf_config.rope_freq_factors``), transformers' config and weight
loads, and the quantizer's tensors (``gguf_quant.GGUFTensors``). ``gguf_reader(path)`` keeps the last two files'
readers (read-only memory maps: nothing resident but the pages read) while a file is unchanged (same resolved path,
size and mtime), and ``readers_shared_with_transformers()`` hands transformers' loader the same one. The reader reads
its file through a plain ndarray view of the memory map: numpy's ``memmap`` subclass costs ~2 us in each of the
millions of small slices the parsing takes (Gemma 3's file: 2.7 s instead of 9-20 s; every field and tensor equal).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np


def gguf_reader(path: str | os.PathLike):
    """path -> its ``gguf.GGUFReader`` (mode "r"), built once while the file is unchanged."""
    st = os.stat(path)
    return _reader(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=2)
def _reader(path: str, size: int, mtime_ns: int):
    from gguf.gguf_reader import GGUFReader  # the class itself, also while gguf.GGUFReader is the shared one

    class Reader(GGUFReader):
        """GGUFReader over an ndarray view of its memory map (same bytes, plain slices)."""

        @property
        def data(self):
            return self._data

        @data.setter
        def data(self, value):
            self._data = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    return Reader(path, "r")


def forget_readers() -> None:
    """Drop the cached readers and so their memory maps (once nothing else holds them): after a GGUF's blocks are
    rewritten nothing reads the file again, and its mapped pages (840 MB for a Llama-3.2-1B-shaped Q4_K_M file)
    would stay resident through the quality gate."""
    _reader.cache_clear()


@contextmanager
def readers_shared_with_transformers():
    """While transformers loads a GGUF file (its loader calls ``gguf.GGUFReader(path)`` itself, once for the config
    and once for the weights), it gets the reader ``gguf_reader`` holds."""
    import gguf

    original = gguf.GGUFReader

    def shared(path, mode="r"):
        return gguf_reader(path) if mode == "r" else original(path, mode)

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = original
