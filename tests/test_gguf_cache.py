"""`onnxlm cache` (export/gguf_cache.py): the GGUF cache's entries listed with their states, pruned and removed.

The entries are laid out as gguf_artifact writes them (a directory with onnxlm.json, its stamp beside it) without
exporting anything; test_gguf_artifact.py's first run lists a real one."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from onnxlm.cli import main
from onnxlm.cli.info import _size
from onnxlm.export import gguf_artifact as GA
from onnxlm.export import gguf_cache as GC
from onnxlm.runtime.errors import ParameterError
from test_no_torch import BLOCKER

fcntl = pytest.importorskip("fcntl", reason="the export lock is a flock(): Unix only")


def _gguf(path, payload: bytes):
    path.write_bytes(b"GGUF" + payload)
    return path


def _entry(cache, gguf, *, stamp: bool = True, manifest: bool = True, level: int = 4):
    """An artifact of ``gguf`` in ``cache`` as gguf_artifact leaves one -> its directory."""
    target = GA.artifact_dir_for(gguf, cache)
    target.mkdir(parents=True)
    (target / "model.onnx_data").write_bytes(b"\0" * 1000)
    if manifest:
        record = {"name": gguf.name, "sha256": hashlib.sha256(gguf.read_bytes()).hexdigest(), "bytes": 9}
        (target / "onnxlm.json").write_text(json.dumps({"quantization": {"source_gguf": record,
                                                                         "accuracy_level": level}}))
    if stamp:
        GA.write_stamp(target, gguf)
    return target


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache holding one entry of every state, and what killed exports leave -> (cache dir, {name: path})."""
    cache, files = tmp_path / "cache", tmp_path / "files"
    files.mkdir()
    monkeypatch.setenv(GA.CACHE_ENV, str(cache))
    p = {"current": _entry(cache, _gguf(files / "current.gguf", b"a")),
         "touched": _entry(cache, _gguf(files / "touched.gguf", b"b")),
         "changed": _entry(cache, _gguf(files / "changed.gguf", b"c")),
         "missing": _entry(cache, _gguf(files / "missing.gguf", b"d")),
         "incomplete": _entry(cache, _gguf(files / "incomplete.gguf", b"e"), manifest=False),
         "unknown": _entry(cache, _gguf(files / "unknown.gguf", b"f"), stamp=False),
         "outdated": _entry(cache, _gguf(files / "outdated.gguf", b"g"))}
    stamp = GA.stamp_file(p["outdated"])  # an earlier export revision's stamp: whatever its file, exported again
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "revision": GA.EXPORT_REVISION - 1}))
    os.utime(files / "touched.gguf", ns=(1, 1))  # the same bytes, another mtime: still current
    _gguf(files / "changed.gguf", b"other bytes")
    (files / "missing.gguf").unlink()
    root = cache / "gguf"
    p["dead"] = root / f".x-0123456789ab.fp32-{_dead_pid()}-k3j2"  # an export killed mid-way (its lock is gone)
    p["old"] = root / ".z-0123456789ab.fp32-q8w7"  # named before pids were
    # an export running (in another pid namespace: its pid means nothing here, its lock does)
    p["running"] = root / f".y-0123456789ab.tmp-{_dead_pid()}-a1b2"
    for name in ("dead", "running", "old"):
        p[name].mkdir()
        (p[name] / "model.onnx_data").write_bytes(b"\0" * 100)
    p["running lock"] = root / ".y-0123456789ab.lock"
    p["running lock"].touch()
    # the user's own things in a cache pointed at a models folder: never onnxlm's to list or remove
    p["user dir"] = root / "llama-3"
    p["user dir"].mkdir()
    _gguf(p["user dir"] / "llama-3-8b.gguf", b"x")
    p["user json"] = root / "notes.json"
    p["user json"].write_text('{"path": "mine"}')
    p["user hidden"] = root / ".git"
    p["user hidden"].mkdir()
    os.utime(p["user hidden"], (time.time() - 2 * 86400,) * 2)
    p["stray stamp"] = root / "gone-0123456789ab.json"
    p["stray stamp"].write_text('{"path": "/nowhere/gone.gguf", "bytes": 5, "mtime_ns": 1}')
    p["stale lock"] = root / ".gone-0123456789ab.lock"  # its export was killed holding it
    p["stale lock"].touch()
    p["held lock"] = root / f".{p['current'].name}.lock"  # an export (of the file put back) holds it
    p["held lock"].touch()
    held = [os.open(p[name], os.O_RDWR) for name in ("held lock", "running lock")]
    for fd in held:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    yield cache, p
    for fd in held:
        os.close(fd)


def test_every_entry_is_listed_with_its_state_size_and_file(cache):
    cache_dir, p = cache
    entries = {e.path: e for e in GC.cache_entries(cache_dir)}
    assert {e.path.name.split("-")[0]: e.state for e in entries.values()} == {
        "current": "current", "touched": "current", "changed": "changed", "missing": "missing",
        "incomplete": "incomplete", "unknown": "unknown", "outdated": "outdated", "y": "exporting"}  # y: its first export runs
    e = entries[p["current"]]
    assert e.source == str(cache_dir.parent / "files" / "current.gguf") and e.variant == "gguf blocks, level 4"
    assert e.bytes == 1000 + (p["current"] / "onnxlm.json").stat().st_size
    assert entries[p["unknown"]].source is None and entries[p["incomplete"]].variant == "?"
    # a touched file is compared by its sha256 once, then stamped again
    assert json.loads(GA.stamp_file(p["touched"]).read_text())["mtime_ns"] == 1
    left = {x.path: x.why for x in GC.leftovers(cache_dir)}
    assert sorted(left) == sorted([p["dead"], p["old"], p["stray stamp"], p["stale lock"]])
    assert left[p["dead"]] == left[p["old"]] == "the scratch of an export that no longer runs (its lock is free)"
    assert left[p["stale lock"]] == "a lock no export holds (its export was killed)"


def test_prune_removes_only_what_no_run_will_use_again(cache):
    cache_dir, p = cache
    before = sorted(x.name for x in (cache_dir / "gguf").iterdir())
    dry = GC.prune(cache_dir, dry_run=True)
    assert sorted(x.name for x in (cache_dir / "gguf").iterdir()) == before  # a dry run removes nothing
    gone = [p["changed"], p["missing"], p["outdated"]]
    assert [e.path for e in dry.removed] == sorted(gone) and dry.kept == dry.failed == []
    assert sorted(x.path for x in dry.leftovers) == sorted([p["dead"], p["old"], p["stray stamp"], p["stale lock"]])
    done = GC.prune(cache_dir)
    assert (done.removed, done.leftovers, done.kept, done.failed) == (dry.removed, dry.leftovers, [], [])
    assert done.bytes == dry.bytes > 2000 and "dry_run=False" in repr(done)
    kept = [p["current"], p["touched"], p["incomplete"], p["unknown"], p["running"], p["running lock"],
            p["held lock"], p["user dir"], p["user json"], p["user hidden"]]
    want = sorted([k.name for k in kept] + [GA.stamp_file(k).name for k in kept[:3]])
    assert sorted(x.name for x in (cache_dir / "gguf").iterdir()) == want
    again = GC.prune(cache_dir)
    assert again.removed == again.leftovers == again.kept == again.failed == []


def test_rm_takes_a_gguf_path_even_of_a_deleted_file_or_an_entry_name(cache, tmp_path):
    cache_dir, p = cache
    files = tmp_path / "files"
    done = GC.remove([files / "missing.gguf", p["touched"].name, str(p["unknown"])], cache_dir)
    assert sorted(e.path for e in done.removed) == sorted([p["missing"], p["touched"], p["unknown"]])
    assert done.kept == done.failed == []
    for gone in (p["missing"], p["touched"], p["unknown"]):
        assert not gone.exists() and not GA.stamp_file(gone).exists()
        assert not GA.lock_file(gone).exists()
    assert p["current"].is_dir()
    # an export of the file holds the entry's lock: the entry is left to it
    for dry_run in (True, False):  # a dry run says so too
        done = GC.remove([files / "current.gguf"], cache_dir, dry_run=dry_run)
        assert done.removed == [] and [(e.path, why) for e, why in done.kept] == [(p["current"], GC.BUSY)]
        assert p["current"].is_dir()


def test_prune_leaves_an_entry_whose_file_an_export_is_writing_again(cache):
    """The entry was changed when listed; an export of the file at its path holds the lock (it is about to replace
    the entry, or has just): prune must not remove what that export puts there."""
    cache_dir, p = cache
    held = os.open(GA.lock_file(p["changed"]), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = GC.prune(cache_dir)
        assert [e.path for e in done.removed] == [p["missing"], p["outdated"]] and p["changed"].is_dir()
        assert [(e.path, why) for e, why in done.kept] == [(p["changed"], GC.BUSY)]  # reported, not hidden
    finally:
        os.close(held)
    assert [e.path for e in GC.prune(cache_dir).removed] == [p["changed"]]  # the export ended (still stale)


@pytest.mark.parametrize("bad", ["no-such-entry", "files", "../files", "elsewhere.gguf", "dead", "llama-3"])
def test_rm_refuses_what_is_not_an_entry_and_removes_nothing(cache, tmp_path, monkeypatch, bad):
    """Every target is checked before anything goes; a directory outside the cache is never one."""
    cache_dir, p = cache
    monkeypatch.chdir(tmp_path)
    before = sorted(x.name for x in (cache_dir / "gguf").iterdir())
    bad = p[bad].name if bad == "dead" else bad  # a leftover is no entry
    with pytest.raises(ParameterError, match=r"^target: .* is neither a GGUF file with an entry in"):
        GC.remove([p["current"].name, bad], cache_dir)
    assert sorted(x.name for x in (cache_dir / "gguf").iterdir()) == before


def test_the_cache_command_lists_prunes_and_removes(cache, capsys):
    cache_dir, p = cache
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{cache_dir / 'gguf'}: 8 entries, ")  # one of them an export running now
    assert f"{p['missing'].name}  " in out and "`onnxlm cache prune` would remove 7 of these" in out
    assert main(["cache", "--json", "ls"]) == 0
    listing = json.loads(capsys.readouterr().out)
    states = {e["name"]: e["state"] for e in listing["entries"]}
    assert (states[p["changed"].name], states[p["outdated"].name]) == ("changed", "outdated")
    assert main(["cache", "prune", "--json"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert len(pruned["removed"]) == 3 and len(pruned["leftovers"]) == 4 and pruned["bytes"] > 2000
    # a named entry that could not be removed (an export of its file runs) is an exit status of 1
    assert main(["cache", "rm", "--dry-run", p["current"].name]) == 1
    assert f"would keep: {p['current'].name} (an export of its file is running" in capsys.readouterr().out
    assert main(["cache", "rm", p["touched"].name, p["current"].name]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"removed: {p['touched'].name} (") and f"kept: {p['current'].name} (an export of " in out
    assert main(["cache", "rm", p["unknown"].name]) == 0
    assert capsys.readouterr().out.startswith(f"removed: {p['unknown'].name} (")
    assert main(["cache", "rm", "nothing-here"]) == 1
    assert capsys.readouterr().err.startswith("onnxlm: error: target: 'nothing-here' is neither")


def test_a_first_export_running_is_listed_and_kept(cache, capsys):
    """An entry whose first export runs (no directory yet, its lock held) is listed as exporting with its scratch's
    bytes so far, and `rm` (by name, dry or not) keeps it, as it keeps an entry being re-exported."""
    cache_dir, p = cache
    running = next(e for e in GC.cache_entries(cache_dir) if e.state == "exporting")
    assert running.path == cache_dir / "gguf" / "y-0123456789ab" and running.bytes == 100 and running.source is None
    assert GC.first_export_running(running.path) and not GC.first_export_running(p["current"])
    for argv, verb in ((["cache", "rm", "--dry-run", running.name], "would keep"), (["cache", "rm", running.name],
                                                                                   "kept")):
        assert main(argv) == 1
        assert f"{verb}: {running.name} (an export of its file is running" in capsys.readouterr().out
    assert p["running"].is_dir()  # its scratch untouched
    assert running.name not in [e.name for e in GC.prune(cache_dir).removed] and p["running"].is_dir()


def test_the_cache_command_imports_no_torch(cache):
    cache_dir, _ = cache
    run = "from onnxlm.cli import main; raise SystemExit(main(['cache', 'prune', '--dry-run']))"
    proc = subprocess.run([sys.executable, "-c", BLOCKER + run], capture_output=True, text=True, timeout=60,
                          env={**os.environ, GA.CACHE_ENV: str(cache_dir)})
    assert proc.returncode == 0 and "would free" in proc.stdout, proc.stderr


def test_a_file_that_cannot_be_read_now_is_unknown_and_kept(cache, monkeypatch):
    """Its bytes cannot be compared (a file of another user's, an unmounted share): prune must not take it."""
    cache_dir, p = cache

    def unreadable(target, gguf):
        raise PermissionError(13, "Permission denied", str(gguf))

    monkeypatch.setattr(GC, "is_current", unreadable)
    states = {e.path: e.state for e in GC.cache_entries(cache_dir)}
    assert states[p["touched"]] == "unknown" and states[p["changed"]] == "unknown"
    GC.prune(cache_dir)
    assert p["touched"].is_dir() and p["changed"].is_dir() and not p["missing"].exists()


def test_the_export_lock_is_seen_held_while_an_export_holds_it(cache):
    """gguf_artifact's lock (filelock) and prune's check (flock) are the same kind of lock."""
    filelock = pytest.importorskip("filelock", reason="the export's lock comes with the 'export' extra")
    cache_dir, p = cache
    assert GA.lock_file(p["current"]) == p["held lock"]  # the fixture's lock is where an export puts its own
    other = cache_dir / "gguf" / ".other-0123456789ab.lock"
    with filelock.FileLock(str(other)):
        assert other not in [x.path for x in GC.leftovers(cache_dir)]
    assert other in [x.path for x in GC.leftovers(cache_dir)]  # released: a stale one (filelock leaves the file)


def test_rm_takes_relative_paths_to_an_entry_and_a_dotted_files_entry_is_no_hidden_name(cache, monkeypatch):
    cache_dir, p = cache
    monkeypatch.chdir(cache_dir / "gguf")
    done = GC.remove([f"./{p['touched'].name}", f"../gguf/{p['unknown'].name}"], cache_dir)
    assert sorted(e.path for e in done.removed) == sorted([p["touched"], p["unknown"]])
    assert GA.artifact_dir_for("/x/.secret.gguf", cache_dir).name.startswith("secret-")


def test_what_could_not_be_deleted_is_reported_and_prune_tries_again(cache, monkeypatch, capsys):
    """An entry renamed aside but not wholly deleted (a file another user owns, an NFS busy file) is removed from
    the cache's view and reported as not deleted, exit status 1; its remains are a leftover for the next prune."""
    cache_dir, p = cache
    real_unlink = os.unlink

    def stuck(path, *args, **kwargs):  # rmtree's own error handling (onexc, or onerror's exc_info before 3.12)
        if os.fspath(path).endswith("model.onnx_data"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", stuck)
    assert main(["cache", "rm", p["touched"].name]) == 1
    out = capsys.readouterr().out
    assert f"removed: {p['touched'].name} (" in out and not p["touched"].exists()
    assert "model.onnx_data: Permission denied (and 1 more)): `onnxlm cache prune` tries again" in out  # + rmdir
    aside = [x.path for x in GC.leftovers(cache_dir) if x.path.name.startswith(f".{p['touched'].name}.old-")]
    assert len(aside) == 1 and aside[0].is_dir()
    failing = GC.prune(cache_dir)  # still stuck: reported once as not deleted, not as removed
    assert [path for path, _ in failing.failed].count(aside[0]) == 1
    assert aside[0] not in [x.path for x in failing.leftovers]
    monkeypatch.setattr(os, "unlink", real_unlink)
    done = GC.prune(cache_dir)
    assert aside[0] in [x.path for x in done.leftovers] and not aside[0].exists() and done.failed == []


def test_what_changed_between_the_listing_and_the_removal_is_not_misreported(cache, monkeypatch):
    """An entry another prune removed meanwhile is neither kept nor removed by this one; a stale lock an export
    took meanwhile stays, and is not reported as removed."""
    import shutil

    cache_dir, p = cache
    [missing] = [e for e in GC.cache_entries(cache_dir) if e.path == p["missing"]]
    shutil.rmtree(missing.path)
    out = GC.Removal([], [], [], [])
    GC._remove_entries([missing], lambda state: True, out)
    assert (out.removed, out.kept, out.failed) == ([], [], [])
    listed = GC.leftovers(cache_dir)
    monkeypatch.setattr(GC, "leftovers", lambda _cache_dir=None: listed)
    taken = os.open(p["stale lock"], os.O_RDWR)
    try:
        fcntl.flock(taken, fcntl.LOCK_EX | fcntl.LOCK_NB)  # an export of that file starts after the listing
        done = GC.prune(cache_dir)
    finally:
        os.close(taken)
    reported = [x.path for x in done.leftovers] + [path for path, _ in done.failed]
    assert p["stale lock"].exists() and p["stale lock"] not in reported
    assert p["dead"] in [x.path for x in done.leftovers] and not p["dead"].exists()


def test_entries_sharing_linked_files_count_them_once(tmp_path, monkeypatch, capsys):
    """The cache's reuse of the same bytes at another path hard-links an entry's files into a second entry: the
    listing's total counts them once and marks both, and removing one of the two frees nothing of them."""
    cache, files = tmp_path / "cache", tmp_path / "files"
    files.mkdir()
    monkeypatch.setenv(GA.CACHE_ENV, str(cache))
    first = _entry(cache, _gguf(files / "first.gguf", b"same"))
    moved = _entry(cache, _gguf(files / "moved.gguf", b"same"))
    (moved / "model.onnx_data").unlink()
    os.link(first / "model.onnx_data", moved / "model.onnx_data")  # as gguf_artifact._reuse_same_bytes links it
    alone = _entry(cache, _gguf(files / "alone.gguf", b"other"))
    (files / "first.gguf").unlink()  # the file moved: its first entry is missing now
    entries = {e.path: e for e in GC.cache_entries(cache)}
    manifest = (first / "onnxlm.json").stat().st_size
    assert entries[first].bytes == entries[moved].bytes == 1000 + manifest  # each entry's own files
    assert GC.disk_bytes(entries.values()) == 2000 + 3 * manifest  # the linked data once
    assert GC.linked_entries(list(entries.values())) == {first.name: [moved.name], moved.name: [first.name]}
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{cache / 'gguf'}: 3 entries, {_size(2000 + 3 * manifest)}\n")
    assert f"{first.name}  {_size(1000 + manifest)}*  missing" in out and "counted once in the total" in out
    assert f"`onnxlm cache prune` would remove 1 of these ({_size(manifest)})" in out  # the linked data stays
    assert main(["cache", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["bytes"] == 2000 + 3 * manifest
    assert {e["name"]: e["linked_with"] for e in listing["entries"]} == {
        first.name: [moved.name], moved.name: [first.name], alone.name: []}
    dry = GC.prune(cache, dry_run=True)
    assert [e.path for e in dry.removed] == [first] and dry.bytes == manifest
    assert main(["cache", "prune"]) == 0
    out = capsys.readouterr().out
    assert "its files stay linked in another entry" in out and out.endswith(f"freed {_size(manifest)}\n")
    assert (moved / "model.onnx_data").stat().st_nlink == 1
    done = GC.remove([moved.name, alone.name], cache)  # the last links: their bytes are freed
    assert done.bytes == 2000 + 2 * manifest and not moved.exists()
