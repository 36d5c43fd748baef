"""Failover: kill -9 the compute under load, start another on the same port, time its first answer.

The cluster: a fresh one in a temporary directory (`paxwal cluster up`: three acceptor
processes and a pageserver; `paxwal cluster down` at the end, however the run ends), and a
table ``kv(k integer primary key, n integer)`` of `ROWS` rows.  Every compute serves main on
one port, started by `Cluster.start_compute`: the code `paxwal compute start` runs, without
the CLI's own interpreter start-up (an orchestrator would spawn the compute directly).

A load thread commits single-row UPDATEs (``UPDATE kv SET n = i WHERE k = i % ROWS + 1``, i
counting up) one at a time, through impl/pgclient.py, to whatever compute listens on the
port; after each reconnection it asks ``paxwal_term()``, so each acknowledgement is known to
come from the compute of that term.  Each round, a baseline start then a failover, so both
see the same machine (other work on it slows process start-up most):

1. Baseline, a start with nothing failed: pause the load, stop the compute gracefully
   (SIGTERM, waited for), leave the cluster idle for `IDLE_SECONDS`, start the next compute
   and time it as in step 4, from its spawn.
2. Resume the load; it runs on the new compute for `LOAD_SECONDS` and at least `MIN_ACKS`
   commits.
3. Kill -9 the compute (`Cluster.signal(name, SIGKILL)`, as `paxwal compute stop --kill`).
4. At once, start a new compute on the same port (in a thread), while this thread tries a new
   connection and ``SELECT paxwal_term()`` every `PROBE_INTERVAL`: the failover time is from
   the kill to the first answer from a compute of a later term.
5. Durability: once the load thread has seen its connection to the killed compute break, the
   last UPDATE acknowledged by it (value i on row i % ROWS + 1) must be visible on the new
   compute: ``n >= i`` on that row (more if the load wrote it again since).  Anything less is
   a lost acknowledged commit, and the benchmark fails with a RuntimeError saying so.  The
   same check follows each graceful restart of step 1 (``durability_checks_passed_graceful``).

The parts of each start (baseline and failover alike), from the new compute's log (its
lines' timestamps, in ms): ``process`` from the kill (or the spawn) to "proposer ... started"
(the process start, Python's imports, reading the configuration); ``election`` from there to
"serving on" (connecting to the acceptors, winning a term, waiting until the start LSN is
committed and ingested by the pageserver, opening SQLite); ``first_query`` from there to the
first answer.

The machine's 1-minute load average at the start and the end is printed too (other work on
the machine slows process start-up most).

Goal (issue 9): failover p50 under 1 s.  The figures say whether it is met; tests never
assert it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from bench.cluster import ms, percentile
from bench.sql import paxwal_cluster
from impl.cluster import COMPUTE_DATABASE, COMPUTE_USER, Cluster, free_ports
from impl.pgclient import PgConnection, PgError

__all__ = ["NAME", "rounds_for", "run"]

NAME = "failover"

MIN_ROUNDS = 3
MAX_ROUNDS = 20
SECONDS_PER_ROUND = 3.0  # about what a round takes: IDLE_SECONDS, LOAD_SECONDS and two starts
ROWS = 1000
LOAD_SECONDS = 0.5  # the load on each compute before it is killed
IDLE_SECONDS = 1.0  # the cluster left idle before each baseline start
MIN_ACKS = 20  # and at least this many commits acknowledged by it
PROBE_INTERVAL = 0.005
CONNECT_TIMEOUT = 5.0  # one connection attempt of the probe or the load
START_TIMEOUT = 120.0  # a compute that has not answered by then fails the benchmark
LOAD_TIMEOUT = 60.0  # the load reaching MIN_ACKS, or noticing the kill
GOAL_MS = 1000.0

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def rounds_for(seconds: float) -> int:
    """Failover rounds (and as many baseline starts) in a budget of `seconds`."""
    return max(MIN_ROUNDS, min(MAX_ROUNDS, int(seconds / SECONDS_PER_ROUND)))


@attrs.frozen
class Start:
    """One compute start, timed: seconds from the kill (or spawn) to its first answer, and
    the parts (see the module docstring), None where its log did not say."""

    total: float
    process: float | None
    election: float | None
    term: int


class _Load(threading.Thread):
    """Single-row UPDATEs, one at a time, to whatever compute listens on `port`; starts
    paused.  Its counters are guarded by `changed`, notified on every change."""

    def __init__(self, port: int, password: str) -> None:
        super().__init__(name="failover-load", daemon=True)
        self.port = port
        self.password = password
        self.acked: dict[int, int] = {}  # term -> the last value acknowledged by its compute
        self.broken: set[int] = set()  # terms whose connection broke
        self.commits = 0
        self.errors = 0  # failed statements and connections (expected around each kill)
        self.last_error = ""
        self.idle = False  # paused, holding no connection
        self.changed = threading.Condition()
        self._running = False
        self._halt = False

    def stop(self) -> None:
        with self.changed:
            self._halt = True
            self.changed.notify_all()

    def pause(self) -> None:
        """Return once the load has finished its statement and closed its connection."""
        with self.changed:
            self._running = False
        self.wait_for(lambda: self.idle, "pause")

    def resume(self) -> None:
        with self.changed:
            self._running = True
            self.changed.notify_all()

    def _go_on(self) -> bool:
        """Whether to run (waiting while paused); False once stopped."""
        with self.changed:
            while not self._running and not self._halt:
                self.idle = True
                self.changed.notify_all()
                self.changed.wait()
            self.idle = False
            return not self._halt

    def run(self) -> None:
        value = 0
        while self._go_on():
            term = None
            try:
                with PgConnection(self.port, COMPUTE_USER, self.password, COMPUTE_DATABASE,
                                  timeout=CONNECT_TIMEOUT) as pg:
                    term = int(pg.query("SELECT paxwal_term()")[0][0] or 0)
                    while self._running and not self._halt:
                        value += 1
                        pg.query(f"UPDATE kv SET n = {value} WHERE k = {value % ROWS + 1}")
                        with self.changed:
                            self.acked[term] = value
                            self.commits += 1
                            self.changed.notify_all()
            except PgError as exc:
                with self.changed:
                    self.errors += 1
                    self.last_error = str(exc)
                    if term is not None:
                        self.broken.add(term)
                    self.changed.notify_all()
                time.sleep(PROBE_INTERVAL)

    def wait_for(self, predicate: Any, what: str) -> None:
        with self.changed:
            if not self.changed.wait_for(predicate, timeout=LOAD_TIMEOUT):
                raise RuntimeError(f"the load did not {what} within {LOAD_TIMEOUT:g} s (last error: {self.last_error})")


def _log_times(cluster: Cluster, name: str) -> tuple[float | None, float | None]:
    """When compute `name`'s log says its proposer started and it began serving (epoch s)."""
    started = serving = None
    with contextlib.suppress(OSError):
        for line in cluster.log_file(name).read_text(errors="replace").splitlines():
            match = _LOG_TIME.match(line)
            if match is None:
                continue
            when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if started is None and f"proposer {name} of timeline" in line:
                started = when
            elif serving is None and "serving on" in line:
                serving = when
    return started, serving


def _start_and_probe(cluster: Cluster, name: str, port: int, password: str, after_term: int,
                     t0: float, wall0: float) -> Start:
    """Start compute `name` on `port` (in a thread) and try ``SELECT paxwal_term()`` through
    a new connection every PROBE_INTERVAL until a compute of a term above `after_term`
    answers.  `t0`/`wall0`: the moment timed from (perf_counter, time.time)."""
    failure: list[BaseException] = []

    def start() -> None:
        try:
            cluster.start_compute(name, "main", port=port, wal_start=0)
        except BaseException as exc:  # noqa: BLE001 - reported by the prober below
            failure.append(exc)

    starter = threading.Thread(target=start, name=f"start-{name}", daemon=True)
    starter.start()
    deadline = t0 + START_TIMEOUT
    while True:
        with contextlib.suppress(PgError, ValueError, IndexError):
            with PgConnection(port, COMPUTE_USER, password, COMPUTE_DATABASE, timeout=CONNECT_TIMEOUT) as pg:
                term = int(pg.query("SELECT paxwal_term()")[0][0] or 0)
                if term > after_term:
                    total = time.perf_counter() - t0
                    break
        if failure:
            raise RuntimeError(f"compute {name} did not start: {failure[0]}")
        if time.perf_counter() > deadline:
            raise RuntimeError(f"compute {name} did not answer within {START_TIMEOUT:g} s: {cluster.log_tail(name)}")
        time.sleep(PROBE_INTERVAL)
    starter.join(timeout=START_TIMEOUT)
    if failure:
        raise RuntimeError(f"compute {name} answered, yet its start failed: {failure[0]}")
    started, serving = _log_times(cluster, name)
    return Start(
        total=total,
        process=None if started is None else started - wall0,
        election=None if started is None or serving is None else serving - started,
        term=term,
    )


def _row_value(port: int, password: str, key: int) -> int:
    with PgConnection(port, COMPUTE_USER, password, COMPUTE_DATABASE, timeout=CONNECT_TIMEOUT) as pg:
        return int(pg.query(f"SELECT n FROM kv WHERE k = {key}")[0][0] or 0)


def _summary(prefix: str, starts: list[Start]) -> dict[str, Any]:
    totals = [s.total for s in starts]
    figures = {
        f"{prefix}_p50_ms": ms(percentile(totals, 0.5)),
        f"{prefix}_p99_ms": ms(percentile(totals, 0.99)),
        f"{prefix}_max_ms": ms(max(totals)),
    }
    processes = [s.process for s in starts if s.process is not None]
    elections = [s.election for s in starts if s.election is not None]
    firsts = [s.total - s.process - s.election for s in starts if s.process is not None and s.election is not None]
    if processes:
        figures[f"{prefix}_process_p50_ms"] = ms(percentile(processes, 0.5))
    if elections:
        figures[f"{prefix}_election_p50_ms"] = ms(percentile(elections, 0.5))
    if firsts:
        figures[f"{prefix}_first_query_p50_ms"] = ms(percentile(firsts, 0.5))
    return figures


def _check_durable(load: _Load, port: int, password: str, old: str, old_term: int, new: str, new_term: int) -> bool:
    """Whether compute `new` shows the last UPDATE compute `old` acknowledged (False: `old`
    acknowledged none); RuntimeError, LOST COMMIT, if it does not (module docstring, step 5)."""
    with load.changed:
        value = load.acked.get(old_term)
    if value is None:
        return False
    seen = _row_value(port, password, value % ROWS + 1)
    if seen < value:
        raise RuntimeError(
            f"LOST COMMIT: compute {old} (term {old_term}) acknowledged UPDATE kv SET n = {value} WHERE"
            f" k = {value % ROWS + 1}, then was stopped; compute {new} (term {new_term}) shows n = {seen}")
    return True


def run(seconds: float = 20.0) -> dict[str, Any]:
    """`rounds_for(seconds)` rounds, each a baseline start and a kill -9 failover under load."""
    rounds = rounds_for(seconds)
    load_at_start = round(os.getloadavg()[0], 2)
    baseline: list[Start] = []
    failovers: list[Start] = []
    checked = checked_graceful = 0
    load: _Load | None = None
    with tempfile.TemporaryDirectory(prefix="paxwal-bench-failover-") as tmp, \
            paxwal_cluster(Path(tmp) / "cluster") as cluster:
        try:
            password = cluster.load().compute_password
            (port,) = free_ports(1)
            current = cluster.start_compute("c0", "main", port=port, wal_start=0).name
            with PgConnection(port, COMPUTE_USER, password, COMPUTE_DATABASE, timeout=60) as pg:
                pg.query("CREATE TABLE kv (k integer primary key, n integer)")
                pg.query("INSERT INTO kv (k, n) VALUES " + ", ".join(f"({k}, 0)" for k in range(1, ROWS + 1)))
                term = int(pg.query("SELECT paxwal_term()")[0][0] or 0)
            load = _Load(port, password)
            load.start()
            for i in range(1, rounds + 1):
                # The baseline start: the load paused, the compute stopped gracefully, idle.
                load.pause()
                cluster.stop(current)
                time.sleep(IDLE_SECONDS)
                name = f"b{i}"
                start = _start_and_probe(cluster, name, port, password, term, time.perf_counter(), time.time())
                baseline.append(start)
                checked_graceful += _check_durable(load, port, password, current, term, name, start.term)
                current, term = name, start.term

                # The failover: the load on `current`, then kill -9 and a new compute at once.
                load.resume()
                load.wait_for(lambda: load.acked.get(term, 0) > 0, f"commit on compute {current}")
                first = load.commits
                time.sleep(LOAD_SECONDS)
                load.wait_for(lambda: load.commits - first >= MIN_ACKS, f"make {MIN_ACKS} commits on {current}")
                name = f"f{i}"
                wall0, t0 = time.time(), time.perf_counter()
                cluster.signal(current, signal.SIGKILL)
                cluster.pid_file(current).unlink(missing_ok=True)
                start = _start_and_probe(cluster, name, port, password, term, t0, wall0)
                failovers.append(start)
                load.wait_for(lambda: term in load.broken, f"notice the kill of {current}")
                checked += _check_durable(load, port, password, current, term, name, start.term)
                current, term = name, start.term
        finally:
            if load is not None:
                load.stop()
                load.join(timeout=2 * CONNECT_TIMEOUT)
    failover_p50, baseline_p50 = (percentile([s.total for s in starts], 0.5) for starts in (failovers, baseline))
    figures: dict[str, Any] = {"rounds": rounds, "load_average_1m_at_start": load_at_start,
                               "load_average_1m_at_end": round(os.getloadavg()[0], 2)}
    figures |= _summary("failover", failovers)
    figures |= _summary("baseline_start", baseline)
    figures["ratio_failover_p50_to_baseline"] = round(failover_p50 / baseline_p50, 3)
    figures["durability_checks_passed"] = checked
    figures["durability_checks_passed_graceful"] = checked_graceful
    figures["load_commits"] = load.commits if load is not None else 0
    figures["goal_p50_under_1_s"] = "yes" if failover_p50 < GOAL_MS / 1000 else "no"
    return figures
