"""`paxwal coverage`: which spec actions and CI-model states the traces exercise."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import attrs

from conformance.corpus import action_coverage, find_runs
from conformance.coverage import MODEL_FILE, StateCoverage, load_model_states, record_model_states, spec_stamp
from conformance.replay import TraceError, events_in_memory, load_events, replay
from impl.cli.common import ProgressDisplay, seed_range
from impl.sim import Sim, SimOptions


DEFAULT_CORPUS = Path("traces/accepted")
# Simulator runs shaped like the CI model: its nodes, one-byte records (one entry each), short
# runs with frequent crashes and rare appends, since the model bounds terms and WAL length
# (spec/models/ci.cfg); this shape visited the most model states among those tried.
COVERAGE_SHAPE = {"proposers": 1, "acceptors": 3, "record_size": (1, 1), "crash_every": 50, "append_every": 100}
COVERAGE_STEPS = 200


def _coverage_sim(seed: int) -> Sim:
    sim = Sim(attrs.evolve(SimOptions.from_seed(seed, COVERAGE_STEPS), **COVERAGE_SHAPE))
    sim.run()
    return sim


def _cmd_coverage(args: argparse.Namespace) -> int:
    if args.model_states:
        display = ProgressDisplay(sys.stderr)
        try:
            states = record_model_states(progress=display)
        finally:
            display.close()
        print(f"recorded {len(states.digests):,} projections of the CI model ({states.distinct_states:,} TLC states) in {MODEL_FILE}")
    try:
        runs = find_runs(args.paths or [DEFAULT_CORPUS])
    except TraceError as exc:
        print(f"paxwal: {exc}", file=sys.stderr)
        return 2
    actions = action_coverage(runs)
    print(f"spec actions in {len(runs)} runs:")
    for name, count in sorted(actions.items()):
        print(f"  {name:<16} {count:>9,}" + ("   NEVER EXERCISED" if count == 0 else ""))
    missing = sorted(name for name, count in actions.items() if count == 0)
    if not MODEL_FILE.exists():
        print(f"state coverage: {MODEL_FILE} is missing: run `paxwal coverage --model-states`")
    else:
        model = load_model_states()
        stale = "" if model.stamp == spec_stamp() else " (recorded for another version of the spec: rerun with --model-states)"
        coverage = StateCoverage(model)
        for run in runs:
            events, run_json = load_events([run])
            cluster = (run_json or {}).get("cluster", {})
            if coverage.fits(cluster.get("proposers", ()), cluster.get("acceptors", ())):
                replay(events, run_json, visit=coverage.add)
                coverage.runs += 1
        for seed in args.sim or ():
            sim = _coverage_sim(seed)
            replay(events_in_memory(sim.node_events), {"cluster": {"proposers": list(sim.proposers), "acceptors": list(sim.acceptors)}}, visit=coverage.add)
            coverage.runs += 1
        print(
            f"CI-model states visited: {coverage.inside:,} of {len(model.digests):,} ({coverage.fraction:.1%}),"
            f" by {coverage.runs} runs with the model's nodes; {len(coverage.visited) - coverage.inside:,}"
            f" other visited states are not the model's (beyond its bounds or its steering){stale}"
        )
    if missing:
        print(f"never exercised: {', '.join(missing)}")
        return 1
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    coverage = commands.add_parser(
        "coverage",
        help="which spec actions and CI-model states the traces exercise",
        description=(
            "Count the spec actions in the runs under PATH (default traces/accepted), and the "
            "states of the CI model (spec/models/ci.cfg) that those runs visit, counted by their "
            "projection on the nodes' variables up to symmetry (conformance/coverage.py). Exit 1 "
            "if an action is never exercised, 2 if a path holds no run."
        ),
    )
    coverage.add_argument("paths", nargs="*", type=Path, metavar="PATH")
    coverage.add_argument(
        "--sim", type=seed_range, metavar="A:B",
        help=(
            "also replay simulator runs A..B-1 shaped like the CI model (1 proposer, 3 acceptors, "
            f"one-byte records, crashes every 50 ms, appends every 100 ms, {COVERAGE_STEPS} fault steps)"
        ),
    )
    coverage.add_argument(
        "--model-states", action="store_true",
        help=f"first record the CI model's states with TLC (spec/MCCoverage.tla, about 4 minutes) into {MODEL_FILE.name}",
    )
    coverage.set_defaults(handler=_cmd_coverage)
