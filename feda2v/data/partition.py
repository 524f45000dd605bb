"""Partitioners: how a dataset's clips are spread over clients.

Every partitioner is a class x client share matrix P [C, K] (rows sum to 1). The clips of each
class are shuffled with the seed and cut into consecutive chunks by P's row, separately for the
train and the test split, so a client's test clips follow its training distribution.
"""

from __future__ import annotations

import numpy as np

from feda2v.io.config import Config
from feda2v.io.log import get_logger

log = get_logger()


def reference_shares(class_names: list[str], clients: list[list[str]]) -> np.ndarray:
    """Explicit class lists per client; a class listed for several clients is split evenly."""
    shares = np.zeros((len(class_names), len(clients)))
    index = {c: i for i, c in enumerate(class_names)}
    for k, classes in enumerate(clients):
        for c in classes:
            if c not in index:
                raise ValueError(f"client {k}: class {c!r} is not among the dataset's classes")
            shares[index[c], k] = 1.0
    return shares


def pathological_shares(num_classes: int, num_clients: int, per_client: int,
                        seed: int) -> np.ndarray:
    """Each client gets `per_client` classes, dealt round-robin from a seeded class order."""
    if per_client > num_classes:
        raise ValueError(f"data.classes_per_client ({per_client}) exceeds the number of "
                         f"classes ({num_classes})")
    order = np.random.default_rng(seed).permutation(num_classes)
    shares = np.zeros((num_classes, num_clients))
    slot = 0
    for k in range(num_clients):
        for _ in range(per_client):
            shares[order[slot % num_classes], k] = 1.0
            slot += 1
    return shares


def dirichlet_shares(num_classes: int, num_clients: int, alpha: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(num_clients, alpha), size=num_classes)


def iid_shares(num_classes: int, num_clients: int) -> np.ndarray:
    return np.full((num_classes, num_clients), 1.0 / num_clients)


def shares_for(cfg: Config, class_names: list[str]) -> np.ndarray:
    data, seed = cfg.data, cfg.seed
    kind, k = data.partition, data.num_clients
    if kind == "classes":
        shares = reference_shares(class_names, data.clients)
    elif kind == "pathological":
        shares = pathological_shares(len(class_names), k, data.classes_per_client, seed)
    elif kind == "dirichlet":
        shares = dirichlet_shares(len(class_names), k, data.dirichlet_alpha, seed)
    else:
        shares = iid_shares(len(class_names), k)
    rows = shares.sum(axis=1, keepdims=True)
    return np.divide(shares, rows, out=np.zeros_like(shares), where=rows > 0)


def _chunk_sizes(n: int, row: np.ndarray) -> np.ndarray:
    """Split n items by the shares in `row` (largest remainder, so sizes sum to n)."""
    exact = row * n
    sizes = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - sizes), kind="stable")[: n - sizes.sum()]:
        sizes[k] += 1
    return sizes


def assign(labels: np.ndarray, shares: np.ndarray, seed: int) -> np.ndarray:
    """Client index of every item (-1 for classes no client owns)."""
    owner = np.full(len(labels), -1)
    rng = np.random.default_rng(seed)
    for c in range(shares.shape[0]):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0 or shares[c].sum() == 0:
            continue
        idx = idx[rng.permutation(len(idx))]
        start = 0
        for k, size in enumerate(_chunk_sizes(len(idx), shares[c])):
            owner[idx[start:start + size]] = k
            start += size
    return owner


def client_indices(labels: np.ndarray, splits: np.ndarray, shares: np.ndarray, seed: int,
                   class_names: list[str]) -> list[dict[str, np.ndarray]]:
    """Per client: {'train': item indices, 'test': item indices}. Logs per-client class counts
    and fails naming any client left without training data."""
    owner_train = assign(np.where(splits == 0, labels, -1), shares, seed)
    owner_test = assign(np.where(splits == 1, labels, -1), shares, seed + 1)
    out = []
    for k in range(shares.shape[1]):
        train, test = np.flatnonzero(owner_train == k), np.flatnonzero(owner_test == k)
        counts = np.bincount(labels[train], minlength=len(class_names))
        listing = ", ".join(f"{class_names[c]}={n}" for c, n in enumerate(counts) if n)
        log.info("[Partition] client %d: %d train / %d test clips (%s)", k, len(train), len(test),
                 listing or "no classes")
        if len(train) == 0:
            raise ValueError(f"client {k} received no training data from the partition; use "
                             "fewer clients, a larger data.dirichlet_alpha or more clips")
        out.append({"train": train, "test": test})
    return out
