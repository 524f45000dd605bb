"""Running it: the stage functions (stages), their KFP artifact adapters (tasks), the exit
handler (finish), run-time parameters (runtime), preflight checks, submission to a cluster,
and the experiment runner (ablations, seeds, partitions)."""
