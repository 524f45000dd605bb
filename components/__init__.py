"""KFP components, one module per stage. Each body only calls `feda2v.stages`.

Imports live inside the bodies because KFP ships each function's source on its own. The
container image (FEDA2V_IMAGE, read at import) has the `feda2v` package and kfp installed, so
no package is pip-installed at task start.
"""

from components.ablations import ablation_report, ablation_variant
from components.aggregate import aggregate
from components.class_targets import class_targets
from components.client_round import client_round
from components.evaluate import evaluate
from components.extract import extract
from components.global_train import global_train
from components.init_adapter import init_adapter
from components.tracking import finish_tracking, start_tracking

__all__ = [
           "ablation_report",
           "ablation_variant",
           "aggregate",
           "class_targets",
           "client_round",
           "evaluate",
           "extract",
           "finish_tracking",
           "global_train",
           "init_adapter",
           "start_tracking",
]
