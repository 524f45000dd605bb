"""The generator models behind one interface (base.py: Generator). Add one by subclassing
Generator and listing it here; the config's generator_type takes its name."""

from __future__ import annotations

from feda2v.federated.generators.base import Generator
from feda2v.federated.generators.gan import ConditionedGAN
from feda2v.federated.generators.vae import ConditionedVAE

GENERATORS: dict[str, type[Generator]] = {cls.name: cls for cls in (ConditionedVAE, ConditionedGAN)}


def new(generator_type: str, seq_len: int, audio_dim: int, cond_dim: int, hidden_dim: int,
        latent_dim: int) -> Generator:
    return GENERATORS[generator_type](seq_len, audio_dim, cond_dim, hidden_dim, latent_dim)
