"""The shape of the code (docs/architecture.md): imports flow one way, files and functions stay small, and
the model never asks what hardware it runs on."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("research", "analysis", "experiments")
# The only modules that may ask JAX for the platform: the program builder (it chooses the kernels once), the
# inference loader, the sweep's compile-ahead decision, and the entry points.
MAY_ASK_THE_PLATFORM = {"research/train/programs.py", "research/inference/load.py", "research/sweep/callback.py"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            rel = f.relative_to(ROOT).with_suffix("")
            out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = f
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, every import statement counted (function-level ones too)."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        package = m if f.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                r = resolve(t)
                # a package's __init__ importing its own modules, and a module importing its package, are not edges
                if r and r != m and not r.startswith(m + ".") and not m.startswith(r + "."):
                    graph[m].add(r)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 60 and graph["research.train.loop"]  # the walk sees the project
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_analysis_reads_records_only():
    graph = import_graph()
    assert not [
        (m, t) for m, ts in graph.items() if m.startswith("analysis") for t in ts if not t.startswith("analysis")
    ]


def test_files_and_functions_stay_small():
    long_files, long_functions = [], []
    for f in _modules().values():
        text = f.read_text()
        if len(text.splitlines()) > 400:
            long_files.append(f"{f.relative_to(ROOT)} ({len(text.splitlines())} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 80:
                long_functions.append(f"{f.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1})")
    assert long_files == [] and long_functions == []


def test_only_the_program_builder_asks_for_the_platform():
    askers = {
        str(f.relative_to(ROOT))
        for f in _modules().values()
        if "default_backend" in f.read_text() and not str(f.relative_to(ROOT)).startswith("experiments/")
    }
    assert askers <= MAY_ASK_THE_PLATFORM, askers - MAY_ASK_THE_PLATFORM
    for folder in ("model", "ops"):
        for f in (ROOT / "research" / folder).rglob("*.py"):
            assert "default_backend" not in f.read_text(), f
