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
from impl.cluster import LOAD_NODE, Cluster, ClusterConfig
from impl.load import read_history, verify_history

__all__ = ["ChaosOptions", "ChaosReport", "run_chaos"]


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
