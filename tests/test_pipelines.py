import json

import yaml
from kfp import compiler

import pipelines
from feda2v import config as config_mod


def _compile(cfg, kind, tmp_path):
    path = tmp_path / f"{kind}.yaml"
    compiler.Compiler().compile(pipelines.build(cfg, kind), str(path))
    return yaml.safe_load(path.read_text()), path


def _tasks(spec):
    """All task names across the root DAG and every sub-DAG (loop bodies)."""
    names = list(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        names += list(comp.get("dag", {}).get("tasks", {}))
    return names


def test_run1_unrolls_rounds_and_fans_out_clients(make_config, tmp_path):
    cfg = make_config(global_rounds=3)
    spec, _ = _compile(cfg, "run1", tmp_path)
    tasks = _tasks(spec)
    assert sum(t.startswith("aggregate") for t in tasks) == 3
    assert sum(t.startswith("evaluate") for t in tasks) == 3
    assert not any(t.startswith("global-train") for t in tasks)
    loops = [t for t in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in t]
    assert len(loops) == 1 + 3  # extraction + one client fan-out per round
    assert all(json.loads(t["parameterIterator"]["items"]["raw"]) == [0, 1] for t in loops)
    default = spec["root"]["inputDefinitions"]["parameters"]["config_json"]["defaultValue"]
    assert json.loads(default) == cfg


def test_run2_trains_the_global_adapter_each_round(make_config, tmp_path):
    spec, _ = _compile(make_config(global_rounds=2), "run2", tmp_path)
    assert sum(t.startswith("global-train") for t in _tasks(spec)) == 2


def test_end_to_end_runs_both_phases(make_config, tmp_path):
    cfg = make_config(global_rounds=2, feda2v={"generator_training_rounds": 3})
    spec, _ = _compile(cfg, "end_to_end", tmp_path)
    tasks = _tasks(spec)
    assert sum(t.startswith("aggregate") for t in tasks) == 5
    assert sum(t.startswith("global-train") for t in tasks) == 2


def test_fedavg_only_when_generators_are_off(make_config):
    cfg = make_config(feda2v={"use_generator": False})
    assert pipelines.phase_plan(cfg, "end_to_end") == [("fedavg", 2)]


def test_cli_compile_writes_yaml(tmp_path):
    from feda2v.cli import main

    out = tmp_path / "p.yaml"
    main(["compile", "--config", "configs/a2v_generator_training_mode.json", "--output", str(out)])
    spec = yaml.safe_load(out.read_text())
    assert spec["pipelineInfo"]["name"] == "feda2v-run1"
    assert config_mod.loads(
        spec["root"]["inputDefinitions"]["parameters"]["config_json"]["defaultValue"]
    )["global_rounds"] == 30


def test_only_extraction_and_class_targets_are_cacheable(make_config, tmp_path):
    spec, _ = _compile(make_config(global_rounds=1), "run2", tmp_path)
    caching = {}
    for comp in [spec["root"], *spec["components"].values()]:
        for name, task in comp.get("dag", {}).get("tasks", {}).items():
            if "componentRef" in task and "parameterIterator" not in task:
                caching[name] = task.get("cachingOptions", {}).get("enableCache", False)
    assert caching.pop("extract") is True and caching.pop("class-targets") is True
    assert caching and not any(caching.values()), caching


def test_ablations_fan_out_one_task_per_variant(make_config, tmp_path):
    from feda2v.experiment import VARIANTS

    spec, _ = _compile(make_config(), "ablations", tmp_path)
    loops = [t for t in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in t]
    items = [json.loads(t["parameterIterator"]["items"]["raw"]) for t in loops]
    assert [0, 1] in items and list(VARIANTS) in items and len(items) == 2
    assert "ablation-report" in spec["root"]["dag"]["tasks"]
