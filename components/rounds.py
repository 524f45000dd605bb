"""Round execution (silo mode): the tasks of one client round and one server round. No
docstrings or comments in the per-round bodies: KFP copies them into the YAML once per unrolled
round. The round tasks resolve their config as every task does (runtime.resolve), with the
compiled values, the run form's settings and the run key that init_adapter put into the global
adapter's metadata and every server round passes on (tasks.round_context): as task inputs
they would grow the YAML by a kilobyte a round."""

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
def init_adapter(config_json: str, compiled: str, settings: dict, run_key: str,
                 client_data_uris: list[str], targets: Input[Dataset],
                 adapter: Output[Model]) -> int:
    """The initial global adapter; its metadata holds what the round tasks resolve with."""
    from feda2v.orchestration import tasks

    return tasks.init_adapter_task(config_json, compiled, settings, run_key, client_data_uris,
                                    targets, adapter)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def client_round(config_json: str, client_id: int, round_num: int, phase: str,
                 global_adapter: Input[Model], targets: Input[Dataset],
                 update: Output[Artifact]) -> float:
    a = dict(locals())
    from feda2v.orchestration.tasks import client_round_task
    return client_round_task(**a)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def server_round(config_json: str, round_num: int, phase: str,
                 updates: Input[list[Artifact]], previous: Input[Model], targets: Input[Dataset],
                 mlflow_run_id: str, adapter: Output[Model], metrics: Output[Metrics],
                 ready: Optional[list] = None) -> float:  # noqa: UP045 - KFP reads it
    a = dict(locals())
    from feda2v.orchestration.tasks import server_round_task
    return server_round_task(**a)
