"""Server side: weighted FedAvg, synthetic-sample pooling, global training on the pool."""

from __future__ import annotations

import torch

from feda2v.federated.task import train_adapter
from feda2v.log import get_logger
from feda2v.models import Adapter

log = get_logger()


def fedavg(states: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
    """Average state dicts weighted by each client's number of training samples."""
    if not states:
        raise ValueError("FedAvg needs at least one client update")
    if len(states) != len(weights) or any(w <= 0 for w in weights):
        raise ValueError(f"FedAvg needs one positive weight per update, got {weights}")
    total = float(sum(weights))
    keys = states[0].keys()
    for i, s in enumerate(states[1:], 1):
        if s.keys() != keys:
            raise ValueError(f"client update {i} has different parameters than update 0")
    return {k: sum(s[k].float() * (w / total) for s, w in zip(states, weights)).to(states[0][k].dtype)
            for k in keys}


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
