"""`paxwal demo`: the failover walk-through, end to end, with psql as the client (issue 9 §4).

Theory of operation
===================

The walk-through is what a user of paxwal sees, run for real: every step is a `paxwal`
command or a `psql` call in its own process, exactly as a user would type it, printed with
its output and how long it took.  Rules:

1. Every claim is checked.  A step that shows something ("c2 has every row") compares it
   with what was acknowledged before; a failed check is reported and makes the demo exit 1,
   but later steps still run where they can, so one run shows everything that is wrong.
2. Nothing is left running.  The cluster is stopped at the end whatever happened, and its
   traces are checked by the conformance checker (`paxwal check`), so the demo is also a
   conformance run.
3. The failover time is measured from the `kill -9` of c1 to c2 answering its first query
   (`compute start`, which returns once c2 listens, then one psql query).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from impl.cluster import Cluster

__all__ = ["run_demo"]

REPO = Path(__file__).resolve().parents[1]
COMMAND_TIMEOUT = 180
FAILOVER_GOAL = 1.0  # seconds


class Demo:
    """The walk-through's state: the cluster directory, the checks and their outcomes."""

    def __init__(self, directory: Path, say: Callable[[str], None]) -> None:
        self.dir = directory
        self.say = say
        self.failures: list[str] = []
        self.started = time.monotonic()
        self.step_number = 0

    def step(self, title: str) -> None:
        self.step_number += 1
        self.say(f"\n[{time.monotonic() - self.started:6.2f} s] {self.step_number}. {title}")

    def run(self, args: list[str], show: bool = True) -> subprocess.CompletedProcess[str]:
        began = time.monotonic()
        shown = " ".join(a if " " not in a else repr(a) for a in args)
        result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                                env={**os.environ, "PGCONNECT_TIMEOUT": "10"})
        took = time.monotonic() - began
        self.say(f"  $ {shown}    ({took * 1000:.0f} ms)")
        if show:
            for line in (result.stdout + result.stderr).rstrip().splitlines():
                self.say(f"    {line}")
        return result

    def paxwal(self, *args: str, show: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run([sys.executable, "-m", "impl.cli", *args, "--dir", str(self.dir)], show)

    def psql(self, uri: str, *commands: str, tuples: bool = False) -> subprocess.CompletedProcess[str]:
        args = ["psql", uri, "-X", "-v", "ON_ERROR_STOP=1", *(["-A", "-t"] if tuples else [])]
        for command in commands:
            args += ["-c", command]
        return self.run(args)

    def check(self, ok: bool, what: str) -> bool:
        self.say(f"  {'ok' if ok else 'FAILED'}: {what}")
        if not ok:
            self.failures.append(what)
        return ok

    def start_compute(self, *args: str) -> str | None:
        started = self.paxwal("compute", "start", *args)
        if not self.check(started.returncode == 0, f"compute start {' '.join(args)}"):
            return None
        return started.stdout.strip().splitlines()[-1]


def _lsn(result: subprocess.CompletedProcess[str]) -> str | None:
    """The LSN psql printed, if it printed one."""
    found = re.search(r"\b[0-9A-F]+/[0-9A-F]+\b", result.stdout) if result.returncode == 0 else None
    return found.group(0) if found else None


def _rows(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if line]


def _walk(demo: Demo) -> None:
    demo.step("A local cluster: 3 acceptors (safekeepers) and a pageserver, object storage in a directory")
    up = demo.paxwal("cluster", "up")
    if not demo.check(up.returncode == 0, "cluster up"):
        return

    demo.step("Compute c1 on branch main: it wins a term, then serves Postgres on 127.0.0.1")
    c1 = demo.start_compute("--name", "c1")
    if c1 is None:
        return

    demo.step("Create a table and commit rows on c1 (each acknowledged only once a quorum has it)")
    made = demo.psql(c1, "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT, balance INTEGER)",
                     "INSERT INTO accounts VALUES (1, 'alice', 100), (2, 'bob', 50)",
                     "UPDATE accounts SET balance = balance - 30 WHERE id = 1",
                     "UPDATE accounts SET balance = balance + 30 WHERE id = 2")
    demo.check(made.returncode == 0, "the first rows are committed")
    before = _lsn(demo.psql(c1, "SELECT pg_current_wal_lsn()"))
    if not demo.check(before is not None, f"the LSN before the last inserts: {before}"):
        return
    later = demo.psql(c1, "INSERT INTO accounts VALUES (3, 'carol', 70)", "INSERT INTO accounts VALUES (4, 'dave', 10)")
    demo.check(later.returncode == 0, "two more inserts are committed")
    acknowledged = _rows(demo.psql(c1, "SELECT * FROM accounts ORDER BY id", tuples=True))
    lsn_c1 = _lsn(demo.psql(c1, "SELECT pg_current_wal_lsn()"))
    demo.check(lsn_c1 is not None and lsn_c1 != before, f"c1 is at {lsn_c1}")

    demo.step("kill -9 c1: no goodbye to its clients or to the acceptors")
    cluster = Cluster(demo.dir)
    demo.say(f"  $ kill -9 {cluster.pid('c1')}")
    killed_at = time.monotonic()
    demo.check(cluster.kill("c1"), "c1 was running, and is killed")

    demo.step("Compute c2 on main: a new term, recovered from the acceptors, pages from the pageserver")
    c2 = demo.start_compute("--name", "c2")
    if c2 is None:
        return
    first = demo.psql(c2, "SELECT pg_current_wal_lsn()")
    failover = time.monotonic() - killed_at
    lsn_c2 = _lsn(first)
    demo.check(lsn_c2 == lsn_c1, f"c2 is at the same LSN: {lsn_c2} (c1 was at {lsn_c1})")
    demo.say(f"  failover: {failover * 1000:.0f} ms from the kill of c1 to c2 answering its first query"
             f" (goal under {FAILOVER_GOAL:.0f} s: {'met' if failover < FAILOVER_GOAL else 'missed'})")
    demo.check(_rows(demo.psql(c2, "SELECT * FROM accounts ORDER BY id", tuples=True)) == acknowledged,
               "every acknowledged row is on c2")

    demo.step("c2 takes writes")
    demo.check(demo.psql(c2, "INSERT INTO accounts VALUES (5, 'erin', 500)").returncode == 0, "c2 commits")

    demo.step(f"A branch at {before}, before the last inserts, and a compute on it")
    branch = demo.paxwal("branch", "create", "before", "--from", f"main@{before}")
    demo.check(branch.returncode == 0, "branch before created (metadata only)")
    dev = demo.start_compute("--branch", "before", "--name", "b1")
    if dev is not None:
        demo.check(_rows(demo.psql(dev, "SELECT id FROM accounts ORDER BY id", tuples=True)) == ["1", "2"],
                   "the branch shows the older data: accounts 1 and 2")
        demo.check(demo.psql(dev, "UPDATE accounts SET balance = 0 WHERE id = 1").returncode == 0,
                   "the branch takes writes of its own")

    demo.step(f"A static compute at {before}: a read-only snapshot of main")
    past = demo.start_compute("--lsn", before, "--name", "past")
    if past is not None:
        demo.check(_rows(demo.psql(past, "SELECT id FROM accounts ORDER BY id", tuples=True)) == ["1", "2"],
                   "the snapshot shows the older data")
        demo.check(demo.psql(past, "INSERT INTO accounts VALUES (9, 'mallory', 1)").returncode != 0,
                   "the snapshot refuses writes")
    main_rows = _rows(demo.psql(c2, "SELECT id, balance FROM accounts ORDER BY id", tuples=True))
    demo.check(main_rows == ["1|70", "2|80", "3|70", "4|10", "5|500"], "main shows the new data, untouched by the branch")
    demo.paxwal("compute", "list")


def run_demo(directory: Path | None, say: Callable[[str], None] = print) -> int:
    """Run the walk-through in `directory` (a new temporary one if None, removed afterwards
    when everything held); returns the exit status: 0 only if every check held."""
    keep = directory is not None
    path = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="paxwal-demo-"))
    demo = Demo(path, say)
    say(f"paxwal demo in {path}: the failover walk-through, psql as the client")
    try:
        _walk(demo)
    finally:
        demo.step("Cluster down, then every trace through the conformance checker")
        demo.paxwal("cluster", "down")
        checked = demo.run([sys.executable, "-m", "impl.cli", "check", str(path / "run")])
        demo.check(checked.returncode == 0, "every timeline's traces are a behaviour of the spec")
    total = time.monotonic() - demo.started
    if demo.failures:
        say(f"\ndemo: FAILED after {total:.1f} s ({len(demo.failures)} checks): " + "; ".join(demo.failures))
        say(f"the cluster's directory is kept: {path}")
        return 1
    say(f"\ndemo: every check held ({total:.1f} s)")
    if not keep:
        shutil.rmtree(path, ignore_errors=True)
    return 0
