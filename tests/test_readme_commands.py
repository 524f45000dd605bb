"""Every command the READMEs and the docs/ pages show must exist: feda2v sub-commands and flags
(also behind `docker run IMAGE`), kfp CLI options, make targets. (tests/test_kubeflow_doc.py goes
further for docs/kubeflow.md: it runs its commands.)"""

import re
import shlex
from pathlib import Path

import pytest

from feda2v.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
# Every docs/ page: each one may tell a user what to type (commands, configuration, results,
# troubleshooting, kubeflow, ...). CHANGELOG.md is left out: history may name what is gone.
DOCS = ["README.md", "docker/README.md", "manifests/README.md",
        *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
SHELL_FENCES = ("", "sh", "bash", "console")  # code blocks read as commands


def _code_lines(doc: str):
    text = (ROOT / doc).read_text()
    for lang, block in re.findall(r"```([\w-]*)\n(.*?)```", text, re.DOTALL):
        if lang not in SHELL_FENCES:
            continue
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                yield line
    for inline in re.findall(r"`((?:feda2v|make|kfp) [a-z][^`]*)`", text):
        if "<" not in inline and "/" not in inline.split()[1]:  # skip `feda2v <stage>` patterns
            yield inline


def _feda2v_invocations():
    for doc in DOCS:
        for line in _code_lines(doc):
            try:
                tokens = shlex.split(line)
            except ValueError:
                continue
            if tokens and (tokens[0] == "feda2v" or tokens[0].endswith("/feda2v")) or tokens and tokens[0] in ("$RUN", "$DEMO"):
                rest = tokens[1:]
            elif tokens[:2] == ["docker", "run"] and "IMAGE" in tokens and (
                    "--entrypoint" not in tokens):
                rest = tokens[tokens.index("IMAGE") + 1:]
            else:
                continue
            if rest and not rest[0].startswith(("$", "<")):
                yield doc, line, rest


def _subparsers(parser):
    for action in parser._actions:
        if action.choices and hasattr(action, "_name_parser_map"):
            return action.choices
    return {}


def _check(tokens, line):
    parser = build_parser()
    words = []
    while tokens and tokens[0].startswith("-"):  # top-level options: --version, -q, -v
        assert tokens[0] in parser._option_string_actions, f"feda2v has no {tokens[0]}: {line}"
        tokens.pop(0)
    while tokens and _subparsers(parser):
        name = tokens.pop(0)
        choices = _subparsers(parser)
        assert name in choices, f"`feda2v {' '.join(words + [name])}` does not exist: {line}"
        parser = choices[name]
        words.append(name)
    for tok in tokens:
        if tok.startswith("--"):
            flag = tok.split("=", 1)[0]
            assert flag in parser._option_string_actions, (
                f"`feda2v {' '.join(words)}` has no option {flag}: {line}")


INVOCATIONS = list(_feda2v_invocations())


def test_the_readmes_show_feda2v_commands():
    docs = {doc for doc, _, _ in INVOCATIONS}
    assert {"README.md", "docker/README.md", "docs/kubeflow.md", "docs/commands.md",
            "docs/results.md", "docs/troubleshooting.md"} <= docs
    for doc in ("README.md", "docs/kubeflow.md"):  # the cluster path, in brief and in full
        shown = {rest[0] for d, _, rest in INVOCATIONS if d == doc}
        assert {"compile", "submit"} <= shown, (doc, shown)


@pytest.mark.parametrize("doc, line, rest", INVOCATIONS,
                         ids=[f"{d}:{' '.join(r[:2])}" for d, _, r in INVOCATIONS])
def test_feda2v_command_exists(doc, line, rest):
    _check(list(rest), line)


def test_kfp_cli_commands_use_real_options():
    from kfp.cli.cli import cli

    seen = 0
    for doc in DOCS:
        for line in _code_lines(doc):
            try:
                tokens = shlex.split(line)
            except ValueError:
                continue
            if not tokens or tokens[0] != "kfp":
                continue
            seen += 1
            command, rest = cli, tokens[1:]
            while rest and hasattr(command, "commands"):
                if rest[0] in command.commands:
                    command, rest = command.commands[rest[0]], rest[1:]
                elif rest[0].startswith("-"):  # a global option and its value
                    rest = rest[2:]
                else:
                    break
            known = {o for p in command.params for o in p.opts} | {
                o for p in cli.params for o in p.opts}
            for tok in rest:
                if tok.startswith("-"):
                    assert tok.split("=", 1)[0] in known, f"kfp option {tok} unknown: {line}"
    assert seen >= 2


def test_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.MULTILINE))
    for doc in DOCS:
        for line in _code_lines(doc):
            try:
                tokens = shlex.split(line)
            except ValueError:
                continue
            if tokens and tokens[0] == "make" and len(tokens) > 1:
                assert tokens[1] in targets, f"make {tokens[1]} is not a target: {line}"
