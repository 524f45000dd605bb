from kfp import dsl
from kfp.dsl import Input, Markdown, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def start_tracking(config_json: str, mlflow_run_id: str, run_name: str, phases: str) -> str:
    """Open (or create) this pipeline run's MLflow run; returns its id."""
    from feda2v import stages

    return stages.start_tracking(config_json, mlflow_run_id, run_name, phases)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def finish_tracking(config_json: str, mlflow_run_id: str, adapter: Input[Model],
                    report: Output[Markdown]) -> str:
    """Results table as a Markdown artifact; logs it and the final adapter; closes the run."""
    from feda2v import stages

    return stages.finish_tracking(config_json, mlflow_run_id, adapter.path, report.path)
