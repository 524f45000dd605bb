"""The kfp.local runner behind `feda2v run`: the compiled pipeline, run on this machine.

- run.py       run_locally: compile, run under kfp.local, stop cleanly, print the results
- prefork.py   pre-imported task processes (tasks start in milliseconds)
- watchdog.py  ends the MLflow run and frees the lease should `feda2v run` be SIGKILLed
- docker.py    `--runner docker`: every task in our image

The front (`feda2v run`) hands it the pipeline to run: nothing here imports pipelines/ or
components/.
"""
