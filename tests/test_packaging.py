"""What a non-editable install (``pip install onnxlm``: a wheel) carries: every file the packages read beside their
modules (graphs, the chat page, the quality gate's text) must be in pyproject's package-data, or an installed
``onnxlm export --quantize`` fails where a checkout's works (found on a Python 3.10 install: the gate's text was
missing). The editable install the suite runs on cannot show it, so the package table is checked itself, and one
built wheel's file list against it.
"""
from __future__ import annotations

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


def _tracked(folder: Path) -> list[Path]:
    """The files under ``folder`` that git tracks (a checkout), else every file there but caches."""
    import subprocess

    if (ROOT / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-z", "--", str(folder.relative_to(ROOT))], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
        return [ROOT / name for name in listed.split("\0") if name]
    return [p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def _package_dirs() -> dict[str, Path]:
    table = _setuptools()
    return {p: (ROOT / table["package-dir"].get(p, p.replace(".", "/"))).resolve() for p in table["packages"]}


def _package_files() -> dict[str, list[str]]:
    """package -> its tracked non-Python files (relative to its folder), its subpackages' excluded."""
    dirs = _package_dirs()
    out = {}
    for package, folder in dirs.items():
        subpackages = [d for d in dirs.values() if folder in d.parents]
        out[package] = [p.relative_to(folder).as_posix() for p in _tracked(folder)
                        if p.suffix != ".py" and not any(d in p.parents for d in subpackages)]
    return out


def test_every_module_folder_is_a_listed_package():
    """A folder of modules under a package that ``packages`` does not list would be left out of a wheel."""
    dirs = set(_package_dirs().values())
    folders = {p.parent for folder in dirs for p in _tracked(folder) if p.suffix == ".py"}
    assert not folders - dirs, sorted(str(f.relative_to(ROOT)) for f in folders - dirs)


def test_every_data_file_of_a_package_is_in_package_data():
    data, dirs = _setuptools().get("package-data", {}), _package_dirs()
    missing = [f"{package}: {name}" for package, files in _package_files().items() for name in files
               if not any(dirs[package] / name in set(dirs[package].glob(glob)) for glob in data.get(package, []))]
    assert not missing, f"add to [tool.setuptools.package-data] in pyproject.toml: {missing}"
    assert "quality_text.txt" in _package_files()["onnxlm.export.data"]  # what the check reads is really there


def test_a_built_wheel_carries_them(tmp_path):
    """The wheel setuptools builds from a clean copy of this checkout's packages holds every one of those files (a
    build in the checkout itself would reuse its stale ``build/``)."""
    import shutil
    import subprocess

    pytest.importorskip("setuptools", reason="building a wheel without network needs setuptools installed")
    src = tmp_path / "src"
    table = _setuptools()
    for folder in {table["package-dir"].get(p, p.replace(".", "/")).split("/")[0] for p in table["packages"]}:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--check-build-dependencies", "--disable-pip-version-check", "-q", "-w",
                           str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("onnxlm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {f"{package.replace('.', '/')}/{name}" for package, files in _package_files().items() for name in files}
    assert want and not want - names, sorted(want - names)
