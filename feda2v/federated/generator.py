"""A client's generator over the rounds: create, train, checkpoint (the seed's contract),
sample (posterior, calibrated or prior), measure. Works with any model of generators/ through
its interface (generators/base.py), never with a particular kind."""

from __future__ import annotations

import dataclasses
import io
import math
import os
from typing import Any

import torch

from feda2v.federated import generators
from feda2v.federated.generators.vae import Posterior
from feda2v.io import storage
from feda2v.io.config import Config, redact
from feda2v.io.log import get_logger

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


def new_generator(cfg: Config, seq_len: int, audio_dim: int, cond_dim: int):
    f = cfg.feda2v
    return generators.new(f.generator_type, seq_len, audio_dim, cond_dim,
                          f.generator_hidden_dim, f.generator_latent_dim)


def new_optimizer(cfg: Config, model):
    return model.new_optimizer(cfg.feda2v.generator_learning_rate)


def train_generator(cfg: Config, model, opt, x: torch.Tensor, cond: torch.Tensor,
                    client_id: int, seed: int) -> float:
    """One round's epochs on real sequences x [N, S, D] with per-sample conditions
    cond [N, D_clip]; returns the mean loss over them (the seed's "Average loss")."""
    log.info("[Client %d] Training generator for %d epochs", client_id,
             cfg.feda2v.generator_training_epochs)
    losses = model.fit(cfg, opt, x, cond, client_id, seed)
    average = sum(losses) / len(losses)
    log.info("[Client %d] Generator training completed. Average loss: %.4f", client_id, average)
    return average


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


def checkpoint_dict(cfg: Config, vae, opt, client_id: int, round_num: int,
                    class_names: list[str], conditions: torch.Tensor,
                    extra: dict | None = None) -> dict:
    """The seed's checkpoint dict. `opt` None keeps weights only (a round snapshot: resume reads
    the latest checkpoint, which carries the optimizer state)."""
    return {
        "client_id": client_id,
        "round": round_num,
        "generator_type": cfg.feda2v.generator_type,
        "diffusion_type": DIFFUSION_TYPE,
        "generator_state_dict": vae.state_dict(),
        "optimizer_state_dict": opt.state_dict() if opt is not None else {},
        "dims": {"seq_len": vae.seq_len, "audio_dim": vae.audio_dim,
                 "cond_dim": conditions.shape[1], "hidden_dim": cfg.feda2v.generator_hidden_dim,
                 "latent_dim": vae.latent_dim},
        # The exact conditions used in training, so that sampling uses the same vectors.
        "class_names": list(class_names),
        "class_conditions": conditions.detach().cpu(),
        "config": dataclasses.asdict(cfg.feda2v),
        **({"dp": vae.dp_state} if getattr(vae, "dp_state", None) is not None else {}),
        **(extra or {}),
    }


def checkpoint_bytes(ckpt: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


def save(uri: str, cfg: Config, vae, opt, client_id: int, round_num: int, class_names: list[str],
         conditions: torch.Tensor, extra: dict | None = None) -> None:
    storage.write_bytes(uri, checkpoint_bytes(checkpoint_dict(cfg, vae, opt, client_id, round_num,
                                                              class_names, conditions, extra)))


REQUIRED_KEYS = ("round", "generator_type", "generator_state_dict", "dims", "class_names",
                 "class_conditions")


def load(uri: str, cfg: Config, expect: dict[str, int], device: torch.device | None = None,
         ckpt: dict | None = None, with_optimizer: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """Load a checkpoint (or use `ckpt`, already read from `uri` by storage.load_checkpoint) and
    refuse it when its type or dims disagree with this run, or it is not a whole checkpoint.
    Sampling passes with_optimizer=False (opt is then None). Every refusal is a ValueError
    naming the file."""
    name = redact(uri)
    ckpt = ckpt if ckpt is not None else storage.load_checkpoint(uri)
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{name}: not a generator checkpoint: it lacks {missing}")
    want_type = cfg.feda2v.generator_type
    if ckpt.get("generator_type") != want_type:
        raise ValueError(f"{name}: generator_type is {ckpt.get('generator_type')!r} in the "
                         f"checkpoint but {want_type!r} in the config")
    dims = ckpt["dims"]
    bad = [k for k in DIM_KEYS if not isinstance(dims, dict) or type(dims.get(k)) is not int
           or dims[k] < 1]
    if bad:
        raise ValueError(f"{name}: 'dims' lacks a positive whole number for {bad}")
    for key, value in expect.items():
        if dims.get(key) != value:
            raise ValueError(f"{name}: {key} is {dims.get(key)} in the checkpoint but {value} "
                             "in this run")
    _check_conditions(name, ckpt, dims["cond_dim"])
    if not isinstance(ckpt["generator_state_dict"], dict):
        raise ValueError(f"{name}: generator_state_dict is not a state dict")  # noqa: TRY004
    storage.require_finite(ckpt["generator_state_dict"], name)
    vae = generators.GENERATORS[want_type](*(dims[k] for k in DIM_KEYS))
    try:
        vae.load_state_dict(ckpt["generator_state_dict"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{name}: its generator_state_dict does not fit a {want_type} of its "
                         f"dims: {_one_line(e)}") from None
    vae.dp_state = ckpt.get("dp")  # the privacy accountant goes on where it stopped
    vae.to(device or torch.device("cpu"))  # before the optimizer, whose state follows the params
    opt = None
    if with_optimizer:
        if not ckpt.get("optimizer_state_dict"):
            raise ValueError(f"{name}: a weights-only round snapshot cannot resume training; "
                             "resume from the latest checkpoint (client_{i}_generator.pt)")
        opt = new_optimizer(cfg, vae)
        try:
            opt.load_state_dict(ckpt["optimizer_state_dict"])
        except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as e:
            raise ValueError(f"{name}: its optimizer_state_dict does not fit this "
                             f"{want_type}: {_one_line(e)}") from None
    return vae, opt, ckpt


def _check_conditions(name: str, ckpt: dict, cond_dim: int) -> None:
    """The checkpoint's class names and conditions: one floating-point condition of cond_dim
    per class (sampling feeds them to the generator as they are)."""
    names, cond = ckpt["class_names"], ckpt["class_conditions"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
        raise ValueError(f"{name}: 'class_names' is not a non-empty list of names")
    if not torch.is_tensor(cond) or not cond.is_floating_point():
        raise ValueError(f"{name}: 'class_conditions' is not a floating-point tensor")
    if list(cond.shape) != [len(names), cond_dim]:
        raise ValueError(f"{name}: 'class_conditions' has shape {list(cond.shape)}, expected "
                         f"{[len(names), cond_dim]} (one condition of cond_dim {cond_dim} per "
                         "class of class_names)")


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(e).__name__


# --- a client's generator over the rounds of Run 1 -------------------------------------------

def expected_dims(cfg: Config, x: torch.Tensor, cond_dim: int) -> dict[str, int]:
    f = cfg.feda2v
    return {"seq_len": x.shape[1], "audio_dim": x.shape[2], "cond_dim": cond_dim,
            "hidden_dim": f.generator_hidden_dim, "latent_dim": f.generator_latent_dim}


def generator_round(cfg: Config, client_id: int, round_num: int, state, x: torch.Tensor,
                    y: torch.Tensor, ids: torch.Tensor, means: torch.Tensor):
    """One round of the seed's Run 1 generator training: each sample conditioned on its class's
    mean adapter output of this round. `state` = (vae, opt) or None for a fresh generator.
    Seeds itself from (seed, client, round): the same numbers in any process."""
    from feda2v.federated.client import round_seed

    seed = round_seed(cfg.seed, client_id, round_num)
    torch.manual_seed(seed)
    if state is None:
        dims = expected_dims(cfg, x, means.shape[1])
        vae = new_generator(cfg, dims["seq_len"], dims["audio_dim"], dims["cond_dim"]).to(x.device)
        vae.fit_standardisation(x)
        if cfg.feda2v.generator_dp_epsilon:
            from feda2v.federated import dp

            vae.dp_state = dp.plan(cfg, len(x), cfg.feda2v.generator_training_rounds)
        state = (vae, new_optimizer(cfg, vae))
        log.info("[Client %d] Generator initialized successfully", client_id)
    vae, opt = state
    lookup = {int(c): i for i, c in enumerate(ids)}
    cond = means.to(x.device)[torch.tensor([lookup[int(c)] for c in y], device=x.device)]
    loss = train_generator(cfg, vae, opt, x, cond, client_id, seed)
    if not math.isfinite(loss):
        raise ValueError(f"client {client_id}, generator round {round_num}: the training loss "
                         f"is {loss}; no checkpoint is written (check the embeddings and "
                         "generator_learning_rate)")
    return state, loss


def train_client(cfg: Config, client_id: int, run: str, run_key: str, x: torch.Tensor,
                 y: torch.Tensor, class_names: list[str], rounds: int, published_dir: str,
                 conditions_folder: str = "") -> dict:
    """All Run 1 rounds of one client's generator, from the conditions its adapter rounds wrote
    under the run folder (or their copy in `conditions_folder`). Resume state (with optimizer) goes to the run folder every
    generator_save_every rounds and at the end, so a retried task restarts from there; the seed's
    files go to `published_dir` (round snapshots weights only, the latest with the optimizer).
    Returns {round: loss} of every round of this run."""
    from feda2v.io import runstate

    f = cfg.feda2v
    own = runstate.generator_state_uri(run, client_id)
    losses_uri = runstate.generator_losses_uri(run, client_id)
    losses: dict[int, float] = {}
    state, done, offset = None, 0, 0

    def conditions(r: int) -> dict:
        return storage.load_tensors(runstate.conditions_uri(run, client_id, r, conditions_folder))[0]

    dev = x.device
    if storage.exists(own):  # a retried task: continue from this run's own resume state
        ckpt = storage.load_checkpoint(own)
        first = conditions(1)["means"]
        vae, opt, ckpt = load(own, cfg, expected_dims(cfg, x, first.shape[1]), dev, ckpt)
        state, done, offset = (vae, opt), int(ckpt["run_round"]), int(ckpt["round"]) - int(ckpt["run_round"])
        losses = runstate.read_losses(losses_uri)
        log.info("[Client %d] Resuming this run's generator after round %d (a retried task)",
                 client_id, done)
    elif f.use_pretrained_generators:  # both mode flags: continue the published generator
        latest = checkpoint_uri(published_dir, client_id)
        if storage.exists(latest):
            first = conditions(1)["means"]
            vae, opt, ckpt = load(latest, cfg, expected_dims(cfg, x, first.shape[1]), dev)
            state, offset = (vae, opt), int(ckpt["round"])
            log.info("[Client %d] Resuming %s generator from round %d", client_id,
                     f.generator_type.upper(), offset)
    if state is None and done == 0:
        log.info("[Client %d] Initializing %s generator", client_id, f.generator_type)
    for r in range(done + 1, rounds + 1):
        log.info("=== Generator round %d/%d — Client %d ===", r, rounds, client_id)
        runstate.acquire(published_dir, run_key)  # claim the folder, or renew the heartbeat
        t = conditions(r)
        log.info("[Client %d] Starting generator training mode", client_id)
        state, losses[r] = generator_round(cfg, client_id, r, state, x, y, t["ids"], t["means"])
        names = [class_names[c] for c in t["ids"]]
        vae, opt = state
        seed_round = offset + r
        extra = {"run": run_key, "run_round": r, "generator_loss": losses[r]}
        if seed_round % f.generator_save_every == 0:
            snapshot = checkpoint_dict(cfg, vae, None, client_id, seed_round, names, t["means"],
                                       extra)
            _publish(published_dir, run_key, client_id, seed_round, checkpoint_bytes(snapshot))
        if seed_round % f.generator_save_every == 0 or r == rounds:
            save(own, cfg, vae, opt, client_id, seed_round, names, t["means"], extra)
            runstate.write_losses(losses_uri, losses)
    _publish(published_dir, run_key, client_id, None, storage.read_bytes(own))
    average = sum(losses.values()) / max(len(losses), 1)
    log.info("[Client %d] Generator training over %d rounds completed. Average loss: %.4f",
             client_id, len(losses), average)
    return losses


# --- sampling (Run 2) -------------------------------------------------------------------------

def _publish(folder: str, run_key: str, client_id: int, round_num: int | None,
             data: bytes) -> None:
    from feda2v.io import runstate

    name = os.path.basename(checkpoint_uri(folder, client_id, round_num))
    if runstate.publish(folder, run_key, name, data):
        log.info("[Client %d] Saved generator checkpoint to %s", client_id,
                 storage.join(folder, name))


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


def synthesise(cfg: Config, client_id: int, vae, ckpt: dict, class_names: list[str],
               seed: int, temperature: float | list[float] = 1.0,
               posterior: Posterior | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """synthetic_samples_per_class samples of each class of the checkpoint, each from the
    condition it was trained with: (x [C*K, S, D], y [C*K])."""
    k = cfg.feda2v.synthetic_samples_per_class
    names = ckpt["class_names"]
    unknown = [n for n in names if n not in class_names]
    if unknown:
        raise ValueError(f"[Client {client_id}] checkpoint classes {unknown} are not in this "
                         "run's data.clients")
    conditions = ckpt["class_conditions"].to(next(vae.parameters()).device)
    samples = sample_per_class(vae, conditions, k, seed, temperature, posterior).cpu()  # [C,K,S,D]
    log.info("[Client %d] Generated %d synthetic sample sets", client_id, len(names))
    for name, s in zip(names, samples):
        log.info("  - %s: synthetic samples %s", name, tuple(s.shape))
    ids = torch.tensor([class_names.index(n) for n in names]).repeat_interleave(k)
    return samples.reshape(-1, *samples.shape[2:]), ids


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
                    source_uri: str, out_uri: str) -> dict:
    """Run 2's synthetic samples of one client for every round, from one read of its generator:
    round r's samples use the seed of (client, r), so they equal what a per-round task draws."""
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
    xs = []
    for r in range(1, rounds + 1):
        x, y = synthesise(cfg, client_id, vae, ckpt, class_names,
                          round_seed(cfg.seed, client_id, r), temperature, posterior)
        xs.append(x)
    report = {}
    if cfg.feda2v.quality_metrics:
        report = quality(vae, ckpt, data, class_names, client_id,
                         round_seed(cfg.seed, client_id, rounds), temperature, posterior)
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
