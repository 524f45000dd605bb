"""`feda2v` command: every pipeline stage as a sub-command, plus run / compile / data / models.

Stage sub-commands default their URIs to the storage-root layout the pipelines use, so
`feda2v extract --config F --client 0` by hand writes where the pipeline would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from feda2v.data.download import ESC50_URL
from feda2v.io import config as config_mod


def _cfg(path: str) -> dict:
    return config_mod.load(path)


def _stage_cfg(path: str) -> dict:
    """Stage commands resolve relative local paths as `feda2v run` does, so that a stage run by
    hand reads and writes exactly where the pipeline's task would."""
    from feda2v.orchestration.local_run import resolve_local_paths

    return resolve_local_paths(config_mod.load(path))


def _json(cfg: dict) -> str:
    return json.dumps(cfg, sort_keys=True)


def _targets_uri(cfg: dict) -> str:
    from feda2v.io import storage

    return storage.join(cfg["storage_root"], "class_targets.safetensors")


def _data_uris(cfg: dict, given: list[str] | None) -> list[str]:
    from feda2v.orchestration.stages import embeddings_uri

    return given or [embeddings_uri(cfg, i) for i in range(config_mod.num_clients(cfg))]


def _print(result) -> None:
    print(json.dumps(result, indent=2) if isinstance(result, dict) else result)


# --- sub-commands ------------------------------------------------------------------------------

def cmd_data_demo(a) -> None:
    from feda2v.data.demo_data import write_demo_dataset

    write_demo_dataset(a.out, clips_per_class=a.clips_per_class, folds=a.folds, seconds=a.seconds,
                       sample_rate=a.sample_rate, seed=a.seed)


def cmd_data_esc50(a) -> None:
    from feda2v.data.download import download_esc50

    download_esc50(a.out, a.url, a.sha256, verify=not a.no_verify)


def cmd_data_digits(a) -> None:
    from feda2v.data.package_data import write_digits

    write_digits(a.out, folds=a.folds, seed=a.seed)


def cmd_models_tiny(a) -> None:
    from feda2v.encoders.embed import write_tiny_models

    _print(write_tiny_models(a.out, seed=a.seed))


def cmd_config_check(a) -> None:
    cfg = _cfg(a.config)
    print(json.dumps(cfg, indent=2, sort_keys=True))
    print(f"OK: {a.config} is valid (pipeline: {config_mod.pipeline_kind(cfg)})", file=sys.stderr)


def cmd_config_keys(a) -> None:
    print(config_mod.describe_keys())


def cmd_class_targets(a) -> None:
    from feda2v.orchestration import stages

    cfg = _stage_cfg(a.config)
    _print(stages.class_targets(_json(cfg), a.out or _targets_uri(cfg)))


def cmd_extract(a) -> None:
    from feda2v.orchestration import stages

    _print(stages.extract(_json(_stage_cfg(a.config)), a.client, a.out or ""))


def cmd_init_adapter(a) -> None:
    from feda2v.orchestration import stages

    cfg = _stage_cfg(a.config)
    _print(stages.init_adapter(_json(cfg), _data_uris(cfg, a.data), a.targets or _targets_uri(cfg),
                               a.out))


def _run_key(a) -> str:
    return a.run_key or "manual"


def cmd_client_round(a) -> None:
    from feda2v.orchestration import stages

    cfg = _stage_cfg(a.config)
    _print(stages.client_round(_json(cfg), a.client, a.round, a.phase, a.global_adapter,
                               a.targets or _targets_uri(cfg), a.out, a.run_key, a.data or ""))


def cmd_server_round(a) -> None:
    from feda2v.orchestration import stages

    cfg = _stage_cfg(a.config)
    _print(stages.server_round(_json(cfg), a.round, a.phase, a.updates, a.previous,
                               a.targets or _targets_uri(cfg), a.out, a.mlflow_run_id,
                               step=a.step or a.round))


def cmd_phase(a) -> None:
    from feda2v.orchestration import stages

    cfg = _stage_cfg(a.config)
    _print(stages.federated_phase(_json(cfg), a.phase, _run_key(a), a.mlflow_run_id,
                                  a.out or ""))


def cmd_train_generator(a) -> None:
    from feda2v.orchestration import stages

    _print(stages.train_generator(_json(_stage_cfg(a.config)), a.client, _run_key(a)))


def cmd_generate(a) -> None:
    from feda2v.orchestration import stages

    _print(stages.generate(_json(_stage_cfg(a.config)), a.client, _run_key(a)))


def cmd_evaluate(a) -> None:
    from feda2v.orchestration import stages

    cfg = _stage_cfg(a.config)
    _print(stages.evaluate(_json(cfg), a.adapter, a.targets or _targets_uri(cfg), a.data))


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


def _check_no_credentials(cfg: dict) -> None:
    """The config travels inside the compiled YAML: no URI in it may carry credentials."""
    from feda2v.io import tracking

    for key, value in tracking.flatten(cfg).items():
        if "://" in value and tracking.redact(value) != value:
            raise ValueError(f"{key} contains credentials (user:password@); they would be "
                             "written into the pipeline YAML. Put them in the Kubernetes Secret "
                             "instead (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                             "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)")


def compile_pipeline(cfg: dict, kind: str, output: str, options, execution=None) -> float:
    """Compile to `output`; returns the seconds it took."""
    import time

    from kfp import compiler

    import pipelines

    _check_no_credentials(cfg)
    start = time.perf_counter()
    compiler.Compiler().compile(pipelines.build(cfg, kind, options, execution), output)
    return time.perf_counter() - start


def _run_cfg(a) -> dict:
    """The config file with the command line's --param and --register-model applied."""
    cfg = _cfg(a.config)
    assignments = list(a.param or [])
    if getattr(a, "register_model", None):
        assignments.append(f"mlflow_register_model={a.register_model}")
    return config_mod.override(cfg, assignments) if assignments else cfg


def _preflight_cluster(a, cfg: dict) -> None:
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
    execution = a.execution or cfg["execution"]
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


def cmd_experiment(a) -> None:
    from feda2v.evaluation.experiment import VARIANTS, parse_partitions, run_experiment, run_grid
    from feda2v.orchestration.local_run import resolve_local_paths

    cfg = resolve_local_paths(_run_cfg(a))
    variants = a.variants.split(",") if a.variants else list(VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; expected some of {list(VARIANTS)}")
    if a.seeds or a.partitions:
        try:
            seeds = [int(s) for s in (a.seeds or str(cfg["seed"])).split(",")]
        except ValueError:
            raise ValueError(f"--seeds expects comma-separated integers, got {a.seeds!r}") from None
        partitions = parse_partitions(a.partitions or "classes")
        grid = run_grid(cfg, variants, seeds, partitions, a.name)
        print(f"\nAblations over seeds {seeds} and partitions {partitions}:\n")
        print(grid["table"])
        print()
        print("\n".join(grid["lines"]))
        print(f"\n  results:            {grid['dir']}/grid.json")
        print(f"  MLflow parent run:  {grid['parent_run_id']} ({tracking_uri_text(cfg)}, "
              f"experiment '{cfg['experiment_name']}')")
        return
    epsilons = None
    if a.epsilons:
        try:
            epsilons = [float(e) for e in a.epsilons.split(",")]
        except ValueError:
            raise ValueError(f"--epsilons expects comma-separated numbers or inf, got "
                             f"{a.epsilons!r}") from None
        if any(e <= 0 for e in epsilons):
            raise ValueError(f"--epsilons must be > 0 (inf = no DP), got {a.epsilons!r}")
    result = run_experiment(cfg, variants, a.name, epsilons=epsilons)
    print(f"\nAblations on the same data and seed ({cfg['seed']}):\n")
    print(result["table"])
    print(f"\n  results:            {result['dir']}/results.json")
    if result["html"]:
        print(f"  HTML report:        {result['html']}")
    print(f"  MLflow parent run:  {result['parent_run_id']} "
          f"({tracking_uri_text(cfg)}, experiment '{cfg['experiment_name']}')")


def tracking_uri_text(cfg: dict) -> str:
    from feda2v.io import tracking

    return tracking.redact(tracking.tracking_uri(cfg))


def cmd_run(a) -> None:
    from feda2v.orchestration.local_run import run_locally

    cfg = _run_cfg(a)
    sys.exit(run_locally(cfg, a.pipeline or config_mod.pipeline_kind(cfg), a.pipeline_root,
                         a.execution, prefork=not a.no_prefork, runner=a.runner,
                         image=a.image or ""))


# --- parser ------------------------------------------------------------------------------------

def _override_args(p, register: bool = True) -> None:
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="override a config key for this command, repeatable; a section's key "
                        "dotted (feda2v.generator_type=gan); VALUE is JSON when it parses "
                        "(5, true, [1,2]), else a string. Keys the pipeline has as run-time "
                        "parameters (global_rounds, ...) become their defaults")
    if register:
        p.add_argument("--register-model", metavar="NAME",
                       help="register the final global adapter in the MLflow model registry "
                            "under NAME (same as --param mlflow_register_model=NAME)")


def _execution_arg(p) -> None:
    p.add_argument("--execution", choices=["phase", "round"],
                   help="task granularity (default: the config's `execution` key): phase = one "
                        "task per federated phase, rounds in-process; round = one task per "
                        "client per round (silo mode)")


def _config_arg(p) -> None:
    p.add_argument("--config", required=True, help="run config (JSON, seed format)")


def _uris_args(p, data=True, targets=True) -> None:
    if data:
        p.add_argument("--data", nargs="+", metavar="URI",
                       help="client embeddings URIs (default: each client's file under "
                            "storage_root/embeddings)")
    if targets:
        p.add_argument("--targets", help="class targets URI (default: "
                                         "storage_root/class_targets.safetensors)")


def _run_key_arg(p) -> None:
    p.add_argument("--run-key", default="", help="run folder under storage_root/runs that holds "
                   "this run's round state (default: manual)")


def _round_args(p, mlflow=True) -> None:
    p.add_argument("--round", type=int, required=True, help="round number within its phase (1-based)")
    p.add_argument("--step", type=int, help="MLflow step (default: --round)")
    if mlflow:
        p.add_argument("--mlflow-run-id", default="", help="log metrics into this MLflow run "
                                                            "(default: do not log)")


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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("feda2v")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feda2v", epilog="--debug (anywhere on the line) shows the traceback of an error.",
        description="FedA2V: federated audio-to-visual learning with client-side generators, "
                    "as Kubeflow Pipelines. `feda2v run` executes a whole pipeline locally; "
                    "the stage sub-commands run one step, as a pipeline task would.")
    parser.add_argument("--version", action="version", version=f"feda2v {_version()}")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_true",
                      help="debug lines too (tasks of `feda2v run` inherit it)")
    loud.add_argument("-q", "--quiet", action="store_true",
                      help="warnings and errors only (tasks of `feda2v run` inherit it)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, help_):
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

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

    p = add("experiment", cmd_experiment,
            "Run the ablations on the same data and seed (FedAvg only, Run 1 -> Run 2 with "
            "synthetic samples, synthetic-only server training, centralized upper bound) and "
            "print one table; also writes an HTML report and logs everything to MLflow.")
    _config_arg(p)
    p.add_argument("--variants", help="comma-separated subset of fedavg,synthetic,"
                                      "synthetic_only,centralized (default: all)")
    p.add_argument("--name", default="experiment", help="folder under storage_root/experiments "
                                                        "and MLflow parent run name")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2: run every variant for "
                                   "each and print mean ± sd (default: the config's seed)")
    p.add_argument("--partitions", help="comma-separated partitions of the config's classes: "
                   "classes, iid, dirichlet:ALPHA, pathological:K (default: classes)")
    p.add_argument("--epsilons", help="comma-separated ε, e.g. 1,4,8,inf: the synthetic variant "
                   "again with DP-SGD generators at each finite ε; the report plots accuracy "
                   "against ε (inf = without DP)")
    _override_args(p, register=False)

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

    data = add("data", None, "Datasets.").add_subparsers(dest="what", required=True, metavar="WHAT")
    p = data.add_parser("demo", help="Write the procedural demo set in the ESC-50 layout.",
                        description="Write a procedural audio dataset in the ESC-50 layout "
                                    "(meta/esc50.csv + audio/*.wav), 15 acoustically distinct "
                                    "classes of the reference split, deterministic for a seed.")
    p.set_defaults(func=cmd_data_demo)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--clips-per-class", type=int, default=40, help="clips per class (default 40, "
                                                                   "as ESC-50)")
    p.add_argument("--folds", type=int, default=5, help="folds (default 5)")
    p.add_argument("--seconds", type=float, default=1.0, help="clip length (default 1.0)")
    p.add_argument("--sample-rate", type=int, default=16000, help="Hz (default 16000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    p = data.add_parser("esc50", help="Download and unpack the official ESC-50 archive.",
                        description="Download the ESC-50 archive and unpack meta/esc50.csv and "
                                    "audio/ to OUT (a path or fsspec URL such as s3://bucket/esc50). "
                                    "A folder that already holds meta/esc50.csv is left alone.")
    p.set_defaults(func=cmd_data_esc50)
    p.add_argument("--out", required=True, help="destination folder or URL")
    p.add_argument("--url", default=ESC50_URL, help="archive URL (default: the official one; "
                                                    "point it at a mirror offline)")
    p.add_argument("--sha256", default="", help="expected sha256 of the archive (default: it "
                   "must be the known ESC-50 release, checked by its published MD5)")
    p.add_argument("--no-verify", action="store_true", help="unpack an archive without any "
                   "checksum (a warning names its sha256)")

    p = data.add_parser("digits", help="Write scikit-learn's handwritten digits as an "
                                       "embeddings file (a real dataset, no download).",
                        description="Write the 1,797 8x8 digit images that ship with "
                                    "scikit-learn as a precomputed-embeddings file (8 tokens of "
                                    "8 features, 5 stratified folds, seeded random class "
                                    "targets), for data.format = embeddings.")
    p.set_defaults(func=cmd_data_digits)
    p.add_argument("--out", required=True, help="output .safetensors path or URL")
    p.add_argument("--folds", type=int, default=5, help="folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds and targets (default 0)")

    models = add("models", None, "Models.").add_subparsers(dest="what", required=True, metavar="WHAT")
    p = models.add_parser("tiny", help="Save tiny random-initialised AST, CLAP and CLIP models.",
                          description="Save small random-initialised models of the real "
                                      "architectures for offline runs: AST in OUT/audio, CLAP "
                                      "audio tower in OUT/clap, CLIP text + offline tokenizer in "
                                      "OUT/text, CLIP vision in OUT/vision.")
    p.set_defaults(func=cmd_models_tiny)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    cfgp = add("config", None, "Inspect configs.").add_subparsers(dest="what", required=True,
                                                                  metavar="WHAT")
    p = cfgp.add_parser("check", help="Validate a config and print it with defaults filled in.")
    p.set_defaults(func=cmd_config_check)
    _config_arg(p)
    p = cfgp.add_parser("keys", help="List every config key with its default and meaning.")
    p.set_defaults(func=cmd_config_keys)

    p = add("class-targets", cmd_class_targets, "Stage: CLIP text embedding of every class prompt.")
    _config_arg(p)
    p.add_argument("--out", help="output URI (default: storage_root/class_targets.safetensors)")

    p = add("extract", cmd_extract, "Stage: embed one client's clips to [N, tokens, D] safetensors.")
    _config_arg(p)
    p.add_argument("--client", type=int, required=True, help="client id (0-based)")
    p.add_argument("--out", help="output URI (default: the client's file under "
                                              "storage_root/embeddings/)")

    p = add("init-adapter", cmd_init_adapter, "Stage: the server's initial global adapter.")
    _config_arg(p)
    _uris_args(p)
    p.add_argument("--out", required=True, help="adapter output URI (safetensors)")

    p = add("phase", cmd_phase,
            "Stage: every round of one federated phase for every client, in this process "
            "(what a phase-execution task runs); resumes after the last finished round.")
    _config_arg(p)
    p.add_argument("--phase", choices=["fedavg", "run1", "run2", "sample"], required=True,
                   help="fedavg: adapters only; run1: + class conditions for the generators; "
                        "run2: + synthetic samples (run `generate` first); sample: synthetic only")
    _run_key_arg(p)
    p.add_argument("--mlflow-run-id", default="", help="log into this MLflow run (default: the "
                                                       "run tagged with the run key, or a new one)")
    p.add_argument("--out", help="final global adapter output URI (safetensors)")

    for name, func, text in (
            ("train-generator", cmd_train_generator,
             ("Stage: one client's generator over every Run 1 round (after `phase --phase run1`); "
             "checkpoints under the seed's names.")),
            ("generate", cmd_generate,
             ("Stage: one client's synthetic samples for every Run 2 round, from one read of its "
             "generator checkpoint."))):
        p = add(name, func, text)
        _config_arg(p)
        p.add_argument("--client", type=int, required=True, help="client id (0-based)")
        _run_key_arg(p)

    p = add("client-round", cmd_client_round,
            "Stage: one client's round (adapter on real data; run1 also writes the class "
            "conditions its generator trains on, run2 adds the round's synthetic samples).")
    _config_arg(p)
    p.add_argument("--client", type=int, required=True, help="client id (0-based)")
    p.add_argument("--round", type=int, required=True, help="round number within its phase")
    p.add_argument("--phase", choices=["fedavg", "run1", "run2", "sample"], required=True,
                   help="fedavg: adapter only; run1: + class conditions; run2: + synthetic "
                        "samples; sample: synthetic samples only")
    p.add_argument("--global-adapter", required=True, help="global adapter URI (safetensors)")
    p.add_argument("--data", metavar="URI", help="this client's embeddings (default: its file "
                                                 "under storage_root/embeddings)")
    _uris_args(p, data=False)
    p.add_argument("--run-key", default="", help="run folder under storage_root/runs (run1 "
                   "writes conditions there, run2 reads synthetic samples from it)")
    p.add_argument("--out", required=True, help="client update output URI (safetensors)")

    p = add("server-round", cmd_server_round,
            "Stage: the server's round: weighted FedAvg of the client updates, global training "
            "on their pooled synthetic samples (run2 with global_model_train), evaluation.")
    _config_arg(p)
    _round_args(p)
    p.add_argument("--phase", choices=["fedavg", "run1", "run2", "sample"], required=True,
                   help="the round's phase")
    p.add_argument("--updates", nargs="+", required=True, metavar="URI", help="client update URIs")
    p.add_argument("--previous", required=True, help="previous global adapter URI")
    _uris_args(p, data=False)
    p.add_argument("--out", required=True, help="new global adapter output URI")

    p = add("evaluate", cmd_evaluate, "Stage: zero-shot accuracy of an adapter on every client's "
                                      "test clips, weighted by test size.")
    _config_arg(p)
    p.add_argument("--adapter", required=True, help="adapter URI to evaluate")
    _uris_args(p)
    return parser


PASSTHROUGH_ENV = "FEDA2V_PASSTHROUGH"


def _pass_through(argv: list[str], commands) -> None:
    """In the image (FEDA2V_PASSTHROUGH=1) the entrypoint is `feda2v`, yet KFP, kfp.local's
    DockerRunner and users also hand it whole commands (`sh -c …`, `python3 -m …`): a first word
    that is no sub-command but a program on PATH is run as it is."""
    import shutil

    if (os.environ.get(PASSTHROUGH_ENV) == "1" and argv and argv[0] not in commands
            and not argv[0].startswith("-") and shutil.which(argv[0])):
        sys.stdout.flush()
        os.execvp(argv[0], argv)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    commands = next(a for a in parser._actions if a.dest == "command").choices
    _pass_through(argv, commands)
    debug = "--debug" in argv
    args = parser.parse_args([a for a in argv if a != "--debug"])
    if args.verbose or args.quiet:
        from feda2v.io.log import LEVEL_ENV, get_logger

        os.environ[LEVEL_ENV] = "DEBUG" if args.verbose else "WARNING"
        get_logger().setLevel(os.environ[LEVEL_ENV])
    try:
        args.func(args)
    except (config_mod.ConfigError, FileNotFoundError, ValueError, OSError) as e:
        if debug:
            raise
        from feda2v.io.tracking import redact

        print(f"feda2v {args.command}: error: {redact(str(e))} (--debug shows the traceback)",
              file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
