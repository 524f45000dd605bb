"""What every command module shares: reading the config, printing results, the common
arguments."""

from __future__ import annotations

import json

from feda2v.io import config as config_mod
from feda2v.io.config import Config


def read_cfg(path: str) -> Config:
    return config_mod.load(path)


def stage_cfg(path: str) -> Config:
    """Stage commands resolve relative local paths as `feda2v run` does, so that a stage run by
    hand reads and writes exactly where the pipeline's task would."""
    from feda2v.localrun.run import resolve_local_paths

    return resolve_local_paths(config_mod.load(path))


def default_targets_uri(cfg: Config) -> str:
    from feda2v.io import storage

    return storage.join(cfg.storage_root, "class_targets.safetensors")


def data_uris(cfg: Config, given: list[str] | None) -> list[str]:
    from feda2v.orchestration.stages import embeddings_uri

    return given or [embeddings_uri(cfg, i) for i in range(config_mod.num_clients(cfg))]


def show(result) -> None:
    print(json.dumps(result, indent=2) if isinstance(result, dict) else result)


def run_cfg(a) -> Config:
    """The config file with the command line's --param and --register-model applied."""
    cfg = read_cfg(a.config)
    assignments = list(a.param or [])
    if getattr(a, "register_model", None):
        assignments.append(f"mlflow_register_model={a.register_model}")
    return config_mod.override(cfg, assignments) if assignments else cfg


def override_args(p, register: bool = True) -> None:
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="override a config key for this command, repeatable; a section's key "
                        "dotted (feda2v.generator_type=gan); VALUE is JSON when it parses "
                        "(5, true, [1,2]), else a string. Keys the pipeline has as run-time "
                        "parameters (global_rounds, ...) become their defaults")
    if register:
        p.add_argument("--register-model", metavar="NAME",
                       help="register the final global adapter in the MLflow model registry "
                            "under NAME (same as --param mlflow_register_model=NAME)")


def execution_arg(p) -> None:
    p.add_argument("--execution", choices=["phase", "round"],
                   help="task granularity (default: the config's `execution` key): phase = one "
                        "task per federated phase, rounds in-process; round = one task per "
                        "client per round (silo mode)")


def config_arg(p) -> None:
    p.add_argument("--config", required=True, help="run config (JSON, seed format)")


def uris_args(p, data=True, targets=True) -> None:
    if data:
        p.add_argument("--data", nargs="+", metavar="URI",
                       help="client embeddings URIs (default: each client's file under "
                            "storage_root/embeddings)")
    if targets:
        p.add_argument("--targets", help="class targets URI (default: "
                                         "storage_root/class_targets.safetensors)")


def run_key_arg(p) -> None:
    p.add_argument("--run-key", default="", help="run folder under storage_root/runs that holds "
                   "this run's round state (default: manual)")


def round_args(p, mlflow=True) -> None:
    p.add_argument("--round", type=int, required=True, help="round number within its phase (1-based)")
    p.add_argument("--step", type=int, help="MLflow step (default: --round)")
    if mlflow:
        p.add_argument("--mlflow-run-id", default="", help="log metrics into this MLflow run "
                                                            "(default: do not log)")


def feda2v_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("feda2v")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"
