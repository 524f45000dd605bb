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
# The Args lines of the typed run-time parameters besides the settings (whose lines come from
# the config keys' docs).
COUNT_DOC = {
    "global_rounds": "Rounds of the last federated phase (the config's global_rounds).",
    "generator_training_rounds": "Run 1 rounds before Run 2 (feda2v.generator_training_rounds).",
    "client_ids": "One id per client, [0, 1, ..., n-1]; n must match data.clients (or sets\n"
                  "                data.num_clients for the pathological, dirichlet and iid "
                  "partitions).",
}
# What config_json's help says is fixed, by execution.
FIXED = {
    "phase": (" The generator flags are fixed at compile time; rounds, clients and the keys "
              "below are typed run-time parameters (config_json keeps the rest)."),
    "round": (" Rounds, clients and the generator flags are fixed at compile time (execution "
              "'round'); the keys below are typed run-time parameters, and every other key may "
              "be changed here."),
}


def _typed_form(cfg: Config, default_json: str, counts: dict, client_ids: "list | None",
                settings: "list[str]", body, returns=dsl.Markdown):
    """A pipeline function whose signature is the run form: config_json, mlflow_run_id, the
    round `counts` that are run-time parameters ({name: compiled value}), client_ids (unless
    None: compiled) and the `settings` (runtime.SETTINGS names), each typed and defaulting to
    the compiled config's value (KFP reads the signature, and the docstring's Args for the
    form's help). It calls body(config_json, mlflow_run_id, counts, client_ids, settings) with
    the values as dicts. Returns (function, the Args lines of the typed parameters)."""
    import inspect

    P = inspect.Parameter

    def param(name, default):
        return P(name, P.POSITIONAL_OR_KEYWORD, default=default, annotation=type(default))

    params = [param("config_json", default_json), param("mlflow_run_id", "")]
    params += [param(name, value) for name, value in counts.items()]
    doc = "".join(f"\n            {name}: {COUNT_DOC[name]}" for name in counts)
    if client_ids is not None:
        params.append(param("client_ids", list(client_ids)))
        doc += f"\n            client_ids: {COUNT_DOC['client_ids']}"
    for name in settings:
        key = runtime.SETTINGS[name]
        params.append(param(name, runtime.config_value(cfg, key)))
        doc += f"\n            {name}: {config_mod.key_spec(key).doc} ({key})"
    signature = inspect.Signature(params, return_annotation=(
        inspect.Signature.empty if returns is None else returns))

    def pipeline(*args, **kwargs):
        values = signature.bind(*args, **kwargs)
        values.apply_defaults()
        v = values.arguments
        return body(v["config_json"], v["mlflow_run_id"], {n: v[n] for n in counts},
                    v.get("client_ids"), {n: v[n] for n in settings})

    pipeline.__signature__ = signature
    pipeline.__annotations__ = {p.name: p.annotation for p in params} | (
        {} if returns is None else {"return": returns})
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


def _data_tasks(t: _Tasks, shape: dict, in_loop=None):
    """The class targets, and extraction per client: both cached, both fed the data_config
    task's cut-down config (resolved with the run form's settings, so a seed, storage root or
    dataset given at run time is in their cache key). in_loop(client, extract task) adds tasks
    to the client loop. Returns (targets task, extract task, what in_loop returned)."""
    targets = t(c.class_targets(data_config=t(c.data_config(**shape)).output), cache=True)
    with dsl.ParallelFor(shape["client_ids"], name="clients") as i:
        # In the loop: kfp.local hands a loop's task the loop item where it should pass the
        # parameter output of a task outside the loop (artifacts pass fine).
        data = t(c.data_config(**shape)).output
        extracted = t(c.extract(data_config=data, client_id=i), cache=True)
        more = in_loop(i, extracted) if in_loop else None
    return targets, extracted, more


def _phase_dag(t: _Tasks, plan, common: dict, mlflow_run_id, run2_from_run1: bool = False):
    """Extraction per client and the class targets, then each phase as one task (shown by
    its phase's name: fedavg, run1, run2); generator training and synthetic generation per
    client between Run 1 and Run 2."""
    phases = dict(plan)
    ids = common["client_ids"]
    keyed = dict(common, run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    shape = {k: common[k] for k in ("config_json", "compiled", "client_ids", "settings")}
    last = run1 = None

    def sample(i, extracted):  # Run 2 alone: sample right away
        return t(c.generate(**keyed, client_id=i)).after(extracted)

    alone = "run2" in phases and "run1" not in phases
    targets, extracted, sampled = _data_tasks(t, shape, sample if alone else None)
    targets = targets.outputs["targets"]

    def phase_task(phase, **more):
        task = t(c.federated_phase(**keyed, phase=phase, mlflow_run_id=mlflow_run_id,
                                   embeddings=dsl.Collected(extracted.outputs["embeddings"]),
                                   targets=targets, **more))
        return task.set_display_name(phase)

    if "fedavg" in phases:
        last = phase_task("fedavg")
    if "run1" in phases:
        last = run1 = phase_task("run1")
        with dsl.ParallelFor(ids, name="generators") as i:
            trained = t(c.train_generator(**keyed, client_id=i, mlflow_run_id=mlflow_run_id,
                                          conditions=last.outputs["conditions"]))
            if "run2" in phases:
                sampled = t(c.generate(**keyed, client_id=i,
                                       checkpoint=trained.outputs["checkpoint"]))
    if "run2" in phases:
        start = {"start": run1.outputs["adapter"]} if run1 and run2_from_run1 else {}
        phase_task("run2", **start, synthetic=dsl.Collected(sampled.outputs["samples"]))


def _round_dag(t: _Tasks, plan, common: dict, mlflow_run_id, run2_from_run1: bool = False):
    """Today's silo shape: one task per client per round (client-{phase}-round-{r}), one
    server task per round (server-{phase}-round-{r}); the generator of a client trains right
    after its last Run 1 round and samples right before its first Run 2 round. The round tasks
    read the run form's settings and the run key from the global adapter's metadata (see
    components.rounds)."""
    keyed = dict(common, run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    base = {k: common[k] for k in ("config_json", "compiled", "settings")}
    clients = common["client_ids"]
    targets, extracted, _ = _data_tasks(t, dict(base, client_ids=clients))
    targets = targets.outputs["targets"]
    init = t(c.init_adapter(**base, run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                            client_data_uris=dsl.Collected(extracted.outputs["Output"]),
                            targets=targets))
    last, phases = init, [p for p, _ in plan]
    adapter = init.outputs["adapter"]
    run = {"config_json": base["config_json"], "targets": targets}
    for phase, rounds in plan:
        if not (phase == "run2" and run2_from_run1):
            adapter = init.outputs["adapter"]  # else Run 2 goes on from Run 1's last adapter
        for r in range(1, rounds + 1):
            with dsl.ParallelFor(clients, name=f"{phase}-round-{r}") as i:
                before = None
                if phase == "run2" and r == 1:
                    before = t(c.generate(**keyed, client_id=i)).after(last)
                update = t(c.client_round(**run, client_id=i, round_num=r, phase=phase,
                                          global_adapter=adapter))
                update.set_display_name(f"client-{phase}-round-{r}").after(before or last)
                trained = None
                if phase == "run1" and r == rounds:
                    trained = t(c.train_generator(**keyed, client_id=i,
                                                  mlflow_run_id=mlflow_run_id)).after(update)
            ready = {"ready": dsl.Collected(trained.outputs["Output"])} if trained else {}
            server = t(c.server_round(**run, round_num=r, phase=phase,
                                      updates=dsl.Collected(update.outputs["update"]),
                                      previous=adapter, mlflow_run_id=mlflow_run_id, **ready))
            server.set_display_name(f"server-{phase}-round-{r}")
            server.after(last)  # one MLflow writer at a time
            adapter, last = server.outputs["adapter"], server
    assert phases  # every plan has a phase


def _counts(cfg: Config) -> dict:
    return {"global_rounds": cfg.global_rounds,
            "generator_training_rounds": cfg.feda2v.generator_training_rounds}


def build_ablations(cfg: Config, options: ClusterOptions):
    """Fan the ablation variants out (one task each) on shared targets and embeddings. Every
    variant runs its rounds in-process, so the run form is phase execution's: rounds, clients
    and every setting are typed run-time parameters."""
    from feda2v.orchestration.experiment import VARIANTS

    cfg = cfg.replace(execution="phase")  # rounds and clients are run-time parameters here
    t = _Tasks(options)
    compiled = runtime.compiled_values(cfg)

    # No pipeline output: KFP allows none from inside an ExitHandler; the report task's HTML
    # artifact is in the UI, and in the parent MLflow run.
    def body(config_json, mlflow_run_id, counts, client_ids, settings):
        shape = {"config_json": config_json, "compiled": compiled, "client_ids": client_ids,
                 "settings": settings}
        keyed = dict(shape, **counts, mlflow_run_id=mlflow_run_id,
                     run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        done = t(c.ablation_finish(**keyed))
        with dsl.ExitHandler(done, name="feda2v-ablations"):
            # One parent run, whatever mlflow_run_id is: every variant nests under it.
            parent = t(c.ablation_parent(**keyed))
            targets, extracted, _ = _data_tasks(t, shape)
            ready = t(c.init_adapter(config_json=config_json, compiled=compiled,
                                     settings=settings, run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                     client_data_uris=dsl.Collected(extracted.outputs["Output"]),
                                     targets=targets.outputs["targets"]))
            with dsl.ParallelFor(list(VARIANTS), name="variants") as variant:
                result = t(c.ablation_variant(**keyed, variant=variant,
                                              targets=targets.outputs["targets"]))
                result.after(ready, parent)  # the parent exists before four tasks look it up
            t(c.ablation_report(results=dsl.Collected(result.output), **keyed))

    clients = list(range(config_mod.num_clients(cfg)))
    pipeline, typed = _typed_form(cfg, cfg.to_json(), _counts(cfg), clients,
                                  runtime.form_settings(["run1", "run2"]), body, returns=None)
    # The docstring becomes the parameter help of the KFP UI's run form.
    pipeline.__doc__ = ("FedA2V ablations on the same data and seed (R1 = "
                        "generator_training_rounds, R2 = global_rounds).\n"
                        + PARAMS_DOC.format(fixed=FIXED["phase"], typed=typed))
    return dsl.pipeline(name="feda2v-ablations",
                        description="FedA2V ablations: " + ", ".join(VARIANTS),
                        pipeline_root=options.pipeline_root or None)(pipeline)


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
    compiled = runtime.compiled_values(cfg)
    rounds = _counts(cfg)
    phases = [p for p, _ in plan]

    def body(config_json, mlflow_run_id, counts, client_ids, settings):
        common = {"config_json": config_json, "compiled": compiled, **rounds, **counts,
                  "client_ids": clients if client_ids is None else client_ids,
                  "settings": settings}
        done = t(c.finish_run(**common, run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                              mlflow_run_id=mlflow_run_id))
        with dsl.ExitHandler(done, name="feda2v-run"):
            dag = _phase_dag if execution == "phase" else _round_dag
            dag(t, plan, common, mlflow_run_id, cfg.feda2v.run2_start != "initial")
        return done.outputs["report"]

    if execution == "round":  # rounds and clients are unrolled: compiled
        counts, client_ids = {}, None
    else:
        counts = {k: v for k, v in rounds.items()
                  if k == "global_rounds" or phases == ["run1", "run2"]}
        client_ids = clients
    pipeline, typed = _typed_form(cfg, cfg.to_json(), counts, client_ids,
                                  runtime.form_settings(phases), body)
    rounds_text = (", ".join(f"{p} x {n} rounds" for p, n in plan) if execution == "round" else
                   " then ".join(phases) + " (rounds: run-time parameters)")
    pipeline.__doc__ = (f"FedA2V {kind} ({execution} execution): {rounds_text}.\n"
                        + PARAMS_DOC.format(fixed=FIXED[execution], typed=typed))
    return dsl.pipeline(name=f"feda2v-{kind.replace('_', '-')}",
                        description=f"FedA2V {kind}, {execution} execution: {rounds_text}",
                        pipeline_root=options.pipeline_root or None)(pipeline)
