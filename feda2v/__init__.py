"""FedA2V: federated audio-to-visual learning with client-side generators.

The library, by concern (each package's docstring says more):

- data/           datasets, their split over clients (partition), audio decoding
- encoders/       pretrained audio/CLIP encoders and the per-client embedding extraction
- federated/      the learning: client.py (a client's round), server.py (aggregation, the
                  server's training), loop.py (the round loop), task.py (adapter training and
                  evaluation), generator.py (a client's generator: rounds, checkpoints,
                  sampling), generators/ (the models behind one interface), dp.py (DP-SGD)
- evaluation/     quality and privacy metrics, results tables, the HTML report, ablations
- io/             config (the schema), storage, tracking (MLflow), a run's folder
- orchestration/  the stage functions KFP tasks call, kfp.local runs, preflight, submission
- cli.py          the `feda2v` command
"""
