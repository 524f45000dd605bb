"""Where one pipeline run keeps its state: `{storage_root}/runs/{run_key}/`.

The run key is KFP's pipeline job id (unique per run; the same across a task's retries), so a
run never reads or overwrites another run's round state, and a retried task finds what its
first try finished. Layout:

    {phase}/round_{r}/global.safetensors        global adapter after round r (written last)
    run1/conditions/client_{i}/round_{r}.safetensors   class conditions of client i, round r
    generators/client_{i}.pt                     client i's generator, resume state (optimizer)
    generators/client_{i}.json                   its per-round losses
    synthetic/client_{i}.safetensors             Run 2 synthetic samples of every round
    report/                                      the exit handler's report (HTML, figures);
                                                 projection_client_{i}.png from client i's task

The shared `generator_checkpoint_dir` (seed file names) is written under a lease, so two live
runs never overwrite each other's published checkpoints.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time

from feda2v.io import owner, storage
from feda2v.io.config import Config
from feda2v.io.log import get_logger

log = get_logger()
LEASE_NAME = "feda2v-lease.json"
LEASE_SECONDS = 30 * 60  # a holder out of sight that renews no more frees the folder after this

REPORT_FOLDER = "report"  # a run's report: under its run folder and its MLflow artifacts

def run_dir(cfg: Config, run_key: str) -> str:
    if not run_key or "/" in run_key or run_key in (".", ".."):
        raise ValueError(f"run key must be a non-empty name without '/', got {run_key!r}")
    return storage.join(cfg.storage_root, "runs", run_key)


def report_dir(cfg: Config, run_key: str) -> str:
    """The run's HTML report and its figures (and the clients' projections), in storage."""
    return storage.join(run_dir(cfg, run_key), REPORT_FOLDER)


def checkpoint_dir(cfg: Config) -> str:
    """The shared generator folder Run 2 loads from (relative keys: under the storage root)."""
    d = cfg.feda2v.generator_checkpoint_dir
    return d if ("://" in d or os.path.isabs(d)) else storage.join(cfg.storage_root, d)


def round_uri(run: str, phase: str, r: int) -> str:
    return storage.join(run, phase, f"round_{r}", "global.safetensors")


def strategy_uri(run: str, phase: str, r: int) -> str:
    """The server optimizer's state after round r (fedavgm/fedadam/fedyogi): written before
    the round's adapter, so a finished round always has it."""
    return storage.join(run, phase, f"round_{r}", "strategy.safetensors")


def load_strategy_state(run: str, phase: str, r: int) -> dict:
    """The strategy's state after round r of the phase; {} before round 1 or when it kept
    none (fedavg, fedprox)."""
    uri = strategy_uri(run, phase, r)
    return storage.load_tensors(uri)[0] if r > 0 and storage.exists(uri) else {}


def save_strategy_state(run: str, phase: str, r: int, state: dict) -> None:
    if state:
        storage.save_tensors(strategy_uri(run, phase, r), state, {"phase": phase, "round": r})


def conditions_dir(run: str) -> str:
    return storage.join(run, "run1", "conditions")


def conditions_uri(run: str, client_id: int, r: int, folder: str = "") -> str:
    """Client `client_id`'s class conditions of Run 1 round r, under the run folder or under
    `folder` (a copy of conditions_dir: the phase task's `conditions` artifact)."""
    return storage.join(folder or conditions_dir(run), f"client_{client_id}",
                        f"round_{r}.safetensors")


def generator_state_uri(run: str, client_id: int) -> str:
    return storage.join(run, "generators", f"client_{client_id}.pt")


def publish_refused_uri(run: str) -> str:
    """Written when the shared checkpoint folder was held by another live run as this run's
    generators started: from then on this run publishes nothing there (its rounds would mix
    with the other run's), on every client, retries included."""
    return storage.join(run, "generators", "publish_refused.json")


def generator_losses_uri(run: str, client_id: int) -> str:
    return storage.join(run, "generators", f"client_{client_id}.json")


def projection_uri(run: str, client_id: int) -> str:
    """Client i's picture of its real vs synthetic embeddings (drawn by its generation task)."""
    return storage.join(run, "report", f"projection_client_{client_id}.png")


def synthetic_uri(run: str, client_id: int) -> str:
    return storage.join(run, "synthetic", f"client_{client_id}.safetensors")


def last_round(run: str, phase: str, rounds: int) -> int:
    """The last round of `phase` whose global adapter was written (0: none)."""
    for r in range(rounds, 0, -1):
        if storage.exists(round_uri(run, phase, r)):
            return r
    return 0


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the lease on the shared checkpoint folder ----------------------------------------------
#
# A lease is held while its holder lives. Where the holder's process can be seen (same host,
# same process namespace: `feda2v run` and its tasks, a stage run by hand), a dead holder frees
# it at once; elsewhere (pods) a heartbeat that is not renewed frees it after LEASE_SECONDS.


def _lease_uri(folder: str) -> str:
    return storage.join(folder, LEASE_NAME)


def _current_owner() -> str:
    return os.environ.get(owner.OWNER_ENV) or owner.token()


def _read_lease(folder: str) -> dict | None:
    """The lease record on `folder` (None: none, unreadable or released)."""
    uri = _lease_uri(folder)
    if not storage.exists(uri):
        return None
    try:
        lease = storage.read_json(uri)
    except (ValueError, OSError):
        return None
    return None if not isinstance(lease, dict) or lease.get("released") else lease


def lease_holder(folder: str) -> dict | None:
    """The live lease on `folder` ({run, owner, expires, host}), or None when it is free:
    released, its owner's process gone, or (owner out of sight) its heartbeat expired."""
    lease = _read_lease(folder)
    if lease is None:
        return None
    alive = owner.alive(str(lease.get("owner", "")))
    if alive is None:
        expires = lease.get("expires", 0)
        alive = isinstance(expires, (int, float)) and expires >= time.time()
    return lease if alive else None


@contextlib.contextmanager
def _exclusive(folder: str):
    """On a local folder, one process at a time reads and writes the lease (an flock on a
    sidecar file): without it two runs that both saw the folder free both took it. Object
    stores have no such lock; there the read-back in `acquire` narrows the race."""
    if not storage.is_local(folder):
        yield
        return
    path = storage.local_path(_lease_uri(folder)) + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def acquire(folder: str, run_key: str) -> bool:
    """Take or renew the lease on `folder` for `run_key`; False while another live run holds it."""
    with _exclusive(folder):
        holder = lease_holder(folder)
        if holder is not None and holder.get("run") != run_key:
            return False
        storage.write_json(_lease_uri(folder), {"run": run_key, "owner": _current_owner(),
                                               "expires": time.time() + LEASE_SECONDS,
                                               "host": os.uname().nodename})
        return storage.read_json(_lease_uri(folder)).get("run") == run_key


def release(folder: str, run_key: str = "", owner_token: str = "") -> bool:
    """Release the lease on `folder` held by `run_key` (or by the process `owner_token`);
    True when this released it."""
    if not storage.exists(_lease_uri(folder)):  # never taken: leave no folder behind either
        return False
    with _exclusive(folder):
        lease = _read_lease(folder)  # a dead owner's too: hosts that cannot see it are told
        if lease is None or not ((run_key and lease.get("run") == run_key)
                                 or (owner_token and lease.get("owner") == owner_token)):
            return False
        storage.write_json(_lease_uri(folder), dict(lease, released=True))
        return True


def publish(folder: str, run_key: str, name: str, data: bytes) -> bool:
    """Write `data` as `folder/name` if this run holds (or can take) the folder's lease."""
    if not acquire(folder, run_key):
        holder = lease_holder(folder) or {}
        log.warning("%s is held by live run %s: this run's checkpoint stays under its run "
                    "folder (not published as %s)", folder, holder.get("run"), name)
        return False
    storage.write_bytes(storage.join(folder, name), data)
    return True


def write_losses(uri: str, losses: dict[int, float]) -> None:
    storage.write_json(uri, {str(r): v for r, v in sorted(losses.items())})


def read_losses(uri: str) -> dict[int, float]:
    return {int(r): float(v) for r, v in json.loads(storage.read_bytes(uri)).items()}
