"""Server strategies: how a round's client adapters become the next global adapter.

fedavg and fedprox average the clients' weights by their training rows (FedProx differs on the
clients: a proximal term, see task.train_adapter). fedavgm, fedadam and fedyogi treat the
average's distance from the previous global adapter as a pseudo-gradient and step a server
optimizer on it (Hsu et al. 2019; Reddi et al. 2021, "Adaptive Federated Optimization"), with
the update rules of Flower's FedAvgM, FedAdam and FedYogi, so that the same client updates give
the same global weights (tests/test_strategies.py checks it against flwr).

The optimizer's state (momentum, moments) is a flat dict of tensors the round loop stores beside
each round's adapter, so a retried task resumes it as it resumes the adapter.
"""

from __future__ import annotations

import math

import torch

from feda2v.io.config import Config, num_clients

STATEFUL = ("fedavgm", "fedadam", "fedyogi")
NAMES = {"fedavg": "FedAvg", "fedprox": "FedAvg", "fedavgm": "FedAvgM", "fedadam": "FedAdam",
         "fedyogi": "FedYogi"}  # as the log says it (FedProx averages as FedAvg does)
# server_learning_rate 0 picks these: FedAvgM's plain step (Flower's default), and for the
# adaptive ones a step near the clients' own Adam learning rate scale (Flower defaults to 0.1
# for FedAdam, sized for whole CNNs; the adapters' weights move about 1e-2 per round).
DEFAULT_SERVER_LR = {"fedavgm": 1.0, "fedadam": 1e-2, "fedyogi": 1e-2}


def weighted_average(states: list[dict[str, torch.Tensor]],
                     weights: list[int]) -> dict[str, torch.Tensor]:
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


def server_lr(cfg: Config) -> float:
    return cfg.server_learning_rate or DEFAULT_SERVER_LR.get(cfg.strategy, 1.0)


def aggregate(cfg: Config, previous: dict[str, torch.Tensor],
              states: list[dict[str, torch.Tensor]], weights: list[int], round_num: int,
              opt_state: dict[str, torch.Tensor] | None = None
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The next global adapter from the round's client `states` (round_num counts the phase's
    rounds from 1), and the server optimizer's state after the step ({} for fedavg/fedprox)."""
    average = weighted_average(states, weights)
    if cfg.strategy not in STATEFUL:
        return average, {}
    opt_state = dict(opt_state or {})
    lr, new = server_lr(cfg), {}
    for k, avg in average.items():
        x = previous[k].double()
        delta = avg.double() - x  # the pseudo-gradient's negative
        if cfg.strategy == "fedavgm":
            # Flower: momentum = mu * momentum + (x - avg), from round 2 on; x -= lr * momentum.
            grad = -delta
            if f"momentum.{k}" in opt_state and round_num > 1:
                grad = cfg.server_momentum * opt_state[f"momentum.{k}"].double() + grad
            if cfg.server_momentum > 0:
                opt_state[f"momentum.{k}"] = grad.float()
            step = -lr * grad
        else:
            b1, b2 = cfg.server_beta_1, cfg.server_beta_2
            m = opt_state.get(f"m.{k}", torch.zeros_like(avg)).double()
            v = opt_state.get(f"v.{k}", torch.zeros_like(avg)).double()
            m = b1 * m + (1 - b1) * delta
            if cfg.strategy == "fedadam":
                v = b2 * v + (1 - b2) * delta * delta
                # Bias-corrected as Flower does it, counting t from round + 1.
                eta = lr * math.sqrt(1 - b2 ** (round_num + 1)) / (1 - b1 ** (round_num + 1))
            else:  # fedyogi: v moves towards delta² by at most (1 - b2) delta² per round
                v = v - (1 - b2) * delta * delta * torch.sign(v - delta * delta)
                eta = lr
            opt_state[f"m.{k}"], opt_state[f"v.{k}"] = m.float(), v.float()
            step = eta * m / (v.sqrt() + cfg.server_tau)
        new[k] = (x + step).to(avg.dtype)
    return new, opt_state


def sampled_clients(cfg: Config, phase: str, round_num: int) -> list[int]:
    """The clients that train in this round of the phase: int(client_fraction x clients) of
    them, drawn from the seed, the phase and the round, so that every execution draws the
    same ones; all of them at client_fraction 1."""
    n = num_clients(cfg)
    k = int(cfg.client_fraction * n)
    if k >= n:
        return list(range(n))
    phase_index = ("fedavg", "run1", "run2", "sample").index(phase)
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + phase_index * 100_003 + round_num)
    return sorted(torch.randperm(n, generator=g)[:k].tolist())


def proximal_mu(cfg: Config) -> float:
    """The clients' proximal weight: FedProx's mu, 0 (plain local training) otherwise."""
    return cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0
