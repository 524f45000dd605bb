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


_bar = ""  # the progress bar on the terminal now, if any: log lines go above it


class _BarAwareHandler(logging.StreamHandler):
    """Clears the progress bar's line before a log line and draws the bar again under it."""

    def emit(self, record: logging.LogRecord) -> None:
        if _bar:
            self.stream.write("\r\x1b[K")
        super().emit(record)
        if _bar:
            self.stream.write(_bar)
            self.flush()


def get_logger() -> logging.Logger:
    logger = logging.getLogger("feda2v")
    if not logger.handlers:
        handler = _BarAwareHandler(sys.stderr)
        handler.setFormatter(_TaggedFormatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(os.environ.get(LEVEL_ENV, "INFO"))
        logger.propagate = False
    return logger


def _eta(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def _terminal() -> bool:
    """A person watches stderr: a progress bar redrawn in place. Not for a pipe, a log file,
    a pod, CI, or the tasks of `feda2v run` (their lines go through a log file)."""
    return sys.stderr.isatty() and not os.environ.get(TAG_ENV) and os.environ.get("TERM") != "dumb"


def progress(total: int, what: str, every_s: float = 5.0, last_line: bool = True):
    """Return a tick(n=1, note="") for a loop of `total` steps. On a terminal: a bar with the
    rate and the time left, redrawn in place. Elsewhere: a line `what: done/total (pct)
    rate/s, ETA m:ss` at most every `every_s` seconds, and at the end (unless not
    `last_line`). Nothing below INFO (`feda2v -q`)."""
    log = get_logger()
    start = last = time.monotonic()
    done = 0
    bar = _terminal()
    if bar:
        last = float("-inf")  # the bar shows at the first tick

    def tick(n: int = 1, note: str = "") -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        end = done >= total
        if not log.isEnabledFor(logging.INFO):
            return
        rate = done / max(now - start, 1e-9)
        eta = _eta((total - done) / rate) if rate > 0 and not end else "0:00"
        extra = f" {note}" if note else ""
        if bar:
            global _bar
            if now - last >= 0.1 or end:
                last = now
                width = 24
                filled = width * done // max(total, 1)
                _bar = (f"  {what} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                        f"{rate:.1f}/s ETA {eta}{extra}\x1b[K")
                sys.stderr.write("\r" + _bar + ("\n" if end else ""))
                sys.stderr.flush()
                if end:
                    _bar = ""
        elif (now - last >= every_s and not end) or (end and last_line):
            last = now
            log.info("  %s: %d/%d (%d%%) %.1f/s%s%s", what, done, total,
                     100 * done // max(total, 1), rate, "" if end else f", ETA {eta}", extra)

    return tick
