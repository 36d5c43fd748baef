"""The ``paxwal`` command line (DESIGN.md §9 is the contract).

Layout: one module per command group (tlc, sim, check, ...), whose ``add_commands`` builds its
argparse subparsers and binds each subcommand to a ``_cmd_<name>(args) -> int`` handler.
``main`` parses, dispatches and turns every expected failure into one line on stderr, so
handlers raise ``CliError`` instead of printing errors themselves. Nothing here calls
``sys.exit``: the console-script wrapper turns ``main``'s return value into the exit code.

Exit codes: 0 success, 1 the check found a problem (a violation, a surviving mutant),
2 the check could not be done (bad usage, missing Java or files, unparsable spec, TLC error).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conformance.mutants import MutantError
from conformance.tlc import TlcSetupError
from impl.cli import acceptor, bench, check, cluster, compute, coverage, mutants, pageserver, sim, tlc
from impl.cli.common import SPEC_DIR_ENV, CliError, Parser

__all__ = ["CliError", "build_parser", "main"]

# The command groups, in the order `paxwal --help` lists them.
GROUPS = (tlc, sim, check, mutants, coverage, bench, acceptor, cluster, pageserver, compute)


def build_parser() -> argparse.ArgumentParser:
    """The full ``paxwal`` parser; each command group adds itself here."""
    parser = Parser(prog="paxwal", description="paxwal: a formally specified replicated write-ahead log.")
    parser.add_argument(
        "--spec-dir",
        type=Path,
        metavar="DIR",
        help=f"the TLA+ spec directory (default: ${SPEC_DIR_ENV}, else spec/ in the repository)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``paxwal`` command.

    Args:
        argv: the arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        The exit code (see the module docstring).
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help exits from inside argparse
        return exc.code if isinstance(exc.code, int) else 0
    except CliError as exc:
        print(f"paxwal: error: {exc}", file=sys.stderr)
        return 2
    previous = _terminate_as_interrupt()
    try:
        return args.handler(args)
    except (CliError, TlcSetupError, MutantError) as exc:
        print(f"paxwal: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("paxwal: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate_as_interrupt() -> Any:
    """Make SIGTERM raise KeyboardInterrupt, so cleanup (killing TLC) runs when CI cancels.

    Returns:
        The previous handler, or None if handlers cannot be set (not the main thread).
    """

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, interrupt)
