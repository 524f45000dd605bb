"""What a client's generator is to the rest of the system.

A generator turns a class condition (a CLIP-space vector) into synthetic audio token sequences
[S, D_audio]. Every generator standardises each embedding dimension (mean/std buffers saved
with the weights) and works in that normalised space scaled into the Tanh range, so all kinds
read and write embeddings identically.

To add one: subclass Generator, implement `sample`, `new_optimizer` and `fit`, set `name` (the
config's generator_type) and `sampling` (what generator_sampling: auto picks for it), and
register it in GENERATORS (generators/__init__.py). Checkpoints, rounds, sampling, calibration
and the quality report (generators/training.py, sampling.py) then work with it unchanged.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import torch
from torch import nn

from feda2v.io.config import Config


class Generator(nn.Module, metaclass=ABCMeta):
    SCALE = 3.0  # standardised values within +-3 std map into (-1, 1)
    name = ""
    sampling = "calibrated"  # "posterior" needs an encoder (see generators/vae.py)

    def __init__(self, seq_len: int, audio_dim: int, cond_dim: int, hidden_dim: int,
                 latent_dim: int):
        super().__init__()
        self.seq_len, self.audio_dim, self.latent_dim = seq_len, audio_dim, latent_dim
        flat = seq_len * audio_dim
        self.register_buffer("data_mean", torch.zeros(flat))
        self.register_buffer("data_std", torch.ones(flat))

    # --- the data side, shared by every generator ---------------------------------------------

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

    # --- what each generator implements ---------------------------------------------------------

    @abstractmethod
    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        """cond: [N, D_clip] -> N sequences [N, S, D_audio] in embedding units; the latent
        draws are scaled by `temperature`."""

    @abstractmethod
    def new_optimizer(self, lr: float):
        """The optimizer `fit` steps (anything with state_dict/load_state_dict: checkpoints
        carry it)."""

    @abstractmethod
    def fit(self, cfg: Config, opt, x: torch.Tensor, cond: torch.Tensor, client_id: int,
            seed: int) -> list[float]:
        """One round's epochs on real sequences x [N, S, D] with per-sample conditions
        cond [N, D_clip] (standardisation already fitted); returns each epoch's mean loss."""
