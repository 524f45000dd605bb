"""Progress on long work: a bar with rate and time left on a terminal, plain periodic lines
elsewhere (pods, CI, log files, the tasks of `feda2v run`), nothing with -q."""

from __future__ import annotations

import io
import logging

import pytest

from feda2v.io import log as log_mod


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def lines(monkeypatch):
    """The feda2v logger's lines, as a pod's log would hold them (stderr is no terminal)."""
    logger = log_mod.get_logger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    monkeypatch.setattr(logger, "handlers", [handler])
    level = logger.level
    logger.setLevel(logging.INFO)  # setLevel: isEnabledFor caches
    monkeypatch.setattr("sys.stderr", io.StringIO())
    yield stream
    logger.setLevel(level)


def test_elsewhere_periodic_lines_with_the_time_left_and_a_last_line(lines):
    tick = log_mod.progress(4, "rounds", every_s=0)
    for _ in range(4):
        tick(note="global accuracy 0.500")
    out = lines.getvalue().splitlines()
    assert out[0].startswith("  rounds: 1/4 (25%) ") and ", ETA 0:0" in out[0]
    assert out[0].endswith("global accuracy 0.500")
    assert out[-1].startswith("  rounds: 4/4 (100%) ") and "ETA" not in out[-1]
    assert len(out) == 4


def test_no_last_line_when_asked_and_nothing_between_the_periods(lines):
    tick = log_mod.progress(3, "epochs", every_s=3600, last_line=False)
    for _ in range(3):
        tick()
    assert lines.getvalue() == ""


def test_on_a_terminal_one_bar_redrawn_in_place(monkeypatch, lines):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.delenv(log_mod.TAG_ENV, raising=False)
    monkeypatch.setenv("TERM", "xterm")
    tick = log_mod.progress(2, "clips")
    tick()
    tick()
    out = terminal.getvalue()
    assert out.startswith("\r  clips [############............] 1/2 ")
    assert "ETA" in out and out.endswith("\x1b[K\n")
    assert out.count("\n") == 1 and lines.getvalue() == ""  # no line besides the bar


def test_the_tasks_of_feda2v_run_get_lines_not_a_bar(monkeypatch, lines):
    monkeypatch.setattr("sys.stderr", _Terminal())
    monkeypatch.setenv(log_mod.TAG_ENV, log_mod.TAG)
    log_mod.progress(1, "clips")()
    assert "clips: 1/1 (100%)" in lines.getvalue()


def test_quiet_shows_no_progress(monkeypatch, lines):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.delenv(log_mod.TAG_ENV, raising=False)
    log_mod.get_logger().setLevel(logging.WARNING)  # `feda2v -q`; the fixture puts it back
    tick = log_mod.progress(2, "clips", every_s=0)
    tick()
    tick()
    assert terminal.getvalue() == "" and lines.getvalue() == ""


def test_a_log_line_goes_above_the_bar(monkeypatch):
    """On a terminal the seed's log lines (Epoch k/N …) still print: each clears the bar's
    line, and the bar is drawn again under it."""
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.delenv(log_mod.TAG_ENV, raising=False)
    logger = log_mod.get_logger()
    monkeypatch.setattr(logger.handlers[0], "stream", terminal)
    tick = log_mod.progress(2, "epochs")
    tick()
    logger.warning("  [Client 0] Epoch 1/2: Loss=0.5")
    tick()
    out = terminal.getvalue()
    first_bar = out.index("\r  epochs [")
    assert out.index("\r\x1b[K  [Client 0] Epoch 1/2: Loss=0.5\n  epochs [") > first_bar
    assert out.endswith("2/2 " + out.rsplit("2/2 ", 1)[1]) and out.endswith("\n")


def test_feda2v_run_draws_its_tasks_progress_lines_as_a_bar():
    """On a terminal `feda2v run` turns the progress lines its tasks log into one bar redrawn
    in place; other lines go above it; a bar whose loop went quiet is dropped."""
    terminal, now = _Terminal(), [0.0]
    echo = log_mod.TerminalEcho(terminal, clock=lambda: now[0])
    echo.write("  run1 rounds: 1/4 (25%) 0.5/s, ETA 0:06 global accuracy 0.250\n")
    echo.write("=== Round 2/4 (run1) ===\n")
    echo.write("  run1 rounds: 4/4 (100%) 0.5/s global accuracy 0.750\n")
    out = terminal.getvalue()
    assert out.startswith("  run1 rounds [######..................] 1/4 0.5/s ETA 0:06 "
                          "global accuracy 0.250\x1b[K")
    assert "\r\x1b[K=== Round 2/4 (run1) ===\n  run1 rounds [######" in out
    assert out.endswith("[########################] 4/4 0.5/s ETA 0:00 global accuracy "
                        "0.750\x1b[K\n")
    terminal.truncate(0), terminal.seek(0)
    echo.write("  [Client 0] generator epochs: 8/10 (80%) 2.0/s, ETA 0:01 loss 0.1\n")
    now[0] = 60.0  # the loop ended without a last line
    echo.write("[Client 0] Generator training completed.\n")
    echo.write("next\n")
    assert terminal.getvalue().endswith("\r\x1b[K[Client 0] Generator training completed.\n"
                                        "next\n")
