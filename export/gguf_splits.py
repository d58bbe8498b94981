"""A GGUF model split over several files, as llama.cpp's ``gguf-split`` (and gguf-py's writer, and so llama.cpp's
converter with ``--split-max-size``) writes large ones: ``<prefix>-00001-of-00003.gguf``, ``<prefix>-00002-of-
00003.gguf``, ... (Qwen's own GGUF repositories split even a 7B Q4_K_M in two). The first file holds the model's
metadata and some tensors; each file records ``split.no`` (0-based), ``split.count`` and, in the first,
``split.tensors.count``. llama.cpp loads the set from its first file's path, finding the others by that naming, and
refuses a later file; so does onnxlm, wherever it takes a GGUF path (export, ``onnxlm generate FILE.gguf``, the
cache, ``onnxlm info``).

* :func:`split_files` -> the set's paths in order, from the name alone (nothing read: the cache's reuse check calls
  it on every run);
* the readers of the set become one (``gguf_reader.gguf_reader``), checked against each file's ``split.*`` keys;
* :func:`split_bytes` -> the set's bytes; ``provenance.file_record`` pins every file's sha256, and the cache's
  stamp every file's size and mtime, so that a changed later file is a changed model.

Nothing here imports gguf or torch.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from onnxlm.runtime.errors import ModelFileError

__all__ = ["SPLIT_NAME", "split_name", "split_files", "split_bytes"]

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
    llama.cpp reads it: the reader reads a first file whose count is 1 (or absent) whole, and refuses a lone file
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
