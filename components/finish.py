from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Markdown, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def finish_run(config_json: str, compiled: str, global_rounds: int,
               generator_training_rounds: int, client_ids: list, settings: dict, run_key: str,
               mlflow_run_id: str, status: dsl.PipelineTaskFinalStatus,
               report: Output[Markdown], figures: Output[HTML],
               confusion: Output[ClassificationMetrics]) -> str:
    """Exit handler: results table, final adapter and report to MLflow; the report with its
    figures as an HTML artifact and the final adapter's confusion matrix for the KFP UI; the
    MLflow run ends FINISHED, FAILED or KILLED whatever stopped the pipeline."""
    from feda2v.orchestration import runtime, tasks

    error = status.error_message
    try:
        cfg = runtime.resolve(config_json, compiled, global_rounds, generator_training_rounds,
                              client_ids, settings)
    except ValueError as e:  # the run failed on this very check: still close its MLflow run
        cfg, error = config_json, str(e)
    return tasks.finish_task(cfg, mlflow_run_id, run_key, status.state, report, figures,
                             confusion, error)
