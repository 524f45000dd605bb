from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.image import IMAGE


# One client's round (adapter; Run 1 trains the generator, Run 2 samples it); returns the
# client's adapter loss. No docstring: KFP would copy it into the YAML once per unrolled round.
@dsl.component(base_image=IMAGE, install_kfp_package=False)
def client_round(config_json: str, client_id: int, round_num: int, phase: str,
                 global_adapter: Input[Model], targets: Input[Dataset], update: Output[Artifact]) -> float:
    from feda2v import stages

    result = stages.client_round(config_json, client_id, round_num, phase, global_adapter.path,
                                 targets.path, update.path)
    update.metadata.update(result)
    return result["adapter_loss"]
