"""What a non-editable install (``pip install onnxlm``: a wheel) carries: every file the packages read beside their
modules (graphs, the chat page, the quality gate's text) must be in pyproject's package-data, or an installed
``onnxlm export --quantize`` fails where a checkout's works (found on a Python 3.10 install: the gate's text was
missing). The editable install the suite runs on cannot show it, so the package table is checked itself, and one
built wheel's file list against it.
"""
from __future__ import annotations

import fnmatch
import sys
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def _package_files() -> dict[str, list[str]]:
    """package -> its non-Python files (relative to its folder), subpackages' own excluded; caches skipped."""
    table = _setuptools()
    dirs = {p: ROOT / table["package-dir"].get(p, p.replace(".", "/")) for p in table["packages"]}
    owned = {d.resolve() for d in dirs.values()}
    out = {}
    for package, folder in dirs.items():
        files = []
        for path in folder.rglob("*"):
            if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            inner = [d for d in owned if folder.resolve() in d.parents and d in path.resolve().parents]
            if not inner:  # not a subpackage's (runtime/decoding/... is onnxlm.runtime.decoding's)
                files.append(path.relative_to(folder).as_posix())
        out[package] = files
    return out


def test_every_data_file_of_a_package_is_in_package_data():
    data = _setuptools().get("package-data", {})
    missing = [f"{package}: {name}" for package, files in _package_files().items() for name in files
               if not any(fnmatch.fnmatch(name, glob) for glob in data.get(package, []))]
    assert not missing, f"add to [tool.setuptools.package-data] in pyproject.toml: {missing}"
    assert "data/quality_text.txt" in _package_files()["onnxlm.export"]  # what the check reads is really there


def test_a_built_wheel_carries_them(tmp_path):
    """The wheel setuptools builds from a clean copy of this checkout's packages holds every one of those files (a
    build in the checkout itself would reuse its stale ``build/``)."""
    import shutil
    import subprocess

    src = tmp_path / "src"
    table = _setuptools()
    for folder in {table["package-dir"].get(p, p.replace(".", "/")).split("/")[0] for p in table["packages"]}:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("onnxlm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {f"{package.replace('.', '/')}/{name}" for package, files in _package_files().items() for name in files}
    assert want and not want - names, sorted(want - names)
