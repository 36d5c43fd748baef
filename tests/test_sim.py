"""The deterministic simulator (impl/sim.py): reproducibility, its oracle, fault schedules.

The built-in checks are the second oracle beside the spec: these tests show they pass on
the real cores and that they catch bugs, by planting the spec's mutants in the cores.
"""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from impl import acceptor as acceptor_module
from impl import proposer as proposer_module
from impl.scenario import run as run_scenario
from impl.sim import Sim, SimOptions, run_seed

ROOT = Path(__file__).resolve().parent.parent


def test_same_seed_gives_identical_run_directories(tmp_path):
    """A seed determines the whole run: two runs write byte-identical traces and run.json."""
    run_seed(11, steps=1500, out=tmp_path / "a")
    run_seed(11, steps=1500, out=tmp_path / "b")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert {"all.ndjson", "run.json", "a1.ndjson", "p1.ndjson", "net.ndjson"} <= set(names)
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", names, shallow=False)
    assert (mismatch, errors) == ([], [])
    assert (tmp_path / "a" / "all.ndjson").stat().st_size > 10_000


def test_different_seeds_give_different_runs():
    assert run_seed(1, steps=800).events != run_seed(2, steps=800).events


def test_options_expand_from_the_seed_and_are_printed():
    options = SimOptions.from_seed(5)
    assert options == SimOptions.from_seed(5)
    line = options.describe()
    for field in ("seed=5", "acceptors=", "proposers=", "loss=", "crash_every="):
        assert field in line
    spread = {SimOptions.from_seed(s).proposers for s in range(40)}
    assert spread == {1, 2, 3}  # competing proposers are part of the campaign


def test_run_json_holds_the_client_history(tmp_path):
    result = run_seed(3, steps=1500, out=tmp_path)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["seed"] == 3 and run["result"]["ok"] is True
    statuses = {op["status"] for op in run["history"]}
    assert "ok" in statuses and statuses <= {"ok", "unknown", "pending"}
    assert sum(op["status"] == "ok" for op in run["history"]) == result.acknowledged > 0


def test_a_campaign_of_seeds_passes_every_check():
    """Safety and liveness on 40 varied seeds (`paxwal sim --seeds 0:500` does more)."""
    failures = [(r.seed, r.violations[:1]) for r in (run_seed(s, steps=1500, trace=False) for s in range(40)) if not r.ok]
    assert failures == []


def test_every_run_elects_commits_and_acknowledges():
    result = run_seed(4, steps=2000, trace=False)
    assert result.ok and result.elections >= 1 and result.commit_lsn > 0 and result.acknowledged > 0


# ---------------------------------------------------------------------------------------
# The oracle catches planted bugs (the spec's mutants, in the cores)
# ---------------------------------------------------------------------------------------


def _first_failure(seeds: range, steps: int = 2000) -> str | None:
    for seed in seeds:
        result = run_seed(seed, steps=steps, trace=False)
        if not result.ok:
            return result.violations[0]
    return None


def _figure8_loss() -> Sim:
    """Raft's figure 8 on the manual simulator: the figure8 scenario up to the moment x sits
    on a quorum below term 3's start, then the continuation that loses x if it was committed:
    p3 and a1 crash, and p1 wins term 4 with a2 (last_log_term 1) and a3 (last_log_term 2),
    so a3's WAL is the donor and x is cut."""
    text = (ROOT / "tests" / "scenarios" / "figure8.txt").read_text()
    cut = text.index("# 4. a2 reaches the start of term 3")
    continuation = "\n".join(
        f"{command}\n----\n"
        for command in (
            "crash p3", "crash a1", "drop p3->*", "drop *->p3", "start p1", "stabilize", "append p1 w", "stabilize",
        )
    )
    _, _, sim = run_scenario(text[:cut] + continuation, rewrite=True)
    assert sim is not None and sim.proposers["p1"].core.term == 4
    sim.final_checks()
    return sim


def test_figure8_schedule_loses_nothing_with_commit_allowed():
    sim = _figure8_loss()
    assert sim.violations == []
    assert sim.committed.startswith(b"z")  # x was never committed, so cutting it lost nothing


@pytest.mark.trace_rejected
def test_oracle_catches_commit_ignoring_term_start(monkeypatch):
    """Mutant CommitIgnoringTermStart (Raft figure 8): counting acks below the term start
    commits x, which the term-4 leader then cuts: the committed log changes."""
    original = proposer_module.ProposerCore.collect_ack

    def collect_ack(self, acceptor, msg, meta):
        history = self.history
        if self.phase == "leader":  # pretend the term starts at the WAL's start
            self.history = history[:-1] + (history[-1].__class__(term=history[-1].term, lsn=self.wal_start),)
        try:
            return original(self, acceptor, msg, meta)
        finally:
            if self.phase == "leader" and self.history[-1].term == history[-1].term:
                self.history = history

    monkeypatch.setattr(proposer_module.ProposerCore, "collect_ack", collect_ack)
    violations = _figure8_loss().violations
    assert any("committed WAL changed" in v for v in violations), violations


def test_oracle_catches_two_votes_in_a_term(monkeypatch):
    """Mutant VoteTwiceAllowed: an acceptor votes again in the term it promised."""
    original = acceptor_module.AcceptorCore.vote

    def vote(self, peer, msg, meta):
        if msg.term == self.term and msg.term > 0:
            self.term -= 1  # forget the promise just long enough to vote again
        return original(self, peer, msg, meta)

    monkeypatch.setattr(acceptor_module.AcceptorCore, "vote", vote)
    violation = _first_failure(range(300))
    assert violation is not None


def test_oracle_catches_ack_before_flush(monkeypatch):
    """Mutant AckOnWriteBeforeFlush: the ack leaves before the fsync; a crash loses acked WAL."""

    def accept_append(self, peer, msg, meta, original=acceptor_module.AcceptorCore.accept_append):
        effects = original(self, peer, msg, meta)
        if self.write_lsn > self.flush_lsn:
            self.flush_lsn = self.write_lsn  # claim it durable now; the crash will say otherwise
            return effects + (self._ack(self._leader),)
        return effects

    monkeypatch.setattr(acceptor_module.AcceptorCore, "accept_append", accept_append)
    violation = _first_failure(range(300))
    assert violation is not None


# ---------------------------------------------------------------------------------------
# hypothesis drives fault schedules on the manual simulator, and shrinks failures
# ---------------------------------------------------------------------------------------

NODES = ("a1", "a2", "a3", "p1", "p2")


class FaultSchedule(RuleBasedStateMachine):
    """One rule per fault or step, on a 3-acceptor, 2-proposer cluster in manual mode.

    The invariant is the simulator's own oracle: no violation, ever.  A failing schedule
    is shrunk by hypothesis to a short program of these rules.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sim = Sim(SimOptions(seed=0, acceptors=3, proposers=2, max_send=8), manual=True, trace=False)
        self.sim.start()

    @precondition(lambda self: self.sim.in_flight)
    @rule(index=st.integers(min_value=0, max_value=50), keep=st.booleans())
    def deliver(self, index, keep):
        env = self.sim.in_flight[index % len(self.sim.in_flight)]
        if not keep:
            self.sim.in_flight.remove(env)
        self.sim._deliver(env)

    @precondition(lambda self: self.sim.in_flight)
    @rule(index=st.integers(min_value=0, max_value=50))
    def drop(self, index):
        self.sim.in_flight.pop(index % len(self.sim.in_flight))

    @rule(count=st.integers(min_value=1, max_value=20))
    def progress(self, count):
        """Let the cluster run a little: the oldest messages arrive, every fsync completes."""
        for _ in range(count):
            pending = [a for a, ops in self.sim.disk_pending.items() if ops]
            if pending:
                self.sim.complete(pending[0])
            elif self.sim.in_flight:
                self.sim._deliver(self.sim.in_flight.pop(0))

    @rule(acceptor=st.sampled_from(("a1", "a2", "a3")))
    def complete(self, acceptor):
        if self.sim.disk_pending[acceptor]:
            self.sim.complete(acceptor)

    @rule(node=st.sampled_from(NODES))
    def crash(self, node):
        self.sim.crash(node)

    @rule(node=st.sampled_from(NODES))
    def restart(self, node):
        self.sim.restart(node)

    @rule(proposer=st.sampled_from(("p1", "p2")), timer=st.sampled_from(("election", "heartbeat")))
    def tick(self, proposer, timer):
        if self.sim.is_up(proposer):
            self.sim.tick(proposer, timer)

    @rule(proposer=st.sampled_from(("p1", "p2")), size=st.integers(min_value=1, max_value=12))
    def append(self, proposer, size):
        self.sim.append(proposer, bytes([97 + self.sim.steps % 26]) * size)
        self.sim.steps += 1

    @invariant()
    def no_violation(self):
        assert self.sim.violations == []

    def teardown(self):
        if not self.sim.violations:  # else the invariant has failed already
            self.sim.final_checks()
            assert self.sim.violations == []


TestFaultSchedule = FaultSchedule.TestCase
TestFaultSchedule.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_fault_schedules_find_and_shrink_a_planted_bug(monkeypatch):
    """With BadQuorum planted (one acceptor of three is a 'quorum'), hypothesis finds a
    schedule that breaks a check and shrinks it to a short one."""
    monkeypatch.setattr(proposer_module.ProposerCore, "quorum", property(lambda self: 1))
    with pytest.raises(AssertionError) as info:
        run_state_machine_as_test(
            FaultSchedule,
            settings=settings(
                max_examples=300, stateful_step_count=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow], print_blob=False,
                report_multiple_bugs=False,
            ),
        )
    assert "ElectionSafety" in str(info.value) or "CommittedNeverLost" in str(info.value)
