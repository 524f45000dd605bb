"""KFP components, one module per stage. Each body only calls `feda2v.orchestration.stages`
(and `feda2v.orchestration.runtime.resolve`, which applies the run form's typed parameters to
the config).

Imports live inside the bodies because KFP ships each function's source on its own. The
container image (FEDA2V_IMAGE, read at import) has the `feda2v` package and kfp installed, so
no package is pip-installed at task start.
"""

from components.ablations import ablation_finish, ablation_parent, ablation_report, ablation_variant
from components.extract import data_config, extract
from components.federated_phase import federated_phase
from components.finish import finish_run
from components.generator import generate, train_generator
from components.rounds import class_targets, client_round, init_adapter, server_round

__all__ = [
           "ablation_finish",
           "ablation_parent",
           "ablation_report",
           "ablation_variant",
           "class_targets",
           "client_round",
           "data_config",
           "extract",
           "federated_phase",
           "finish_run",
           "generate",
           "init_adapter",
           "server_round",
           "train_generator",
]
