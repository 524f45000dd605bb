"""Run 2's synthetic samples of a client: load its generator once, draw every round's
samples, measure their quality on the client's own data (only numbers leave it)."""

from __future__ import annotations

import torch

from feda2v.federated.generators.calibration import (
    calibrate_temperature,
    sample_per_class,
    sampling_mode,
)
from feda2v.federated.generators.checkpoints import expected_dims, load
from feda2v.federated.generators.vae import Posterior
from feda2v.io import storage
from feda2v.io.config import Config
from feda2v.io.log import get_logger

log = get_logger()


def load_for_sampling(cfg: Config, client_id: int, uri: str, x: torch.Tensor):
    """Read a checkpoint once, for sampling only: (vae, ckpt, sha256) or None when missing and
    generator_missing_checkpoint allows real-data-only rounds."""
    from feda2v.io import runstate

    f = cfg.feda2v
    log.info("[Client %d] Initializing %s generator", client_id, f.generator_type)
    if not storage.exists(uri):
        log.warning("[Client %d] Warning: Generator checkpoint not found at %s", client_id, uri)
        if f.generator_missing_checkpoint == "real_only":
            log.info("[Client %d] Training on real data only (no synthetic samples)", client_id)
            return None
        raise FileNotFoundError(f"[Client {client_id}] Generator checkpoint not found at {uri}; "
                                "run Run 1 (generator_training_mode) with the same "
                                "generator_checkpoint_dir first, or set "
                                "feda2v.generator_missing_checkpoint to real_only")
    data = storage.read_bytes(uri)
    # The one checked reader: names the file for a spoilt or pickled checkpoint and refuses NaN
    # or inf anywhere in it (weights, class conditions, statistics) before it is used.
    ckpt = storage.load_checkpoint(uri, data)
    expect = expected_dims(cfg, x, 0)
    del expect["cond_dim"]  # the conditions travel inside the checkpoint
    vae, _, ckpt = load(uri, cfg, expect, x.device, ckpt, with_optimizer=False)
    digest = runstate.sha256(data)
    log.info("[Client %d] Loaded %s generator from round %d", client_id,
             f.generator_type.upper(), ckpt["round"])
    log.info("[Client %d] Generator checkpoint loaded successfully: %s (run %s, round %d, "
             "sha256 %s)", client_id, uri, ckpt.get("run", "-"), ckpt["round"], digest[:16])
    return vae, ckpt, digest


def allocation(cfg: Config) -> str:
    """synthetic_samples_allocation with auto resolved: rows, but equal under DP (the counts
    of rows are outside the generators' ε)."""
    f = cfg.feda2v
    if f.synthetic_samples_allocation != "auto":
        return f.synthetic_samples_allocation
    return "equal" if f.generator_dp_epsilon else "rows"


def samples_per_class(cfg: Config, rows: list[int]) -> list[int]:
    """How many samples each of a client's classes sends, given its training rows of each:
    synthetic_samples_per_class of each (equal), or that total in proportion to the rows, at
    least 1 per class (rows)."""
    k = cfg.feda2v.synthetic_samples_per_class
    if allocation(cfg) == "equal" or not rows:
        return [k] * len(rows)
    total, seen = k * len(rows), max(sum(rows), 1)
    return [max(1, round(total * n / seen)) for n in rows]


def synthesise(cfg: Config, client_id: int, vae, ckpt: dict, class_names: list[str],
               seed: int, temperature: float | list[float] = 1.0,
               posterior: Posterior | None = None,
               counts: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """counts[i] samples of the checkpoint's class i (default synthetic_samples_per_class
    each), each from the condition it was trained with: (x [sum(counts), S, D], y)."""
    names = ckpt["class_names"]
    counts = counts or [cfg.feda2v.synthetic_samples_per_class] * len(names)
    unknown = [n for n in names if n not in class_names]
    if unknown:
        raise ValueError(f"[Client {client_id}] checkpoint classes {unknown} are not in this "
                         "run's data.clients")
    conditions = ckpt["class_conditions"].to(next(vae.parameters()).device)
    # [C, max, S, D]; class i keeps its first counts[i]
    samples = sample_per_class(vae, conditions, max(counts), seed, temperature, posterior).cpu()
    log.info("[Client %d] Generated %d synthetic sample sets", client_id, len(names))
    for name, s, n in zip(names, samples, counts):
        log.info("  - %s: synthetic samples %s", name, (n, *s.shape[1:]))
    ids = torch.tensor([class_names.index(n) for n in names]).repeat_interleave(
        torch.tensor(counts))
    return torch.cat([s[:n] for s, n in zip(samples, counts)]), ids


def quality(vae, ckpt: dict, data, class_names: list[str], client_id: int, seed: int,
            temperature: float | list[float] = 1.0, posterior: Posterior | None = None) -> dict:
    """Quality of the generator, measured as Naeem et al. do: against a real set from the same
    distribution, so with as many samples of each class as the client has training rows of it
    (the held-out rows keep the client's class mix; equal counts per class would crowd its rare
    classes, and the few samples sent to the server would understate coverage). Measured on the
    client, against its held-out rows (memorisation against its training rows): only the
    numbers leave it."""
    from feda2v.evaluation.metrics import quality_report

    ids = torch.tensor([class_names.index(c) for c in ckpt["class_names"]])
    counts = torch.bincount(data.train_y.cpu(), minlength=len(class_names))[ids].clamp_min(1)
    conditions = ckpt["class_conditions"].to(next(vae.parameters()).device)
    gen_seed = seed + 1
    xs = []
    for i, n in enumerate(counts.tolist()):
        one = posterior.select(i) if posterior is not None else None
        t = temperature[i] if isinstance(temperature, list) else temperature
        xs.append(sample_per_class(vae, conditions[i:i + 1], n, gen_seed + i, t, one)[0].cpu())
    # The metrics run on the CPU (scipy's matrix square root).
    report = quality_report(torch.cat(xs), ids.repeat_interleave(counts),
                            data.train_x.cpu(), data.train_y.cpu(), data.test_x.cpu(),
                            data.test_y.cpu(), class_names, seed=seed)
    o = report["overall"]

    def f(key):
        return "-" if o[key] is None else f"{o[key]:.2f}"

    log.info("[Client %d] Synthetic quality vs held-out rows: density %s, coverage %s, spread "
             "%s, consistency %s (real %s), memorisation ratio %s, cosine to class mean %s: %s",
             client_id, f("density"), f("coverage"), f("spread_ratio"), f("class_consistency"),
             f("class_consistency_real"), f("memorisation_ratio"), f("cosine_to_real_mean"),
             "too few rows to judge" if o["flags"] is None else ", ".join(o["flags"]) or "healthy")
    return report


def generate_client(cfg: Config, client_id: int, data, class_names: list[str], rounds: int,
                    source_uri: str, out_uri: str, figure_uri: str = "") -> dict:
    """Run 2's synthetic samples of one client for every round, from one read of its generator:
    round r's samples use the seed of (client, r), so they equal what a per-round task draws.
    With quality metrics on, the client's real vs synthetic picture goes to `figure_uri` (only
    the picture leaves the client, as only the numbers do)."""
    from feda2v.federated.client import round_seed

    dev = data.train_x.device
    loaded = load_for_sampling(cfg, client_id, source_uri, data.train_x)
    meta = {"client_id": client_id, "rounds": rounds, "source": source_uri}
    if loaded is None:
        storage.save_tensors(out_uri, {"x": torch.empty(rounds, 0), "y": torch.empty(0, dtype=torch.long)},
                             dict(meta, quality={}, missing=True))
        return {"client_id": client_id, "samples": 0}
    vae, ckpt, digest = loaded
    temperature: float | list[float] = 1.0
    posterior = None
    mode = sampling_mode(cfg)
    if mode != "prior":
        conditions = ckpt["class_conditions"].to(dev)
        rows = [data.train_x[data.train_y == class_names.index(n)] for n in ckpt["class_names"]]
        if mode == "posterior":
            posterior = Posterior.fit(vae, conditions, rows)
        found = calibrate_temperature(vae, conditions, rows, round_seed(cfg.seed, client_id, 0),
                                      posterior=posterior)
        temperature = [t for t, _ in found]
        log.info("[Client %d] Sampling %s; temperatures %s (density on its training rows %s)",
                 client_id, "from the latent posterior of its training rows, noise scaled by "
                 "temperature" if posterior else "the prior scaled by temperature",
                 ", ".join(f"{n} {t:.2f}" for n, (t, _) in zip(ckpt["class_names"], found)),
                 ", ".join(f"{d:.2f}" for _, d in found))
    meta["sampling"] = mode
    meta["sampling_temperature"] = temperature
    privacy = {}
    if ckpt.get("dp"):
        from feda2v.federated import dp

        privacy = {"dp_epsilon": dp.epsilon(ckpt["dp"]), "dp_delta": ckpt["dp"]["delta"]}
        log.info("[Client %d] Generator trained with DP-SGD: (ε %.2f, δ %.0e)", client_id,
                 privacy["dp_epsilon"], privacy["dp_delta"])
    meta["privacy"] = privacy
    ids = [class_names.index(n) for n in ckpt["class_names"]]
    counts = samples_per_class(cfg, torch.bincount(data.train_y.cpu(),
                                                   minlength=len(class_names))[ids].tolist())
    meta["samples_per_class"] = counts
    xs = []
    for r in range(1, rounds + 1):
        x, y = synthesise(cfg, client_id, vae, ckpt, class_names,
                          round_seed(cfg.seed, client_id, r), temperature, posterior, counts)
        xs.append(x)
    report = {}
    if cfg.feda2v.quality_metrics:
        report = quality(vae, ckpt, data, class_names, client_id,
                         round_seed(cfg.seed, client_id, rounds), temperature, posterior)
        if figure_uri and xs:
            from feda2v.evaluation.figures import projection_png

            storage.write_bytes(figure_uri, projection_png(
                data.train_x, data.train_y, xs[-1], y, class_names,
                f"Client {client_id}: its real (o) and synthetic (x) embeddings, PCA"))
    if privacy:  # travels with the quality numbers: MLflow quality/node_{i}/dp_epsilon, report
        report.setdefault("overall", {}).update(privacy)
    del vae
    if cfg.feda2v.optimize_memory_usage and dev.type == "cuda":
        torch.cuda.empty_cache()
    storage.save_tensors(out_uri, {"x": torch.stack(xs), "y": y},
                         dict(meta, quality=report, sha256=digest, run=ckpt.get("run", ""),
                              checkpoint_round=int(ckpt["round"])))
    return {"client_id": client_id, "samples": len(y) * rounds, "sha256": digest,
            "checkpoint_round": int(ckpt["round"])}


def load_synthetic(uri: str) -> tuple[dict, dict]:
    return storage.load_tensors(uri)


def synthetic_round(loaded: tuple[dict, dict], r: int):
    """Round r's (x, y, quality) of generate_client's file, or None for a client without a
    generator (real data only); the quality numbers travel with the last round."""
    t, meta = loaded
    if meta.get("missing"):
        return None
    if not 1 <= r <= meta["rounds"]:
        raise ValueError(f"synthetic samples of client {meta['client_id']} cover rounds "
                         f"1-{meta['rounds']}, not round {r}")
    q = meta.get("quality", {}) if r == meta["rounds"] else {}
    return t["x"][r - 1].float(), t["y"], q
