"""Ablations on the same data and seed, in one command (`feda2v experiment`).

Each variant runs in-process through the same stage functions the pipelines call, in the same
order, so its numbers are what a pipeline run would give (minus the per-task process start-up):

- fedavg          FedAvg of client adapters only, no generators, for R1 + R2 rounds;
- synthetic       Run 1 (R1 rounds, generators trained) then Run 2 (R2 rounds, the server trains
                  the global adapter on the pooled synthetic samples) — the system's method;
- synthetic_only  FedCVAE-style, data-free: Run 1, then for R2 rounds the server trains one
                  adapter on the clients' synthetic samples alone (train-on-synthetic, test-on-real);
- centralized     upper bound: one adapter trained on all clients' real training data pooled,
                  for R1 + R2 rounds of local_epochs epochs.

R1 = feda2v.generator_training_rounds, R2 = global_rounds. Each variant is one MLflow run, nested
under a parent run that holds the results table and the report.
"""

from __future__ import annotations

import json
import os

import torch

from feda2v.evaluation import report as report_mod
from feda2v.io import config as config_mod
from feda2v.io import runstate, storage, tracking
from feda2v.io.config import Config
from feda2v.io.log import get_logger
from feda2v.orchestration import finish, stages

log = get_logger()
VARIANTS = ("fedavg", "synthetic", "synthetic_only", "centralized")


def _variant_config(cfg: Config, variant: str, folder: str) -> Config:
    # Each variant keeps its own checkpoints; embeddings stay shared (same data, same cache).
    f = {"generator_checkpoint_dir": storage.join(folder, "checkpoints")}
    if variant == "fedavg":
        f.update(use_generator=False, generator_training_mode=False,
                 use_pretrained_generators=False, global_model_train=False)
    elif variant == "synthetic":
        f.update(use_generator=True, global_model_train=True)
    return cfg.replace(feda2v=f)


def _pooled_real(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for i in range(config_mod.num_clients(cfg)):
        t, _ = storage.load_tensors(stages.embeddings_uri(cfg, i))
        xs.append(t["train_x"].float())
        ys.append(t["train_y"])
    return torch.cat(xs), torch.cat(ys)


def _log(cfg: Config, run_id: str):
    return lambda metrics, step: tracking.log_metrics(cfg, run_id, metrics, step)


def _generators(cfg: Config, run: str, key: str, fed, rounds_r1: int, rounds_r2: int) -> None:
    """Each client's generator over Run 1's rounds, then its synthetic samples for Run 2's: the
    same stage code as the per-client pipeline tasks."""
    from feda2v.federated.generators.sampling import generate_client
    from feda2v.federated.generators.training import train_client

    for i, data in enumerate(fed.clients):
        train_client(cfg, i, run, key, data.train_x, data.train_y, fed.class_names, rounds_r1,
                     stages.checkpoint_dir(cfg))
        generate_client(cfg, i, data, fed.class_names, rounds_r2,
                        runstate.generator_state_uri(run, i), runstate.synthetic_uri(run, i),
                        runstate.projection_uri(run, i))


def _centralized(cfg: Config, fed, rounds: int, start: dict, run: str, run_id: str) -> list[dict]:
    from feda2v.federated.client import round_seed
    from feda2v.federated.server import weighted_accuracy
    from feda2v.federated.task import adapter_from_state, device_of, train_adapter

    model = adapter_from_state(cfg, start).to(device_of(cfg))
    x = torch.cat([d.train_x for d in fed.clients])
    y = torch.cat([d.train_y for d in fed.clients])
    history = []
    for r in range(1, rounds + 1):
        loss = train_adapter(model, x, y, fed.targets, cfg.local_epochs, cfg.batch_size,
                             cfg.learning_rate, round_seed(cfg.seed, -2, r))
        accuracy, per_client = weighted_accuracy(model, fed.targets, fed.test_sets)
        metrics = {"train/central/adapter_loss": loss, "eval/global_accuracy": accuracy,
                   **{f"eval/node_{i}/accuracy": a for i, a in per_client.items()}}
        tracking.log_metrics(cfg, run_id, metrics, r)
        history.append({"phase": "centralized", "round": r, "step": r, "accuracy": accuracy})
    storage.save_tensors(storage.join(run, "centralized.safetensors"), model.state_dict())
    return history


def run_variant(cfg: Config, variant: str, root: str, targets_uri: str, run_id: str,
                reuse: dict | None = None, label: str = "") -> dict:
    """Run one ablation through the library's round loop; returns {variant, history,
    final_accuracy, quality}. synthetic_only given `reuse` (the synthetic variant's result)
    takes its Run 1 and its generators' samples instead of training the same ones again."""
    from feda2v.federated.loop import run_phase

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    label = label or variant
    run = storage.join(root, label)
    vcfg = _variant_config(cfg, variant, run)
    r1, r2 = cfg.feda2v.generator_training_rounds, cfg.global_rounds
    log.info("=== Ablation %s ===", variant)
    fed = stages.federation(vcfg, targets_uri)
    init = stages.initial_state(vcfg, fed)
    history = []
    if variant == "fedavg":
        _, history = run_phase(fed, "fedavg", r1 + r2, 1, init, run, None, _log(vcfg, run_id))
    elif variant == "centralized":
        history = _centralized(vcfg, fed, r1 + r2, init, run, run_id)
    else:
        phase = "run2" if variant == "synthetic" else "sample"
        source = run
        if reuse is not None and variant == "synthetic_only":
            source = reuse["run_dir"]  # same config and seeds: the same Run 1 and generators
            history = [h for h in reuse["history"] if h["phase"] == "run1"]
            log.info("synthetic_only: Run 1 and generators of %s reused", source)
        else:
            _, history = run_phase(fed, "run1", r1, 1, init, run, None, _log(vcfg, run_id))
            _generators(vcfg, run, variant, fed, r1, r2)
        finish.log_generator_losses(vcfg, source, run_id)
        synthetic = stages.synthetic_source(source, len(fed.clients))
        start = stages.phase_start(vcfg, fed, [("run1", r1), (phase, r2)], phase, source)
        _, more = run_phase(fed, phase, r2, r1 + 1, start, run, synthetic, _log(vcfg, run_id))
        history += [dict(h, phase="synthetic_only" if phase == "sample" else h["phase"])
                    for h in more]
    quality = {}
    if variant == "synthetic":  # the header holds the clients' numbers: no tensor is read
        quality = {str(i): storage.read_meta(runstate.synthetic_uri(run, i)).get("quality")
                   for i in range(len(fed.clients))}
        quality = {k: v for k, v in quality.items() if v}
    return {"variant": label, "history": history,
            "final_accuracy": final_accuracy(history), "run_dir": run,
            "synthetic_pool": run if label == "synthetic" else "", "quality": quality,
            "dp_epsilon": vcfg.feda2v.generator_dp_epsilon if variant == "synthetic" else 0}


def _pooled_synthetic(run: str, num_clients: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last Run 2 round's synthetic samples of every client."""
    from feda2v.federated.generators.sampling import load_synthetic, synthetic_round

    xs, ys = [], []
    for i in range(num_clients):
        loaded = load_synthetic(runstate.synthetic_uri(run, i))
        got = synthetic_round(loaded, loaded[1]["rounds"]) if not loaded[1].get("missing") else None
        if got is not None:
            xs.append(got[0])
            ys.append(got[1])
    return torch.cat(xs), torch.cat(ys)


LAST_K = 3  # final accuracy = mean of the last LAST_K rounds: one round's snapshot is noisy
TARGET_FRACTION = 0.9  # rounds-to-target: first round at 90% of centralized's final accuracy


def final_accuracy(history: list[dict], k: int = LAST_K) -> float:
    """Mean accuracy of the last k rounds (all rounds when there are fewer)."""
    last = [h["accuracy"] for h in history[-k:]]
    return sum(last) / len(last)


def rounds_to_target(history: list[dict], target: float) -> int | None:
    """The first round (counted over all of a variant's rounds) at or above `target`."""
    return next((i for i, h in enumerate(history, 1) if h["accuracy"] >= target), None)


def summarise(results: list[dict], k: int = LAST_K) -> list[dict]:
    """Each result with final (last-k mean), target and rounds_to_target. The target is
    TARGET_FRACTION of centralized's final accuracy, or of the best variant's without it; no
    "best round" is picked anywhere, since the test set is the only held-out set."""
    finals = {r["variant"]: final_accuracy(r["history"], k) for r in results}
    target = TARGET_FRACTION * finals.get("centralized", max(finals.values()))
    return [dict(r, final=finals[r["variant"]], target=target,
                 rounds_to_target=rounds_to_target(r["history"], target)) for r in results]


def results_table(results: list[dict], k: int = LAST_K) -> str:
    """Accuracy per variant, then the synthetic samples' quality (overall, per client)."""
    results = summarise(results, k)
    target = results[0]["target"]
    head = ["variant", "rounds", f"final (last {k})", f"rounds to {target:.3f}"]
    rows = [[r["variant"], str(len(r["history"])), f"{r['final']:.3f}",
             str(r["rounds_to_target"] or "-")] for r in results]
    text = _table(head, rows)
    quality = next((r["quality"] for r in results if r.get("quality")), {})
    if quality:
        head = ["client", "density", "coverage", "spread", "consistency", "real",
                "memorisation", "frechet", "real-real", "verdict"]

        def f(v):
            return "-" if v is None else f"{v:.3f}"

        def verdict(flags):
            return "-" if flags is None else ", ".join(flags) or "healthy"

        rows = [[str(c), f(o["density"]), f(o["coverage"]), f(o["spread_ratio"]),
                 f(o["class_consistency"]), f(o["class_consistency_real"]),
                 f(o["memorisation_ratio"]), f(o["frechet"]), f(o["frechet_real_baseline"]),
                 verdict(o["flags"])]
                for c, o in ((c, q["overall"]) for c, q in sorted(quality.items()))]
        text += ("\n\nSynthetic samples (Run 2, last round) vs each client's held-out rows, "
                 "overall per client:\n") + _table(head, rows)
    tstr = next((r["final_accuracy"] for r in results if r["variant"] == "synthetic_only"), None)
    if tstr is not None:
        text += f"\n\nTrain-on-synthetic / test-on-real accuracy (synthetic_only): {tstr:.3f}"
    return text


def _table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*["-" * w for w in widths]),
                      *(fmt.format(*row).rstrip() for row in rows)])


def run_identity(cfg: Config, run_id: str) -> dict[str, str]:
    """What a report says about its run: seed, config hash, date, code version, MLflow run."""
    import hashlib
    from datetime import datetime, timezone

    source = tracking.source_tags()
    text = config_mod.withhold_credentials(cfg)[0].to_json()
    out = {"seed": str(cfg.seed),
           "config sha256": hashlib.sha256(text.encode()).hexdigest()[:12],
           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "feda2v": source.get("feda2v.version", "?")}
    if "mlflow.source.git.commit" in source:
        out["commit"] = source["mlflow.source.git.commit"][:12]
    if run_id:
        out["MLflow run"] = run_id
    return out


def write_report(cfg: Config, results: list[dict], out_dir: str, run_id: str) -> str:
    """HTML report + PNGs (accuracy per round per variant, real vs synthetic projection, quality
    tables), logged to MLflow; returns the HTML path."""
    from feda2v.evaluation import report_html

    projection = None
    pool = next((r["synthetic_pool"] for r in results if r.get("synthetic_pool")), "")
    if pool:
        syn_x, syn_y = _pooled_synthetic(pool, config_mod.num_clients(cfg))
        real_x, real_y = _pooled_real(cfg)
        names = storage.load_tensors(stages.embeddings_uri(cfg, 0))[1]["class_names"]
        projection = {"real_x": real_x, "real_y": real_y, "synthetic_x": syn_x,
                      "synthetic_y": syn_y, "class_names": names}
    quality = next((r["quality"] for r in results if r.get("quality")), {})
    links = {r["variant"]: os.path.relpath(storage.local_path(r["report"]), out_dir)
             for r in results if r.get("report") and storage.is_local(r["report"])}
    files = report_html.write_report(out_dir, summarise(results),
                                     {int(k): v for k, v in quality.items()}, projection,
                                     identity=run_identity(cfg, run_id), links=links)
    if run_id:
        for path in files.values():
            tracking.log_artifact(cfg, run_id, path, "report")
    return files["html"]


# --- KFP task entry points (the ablations pipeline fans variants out, one task each) ----------

def parent_task(config: Config | str, mlflow_run_id: str, run_key: str) -> str:
    cfg = config_mod.as_config(config)
    run_id = tracking.ensure_run(cfg, mlflow_run_id, run_key, "ablations")
    log.info("Ablations nest under MLflow run %s", run_id)
    return run_id


def finish_task(config: Config | str, mlflow_run_id: str, run_key: str, state: str) -> str:
    cfg = config_mod.as_config(config)
    run_id = tracking.ensure_run(cfg, mlflow_run_id, run_key, "ablations")
    status = tracking.final_status(state)
    tracking.end_run(cfg, run_id, status)
    log.info("Ablations %s: MLflow run %s %s", state.lower(), run_id, status)
    return status


def run_variant_task(config: Config | str, variant: str, targets_path: str, mlflow_run_id: str,
                     run_key: str) -> dict:
    cfg = config_mod.as_config(config)
    # The parent task made (or claimed) it; looked up by the KFP job id, so a retry finds it.
    parent_run_id = tracking.ensure_run(cfg, mlflow_run_id, run_key, "ablations")
    run_id = tracking.create_run(cfg, f"ablation/{variant}", parent_run_id=parent_run_id)
    tracking.log_params(cfg, run_id, {"feda2v.variant": variant})
    root = storage.join(cfg.storage_root, "experiments", "pipeline", run_id)
    try:
        result = run_variant(cfg, variant, root, targets_path, run_id)
    except BaseException:
        tracking.set_status(cfg, run_id, "FAILED")
        raise
    tracking.set_status(cfg, run_id, "FINISHED")
    return dict(result, run_id=run_id)


def report_task(config: Config | str, results_json: list[str], mlflow_run_id: str, run_key: str,
                html_path: str) -> str:
    import shutil
    import tempfile

    cfg = config_mod.as_config(config)
    parent_run_id = tracking.ensure_run(cfg, mlflow_run_id, run_key, "ablations")
    results = sorted((json.loads(r) for r in results_json),
                     key=lambda r: VARIANTS.index(r["variant"]))
    table = results_table(results)
    with tempfile.TemporaryDirectory() as tmp:
        html = write_report(cfg, results, tmp, parent_run_id)
        shutil.copyfile(html, html_path)
    tracking.log_text(cfg, parent_run_id, table + "\n", "report/results.txt")
    log.info("Ablations (same data, seed %d):\n%s", cfg.seed, table)
    return table


def run_experiment(cfg: Config, variants: list[str] | None = None, name: str = "experiment",
                   parent_run_id: str = "", report: bool = True,
                   epsilons: list[float] | None = None) -> dict:
    """All variants on the same data and seed; returns {results, table, parent_run_id, dir}.
    Each finite ε of `epsilons` adds the synthetic variant with DP-SGD generators at that ε
    (labelled synthetic-dp-eps{ε}); ∞ is the plain synthetic variant."""
    for part in name.split("/"):  # run_grid nests NAME/PARTITION/seedN; each part one segment
        config_mod.check_name("the experiment name", part)
    variants = list(variants or VARIANTS)
    private = sorted(e for e in epsilons or [] if e != float("inf"))
    if private and "synthetic" not in variants:
        raise ValueError("--epsilons compares DP-SGD generators with the plain synthetic "
                         "variant: include 'synthetic' in --variants")
    # Checked before any work: DP-SGD needs the VAE, and samples from its prior (auto), the
    # other sampling modes reading the training rows outside the guarantee.
    private_runs = [(f"synthetic-dp-eps{eps:g}", "synthetic",
                     cfg.replace(feda2v={"generator_dp_epsilon": eps, "generator_sampling": "auto"}))
                    for eps in private]
    parent = tracking.create_run(cfg, name, parent_run_id=parent_run_id)
    # One folder per invocation (its MLflow run id): artifact paths, which also key generator
    # rounds against task retries, never repeat across runs.
    root = storage.join(cfg.storage_root, "experiments", name, parent)
    targets_uri = storage.join(root, "class_targets.safetensors")
    stages.class_targets(cfg, targets_uri)
    for i in range(config_mod.num_clients(cfg)):
        stages.extract(cfg, i)
    tracking.log_params(cfg, parent, {"feda2v.ablations": ",".join(variants)})
    results = []
    # The synthetic variant again for each finite ε, its generators trained with DP-SGD.
    runs = [(variant, variant, cfg) for variant in variants] + private_runs
    for label, variant, vcfg in runs:
        child = tracking.create_run(cfg, f"{name}/{label}", parent_run_id=parent)
        phases = ({"feda2v.phases": report_mod.phases_param(
            [("run1", vcfg.feda2v.generator_training_rounds), ("run2", vcfg.global_rounds)])}
            if variant == "synthetic" else {})  # the run report's rounds and phase line
        tracking.log_params(vcfg, child, {"feda2v.variant": label, **phases})
        synthetic = next((r for r in results if r["variant"] == "synthetic"), None)
        try:
            result = run_variant(vcfg, variant, root, targets_uri, child, reuse=synthetic,
                                 label=label)
        except BaseException:
            tracking.set_status(cfg, child, "FAILED")
            tracking.set_status(cfg, parent, "FAILED")
            raise
        if report and variant == "synthetic":  # the run report a pipeline run gets, too
            r2 = vcfg.global_rounds
            result["report"] = finish.write_report(
                vcfg, child, result["run_dir"], runstate.round_uri(result["run_dir"], "run2", r2),
                targets_uri)["html"]
        tracking.set_status(cfg, child, "FINISHED")
        tracking.log_metrics(cfg, parent, {f"ablation/{label}/final_accuracy":
                                           result["final_accuracy"]}, 0)
        results.append(dict(result, run_id=child))
    table = results_table(results)
    storage.write_json(storage.join(root, "results.json"), results)
    html = ""
    if report and storage.is_local(root):
        html = write_report(cfg, results, storage.local_path(storage.join(root, "report")), parent)
    tracking.set_status(cfg, parent, "FINISHED")
    return {"results": results, "table": table, "parent_run_id": parent, "dir": root,
            "html": html}


# --- many seeds and partitions in one command ---------------------------------------------------

def parse_partitions(text: str) -> list[str]:
    """'classes,dirichlet:0.5,iid,pathological:2' -> the same labels, each checked."""
    labels = [p.strip() for p in text.split(",") if p.strip()]
    for label in labels:
        kind, _, arg = label.partition(":")
        try:
            ok = (kind in ("classes", "iid") and not arg) or (
                kind == "dirichlet" and float(arg) > 0) or (
                kind == "pathological" and int(arg) >= 1)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"bad partition {label!r}: expected classes, iid, dirichlet:ALPHA "
                             "(ALPHA > 0) or pathological:K (K >= 1)")
    return labels


def partitioned(cfg: Config, label: str, seed: int) -> Config:
    """`cfg` with this seed and partition. Every partition spreads the classes of the config's
    `data.clients` over as many clients, so only the spread differs between them."""
    kind, _, arg = label.partition(":")
    data: dict = {"partition": kind}
    if kind != "classes":
        data.update(classes=cfg.data.classes or config_mod.configured_classes(cfg) or [],
                    num_clients=config_mod.num_clients(cfg))
    if kind == "dirichlet":
        data["dirichlet_alpha"] = float(arg)
    elif kind == "pathological":
        data["classes_per_client"] = int(arg)
    return cfg.replace(seed=seed, data=data)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return mean, sd


def _paired_line(label: str, by_seed: dict[int, list[dict]], variant: str, other: str) -> str:
    """'run2 - OTHER (label, N seeds): ±X.X ± Y.Y pts': the synthetic variant's final accuracy
    minus the other's, paired by seed, in points."""
    seeds = sorted(by_seed)
    diffs = [100 * (next(r["final"] for r in by_seed[s] if r["variant"] == variant)
                    - next(r["final"] for r in by_seed[s] if r["variant"] == other))
             for s in seeds]
    mean, sd = _mean_sd(diffs)
    return f"run2 - {other} ({label}, {len(seeds)} seeds): {mean:+.1f} ± {sd:.1f} pts"


def grid_table(cells: dict[str, dict[int, list[dict]]], variants: list[str],
               first: str = "partition") -> tuple[str, list[str]]:
    """(table of final accuracy mean ± sd per cell (a partition, or a partition and strategy)
    and variant, with the rounds to target; the 'run2 - fedavg' and 'run2 - centralized'
    lines: paired differences over seeds, in points)."""
    rows, lines = [], []
    for label, by_seed in cells.items():
        seeds = sorted(by_seed)
        for variant in variants:
            got = [next(r for r in by_seed[s] if r["variant"] == variant) for s in seeds]
            mean, sd = _mean_sd([r["final"] for r in got])
            reached = [r["rounds_to_target"] for r in got if r["rounds_to_target"]]
            rows.append([label, variant, str(len(seeds)), f"{mean:.3f} ± {sd:.3f}",
                         f"{sum(reached) / len(reached):.1f}" if reached else "-",
                         f"{len(reached)}/{len(seeds)}"])
        for other in ("fedavg", "centralized"):  # the baseline, then the ceiling
            if {"synthetic", other} <= set(variants):
                lines.append(_paired_line(label, by_seed, "synthetic", other))
        lines += _generator_line(label, by_seed)
    head = [first, "variant", "seeds", f"final (last {LAST_K}) mean ± sd",
            "rounds to target", "reached"]
    return _table(head, rows), lines


def _generator_line(label: str, by_seed: dict[int, list[dict]]) -> list[str]:
    """The synthetic variant's generators against held-out rows, over every seed and client."""
    entries = [q["overall"] for res in by_seed.values() for r in res
               if r["variant"] == "synthetic" for q in (r.get("quality") or {}).values()
               if q.get("overall", {}).get("density") is not None]
    if not entries:
        return []
    dens = [e["density"] for e in entries]
    cov = [e["coverage"] for e in entries]
    real = [e["density_real"] for e in entries if e.get("density_real") is not None]
    healthy = sum(1 for e in entries if e.get("flags") == [])
    real_part = f" (training rows: {min(real):.2f}–{max(real):.2f})" if real else ""
    return [(f"generators ({label}, {len(entries)} client-runs) vs held-out rows: density "
            f"{min(dens):.2f}–{max(dens):.2f}{real_part}, coverage {min(cov):.2f}–{max(cov):.2f}, "
            f"healthy {healthy}/{len(entries)}")]


def run_grid(cfg: Config, variants: list[str], seeds: list[int], partitions: list[str],
             name: str = "experiment", strategies: list[str] | None = None) -> dict:
    """Every variant for every partition (and strategy, when `strategies` names some) and
    seed, each cell's seed an experiment nested under one MLflow parent run; returns {table,
    lines, cells, parent_run_id, dir}."""
    config_mod.check_name("the experiment name", name)
    for label in partitions:
        config_mod.check_name("the partition label", label)
    for s in strategies or []:
        cfg.replace(strategy=s)  # refused here, naming the key and its values, before any run
    parent = tracking.create_run(cfg, name)
    tracking.log_params(cfg, parent, {"feda2v.ablations": ",".join(variants),
                                      "feda2v.seeds": ",".join(map(str, seeds)),
                                      "feda2v.partitions": ",".join(partitions),
                                      **({"feda2v.strategies": ",".join(strategies)}
                                         if strategies else {})})
    root = storage.join(cfg.storage_root, "experiments", name, parent)
    cells: dict[str, dict[int, list[dict]]] = {}
    try:
        for label in partitions:
            for strat in strategies or [None]:
                cell = f"{label}, {strat}" if strat else label
                for seed in seeds:
                    log.info("=== Partition %s, seed %d ===", cell, seed)
                    run_cfg = partitioned(cfg, label, seed)
                    if strat:
                        run_cfg = run_cfg.replace(strategy=strat)
                    folder = f"{name}/{label}/{strat + '/' if strat else ''}seed{seed}"
                    out = run_experiment(run_cfg, variants, folder, parent_run_id=parent,
                                         report=False)
                    cells.setdefault(cell, {})[seed] = summarise(out["results"])
    except BaseException:
        tracking.set_status(cfg, parent, "FAILED")
        raise
    table, lines = grid_table(cells, variants,
                              "partition, strategy" if strategies else "partition")
    storage.write_json(storage.join(root, "grid.json"),
                       {label: {str(s): [{k: r[k] for k in ("variant", "final", "target",
                                                            "rounds_to_target", "history")}
                                         for r in res] for s, res in by.items()}
                        for label, by in cells.items()})
    tracking.log_text(cfg, parent, table + "\n\n" + "\n".join(lines), "grid.txt")
    tracking.set_status(cfg, parent, "FINISHED")
    return {"table": table, "lines": lines, "cells": cells, "parent_run_id": parent, "dir": root}
