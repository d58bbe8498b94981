"""A .gguf file given to the onnxlm commands in place of an artifact directory (export/gguf_artifact.py): exported
once into $ONNXLM_CACHE/gguf on its own blocks, then reused while the file is unchanged; the fidelity level when
the quality gate refuses level 4; fp32 for a file without blocks; the runtime's `load` says what to do with one."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys

import pytest

pytest.importorskip("gguf", reason="GGUF export needs the 'export' extra (gguf)")

import onnxlm  # noqa: E402
from cli_util import run_cli  # noqa: E402
from onnxlm.cli import main  # noqa: E402
from onnxlm.export import gguf_artifact as GA  # noqa: E402
from onnxlm.runtime.errors import ExportError, ModelFileError, QualityGateError  # noqa: E402
from test_gguf_quant import TYPES, write_tiny_gguf  # noqa: E402
from test_no_torch import BLOCKER  # noqa: E402

PROMPT = ["generate", "Hello there", "--max-new-tokens", "6", "--no-do-sample", "--json"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """`onnxlm generate tiny-llama.gguf ...` run once with an empty cache -> (the file, the cache, stdout, stderr)."""
    base = tmp_path_factory.mktemp("gguf-run")
    gguf, cache = base / "tiny-llama.gguf", base / "cache"
    write_tiny_gguf(gguf)
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setenv(GA.CACHE_ENV, str(cache))
        code = main([PROMPT[0], str(gguf), *PROMPT[1:]])
    assert code == 0, err.getvalue()
    return gguf, cache, out.getvalue(), err.getvalue()


def test_the_first_run_exports_the_file_once_on_its_own_blocks(first_run):
    gguf, cache, out, err = first_run
    target = GA.artifact_dir_for(gguf, cache)
    assert sorted(p.name for p in (cache / "gguf").iterdir()) == [target.name, target.name + ".json"]  # no scratch
    assert f"first run of tiny-llama.gguf: exporting it once to {target}" in err
    q = json.loads((target / "onnxlm.json").read_text())["quantization"]
    assert q["scheme"] == "gguf-q4_1" and q["accuracy_level"] == 4 and not q["forced"]
    assert q["source_gguf"]["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert json.loads((cache / "gguf" / (target.name + ".json")).read_text()) == {
        "path": str(gguf), "bytes": gguf.stat().st_size, "mtime_ns": gguf.stat().st_mtime_ns,
        "revision": GA.EXPORT_REVISION}
    # the command ran that artifact
    want = onnxlm.load(target).generate("Hello there", max_new_tokens=6, do_sample=False)
    assert json.loads(out)["token_ids"] == want.sequences[0, -6:].tolist()


def test_later_runs_reuse_it_while_the_file_is_unchanged(first_run, capsys, monkeypatch):
    gguf, cache, out, _ = first_run
    monkeypatch.setenv(GA.CACHE_ENV, str(cache))

    def no_export(*a, **k):
        raise AssertionError("exported again")

    monkeypatch.setattr(GA, "_export", no_export)
    code, again, err = run_cli(capsys, PROMPT[0], gguf, *PROMPT[1:])
    assert code == 0 and again == out and "first run" not in err
    # a touched file (same bytes, a new mtime) is read once to compare its sha256, then stamped anew
    stat = gguf.stat()
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    code, again, err = run_cli(capsys, PROMPT[0], gguf, *PROMPT[1:])
    assert code == 0 and again == out, err
    stamp = json.loads((cache / "gguf" / (GA.artifact_dir_for(gguf, cache).name + ".json")).read_text())
    assert stamp["mtime_ns"] == stat.st_mtime_ns + 10**9


def test_chat_on_a_gguf_without_a_template_names_the_file(first_run, capsys, monkeypatch):
    gguf, cache, _, _ = first_run
    monkeypatch.setenv(GA.CACHE_ENV, str(cache))
    code, out, err = run_cli(capsys, "chat", gguf, "Hello")
    assert code == 1 and out == "", err
    assert f"onnxlm: error: {gguf} has no chat template (its metadata holds no tokenizer.chat_template" in err
    # the runtime (the API, the server, the jobs) names the file as well
    with pytest.raises(ModelFileError, match=r"has no chat template: tiny-llama\.gguf, the GGUF file it was "
                                             r"exported from, holds no tokenizer\.chat_template"):
        onnxlm.load(GA.artifact_dir_for(gguf, cache)).render_chat([{"role": "user", "content": "Hello"}])


def test_chat_on_a_gguf_without_a_template_is_refused_before_its_first_run_exports_it(first_run, tmp_path, capsys,
                                                                                        monkeypatch):
    gguf = first_run[0]
    monkeypatch.setenv(GA.CACHE_ENV, str(tmp_path / "empty-cache"))

    def no_export(*a, **k):
        raise AssertionError("exported")

    monkeypatch.setattr(GA, "_export", no_export)
    for argv, instead in ((("chat", gguf, "Hello"), "use onnxlm generate"),
                          (("generate", gguf, "Hello", "--chat"), "drop --chat")):
        code, out, err = run_cli(capsys, *argv)
        assert code == 1 and out == "", err
        assert err.strip() == (f"onnxlm: error: {gguf} has no chat template (its metadata holds no "
                               f"tokenizer.chat_template: a base model?); {instead} for plain continuations")


def test_the_cache_lists_the_first_runs_artifact_as_current(first_run):
    from onnxlm.export.gguf_cache import cache_entries

    gguf, cache, _, _ = first_run
    [entry] = [e for e in cache_entries(cache) if e.path == GA.artifact_dir_for(gguf, cache)]
    assert (entry.source, entry.state, entry.variant) == (str(gguf), "current", "gguf blocks, level 4")


def test_a_second_first_run_waits_for_the_first_ones_artifact(first_run, tmp_path):
    """Two first runs of one file at once: the second waits on the first's lock and takes its artifact, rather than
    holding a second fp32 model beside it; it exports nothing."""
    import shutil
    import threading

    from filelock import FileLock

    gguf, cache, _, _ = first_run
    other = tmp_path / "cache"
    done = GA.artifact_dir_for(gguf, cache)
    target = GA.artifact_dir_for(gguf, other)
    target.parent.mkdir(parents=True)
    lock = FileLock(str(GA.lock_file(target)))
    lock.acquire()  # "the first run", in progress
    result, err = {}, io.StringIO()

    def second_run():
        with contextlib.redirect_stderr(err):
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(GA, "_export_alone", lambda *a: result.setdefault("exported", True))
                result["dir"] = GA.ensure_gguf_artifact(gguf, cache_dir=other)

    thread = threading.Thread(target=second_run)
    thread.start()
    for _ in range(200):
        if "waiting for another process exporting tiny-llama.gguf" in err.getvalue():
            break
        thread.join(0.05)
    assert "waiting for another process" in err.getvalue() and thread.is_alive()
    shutil.copytree(done, target)  # the first run's artifact lands, then its lock is released
    lock.release()
    thread.join(60)
    assert result == {"dir": target} and "first run" not in err.getvalue()


def test_a_waiting_run_without_torch_reuses_the_first_ones_artifact(first_run, tmp_path):
    """The lock is taken before torch is imported: a second first run in an environment without the export extra
    (a runtime-only venv sharing the cache) waits for the first run's artifact and runs it."""
    import shutil

    from filelock import FileLock

    gguf, cache, _, _ = first_run
    other = tmp_path / "cache"
    target = GA.artifact_dir_for(gguf, other)
    target.parent.mkdir(parents=True)
    lock = FileLock(str(GA.lock_file(target)))
    lock.acquire()  # "the first run", in progress
    run = (f"from onnxlm.export.gguf_artifact import ensure_gguf_artifact; "
           f"print(ensure_gguf_artifact({str(gguf)!r}, cache_dir={str(other)!r}))")
    proc = subprocess.Popen([sys.executable, "-c", BLOCKER + run], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert "waiting for another process exporting tiny-llama.gguf" in proc.stderr.readline()
        shutil.copytree(GA.artifact_dir_for(gguf, cache), target)  # the first run's artifact lands
    finally:
        lock.release()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.strip() == str(target), err


def test_another_file_at_the_same_path_is_not_its_artifact(first_run):
    """Other bytes at the file's path (the stamp and the manifest's sha256 both differ): the cached artifact is
    stale, so the next run exports again; the file's own bytes back, it is current again."""
    gguf, cache, _, _ = first_run
    target, held, stat = GA.artifact_dir_for(gguf, cache), gguf.read_bytes(), gguf.stat()
    try:
        write_tiny_gguf(gguf, embedding="Q4_0")
        assert not GA.is_current(target, gguf)
    finally:
        gguf.write_bytes(held)
        os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert GA.is_current(target, gguf)


def test_the_same_bytes_by_another_path_reuse_the_artifact(first_run, tmp_path, monkeypatch):
    """A moved file, or a second link to it (a hub cache's blob and its snapshot link): another path, so another
    entry, but no second export: the first entry's files are linked into it (the bytes' sha256 checked); other
    bytes of that size are exported as ever."""
    import shutil

    gguf, cache, _, _ = first_run
    cache = shutil.copytree(cache, tmp_path / "cache")  # the module's cache stays as the other tests expect it
    first = GA.artifact_dir_for(gguf, cache)

    def no_export(*a, **k):
        raise AssertionError("exported")

    monkeypatch.setattr(GA, "_export_alone", no_export)
    moved, link = tmp_path / "elsewhere" / "renamed.gguf", tmp_path / "blob"
    moved.parent.mkdir()
    shutil.copy2(gguf, moved)
    link.symlink_to(gguf)
    for other in (moved, link):
        target = GA.ensure_gguf_artifact(other, cache_dir=cache, progress=False)
        assert target == GA.artifact_dir_for(other, cache) != first and GA.is_current(target, other)
        assert (target / "model.onnx_data").stat().st_ino == (first / "model.onnx_data").stat().st_ino  # linked
        got = onnxlm.load(target).generate("Hello there", max_new_tokens=4, do_sample=False).sequences
        assert (got == onnxlm.load(first).generate("Hello there", max_new_tokens=4, do_sample=False).sequences).all()
    same_size = tmp_path / "same-size.gguf"  # one weight byte changed: the size matches, the sha256 does not
    data = bytearray(gguf.read_bytes())
    data[-1] ^= 1
    same_size.write_bytes(bytes(data))
    other_bytes = tmp_path / "other.gguf"
    write_tiny_gguf(other_bytes, embedding="Q4_0")
    for other in (same_size, other_bytes):
        with pytest.raises(AssertionError, match="exported"):
            GA.ensure_gguf_artifact(other, cache_dir=cache, progress=False)
    # the entry going while its files are linked (a prune meanwhile): not reused, exported instead (no OSError)
    gone = tmp_path / "gone.gguf"
    shutil.copy2(gguf, gone)

    def vanishing(src, dst):
        raise FileNotFoundError(src)

    monkeypatch.setattr(GA, "_link_or_copy", vanishing)
    with pytest.raises(AssertionError, match="exported"):
        GA.ensure_gguf_artifact(gone, cache_dir=cache, progress=False)
    assert not [p for p in (cache / "gguf").iterdir() if ".reuse-" in p.name]  # no scratch left


def test_an_interrupt_after_the_new_entry_is_in_place_never_leaves_it_under_the_old_stamp(first_run, tmp_path,
                                                                                          monkeypatch):
    """Re-exporting an outdated entry, interrupted after the new artifact took its place but before its stamp was
    written: the old stamp went just before the swap, so the entry is "unknown" (kept by prune), not "outdated"
    (which prune would remove), and the next run finds it current by its sha256 and stamps it, exporting nothing."""
    import shutil

    from onnxlm.export import gguf_cache as GC

    gguf, cache, _, _ = first_run
    cache = shutil.copytree(cache, tmp_path / "cache")
    target = GA.artifact_dir_for(gguf, cache)
    _interrupted_before_its_stamp(monkeypatch, gguf, cache, target)
    assert [e.state for e in GC.cache_entries(cache)] == ["unknown"]
    assert GC.prune(cache).removed == [] and target.is_dir()

    def no_export(*a, **k):
        raise AssertionError("exported")

    monkeypatch.setattr(GA, "_export_alone", no_export)
    assert GA.ensure_gguf_artifact(gguf, cache_dir=cache, progress=False) == target
    assert json.loads(GA.stamp_file(target).read_text())["revision"] == GA.EXPORT_REVISION
    assert [e.state for e in GC.cache_entries(cache)] == ["current"]


def test_an_interrupted_reuse_never_leaves_its_links_under_the_old_stamp(first_run, tmp_path, monkeypatch):
    """The same bytes at a second path whose own entry is outdated: the reuse links the current entry's files into
    it; interrupted before the new stamp, the entry has none (unknown, kept), not the old revision's."""
    import shutil

    from onnxlm.export import gguf_cache as GC

    gguf, cache, _, _ = first_run
    cache = shutil.copytree(cache, tmp_path / "cache")
    moved = tmp_path / "moved.gguf"
    shutil.copy2(gguf, moved)
    target = GA.ensure_gguf_artifact(moved, cache_dir=cache, progress=False)  # linked from the first entry
    _interrupted_before_its_stamp(monkeypatch, moved, cache, target)
    assert {e.path: e.state for e in GC.cache_entries(cache)}[target] == "unknown"


def _interrupted_before_its_stamp(monkeypatch, gguf, cache, target) -> None:
    """``target``'s entry stamped by an earlier export revision, then run again and interrupted just before its new
    stamp: asserts it is left without one."""
    stamp = json.loads(GA.stamp_file(target).read_text())
    GA.stamp_file(target).write_text(json.dumps({**stamp, "revision": GA.EXPORT_REVISION - 1}))

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(GA, "write_stamp", interrupted)
    with pytest.raises(KeyboardInterrupt):
        GA.ensure_gguf_artifact(gguf, cache_dir=cache, progress=False)
    monkeypatch.undo()
    assert not GA.stamp_file(target).exists()


def test_an_entry_an_earlier_export_made_is_exported_again(first_run, capsys, monkeypatch):
    """An entry stamped by an earlier export revision (a stamp from before revisions: none in it), its file
    unchanged: not current, `onnxlm info` and `onnxlm cache` say so, and the next run exports it again in place."""
    from onnxlm.export import gguf_cache as GC

    gguf, cache, out, _ = first_run
    monkeypatch.setenv(GA.CACHE_ENV, str(cache))
    target = GA.artifact_dir_for(gguf, cache)
    stamp = json.loads(GA.stamp_file(target).read_text())
    GA.stamp_file(target).write_text(json.dumps({k: v for k, v in stamp.items() if k != "revision"}))
    assert GA.is_outdated(target) and not GA.is_current(target, gguf) and GA.cached_artifact(gguf) is None
    assert [e.state for e in GC.cache_entries(cache)] == ["outdated"]
    code, shown, _ = run_cli(capsys, "info", gguf)
    assert code == 0 and f"{target} was exported by an earlier onnxlm whose export has changed since" in shown
    assert [e.path for e in GC.prune(cache, dry_run=True).removed] == [target]  # prune would remove it
    code, again, err = run_cli(capsys, PROMPT[0], gguf, *PROMPT[1:])
    assert code == 0 and again == out and f"exporting it once to {target}" in err
    assert json.loads(GA.stamp_file(target).read_text()) == stamp and GA.is_current(target, gguf)
    assert sorted(p.name for p in (cache / "gguf").iterdir()) == [target.name, target.name + ".json"]


def test_serve_takes_the_gguf_file_and_names_the_model_after_it(first_run):
    """`onnxlm serve tiny-llama.gguf` in a process where torch, transformers, gguf and onnx cannot be imported:
    the cached artifact serves, under the file's name."""
    import httpx
    from serve_util import wait_health

    gguf, cache, _, _ = first_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, GA.CACHE_ENV: str(cache), "ONNXLM_THREADS": "1"}
    serve = f"from onnxlm.cli import main; main(['serve', {str(gguf)!r}, '--port', '{port}', '--log-level', 'warning'])"
    proc = subprocess.Popen([sys.executable, "-c", BLOCKER + serve], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # torch, transformers, gguf, onnx: not importable
    try:
        url = f"http://127.0.0.1:{port}"
        wait_health(url, timeout=60)
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["tiny-llama"]
        r = httpx.post(url + "/v1/completions", json={"model": "tiny-llama", "prompt": "Hello there", "max_tokens": 4,
                                                      "temperature": 0}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4, r.text
    finally:
        proc.kill()
        proc.wait()
    assert b"first run" not in proc.stdout.read()  # the cached artifact, not a new export


def test_the_fidelity_level_when_the_gate_refuses_level_4(tmp_path, monkeypatch, capsys):
    """This file reads ~0.978 top-1 agreement at level 4 and 1.0 at level 1: with the bound at 0.99 the gate refuses
    level 4, and the artifact keeps the same blocks at level 1."""
    from onnxlm.export import quality

    gguf = tmp_path / "tiny-llama.gguf"
    write_tiny_gguf(gguf)
    monkeypatch.setattr(quality, "MIN_TOP1_AGREEMENT", 0.99)
    target = GA.ensure_gguf_artifact(gguf, cache_dir=tmp_path / "cache")
    q = json.loads((target / "onnxlm.json").read_text())["quantization"]
    assert q["accuracy_level"] == 1 and q["scheme"] == "gguf-q4_1" and not q["forced"]
    assert q["quality"]["top1_agreement"] >= 0.99
    err = capsys.readouterr().err
    assert "accuracy level 4 refused by the quality gate (top-1 agreement with fp32 0.9" in err
    assert "exporting level 1 instead" in err


def test_when_both_levels_are_refused_the_error_says_what_to_run(tmp_path, monkeypatch):
    from onnxlm.export import export as E, gguf_quant

    gguf = tmp_path / "m.gguf"
    write_tiny_gguf(gguf)
    levels = []

    def refuse(src, out_dir, *, accuracy_level, **kw):
        levels.append(accuracy_level)
        raise QualityGateError("quantized variant refused: ...", "top-1 agreement with fp32 0.5 < 0.97")

    monkeypatch.setattr(E, "export_model", lambda path, out, **kw: out.mkdir() or out)  # no fp32 export needed here
    monkeypatch.setattr(gguf_quant, "quantize_gguf_artifact", refuse)
    with pytest.raises(QualityGateError, match=r"m\.gguf: the quality gate refused its blocks at accuracy levels "
                                               r"\(4, 1\) \(level 1: top-1 agreement .*onnxlm export m\.gguf DIR"):
        GA.ensure_gguf_artifact(gguf, cache_dir=tmp_path / "cache", progress=False)
    assert levels == [4, 1]
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []  # no artifact, no scratch, no stamp


def test_a_file_without_blocks_becomes_the_fp32_artifact(tmp_path):
    """An F16 file, reached as a hub cache holds one: a model.gguf link to a blob named by its hash (and that blob
    itself, without the .gguf suffix)."""
    blob, gguf = tmp_path / "blobs" / "1f0e5d", tmp_path / "snapshots" / "f16.gguf"
    blob.parent.mkdir()
    gguf.parent.mkdir()
    write_tiny_gguf(blob, types=[{k: "F16" for k in layer} for layer in TYPES], embedding="F16")
    gguf.symlink_to(os.path.relpath(blob, gguf.parent))
    target = GA.ensure_gguf_artifact(gguf, cache_dir=tmp_path / "cache", progress=False)
    assert target.name.startswith("f16-")
    m = json.loads((target / "onnxlm.json").read_text())
    assert "quantization" not in m and m["dtype"] == "float32" and m["source"]["name"] == "f16.gguf"
    # the blob itself, named by its hash alone: a GGUF by its magic bytes, the same bytes: the link's artifact reused
    again = GA.ensure_gguf_artifact(blob, cache_dir=tmp_path / "cache", progress=False)
    assert again.name.startswith("1f0e5d-") and GA.is_current(again, blob)
    assert all((again / f).stat().st_ino == (target / f).stat().st_ino for f in m["files"])  # linked


def test_a_first_run_without_the_export_extra_says_what_to_install(tmp_path):
    gguf = tmp_path / "tiny-llama.gguf"
    write_tiny_gguf(gguf)
    run = f"from onnxlm.cli import main; raise SystemExit(main(['generate', {str(gguf)!r}, 'Hello']))"
    proc = subprocess.run([sys.executable, "-c", BLOCKER + run], capture_output=True, text=True, timeout=120,
                          env={**os.environ, GA.CACHE_ENV: str(tmp_path / "cache")})
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr
    assert ("tiny-llama.gguf is run through an artifact exported from it once, which needs torch, transformers and "
            "gguf") in proc.stderr and "pip install 'onnxlm[export]'" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_load_of_a_gguf_file_says_how_to_run_it(first_run, tmp_path):
    gguf = first_run[0]
    with pytest.raises(ModelFileError, match=r"is a GGUF file, not a model directory: export it once \(onnxlm "
                                             r"export .*tiny-llama\.gguf DIR --quantize gguf"):
        onnxlm.load(gguf)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(ModelFileError, match=r"notes\.txt is a file, not a model directory"):
        onnxlm.load(other)
    with pytest.raises(ModelFileError, match=r"notes\.txt: not a GGUF file"):
        GA.ensure_gguf_artifact(other)


def test_info_describes_a_gguf_file_and_its_cached_artifact_without_exporting(first_run, tmp_path, capsys,
                                                                             monkeypatch):
    gguf, cache, _, _ = first_run
    monkeypatch.setenv(GA.CACHE_ENV, str(cache))
    code, out, err = run_cli(capsys, "info", gguf)
    assert code == 0, err
    for line in ("  architecture    llama: onnxlm exports it",
                 "  shape           2 layers, hidden 64, context length 64",
                 "in 20 tensors: Q4_1 9, F32 5, Q4_0 3, ",  # most first
                 "  --quantize gguf every quantized tensor keeps its blocks",
                 "  tokenizer       gpt2 / default, 260 tokens: byte-level BPE, llama.cpp's 'default' split",
                 f"  artifact        {GA.artifact_dir_for(gguf, cache)} (described below)",
                 "  quantization    gguf-q4_1 weight-only"):  # the cached artifact's own description follows
        assert line in out, out
    # a file not run yet: its header only, and where the first run will put it (nothing is exported)
    fresh = tmp_path / "fresh.gguf"
    write_tiny_gguf(fresh)
    code, out, err = run_cli(capsys, "info", fresh, "--json")
    info = json.loads(out)
    assert code == 0 and info["artifact"] is None and info["artifact_dir"] is None, err
    assert info["gguf"]["tokenizer"]["supported"] and info["gguf"]["parameters"] > 0
    code, out, err = run_cli(capsys, "info", fresh)
    n, size = info["gguf"]["parameters"], fresh.stat().st_size
    assert code == 0 and (f"exports it into {GA.artifact_dir_for(fresh, cache)} ({5 * n / 1024:.1f} KiB of memory "
                          f"and {(4 * n + size) / 1024:.1f} KiB of disk at the least, once)") in out, out
    assert not GA.artifact_dir_for(fresh, cache).exists()
    # a file without blocks: its export is the fp32 artifact alone (no second artifact on the disk floor)
    plain = tmp_path / "plain.gguf"
    write_tiny_gguf(plain, types=[dict.fromkeys(TYPES[0], "F32")] * 2, embedding="F32")
    code, out, err = run_cli(capsys, "info", plain)
    n = json.loads(run_cli(capsys, "info", plain, "--json")[1])["gguf"]["parameters"]
    assert code == 0 and f"{5 * n / 1024:.1f} KiB of memory and {4 * n / 1024:.1f} KiB of disk at the least" in out


@pytest.mark.parametrize("case", ["gpt2", "llama-head-12", "stablelm", "stablelm-no-rope-dims"])
def test_info_says_which_gguf_file_runs_in_fp32(tmp_path, capsys, case):
    """A Q8_0 GPT-2 file, or a Llama one whose head size (12) GroupQueryAttention cannot take: onnxlm exports it,
    but not on its blocks: info says why and counts the fp32 export's needs, as for a file without blocks. StableLM
    files rotating 8 of 16 head dims or every one run on their blocks (the fused graph)."""
    from gguf_writers import write_tiny_gguf as write_arch_gguf
    from test_gguf_quant import OFF_BLOCKS_WHY

    path = tmp_path / f"{case}.gguf"
    write_arch_gguf(path, case, block_type="Q8_0")
    code, out, err = run_cli(capsys, "info", path)
    arch = case.split("-")[0]
    assert code == 0, err
    assert f"{arch}: onnxlm exports it" in out
    why = OFF_BLOCKS_WHY.get(case)
    n = json.loads(run_cli(capsys, "info", path, "--json")[1])["gguf"]["parameters"]
    if why is None:
        assert "--quantize gguf refused" not in out and "every quantized tensor keeps its blocks" in out
        return
    assert f"--quantize gguf refused: {arch}: {why}: export it in fp32, or --quantize int8" in out
    assert f"{5 * n / 1024:.1f} KiB of memory and {4 * n / 1024:.1f} KiB of disk at the least" in out


def test_info_and_export_refuse_stablelm_2_12bs_q_k_norms_by_name(tmp_path, capsys, no_weight_loads):
    """StableLM 2 12B's per-head q/k LayerNorms (attn_q_norm / attn_k_norm, which llama.cpp applies): transformers'
    loader has no place for them; info and the export refuse the file naming them, before any weights load."""
    import numpy as np
    from gguf_writers import HEAD_DIM, HEADS, KV_HEADS
    from gguf_writers import write_tiny_gguf as write_arch_gguf

    from onnxlm.export import export_model

    path = tmp_path / "stablelm.gguf"
    norms = {f"blk.{i}.attn_{p}_norm.weight": np.ones((n, HEAD_DIM), np.float32)
             for i in range(2) for p, n in (("q", HEADS), ("k", KV_HEADS))}
    write_arch_gguf(path, "stablelm", extra_tensors=norms)
    why = ("blk.0.attn_q_norm.weight (2 such tensors): StableLM 2 12B's per-head q/k LayerNorms, which onnxlm does "
           "not export from GGUF")
    code, out, err = run_cli(capsys, "info", path)
    assert code == 0 and f"stablelm: onnxlm does not export this file: {why}" in out, out
    assert "  artifact        none: onnxlm cannot run this file" in out
    for quantize in (None, "gguf"):  # with blocks asked for: the same refusal, not the rotary's (its 8 of 16 dims)
        with pytest.raises(ExportError, match=re.escape(f"stablelm.gguf: {why}")):
            export_model(path, tmp_path / "out", quantize=quantize, progress=False)


def test_info_says_when_onnxlm_cannot_run_a_gguf_file(tmp_path, capsys, monkeypatch):
    from gguf_vocabs import write_vocab_gguf
    from gguf_writers import CASES
    from gguf_writers import write_tiny_gguf as write_arch_gguf

    monkeypatch.setitem(CASES, "falcon", ("falcon", {}, None))
    write_arch_gguf(tmp_path / "falcon.gguf", "falcon")
    code, out, err = run_cli(capsys, "info", tmp_path / "falcon.gguf")
    assert code == 0, err
    assert ("falcon: onnxlm does not export it (it exports llama, qwen2, qwen3, phi3, gemma, gemma2, gemma3, granite, "
            "smollm3, olmo2, ernie4_5, exaone4, gpt2, stablelm, lfm2; as embedding models: bert, nomic-bert)") in out
    assert "  artifact        none: onnxlm cannot run this file" in out
    # an architecture it exports, with a setting the export refuses (YaRN in Gemma 3): said from the header, as the
    # export would; a Qwen2 file's YaRN is read (gguf_config.YARN_ARCHS): exported
    monkeypatch.setitem(CASES, "gemma3-yarn", ("gemma3", {"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0},
                                               None))
    write_arch_gguf(tmp_path / "yarn.gguf", "gemma3-yarn")
    code, out, err = run_cli(capsys, "info", tmp_path / "yarn.gguf")
    assert code == 0, err
    assert "gemma3: onnxlm does not export this file: gemma3.rope.scaling.type = 'yarn' (factor 4.0)" in out
    assert "  artifact        none: onnxlm cannot run this file" in out
    write_arch_gguf(tmp_path / "qwen2-yarn.gguf", "qwen2-yarn")
    code, out, err = run_cli(capsys, "info", tmp_path / "qwen2-yarn.gguf")
    assert code == 0 and "does not export" not in out and "cannot run" not in out, out
    tokens = ["<s>", "a", "b"]
    write_vocab_gguf(tmp_path / "odd.gguf", {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "made-up",
                                             "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": ["a b"],
                                             "tokenizer.ggml.token_type": [3, 1, 1]})
    code, out, err = run_cli(capsys, "info", tmp_path / "odd.gguf")
    assert code == 0, err
    assert "tokenizer.ggml.pre 'made-up' is not one onnxlm knows" in out and "(not supported)" in out
    assert "  artifact        none: onnxlm cannot run this file" in out
