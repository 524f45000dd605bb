"""docs/kubeflow.md, walked as its reader would, offline: the page and the code cannot drift apart.

Every ```sh / ```bash block of the page is parsed (continuation lines joined, here-documents
kept) and its commands run in page order in a scratch checkout (copies of configs/ and
manifests/), with the shell variables the page sets:

- `feda2v compile` runs in-process; its preflight sees the bucket the page filled, and every
  executor must run the image the page built (or named) and request GPUs as the page says;
- `feda2v submit` runs in-process against a fake KFP API (tests/kfpapi.py) that, on a
  multi-user "cluster", refuses any request without the token the page tells users to export;
- `feda2v models push` / `data push` / `data esc50` copy into a real S3 server
  (tests/s3server.py), the tiny models and a tiny dataset standing in for the hub and GitHub;
- `kfp ...` runs KFP's own CLI in-process against the same fake API;
- `make X ...` runs as `make -n X ...` and must name the image that `compile` then writes;
- `hf download ...` runs for real with the hub switched off and must get as far as the network;
- `mkdir -p` and `cat > FILE <<EOF` run; `kubectl apply -k DIR` renders DIR with
  tests/test_manifests.py's renderer (and `kubectl kustomize` where installed) and validates
  every object against the Kubernetes schemas;
- `kubectl create secret generic` / `create namespace` / `label namespace` / `rollout status` /
  `port-forward` to our objects are checked against what the page applied, the Secret templates
  and what the MLflow pods, the pipeline tasks and the KFP launcher read;
- `aws s3 mb s3://B` creates the bucket on the test server;
- NOT_RUNNABLE names what only a real cluster can answer; any other command fails the test.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import kubernetes_validate
import pytest
import s3fs
import yaml
from kfpapi import kfp_api_fixture  # noqa: F401 - the kfp_api fixture
from s3server import s3_server  # noqa: F401 - the s3_server fixture
from test_manifests import (
    K8S_VERSION,
    SECRET_TEMPLATES,
    assert_kubectl_agrees,
    containers,
    find,
    load_yaml_documents,
    object_id,
    pod_specs,
    render,
)

from feda2v.cli import main
from feda2v.io import config as config_mod
from feda2v.io import tracking

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "kubeflow.md"
PAGE_TEXT = PAGE.read_text()
TOKEN = "kubeflow-doc-token-6c1f0e"  # what `kubectl create token` prints, here
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Commands (whitespace-normalised, before variable expansion) that need a running cluster. A
# `$(...)` of one of them stands for its output: `create token` gives TOKEN.
NOT_RUNNABLE = {
    "kubectl -n kubeflow port-forward svc/ml-pipeline-ui":
        "KFP's own UI/API Service: the fake KFP API stands in at the forwarded address",
    "kubectl -n istio-system port-forward svc/istio-ingressgateway":
        "Kubeflow's gateway: the fake KFP API stands in behind it",
    "kubectl -n $PROFILE_NS create token":
        "issued by the cluster's API server; TOKEN stands in, and the fake API demands it",
}
# The kubectl commands the walk checks against what the page applied.
KUBECTL_VERBS = [("create", "secret", "generic"), ("create", "namespace"), ("label", "namespace"),
                 ("apply",), ("rollout", "status"), ("port-forward",)]
KINDS = {"deploy": "Deployment", "deployment": "Deployment", "sts": "StatefulSet",
         "statefulset": "StatefulSet", "svc": "Service", "service": "Service"}
ASSIGNMENT = re.compile(r"[A-Za-z_]\w*=.*", re.DOTALL)
HEREDOC = re.compile(r"<<-?\s*(?P<quote>['\"]?)(?P<delim>\w+)(?P=quote)\s*$")
SUBSTITUTION = re.compile(r"\$\(([^()]*)\)")
MARK = re.compile(r"__SUBSTITUTION(\d+)__")
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


# --- the page's commands ------------------------------------------------------------------------


@dataclass
class Command:
    line: str                  # as on the page, continuation lines joined
    heredoc: str | None        # the here-document's body
    expand_heredoc: bool       # an unquoted delimiter: $VAR in the body is expanded
    section: str

    def words(self) -> tuple[list[str], list[str]]:
        """(shell words, quotes removed and comments dropped, each `$(...)` replaced by a MARK;
        the bodies of those `$(...)`)."""
        bodies: list[str] = []

        def mark(match):
            bodies.append(match[1])
            return f"__SUBSTITUTION{len(bodies) - 1}__"

        words = shlex.split(SUBSTITUTION.sub(mark, self.line), comments=True)
        assert not {"|", "||", "&&", ";", "&"} & set(words) and not words[-1].endswith(";"), (
            f"one plain command per line, please: {self.line}")
        return words, bodies

    def raw(self) -> str:
        """The command's words before expansion, e.g. `kubectl -n $PROFILE_NS create token x`."""
        words, bodies = self.words()
        return " ".join(MARK.sub(lambda m: f"$({bodies[int(m[1])]})", w) for w in words)


def _block(lines: list[str], section: str) -> list[Command]:
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        while line.endswith("\\"):
            i += 1
            line = line[:-1].rstrip() + " " + lines[i].strip()
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        body, expand = None, False
        match = HEREDOC.search(line)
        if match:
            assert match["delim"] in lines[i:], f"unterminated here-document: {line}"
            end = lines.index(match["delim"], i)
            body, expand, i = "\n".join(lines[i:end]) + "\n", not match["quote"], end + 1
        out.append(Command(line.strip(), body, expand, section))
    return out


def page_commands(text: str) -> list[Command]:
    commands, section, lines, i = [], "", text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        elif line.startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            if line.strip() in ("```sh", "```bash"):
                commands += _block(lines[i + 1:end], section)
            i = end
        i += 1
    return commands


COMMANDS = page_commands(PAGE_TEXT)


def _kubectl(words: list[str]) -> tuple[str, list[str]]:
    """(namespace, the words after `kubectl` without the namespace option)."""
    namespace, rest, i = "", [], 1
    while i < len(words):
        if words[i] in ("-n", "--namespace"):
            namespace, i = words[i + 1], i + 2
            continue
        if words[i].startswith("--namespace="):
            namespace = words[i].split("=", 1)[1]
        else:
            rest.append(words[i])
        i += 1
    return namespace, rest


def classify(command: Command) -> str:
    """What kind of command this is; AssertionError for one the test does not know."""
    words, _ = command.words()
    raw = command.raw()
    if any(raw.startswith(prefix) for prefix in NOT_RUNNABLE):
        return "not runnable"
    if command.heredoc is not None:
        assert words[:2] == ["cat", ">"] and len(words) == 4, f"here-document: {command.line}"
        return "heredoc"
    if all(ASSIGNMENT.fullmatch(w) for w in words) or (
            words[0] == "export" and all(ASSIGNMENT.fullmatch(w) for w in words[1:])):
        return "assign"
    if words[:2] == ["mkdir", "-p"]:
        return "mkdir"
    if words[0] in ("make", "kfp"):
        return words[0]
    if words[:2] == ["hf", "download"] or words[:3] == ["aws", "s3", "mb"]:
        return " ".join(words[:3 if words[0] == "aws" else 2])
    if words[0] == "feda2v":
        sub = [w for w in words[1:] if not w.startswith("-")][:2]
        if sub[0] in ("compile", "submit"):
            return f"feda2v {sub[0]}"
        if sub in (["models", "push"], ["data", "push"], ["data", "esc50"]):
            return "feda2v " + " ".join(sub)
    if words[0] == "kubectl":
        _, rest = _kubectl(words)
        for verb in KUBECTL_VERBS:
            if tuple(rest[:len(verb)]) == verb:
                return "kubectl " + " ".join(verb)
    raise AssertionError(f"docs/kubeflow.md ({command.section}): the test does not know how to run "
                         f"or check `{command.line}`; teach it, or list it in NOT_RUNNABLE")


def _option(words: list[str], name: str, default=None):
    for i, word in enumerate(words):
        if word == name:
            return words[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return default


def _options(words: list[str], name: str) -> list[str]:
    return [words[i + 1] for i, w in enumerate(words) if w == name]


# --- static checks --------------------------------------------------------------------------------


def test_every_command_on_the_page_is_run_or_checked():
    kinds = Counter(classify(c) for c in COMMANDS)
    for kind in ("make", "aws s3 mb", "kubectl create namespace", "kubectl create secret generic",
                 "kubectl label namespace", "kubectl apply", "heredoc", "hf download",
                 "feda2v models push", "feda2v data esc50", "feda2v compile", "kfp",
                 "feda2v submit"):
        assert kinds[kind], f"the page shows no `{kind}` command"
    skipped = {c.raw() for c in COMMANDS if classify(c) == "not runnable"}
    unused = [p for p in NOT_RUNNABLE if not any(
        s.startswith(p) for s in skipped | {b for c in COMMANDS for b in _bodies(c)})]
    assert not unused, f"NOT_RUNNABLE lists commands the page no longer shows: {unused}"


def _bodies(command: Command) -> list[str]:
    return [" ".join(shlex.split(b)) for b in command.words()[1]]


def test_the_readme_sends_cluster_users_to_the_page():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Run on Kubeflow", 1)[1].split("\n## ", 1)[0]
    assert "docs/kubeflow.md" in section


def test_the_page_names_what_the_code_reads():
    from components.image import REGISTRY_ENV
    from feda2v.federated.generators.checkpoints import checkpoint_uri
    from feda2v.io import runstate
    from feda2v.orchestration import finish, stages, submit

    for name in (submit.TOKEN_ENV, submit.COOKIE_ENV, submit.SA_TOKEN_ENV, submit.SA_TOKEN_PATH,
                 REGISTRY_ENV):
        assert f"`{name}`" in PAGE_TEXT, name
    cfg = config_mod.load(str(ROOT / "configs" / "cluster.json"))
    root = cfg.storage_root
    assert f"`{root}/`" in PAGE_TEXT

    def rel(uri: str) -> str:
        assert uri.startswith(root + "/")
        return uri[len(root) + 1:]

    checkpoints = stages.checkpoint_dir(cfg)
    latest = rel(checkpoint_uri(checkpoints, 7)).replace("client_7", "client_{i}")
    kept = checkpoint_uri(checkpoints, 7, 9).rsplit("/", 1)[1]
    assert f"`{latest}`" in PAGE_TEXT and "`" + kept.replace("7", "{i}").replace(
        "9", "{r}") + "`" in PAGE_TEXT
    run = rel(runstate.run_dir(cfg, "<run key>"))
    assert f"`{run}/`" in PAGE_TEXT
    assert finish.report_uri(cfg, "K").endswith("/K/report.md") and "`report.md`" in PAGE_TEXT
    assert "`" + runstate.round_uri("", "run1", 3).lstrip("/").replace("3", "{r}") + "`" in PAGE_TEXT
    launcher = load_yaml_documents(ROOT / "manifests/kfp-launcher/kfp-launcher-configmap.yaml")[0]
    assert f"`{launcher['data']['defaultPipelineRoot']}`" in PAGE_TEXT
    # the MLflow artifact folders the exit handler logs to
    source = Path(finish.__file__).read_text()
    for folder in ("model", "generators", "report"):
        assert f'"{folder}")' in source and f"(`{folder}/`)" in PAGE_TEXT, folder


# --- the walk -------------------------------------------------------------------------------------


class Walk:
    """The reader's shell: variables, a scratch checkout, and what the page did so far."""

    def __init__(self, tmp: Path, monkeypatch, capsys, kfp_api, s3, tiny_models):
        self.tmp, self.mp, self.capsys, self.kfp, self.s3 = tmp, monkeypatch, capsys, kfp_api, s3
        self.tiny = tiny_models
        self.cwd = tmp / "checkout"
        for folder in ("configs", "manifests"):
            shutil.copytree(ROOT / folder, self.cwd / folder)
        monkeypatch.chdir(self.cwd)
        for name in ("FEDA2V_IMAGE", "FEDA2V_REGISTRY", "FEDA2V_GIT_COMMIT", "AWS_PROFILE",
                     "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "COLUMNS"):
            monkeypatch.delenv(name, raising=False)
        tracking._source_tags.cache_clear()  # the commit `make image` tags with: this checkout's
        for name, value in s3.env().items():  # where the page exports its own AWS_* values
            monkeypatch.setenv(name, value)
        self.vars: dict[str, str] = {}
        self.done: Counter = Counter()
        self.images: dict[str, dict[str, set[str]]] = {"image": {}, "push": {}}  # by flavour
        self.mlflow_images: dict[str, set[str]] = {"image-mlflow": set(), "push-mlflow": set()}
        self.applied: list[dict] = []
        self.secrets: list[tuple[str, str, set[str]]] = []
        self.namespaces: list[str] = []
        self.labels: list[tuple[str, str]] = []
        self.buckets: list[str] = []
        self.downloaded: dict[str, str] = {}  # local folder: the models.* key it is for
        s3fs.S3FileSystem.clear_instance_cache()  # none made for another server's settings
        self._stamp_kfp_api()
        self._esc50_stand_in()

    # -- shell ---------------------------------------------------------------------------------
    def expand(self, text: str, bodies: list[str] = ()) -> str:
        def variable(match):
            name = match[1] or match[2]
            assert name in self.vars, f"${name} is used before the page sets it"
            return self.vars[name]

        text = VARIABLE.sub(variable, text)
        return MARK.sub(lambda m: self.substitute(bodies[int(m[1])]), text)

    def substitute(self, body: str) -> str:
        """The output of `$(body)`."""
        words = shlex.split(body)
        raw = " ".join(words)
        if any(raw.startswith(p) for p in NOT_RUNNABLE) and " create token " in f" {raw} ":
            self.done["create token"] += 1
            return TOKEN
        if words[:3] == ["openssl", "rand", "-hex"] and len(words) == 4:
            if shutil.which("openssl"):
                return subprocess.run(words, check=True, capture_output=True, text=True,
                                      timeout=30).stdout.strip()
            return secrets.token_hex(int(words[3]))
        raise AssertionError(f"the test cannot stand in for $({body})")

    def run(self, command: Command) -> None:
        kind = classify(command)
        words, bodies = command.words()
        words = [self.expand(w, bodies) for w in words]
        self.done[kind] += 1
        handler = getattr(self, "do_" + kind.replace(" ", "_").replace("-", "_"))
        handler(command, words)

    def do_not_runnable(self, command, words):
        pass

    def do_assign(self, command, words):
        exported = words[0] == "export"
        for word in words[exported:]:
            name, value = word.split("=", 1)
            self.vars[name] = value
            if not exported:
                continue
            if name.startswith("AWS_"):  # the test's S3 server keeps its own values
                assert name in self.s3.env(), f"{name}: not a variable boto3/s3fs read"
            else:
                self.mp.setenv(name, value)

    def do_mkdir(self, command, words):
        for folder in words[2:]:
            (self.cwd / folder).mkdir(parents=True, exist_ok=True)

    def do_heredoc(self, command, words):
        body = self.expand(command.heredoc) if command.expand_heredoc else command.heredoc
        (self.cwd / words[2]).write_text(body)

    # -- make ------------------------------------------------------------------------------------
    def default_image(self, flavour: str, registry: str) -> str:
        from components.image import default_image

        with pytest.MonkeyPatch.context() as mp:
            mp.delenv("FEDA2V_IMAGE", raising=False)
            mp.setenv("FEDA2V_REGISTRY", registry)
            return default_image(flavour)

    def do_make(self, command, words):
        target, settings = words[1], dict(w.split("=", 1) for w in words[2:] if "=" in w)
        proc = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, check=False)
        assert proc.returncode == 0, f"`make -n {' '.join(words[1:])}`:\n{proc.stderr}"
        out = proc.stdout
        if target in ("image", "push"):
            flavour = settings.get("FLAVOUR", "cuda")
            image = settings.get("IMAGE") or self.default_image(flavour,
                                                                settings.get("REGISTRY", ""))
            assert (f"FLAVOUR={flavour} IMAGE={image} " in out if target == "image"
                    else f" push {image}\n" in out), f"`{command.line}` does not name {image}:\n{out}"
            self.images[target].setdefault(flavour, set()).add(image)
        elif target in ("image-mlflow", "push-mlflow"):
            found = re.search(r"(?: -t | push )(\S+)", out)
            assert found, out
            self.mlflow_images[target].add(found[1])

    # -- the bucket and what goes in it ----------------------------------------------------------
    def do_aws_s3_mb(self, command, words):
        bucket = words[3].removeprefix("s3://").rstrip("/")
        fs = self.s3.filesystem()
        if fs.exists(bucket):  # left by an earlier session: start empty
            fs.rm(bucket, recursive=True)
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        self.buckets.append(bucket)

    def do_hf_download(self, command, words):
        """Runs for real with the hub off: it must parse and get as far as the network. Then
        the tiny model of the same architecture stands in for the download."""
        defaults = config_mod.validate({}).models
        stand_in = {defaults.audio_model: "audio", defaults.text_model: "text"}
        repo, local_dir = words[2], _option(words, "--local-dir")
        assert repo in stand_in, f"{repo} is not a model the config defaults to: {stand_in}"
        assert local_dir, f"`{command.line}` needs --local-dir (what `models push` copies)"
        hf = Path(sys.executable).parent / "hf"
        proc = subprocess.run([str(hf) if hf.exists() else "hf", *words[1:]], cwd=self.cwd,
                              capture_output=True, text=True, timeout=120, check=False,
                              env={"PATH": str(hf.parent) + ":/usr/bin:/bin",
                                   "HF_HUB_OFFLINE": "1", "HF_HOME": str(self.tmp / "hf-home"),
                                   "HOME": str(self.tmp)})
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1 and "offline" in out.lower() and "Usage:" not in out, (
            f"`{command.line}` did not get as far as the network:\n{out[-3000:]}")
        shutil.rmtree(self.cwd / local_dir, ignore_errors=True)
        shutil.copytree(self.tiny[stand_in[repo]], self.cwd / local_dir)
        self.downloaded[local_dir] = {"audio": "audio_model", "text": "text_model"}[stand_in[repo]]

    def cluster_config(self):
        return config_mod.load(str(self.cwd / "configs" / "cluster.json"))

    def _esc50_stand_in(self) -> None:
        """A tiny ESC-50 archive on file:// in place of GitHub's, and its MD5 as the known one."""
        from feda2v.data.demo_data import write_demo_dataset

        self.dataset = self.tmp / "dataset"
        # Every class of the reference split: compile's preflight checks them in the bucket.
        write_demo_dataset(str(self.dataset), clips_per_class=5, seconds=0.2, seed=0)
        archive = self.tmp / "ESC-50-master.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for path in sorted(self.dataset.rglob("*")):
                if path.is_file():
                    zf.write(path, f"ESC-50-master/{path.relative_to(self.dataset)}")
        self.mp.setattr("feda2v.cli.tools.ESC50_URL", archive.as_uri())
        self.mp.setattr("feda2v.data.download.ESC50_MD5",
                        hashlib.md5(archive.read_bytes(), usedforsecurity=False).hexdigest())

    def cli(self, argv: list[str]) -> str:
        """feda2v in-process; its stdout and stderr together."""
        self.capsys.readouterr()
        try:
            main(argv)
        except SystemExit as e:
            captured = self.capsys.readouterr()
            pytest.fail(f"`feda2v {' '.join(argv)}` exited {e.code}:\n{captured.out}{captured.err}")
        captured = self.capsys.readouterr()
        return captured.out + captured.err

    def _pushed(self, dest: str, *required: str) -> None:
        fs = self.s3.filesystem()
        path = dest.removeprefix("s3://").rstrip("/")
        for name in required:
            assert fs.exists(f"{path}/{name}"), f"{dest}{name} is not in the bucket"

    def do_feda2v_models_push(self, command, words):
        source, dest = words[-2:]
        assert source in self.downloaded, f"`{command.line}`: {source} was never downloaded"
        key = self.downloaded[source]
        wanted = getattr(self.cluster_config().models, key)
        assert dest.rstrip("/") == wanted.rstrip("/"), (
            f"`{command.line}` copies the {key} to {dest}; configs/cluster.json reads {wanted}")
        self.cli(words[1:])
        self._pushed(dest, "config.json")

    def _dataset_dest(self, command: Command, dest: str) -> None:
        wanted = self.cluster_config().data.dataset_uri
        assert dest.rstrip("/") == wanted.rstrip("/"), (
            f"`{command.line}` writes the dataset to {dest}; configs/cluster.json reads {wanted}")

    def do_feda2v_data_push(self, command, words):
        self._dataset_dest(command, words[-1])
        source = self.cwd / words[-2]
        if not source.exists():  # the reader's own copy of ESC-50
            shutil.copytree(self.dataset, source)
        self.cli(words[1:])
        self._pushed(words[-1], "meta/esc50.csv")

    def do_feda2v_data_esc50(self, command, words):
        self._dataset_dest(command, _option(words, "--out"))
        self.cli(words[1:])
        self._pushed(_option(words, "--out"), "meta/esc50.csv", "audio")

    # -- compile, upload, submit -------------------------------------------------------------------
    def check_pipeline(self, words: list[str], spec: dict, platform: dict, out: str) -> None:
        """Every executor runs the image the page built or named; GPUs, node selectors,
        tolerations, volumes, pipeline root and caching as the command asked."""
        executors = spec["deploymentSpec"]["executors"]
        k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        gpu = {n for n, e in executors.items() if "accelerator" in e["container"].get("resources",
                                                                                       {})}
        params = dict(p.split("=", 1) for p in _options(words, "--param"))
        if params.get("models.device") == "cpu" or _option(words, "--gpus") == "0":
            assert not gpu, f"`{' '.join(words)}` still requests GPUs for {sorted(gpu)}"
        else:
            assert gpu, f"`{' '.join(words)}` requests no GPU"
        flavour = "cuda" if gpu else "cpu"
        image = _option(words, "--image")
        ran = {e["container"]["image"] for e in executors.values()}
        if image is None:  # the default: what `make image` tagged from this checkout
            built, pushed = (self.images[t].get(flavour, set()) for t in ("image", "push"))
            assert len(ran) == 1 and ran <= built & pushed, (
                f"`{' '.join(words)}` runs {ran}, not the {flavour} image the page builds and "
                f"pushes (built {built}, pushed {pushed})")
            image = next(iter(ran))
        assert ran == {image}, ran
        assert f"image:   {image}" in out
        for pair in _options(words, "--gpu-node-selector"):
            key, value = pair.split("=", 1)
            for name in executors:
                labels = k8s[name].get("nodeSelector", {}).get("labels", {})
                assert labels.get(key) == (value if name in gpu else None), (name, labels)
        for text in _options(words, "--gpu-toleration"):
            key, effect = text.split("=", 1)[0].split(":")[0], text.rsplit(":", 1)[1]
            for name in executors:
                found = [t for t in k8s[name].get("tolerations", [])
                         if t["key"] == key and t["effect"] == effect]
                assert bool(found) == (name in gpu), (name, k8s[name].get("tolerations"))
        for volume in _options(words, "--volume"):
            pvc, path = volume.split(":", 1)
            for name in executors:
                assert {"constant": pvc, "mountPath": path} in [
                    {k: m[k] for k in ("constant", "mountPath")} for m in k8s[name]["pvcMount"]]
        if _option(words, "--pipeline-root"):
            assert spec["defaultPipelineRoot"] == _option(words, "--pipeline-root")
        if _option(words, "--caching"):
            tasks = [t for c in [spec["root"], *spec["components"].values()]
                     for t in c.get("dag", {}).get("tasks", {}).values()
                     if "executorLabel" in spec["components"][t["componentRef"]["name"]]]
            assert tasks and all(t.get("cachingOptions", {}).get("enableCache", False)
                                 == (_option(words, "--caching") == "on") for t in tasks)

    def do_feda2v_compile(self, command, words):
        out = self.cli(words[1:])
        docs = list(yaml.load_all((self.cwd / _option(words, "--output")).read_text(),
                                  Loader=LOADER))
        self.check_pipeline(words, docs[0], docs[1], out)

    def _stamp_kfp_api(self) -> None:
        """KFP's CLI prints creation times the fake API leaves out: add them."""
        handle = self.kfp.handle

        def stamp(node):
            if isinstance(node, list):
                return [stamp(n) for n in node]
            if not isinstance(node, dict):
                return node
            node = {k: stamp(v) for k, v in node.items()}
            if {"pipeline_id", "run_id", "experiment_id"} & set(node):
                node.setdefault("created_at", "2025-01-01T00:00:00Z")
            return node

        def stamped(req):
            status, headers, payload = handle(req)
            return status, headers, stamp(payload)

        self.kfp.handle = stamped

    def fresh_kfp(self, multi_user: bool) -> None:
        for store in (self.kfp.requests, self.kfp.experiments, self.kfp.pipelines,
                      self.kfp.versions, self.kfp.runs, self.kfp.polls):
            store.clear()
        self.kfp.multi_user, self.kfp.refuse = multi_user, "401"
        self.kfp.token = TOKEN if multi_user else None  # a multi-user gateway wants credentials
        self.kfp.run_script = [("SUCCEEDED", [("run1", "SUCCEEDED")])]

    def do_kfp(self, command, words):
        from click.testing import CliRunner
        from kfp.cli.cli import cli

        args = words[1:]
        endpoint = args.index("--endpoint") + 1
        args[endpoint] = self.kfp.url
        self.fresh_kfp(multi_user="--namespace" in args or "-n" in args)
        result = CliRunner().invoke(cli, args, obj={})
        assert result.exit_code == 0, f"`{command.line}`:\n{result.output}\n{result.exception!r}"
        text = f" {' '.join(args)} "
        if " run create " in text:
            package = _option(args, "-f") or _option(args, "--package-file")
            spec = next(yaml.load_all((self.cwd / package).read_text(), Loader=LOADER))
            given = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
            unknown = set(given) - set(spec["root"]["inputDefinitions"]["parameters"])
            assert not unknown, f"`{command.line}`: {sorted(unknown)} are not run-time parameters"
            [run] = self.kfp.created_runs()
            assert set(run["runtime_config"]["parameters"]) == set(given)
        elif " pipeline create " in text:
            [upload] = self.kfp.uploads()
            assert upload.query["name"] == _option(args, "-p")

    def do_feda2v_submit(self, command, words):
        from feda2v.orchestration import submit

        namespace = _option(words, "--namespace")
        self.fresh_kfp(multi_user=bool(namespace))
        argv = list(words[1:])
        argv[argv.index("--host") + 1] = self.kfp.url
        pod_token = self.tmp / "pod-token"
        if _option(words, "--auth") == "service-account":  # the pod's projected token
            pod_token.write_text(TOKEN)
            self.mp.setattr(submit, "SA_TOKEN_PATH", str(pod_token))
        try:
            out = self.cli(argv)
        finally:
            self.mp.setattr(submit, "SA_TOKEN_PATH", str(self.tmp / "no-pod-token"))
        assert TOKEN not in out
        calls = self.kfp.calls()
        assert calls and all(r.status == 200 for r in calls), calls
        if namespace:
            assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in calls)
            assert {e["namespace"] for e in self.kfp.experiments.values()} == {namespace}
        [run] = self.kfp.created_runs()
        if run.get("pipeline_spec"):
            spec, platform = run["pipeline_spec"]["pipeline_spec"], run["pipeline_spec"][
                "platform_spec"]
        else:
            spec, platform = self.kfp.version_spec(
                run["pipeline_version_reference"]["pipeline_version_id"])
        self.check_pipeline(words, spec, platform, out)
        if "--watch" in words:
            assert "finished: SUCCEEDED" in out

    # -- kubectl -----------------------------------------------------------------------------------
    def do_kubectl_create_namespace(self, command, words):
        self.namespaces.append(_kubectl(words)[1][2])

    def do_kubectl_create_secret_generic(self, command, words):
        namespace, rest = _kubectl(words)
        assert namespace, f"`{command.line}`: say the namespace (-n)"
        name, keys = rest[3], set()
        for option in rest[4:]:
            assert option.startswith("--from-literal="), f"`{command.line}`: {option}"
            keys.add(option.removeprefix("--from-literal=").split("=", 1)[0])
        self.secrets.append((namespace, name, keys))

    def do_kubectl_label_namespace(self, command, words):
        _, rest = _kubectl(words)
        namespace, label = rest[2], rest[3]
        self.labels.append((namespace, label))

    def do_kubectl_apply(self, command, words):
        _, rest = _kubectl(words)
        assert rest[1] == "-k" and len(rest) == 3, f"`{command.line}`: apply -k DIR only"
        directory = self.cwd / rest[2]
        objects = render(directory)
        for obj in objects:
            try:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{rest[2]}: {obj['kind']}/{obj['metadata']['name']}: {e.message}")
        assert_kubectl_agrees(directory, objects)
        mine = {object_id(o) for o in objects}
        self.applied = [o for o in self.applied if object_id(o) not in mine] + objects

    def _applied(self, kind: str, name: str, namespace: str) -> dict:
        found = [o for o in self.applied if o["kind"] == kind and o["metadata"]["name"] == name
                 and o["metadata"].get("namespace") == namespace]
        assert found, f"no {kind} {name} in {namespace} among what the page applied"
        return found[0]

    def do_kubectl_rollout_status(self, command, words):
        namespace, rest = _kubectl(words)
        kind, name = rest[2].split("/", 1)
        self._applied(KINDS[kind], name, namespace)

    def do_kubectl_port_forward(self, command, words):
        namespace, rest = _kubectl(words)
        kind, name = rest[1].split("/", 1)
        remote = int(rest[2].split(":")[-1])
        service = self._applied(KINDS[kind], name, namespace)
        assert remote in [p["port"] for p in service["spec"]["ports"]], service["spec"]["ports"]

    # -- what the page did, checked together ----------------------------------------------------
    def finish(self) -> None:
        from pipelines.cluster import MLFLOW_SECRET_KEYS, SECRET_KEYS, ClusterOptions

        assert self.images["image"] and self.images["image"] == self.images["push"], self.images
        built, pushed = self.mlflow_images.values()
        assert built and built == pushed, self.mlflow_images
        mlflow = find(self.applied, "Deployment", "mlflow", "feda2v")
        assert {c["image"] for c, _ in containers(mlflow["spec"]["template"]["spec"])} == built, (
            "the MLflow Deployment the page applies does not run the MLflow image it pushes")

        launcher = find(self.applied, "ConfigMap", "kfp-launcher")
        runs_ns = launcher["metadata"]["namespace"]
        assert runs_ns == self.vars["PROFILE_NS"]
        assert find(self.applied, "ConfigMap", "feda2v-config", runs_ns)
        ref = yaml.safe_load(launcher["data"]["providers"])["s3"]["default"]["credentials"][
            "secretRef"]

        templates = {}
        for path in SECRET_TEMPLATES:
            [secret] = load_yaml_documents(path)
            templates[secret["metadata"]["name"]] = set(secret["stringData"])
        needed = {}  # (namespace, Secret): keys the applied workloads must find
        for workload, pod in pod_specs(self.applied):
            for container, _ in containers(pod):
                for env in container.get("env", []):
                    key_ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if key_ref and not key_ref.get("optional"):
                        needed.setdefault((workload["metadata"]["namespace"], key_ref["name"]),
                                          set()).add(key_ref["key"])
        needed.setdefault((runs_ns, ClusterOptions().s3_secret), set()).update(
            SECRET_KEYS, {ref["accessKeyKey"], ref["secretKeyKey"]})
        assert ref["secretName"] == ClusterOptions().s3_secret
        created = {}
        for namespace, name, keys in self.secrets:
            assert name in templates, f"Secret {name}: no manifests/**/secret-*.example.yaml"
            assert (namespace, name) in needed, (
                f"Secret {name} in {namespace}: nothing the page applies reads it there")
            optional = set(MLFLOW_SECRET_KEYS) if namespace == runs_ns else set()
            assert keys <= templates[name] | optional, f"{name}: {keys - templates[name]}"
            assert keys & optional in (set(), optional), f"{name}: both MLflow keys, or neither"
            assert needed[(namespace, name)] <= keys, (
                f"{name} in {namespace} lacks {needed[(namespace, name)] - keys}")
            created[(namespace, name)] = keys
        assert set(needed) <= set(created), f"Secrets never created: {set(needed) - set(created)}"

        for namespace in self.namespaces:
            find(self.applied, "Namespace", namespace)
        policy = find(self.applied, "NetworkPolicy", "mlflow", "feda2v")
        admitted = [dict(source["namespaceSelector"]["matchLabels"])
                    for rule in policy["spec"]["ingress"] for source in rule["from"]
                    if "namespaceSelector" in source]
        assert self.labels, "the page never labels the runs' namespace for MLflow"
        for namespace, label in self.labels:
            key, value = label.split("=", 1)
            assert namespace == runs_ns and {key: value} in admitted, (namespace, label, admitted)

        assert self.buckets == [self.cluster_config().storage_root.removeprefix("s3://")
                                .split("/")[0]]
        assert sorted(self.downloaded.values()) == ["audio_model", "text_model"]


@pytest.fixture
def walk(tmp_path, monkeypatch, capsys, kfp_api, s3_server, tiny_models):  # noqa: F811
    w = Walk(tmp_path, monkeypatch, capsys, kfp_api, s3_server, tiny_models)
    yield w
    fs = s3_server.filesystem()
    for bucket in w.buckets:
        if fs.exists(bucket):
            fs.rm(bucket, recursive=True)
    s3fs.S3FileSystem.clear_instance_cache()


def test_the_page_runs_from_nothing_to_a_submitted_run(walk):
    for command in COMMANDS:
        walk.run(command)
    walk.finish()
    assert walk.done["feda2v models push"] >= 2 and walk.done["create token"]
    assert walk.done["feda2v submit"] >= 3 and walk.done["feda2v compile"] >= 3


# --- troubleshooting: the messages the page quotes are the code's ---------------------------------


def _troubles() -> dict[str, list[str]]:
    """{command: the pieces of every message the troubleshooting table quotes for it}."""
    table = PAGE_TEXT.split("## 11. Troubleshooting", 1)[1].split("\n## ", 1)[0]
    quoted: dict[str, list[str]] = {}
    for row in re.findall(r"^\| `(compile|submit)`: (.*?) \|", table, re.MULTILINE):
        for message in re.findall(r"`([^`]+)`", row[1]):
            quoted.setdefault(row[0], []).extend(
                p.strip() for p in message.split("…") if p.strip())
    return quoted


def test_the_troubleshooting_messages_are_what_the_code_says(kfp_api, capsys, monkeypatch,
                                                             s3_server, tmp_path):  # noqa: F811
    quoted = _troubles()
    assert set(quoted) == {"compile", "submit"}
    monkeypatch.chdir(ROOT)
    base = ["submit", "--config", "configs/demo.json", "--host", kfp_api.url, "--no-preflight",
            "--image", "registry.example.com/team/feda2v:1"]

    def refused(argv) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit):
            main(argv)
        captured = capsys.readouterr()
        return captured.out + captured.err

    said = {"submit": "", "compile": ""}
    kfp_api.token, kfp_api.multi_user = TOKEN, True
    monkeypatch.setenv("FEDA2V_KFP_TOKEN", "expired-token")
    for refuse in ("401", "403", "redirect"):
        kfp_api.refuse = refuse
        said["submit"] += refused(base + ["--namespace", "team-a"])
    monkeypatch.delenv("FEDA2V_KFP_TOKEN")
    said["submit"] += refused(base + ["--namespace", "team-a"])  # no credentials: a login page
    kfp_api.token = None
    said["submit"] += refused(base)  # multi-user without --namespace
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.create_bucket()
    said["compile"] += refused(["compile", "--config", "configs/demo.json", "--output",
                                str(tmp_path / "p.yaml"), "--param",
                                f"models.text_model=s3://{bucket}/models/none/"])
    for command, pieces in quoted.items():
        for piece in pieces:
            assert piece in said[command], f"`{command}` never says {piece!r}:\n{said[command]}"
    # and the warning the image-pull row promises
    capsys.readouterr()
    main(["compile", "--config", "configs/demo.json", "--output", str(tmp_path / "q.yaml"),
          "--no-preflight", "--image", "feda2v:1"])
    assert "names no registry host" in capsys.readouterr().err
    assert "names no registry host" in PAGE_TEXT
