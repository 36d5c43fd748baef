"""conformance/machine.py is the spec: by hand-built steps, and mechanically against TLC.

Fast tests (no Java) compare the machine's Init, each action's guards and effects, and the
invariants with the TLA+ text, and replay the bounded models whose sizes TLC measured
(spec/models/manifest.json).  Tests marked ``tlc`` run TLC: on each model
``spec/models/machine_*.cfg`` its breadth-first search and the machine's (conformance/mc.py)
must agree on distinct states, generated states and depth; and behaviours TLC produces
(a counterexample to a probe invariant, a random simulation) must be behaviours of the
machine, step by step.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conformance import machine as M
from conformance import mc
from conformance.machine import Disabled, Model, State
from conformance.mutants import MODEL_MODULE
from conformance.seq import Terms
from conformance.tlc import Record, TraceState, run_tlc

SPEC = Path(__file__).resolve().parent.parent / "spec"
MODULE = SPEC / MODEL_MODULE
SPEC_TEXT = (SPEC / "ProposerAcceptor.tla").read_text()
MANIFEST = json.loads((SPEC / "models" / "manifest.json").read_text())
MACHINE_MODELS = sorted((SPEC / "models").glob("machine_*.cfg"))
# Fast enough (under ~2 s each) to replay in the fast suite against the recorded TLC counts.
CHEAP_MODELS = ["machine_p1_a1_t1_e0", "machine_p1_a2_t1_e2_steady", "machine_p1_a2_t2_e1_steady"]
# Same fingerprint polynomial each run (without VIEW and SYMMETRY the count does not need it,
# but a collision, however unlikely, then repeats identically).
TLC_ARGS = ("-fp", "0")

P3A = Model(proposers=("p1", "p2"), acceptors=("a1", "a2", "a3"))


def R(**fields) -> Record:
    return Record(fields)


def msg(type_: str, **fields) -> Record:
    """A message; `frm` stands for the field `from` (a Python keyword)."""
    if "frm" in fields:
        fields["from"] = fields.pop("frm")
    return Record(type=type_, **fields)


def H(*pairs: tuple[int, int]) -> tuple[Record, ...]:
    """A term history from (term, lsn) pairs."""
    return tuple(R(term=t, lsn=l) for t, l in pairs)


def at(f: Record, **changes) -> Record:
    """[f EXCEPT ![k] = v, ...] for node ids given as keywords."""
    items = dict(f.items())
    items.update(changes)
    return Record(items)


def definition(name: str) -> str:
    """The TLA+ text of operator `name`, whitespace collapsed."""
    match = re.search(rf"^{name}\b.*?==(.*?)(?=^\S)", SPEC_TEXT, re.M | re.S)
    assert match, name
    return " ".join(match.group(1).split())


def leader_state(model: Model = P3A) -> State:
    """p1 leader of term 1 with WAL <<1>> and votes of a1, a2; a1 and a2 took ProposerElected
    and hold the entry: a1 flushed it, a2 wrote it.  a3 never heard of term 1."""
    s = M.init(model)
    h1 = H((0, 1), (1, 1))
    return s.with_(
        prop_phase=at(s.prop_phase, p1="leader"),
        prop_term=at(s.prop_term, p1=1),
        prop_heard=at(s.prop_heard, p1=frozenset({"a1", "a2"})),
        prop_history=at(s.prop_history, p1=h1),
        prop_wal=at(s.prop_wal, p1=Terms([1])),
        acc_term=at(s.acc_term, a1=1, a2=1),
        acc_history=at(s.acc_history, a1=h1, a2=h1),
        acc_wal=at(s.acc_wal, a1=Terms([1]), a2=Terms([1])),
        acc_flush=at(s.acc_flush, a1=2),
        elections=frozenset({R(term=1, leader="p1", history=h1)}),
    )


# ---------------------------------------------------------------------------------------------
# Helpers, Init and Next
# ---------------------------------------------------------------------------------------------


def test_helpers_on_the_spec_examples():
    # TermAt's comment: <<[0,1],[1,1],[3,3]>> says positions 1 and 2 hold term 1, 3 on term 3.
    h = H((0, 1), (1, 1), (3, 3))
    assert [M.TermAt(h, l) for l in (1, 2, 3, 4)] == [1, 1, 3, 3]
    assert M.WalFromHistory(h, 5) == (1, 1, 3, 3)
    assert M.WalFromHistory(h, 1) == ()
    # HighestCommonPoint's comment: term 1 ends at 3 on ph's side, at 2 on ah's: 2.
    assert M.HighestCommonPoint(h, H((0, 1), (1, 1), (2, 2)), 4) == 2
    # The proposer's history extends the acceptor's: the point is the acceptor's flush_lsn.
    assert M.HighestCommonPoint(h, H((0, 1), (1, 1)), 3) == 3
    assert M.CommonPrefixLen(h, H((0, 1), (2, 1))) == 1
    assert M.BetterDonor(H((0, 1), (2, 1)), 1, H((0, 1), (1, 1)), 5)  # last term first
    assert not M.BetterDonor(H((0, 1), (1, 1)), 5, H((0, 1), (2, 1)), 1)
    assert M.BetterDonor(H((0, 1), (1, 1)), 3, H((0, 1), (1, 1)), 2)  # then flush_lsn
    assert not M.BetterDonor(H((0, 1), (1, 1)), 2, H((0, 1), (1, 1)), 2)
    assert M.IsQuorum(P3A, {"a1", "a2"}) and not M.IsQuorum(P3A, {"a3"})
    assert M.IsQuorum(Model(("p1",), ("a1", "a2")), {"a1", "a2"})
    assert not M.IsQuorum(Model(("p1",), ("a1", "a2")), {"a1"})  # n div 2 is not a majority
    assert M.QuorumFlush(P3A, R(a1=3, a2=2, a3=0)) == 2
    assert M.QuorumFlush(P3A, R(a1=3, a2=0, a3=0)) == 0


def test_init_is_the_spec_init():
    s = M.init(P3A)
    ps, accs = ("p1", "p2"), ("a1", "a2", "a3")
    assert s.prop_phase == {p: "greeting" for p in ps}
    assert s.prop_term == {p: 0 for p in ps}
    assert s.prop_heard == {p: frozenset() for p in ps}
    assert s.prop_history == {p: () for p in ps}
    assert s.prop_wal == {p: () for p in ps}
    assert s.prop_acks == {p: {a: 0 for a in accs} for p in ps}
    assert s.prop_commit == {p: 1 for p in ps}
    assert s.acc_term == {a: 0 for a in accs}
    assert s.acc_history == {a: H((0, 1)) for a in accs}
    assert s.acc_wal == {a: () for a in accs}
    assert s.acc_flush == {a: 1 for a in accs}
    assert s.acc_commit == {a: 1 for a in accs}
    assert s.msgs == {msg("Greeting", frm="p1"), msg("Greeting", frm="p2")}
    assert s.committed_log == ()
    assert s.elections == frozenset()
    assert M.invariants(P3A, s) == []


def test_actions_are_the_disjuncts_of_next():
    body = definition("Next")
    applied = set(re.findall(r"\b([A-Z]\w*)\(", body)) - {"Len"}  # Sequences
    assert applied == set(M.ACTIONS)


# ---------------------------------------------------------------------------------------------
# Proposer actions
# ---------------------------------------------------------------------------------------------


def test_restart_proposer_forgets_everything_and_drops_its_replies():
    s = leader_state()
    to_p1 = msg("VoteResponse", frm="a1", to="p1", term=1, history=H((0, 1)), flush=1)
    to_p2 = msg("GreetingResponse", frm="a1", to="p2", term=1)
    request = msg("AppendRequest", term=1, lsn=1, entries=(1,), commit=1)
    s = s.with_(msgs=frozenset({to_p1, to_p2, request}))
    t = M.RestartProposer(P3A, s, "p1")
    assert t.prop_phase["p1"] == "greeting" and t.prop_term["p1"] == 0
    assert t.prop_heard["p1"] == frozenset() and t.prop_history["p1"] == () and t.prop_wal["p1"] == ()
    assert t.prop_acks["p1"] == {"a1": 0, "a2": 0, "a3": 0} and t.prop_commit["p1"] == 1
    # Replies addressed to p1 go; requests (no `to`) and replies to p2 stay; it greets again.
    assert t.msgs == {to_p2, request, msg("Greeting", frm="p1")}
    # Durable state and ghosts are untouched (the election stays on record).
    assert t.acc_wal == s.acc_wal and t.elections == s.elections


def test_collect_term_keeps_the_highest_term():
    s = M.init(P3A)
    reply = msg("GreetingResponse", frm="a2", to="p1", term=3)
    t = M.CollectTerm(P3A, s, "p1", reply)
    assert t.prop_heard["p1"] == {"a2"} and t.prop_term["p1"] == 3
    lower = msg("GreetingResponse", frm="a1", to="p1", term=1)
    u = M.CollectTerm(P3A, t, "p1", lower)
    assert u.prop_heard["p1"] == {"a1", "a2"} and u.prop_term["p1"] == 3
    assert u.msgs == s.msgs  # a message stays in the network after delivery
    # Guards, in the spec's order.
    assert M.CollectTerm(P3A, s, "p2", reply) == Disabled("CollectTerm", 'm.type = "GreetingResponse" /\\ m.to = p')
    campaigning = s.with_(prop_phase=at(s.prop_phase, p1="campaign"))
    assert M.CollectTerm(P3A, campaigning, "p1", reply) == Disabled("CollectTerm", 'prop_phase[p] = "greeting"')


def test_start_campaign_needs_a_quorum_of_terms_and_asks_for_the_next_term():
    s = M.init(P3A)
    s = s.with_(prop_heard=at(s.prop_heard, p1=frozenset({"a1"})), prop_term=at(s.prop_term, p1=4))
    assert M.StartCampaign(P3A, s, "p1") == Disabled("StartCampaign", "IsQuorum(prop_heard[p])")
    s = s.with_(prop_heard=at(s.prop_heard, p1=frozenset({"a1", "a3"})))
    t = M.StartCampaign(P3A, s, "p1")
    assert t.prop_phase["p1"] == "campaign" and t.prop_term["p1"] == 5 and t.prop_heard["p1"] == frozenset()
    assert t.msgs == s.msgs | {msg("VoteRequest", frm="p1", term=5)}
    assert M.StartCampaign(P3A, t, "p1") == Disabled("StartCampaign", 'prop_phase[p] = "greeting"')


def test_collect_vote_keeps_the_best_donor():
    s = M.init(P3A)
    s = s.with_(prop_phase=at(s.prop_phase, p1="campaign"), prop_term=at(s.prop_term, p1=3))

    def vote(a: str, history, flush: int, term: int = 3) -> Record:
        return msg("VoteResponse", frm=a, to="p1", term=term, history=history, flush=flush)

    long_old = vote("a1", H((0, 1), (1, 1)), 4)  # three entries of term 1
    short_new = vote("a2", H((0, 1), (1, 1), (2, 2)), 3)  # term 1, then term 2
    t = M.CollectVote(P3A, s, "p1", long_old)  # the first vote is always the donor
    assert t.prop_heard["p1"] == {"a1"}
    assert t.prop_history["p1"] == H((0, 1), (1, 1)) and t.prop_wal["p1"] == (1, 1, 1)
    u = M.CollectVote(P3A, t, "p1", short_new)  # a higher last term beats a longer WAL
    assert u.prop_heard["p1"] == {"a1", "a2"}
    assert u.prop_history["p1"] == short_new["history"] and u.prop_wal["p1"] == (1, 2)
    v = M.CollectVote(P3A, u, "p1", long_old)  # ...and is not replaced by it
    assert v.prop_wal["p1"] == (1, 2)
    # Guards.
    assert M.CollectVote(P3A, s, "p2", long_old) == Disabled("CollectVote", 'm.type = "VoteResponse" /\\ m.to = p')
    stale = vote("a3", H((0, 1)), 1, term=2)
    assert M.CollectVote(P3A, s, "p1", stale) == Disabled(
        "CollectVote", 'prop_phase[p] = "campaign" /\\ m.term = prop_term[p]'
    )


def test_become_leader_starts_its_term_at_the_end_of_the_donor_wal():
    s = M.init(P3A)
    donor = H((0, 1), (1, 1))
    s = s.with_(
        prop_phase=at(s.prop_phase, p1="campaign"),
        prop_term=at(s.prop_term, p1=2),
        prop_heard=at(s.prop_heard, p1=frozenset({"a1"})),
        prop_history=at(s.prop_history, p1=donor),
        prop_wal=at(s.prop_wal, p1=Terms([1, 1])),
    )
    assert M.BecomeLeader(P3A, s, "p1") == Disabled("BecomeLeader", "IsQuorum(prop_heard[p])")
    s = s.with_(prop_heard=at(s.prop_heard, p1=frozenset({"a1", "a2"})))
    t = M.BecomeLeader(P3A, s, "p1")
    h = H((0, 1), (1, 1), (2, 3))
    assert t.prop_phase["p1"] == "leader" and t.prop_history["p1"] == h
    assert t.msgs == s.msgs | {msg("ProposerElected", term=2, history=h)}
    assert t.elections == {R(term=2, leader="p1", history=h)}
    assert t.prop_wal == s.prop_wal and t.prop_heard == s.prop_heard
    assert M.BecomeLeader(P3A, t, "p1") == Disabled("BecomeLeader", 'prop_phase[p] = "campaign"')


def test_new_entry_and_send_append():
    s = leader_state()
    t = M.NewEntry(P3A, s, "p1")
    assert t.prop_wal["p1"] == (1, 1)
    assert M.NewEntry(P3A, s, "p2") == Disabled("NewEntry", 'prop_phase[p] = "leader"')
    s = s.with_(prop_commit=at(s.prop_commit, p1=2))
    entry = M.SendAppend(P3A, s, "p1", 1)
    assert entry.msgs == s.msgs | {msg("AppendRequest", term=1, lsn=1, entries=(1,), commit=2)}
    heartbeat = M.SendAppend(P3A, s, "p1", 2)  # one past the WAL: commit_lsn only
    assert heartbeat.msgs == s.msgs | {msg("AppendRequest", term=1, lsn=2, entries=(), commit=2)}
    for l in (0, 3):
        assert M.SendAppend(P3A, s, "p1", l) == Disabled("SendAppend", "l \\in 1..(Len(prop_wal[p]) + 1)")
    assert M.SendAppend(P3A, s, "p2", 1) == Disabled("SendAppend", 'prop_phase[p] = "leader"')


def test_collect_ack_commits_what_a_quorum_flushed_from_the_term_start_on():
    s = leader_state()

    def ack(a: str, flush: int, term: int = 1) -> Record:
        return msg("AppendResponse", frm=a, term=term, flush=flush)

    t = M.CollectAck(P3A, s, "p1", ack("a1", 2))
    assert t.prop_acks["p1"] == {"a1": 2, "a2": 0, "a3": 0} and t.prop_commit["p1"] == 1
    u = M.CollectAck(P3A, t, "p1", ack("a2", 2))
    assert u.prop_acks["p1"]["a2"] == 2 and u.prop_commit["p1"] == 2 and u.committed_log == (1,)
    late = M.CollectAck(P3A, u, "p1", ack("a2", 1))  # acks only grow
    assert late.prop_acks["p1"]["a2"] == 2 and late.prop_commit["p1"] == 2
    # Never past the proposer's own WAL.
    big = M.CollectAck(P3A, M.CollectAck(P3A, s, "p1", ack("a1", 5)), "p1", ack("a3", 5))
    assert big.prop_commit["p1"] == 2
    # CommitAllowed: a quorum below the start of the leader's term commits nothing.
    # Term 2 recovered <<1, 1>> and starts at 3.
    s2 = s.with_(
        prop_history=at(s.prop_history, p1=H((0, 1), (1, 1), (2, 3))),
        prop_term=at(s.prop_term, p1=2),
        prop_wal=at(s.prop_wal, p1=Terms([1, 1, 2])),
    )
    v = M.CollectAck(P3A, M.CollectAck(P3A, s2, "p1", ack("a1", 2, 2)), "p1", ack("a2", 2, 2))
    assert v.prop_acks["p1"] == {"a1": 2, "a2": 2, "a3": 0}
    assert v.prop_commit["p1"] == 1 and v.committed_log == ()
    w = M.CollectAck(P3A, M.CollectAck(P3A, v, "p1", ack("a1", 3, 2)), "p1", ack("a2", 3, 2))
    assert w.prop_commit["p1"] == 3 and w.committed_log == (1, 1)
    # Guards.
    assert M.CollectAck(P3A, s, "p1", msg("Greeting", frm="p2")) == Disabled("CollectAck", 'm.type = "AppendResponse"')
    assert M.CollectAck(P3A, s, "p1", ack("a1", 2, term=2)) == Disabled(
        "CollectAck", 'prop_phase[p] = "leader" /\\ m.term = prop_term[p]'
    )


def test_collect_ack_never_shortens_the_committed_log():
    # A deposed leader counting a late ack of its term after a newer one committed more.
    s = leader_state().with_(committed_log=Terms([1, 2]))
    ack = msg("AppendResponse", frm="a1", term=1, flush=2)
    t = M.CollectAck(P3A, M.CollectAck(P3A, s, "p1", ack), "p1", msg("AppendResponse", frm="a2", term=1, flush=2))
    assert t.prop_commit["p1"] == 2 and t.committed_log == (1, 2)


# ---------------------------------------------------------------------------------------------
# Acceptor actions
# ---------------------------------------------------------------------------------------------


def test_restart_acceptor_keeps_flushed_wal_and_any_prefix_of_the_rest():
    s = leader_state()
    s = s.with_(acc_commit=at(s.acc_commit, a1=2))
    t = M.RestartAcceptor(P3A, s, "a2", 1, 1)  # a2's written, unflushed entry is lost ...
    assert t.acc_wal["a2"] == () and t.acc_flush["a2"] == 1
    assert t.acc_term["a2"] == 1 and t.acc_history["a2"] == s.acc_history["a2"]
    kept = M.RestartAcceptor(P3A, s, "a2", 2, 1)  # ... or survives, and is flushed from then on
    assert kept.acc_wal["a2"] == (1,) and kept.acc_flush["a2"] == 2 and kept.msgs == s.msgs  # no ack
    u = M.RestartAcceptor(P3A, s, "a1", 2, 1)  # flushed WAL stays; commit_lsn may come back lower
    assert u.acc_wal["a1"] == (1,) and u.acc_flush["a1"] == 2 and u.acc_commit["a1"] == 1
    assert M.RestartAcceptor(P3A, s, "a1", 2, 2).acc_commit["a1"] == 2
    for k in (1, 3):  # never less than the flushed WAL, never more than the written
        assert M.RestartAcceptor(P3A, s, "a1", k, 1) == Disabled(
            "RestartAcceptor", "k \\in acc_flush[a]..(Len(acc_wal[a]) + 1)"
        )
    for c in (0, 3):
        assert M.RestartAcceptor(P3A, s, "a1", 2, c) == Disabled("RestartAcceptor", "c \\in 1..acc_commit[a]")
    restarts = [args for name, args, _ in M.successors(P3A, s) if name == "RestartAcceptor" and args[0] != "a3"]
    assert restarts == [("a1", 2, 1), ("a1", 2, 2), ("a2", 1, 1), ("a2", 2, 1)]


def test_answer_greeting_and_vote():
    s = leader_state()
    greeting = msg("Greeting", frm="p2")
    t = M.AnswerGreeting(P3A, s, "a1", greeting)
    assert t.msgs == s.msgs | {msg("GreetingResponse", frm="a1", to="p2", term=1)}
    assert M.AnswerGreeting(P3A, s, "a1", msg("VoteRequest", frm="p2", term=2)) == Disabled(
        "AnswerGreeting", 'm.type = "Greeting"'
    )
    # a2 wrote term 1's entry but has not flushed it: the vote reports its flushed history.
    request = msg("VoteRequest", frm="p2", term=2)
    v = M.Vote(P3A, s, "a2", request)
    assert v.acc_term["a2"] == 2
    assert v.msgs == s.msgs | {msg("VoteResponse", frm="a2", to="p2", term=2, history=H((0, 1), (1, 1)), flush=1)}
    w = M.Vote(P3A, s, "a1", request)
    assert msg("VoteResponse", frm="a1", to="p2", term=2, history=H((0, 1), (1, 1)), flush=2) in w.msgs
    # One vote per term, never for an older one.
    assert M.Vote(P3A, v, "a2", request) == Disabled("Vote", "VoteAllowed(a, m.term)")
    assert M.Vote(P3A, s, "a1", msg("VoteRequest", frm="p2", term=1)) == Disabled("Vote", "VoteAllowed(a, m.term)")
    assert M.Vote(P3A, s, "a1", greeting) == Disabled("Vote", 'm.type = "VoteRequest"')


def test_accept_elected_truncates_at_the_highest_common_point():
    s = M.init(P3A)
    # a1: term 1 wrote positions 1-2, term 2 position 3, all flushed; commit_lsn 2.
    s = s.with_(
        acc_term=at(s.acc_term, a1=3),
        acc_history=at(s.acc_history, a1=H((0, 1), (1, 1), (2, 3))),
        acc_wal=at(s.acc_wal, a1=Terms([1, 1, 2])),
        acc_flush=at(s.acc_flush, a1=4),
        acc_commit=at(s.acc_commit, a1=2),
    )
    # The term-3 leader recovered term 1's WAL up to 3 entries (another acceptor's).
    h = H((0, 1), (1, 1), (3, 4))
    elected = msg("ProposerElected", term=3, history=h)
    t = M.AcceptElected(P3A, s, "a1", elected)
    assert t.acc_wal["a1"] == (1, 1) and t.acc_flush["a1"] == 3 and t.acc_history["a1"] == h
    assert t.msgs == s.msgs | {msg("AppendResponse", frm="a1", term=3, flush=3)}
    assert t.acc_term == s.acc_term and t.acc_commit == s.acc_commit
    # Again (a duplicate): nothing more is cut.
    assert M.AcceptElected(P3A, t, "a1", elected) == t
    # Guards: the term, then the commit_lsn.
    assert M.AcceptElected(P3A, s, "a1", msg("ProposerElected", term=2, history=h)) == Disabled(
        "AcceptElected", "m.term = acc_term[a]"
    )
    high = s.with_(acc_commit=at(s.acc_commit, a1=4))
    assert M.AcceptElected(P3A, high, "a1", elected) == Disabled("AcceptElected", "start >= acc_commit[a]")
    assert M.AcceptElected(P3A, s, "a1", msg("Greeting", frm="p1")) == Disabled(
        "AcceptElected", 'm.type = "ProposerElected"'
    )


def test_accept_append_writes_without_gaps_or_rewrites():
    s = leader_state()
    s = s.with_(acc_commit=at(s.acc_commit, a1=1))

    def append(lsn: int, entries: tuple, commit: int, term: int = 1) -> Record:
        return msg("AppendRequest", term=term, lsn=lsn, entries=entries, commit=commit)

    t = M.AcceptAppend(P3A, s, "a1", append(2, (1,), 3))
    assert t.acc_wal["a1"] == (1, 1) and t.acc_flush["a1"] == 2
    assert t.acc_commit["a1"] == 2  # the leader's commit_lsn, capped by a1's flush_lsn
    assert t.msgs == s.msgs  # no ack before the flush
    same = M.AcceptAppend(P3A, s, "a1", append(1, (1,), 1))  # a duplicate: nothing to write
    assert same == s
    heartbeat = M.AcceptAppend(P3A, s, "a1", append(2, (), 2))
    assert heartbeat.acc_wal == s.acc_wal and heartbeat.acc_commit["a1"] == 2
    # Guards, in the spec's order.
    assert M.AcceptAppend(P3A, s, "a1", append(3, (1,), 1)) == Disabled("AcceptAppend", "m.lsn <= Len(acc_wal[a]) + 1")
    assert M.AcceptAppend(P3A, s, "a1", append(1, (2,), 1)) == Disabled(
        "AcceptAppend", "m.entries # <<>> /\\ m.lsn <= Len(acc_wal[a]) => acc_wal[a][m.lsn] = m.entries[1]"
    )
    assert M.AcceptAppend(P3A, s, "a1", append(1, (2,), 1, term=2)) == Disabled("AcceptAppend", "m.term = acc_term[a]")
    voted = s.with_(acc_term=at(s.acc_term, a3=1))  # a3 voted in term 1, no ProposerElected yet
    assert M.AcceptAppend(P3A, voted, "a3", append(1, (1,), 1)) == Disabled("AcceptAppend", "Streaming(a)")
    assert M.AcceptAppend(P3A, s, "a1", msg("Greeting", frm="p1")) == Disabled(
        "AcceptAppend", 'm.type = "AppendRequest"'
    )


def test_flush_acknowledges_only_when_streaming():
    s = leader_state()
    t = M.Flush(P3A, s, "a2")
    assert t.acc_flush["a2"] == 2 and t.msgs == s.msgs | {msg("AppendResponse", frm="a2", term=1, flush=2)}
    assert M.Flush(P3A, s, "a1") == Disabled("Flush", "acc_flush[a] <= Len(acc_wal[a])")
    # a2 has voted in term 2 since: it flushes but acknowledges nothing (not Streaming).
    voted = s.with_(acc_term=at(s.acc_term, a2=2))
    u = M.Flush(P3A, voted, "a2")
    assert u.acc_flush["a2"] == 2 and u.msgs == voted.msgs


def test_lose_message():
    s = M.init(P3A)
    m = msg("Greeting", frm="p1")
    assert M.LoseMessage(P3A, s, m).msgs == {msg("Greeting", frm="p2")}
    assert M.LoseMessage(P3A, s, msg("Greeting", frm="p3")) == Disabled("LoseMessage", "m \\in msgs")


def _reachable(model: Model, limit: int) -> list[State]:
    """Up to `limit` states of the unconstrained machine, breadth first."""
    seen = {M.init(model)}
    order = [M.init(model)]
    for s in order:
        for _, _, t in M.successors(model, s):
            if t not in seen and len(seen) < limit:
                seen.add(t)
                order.append(t)
    return order


# Every guard conjunct of every action, as the spec writes it (the range of a bound
# variable of Next counts as a guard).
GUARDS = {
    "RestartProposer": set(),
    "CollectTerm": {'m.type = "GreetingResponse" /\\ m.to = p', 'prop_phase[p] = "greeting"'},
    "StartCampaign": {'prop_phase[p] = "greeting"', "IsQuorum(prop_heard[p])"},
    "CollectVote": {'m.type = "VoteResponse" /\\ m.to = p', 'prop_phase[p] = "campaign" /\\ m.term = prop_term[p]'},
    "BecomeLeader": {'prop_phase[p] = "campaign"', "IsQuorum(prop_heard[p])"},
    "NewEntry": {'prop_phase[p] = "leader"'},
    "SendAppend": {'prop_phase[p] = "leader"', "l \\in 1..(Len(prop_wal[p]) + 1)"},
    "CollectAck": {'m.type = "AppendResponse"', 'prop_phase[p] = "leader" /\\ m.term = prop_term[p]'},
    "RestartAcceptor": {"k \\in acc_flush[a]..(Len(acc_wal[a]) + 1)", "c \\in 1..acc_commit[a]"},
    "AnswerGreeting": {'m.type = "Greeting"'},
    "Vote": {'m.type = "VoteRequest"', "VoteAllowed(a, m.term)"},
    "AcceptElected": {'m.type = "ProposerElected"', "m.term = acc_term[a]", "start >= acc_commit[a]"},
    "AcceptAppend": {
        'm.type = "AppendRequest"',
        "m.term = acc_term[a]",
        "Streaming(a)",
        "m.lsn <= Len(acc_wal[a]) + 1",
        "m.entries # <<>> /\\ m.lsn <= Len(acc_wal[a]) => acc_wal[a][m.lsn] = m.entries[1]",
    },
    "Flush": {"acc_flush[a] <= Len(acc_wal[a])"},
    "LoseMessage": {"m \\in msgs"},
}


def test_disabled_names_a_guard_written_in_the_spec():
    """Every action, at every argument, on a few thousand reachable states: each Disabled
    names one of the action's guard conjuncts, verbatim from its TLA+ definition."""
    model = Model(("p1",), ("a1", "a2"))
    named: dict[str, set[str]] = {name: set() for name in M.ACTIONS}
    states = _reachable(model, 3000)
    lost = msg("Greeting", frm="p9")
    for s in states:
        msgs = [*s.msgs, lost]
        for name, f in M.ACTIONS.items():
            if name in ("RestartProposer", "StartCampaign", "BecomeLeader", "NewEntry"):
                calls = [(p,) for p in model.proposers]
            elif name == "SendAppend":
                calls = [(p, l) for p in model.proposers for l in range(0, len(s.prop_wal[p]) + 3)]
            elif name in ("CollectTerm", "CollectVote", "CollectAck"):
                calls = [(p, m) for p in model.proposers for m in s.msgs]
            elif name == "RestartAcceptor":
                calls = [
                    (a, k, c)
                    for a in model.acceptors
                    for k in range(s.acc_flush[a] - 1, len(s.acc_wal[a]) + 3)
                    for c in range(0, s.acc_commit[a] + 2)
                ]
            elif name == "Flush":
                calls = [(a,) for a in model.acceptors]
            elif name == "LoseMessage":
                calls = [(m,) for m in msgs]
            else:
                calls = [(a, m) for a in model.acceptors for m in s.msgs]
            for args in calls:
                result = f(model, s, *args)
                if isinstance(result, Disabled):
                    assert result.action == name and not result
                    named[name].add(result.conjunct)
                else:
                    assert isinstance(result, State) and result
    # Some guards never fail on reachable states (start >= acc_commit[a] "cannot" in this
    # protocol): the hand-built tests above reach those.
    for name, conjuncts in named.items():
        assert conjuncts <= GUARDS[name], (name, conjuncts - GUARDS[name])
    for name, conjuncts in GUARDS.items():
        text = definition(name) + " " + definition("Next")
        for conjunct in conjuncts:
            assert " ".join(conjunct.split()) in text, (name, conjunct)


# ---------------------------------------------------------------------------------------------
# Invariants
# ---------------------------------------------------------------------------------------------


def test_invariants_hold_on_a_good_state():
    assert M.invariants(P3A, leader_state()) == []


def test_two_elections_of_one_term_violate_election_safety():
    s = leader_state()
    other = R(term=1, leader="p2", history=H((0, 1), (1, 1)))
    assert M.invariants(P3A, s.with_(elections=s.elections | {other})) == ["ElectionSafety"]
    later = R(term=2, leader="p2", history=H((0, 1), (1, 1), (2, 2)))
    assert M.invariants(P3A, s.with_(elections=s.elections | {later})) == []


def test_a_committed_log_not_on_a_majority_violates_committed_never_lost():
    s = leader_state().with_(committed_log=Terms([1]))
    assert "CommittedNeverLost" in M.invariants(P3A, s)  # flushed on a1 only (a2 wrote it)
    s2 = s.with_(acc_flush=at(s.acc_flush, a2=2))
    assert M.invariants(P3A, s2) == []


def test_other_invariants_fail_on_bad_states():
    s = leader_state()
    bad_history = s.with_(acc_wal=at(s.acc_wal, a1=Terms([1, 2])))  # history says term 1 only
    assert M.invariants(P3A, bad_history) == ["LogMatchesHistory"]
    descending = s.with_(prop_wal=at(s.prop_wal, p1=Terms([2, 1])))
    assert M.invariants(P3A, descending) == ["LogIsMonotonic"]
    committed_elsewhere = s.with_(acc_commit=at(s.acc_commit, a1=2))  # a1's <<1>> vs <<>>
    assert M.invariants(P3A, committed_elsewhere) == ["LogSafety"]


# ---------------------------------------------------------------------------------------------
# MCProposerAcceptor: constraints judge pairs of states
# ---------------------------------------------------------------------------------------------


def _allowed(constraint, s: State, name: str, args: tuple, t: State, max_entries: int = 2) -> bool:
    return mc.ACTION_CONSTRAINTS[constraint](P3A, s, name, args, t, max_entries)


def test_state_constraint():
    s = leader_state()
    assert mc.StateConstraint(P3A, s, 1, 1)
    assert not mc.StateConstraint(P3A, s, 0, 1)
    assert not mc.StateConstraint(P3A, s, 1, 0)


def test_no_loss_cuts_every_step_that_is_a_loss_whatever_the_action():
    s = M.init(P3A)
    reply = msg("GreetingResponse", frm="a1", to="p1", term=0)
    s = s.with_(msgs=s.msgs | {reply})
    t = M.LoseMessage(P3A, s, reply)
    assert not _allowed("NoLoss", s, "LoseMessage", (reply,), t)
    # p1 has heard nothing: restarting it drops its one reply and changes nothing else, so
    # the step is also a LoseMessage(reply) step, and TLC's NoLoss excludes it too.
    restart = M.RestartProposer(P3A, s, "p1")
    assert restart == t
    assert not _allowed("NoLoss", s, "RestartProposer", ("p1",), restart)
    delivered = M.CollectTerm(P3A, s, "p1", reply)
    assert _allowed("NoLoss", s, "CollectTerm", ("p1", reply), delivered)


def test_no_acceptor_crash_cuts_a_repeated_elected_that_only_drops_unflushed_wal():
    s = leader_state()
    elected = msg("ProposerElected", term=1, history=H((0, 1), (1, 1)))
    ack = msg("AppendResponse", frm="a2", term=1, flush=1)
    s = s.with_(msgs=frozenset({elected, ack}))
    t = M.AcceptElected(P3A, s, "a2", elected)  # cuts a2's unflushed entry, ack already sent
    assert t == M.RestartAcceptor(P3A, s, "a2", 1, 1)
    assert not _allowed("NoAcceptorCrash", s, "AcceptElected", ("a2", elected), t)
    assert not _allowed("NoAcceptorCrash", s, "RestartAcceptor", ("a2", 1, 1), t)
    flushed = M.Flush(P3A, s, "a2")
    assert _allowed("NoAcceptorCrash", s, "Flush", ("a2",), flushed)


def test_no_acceptor_crash_lets_a_flush_that_sends_nothing_through():
    # a2 promised term 2 with its term-1 entry unflushed: not Streaming, its Flush sends no
    # ack, so the step also is the restart that keeps all of a2's WAL (and its commit_lsn).
    s = leader_state()
    s = s.with_(acc_term=at(s.acc_term, a2=2))
    flushed = M.Flush(P3A, s, "a2")
    assert flushed == M.RestartAcceptor(P3A, s, "a2", 2, 1) and flushed.msgs == s.msgs
    assert _allowed("NoAcceptorCrash", s, "Flush", ("a2",), flushed)
    assert _allowed("NoAcceptorCrash", s, "RestartAcceptor", ("a2", 2, 1), flushed)
    lost = M.RestartAcceptor(P3A, s, "a2", 1, 1)  # a real crash is cut
    assert not _allowed("NoAcceptorCrash", s, "RestartAcceptor", ("a2", 1, 1), lost)


def test_send_once_lets_each_entry_go_once_and_no_heartbeat():
    s = leader_state()
    first = M.SendAppend(P3A, s, "p1", 1)
    assert _allowed("SendOnce", s, "SendAppend", ("p1", 1), first)
    again = M.SendAppend(P3A, first.with_(prop_commit=at(first.prop_commit, p1=2)), "p1", 1)
    assert not _allowed("SendOnce", first.with_(prop_commit=at(first.prop_commit, p1=2)), "SendAppend", ("p1", 1), again)
    heartbeat = M.SendAppend(P3A, s, "p1", 2)
    assert not _allowed("SendOnce", s, "SendAppend", ("p1", 2), heartbeat)
    # Beyond MaxEntries + 1 the constraint does not look (SendAppend(p, l) is not quantified).
    assert _allowed("SendOnce", s, "SendAppend", ("p1", 2), heartbeat, max_entries=0)


def test_leaders_crash_and_live_greetings():
    s = leader_state()
    s = s.with_(prop_phase=at(s.prop_phase, p2="campaign"))
    assert _allowed("LeadersCrash", s, "RestartProposer", ("p1",), M.RestartProposer(P3A, s, "p1"))
    assert not _allowed("LeadersCrash", s, "RestartProposer", ("p2",), M.RestartProposer(P3A, s, "p2"))
    g1, g2 = msg("Greeting", frm="p1"), msg("Greeting", frm="p2")
    s = s.with_(msgs=frozenset({g1, g2}), prop_phase=at(s.prop_phase, p2="greeting"))
    assert not _allowed("LiveGreetings", s, "AnswerGreeting", ("a1", g1), M.AnswerGreeting(P3A, s, "a1", g1))
    assert _allowed("LiveGreetings", s, "AnswerGreeting", ("a1", g2), M.AnswerGreeting(P3A, s, "a1", g2))


def test_configs_without_view_and_symmetry_only():
    with pytest.raises(ValueError, match="VIEW"):
        mc.load_config(SPEC / "models" / "ci.cfg")
    bounded = mc.load_config(SPEC / "models" / "machine_p1_a2_t2_e1_steady.cfg")
    assert (bounded.max_term, bounded.max_entries) == (2, 1)
    assert bounded.action_constraints == ("Steady", "NoAcceptorCrash")
    assert [a.name for a in bounded.model.acceptors] == ["a1", "a2"]


# ---------------------------------------------------------------------------------------------
# The bounded models: recorded TLC counts (fast), and TLC itself (marked tlc)
# ---------------------------------------------------------------------------------------------


def test_every_machine_model_is_recorded():
    names = [path.stem for path in MACHINE_MODELS]
    assert len(names) >= 3 and set(CHEAP_MODELS) <= set(names)
    for name in names:
        assert {"distinct_states", "generated_states", "depth"} <= set(MANIFEST[name]), name


def test_cheap_models_match_the_recorded_tlc_counts():
    discovered: Counter[str] = Counter()
    for name in CHEAP_MODELS:
        result = mc.load_config(SPEC / "models" / f"{name}.cfg").bfs()
        recorded = MANIFEST[name]
        assert (result.distinct, result.generated, result.depth) == (
            recorded["distinct_states"],
            recorded["generated_states"],
            recorded["depth"],
        ), name
        discovered.update(result.discovered)
    # As TLC does, also check the successors the constraints exclude (TLC finds none bad).
    assert mc.load_config(SPEC / "models" / f"{CHEAP_MODELS[0]}.cfg").bfs(check_excluded=True).distinct == (
        MANIFEST[CHEAP_MODELS[0]]["distinct_states"]
    )
    # Every action is on the search tree of some model: each one shapes a count.
    assert set(discovered) == set(M.ACTIONS)


# Bugs the spec's mutants name, planted in the machine: each changes a recorded count, so
# the comparison with TLC would have caught it.  (CommitIgnoringTermStart needs a leader
# that recovers two entries, i.e. the slow model; the 2-acceptor models cannot tell a
# majority from everyone, machine_p1_a3_t1_e1_steady can.)
PLANTED = {
    "BadQuorum": ("IsQuorum", lambda model, S: len(S) >= len(model.acceptors) // 2, "machine_p1_a1_t1_e0"),
    "VoteTwiceAllowed": ("VoteAllowed", lambda s, a, t: t >= s.acc_term[a], "machine_p1_a1_t1_e0"),
    "StreamingBeforeElected": ("Streaming", lambda s, a: s.acc_term[a] > 0, "machine_p1_a1_t1_e0"),
    "BetterDonorByFlush": ("BetterDonor", lambda h1, f1, h2, f2: f1 > f2, "machine_p1_a2_t2_e1_steady"),
    "TruncateAtCommonTermStart": (
        "TruncationPoint",
        lambda s, a, h: M.FlushedHistory(s, a)[M.CommonPrefixLen(h, M.FlushedHistory(s, a)) - 1]["lsn"],
        "machine_p1_a2_t1_e2_steady",
    ),
}


@pytest.mark.parametrize("planted", PLANTED)
def test_a_planted_bug_changes_a_count(monkeypatch, planted):
    operator, bad, model = PLANTED[planted]
    monkeypatch.setattr(M, operator, bad)
    bounded = mc.load_config(SPEC / "models" / f"{model}.cfg")
    recorded = MANIFEST[model]
    try:
        result = bounded.bfs(check_invariants=False, max_distinct=3 * recorded["distinct_states"])
    except RuntimeError:
        return  # the state space exploded: a different count
    assert (result.distinct, result.generated, result.depth) != (
        recorded["distinct_states"],
        recorded["generated_states"],
        recorded["depth"],
    )


def _as_tlc_values(s: State) -> dict:
    """A machine state as conformance.tlc would parse it (sequences as tuples)."""
    values = dict(zip(State._fields, s))
    values["prop_wal"] = Record((k, tuple(w)) for k, w in s.prop_wal.items())
    values["acc_wal"] = Record((k, tuple(w)) for k, w in s.acc_wal.items())
    values["committed_log"] = tuple(s.committed_log)
    return values


def test_replay_finds_each_step_and_reports_the_first_wrong_one():
    model = Model(("p1",), ("a1",))
    s = M.init(model)
    states = [s]
    for name in ("AnswerGreeting", "CollectTerm", "StartCampaign", "Vote", "CollectVote", "BecomeLeader", "NewEntry"):
        s = next(t for n, _, t in M.successors(model, s) if n == name)
        states.append(s)
    trace = [TraceState(i, "Next", _as_tlc_values(x)) for i, x in enumerate(states, 1)]
    steps = mc.replay(model, trace)
    assert [step[0][0] for step in steps] == [
        "AnswerGreeting", "CollectTerm", "StartCampaign", "Vote", "CollectVote", "BecomeLeader", "NewEntry",
    ]  # fmt: skip
    bad = dict(trace[4].values)
    bad["acc_term"] = Record({"a1": 2})
    trace[4] = TraceState(5, "Next", bad)
    with pytest.raises(mc.ReplayError) as error:
        mc.replay(model, trace)
    assert error.value.index == 5 and "acc_term" in str(error.value)


@pytest.mark.tlc
def test_tlc_search_semantics(tmp_path):
    """What conformance/mc.py assumes about TLC, on a toy spec: generated counts every
    successor and the initial states; an excluded successor is neither counted nor explored;
    ACTION_CONSTRAINT judges the pair of states (a step of another action with the same
    effect is excluded too); depth counts levels from 1; invariants are evaluated on
    successors the CONSTRAINT excludes."""
    (tmp_path / "Toy.tla").write_text(
        "---- MODULE Toy ----\nEXTENDS Naturals\nVARIABLES x, y\n"
        "Init == x = 0 /\\ y = 0\n"
        "IncX == x' = x + 1 /\\ UNCHANGED y\n"
        "IncY == y' = y + 1 /\\ UNCHANGED x\n"
        "Same == y' = y + 1 /\\ x' = x\n"  # IncY's effect under another name
        "Both == x' = x + 1 /\\ y' = y + 1\n"
        "Next == IncX \\/ IncY \\/ Same \\/ Both\n"
        "SC == x <= 3 /\\ y <= 3\n"
        "AC == IncY => x > 0\n"
        "Inv == x + y < 7\n====\n"
    )
    (tmp_path / "ac.cfg").write_text("INIT Init\nNEXT Next\nCONSTRAINT SC\nACTION_CONSTRAINT AC\n")
    (tmp_path / "inv.cfg").write_text("INIT Init\nNEXT Next\nCONSTRAINT SC\nINVARIANT Inv\n")
    ac = run_tlc(tmp_path / "Toy.tla", tmp_path / "ac.cfg", check_deadlock=False, timeout=120)
    assert ac.outcome == "ok", ac.message
    # (0,1)..(0,3) are reached only by IncY-shaped steps from x = 0, Same's included.
    assert ac.distinct_states == 16 - 3
    assert ac.generated_states == 1 + 13 * 4
    assert ac.depth == 4  # (0,0) (1,1) (2,2) (3,3)
    inv = run_tlc(tmp_path / "Toy.tla", tmp_path / "inv.cfg", check_deadlock=False, timeout=120)
    # Every state within SC has x + y <= 6: only the excluded (4,3) or (3,4) violates Inv.
    assert inv.outcome == "invariant" and inv.violated == "Inv"
    assert sum(inv.trace[-1].values[v] for v in ("x", "y")) == 7


@pytest.mark.tlc
@pytest.mark.parametrize("config", MACHINE_MODELS, ids=[c.stem for c in MACHINE_MODELS])
def test_machine_search_matches_tlc(config):
    bounded = mc.load_config(config)
    with ThreadPoolExecutor(max_workers=1) as pool:  # TLC (Java) and Python side by side
        tlc = pool.submit(run_tlc, MODULE, config, workers=1, check_deadlock=False, timeout=300, extra_args=TLC_ARGS)
        python = bounded.bfs()
        result = tlc.result()
    assert result.outcome == "ok", result.message
    counts = (result.distinct_states, result.generated_states, result.depth)
    assert (python.distinct, python.generated, python.depth) == counts
    recorded = MANIFEST[config.stem]
    assert counts == (recorded["distinct_states"], recorded["generated_states"], recorded["depth"])


def _probe_config(tmp_path: Path, source: Path, probe: str) -> Path:
    """The model `source` checking only the invariant `probe` (which must fail)."""
    text = re.sub(r"^INVARIANTS\n(\s+\w+\n)+", f"INVARIANT {probe}\n", source.read_text(), flags=re.M)
    assert f"INVARIANT {probe}\n" in text
    path = tmp_path / f"{source.stem}_{probe}.cfg"
    path.write_text(text)
    return path


@pytest.mark.tlc
def test_tlc_counterexample_is_a_behaviour_of_the_machine(tmp_path):
    """Two terms on two acceptors: TLC's shortest way to diverging WALs, step by step."""
    source = SPEC / "models" / "machine_p1_a2_t2_e1_steady.cfg"
    result = run_tlc(MODULE, _probe_config(tmp_path, source, "ProbeNoDivergence"), check_deadlock=False, timeout=300)
    assert result.outcome == "invariant" and result.violated == "ProbeNoDivergence"
    model = mc.load_config(source).model
    steps = mc.replay(model, result.trace)
    assert len(steps) == len(result.trace) - 1
    assert [s for s in steps if s[0][0] == "BecomeLeader"] and any(s[0][0] == "AcceptElected" for s in steps)
    last = mc.state_from_tlc(result.trace[-1].values)
    assert M.invariants(model, last) == []
    assert last.acc_wal[model.acceptors[0]] != last.acc_wal[model.acceptors[1]]


@pytest.mark.tlc
def test_tlc_simulation_is_a_behaviour_of_the_machine(tmp_path):
    """A random behaviour with losses (TLC -simulate, fixed seed) until something commits."""
    cfg = tmp_path / "sim.cfg"
    cfg.write_text(
        "CONSTANTS\n    Proposers = {p1}\n    Acceptors = {a1}\n    MaxTerm = 3\n    MaxEntries = 2\n"
        "SPECIFICATION Spec\nCONSTRAINT StateConstraint\nINVARIANT ProbeNoCommit\n"
    )
    result = run_tlc(MODULE, cfg, check_deadlock=False, simulate=(60, 7), timeout=120)
    assert result.outcome == "invariant" and result.violated == "ProbeNoCommit", result.message
    model = mc.load_config(cfg).model
    steps = mc.replay(model, result.trace)
    assert len(steps) == len(result.trace) - 1 >= 10
    assert "LoseMessage" in {name for step in steps for name, _ in step}
    assert mc.state_from_tlc(result.trace[-1].values).committed_log != ()
