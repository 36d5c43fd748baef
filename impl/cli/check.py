"""`paxwal check`: conformance of traces to the spec, by the replay or by TLC."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from conformance import tlctrace
from conformance.corpus import find_runs
from conformance.diagram import svg
from conformance.replay import TraceError, check_run
from impl.cli.common import find_spec_dir


def _check_runs(paths: Sequence[Path]) -> list[list[Path]]:
    """What `paxwal check` judges, run by run: the files given (together, one run), and each
    run directory at or below each directory given (a corpus such as traces/accepted).

    Raises:
        TraceError: a path is missing, or a directory holds no run.
    """
    files = [p for p in paths if not p.is_dir()]
    runs = [files] if files else []
    return runs + [[run] for run in find_runs([p for p in paths if p.is_dir()])]


def _check_one(run: list[Path], args: argparse.Namespace, name: str | None) -> int:
    """Check one run and print the verdict (prefixed by `name` in a corpus); its exit status."""
    prefix = f"{name}: " if name else ""
    try:
        if args.tlc:
            verdict = tlctrace.check_run(run, find_spec_dir(args))
        else:
            result = check_run(run)
    except TraceError as exc:
        print(f"paxwal: unreadable trace: {exc}", file=sys.stderr)
        return 2
    except tlctrace.TlcCheckError as exc:
        print(f"paxwal: error: {exc}", file=sys.stderr)
        return 2
    if args.tlc:
        print(prefix + verdict.report())
        if verdict.event is not None:
            print("(paxwal check without --tlc replays the run and reports the divergence in detail)")
            return 1
        return 0
    if result.divergence is not None:
        d = result.divergence
        print(prefix + d.report())
        if args.diagram is not None:
            args.diagram.write_text(svg(d.window, d.event))
            print(f"sequence diagram: {args.diagram}")
        return 1
    actions = ", ".join(f"{name} {count:,}" for name, count in sorted(result.actions.items()))
    print(f"{prefix}accepted: {result.events:,} events ({result.lost:,} lost messages); {actions}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        runs = _check_runs(args.paths)
    except TraceError as exc:
        print(f"paxwal: {exc}", file=sys.stderr)
        return 2
    if args.diagram is not None and len(runs) > 1:
        print("paxwal: --diagram needs a single run", file=sys.stderr)
        return 2
    statuses = [_check_one(run, args, str(run[0]) if len(runs) > 1 else None) for run in runs]
    if len(runs) > 1:
        rejected, unreadable = statuses.count(1), statuses.count(2)
        print(f"{len(runs)} runs: {len(runs) - rejected - unreadable} accepted, {rejected} rejected, {unreadable} unreadable")
    return max(statuses)


def add_commands(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser(
        "check",
        help="check that a run's trace is a behaviour of the spec",
        description=(
            "Replay a run's traces (a run directory, or ndjson files) on the spec's state machine "
            "(conformance/machine.py): every event must be an enabled action with the logged "
            "arguments, leading to the logged state, with the spec's invariants holding. A "
            "directory holding run directories (a corpus, e.g. traces/accepted) checks each run. "
            "Exit 0 all accepted, 1 one rejected (with a report of the first event the spec does "
            "not allow), 2 unreadable input."
        ),
    )
    check.add_argument("paths", nargs="+", type=Path, metavar="RUN_DIR|CORPUS|FILE")
    check.add_argument(
        "--diagram", type=Path, metavar="FILE",
        help="if rejected, also write the sequence diagram of the events before it as an SVG file",
    )
    check.add_argument(
        "--tlc", action="store_true",
        help=(
            "ask TLC instead of the replay: run spec/TraceProposerAcceptor.tla on the run "
            "(conformance/tlctrace.py); prints the verdict, the longest explained prefix and the "
            "first unexplained event as file:line; exit 2 also if TLC gives no verdict"
        ),
    )
    check.set_defaults(handler=_cmd_check)
