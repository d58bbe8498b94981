"""Artifact directories written atomically: build in a temp dir beside the target, then rename it into place.

Used by ``export.py`` (fp32 exports) and ``quantize.py`` (quantized variants, GGUF-native included): a user's
directory is either the old artifact or the new one, never half of each.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import uuid
from pathlib import Path

from onnxlm.runtime.errors import ExportError


def is_nonempty(p: Path) -> bool:
    """True when ``p`` exists and is a file, a link or a directory with anything in it."""
    if not p.exists() and not p.is_symlink():
        return False
    return not p.is_dir() or any(p.iterdir())


def refuse_taken(out_dir: Path, force: bool, *sources) -> None:
    """ExportError when ``out_dir`` holds something and ``force`` is not set, or, even with ``force``, when it is or
    holds one of ``sources`` (the files the export reads: replacing ``out_dir`` would delete them)."""
    out = Path(out_dir).expanduser().resolve()
    for source in sources:
        if source is None or not isinstance(source, (str, os.PathLike)):
            continue
        src = Path(source).expanduser()
        if not (src.exists() or src.is_symlink()):
            continue
        src = src.resolve()
        if src == out or out in src.parents:
            raise ExportError(f"{out_dir}: the output would replace the input {source} ("
                              + ("the same path" if src == out else "it lies inside") + "); name another OUT_DIR")
    if is_nonempty(out_dir) and not force:
        what = "is not empty" if Path(out_dir).is_dir() else "is not a directory (a file or a link)"
        raise ExportError(f"{out_dir}: exists and {what}; pass force=True (on the command line: --force) to replace it")


def temp_dir_beside(out_dir: Path, tag: str) -> Path:
    """A fresh hidden directory ``.<name>.<tag>-XXXX`` in ``out_dir``'s parent (same file system: rename works);
    ExportError naming ``out_dir`` where its parent cannot be made or written (a file on the way, read-only, a name
    too long)."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{tag}-", dir=out_dir.parent))
    except (FileExistsError, NotADirectoryError):
        on_way = next((p for p in [out_dir.parent, *out_dir.parent.parents] if p.exists() and not p.is_dir()), None)
        raise ExportError(f"{out_dir}: cannot be made: {on_way or out_dir.parent} is a file, not a directory") \
            from None
    except OSError as exc:
        raise ExportError(f"{out_dir}: cannot write beside it in {out_dir.parent} ({exc.strerror or exc})") from None


LEFTOVER_TAGS = ("tmp", "fp32", "old")  # temp_dir_beside's tags: a killed export (kill -9, OOM) leaves such dirs


def leftovers_beside(out_dir: Path) -> list[Path]:
    """Hidden ``.<name>.<tag>-XXXX`` directories beside ``out_dir`` (``LEFTOVER_TAGS``): what an export killed
    without cleanup (kill -9, the OOM killer) left, or the scratch of an export of ``out_dir`` running now."""
    out_dir = Path(out_dir)
    try:
        return sorted(p for p in out_dir.parent.iterdir() if p.is_dir() and not p.is_symlink() and any(
            p.name.startswith(f".{out_dir.name}.{tag}-") for tag in LEFTOVER_TAGS))
    except OSError:
        return []


_REPLACING: dict[str, list] = {}  # out_dir (resolved) -> actions run just before its old artifact is swapped out
_REPLACING_LOCK = threading.Lock()


@contextlib.contextmanager
def before_replacing(out_dir: Path, action):
    """While the block runs, ``move_into_place`` calls ``action()`` just before it swaps ``out_dir``'s old artifact
    out (the GGUF cache removes the old entry's stamp there: an interrupted run then leaves a new entry the next run
    checks by its sha256, never a new entry under the old one's stamp)."""
    key = os.path.realpath(out_dir)
    with _REPLACING_LOCK:
        _REPLACING.setdefault(key, []).append(action)
    try:
        yield
    finally:
        with _REPLACING_LOCK:
            _REPLACING[key].remove(action)
            if not _REPLACING[key]:
                del _REPLACING[key]


@contextlib.contextmanager
def signals_deferred():
    """SIGINT and SIGTERM held while the block runs, then acted on as they would have been: the block (a swap and
    the old artifact's removal, a scratch's removal) runs whole, so an interrupt leaves no half-deleted directory
    beside the output. Only the main thread sets handlers; Python runs none in another thread anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught, previous = [], {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, lambda number, _frame: caught.append(number))
        except (ValueError, OSError):  # not settable here
            continue
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if caught:
            handler = previous.get(caught[0])
            if callable(handler):
                handler(caught[0], None)  # Python's SIGINT handler raises KeyboardInterrupt, the CLI's SIGTERM its own
            elif handler in (signal.SIG_DFL, None):
                signal.raise_signal(caught[0])


def remove_tree(path: Path) -> None:
    """``shutil.rmtree`` of a scratch or an old artifact, whole even when an interrupt arrives meanwhile."""
    with signals_deferred():
        shutil.rmtree(path, ignore_errors=True)


def move_into_place(tmp: Path, out_dir: Path, force: bool) -> None:
    """Rename the finished ``tmp`` to ``out_dir``; an existing one (only with ``force``) is swapped out and removed
    after the new one is in place, and put back if the rename fails. The swap and the removal run whole
    (``signals_deferred``): an interrupt then takes effect after them."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it 0700
    if not (out_dir.exists() or out_dir.is_symlink()):
        os.rename(tmp, out_dir)
        return
    refuse_taken(out_dir, force)  # appeared while we were exporting
    old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
    with signals_deferred():
        with _REPLACING_LOCK:
            actions = list(_REPLACING.get(os.path.realpath(out_dir), ()))
        for action in actions:
            action()
        os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except BaseException:
            os.rename(old, out_dir)
            raise
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
