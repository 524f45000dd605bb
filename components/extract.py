from kfp import dsl
from kfp.dsl import Dataset, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def data_config(config_json: str, compiled: str, client_ids: list, settings: dict) -> str:
    """The keys the data stages read (the rest at defaults), with the run form's settings
    applied: their cache key, so a change of a learning rate or a round count re-runs no
    extraction, and a change of the seed, storage root or dataset does."""
    from feda2v.orchestration import runtime

    return runtime.data_stage_config(config_json, compiled, client_ids, settings)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def extract(data_config: str, client_id: int, embeddings: Output[Dataset]) -> str:
    """Embed one client's clips: the `embeddings` artifact, and the storage root's cached copy,
    whose URI it returns."""
    from feda2v.orchestration import tasks

    return tasks.extract_task(data_config, client_id, embeddings)
