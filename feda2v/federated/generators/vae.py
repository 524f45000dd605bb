"""The conditioned VAE (the seed's generator), readable top to bottom: an MLP over the
flattened token sequence [S*D] plus the class condition, LeakyReLU(0.2), Tanh output; its loss
(MSE + β·KL + w·(1 − cosine)); its training; and sampling from the latent posterior of a
class's rows (Posterior), which its encoder makes possible."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from feda2v.federated.generators.base import Generator
from feda2v.io.config import Config
from feda2v.io.log import get_logger, progress

log = get_logger()


class ConditionedVAE(Generator):
    name = "vae"
    sampling = "posterior"

    def __init__(self, seq_len: int, audio_dim: int, cond_dim: int, hidden_dim: int = 1024,
                 latent_dim: int = 256):
        super().__init__(seq_len, audio_dim, cond_dim, hidden_dim, latent_dim)
        flat = seq_len * audio_dim
        self.encoder = nn.Sequential(
            nn.Linear(flat + cond_dim, hidden_dim), nn.LeakyReLU(0.2),
            nn.Linear(hidden_dim, hidden_dim), nn.LeakyReLU(0.2),
        )
        self.to_mu = nn.Linear(hidden_dim, latent_dim)
        self.to_logvar = nn.Linear(hidden_dim, latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim + cond_dim, hidden_dim), nn.LeakyReLU(0.2),
            nn.Linear(hidden_dim, hidden_dim), nn.LeakyReLU(0.2),
            nn.Linear(hidden_dim, flat), nn.Tanh(),
        )

    def encode(self, x_norm: torch.Tensor, cond: torch.Tensor):
        """x_norm: [B, S*D] normalised input -> the posterior's (mu, logvar), each [B, L]."""
        h = self.encoder(torch.cat([x_norm, cond], dim=1))
        return self.to_mu(h), self.to_logvar(h).clamp(-10, 10)

    def decode(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """z: [B, L] -> [B, S, D_audio] sequences in embedding units."""
        return self.denormalise(self.decoder(torch.cat([z, cond], dim=1)))

    def forward(self, x_norm: torch.Tensor, cond: torch.Tensor):
        """x_norm: [B, S*D] normalised input -> (reconstruction, mu, logvar), all normalised."""
        mu, logvar = self.encode(x_norm, cond)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decoder(torch.cat([z, cond], dim=1)), mu, logvar

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        """cond: [N, D_clip] -> N synthetic sequences [N, S, D_audio] in embedding units; the
        prior's draws are scaled by `temperature`."""
        # Draw on the generator's own device (a CPU generator may serve a CUDA model).
        z = torch.randn(cond.shape[0], self.latent_dim, generator=generator,
                        device=generator.device if generator is not None else cond.device)
        return self.decode(z.to(cond.device) * temperature, cond)


    def new_optimizer(self, lr: float):
        return torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=1e-5)

    def fit(self, cfg: Config, opt, x: torch.Tensor, cond: torch.Tensor, client_id: int,
            seed: int) -> list[float]:
        """Input noise (generator_augmentation_noise) perturbs the input only; the
        reconstruction target stays clean. Under DP-SGD (a dp_state set from the checkpoint)
        the epochs run through Opacus instead (federated/dp.py)."""
        f = cfg.feda2v
        epochs, bs = f.generator_training_epochs, f.generator_batch_size
        noise = f.generator_augmentation_noise if f.generator_augmentation else 0.0
        gen = torch.Generator().manual_seed(seed)
        clean = self.normalise(x)
        if getattr(self, "dp_state", None) is not None:
            from feda2v.federated import dp

            def loss_of(model, idx, epoch):
                beta, w = vae_schedule(epoch, epochs, beta_max=f.generator_kl_weight)
                return batch_loss(model, self, x, cond, clean, idx, noise, gen, beta, w)

            return dp.train(cfg, self, opt, len(x), x.device, client_id, seed, self.dp_state,
                            gen, loss_of)
        self.train()
        losses = []
        tick = progress(epochs, f"[Client {client_id}] generator epochs", last_line=False)
        for epoch in range(epochs):
            beta, w = vae_schedule(epoch, epochs, beta_max=f.generator_kl_weight)
            order = torch.randperm(len(x), generator=gen)
            total = 0.0
            for start in range(0, len(x), bs):
                idx = order[start:start + bs]
                loss = batch_loss(self, self, x, cond, clean, idx, noise, gen, beta, w)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.parameters(), 5.0)
                opt.step()
                total += loss.item() * len(idx)
            losses.append(total / len(x))
            if (epoch + 1) % 2 == 0 or epoch + 1 == epochs:
                log.info("  [Client %d] Epoch %d/%d: Loss=%.4f", client_id, epoch + 1, epochs,
                         losses[-1])
            tick(note=f"loss {losses[-1]:.4f}")
        self.eval()
        return losses


def vae_schedule(epoch: int, epochs: int, beta_max: float = 0.01, w_start: float = 0.1,
                 w_end: float = 0.01) -> tuple[float, float]:
    """(beta, cosine weight) at 0-based `epoch`: beta ramps linearly to beta_max over the first
    half of the epochs; the cosine weight decays linearly from w_start to w_end."""
    warm = max(1, epochs // 2)
    beta = beta_max * min(1.0, (epoch + 1) / warm)
    w = w_start + (w_end - w_start) * (epoch / max(1, epochs - 1))
    return beta, w


def vae_loss(recon: torch.Tensor, clean: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             beta: float, cos_weight: float) -> torch.Tensor:
    mse = F.mse_loss(recon, clean)
    kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1))
    cos = 1 - F.cosine_similarity(recon, clean, dim=1).mean()
    return mse + beta * kl + cos_weight * cos


def batch_loss(model, vae, x: torch.Tensor, cond: torch.Tensor, clean: torch.Tensor,
               idx: torch.Tensor, noise: float, gen: torch.Generator, beta: float,
               w: float) -> torch.Tensor:
    """The VAE's loss on batch `idx`: Gaussian noise on the input only, the clean target.
    `model` is the VAE itself, or its per-sample-gradient wrapper under DP-SGD."""
    noisy = (x[idx] + noise * torch.randn(x[idx].shape, generator=gen).to(x.device)
             if noise else x[idx])
    recon, mu, logvar = model(vae.normalise(noisy), cond[idx])
    return vae_loss(recon, clean[idx], mu, logvar, beta, w)


@dataclass
class Posterior:
    """Per class, a Gaussian fitted to the VAE's latent codes of the client's training rows (the
    aggregate posterior), and the decoder's residual sd per dimension. A VAE trained with a
    small KL weight leaves its codes far from N(0, I): prior draws then decode to the wrong
    class or to the class centre, while draws from the codes' own Gaussian stay on the class
    (ex-post density estimation, Ghosh et al. 2020). Decoders return means, which are smoother
    than data; the residual noise, scaled per class, puts the spread back."""

    mean: torch.Tensor   # [C, L]
    chol: torch.Tensor   # [C, L, L], Cholesky factors of the covariances
    noise: torch.Tensor  # [S, D], residual sd in embedding units

    @classmethod
    @torch.no_grad()
    def fit(cls, vae, conditions: torch.Tensor, rows: list[torch.Tensor]) -> Posterior:
        fits = [_latent_gaussian(vae, c, r) for c, r in zip(conditions, rows)]
        residuals = [(vae.decode(mu, c.expand(len(r), -1)) - r).flatten(1)
                     for c, r, (_, _, mu) in zip(conditions, rows, fits)]
        noise = torch.cat(residuals).pow(2).mean(0).sqrt().reshape(rows[0].shape[1:])
        return cls(torch.stack([m for m, _, _ in fits]), torch.stack([ch for _, ch, _ in fits]),
                   noise)

    def refit(self, vae, condition: torch.Tensor, rows: torch.Tensor) -> Posterior:
        """One class's latent Gaussian fitted to `rows` alone, with this residual noise."""
        mean, chol, _ = _latent_gaussian(vae, condition, rows)
        return Posterior(mean[None], chol[None], self.noise)

    def select(self, i: int) -> Posterior:
        return Posterior(self.mean[i:i + 1], self.chol[i:i + 1], self.noise)

    def sample(self, vae, i: int, cond: torch.Tensor, generator: torch.Generator,
               noise_scale: float) -> torch.Tensor:
        def randn(*shape):
            return torch.randn(*shape, generator=generator, device=generator.device).to(cond.device)

        z = self.mean[i] + randn(len(cond), self.mean.shape[1]) @ self.chol[i].T
        with torch.no_grad():
            x = vae.decode(z, cond)
        return x + noise_scale * self.noise * randn(*x.shape)


@torch.no_grad()
def _latent_gaussian(vae, condition: torch.Tensor, rows: torch.Tensor):
    """(mean [L], Cholesky factor [L, L], codes [N, L]) of the Gaussian over the codes of
    `rows`: their covariance, shrunk towards its diagonal when the rows are few, plus their
    mean posterior variance."""
    dim = vae.latent_dim
    eye = torch.eye(dim, device=condition.device)
    mu, logvar = vae.encode(vae.normalise(rows), condition.expand(len(rows), -1))
    cov = torch.cov(mu.T) if len(rows) > 1 else torch.zeros_like(eye)
    shrink = min(1.0, dim / (4 * len(rows)))
    cov = (1 - shrink) * cov + shrink * torch.diag(cov.diagonal())
    cov = cov + torch.diag(logvar.exp().mean(0)) + 1e-5 * eye
    return mu.mean(0), torch.linalg.cholesky(cov), mu


