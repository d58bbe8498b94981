"""Whether a file is a GGUF file: its first four bytes, whatever its name (a hub cache's blob has no ``.gguf``)."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["GGUF_MAGIC", "is_gguf_file"]

GGUF_MAGIC = b"GGUF"


def is_gguf_file(path) -> bool:
    """True when ``path`` is a file that starts with GGUF's magic bytes."""
    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC
