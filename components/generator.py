from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_generator(config_json: str, compiled: str, global_rounds: int,
                    generator_training_rounds: int, client_ids: list, settings: dict, client_id: int,
                    run_key: str) -> str:
    """One client's generator over every Run 1 round; checkpoints under the seed's names.
    Returns its result as JSON."""
    import json

    from feda2v.orchestration import runtime, stages

    cfg = runtime.resolve(config_json, compiled, global_rounds, generator_training_rounds,
                          client_ids, settings)
    return json.dumps(stages.train_generator(cfg, client_id, run_key))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def generate(config_json: str, compiled: str, global_rounds: int,
             generator_training_rounds: int, client_ids: list, settings: dict, client_id: int,
             run_key: str) -> str:
    """One client's synthetic samples for every Run 2 round, from one read of its generator.
    Returns the checkpoint it used (round, sha256) as JSON."""
    import json

    from feda2v.orchestration import runtime, stages

    cfg = runtime.resolve(config_json, compiled, global_rounds, generator_training_rounds,
                          client_ids, settings)
    return json.dumps(stages.generate(cfg, client_id, run_key))
