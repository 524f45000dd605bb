"""One function per pipeline stage: the unit the CLI and the KFP components call.

A stage takes plain values (the config as JSON text, ids, URIs) and returns small results.
It does not know whether it runs under KFP, kfp.local, docker or a test.
"""

from __future__ import annotations

import os
import re
import tempfile

import torch

from feda2v import config as config_mod
from feda2v import report, storage, tracking
from feda2v.log import get_logger

log = get_logger()


# --- paths under the storage root ---------------------------------------------------------------

def embeddings_uri(cfg: dict, client_id: int) -> str:
    from feda2v.extraction import embeddings_uri as uri

    return uri(cfg, client_id)


def checkpoint_dir(cfg: dict) -> str:
    d = cfg["feda2v"]["generator_checkpoint_dir"]
    return d if ("://" in d or os.path.isabs(d)) else storage.join(cfg["storage_root"], d)


def client_uri(uris: list[str], client_id: int) -> str:
    """Pick client `client_id`'s embeddings from the collected extraction outputs."""
    name = f"client_{client_id}.safetensors"
    found = [u for u in uris if u.rstrip("/").endswith("/" + name)]
    if len(found) != 1:
        raise ValueError(f"expected one embeddings file for client {client_id} in {uris}")
    return found[0]


# --- extraction --------------------------------------------------------------------------------

def class_targets(config_json: str, out_uri: str) -> dict:
    """Class targets [C, D_clip]: the CLIP text embedding of each class prompt, or the matrix a
    precomputed-embeddings file brings along."""
    from feda2v import datasets

    cfg = config_mod.loads(config_json)
    names = datasets.class_names(cfg)
    template = cfg["data"]["prompt_template"]
    prompts = [template.format(label=n.replace("_", " ")) for n in names]
    given = None
    if cfg["data"]["format"] == "embeddings":
        tensors, meta = datasets.read_embeddings(cfg["data"]["dataset_uri"])
        if "class_targets" in tensors:
            given = tensors["class_targets"][[meta["class_names"].index(n) for n in names]]
    if given is not None:
        targets, source = given.float(), "from the embeddings file"
    elif cfg["data"]["targets"] == "images":
        from feda2v.encoders import image_targets

        targets = image_targets(cfg["models"]["image_model"], datasets.read_images(cfg), names,
                                cfg["models"]["device"])
        source = "mean CLIP image embeddings"
    else:
        from feda2v.encoders import text_targets

        targets = text_targets(cfg["models"]["text_model"], prompts, cfg["models"]["device"])
        source = "CLIP text embeddings"
    storage.save_tensors(out_uri, {"targets": targets}, {"class_names": names, "prompts": prompts})
    log.info("[Server] Class targets: %d classes, %d-d %s", *targets.shape, source)
    return {"num_classes": targets.shape[0], "dim": targets.shape[1]}


def extract(config_json: str, client_id: int, out_uri: str = "") -> str:
    """Embed one client's train and test clips -> [N, tokens, D] safetensors; returns its URI.
    A rerun with the same clips, model and settings reuses the stored file."""
    from feda2v.extraction import extract_client

    cfg = config_mod.loads(config_json)
    if not 0 <= client_id < config_mod.num_clients(cfg):
        raise ValueError(f"client {client_id} does not exist: the config has "
                         f"{config_mod.num_clients(cfg)} clients")
    return extract_client(cfg, client_id, out_uri or embeddings_uri(cfg, client_id))


# --- federated rounds ---------------------------------------------------------------------------

def _load_targets(uri: str) -> tuple[torch.Tensor, list[str]]:
    tensors, meta = storage.load_tensors(uri)
    return tensors["targets"], meta["class_names"]


def _save_adapter(uri: str, state: dict, meta: dict) -> None:
    storage.save_tensors(uri, state, meta)


def _load_adapter(uri: str) -> dict[str, torch.Tensor]:
    return storage.load_tensors(uri)[0]


def init_adapter(config_json: str, client_data_uris: list[str], targets_uri: str,
                 out_uri: str) -> dict:
    """The server's initial global adapter; dims come from the embeddings and targets."""
    from feda2v.federated.task import new_adapter

    cfg = config_mod.loads(config_json)
    for i in range(config_mod.num_clients(cfg)):
        if client_uri(client_data_uris, i) != embeddings_uri(cfg, i):
            raise ValueError(f"client {i}: embeddings at {client_uri(client_data_uris, i)}, but "
                             f"the rounds read {embeddings_uri(cfg, i)}")
    torch.manual_seed(cfg["seed"])
    x = storage.load_tensors(client_uri(client_data_uris, 0))[0]["train_x"]
    targets, _ = _load_targets(targets_uri)
    adapter = new_adapter(cfg, x.shape[2], targets.shape[1])
    _save_adapter(out_uri, adapter.state_dict(), {"round": 0})
    n = sum(p.numel() for p in adapter.parameters())
    log.info("[Server] Initialised global adapter %d -> %d (%d parameters)", x.shape[2],
             targets.shape[1], n)
    return {"audio_dim": x.shape[2], "clip_dim": targets.shape[1], "parameters": n}


def client_round(config_json: str, client_id: int, round_num: int, phase: str,
                 global_adapter_uri: str, targets_uri: str, update_uri: str,
                 data_uri: str = "") -> dict:
    """One client's round; writes its update (adapter, sample count, metrics, synthetic set).
    The client's embeddings are `data_uri`, by default its file under the storage root."""
    from feda2v.federated.client import ClientData, run_round

    cfg = config_mod.loads(config_json)
    log.info("=== Round %d (%s) — Client %d ===", round_num, phase, client_id)
    tensors, _ = storage.load_tensors(data_uri or embeddings_uri(cfg, client_id))
    data = ClientData(tensors["train_x"].float(), tensors["train_y"], tensors["test_x"].float(),
                      tensors["test_y"])
    targets, names = _load_targets(targets_uri)
    update = run_round(cfg, client_id, round_num, phase, _load_adapter(global_adapter_uri), data,
                       targets, names, checkpoint_dir(cfg), round_key=global_adapter_uri)
    out = {f"adapter.{k}": v for k, v in update.adapter_state.items()}
    out["synthetic_x"], out["synthetic_y"] = update.synthetic_x, update.synthetic_y
    storage.save_tensors(update_uri, out, {"client_id": client_id, "round": round_num,
                                           "num_samples": update.num_samples,
                                           "metrics": update.metrics, "quality": update.quality})
    return {"client_id": client_id, "num_samples": update.num_samples, **update.metrics}


def aggregate(config_json: str, round_num: int, step: int, update_uris: list[str],
              targets_uri: str, adapter_out_uri: str, synthetic_out_uri: str,
              mlflow_run_id: str) -> dict:
    """Weighted FedAvg of client adapters + pooled synthetic samples; logs client metrics."""
    from feda2v.federated.server import fedavg, pool_synthetic

    cfg = config_mod.loads(config_json)
    _, names = _load_targets(targets_uri)
    updates = sorted((storage.load_tensors(u) for u in update_uris),
                     key=lambda tm: tm[1]["client_id"])
    states = [{k[len("adapter."):]: v for k, v in t.items() if k.startswith("adapter.")}
              for t, _ in updates]
    weights = [m["num_samples"] for _, m in updates]
    log.info("[Server] Round %d: FedAvg of %d client adapters (weights %s)", round_num,
             len(states), weights)
    _save_adapter(adapter_out_uri, fedavg(states, weights), {"round": round_num})
    x, y, counts = pool_synthetic([(m["client_id"], t["synthetic_x"], t["synthetic_y"])
                                   for t, m in updates], names)
    quality = {m["client_id"]: m["quality"] for _, m in updates if m.get("quality")}
    storage.save_tensors(synthetic_out_uri, {"x": x, "y": y}, {"counts": counts,
                                                               "quality": quality})
    metrics = {}
    for _, m in updates:
        for key, value in m["metrics"].items():
            metrics[f"train/node_{m['client_id']}/{key}"] = value
    for client, per_class in quality.items():
        for group, entry in per_class.items():
            # MLflow metric names allow only a few punctuation marks; class names may have more.
            safe = re.sub(r"[^\w\-. /]", "_", group)
            prefix = f"quality/node_{client}" + ("" if group == "overall" else f"/{safe}")
            for key, value in entry.items():
                if value is not None and not key.startswith("n_"):
                    metrics[f"{prefix}/{key}"] = float(value)
    if counts:
        metrics["server/synthetic_samples_total"] = len(y)
        metrics["server/synthetic_samples_classes"] = len(counts)
    tracking.log_metrics(cfg, mlflow_run_id, metrics, step)
    return {"clients": len(states), "synthetic_samples": len(y), "synthetic_classes": len(counts)}


def _server_real_data(cfg: dict, class_names: list[str]):
    """The server's own real embeddings (x, y in this run's class order), or None."""
    uri = cfg["feda2v"]["server_real_data_uri"]
    if not uri:
        return None
    from feda2v.datasets import read_embeddings
    from feda2v.extraction import split_codes

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


def global_train(config_json: str, round_num: int, step: int, aggregated_uri: str,
                 previous_uri: str, synthetic_uri: str, targets_uri: str, out_uri: str,
                 mlflow_run_id: str, test_sets: list[tuple] | None = None) -> float:
    """Train the global adapter on the pooled synthetic samples (the seed's global training),
    mixed with the server's own real data when it has some; logs accuracy before and after."""
    from feda2v.federated.client import round_seed
    from feda2v.federated.server import mix_real, train_global
    from feda2v.federated.task import adapter_from_state, device_of

    cfg = config_mod.loads(config_json)
    f = cfg["feda2v"]
    start = aggregated_uri if f["global_model_train_from_nodes_adapters"] else previous_uri
    adapter = adapter_from_state(cfg, _load_adapter(start)).to(device_of(cfg))
    pool, _ = storage.load_tensors(synthetic_uri)
    if len(pool["y"]) == 0:
        raise ValueError(f"round {round_num}: global_model_train is on but no client sent "
                         "synthetic samples")
    targets, names = _load_targets(targets_uri)
    seed = round_seed(cfg["seed"], -1, step)
    x, y = mix_real(pool["x"].float(), pool["y"], _server_real_data(cfg, names),
                    f["global_model_train_real_ratio"], seed)
    test_sets = test_sets if test_sets is not None else _test_sets(cfg)
    before = _weighted_accuracy(adapter, targets, test_sets)[0]
    loss = train_global(adapter, x, y, targets, f["global_model_train_epochs"],
                        cfg["batch_size"], cfg["learning_rate"], seed)
    after = _weighted_accuracy(adapter, targets, test_sets)[0]
    log.info("[Server] Round %d: accuracy %.3f before global training, %.3f after", round_num,
             before, after)
    _save_adapter(out_uri, adapter.state_dict(), {"round": round_num, "global_trained": True})
    tracking.log_metrics(cfg, mlflow_run_id, {"server/global_train_loss": loss,
                                              "eval/accuracy_before_global_train": before,
                                              "eval/accuracy_after_global_train": after}, step)
    return loss


def _test_sets(cfg: dict, client_data_uris: list[str] | None = None) -> list[tuple]:
    """Every client's (test_x, test_y), read once per stage call."""
    sets = []
    for i in range(config_mod.num_clients(cfg)):
        uri = client_uri(client_data_uris, i) if client_data_uris else embeddings_uri(cfg, i)
        t, _ = storage.load_tensors(uri)
        sets.append((t["test_x"].float(), t["test_y"]))
    return sets


def _weighted_accuracy(adapter, targets: torch.Tensor, test_sets: list[tuple]) -> tuple[float, dict]:
    """Zero-shot accuracy on every client's test clips, averaged weighted by test size."""
    from feda2v.federated.task import zero_shot_accuracy

    per_client, correct, total = {}, 0.0, 0
    for i, (x, y) in enumerate(test_sets):
        per_client[i] = zero_shot_accuracy(adapter, x, y, targets)
        correct += per_client[i] * len(y)
        total += len(y)
    return correct / total, per_client


def evaluate(config_json: str, round_num: int, step: int, adapter_uri: str, targets_uri: str,
             mlflow_run_id: str, client_data_uris: list[str] | None = None,
             test_sets: list[tuple] | None = None) -> float:
    """Zero-shot accuracy over all classes on each client's test clips, weighted by test size.
    Client embeddings default to each client's file under the storage root."""
    from feda2v.federated.task import adapter_from_state, device_of

    cfg = config_mod.loads(config_json)
    adapter = adapter_from_state(cfg, _load_adapter(adapter_uri)).to(device_of(cfg))
    targets, _ = _load_targets(targets_uri)
    if test_sets is None:
        test_sets = _test_sets(cfg, client_data_uris)
    accuracy, per_client = _weighted_accuracy(adapter, targets, test_sets)
    metrics = {f"eval/node_{i}/accuracy": a for i, a in per_client.items()}
    metrics["eval/global_accuracy"] = accuracy
    log.info("[Server] Round %d: global zero-shot accuracy %.3f over %d classes (%s)", round_num,
             accuracy, len(targets),
             ", ".join(f"node {i}: {a:.3f}" for i, a in per_client.items()))
    tracking.log_metrics(cfg, mlflow_run_id, metrics, step)
    return accuracy


def server_round(config_json: str, round_num: int, step: int, phase: str, update_uris: list[str],
                 previous_uri: str, targets_uri: str, adapter_out_uri: str,
                 synthetic_out_uri: str, mlflow_run_id: str) -> dict:
    """The server's side of one round, as one task: aggregate, train the global adapter on the
    synthetic pool when the round calls for it (Run 2 with global_model_train), evaluate.
    Writes the round's global adapter to `adapter_out_uri`."""
    cfg = config_mod.loads(config_json)
    train = phase == "run2" and cfg["feda2v"]["global_model_train"]
    aggregated = adapter_out_uri + ".fedavg" if train else adapter_out_uri
    result = aggregate(config_json, round_num, step, update_uris, targets_uri, aggregated,
                       synthetic_out_uri, mlflow_run_id)
    test_sets = _test_sets(cfg)  # shared by the before/after and the round's evaluation
    if train:
        result["global_train_loss"] = global_train(config_json, round_num, step, aggregated,
                                                   previous_uri, synthetic_out_uri, targets_uri,
                                                   adapter_out_uri, mlflow_run_id, test_sets)
    result["accuracy"] = evaluate(config_json, round_num, step, adapter_out_uri, targets_uri,
                                  mlflow_run_id, test_sets=test_sets)
    return result


# --- tracking ----------------------------------------------------------------------------------

def start_tracking(config_json: str, mlflow_run_id: str, run_name: str, phases: str) -> str:
    """Use the given MLflow run (or create one) and log the resolved config as params."""
    cfg = config_mod.loads(config_json)
    run_id = mlflow_run_id or tracking.create_run(cfg, run_name)
    if tracking.run_info(cfg, run_id)[0]:
        # A run that already has params belongs to another pipeline run: MLflow refuses to
        # change them, and this run's steps would overlay its metrics.
        raise ValueError(f"MLflow run {run_id} already holds another run's params; pass an "
                         "empty mlflow_run_id (a new run) or one created for this pipeline run")
    tracking.log_params(cfg, run_id, {"feda2v.phases": phases})
    log.info("[Server] MLflow run %s at %s", run_id, tracking.redact(tracking.tracking_uri(cfg)))
    return run_id


def finish_tracking(config_json: str, mlflow_run_id: str, adapter_uri: str,
                    report_path: str) -> str:
    """Write the results table (Markdown), log it and the final adapter, close the run."""
    cfg = config_mod.loads(config_json)
    params, history = tracking.run_info(cfg, mlflow_run_id)
    rows = report.results_rows(report.parse_phases(params["feda2v.phases"]), history,
                               config_mod.num_clients(cfg))
    text = "# FedA2V results\n\n" + report.results_table(rows, markdown=True) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
    with open(report_path, "w") as f:
        f.write(text)
    with tempfile.TemporaryDirectory() as tmp:
        adapter_file = os.path.join(tmp, "global_adapter.safetensors")
        storage.write_bytes(adapter_file, storage.read_bytes(adapter_uri))
        tracking.log_artifact(cfg, mlflow_run_id, adapter_file, "model")
        report_file = os.path.join(tmp, "results.md")
        storage.write_bytes(report_file, text.encode())
        tracking.log_artifact(cfg, mlflow_run_id, report_file, "report")
    tracking.set_status(cfg, mlflow_run_id, "FINISHED")
    log.info("[Server] Results of %d rounds written to %s and logged to MLflow run %s",
             len(rows), report_path, mlflow_run_id)
    return text
