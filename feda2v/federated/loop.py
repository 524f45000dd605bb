"""The round loop: one federated phase, every round, every client, in this process.

The `phase` execution mode runs it inside one task; `round` mode runs the same two steps
(client_step, server_step) in one task per client and per server round; `feda2v experiment`
calls it directly. Each round seeds itself, so all three give the same numbers.

After every round the global adapter (and, in Run 1, each client's class conditions) is written
under the run folder; a retried task resumes after the last round written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from feda2v.federated.client import ClientData, client_step
from feda2v.federated.server import server_step
from feda2v.io import runstate, storage
from feda2v.io.config import Config
from feda2v.io.log import get_logger, progress

log = get_logger()


@dataclass
class Federation:
    """What every round of a phase reads: loaded once per phase task."""
    cfg: Config
    clients: list[ClientData]
    targets: torch.Tensor
    class_names: list[str]
    server_real: tuple | None = None

    @property
    def test_sets(self) -> list[tuple]:
        return [(d.test_x, d.test_y) for d in self.clients]


def save_conditions(run: str, update, r: int) -> None:
    storage.save_tensors(runstate.conditions_uri(run, update.client_id, r),
                         {"ids": update.condition_ids, "means": update.conditions},
                         {"client_id": update.client_id, "round": r})


def save_round(run: str, phase: str, r: int, step: int, state: dict, metrics: dict) -> None:
    """Written last in a round: its presence marks the round finished."""
    storage.save_tensors(runstate.round_uri(run, phase, r), state,
                         {"round": r, "step": step, "phase": phase, "metrics": metrics})


def run_phase(fed: Federation, phase: str, rounds: int, first_step: int,
              start: dict[str, torch.Tensor], run: str,
              synthetic: Callable[[int, int], tuple | None] | None = None,
              log_metrics: Callable[[dict, int], None] | None = None) -> tuple[dict, list[dict]]:
    """Run rounds 1..`rounds` of `phase` from the global adapter `start`; `synthetic(client,
    round)` gives a client's synthetic samples of a round. Returns (final state, history)."""
    done = runstate.last_round(run, phase, rounds)
    state, history = start, []
    opt_state = runstate.load_strategy_state(run, phase, done)
    for r in range(1, done + 1):  # finished by an earlier try of this task: read back
        state, meta = storage.load_tensors(runstate.round_uri(run, phase, r))
        history.append({"phase": phase, "round": r, "step": meta["step"],
                        "accuracy": meta["metrics"]["eval/global_accuracy"]})
    if done:
        log.info("[Server] %s: rounds 1-%d already finished under %s; resuming at round %d",
                 phase, done, run, done + 1)
    tick = progress(rounds - done, f"{phase} rounds")
    for r in range(done + 1, rounds + 1):
        step = first_step + r - 1
        log.info("=== Round %d/%d (%s) ===", r, rounds, phase)
        updates = []
        for i, data in enumerate(fed.clients):
            updates.append(client_step(fed.cfg, i, r, phase, state, data, fed.targets,
                                       fed.class_names, synthetic(i, r) if synthetic else None))
            if phase == "run1":
                save_conditions(run, updates[-1], r)
        state, metrics, accuracy, opt_state = server_step(
            fed.cfg, r, step, phase, updates, state, fed.targets, fed.class_names,
            fed.test_sets, fed.server_real, opt_state)
        if log_metrics:
            log_metrics(metrics, step)
        runstate.save_strategy_state(run, phase, r, opt_state)
        save_round(run, phase, r, step, state, metrics)
        history.append({"phase": phase, "round": r, "step": step, "accuracy": accuracy})
        tick(note=f"global accuracy {accuracy:.3f}")
    return state, history
