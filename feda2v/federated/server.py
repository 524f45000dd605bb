"""Server side: the strategy's aggregation (federated/strategy.py), synthetic-sample pooling,
global training on the pool, and the server's step of a round (all of them, then evaluation)."""

from __future__ import annotations

import re

import torch

from feda2v.federated import strategy
from feda2v.federated.adapter import Adapter
from feda2v.federated.task import adapter_from_state, device_of, train_adapter, zero_shot_accuracy
from feda2v.io import storage
from feda2v.io.config import Config
from feda2v.io.log import get_logger

log = get_logger()


def pool_synthetic(per_client: list[tuple[int, torch.Tensor, torch.Tensor]],
                   class_names: list[str]) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """Concatenate (client_id, x, y) synthetic sets; returns x, y and per-class counts."""
    xs, ys = [], []
    for client_id, x, y in per_client:
        if len(y):
            log.info("[Server] Collected %d synthetic sample sets from Client %d",
                     len(torch.unique(y)), client_id)
            xs.append(x)
            ys.append(y)
    if not xs:
        return torch.empty(0), torch.empty(0, dtype=torch.long), {}
    log.info("[Server] Aggregating synthetic samples from %d clients", len(xs))
    x, y = torch.cat(xs), torch.cat(ys)
    counts = {class_names[c]: int((y == c).sum()) for c in torch.unique(y)}
    log.info("[Server] Aggregated %d synthetic samples across %d classes", len(y), len(counts))
    for name, n in counts.items():
        log.info("  - %s: %d samples", name, n)
    return x, y, counts


def mix_real(syn_x: torch.Tensor, syn_y: torch.Tensor, real, ratio: float,
             seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The server's training set: all synthetic samples plus, when the server has real data,
    ratio / (1 - ratio) x as many real samples drawn with replacement (ratio = real share)."""
    if real is None or ratio == 0:
        return syn_x, syn_y
    real_x, real_y = real
    n_real = round(ratio / (1 - ratio) * len(syn_y))
    pick = torch.randint(len(real_y), (n_real,), generator=torch.Generator().manual_seed(seed))
    log.info("[Server] Mixing %d real samples with %d synthetic samples (real share %.2f)",
             n_real, len(syn_y), ratio)
    return torch.cat([syn_x, real_x[pick]]), torch.cat([syn_y, real_y[pick]])


def train_global(adapter: Adapter, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor,
                 epochs: int, batch_size: int, lr: float, seed: int) -> float:
    """Train the global adapter on the pooled synthetic samples: they drive the gradient."""
    log.info("[Server] Training global adapter on %d synthetic samples for %d epochs",
             len(x), epochs)
    loss = train_adapter(adapter, x, y, targets, epochs, batch_size, lr, seed)
    log.info("[Server] Global training loss: %.4f", loss)
    return loss


def weighted_accuracy(adapter: Adapter, targets: torch.Tensor,
                      test_sets: list[tuple]) -> tuple[float, dict[int, float]]:
    """Zero-shot accuracy on every client's test clips, averaged weighted by test size."""
    per_client, correct, total = {}, 0.0, 0
    for i, (x, y) in enumerate(test_sets):
        per_client[i] = zero_shot_accuracy(adapter, x, y, targets)
        correct += per_client[i] * len(y)
        total += len(y)
    return correct / total, per_client


def update_metrics(updates: list, counts: dict[str, int], n_synthetic: int) -> dict[str, float]:
    """The seed's per-node training metrics, the clients' quality numbers, the pool's size."""
    metrics = {}
    for u in updates:
        for key, value in u.metrics.items():
            metrics[f"train/node_{u.client_id}/{key}"] = value
        for group, entry in (u.quality or {}).items():
            # MLflow metric names allow only a few punctuation marks; class names may have more.
            safe = re.sub(r"[^\w\-. /]", "_", group)
            prefix = f"quality/node_{u.client_id}" + ("" if group == "overall" else f"/{safe}")
            for key, value in entry.items():
                if key == "flags":  # 0 = healthy, else the number of verdicts
                    if value is not None:
                        metrics[f"{prefix}/flags"] = float(len(value))
                elif value is not None and not key.startswith("n_"):
                    metrics[f"{prefix}/{key}"] = float(value)
    if counts:
        metrics["server/synthetic_samples_total"] = n_synthetic
        metrics["server/synthetic_samples_classes"] = len(counts)
    return metrics


def server_step(cfg: Config, round_num: int, step: int, phase: str, updates: list,
                previous: dict[str, torch.Tensor], targets: torch.Tensor, class_names: list[str],
                test_sets: list[tuple], server_real=None, opt_state: dict | None = None):
    """Aggregate the round's client updates (sorted by client) with the configured strategy,
    train the global adapter on the synthetic pool when the round calls for it, evaluate.
    `opt_state` is the strategy's state after the phase's previous round. Returns (state,
    metrics, accuracy, the strategy's state after this round)."""
    from feda2v.federated.client import round_seed

    f = cfg.feda2v
    updates = sorted(updates, key=lambda u: u.client_id)
    left_out = [u.client_id for u in updates if not u.sampled]
    if left_out:
        log.info("[Server] Round %d: clients %s were not sampled (client_fraction %.2f)",
                 round_num, left_out, cfg.client_fraction)
        updates = [u for u in updates if u.sampled]
    for u in updates:  # one poisoned update would poison the average
        storage.require_finite({**u.adapter_state, "synthetic_x": u.synthetic_x},
                               f"round {round_num}: client {u.client_id}'s update")
    weights = [u.num_samples for u in updates]
    log.info("[Server] Round %d: %s of %d client adapters (weights %s)", round_num,
             strategy.NAMES[cfg.strategy], len(updates), weights)
    state, opt_state = strategy.aggregate(cfg, previous, [u.adapter_state for u in updates],
                                          weights, round_num, opt_state)
    x, y, counts = pool_synthetic([(u.client_id, u.synthetic_x, u.synthetic_y) for u in updates],
                                  class_names)
    metrics = update_metrics(updates, counts, len(y))
    dev = device_of(cfg)
    # sample (the data-free ablation) trains the server's own adapter, never the client average.
    train = phase == "sample" or (phase == "run2" and f.global_model_train)
    from_nodes = phase != "sample" and f.global_model_train_from_nodes_adapters
    if train:
        if len(y) == 0:
            raise ValueError(f"round {round_num}: global_model_train is on but no client sent "
                             "synthetic samples")
        start = state if from_nodes else previous
        adapter = adapter_from_state(cfg, start).to(dev)
        seed = round_seed(cfg.seed, -1, step)
        tx, ty = mix_real(x.float(), y, server_real, f.global_model_train_real_ratio, seed)
        before = weighted_accuracy(adapter, targets, test_sets)[0]
        loss = train_global(adapter, tx, ty, targets.to(dev), f.global_model_train_epochs,
                            cfg.batch_size, cfg.learning_rate, seed)
        after = weighted_accuracy(adapter, targets, test_sets)[0]
        log.info("[Server] Round %d: accuracy %.3f before global training, %.3f after",
                 round_num, before, after)
        metrics.update({"server/global_train_loss": loss,
                        "eval/accuracy_before_global_train": before,
                        "eval/accuracy_after_global_train": after})
        trained = {k: v.detach().cpu() for k, v in adapter.state_dict().items()}
        mix = f.global_model_train_mix if phase == "run2" else 1.0
        state = {k: (start[k].float() + mix * (v.float() - start[k].float())).to(v.dtype)
                 for k, v in trained.items()}
        if mix != 1.0:
            log.info("[Server] Round %d: kept %.2f of the global training step", round_num, mix)
    adapter = adapter_from_state(cfg, state).to(dev)
    accuracy, per_client = weighted_accuracy(adapter, targets, test_sets)
    metrics.update({f"eval/node_{i}/accuracy": a for i, a in per_client.items()})
    metrics["eval/global_accuracy"] = accuracy
    log.info("[Server] Round %d: global zero-shot accuracy %.3f over %d classes (%s)", round_num,
             accuracy, len(targets), ", ".join(f"node {i}: {a:.3f}" for i, a in per_client.items()))
    return state, metrics, accuracy, opt_state
