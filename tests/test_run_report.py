"""A run's report drawn from its MLflow run alone (`feda2v report --run-id`, and the exit
handler through the same functions): from a run recorded here without any training, for one
client, and for a client that holds a single class."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from feda2v.cli import main
from feda2v.evaluation import figures, run_report
from feda2v.io import config as config_mod
from feda2v.io import tracking

PNG = b"\x89PNG\r\n\x1a\n"


def _record(tmp_path, clients: list[list[str]], rounds=(2, 2)) -> tuple[str, str]:
    """An MLflow run as a pipeline run leaves it: metrics per round, quality numbers, the
    report's inputs under report/. Returns (tracking URI, run id)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = config_mod.validate({"mlflow_tracking_uri": uri, "experiment_name": "recorded",
                               "storage_root": str(tmp_path / "store")})
    run_id = tracking.create_run(cfg, "end_to_end-recorded")
    classes = [c for held in clients for c in held]
    r1, r2 = rounds
    client = tracking._client(uri)
    client.log_param(run_id, "feda2v.phases", f"run1:{r1},run2:{r2}")
    rng = np.random.default_rng(0)
    for step in range(1, r1 + r2 + 1):
        metrics = {"eval/global_accuracy": min(1.0, 0.2 * step)}
        for i in range(len(clients)):
            metrics[f"eval/node_{i}/accuracy"] = min(1.0, 0.1 * step + 0.1 * i)
            metrics[f"train/node_{i}/adapter_loss"] = 1.0 / step
            if step <= r1:
                metrics[f"train/node_{i}/generator_loss"] = 0.5 / step + 0.01 * i
        if step > r1:
            metrics["server/global_train_loss"] = 0.3 / step
            metrics["server/synthetic_samples_total"] = 16.0 * len(classes)
        tracking.log_metrics(cfg, run_id, metrics, step)
    quality = {}
    for i, held in enumerate(clients):
        quality[f"quality/node_{i}/density"] = 1.02
        quality[f"quality/node_{i}/flags"] = 0.0
        for name in held:
            quality[f"quality/node_{i}/{name}/coverage"] = 0.93
            quality[f"quality/node_{i}/{name}/flags"] = 1.0 if i else 0.0
    tracking.log_metrics(cfg, run_id, quality, r1 + r2)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    train = [[12 if c in held else 0 for c in classes] for held in clients]
    (inputs / run_report.PARTITION).write_text(json.dumps(
        {"classes": classes, "train": train, "test": [[n // 4 for n in row] for row in train]}))
    matrix = np.diag([3] * len(classes)).tolist()
    (inputs / run_report.CONFUSION).write_text(json.dumps({"classes": classes,
                                                            "matrix": matrix}))
    for i, held in enumerate(clients):
        ids = [classes.index(c) for c in held]
        real_y, syn_y = np.repeat(ids, 10), np.repeat(ids, 6)
        (inputs / f"projection_client_{i}.png").write_bytes(figures.projection_png(
            rng.normal(size=(len(real_y), 4, 8)) + real_y[:, None, None],
            real_y, rng.normal(size=(len(syn_y), 4, 8)) + syn_y[:, None, None], syn_y,
            classes))
    for file in sorted(inputs.iterdir()):
        tracking.log_artifact(cfg, run_id, str(file), run_report.FOLDER)
    tracking.end_run(cfg, run_id, "FINISHED")
    return uri, run_id


def test_the_report_of_a_recorded_run_has_every_figure_and_table(tmp_path, capsys):
    uri, run_id = _record(tmp_path, [["dog", "rooster"], ["rain", "siren"]])
    main(["report", "--run-id", run_id, "--tracking-uri", uri, "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert f"Report of MLflow run {run_id} (end_to_end-recorded, finished)" in out
    names = {"accuracy", "generator_loss", "adapter_loss", "partition", "confusion",
             "projection_client_0", "projection_client_1"}
    for name in names:
        path = tmp_path / "out" / f"{name}.png"
        assert path.read_bytes().startswith(PNG) and path.stat().st_size > 5000, name
        assert f"  {name}" in out
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == len(names)
    assert "run1:2,run2:2" in page and run_id in page
    # the quality numbers, by client and class, and a verdict from the flag count
    assert "<h3>Client 0</h3>" in page and "<h3>Client 1</h3>" in page
    assert "1.020" in page and "0.930" in page and "1 flag(s)" in page
    table = page.split("<pre>")[1].split("</pre>")[0].splitlines()  # the rounds table
    assert [line.split()[:2] for line in table[2:]] == [["run1", "1"], ["run1", "2"],
                                                        ["run2", "1"], ["run2", "2"]]


def test_the_same_data_gives_the_same_report(tmp_path):
    """The exit handler and `feda2v report` call collect + render: same run, same files."""
    uri, run_id = _record(tmp_path, [["dog", "rooster"], ["rain"]])
    cfg = config_mod.validate({"mlflow_tracking_uri": uri})
    a = run_report.render(run_report.collect(cfg, run_id), str(tmp_path / "a"))
    b = run_report.render(run_report.collect(cfg, run_id), str(tmp_path / "b"))
    assert sorted(a) == sorted(b)
    with open(a["html"]) as fa, open(b["html"]) as fb:
        assert fa.read() == fb.read()


def test_one_client_and_a_client_with_a_single_class_get_their_figures(tmp_path):
    for clients in ([["dog", "rooster", "rain"]], [["dog", "rooster"], ["rain"]]):
        folder = tmp_path / str(len(clients))
        folder.mkdir()
        uri, run_id = _record(folder, clients)
        cfg = config_mod.validate({"mlflow_tracking_uri": uri})
        paths = run_report.render(run_report.collect(cfg, run_id), str(folder / "out"))
        expected = {"accuracy", "generator_loss", "adapter_loss", "partition", "confusion",
                    *(f"projection_client_{i}" for i in range(len(clients)))}
        assert set(paths) == expected | {"html"}
        for name in expected:
            with open(paths[name], "rb") as f:
                assert f.read().startswith(PNG), (clients, name)
    # The single-class client's own picture, drawn as its task draws it.
    one = figures.projection_png(np.ones((5, 3)) + np.arange(5)[:, None], [0] * 5,
                                 np.ones((4, 3)), [0] * 4, ["rain"])
    assert one.startswith(PNG)
    # A partition with one client, a confusion matrix of one class.
    assert figures.partition_png([[7]], ["rain"]).startswith(PNG)
    assert figures.confusion_png([[3]], ["rain"]).startswith(PNG)


def test_a_run_that_stopped_early_gets_the_figures_it_has(tmp_path):
    """No partition, no confusion matrix, no projection (a run that failed in Run 1): the
    curves are drawn, and the page says what is missing."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = config_mod.validate({"mlflow_tracking_uri": uri, "storage_root": str(tmp_path / "store")})
    run_id = tracking.create_run(cfg, "failed")
    tracking.log_metrics(cfg, run_id, {"eval/global_accuracy": 0.25}, 1)
    tracking.end_run(cfg, run_id, "FAILED")
    paths = run_report.render(run_report.collect(cfg, run_id), str(tmp_path / "out"))
    assert set(paths) == {"accuracy", "generator_loss", "adapter_loss", "html"}
    with open(paths["html"]) as f:
        page = f.read()
    assert "No partition was recorded" in page and "the run did not finish" in page
    assert "No client drew one" in page


def test_report_names_what_it_lacks(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["report", "--run-id", "abc"])
    assert e.value.code == 2
    assert "no MLflow tracking server: give --tracking-uri" in capsys.readouterr().err
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(SystemExit):
        main(["report", "--run-id", "0123456789abcdef", "--tracking-uri", uri,
              "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "MLflow run '0123456789abcdef' could not be read from sqlite:///" in err
    assert not os.path.exists(tmp_path / "out")
