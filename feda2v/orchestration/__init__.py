"""Running it: the stage functions KFP tasks call, run-time parameters, kfp.local runs
(prefork, watchdog), preflight checks, submission to a cluster."""
