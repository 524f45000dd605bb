"""One client's round: adapter on real data; Run 1 trains the generator, Run 2 samples from it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from feda2v.federated import generator
from feda2v.federated.task import adapter_from_state, adapter_outputs, device_of, train_adapter
from feda2v.log import get_logger

log = get_logger()

# fedavg: adapter only; run1: + generator training; run2: + synthetic samples from the
# checkpoint; sample: synthetic samples only (the data-free ablation: no real-data training).
PHASES = ("fedavg", "run1", "run2", "sample")


@dataclass
class ClientData:
    train_x: torch.Tensor   # [N, S, D_audio]
    train_y: torch.Tensor   # [N] indices into the global class list
    test_x: torch.Tensor
    test_y: torch.Tensor


@dataclass
class ClientUpdate:
    adapter_state: dict[str, torch.Tensor]
    num_samples: int
    metrics: dict[str, float]
    synthetic_x: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    synthetic_y: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    quality: dict = field(default_factory=dict)  # per class + overall, see feda2v.metrics


def round_seed(seed: int, client_id: int, round_num: int) -> int:
    return seed * 1_000_003 + client_id * 1_009 + round_num


def class_means(outputs: torch.Tensor, y: torch.Tensor, class_names: list[str],
                client_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean adapter output of each class present on the client: (class ids, [C_local, D])."""
    log.info("Node %d - Computing mean adapter outputs per class from training data", client_id)
    ids = torch.unique(y)
    means = []
    for c in ids:
        mask = y == c
        means.append(outputs[mask].mean(0))
        log.info("  - Class '%s' clip: mean from %d samples", class_names[c], int(mask.sum()))
    return ids, torch.stack(means)


def run_round(cfg: dict, client_id: int, round_num: int, phase: str,
              global_state: dict[str, torch.Tensor], data: ClientData, targets: torch.Tensor,
              class_names: list[str], checkpoint_dir: str, round_key: str = "") -> ClientUpdate:
    """`round_num` counts this pipeline's rounds from 1; `phase` is one of PHASES. `round_key`
    names this (pipeline run, round) — the global adapter's URI — so that a retried task whose
    first try already saved the generator reuses it instead of training a round twice."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    seed = round_seed(cfg["seed"], client_id, round_num)
    torch.manual_seed(seed)
    dev = device_of(cfg)
    adapter = adapter_from_state(cfg, global_state).to(dev)
    data = ClientData(data.train_x.to(dev), data.train_y.to(dev), data.test_x.to(dev),
                      data.test_y.to(dev))
    targets = targets.to(dev)
    vae = None
    if phase in ("run2", "sample"):
        vae, ckpt = _load_pretrained(cfg, client_id, checkpoint_dir, data, targets)
    metrics = {}
    if phase != "sample":
        if vae is not None:
            log.info("Node %d - Training adapters on real data...", client_id)
        metrics["adapter_loss"] = train_adapter(adapter, data.train_x, data.train_y, targets,
                                                cfg["local_epochs"], cfg["batch_size"],
                                                cfg["learning_rate"], seed)
    update = ClientUpdate({k: v.detach().cpu().clone() for k, v in adapter.state_dict().items()},
                          len(data.train_x), metrics)
    if phase == "run1":
        update.metrics["generator_loss"] = _train_generator(
            cfg, client_id, round_num, adapter, data, class_names, checkpoint_dir, seed, round_key)
    elif vae is not None:
        update.synthetic_x, update.synthetic_y = _synthesise(cfg, client_id, vae, ckpt,
                                                            class_names, seed)
        # Measured on the client, against its own data: only the numbers leave it. Once, in
        # the last round of Run 2 (the Fréchet distances are the expensive part).
        if cfg["feda2v"]["quality_metrics"] and round_num == cfg["global_rounds"]:
            update.quality = _quality(vae, ckpt, data, class_names, client_id, seed)
        if cfg["feda2v"]["optimize_memory_usage"]:
            del vae
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return update


def _quality(vae, ckpt: dict, data: ClientData, class_names: list[str], client_id: int,
             seed: int) -> dict:
    """Quality of the generator, measured as Naeem et al. do: with as many synthetic samples
    per class as the client has real ones (coverage grows with the sample count, so the few
    samples sent to the server would understate it)."""
    from feda2v.metrics import quality_report

    n = max(int(torch.bincount(data.train_y).max()), 2)
    ids = torch.tensor([class_names.index(c) for c in ckpt["class_names"]])
    conditions = ckpt["class_conditions"].to(data_device(vae))
    samples = generator.sample_per_class(vae, conditions, n, seed + 1).cpu()
    # The metrics run on the CPU (scipy's matrix square root).
    report = quality_report(samples.reshape(-1, *samples.shape[2:]), ids.repeat_interleave(n),
                            data.train_x.cpu(), data.train_y.cpu(), data.test_x.cpu(),
                            data.test_y.cpu(), class_names, seed=seed)
    o = report["overall"]
    log.info("[Client %d] Synthetic quality: cosine to class mean %.3f (%s), coverage %s, "
             "memorisation ratio %s", client_id, o["cosine_to_real_mean"],
             "healthy" if o["cosine_healthy"] else "below 0.7",
             "-" if o["coverage"] is None else f"{o['coverage']:.2f}",
             "-" if o["memorisation_ratio"] is None else f"{o['memorisation_ratio']:.2f}")
    return report


def _expected_dims(cfg: dict, data: ClientData, cond_dim: int) -> dict[str, int]:
    f = cfg["feda2v"]
    return {"seq_len": data.train_x.shape[1], "audio_dim": data.train_x.shape[2],
            "cond_dim": cond_dim, "hidden_dim": f["generator_hidden_dim"],
            "latent_dim": f["generator_latent_dim"]}


def _train_generator(cfg, client_id, round_num, adapter, data, class_names, checkpoint_dir,
                     seed, round_key="") -> float:
    f = cfg["feda2v"]
    latest = generator.checkpoint_uri(checkpoint_dir, client_id)
    # Read once: both the retry check and the resume below need it.
    existing = (generator.storage.load_checkpoint(latest)
                if generator.storage.exists(latest) else None)
    if round_key and existing is not None and existing.get("round_key") == round_key:
        log.info("[Client %d] Generator already trained in this round (a retried task): "
                 "keeping checkpoint round %d", client_id, existing["round"])
        return float(existing["generator_loss"])
    ids, means = class_means(adapter_outputs(adapter, data.train_x), data.train_y, class_names,
                             client_id)
    # Round 1 starts a fresh generator unless resuming (both mode flags); later rounds continue
    # from the checkpoint the previous round wrote: tasks share no memory, only storage.
    resume = round_num > 1 or f["use_pretrained_generators"]
    dims = _expected_dims(cfg, data, means.shape[1])
    log.info("[Client %d] Initializing %s generator", client_id, f["generator_type"])
    dev = data.train_x.device
    if resume and existing is not None:
        vae, opt, ckpt = generator.load(latest, cfg, dims, dev, ckpt=existing)
        done = int(ckpt["round"])
        log.info("[Client %d] Resuming %s generator from round %d", client_id,
                 f["generator_type"].upper(), done)
    else:
        if round_num > 1:
            raise FileNotFoundError(f"[Client {client_id}] generator checkpoint of the previous "
                                    f"round is missing: {latest}")
        vae = generator.new_generator(cfg, dims["seq_len"], dims["audio_dim"],
                                      dims["cond_dim"]).to(dev)
        vae.fit_standardisation(data.train_x)
        opt = generator.new_optimizer(cfg, vae)
        done = 0
    log.info("[Client %d] Generator initialized successfully", client_id)
    log.info("[Client %d] Starting generator training mode", client_id)
    # Condition of each sample: the mean adapter output of its class (what sampling will use).
    lookup = {int(c): i for i, c in enumerate(ids)}
    cond = means[torch.tensor([lookup[int(c)] for c in data.train_y])]
    loss = generator.train_generator(cfg, vae, opt, data.train_x, cond, client_id, seed)
    this_round = done + 1
    names = [class_names[c] for c in ids]
    uris = [latest]
    if this_round % f["generator_save_every"] == 0:
        uris.insert(0, generator.checkpoint_uri(checkpoint_dir, client_id, this_round))
    for uri in uris:
        generator.save(uri, cfg, vae, opt, client_id, this_round, names, means,
                       {"round_key": round_key, "generator_loss": loss})
        log.info("[Client %d] Saved generator checkpoint to %s", client_id, uri)
    return loss


def _load_pretrained(cfg, client_id, checkpoint_dir, data, targets):
    f = cfg["feda2v"]
    uri = generator.checkpoint_uri(checkpoint_dir, client_id)
    log.info("[Client %d] Initializing %s generator", client_id, f["generator_type"])
    if not generator.storage.exists(uri):
        log.warning("[Client %d] Warning: Generator checkpoint not found at %s", client_id, uri)
        if f["generator_missing_checkpoint"] == "real_only":
            log.info("[Client %d] Training on real data only this round (no synthetic samples)",
                     client_id)
            return None, None
        raise FileNotFoundError(f"[Client {client_id}] Generator checkpoint not found at {uri}; "
                                "run Run 1 (generator_training_mode) with the same "
                                "generator_checkpoint_dir first, or set "
                                "feda2v.generator_missing_checkpoint to real_only")
    vae, _, ckpt = generator.load(uri, cfg, _expected_dims(cfg, data, targets.shape[1]),
                                  data.train_x.device)
    log.info("[Client %d] Loaded %s generator from round %d", client_id,
             f["generator_type"].upper(), ckpt["round"])
    log.info("[Client %d] Generator checkpoint loaded successfully", client_id)
    return vae, ckpt


def data_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _synthesise(cfg, client_id, vae, ckpt, class_names, seed):
    k = cfg["feda2v"]["synthetic_samples_per_class"]
    names = ckpt["class_names"]
    unknown = [n for n in names if n not in class_names]
    if unknown:
        raise ValueError(f"[Client {client_id}] checkpoint classes {unknown} are not in this "
                         "run's data.clients")
    conditions = ckpt["class_conditions"].to(data_device(vae))
    samples = generator.sample_per_class(vae, conditions, k, seed).cpu()  # [C, K, S, D]
    log.info("[Client %d] Generated %d synthetic sample sets", client_id, len(names))
    for name, s in zip(names, samples):
        log.info("  - %s: synthetic samples %s", name, tuple(s.shape))
    ids = torch.tensor([class_names.index(n) for n in names]).repeat_interleave(k)
    return samples.reshape(-1, *samples.shape[2:]), ids
