"""`feda2v experiment`: every ablation on the same tiny data and seed, one table, one report."""

import json
import os

import pytest

from feda2v import tracking
from feda2v.cli import main
from feda2v.experiment import VARIANTS, run_experiment


@pytest.fixture
def experiment_result(make_config):
    cfg = make_config(global_rounds=2, feda2v={"generator_training_rounds": 2,
                                               "generator_training_mode": True})
    return cfg, run_experiment(cfg, name="t")


def test_all_variants_run_on_the_same_data_and_give_one_table(experiment_result):
    _, result = experiment_result
    assert [r["variant"] for r in result["results"]] == list(VARIANTS)
    for r in result["results"]:
        assert len(r["history"]) == 4  # R1 + R2 rounds for every variant
        assert 0.0 <= r["final_accuracy"] <= 1.0
    table = result["table"]
    for variant in VARIANTS:
        assert f"\n{variant} " in table
    by = {r["variant"]: r["final_accuracy"] for r in result["results"]}
    assert by["centralized"] >= by["fedavg"]  # the upper bound is an upper bound here
    assert by["synthetic"] > 0.25  # above chance (4 classes)
    assert "Train-on-synthetic / test-on-real accuracy (synthetic_only)" in table


def test_quality_metrics_come_from_the_clients_of_the_synthetic_variant(experiment_result):
    _, result = experiment_result
    quality = next(r for r in result["results"] if r["variant"] == "synthetic")["quality"]
    assert sorted(quality) == ["0", "1"]
    for per_class in quality.values():
        assert {"overall"} < set(per_class)
        overall = per_class["overall"]
        assert 0.0 <= overall["coverage"] <= 1.0 and overall["density"] >= 0.0
        assert overall["memorisation_ratio"] > 0 and overall["frechet"] >= -1e-6
        assert overall["frechet_real_baseline"] is not None
    assert "Synthetic samples (Run 2, last round)" in result["table"]


def test_report_and_results_are_written_and_tracked(experiment_result):
    cfg, result = experiment_result
    with open(result["html"]) as f:
        html = f.read()
    assert all(v in html for v in VARIANTS) and "data:image/png;base64" in html
    assert os.path.exists(os.path.join(os.path.dirname(result["html"]), "projection.png"))
    with open(os.path.join(result["dir"], "results.json")) as f:
        saved = json.load(f)
    assert [r["variant"] for r in saved] == list(VARIANTS)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri(cfg))
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {
        "report/report.html", "report/accuracy.png"}
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == sorted(f"t/{v}" for v in VARIANTS)
    synthetic = next(r for r in children if r.info.run_name == "t/synthetic")
    assert "quality/node_0/coverage" in synthetic.data.metrics
    assert "eval/accuracy_after_global_train" in synthetic.data.metrics


def test_unknown_variant_is_named(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text("{}")
    with pytest.raises(SystemExit):
        main(["experiment", "--config", str(cfg), "--variants", "fedavg,magic"])
    assert "unknown variant(s) ['magic']" in capsys.readouterr().err
