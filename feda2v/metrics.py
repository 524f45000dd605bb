"""Quality and privacy metrics of synthetic samples (generator outputs vs real embeddings).

Pure functions over torch tensors. Every set is either a batch of sequences [N, S, D] or of
vectors [N, F]; sequences are flattened to [N, S*D] (one helper, `_flat`) so a sample is one
point and all distances are Euclidean on the flattened samples. Work is done in float64: the
Fréchet distance subtracts nearly equal traces, and float32 noise would swamp small distances.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

# The original system flags a generator as unhealthy when its samples' mean cosine similarity
# to the real class mean drops below this.
COSINE_HEALTH_THRESHOLD = 0.7

# Diagonal offset for the covariance square root when it comes out non-finite or complex
# (singular covariances, e.g. fewer samples than features); the value used by the FID code.
_SQRTM_EPS = 1e-6
# Imaginary parts of sqrtm's result up to this fraction of its largest real entry are
# numerical noise (a product of two PSD matrices has real, non-negative eigenvalues).
_IMAG_TOL = 1e-3


def _flat(x: torch.Tensor, name: str = "samples") -> torch.Tensor:
    """[N, S, D] or [N, F] -> [N, F] float64 (a sequence becomes one flattened vector)."""
    x = torch.as_tensor(x)
    if x.dim() == 3:
        x = x.reshape(x.shape[0], -1)
    elif x.dim() != 2:
        raise ValueError(f"{name}: expected [N, S, D] or [N, F], got shape {tuple(x.shape)}")
    return x.detach().to(torch.float64)


def _pair(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> tuple[torch.Tensor,
                                                                              torch.Tensor]:
    a, b = _flat(a, names[0]), _flat(b, names[1])
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names[0]} has {a.shape[1]} features per sample but {names[1]} has "
                         f"{b.shape[1]}")
    return a, b


def _median(x: torch.Tensor) -> float:
    # torch.median returns the lower middle element for even counts; the usual median averages.
    return float(torch.quantile(x, 0.5))


def cosine_to_real_mean(synthetic: torch.Tensor, real: torch.Tensor) -> float:
    """Mean over synthetic samples of cos(s_j, mean(real)).

    Healthy above `COSINE_HEALTH_THRESHOLD`. It only checks direction: a collapsed generator
    that always emits the class mean scores 1.0, so read it together with coverage.
    """
    syn, real = _pair(synthetic, real, ("synthetic", "real"))
    if len(syn) == 0 or len(real) == 0:
        raise ValueError("cosine_to_real_mean needs at least one synthetic and one real sample")
    # torch clamps the norms at 1e-8, so a zero vector scores 0 instead of NaN.
    return float(F.cosine_similarity(syn, real.mean(0, keepdim=True), dim=1).mean())


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sets:
    ||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)).

    Dowson & Landau 1982; used as FID by Heusel et al. 2017 "GANs Trained by a Two Time-Scale
    Update Rule Converge to a Local Nash Equilibrium". Covariances are unbiased (N-1); each set
    needs at least 2 samples. The square root costs O(F^3) in the flattened feature count F.
    The estimate is biased upward on small sets, so compare it with `real_vs_real_baseline`.
    With singular covariances (fewer samples than features) the square root is only accurate to
    about sqrt(machine eps) per null eigenvalue, so equal sets can give a tiny negative value.
    """
    a, b = _pair(a, b, ("a", "b"))
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"frechet_distance needs at least 2 samples per set, got {len(a)} and "
                         f"{len(b)}")
    x, y = a.numpy(), b.numpy()
    mu_a, mu_b = x.mean(0), y.mean(0)
    # atleast_2d: np.cov of a single feature returns a 0-d array.
    cov_a = np.atleast_2d(np.cov(x, rowvar=False))
    cov_b = np.atleast_2d(np.cov(y, rowvar=False))

    def noisy(m: np.ndarray) -> bool:
        if not np.isfinite(m).all():
            return True
        return bool(np.iscomplexobj(m)
                    and np.abs(m.imag).max() > _IMAG_TOL * max(1.0, np.abs(m.real).max()))

    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    if noisy(covmean):
        # Singular covariances: nudge both onto the positive-definite cone and retry. The traces
        # below use the nudged matrices too, so the result is the exact FD of the regularised
        # Gaussians (equal sets still give 0, not -4 eps F).
        offset = _SQRTM_EPS * np.eye(cov_a.shape[0])
        cov_a, cov_b = cov_a + offset, cov_b + offset
        covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
        if noisy(covmean):
            raise ValueError("frechet_distance: covariance square root is not real/finite "
                             "even with a diagonal offset")
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    fd = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean)
    return float(fd)


def real_vs_real_baseline(real: torch.Tensor, seed: int) -> float:
    """Fréchet distance between two random halves of the real set (seeded permutation).

    The floor a synthetic FD should be judged against: sampling noise alone gives this much.
    Needs at least 4 samples (2 per half).
    """
    real = _flat(real, "real")
    n = len(real)
    if n < 4:
        raise ValueError(f"real_vs_real_baseline needs at least 4 real samples, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return frechet_distance(real[perm[: n // 2]], real[perm[n // 2:]])


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> tuple[float, float]:
    """Density and coverage of Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for
    Generative Models".

    r_i = distance from real X_i to its k-th nearest other real sample; B_i = ball(X_i, r_i).
    density = 1/(k M) * sum_j #{i : Y_j in B_i}   (M fake samples Y_j; about 1 when fake and
    real follow one distribution, above 1 when fakes crowd around real modes);
    coverage = fraction of real X_i whose ball holds at least one fake sample.
    Balls are open (distance < r_i), as in the authors' reference code: so fake == real gives
    density exactly 1 (each ball holds its centre and k-1 neighbours, not the k-th on its rim).
    """
    real, fake = _pair(real, fake, ("real", "fake"))
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(real) <= k:
        raise ValueError(f"density_coverage needs more than k={k} real samples, got {len(real)}")
    if len(fake) == 0:
        raise ValueError("density_coverage needs at least one fake sample")
    real_dist = torch.cdist(real, real)
    # Column 0 of the sorted row is the sample itself (distance 0): the k-th other is column k.
    radii = real_dist.sort(dim=1).values[:, k]
    inside = torch.cdist(real, fake) < radii[:, None]  # [M real, N fake]
    density = inside.sum().item() / (k * len(fake))
    coverage = inside.any(dim=1).double().mean().item()
    return float(density), float(coverage)


def memorisation_ratio(synthetic: torch.Tensor, train: torch.Tensor,
                       holdout: torch.Tensor) -> float:
    """median_j min_i ||s_j - t_i|| / median_h min_i ||h - t_i||  (distance to closest record).

    The holdout-based distance-to-closest-record test of synthetic-data privacy (Platzer &
    Reutterer 2021, "Holdout-Based Empirical Assessment of Mixed-Type Synthetic Data"):
    fresh real data (the holdout) sets the yardstick. About 1: synthetic samples are no closer
    to training records than unseen real data; well below 1: they sit on training records
    (memorisation / leakage); 0: exact copies.
    """
    syn, train = _pair(synthetic, train, ("synthetic", "train"))
    holdout, _ = _pair(holdout, train, ("holdout", "train"))
    if min(len(syn), len(train), len(holdout)) == 0:
        raise ValueError("memorisation_ratio needs non-empty synthetic, train and holdout sets")
    denominator = _median(torch.cdist(holdout, train).min(dim=1).values)
    if denominator == 0.0:
        raise ValueError("memorisation_ratio: the holdout's median distance to the closest "
                         "training record is 0 (holdout records duplicate training records)")
    return _median(torch.cdist(syn, train).min(dim=1).values) / denominator


def _class_entry(syn: torch.Tensor, real: torch.Tensor, holdout: torch.Tensor,
                 syn_fd: torch.Tensor, real_fd: torch.Tensor, seed: int, k: int) -> dict:
    """All metrics for one group of samples; those the group is too small for become None.
    `syn_fd`/`real_fd` are the features the Fréchet distances use (see quality_report)."""
    n_syn, n_real, n_hold = len(syn), len(real), len(holdout)
    cosine = cosine_to_real_mean(syn, real) if n_syn and n_real else None
    k_used = min(k, n_real - 1)
    density = coverage = None
    if k_used >= 1 and n_syn:
        density, coverage = density_coverage(real, syn, k=k_used)
    return {
        "n_synthetic": n_syn,
        "n_real": n_real,
        "n_holdout": n_hold,
        "cosine_to_real_mean": cosine,
        "cosine_healthy": None if cosine is None else cosine >= COSINE_HEALTH_THRESHOLD,
        "frechet": frechet_distance(syn_fd, real_fd) if n_syn >= 2 and n_real >= 2 else None,
        "frechet_real_baseline": real_vs_real_baseline(real_fd, seed) if n_real >= 4 else None,
        "k": k_used if k_used >= 1 else None,
        "density": density,
        "coverage": coverage,
        "memorisation_ratio": (memorisation_ratio(syn, real, holdout)
                               if n_syn and n_real and n_hold else None),
    }


def quality_report(synthetic: torch.Tensor, synthetic_labels: torch.Tensor | Sequence[int],
                   real: torch.Tensor, real_labels: torch.Tensor | Sequence[int],
                   holdout: torch.Tensor, holdout_labels: torch.Tensor | Sequence[int],
                   class_names: Sequence[str], seed: int = 0, k: int = 5) -> dict:
    """Per-class quality/privacy report of synthetic samples against the real training samples
    (`real`, the generator's training data) and held-out real samples (`holdout`).

    Keys: the name of each class present in `synthetic_labels` (labels index `class_names`),
    plus "overall" over the samples of those classes pooled (real/holdout samples of classes
    the synthetic set lacks are left out everywhere). Each entry holds n_synthetic, n_real,
    n_holdout, cosine_to_real_mean, cosine_healthy, frechet, frechet_real_baseline, k, density,
    coverage and memorisation_ratio.

    Small groups degrade instead of failing: density/coverage use k = min(k, n_real - 1) (the
    k used is reported under "k") and are None with fewer than 2 real samples; frechet needs 2
    synthetic and 2 real samples, frechet_real_baseline 4 real samples, cosine one of each,
    memorisation_ratio at least one holdout sample; otherwise the value is None. A holdout that
    duplicates the training records still raises (see `memorisation_ratio`): that is a split bug.

    Fréchet distances of token sequences [N, S, D] use the token-averaged vectors [N, D]: the
    matrix square root costs O(F^3), and F = S * D = 3072 for AST would take minutes per class.
    The "overall" cosine is the mean of the per-class cosines (and healthy only if every class
    is): against the mean of several pooled classes it would be low by construction.
    """
    def fd_features(x):
        x = torch.as_tensor(x)
        return x.mean(dim=1) if x.dim() == 3 else x

    syn_fd, real_fd = fd_features(synthetic), fd_features(real)
    syn = _flat(synthetic, "synthetic")
    real, holdout = _flat(real, "real"), _flat(holdout, "holdout")
    labels = {}
    for name, x, y in (("synthetic", syn, synthetic_labels), ("real", real, real_labels),
                       ("holdout", holdout, holdout_labels)):
        y = torch.as_tensor(y, dtype=torch.long).reshape(-1)
        if len(y) != len(x):
            raise ValueError(f"{name}: {len(x)} samples but {len(y)} labels")
        if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
            raise ValueError(f"{name} labels must lie in [0, {len(class_names)})")
        labels[name] = y
    # Feature counts must agree across the three sets.
    _pair(syn, real, ("synthetic", "real"))
    _pair(holdout, real, ("holdout", "real"))

    present = sorted(set(labels["synthetic"].tolist()))
    if "overall" in (class_names[c] for c in present):
        raise ValueError('a class named "overall" would clash with the pooled entry')
    report = {}
    for c in present:
        s_mask, r_mask = labels["synthetic"] == c, labels["real"] == c
        report[class_names[c]] = _class_entry(syn[s_mask], real[r_mask],
                                              holdout[labels["holdout"] == c], syn_fd[s_mask],
                                              real_fd[r_mask], seed, k)
    pooled = torch.tensor(present, dtype=torch.long)
    r_mask = torch.isin(labels["real"], pooled)
    overall = _class_entry(syn, real[r_mask], holdout[torch.isin(labels["holdout"], pooled)],
                           syn_fd, real_fd[r_mask], seed, k)
    cosines = [e["cosine_to_real_mean"] for e in report.values()]
    if cosines and None not in cosines:
        overall["cosine_to_real_mean"] = sum(cosines) / len(cosines)
        overall["cosine_healthy"] = all(e["cosine_healthy"] for e in report.values())
    report["overall"] = overall
    return report
