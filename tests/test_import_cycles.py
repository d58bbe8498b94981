"""No import cycle in ``export/``, ``runtime/`` or ``onnxlm/`` (read with ``ast``: nothing is imported).

Every ``import``/``from ... import`` counts, also inside functions (a lazy import still ties two modules together:
``export.py -> gguf_quant.py -> quantize.py -> export.py`` was one). ``from pkg import name`` is an edge to
``pkg.name`` when that is a module, else to ``pkg``; an import by dotted path (``import onnxlm.runtime.errors``) is an edge to that module only. A module that
takes names from a package above it (``from . import error_line`` in ``onnxlm.cli.jobs``, ``import onnxlm``) depends
on that package's ``__init__``, so that is an edge too (``onnxlm.cli -> cli.generate -> cli.jobs -> onnxlm.cli`` was
one). A package ``__init__`` that re-exports its modules is an edge like any other.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: folder -> dotted package, as pyproject's package-dir maps them
PACKAGES = {"onnxlm": "onnxlm", "runtime": "onnxlm.runtime", "export": "onnxlm.export"}


def module_files(repo: Path, packages: dict[str, str]) -> dict[str, Path]:
    """dotted module name -> file, for every .py below each package folder."""
    out = {}
    for folder, dotted in packages.items():
        for path in sorted((repo / folder).rglob("*.py")):
            parts = list(path.relative_to(repo / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([dotted, *parts])] = path
    return out


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The project modules one import statement names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: from the module's package, up level-1 more
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in its file)."""
    known = set(files)
    graph = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for name in _imported(node, module, is_package, known):
                while name and name not in known:  # import a.b.c where only a.b is ours
                    name = name.rpartition(".")[0]
                if name and name != module:
                    edges.add(name)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted; [] when the graph is acyclic."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_lazy_cycle_and_passes_a_chain(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from .c import g\n")
    (pkg / "c.py").write_text("import os\n\ndef g():\n    from pkg.a import h\n")
    (pkg / "d.py").write_text("import pkg.b\nfrom pkg import a\n")  # dotted paths: edges to the modules only
    graph = import_graph(module_files(tmp_path, {"pkg": "pkg"}))
    assert graph["pkg.d"] == {"pkg.a", "pkg.b"} and graph["pkg.c"] == {"pkg.a"}
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    (pkg / "c.py").write_text("import os\n")
    assert find_cycles(import_graph(module_files(tmp_path, {"pkg": "pkg"}))) == []
    (pkg / "__init__.py").write_text("from .d import x\n")  # a re-export, and a module taking a name from it
    (pkg / "a.py").write_text("def f():\n    from . import x\n")
    assert find_cycles(import_graph(module_files(tmp_path, {"pkg": "pkg"}))) == [["pkg", "pkg.a", "pkg.d"]]


def test_no_import_cycle_in_the_project():
    files = module_files(REPO, PACKAGES)
    assert {"onnxlm.export.export", "onnxlm.runtime.model", "onnxlm.cli"} <= set(files)  # it reads the tree
    graph = import_graph(files)
    assert "onnxlm.export.atomic_dir" in graph["onnxlm.export.quantize"]  # and sees the edges
    cycles = find_cycles(graph)
    if cycles:
        pytest.fail("import cycles: " + "; ".join(" <-> ".join(c) for c in cycles))
