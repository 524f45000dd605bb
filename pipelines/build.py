"""Assemble the pipeline DAG for a config, in one of two execution granularities.

phase (default): extraction and the generator stages run one task per client; each federated
  phase runs all its rounds for all clients in one task. Rounds and clients are typed run-time
  parameters, so the YAML does not grow with rounds.
round (silo mode): one task per client per round and one per server round, unrolled.

Both call the same library round loop (feda2v.federated) and give the same numbers. Every run
ends in an exit handler that closes its MLflow run (FINISHED / FAILED / KILLED).
"""


from kfp import dsl

import components as c
from feda2v.io import config as config_mod
from feda2v.io.config import Config
from feda2v.orchestration import runtime
from pipelines.cluster import ClusterOptions, configure

PIPELINES = ("run1", "run2", "end_to_end", "ablations")
EXECUTIONS = ("phase", "round")

PARAMS_DOC = """
        Args:
            config_json: The run config (JSON, seed format with the feda2v section).{fixed}
            mlflow_run_id: Log into this existing MLflow run; empty creates one per pipeline run.{typed}
"""
TYPED_DOC = """
            global_rounds: Rounds of the last federated phase (the config's global_rounds).
            generator_training_rounds: Run 1 rounds before Run 2 (feda2v.generator_training_rounds).
            client_ids: One id per client, [0, 1, ..., n-1]; n must match data.clients (or sets
                data.num_clients for the pathological, dirichlet and iid partitions)."""


# The run form's typed settings each phase uses (runtime.SETTINGS names).
PHASE_SETTINGS = {
    "fedavg": ("local_epochs", "learning_rate"),
    "run1": ("local_epochs", "learning_rate", "generator_type", "generator_training_epochs",
             "generator_learning_rate"),
    "run2": ("local_epochs", "learning_rate", "generator_type", "synthetic_samples_per_class"),
}


def _typed_form(cfg: Config, plan, default_json: str, rounds: dict, clients: list, body):
    """The phase-execution pipeline function, its signature built from the plan: the round
    counts it has, client_ids, and the settings its phases use, each typed and defaulting to
    the compiled config's value (KFP reads the signature and the docstring's Args for the run
    form). Returns (function, the Args lines)."""
    import inspect

    phases = [p for p, _ in plan]
    names = list(dict.fromkeys(n for p in phases for n in PHASE_SETTINGS[p]))
    P = inspect.Parameter
    params = [P("config_json", P.POSITIONAL_OR_KEYWORD, default=default_json, annotation=str),
              P("mlflow_run_id", P.POSITIONAL_OR_KEYWORD, default="", annotation=str),
              P("global_rounds", P.POSITIONAL_OR_KEYWORD, default=rounds["global_rounds"],
                annotation=int)]
    doc = TYPED_DOC
    if phases == ["run1", "run2"]:
        params.append(P("generator_training_rounds", P.POSITIONAL_OR_KEYWORD,
                        default=rounds["generator_training_rounds"], annotation=int))
    else:
        doc = doc.replace(doc.splitlines()[2] + "\n", "")
    params.append(P("client_ids", P.POSITIONAL_OR_KEYWORD, default=clients, annotation=list))
    for name in names:
        key = runtime.SETTINGS[name]
        value = runtime._value(cfg, key)
        params.append(P(name, P.POSITIONAL_OR_KEYWORD, default=value, annotation=type(value)))
        doc += f"\n            {name}: {config_mod.key_spec(key).doc} ({key})"
    signature = inspect.Signature(params, return_annotation=dsl.Markdown)

    def pipeline(*args, **kwargs):
        values = signature.bind(*args, **kwargs)
        values.apply_defaults()
        v = values.arguments
        return body(v["config_json"], v["mlflow_run_id"], v["global_rounds"],
                    v.get("generator_training_rounds", rounds["generator_training_rounds"]),
                    v["client_ids"], {name: v[name] for name in names})

    pipeline.__signature__ = signature
    pipeline.__annotations__ = {p.name: p.annotation for p in params} | {"return": dsl.Markdown}
    return pipeline, doc


def phase_plan(cfg: Config, kind: str) -> "list[tuple[str, int]]":
    """[(phase, rounds), ...] of a pipeline kind. Without generators every round is fedavg."""
    return runtime.plan(cfg, kind)


class _Tasks:
    """Every task goes through here: caching (only for tasks that depend on their inputs alone:
    extraction and class targets, fed the data_config task's cut-down config so that their
    cache key holds only what decides their output) and the cluster options (image,
    resources, retries, secrets)."""

    def __init__(self, options: ClusterOptions):
        self.options = options

    def __call__(self, task, cache: bool = False):
        return configure(task.set_caching_options(cache), self.options)


def _phase_dag(t: _Tasks, plan, common: dict, mlflow_run_id, run2_from_run1: bool = False):
    """Extraction per client and the class targets, then each phase as one task; generator
    training and synthetic generation per client between Run 1 and Run 2."""
    phases = dict(plan)
    ids = common["client_ids"]
    keyed = dict(common, run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    shape = {k: common[k] for k in ("config_json", "compiled", "client_ids")}
    last = run1 = None
    targets = t(c.class_targets(data_config=t(c.data_config(**shape)).output),
                cache=True).outputs["targets"]
    with dsl.ParallelFor(ids, name="clients") as i:
        # In the loop: kfp.local hands a loop's task the loop item where it should pass the
        # parameter output of a task outside the loop (artifacts pass fine).
        data = t(c.data_config(**shape)).output
        extracted = t(c.extract(data_config=data, client_id=i), cache=True)
        if "run2" in phases and "run1" not in phases:  # Run 2 alone: sample right away
            sampled = t(c.generate(**keyed, client_id=i)).after(extracted)

    def inputs():
        return {"embeddings": dsl.Collected(extracted.outputs["embeddings"]), "targets": targets,
                "mlflow_run_id": mlflow_run_id}

    if "fedavg" in phases:
        last = t(c.federated_phase(**keyed, phase="fedavg", **inputs()))
    if "run1" in phases:
        last = run1 = t(c.federated_phase(**keyed, phase="run1", **inputs()))
        with dsl.ParallelFor(ids, name="generators") as i:
            trained = t(c.train_generator(**keyed, client_id=i,
                                          conditions=last.outputs["conditions"]))
            if "run2" in phases:
                sampled = t(c.generate(**keyed, client_id=i,
                                       checkpoint=trained.outputs["checkpoint"]))
    if "run2" in phases:
        start = {"start": run1.outputs["adapter"]} if run1 and run2_from_run1 else {}
        t(c.federated_phase(**keyed, phase="run2", **inputs(), **start,
                            synthetic=dsl.Collected(sampled.outputs["samples"])))


def _round_dag(t: _Tasks, plan, common: dict, mlflow_run_id, clients: "list[int]",
               run2_from_run1: bool = False):
    """Today's silo shape: one task per client per round, one server task per round; the
    generator of a client trains right after its last Run 1 round and samples right before its
    first Run 2 round."""
    keyed = dict(common, run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    base = {k: common[k] for k in ("config_json", "compiled")}
    data = t(c.data_config(**base, client_ids=clients)).output
    targets = t(c.class_targets(data_config=data), cache=True).outputs["targets"]
    with dsl.ParallelFor(clients, name="clients") as i:
        data = t(c.data_config(**base, client_ids=clients)).output  # see _phase_dag
        extracted = t(c.extract(data_config=data, client_id=i), cache=True)
    init = t(c.init_adapter(**base, client_data_uris=dsl.Collected(extracted.outputs["Output"]),
                            targets=targets))
    last, phases = init, [p for p, _ in plan]
    adapter = init.outputs["adapter"]
    for phase, rounds in plan:
        if not (phase == "run2" and run2_from_run1):
            adapter = init.outputs["adapter"]  # else Run 2 goes on from Run 1's last adapter
        for r in range(1, rounds + 1):
            with dsl.ParallelFor(clients, name=f"{phase}-round-{r}") as i:
                before = None
                if phase == "run2" and r == 1:
                    before = t(c.generate(**keyed, client_id=i)).after(last)
                update = t(c.client_round(config_json=base["config_json"], client_id=i,
                                          round_num=r, phase=phase,
                                          run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                          global_adapter=adapter, targets=targets))
                update.after(before or last)
                trained = None
                if phase == "run1" and r == rounds:
                    trained = t(c.train_generator(**keyed, client_id=i)).after(update)
            server = t(c.server_round(config_json=base["config_json"], round_num=r, phase=phase,
                                      run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                      updates=dsl.Collected(update.outputs["update"]),
                                      previous=adapter, targets=targets,
                                      mlflow_run_id=mlflow_run_id,
                                      **({"ready": dsl.Collected(trained.outputs["Output"])} if trained
                                         else {})))
            server.set_display_name(f"server-{phase}-round-{r}")
            server.after(last)  # one MLflow writer at a time
            adapter, last = server.outputs["adapter"], server
    assert phases  # every plan has a phase


def build_ablations(cfg: Config, options: ClusterOptions):
    """Fan the ablation variants out (one task each) on shared targets and embeddings."""
    from feda2v.evaluation.experiment import VARIANTS

    t = _Tasks(options)
    clients = list(range(config_mod.num_clients(cfg)))
    default_json = cfg.to_json()
    compiled = runtime.compiled_values(cfg)

    # No pipeline output: KFP allows none from inside an ExitHandler; the report task's HTML
    # artifact is in the UI, and in the parent MLflow run.
    def pipeline(config_json: str = default_json, mlflow_run_id: str = ""):
        keyed = {"config_json": config_json, "mlflow_run_id": mlflow_run_id,
                 "run_key": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
        done = t(c.ablation_finish(**keyed))
        with dsl.ExitHandler(done, name="feda2v-ablations"):
            # One parent run, whatever mlflow_run_id is: every variant nests under it.
            parent = t(c.ablation_parent(**keyed))
            shape = {"config_json": config_json, "compiled": compiled, "client_ids": clients}
            targets = t(c.class_targets(data_config=t(c.data_config(**shape)).output),
                        cache=True)
            with dsl.ParallelFor(clients, name="clients") as i:
                data = t(c.data_config(**shape)).output  # in the loop: see _phase_dag
                extracted = t(c.extract(data_config=data, client_id=i), cache=True)
            ready = t(c.init_adapter(config_json=config_json, compiled=compiled,
                                     client_data_uris=dsl.Collected(extracted.outputs["Output"]),
                                     targets=targets.outputs["targets"]))
            with dsl.ParallelFor(list(VARIANTS), name="variants") as variant:
                result = t(c.ablation_variant(config_json=config_json, variant=variant,
                                              targets=targets.outputs["targets"],
                                              mlflow_run_id=mlflow_run_id,
                                              run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER))
                result.after(ready, parent)  # the parent exists before four tasks look it up
            t(c.ablation_report(results=dsl.Collected(result.output), **keyed))

    # The docstring becomes the parameter help of the KFP UI's run form.
    pipeline.__doc__ = "FedA2V ablations on the same data and seed.\n" + PARAMS_DOC.format(
        fixed="", typed="")
    return dsl.pipeline(name="feda2v-ablations",
                        description="FedA2V ablations: " + ", ".join(VARIANTS))(pipeline)


def build(cfg: Config, kind: "str | None" = None, options: "ClusterOptions | None" = None,
          execution: "str | None" = None):
    """Return the KFP pipeline function for `cfg` (kind: run1, run2, end_to_end, ablations;
    default from the config's `pipeline` key and mode flags; execution: phase or round, default
    the config's `execution`)."""
    kind = kind or config_mod.pipeline_kind(cfg)
    options = options or ClusterOptions()
    if kind == "ablations":
        return build_ablations(cfg, options)
    execution = execution or cfg.execution
    if execution not in EXECUTIONS:
        raise ValueError(f"execution must be one of {EXECUTIONS}, got {execution!r}")
    # Tasks read the kind and the mode from the config they are given.
    cfg = cfg.replace(pipeline=kind, execution=execution)
    t = _Tasks(options)
    plan = runtime.plan(cfg)
    clients = list(range(config_mod.num_clients(cfg)))
    default_json = cfg.to_json()
    compiled = runtime.compiled_values(cfg)
    rounds = {"global_rounds": cfg.global_rounds,
              "generator_training_rounds": cfg.feda2v.generator_training_rounds}

    def body(config_json, mlflow_run_id, global_rounds, generator_training_rounds, client_ids,
             settings):
        common = {"config_json": config_json, "compiled": compiled,
                  "global_rounds": global_rounds,
                  "generator_training_rounds": generator_training_rounds, "client_ids": client_ids,
                  "settings": settings}
        done = t(c.finish_run(**common, run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                              mlflow_run_id=mlflow_run_id))
        with dsl.ExitHandler(done, name="feda2v-run"):
            if execution == "phase":
                _phase_dag(t, plan, common, mlflow_run_id,
                           cfg.feda2v.run2_start != "initial")
            else:
                _round_dag(t, plan, common, mlflow_run_id, clients,
                           cfg.feda2v.run2_start != "initial")
        return done.outputs["report"]

    if execution == "round":
        def pipeline(config_json: str = default_json, mlflow_run_id: str = "") -> dsl.Markdown:
            return body(config_json, mlflow_run_id, rounds["global_rounds"],
                        rounds["generator_training_rounds"], clients, {})
        fixed = (" Rounds, clients and the generator flags are fixed at compile time "
                 "(execution 'round'); every other key may be changed here.")
        typed = ""
    else:
        pipeline, typed = _typed_form(cfg, plan, default_json, rounds, clients, body)
        fixed = (" The generator flags are fixed at compile time; rounds, clients and the keys "
                 "below are typed run-time parameters (config_json keeps the rest).")

    rounds_text = (", ".join(f"{p} x {n} rounds" for p, n in plan) if execution == "round" else
                   " then ".join(p for p, _ in plan) + " (rounds: run-time parameters)")
    pipeline.__doc__ = (f"FedA2V {kind} ({execution} execution): {rounds_text}.\n"
                        + PARAMS_DOC.format(fixed=fixed, typed=typed))
    return dsl.pipeline(name=f"feda2v-{kind.replace('_', '-')}",
                        description=f"FedA2V {kind}, {execution} execution: {rounds_text}")(pipeline)
