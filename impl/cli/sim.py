"""`paxwal sim`: one deterministic simulated run, or a campaign of them."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from conformance.replay import check_run
from impl.cli.common import PROGRESS_LINE_SECONDS, duration, positive_int, seed_range
from impl.sim import SimOptions, SimResult, run_seed


# A failing campaign reruns (traced) and details this many seeds; the rest are listed.
SHOWN_FAILURES = 10
# Where `paxwal sim` writes run directories unless told otherwise (git-ignored).
DEFAULT_SIM_OUT = Path("traces/sim")


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
        f" {len(failures)} failed, {duration(elapsed)} ({len(seeds) / elapsed * 60:,.0f} runs/min, {jobs} jobs)"
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
        text = f"[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} runs, {failed} failed, {duration(seconds)}"
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


def add_commands(commands: argparse._SubParsersAction) -> None:
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
        "--seeds", type=seed_range, metavar="A:B",
        help="a campaign over seeds A..B-1 (untraced; failures are rerun traced)",
    )
    sim.add_argument("--steps", type=positive_int, default=3000, metavar="N", help="events in the fault phase (default 3000)")
    sim.add_argument(
        "--out", type=Path, metavar="DIR",
        help=f"run directory (--seed; default {DEFAULT_SIM_OUT}/seed-S) or parent of failing runs' directories (--seeds)",
    )
    sim.add_argument("--jobs", type=positive_int, metavar="J", help="processes for --seeds (default: one per CPU)")
    sim.set_defaults(handler=_cmd_sim)
