"""KFP components, one module per stage. Each body only calls `feda2v.stages`.

Imports live inside the bodies because KFP ships each function's source on its own. The
container image (FEDA2V_IMAGE, read at import) has the `feda2v` package and kfp installed, so
no package is pip-installed at task start.
"""

from components.ablations import ablation_report, ablation_variant
from components.class_targets import class_targets
from components.client_round import client_round
from components.extract import extract
from components.init_adapter import init_adapter
from components.server_round import server_round
from components.tracking import finish_tracking, start_tracking

__all__ = [
           "ablation_report",
           "ablation_variant",
           "class_targets",
           "client_round",
           "extract",
           "finish_tracking",
           "init_adapter",
           "server_round",
           "start_tracking",
]
