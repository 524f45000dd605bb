"""Differentially private generator training: DP-SGD (Abadi et al. 2016) through Opacus.

With feda2v.generator_dp_epsilon = ε > 0, each client trains its VAE (generators/vae.py) with per-sample gradient
clipping (generator_dp_max_grad_norm) and Gaussian noise, on Poisson-sampled batches; the noise
multiplier is chosen once so that all of Run 1's generator steps together spend (ε, δ) under
Rényi-DP accounting. The accountant's history travels in the checkpoint (`dp`), so a retried
task goes on counting where it stopped.

What the guarantee covers: the generator's weights, hence every sample drawn from them. Not
covered: the per-dimension mean/std the VAE standardises with and the class conditions (mean
adapter outputs per class), which are computed without noise.
"""

from __future__ import annotations

import math

import torch

from feda2v.io.config import Config
from feda2v.io.log import get_logger

log = get_logger()


def plan(cfg: Config, rows: int, rounds: int) -> dict:
    """The DP state before the first step: noise multiplier for the whole of Run 1."""
    from opacus.accountants.utils import get_noise_multiplier

    f = cfg.feda2v
    rate = min(1.0, f.generator_batch_size / rows)
    steps = rounds * f.generator_training_epochs * math.ceil(1 / rate)
    sigma = get_noise_multiplier(target_epsilon=f.generator_dp_epsilon,
                                 target_delta=f.generator_dp_delta, sample_rate=rate,
                                 steps=steps, accountant="rdp")
    return {"noise_multiplier": float(sigma), "sample_rate": rate, "history": [],
            "delta": f.generator_dp_delta, "target_epsilon": f.generator_dp_epsilon}


def epsilon(state: dict) -> float:
    """ε spent so far (at the state's δ)."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [tuple(h) for h in state["history"]]
    return float(accountant.get_epsilon(state["delta"])) if state["history"] else 0.0


def train(cfg: Config, module: torch.nn.Module, opt, rows: int, device: torch.device,
          client_id: int, seed: int, state: dict, gen: torch.Generator, batch_loss) -> list[float]:
    """One round's epochs of DP-SGD on `module` over `rows` training rows; `state` (see `plan`)
    is updated in place. `batch_loss(model, idx, epoch)` is the loss of the batch of row
    indices `idx`, `model` being the module's per-sample-gradient wrapper; `gen` draws the
    Poisson batches. Returns the mean loss of each epoch."""
    from opacus import GradSampleModule
    from opacus.accountants import RDPAccountant
    from opacus.optimizers import DPOptimizer

    f = cfg.feda2v
    epochs = f.generator_training_epochs
    rate, sigma = state["sample_rate"], state["noise_multiplier"]
    model = GradSampleModule(module)
    dp_opt = DPOptimizer(opt, noise_multiplier=sigma, max_grad_norm=f.generator_dp_max_grad_norm,
                         expected_batch_size=max(1, round(rate * rows)),
                         generator=torch.Generator(device=device).manual_seed(seed + 1))
    accountant = RDPAccountant()
    accountant.history = [tuple(h) for h in state["history"]]
    losses = []
    model.train()
    try:
        for epoch in range(epochs):
            total, seen = 0.0, 0
            for _ in range(math.ceil(1 / rate)):
                idx = (torch.rand(rows, generator=gen) < rate).nonzero().flatten().to(device)
                accountant.step(noise_multiplier=sigma, sample_rate=rate)
                if len(idx) == 0:  # about exp(-batch size): nothing to release
                    continue
                loss = batch_loss(model, idx, epoch)
                dp_opt.zero_grad()
                loss.backward()
                dp_opt.step()
                total += loss.item() * len(idx)
                seen += len(idx)
            losses.append(total / max(seen, 1))
    finally:
        model._close()  # the hooks go; `module` is the plain module again
        module.eval()
    state["history"] = [list(h) for h in accountant.history]
    log.info("[Client %d] DP-SGD: noise multiplier %.3f, sample rate %.3f, ε spent %.2f of %.2f "
             "(δ %.0e)", client_id, sigma, rate, epsilon(state), state["target_epsilon"],
             state["delta"])
    return losses
