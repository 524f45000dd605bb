"""Where a run's state lives: config (the schema), storage (fsspec), tracking (MLflow),
runstate (a run's folder, the checkpoint lease), the logged model, logging."""
