"""FedA2V: federated audio-to-visual learning with client-side generators.

The library, by layer (each package's docstring says more); imports only point down:

- cli/             the `feda2v` command: the only library code that imports pipelines/ and
                   components/
- localrun/        the kfp.local runner behind `feda2v run` (handed the pipeline by the CLI)
- orchestration/   stages (one function per pipeline stage), tasks (their KFP artifacts),
                   finish (the exit handler), runtime, preflight, submit, experiment (ablations)
- federated/       the learning: client, server, loop, task, adapter, dp, generators/ (the
                   models behind one interface, their checkpoints, training, calibration,
                   sampling), the adapter as an MLflow model
- encoders/, data/ pretrained audio/CLIP encoders and extraction; datasets and their split
- evaluation/      quality and privacy metrics, results tables, the HTML report
- io/              config (the schema), storage, tracking (MLflow), a run's folder, owners
- patches.py       every patch of kfp/MLflow internals (imports nothing of feda2v)
"""
