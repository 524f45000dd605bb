import numpy as np
import pytest

from feda2v.data import partition
from feda2v.io import config as config_mod

NAMES = [f"c{i}" for i in range(10)]


def _labels(per_class=20):
    labels = np.repeat(np.arange(len(NAMES)), per_class)
    splits = np.tile(np.r_[np.zeros(per_class - 4), np.ones(4)].astype(int), len(NAMES))
    return labels, splits


def _cfg(**data):
    return config_mod.validate({"seed": 3, "data": data})


def _counts(parts, labels, split="train"):
    return [np.bincount(labels[p[split]], minlength=len(NAMES)) for p in parts]


def test_reference_split_gives_each_client_exactly_its_classes():
    cfg = _cfg(clients=[["c0", "c1"], ["c2"], ["c1", "c3"]])
    labels, splits = _labels()
    parts = partition.client_indices(labels, splits, partition.shares_for(cfg, NAMES), 3, NAMES)
    counts = _counts(parts, labels)
    assert counts[0][[0, 1]].tolist() == [16, 8] and counts[0].sum() == 24
    assert counts[1][2] == 16 and counts[1].sum() == 16
    assert counts[2][[1, 3]].tolist() == [8, 16]  # c1 is shared, split evenly
    test_counts = _counts(parts, labels, "test")
    assert test_counts[1][2] == 4 and test_counts[1].sum() == 4


def test_pathological_gives_k_classes_per_client():
    cfg = _cfg(partition="pathological", num_clients=5, classes_per_client=2)
    labels, splits = _labels()
    parts = partition.client_indices(labels, splits, partition.shares_for(cfg, NAMES), 3, NAMES)
    assert all((c > 0).sum() == 2 for c in _counts(parts, labels))


def test_dirichlet_skew_follows_alpha_and_covers_everything():
    labels, splits = _labels(per_class=100)

    def max_share(alpha):
        cfg = _cfg(partition="dirichlet", num_clients=4, dirichlet_alpha=alpha)
        parts = partition.client_indices(labels, splits, partition.shares_for(cfg, NAMES), 3,
                                         NAMES)
        counts = np.array(_counts(parts, labels))
        assert counts.sum() == (splits == 0).sum()  # every training clip goes somewhere
        return (counts.max(axis=0) / counts.sum(axis=0)).mean()

    assert max_share(0.1) > 0.7 > max_share(100.0)


def test_iid_splits_every_class_evenly():
    cfg = _cfg(partition="iid", num_clients=4)
    labels, splits = _labels()
    parts = partition.client_indices(labels, splits, partition.shares_for(cfg, NAMES), 3, NAMES)
    for c in _counts(parts, labels):
        assert c.tolist() == [4] * 10


@pytest.mark.parametrize("kind", ["pathological", "dirichlet", "iid"])
def test_partitions_are_deterministic_for_a_seed(kind):
    labels, splits = _labels()
    cfg = _cfg(partition=kind, num_clients=3, classes_per_client=3)
    shares = partition.shares_for(cfg, NAMES)
    a = partition.client_indices(labels, splits, shares, 3, NAMES)
    b = partition.client_indices(labels, splits, partition.shares_for(cfg, NAMES), 3, NAMES)
    assert all(np.array_equal(x["train"], y["train"]) for x, y in zip(a, b))
    reseeded = config_mod.validate({"seed": 4, "data": {"partition": kind, "num_clients": 3,
                                                         "classes_per_client": 3}})
    other = partition.client_indices(labels, splits, partition.shares_for(reseeded, NAMES), 4,
                                     NAMES)
    assert any(not np.array_equal(x["train"], y["train"]) for x, y in zip(a, other))


def test_a_client_without_data_is_an_error_naming_it():
    cfg = _cfg(partition="iid", num_clients=3)
    few = np.array([0, 0]), np.array([0, 0])
    with pytest.raises(ValueError, match="client 2 received no training data"):
        partition.client_indices(*few, partition.shares_for(cfg, NAMES), 3, NAMES)


def test_unknown_class_in_the_reference_split_is_named():
    with pytest.raises(ValueError, match="client 1: class 'zebra'"):
        partition.shares_for(_cfg(clients=[["c0"], ["zebra"]]), NAMES)
