"""`feda2v` command: every pipeline stage as a sub-command, plus run / compile / submit /
experiment / data / models / config / report, one module per group:

- pipeline.py    run (kfp.local), compile, submit
- experiment.py  experiment (ablations over variants, seeds, partitions, ε)
- tools.py       data, models, config, report
- stages.py      one pipeline stage by hand (class-targets, extract, phase, ...)
"""

from __future__ import annotations

import argparse
import os
import sys

from feda2v.cli import experiment, pipeline, stages, tools
from feda2v.cli.common import feda2v_version
from feda2v.io import config as config_mod


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feda2v", epilog="--debug (anywhere on the line) shows the traceback of an error.",
        description="FedA2V: federated audio-to-visual learning with client-side generators, "
                    "as Kubeflow Pipelines. `feda2v run` executes a whole pipeline locally; "
                    "the stage sub-commands run one step, as a pipeline task would.")
    parser.add_argument("--version", action="version", version=f"feda2v {feda2v_version()}")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_true",
                      help="debug lines too (tasks of `feda2v run` inherit it)")
    loud.add_argument("-q", "--quiet", action="store_true",
                      help="warnings and errors only (tasks of `feda2v run` inherit it)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, help_):
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    for group in (pipeline, experiment, tools, stages):
        group.register(add)
    return parser


PASSTHROUGH_ENV = "FEDA2V_PASSTHROUGH"


def _pass_through(argv: list[str], commands) -> None:
    """In the image (FEDA2V_PASSTHROUGH=1) the entrypoint is `feda2v`, yet KFP, kfp.local's
    DockerRunner and users also hand it whole commands (`sh -c …`, `python3 -m …`): a first word
    that is no sub-command but a program on PATH is run as it is."""
    import shutil

    if (os.environ.get(PASSTHROUGH_ENV) == "1" and argv and argv[0] not in commands
            and not argv[0].startswith("-") and shutil.which(argv[0])):
        sys.stdout.flush()
        os.execvp(argv[0], argv)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    commands = next(a for a in parser._actions if a.dest == "command").choices
    _pass_through(argv, commands)
    debug = "--debug" in argv
    args = parser.parse_args([a for a in argv if a != "--debug"])
    if args.verbose or args.quiet:
        from feda2v.io.log import LEVEL_ENV, get_logger

        os.environ[LEVEL_ENV] = "DEBUG" if args.verbose else "WARNING"
        get_logger().setLevel(os.environ[LEVEL_ENV])
    try:
        args.func(args)
    except (config_mod.ConfigError, FileNotFoundError, ValueError, OSError) as e:
        if debug:
            raise
        from feda2v.io.tracking import redact

        print(f"feda2v {args.command}: error: {redact(str(e))} (--debug shows the traceback)",
              file=sys.stderr)
        sys.exit(2)

