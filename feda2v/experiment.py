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

import torch

from feda2v import config as config_mod
from feda2v import stages, storage, tracking
from feda2v.log import get_logger

log = get_logger()
VARIANTS = ("fedavg", "synthetic", "synthetic_only", "centralized")


def _variant_config(cfg: dict, variant: str, root: str) -> dict:
    cfg = json.loads(json.dumps(cfg))
    f = cfg["feda2v"]
    # Each variant keeps its own checkpoints; embeddings stay shared (same data, same cache).
    f["generator_checkpoint_dir"] = storage.join(root, variant, "checkpoints")
    if variant == "fedavg":
        f.update(use_generator=False, generator_training_mode=False,
                 use_pretrained_generators=False, global_model_train=False)
    elif variant == "synthetic":
        f.update(use_generator=True, global_model_train=True)
    return cfg


class _Run:
    """Artifact paths of one variant and the stage calls of a round, as the pipeline wires them."""

    def __init__(self, cfg: dict, variant: str, root: str, run_id: str, targets: str):
        self.cfg, self.json = cfg, json.dumps(cfg, sort_keys=True)
        self.dir, self.run_id, self.targets = storage.join(root, variant), run_id, targets
        self.clients = range(config_mod.num_clients(cfg))
        self.history: list[dict] = []
        self.last_pool = ""  # the latest pooled synthetic set (for quality and the report)

    def path(self, *parts: str) -> str:
        return storage.join(self.dir, *parts)

    def init_adapter(self) -> str:
        uri = self.path("adapter_init.safetensors")
        uris = [stages.embeddings_uri(self.cfg, i) for i in self.clients]
        stages.init_adapter(self.json, uris, self.targets, uri)
        return uri

    def federated_round(self, phase: str, r: int, step: int, adapter: str) -> str:
        updates = []
        for i in self.clients:
            updates.append(self.path(phase, f"round_{r}", f"update_{i}.safetensors"))
            stages.client_round(self.json, i, r, phase, adapter, self.targets, updates[-1])
        agg = self.path(phase, f"round_{r}", "aggregated.safetensors")
        pool = self.path(phase, f"round_{r}", "synthetic.safetensors")
        stages.aggregate(self.json, r, step, updates, self.targets, agg, pool, self.run_id)
        self.last_pool = pool
        new = agg
        if phase == "run2" and self.cfg["feda2v"]["global_model_train"]:
            new = self.path(phase, f"round_{r}", "global.safetensors")
            stages.global_train(self.json, r, step, agg, adapter, pool, self.targets, new,
                                self.run_id)
        self.evaluate(phase, r, step, new)
        return new

    def server_only_round(self, r: int, step: int, adapter: str) -> str:
        """Data-free: clients only sample; the server trains its own adapter on the pool."""
        updates = []
        for i in self.clients:
            updates.append(self.path("sample", f"round_{r}", f"update_{i}.safetensors"))
            stages.client_round(self.json, i, r, "sample", adapter, self.targets, updates[-1])
        ignored = self.path("sample", f"round_{r}", "client_average.safetensors")
        pool = self.path("sample", f"round_{r}", "synthetic.safetensors")
        stages.aggregate(self.json, r, step, updates, self.targets, ignored, pool, self.run_id)
        self.last_pool = pool
        new = self.path("sample", f"round_{r}", "global.safetensors")
        trained_cfg = json.loads(self.json)
        trained_cfg["feda2v"]["global_model_train_from_nodes_adapters"] = False
        stages.global_train(json.dumps(trained_cfg), r, step, ignored, adapter, pool,
                            self.targets, new, self.run_id)
        self.evaluate("synthetic_only", r, step, new)
        return new

    def centralized_round(self, r: int, step: int, adapter: str, data) -> str:
        from feda2v.federated.client import round_seed
        from feda2v.federated.task import adapter_from_state, train_adapter

        model = adapter_from_state(self.cfg, storage.load_tensors(adapter)[0])
        targets = storage.load_tensors(self.targets)[0]["targets"]
        loss = train_adapter(model, data[0], data[1], targets, self.cfg["local_epochs"],
                             self.cfg["batch_size"], self.cfg["learning_rate"],
                             round_seed(self.cfg["seed"], -2, step))
        tracking.log_metrics(self.cfg, self.run_id, {"train/central/adapter_loss": loss}, step)
        new = self.path("centralized", f"round_{r}.safetensors")
        storage.save_tensors(new, model.state_dict(), {"round": r})
        self.evaluate("centralized", r, step, new)
        return new

    def evaluate(self, phase: str, r: int, step: int, adapter: str) -> None:
        acc = stages.evaluate(self.json, r, step, adapter, self.targets, self.run_id)
        self.history.append({"phase": phase, "round": r, "step": step, "accuracy": acc})


def _pooled_real(cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for i in range(config_mod.num_clients(cfg)):
        t, _ = storage.load_tensors(stages.embeddings_uri(cfg, i))
        xs.append(t["train_x"].float())
        ys.append(t["train_y"])
    return torch.cat(xs), torch.cat(ys)


def run_variant(cfg: dict, variant: str, root: str, targets_uri: str, run_id: str) -> dict:
    """Run one ablation; returns {variant, history, final_accuracy, quality}."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    vcfg = _variant_config(cfg, variant, root)
    r1, r2 = cfg["feda2v"]["generator_training_rounds"], cfg["global_rounds"]
    run = _Run(vcfg, variant, root, run_id, targets_uri)
    log.info("=== Ablation %s ===", variant)
    init = run.init_adapter()
    adapter, step = init, 0
    if variant == "fedavg":
        for r in range(1, r1 + r2 + 1):
            adapter = run.federated_round("fedavg", r, r, adapter)
    elif variant == "centralized":
        data = _pooled_real(vcfg)
        for r in range(1, r1 + r2 + 1):
            adapter = run.centralized_round(r, r, adapter, data)
    else:
        for r in range(1, r1 + 1):
            step += 1
            adapter = run.federated_round("run1", r, step, adapter)
        adapter = init  # Run 2 starts from the initial adapter, as a separate seed run would
        for r in range(1, r2 + 1):
            step += 1
            adapter = (run.federated_round("run2", r, step, adapter) if variant == "synthetic"
                       else run.server_only_round(r, step, adapter))
    quality = {}
    if run.last_pool and variant == "synthetic":
        quality = storage.load_tensors(run.last_pool)[1].get("quality", {})
    return {"variant": variant, "history": run.history,
            "final_accuracy": run.history[-1]["accuracy"], "adapter": adapter,
            "synthetic_pool": run.last_pool if variant == "synthetic" else "",
            "quality": quality}


def results_table(results: list[dict]) -> str:
    """Accuracy per variant, then the synthetic samples' quality (overall, per client)."""
    head = ["variant", "rounds", "final acc", "best acc"]
    rows = [[r["variant"], str(len(r["history"])), f"{r['final_accuracy']:.3f}",
             f"{max(h['accuracy'] for h in r['history']):.3f}"] for r in results]
    text = _table(head, rows)
    quality = next((r["quality"] for r in results if r.get("quality")), {})
    if quality:
        head = ["client", "cosine", ">=0.7", "frechet", "real-real", "density", "coverage",
                "memorisation"]

        def f(v):
            return "-" if v is None else f"{v:.3f}"

        rows = [[str(c), f(o["cosine_to_real_mean"]), "pass" if o["cosine_healthy"] else "FAIL",
                 f(o["frechet"]), f(o["frechet_real_baseline"]), f(o["density"]),
                 f(o["coverage"]), f(o["memorisation_ratio"])]
                for c, o in ((c, q["overall"]) for c, q in sorted(quality.items()))]
        text += "\n\nSynthetic samples (Run 2, last round), overall per client:\n" + _table(head, rows)
    tstr = next((r["final_accuracy"] for r in results if r["variant"] == "synthetic_only"), None)
    if tstr is not None:
        text += f"\n\nTrain-on-synthetic / test-on-real accuracy (synthetic_only): {tstr:.3f}"
    return text


def _table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*["-" * w for w in widths]),
                      *(fmt.format(*row).rstrip() for row in rows)])


def write_report(cfg: dict, results: list[dict], out_dir: str, run_id: str) -> str:
    """HTML report + PNGs (accuracy per round per variant, real vs synthetic projection, quality
    tables), logged to MLflow; returns the HTML path."""
    from feda2v import report_html

    projection = None
    pool = next((r["synthetic_pool"] for r in results if r.get("synthetic_pool")), "")
    if pool:
        syn, _ = storage.load_tensors(pool)
        real_x, real_y = _pooled_real(cfg)
        names = storage.load_tensors(stages.embeddings_uri(cfg, 0))[1]["class_names"]
        projection = {"real_x": real_x, "real_y": real_y, "synthetic_x": syn["x"].float(),
                      "synthetic_y": syn["y"], "class_names": names}
    quality = next((r["quality"] for r in results if r.get("quality")), {})
    files = report_html.write_report(out_dir, results,
                                     {int(k): v for k, v in quality.items()}, projection)
    if run_id:
        for path in files.values():
            tracking.log_artifact(cfg, run_id, path, "report")
    return files["html"]


# --- KFP task entry points (the ablations pipeline fans variants out, one task each) ----------

def run_variant_task(config_json: str, variant: str, targets_path: str, parent_run_id: str) -> dict:
    cfg = config_mod.loads(config_json)
    run_id = tracking.create_run(cfg, f"ablation/{variant}", parent_run_id=parent_run_id)
    root = storage.join(cfg["storage_root"], "experiments", "pipeline", run_id)
    try:
        result = run_variant(cfg, variant, root, targets_path, run_id)
    except BaseException:
        tracking.set_status(cfg, run_id, "FAILED")
        raise
    tracking.set_status(cfg, run_id, "FINISHED")
    return dict(result, run_id=run_id)


def report_task(config_json: str, results_json: list[str], parent_run_id: str,
                html_path: str) -> str:
    import shutil
    import tempfile

    cfg = config_mod.loads(config_json)
    results = sorted((json.loads(r) for r in results_json),
                     key=lambda r: VARIANTS.index(r["variant"]))
    table = results_table(results)
    with tempfile.TemporaryDirectory() as tmp:
        html = write_report(cfg, results, tmp, parent_run_id)
        shutil.copyfile(html, html_path)
    log.info("Ablations (same data, seed %d):\n%s", cfg["seed"], table)
    return table


def run_experiment(cfg: dict, variants: list[str] | None = None, name: str = "experiment") -> dict:
    """All variants on the same data and seed; returns {results, table, parent_run_id, dir}."""
    variants = list(variants or VARIANTS)
    cfg_json = json.dumps(cfg, sort_keys=True)
    parent = tracking.create_run(cfg, name)
    # One folder per invocation (its MLflow run id): artifact paths, which also key generator
    # rounds against task retries, never repeat across runs.
    root = storage.join(cfg["storage_root"], "experiments", name, parent)
    targets_uri = storage.join(root, "class_targets.safetensors")
    stages.class_targets(cfg_json, targets_uri)
    for i in range(config_mod.num_clients(cfg)):
        stages.extract(cfg_json, i)
    tracking.log_params(cfg, parent, {"feda2v.ablations": ",".join(variants)})
    results = []
    for variant in variants:
        child = tracking.create_run(cfg, f"{name}/{variant}", parent_run_id=parent)
        try:
            result = run_variant(cfg, variant, root, targets_uri, child)
        except BaseException:
            tracking.set_status(cfg, child, "FAILED")
            tracking.set_status(cfg, parent, "FAILED")
            raise
        tracking.set_status(cfg, child, "FINISHED")
        tracking.log_metrics(cfg, parent, {f"ablation/{variant}/final_accuracy":
                                           result["final_accuracy"]}, 0)
        result["run_id"] = child
        results.append(result)
    table = results_table(results)
    storage.write_json(storage.join(root, "results.json"), results)
    html = ""
    if storage.is_local(root):
        html = write_report(cfg, results, storage.local_path(storage.join(root, "report")), parent)
    tracking.set_status(cfg, parent, "FINISHED")
    return {"results": results, "table": table, "parent_run_id": parent, "dir": root,
            "html": html}
