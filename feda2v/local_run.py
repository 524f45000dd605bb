"""`feda2v run`: execute the compiled pipeline locally with kfp.local's SubprocessRunner.

kfp.local echoes every task's executor input and output; the full stream goes to a log file
and the terminal shows only the library's own lines (tagged via FEDA2V_LOG_TAG), then the
results table and where everything was written.
"""

from __future__ import annotations

import builtins
import logging
import os
import re
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone

from feda2v import config as config_mod
from feda2v import report, storage, tracking
from feda2v.log import TAG_ENV

TAG = "\u00a7feda2v\u00a7 "
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def resolve_local_paths(cfg: dict) -> dict:
    """Tasks may run in another folder: make relative local paths absolute. Values that are not
    existing local paths (hub ids, s3:// URLs) are left alone."""
    cfg = dict(cfg, data=dict(cfg["data"]), models=dict(cfg["models"]))
    cfg["storage_root"] = storage.absolute(cfg["storage_root"])
    if storage.is_local(cfg["data"]["dataset_uri"]):
        cfg["data"]["dataset_uri"] = storage.absolute(cfg["data"]["dataset_uri"])
    for key in ("audio_model", "text_model"):
        if os.path.exists(cfg["models"][key]):
            cfg["models"][key] = os.path.abspath(cfg["models"][key])
    return cfg


@contextmanager
def _filtered_output(log_path: str):
    """Send fds 1 and 2 (ours and every task subprocess's) to `log_path`; echo tagged lines."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1)

    def pump():
        with os.fdopen(read_fd, "r", errors="replace") as src, open(log_path, "w") as log_file:
            for line in src:
                log_file.write(line)
                plain = ANSI.sub("", line)
                if TAG in plain:
                    terminal.write(plain.split(TAG, 1)[1])
                elif "finished with status FAILURE" in plain:
                    terminal.write(plain.strip() + "\n")

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        thread.join(timeout=10)
        terminal.close()


def run_locally(cfg: dict, kind: str, pipeline_root: str | None = None) -> int:
    from kfp import local

    import pipelines

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    cfg = resolve_local_paths(cfg)
    if not storage.is_local(cfg["storage_root"]):
        print("feda2v run: kfp.local runs need a local storage_root; use `feda2v compile` for "
              "a cluster", file=sys.stderr)
        return 2
    root = cfg["storage_root"]
    pipeline_root = os.path.abspath(pipeline_root or os.path.join(root, "kfp-local"))
    plan = [] if kind == "ablations" else pipelines.phase_plan(cfg, kind)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_name = f"{kind}-{stamp}"
    run_id = tracking.create_run(cfg, run_name)
    log_path = os.path.join(root, "logs", f"{run_name}.log")
    print(f"FedA2V {kind}: " + (", ".join(f"{p} x {n} rounds" for p, n in plan) or "variants")
          + f", {config_mod.num_clients(cfg)} clients, under kfp.local")
    print(f"  full task log: {log_path}")

    pipeline = pipelines.build(cfg, kind, pipelines.ClusterOptions.local())
    os.environ[TAG_ENV] = TAG
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root,
               raise_on_error=True)
    start = time.monotonic()
    failure = None
    # kfp.local indents task output by patching builtins.print; with parallel tasks its
    # save/restore can interleave and leave a patched print behind, so keep the real one.
    real_print = builtins.print
    with _filtered_output(log_path), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pipeline(mlflow_run_id=run_id)
        except Exception as e:  # noqa: BLE001 - kfp.local raises on the first failed task
            failure = e
        finally:
            builtins.print = real_print
    os.environ.pop(TAG_ENV, None)
    minutes = (time.monotonic() - start) / 60
    if failure is not None:
        tracking.set_status(cfg, run_id, "FAILED")
        with open(log_path, errors="replace") as f:
            tail = [ANSI.sub("", line) for line in f.readlines()[-40:]]
        print("".join(tail), file=sys.stderr)
        print(f"feda2v run: pipeline failed after {minutes:.1f} min: {failure}\n"
              f"  full log: {log_path}", file=sys.stderr)
        return 1
    if kind == "ablations":  # the report task printed the table; its runs nest under run_id
        tracking.set_status(cfg, run_id, "FINISHED")
        print(f"\nFedA2V ablations finished in {minutes:.1f} min (MLflow parent run {run_id}; "
              f"HTML report under {pipeline_root})")
        return 0
    _, history = tracking.run_info(cfg, run_id)
    rows = report.results_rows(plan, history, config_mod.num_clients(cfg))
    from feda2v.stages import checkpoint_dir

    print(f"\nFedA2V {kind} finished in {minutes:.1f} min\n")
    print(report.results_table(rows))
    print(f"\n  storage root:       {root}")
    if any(p == "run1" for p, _ in plan):
        print(f"  generator ckpts:    {checkpoint_dir(cfg)}")
    print(f"  task artifacts:     {pipeline_root}")
    print(f"  MLflow:             {tracking.redact(tracking.tracking_uri(cfg))} "
          f"(experiment '{cfg['experiment_name']}', run {run_id})")
    print(f"  task log:           {log_path}")
    return 0
