"""Regressions found in review: leakage, cache keys, MLflow names and runs."""

import json

import pytest
import torch

from feda2v.data import datasets
from feda2v.encoders import extraction
from feda2v.io import config as config_mod
from feda2v.io import storage, tracking
from feda2v.orchestration import stages


def test_server_real_data_keeps_only_training_rows(tmp_path):
    uri = str(tmp_path / "real.safetensors")
    storage.save_tensors(uri, {"embeddings": torch.arange(10.0).reshape(10, 1, 1).repeat(1, 4, 8),
                               "labels": torch.zeros(10, dtype=torch.long),
                               "fold": torch.tensor([1, 1, 2, 2, 3, 3, 4, 4, 5, 5])},
                         {"class_names": ["dog"]})
    cfg = config_mod.validate({"data": {"clients": [["dog"]], "train_folds": [1, 2, 3],
                                        "test_folds": [5]},
                               "feda2v": {"server_real_data_uri": uri}})
    x, y = stages.server_real_data(cfg, ["dog"])
    assert y.tolist() == [0] * 6
    assert sorted(x[:, 0, 0].tolist()) == [0, 1, 2, 3, 4, 5]  # folds 1-3 only: no 4 (unused), 5
    codes = extraction.split_codes(cfg, storage.load_tensors(uri)[0], 10)
    assert codes.tolist() == [0, 0, 0, 0, 0, 0, -1, -1, 1, 1]


def test_relabelled_clip_misses_the_extraction_cache(make_config, tmp_path, demo_data):
    import shutil

    root = shutil.copytree(demo_data, tmp_path / "esc")
    cfg = make_config(data={"dataset_uri": str(root)})
    uri = extraction.embeddings_uri(cfg, 0)
    extraction.extract_client(cfg, 0, uri)
    meta = root / "meta" / "esc50.csv"
    rows = meta.read_text().splitlines()
    i = next(k for k, r in enumerate(rows) if ",dog," in r and r.startswith("1-"))
    rows[i] = rows[i].replace(",dog,", ",rooster,")  # same clip, same file, other label
    meta.write_text("\n".join(rows) + "\n")
    extraction.extract_client(cfg, 0, uri)
    t, _ = storage.load_tensors(uri)
    names = datasets.class_names(cfg)
    assert int((t["train_y"] == names.index("rooster")).sum()) == 17  # 16 + the relabelled one


def test_quality_of_classes_with_unusual_names_is_logged(tmp_path):
    cfg = config_mod.validate({"storage_root": str(tmp_path), "experiment_name": "q",
                               "data": {"clients": [["dog (bark)", "children's voices"]]}})
    targets = str(tmp_path / "targets.safetensors")
    storage.save_tensors(targets, {"targets": torch.eye(2)},
                         {"class_names": ["dog (bark)", "children's voices"]})
    from feda2v.federated.client import ClientUpdate
    from feda2v.federated.server import update_metrics

    entry = {"coverage": 0.5, "n_real": 3, "frechet": None}
    update = ClientUpdate(0, {"w": torch.ones(2)}, 3, {}, quality={
        "dog (bark)": entry, "children's voices": entry, "overall": entry})
    run_id = tracking.create_run(cfg, "q")
    tracking.log_metrics(cfg, run_id, update_metrics([update], {}, 0), 1)
    _, history = tracking.run_info(cfg, run_id)
    assert {"quality/node_0/coverage", "quality/node_0/dog _bark_/coverage",
            "quality/node_0/children_s voices/coverage"} <= set(history)


def test_a_run_that_belongs_to_another_pipeline_run_is_refused(tmp_path):
    cfg = config_mod.validate({"storage_root": str(tmp_path), "experiment_name": "r"})
    run_id = tracking.create_run(cfg, "first")
    assert tracking.ensure_run(cfg, run_id, "key-1", "run1:1") == run_id  # fresh run: claimed
    assert tracking.ensure_run(cfg, run_id, "key-1", "run1:1") == run_id  # a retry: the same
    with pytest.raises(ValueError, match="already holds another run's params"):
        tracking.ensure_run(cfg, run_id, "key-2", "run2:1")
    found = tracking.ensure_run(cfg, "", "key-1", "run1:1")  # no id given: found by its key
    assert found == run_id
    assert tracking.ensure_run(cfg, "", "key-3", "run1:1") != run_id


def test_a_stage_run_by_hand_writes_where_the_pipeline_reads(make_config, tmp_path, monkeypatch,
                                                             demo_data, tiny_models):
    import os
    import shutil

    from feda2v.cli import main
    from feda2v.localrun.run import resolve_local_paths

    shutil.copytree(demo_data, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    cfg = make_config(storage_root="store", data={"dataset_uri": "data"})
    with open("c.json", "w") as f:
        json.dump(cfg.to_dict(), f)
    main(["extract", "--config", "c.json", "--client", "1"])
    expected = extraction.embeddings_uri(resolve_local_paths(config_mod.load("c.json")), 1)
    assert os.path.isabs(expected) and os.path.exists(expected)
