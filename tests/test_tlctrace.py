"""TLC trace validation (conformance/tlctrace.py, spec/TraceProposerAcceptor.tla).

The two checkers must agree: TLC accepts every run under traces/accepted/ and rejects every
run under traces/rejected/ at the event its .reason names, which is where the Python replay
rejects it too, after as many explained events.  And random walks of the Python machine are
behaviours TLC reproduces state by state (DESIGN §5: machine.py is tied to the TLA+ text in
both directions); a walk with one state changed stops exactly there.

Tests marked `tlc` run TLC; the whole corpus takes about three minutes on two cores.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from pathlib import Path

import pytest

from conformance import machine as M
from conformance import tlctrace
from conformance.replay import Event, check_run
from conformance.seq import Terms
from conformance.tlc import parse_value
from impl.cli import main

ROOT = Path(__file__).resolve().parent.parent
ACCEPTED = sorted(p for p in (ROOT / "traces" / "accepted").glob("*/*") if p.is_dir())
REJECTED = sorted(p for p in (ROOT / "traces" / "rejected").iterdir() if p.is_dir())
ELECTION = ROOT / "traces" / "accepted" / "scenarios" / "election"


def _event(line: int, node: str, action: str, lc: int, sent=(), recv=None, args=None) -> Event:
    data = {"lc": lc, "node": node, "action": action, "args": args or {}, "state": {}, "sent": list(sent), "recv": recv}
    return Event(data, f"{node}.ndjson", line)


def _sent(id: str, to: str, msg: dict) -> dict:
    return {"id": id, "to": to, "msg": msg}


GREETING = {"type": "Greeting", "from": "p1"}


# ---------------------------------------------------------------------------------------------
# The generator (no TLC)
# ---------------------------------------------------------------------------------------------


def test_format_error_names_the_first_event_breaking_a_trace_rule():
    answer = _sent("a1:1", "p1", {"type": "GreetingResponse", "from": "a1", "to": "p1", "term": 0})
    ok = [
        _event(1, "a1", "AnswerGreeting", 1, [answer], args={"from": "p1"}),
        _event(1, "p1", "CollectTerm", 2, recv="a1:1"),
    ]
    assert tlctrace.format_error(ok) is None
    stale_clock = [*ok, _event(2, "p1", "StartCampaign", 2)]
    assert tlctrace.format_error(stale_clock) == (2, "its Lamport clock 2 does not exceed p1's previous 2")
    wrong_addressee = [ok[0], _event(1, "p2", "CollectTerm", 2, recv="a1:1")]
    assert tlctrace.format_error(wrong_addressee) == (1, "it consumes message a1:1, which was sent to p1")
    reused_id = [ok[0], _event(2, "a1", "AnswerGreeting", 2, [answer], args={"from": "p1"})]
    assert tlctrace.format_error(reused_id) == (1, "it sends message id a1:1, which an earlier event used")


def _trace(module: str) -> tuple:
    """The Trace sequence of a generated TraceData module, parsed back."""
    text = re.search(r"^Trace == (<<.*?^>>)", module, re.S | re.M).group(1)
    return parse_value(text)


def test_trace_data_undoes_the_abstraction():
    request = {"type": "AppendRequest", "term": 1, "lsn": 1, "entries": [[1, 3]], "commit": 1}
    events = [
        _event(1, "a1", "AnswerGreeting", 1, args={"from": "p1"}),  # recv null: p1's Greeting
        _event(1, "p1", "SendAppend", 2, [_sent("p1:1", "a1", request)], args={"l": 1, "entries": 3}),
        _event(1, "net", "LoseMessage", 3, recv="p1:1"),
        _event(2, "a1", "AcceptAppend", 3, recv="p1:1"),
        _event(3, "a1", "Vote", 4, recv="p9:9"),  # never sent: consumes nothing
    ]
    module, kept = tlctrace.trace_data(events, M.Model(("p1",), ("a1",)), len(events))
    assert kept == [0, 1, 3, 4]
    answer, send, accept, vote = _trace(module)
    assert answer["recv"] == (GREETING,)
    assert send["args"] == {"l": 1, "entries": 3} and len(send["sent"]) == 3
    assert [m["lsn"] for m in accept["recv"]] == [1, 2, 3]
    assert all(m["entries"] == (1,) for m in accept["recv"])
    assert vote["recv"] == ()
    assert 'TraceProposers == {"p1"}' in module and "Walk == <<\n>>" in module


# ---------------------------------------------------------------------------------------------
# The corpus through TLC
# ---------------------------------------------------------------------------------------------


@pytest.mark.tlc
@pytest.mark.parametrize("run", ACCEPTED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_tlc_accepts_every_accepted_run(run):
    verdict = tlctrace.check_run([run])
    assert verdict.verdict == "accepted", verdict.report()
    assert verdict.prefix == verdict.events and verdict.event is None
    assert verdict.states >= verdict.events // 2  # TLC took steps, one or more per event


@pytest.mark.tlc
@pytest.mark.parametrize("run", REJECTED, ids=lambda p: p.name)
def test_tlc_rejects_every_rejected_run_where_the_replay_does(run):
    expect = re.search(r"^expect: (\S+)$", (run.parent / f"{run.name}.reason").read_text(), re.M).group(1)
    verdict = tlctrace.check_run([run])
    replayed = check_run([run]).divergence
    assert verdict.verdict == "rejected"
    assert f"{Path(verdict.event.file).name}:{verdict.event.line}" == expect, verdict.report()
    assert verdict.event == replayed.event and verdict.prefix == replayed.accepted


@pytest.mark.tlc
def test_tlc_says_why_a_step_it_took_does_not_match_the_log():
    verdict = tlctrace.check_run([ROOT / "traces" / "rejected" / "commit-without-quorum"])
    assert verdict.reason == "the logged state differs from the spec's in prop_commit"
    verdict = tlctrace.check_run([ROOT / "traces" / "rejected" / "duplicated-flush"])
    assert verdict.reason.startswith("trace rule broken: its Lamport clock 19")


# ---------------------------------------------------------------------------------------------
# Walks of the Python machine through TLC
# ---------------------------------------------------------------------------------------------

WALK_MODEL = M.Model(("p1", "p2"), ("a1", "a2", "a3"))
FAULTS = {"LoseMessage", "RestartProposer", "RestartAcceptor"}


def random_walk(seed: int, steps: int = 60) -> tuple[list[M.State], set[str]]:
    """A behaviour of the machine: each step an enabled action, picked by name first so that
    the many message deliveries do not crowd out elections; faults are rare."""
    rng = random.Random(seed)
    s = M.init(WALK_MODEL)
    states, taken = [s], set()
    for _ in range(steps):
        by_name = defaultdict(list)
        for name, _args, t in M.successors(WALK_MODEL, s):
            by_name[name].append(t)
        names = sorted(n for n in by_name if n not in FAULTS or rng.random() < 0.05) or sorted(by_name)
        name = rng.choice(names)
        s = rng.choice(sorted(by_name[name], key=repr))  # msgs is a set: its order varies by process
        states.append(s)
        taken.add(name)
    return states, taken


@pytest.mark.tlc
def test_tlc_reproduces_random_walks_of_the_machine():
    covered = set()
    for seed in (1, 2, 3):
        states, taken = random_walk(seed)
        assert tlctrace.check_walk(WALK_MODEL, states) == len(states), f"seed {seed}"
        covered |= taken
    assert {"BecomeLeader", "NewEntry", "AcceptAppend", "CollectAck", "RestartAcceptor"} <= covered


@pytest.mark.tlc
def test_tlc_stops_a_walk_at_a_corrupted_state():
    states, _ = random_walk(2)
    k = 40
    bad = states[k].with_(committed_log=Terms((*states[k].committed_log, 99)))  # an entry no leader wrote
    assert tlctrace.check_walk(WALK_MODEL, [*states[:k], bad, *states[k + 1 :]]) == k
    assert tlctrace.check_walk(WALK_MODEL, [bad, *states[1:]]) == 0


# ---------------------------------------------------------------------------------------------
# paxwal check --tlc
# ---------------------------------------------------------------------------------------------


@pytest.mark.tlc
def test_check_tlc_exit_codes(capsys, tmp_path):
    assert main(["check", "--tlc", str(ELECTION)]) == 0
    assert capsys.readouterr().out.startswith("TLC: accepted, 32 events")
    assert main(["check", "--tlc", str(ROOT / "traces" / "rejected" / "leader-without-quorum")]) == 1
    out = capsys.readouterr().out
    assert "REJECTED at " in out and "leader-without-quorum/p1.ndjson:6 (after 11 explained events)" in out
    assert main(["check", "--tlc", str(tmp_path / "nope")]) == 2
    assert main(["--spec-dir", str(tmp_path), "check", "--tlc", str(ELECTION)]) == 2
