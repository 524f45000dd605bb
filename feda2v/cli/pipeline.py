"""run (kfp.local), compile (a KFP YAML) and submit (a Kubeflow Pipelines endpoint)."""

from __future__ import annotations

import os
import re
import sys

from feda2v.cli.common import config_arg, execution_arg, feda2v_version, override_args, run_cfg
from feda2v.io import config as config_mod
from feda2v.io.config import Config


def _pair(text: str, flag: str) -> tuple[str, str]:
    if "=" not in text or text.startswith("="):
        raise ValueError(f"{flag} expects KEY=VALUE, got {text!r}")
    return tuple(text.split("=", 1))


def _toleration(text: str, flag: str) -> dict:
    spec, _, effect = text.rpartition(":")
    if (not spec or spec.startswith("=")
            or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute")):
        raise ValueError(f"{flag} expects KEY[=VALUE]:EFFECT with EFFECT one of "
                         f"NoSchedule, PreferNoSchedule, NoExecute; got {text!r}")
    key, _, value = spec.partition("=")
    return {"key": key, "operator": "Equal" if value else "Exists", "value": value or None,
            "effect": effect}


# A PersistentVolumeClaim's name is a DNS-1123 subdomain.
_PVC_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# The pipeline roots KFP's launcher writes to.
_PIPELINE_ROOT = re.compile(r"^(s3|gs|minio)://[A-Za-z0-9][^/\s]*(/\S*)?$")


def _volume(text: str) -> tuple[str, str]:
    pvc, sep, path = text.partition(":")
    if not sep or not pvc or not path:
        raise ValueError(f"--volume {text!r}: expected PVC:PATH, a PersistentVolumeClaim and "
                         "the absolute path every task mounts it at, e.g. esc50-data:/mnt/data")
    if len(pvc) > 253 or not _PVC_NAME.fullmatch(pvc):
        raise ValueError(f"--volume {text!r}: {pvc!r} is not a PersistentVolumeClaim name "
                         "(lower-case letters, digits, '-' and '.')")
    if not path.startswith("/") or "\n" in path:
        raise ValueError(f"--volume {text!r}: the mount path {path!r} must be absolute")
    return pvc, path


def check_pipeline_root(text: str) -> str:
    if not _PIPELINE_ROOT.fullmatch(text):
        raise ValueError(f"--pipeline-root {text!r} is not a URI KFP can write artifacts to: "
                         "expected s3://BUCKET/PREFIX (also gs:// or minio://)")
    return text


def _cluster_options(a, cfg: Config):
    """The cluster options of the command line, checked before anything is compiled."""
    from components.image import IMAGE_ENV, REGISTRY_ENV, check_reference, default_image
    from pipelines import ClusterOptions

    gpus = a.gpus
    if gpus is None:  # the work decides: a CPU config must not wait for a GPU node
        gpus = 0 if cfg.models.device == "cpu" else 1
    elif gpus < 0:
        raise ValueError(f"--gpus must be 0 or more, got {gpus}")
    elif gpus and cfg.models.device == "cpu":
        raise ValueError(f"--gpus {gpus} asks a GPU per extraction/training task, but "
                         "models.device is 'cpu' and they would not use it; set models.device "
                         "to auto or cuda (--param models.device=auto), or drop --gpus")
    if a.image is not None:  # --image "" (an unset shell variable) is an error, not the default
        image = check_reference(a.image)
    else:
        source = (f"${IMAGE_ENV}" if os.environ.get(IMAGE_ENV) else
                  f"the default image (${REGISTRY_ENV}/feda2v:VERSION-COMMIT)")
        image = check_reference(default_image("cuda" if gpus else "cpu"), source)
    return ClusterOptions(
        image=image, gpus=gpus, gpu_resource=a.gpu_resource,
        cpu_request=a.cpu_request, cpu_limit=a.cpu_limit, memory_request=a.memory_request,
        memory_limit=a.memory_limit, retries=a.retries, s3_secret=a.s3_secret,
        config_map=a.config_map,
        node_selector=dict(_pair(t, "--node-selector") for t in a.node_selector or []),
        tolerations=[_toleration(t, "--toleration") for t in a.toleration or []],
        gpu_node_selector=dict(_pair(t, "--gpu-node-selector")
                               for t in a.gpu_node_selector or []),
        gpu_tolerations=[_toleration(t, "--gpu-toleration") for t in a.gpu_toleration or []],
        caching={"on": True, "off": False}.get(a.caching),
        volumes=[_volume(t) for t in a.volume or []],
        pipeline_root=check_pipeline_root(a.pipeline_root) if a.pipeline_root else "")


def _say_options(options) -> None:
    """What the YAML asks of the cluster, and a warning a user would want before a pod waits."""
    from components.image import has_registry_host

    gpu = (f"{options.gpus} x {options.gpu_resource} per extraction/training task"
           if options.gpus else "no GPU")
    print(f"  image:   {options.image}\n  GPUs:    {gpu}\n  caching: "
          + {None: "as built (extraction and class targets)", True: "on, every task",
             False: "off, every task"}[options.caching])
    if not has_registry_host(options.image):
        print(f"warning: the image {options.image!r} names no registry host: a cluster pulls "
              "it from Docker Hub, which does not have it. Push it (make push "
              "REGISTRY=registry.example.com/team) and pass --image "
              "registry.example.com/team/IMAGE:TAG", file=sys.stderr)


def _check_no_credentials(cfg: Config) -> None:
    """The config travels inside the compiled YAML: no URI in it may carry credentials."""
    from feda2v.io import tracking

    for key, value in tracking.flatten(cfg).items():
        if "://" in value and tracking.redact(value) != value:
            raise ValueError(f"{key} contains credentials (user:password@); they would be "
                             "written into the pipeline YAML. Put them in the Kubernetes Secret "
                             "instead (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                             "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)")


def compile_pipeline(cfg: Config, kind: str, output: str, options, execution=None) -> float:
    """Compile to `output`; returns the seconds it took."""
    import time

    from kfp import compiler

    import pipelines

    _check_no_credentials(cfg)
    start = time.perf_counter()
    compiler.Compiler().compile(pipelines.build(cfg, kind, options, execution), output)
    return time.perf_counter() - start


def _preflight_cluster(a, cfg: Config) -> None:
    """What can be seen from here is checked (with this machine's AWS_* settings); the rest is
    printed as notes, since the pods may see paths and hosts this machine cannot."""
    _check_no_credentials(cfg)  # first: nothing else matters if the YAML would leak them
    if a.no_preflight:
        return
    from feda2v.orchestration import preflight

    for note in preflight.check(cfg, "cluster"):
        print(f"note: {note}", file=sys.stderr)


def _check_rounds(a, cfg: Config) -> None:
    """Round execution unrolls every round into the YAML: refuse too many before anything is
    checked, compiled or started."""
    error = config_mod.round_execution_error(cfg, a.pipeline or config_mod.pipeline_kind(cfg),
                                             a.execution)
    if error:
        raise config_mod.ConfigError(error)


def cmd_compile(a) -> None:
    import pipelines

    cfg = run_cfg(a)
    _check_rounds(a, cfg)
    options = _cluster_options(a, cfg)
    _preflight_cluster(a, cfg)
    kind = a.pipeline or config_mod.pipeline_kind(cfg)
    execution = a.execution or cfg.execution
    seconds = compile_pipeline(cfg, kind, a.output, options, execution)
    size = os.path.getsize(a.output)
    plan = ("variants" if kind == "ablations" else
            ", ".join(f"{p} x {n} rounds" for p, n in pipelines.phase_plan(cfg, kind)))
    print(f"Wrote {kind} pipeline ({plan}, {config_mod.num_clients(cfg)} clients, {execution} "
          f"execution) to {a.output} ({size / 1024:.0f} KiB, compiled in {seconds:.1f} s)")
    _say_options(options)


def cmd_submit(a) -> None:
    import tempfile

    from feda2v.orchestration import submit

    cfg = run_cfg(a)
    _check_rounds(a, cfg)
    options = _cluster_options(a, cfg)
    _preflight_cluster(a, cfg)
    kind = a.pipeline or config_mod.pipeline_kind(cfg)
    client, auth = submit.connect(a.host, a.namespace or None, a.auth)
    with tempfile.TemporaryDirectory() as tmp:
        package = os.path.join(tmp, "pipeline.yaml")
        compile_pipeline(cfg, kind, package, options, a.execution)
        version = a.version_name or (submit.version_name(package, feda2v_version())
                                if a.pipeline_name else None)
        # Caching is in the YAML, task by task: kfp's run-level override would reach only the
        # root DAG's tasks, and none with --pipeline-name.
        run_id, what = submit.submit(client, package, experiment=a.experiment,
                                     run_name=a.run_name, namespace=a.namespace or None,
                                     caching=None, pipeline_name=a.pipeline_name,
                                     version=version)
    print(f"Submitted {kind} ({what}) to {a.host} as {auth}: run {run_id} "
          f"(experiment {a.experiment!r}" + (f", namespace {a.namespace}" if a.namespace else "")
          + ")")
    _say_options(options)
    if a.watch:
        state = submit.watch(client, run_id, a.timeout, a.poll)
        print(f"Run {run_id} finished: {state}")
        if state != "SUCCEEDED":
            sys.exit(1)


def tracking_uri_text(cfg: Config) -> str:
    from feda2v.io import tracking

    return tracking.redact(tracking.tracking_uri(cfg))


def cmd_run(a) -> None:
    import pipelines
    from components.image import check_reference, default_image
    from feda2v.localrun.run import run_locally

    cfg = run_cfg(a)
    _check_rounds(a, cfg)
    if a.image is not None:
        check_reference(a.image)
    image = (a.image or default_image("cpu")) if a.runner == "docker" else ""
    kind = a.pipeline or config_mod.pipeline_kind(cfg)

    def build(task_cfg: Config, execution: str):
        options = pipelines.ClusterOptions.local()
        if image:
            options.image = image
        return pipelines.build(task_cfg, kind, options, execution)

    sys.exit(run_locally(cfg, kind, build, a.pipeline_root, a.execution,
                         prefork=not a.no_prefork, runner=a.runner, image=image))


def _cluster_args(p) -> None:
    g = p.add_argument_group("cluster", "How the tasks run on Kubernetes")
    g.add_argument("--no-preflight", action="store_true", help="do not check the config's "
                   "data, model, storage and MLflow locations from this machine first")
    g.add_argument("--image", metavar="REF", help="container image of every task, e.g. "
                   "registry.example.com/team/feda2v:0.1.0 (default: $FEDA2V_IMAGE, else what "
                   "`make image` tags from this checkout, [$FEDA2V_REGISTRY/]feda2v:VERSION-"
                   "COMMIT, with -cpu when no task requests a GPU)")
    g.add_argument("--gpus", type=int, help="GPUs per extraction/training task (default: 0 "
                   "when models.device is cpu, else 1; 0 for CPU clusters)")
    g.add_argument("--gpu-resource", default="nvidia.com/gpu", help="the GPUs' resource name "
                   "(accelerator type; default nvidia.com/gpu)")
    g.add_argument("--gpu-node-selector", action="append", metavar="KEY=VALUE",
                   help="node label the GPU tasks must match, e.g. "
                        "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3 (repeatable)")
    g.add_argument("--gpu-toleration", action="append", metavar="KEY[=VALUE]:EFFECT",
                   help="taint the GPU tasks tolerate, e.g. nvidia.com/gpu:NoSchedule "
                        "(repeatable)")
    g.add_argument("--cpu-request", default="1", help="CPU request per task (default 1)")
    g.add_argument("--cpu-limit", default="8", help="CPU limit per task (default 8)")
    g.add_argument("--memory-request", default="4Gi", help="memory request per task (4Gi)")
    g.add_argument("--memory-limit", default="32Gi", help="memory limit per task (32Gi)")
    g.add_argument("--retries", type=int, default=3, help="retries per task, exponential "
                                                          "backoff from 30 s (default 3)")
    g.add_argument("--s3-secret", default="feda2v-s3", help="Secret with AWS_ACCESS_KEY_ID, "
                   "AWS_SECRET_ACCESS_KEY (and optionally MLFLOW_TRACKING_USERNAME/_PASSWORD)")
    g.add_argument("--config-map", default="feda2v-config", help="ConfigMap with "
                   "MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION")
    g.add_argument("--node-selector", action="append", metavar="KEY=VALUE",
                   help="node label every task must match (repeatable)")
    g.add_argument("--toleration", action="append", metavar="KEY[=VALUE]:EFFECT",
                   help="taint every task tolerates (repeatable)")
    g.add_argument("--volume", action="append", metavar="PVC:PATH",
                   help="mount the PersistentVolumeClaim PVC at PATH in every task, for "
                        "datasets or models the config names by a local path (repeatable)")
    g.add_argument("--pipeline-root", metavar="URI", help="where KFP keeps this pipeline's "
                   "artifacts, e.g. s3://feda2v/pipeline-root (default: the cluster's, "
                   "defaultPipelineRoot of the kfp-launcher ConfigMap)")
    g.add_argument("--caching", choices=["on", "off"],
                   help="KFP step caching of every task, in every sub-DAG (default: as built: "
                        "extraction and class targets cached, the rest not)")


def register(add) -> None:
    p = add("run", cmd_run, "Run the pipeline locally under kfp.local (same DAG as on a cluster).")
    config_arg(p)
    p.add_argument("--pipeline", choices=["run1", "run2", "end_to_end", "ablations"],
                   help="pipeline to run (default: the config's `pipeline` key)")
    override_args(p)
    p.add_argument("--pipeline-root", help="where kfp.local keeps task artifacts (default: "
                                           "storage_root/kfp-local)")
    execution_arg(p)
    p.add_argument("--no-prefork", action="store_true",
                   help="start every task as a fresh interpreter (default: tasks are forked "
                        "from one pre-imported process, which saves seconds per task)")
    p.add_argument("--runner", choices=["subprocess", "docker"], default="subprocess",
                   help="subprocess: tasks are local processes (default); docker: every task "
                        "runs in the image, through a Docker API (docker, or podman's "
                        "`podman system service`; DOCKER_HOST selects it)")
    p.add_argument("--image", metavar="REF", help="the image of --runner docker (default: "
                   "$FEDA2V_IMAGE, else what `make image FLAVOUR=cpu` tags from this "
                   "checkout)")

    p = add("compile", cmd_compile, "Compile the pipeline to a KFP YAML for the UI or "
                                    "`kfp run create`.")
    config_arg(p)
    p.add_argument("--output", required=True, help="pipeline YAML to write")
    p.add_argument("--pipeline", choices=["run1", "run2", "end_to_end", "ablations"],
                   help="pipeline to compile (default: the config's `pipeline` key)")
    override_args(p)
    execution_arg(p)
    _cluster_args(p)

    p = add("submit", cmd_submit, "Compile and submit the pipeline to a Kubeflow Pipelines "
                                  "endpoint (kfp.Client).")
    config_arg(p)
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. "
                                                 "http://localhost:8080 after a port-forward")
    p.add_argument("--experiment", default="feda2v", help="KFP experiment (default: feda2v)")
    p.add_argument("--run-name", help="run name (default: chosen by KFP)")
    p.add_argument("--namespace", help="Kubeflow profile namespace (multi-user clusters)")
    p.add_argument("--pipeline", choices=["run1", "run2", "end_to_end", "ablations"],
                   help="pipeline to submit (default: the config's `pipeline` key)")
    override_args(p)
    execution_arg(p)
    p.add_argument("--pipeline-name", help="upload the package as a new version of this "
                   "pipeline (created on first use) and run that version; default: a one-off "
                   "package run")
    p.add_argument("--version-name", help="the version's name (default: feda2v version, UTC "
                                          "time, the YAML's sha256 prefix)")
    p.add_argument("--auth", choices=["auto", "token", "cookie", "service-account", "none"],
                   default="auto", help="how to authenticate to a multi-user Kubeflow, from "
                   "the environment only: token = the bearer token in $FEDA2V_KFP_TOKEN; "
                   "cookie = the session cookie in $FEDA2V_KFP_COOKIE (NAME=VALUE); "
                   "service-account = the projected token of a pod "
                   "($KF_PIPELINES_SA_TOKEN_PATH or /var/run/secrets/kubeflow/pipelines/"
                   "token); auto (default) = the first of those that is set, else none")
    p.add_argument("--watch", action="store_true", help="follow the run, printing each task's "
                   "state changes, and exit non-zero unless it succeeds")
    p.add_argument("--poll", type=float, default=10.0, help="seconds between --watch polls "
                                                           "(default 10)")
    p.add_argument("--timeout", type=int, default=24 * 3600, help="seconds --watch waits "
                                                                   "(default: 1 day)")
    _cluster_args(p)
