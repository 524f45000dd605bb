"""KFP pipelines: Run 1 (generator training), Run 2 (pretrained generators), end to end.

Rounds and clients are fixed when a pipeline is built (KFP DAGs are static): `build(cfg)` unrolls
the rounds of the config it is given and fans clients out with dsl.ParallelFor.
"""

from pipelines.build import PIPELINES, build, phase_plan
from pipelines.cluster import ClusterOptions

__all__ = ["PIPELINES", "ClusterOptions", "build", "phase_plan"]
