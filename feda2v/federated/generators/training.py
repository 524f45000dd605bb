"""A client's generator over the rounds of Run 1: train each round on the class conditions
its adapter rounds wrote, keep resume state under the run folder, publish the seed's
checkpoints under the lease."""

from __future__ import annotations

import math
import os

import torch

from feda2v.federated.generators.checkpoints import (
    checkpoint_bytes,
    checkpoint_dict,
    checkpoint_uri,
    expected_dims,
    load,
    new_generator,
    new_optimizer,
    save,
)
from feda2v.io import storage
from feda2v.io.config import Config
from feda2v.io.log import get_logger

log = get_logger()


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
                 conditions_folder: str = "", on_round=None) -> dict:
    """All Run 1 rounds of one client's generator, from the conditions its adapter rounds wrote
    under the run folder (or their copy in `conditions_folder`). Resume state (with optimizer) goes to the run folder every
    generator_save_every rounds and at the end, so a retried task restarts from there; the seed's
    files go to `published_dir` (round snapshots weights only, the latest with the optimizer).
    on_round(r, loss) is called as each round ends (live tracking). Returns {round: loss} of
    every round of this run."""
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
    refused = runstate.publish_refused_uri(run)

    def publishing() -> bool:
        return not storage.exists(refused)

    for r in range(done + 1, rounds + 1):
        log.info("=== Generator round %d/%d — Client %d ===", r, rounds, client_id)
        # Claim the folder (or renew the heartbeat). Held by another live run: this run keeps
        # its generators under its run folder for good, even once the other run is done.
        if publishing() and not runstate.acquire(published_dir, run_key):
            holder = (runstate.lease_holder(published_dir) or {}).get("run")
            storage.write_json(refused, {"held_by": holder, "client_id": client_id, "round": r})
            log.warning("[Client %d] %s is held by live run %s: this run's generators stay "
                        "under its run folder; none is published", client_id, published_dir,
                        holder)
        t = conditions(r)
        log.info("[Client %d] Starting generator training mode", client_id)
        state, losses[r] = generator_round(cfg, client_id, r, state, x, y, t["ids"], t["means"])
        names = [class_names[c] for c in t["ids"]]
        vae, opt = state
        seed_round = offset + r
        extra = {"run": run_key, "run_round": r, "generator_loss": losses[r]}
        if seed_round % f.generator_save_every == 0 and publishing():
            snapshot = checkpoint_dict(cfg, vae, None, client_id, seed_round, names, t["means"],
                                       extra)
            _publish(published_dir, run_key, client_id, seed_round, checkpoint_bytes(snapshot))
        if seed_round % f.generator_save_every == 0 or r == rounds:
            save(own, cfg, vae, opt, client_id, seed_round, names, t["means"], extra)
            runstate.write_losses(losses_uri, losses)
        if on_round is not None:
            on_round(r, losses[r])
    if publishing():
        _publish(published_dir, run_key, client_id, None, storage.read_bytes(own))
    average = sum(losses.values()) / max(len(losses), 1)
    log.info("[Client %d] Generator training over %d rounds completed. Average loss: %.4f",
             client_id, len(losses), average)
    return losses


def _publish(folder: str, run_key: str, client_id: int, round_num: int | None,
             data: bytes) -> None:
    from feda2v.io import runstate

    name = os.path.basename(checkpoint_uri(folder, client_id, round_num))
    if runstate.publish(folder, run_key, name, data):
        log.info("[Client %d] Saved generator checkpoint to %s", client_id,
                 storage.join(folder, name))
