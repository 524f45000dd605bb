"""Hostile names and URIs (issue 21, failures 6, 9 and 10): a class name or an experiment name
that is not one safe path segment and MLflow metric-key segment is refused by name before any
MLflow run, task or folder exists; a password with unencoded '@' (or '?', '#') is redacted
whole, everywhere."""

from __future__ import annotations

import json
import os
import re

import pytest

from feda2v.cli import main
from feda2v.io import config as config_mod
from feda2v.io import tracking

HOSTILE = ["../../escape", "a/b", "..", ".", ".hidden", "x..y", "tab\there", " pad", "ok?no"]


@pytest.fixture
def no_mlflow_run(monkeypatch):
    """Any MLflow run created from here on fails the test: refusals must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("an MLflow run was created before the bad name was refused")

    monkeypatch.setattr(tracking, "create_run", refuse)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# --- 6. class names ------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", HOSTILE)
def test_a_hostile_class_name_in_the_config_is_refused_by_key(bad):
    with pytest.raises(config_mod.ConfigError, match=r"'data\.clients': client 1: .*not a safe"):
        config_mod.validate({"data": {"clients": [["dog"], ["rain", bad]]}})
    with pytest.raises(config_mod.ConfigError, match=r"'data\.classes': .*not a safe name"):
        config_mod.validate({"data": {"partition": "iid", "classes": ["dog", bad]}})


@pytest.mark.parametrize("good", ["dog", "sea_waves", "Acoustic guitar", "C-major 7", "v1.2",
                                  "a:b", "Gitarre_ä"])
def test_ordinary_class_names_pass(good):
    assert config_mod.validate({"data": {"clients": [[good]]}}).data.clients == [[good]]


def test_the_cli_refuses_a_hostile_class_name_with_exit_2_and_writes_nothing(
        tmp_path, capsys, no_mlflow_run):
    store = tmp_path / "store"
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"storage_root": str(store),
                                "data": {"clients": [["dog"], ["../../escape"]]}}))
    with pytest.raises(SystemExit) as e:
        main(["run", "--config", str(path), "--no-prefork"])
    assert e.value.code == 2
    line = _one_error_line(capsys)
    assert "'data.clients'" in line and "'../../escape'" in line
    assert not store.exists() and sorted(os.listdir(tmp_path)) == ["c.json"]


def _esc50_with(tmp_path, classes: list[str]) -> str:
    from feda2v.data.demo_data import write_demo_dataset

    out = tmp_path / "esc50"
    write_demo_dataset(str(out), classes=classes, clips_per_class=5, seconds=0.2, seed=0)
    return str(out)


@pytest.mark.parametrize("bad", ["../../escape", ".hidden", "a/b"])
def test_a_hostile_category_in_esc50_csv_is_refused_before_any_mlflow_run(
        tmp_path, capsys, make_config, no_mlflow_run, bad):
    data = _esc50_with(tmp_path, ["dog", bad])
    cfg = make_config(data={"dataset_uri": data, "partition": "iid", "num_clients": 2,
                            "clients": [["dog"]]})  # iid, no data.classes: the csv names them
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    with pytest.raises(SystemExit) as e:
        main(["run", "--config", str(path), "--no-prefork"])
    assert e.value.code == 2
    line = _one_error_line(capsys)
    assert "data.dataset_uri" in line and repr(bad) in line and "esc50.csv" in line
    assert not os.path.exists(cfg.storage_root)  # no MLflow db, no folder, no task


def test_a_hostile_class_folder_is_refused_where_the_dataset_is_read(tmp_path, make_config):
    from feda2v.data import datasets

    (tmp_path / "folders" / "dog").mkdir(parents=True)
    (tmp_path / "folders" / "dog" / "a.wav").write_bytes(b"")
    (tmp_path / "folders" / "..x").mkdir()
    (tmp_path / "folders" / "..x" / "a.wav").write_bytes(b"")
    cfg = make_config(data={"dataset_uri": str(tmp_path / "folders"), "format": "folders",
                            "partition": "iid"})
    with pytest.raises(ValueError, match=r"data\.dataset_uri .*class folder.*'\.\.x'"):
        datasets.read_items(cfg)


def test_the_experiment_refuses_a_hostile_dataset_class_before_any_mlflow_run(
        tmp_path, capsys, make_config, no_mlflow_run):
    data = _esc50_with(tmp_path, ["dog", "../../escape"])
    cfg = make_config(data={"dataset_uri": data, "partition": "iid", "num_clients": 2})
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    with pytest.raises(SystemExit) as e:
        main(["experiment", "--config", str(path), "--variants", "fedavg"])
    assert e.value.code == 2
    assert "'../../escape'" in _one_error_line(capsys)
    assert not os.path.exists(cfg.storage_root)


# --- 9. passwords with '@' ---------------------------------------------------------------------

# (URI, its password, what redact must give)
TRICKY = [
    ("http://alice:p@ss-WORD@host", "p@ss-WORD", "http://***@host"),
    ("http://alice:pAq@ssQ@WO7@RD8@host:5000/path@x?q=a@b#f@g", "pAq@ssQ@WO7@RD8",
     "http://***@host:5000/path@x?q=a@b#f@g"),
    ("s3://KEY:seX@crY@etZ@bucket/key", "seX@crY@etZ", "s3://***@bucket/key"),
    ("https://alice:pq?ss#WORD@host/x", "pq?ss#WORD", "https://***@host/x"),
    ("http://alice@host/a@b", "", "http://***@host/a@b"),  # no password: the user goes too
    ("http://host/models/org@v1?who=a@b", "", "http://host/models/org@v1?who=a@b"),
    ("sqlite:///srv/x@y.db", "", "sqlite:///srv/x@y.db"),
]


def _pieces(password: str) -> list[str]:
    """Every part of a password that would betray it: the whole, and each run between '@'s."""
    return [p for p in [password, *re.split(r"[@?#]", password)] if len(p) >= 3]


@pytest.mark.parametrize("uri, password, want", TRICKY)
def test_redaction_hides_the_whole_userinfo_up_to_the_last_at(uri, password, want):
    assert config_mod.redact(uri) == want
    assert tracking.redact is config_mod.redact  # one rule everywhere
    text = f"cannot open {uri}: refused (see {uri!r}, [{json.dumps(uri)}])"
    out = config_mod.redact(text)
    for piece in _pieces(password):
        assert piece not in out


def test_a_password_with_at_signs_reaches_no_task_argv_or_mlflow_param(monkeypatch):
    uri = "http://alice:p@ss-WORD@mlflow.example:5000"
    cfg = config_mod.validate({"mlflow_tracking_uri": uri,
                               "data": {"dataset_uri": "s3://K:seX@crY@etZ@bucket/esc50"}})
    task_cfg, withheld = config_mod.withhold_credentials(cfg)
    line = task_cfg.to_json()  # what the tasks' command lines carry
    params = {k: tracking.redact(v) for k, v in tracking.flatten(cfg).items()}  # log_params
    for piece in _pieces("p@ss-WORD") + _pieces("seX@crY@etZ"):
        assert piece not in line and piece not in json.dumps(params)
    assert task_cfg.mlflow_tracking_uri == "http://***@mlflow.example:5000"
    monkeypatch.setenv(config_mod.CREDENTIALS_ENV, json.dumps(withheld))
    back = config_mod.loads(line)  # the task gets the real values from its environment
    assert back.mlflow_tracking_uri == uri
    assert back.data.dataset_uri == "s3://K:seX@crY@etZ@bucket/esc50"


def test_an_unreachable_server_is_named_without_any_part_of_the_password(tmp_path, capsys,
                                                                           make_config):
    path = tmp_path / "c.json"
    path.write_text(make_config(mlflow_tracking_uri="http://alice:p@ss-WORD@127.0.0.1:9")
                    .to_json())
    with pytest.raises(SystemExit) as e:
        main(["run", "--config", str(path), "--no-prefork"])
    assert e.value.code == 2
    line = _one_error_line(capsys)
    assert "http://***@127.0.0.1:9" in line
    assert "ss-WORD" not in line and "p@ss" not in line


@pytest.mark.parametrize("uri", ["http://alice:p/ss-WORD@host/x", "http://alice:12#ss-WORD@host",
                                 "http://alice:pa?ss-WORD@host"])
def test_a_uri_whose_password_breaks_its_host_part_is_refused_without_showing_it(uri):
    with pytest.raises(config_mod.ConfigError) as e:
        config_mod.validate({"mlflow_tracking_uri": uri})
    assert "'mlflow_tracking_uri'" in str(e.value) and "percent-encode" in str(e.value)
    assert "ss-WORD" not in str(e.value)


def test_the_environment_tracking_uri_is_checked_like_the_configs(tmp_path, capsys, monkeypatch,
                                                                     make_config):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:p/ss-WORD@127.0.0.1:9")
    path = tmp_path / "c.json"
    path.write_text(make_config().to_json())
    with pytest.raises(SystemExit) as e:
        main(["run", "--config", str(path), "--no-prefork"])
    assert e.value.code == 2
    line = _one_error_line(capsys)
    assert "$MLFLOW_TRACKING_URI" in line and "ss-WORD" not in line


# --- 10. experiment names ----------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["../../../x", "a/b", "..", ".x", "/abs"])
def test_experiment_name_outside_storage_root_is_refused_and_nothing_is_written(
        tmp_path, capsys, no_mlflow_run, bad):
    inner = tmp_path / "a" / "b" / "c"
    inner.mkdir(parents=True)
    path = inner / "c.json"
    path.write_text(json.dumps({"storage_root": str(inner / "store")}))
    with pytest.raises(SystemExit) as e:
        main(["experiment", "--config", str(path), "--name", bad, "--variants", "fedavg"])
    assert e.value.code == 2
    line = _one_error_line(capsys)
    assert "--name" in line and repr(bad) in line
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert written == ["a", "a/b", "a/b/c", "a/b/c/c.json"]


def test_the_experiment_functions_refuse_such_names_too(make_config, no_mlflow_run):
    from feda2v.orchestration.experiment import run_experiment, run_grid

    cfg = make_config()
    with pytest.raises(config_mod.ConfigError, match="the experiment name"):
        run_experiment(cfg, ["fedavg"], "../../../x")
    with pytest.raises(config_mod.ConfigError, match="the experiment name"):
        run_grid(cfg, ["fedavg"], [0], ["classes"], "x/../..")
