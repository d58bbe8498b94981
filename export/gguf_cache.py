"""The GGUF artifact cache listed and cleaned: what ``onnxlm cache`` shows, prunes and removes.

``<cache>/gguf`` (``gguf_artifact.cache_root()``) holds, for each GGUF file run as it is, an artifact directory
``<file stem>-<12 hex of its path's sha256>`` and its stamp ``<dir>.json`` naming the file (path, size, mtime).
An entry is

* ``current``: its path holds the file it was exported from (the stamp's size and mtime, else the sha256 that the
  manifest pins);
* ``changed``: other bytes are at that path now (the next run of that path exports again and replaces the entry);
* ``outdated``: an earlier onnxlm exported it, and the export has changed since (``EXPORT_REVISION``): the next run
  of its file exports again and replaces the entry;
* ``missing``: nothing is at that path, or a split GGUF's other files are not all beside it (the file was moved or
  deleted: run from its new place, this entry's files are linked under another name, and this one is never used
  again);
* ``incomplete``: the directory holds no ``onnxlm.json`` (onnxlm renames an entry into place whole: kept);
* ``unknown``: no stamp names its file (a read-only cache, or an export stopped between its last rename and its
  stamp), or its file cannot be stat'ed or read now: ``prune`` keeps it, ``remove`` removes it;
* ``exporting``: no directory yet, but a running export of its file holds its lock (its first export: the bytes are
  its scratch so far); ``prune`` and ``remove`` keep it.

Only names onnxlm writes are the cache's (``ENTRY``, ``SCRATCH``, ``LOCK``, stamps naming a file): anything else in
``<cache>/gguf`` is the user's, never listed or removed. Leftovers are what a killed export (``kill -9``, the OOM
killer: no ``finally`` ran) left beside the entries: its hidden scratch and temp directories
``.<entry>.<tag>-XXXX`` once no export holds the entry's lock (the export takes it before it makes any
scratch, and drops it after), stamps without their directory, and locks no process holds. ``prune`` removes
``changed``, ``outdated`` and ``missing`` entries and the leftovers, each entry under its export lock. Nothing here
imports torch.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import sys
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from onnxlm.runtime.errors import ModelFileError, ParameterError
from onnxlm.runtime.gguf_magic import is_gguf_file

from .gguf_splits import split_files
from .gguf_artifact import (artifact_dir_for, check_cache_dir, is_current, is_outdated, lock_file, read_stamp,
                            stamp_file)

__all__ = ["CacheEntry", "Leftover", "Removal", "STATES", "PRUNED", "gguf_cache_dir", "cache_entries",
           "leftovers", "prune", "prune_retries", "remove", "first_export_running", "disk_bytes", "freed_bytes",
           "linked_entries"]

STATES = ("current", "changed", "outdated", "missing", "incomplete", "unknown", "exporting")
PRUNED = ("changed", "outdated", "missing")  # what `prune` removes (an incomplete entry is not one onnxlm makes: kept)
# only names gguf_artifact writes are the cache's own: anything else in <cache>/gguf is the user's and never touched
ENTRY = re.compile(r"^[^.].*-[0-9a-f]{12}$")  # <file stem>-<12 hex>
SCRATCH = re.compile(r"^\.(?P<entry>[^.].*-[0-9a-f]{12})\.(fp32|tmp|old)-[A-Za-z0-9_-]+$")  # atomic_dir's temp names
LOCK = re.compile(r"^\.(?P<entry>[^.].*-[0-9a-f]{12})\.lock$")
FLOCK = importlib.util.find_spec("fcntl") is not None  # Unix: the export's lock (filelock's flock) can be asked


@dataclass(frozen=True)
class CacheEntry:
    """One artifact of the cache: its directory, the GGUF file it was exported from, its state (``STATES``), its
    bytes (its files' sizes: a file hard-linked into another entry, as the cache's reuse of the same bytes links
    them, counts in both; ``disk_bytes`` counts it once), what it holds (``"gguf blocks, level 4"``, ``"fp32"``),
    when it was exported (epoch s), and its files by identity (``files``: {(st_dev, st_ino): bytes})."""
    path: Path
    source: str | None
    state: str
    bytes: int
    variant: str
    exported: float
    files: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Leftover:
    """Something a killed export left in the cache (a scratch directory, a stamp without its directory)."""
    path: Path
    bytes: int
    why: str
    files: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Removal:
    """What ``prune`` or ``remove`` did (or, with ``dry_run``, would do): the entries and leftovers ``removed``; the
    entries ``kept`` with why (an export of their file holds their lock, or their state changed meanwhile); the
    paths it ``failed`` to delete, with the error (an entry renamed aside and only partly deleted is both removed
    and failed: no run uses it again, and its remains are a leftover ``prune`` retries); ``staying``: the files
    of the entries left in the cache (a removed entry's file hard-linked into one of them frees nothing)."""
    removed: list[CacheEntry]
    leftovers: list[Leftover]
    kept: list[tuple[CacheEntry, str]]
    failed: list[tuple[Path, str]]
    dry_run: bool = False
    staying: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def bytes(self) -> int:
        """Bytes freed (or that would be) on disk: each file once, none that an entry left in the cache links."""
        return freed_bytes(self.removed + self.leftovers, [self.staying])

    def __repr__(self) -> str:
        return (f"Removal(removed={[e.name for e in self.removed]}, leftovers={[x.path.name for x in self.leftovers]}"
                f", kept={[e.name for e, _ in self.kept]}, failed={[str(p) for p, _ in self.failed]}, "
                f"bytes={self.bytes}, dry_run={self.dry_run})")


BUSY = "an export of its file is running"


def gguf_cache_dir(cache_dir=None) -> Path:
    """``<cache>/gguf``: ``cache_dir`` when given, else ``cache_root()``; a ParameterError naming what set it
    (``$ONNXLM_CACHE``, ...) when it cannot be a directory (``gguf_artifact.check_cache_dir``): a cache that is a file
    is not an empty one."""
    return check_cache_dir(cache_dir)


def _files(path: Path) -> dict:
    """A file, or every file under a directory (links not followed) -> {(st_dev, st_ino): bytes}: a file
    hard-linked under two entries has one key."""
    if path.is_symlink() or path.is_file():
        st = path.lstat()
        return {(st.st_dev, st.st_ino): st.st_size}
    found = {}
    for root, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:  # removed meanwhile
                continue
            found[(st.st_dev, st.st_ino)] = st.st_size
    return found


def _union(items) -> dict:
    """Entries, leftovers or ``files`` mappings -> their files together, {(st_dev, st_ino): bytes}: a file linked
    under several, once."""
    every = {}
    for item in items:
        every.update(item if isinstance(item, dict) else item.files)
    return every


def disk_bytes(items) -> int:
    """Bytes on disk of entries, leftovers or ``files`` mappings together: a file linked under several, once."""
    return sum(_union(items).values())


def freed_bytes(gone, staying) -> int:
    """Bytes that removing ``gone`` (entries, leftovers) frees while ``staying`` (entries, ``files`` mappings) stay:
    each file once, none that one of ``staying`` links too."""
    kept = _union(staying)
    return sum(size for key, size in _union(gone).items() if key not in kept)


def linked_entries(entries: list[CacheEntry]) -> dict[str, list[str]]:
    """Entry name -> the names of the other entries holding one of its files (hard links: the cache's reuse of the
    same bytes at another path), for the entries that share any."""
    out = {}
    for e in entries:
        others = [o.name for o in entries if o is not e and e.files.keys() & o.files.keys()]
        if others:
            out[e.name] = others
    return out


def _stamped_source(target: Path) -> str | None:
    """The GGUF path the entry's stamp names, None without a readable stamp."""
    stamp = read_stamp(target)
    return stamp.get("path") if stamp is not None and isinstance(stamp.get("path"), str) else None


def _state(target: Path, source: str | None) -> str:
    """An entry's state (module docstring); ``current`` may read the source's bytes once (its sha256)."""
    if not (target / "onnxlm.json").is_file():
        return "incomplete"
    if source is None:
        return "unknown"
    gguf = Path(source)
    try:
        os.stat(gguf)
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError:  # EACCES, a stale NFS handle, an I/O error: nothing can be said of it now
        return "unknown"
    if is_outdated(target):  # whatever its file's bytes: the next run exports it again
        return "outdated"
    try:
        files = split_files(gguf)
    except ModelFileError:  # a split GGUF whose other files are gone
        return "missing"
    stamped = (read_stamp(target) or {}).get("splits")
    if isinstance(stamped, list) and stamped and len(files) != 1 + len(stamped):  # every other file of its set gone
        return "missing"
    try:
        return "current" if is_gguf_file(gguf) and is_current(target, gguf) else "changed"
    except OSError:  # there, but not readable by this user now: nothing can be said of its bytes
        return "unknown"


def _variant(target: Path) -> str:
    """What the artifact holds, from its manifest: ``gguf blocks, level N`` or ``fp32`` (``?`` when unreadable)."""
    try:
        manifest = json.loads((target / "onnxlm.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "?"
    quant = manifest.get("quantization") if isinstance(manifest, dict) else None
    if not isinstance(quant, dict):
        return "fp32"
    level = quant.get("accuracy_level")
    return f"gguf blocks, level {level}" if quant.get("source_gguf") else str(quant.get("scheme") or "quantized")


def cache_entries(cache_dir=None) -> list[CacheEntry]:
    """Every artifact directory of the GGUF cache, by name, with its state (module docstring)."""
    root = gguf_cache_dir(cache_dir)
    if not root.is_dir():
        return []
    entries = []
    for target in sorted(p for p in root.iterdir() if ENTRY.match(p.name) and p.is_dir()):
        source = _stamped_source(target)
        manifest = target / "onnxlm.json"
        try:
            exported = (manifest if manifest.is_file() else target).stat().st_mtime
        except FileNotFoundError:  # removed meanwhile (another prune, a re-export's swap)
            continue
        files = _files(target)
        entries.append(CacheEntry(target, source, _state(target, source), sum(files.values()), _variant(target),
                                  exported, files))
    return sorted(entries + _first_exports(root, {e.name for e in entries}), key=lambda e: e.name)


def first_export_running(artifact_dir: Path) -> bool:
    """True when a running export is making the cache entry ``artifact_dir`` for the first time (no directory yet)."""
    artifact_dir = Path(artifact_dir)
    root = artifact_dir.parent
    return (not artifact_dir.is_dir() and root.is_dir()
            and any(e.name == artifact_dir.name for e in _first_exports(root, set())))


def _first_exports(root: Path, listed: set[str]) -> list[CacheEntry]:
    """The entries a running export is making for the first time (no directory yet; its lock held): their scratch
    directories' bytes so far, and when the newest was made."""
    scratch: dict[str, list[Path]] = {}
    for p in root.iterdir():
        m = SCRATCH.match(p.name)
        if m and m.group("entry") not in listed and p.is_dir() and not p.is_symlink():
            scratch.setdefault(m.group("entry"), []).append(p)
    out = []
    for entry, dirs in sorted(scratch.items()):
        if not FLOCK or not _exporting(entry, root):  # a killed export's: a leftover (``leftovers``)
            continue
        try:
            started = max(d.stat().st_mtime for d in dirs)
        except FileNotFoundError:  # it finished (or failed) meanwhile
            continue
        files = _union(map(_files, dirs))
        out.append(CacheEntry(root / entry, None, "exporting", sum(files.values()), "export running", started, files))
    return out


def _exporting(entry: str, root: Path) -> bool:
    """True when an export of entry ``entry`` runs: it holds the entry's lock for as long as its scratch exists
    (flock: across processes, containers and NFS, where a pid would say nothing); also when that cannot be told."""
    lock = lock_file(root / entry)
    if not (lock.exists() or lock.is_symlink()):
        return not FLOCK  # made before any scratch and removed after it: no export of this entry runs
    return _held(lock)


def _is_stamp(p: Path) -> bool:
    """True when ``p`` is a stamp as gguf_artifact writes one (a JSON object naming its file)."""
    try:
        return isinstance(json.loads(p.read_text(encoding="utf-8")).get("path"), str)
    except (OSError, ValueError, AttributeError):
        return False


def leftovers(cache_dir=None) -> list[Leftover]:
    """What killed exports left in the GGUF cache (module docstring); a running export's scratch is not listed, and
    nothing whose name onnxlm does not write is ever one."""
    root = gguf_cache_dir(cache_dir)
    if not root.is_dir():
        return []
    found = []
    for p in sorted(root.iterdir()):
        scratch, lock = SCRATCH.match(p.name), LOCK.match(p.name)
        if scratch and p.is_dir() and not p.is_symlink():
            if not _exporting(scratch.group("entry"), root):
                why = "the scratch of an export that no longer runs (its lock is free)"
            else:
                continue
        elif (p.suffix == ".json" and ENTRY.match(p.name[:-5]) and p.is_file() and not p.with_suffix("").is_dir()
              and _is_stamp(p)):
            why = "a stamp without its artifact directory"
        elif lock and p.is_file() and not _held(p):
            why = "a lock no export holds (its export was killed)"
        else:
            continue
        try:
            files = _files(p)
        except FileNotFoundError:  # removed meanwhile
            continue
        found.append(Leftover(p, sum(files.values()), why, files))
    return found


def _flock_now(fd: int) -> bool:
    """Takes ``fd``'s lock without waiting, as filelock takes the export's (``flock``) -> False when another process
    holds it. Closing ``fd`` drops it."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _held(lock: Path) -> bool:
    """True when a process holds ``lock`` (gguf_artifact's export lock), or it cannot be told."""
    if not FLOCK:
        return True
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return True
    try:
        return not _flock_now(fd)
    finally:
        os.close(fd)


def _delete(path: Path, failed: list) -> bool:
    """Remove an entry's directory (renamed aside first, so no reader sees half of one, into a name ``SCRATCH``
    matches), a leftover's (in place: no reader uses it, and its name stays a leftover's) or a file; what cannot be
    deleted goes into ``failed`` as (path, error) -> True when nothing is left under ``path``'s name (an entry
    renamed aside and only partly deleted: its remains are a leftover)."""
    if path.is_dir() and not path.is_symlink():
        aside = path
        if ENTRY.match(path.name):
            aside = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(path, aside)
            except OSError as exc:  # not even renamed aside: the entry is whole and still used
                failed.append((path, exc.strerror or str(exc)))
                return False
        errors = []

        def note(_func, where, exc) -> None:  # exc: the exception (onexc), or sys.exc_info() (onerror, < 3.12)
            exc = exc[1] if isinstance(exc, tuple) else exc
            if not isinstance(exc, FileNotFoundError):  # gone meanwhile (another prune): deleted all the same
                errors.append(f"{where}: {getattr(exc, 'strerror', None) or exc}")

        shutil.rmtree(aside, **{"onexc" if sys.version_info >= (3, 12) else "onerror": note})
        if errors:
            failed.append((aside, f"{errors[0]}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")))
        return aside != path or not errors
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        failed.append((path, exc.strerror or str(exc)))
        return False
    return True


@contextlib.contextmanager
def _unless_exporting(target: Path):
    """Holds ``target``'s export lock (gguf_artifact's) while the entry is removed -> yields False, holding nothing,
    when an export of its file holds it: that export is about to replace or has just replaced the entry."""
    if not FLOCK:  # not Unix: no lock to ask
        yield True
        return
    lock = lock_file(target)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a read-only cache: removing fails anyway, with its own error
        yield True
        return
    try:
        free = _flock_now(fd)
        yield free
        if free:
            with contextlib.suppress(OSError):
                lock.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _busy(entry: CacheEntry) -> bool:
    """True when an export of the entry's file holds its lock now (a dry run's answer; a real run takes the lock)."""
    return FLOCK and _exporting(entry.name, entry.path.parent)


def _remove_entries(entries: list[CacheEntry], still, out: Removal) -> None:
    """Remove each entry and its stamp unless an export holds its lock or ``still(state)`` no longer holds once the
    lock is taken -> ``out``'s removed, kept and failed."""
    for entry in entries:
        if entry.state == "exporting" or (out.dry_run and _busy(entry)):
            out.kept.append((entry, BUSY))
            continue
        if out.dry_run:
            out.removed.append(entry)
            continue
        with _unless_exporting(entry.path) as free:
            if free and not entry.path.is_dir():  # another prune or rm removed it meanwhile
                continue
            state = _state(entry.path, _stamped_source(entry.path)) if free else None
            if not free or not still(state):
                out.kept.append((entry, BUSY if not free else f"it is {state} now"))
                continue
            if _delete(entry.path, out.failed):
                _delete(stamp_file(entry.path), out.failed)
                out.removed.append(entry)


def prune(cache_dir=None, *, dry_run: bool = False) -> Removal:
    """Remove the entries no run will use again (``PRUNED`` states) with their stamps, and the leftovers of killed
    exports -> what was removed, kept and not deleted (``Removal``; with ``dry_run`` what would be). An entry whose
    file an export is writing again (it holds the lock) is left to it."""
    out = Removal([], [], [], [], dry_run)
    extra = leftovers(cache_dir)  # listed first: an entry not wholly deleted below is not retried in the same run
    entries = cache_entries(cache_dir)
    _remove_entries([e for e in entries if e.state in PRUNED], lambda state: state in PRUNED, out)
    for left in extra:
        if dry_run:
            out.leftovers.append(left)
            continue
        lock = LOCK.match(left.path.name)
        if lock:  # removed while held, if still free: a lock an export took meanwhile stays (no leftover now)
            with _unless_exporting(left.path.with_name(lock.group("entry"))) as free:
                pass
            if free and left.path.exists():
                out.failed.append((left.path, "it could not be removed"))
            elif free:
                out.leftovers.append(left)
            continue
        if _delete(left.path, out.failed):  # a leftover not wholly deleted is reported as failed, not removed
            out.leftovers.append(left)
    return _with_staying(out, entries)


def _with_staying(out: Removal, entries: list[CacheEntry]) -> Removal:
    """``out`` knowing the files of the listed entries it did not remove (its ``bytes`` leaves their links out)."""
    gone = {id(e) for e in out.removed}
    return replace(out, staying=_union(e for e in entries if id(e) not in gone))


def prune_retries(path: Path) -> bool:
    """True when ``path`` (a ``Removal.failed`` path) has a name the next ``prune`` looks at again: an entry's
    remains renamed aside or a scratch, a stamp, a lock."""
    return bool(SCRATCH.match(path.name) or LOCK.match(path.name)
                or (path.suffix == ".json" and ENTRY.match(path.stem)))


def _resolve(target, root: Path) -> Path:
    """A GGUF path, an entry's name or an entry's directory -> that entry's directory in ``root`` (ParameterError
    naming ``target`` otherwise; nothing outside the cache is ever removed)."""
    text = os.fspath(target)
    given = Path(text).expanduser()
    candidates = [root / text] if "/" not in text and os.sep not in text else []
    if given.is_dir():
        candidates.insert(0, given)
    if given.suffix == ".gguf" or (given.is_file() and is_gguf_file(given)):
        candidates.append(artifact_dir_for(given, root.parent))  # its entry, whether or not the file still exists
    for c in candidates:
        if (c.is_dir() and ENTRY.match(c.name) and os.path.realpath(c.parent) == os.path.realpath(root)
                and (root / c.name).is_dir()):
            return root / c.name
        if (ENTRY.match(c.name) and os.path.realpath(c.parent) == os.path.realpath(root)
                and any(e.name == c.name for e in _first_exports(root, set()))):
            return root / c.name  # its first export runs now: kept (``remove``)
    raise ParameterError("target", f"{text!r} is neither a GGUF file with an entry in {root} nor an entry's name "
                                   f"(`onnxlm cache` lists them)")


def remove(targets, cache_dir=None, *, dry_run: bool = False) -> Removal:
    """Remove the named entries (GGUF paths, entry names or directories), whatever their state, with their stamps
    -> what was removed, kept (an export of their file is running) and not deleted (``Removal``; with ``dry_run``
    what would be). Every target is resolved before anything is removed."""
    root = gguf_cache_dir(cache_dir)
    dirs = list(dict.fromkeys(_resolve(t, root) for t in targets))
    entries = cache_entries(cache_dir)
    by_dir = {e.path: e for e in entries}
    out = Removal([], [], [], [], dry_run)
    _remove_entries([by_dir[d] for d in dirs if d in by_dir], lambda state: True, out)
    return _with_staying(out, entries)
