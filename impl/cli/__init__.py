"""The ``paxwal`` command line (DESIGN.md §9 is the contract).

Layout: one module per command group (tlc, sim, check, ...), whose ``add_commands`` builds its
argparse subparsers and binds each subcommand to a ``_cmd_<name>(args) -> int`` handler.
``main`` parses, dispatches and turns every expected failure into one line on stderr, so
handlers raise ``CliError`` instead of printing errors themselves. Nothing here calls
``sys.exit``: the console-script wrapper turns ``main``'s return value into the exit code.

Only the group of the command given is imported (`COMMANDS`): a compute's process, started
by `paxwal compute run`, should not pay for TLC, the simulator and the benchmarks (the
failover time is mostly process start-up).  `paxwal --help` imports every group.

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

import importlib

from impl.cli.common import SPEC_DIR_ENV, CliError, Parser

__all__ = ["CliError", "COMMANDS", "build_parser", "main"]

# Each top-level command -> its group's module (impl/cli/<group>.py), in `--help` order.
COMMANDS: dict[str, str] = {
    "tlc": "tlc", "sim": "sim", "check": "check", "mutants": "mutants", "coverage": "coverage", "bench": "bench",
    "acceptor": "acceptor", "cluster": "cluster", "load": "cluster", "sqlload": "cluster", "chaos": "cluster",
    "pageserver": "pageserver", "branch": "pageserver", "demo": "compute", "compute": "compute",
}

# Failures of the checkers that are the user's to fix (exit 2, one line), by module and class:
# only a module already imported can have raised one.
USER_ERRORS = (("conformance.tlc", "TlcSetupError"), ("conformance.mutants", "MutantError"))


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``paxwal`` parser: every group (for --help), or only the one of `command`."""
    parser = Parser(prog="paxwal", description="paxwal: a formally specified replicated write-ahead log.")
    parser.add_argument(
        "--spec-dir",
        type=Path,
        metavar="DIR",
        help=f"the TLA+ spec directory (default: ${SPEC_DIR_ENV}, else spec/ in the repository)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups = dict.fromkeys(COMMANDS.values()) if command not in COMMANDS else [COMMANDS[command]]
    for group in groups:
        importlib.import_module(f"impl.cli.{group}").add_commands(commands)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The command named in `argv` (after the global --spec-dir DIR), if any."""
    args = list(argv)
    while args and args[0].startswith("--spec-dir"):
        args = args[1:] if "=" in args[0] else args[2:]
    return args[0] if args else None


def _user_error(exc: BaseException) -> bool:
    return isinstance(exc, CliError) or any(
        module in sys.modules and isinstance(exc, getattr(sys.modules[module], name)) for module, name in USER_ERRORS
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``paxwal`` command.

    Args:
        argv: the arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        The exit code (see the module docstring).
    """
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser(_command(argv)).parse_args(argv)
    except SystemExit as exc:  # --help exits from inside argparse
        return exc.code if isinstance(exc.code, int) else 0
    except CliError as exc:
        print(f"paxwal: error: {exc}", file=sys.stderr)
        return 2
    previous = _terminate_as_interrupt()
    try:
        return args.handler(args)
    except Exception as exc:
        if not _user_error(exc):
            raise
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
