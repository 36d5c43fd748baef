"""Chaos on a real local cluster: kill -9, pauses and restarts under load, then the verdict.

Theory of operation
===================

`run_chaos` builds a fresh cluster in a directory (impl/cluster.py: acceptor processes), runs
the load generator as its own process (`paxwal load`: the proposer and its clients, so it can
be killed too), and for the given time applies one fault after another, chosen by a seeded
random generator:

- kill -9 one acceptor, restart it after a while (never more than a minority down or paused
  at once, so the cluster can always make progress once the fault heals);
- kill -9 every acceptor at once, restart them all (nothing acknowledged may be lost, since
  it was fsync'd on a majority before the ack);
- SIGSTOP one acceptor, SIGCONT it later (a pause: its peers must not wait for it);
- kill -9 the load process (the compute), restart it: the new incarnation campaigns, recovers
  and carries on; or SIGSTOP/SIGCONT it.

Then the faults stop, every node runs, and a calm phase must commit new records.  The load
process is stopped gracefully, the cluster is brought down, and:

1. every acknowledged record is present, byte for byte, at its LSN on a majority of the
   acceptors, and no two acknowledged records share an LSN (impl/load.py `verify_history`);
2. commit made progress in the calm phase;
3. the merged traces of every process are a behaviour of the spec (conformance/replay.py).

The seed chooses the faults and their timing; the processes' own timing is not
deterministic, so a seed reproduces the schedule, not the interleaving.

SQL computes (`run_sql_chaos`, `paxwal chaos --sql`)
====================================================

The same cluster, with its pageserver, serves SQL computes (impl/compute.py) instead: the
runner starts compute c1 on one of two ports and runs the SQL workload (`paxwal sqlload`,
impl/sqlload.py) as its own process, its clients trying both ports.  The faults
(`SQL_FAULTS`, by weight) are the acceptor ones above, and:

- kill -9 the compute, then start a new one (c2, c3, ...: every compute is a new proposer) on
  its port; or SIGSTOP/SIGCONT it;
- *takeover*: start a new compute on the other port while the old one serves: the new one's
  election deposes the old, which must fail what it cannot commit and stop (impl/compute.py
  rules 5 and 7), while its clients may still be talking to it;
- kill -9 the pageserver, restart it; or SIGSTOP/SIGCONT it;
- kill -9 the compute and a minority of the acceptors at once;
- kill -9 the workload, restart it (a new incarnation: the killed one's Queries in flight
  have no outcome, and the computes must finish or drop them whole).

A compute may also stop by itself: one whose proposer stalls (every acceptor killed, a
commit pending; here they stay down up to 4 s, past the stall timeout) fences and exits
(impl/compute.py rule 5).  A new compute is started only once the last one on its port has
exited (`_SqlNemesis._free_port` says why).  Between faults the runner polls
the compute's process and starts a new one on its port when it is gone; healing after each
fault restarts acceptors first, then the pageserver, then the compute (its start-up needs
both), then the workload.  After the calm phase the workload is stopped, the last compute
is killed with -9, and a new compute reads the tables back:

1. every acknowledged transaction is in both tables, no transaction is in only one of them,
   nothing present was never invoked, every row is as written, and each client's counter
   equals its rows (impl/sqlload.py `verify_sql`); transactions whose outcome is unknown
   may be present or absent, and are counted both ways, per SQLSTATE;
2. commit made progress in the calm phase;
3. the merged traces of every process (each compute's proposer) are a behaviour of the spec.
"""

from __future__ import annotations

import random
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from conformance.replay import check_run
from impl.cluster import LOAD_NODE, PAGESERVER, Cluster, ClusterConfig, ClusterError, free_ports
from impl.load import read_history, verify_history
from impl.pgclient import PgError
from impl.sqlload import NO_OUTCOME, SQL_HISTORY, SqlVerdict, Tables, read_sql_history, read_tables, verify_sql

__all__ = ["SQL_FAULTS", "ChaosOptions", "ChaosReport", "SqlChaosReport", "run_chaos", "run_sql_chaos"]

# The SQL workload's node name (its pid file and log).
SQL_LOAD_NODE = "sqlload"
# The SQL run's faults and their weights (module docstring).
SQL_FAULTS = {
    "kill_compute": 3,
    "pause_compute": 1,
    "takeover": 1,
    "kill_acceptor": 3,
    "pause_acceptor": 1,
    "kill_all_acceptors": 1,
    "kill_pageserver": 2,
    "pause_pageserver": 1,
    "kill_compute_and_acceptor": 1,
    "kill_workload": 1,
}
# Tries to start a compute before the runner goes on without one (the next heal tries again).
COMPUTE_START_TRIES = 3
# How often the runner looks whether the compute is still running, between faults.
COMPUTE_POLL = 0.2
# How long a compute may hold its port after it was replaced before it is killed (a deposed
# compute exits by itself about a second after it learns it: impl/compute.py rule 5).
PORT_FREE_TIMEOUT = 5.0


@attrs.frozen
class ChaosOptions:
    """How long and how hard.

    Attributes:
        seconds: the fault phase's length.
        seed: chooses the faults and their timing.
        acceptors, clients: the cluster and its load.
        calm: the fault-free phase at the end, which must commit records.
        pause: seconds between faults are drawn from [pause/2, pause*1.5].
    """

    seconds: float
    seed: int = 0
    acceptors: int = 3
    clients: int = 4
    calm: float = 5.0
    pause: float = 1.0


@attrs.define
class ChaosReport:
    """What happened and what the checks found (printed by `paxwal chaos`)."""

    faults: dict[str, int] = attrs.field(factory=dict)
    restarts: int = 0
    acked: int = 0
    lost: int = 0
    overlapping: int = 0
    unknown: int = 0
    failed: int = 0
    calm_acked: int = 0
    trace_verdict: str = ""
    trace_events: int = 0
    divergence: str = ""
    lost_examples: list[str] = attrs.field(factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.overlapping == 0 and self.calm_acked > 0 and self.trace_verdict == "accepted"

    def lines(self) -> list[str]:
        faults = ", ".join(f"{name} {count}" for name, count in sorted(self.faults.items())) or "none"
        out = [
            f"faults: {faults}; restarts {self.restarts}",
            f"records acknowledged {self.acked:,}, lost {self.lost} (must be 0), sharing an LSN {self.overlapping} (must be 0);"
            f" outcome unknown {self.unknown:,}, failed before written {self.failed:,}",
            f"commit progress after the faults: {self.calm_acked:,} records acknowledged in the calm phase (must be > 0)",
            f"traces: {self.trace_verdict} ({self.trace_events:,} events)",
        ]
        out += [f"  lost: {example}" for example in self.lost_examples]
        if self.divergence:
            out.append(self.divergence)
        return out


def _acks(cluster: Cluster) -> int:
    if not cluster.history_file.exists():
        return 0
    return sum(1 for op in read_history(cluster.history_file) if op["op"] == "ack")


class _Nemesis:
    """The fault schedule against one cluster (see the module docstring)."""

    def __init__(self, cluster: Cluster, config: ClusterConfig, options: ChaosOptions,
                 say: Callable[[str], None]) -> None:
        self.cluster = cluster
        self.config = config
        self.options = options
        self.rng = random.Random(options.seed)
        self.say = say
        self.report = ChaosReport()
        self.minority = (len(config.acceptors) - 1) // 2

    def load_command(self) -> list[str]:
        o = self.options
        return [sys.executable, "-m", "impl.cli", "load", "--dir", str(self.cluster.dir), "--name", LOAD_NODE,
                "--clients", str(o.clients), "--seconds", "inf", "--progress-every", "10"]

    def start_load(self) -> None:
        self.cluster.spawn(LOAD_NODE, self.load_command())

    def _count(self, fault: str) -> None:
        self.report.faults[fault] = self.report.faults.get(fault, 0) + 1

    def _wait(self, low: float, high: float) -> None:
        time.sleep(self.rng.uniform(low, high))

    def _restart(self, nodes: list[str]) -> None:
        for node in nodes:
            self.cluster.start_node(node, self.config)
            self.report.restarts += 1

    def step(self) -> None:
        """One fault, held for a while, then healed."""
        acceptors = list(self.config.acceptors)
        fault = self.rng.choices(
            ["kill_acceptor", "pause_acceptor", "kill_all_acceptors", "kill_proposer", "pause_proposer", "kill_both"],
            weights=[4, 2, 1, 2, 1, 1],
        )[0]
        self._count(fault)
        victims = self.rng.sample(acceptors, self.minority) if self.minority else []
        if fault == "kill_acceptor" and victims:
            self.say(f"kill -9 {', '.join(victims)}")
            for node in victims:
                self.cluster.signal(node, signal.SIGKILL)
            self._wait(0.2, 2.0)
            self._restart(victims)
        elif fault == "pause_acceptor" and victims:
            self.say(f"SIGSTOP {', '.join(victims)}")
            for node in victims:
                self.cluster.signal(node, signal.SIGSTOP)
            self._wait(0.2, 2.0)
            for node in victims:
                self.cluster.signal(node, signal.SIGCONT)
        elif fault == "kill_all_acceptors":
            self.say("kill -9 every acceptor")
            for node in acceptors:
                self.cluster.signal(node, signal.SIGKILL)
            self._wait(0.2, 1.0)
            self._restart(acceptors)
        elif fault == "kill_proposer":
            self.say(f"kill -9 {LOAD_NODE}")
            self.cluster.signal(LOAD_NODE, signal.SIGKILL)
            self._wait(0.1, 1.0)
            self.start_load()
            self.report.restarts += 1
        elif fault == "pause_proposer":
            self.say(f"SIGSTOP {LOAD_NODE}")
            self.cluster.signal(LOAD_NODE, signal.SIGSTOP)
            self._wait(0.2, 1.5)
            self.cluster.signal(LOAD_NODE, signal.SIGCONT)
        elif fault == "kill_both" and victims:
            self.say(f"kill -9 {LOAD_NODE} and {', '.join(victims)}")
            self.cluster.signal(LOAD_NODE, signal.SIGKILL)
            for node in victims:
                self.cluster.signal(node, signal.SIGKILL)
            self._wait(0.2, 1.5)
            self._restart(victims)
            self.start_load()
            self.report.restarts += 1

    def heal(self) -> None:
        """Every process running and none paused."""
        for node in [*self.config.acceptors, LOAD_NODE]:
            self.cluster.signal(node, signal.SIGCONT)
        for node in self.config.acceptors:
            if self.cluster.pid(node) is None:
                self._restart([node])
        if self.cluster.pid(LOAD_NODE) is None:
            self.start_load()


def run_chaos(directory: Path, options: ChaosOptions, say: Callable[[str], None] = print) -> ChaosReport:
    """Run the chaos scenario in `directory` (which must not hold a cluster) and check it."""
    cluster = Cluster(directory)
    config, _ = cluster.up(options.acceptors)
    nemesis = _Nemesis(cluster, config, options, say)
    report = nemesis.report
    try:
        nemesis.start_load()
        began = time.monotonic()
        while time.monotonic() - began < options.seconds:
            nemesis._wait(options.pause / 2, options.pause * 1.5)
            nemesis.step()
            elapsed = time.monotonic() - began
            say(f"{elapsed:5.0f} s: {_acks(cluster):,} records acknowledged so far")
        nemesis.heal()
        before = _acks(cluster)
        say(f"faults over; calm for {options.calm:.0f} s")
        time.sleep(options.calm)
        report.calm_acked = _acks(cluster) - before
    finally:
        cluster.stop(LOAD_NODE)
        cluster.down()
    verdict = verify_history(cluster)
    report.acked, report.lost, report.overlapping = verdict.acked, len(verdict.lost), len(verdict.overlapping)
    report.unknown, report.failed = verdict.unknown, verdict.failed
    report.lost_examples = [f"{key} ending at {lsn}, held by {holders or 'none'}" for key, lsn, holders in verdict.lost[:5]]
    result = check_run([cluster.timeline_run_dir("main")])  # the load writes main
    report.trace_verdict = result.verdict
    report.trace_events = result.events
    if result.divergence is not None:
        report.divergence = result.divergence.report()
    return report


# ---------------------------------------------------------------------------------------
# SQL computes (the module docstring's second part)
# ---------------------------------------------------------------------------------------


@attrs.define
class SqlChaosReport:
    """What happened and what the checks found in a SQL run (printed by `paxwal chaos --sql`)."""

    faults: dict[str, int] = attrs.field(factory=dict)
    restarts: int = 0
    computes: list[str] = attrs.field(factory=list)
    start_seconds: list[float] = attrs.field(factory=list)
    start_failures: int = 0
    self_stopped: int = 0
    calm_acked: int = 0
    verdict: SqlVerdict | None = None
    read_from: str = ""
    read_error: str = ""
    rows: tuple[int, int] = (0, 0)
    trace_verdict: str = ""
    trace_events: int = 0
    divergence: str = ""

    @property
    def ok(self) -> bool:
        return (self.verdict is not None and self.verdict.ok and self.calm_acked > 0
                and self.trace_verdict == "accepted")

    def lines(self) -> list[str]:
        faults = ", ".join(f"{name} {count}" for name, count in sorted(self.faults.items())) or "none"
        starts = sorted(self.start_seconds)
        out = [f"faults: {faults}; restarts {self.restarts}"]
        if starts:
            out.append(f"computes started {len(self.computes)} ({self.computes[0]}..{self.computes[-1]}), start time"
                       f" median {starts[len(starts) // 2]:.1f} s, max {starts[-1]:.1f} s;"
                       f" stopped by themselves {self.self_stopped}; failed to start {self.start_failures}")
        v = self.verdict
        if v is None:
            out.append(f"transactions: not checked: {self.read_error or 'no tables read back'}")
        else:
            out.append(f"transactions acknowledged {v.acked:,}, lost {len(v.lost)} (must be 0), half-applied"
                       f" {len(v.half_applied)} (must be 0), phantom {len(v.phantom)} (must be 0), corrupt"
                       f" {len(v.corrupt)} (must be 0), counters off {len(v.counters_off)} (must be 0)")
            by_state = "; ".join(f"{state}: {present} present, {absent} absent"
                                 for state, (present, absent) in sorted(v.unknown.items(), key=lambda i: (i[0] == NO_OUTCOME, i[0])))
            out.append(f"outcome unknown {v.unknown_present + v.unknown_absent:,}: present {v.unknown_present:,},"
                       f" absent {v.unknown_absent:,}" + (f" ({by_state})" if by_state else ""))
        out.append(f"commit progress after the faults: {self.calm_acked:,} transactions acknowledged in the calm"
                   " phase (must be > 0)")
        if v is not None:
            out.append(f"read back on a new compute, {self.read_from}: {self.rows[0]:,} rows in a, {self.rows[1]:,} in b")
        out.append(f"traces: {self.trace_verdict} ({self.trace_events:,} events)")
        if v is not None:
            for name, keys in (("lost", v.lost), ("half-applied", v.half_applied), ("phantom", v.phantom),
                               ("corrupt", v.corrupt), ("counter off", v.counters_off)):
                out += [f"  {name}: {key}" for key in keys[:5]]
        if self.divergence:
            out.append(self.divergence)
        return out


class _AckCounter:
    """Acks in the SQL history so far, counted from where the last call stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.count = 0

    def __call__(self) -> int:
        try:
            with open(self.path, "rb") as file:
                file.seek(self.offset)
                data = file.read()
        except FileNotFoundError:
            return self.count
        whole = data[: data.rfind(b"\n") + 1]
        self.offset += len(whole)
        self.count += whole.count(b'"op": "ack"')
        return self.count


class _SqlNemesis(_Nemesis):
    """The fault schedule against a cluster serving SQL computes (module docstring)."""

    def __init__(self, cluster: Cluster, config: ClusterConfig, options: ChaosOptions,
                 say: Callable[[str], None]) -> None:
        super().__init__(cluster, config, options, say)
        self.report = SqlChaosReport()  # type: ignore[assignment]
        self.ports = free_ports(2)  # the compute's port, and the one a takeover uses
        self.port = self.ports[0]
        self.compute: str | None = None
        self.owners: dict[int, str] = {}  # port -> the last compute started on it
        self.killed: set[str] = set()  # the computes the runner killed
        self.numbered = 0
        self.history = cluster.timeline_run_dir("main") / SQL_HISTORY
        self.acks = _AckCounter(self.history)

    def load_command(self) -> list[str]:
        ports = [arg for port in self.ports for arg in ("--port", str(port))]
        return [sys.executable, "-m", "impl.cli", "sqlload", "--dir", str(self.cluster.dir), "--name", SQL_LOAD_NODE,
                *ports, "--clients", str(self.options.clients), "--seconds", "inf", "--progress-every", "10"]

    def start_load(self) -> None:
        self.cluster.spawn(SQL_LOAD_NODE, self.load_command())

    # -- computes -------------------------------------------------------------------------

    def _free_port(self, port: int) -> None:
        """Wait until the last compute on `port` is gone (a deposed one exits about a second
        after it stops), killing it after PORT_FREE_TIMEOUT.

        Cluster.start_compute takes any answer on the port for the new compute's: a new
        compute whose port is still held fails to bind, but only after its election has
        deposed the compute serving, so it must not be started before the port is free.
        """
        owner = self.owners.get(port)
        if owner is not None and not self._gone(owner, PORT_FREE_TIMEOUT):
            self.say(f"{owner} still holds port {port} {PORT_FREE_TIMEOUT:.0f} s on: kill -9 {owner}")
            self.cluster.signal(owner, signal.SIGKILL)
            self._gone(owner, PORT_FREE_TIMEOUT)

    def _gone(self, node: str, timeout: float) -> bool:
        """Wait up to `timeout` for node's process to be gone; whether it is."""
        deadline = time.monotonic() + timeout
        while self.cluster.pid(node) is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def start_compute(self, port: int) -> bool:
        """Start the next compute on `port`; False (said, counted) if it did not come up."""
        self._free_port(port)
        self.numbered += 1
        name = f"c{self.numbered}"
        began = time.monotonic()
        try:
            self.cluster.start_compute(name, "main", port=port, wal_start=self.config.wal_start)
        except ClusterError as exc:
            self.say(f"compute {name} did not start: {exc}")
            self.report.start_failures += 1
            self.cluster.signal(name, signal.SIGKILL)  # start_compute kills it only on its timeout
            return False
        self.report.start_seconds.append(time.monotonic() - began)
        self.report.computes.append(name)
        self.owners[port] = name
        self.compute, self.port = name, port
        return True

    def compute_running(self) -> bool:
        return self.compute is not None and self.cluster.pid(self.compute) is not None

    def ensure_compute(self) -> bool:
        """A compute running: the current one, or a new one on its port (a few tries)."""
        if self.compute_running():
            return True
        if self.compute is not None:
            if self.compute in self.killed:
                self.say(f"{self.compute} is gone; starting another on port {self.port}")
            else:
                self.say(f"{self.compute} stopped by itself ({self.cluster.log_tail(self.compute).split(' | ')[-1]});"
                         f" starting another on port {self.port}")
                self.report.self_stopped += 1
            self.report.restarts += 1
        for attempt in range(COMPUTE_START_TRIES):
            if self.start_compute(self.port):
                return True
            time.sleep(0.5 * (attempt + 1))
        return False

    def idle(self, seconds: float) -> None:
        """Wait `seconds`, replacing the compute as soon as it is gone (it fences itself when
        its proposer stalls: impl/compute.py rule 5)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(COMPUTE_POLL, left))
            if not self.compute_running():
                self.ensure_compute()

    # -- faults ---------------------------------------------------------------------------

    def _signal_all(self, nodes: list[str], signum: int) -> None:
        for node in nodes:
            self.cluster.signal(node, signum)
            if signum == signal.SIGKILL and node == self.compute:
                self.killed.add(node)

    def step(self) -> None:
        """One fault, held for a while, then healed (and everything running again)."""
        acceptors = list(self.config.acceptors)
        fault = self.rng.choices(list(SQL_FAULTS), weights=list(SQL_FAULTS.values()))[0]
        victims = self.rng.sample(acceptors, self.minority)
        compute = self.compute or "-"
        self._count(fault)
        if fault == "kill_compute":
            self.say(f"kill -9 {compute}")
            self._signal_all([compute], signal.SIGKILL)
            self._wait(0.1, 1.0)
        elif fault == "pause_compute":
            self.say(f"SIGSTOP {compute}")
            self.cluster.signal(compute, signal.SIGSTOP)
            self._wait(0.2, 1.5)
            self.cluster.signal(compute, signal.SIGCONT)
        elif fault == "takeover":
            other = next(port for port in self.ports if port != self.port)
            self.say(f"takeover: a new compute on port {other} while {compute} serves on {self.port}")
            self.start_compute(other)
        elif fault in ("kill_acceptor", "kill_compute_and_acceptor"):
            also = f"{compute} and " if fault == "kill_compute_and_acceptor" else ""
            self.say(f"kill -9 {also}{', '.join(victims)}")
            self._signal_all(victims + ([compute] if also else []), signal.SIGKILL)
            self._wait(0.2, 2.0)
            self._restart(victims)
        elif fault == "pause_acceptor":
            self.say(f"SIGSTOP {', '.join(victims)}")
            self._signal_all(victims, signal.SIGSTOP)
            self._wait(0.2, 2.0)
            self._signal_all(victims, signal.SIGCONT)
        elif fault == "kill_all_acceptors":
            self.say("kill -9 every acceptor")
            self._signal_all(acceptors, signal.SIGKILL)
            self._wait(0.5, 4.0)  # often past the compute's stall timeout: it must stop (rule 5)
            self._restart(acceptors)
        elif fault == "kill_pageserver":
            self.say(f"kill -9 {PAGESERVER}")
            self.cluster.signal(PAGESERVER, signal.SIGKILL)
            self._wait(0.2, 2.0)
            self._restart([PAGESERVER])
        elif fault == "pause_pageserver":
            self.say(f"SIGSTOP {PAGESERVER}")
            self.cluster.signal(PAGESERVER, signal.SIGSTOP)
            self._wait(0.2, 1.5)
            self.cluster.signal(PAGESERVER, signal.SIGCONT)
        elif fault == "kill_workload":
            self.say(f"kill -9 {SQL_LOAD_NODE}")
            self.cluster.signal(SQL_LOAD_NODE, signal.SIGKILL)
            self._wait(0.1, 1.0)
        self.heal()

    def heal(self) -> None:
        """Every process running and none paused: acceptors, then the pageserver, then the
        compute (its start-up needs both), then the workload."""
        nodes = [*self.config.acceptors, PAGESERVER, *([self.compute] if self.compute else []), SQL_LOAD_NODE]
        self._signal_all(nodes, signal.SIGCONT)
        self._restart([node for node in [*self.config.acceptors, PAGESERVER] if self.cluster.pid(node) is None])
        self.ensure_compute()
        if self.cluster.pid(SQL_LOAD_NODE) is None:
            self.start_load()
            self.report.restarts += 1

    def read_back(self) -> Tables:
        """Kill -9 the compute and read the tables on a new one (a few tries).

        Raises:
            PgError or ClusterError: no compute could read them.
        """
        if self.compute_running():
            assert self.compute is not None
            self.say(f"kill -9 {self.compute}; reading the tables back on a new compute")
            self._signal_all([self.compute], signal.SIGKILL)
        self.compute = None
        for attempt in range(COMPUTE_START_TRIES):
            if not self.ensure_compute():
                raise ClusterError(f"no compute started to read the tables back ({COMPUTE_START_TRIES} tries)")
            try:
                return read_tables(self.port, self.config.compute_password)
            except PgError as exc:
                self.say(f"reading the tables on {self.compute} failed: {exc}")
                if attempt == COMPUTE_START_TRIES - 1:
                    raise
                self._signal_all([self.compute or "-"], signal.SIGKILL)
                time.sleep(0.5)
        raise AssertionError("unreachable")


def run_sql_chaos(directory: Path, options: ChaosOptions, say: Callable[[str], None] = print) -> SqlChaosReport:
    """Run the SQL chaos scenario in `directory` (which must not hold a cluster) and check
    it (module docstring, second part)."""
    cluster = Cluster(directory)
    config, _ = cluster.up(options.acceptors)
    nemesis = _SqlNemesis(cluster, config, options, say)
    report: SqlChaosReport = nemesis.report  # type: ignore[assignment]
    tables: Tables | None = None
    try:
        if not nemesis.ensure_compute():
            raise ClusterError(f"the first compute did not start: {cluster.log_tail('c1')}")
        nemesis.start_load()
        began = time.monotonic()
        while time.monotonic() - began < options.seconds:
            nemesis.idle(nemesis.rng.uniform(options.pause / 2, options.pause * 1.5))
            nemesis.step()
            say(f"{time.monotonic() - began:5.0f} s: {nemesis.acks():,} transactions acknowledged so far"
                f" (compute {nemesis.compute})")
        before = nemesis.acks()
        say(f"faults over; calm for {options.calm:.0f} s")
        nemesis.idle(options.calm)
        report.calm_acked = nemesis.acks() - before
        say(f"stopping the workload: {cluster.stop(SQL_LOAD_NODE)}")
        try:
            tables = nemesis.read_back()
        except (PgError, ClusterError) as exc:
            report.read_error = str(exc)
    finally:
        cluster.stop(SQL_LOAD_NODE)
        cluster.down()
    if tables is not None:
        report.verdict = verify_sql(list(read_sql_history(nemesis.history)), tables)
        report.read_from = f"{nemesis.compute} (term {tables.term}, LSN {tables.lsn})"
        report.rows = (len(tables.a), len(tables.b))
    result = check_run([cluster.timeline_run_dir("main")])  # every compute's proposer writes main
    report.trace_verdict = result.verdict
    report.trace_events = result.events
    if result.divergence is not None:
        report.divergence = result.divergence.report()
    return report
