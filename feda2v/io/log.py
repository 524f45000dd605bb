"""One logger for the library, with the seed's plain log lines.

`feda2v run` sets FEDA2V_LOG_TAG so that it can pick our lines out of kfp.local's verbose
task output; everywhere else (a cluster pod, docker, tests) the lines are printed as they are.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time

TAG = "\u00a7feda2v\u00a7 "  # what `feda2v run` tags its tasks' lines with (set in TAG_ENV)
TAG_ENV = "FEDA2V_LOG_TAG"
LEVEL_ENV = "FEDA2V_LOG_LEVEL"  # set by `feda2v -v/-q`; task processes inherit it
PROGRESS_ENV = "FEDA2V_PROGRESS_SECONDS"


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


def bar_line(what: str, done: int, total: int, rate: str, eta: str, extra: str = "") -> str:
    """The progress bar's text (no carriage return; clears the rest of the line)."""
    width = 24
    filled = width * min(done, total) // max(total, 1)
    return (f"  {what} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate}/s "
            f"ETA {eta}{extra}\x1b[K")


# A progress line as progress() logs it where there is no terminal (a task of `feda2v run`).
PROGRESS_LINE = re.compile(r"  (?P<what>.+?): (?P<done>\d+)/(?P<total>\d+) \(\d+%\) "
                           r"(?P<rate>[\d.]+)/s(?:, ETA (?P<eta>[\d:]+))?(?P<extra>.*)")


class TerminalEcho:
    """What `feda2v run` echoes of its tasks' lines to a terminal: their progress lines as one
    bar redrawn in place, every other line above it."""

    STALE_S = 15.0  # a bar not updated for this long (its loop ended quietly) is dropped

    def __init__(self, stream, clock=time.monotonic):
        self.stream, self.bar, self.clock, self.since = stream, "", clock, 0.0

    def write(self, line: str) -> None:
        m = PROGRESS_LINE.fullmatch(line.rstrip("\n"))
        if self.bar:
            self.stream.write("\r\x1b[K")
        if m:
            done, total = int(m["done"]), int(m["total"])
            self.bar = bar_line(m["what"], done, total, m["rate"], m["eta"] or "0:00",
                                m["extra"])
            self.since = self.clock()
            self.stream.write(self.bar + ("\n" if done >= total else ""))
            if done >= total:
                self.bar = ""
        else:
            self.stream.write(line)
            if self.bar and self.clock() - self.since > self.STALE_S:
                self.bar = ""
            if self.bar:
                self.stream.write(self.bar)
        self.stream.flush()


def progress_every() -> float:
    """Seconds between progress lines: `feda2v run` asks its tasks for more when a person
    watches its terminal ($FEDA2V_PROGRESS_SECONDS)."""
    try:
        return float(os.environ.get(PROGRESS_ENV, "5"))
    except ValueError:
        return 5.0


def progress(total: int, what: str, every_s: float | None = None, last_line: bool = True):
    """Return a tick(n=1, note="") for a loop of `total` steps. On a terminal: a bar with the
    rate and the time left, redrawn in place. Elsewhere: a line `what: done/total (pct)
    rate/s, ETA m:ss` at most every `every_s` seconds, and at the end (unless not
    `last_line`). Nothing below INFO (`feda2v -q`)."""
    log = get_logger()
    every_s = progress_every() if every_s is None else every_s
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
                _bar = bar_line(what, done, total, f"{rate:.1f}", eta, extra)
                sys.stderr.write("\r" + _bar + ("\n" if end else ""))
                sys.stderr.flush()
                if end:
                    _bar = ""
        elif (now - last >= every_s and not end) or (end and last_line):
            last = now
            log.info("  %s: %d/%d (%d%%) %.1f/s%s%s", what, done, total,
                     100 * done // max(total, 1), rate, "" if end else f", ETA {eta}", extra)

    return tick
