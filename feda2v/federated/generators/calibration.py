"""How Run 2 samples: the sampling mode, per-class posterior sampling and the temperature
calibrated to density 1 on the client's own rows (crossed folds, so it does not overfit)."""

from __future__ import annotations

import torch

from feda2v.federated import generators
from feda2v.federated.generators.vae import Posterior
from feda2v.io.config import Config
from feda2v.io.log import get_logger

log = get_logger()


MIN_CALIBRATION_ROWS = 10  # below this, density on a class's rows is too noisy to steer by


# Crossed calibration: each class's rows split CROSS_REPEATS times at random into CROSS_FOLDS
# parts. Each fold fits the latent Gaussian on all parts but one, as the final fit sees all the
# rows, and measures density on the part it left out.
CROSS_FOLDS = 3


CROSS_REPEATS = 2


def sampling_mode(cfg: Config) -> str:
    """generator_sampling with auto resolved (see its help in config.py)."""
    f = cfg.feda2v
    if f.generator_sampling != "auto":
        return f.generator_sampling
    if f.generator_dp_epsilon:
        return "prior"  # anything fitted to the rows would sit outside the DP guarantee
    return generators.GENERATORS[f.generator_type].sampling


def sample_per_class(vae, conditions: torch.Tensor, per_class: int, seed: int,
                     temperature: float | list[float] = 1.0,
                     posterior: Posterior | None = None) -> torch.Tensor:
    """[C, D_clip] conditions -> [C, per_class, S, D] samples, each class from its own condition
    (and its own temperature when a list is given). With a posterior, latents come from it and
    the temperature scales the residual noise instead."""
    gen = torch.Generator().manual_seed(seed)
    temps = temperature if isinstance(temperature, list) else [temperature] * len(conditions)
    out = []
    for i, (c, t) in enumerate(zip(conditions, temps)):
        cond = c.expand(per_class, -1)
        out.append(vae.sample(cond, generator=gen, temperature=t) if posterior is None
                   else posterior.sample(vae, i, cond, gen, t))
    return torch.stack(out)


def calibrate_temperature(vae, conditions: torch.Tensor, rows: list[torch.Tensor], seed: int,
                          bounds: tuple[float, float] = (0.25, 8.0), steps: int = 12,
                          posterior: Posterior | None = None) -> list[tuple[float, float]]:
    """Per class, the temperature at which the samples' density (Naeem et al.) on the client's
    own training rows of that class is 1: samples then spread over the class as its rows do,
    rather than crowding its centre (density > 1) or scattering (< 1). Density falls as the
    temperature grows; a geometric bisection finds it.

    With a posterior the fit is crossed (CROSS_FOLDS-fold, CROSS_REPEATS times): the latent
    Gaussian is fitted on the other folds and the density measured on the one left out; the
    temperature is where the mean density over the folds is 1. Measured on the rows it was
    fitted to, a density of 1 would be well above 1 on unseen rows. The classes with too few
    rows to calibrate alone (under 2 x MIN_CALIBRATION_ROWS) share one temperature, calibrated
    the same way on their rows pooled, when they hold that many together: borrowing the
    temperature of the client's large classes left them crowded.

    Returns (temperature, density) per class. A class of 1-2 rows takes the pooled temperature
    with density NaN; a class calibrated neither way (under MIN_CALIBRATION_ROWS without a
    posterior) takes the median temperature of the others (1.0 when none), density NaN. Uses
    only the client's training rows; the held-out rows stay for the quality report."""
    from feda2v.evaluation.metrics import density_coverage

    def bisect(density) -> tuple[float, float]:
        lo, hi = bounds
        for _ in range(steps):
            mid = (lo * hi) ** 0.5
            lo, hi = (mid, hi) if density(mid) > 1.0 else (lo, mid)
        t = (lo * hi) ** 0.5
        return t, density(t)

    out: list[tuple[float, float] | None] = [None] * len(rows)
    if posterior is None:
        for i, r in enumerate(rows):
            if len(r) >= MIN_CALIBRATION_ROWS:
                def density(t: float, i=i, r=r) -> float:
                    s = sample_per_class(vae, conditions[i:i + 1], len(r), seed + i, t)[0].cpu()
                    return density_coverage(r.cpu(), s, k=5)[0]

                out[i] = bisect(density)
    else:
        alone = [i for i, r in enumerate(rows) if len(r) >= 2 * MIN_CALIBRATION_ROWS]
        for i in alone:
            folds = _crossed_folds(vae, conditions, rows, [i], posterior, seed)
            out[i] = bisect(lambda t, folds=folds: _crossed_density(vae, conditions, folds,
                                                                   seed, t))
        pooled = [i for i, r in enumerate(rows) if i not in alone and len(r) >= CROSS_FOLDS]
        if sum(len(rows[i]) for i in pooled) >= 2 * MIN_CALIBRATION_ROWS:
            folds = _crossed_folds(vae, conditions, rows, pooled, posterior, seed)
            found = bisect(lambda t: _crossed_density(vae, conditions, folds, seed, t))
            for i in pooled:
                out[i] = found
            for i in range(len(rows)):  # 1-2 rows: too few to split, small all the same
                if out[i] is None:
                    out[i] = (found[0], float("nan"))
    done = sorted(t for t, _ in filter(None, out))
    fallback = done[len(done) // 2] if done else 1.0
    return [o or (fallback, float("nan")) for o in out]


def _crossed_folds(vae, conditions: torch.Tensor, rows: list[torch.Tensor], classes: list[int],
                   posterior: Posterior, seed: int) -> list[list[tuple[int, Posterior, torch.Tensor]]]:
    """CROSS_REPEATS x CROSS_FOLDS folds; a fold holds, for each class of `classes`, (class,
    latent Gaussian fitted on its other folds, the rows of this fold)."""
    folds = []
    for repeat in range(CROSS_REPEATS):
        parts = {i: torch.tensor_split(torch.randperm(
            len(rows[i]), generator=torch.Generator().manual_seed(seed + 1000 * repeat + i)),
            CROSS_FOLDS) for i in classes}
        for j in range(CROSS_FOLDS):
            fold = []
            for i in classes:
                fitted = torch.ones(len(rows[i]), dtype=torch.bool)
                fitted[parts[i][j]] = False
                fold.append((i, posterior.refit(vae, conditions[i], rows[i][fitted]),
                             rows[i][parts[i][j]]))
            folds.append(fold)
    return folds


def _crossed_density(vae, conditions: torch.Tensor, folds, seed: int, t: float) -> float:
    """Mean over the folds of the density of samples at temperature t (as many of each class as
    the fold leaves out of its fit) on the rows the fold left out, pooled over its classes."""
    from feda2v.evaluation.metrics import density_coverage

    total = 0.0
    for k, fold in enumerate(folds):
        held = torch.cat([r for _, _, r in fold]).cpu()
        samples = torch.cat([sample_per_class(vae, conditions[i:i + 1], len(r), seed + i + 7 * k,
                                              t, one)[0].cpu() for i, one, r in fold])
        total += density_coverage(held, samples, k=min(5, len(held) - 1))[0]
    return total / len(folds)
