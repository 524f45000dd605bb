"""One client's round: the adapter trained from the global one on the client's real data.

Run 1 also returns the round's class conditions (the mean adapter output of each local class),
which the client's generator trains on (see federated/generators/training.py); Run 2 attaches the round's
synthetic samples, drawn beforehand from the client's generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from feda2v.federated import strategy
from feda2v.federated.task import adapter_from_state, adapter_outputs, device_of, train_adapter
from feda2v.io.config import Config
from feda2v.io.log import get_logger

log = get_logger()

# fedavg: adapter only; run1: + class conditions for the generator; run2: + synthetic samples;
# sample: synthetic samples only (the data-free ablation: no real-data training).
PHASES = ("fedavg", "run1", "run2", "sample")


@dataclass
class ClientData:
    train_x: torch.Tensor   # [N, S, D_audio]
    train_y: torch.Tensor   # [N] indices into the global class list
    test_x: torch.Tensor
    test_y: torch.Tensor


@dataclass
class ClientUpdate:
    client_id: int
    adapter_state: dict[str, torch.Tensor]
    num_samples: int
    metrics: dict[str, float]
    synthetic_x: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    synthetic_y: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    quality: dict = field(default_factory=dict)  # per class + overall, see feda2v.evaluation.metrics
    condition_ids: torch.Tensor | None = None    # run1: class ids ...
    conditions: torch.Tensor | None = None       # ... and their mean adapter outputs [C, D]
    sampled: bool = True  # False: left out of the round (client_fraction); the server skips it


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


def client_step(cfg: Config, client_id: int, round_num: int, phase: str,
                global_state: dict[str, torch.Tensor], data: ClientData, targets: torch.Tensor,
                class_names: list[str], synthetic=None) -> ClientUpdate:
    """`round_num` counts the phase's rounds from 1. `synthetic` = (x, y, quality) of this round
    (run2/sample) or None. Seeds itself, so a round gives the same update in any process. A
    client left out of the round (client_fraction) trains nothing and its update is marked
    unsampled; in Run 1 it still computes its class conditions, for its own generator."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    seed = round_seed(cfg.seed, client_id, round_num)
    torch.manual_seed(seed)
    dev = device_of(cfg)
    adapter = adapter_from_state(cfg, global_state).to(dev)
    x, y = data.train_x.to(dev), data.train_y.to(dev)
    metrics = {}
    sampled = client_id in strategy.sampled_clients(cfg, phase, round_num)
    if not sampled:
        log.info("Node %d - not sampled in round %d (client_fraction %.2f): sends no update",
                 client_id, round_num, cfg.client_fraction)
    elif phase != "sample":
        if synthetic is not None:
            log.info("Node %d - Training adapters on real data...", client_id)
        metrics["adapter_loss"] = train_adapter(adapter, x, y, targets.to(dev), cfg.local_epochs,
                                                cfg.batch_size, cfg.learning_rate, seed,
                                                strategy.proximal_mu(cfg))
        if not math.isfinite(metrics["adapter_loss"]):
            raise ValueError(f"client {client_id}, round {round_num} ({phase}): the adapter's "
                             f"training loss is {metrics['adapter_loss']}; nothing is sent "
                             "(check the embeddings and learning_rate)")
    update = ClientUpdate(client_id,
                          {k: v.detach().cpu().clone() for k, v in adapter.state_dict().items()},
                          len(x), metrics, sampled=sampled)
    if phase == "run1":
        ids, means = class_means(adapter_outputs(adapter, x), y, class_names, client_id)
        update.condition_ids, update.conditions = ids.cpu(), means.cpu()
    if synthetic is not None and sampled:
        update.synthetic_x, update.synthetic_y, update.quality = synthetic
    return update
