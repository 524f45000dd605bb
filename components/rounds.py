"""Round execution (silo mode): the tasks of one client round and one server round. No
docstrings or comments in the bodies: KFP copies them into the YAML once per unrolled round.
The per-round tasks take the config as it is: the first tasks (class targets, extraction,
initial adapter) already checked it against the compiled DAG."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def class_targets(data_config: str, targets: Output[Dataset]) -> int:
    """Each class's CLIP-space target, from the data stages' config (see data_config)."""
    from feda2v.orchestration import stages

    return stages.class_targets(data_config, targets.path)["num_classes"]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def init_adapter(config_json: str, compiled: str, client_data_uris: list[str],
                 targets: Input[Dataset], adapter: Output[Model]) -> int:
    from feda2v.orchestration import runtime, stages

    return stages.init_adapter(runtime.resolve(config_json, compiled), client_data_uris,
                               targets.path, adapter.path)["parameters"]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def client_round(config_json: str, client_id: int, round_num: int, phase: str, run_key: str,
                 global_adapter: Input[Model], targets: Input[Dataset],
                 update: Output[Artifact]) -> float:
    a = dict(locals())
    from feda2v.orchestration.stages import client_round_task
    return client_round_task(**a)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def server_round(config_json: str, round_num: int, phase: str, run_key: str,
                 updates: Input[list[Artifact]], previous: Input[Model], targets: Input[Dataset],
                 mlflow_run_id: str, adapter: Output[Model], metrics: Output[Metrics],
                 ready: Optional[list] = None) -> float:  # noqa: UP045 - KFP reads it
    a = dict(locals())
    from feda2v.orchestration.stages import server_round_task
    return server_round_task(**a)
