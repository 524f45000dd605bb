
from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ablation_variant(config_json: str, variant: str, targets: Input[Dataset],
                     parent_run_id: str) -> str:
    """Run one ablation variant end to end; returns its results as JSON."""
    import json

    from feda2v import experiment

    return json.dumps(experiment.run_variant_task(config_json, variant, targets.path,
                                                  parent_run_id))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ablation_report(config_json: str, results: list[str], parent_run_id: str,
                    report: Output[HTML]) -> str:
    """One table (and the HTML report) over all variants; returns the table."""
    from feda2v import experiment

    return experiment.report_task(config_json, results, parent_run_id, report.path)
