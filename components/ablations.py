
from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ablation_parent(config_json: str, mlflow_run_id: str, run_key: str) -> str:
    """The MLflow parent run every variant nests under: mlflow_run_id, else the run of this KFP
    run (found again by its job id on retries), else a new one."""
    from feda2v.evaluation import experiment

    return experiment.parent_task(config_json, mlflow_run_id, run_key)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ablation_finish(config_json: str, mlflow_run_id: str, run_key: str,
                    status: dsl.PipelineTaskFinalStatus) -> str:
    """Exit handler: the parent run ends FINISHED, FAILED or KILLED whatever happened."""
    from feda2v.evaluation import experiment

    return experiment.finish_task(config_json, mlflow_run_id, run_key, status.state)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ablation_variant(config_json: str, variant: str, targets: Input[Dataset],
                     mlflow_run_id: str, run_key: str) -> str:
    """Run one ablation variant end to end, nested under the parent run; returns its results
    as JSON."""
    import json

    from feda2v.evaluation import experiment

    return json.dumps(experiment.run_variant_task(config_json, variant, targets.path,
                                                  mlflow_run_id, run_key))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ablation_report(config_json: str, results: list[str], mlflow_run_id: str, run_key: str,
                    report: Output[HTML]) -> str:
    """One table (and the HTML report) over all variants, also in the parent run; returns the
    table."""
    from feda2v.evaluation import experiment

    return experiment.report_task(config_json, results, mlflow_run_id, run_key, report.path)
