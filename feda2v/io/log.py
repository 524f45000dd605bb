"""One logger for the library, with the seed's plain log lines.

`feda2v run` sets FEDA2V_LOG_TAG so that it can pick our lines out of kfp.local's verbose
task output; everywhere else (a cluster pod, docker, tests) the lines are printed as they are.
"""

from __future__ import annotations

import logging
import os
import sys
import time

TAG = "\u00a7feda2v\u00a7 "  # what `feda2v run` tags its tasks' lines with (set in TAG_ENV)
TAG_ENV = "FEDA2V_LOG_TAG"
LEVEL_ENV = "FEDA2V_LOG_LEVEL"  # set by `feda2v -v/-q`; task processes inherit it


class _TaggedFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        tag = os.environ.get(TAG_ENV, "")
        text = super().format(record)
        return "\n".join(tag + line for line in text.splitlines()) if tag else text


def get_logger() -> logging.Logger:
    logger = logging.getLogger("feda2v")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_TaggedFormatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(os.environ.get(LEVEL_ENV, "INFO"))
        logger.propagate = False
    return logger


def progress(total: int, what: str, every_s: float = 5.0):
    """Return a tick() that logs `what: done/total (pct) rate/s` at most every `every_s` seconds
    and always at the end, so long loops show they are alive without flooding the log."""
    log = get_logger()
    start = last = time.monotonic()
    done = 0

    def tick(n: int = 1) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= every_s or done >= total:
            last = now
            rate = done / max(now - start, 1e-9)
            log.info("  %s: %d/%d (%d%%) %.1f/s", what, done, total, 100 * done // max(total, 1), rate)

    return tick
