"""One function per pipeline stage: the unit the CLI and the KFP components call.

A stage takes plain values (the config, as the typed Config or the JSON text a task parameter
holds; ids; URIs) and returns small results.
It does not know whether it runs under KFP, kfp.local, docker or a test.
"""

from __future__ import annotations

import os
import tempfile

import torch

from feda2v.evaluation import report
from feda2v.io import config as config_mod
from feda2v.io import runstate, storage, tracking
from feda2v.io.config import Config
from feda2v.io.log import get_logger
from feda2v.orchestration import runtime

log = get_logger()


# --- paths under the storage root ---------------------------------------------------------------

def embeddings_uri(cfg: Config, client_id: int) -> str:
    from feda2v.encoders.extraction import embeddings_uri as uri

    return uri(cfg, client_id)


def checkpoint_dir(cfg: Config) -> str:
    d = cfg.feda2v.generator_checkpoint_dir
    return d if ("://" in d or os.path.isabs(d)) else storage.join(cfg.storage_root, d)


def client_uri(uris: list[str], client_id: int) -> str:
    """Pick client `client_id`'s embeddings from the collected extraction outputs."""
    name = f"client_{client_id}.safetensors"
    found = [u for u in uris if u.rstrip("/").endswith("/" + name)]
    if len(found) != 1:
        raise ValueError(f"expected one embeddings file for client {client_id} in {uris}")
    return found[0]


# --- KFP artifacts ------------------------------------------------------------------------------
# Tasks hand embeddings, generator checkpoints and synthetic samples on as typed KFP artifacts, so
# that the UI's lineage follows every edge. The storage-root copy stays: it is the cache that
# outlives a run, what a retried task resumes from, and what in-process runs read.

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


# --- extraction --------------------------------------------------------------------------------

def class_targets(config: Config | str, out_uri: str) -> dict:
    """Class targets [C, D_clip]: the CLIP text embedding of each class prompt, or the matrix a
    precomputed-embeddings file brings along."""
    from feda2v.data import datasets

    cfg = config_mod.as_config(config)
    names = datasets.class_names(cfg)
    template = cfg.data.prompt_template
    prompts = [template.format(label=n.replace("_", " ")) for n in names]
    given = None
    if cfg.data.format == "embeddings":
        tensors, meta = datasets.read_embeddings(cfg.data.dataset_uri)
        if "class_targets" in tensors:
            given = tensors["class_targets"][[meta["class_names"].index(n) for n in names]]
    if given is not None:
        targets, source = given.float(), "from the embeddings file"
    elif cfg.data.targets == "images":
        from feda2v.encoders.embed import image_targets

        targets = image_targets(cfg.models.image_model, datasets.read_images(cfg), names,
                                cfg.models.device)
        source = "mean CLIP image embeddings"
    else:
        from feda2v.encoders.embed import text_targets

        targets = text_targets(cfg.models.text_model, prompts, cfg.models.device)
        source = "CLIP text embeddings"
    storage.save_tensors(out_uri, {"targets": targets}, {"class_names": names, "prompts": prompts})
    log.info("[Server] Class targets: %d classes, %d-d %s", *targets.shape, source)
    return {"num_classes": targets.shape[0], "dim": targets.shape[1]}


def extract(config: Config | str, client_id: int, out_uri: str = "") -> str:
    """Embed one client's train and test clips -> [N, tokens, D] safetensors; returns its URI.
    A rerun with the same clips, model and settings reuses the stored file."""
    from feda2v.encoders.extraction import extract_client

    cfg = config_mod.as_config(config)
    runtime.task_setup(parallel=True)
    client_id = runtime.as_int(client_id, "client_id")
    if not 0 <= client_id < config_mod.num_clients(cfg):
        raise ValueError(f"client {client_id} does not exist: the config has "
                         f"{config_mod.num_clients(cfg)} clients")
    return extract_client(cfg, client_id, out_uri or embeddings_uri(cfg, client_id))


def extract_task(data_config: str, client_id: int, embeddings) -> str:
    """The body of the extraction task: embeddings into the storage-root cache and into the
    `embeddings` Dataset artifact; returns the cache URI."""
    uri = extract(data_config, client_id)
    publish_artifact(uri, embeddings.path, embeddings.metadata, runtime.as_int(client_id, "client_id"))
    return uri


# --- what every federated task reads ------------------------------------------------------

def _load_targets(uri: str) -> tuple[torch.Tensor, list[str]]:
    tensors, meta = storage.load_tensors(uri)
    storage.require_finite(tensors, uri)
    return tensors["targets"], meta["class_names"]


def _load_adapter(uri: str) -> dict[str, torch.Tensor]:
    return storage.load_tensors(uri)[0]


def client_data(cfg: Config, client_id: int, uri: str = ""):
    from feda2v.federated.client import ClientData
    from feda2v.federated.task import device_of

    uri = uri or embeddings_uri(cfg, client_id)
    t, _ = storage.load_tensors(uri)
    storage.require_finite({"train_x": t["train_x"], "test_x": t["test_x"]}, uri)
    dev = device_of(cfg)
    return ClientData(t["train_x"].float().to(dev), t["train_y"].to(dev),
                      t["test_x"].float().to(dev), t["test_y"].to(dev))


def _class_names(cfg: Config) -> list[str]:
    from feda2v.data import datasets

    return datasets.class_names(cfg)


def server_real_data(cfg: Config, class_names: list[str]):
    """The server's own real embeddings (x, y in this run's class order), or None."""
    uri = cfg.feda2v.server_real_data_uri
    if not uri:
        return None
    from feda2v.data.datasets import read_embeddings
    from feda2v.encoders.extraction import split_codes

    tensors, meta = read_embeddings(uri)
    remap = torch.tensor([class_names.index(c) if c in class_names else -1
                          for c in meta["class_names"]])
    y = remap[tensors["labels"].long()]
    # Only training rows: a held-out row here would let the server train on clients' test clips.
    keep = (y >= 0) & (split_codes(cfg, tensors, len(y)) == 0)
    if not keep.any():
        raise ValueError(f"feda2v.server_real_data_uri {uri}: no training rows of this run's "
                         "classes")
    return tensors["embeddings"][keep].float(), y[keep]


def federation(cfg: Config, targets_uri: str, client_uris: dict[int, str] | None = None):
    """Every client's embeddings (from `client_uris` where given, else the storage root), the
    class targets and the server's real data, read once."""
    from feda2v.federated.loop import Federation
    from feda2v.federated.task import device_of

    targets, names = _load_targets(targets_uri)
    uris = client_uris or {}
    clients = [client_data(cfg, i, uris.get(i, "")) for i in range(config_mod.num_clients(cfg))]
    return Federation(cfg, clients, targets.to(device_of(cfg)), names,
                      server_real_data(cfg, names))


def targets_uri(cfg: Config, run_key: str) -> str:
    return storage.join(runstate.run_dir(cfg, run_key), "class_targets.safetensors")


def ensure_targets(cfg: Config, run_key: str, given: str = "") -> str:
    """This run's class targets under its run folder (where the exit handler logs them from
    with the model): a copy of `given` (the class-targets task's artifact), else computed once
    by the first phase task. Returns what the phase reads: `given`, else that file."""
    uri = targets_uri(cfg, run_key)
    if not storage.exists(uri):
        if given:
            storage.write_bytes(uri, storage.read_bytes(given))
        else:
            class_targets(cfg, uri)
    return given or uri


def initial_state(cfg: Config, fed) -> dict[str, torch.Tensor]:
    """The server's initial global adapter: a function of the seed and the dims only, so every
    phase and every mode starts from the same one."""
    from feda2v.federated.task import new_adapter

    torch.manual_seed(cfg.seed)
    x = fed.clients[0].train_x
    adapter = new_adapter(cfg, x.shape[2], fed.targets.shape[1])
    return {k: v.detach().cpu().clone() for k, v in adapter.state_dict().items()}


def phase_start(cfg: Config, fed, plan: list[tuple[str, int]], phase: str,
                run: str, run1_adapter: str = "") -> dict[str, torch.Tensor]:
    """A phase's first global adapter: the initial one, or for Run 2 (run2_start 'run1', or
    'auto' in a run that has a Run 1) the adapter Run 1 of this run ended with (the Run 1
    phase's artifact where given, else its last round under the run folder)."""
    rounds = dict(plan).get("run1")
    start = cfg.feda2v.run2_start
    if phase != "run2" or start == "initial" or (start == "auto" and not rounds):
        return initial_state(cfg, fed)
    if not rounds:
        raise ValueError("feda2v.run2_start is 'run1' but this run has no Run 1 (run the "
                         "end_to_end pipeline, or set run2_start to 'initial')")
    return storage.load_tensors(run1_adapter or runstate.round_uri(run, "run1", rounds))[0]


def init_adapter(config: Config | str, client_data_uris: list[str], targets_uri: str,
                 out_uri: str) -> dict:
    """The server's initial global adapter; dims come from the embeddings and targets."""
    from feda2v.federated.task import new_adapter

    cfg = config_mod.as_config(config)
    for i in range(config_mod.num_clients(cfg)):
        if client_uri(client_data_uris, i) != embeddings_uri(cfg, i):
            raise ValueError(f"client {i}: embeddings at {client_uri(client_data_uris, i)}, but "
                             f"the rounds read {embeddings_uri(cfg, i)}")
    torch.manual_seed(cfg.seed)
    x = storage.load_tensors(client_uri(client_data_uris, 0))[0]["train_x"]
    targets, _ = _load_targets(targets_uri)
    adapter = new_adapter(cfg, x.shape[2], targets.shape[1])
    storage.save_tensors(out_uri, adapter.state_dict(), {"round": 0})
    n = sum(p.numel() for p in adapter.parameters())
    log.info("[Server] Initialised global adapter %d -> %d (%d parameters)", x.shape[2],
             targets.shape[1], n)
    return {"audio_dim": x.shape[2], "clip_dim": targets.shape[1], "parameters": n}


def _synthetic_source(run: str, num_clients: int, uris: dict[int, str] | None = None):
    """Round r's synthetic samples of client i, from the generation tasks' files (their
    artifacts where given; each read once per phase)."""
    from feda2v.federated.generator import load_synthetic, synthetic_round

    loaded: dict = {}
    uris = uris or {}

    def get(client_id: int, r: int):
        if client_id not in loaded:
            loaded[client_id] = load_synthetic(uris.get(client_id)
                                               or runstate.synthetic_uri(run, client_id))
        return synthetic_round(loaded[client_id], r)

    return get


# --- phase execution: one task runs every round of a phase ----------------------------------

def phase_plan_steps(plan: list[tuple[str, int]], phase: str) -> int:
    """The MLflow step of `phase`'s first round: phases follow each other in one run."""
    step = 1
    for p, rounds in plan:
        if p == phase:
            return step
        step += rounds
    raise ValueError(f"phase {phase!r} is not in the plan {plan}")


def federated_phase(config: Config | str, phase: str, run_key: str, mlflow_run_id: str,
                    adapter_out: str = "", client_uris: dict[int, str] | None = None,
                    synthetic_uris: dict[int, str] | None = None, targets_in: str = "",
                    run1_adapter: str = "") -> dict:
    """Every round of one federated phase (fedavg, run1, run2, sample) for every client, in this
    process; resumes after the last round a previous try finished. The config's plan gives the
    rounds and the MLflow steps. Embeddings, synthetic samples, class targets and Run 1's final
    adapter come from the given files (the task's input artifacts), else from the storage
    root."""
    from feda2v.federated.loop import run_phase

    cfg = config_mod.as_config(config)
    runtime.task_setup(parallel=False)
    plan = runtime.plan(cfg)
    rounds = dict(plan)[phase]
    run = runstate.run_dir(cfg, run_key)
    run_id = tracking.ensure_run(cfg, mlflow_run_id, run_key, report.phases_param(plan))
    fed = federation(cfg, ensure_targets(cfg, run_key, targets_in), client_uris)
    log.info("[Server] %s: %d rounds x %d clients in one task (run folder %s)", phase, rounds,
             len(fed.clients), run)
    synthetic = (_synthetic_source(run, len(fed.clients), synthetic_uris)
                 if phase in ("run2", "sample") else None)
    with tracking.system_metrics(cfg, run_id, phase):
        state, history = run_phase(fed, phase, rounds, phase_plan_steps(plan, phase),
                                   phase_start(cfg, fed, plan, phase, run, run1_adapter), run,
                                   synthetic,
                                   lambda m, step: tracking.log_metrics(cfg, run_id, m, step))
    if adapter_out:
        storage.save_tensors(adapter_out, state, {"round": rounds, "phase": phase})
    return {"phase": phase, "rounds": rounds, "accuracy": history[-1]["accuracy"],
            "mlflow_run_id": run_id}


def federated_phase_task(config: Config | str, phase: str, run_key: str, mlflow_run_id: str,
                         adapter, metrics, conditions, embeddings, targets, synthetic=None,
                         start=None) -> float:
    """The body of the phase task (KFP artifacts in and out): its final accuracy. Run 1's class
    conditions (every client, every round) go into the `conditions` artifact, which the
    generator tasks read; other phases leave it an empty folder."""
    cfg = config_mod.as_config(config)
    n = config_mod.num_clients(cfg)
    result = federated_phase(
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


def train_generator(config: Config | str, client_id: int, run_key: str,
                    conditions_folder: str = "") -> dict:
    """Stage: one client's generator over all Run 1 rounds, from the class conditions its
    adapter rounds wrote (under the run folder, or their copy in `conditions_folder`);
    checkpoints under the seed's names."""
    from feda2v.federated.generator import train_client

    cfg = config_mod.as_config(config)
    runtime.task_setup(parallel=True)
    client_id = runtime.as_int(client_id, "client_id")
    rounds = dict(runtime.plan(cfg))["run1"]
    data = client_data(cfg, client_id)
    names = _class_names(cfg)
    losses = train_client(cfg, client_id, runstate.run_dir(cfg, run_key), run_key, data.train_x,
                          data.train_y, names, rounds, checkpoint_dir(cfg), conditions_folder)
    return {"client_id": client_id, "rounds": len(losses),
            "generator_loss": losses[max(losses)] if losses else None}


def train_generator_task(config: Config | str, client_id: int, run_key: str, checkpoint,
                         conditions=None) -> dict:
    """The body of the generator-training task: from the Run 1 phase's `conditions` artifact
    where given; the trained generator (the seed's latest checkpoint, with its optimizer) also
    as the `checkpoint` Model artifact."""
    cfg = config_mod.as_config(config)
    result = train_generator(cfg, client_id, run_key,
                             conditions.path if conditions is not None else "")
    own = runstate.generator_state_uri(runstate.run_dir(cfg, run_key), result["client_id"])
    publish_artifact(own, checkpoint.path, checkpoint.metadata, result["client_id"],
                     generator_type=cfg.feda2v.generator_type,
                     name=f"client_{result['client_id']}_generator.pt")
    return result


def generate_task(config: Config | str, client_id: int, run_key: str, checkpoint, samples) -> dict:
    """The body of the generation task: from the `checkpoint` artifact where given (Run 1 in
    this pipeline), else as generate() finds it; the samples also as a Dataset artifact."""
    cfg = config_mod.as_config(config)
    result = generate(cfg, client_id, run_key,
                      checkpoint.path if checkpoint is not None else "")
    run = runstate.run_dir(cfg, run_key)
    publish_artifact(runstate.synthetic_uri(run, result["client_id"]), samples.path,
                     samples.metadata, result["client_id"], samples=result["samples"])
    return result


def generate(config: Config | str, client_id: int, run_key: str, source: str = "") -> dict:
    """Stage: Run 2's synthetic samples of one client for every round, from one read of its
    generator: `source`, else this run's own (after Run 1 in the same run) or the published
    checkpoint."""
    from feda2v.federated.generator import checkpoint_uri, generate_client

    cfg = config_mod.as_config(config)
    runtime.task_setup(parallel=True)
    client_id = runtime.as_int(client_id, "client_id")
    plan = dict(runtime.plan(cfg))
    phase = "run2" if "run2" in plan else "sample"
    run = runstate.run_dir(cfg, run_key)
    own = runstate.generator_state_uri(run, client_id)
    source = source or (own if "run1" in plan else checkpoint_uri(checkpoint_dir(cfg), client_id))
    if "run1" not in plan:
        holder = runstate.lease_holder(checkpoint_dir(cfg))
        if holder and holder["run"] != run_key:
            log.warning("[Client %d] %s is being written by live run %s", client_id,
                        checkpoint_dir(cfg), holder["run"])
    return generate_client(cfg, client_id, client_data(cfg, client_id), _class_names(cfg),
                           plan[phase], source, runstate.synthetic_uri(run, client_id))


# --- round execution (silo mode): one task per client round and per server round ------------

def client_round(config: Config | str, client_id: int, round_num: int, phase: str,
                 global_adapter_uri: str, targets_uri: str, update_uri: str,
                 run_key: str = "", data_uri: str = "") -> dict:
    """One client's round; writes its update (adapter, sample count, metrics, synthetic set).
    Run 1 also writes the round's class conditions under the run folder (run_key)."""
    from feda2v.federated.client import client_step
    from feda2v.federated.loop import save_conditions

    cfg = config_mod.as_config(config)
    runtime.task_setup(parallel=True)
    log.info("=== Round %d (%s) — Client %d ===", round_num, phase, client_id)
    targets, names = _load_targets(targets_uri)
    run = runstate.run_dir(cfg, run_key) if run_key else ""
    synthetic = None
    if phase in ("run2", "sample"):
        from feda2v.federated.generator import load_synthetic, synthetic_round

        if not run:
            raise ValueError(f"phase {phase} needs the run key of the generation tasks")
        synthetic = synthetic_round(load_synthetic(runstate.synthetic_uri(run, client_id)),
                                    round_num)
    update = client_step(cfg, client_id, round_num, phase, _load_adapter(global_adapter_uri),
                         client_data(cfg, client_id, data_uri), targets, names, synthetic)
    if phase == "run1" and run:
        save_conditions(run, update, round_num)
    out = {f"adapter.{k}": v for k, v in update.adapter_state.items()}
    out["synthetic_x"], out["synthetic_y"] = update.synthetic_x, update.synthetic_y
    storage.save_tensors(update_uri, out, {"client_id": client_id, "round": round_num,
                                           "num_samples": update.num_samples,
                                           "metrics": update.metrics, "quality": update.quality})
    return {"client_id": client_id, "num_samples": update.num_samples, **update.metrics}


def read_update(uri: str):
    from feda2v.federated.client import ClientUpdate

    t, m = storage.load_tensors(uri)
    state = {k[len("adapter."):]: v for k, v in t.items() if k.startswith("adapter.")}
    return ClientUpdate(m["client_id"], state, m["num_samples"], m["metrics"],
                        t["synthetic_x"], t["synthetic_y"], m.get("quality") or {})


def server_round(config: Config | str, round_num: int, phase: str, update_uris: list[str],
                 previous_uri: str, targets_uri: str, adapter_out_uri: str, mlflow_run_id: str,
                 run_key: str = "", step: int = 0) -> dict:
    """The server's side of one round, as one task: FedAvg, global training on the synthetic
    pool when the round calls for it, evaluation; metrics to MLflow at the round's step."""
    from feda2v.federated.loop import save_round
    from feda2v.federated.server import server_step
    from feda2v.federated.task import device_of

    cfg = config_mod.as_config(config)
    runtime.task_setup(parallel=False)
    plan = runtime.plan(cfg) if run_key else [(phase, round_num)]
    step = step or phase_plan_steps(plan, phase) + round_num - 1
    run_id = (tracking.ensure_run(cfg, mlflow_run_id, run_key, report.phases_param(plan))
              if run_key else mlflow_run_id)
    targets, names = _load_targets(targets_uri)
    test_sets = [(d.test_x, d.test_y) for d in
                 (client_data(cfg, i) for i in range(config_mod.num_clients(cfg)))]
    updates = [read_update(u) for u in update_uris]
    state, metrics, accuracy = server_step(cfg, round_num, step, phase, updates,
                                           _load_adapter(previous_uri),
                                           targets.to(device_of(cfg)), names, test_sets,
                                           server_real_data(cfg, names))
    tracking.log_metrics(cfg, run_id, metrics, step)
    storage.save_tensors(adapter_out_uri, state, {"round": round_num})
    if run_key:
        save_round(runstate.run_dir(cfg, run_key), phase, round_num, step, state, metrics)
    return {"accuracy": accuracy, "synthetic_samples": metrics.get("server/synthetic_samples_total", 0),
            **({"global_train_loss": metrics["server/global_train_loss"]}
               if "server/global_train_loss" in metrics else {})}


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
    return init_adapter(cfg, client_data_uris, targets.path, adapter.path)["parameters"]


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
    result = client_round(cfg, client_id, round_num, phase, global_adapter.path, targets.path,
                          update.path, run_key)
    return result.get("adapter_loss", 0.0)


def server_round_task(config_json, round_num, phase, updates, previous, targets, mlflow_run_id,
                      adapter, metrics, ready=None) -> float:
    """The body of the round-execution server task; its adapter carries the round context on
    to the next round."""
    cfg, run_key = round_context(config_json, previous)
    result = server_round(cfg, round_num, phase, [u.path for u in updates], previous.path,
                          targets.path, adapter.path, mlflow_run_id, run_key)
    adapter.metadata[ROUND_CONTEXT] = previous.metadata[ROUND_CONTEXT]
    metrics.log_metric("accuracy", result["accuracy"])
    return result["accuracy"]


def evaluate(config: Config | str, adapter_uri: str, targets_uri: str,
             client_data_uris: list[str] | None = None) -> dict:
    """Zero-shot accuracy over all classes on each client's test clips, weighted by test size."""
    from feda2v.federated.server import weighted_accuracy
    from feda2v.federated.task import adapter_from_state, device_of

    cfg = config_mod.as_config(config)
    adapter = adapter_from_state(cfg, _load_adapter(adapter_uri)).to(device_of(cfg))
    targets, _ = _load_targets(targets_uri)
    n = config_mod.num_clients(cfg)
    sets = [client_data(cfg, i, client_uri(client_data_uris, i) if client_data_uris else "")
            for i in range(n)]
    accuracy, per_client = weighted_accuracy(adapter, targets.to(device_of(cfg)),
                                             [(d.test_x, d.test_y) for d in sets])
    return {"global_accuracy": accuracy, **{f"node_{i}": a for i, a in per_client.items()}}


# --- tracking ----------------------------------------------------------------------------------

def final_adapter_uri(cfg: Config, run_key: str, plan: list[tuple[str, int]]) -> str:
    phase, rounds = plan[-1]
    return runstate.round_uri(runstate.run_dir(cfg, run_key), phase, rounds)


def log_generator_losses(cfg: Config, run: str, run_id: str, first: int = 1) -> None:
    """Run 1's per-round generator losses (written by the per-client generator tasks under the
    run folder `run`) as the seed's train/node_{i}/generator_loss, Run 1 starting at step
    `first`."""
    by_step: dict[int, dict] = {}
    for i in range(config_mod.num_clients(cfg)):
        uri = runstate.generator_losses_uri(run, i)
        if storage.exists(uri):
            for r, loss in runstate.read_losses(uri).items():
                by_step.setdefault(first + r - 1, {})[f"train/node_{i}/generator_loss"] = loss
    for step, metrics in sorted(by_step.items()):
        tracking.log_metrics(cfg, run_id, metrics, step)


def _log_generators(cfg: Config, run_id: str, run_key: str, tmp: str) -> None:
    """The generator each client trained in this run (its own copy under the run folder, never
    the shared checkpoint folder another run may have written since), as MLflow artifacts
    generators/client_{i}_generator.pt, with their sha256 as tags."""
    from feda2v.federated.generator import checkpoint_uri

    run = runstate.run_dir(cfg, run_key)
    for i in range(config_mod.num_clients(cfg)):
        uri = runstate.generator_state_uri(run, i)
        if storage.exists(uri):
            data = storage.read_bytes(uri)
            local = os.path.join(tmp, os.path.basename(checkpoint_uri("", i)))
            storage.write_bytes(local, data)
            tracking.log_artifact(cfg, run_id, local, "generators")
            tracking.set_tags(cfg, run_id, {f"generators.client_{i}.sha256": runstate.sha256(data)})


def _log_run_artifacts(cfg: Config, run_id: str, run_key: str, plan, state: str,
                       text: str) -> None:
    """The final adapter (file and MLflow model), the generators and the results table."""
    with tempfile.TemporaryDirectory() as tmp:
        adapter = final_adapter_uri(cfg, run_key, plan)
        if state == "SUCCEEDED" and storage.exists(adapter):
            adapter_file = os.path.join(tmp, "global_adapter.safetensors")
            storage.write_bytes(adapter_file, storage.read_bytes(adapter))
            tracking.log_artifact(cfg, run_id, adapter_file, "model")
            targets_file = ""
            if storage.exists(targets_uri(cfg, run_key)):  # phase execution keeps them there
                targets_file = os.path.join(tmp, "class_targets.safetensors")
                storage.write_bytes(targets_file, storage.read_bytes(targets_uri(cfg, run_key)))
            model_uri = tracking.log_adapter_model(cfg, run_id, adapter_file, targets_file)
            log.info("[Server] Global adapter logged as MLflow model %s%s", model_uri,
                     f", registered as {cfg.mlflow_register_model!r}"
                     if cfg.mlflow_register_model else "")
        if "run1" in dict(plan):
            _log_generators(cfg, run_id, run_key, tmp)
        report_file = os.path.join(tmp, "results.md")
        storage.write_bytes(report_file, text.encode())
        tracking.log_artifact(cfg, run_id, report_file, "report")


def report_uri(cfg: Config, run_key: str) -> str:
    """The results table of a run, written by its exit handler."""
    return storage.join(runstate.run_dir(cfg, run_key), "report.md")


def finish_tracking(config: Config | str, mlflow_run_id: str, run_key: str, state: str,
                    report_path: str, error: str = "") -> str:
    """The pipeline's exit handler: generator losses, results table (Markdown), final adapter
    and report to MLflow; the MLflow run ends FINISHED, FAILED or KILLED whatever happened
    before; the run's lease on the checkpoint folder is released."""
    cfg = config_mod.as_config(config)
    plan = runtime.plan(cfg)
    runstate.release(checkpoint_dir(cfg), run_key)
    run_id = tracking.ensure_run(cfg, mlflow_run_id, run_key, report.phases_param(plan))
    if "run1" in dict(plan):
        log_generator_losses(cfg, runstate.run_dir(cfg, run_key), run_id,
                             phase_plan_steps(plan, "run1"))
    n = config_mod.num_clients(cfg)
    _, history = tracking.run_info(cfg, run_id, report.result_keys(n))
    rows = report.results_rows(plan, history, n)
    text = f"# FedA2V results ({state.lower()})\n\n" + report.results_table(rows, markdown=True) + "\n"
    if error:
        text += f"\n{error}\n"
    os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
    with open(report_path, "w") as f:
        f.write(text)
    status = tracking.final_status(state)
    try:
        # Beside the run's state in storage too: a cluster's pipeline root may be out of reach.
        storage.write_bytes(report_uri(cfg, run_key), text.encode())
        _log_run_artifacts(cfg, run_id, run_key, plan, state, text)
    except Exception:
        status = "FAILED"  # a model that could not be logged or registered fails the run ...
        raise
    finally:
        tracking.end_run(cfg, run_id, status)  # ... which still ends, whatever happened
    log.info("[Server] Pipeline %s: results of %d rounds written to %s; MLflow run %s %s",
             state.lower(), len(rows), report_path, run_id, status)
    return text
