"""Every module of the package imports, and the package's import graph has no cycle.

The graph is built from the source with ``ast`` (module-level, function-level and
``if TYPE_CHECKING:`` imports alike: a cycle only type checkers follow is still two modules that
each need the other), over the layout ``pyproject.toml`` ships (``patches/``,
``launch/`` and ``env/`` are subpackages of ``sglang_ampere``). Importing ``a.b.c`` also runs
the ``__init__`` of ``a.b``, so that counts as an edge too (except to the importer's own
ancestors, which Python has always imported first).
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest
from helpers import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def package_modules() -> dict[str, Path]:
    """module name -> source file, for every module the wheel ships."""
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = cfg["package-dir"]
    out = {}
    for pkg in cfg["packages"]:
        root = pkg.split(".")
        base = next(k for k in sorted(dirs, key=len, reverse=True) if pkg == k or pkg.startswith(k + "."))
        folder = REPO / dirs[base] / Path(*root[len(base.split(".")):])
        for f in sorted(folder.glob("*.py")):
            name = pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"
            out[name] = f
    return out


def _imports(tree: ast.AST):
    """Every import node of a module, wherever it sits (``if TYPE_CHECKING:`` bodies included)."""
    return (node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)))


def import_graph(modules: dict[str, Path], sources: dict[str, str] | None = None) -> dict[str, set[str]]:
    """module -> the package modules it imports. ``sources``: module -> source text, instead of
    reading ``modules``' files (for the finder's own check)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.stem == "__init__"
        package = mod if is_pkg else mod.rpartition(".")[0]
        targets = []
        text = sources[mod] if sources is not None else path.read_text(encoding="utf-8")
        for node in _imports(ast.parse(text)):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
                continue
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for a in node.names:
                sub = f"{base}.{a.name}"
                targets.append(sub if sub in modules else base)
        ancestors = {".".join(mod.split(".")[:i]) for i in range(1, mod.count(".") + 1)}
        for t in targets:
            parts = t.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if name in modules and name != mod and name not in ancestors:
                    graph[mod].add(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        state[n] = 2
        path.pop()
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_graph_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_a_type_checking_import_closes_a_cycle():
    """The shape launch/render.py once had: render imports the launcher only for a type, the
    launcher imports render. Without the ``if TYPE_CHECKING:`` import there is no cycle."""
    modules = {"pkg": Path("pkg/__init__.py"), "pkg.launcher": Path("pkg/launcher.py"),
               "pkg.render": Path("pkg/render.py")}
    render = "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .launcher import Spec\n"
    sources = {"pkg": "", "pkg.launcher": "from .render import format_spec\n", "pkg.render": render}
    graph = import_graph(modules, sources)
    assert graph["pkg.render"] == {"pkg.launcher"}, graph
    assert find_cycle(graph) == ["pkg.launcher", "pkg.render", "pkg.launcher"]
    sources["pkg.render"] = "from typing import TYPE_CHECKING\n"
    assert find_cycle(import_graph(modules, sources)) is None


def test_no_import_cycle_in_the_package():
    modules = package_modules()
    assert {"sglang_ampere.plugin", "sglang_ampere.launch.launcher", "sglang_ampere.patches"} <= set(modules)
    graph = import_graph(modules)
    assert "sglang_ampere.hook_state" in graph["sglang_ampere.quant.config"]   # the graph sees lazy imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", [m for m in package_modules() if not m.endswith("__main__")])
def test_every_module_imports(module):
    pytest.importorskip("sglang")
    importlib.import_module(module)
