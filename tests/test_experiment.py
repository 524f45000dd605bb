"""`feda2v experiment`: every ablation on the same tiny data and seed, one table, one report."""

import json
import os
import re

import pytest

from feda2v.cli import main
from feda2v.io import config as config_mod
from feda2v.io import tracking
from feda2v.orchestration.experiment import VARIANTS, run_experiment


@pytest.fixture(scope="module")
def experiment_result(tmp_path_factory, tiny_models, demo_data):
    """One experiment that the three tests below read (it takes 10 s or more)."""
    from conftest import small_config

    cfg = small_config(tmp_path_factory.mktemp("experiment"), tiny_models, demo_data,
                       global_rounds=2, feda2v={"generator_training_rounds": 2,
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
    identity = re.search(r'<p class="identity">(.*?)</p>', html).group(1)
    assert f"seed {cfg.seed}" in identity and "config sha256 " in identity
    assert f"MLflow run {result['parent_run_id']}" in identity and "commit " in identity
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
    source = tracking.source_tags()
    assert source["mlflow.source.git.commit"]  # the tests run from a git checkout
    for run in [parent, *children]:  # every run: params and what made it
        assert run.data.params, run.info.run_name
        assert {k: run.data.tags.get(k) for k in source} == source
    synthetic = next(r for r in children if r.info.run_name == "t/synthetic")
    assert "quality/node_0/coverage" in synthetic.data.metrics
    assert "eval/accuracy_after_global_train" in synthetic.data.metrics


def test_unknown_variant_is_named(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text("{}")
    with pytest.raises(SystemExit):
        main(["experiment", "--config", str(cfg), "--variants", "fedavg,magic"])
    assert "unknown variant(s) ['magic']" in capsys.readouterr().err


def test_partitions_are_parsed_and_named_when_bad():
    from feda2v.orchestration.experiment import parse_partitions

    assert parse_partitions("classes, dirichlet:0.5,iid,pathological:2") == [
        "classes", "dirichlet:0.5", "iid", "pathological:2"]
    for bad in ("dirichlet", "dirichlet:-1", "dirichlet:x", "pathological:0", "shards"):
        with pytest.raises(ValueError, match=f"bad partition '{bad}'"):
            parse_partitions(bad)


def test_every_partition_spreads_the_same_classes_over_as_many_clients(make_config):
    from feda2v.orchestration.experiment import partitioned

    cfg = make_config()
    d = partitioned(cfg, "dirichlet:0.1", 7)
    assert d.seed == 7 and d.data.partition == "dirichlet"
    assert d.data.dirichlet_alpha == 0.1 and d.data.num_clients == 2
    assert d.data.classes == ["dog", "rooster", "rain", "siren"]
    assert partitioned(cfg, "classes", 1).data.clients == cfg.data.clients


def test_final_accuracy_is_the_mean_of_the_last_rounds_and_lines_pair_the_seeds():
    from feda2v.orchestration.experiment import (
        final_accuracy,
        grid_table,
        rounds_to_target,
        summarise,
    )

    def result(variant, accs):
        return {"variant": variant, "history": [{"accuracy": a} for a in accs]}

    assert final_accuracy(result("x", [0.1, 0.5, 0.6, 0.7])["history"]) == pytest.approx(0.6)
    assert rounds_to_target(result("x", [0.1, 0.5, 0.6])["history"], 0.55) == 3
    assert rounds_to_target(result("x", [0.1])["history"], 0.55) is None
    cells = {"classes": {0: summarise([result("fedavg", [0.5, 0.5, 0.5]),
                                       result("synthetic", [0.7, 0.7, 0.7]),
                                       result("centralized", [1.0, 1.0, 1.0])]),
                         1: summarise([result("fedavg", [0.6, 0.6, 0.6]),
                                       result("synthetic", [0.7, 0.7, 0.7]),
                                       result("centralized", [1.0, 1.0, 1.0])])}}
    table, lines = grid_table(cells, ["fedavg", "synthetic", "centralized"])
    assert lines == ["run2 - fedavg (classes, 2 seeds): +15.0 ± 7.1 pts",
                     "run2 - centralized (classes, 2 seeds): -30.0 ± 0.0 pts"]
    assert "0.550 ± 0.071" in table and "0.700 ± 0.000" in table
    assert cells["classes"][0][0]["target"] == pytest.approx(0.9)  # 90 % of centralized
    good = {"overall": {"density": 1.1, "density_real": 1.05, "coverage": 0.95, "flags": []}}
    crowded = {"overall": {"density": 3.9, "density_real": 0.9, "coverage": 1.0,
                           "flags": ["collapsed"]}}
    cells["classes"][0][1]["quality"] = {"0": good, "1": crowded}
    _, lines = grid_table(cells, ["fedavg", "synthetic"])  # no ceiling line without it
    assert lines[1] == ("generators (classes, 2 client-runs) vs held-out rows: density "
                        "1.10–3.90 (training rows: 0.90–1.05), coverage 0.95–1.00, healthy 1/2")


@pytest.mark.slow
def test_experiment_over_seeds_and_partitions_prints_the_table_and_lines(make_config, tmp_path,
                                                                        capsys):
    cfg = make_config(global_rounds=1, feda2v={"generator_training_rounds": 1,
                                               "generator_training_mode": True})
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    main(["experiment", "--config", str(path), "--variants", "fedavg,synthetic",
          "--seeds", "0,1", "--partitions", "dirichlet:0.5", "--strategies", "fedavg,fedadam"])
    out = capsys.readouterr().out
    assert "partition, strategy  " in out
    for label in ("dirichlet:0.5, fedavg", "dirichlet:0.5, fedadam"):
        assert f"run2 - fedavg ({label}, 2 seeds): " in out and " pts" in out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri(cfg))
    runs = client.search_runs([client.get_experiment_by_name(cfg.experiment_name)
                               .experiment_id])
    grid = [r for r in runs if r.info.run_name == "experiment"]
    assert len(grid) == 1 and grid[0].data.params["feda2v.seeds"] == "0,1"
    assert grid[0].data.params["feda2v.strategies"] == "fedavg,fedadam"
    cells = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == grid[0].info.run_id]
    assert len(cells) == 4  # 2 strategies x 2 seeds, each the parent of its variants
    variants = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in
                {c.info.run_id for c in cells}]
    assert sorted(r.data.params["strategy"] for r in variants) == ["fedadam"] * 4 + ["fedavg"] * 4
    with pytest.raises(SystemExit) as refused:
        main(["experiment", "--config", str(path), "--strategies", "fedavg,fedsgd", "--name",
              "refused"])
    assert refused.value.code == 2
    assert "bad value for 'strategy': expected one of" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(cfg.storage_root, "experiments", "refused"))


def test_epsilons_add_dp_sgd_runs_and_the_report_plots_accuracy_against_epsilon(make_config):
    from mlflow.tracking import MlflowClient

    cfg = make_config(global_rounds=1, feda2v={"generator_training_rounds": 1,
                                               "generator_training_mode": True})
    result = run_experiment(cfg, ["synthetic"], "dp", epsilons=[4.0, float("inf")])
    assert [r["variant"] for r in result["results"]] == ["synthetic", "synthetic-dp-eps4"]
    private = result["results"][1]
    assert private["dp_epsilon"] == 4.0
    spent = [q["overall"]["dp_epsilon"] for q in private["quality"].values()]
    assert len(spent) == 2 and all(0 < e <= 4.05 for e in spent)
    report_dir = os.path.dirname(result["html"])
    assert os.path.exists(os.path.join(report_dir, "privacy.png"))
    with open(result["html"]) as f:
        html = f.read()
    assert "Accuracy against privacy" in html and "<td>∞</td>" in html and "<td>4</td>" in html
    client = MlflowClient(tracking.tracking_uri(cfg))
    child = client.get_run(private["run_id"])
    assert child.data.params["feda2v.generator_dp_epsilon"] == "4.0"
    assert 0 < child.data.metrics["quality/node_0/dp_epsilon"] <= 4.05
    with pytest.raises(ValueError, match="include 'synthetic'"):
        run_experiment(cfg, ["fedavg"], "dp2", epsilons=[1.0])
    # Refused before any run or extraction: DP-SGD is for the VAE only.
    before = len(client.search_runs([child.info.experiment_id]))
    gan = cfg.replace(feda2v={"generator_type": "gan"})
    with pytest.raises(config_mod.ConfigError, match="generator_dp_epsilon"):
        run_experiment(gan, ["synthetic"], "dp3", epsilons=[1.0])
    assert len(client.search_runs([child.info.experiment_id])) == before


def test_the_synthetic_variant_gets_the_run_report_a_pipeline_run_gets(experiment_result):
    """The same renderer as the exit handler's, on the variant's MLflow run, linked from the
    ablation report."""
    from mlflow.tracking import MlflowClient

    cfg, result = experiment_result
    synthetic = next(r for r in result["results"] if r["variant"] == "synthetic")
    folder = os.path.dirname(synthetic["report"])
    assert {"report.html", "accuracy.png", "generator_loss.png", "partition.png",
            "confusion.png", "projection_client_0.png",
            "projection_client_1.png"} <= set(os.listdir(folder))
    with open(result["html"]) as f:
        assert f'href="{os.path.relpath(synthetic["report"], os.path.dirname(result["html"]))}"' \
            in f.read()
    client = MlflowClient(tracking.tracking_uri(cfg))
    logged = {a.path for a in client.list_artifacts(synthetic["run_id"], "report")}
    assert {"report/report.html", "report/confusion.png", "report/partition.json"} <= logged
    phases = client.get_run(synthetic["run_id"]).data.params["feda2v.phases"]
    assert phases == f"run1:{cfg.feda2v.generator_training_rounds},run2:{cfg.global_rounds}"
