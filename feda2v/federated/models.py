"""The two networks of FedA2V, readable top to bottom.

Adapter: audio tokens [B, S, D_audio] -> one vector in CLIP text space [B, D_clip].
ConditionedVAE: generates audio token sequences [S, D_audio] given a class condition [D_clip].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Adapter(nn.Module):
    """Per-token MLP into CLIP space, then attention pooling with one learned query."""

    def __init__(self, audio_dim: int, clip_dim: int, hidden_dims=(1024, 2048), heads: int = 8):
        super().__init__()
        if clip_dim % heads:
            raise ValueError(f"adapter_heads ({heads}) must divide the CLIP dimension ({clip_dim})")
        layers, width = [], audio_dim
        for h in hidden_dims:
            layers += [nn.Linear(width, h), nn.GELU()]
            width = h
        layers.append(nn.Linear(width, clip_dim))
        self.mlp = nn.Sequential(*layers)
        self.query = nn.Parameter(torch.randn(1, 1, clip_dim) * 0.02)
        self.pool = nn.MultiheadAttention(clip_dim, heads, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.mlp(tokens)                                   # [B, S, D_clip]
        q = self.query.expand(x.shape[0], -1, -1)              # [B, 1, D_clip]
        pooled, _ = self.pool(q, x, x, need_weights=False)
        return pooled.squeeze(1)                               # [B, D_clip]


class ConditionedVAE(nn.Module):
    """MLP VAE over the flattened token sequence, conditioned on a CLIP-space class vector.

    Inputs are standardised per dimension (mean/std buffers saved with the weights) and scaled
    into the Tanh range, so the decoder can reach real embedding magnitudes.
    """

    SCALE = 3.0  # standardised values within +-3 std map into (-1, 1)

    def __init__(self, seq_len: int, audio_dim: int, cond_dim: int, hidden_dim: int = 1024,
                 latent_dim: int = 256):
        super().__init__()
        self.seq_len, self.audio_dim, self.latent_dim = seq_len, audio_dim, latent_dim
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
        self.register_buffer("data_mean", torch.zeros(flat))
        self.register_buffer("data_std", torch.ones(flat))

    def fit_standardisation(self, x: torch.Tensor) -> None:
        flat = x.reshape(x.shape[0], -1)
        self.data_mean.copy_(flat.mean(0))
        self.data_std.copy_(flat.std(0, unbiased=False).clamp_min(1e-6))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        return ((flat - self.data_mean) / (self.SCALE * self.data_std)).clamp(-0.999, 0.999)

    def denormalise(self, flat: torch.Tensor) -> torch.Tensor:
        x = flat * self.SCALE * self.data_std + self.data_mean
        return x.reshape(-1, self.seq_len, self.audio_dim)

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
