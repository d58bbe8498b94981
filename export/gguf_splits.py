"""A GGUF model split over several files, as llama.cpp's ``gguf-split`` (and gguf-py's writer, and so llama.cpp's
converter with ``--split-max-size``) writes large ones: ``<prefix>-00001-of-00003.gguf``, ``<prefix>-00002-of-
00003.gguf``, ... (Qwen's own GGUF repositories split even a 7B Q4_K_M in two). The first file holds the model's
metadata and some tensors; each file records ``split.no`` (0-based), ``split.count`` and, in the first,
``split.tensors.count``. llama.cpp loads the set from its first file's path, finding the others by that naming, and
refuses a later file; so does onnxlm, wherever it takes a GGUF path (export, ``onnxlm generate FILE.gguf``, the
cache, ``onnxlm info``).

* :func:`split_files` -> the set's paths in order: by the name, once the given file's own header says it is one
  of a set (``split.count`` over 1, as llama.cpp reads it: a whole file named ``x-00001-of-00002.gguf`` is one
  model, whatever lies beside it). Only a file so named with others of its set beside it has its header read (its
  ``split.*`` keys: ``header_split``, plain Python, cached while the file is unchanged);
* the readers of the set become one (``gguf_reader.gguf_reader``), checked against each file's ``split.*`` keys;
* :func:`split_bytes` -> the set's bytes; ``provenance.file_record`` pins every file's sha256, and the cache's
  stamp every file's size and mtime, so that a changed later file is a changed model.

Nothing here imports gguf or torch.
"""
from __future__ import annotations

import mmap
import os
import re
import struct
from functools import lru_cache
from pathlib import Path

from onnxlm.runtime.errors import ModelFileError

__all__ = ["SPLIT_NAME", "split_name", "split_files", "split_bytes", "header_split"]

#: llama.cpp's ``llama_split_path`` naming: ``"%s-%05d-of-%05d.gguf"``, 1-based
SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def split_name(prefix: str, no: int, count: int) -> str:
    """The name of file ``no`` (1-based) of ``count`` in llama.cpp's naming."""
    return f"{prefix}-{no:05d}-of-{count:05d}.gguf"


def split_files(path: str | os.PathLike) -> list[Path]:
    """A GGUF path -> the files of its model in order: ``[path]`` for a whole file; for a name in llama.cpp's split
    naming with a count over 1, the first file given, every file of the set (found beside it by name). Raises
    ModelFileError when a later file of a set is given while others of the set are beside it (llama.cpp loads a set
    from its first file only), or when some of the set's files are missing. A file so named without any of its
    others beside it is returned alone. Whether the file is one of a set is its own ``split.count``'s to say, as
    llama.cpp reads it: a file so named whose header has no ``split.count`` (or a count of 1) is a whole file,
    returned alone, whichever number its name gives it and whatever lies beside it; the reader refuses a lone file
    whose count is over 1."""
    path = Path(os.fspath(path))
    m = SPLIT_NAME.match(path.name)
    if m is None or int(m["count"]) <= 1:
        return [path]
    no, count = int(m["no"]), int(m["count"])
    files = [path.with_name(split_name(m["prefix"], i, count)) for i in range(1, count + 1)]
    others = [p for p in files if p.name != path.name]
    present = [p for p in others if p.exists()]
    if not present:
        return [path]
    keys = header_split(path)
    if keys is not None and (keys.get("split.count") or 1) <= 1:  # a whole file, named as one of a set
        return [path]
    if no != 1:
        raise ModelFileError(f"{path} is file {no} of a GGUF split into {count} files: give its first file, "
                             f"{files[0]} (llama.cpp loads a split model from its first file too)", path=str(path))
    if len(present) < len(others):
        missing = [p.name for p in others if p not in present]
        raise ModelFileError(f"{path} is the first of {count} files of a split GGUF, and {', '.join(missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} not beside it in {path.parent}: is the "
                             "download complete?", path=str(path))
    return files


def split_bytes(path: str | os.PathLike) -> int:
    """The bytes of every file of ``path``'s model (``split_files``)."""
    return sum(p.stat().st_size for p in split_files(path))


#: GGUF value types (gguf-py's GGUFValueType) -> the bytes of one value; STRING and ARRAY are read as they come
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_INTS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 10: "Q", 11: "q"}
_STRING, _ARRAY = 8, 9
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


def header_split(path: str | os.PathLike) -> dict | None:
    """The ``split.*`` integer keys (``SPLIT_KEYS``) a GGUF file's header holds -> {key: value} ({} for a file that
    holds none: a whole model), or None when the header cannot be read (not a GGUF of version 2 or 3, cut short,
    unreadable: the reader says what is wrong). Plain Python, no tensor data read; cached while the file's size and
    mtime are unchanged."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _header_split(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=8)
def _header_split(path: str, size: int, mtime_ns: int) -> dict | None:
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _read_split_keys(data)
    except (OSError, struct.error, ValueError, OverflowError):  # an empty file cannot be mapped: no header either
        return None


def _read_split_keys(data) -> dict | None:
    """``header_split``'s reading of a GGUF file's bytes ``data`` (a memory map): every key/value of the header
    visited (gguf-split writes its keys after the model's), a value skipped unless it is one of ``SPLIT_KEYS``;
    struct.error or ValueError past the end of the file."""
    size = len(data)
    if size < 24 or data[:4] != b"GGUF":
        return None
    order = "<"
    if struct.unpack_from("<I", data, 4)[0] not in (2, 3):  # a big-endian file's version reads byte-swapped
        order = ">"
        if struct.unpack_from(">I", data, 4)[0] not in (2, 3):
            return None
    u32, u64 = struct.Struct(order + "I").unpack_from, struct.Struct(order + "Q").unpack_from
    n_kv = u64(data, 16)[0]
    pos, found = 24, {}
    for _ in range(n_kv):
        n = u64(data, pos)[0]
        key = bytes(data[pos + 8:pos + 8 + n])
        pos += 8 + n
        vtype = u32(data, pos)[0]
        pos += 4
        if vtype == _STRING:
            pos += 8 + u64(data, pos)[0]
        elif vtype == _ARRAY:
            itype, count = u32(data, pos)[0], u64(data, pos + 4)[0]
            pos += 12
            if itype == _STRING:
                if count > (size - pos) // 8:
                    return None
                for _ in range(count):  # each string's length, then its bytes
                    pos += 8 + u64(data, pos)[0]
            elif itype in _SIZES:
                pos += count * _SIZES[itype]
            else:  # nested arrays: no split key is one
                return None
        elif vtype in _SIZES:
            name = key.decode("utf-8", errors="replace")
            if name in SPLIT_KEYS and vtype in _INTS:
                found[name] = struct.unpack_from(order + _INTS[vtype], data, pos)[0]
            pos += _SIZES[vtype]
        else:
            return None
        if pos > size:
            raise ValueError("the header runs past the end of the file")
    return found
