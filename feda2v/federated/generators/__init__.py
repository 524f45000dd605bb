"""A client's generator. The models behind one interface (base.py: Generator; vae.py, gan.py):
add one by subclassing Generator and listing it here; the config's generator_type takes its
name. What a client does with one, by job: checkpoints.py (the seed's files, the checked
loader), training.py (Run 1's rounds), calibration.py (how Run 2 samples), sampling.py (Run 2's
synthetic samples and their quality)."""

from __future__ import annotations

from feda2v.federated.generators.base import Generator
from feda2v.federated.generators.gan import ConditionedGAN
from feda2v.federated.generators.vae import ConditionedVAE

GENERATORS: dict[str, type[Generator]] = {cls.name: cls for cls in (ConditionedVAE, ConditionedGAN)}


def new(generator_type: str, seq_len: int, audio_dim: int, cond_dim: int, hidden_dim: int,
        latent_dim: int) -> Generator:
    return GENERATORS[generator_type](seq_len, audio_dim, cond_dim, hidden_dim, latent_dim)
