"""The ablations pipeline's tasks. Each resolves its config as every task does
(runtime.resolve: config_json plus the run form's typed parameters)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ablation_parent(config_json: str, compiled: str, global_rounds: int,
                    generator_training_rounds: int, client_ids: list, settings: dict,
                    mlflow_run_id: str, run_key: str) -> str:
    """The MLflow parent run every variant nests under: mlflow_run_id, else the run of this KFP
    run (found again by its job id on retries), else a new one."""
    from feda2v.orchestration import experiment, runtime

    cfg = runtime.resolve(config_json, compiled, global_rounds, generator_training_rounds,
                          client_ids, settings)
    return experiment.parent_task(cfg, mlflow_run_id, run_key)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ablation_finish(config_json: str, compiled: str, global_rounds: int,
                    generator_training_rounds: int, client_ids: list, settings: dict,
                    mlflow_run_id: str, run_key: str, status: dsl.PipelineTaskFinalStatus) -> str:
    """Exit handler: the parent run ends FINISHED, FAILED or KILLED whatever happened."""
    from feda2v.orchestration import experiment, runtime

    try:
        cfg = runtime.resolve(config_json, compiled, global_rounds, generator_training_rounds,
                              client_ids, settings)
    except ValueError:  # the run failed on this very check: still close its MLflow run
        cfg = config_json
    return experiment.finish_task(cfg, mlflow_run_id, run_key, status.state)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ablation_variant(config_json: str, compiled: str, global_rounds: int,
                     generator_training_rounds: int, client_ids: list, settings: dict,
                     variant: str, targets: Input[Dataset], mlflow_run_id: str,
                     run_key: str) -> str:
    """Run one ablation variant end to end, nested under the parent run; returns its results
    as JSON."""
    import json

    from feda2v.orchestration import experiment, runtime

    cfg = runtime.resolve(config_json, compiled, global_rounds, generator_training_rounds,
                          client_ids, settings)
    return json.dumps(experiment.run_variant_task(cfg, variant, targets.path, mlflow_run_id,
                                                  run_key))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ablation_report(config_json: str, compiled: str, global_rounds: int,
                    generator_training_rounds: int, client_ids: list, settings: dict,
                    results: list[str], mlflow_run_id: str, run_key: str,
                    report: Output[HTML]) -> str:
    """One table (and the HTML report) over all variants, also in the parent run; returns the
    table."""
    from feda2v.orchestration import experiment, runtime

    cfg = runtime.resolve(config_json, compiled, global_rounds, generator_training_rounds,
                          client_ids, settings)
    return experiment.report_task(cfg, results, mlflow_run_id, run_key, report.path)
