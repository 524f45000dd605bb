"""Assemble the pipeline DAG for a config: prepare, then rounds per phase, then finish."""


import json

from kfp import dsl

import components as c
from feda2v import config as config_mod
from feda2v.report import phases_param

PIPELINES = ("run1", "run2", "end_to_end")
PHASE_OF = {"run1": "run1", "run2": "run2"}


def phase_plan(cfg: dict, kind: str) -> "list[tuple[str, int]]":
    """[(phase, rounds), ...] of a pipeline kind. Without generators every round is fedavg."""
    if kind not in PIPELINES:
        raise ValueError(f"unknown pipeline {kind!r}; expected one of {PIPELINES}")
    if not cfg["feda2v"]["use_generator"]:
        return [("fedavg", cfg["global_rounds"])]
    if kind == "end_to_end":
        return [("run1", cfg["feda2v"]["generator_training_rounds"]), ("run2", cfg["global_rounds"])]
    return [(PHASE_OF[kind], cfg["global_rounds"])]


def _prepare(config_json, clients: list[int], mlflow_run_id, phases: str):
    # Extraction and class targets depend only on their inputs: KFP may reuse earlier results.
    # Training tasks read and write state outside KFP (checkpoints, MLflow): never cached.
    targets = c.class_targets(config_json=config_json).set_caching_options(True)
    with dsl.ParallelFor(clients, name="extract-clients") as client_id:
        extracted = c.extract(config_json=config_json, client_id=client_id)
        extracted.set_caching_options(True)
    # Clients find their embeddings under the storage root by id; the init task collects the
    # extraction outputs, checks them, and orders every round after extraction.
    init = c.init_adapter(config_json=config_json,
                          client_data_uris=dsl.Collected(extracted.output),
                          targets=targets.outputs["targets"]).set_caching_options(False)
    run = c.start_tracking(config_json=config_json, mlflow_run_id=mlflow_run_id,
                           run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                           phases=phases).set_caching_options(False)
    return targets.outputs["targets"], init, run.output


def _rounds(config_json, cfg, phase: str, rounds: int, first_step: int, clients: list[int],
            adapter, targets, run_id, after):
    """Unroll `rounds` rounds; returns (final global adapter output, last task)."""
    train_on_synthetic = phase == "run2" and cfg["feda2v"]["global_model_train"]
    last = after
    for r in range(1, rounds + 1):
        step = first_step + r - 1
        with dsl.ParallelFor(clients, name=f"{phase}-round-{r}-clients") as client_id:
            update = c.client_round(config_json=config_json, client_id=client_id, round_num=r,
                                    phase=phase, global_adapter=adapter,
                                    targets=targets).set_caching_options(False)
            if last is not None:
                update.after(last)  # e.g. Run 2 waits for the checkpoints of Run 1
        agg = c.aggregate(config_json=config_json, round_num=r, step=step,
                          updates=dsl.Collected(update.outputs["update"]), targets=targets,
                          mlflow_run_id=run_id).set_caching_options(False)
        if last is not None:
            agg.after(last)  # one MLflow writer at a time
        new_adapter = agg.outputs["adapter"]
        if train_on_synthetic:
            gt = c.global_train(config_json=config_json, round_num=r, step=step,
                                aggregated=agg.outputs["adapter"], previous=adapter,
                                synthetic=agg.outputs["synthetic"], targets=targets,
                                mlflow_run_id=run_id).set_caching_options(False)
            new_adapter = gt.outputs["adapter"]
        last = c.evaluate(config_json=config_json, round_num=r, step=step, adapter=new_adapter,
                          targets=targets, mlflow_run_id=run_id).set_caching_options(False)
        last.set_display_name(f"evaluate-{phase}-round-{r}")
        adapter = new_adapter
    return adapter, last


def build_ablations(cfg: dict):
    """Fan the ablation variants out (one task each) on shared targets and embeddings."""
    from feda2v.experiment import VARIANTS

    clients = list(range(config_mod.num_clients(cfg)))
    default_json = json.dumps(cfg, sort_keys=True)

    @dsl.pipeline(name="feda2v-ablations",
                  description="FedA2V ablations: " + ", ".join(VARIANTS) + ", same data and seed")
    def pipeline(config_json: str = default_json, mlflow_run_id: str = "") -> dsl.HTML:
        """FedA2V ablations on the same data and seed.

        Args:
            config_json: The resolved run config (JSON).
            mlflow_run_id: Parent MLflow run of the variants' runs; empty = top-level runs.
        """
        targets = c.class_targets(config_json=config_json).set_caching_options(True)
        with dsl.ParallelFor(clients, name="extract-clients") as client_id:
            extracted = c.extract(config_json=config_json, client_id=client_id)
            extracted.set_caching_options(True)
        ready = c.init_adapter(config_json=config_json,
                               client_data_uris=dsl.Collected(extracted.output),
                               targets=targets.outputs["targets"])
        with dsl.ParallelFor(list(VARIANTS), name="variants") as variant:
            result = c.ablation_variant(config_json=config_json, variant=variant,
                                        targets=targets.outputs["targets"],
                                        parent_run_id=mlflow_run_id)
            result.set_caching_options(False).after(ready)
        report = c.ablation_report(config_json=config_json, results=dsl.Collected(result.output),
                                   parent_run_id=mlflow_run_id).set_caching_options(False)
        return report.outputs["report"]

    return pipeline


def build(cfg: dict, kind: "str | None" = None):
    """Return the KFP pipeline function for `cfg` (kind: run1, run2, end_to_end; default from
    the config's `pipeline` key and mode flags)."""
    kind = kind or config_mod.pipeline_kind(cfg)
    if kind == "ablations":
        return build_ablations(cfg)
    plan = phase_plan(cfg, kind)
    clients = list(range(config_mod.num_clients(cfg)))
    default_json = json.dumps(cfg, sort_keys=True)

    @dsl.pipeline(name=f"feda2v-{kind.replace('_', '-')}",
                  description=f"FedA2V {kind}: " + ", ".join(f"{p} x {n} rounds" for p, n in plan))
    def pipeline(config_json: str = default_json, mlflow_run_id: str = "") -> dsl.Markdown:
        """FedA2V federated audio-to-visual training.

        Args:
            config_json: The resolved run config (JSON). Rounds and clients are fixed at compile
                time; other keys may be changed here.
            mlflow_run_id: Log into this existing MLflow run; empty creates a new run.
        """
        targets, init, run_id = _prepare(config_json, clients, mlflow_run_id,
                                                    phases_param(plan))
        step, last = 1, None
        for phase, rounds in plan:
            # Each phase starts from the same initial adapter, as separate seed runs would.
            adapter, last = _rounds(config_json, cfg, phase, rounds, step, clients,
                                    init.outputs["adapter"], targets, run_id, last)
            step += rounds
        done = c.finish_tracking(config_json=config_json, mlflow_run_id=run_id, adapter=adapter)
        done.set_caching_options(False)
        done.after(last)
        return done.outputs["report"]

    return pipeline
