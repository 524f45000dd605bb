"""The README and docs/ stay true: the config reference is the code's (`make docs` regenerates
it in docs/configuration.md), the README stays a short user's page that links every docs page,
and every relative link in them points at a file and heading that exist."""

import re
from pathlib import Path

from feda2v.io import config as config_mod

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIG_PAGE = DOCS / "configuration.md"
START, END = "<!-- config-keys:start -->", "<!-- config-keys:end -->"
README_MAX_LINES = 250
FENCE = r"^[ \t]*```([\w-]*)\n(.*?)^[ \t]*```"  # a fenced code block, maybe in a list item


def _pages():
    return [README, ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))]


def _section(text: str, title: str) -> str:
    """The body of the `## title` section, up to the next `## ` heading."""
    assert f"\n## {title}\n" in text, f"no section '## {title}'"
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _fences(text: str):
    """(language, body) of each fenced code block."""
    return re.findall(FENCE, text, re.DOTALL | re.MULTILINE)


def _without_code(text: str) -> str:
    text = re.sub(FENCE, "", text, flags=re.DOTALL | re.MULTILINE)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped but '-' and '_', spaces
    to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())  # a link's text
    return "".join(c for c in text if c.isalnum() or c in "-_ ").replace(" ", "-")


def _anchors(page: Path) -> set:
    seen: dict = {}
    anchors = set()
    text = re.sub(FENCE, "", page.read_text(), flags=re.DOTALL | re.MULTILINE)
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", text, re.MULTILINE):
        base = _anchor(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        anchors.add(base if n == 0 else f"{base}-{n}")
    return anchors


def _links(page: Path):
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)",
                             _without_code(page.read_text())):
        if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            yield target


def test_anchor_rule_matches_github():
    assert _anchor("11. Troubleshooting") == "11-troubleshooting"
    assert _anchor("Execution: phase or round") == "execution-phase-or-round"
    assert _anchor("`feda2v run`") == "feda2v-run"
    assert _anchor("Bad input → what happens") == "bad-input--what-happens"
    assert _anchor("Authentication (overlays/mlflow-auth)") == "authentication-overlaysmlflow-auth"


def test_config_page_lists_every_config_key_with_its_current_default():
    text = CONFIG_PAGE.read_text()
    block = text.split(START)[1].split(END)[0]
    assert block.strip().strip("`").strip() == config_mod.describe_keys()


def test_make_docs_leaves_an_up_to_date_config_page_as_it_is(tmp_path):
    """`make docs` runs scripts/doc_keys.py; run on a copy of the script and the page, it must
    import and change nothing in a page that is current."""
    import shutil
    import subprocess
    import sys

    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ndocs:", 1)[1].split("\n\n", 1)[0]
    assert "scripts/doc_keys.py" in recipe
    (tmp_path / "scripts").mkdir()
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "scripts" / "doc_keys.py", tmp_path / "scripts")
    shutil.copy(CONFIG_PAGE, tmp_path / "docs")
    subprocess.run([sys.executable, str(tmp_path / "scripts" / "doc_keys.py")], check=True,
                   cwd=tmp_path, timeout=120)
    assert (tmp_path / "docs" / "configuration.md").read_text() == CONFIG_PAGE.read_text()


def test_readme_is_a_short_page():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


def test_readme_quick_start_holds_exactly_the_two_setup_commands():
    section = _section(README.read_text(), "Quick start")
    commands = []
    for lang, body in _fences(section):
        if lang in ("sh", "bash", "console"):
            for line in body.splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    commands.append(line)
    assert commands == ["make demo", "make test"]


def test_readme_links_every_docs_page():
    targets = {t.split("#", 1)[0] for t in _links(README)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if f"docs/{p.name}" not in targets]
    assert not missing, f"README.md does not link {missing}"
    for name in ("CHANGELOG.md", "LICENSE"):
        assert name in targets, name


def test_relative_links_point_at_files_and_headings_that_exist():
    broken = []
    for page in _pages():
        for target in _links(page):
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


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
    """bench/generator.py times the posterior-sampling calibration (make bench, figures in
    docs/benchmarks.md); its two cases, one class alone and small classes pooled, must keep
    running."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_generator", ROOT / "bench" / "generator.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = config_mod.validate({"feda2v": {"generator_hidden_dim": 64, "generator_latent_dim": 8}})
    assert bench.calibration_seconds(cfg, [24, 8, 8, 8]) > 0
