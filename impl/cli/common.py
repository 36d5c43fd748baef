"""What every command group shares: the error type, the parser, argument types, progress."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TextIO

from conformance.tlc import Progress

# Environment variable that overrides where spec/ lives (tests, out-of-tree checkouts).
SPEC_DIR_ENV = "PAXWAL_SPEC_DIR"
# Off a terminal (CI logs) a progress line every this many seconds is enough.
PROGRESS_LINE_SECONDS = 10.0


class CliError(Exception):
    """A failure to report as one line on stderr with exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors become one-line ``CliError``s instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliError(f"{message} (see '{self.prog} --help')")


# ---------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------


def find_spec_dir(args: argparse.Namespace) -> Path:
    """The spec directory: --spec-dir, else $PAXWAL_SPEC_DIR, else spec/ beside impl/."""
    if args.spec_dir is not None:
        path = Path(args.spec_dir)
    elif os.environ.get(SPEC_DIR_ENV):
        path = Path(os.environ[SPEC_DIR_ENV])
    else:
        # The package is installed editable from the repository, so this is the checkout.
        path = Path(__file__).resolve().parents[2] / "spec"
    if not path.is_dir():
        raise CliError(f"spec directory {path} does not exist (use --spec-dir or ${SPEC_DIR_ENV})")
    return path


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def thousands(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


class ProgressDisplay:
    """TLC's counters on stderr: one line redrawn in place on a terminal, else periodic lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.width = 0
        self.last_line_at: float | None = None

    def __call__(self, progress: Progress) -> None:
        text = (
            f"generated {thousands(progress.generated)}  distinct {thousands(progress.distinct)}  "
            f"queue {thousands(progress.queue)}  elapsed {duration(progress.seconds)}"
        )
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
            self.stream.flush()
        elif self.last_line_at is None or progress.seconds - self.last_line_at >= PROGRESS_LINE_SECONDS:
            print(text, file=self.stream, flush=True)
            self.last_line_at = progress.seconds

    def close(self) -> None:
        """Erase the in-place line so the summary starts on a clean line."""
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def seed_range(text: str) -> range:
    first, sep, last = text.partition(":")
    if not sep or not first.isdigit() or not last.isdigit() or int(last) <= int(first):
        raise argparse.ArgumentTypeError(f"expected A:B with integers A < B (seeds A..B-1), got {text!r}")
    return range(int(first), int(last))


def cluster_dir_argument(parser: argparse.ArgumentParser) -> None:
    """`--dir DIR`: the running cluster a command talks to (DESIGN §9)."""
    from impl.cluster import DEFAULT_DIR

    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, metavar="DIR",
                        help=f"the cluster's directory (default {DEFAULT_DIR}/)")
