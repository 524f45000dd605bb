"""Assemble the pipeline DAG for a config: prepare, then rounds per phase, then finish."""


import json

from kfp import dsl

import components as c
from feda2v import config as config_mod
from feda2v.report import phases_param
from pipelines.cluster import ClusterOptions, configure

PIPELINES = ("run1", "run2", "end_to_end", "ablations")
PHASE_OF = {"run1": "run1", "run2": "run2"}

PARAMS_DOC = """
        Args:
            config_json: The run config (JSON, seed format with the feda2v section). Rounds and
                clients are fixed at compile time; every other key may be changed here.
            mlflow_run_id: Log into this existing MLflow run; empty creates one per pipeline run.
"""


def phase_plan(cfg: dict, kind: str) -> "list[tuple[str, int]]":
    """[(phase, rounds), ...] of a pipeline kind. Without generators every round is fedavg."""
    if kind not in PIPELINES or kind == "ablations":
        raise ValueError(f"no round plan for pipeline {kind!r}; expected one of {PIPELINES[:3]}")
    if not cfg["feda2v"]["use_generator"]:
        return [("fedavg", cfg["global_rounds"])]
    if kind == "end_to_end":
        return [("run1", cfg["feda2v"]["generator_training_rounds"]), ("run2", cfg["global_rounds"])]
    return [(PHASE_OF[kind], cfg["global_rounds"])]


class _Tasks:
    """Every task goes through here: caching (only for tasks that depend on their inputs alone:
    extraction and class targets) and the cluster options (image, resources, retries, secrets)."""

    def __init__(self, options: ClusterOptions):
        self.options = options

    def __call__(self, task, cache: bool = False):
        return configure(task.set_caching_options(cache), self.options)


def _prepare(t: _Tasks, config_json, clients: "list[int]"):
    targets = t(c.class_targets(config_json=config_json), cache=True)
    with dsl.ParallelFor(clients, name="extract-clients") as client_id:
        extracted = t(c.extract(config_json=config_json, client_id=client_id), cache=True)
    # Clients find their embeddings under the storage root by id; the init task collects the
    # extraction outputs, checks them, and orders every round after extraction.
    init = t(c.init_adapter(config_json=config_json,
                            client_data_uris=dsl.Collected(extracted.output),
                            targets=targets.outputs["targets"]))
    return targets.outputs["targets"], init


def _rounds(t: _Tasks, config_json, phase: str, rounds: int, first_step: int,
            clients: "list[int]", adapter, targets, run_id, after):
    """Unroll `rounds` rounds; returns (final global adapter output, last task)."""
    last = after
    for r in range(1, rounds + 1):
        step = first_step + r - 1
        with dsl.ParallelFor(clients, name=f"{phase}-round-{r}-clients") as client_id:
            update = t(c.client_round(config_json=config_json, client_id=client_id, round_num=r,
                                      phase=phase, global_adapter=adapter, targets=targets))
            if last is not None:
                update.after(last)  # e.g. Run 2 waits for the checkpoints of Run 1
        server = t(c.server_round(config_json=config_json, round_num=r, step=step, phase=phase,
                                  updates=dsl.Collected(update.outputs["update"]),
                                  previous=adapter, targets=targets, mlflow_run_id=run_id))
        server.set_display_name(f"server-{phase}-round-{r}")
        if last is not None:
            server.after(last)  # one MLflow writer at a time
        adapter, last = server.outputs["adapter"], server
    return adapter, last


def build_ablations(cfg: dict, options: ClusterOptions):
    """Fan the ablation variants out (one task each) on shared targets and embeddings."""
    from feda2v.experiment import VARIANTS

    t = _Tasks(options)
    clients = list(range(config_mod.num_clients(cfg)))
    default_json = json.dumps(cfg, sort_keys=True)

    def pipeline(config_json: str = default_json, mlflow_run_id: str = "") -> dsl.HTML:
        targets, ready = _prepare(t, config_json, clients)
        with dsl.ParallelFor(list(VARIANTS), name="variants") as variant:
            result = t(c.ablation_variant(config_json=config_json, variant=variant,
                                          targets=targets, parent_run_id=mlflow_run_id))
            result.after(ready)
        report = t(c.ablation_report(config_json=config_json,
                                     results=dsl.Collected(result.output),
                                     parent_run_id=mlflow_run_id))
        return report.outputs["report"]

    # The docstring becomes the parameter help of the KFP UI's run form.
    pipeline.__doc__ = "FedA2V ablations on the same data and seed.\n" + PARAMS_DOC
    return dsl.pipeline(name="feda2v-ablations",
                        description="FedA2V ablations: " + ", ".join(VARIANTS))(pipeline)


def build(cfg: dict, kind: "str | None" = None, options: "ClusterOptions | None" = None):
    """Return the KFP pipeline function for `cfg` (kind: run1, run2, end_to_end, ablations;
    default from the config's `pipeline` key and mode flags)."""
    kind = kind or config_mod.pipeline_kind(cfg)
    options = options or ClusterOptions()
    if kind == "ablations":
        return build_ablations(cfg, options)
    t = _Tasks(options)
    plan = phase_plan(cfg, kind)
    clients = list(range(config_mod.num_clients(cfg)))
    default_json = json.dumps(cfg, sort_keys=True)

    def pipeline(config_json: str = default_json, mlflow_run_id: str = "") -> dsl.Markdown:
        targets, init = _prepare(t, config_json, clients)
        run = t(c.start_tracking(config_json=config_json, mlflow_run_id=mlflow_run_id,
                                 run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                 phases=phases_param(plan)))
        step, last, adapter = 1, None, None
        for phase, rounds in plan:
            # Each phase starts from the same initial adapter, as separate seed runs would.
            adapter, last = _rounds(t, config_json, phase, rounds, step, clients,
                                    init.outputs["adapter"], targets, run.output, last)
            step += rounds
        done = t(c.finish_tracking(config_json=config_json, mlflow_run_id=run.output,
                                   adapter=adapter))
        done.after(last)
        return done.outputs["report"]

    rounds_text = ", ".join(f"{p} x {n} rounds" for p, n in plan)
    pipeline.__doc__ = f"FedA2V {kind}: {rounds_text}.\n" + PARAMS_DOC
    return dsl.pipeline(name=f"feda2v-{kind.replace('_', '-')}",
                        description=f"FedA2V {kind}: {rounds_text}")(pipeline)
