"""`paxwal mutants`: the implementation mutants, each to be caught by the conformance checker."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from conformance import impl_mutants
from conformance.impl_catalogue import CatalogueError, select
from impl.cli.common import CliError, duration, positive_int, seed_range
from impl.cli.sim import DEFAULT_SIM_OUT


def _cmd_mutants(args: argparse.Namespace) -> int:
    try:
        mutants = select(args.only)
    except CatalogueError as exc:
        raise CliError(str(exc)) from None
    seeds = impl_mutants.SMOKE_SEEDS if args.smoke else args.seeds or impl_mutants.DEFAULT_SEEDS
    plan = impl_mutants.Plan.of(seeds, out=args.out if args.out is not None else DEFAULT_SIM_OUT / "mutants")
    jobs = args.jobs or os.cpu_count() or 1
    print(f"{len(mutants)} mutants and the control, {plan.size} runs each at most, {jobs} jobs", file=sys.stderr)

    def done(result: impl_mutants.Campaign, count: int, total: int) -> None:
        verdict = (
            f"ERROR {result.error}" if result.error is not None
            else f"conformance kill at {result.conformance.run}" if result.conformance is not None
            else f"{', '.join(result.first.found)} at {result.first.run}" if result.first is not None
            else "nothing fired"
        )
        print(f"[{count}/{total}] {result.name}: {verdict} ({result.runs} runs, {duration(result.seconds)})", file=sys.stderr, flush=True)

    try:
        control, results = impl_mutants.run_mutants(mutants, plan, jobs=jobs, timeout=args.timeout, on_done=done)
    except CatalogueError as exc:
        raise CliError(str(exc)) from None
    print(impl_mutants.report(control, results, mutants, plan))
    return 0 if impl_mutants.passed(control, results) else 1


def add_commands(commands: argparse._SubParsersAction) -> None:
    mutants = commands.add_parser(
        "mutants",
        help="check that deliberate bugs in the cores are caught, by the conformance checker first",
        description=(
            "Run each implementation mutant (conformance/impl_catalogue.py: a source patch of a "
            "core, applied in a worker process only) and the unmodified control over the scenarios "
            "and simulator seeds, and report which oracle killed each first: the conformance "
            "checker (replay of the run's trace), the simulator's checks or a scenario's "
            "expectation. Exit 0 iff the control is clean and the conformance checker kills at "
            f"least {impl_mutants.REQUIRED_RATE:.0%} of the mutants."
        ),
    )
    mutants.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    which = mutants.add_mutually_exclusive_group()
    which.add_argument(
        "--seeds", type=seed_range, metavar="A:B",
        help=f"simulator seeds A..B-1, run before the scenarios (default {impl_mutants.DEFAULT_SEEDS.start}:{impl_mutants.DEFAULT_SEEDS.stop})",
    )
    which.add_argument(
        "--smoke", action="store_true",
        help=f"the scenarios and seeds {', '.join(map(str, impl_mutants.SMOKE_SEEDS))} only (CI: under 2 minutes on 2 cores)",
    )
    mutants.add_argument("--jobs", type=positive_int, metavar="J", help="campaigns at once (default: one per CPU)")
    mutants.add_argument(
        "--out", type=Path, metavar="DIR",
        help=f"where each conformance-rejected run directory is kept (default {DEFAULT_SIM_OUT}/mutants)",
    )
    mutants.add_argument(
        "--timeout", type=float, default=impl_mutants.DEFAULT_TIMEOUT, metavar="S",
        help=f"seconds one campaign may take (default {impl_mutants.DEFAULT_TIMEOUT:g})",
    )
    mutants.set_defaults(handler=_cmd_mutants)
