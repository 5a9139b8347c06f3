"""The package's imports run one way: no import circle between modules, and no module uses
another module's private (_underscore) names. Read from the source with ast, imports inside
functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx  # installed with torch
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _modules(root: Path, package: str) -> dict[str, Path]:
    found = {}
    for path in (root / package).rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph(root: Path, package: str = "rechar") -> tuple[nx.DiGraph, list[str]]:
    """Module -> module it imports (``from pkg import sub`` counts as importing ``pkg.sub``), and
    every use of a private name of another module. A submodule's edge to a package above it is
    left out: Python runs the package first whatever the submodule imports."""
    modules = _modules(root, package)
    graph, private = nx.DiGraph(), []
    for module, path in modules.items():
        graph.add_node(module)
        aliases = {}
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [(a.name, a.asname or a.name, a.name) for a in node.names if a.name in modules]
            elif isinstance(node, ast.ImportFrom) and node.module in modules:
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    targets.append((sub if sub in modules else node.module, a.asname or a.name,
                                    sub if sub in modules else None))
                    if sub not in modules and a.name.startswith("_"):
                        private.append(f"{module}: from {node.module} import {a.name}")
            for target, alias, aliased_module in targets:
                if not module.startswith(target + "."):
                    graph.add_edge(module, target)
                if aliased_module:
                    aliases[alias] = aliased_module
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                private.append(f"{module}: {node.value.id}.{node.attr}")
    return graph, private


def test_no_import_circle_and_no_private_name_across_modules():
    graph, private = import_graph(ROOT)
    assert len(graph) > 50 and graph.has_edge("rechar.report.assemble", "rechar.report.findings")
    assert list(nx.simple_cycles(graph)) == []
    assert private == []


@pytest.mark.parametrize("fault", ["circle", "private import", "private attribute"])
def test_the_check_finds_a_planted_circle_or_private_use(tmp_path, fault):
    pkg = tmp_path / "rechar"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(("from rechar import b\n" if fault == "circle" else "") + "_hidden = 1\n")
    (pkg / "b.py").write_text({"circle": "def f():\n    import rechar.a\n",
                               "private import": "from rechar.a import _hidden\n",
                               "private attribute": "from rechar import a\n\nx = a._hidden\n"}[fault])
    graph, private = import_graph(tmp_path)
    assert [sorted(c) for c in nx.simple_cycles(graph)] == ([["rechar.a", "rechar.b"]] if fault == "circle" else [])
    assert private == {"circle": [], "private import": ["rechar.b: from rechar.a import _hidden"],
                       "private attribute": ["rechar.b: a._hidden"]}[fault]


#: The data flow of docs/architecture.md, ground floor first: a module imports only from its own
#: floor or those below (the ground's modules import none of rechar's packages).
FLOORS = [
    {"errors", "jsonfile", "stats", "taxonomy", "hostinfo", "memory", "lifetime"},
    {"models"},
    {"exporters", "measure"},
    {"stacks"},
    {"results"},
    {"uarch"},
    {"sweep"},
    {"serving"},
    {"analysis"},
    {"predict"},
    {"report"},
    {"cli"},
]


def upward_imports(graph: nx.DiGraph, floors: list[set[str]]) -> list[str]:
    """Every import from a module of a lower floor to one of a higher (by top-level part under
    rechar); a part on no floor is an error of its own."""
    floor = {part: i for i, parts in enumerate(floors) for part in parts}

    def part(module: str) -> str:
        return module.split(".")[1] if "." in module else module

    parts = {part(m) for m in graph if "." in m}
    assert parts <= set(floor), f"on no floor of FLOORS: {sorted(parts - set(floor))}"
    return sorted(f"{a} -> {b}" for a, b in graph.edges() if "." in a and "." in b and floor[part(a)] < floor[part(b)])


def test_imports_run_down_the_data_flow():
    graph, _ = import_graph(ROOT)
    assert upward_imports(graph, FLOORS) == []


def test_the_check_finds_a_planted_upward_import(tmp_path):
    pkg = tmp_path / "rechar"
    (pkg / "models").mkdir(parents=True)
    (pkg / "report").mkdir()
    for init in (pkg / "__init__.py", pkg / "models" / "__init__.py", pkg / "report" / "__init__.py"):
        init.write_text("")
    (pkg / "report" / "page.py").write_text("from rechar.models import base\n")  # down: allowed
    (pkg / "models" / "base.py").write_text("def f():\n    from rechar.report import page\n")  # up
    graph, _ = import_graph(tmp_path)
    assert upward_imports(graph, FLOORS) == ["rechar.models.base -> rechar.report.page"]


def test_a_worker_process_does_not_import_scipy():
    """Every measurement point starts a worker process, and a simulated one imports under Valgrind
    (scipy.stats: ~1 s natively, ~9 s there): the worker imports only what it runs."""
    import subprocess
    import sys

    code = "import sys, rechar.sweep.worker, rechar.serving.worker; print(sorted(m for m in sys.modules if m.startswith('scipy')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
