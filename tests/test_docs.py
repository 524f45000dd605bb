"""The README's config reference is the code's: `make docs` regenerates it."""

from pathlib import Path

from feda2v.io import config as config_mod

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def test_readme_lists_every_config_key_with_its_current_default():
    text = README.read_text()
    block = text.split("<!-- config-keys:start -->")[1].split("<!-- config-keys:end -->")[0]
    assert block.strip().strip("`").strip() == config_mod.describe_keys()


def test_readme_quick_start_has_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_make_docs_leaves_an_up_to_date_readme_as_it_is(tmp_path):
    """`make docs` runs scripts/readme_keys.py; run on a copy, it must import and change
    nothing in a README that is current."""
    import shutil
    import subprocess
    import sys

    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "readme_keys.py", tmp_path / "scripts")
    shutil.copy(ROOT / "README.md", tmp_path)
    subprocess.run([sys.executable, str(tmp_path / "scripts" / "readme_keys.py")], check=True,
                   cwd=tmp_path, timeout=120)
    assert (tmp_path / "README.md").read_text() == (ROOT / "README.md").read_text()


def test_scripts_and_benchmarks_import_what_exists():
    """Their `from feda2v... import name` lines name modules and names the library has (a
    moved module broke `make docs` once, with no test noticing)."""
    import ast
    import importlib
    import importlib.util

    for path in [*(ROOT / "scripts").glob("*.py"), *(ROOT / "bench").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("feda2v"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name) or importlib.util.find_spec(
                        f"{node.module}.{alias.name}"), f"{path.name}: {node.module}.{alias.name}"


def test_the_calibration_benchmark_runs_both_cases():
    """bench/generator.py times the posterior-sampling calibration (make bench, figures in the
    README); its two cases, one class alone and small classes pooled, must keep running."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_generator", ROOT / "bench" / "generator.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = config_mod.validate({"feda2v": {"generator_hidden_dim": 64, "generator_latent_dim": 8}})
    assert bench.calibration_seconds(cfg, [24, 8, 8, 8]) > 0
