"""The library's layers only point down, and its import graph has no cycle.

fronts (cli; components/ and pipelines/ outside the library) → localrun (the kfp.local
runner, handed its pipeline by the CLI) → orchestration → federated, encoders, data, evaluation → io
patches.py imports nothing of feda2v. Imports inside functions count as much as those at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "feda2v"
OURS = ("feda2v", "components", "pipelines")


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, imported module, imported name or '') of every import of our packages."""
    name = _name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, "") for a in node.names if a.name.split(".")[0] in OURS]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            if base.split(".")[0] in OURS:
                out += [(node.lineno, base, a.name) for a in node.names]
    return out


def _target(module: str, name: str) -> str:
    """The module an import reaches: `from a.b import c` is module a.b.c when there is one."""
    return f"{module}.{name}" if f"{module}.{name}" in MODULES else module


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if parts[0] == "feda2v" and len(parts) > 1 else parts[0]


GRAPH = {m: {(line, _target(mod, n)) for line, mod, n in _imports(p)} for m, p in MODULES.items()}

LEARNING = {"federated", "encoders", "data", "evaluation"}
ALLOWED = {  # layer → what it may import (its own layer always)
    "patches": set(),
    "io": {"patches"},
    "data": {"io", "patches"},
    "encoders": {"data", "io", "patches"},
    "evaluation": {"io", "patches"},
    "federated": {"encoders", "data", "evaluation", "io", "patches"},
    "orchestration": LEARNING | {"io", "patches"},
    "localrun": {"orchestration", *LEARNING, "io", "patches"},
    "cli": {"localrun", "orchestration", *LEARNING, "io", "patches", "pipelines", "components"},
    "feda2v": set(),
}


def test_every_package_is_placed_in_a_layer():
    assert {_layer(m) for m in MODULES} <= set(ALLOWED)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    layer = _layer(module)
    wrong = [f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}"
             for line, target in sorted(GRAPH[module])
             if _layer(target) != layer and _layer(target) not in ALLOWED[layer]]
    assert not wrong, "\n".join(wrong)


def test_only_the_cli_imports_pipelines_and_components():
    found = [f"{m} imports {t}" for m, edges in GRAPH.items() for _, t in edges
             if t.split(".")[0] in ("pipelines", "components") and _layer(m) != "cli"]
    assert not found


def test_the_library_has_no_import_cycle():
    edges = {m: {t for _, t in GRAPH[m] if t in MODULES and t != m} for m in MODULES}
    # Tarjan's strongly connected components, iteratively: any component of two is a cycle.
    index, low, on, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def strong(start):
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    part = []
                    while True:
                        top = stack.pop()
                        on.discard(top)
                        part.append(top)
                        if top == node:
                            break
                    if len(part) > 1:
                        cycles.append(sorted(part))
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on.add(child)
                work.append((child, iter(sorted(edges[child]))))
            elif child in on:
                low[node] = min(low[node], index[child])

    for m in sorted(MODULES):
        if m not in index:
            strong(m)
    assert not cycles, cycles


def test_no_private_name_crosses_modules():
    """`from feda2v.x import _name` or `x._name` on a module of ours, outside that module."""
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in OURS:
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        found.append(f"{module}:{node.lineno} imports {node.module}.{a.name}")
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in OURS:
                        aliases[a.asname or a.name] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not found, "\n".join(found)


def test_the_checks_see_a_violation(tmp_path):
    """The parser the checks rely on finds a lazy upward import and a relative one."""
    bad = tmp_path / "feda2v" / "io" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("def f():\n    from feda2v.orchestration import stages\n"
                   "from ..cli import common\n")
    global ROOT
    saved = ROOT
    ROOT = tmp_path
    try:
        found = {(mod, name) for _, mod, name in _imports(bad)}
    finally:
        ROOT = saved
    assert found == {("feda2v.orchestration", "stages"), ("feda2v.cli", "common")}


def test_feda2v_run_itself_imports_neither_torch_nor_matplotlib():
    """`feda2v run`, its watchdog and preflight only compile, submit and track: torch and
    matplotlib are the tasks' (1.2 s and 0.6 s of every run's start, before any task)."""
    import subprocess
    import sys

    probe = ("import sys, feda2v.cli, feda2v.localrun.run, feda2v.localrun.watchdog, pipelines\n"
             "from feda2v.io import config\n"
             "from feda2v.orchestration import preflight\n"
             "cfg = config.validate({'data': {'dataset_uri': '/nonexistent'}})\n"
             "try:\n"
             "    preflight.check(cfg, 'local')  # every check is built before the first runs\n"
             "except FileNotFoundError:\n"
             "    pass\n"
             "print(sorted({'torch', 'matplotlib'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent).stdout
    assert out.strip() == "[]"
