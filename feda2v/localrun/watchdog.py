"""`python -m feda2v.localrun.watchdog`: started by `feda2v run`, reads {config, run_id} from stdin and
waits. "done" means the run ended itself; end of input without it means `feda2v run` was
killed (SIGKILL leaves no chance to clean up): then the MLflow run is marked KILLED and the
lease the run held on the checkpoint folder is released."""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    job = json.loads(sys.stdin.readline())
    rest = sys.stdin.read()  # blocks until feda2v run closes the pipe or dies
    if rest.strip() == "done":
        return
    time.sleep(2)  # task processes notice their lost parent within a second and exit
    from feda2v.io import config, runstate, tracking
    cfg = config.validate(job["config"])
    try:
        runstate.release(runstate.checkpoint_dir(cfg), owner_token=job.get("owner", ""))
    finally:
        tracking.end_run(cfg, job["run_id"], "KILLED")


if __name__ == "__main__":
    main()
