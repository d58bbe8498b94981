"""A .gguf file run as it is, as llama.cpp users run theirs: exported once into a cache on first use, then reused.

``ensure_gguf_artifact(path)`` is what every ``onnxlm`` command that takes a model directory does with a GGUF file
(``onnxlm generate model.gguf``, ``onnxlm serve model.gguf``, ...):

* **where:** ``<cache>/gguf/<file stem>-<12 hex digits of its absolute path's sha256>``; the cache is
  ``$ONNXLM_CACHE``, else ``$XDG_CACHE_HOME/onnxlm``, else ``~/.cache/onnxlm``;
* **what:** the file's own blocks (``quantize="gguf"``, accuracy level 4). When the quality gate refuses level 4's
  int8 activations, the fidelity level (1: fp32 activations, the same blocks) is exported instead. A file without
  quantized blocks (F32 / F16 / BF16), or whose graph does not run on blocks (GPT-2; a head size
  GroupQueryAttention cannot take: ``gguf_quant.off_blocks_reason``), becomes the fp32 artifact;
* **reuse:** later runs reuse it while the file's path, size and mtime are those written beside it
  (``<artifact dir>.json``), or, when they moved (a copy, a ``touch``), while its sha256 is the one the manifest
  pins. Another file at that path is exported again, replacing the old artifact, and so is an artifact an earlier
  onnxlm exported when the export has changed since (``EXPORT_REVISION``: e.g. where generation ends). The same
  bytes at a new path (a moved file, a second link) take a current entry's files, linked (``_reuse_same_bytes``):
  the file is hashed once, only where an entry's source has its size;
* **cleaning:** ``gguf_cache.py`` (``onnxlm cache``) lists the entries and prunes those no run will use again;
* **once:** two first runs of one file at once export it once: the second waits on the first's lock
  (``.<artifact dir>.lock``) and takes its artifact;
* **can it:** before anything is written, ``export_resources`` refuses a file whose fp32 export needs more memory
  or disk than this machine has at the least (an 8 B file: ~40 GB of memory), rather than the OOM killer minutes on;
* **needs:** only an export needs torch (the ``export`` extra). A reuse reads two small JSON files and imports
  nothing heavy: the runtime's ``load`` then checks the artifact's own sha256s as always.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from onnxlm.runtime.errors import ExportError, ModelFileError, ParameterError, QualityGateError
from onnxlm.runtime.gguf_magic import GGUF_MAGIC, is_gguf_file
from onnxlm.runtime.versions import check_onnxruntime

from .gguf_splits import split_files

__all__ = ["CACHE_ENV", "cache_root", "check_cache_dir", "is_gguf_file", "artifact_dir_for", "cached_artifact",
           "ensure_gguf_artifact"]

CACHE_ENV = "ONNXLM_CACHE"
LEVELS = (4, 1)  # the default, then the fidelity level when the gate refuses the default's int8 activations
#: What a cache entry's export made, written in its stamp: raise it when the GGUF export changes what an artifact
#: holds, so that entries an earlier onnxlm exported are exported again on their next run (``outdated`` in
#: ``onnxlm cache``) instead of answering as that earlier onnxlm did. A stamp without one is from before revision 2.
#: 2: ``eos_token_id`` lists llama.cpp's end-of-generation ids (a chat GGUF's turn end: Gemma's <end_of_turn>).
#: 3: StableLM files run on their blocks whatever share of a head they rotate (3B's 20 of 80 had been fp32).
#: 4: the graph also gives ``last_hidden_state`` (``embed``, the server's /v1/embeddings) and the GGUF's pooling.
EXPORT_REVISION = 4


def cache_root() -> Path:
    """``$ONNXLM_CACHE``, else ``$XDG_CACHE_HOME/onnxlm``, else ``~/.cache/onnxlm`` (a relative
    ``$XDG_CACHE_HOME`` is ignored, as the XDG spec says: the cache would move with the working directory)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or "").expanduser()
    return (xdg if xdg.is_absolute() else Path.home() / ".cache") / "onnxlm"


def _cache_setting(cache_dir=None) -> str:
    """What chose the cache's place, as an error names it: ``cache_dir``, ``ONNXLM_CACHE``, ``XDG_CACHE_HOME``
    (``<it>/onnxlm``) or ``HOME`` (``~/.cache/onnxlm``)."""
    if cache_dir:
        return "cache_dir"
    if os.environ.get(CACHE_ENV):
        return CACHE_ENV
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or "").expanduser()
    return "XDG_CACHE_HOME" if xdg.is_absolute() else "HOME"


def check_cache_dir(cache_dir=None) -> Path:
    """``<cache>/gguf`` (``cache_dir``, default ``cache_root()``) -> itself, once it is a directory or can be made
    one; a ParameterError naming what set the cache's place (``$ONNXLM_CACHE``, ...) when it, or a folder above it,
    is a file (``ONNXLM_CACHE=/etc/passwd``), or a link to nothing. Nothing is made here."""
    root = Path(cache_dir).expanduser() if cache_dir else cache_root()
    where = root / "gguf"
    for p in (where, root, *root.parents):
        if p.is_dir():
            return where
        if os.path.lexists(p):
            what = "a link to nothing" if p.is_symlink() and not p.exists() else "a file"
            inside = "" if p == root else f" (the GGUF cache goes in {where})"
            setting = _cache_setting(cache_dir)
            fix = ("pass a directory" if setting == "cache_dir" else
                   f"set {CACHE_ENV} to a directory" + (", or unset it" if setting == CACHE_ENV else ""))
            raise ParameterError(setting, f"{p} is {what}, not a directory{inside}: {fix}")
    return where


def _absolute(gguf) -> Path:
    """A path as given -> absolute, links not resolved: a hub cache's model.gguf links to a blob without .gguf."""
    return Path(os.path.abspath(Path(os.fspath(gguf)).expanduser()))


def artifact_dir_for(gguf, cache_dir=None) -> Path:
    """A GGUF file -> its artifact directory in the cache (``cache_dir``, default ``cache_root()``)."""
    gguf = _absolute(gguf)
    key = hashlib.sha256(str(gguf).encode()).hexdigest()[:12]
    stem = gguf.stem.lstrip(".")[:100] or "model"  # never a hidden name: those are the cache's scratch and locks;
    # at most 100 characters, so that the entry's scratch and lock names (~30 more) stay within a file name's 255
    return (Path(cache_dir).expanduser() if cache_dir else cache_root()) / "gguf" / f"{stem}-{key}"


def _stamp(gguf: Path) -> dict:
    """What says a file is unchanged without reading it (its path, size and mtime; a split GGUF's other files'
    sizes and mtimes too), and this export's revision."""
    first, *rest = split_files(gguf)
    st = first.stat()
    stamp = {"path": str(gguf), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "revision": EXPORT_REVISION}
    if rest:
        stamp["splits"] = [[st.st_size, st.st_mtime_ns] for st in (p.stat() for p in rest)]
    return stamp


def stamp_file(target: Path) -> Path:
    return target.with_name(target.name + ".json")


def lock_file(target: Path) -> Path:
    """The lock one export of a file at a time holds (hidden; removed when that export ends)."""
    return target.with_name(f".{target.name}.lock")


def write_stamp(target: Path, gguf: Path) -> None:
    """``gguf``'s stamp beside ``target`` (a read-only cache keeps none: the next run compares the sha256 again)."""
    with contextlib.suppress(OSError):
        stamp_file(target).write_text(json.dumps(_stamp(gguf)), encoding="utf-8")


def _drop_stamp(target: Path) -> None:
    """Remove ``target``'s stamp (there or not)."""
    with contextlib.suppress(OSError):
        stamp_file(target).unlink()


def read_stamp(target: Path) -> dict | None:
    """The stamp beside ``target`` (None when there is none or it is unreadable)."""
    try:
        stamp = json.loads(stamp_file(target).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def _outdated(stamp: dict | None) -> bool:
    """An earlier export revision's stamp (``EXPORT_REVISION``); no stamp (a read-only cache) is not known to be."""
    return stamp is not None and stamp.get("revision", 1) != EXPORT_REVISION


def is_outdated(target: Path) -> bool:
    """True when ``target``'s stamp says an earlier export revision made it (``EXPORT_REVISION``): whatever its
    file, the next run exports it again. An entry without a readable stamp (a read-only cache) is not known to be."""
    return _outdated(read_stamp(target))


def _recorded_source(target: Path) -> dict | None:
    """The record of the GGUF file the cached artifact was exported from (``provenance.file_record``), as its
    manifest pins it (None when the manifest is unreadable: the artifact is then stale)."""
    try:
        manifest = json.loads((target / "onnxlm.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    record = (manifest.get("quantization") or {}).get("source_gguf") or manifest.get("source")
    return record if isinstance(record, dict) else None


def is_current(target: Path, gguf: Path) -> bool:
    """True when ``target`` holds an artifact exported from ``gguf``'s present bytes, its files whole (each file its
    manifest lists there, with the bytes it records: a cut or deleted file makes the entry stale, so the next run
    exports it again and ``onnxlm cache prune`` removes it), by this onnxlm's export (``EXPORT_REVISION``)."""
    if not (target / "onnxlm.json").is_file() or not _files_whole(target):
        return False
    stamp = read_stamp(target)
    if _outdated(stamp):
        return False
    from .provenance import bytes_difference, file_record

    try:
        if stamp == _stamp(gguf):
            return True
        record = _recorded_source(target)
        if record is None or bytes_difference(file_record(gguf), record):  # touched, the same bytes? another file?
            return False
    except ModelFileError:  # a split set not whole now: the export's reader says why
        return False
    write_stamp(target, gguf)
    return True


def _files_whole(target: Path) -> bool:
    """Every file the manifest lists is there with the byte count it records (a stat each; the sha256 is load's)."""
    try:
        manifest = json.loads((target / "onnxlm.json").read_text(encoding="utf-8"))
        files = manifest.get("files", {}) if isinstance(manifest, dict) else None
        if not isinstance(files, dict):
            return False
        return all(isinstance(entry, dict) and (target / name).stat().st_size == entry.get("bytes")
                   for name, entry in files.items())
    except (OSError, ValueError):
        return False


def cached_artifact(gguf, cache_dir=None) -> Path | None:
    """A GGUF file's artifact directory when the cache holds a current one (nothing is exported), else None."""
    path = _absolute(gguf)
    target = artifact_dir_for(path, cache_dir)
    return target if is_current(target, path) else None


def _needs_export_extra(path: Path, exc: ImportError) -> ExportError:
    return ExportError(f"{path.name} is run through an artifact exported from it once, which needs torch, "
                       f"transformers and gguf ({exc}): pip install 'onnxlm[export]', or export it elsewhere "
                       f"(onnxlm export {path.name} DIR --quantize gguf) and pass DIR")


def _export(path: Path, target: Path, log, progress: bool, cache_dir=None) -> None:
    """``path``'s artifact written to ``target`` (replacing a stale one): its own blocks at the first accuracy level
    the gate passes, or fp32 when it has no blocks; one process at a time."""
    try:
        from filelock import FileLock, Timeout
    except ImportError as exc:
        raise _needs_export_extra(path, exc) from exc
    # one export of a file at a time: a second first run (another shell, a second server) waits for the first one's
    # artifact instead of holding a second fp32 model beside it (and reuses it without importing torch)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # not writable here: what set the cache's place is the user's to change
        setting = _cache_setting(cache_dir)
        raise ParameterError(setting, f"cannot make the GGUF cache {target.parent} ({exc.strerror or exc}): "
                                      + ("pass a directory you may write" if setting == "cache_dir" else
                                         f"set {CACHE_ENV} to a directory you may write")) from exc
    lock = FileLock(str(lock_file(target)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"waiting for another process exporting {path.name} into {target} ...")
        lock.acquire()
    try:
        if is_current(target, path):  # that other process made it
            return
        from .atomic_dir import before_replacing

        # the old entry's stamp goes just before the new artifact takes its place (a reuse's links or an export):
        # an interrupt between that swap and the new stamp leaves an entry without one (checked by its sha256 next
        # time), never the new artifact under the old stamp (an earlier revision's: `onnxlm cache prune` would
        # remove it)
        with before_replacing(target, lambda: _drop_stamp(target)):
            if _reuse_same_bytes(path, target, log):  # the file moved, or a second link to it: no second export
                write_stamp(target, path)
                return
            try:  # what the export needs, imported before anything is written (export_model imports them lazily)
                import gguf  # noqa: F401
                import torch  # noqa: F401
                import transformers  # noqa: F401

                from .export import export_model  # noqa: F401
                from .gguf_quant import quantize_gguf_artifact  # noqa: F401
            except ImportError as exc:
                raise _needs_export_extra(path, exc) from exc
            _export_alone(path, target, log, progress)
        write_stamp(target, path)  # before the lock goes: a waiter then reuses it without hashing the file
    finally:
        # removed while held: a waiter let in on the old file finds the artifact current (or, after a failure,
        # exports it itself, as without a lock), and a later run checks the artifact before it takes a lock
        with contextlib.suppress(OSError):
            lock_file(target).unlink()
        lock.release()


def _reuse_same_bytes(path: Path, target: Path, log) -> bool:
    """Another entry of the cache exported from ``path``'s bytes (the file moved, or reached through a second link,
    a hub cache's blob beside its snapshot link): its files linked (copied across file systems) into ``target``,
    True; False when no current entry pins those bytes. ``path`` is hashed only when an entry's source has its size
    (seconds a GB, against minutes of export)."""
    from .atomic_dir import move_into_place, remove_tree, temp_dir_beside
    from .provenance import bytes_difference, file_record

    size, held = path.stat().st_size, None
    for entry in sorted(target.parent.iterdir()):
        if entry == target or entry.name.startswith(".") or not entry.is_dir() or entry.is_symlink():
            continue
        record = _recorded_source(entry)
        if record is None or record.get("bytes") != size or _outdated(read_stamp(entry)) or not _files_whole(entry):
            continue
        try:
            held = held or file_record(path)
        except ModelFileError:  # a split set not whole: the export's reader says why
            return False
        if bytes_difference(held, record) is not None:
            continue
        scratch = temp_dir_beside(target, "reuse")
        try:
            shutil.copytree(entry, scratch, copy_function=_link_or_copy, dirs_exist_ok=True)
            if not _files_whole(scratch):  # the entry changed meanwhile (another export swapped it)
                continue
            move_into_place(scratch, target, force=True)
        except OSError:  # the entry went meanwhile (a prune, a re-export's swap): the next one, else an export
            continue
        finally:
            remove_tree(scratch)
        log(f"{path.name}: the same bytes as the file {entry.name} was exported from: its artifact reused in "
            f"{target} (no second export)")
        return True
    return False


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def _export_alone(path: Path, target: Path, log, progress: bool) -> None:
    """``_export``'s work, under its lock (the imports are ``_export``'s, checked there)."""
    from .atomic_dir import remove_tree, temp_dir_beside
    from .export import export_model
    from .export_resources import check_gguf_export_resources
    from .gguf_quant import file_architecture, file_has_blocks, off_blocks_reason, quantize_gguf_artifact, refuse_file
    from .gguf_reader import gguf_reader

    refuse_file(path)  # not exported at all: said before anything is logged or checked
    arch = file_architecture(path)
    has_blocks = file_has_blocks(path)
    off_blocks = off_blocks_reason(gguf_reader(path)) if has_blocks else None
    blocks = has_blocks and off_blocks is None
    check_gguf_export_resources(path, target, blocks_kept=blocks)  # refused now, not killed later
    log(f"first run of {path.name}: exporting it once to {target} (later runs reuse it; `onnxlm cache` lists "
        "and prunes)")
    if has_blocks and not blocks:
        from .gguf_header import ENCODER_GGUF_ARCHITECTURES

        log(f"{arch}: an embedding model: exporting it in fp32 (dequantized)" if arch in ENCODER_GGUF_ARCHITECTURES
            else f"{arch}: {off_blocks}: exporting it in fp32 (dequantized)")
    replace = target.exists() or target.is_symlink()
    if not blocks:
        export_model(path, target, force=replace, progress=progress)
        return
    scratch = temp_dir_beside(target, "fp32")
    try:
        fp32 = export_model(path, scratch / "fp32", kv_layout="fused", progress=progress)
        for level in LEVELS:
            try:
                quantize_gguf_artifact(fp32, target, gguf=path, accuracy_level=level, force=replace,
                                       progress=progress)
                return
            except QualityGateError as exc:
                if level == LEVELS[-1]:
                    raise QualityGateError(
                        f"{path.name}: the quality gate refused its blocks at accuracy levels {LEVELS} (level "
                        f"{level}: {exc.refusal}). Export it yourself and pass DIR: onnxlm export {path.name} DIR "
                        "(fp32: its numbers exactly), or add --quantize gguf --force-quality to keep its blocks "
                        "anyway", exc.refusal) from exc
                log(f"accuracy level {level} refused by the quality gate ({exc.refusal}); exporting level "
                    f"{LEVELS[LEVELS.index(level) + 1]} instead (fp32 activations, the same blocks)")
    finally:
        remove_tree(scratch)


def ensure_gguf_artifact(gguf, *, cache_dir=None, progress: bool = True) -> Path:
    """A GGUF file -> the directory of its artifact in the cache, exported first when missing or stale (module
    docstring). Raises ModelFileError when ``gguf`` is not a GGUF file, ExportError when the export fails (torch
    missing, an architecture onnxlm does not export, the gate refusing even the fidelity level)."""
    path = Path(os.fspath(gguf)).expanduser()
    if not is_gguf_file(path):
        raise ModelFileError(f"{path}: not a GGUF file (missing, or it does not start with {GGUF_MAGIC!r})", str(path))
    check_onnxruntime()  # before an export: it would be refused at its validation
    path = _absolute(path)
    split_files(path)  # a later file of a split GGUF, or a set not whole, is refused by name before anything else
    check_cache_dir(cache_dir)  # ONNXLM_CACHE=/etc/passwd: said so, naming it
    target = artifact_dir_for(path, cache_dir)
    if is_current(target, path):
        return target
    try:  # an architecture onnxlm does not export: refused from the header alone, before anything is said or written
        from .gguf_reader import refuse_architecture

        refuse_architecture(path)
    except ImportError:  # no gguf to read it with: a runtime-only install may still take another process's export
        pass             # (it waits on the lock below), or ``_export`` says what to install

    def log(msg: str) -> None:
        if progress:
            print(f"[onnxlm] {msg}", file=sys.stderr, flush=True)

    try:
        _export(path, target, log, progress, cache_dir)
    except QualityGateError:
        raise
    except ExportError:
        if not is_current(target, path):  # else another process finished the same export while this one ran
            raise
    write_stamp(target, path)
    return target
