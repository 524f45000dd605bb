"""The cluster path of `feda2v compile` / `submit` (issue 20): the image every task runs, GPUs only
where the work uses them, a caching switch that reaches every task of every sub-DAG, volumes,
the pipeline root, and bad input refused by name before anything is written or submitted.

Everything here is in-process (`feda2v.cli.main`) and compiles in well under a second."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from kfpapi import kfp_api_fixture  # noqa: F401 - the kfp_api fixture

from feda2v.cli import main

ROOT = Path(__file__).resolve().parents[1]
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Round execution writes tasks per round: one round per phase keeps its YAML small.
ROUND = ["--execution", "round", "--param", "global_rounds=1",
         "--param", "feda2v.generator_training_rounds=1"]
IMAGE = "registry.example.com/team/feda2v:1.2.3"
DEMO = "configs/demo.json"        # models.device: cpu
CLUSTER = "configs/cluster.json"  # models.device: auto (the default), everything on s3://


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """The default image comes from the environment; the tests' own must not leak in."""
    for name in ("FEDA2V_IMAGE", "FEDA2V_REGISTRY", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(ROOT)


def compile_(tmp_path, capsys, *args, config=DEMO):
    """Compile in-process; returns (pipeline spec, platform executors, stdout, stderr)."""
    out = tmp_path / "p.yaml"
    main(["compile", "--config", config, "--output", str(out), *args])
    docs = list(yaml.load_all(out.read_text(), Loader=LOADER))
    captured = capsys.readouterr()
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] \
        if len(docs) > 1 else {}
    return docs[0], platform, captured.out, captured.err


def refused(capsys, argv, output=None) -> str:
    """Runs argv, which must exit 2 with nothing written; returns stderr."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err
    if output is not None:
        assert not Path(output).exists()
    return err


def all_tasks(spec):
    """(DAG, task name, task, component) for every task of the root DAG and every sub-DAG."""
    comps = spec["components"]
    for dag_name, comp in [("root", spec["root"]), *comps.items()]:
        for name, task in comp.get("dag", {}).get("tasks", {}).items():
            yield dag_name, name, task, comps[task["componentRef"]["name"]]


def container_tasks(spec):
    """The tasks that run a container (not a loop, condition or exit-handler group)."""
    return [(d, n, t) for d, n, t, c in all_tasks(spec) if "executorLabel" in c]


def enabled(task) -> bool:
    return bool(task.get("cachingOptions", {}).get("enableCache", False))


def component_of(executor: str) -> str:
    """exec-federated-phase-2 -> federated-phase (what ClusterOptions' task lists name)."""
    return re.sub(r"-\d+$", "", executor.removeprefix("exec-"))


def resources(spec) -> dict:
    return {name: ex["container"].get("resources", {})
            for name, ex in spec["deploymentSpec"]["executors"].items()}


# -- the issue's "Done when" compile ----------------------------------------------------------

@pytest.mark.parametrize("extra", [[], ROUND, ["--pipeline", "ablations"]],
                         ids=["end_to_end", "round-execution", "ablations"])
def test_image_and_caching_off_reach_every_task_of_every_dag(tmp_path, capsys, extra):
    spec, _, out, err = compile_(tmp_path, capsys, "--image", IMAGE, "--caching", "off", *extra)
    images = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert images == {IMAGE}
    tasks = container_tasks(spec)
    # the cached tasks sit in sub-DAGs (exit handler, client loop), where kfp's run-level
    # override does not reach: the walk must have gone there
    assert any(dag != "root" for dag, _, _ in tasks)
    on = [f"{dag}/{name}" for dag, name, task in tasks if enabled(task)]
    assert not on, on
    assert not [n for _, n, t, _ in all_tasks(spec) if enabled(t)]  # groups too
    # models.device is cpu: no GPU anywhere
    assert not [n for n, r in resources(spec).items() if "accelerator" in r]
    assert "nvidia.com/gpu" not in (tmp_path / "p.yaml").read_text()
    assert f"image:   {IMAGE}" in out and "caching: off" in out
    assert "warning" not in err  # the image names a registry host


def test_the_issue_command_as_written(tmp_path, capsys, monkeypatch):
    """`feda2v compile --config configs/demo.json --image … --caching off --output p.yaml`, with
    the preflight (demo paths are notes for a cluster, not errors)."""
    demo = str(ROOT / DEMO)
    monkeypatch.chdir(tmp_path)
    main(["compile", "--config", demo, "--image", IMAGE, "--caching", "off", "--output",
          "p.yaml"])
    spec = next(yaml.load_all((tmp_path / "p.yaml").read_text(), Loader=LOADER))
    assert {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()} == {
        IMAGE}
    assert container_tasks(spec) and not [n for _, n, t in container_tasks(spec) if enabled(t)]
    assert not [n for n, r in resources(spec).items() if "accelerator" in r]
    assert "Wrote end_to_end pipeline" in capsys.readouterr().out


@pytest.mark.parametrize("extra", [[], ROUND, ["--pipeline", "ablations"]],
                         ids=["end_to_end", "round-execution", "ablations"])
def test_caching_on_reaches_every_task_of_every_dag(tmp_path, capsys, extra):
    spec, _, out, _ = compile_(tmp_path, capsys, "--image", IMAGE, "--caching", "on", *extra)
    tasks = container_tasks(spec)
    assert any(dag != "root" for dag, _, _ in tasks)
    off = [f"{dag}/{name}" for dag, name, task in tasks if not enabled(task)]
    assert not off, off
    assert "caching: on, every task" in out


@pytest.mark.parametrize("extra", [[], ROUND], ids=["phase", "round"])
def test_no_caching_flag_caches_only_the_data_tasks(tmp_path, capsys, extra):
    spec, _, out, _ = compile_(tmp_path, capsys, "--image", IMAGE, *extra)
    cached = {component_of(n) for _, n, t in container_tasks(spec) if enabled(t)}
    assert cached == {"extract", "class-targets"}
    trained = {component_of(n) for _, n, t in container_tasks(spec) if not enabled(t)}
    assert {"train-generator", "generate"} <= trained
    assert trained & {"federated-phase", "client-round", "server-round"}
    assert "caching: as built" in out


# -- GPUs only where the work uses them --------------------------------------------------------

def test_a_gpu_config_requests_gpus_on_the_heavy_tasks_only(tmp_path, capsys):
    from pipelines.cluster import GPU_TASKS

    spec, platform, out, _ = compile_(
        tmp_path, capsys, "--no-preflight", "--image", IMAGE, "--gpu-resource", "amd.com/gpu",
        "--gpu-node-selector", "gpu.example/product=H100",
        "--gpu-toleration", "nvidia.com/gpu:NoSchedule",
        "--node-selector", "pool=feda2v", "--toleration", "dedicated=ml:NoExecute",
        config=CLUSTER)
    res = resources(spec)
    gpu = {n for n in res if component_of(n) in GPU_TASKS}
    assert {"exec-extract", "exec-federated-phase", "exec-train-generator",
            "exec-generate"} <= gpu
    assert {"exec-class-targets", "exec-data-config", "exec-finish-run"} <= set(res) - gpu
    general = {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"}
    gpu_taint = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    for name, r in res.items():
        tolerations = platform[name].get("tolerations", [])
        labels = platform[name]["nodeSelector"]["labels"]
        if name in gpu:
            assert r["accelerator"]["resourceType"] == "amd.com/gpu", name
            assert r["accelerator"]["resourceCount"] == "1", name
            assert labels == {"pool": "feda2v", "gpu.example/product": "H100"}, name
            assert general in tolerations and gpu_taint in tolerations, name
        else:
            assert "accelerator" not in r, name
            assert labels == {"pool": "feda2v"}, name  # not pinned to the GPU pool
            assert tolerations == [general], name
    assert "1 x amd.com/gpu per extraction/training task" in out


def test_gpu_settings_need_a_gpu_to_apply_to(tmp_path, capsys):
    """With models.device cpu the GPU-only selectors and tolerations land nowhere."""
    _, platform, _, _ = compile_(tmp_path, capsys, "--image", IMAGE,
                                 "--gpu-node-selector", "gpu=yes",
                                 "--gpu-toleration", "nvidia.com/gpu:NoSchedule")
    for name, k8s in platform.items():
        assert "gpu" not in k8s.get("nodeSelector", {}).get("labels", {}), name
        assert not k8s.get("tolerations"), name


def test_gpus_0_makes_a_gpu_config_cpu_only(tmp_path, capsys):
    from components.image import default_image

    spec, _, out, _ = compile_(tmp_path, capsys, "--no-preflight", "--gpus", "0",
                               config=CLUSTER)
    assert not [n for n, r in resources(spec).items() if "accelerator" in r]
    images = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert images == {default_image("cpu")}
    assert "GPUs:    no GPU" in out


def test_gpus_on_a_cpu_config_are_refused_by_name(tmp_path, capsys):
    err = refused(capsys, ["compile", "--config", DEMO, "--output", str(tmp_path / "p.yaml"),
                           "--image", IMAGE, "--gpus", "1"], tmp_path / "p.yaml")
    assert "--gpus 1" in err and "models.device is 'cpu'" in err


# -- the default image is what `make image` tags -----------------------------------------------

def make_image(**variables) -> str:
    """The IMAGE `make -n image` would build with these make variables."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("IMAGE", "REGISTRY", "FLAVOUR", "MAKEFLAGS", "MFLAGS")}
    out = subprocess.run(["make", "-n", "image", *(f"{k}={v}" for k, v in variables.items())],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                         check=True).stdout
    found = re.findall(r"(?<![A-Z_])IMAGE=(\S+)", out)
    assert len(found) == 1, out
    return found[0]


@pytest.mark.parametrize("registry", ["", "registry.example.com/team",
                                      "registry.example.com:5000/team/"])
def test_the_default_image_is_what_make_image_tags(monkeypatch, registry):
    from components.image import REGISTRY_ENV, default_image
    from feda2v.io import tracking

    monkeypatch.delenv("FEDA2V_GIT_COMMIT", raising=False)
    tracking._source_tags.cache_clear()
    if registry:
        monkeypatch.setenv(REGISTRY_ENV, registry)
    make_vars = {"REGISTRY": registry} if registry else {}
    assert default_image("cuda") == make_image(**make_vars)
    assert default_image("cpu") == make_image(FLAVOUR="cpu", **make_vars)
    assert default_image("cpu") == default_image("cuda") + "-cpu"
    printed = subprocess.run(["make", "-s", "image-name", "FLAVOUR=cpu", *(
        f"{k}={v}" for k, v in make_vars.items())], cwd=ROOT, check=True, capture_output=True,
        text=True).stdout.strip()
    assert printed == default_image("cpu")  # what the docs tell a user to pass as --image
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    assert commit and commit in default_image("cuda")


def test_compile_writes_and_prints_the_default_image_and_warns_without_a_host(tmp_path, capsys):
    from components.image import default_image

    spec, _, out, err = compile_(tmp_path, capsys)
    image = default_image("cpu")  # demo.json: models.device cpu
    assert image == make_image(FLAVOUR="cpu")
    assert {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()} == {
        image}
    assert f"image:   {image}" in out
    assert "warning:" in err and repr(image) in err and "registry host" in err


def test_the_registry_variable_gives_a_pullable_default(tmp_path, capsys, monkeypatch):
    from components.image import default_image

    monkeypatch.setenv("FEDA2V_REGISTRY", "registry.example.com/team/")
    spec, _, _, err = compile_(tmp_path, capsys, "--no-preflight", config=CLUSTER)
    image = default_image("cuda")
    assert image.startswith("registry.example.com/team/feda2v:")
    assert image == make_image(REGISTRY="registry.example.com/team/")
    assert {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()} == {
        image}
    assert "warning" not in err


def test_feda2v_image_replaces_the_default(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEDA2V_IMAGE", "localhost:5000/mine:7")
    spec, _, _, err = compile_(tmp_path, capsys)
    assert {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()} == {
        "localhost:5000/mine:7"}
    assert "warning" not in err
    monkeypatch.setenv("FEDA2V_IMAGE", "Mine:7")
    err = refused(capsys, ["compile", "--config", DEMO, "--output", str(tmp_path / "q.yaml")],
                  tmp_path / "q.yaml")
    assert "$FEDA2V_IMAGE 'Mine:7' is not a valid image reference" in err


REGISTRY_HOSTS = [
    ("feda2v:1", False),
    ("team/feda2v:1", False),                 # a Docker Hub path, not a host
    ("registry.example.com:5000", False),     # that is a name and a tag
    ("localhost/feda2v:1", True),
    ("localhost:5000/feda2v:1", True),
    ("registry.example.com/team/feda2v:1.2.3", True),
    ("10.0.0.5:5000/feda2v@sha256:" + "a" * 64, True),
]


def test_has_registry_host_follows_dockers_rule():
    from components.image import check_reference, has_registry_host

    for image, host in REGISTRY_HOSTS:
        assert check_reference(image) == image
        assert has_registry_host(image) is host, image


@pytest.mark.parametrize("image, warns", [("team/feda2v:1", True), ("localhost/feda2v:1", False)])
def test_the_warning_is_about_the_registry_host(tmp_path, capsys, image, warns):
    _, _, out, err = compile_(tmp_path, capsys, "--image", image)
    assert f"image:   {image}" in out
    assert ("names no registry host" in err) is warns


# -- bad input: named, exit 2, nothing written, nothing submitted ------------------------------

BAD_IMAGES = ["Registry.example.com/Team/Feda2v:1", "a:b:c", "", "feda2v:", "feda2v:1 ",
              "feda2v:tåg", "-feda2v:1", "registry.example.com/feda2v:1\n"]
BAD_OPTIONS = [
    (["--volume", "data"], "expected PVC:PATH"),
    (["--volume", ":/mnt/data"], "expected PVC:PATH"),
    (["--volume", "data:"], "expected PVC:PATH"),
    (["--volume", "data:relative"], "must be absolute"),
    (["--volume", "Data_Set:/mnt/data"], "is not a PersistentVolumeClaim name"),
    (["--volume", "data-\n:/mnt/data"], "is not a PersistentVolumeClaim name"),
    (["--pipeline-root", "/tmp/x"], "is not a URI"),
    (["--pipeline-root", "not-a-uri"], "is not a URI"),
    (["--pipeline-root", "s3://"], "is not a URI"),
    (["--pipeline-root", "s3://bucket/x\n"], "is not a URI"),
    (["--gpu-toleration", "nvidia.com/gpu"], "expects KEY[=VALUE]:EFFECT"),
    (["--toleration", "=x:NoSchedule"], "expects KEY[=VALUE]:EFFECT"),
    (["--gpu-node-selector", "pool"], "expects KEY=VALUE"),
    (["--node-selector", "=gpu"], "expects KEY=VALUE"),
    (["--gpus", "-1"], "--gpus must be 0 or more"),
]


@pytest.mark.parametrize("image", BAD_IMAGES)
def test_a_bad_image_is_refused_by_compile(tmp_path, capsys, image):
    out = tmp_path / "p.yaml"
    err = refused(capsys, ["compile", "--config", DEMO, "--output", str(out), f"--image={image}"],
                  out)
    assert f"--image {image!r} is not a valid image reference" in err


@pytest.mark.parametrize("args, message", BAD_OPTIONS,
                         ids=[" ".join(a).replace("\n", "\\n") for a, _ in BAD_OPTIONS])
def test_a_bad_option_is_refused_by_compile(tmp_path, capsys, args, message):
    out = tmp_path / "p.yaml"
    err = refused(capsys, ["compile", "--config", DEMO, "--output", str(out), "--image", IMAGE,
                           *args], out)
    assert message in err
    if args[0] != "--gpus":
        assert repr(args[1]) in err  # the input itself is named


@pytest.mark.parametrize("args, message", [
    *BAD_OPTIONS, *(([f"--image={i}"], "is not a valid image reference") for i in BAD_IMAGES[:3])])
def test_bad_input_is_refused_before_submit_contacts_the_server(kfp_api, capsys, monkeypatch,
                                                                args, message):
    monkeypatch.setenv("FEDA2V_KFP_TOKEN", "s3cret-token-value")
    kfp_api.token = "s3cret-token-value"
    err = refused(capsys, ["submit", "--config", DEMO, "--host", kfp_api.url, "--image", IMAGE,
                           *args])
    assert message in err
    assert kfp_api.requests == []  # not even a health check: nothing submitted


def test_run_refuses_a_bad_image_before_running(capsys, monkeypatch):
    from feda2v.localrun import run as local_run

    def run_locally(*args, **kwargs):
        raise AssertionError("the pipeline must not start")

    monkeypatch.setattr(local_run, "run_locally", run_locally)
    for image in ("", "Feda2v:1"):
        err = refused(capsys, ["run", "--config", DEMO, "--runner", "docker", f"--image={image}"])
        assert f"--image {image!r} is not a valid image reference" in err


# -- volumes and the pipeline root -------------------------------------------------------------

def test_volumes_mount_on_every_task_and_the_pipeline_root_is_the_default(tmp_path, capsys):
    spec, platform, _, _ = compile_(
        tmp_path, capsys, "--image", IMAGE, "--volume", "esc50-data:/mnt/data",
        "--volume", "models.v1:/mnt/models", "--pipeline-root", "s3://feda2v/pipeline-root")
    assert spec["defaultPipelineRoot"] == "s3://feda2v/pipeline-root"
    executors = spec["deploymentSpec"]["executors"]
    assert set(platform) == set(executors)
    for name in executors:
        mounts = {(m["constant"], m["mountPath"]) for m in platform[name]["pvcMount"]}
        assert mounts == {("esc50-data", "/mnt/data"), ("models.v1", "/mnt/models")}, name


def test_without_volumes_or_root_the_spec_has_neither(tmp_path, capsys):
    spec, platform, _, _ = compile_(tmp_path, capsys, "--image", IMAGE, "--pipeline",
                                    "ablations")
    assert "defaultPipelineRoot" not in spec
    assert not [n for n, k8s in platform.items() if "pvcMount" in k8s]


def test_pipeline_roots_kfp_writes_to_are_accepted():
    from feda2v.cli.pipeline import check_pipeline_root

    for root in ("s3://feda2v", "gs://bucket/kfp", "minio://mlpipeline/v2",
                 "s3://my-bucket.example/a/b-c_d"):
        assert check_pipeline_root(root) == root


# -- --help lists every flag -------------------------------------------------------------------

CLUSTER_FLAGS = ["--image", "--gpus", "--gpu-resource", "--gpu-node-selector",
                 "--gpu-toleration", "--node-selector", "--toleration", "--volume",
                 "--pipeline-root", "--caching", "--no-preflight", "--cpu-request",
                 "--memory-limit", "--retries", "--s3-secret", "--config-map", "--execution",
                 "--param"]


@pytest.mark.parametrize("command, flags", [
    ("compile", [*CLUSTER_FLAGS, "--output", "--pipeline"]),
    ("submit", [*CLUSTER_FLAGS, "--host", "--namespace", "--auth", "--experiment",
                "--run-name", "--pipeline-name", "--version-name", "--watch", "--timeout",
                "FEDA2V_KFP_TOKEN", "FEDA2V_KFP_COOKIE", "KF_PIPELINES_SA_TOKEN_PATH",
                "service-account", "PVC:PATH", "{on,off}"]),
])
def test_help_lists_every_flag(capsys, monkeypatch, command, flags):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    missing = [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text)]
    assert not missing, missing
    # credentials come from the environment only, never from argv
    assert not re.search(r"--(token|cookie|password)\b", text)
