"""A client's generator (conditioned VAE or GAN): create, train, sample, and the seed's
checkpoint contract. Both kinds share the data side (standardisation, `sample`)."""

from __future__ import annotations

from typing import Any

import torch

from feda2v import storage
from feda2v.gan import ConditionedGAN, new_optimizers, train_gan
from feda2v.log import get_logger
from feda2v.models import ConditionedVAE, vae_loss, vae_schedule

log = get_logger()

# The seed's checkpoint field: the diffusion model whose pooled CLIP text space the adapter and
# the generator condition live in (Flux conditions on CLIP ViT-L/14 pooled text embeddings).
DIFFUSION_TYPE = "flux"
DIM_KEYS = ("seq_len", "audio_dim", "cond_dim", "hidden_dim", "latent_dim")


def checkpoint_uri(checkpoint_dir: str, client_id: int, round_num: int | None = None) -> str:
    """Seed names: client_{i}_generator.pt (latest), client_{i}_generator_round_{r}.pt."""
    name = (f"client_{client_id}_generator.pt" if round_num is None
            else f"client_{client_id}_generator_round_{round_num}.pt")
    return storage.join(checkpoint_dir, name)


class OptimizerPair:
    """The GAN's two optimizers behind the one-optimizer interface checkpoints use."""

    def __init__(self, opts: dict[str, torch.optim.Optimizer]):
        self.opts = opts

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.opts.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, opt in self.opts.items():
            opt.load_state_dict(state[name])


def _model_class(generator_type: str):
    return ConditionedGAN if generator_type == "gan" else ConditionedVAE


def new_generator(cfg: dict, seq_len: int, audio_dim: int, cond_dim: int):
    f = cfg["feda2v"]
    return _model_class(f["generator_type"])(seq_len, audio_dim, cond_dim,
                                             f["generator_hidden_dim"], f["generator_latent_dim"])


def new_optimizer(cfg: dict, model):
    lr = cfg["feda2v"]["generator_learning_rate"]
    if isinstance(model, ConditionedGAN):
        return OptimizerPair(new_optimizers(model, lr))
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-5)


def train_generator(cfg: dict, vae, opt, x: torch.Tensor, cond: torch.Tensor, client_id: int,
                    seed: int) -> float:
    """Train on real sequences x [N, S, D] with per-sample conditions cond [N, D_clip].

    Noise augmentation perturbs the input only; the reconstruction target stays clean.
    Returns the mean loss over all epochs (the seed's "Average loss").
    """
    f = cfg["feda2v"]
    epochs, bs = f["generator_training_epochs"], f["generator_batch_size"]
    noise = f["generator_augmentation_noise"] if f["generator_augmentation"] else 0.0
    gen = torch.Generator().manual_seed(seed)
    clean = vae.normalise(x)
    log.info("[Client %d] Training generator for %d epochs", client_id, epochs)
    if isinstance(vae, ConditionedGAN):
        def report(epoch, total, d_loss, g_loss):
            log.info("  [Client %d] Epoch %d/%d: Loss=%.4f (discriminator %.4f)", client_id,
                     epoch, total, g_loss, d_loss)

        losses = train_gan(vae, opt.opts, x, cond, epochs, bs, noise, seed, log=report)
        average = sum(losses) / len(losses)
        log.info("[Client %d] Generator training completed. Average loss: %.4f", client_id,
                 average)
        return average
    vae.train()
    losses = []
    for epoch in range(epochs):
        beta, w = vae_schedule(epoch, epochs)
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for start in range(0, len(x), bs):
            idx = order[start:start + bs]
            noisy = (x[idx] + noise * torch.randn(x[idx].shape, generator=gen).to(x.device)
                     if noise else x[idx])
            recon, mu, logvar = vae(vae.normalise(noisy), cond[idx])
            loss = vae_loss(recon, clean[idx], mu, logvar, beta, w)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 5.0)
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
        if (epoch + 1) % 2 == 0 or epoch + 1 == epochs:
            log.info("  [Client %d] Epoch %d/%d: Loss=%.4f", client_id, epoch + 1, epochs, losses[-1])
    vae.eval()
    average = sum(losses) / len(losses)
    log.info("[Client %d] Generator training completed. Average loss: %.4f", client_id, average)
    return average


def sample_per_class(vae, conditions: torch.Tensor, per_class: int,
                     seed: int) -> torch.Tensor:
    """[C, D_clip] conditions -> [C, per_class, S, D] samples, each class from its own condition."""
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([vae.sample(c.expand(per_class, -1), generator=gen) for c in conditions])


def save(uri: str, cfg: dict, vae, opt, client_id: int,
         round_num: int, class_names: list[str], conditions: torch.Tensor,
         extra: dict | None = None) -> None:
    storage.save_checkpoint(uri, {
        "client_id": client_id,
        "round": round_num,
        "generator_type": cfg["feda2v"]["generator_type"],
        "diffusion_type": DIFFUSION_TYPE,
        "generator_state_dict": vae.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "dims": {"seq_len": vae.seq_len, "audio_dim": vae.audio_dim,
                 "cond_dim": conditions.shape[1], "hidden_dim": cfg["feda2v"]["generator_hidden_dim"],
                 "latent_dim": vae.latent_dim},
        # The exact conditions used in training, so that sampling uses the same vectors.
        "class_names": list(class_names),
        "class_conditions": conditions.detach().cpu(),
        "config": dict(cfg["feda2v"]),
        **(extra or {}),
    })


def load(uri: str, cfg: dict, expect: dict[str, int], device: torch.device | None = None,
         ckpt: dict | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Load a checkpoint (or use `ckpt`, already read from `uri`) and refuse it when its type
    or dims disagree with this run."""
    ckpt = ckpt if ckpt is not None else storage.load_checkpoint(uri)
    want_type = cfg["feda2v"]["generator_type"]
    if ckpt.get("generator_type") != want_type:
        raise ValueError(f"{uri}: generator_type is {ckpt.get('generator_type')!r} in the "
                         f"checkpoint but {want_type!r} in the config")
    dims = ckpt["dims"]
    for key, value in expect.items():
        if dims.get(key) != value:
            raise ValueError(f"{uri}: {key} is {dims.get(key)} in the checkpoint but {value} "
                             "in this run")
    vae = _model_class(want_type)(*(dims[k] for k in DIM_KEYS))
    vae.load_state_dict(ckpt["generator_state_dict"])
    vae.to(device or torch.device("cpu"))  # before the optimizer, whose state follows the params
    opt = new_optimizer(cfg, vae)
    opt.load_state_dict(ckpt["optimizer_state_dict"])
    return vae, opt, ckpt
