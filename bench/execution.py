"""What a pipeline run costs beyond its work, and how it scales.

    python bench/execution.py [--config configs/demo.json] [--repeats 3]

- local overhead: wall time of `feda2v run` (phase and round execution) over the wall time of
  the same stage calls in one process (class targets, extraction, Run 1, generators, synthetic
  samples, Run 2, the exit handler's tracking), median of `--repeats` interleaved runs.
  Extraction is cached after the first (warm-up) run in every case. The inputs the config names
  and a fresh clone lacks (the demo's .demo/ESC-50 and .demo/models) are written first, by the
  commands `make demo` runs, and kept for the next time.
- tasks of a seed-sized end_to_end run (3 clients, 30 + 50 rounds), counted from the compiled
  DAG (a loop body counts once per item).
- compiled YAML bytes of a phase-execution pipeline at 100 clients, 1000 + 1000 rounds.
- checkpoint bytes per client-round at the seed's dims (4 x 768 tokens, 768-d condition, hidden
  1024, latent 256): written by a client's Run 1 generator task, read by its Run 2 sampling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return time.perf_counter() - start


IN_PROCESS = """
import sys, uuid
from feda2v.io import config as config_mod, tracking
from feda2v.localrun.run import resolve_local_paths
from feda2v.orchestration import finish, runtime, stages
cfg = resolve_local_paths(config_mod.load(sys.argv[1]))
cfg = cfg.replace(pipeline=config_mod.pipeline_kind(cfg))
key = "bench-" + uuid.uuid4().hex[:8]
run_id = tracking.create_run(cfg, key)
plan = dict(runtime.plan(cfg))
n = config_mod.num_clients(cfg)
for i in range(n):
    stages.extract(cfg, i)
if "run1" in plan:
    stages.federated_phase(cfg, "run1", key, run_id)
    for i in range(n):
        stages.train_generator(cfg, i, key)
if "run2" in plan:
    for i in range(n):
        stages.generate(cfg, i, key)
    stages.federated_phase(cfg, "run2", key, run_id)
finish.finish_tracking(cfg, run_id, key, "SUCCEEDED", "/dev/null")
"""


def ensure_inputs(config: str) -> None:
    """Write what `config` reads locally and is missing, as `make demo` does before its run: the
    procedural dataset (`feda2v data demo`) at data.dataset_uri, the tiny offline models
    (`feda2v models tiny`) in the folder of models.audio_model / text_model."""
    from feda2v.encoders.model_source import resolve
    from feda2v.io import config as config_mod
    from feda2v.io import storage

    cfg = config_mod.load(os.path.join(ROOT, config))
    cli = [sys.executable, "-m", "feda2v.cli"]
    steps = []
    data = cfg.data.dataset_uri
    if storage.is_local(data) and not os.path.exists(os.path.join(ROOT, storage.local_path(data))):
        steps.append([*cli, "data", "demo", "--out", storage.local_path(data)])
    models = [m for m in (cfg.models.audio_model, cfg.models.text_model)
              if storage.is_local(m) and os.path.isabs(resolve(m))  # a folder, not a hub id
              and not os.path.exists(os.path.join(ROOT, storage.local_path(m)))]
    steps += [[*cli, "models", "tiny", "--out", folder]
              for folder in sorted({os.path.dirname(storage.local_path(m)) for m in models})]
    for cmd in steps:
        print(f"Writing the missing input: {' '.join(cmd[1:])} ({_wall(cmd):.0f} s)")
    for m in models:
        if not os.path.exists(os.path.join(ROOT, storage.local_path(m))):
            sys.exit(f"{config}: `feda2v models tiny` writes audio/, clap/, text/, vision/; "
                     f"{m} is none of them")


def local_overhead(config: str, repeats: int) -> dict[str, float]:
    py = sys.executable
    commands = {
        "phase": [py, "-m", "feda2v.cli", "run", "--config", config, "--execution", "phase"],
        "round": [py, "-m", "feda2v.cli", "run", "--config", config, "--execution", "round"],
        "phase, no prefork": [py, "-m", "feda2v.cli", "run", "--config", config, "--no-prefork"],
        "in-process": [py, "-c", IN_PROCESS, config],
    }
    _wall(commands["phase"])  # warm-up: extraction cache, MLflow store
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(repeats):
        for name, cmd in commands.items():
            times[name].append(_wall(cmd))
    medians = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"  {k:17s} wall s: " + ", ".join(f"{t:.1f}" for t in v)
              + f" (median {medians[k]:.1f})")
    return medians


def _spec_tasks(path: str) -> int:
    import yaml

    with open(path) as f:
        spec = next(yaml.safe_load_all(f))
    comps = spec["components"]
    params = spec["root"].get("inputDefinitions", {}).get("parameters", {})

    def count(dag: dict) -> int:
        total = 0
        for task in dag.get("tasks", {}).values():
            ref = comps[task["componentRef"]["name"]]
            inner = count(ref["dag"]) if "dag" in ref else 1
            it = task.get("parameterIterator")
            if it:
                items = it["items"]
                if "raw" in items:
                    n = len(json.loads(items["raw"]))
                else:  # a loop over a pipeline parameter: its default
                    name = items["inputParameter"].split("pipelinechannel--")[-1]
                    n = len(params[name]["defaultValue"])
                inner *= n
            total += inner
        return total

    return count(spec["root"]["dag"])


def tasks_and_yaml() -> tuple[dict[str, int], int, int]:
    from kfp import compiler

    import pipelines
    from feda2v.io import config as config_mod

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "p.yaml")
        for execution in ("phase", "round"):
            cfg = config_mod.validate({"global_rounds": 50, "execution": execution,
                                       "feda2v": {"generator_training_rounds": 30}})
            compiler.Compiler().compile(pipelines.build(cfg, "end_to_end"), path)
            out[execution] = _spec_tasks(path)
        sizes = {}
        for rounds in (10, 1000):
            cfg = config_mod.validate({"global_rounds": rounds,
                                       "data": {"partition": "iid", "num_clients": 100},
                                       "feda2v": {"generator_training_rounds": rounds}})
            compiler.Compiler().compile(pipelines.build(cfg, "end_to_end"), path)
            sizes[rounds] = os.path.getsize(path)
    return out, sizes[1000], sizes[10]


def checkpoint_bytes(rounds: int = 10) -> tuple[float, float]:
    """(bytes written per client-round by Run 1's generator task, bytes read per client-round
    by Run 2's sampling of `rounds` rounds), counted at the storage layer."""
    import torch

    from feda2v.federated.generators import checkpoints, sampling, training
    from feda2v.io import config as config_mod
    from feda2v.io import runstate, storage

    written, read = [0], [0]
    real_write, real_read = storage.write_bytes, storage.read_bytes

    def count_write(uri, data):
        written[0] += len(data)
        return real_write(uri, data)

    def count_read(uri):
        data = real_read(uri)
        read[0] += len(data)
        return data

    import logging

    logging.getLogger("feda2v").setLevel(logging.WARNING)  # the figures, not the training log
    storage.write_bytes, storage.read_bytes = count_write, count_read
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = config_mod.validate({"storage_root": tmp, "feda2v": {
                "generator_training_epochs": 1, "generator_save_every": 5,
                "quality_metrics": False}})
            run = runstate.run_dir(cfg, "bench")
            g = torch.Generator().manual_seed(0)
            x, y = torch.randn(16, 4, 768, generator=g), torch.tensor([0, 1] * 8)
            for r in range(1, rounds + 1):  # what Run 1's adapter rounds leave for the task
                real_write_conditions(run, r, torch.randn(2, 768, generator=g))
            written[0] = 0
            training.train_client(cfg, 0, run, "bench", x, y, ["a", "b"], rounds,
                                  os.path.join(tmp, "ckpt"))
            w = written[0] / rounds
            read[0] = 0

            class Data:
                train_x, train_y, test_x, test_y = x, y, x, y

            sampling.generate_client(cfg, 0, Data, ["a", "b"], rounds,
                                     checkpoints.checkpoint_uri(os.path.join(tmp, "ckpt"), 0),
                                     os.path.join(tmp, "syn.safetensors"))
            r = read[0] / rounds
    finally:
        storage.write_bytes, storage.read_bytes = real_write, real_read
        logging.getLogger("feda2v").setLevel(logging.INFO)
    return w, r


def real_write_conditions(run: str, r: int, means) -> None:
    import torch

    from feda2v.io import runstate, storage

    storage.save_tensors(runstate.conditions_uri(run, 0, r),
                         {"ids": torch.tensor([0, 1]), "means": means})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/demo.json")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-runs", action="store_true", help="only the static figures")
    a = p.parse_args()
    tasks, yaml_1000, yaml_10 = tasks_and_yaml()
    written, read = checkpoint_bytes()
    if not a.skip_runs:
        ensure_inputs(a.config)
        print(f"Local runs of {a.config} ({a.repeats} interleaved repeats after a warm-up):")
        t = local_overhead(a.config, a.repeats)
        print(f"local overhead (phase): {t['phase'] / t['in-process']:.2f}x")
        print(f"local overhead (round): {t['round'] / t['in-process']:.2f}x")
        print(f"local overhead (phase, every task a fresh interpreter): "
              f"{t['phase, no prefork'] / t['in-process']:.2f}x")
    print(f"tasks (3 clients, 30+50 rounds): phase {tasks['phase']}, round {tasks['round']}")
    print(f"yaml bytes (phase, 100 clients, 1000+1000 rounds): {yaml_1000} "
          f"(10+10 rounds: {yaml_10}; they differ only in the digits of the defaults)")
    print(f"checkpoint bytes per client-round (seed dims): {written:.0f} written by Run 1, "
          f"{read:.0f} read by Run 2 sampling")


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
