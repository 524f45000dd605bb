"""The learning task shared by clients and server: adapter training and zero-shot evaluation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from feda2v.federated.adapter import Adapter
from feda2v.io.config import Config


def device_of(cfg: Config) -> torch.device:
    """The training device (models.device); tensors follow the model onto it."""
    from feda2v.encoders.embed import pick_device

    return pick_device(cfg.models.device)


def new_adapter(cfg: Config, audio_dim: int, clip_dim: int) -> Adapter:
    f = cfg.feda2v
    return Adapter(audio_dim, clip_dim, tuple(f.adapter_hidden_dims), f.adapter_heads)


def adapter_from_state(cfg: Config, state: dict[str, torch.Tensor]) -> Adapter:
    """Rebuild an adapter from its state dict; dims come from the weights themselves."""
    audio_dim = state["mlp.0.weight"].shape[1]
    clip_dim = state["query"].shape[-1]
    adapter = new_adapter(cfg, audio_dim, clip_dim)
    adapter.load_state_dict(state)
    return adapter


def train_adapter(adapter: Adapter, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor,
                  epochs: int, batch_size: int, lr: float, seed: int,
                  proximal_mu: float = 0.0) -> float:
    """MSE between adapter(x) and the class target of y; returns the last epoch's mean MSE.
    proximal_mu > 0 adds FedProx's mu/2 |w - w_start|^2, w_start the weights it started from."""
    if len(x) == 0:
        raise ValueError("cannot train an adapter on zero samples")
    gen = torch.Generator().manual_seed(seed)
    dev = next(adapter.parameters()).device
    x, y, targets = x.to(dev), y.to(dev), targets.to(dev)
    opt = torch.optim.AdamW(adapter.parameters(), lr=lr)
    anchor = [p.detach().clone() for p in adapter.parameters()] if proximal_mu > 0 else []
    adapter.train()
    epoch_loss = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            loss = F.mse_loss(adapter(x[idx]), targets[y[idx]])
            objective = loss
            if anchor:
                objective = loss + proximal_mu / 2 * sum(
                    (p - a).pow(2).sum() for p, a in zip(adapter.parameters(), anchor))
            opt.zero_grad()
            objective.backward()
            opt.step()
            total += loss.item() * len(idx)
        epoch_loss = total / len(x)
    adapter.eval()
    return epoch_loss


@torch.no_grad()
def adapter_outputs(adapter: Adapter, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    adapter.eval()
    dev = next(adapter.parameters()).device
    return torch.cat([adapter(x[i:i + batch_size].to(dev)) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def zero_shot_predictions(adapter: Adapter, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The class whose target is nearest by cosine to adapter(x), per row."""
    out = F.normalize(adapter_outputs(adapter, x), dim=-1)
    return (out @ F.normalize(targets.to(out.device), dim=-1).T).argmax(dim=1)


def zero_shot_accuracy(adapter: Adapter, x: torch.Tensor, y: torch.Tensor,
                       targets: torch.Tensor) -> float:
    """Zero-shot predictions compared with y."""
    if len(x) == 0:
        raise ValueError("cannot evaluate on zero samples")
    return (zero_shot_predictions(adapter, x, targets).cpu() == y.cpu()).float().mean().item()
