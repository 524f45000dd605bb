"""Shared fixtures: a small procedural ESC-50 set and tiny random-initialised models, built
once per test session (offline, in seconds)."""

from __future__ import annotations

import os

import pytest

from feda2v.io import config as config_mod
from feda2v.orchestration import runtime


def pytest_configure(config):
    """Each xdist worker gets its share of the cores for torch, and so do the runs it starts
    (`feda2v run` shares $OMP_NUM_THREADS among its tasks): two workers with a thread per core
    each fight over every core and spin, which made the suite take 1.3x as long on 2 cores."""
    import torch

    if hasattr(config, "workerinput"):  # an xdist worker (a serial run keeps every core)
        workers = config.workerinput["workercount"]
        os.environ.setdefault("OMP_NUM_THREADS",
                              str(max(1, runtime.available_cores() // workers)))
        torch.set_num_threads(runtime.available_cores())


TEST_SPLIT = [["dog", "rooster"], ["rain", "siren"]]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    from feda2v.encoders.embed import write_tiny_models

    return write_tiny_models(str(tmp_path_factory.mktemp("models")), seed=0)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    from feda2v.data.demo_data import write_demo_dataset

    out = tmp_path_factory.mktemp("esc50")
    classes = [c for group in TEST_SPLIT for c in group]
    write_demo_dataset(str(out), classes=classes, clips_per_class=20, seconds=1.0, seed=0)
    return str(out)


def small_config(root, tiny_models, demo_data, **overrides):
    """A validated small config storing under `root` (overrides merged per section)."""
    raw = {
        "global_rounds": 2, "batch_size": 8, "local_epochs": 3, "seed": 0,
        "storage_root": str(root / "store"), "experiment_name": "test",
        "data": {"dataset_uri": demo_data, "clients": TEST_SPLIT, "clip_seconds": 1.0},
        "models": {"audio_model": tiny_models["audio"], "text_model": tiny_models["text"],
                   "device": "cpu"},
        "feda2v": {"generator_training_epochs": 10, "generator_hidden_dim": 64,
                   "generator_latent_dim": 16, "adapter_hidden_dims": [64, 64],
                   "synthetic_samples_per_class": 16, "generator_training_rounds": 2,
                   "global_model_train": True, "global_model_train_epochs": 5},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    return config_mod.validate(raw)


@pytest.fixture
def make_config(tmp_path, tiny_models, demo_data):
    """Return a function building a validated small config under this test's tmp_path."""

    def make(**overrides):
        return small_config(tmp_path, tiny_models, demo_data, **overrides)

    return make
