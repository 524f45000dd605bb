"""One function per pipeline stage: the unit the CLI and the KFP components call.

A stage takes plain values (the config, as the typed Config or the JSON text a task parameter
holds; ids; URIs) and returns small results.
It does not know whether it runs under KFP, kfp.local, docker or a test.
"""

from __future__ import annotations

import torch

from feda2v.evaluation import report
from feda2v.io import config as config_mod
from feda2v.io import runstate, storage, tracking
from feda2v.io.config import Config
from feda2v.io.log import get_logger
from feda2v.io.runstate import checkpoint_dir
from feda2v.orchestration import runtime

log = get_logger()


# --- paths under the storage root ---------------------------------------------------------------

def embeddings_uri(cfg: Config, client_id: int) -> str:
    from feda2v.encoders.extraction import embeddings_uri as uri

    return uri(cfg, client_id)


def client_uri(uris: list[str], client_id: int) -> str:
    """Pick client `client_id`'s embeddings from the collected extraction outputs."""
    name = f"client_{client_id}.safetensors"
    found = [u for u in uris if u.rstrip("/").endswith("/" + name)]
    if len(found) != 1:
        raise ValueError(f"expected one embeddings file for client {client_id} in {uris}")
    return found[0]


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
    client_id = check_client(cfg, client_id)
    return extract_client(cfg, client_id, out_uri or embeddings_uri(cfg, client_id))


# --- what every federated task reads ------------------------------------------------------

def _load_targets(uri: str) -> tuple[torch.Tensor, list[str]]:
    tensors, meta = storage.load_tensors(uri)
    storage.require_finite(tensors, uri)
    return tensors["targets"], meta["class_names"]


def _load_adapter(uri: str) -> dict[str, torch.Tensor]:
    return storage.load_tensors(uri)[0]


def check_client(cfg: Config, client_id) -> int:
    """`client_id` as an int, refused by name when the config has no such client."""
    client_id = runtime.as_int(client_id, "client_id")
    if not 0 <= client_id < config_mod.num_clients(cfg):
        raise ValueError(f"client {client_id} does not exist: the config has "
                         f"{config_mod.num_clients(cfg)} clients")
    return client_id


def client_data(cfg: Config, client_id: int, uri: str = ""):
    from feda2v.federated.client import ClientData
    from feda2v.federated.task import device_of

    client_id = check_client(cfg, client_id)
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


def synthetic_source(run: str, num_clients: int, uris: dict[int, str] | None = None):
    """Round r's synthetic samples of client i, from the generation tasks' files (their
    artifacts where given; each read once per phase)."""
    from feda2v.federated.generators.sampling import load_synthetic, synthetic_round

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
    synthetic = (synthetic_source(run, len(fed.clients), synthetic_uris)
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


def train_generator(config: Config | str, client_id: int, run_key: str,
                    conditions_folder: str = "", mlflow_run_id: str | None = None) -> dict:
    """Stage: one client's generator over all Run 1 rounds, from the class conditions its
    adapter rounds wrote (under the run folder, or their copy in `conditions_folder`);
    checkpoints under the seed's names. With an `mlflow_run_id` (empty: the pipeline run's,
    found by its run key) each round's loss is logged as it ends, as the seed's
    train/node_{i}/generator_loss at the round's global step."""
    from feda2v.federated.generators.training import train_client

    cfg = config_mod.as_config(config)
    runtime.task_setup(parallel=True)
    client_id = check_client(cfg, client_id)
    plan = runtime.plan(cfg)
    rounds = dict(plan)["run1"]
    data = client_data(cfg, client_id)
    names = _class_names(cfg)
    on_round = None
    if mlflow_run_id is not None:
        run_id = tracking.ensure_run(cfg, mlflow_run_id, run_key, report.phases_param(plan))
        first = phase_plan_steps(plan, "run1")

        def on_round(r: int, loss: float) -> None:
            tracking.log_metrics(cfg, run_id, {f"train/node_{client_id}/generator_loss": loss},
                                 first + r - 1)

    losses = train_client(cfg, client_id, runstate.run_dir(cfg, run_key), run_key, data.train_x,
                          data.train_y, names, rounds, checkpoint_dir(cfg), conditions_folder,
                          on_round)
    return {"client_id": client_id, "rounds": len(losses),
            "generator_loss": losses[max(losses)] if losses else None}


def generate(config: Config | str, client_id: int, run_key: str, source: str = "") -> dict:
    """Stage: Run 2's synthetic samples of one client for every round, from one read of its
    generator: `source`, else this run's own (after Run 1 in the same run) or the published
    checkpoint."""
    from feda2v.federated.generators.checkpoints import checkpoint_uri
    from feda2v.federated.generators.sampling import generate_client

    cfg = config_mod.as_config(config)
    runtime.task_setup(parallel=True)
    client_id = check_client(cfg, client_id)
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
                           plan[phase], source, runstate.synthetic_uri(run, client_id),
                           runstate.projection_uri(run, client_id))


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
        from feda2v.federated.generators.sampling import load_synthetic, synthetic_round

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
                                           "metrics": update.metrics, "quality": update.quality,
                                           "sampled": update.sampled})
    return {"client_id": client_id, "num_samples": update.num_samples, **update.metrics}


def read_update(uri: str):
    from feda2v.federated.client import ClientUpdate

    t, m = storage.load_tensors(uri)
    state = {k[len("adapter."):]: v for k, v in t.items() if k.startswith("adapter.")}
    return ClientUpdate(m["client_id"], state, m["num_samples"], m["metrics"],
                        t["synthetic_x"], t["synthetic_y"], m.get("quality") or {},
                        sampled=m.get("sampled", True))


def server_round(config: Config | str, round_num: int, phase: str, update_uris: list[str],
                 previous_uri: str, targets_uri: str, adapter_out_uri: str, mlflow_run_id: str,
                 run_key: str = "", step: int = 0) -> dict:
    """The server's side of one round, as one task: FedAvg, global training on the synthetic
    pool when the round calls for it, evaluation; metrics to MLflow at the round's step."""
    from feda2v.federated import strategy
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
    run = runstate.run_dir(cfg, run_key) if run_key else ""
    if not run and cfg.strategy in strategy.STATEFUL:
        raise ValueError(f"strategy {cfg.strategy} keeps server state between rounds, in the "
                         "run folder: this server round has no run key")
    opt_state = runstate.load_strategy_state(run, phase, round_num - 1) if run else {}
    state, metrics, accuracy, opt_state = server_step(
        cfg, round_num, step, phase, updates, _load_adapter(previous_uri),
        targets.to(device_of(cfg)), names, test_sets, server_real_data(cfg, names), opt_state)
    tracking.log_metrics(cfg, run_id, metrics, step)
    storage.save_tensors(adapter_out_uri, state, {"round": round_num})
    if run:
        runstate.save_strategy_state(run, phase, round_num, opt_state)
        save_round(run, phase, round_num, step, state, metrics)
    return {"accuracy": accuracy, "synthetic_samples": metrics.get("server/synthetic_samples_total", 0),
            **({"global_train_loss": metrics["server/global_train_loss"]}
               if "server/global_train_loss" in metrics else {})}


def partition_counts(cfg: Config) -> dict:
    """Who holds what: {"classes": names, "train": [[rows of each class] per client], "test":
    the same for the held-out rows}, from the clients' embeddings (labels only)."""
    names = _class_names(cfg)
    out = {"classes": names, "train": [], "test": []}
    for i in range(config_mod.num_clients(cfg)):
        t, _ = storage.load_tensors(embeddings_uri(cfg, i))
        for part in ("train", "test"):
            y = t[f"{part}_y"].long()
            out[part].append(torch.bincount(y, minlength=len(names))[:len(names)].tolist())
    return out


def confusion(cfg: Config, adapter_uri: str, targets_uri: str) -> dict:
    """The adapter's zero-shot predictions on every client's held-out rows, as a confusion
    matrix: {"classes": names, "matrix": [[count of true row, predicted column]]}."""
    from feda2v.federated.task import adapter_from_state, device_of, zero_shot_predictions

    adapter = adapter_from_state(cfg, _load_adapter(adapter_uri)).to(device_of(cfg))
    targets, names = _load_targets(targets_uri)
    matrix = torch.zeros(len(names), len(names), dtype=torch.long)
    for i in range(config_mod.num_clients(cfg)):
        d = client_data(cfg, i)
        if len(d.test_y):
            pred = zero_shot_predictions(adapter, d.test_x, targets.to(device_of(cfg)))
            matrix.index_put_((d.test_y.cpu().long(), pred.cpu()),
                              torch.ones(len(pred), dtype=torch.long), accumulate=True)
    return {"classes": names, "matrix": matrix.tolist()}


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
