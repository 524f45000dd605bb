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
# to the real class mean drops below this. It cannot fail where it matters (uniform noise scores
# 0.59 and another class 0.79 on scikit-learn's digits), so it is reported, not judged on.
COSINE_HEALTH_THRESHOLD = 0.7

# Verdicts, calibrated by controls on scikit-learn's digits (tests/test_metrics.py): held-out
# real rows score memorisation 1.0, spread 1.0, consistency equal to the real rows'; copies of
# training rows score memorisation 0.0 (near-copies at 0.1 / 0.3 of the feature sd: 0.17 /
# 0.51); the class mean spread 0.20; uniform noise consistency 0.1 of the real rows'.
MEMORISATION_THRESHOLD = 0.5  # below: samples sit twice as close to training rows as fresh data
SPREAD_RANGE = (0.5, 2.0)     # outside: collapsed onto the class centre, or scattered
CONSISTENCY_SHARE = 0.8       # below this share of the real rows' consistency: off-class samples
# A class with fewer held-out rows than this is not judged (flags None): its spread and
# consistency would rest on one or two rows. Its samples still count in "overall".
MIN_JUDGED_HOLDOUT = 6

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


def spread_ratio(synthetic: torch.Tensor, reference: torch.Tensor) -> float:
    """median_j ||s_j - mean(ref)|| / median_i ||r_i - mean(ref without r_i)||: about 1 when the
    synthetic samples spread around the class as real ones do; near 0 for a generator collapsed
    onto the class centre; well above 1 for scattered samples. Needs 2 reference samples.

    Each reference row is measured to the mean of the others, as a synthetic sample is to a
    mean it took no part in: to the full mean, the rows would sit n/(n-1) times closer (a
    distance to the mean of the others is exactly n/(n-1) times the one to the full mean), and
    real data would score 8/7 with the 8 held-out clips of a class of the demo data."""
    syn, ref = _pair(synthetic, reference, ("synthetic", "reference"))
    n = len(ref)
    if len(syn) == 0 or n < 2:
        raise ValueError("spread_ratio needs a synthetic sample and 2 reference samples")
    centre = ref.mean(0, keepdim=True)
    scale = _median((ref - centre).norm(dim=1)) * n / (n - 1)
    if scale == 0.0:
        raise ValueError("spread_ratio: the reference samples are all equal")
    return _median((syn - centre).norm(dim=1)) / scale


def _class_means(train: torch.Tensor, train_labels: torch.Tensor,
                 classes: list[int]) -> torch.Tensor:
    return torch.stack([train[train_labels == c].mean(0) for c in classes])


def _nearest_mean_hits(x: torch.Tensor, labels: torch.Tensor, means: torch.Tensor,
                       classes: list[int]) -> torch.Tensor:
    """Per row of x, whether its nearest of `means` (one per class of `classes`) is its own."""
    return torch.tensor(classes)[torch.cdist(x, means).argmin(dim=1)] == labels


def class_consistency(x: torch.Tensor, labels: torch.Tensor, train: torch.Tensor,
                      train_labels: torch.Tensor, classes: Sequence[int]) -> float:
    """Share of samples whose nearest training class mean (Euclidean, among `classes`) is
    their own class: a sample of class c must look like class c, not like noise or another
    class. Compare it with the same number for held-out real rows."""
    x, train = _pair(x, train, ("samples", "train"))
    classes = list(classes)
    hits = _nearest_mean_hits(x, labels, _class_means(train, train_labels, classes), classes)
    return float(hits.double().mean())


def real_consistency_hits(train: torch.Tensor, train_labels: torch.Tensor,
                          holdout: torch.Tensor, holdout_labels: torch.Tensor,
                          classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The real rows' own class consistency, row by row: (hit [M] bool, label [M]) over the
    held-out rows and the training rows of `classes`, each measured against class means it took
    no part in: a held-out row against the training means, a training row against them with
    itself left out of its own class's (the only training row of a class has no such mean and
    is skipped). Both are unbiased for the consistency of fresh rows, and together they rest on
    all the client's rows: on the held-out rows alone, the reference for a class of 10 held-out
    rows moves by 0.1 a row, and fresh real rows of KEEL's texture classes 03/08/09/14 were
    flagged off-class against it in 9 of 80 draws (0 of 80 against this one)."""
    train, holdout = _pair(train, holdout, ("train", "holdout"))
    classes = list(classes)
    known = torch.tensor(classes)
    means = _class_means(train, train_labels, classes)

    keep = torch.isin(train_labels, known)
    rows, labels = train[keep], train_labels[keep]
    pos = (labels[:, None] == known).long().argmax(dim=1)  # each row's index among classes
    n = torch.bincount(pos, minlength=len(classes)).to(torch.float64)[pos][:, None]
    dist = torch.cdist(rows, means)
    own = (means[pos] * n - rows) / (n - 1).clamp_min(1)  # its class's mean without it
    dist[torch.arange(len(rows)), pos] = (rows - own).norm(dim=1)
    has_others = n[:, 0] > 1  # a class's only row has no mean without it
    hit_train = (dist.argmin(dim=1) == pos)[has_others]

    held = torch.isin(holdout_labels, known)
    hit_hold = _nearest_mean_hits(holdout[held], holdout_labels[held], means, classes)
    return (torch.cat([hit_train, hit_hold]),
            torch.cat([labels[has_others], holdout_labels[held]]))


def _flags(entry: dict) -> list[str] | None:
    """The verdicts of one entry; None when none of them could be computed."""
    if entry["n_holdout"] < MIN_JUDGED_HOLDOUT:
        return None
    judged = {}
    if entry["memorisation_ratio"] is not None:
        judged["memorised"] = entry["memorisation_ratio"] < MEMORISATION_THRESHOLD
    if entry["spread_ratio"] is not None:
        judged["collapsed"] = entry["spread_ratio"] < SPREAD_RANGE[0]
        judged["scattered"] = entry["spread_ratio"] > SPREAD_RANGE[1]
    if entry["class_consistency"] is not None and entry["class_consistency_real"] is not None:
        judged["off-class"] = (entry["class_consistency"]
                               < CONSISTENCY_SHARE * entry["class_consistency_real"])
    return [name for name, bad in judged.items() if bad] if judged else None


def _class_entry(syn: torch.Tensor, real: torch.Tensor, holdout: torch.Tensor,
                 syn_fd: torch.Tensor, real_fd: torch.Tensor, hold_fd: torch.Tensor,
                 k: int) -> dict:
    """All metrics for one group of samples; those the group is too small for become None.
    Fidelity and coverage are measured against the held-out rows, never against the rows the
    generator trained on (a copying generator would score perfectly there); memorisation
    compares distances to the training rows with the held-out rows' own; the spread, which
    copying cannot fool or pass, uses every real row of the group."""
    n_syn, n_real, n_hold = len(syn), len(real), len(holdout)
    k_used = min(k, n_hold - 1)
    density = coverage = None
    if k_used >= 1 and n_syn:
        density, coverage = density_coverage(holdout, syn, k=k_used)
    return {
        "n_synthetic": n_syn,
        "n_real": n_real,
        "n_holdout": n_hold,
        "cosine_to_real_mean": cosine_to_real_mean(syn, real) if n_syn and n_real else None,
        "frechet": frechet_distance(syn_fd, hold_fd) if n_syn >= 2 and n_hold >= 2 else None,
        "frechet_real_baseline": (frechet_distance(real_fd, hold_fd)
                                  if n_real >= 2 and n_hold >= 2 else None),
        "k": k_used if k_used >= 1 else None,
        "density": density,
        "coverage": coverage,
        # The same measure for the training rows themselves: how far from 1 real data lands.
        "density_real": (density_coverage(holdout, real, k=k_used)[0]
                         if k_used >= 1 and n_real else None),
        # Against all the real rows of the class: a centre and scale taken on 6-10 held-out
        # rows alone can be far off (6 tight rows of KEEL's texture_10 put a real class's own
        # training rows at 2.2, "scattered"). Copying would score 1 either way; memorisation
        # is the check for that.
        "spread_ratio": (spread_ratio(syn, torch.cat([real, holdout]))
                         if n_syn and n_real + n_hold >= 2 else None),
        "memorisation_ratio": (memorisation_ratio(syn, real, holdout)
                               if n_syn and n_real and n_hold else None),
    }


def quality_report(synthetic: torch.Tensor, synthetic_labels: torch.Tensor | Sequence[int],
                   real: torch.Tensor, real_labels: torch.Tensor | Sequence[int],
                   holdout: torch.Tensor, holdout_labels: torch.Tensor | Sequence[int],
                   class_names: Sequence[str], seed: int = 0, k: int = 5) -> dict:
    """Per-class quality/privacy report of synthetic samples, given the generator's training
    rows (`real`) and held-out real rows (`holdout`) the generator never saw.

    Keys: the name of each class present in `synthetic_labels` (labels index `class_names`),
    plus "overall" over the samples of those classes pooled (real/holdout samples of classes
    the synthetic set lacks are left out everywhere). Each entry holds n_synthetic, n_real,
    n_holdout, cosine_to_real_mean (the seed's number, reported only), frechet (vs the holdout)
    and frechet_real_baseline (training rows vs the holdout), k, density and coverage (the
    holdout as the reference set), density_real (the training rows' density on the holdout: the
    figure real data reaches), spread_ratio (against all the real rows of the class),
    memorisation_ratio, class_consistency and class_consistency_real (the real rows' own, see
    real_consistency_hits), and `flags`: the verdicts among "memorised", "collapsed",
    "scattered", "off-class" (see the thresholds above; [] = healthy, None = too few samples to
    judge, which includes a class with under MIN_JUDGED_HOLDOUT held-out rows).

    Small groups degrade instead of failing: density/coverage use k = min(k, n_holdout - 1)
    (reported under "k") and are None with fewer than 2 holdout samples; the Fréchet distances
    need 2 samples per set, the spread 2 real rows; memorisation at least one holdout sample;
    consistency at least 2 classes. A holdout that duplicates the training records still raises (see
    `memorisation_ratio`): that is a split bug. `seed` is kept for callers; nothing here draws.

    Fréchet distances of token sequences [N, S, D] use the token-averaged vectors [N, D]: the
    matrix square root costs O(F^3), and F = S * D = 3072 for AST would take minutes per class.
    The "overall" cosine and spread are the means of the per-class ones (around the mean of
    several pooled classes they would be meaningless).
    """
    def fd_features(x):
        x = torch.as_tensor(x)
        return x.mean(dim=1) if x.dim() == 3 else x

    syn_fd, real_fd, hold_fd = fd_features(synthetic), fd_features(real), fd_features(holdout)
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
    trained = [c for c in present if bool((labels["real"] == c).any())]
    # (hit, label) per sample and per real row, for the shares of each class and overall
    synthetic_hits = real_hits = None
    if len(trained) >= 2:
        of_trained = torch.isin(labels["synthetic"], torch.tensor(trained))
        mine = labels["synthetic"][of_trained]
        synthetic_hits = (_nearest_mean_hits(syn[of_trained], mine,
                                             _class_means(real, labels["real"], trained),
                                             trained), mine)
        real_hits = real_consistency_hits(real, labels["real"], holdout, labels["holdout"],
                                          trained)

    def share(found, c=None):
        if found is None:
            return None
        hit, label = found
        hit = hit if c is None else hit[label == c]
        return float(hit.double().mean()) if len(hit) else None

    report = {}
    for c in present:
        s_mask, r_mask = labels["synthetic"] == c, labels["real"] == c
        h_mask = labels["holdout"] == c
        entry = _class_entry(syn[s_mask], real[r_mask], holdout[h_mask], syn_fd[s_mask],
                             real_fd[r_mask], hold_fd[h_mask], k)
        entry["class_consistency"] = share(synthetic_hits, c)
        entry["class_consistency_real"] = share(real_hits, c)
        entry["flags"] = _flags(entry)
        report[class_names[c]] = entry
    pooled = torch.tensor(present, dtype=torch.long)
    r_mask = torch.isin(labels["real"], pooled)
    h_mask = torch.isin(labels["holdout"], pooled)
    overall = _class_entry(syn, real[r_mask], holdout[h_mask], syn_fd, real_fd[r_mask],
                           hold_fd[h_mask], k)
    for key in ("cosine_to_real_mean", "spread_ratio"):
        values = [e[key] for e in report.values()]
        overall[key] = sum(values) / len(values) if values and None not in values else None
    overall["class_consistency"] = share(synthetic_hits)
    overall["class_consistency_real"] = share(real_hits)
    flags = _flags(overall)
    per_class = [f for e in report.values() for f in (e["flags"] or [])]
    overall["flags"] = None if flags is None else sorted(set(flags) | set(per_class))
    report["overall"] = overall
    return report
