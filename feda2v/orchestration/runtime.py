"""What a pipeline task decides at run time: the round plan, run-time parameter overrides,
structural keys that must match the compiled DAG, and torch threads for local runs."""

from __future__ import annotations

import json
import os
import threading
import time

from feda2v.io import config as config_mod
from feda2v.io.config import Config

KINDS = ("run1", "run2", "end_to_end")
# Keys that decide which tasks exist: fixed once compiled, in both execution modes.
SHAPE_KEYS = ("pipeline", "execution", "feda2v.use_generator", "feda2v.run2_start")
# Keys that only set counts: run-time parameters in phase mode, compiled into round mode.
COUNT_KEYS = ("global_rounds", "feda2v.generator_training_rounds", "clients")
LOCAL_CORES_ENV = "FEDA2V_LOCAL_CORES"      # set by `feda2v run`: cores of this machine
LOCAL_PARALLEL_ENV = "FEDA2V_LOCAL_PARALLEL"  # tasks kfp.local runs at once (its ParallelFor cap)
PARENT_ENV = "FEDA2V_PARENT_PID"            # set by `feda2v run`: tasks exit when it is gone
# The keys users change most, typed fields of the run form of every pipeline kind and execution
# (besides the round counts and client_ids where they are run-time): run-time parameter name ->
# config key.
SETTINGS = {"seed": "seed", "storage_root": "storage_root", "dataset_uri": "data.dataset_uri",
            "batch_size": "batch_size",
            "local_epochs": "local_epochs", "learning_rate": "learning_rate",
            "generator_training_epochs": "feda2v.generator_training_epochs",
            "generator_learning_rate": "feda2v.generator_learning_rate",
            "synthetic_samples_per_class": "feda2v.synthetic_samples_per_class",
            "generator_type": "feda2v.generator_type",
            "strategy": "strategy", "proximal_mu": "proximal_mu",
            "server_learning_rate": "server_learning_rate"}
# The settings on every run form; the others only where a phase of the pipeline reads them.
COMMON_SETTINGS = ("seed", "storage_root", "dataset_uri", "batch_size")
# client_fraction and the optimizer's other keys stay in config_json: each run-form field is
# handed to every task, and a full-size round-execution YAML has room for few more.
STRATEGY_SETTINGS = ("strategy", "proximal_mu", "server_learning_rate")
PHASE_SETTINGS = {
    "fedavg": COMMON_SETTINGS + ("local_epochs", "learning_rate") + STRATEGY_SETTINGS,
    "run1": COMMON_SETTINGS + ("local_epochs", "learning_rate", "generator_type",
                               "generator_training_epochs", "generator_learning_rate")
    + STRATEGY_SETTINGS,
    "run2": COMMON_SETTINGS + ("local_epochs", "learning_rate", "generator_type",
                               "synthetic_samples_per_class") + STRATEGY_SETTINGS,
}


def form_settings(phases) -> list[str]:
    """The run form's settings (SETTINGS names) of a pipeline running `phases`, in form order."""
    return list(dict.fromkeys(n for p in phases for n in PHASE_SETTINGS[p]))


def plan(cfg: Config, kind: str | None = None) -> list[tuple[str, int]]:
    """[(phase, rounds), ...] of a pipeline kind (default: the config's). Without generators
    every round is fedavg."""
    kind = kind or config_mod.pipeline_kind(cfg)
    if kind not in KINDS:
        raise ValueError(f"no round plan for pipeline {kind!r}; expected one of {KINDS}")
    if not cfg.feda2v.use_generator:
        return [("fedavg", cfg.global_rounds)]
    if kind == "end_to_end":
        return [("run1", cfg.feda2v.generator_training_rounds), ("run2", cfg.global_rounds)]
    return [(kind, cfg.global_rounds)]


def config_value(cfg: Config, key: str):
    """The value of a dotted config key ('clients' and 'pipeline' as the DAG sees them)."""
    if key == "pipeline":
        return config_mod.pipeline_kind(cfg)
    if key == "clients":
        return config_mod.num_clients(cfg)
    section, _, name = key.rpartition(".")
    return getattr(getattr(cfg, section) if section else cfg, name)


def _set(cfg: Config, key: str, value) -> Config:
    section, _, name = key.rpartition(".")
    return cfg.replace(**({section: {name: value}} if section else {name: value}))


def compiled_values(cfg: Config) -> str:
    """The structural values a pipeline is compiled with (a constant input of its tasks)."""
    keys = SHAPE_KEYS + COUNT_KEYS + tuple(SETTINGS.values())
    return json.dumps({k: config_value(cfg, k) for k in keys}, sort_keys=True)


def resolve(config_json: str, compiled: str, global_rounds: int | None = None,
            generator_training_rounds: int | None = None,
            client_ids: list | None = None, settings: dict | None = None) -> Config:
    """The config a task runs with, parsed once: config_json plus the typed run-time
    parameters (the round counts and client_ids in phase execution; the settings, SETTINGS
    names, in every execution), checked against what the DAG was compiled for. A structural key
    changed where it cannot take effect fails here, naming the key and its compiled value; so
    does a key set to two different values in config_json and in its typed parameter."""
    cfg = config_mod.loads(config_json)
    built = json.loads(compiled)
    for key in SHAPE_KEYS:
        if config_value(cfg, key) != built[key]:
            raise config_mod.ConfigError(
                f"'{key}' is {json.dumps(config_value(cfg, key))} in config_json but the "
                f"pipeline was compiled with {json.dumps(built[key])}: it decides which tasks "
                "exist; compile the pipeline again (feda2v compile) to change it")
    counts = (("global_rounds", global_rounds),
              ("feda2v.generator_training_rounds", generator_training_rounds))
    if built["execution"] == "round":
        for key in COUNT_KEYS:
            if config_value(cfg, key) != built[key]:
                raise config_mod.ConfigError(
                    f"'{key}' is {json.dumps(config_value(cfg, key))} in config_json but this "
                    f"round-execution pipeline was compiled with {json.dumps(built[key])} "
                    "(its rounds and clients are unrolled); compile again, or use "
                    "execution 'phase', where they are run-time parameters")
        counts, client_ids = (), None  # unrolled: the compiled values, checked above
    for key, typed in counts:
        if typed is None or typed == built[key]:
            continue  # the form's value is the compiled one: config_json's value stands
        if config_value(cfg, key) not in (built[key], typed):
            raise config_mod.ConfigError(
                f"'{key}' is {config_value(cfg, key)} in config_json but {typed} in the "
                f"run-time parameter {key.rsplit('.', 1)[-1]}; set one of them")
        if isinstance(typed, bool) or not isinstance(typed, int) or typed < 1:
            raise config_mod.ConfigError(f"bad value for run-time parameter '{key}': {typed!r}")
        cfg = _set(cfg, key, typed)
    for name, typed in (settings or {}).items():
        if name not in SETTINGS:
            raise config_mod.ConfigError(f"unknown run-time parameter {name!r}")
        key = SETTINGS[name]
        typed = _typed(key, typed, name)
        if isinstance(typed, str) and config_mod.redact(typed) != typed:
            raise config_mod.ConfigError(
                f"bad value for run-time parameter '{name}': it contains credentials "
                "(user:password@); give them in the environment (the Kubernetes Secret)")
        if key not in built or typed == built[key]:
            continue  # the form's value is the compiled one: config_json's value stands
        if config_value(cfg, key) not in (built[key], typed):
            raise config_mod.ConfigError(config_mod.redact(
                f"'{key}' is {config_value(cfg, key)!r} in config_json but {typed!r} in the "
                f"run-time parameter {name}; set one of them"))
        cfg = _set(cfg, key, typed)
    if client_ids is not None:
        client_ids = [as_int(i, "client_ids") for i in client_ids]
        n = config_mod.num_clients(cfg)
        if list(client_ids) != list(range(len(client_ids))) or not client_ids:
            raise config_mod.ConfigError(
                f"bad value for run-time parameter 'client_ids': expected [0, 1, ..., n-1], "
                f"got {client_ids!r}")
        if len(client_ids) != n:
            if cfg.data.partition != "classes" and n == built["clients"]:
                cfg = cfg.replace(data={"num_clients": len(client_ids)})
            else:
                key = "data.clients" if cfg.data.partition == "classes" else "data.num_clients"
                raise config_mod.ConfigError(
                    f"'{key}' gives {n} clients but the run-time parameter client_ids is "
                    f"{list(client_ids)}; set client_ids to {list(range(n))}")
    return cfg


def _typed(key: str, value, name: str):
    """A run-time parameter's value as its config key's type: KFP hands the values of a dict
    parameter over as strings ("5.0", "0.01", "gan")."""
    default = config_mod.key_spec(key).default
    try:
        if isinstance(default, int) and not isinstance(default, bool):
            return as_int(float(value), name)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise config_mod.ConfigError(f"bad value for run-time parameter '{name}': "
                                     f"{value!r}") from None
    return str(value)


def as_int(value, name: str) -> int:
    """KFP passes numbers of list parameters (and their ParallelFor items) as floats: 2.0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise config_mod.ConfigError(f"bad value for '{name}': expected an integer, got {value!r}")
    return int(value)


def available_cores() -> int:
    """The cores `feda2v run` shares among its tasks: $OMP_NUM_THREADS when the user set it (a
    shared machine, a test runner's worker share), else the CPUs this process may run on."""
    try:
        chosen = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        chosen = 0
    if chosen > 0:
        return chosen
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def task_setup(parallel: bool) -> None:
    """Called at the start of every pipeline stage. Under `feda2v run`: torch threads = cores /
    tasks running at once (concurrent client tasks must not fight over the cores), and the task
    exits when `feda2v run` is gone (a SIGKILL gives it no chance to stop its tasks). Elsewhere
    (a pod, a test, a stage by hand) nothing changes."""
    cores = os.environ.get(LOCAL_CORES_ENV)
    if cores:
        import torch

        share = int(os.environ.get(LOCAL_PARALLEL_ENV, "1")) if parallel else 1
        torch.set_num_threads(max(1, int(cores) // max(1, share)))
    parent = os.environ.get(PARENT_ENV)
    if parent and not _watching:
        _watching.append(int(parent))
        threading.Thread(target=_exit_with_parent, args=(int(parent),), daemon=True).start()


_watching: list[int] = []


def _exit_with_parent(parent: int) -> None:
    # The task may sit below a shell (KFP's `sh -c` launcher), so watch the pid, not getppid().
    from feda2v.io.owner import pid_alive

    while pid_alive(parent):  # a killed parent not yet reaped is a zombie: gone as well
        time.sleep(0.5)
    os._exit(137)


# The keys the data stages (extraction, class targets) read: their output depends on these
# alone, so a task fed only these is cached by KFP across changes of everything else (learning
# rates, rounds, generator settings).
DATA_STAGE_TOP_KEYS = ("seed", "storage_root")
DATA_STAGE_SECTIONS = ("data", "models")


def data_stage_config(config_json: str, compiled: str, client_ids: list | None = None,
                      settings: dict | None = None) -> str:
    """The config of the data stages: config_json resolved by `resolve` (structure checked,
    client_ids and the run form's settings applied: a seed, storage root or dataset given at
    run time is part of the result, so of the cache key), cut down to the keys they read (the
    rest at defaults), with credentials redacted (it travels as a task output)."""
    cfg = resolve(config_json, compiled, client_ids=client_ids, settings=settings)
    full = config_mod.withhold_credentials(cfg)[0].to_dict()
    subset = {k: full[k] for k in DATA_STAGE_TOP_KEYS + DATA_STAGE_SECTIONS}
    return json.dumps(subset, sort_keys=True)

