"""The KFP side of each task: its Input/Output artifacts in and out, around the stage it runs.

The components (components/*.py) call these; the stages they wrap (stages.py) take plain
values and URIs and know nothing of KFP. Tasks hand embeddings, generator checkpoints and
synthetic samples on as typed KFP artifacts, so that the UI's lineage follows every edge. The
storage-root copy stays: it is the cache that outlives a run, what a retried task resumes from,
and what in-process runs read.
"""

from __future__ import annotations

import os

from feda2v.io import config as config_mod
from feda2v.io import runstate, storage
from feda2v.io.config import Config
from feda2v.orchestration import runtime, stages


def publish_artifact(uri: str, path: str, metadata: dict, client_id: int, **fields) -> None:
    """Copy the file at `uri` into a KFP output artifact's local `path`, with its client id,
    sha256 and source in the artifact's metadata."""
    data = storage.read_bytes(uri)
    storage.write_bytes(path, data)
    metadata.update(fields, client_id=client_id, sha256=runstate.sha256(data),
                    source=config_mod.redact(uri))


def by_client(artifacts, what: str, num_clients: int) -> dict[int, str]:
    """{client id: local path} of collected artifacts (their client_id metadata), one per
    client of the config."""
    found: dict[int, str] = {}
    for a in artifacts:
        i = int(a.metadata["client_id"])  # KFP stores metadata numbers as floats
        if i in found:
            raise ValueError(f"two {what} artifacts for client {i}")
        found[i] = a.path
    missing = sorted(set(range(num_clients)) - set(found))
    if missing or len(found) != num_clients:
        raise ValueError(f"{what} artifacts for clients {sorted(found)}, but the config has "
                         f"{num_clients} clients (missing {missing})")
    return found



def extract_task(data_config: str, client_id: int, embeddings) -> str:
    """The body of the extraction task: embeddings into the storage-root cache and into the
    `embeddings` Dataset artifact; returns the cache URI."""
    uri = stages.extract(data_config, client_id)
    publish_artifact(uri, embeddings.path, embeddings.metadata, runtime.as_int(client_id, "client_id"))
    return uri



def federated_phase_task(config: Config | str, phase: str, run_key: str, mlflow_run_id: str,
                         adapter, metrics, conditions, embeddings, targets, synthetic=None,
                         start=None) -> float:
    """The body of the phase task (KFP artifacts in and out): its final accuracy. Run 1's class
    conditions (every client, every round) go into the `conditions` artifact, which the
    generator tasks read; other phases leave it an empty folder."""
    cfg = config_mod.as_config(config)
    n = config_mod.num_clients(cfg)
    result = stages.federated_phase(
        cfg, phase, run_key, mlflow_run_id, adapter.path,
        by_client(embeddings, "embeddings", n),
        by_client(synthetic, "synthetic samples", n) if synthetic is not None else None,
        targets.path, start.path if start is not None else "")
    metrics.log_metric("accuracy", result["accuracy"])
    os.makedirs(conditions.path, exist_ok=True)
    rounds = result["rounds"] if phase == "run1" else 0
    run = runstate.run_dir(cfg, run_key)
    for i in range(n if rounds else 0):
        for r in range(1, rounds + 1):
            storage.write_bytes(runstate.conditions_uri(run, i, r, conditions.path),
                                storage.read_bytes(runstate.conditions_uri(run, i, r)))
    conditions.metadata.update(phase=phase, clients=n if rounds else 0, rounds=rounds)
    return result["accuracy"]



def train_generator_task(config: Config | str, client_id: int, run_key: str, checkpoint,
                         conditions=None, mlflow_run_id: str = "") -> dict:
    """The body of the generator-training task: from the Run 1 phase's `conditions` artifact
    where given; the trained generator (the seed's latest checkpoint, with its optimizer) also
    as the `checkpoint` Model artifact."""
    cfg = config_mod.as_config(config)
    result = stages.train_generator(cfg, client_id, run_key,
                                    conditions.path if conditions is not None else "",
                                    mlflow_run_id)
    own = runstate.generator_state_uri(runstate.run_dir(cfg, run_key), result["client_id"])
    publish_artifact(own, checkpoint.path, checkpoint.metadata, result["client_id"],
                     generator_type=cfg.feda2v.generator_type,
                     name=f"client_{result['client_id']}_generator.pt")
    return result



def generate_task(config: Config | str, client_id: int, run_key: str, checkpoint, samples) -> dict:
    """The body of the generation task: from the `checkpoint` artifact where given (Run 1 in
    this pipeline), else as stages.generate() finds it; the samples also as a Dataset artifact."""
    cfg = config_mod.as_config(config)
    result = stages.generate(cfg, client_id, run_key,
                      checkpoint.path if checkpoint is not None else "")
    run = runstate.run_dir(cfg, run_key)
    publish_artifact(runstate.synthetic_uri(run, result["client_id"]), samples.path,
                     samples.metadata, result["client_id"], samples=result["samples"])
    return result



# Round execution's round tasks find what they resolve their config with (the compiled values
# and the run form's settings, runtime.resolve's arguments) and the run key in the global
# adapter's metadata under this key: init_adapter_task puts them there, every server round
# passes them on. (As task inputs they would grow the unrolled YAML by a kilobyte a round.)
ROUND_CONTEXT = "feda2v_run"


def init_adapter_task(config_json: str, compiled: str, settings: dict, run_key: str,
                      client_data_uris, targets, adapter) -> int:
    """The body of the round-execution init task: the initial global adapter, with the round
    tasks' context (round_context) in its metadata. Returns the adapter's parameter count."""
    cfg = runtime.resolve(config_json, compiled, settings=settings)
    adapter.metadata[ROUND_CONTEXT] = {"compiled": compiled, "settings": dict(settings or {}),
                                       "run_key": run_key}
    stages.ensure_targets(cfg, run_key, targets.path)  # for the exit handler's confusion matrix
    return stages.init_adapter(cfg, client_data_uris, targets.path, adapter.path)["parameters"]


def round_context(config_json: str, global_adapter) -> tuple[Config, str]:
    """A round task's (config, run key): config_json resolved by runtime.resolve with the
    compiled values and the run form's settings in the metadata of the global adapter it
    reads."""
    context = global_adapter.metadata.get(ROUND_CONTEXT) or {}
    if "compiled" not in context:
        raise ValueError(f"the global adapter {global_adapter.path} has no {ROUND_CONTEXT!r} "
                         "metadata (written by the init-adapter task)")
    return (runtime.resolve(config_json, context["compiled"], settings=context["settings"]),
            context["run_key"])


def client_round_task(config_json, client_id, round_num, phase, global_adapter, targets,
                      update) -> float:
    """The body of the round-execution client task (KFP artifacts in, adapter loss out)."""
    cfg, run_key = round_context(config_json, global_adapter)
    result = stages.client_round(cfg, client_id, round_num, phase, global_adapter.path, targets.path,
                          update.path, run_key)
    return result.get("adapter_loss", 0.0)


def server_round_task(config_json, round_num, phase, updates, previous, targets, mlflow_run_id,
                      adapter, metrics, ready=None) -> float:
    """The body of the round-execution server task; its adapter carries the round context on
    to the next round."""
    cfg, run_key = round_context(config_json, previous)
    result = stages.server_round(cfg, round_num, phase, [u.path for u in updates], previous.path,
                          targets.path, adapter.path, mlflow_run_id, run_key)
    adapter.metadata[ROUND_CONTEXT] = previous.metadata[ROUND_CONTEXT]
    metrics.log_metric("accuracy", result["accuracy"])
    return result["accuracy"]


def finish_task(config: Config | str, mlflow_run_id: str, run_key: str, state: str, report,
                figures, confusion, error: str = "") -> str:
    """The body of the exit handler: finish.finish_tracking, with the results table as the
    `report` Markdown, the report with its figures as the `figures` HTML artifact, and the
    final adapter's confusion matrix as the `confusion` ClassificationMetrics (the KFP UI
    draws both). Returns the results table."""
    from feda2v.orchestration import finish

    text = finish.finish_tracking(config, mlflow_run_id, run_key, state, report.path, error,
                                  figures.path)
    if isinstance(config, Config):  # else its check failed: nothing ran, no matrix
        matrix = finish.confusion_of(config, run_key)
        if matrix:
            confusion.log_confusion_matrix(matrix["classes"], matrix["matrix"])
    return text
