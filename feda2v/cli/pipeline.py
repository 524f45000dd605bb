"""run (kfp.local), compile (a KFP YAML) and submit (a Kubeflow Pipelines endpoint)."""

from __future__ import annotations

import os
import sys

from feda2v.cli.common import _config_arg, _execution_arg, _override_args, _run_cfg, _version
from feda2v.io import config as config_mod
from feda2v.io.config import Config


def _cluster_options(a):
    from pipelines import ClusterOptions

    def pair(text: str, flag: str) -> tuple[str, str]:
        if "=" not in text:
            raise ValueError(f"{flag} expects KEY=VALUE, got {text!r}")
        return tuple(text.split("=", 1))

    tolerations = []
    for text in a.toleration or []:
        spec, _, effect = text.rpartition(":")
        if not spec or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise ValueError(f"--toleration expects KEY[=VALUE]:EFFECT with EFFECT one of "
                             f"NoSchedule, PreferNoSchedule, NoExecute; got {text!r}")
        key, _, value = spec.partition("=")
        tolerations.append({"key": key, "operator": "Equal" if value else "Exists",
                            "value": value or None, "effect": effect})
    return ClusterOptions(
        image=a.image or "", gpus=a.gpus, gpu_resource=a.gpu_resource,
        cpu_request=a.cpu_request, cpu_limit=a.cpu_limit, memory_request=a.memory_request,
        memory_limit=a.memory_limit, retries=a.retries, s3_secret=a.s3_secret,
        config_map=a.config_map,
        node_selector=dict(pair(t, "--node-selector") for t in a.node_selector or []),
        tolerations=tolerations)


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


def cmd_compile(a) -> None:
    import pipelines

    cfg = _run_cfg(a)
    _preflight_cluster(a, cfg)
    kind = a.pipeline or config_mod.pipeline_kind(cfg)
    execution = a.execution or cfg.execution
    seconds = compile_pipeline(cfg, kind, a.output, _cluster_options(a), execution)
    size = os.path.getsize(a.output)
    plan = ("variants" if kind == "ablations" else
            ", ".join(f"{p} x {n} rounds" for p, n in pipelines.phase_plan(cfg, kind)))
    print(f"Wrote {kind} pipeline ({plan}, {config_mod.num_clients(cfg)} clients, {execution} "
          f"execution) to {a.output} ({size / 1024:.0f} KiB, compiled in {seconds:.1f} s)")


def cmd_submit(a) -> None:
    import tempfile

    import kfp

    from feda2v.orchestration import submit

    cfg = _run_cfg(a)
    _preflight_cluster(a, cfg)
    kind = a.pipeline or config_mod.pipeline_kind(cfg)
    caching = {"on": True, "off": False}.get(a.caching)
    with tempfile.TemporaryDirectory() as tmp:
        package = os.path.join(tmp, "pipeline.yaml")
        compile_pipeline(cfg, kind, package, _cluster_options(a), a.execution)
        try:
            client = kfp.Client(host=a.host, namespace=a.namespace or None)
        except Exception as e:  # noqa: BLE001 - kfp raises urllib3/ApiException types
            raise ValueError(f"cannot reach Kubeflow Pipelines at {a.host}: {e}") from None
        version = a.version_name or (submit.version_name(package, _version())
                                if a.pipeline_name else None)
        run_id, what = submit.submit(client, package, experiment=a.experiment,
                                     run_name=a.run_name, namespace=a.namespace or None,
                                     caching=caching, pipeline_name=a.pipeline_name,
                                     version=version)
    print(f"Submitted {kind} ({what}) to {a.host}: run {run_id} (experiment {a.experiment!r}, "
          f"caching {a.caching or 'as compiled'})")
    if a.watch:
        state = submit.watch(client, run_id, a.timeout, a.poll)
        print(f"Run {run_id} finished: {state}")
        if state != "SUCCEEDED":
            sys.exit(1)


def tracking_uri_text(cfg: Config) -> str:
    from feda2v.io import tracking

    return tracking.redact(tracking.tracking_uri(cfg))


def cmd_run(a) -> None:
    from feda2v.orchestration.local_run import run_locally

    cfg = _run_cfg(a)
    sys.exit(run_locally(cfg, a.pipeline or config_mod.pipeline_kind(cfg), a.pipeline_root,
                         a.execution, prefork=not a.no_prefork, runner=a.runner,
                         image=a.image or ""))


def _cluster_args(p) -> None:
    g = p.add_argument_group("cluster", "How the tasks run on Kubernetes")
    g.add_argument("--no-preflight", action="store_true", help="do not check the config's "
                   "data, model, storage and MLflow locations from this machine first")
    g.add_argument("--image", help="container image of every task (default: $FEDA2V_IMAGE or "
                                   "feda2v-python:0.1.0)")
    g.add_argument("--gpus", type=int, default=1, help="GPUs per extraction/training task "
                                                       "(0 for CPU clusters; default 1)")
    g.add_argument("--gpu-resource", default="nvidia.com/gpu", help="GPU resource name")
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
                   help="taint every task tolerates, e.g. nvidia.com/gpu:NoSchedule (repeatable)")


def register(add) -> None:
    p = add("run", cmd_run, "Run the pipeline locally under kfp.local (same DAG as on a cluster).")
    _config_arg(p)
    p.add_argument("--pipeline", choices=["run1", "run2", "end_to_end", "ablations"],
                   help="pipeline to run (default: the config's `pipeline` key)")
    _override_args(p)
    p.add_argument("--pipeline-root", help="where kfp.local keeps task artifacts (default: "
                                           "storage_root/kfp-local)")
    _execution_arg(p)
    p.add_argument("--no-prefork", action="store_true",
                   help="start every task as a fresh interpreter (default: tasks are forked "
                        "from one pre-imported process, which saves seconds per task)")
    p.add_argument("--runner", choices=["subprocess", "docker"], default="subprocess",
                   help="subprocess: tasks are local processes (default); docker: every task "
                        "runs in the image, through a Docker API (docker, or podman's "
                        "`podman system service`; DOCKER_HOST selects it)")
    p.add_argument("--image", help="the image of --runner docker (default: $FEDA2V_IMAGE or "
                                   "feda2v-python:0.1.0)")

    p = add("compile", cmd_compile, "Compile the pipeline to a KFP YAML for the UI or "
                                    "`kfp run create`.")
    _config_arg(p)
    p.add_argument("--output", required=True, help="pipeline YAML to write")
    p.add_argument("--pipeline", choices=["run1", "run2", "end_to_end", "ablations"],
                   help="pipeline to compile (default: the config's `pipeline` key)")
    _override_args(p)
    _execution_arg(p)
    _cluster_args(p)

    p = add("submit", cmd_submit, "Compile and submit the pipeline to a Kubeflow Pipelines "
                                  "endpoint (kfp.Client).")
    _config_arg(p)
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. "
                                                 "http://localhost:8080 after a port-forward")
    p.add_argument("--experiment", default="feda2v", help="KFP experiment (default: feda2v)")
    p.add_argument("--run-name", help="run name (default: chosen by KFP)")
    p.add_argument("--namespace", help="Kubeflow profile namespace (multi-user clusters)")
    p.add_argument("--pipeline", choices=["run1", "run2", "end_to_end", "ablations"],
                   help="pipeline to submit (default: the config's `pipeline` key)")
    _override_args(p)
    _execution_arg(p)
    p.add_argument("--pipeline-name", help="upload the package as a new version of this "
                   "pipeline (created on first use) and run that version; default: a one-off "
                   "package run")
    p.add_argument("--version-name", help="the version's name (default: feda2v version, UTC "
                                          "time, the YAML's sha256 prefix)")
    p.add_argument("--caching", choices=["on", "off"],
                   help="KFP step caching for this run (default: as compiled, i.e. on)")
    p.add_argument("--watch", action="store_true", help="follow the run, printing each task's "
                   "state changes, and exit non-zero unless it succeeds")
    p.add_argument("--poll", type=float, default=10.0, help="seconds between --watch polls "
                                                           "(default 10)")
    p.add_argument("--timeout", type=int, default=24 * 3600, help="seconds --watch waits "
                                                                   "(default: 1 day)")
    _cluster_args(p)
