"""Implementation mutants: which oracle catches each deliberate bug in the cores.

Theory of operation
===================

`run_mutants` runs a *campaign* per mutant of conformance/impl_catalogue.py, plus one for the
*control* (no mutant): the same runs on the unmodified cores, which no oracle may fault, or
the kills prove nothing (as the control config of `paxwal tlc mutants`).

1. Isolation.  Each campaign runs in a worker process forked for it alone.  The worker
   compiles the mutant's patched source into a fresh module object, installs it in
   `sys.modules`, and rebinds every name that a module of the `impl` package had imported
   from the original (`install`).  The parent never imports a mutant, so one campaign cannot
   leak into another or into the report; conformance/replay.py imports nothing from impl/,
   so the oracle is never mutated with the code it judges.
2. Runs.  A campaign runs the simulator on each seed, traced, then every scenario
   (tests/scenarios/*.txt, through impl/scenario.py).  Seeds come first because they are
   the question that matters, whether random faults expose the bug; the scenarios, written
   for these stories, back them up.  Every run meets all three oracles:
   - conformance: the run's trace directory, replayed by `check_run`, is rejected;
   - sim: the simulator's built-in checks fail (a violation, or the simulator raised);
   - scenario: a scenario's output differs from its expected text, or it cannot run.
   The conformance checker judges every run, even one the other oracles already failed,
   so the report says whether it would catch the mutant alone.
3. Stopping.  A campaign stops at its first conformance kill; the first run that any
   oracle faulted is at or before it.  A run directory that conformance rejected is kept
   under `out` (if given) for `paxwal check`; the others are deleted.
4. Verdicts.  A mutant is killed if any oracle faulted one of its runs, killed by the
   conformance checker if `check_run` rejected one.  A campaign that crashes or outlives
   its timeout kills nothing: its error is reported instead.
"""

from __future__ import annotations

import importlib
import multiprocessing
import shutil
import signal
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path

import attrs

from conformance.impl_catalogue import Mutant, patched_source
from conformance.replay import TraceError, check_run
from impl import scenario
from impl.sim import Sim, SimOptions

__all__ = [
    "CONTROL",
    "DEFAULT_SEEDS",
    "DEFAULT_TIMEOUT",
    "REQUIRED_RATE",
    "SMOKE_SEEDS",
    "Campaign",
    "Kill",
    "Plan",
    "install",
    "passed",
    "report",
    "run_mutants",
]

# The control campaign's name in reports.
CONTROL = "(control)"
# The bar: CI fails if the conformance checker kills fewer mutants than this.
REQUIRED_RATE = 0.95
# `--smoke`: four seeds of different shapes (5 or 3 acceptors, 2 or 3 proposers, crashes,
# partitions, loss, duplication).  Seeds 0 and 1 kill all but vote_before_persist and
# donor_by_flush, which need a crash or a diverged donor at the right time; the scenarios
# vote-replay-after-crash and donor-choice tell exactly those stories.
SMOKE_SEEDS = (0, 1, 2, 3)
# The default campaign.  The control, which must run everything, is the long pole: about
# 3 minutes for these 100 seeds and the scenarios on the 2-core machine.
DEFAULT_SEEDS = range(0, 100)
# Seconds a campaign may run before its worker is killed: a mutant may loop forever.
DEFAULT_TIMEOUT = 900.0
# The oracles, in the order reports list them.
ORACLES = ("conformance", "sim", "scenario")
# A detail longer than this is cut in reports (a changed committed log quotes it whole).
DETAIL_CHARS = 200
SCENARIO_DIR = Path(__file__).resolve().parent.parent / "tests" / "scenarios"


@attrs.frozen
class Plan:
    """The runs of every campaign, in order: the seeds, then the scenarios."""

    scenarios: tuple[Path, ...]
    seeds: tuple[int, ...]
    steps: int = 3000
    out: Path | None = None  # where conformance-rejected run directories are kept

    @classmethod
    def of(cls, seeds: Sequence[int], steps: int = 3000, out: Path | None = None) -> Plan:
        """These seeds and every scenario of tests/scenarios/."""
        return cls(tuple(sorted(SCENARIO_DIR.glob("*.txt"))), tuple(seeds), steps, out)

    @property
    def size(self) -> int:
        return len(self.scenarios) + len(self.seeds)


@attrs.frozen
class Kill:
    """A run some oracles faulted: oracle -> what it saw (conformance: `file:line: reason`)."""

    run: str
    found: dict[str, str]
    kept: str | None = None  # the kept run directory (conformance kills with `out` set)


@attrs.frozen
class Campaign:
    """How one mutant (or the control) fared."""

    name: str
    runs: int
    seconds: float
    first: Kill | None = None  # the first run any oracle faulted
    conformance: Kill | None = None  # the first run the conformance checker rejected
    error: str | None = None  # the campaign crashed or timed out


# ---------------------------------------------------------------------------------------------
# Inside a worker
# ---------------------------------------------------------------------------------------------


def install(mutant: Mutant) -> None:
    """Replace `mutant.module` by its patched source, in this process, for good (rule 1)."""
    old = importlib.import_module(mutant.module)
    new = types.ModuleType(old.__name__, old.__doc__)
    new.__file__ = old.__file__
    code = compile(patched_source(mutant), f"<mutant {mutant.name} of {old.__file__}>", "exec", dont_inherit=True)
    sys.modules[mutant.module] = new
    exec(code, new.__dict__)
    # Only what the module defines is replaced: the names it imported itself are shared.
    ours = {
        id(value): new.__dict__[name]
        for name, value in vars(old).items()
        if getattr(value, "__module__", None) == old.__name__ and name in new.__dict__
    }
    ours[id(old)] = new
    for module in list(sys.modules.values()):
        if module is new or not (module.__name__ == "impl" or module.__name__.startswith("impl.")):
            continue
        for name, value in list(vars(module).items()):
            if id(value) in ours:
                setattr(module, name, ours[id(value)])


def _conformance(run_dir: Path) -> str | None:
    try:
        replayed = check_run([run_dir])
    except TraceError as exc:  # an unreadable trace is not an accepted one
        return f"unreadable trace: {exc}"
    divergence = replayed.divergence
    if divergence is None:
        return None if replayed.verdict == "accepted" else replayed.verdict
    return f"{Path(divergence.event.file).name}:{divergence.event.line}: {divergence.reason}"


def _scenario_run(path: Path, run_dir: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    try:
        _, mismatches, sim = scenario.run(path.read_text())
    except scenario.ScenarioError as exc:
        found["scenario"] = f"cannot run: {exc}"
        sim = exc.sim
    else:
        if mismatches:
            found["scenario"] = f"output differs at {mismatches[0].splitlines()[0]}"
    if sim is not None:
        if sim.violations:
            found["sim"] = sim.violations[0]
        sim.write_run(run_dir)
    return found


def _seed_run(seed: int, steps: int, run_dir: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    sim = Sim(SimOptions.from_seed(seed, steps))
    try:
        result = sim.run()
    except Exception as exc:  # noqa: BLE001 - a simulator that raises has found a bug
        found["sim"] = f"the simulator raised {type(exc).__name__}: {exc}"
        result = None
    else:
        if not result.ok:
            found["sim"] = result.violations[0]
    sim.write_run(run_dir, result)
    return found


def _runs(plan: Plan) -> Iterator[tuple[str, Callable[[Path], dict[str, str]]]]:
    for seed in plan.seeds:
        yield f"seed {seed}", lambda d, seed=seed: _seed_run(seed, plan.steps, d)
    for path in plan.scenarios:
        yield f"scenario {path.stem}", lambda d, path=path: _scenario_run(path, d)


def _campaign(name: str, plan: Plan, on_run: Callable[[str], None]) -> Campaign:
    """Run the plan on the cores as this process has them (rules 2 and 3)."""
    started = time.monotonic()
    first = None
    runs = 0
    for label, execute in _runs(plan):
        on_run(label)
        with tempfile.TemporaryDirectory(prefix="paxwal-mutant-") as tmp:
            run_dir = Path(tmp)
            found = execute(run_dir)
            # A scenario that fails before `cluster` leaves no trace to judge.
            rejected = _conformance(run_dir) if any(run_dir.iterdir()) else None
            runs += 1
            if rejected is not None:
                found["conformance"] = rejected
            found = {oracle: found[oracle] for oracle in ORACLES if oracle in found}
            if found and first is None:
                first = Kill(label, found)
            if rejected is not None:
                kept = None
                if plan.out is not None:
                    kept_dir = plan.out / name / label.replace(" ", "-")
                    shutil.rmtree(kept_dir, ignore_errors=True)
                    shutil.copytree(run_dir, kept_dir)
                    kept = str(kept_dir)
                conformance = Kill(label, {"conformance": rejected}, kept)
                return Campaign(name, runs, time.monotonic() - started, first, conformance)
    return Campaign(name, runs, time.monotonic() - started, first)


def _worker(mutant: Mutant | None, plan: Plan, conn: Connection) -> None:
    """A forked worker: install the mutant, run its campaign, send progress and the result."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles ^C and ends us
    name = mutant.name if mutant is not None else CONTROL
    try:
        if mutant is not None:
            install(mutant)
        result = _campaign(name, plan, lambda label: conn.send(("run", label)))
    except Exception:  # noqa: BLE001 - the parent reports it as the campaign's error
        conn.send(("error", traceback.format_exc().rstrip().splitlines()[-1]))
    else:
        conn.send(("done", result))
    conn.close()


# ---------------------------------------------------------------------------------------------
# In the parent
# ---------------------------------------------------------------------------------------------


@attrs.define
class _Running:
    name: str
    process: multiprocessing.process.BaseProcess
    started: float
    run: str = "starting"


def run_mutants(
    mutants: Sequence[Mutant],
    plan: Plan,
    jobs: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
    on_done: Callable[[Campaign, int, int], None] = lambda result, done, total: None,
) -> tuple[Campaign, list[Campaign]]:
    """Run the control and every mutant's campaign, `jobs` worker processes at a time.

    Args:
        mutants: the mutants (their snippets are checked first, so none is run if any fails).
        plan: the runs.
        jobs: campaigns run at once.
        timeout: seconds a campaign may take before its worker is killed (it kills nothing).
        on_done: called as each campaign ends, with the count done so far and the total.

    Returns:
        The control's campaign and the mutants' campaigns, in catalogue order.

    Raises:
        CatalogueError: a mutant's snippet does not apply.
    """
    for mutant in mutants:
        patched_source(mutant)
    context = multiprocessing.get_context("fork")
    queue: list[Mutant | None] = [None, *mutants]  # the control first: it runs every run
    total = len(queue)
    running: dict[Connection, _Running] = {}
    results: dict[str, Campaign] = {}

    def finish(conn: Connection, result: Campaign | None = None, error: str = "") -> None:
        """The worker on `conn` is done (or, with an error, must be): reap it, record it."""
        job = running.pop(conn)
        conn.close()
        if result is None:
            job.process.kill()
        job.process.join()
        if result is None:
            result = Campaign(job.name, 0, time.monotonic() - job.started, error=error)
        results[result.name] = result
        on_done(result, len(results), total)

    try:
        while queue or running:
            while queue and len(running) < jobs:
                mutant = queue.pop(0)
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(target=_worker, args=(mutant, plan, sender), daemon=True)
                process.start()
                sender.close()
                name = mutant.name if mutant is not None else CONTROL
                running[receiver] = _Running(name, process, time.monotonic())
            for conn in wait(list(running), timeout=1.0):
                try:
                    kind, payload = conn.recv()
                except EOFError:
                    finish(conn, error=f"the worker died during {running[conn].run}")
                    continue
                if kind == "run":
                    running[conn].run = payload
                elif kind == "done":
                    finish(conn, payload)
                else:
                    finish(conn, error=payload)
            now = time.monotonic()
            for conn, job in list(running.items()):
                if now - job.started > timeout:
                    finish(conn, error=f"timed out after {timeout:g} s during {job.run}")
    finally:
        for job in running.values():
            job.process.kill()
            job.process.join()
    order = [CONTROL] + [m.name for m in mutants]
    return results[CONTROL], [results[name] for name in order[1:]]


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def _rate(count: int, total: int) -> str:
    return f"{count}/{total} ({100 * count / total:.0f}%)" if total else "0/0"


def _conformance_rate(campaigns: Sequence[Campaign]) -> float:
    return sum(c.conformance is not None for c in campaigns) / len(campaigns) if campaigns else 1.0


def passed(control: Campaign, campaigns: Sequence[Campaign]) -> bool:
    """The control is clean and the conformance checker killed at least REQUIRED_RATE."""
    clean = control.first is None and control.error is None
    return clean and _conformance_rate(campaigns) >= REQUIRED_RATE


def _row(c: Campaign) -> list[str]:
    if c.error is not None:
        first, at = "ERROR", "-"
    elif c.first is None:
        first, at = "nothing", "-"
    else:
        first, at = ", ".join(c.first.found), c.first.run
    by_conformance = c.conformance.run if c.conformance is not None else ("-" if c.name == CONTROL else "SURVIVED")
    return [c.name, first, at, by_conformance, str(c.runs), f"{c.seconds:.1f} s"]


def report(control: Campaign, campaigns: Sequence[Campaign], mutants: Sequence[Mutant], plan: Plan) -> str:
    """The table (one row per mutant, then the control), the kill rates, then the details."""
    header = ["mutant", "first killed by", "at", "conformance kill at", "runs", "time"]
    rows = [header, *(_row(c) for c in campaigns), _row(control)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    killed = sum(c.first is not None for c in campaigns)
    by_conformance = sum(c.conformance is not None for c in campaigns)
    seeds = f"seeds {plan.seeds[0]}..{plan.seeds[-1]}" if plan.seeds else "no seeds"
    control_text = (
        f"control: ERROR {control.error}" if control.error is not None
        else f"control: nothing fired in {control.runs} runs" if control.first is None
        else f"control: KILLED by {', '.join(control.first.found)} at {control.first.run}: the runs prove nothing"
    )
    lines += [
        "",
        f"{len(campaigns)} mutants over {seeds} ({plan.steps} fault steps) + {len(plan.scenarios)} scenarios:"
        f" killed {_rate(killed, len(campaigns))}, by the conformance checker"
        f" {_rate(by_conformance, len(campaigns))}, {REQUIRED_RATE:.0%} required; {control_text}",
        "",
    ]
    bugs = {m.name: m.bug for m in mutants}
    faulted_control = [control] if control.first is not None or control.error is not None else []
    for c in [*campaigns, *faulted_control]:
        lines.append(f"{c.name}: {bugs.get(c.name, 'the unmodified cores')}")
        if c.error is not None:
            lines.append(f"  error        {c.error}")
        # The conformance kill may come after the first kill; the other oracles are shown
        # as they were on the first run any oracle faulted.
        shown = [(o, c.first) for o in c.first.found if o != "conformance"] if c.first is not None else []
        if c.conformance is not None:
            shown.append(("conformance", c.conformance))
        for oracle, kill in sorted(shown, key=lambda pair: ORACLES.index(pair[0])):
            detail = kill.found[oracle]
            if len(detail) > DETAIL_CHARS:
                detail = detail[: DETAIL_CHARS - 3] + "..."
            kept = f"  (kept in {kill.kept})" if kill.kept else ""
            lines.append(f"  {oracle:<12} {kill.run}: {detail}{kept}")
    return "\n".join(lines)
