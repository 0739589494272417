"""The architecture, checked on every run: the stage packages import only downward (import-linter's
layers contract in pyproject.toml), no import cycle inside `pipeline`, no private name taken across
modules, modules and functions short enough to read, registry aliases spelled in one module."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")
READ = [REPO / "pipeline", REPO / "django_app" / "diagnosis", REPO / "dags"]
ALIASES = {"champion", "challenger", "previous_champion"}


def _sources():
    for root in READ:
        for path in sorted(root.rglob("*.py")):
            if "migrations" not in path.parts:
                yield path, ast.parse(path.read_text(), str(path))


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}   # this tree's `pipeline`, ahead of the installed one
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)


def test_stage_packages_import_only_downward():
    run = _lint(REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 kept, 0 broken" in run.stdout


def test_an_upward_import_is_caught(tmp_path):
    """The contract can fail: a copy of the package where data imports mlops breaks it."""
    shutil.copytree(REPO / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    with open(tmp_path / "pipeline" / "data" / "cache.py", "a") as f:
        f.write("\nfrom pipeline.mlops import server  # planted: data must not know the registry\n")
    run = _lint(tmp_path)
    assert run.returncode != 0
    assert "BROKEN" in run.stdout and "pipeline.data.cache -> pipeline.mlops.server" in run.stdout, run.stdout


def test_no_import_cycle_inside_pipeline():
    graph = grimp.build_graph("pipeline")
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(m):   # Tarjan's strongly connected components
        index[m] = low[m] = len(index)
        stack.append(m)
        on.add(m)
        for n in edges.get(m, ()):
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in on:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            comp = []
            while True:
                n = stack.pop()
                on.discard(n)
                comp.append(n)
                if n == m:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in sorted(edges):
        if m not in index:
            visit(m)
    assert cycles == []


def test_no_private_name_crosses_a_module():
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
               for p in (REPO / "pipeline").rglob("*.py")}
    found = []
    for path, tree in _sources():
        bound = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
                for alias in node.names:
                    if alias.name.startswith("_"):
                        found.append(f"{path.name}:{node.lineno} imports {node.module}.{alias.name}")
                    if f"{node.module}.{alias.name}" in modules:
                        bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{path.name}:{node.lineno} uses {bound[node.value.id]}.{node.attr}")
    assert found == []


def test_modules_and_functions_stay_short():
    """At most 400 lines a module and 80 a function: what a reviewer reads in one sitting."""
    long = []
    for path, tree in _sources():
        lines = len(path.read_text().splitlines())
        if lines > 400:
            long.append(f"{path.relative_to(REPO)}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}(): "
                            f"{node.end_lineno - node.lineno + 1} lines")
    assert long == []


def test_registry_aliases_are_spelled_in_one_module():
    """Every MLflow call that names an alias gets it from pipeline.mlops.server (CHAMPION...)."""
    spelled = []
    for path, tree in _sources():
        if path == REPO / "pipeline" / "mlops" / "server.py":
            continue
        for node in ast.walk(tree):
            name = getattr(node, "func", None)
            name = getattr(name, "attr", getattr(name, "id", ""))
            if isinstance(node, ast.Call) and "alias" in name:   # get_model_version_by_alias, alias_version...
                args = list(node.args) + [k.value for k in node.keywords]
                spelled += [f"{path.relative_to(REPO)}:{node.lineno}" for a in args
                            if isinstance(a, ast.Constant) and a.value in ALIASES]
            if isinstance(node, ast.JoinedStr):   # f"models:/{name}@champion"
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
                spelled += [f"{path.relative_to(REPO)}:{node.lineno} {text!r}" for a in ALIASES if f"@{a}" in text]
    assert spelled == []
