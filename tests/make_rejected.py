"""Generate traces/rejected/: hand-made bad traces that `paxwal check` must reject.

Each case copies one accepted run of traces/accepted/scenarios/ (its per-node files and run.json, not
the merged all.ndjson), makes one minimal edit -- an event changed, deleted, duplicated or
forged, with valid JSON and plausible Lamport clocks -- and writes
`traces/rejected/<name>.reason`:

    expect: <node>.ndjson:<line>     the event the checker must name
    why: <the protocol rule the edit breaks, in the spec's words>
    edit: <what changed relative to traces/accepted/scenarios/<source>/>

Edits pick events by content (action, state, message), not by line number, so the corpus can
be regenerated when the scenario traces change:

    .venv/bin/python tests/make_rejected.py

It rewrites the corpus, replays every case and fails unless each is rejected at its expected
line.  tests/test_rejected.py checks the committed files only.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "traces" / "accepted" / "scenarios"
OUT = ROOT / "traces" / "rejected"

Event = dict[str, Any]


def dumps(event: Event) -> str:
    """As impl/trace.py writes an event: compact, keys in their order."""
    return json.dumps(event, separators=(",", ":"))


class Run:
    """A copy of a scenario run under traces/rejected/<name>/, edited one node file at a time."""

    def __init__(self, scenario: str, name: str) -> None:
        self.scenario = scenario
        self.dir = OUT / name
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        for src in sorted((SCENARIOS / scenario).iterdir()):
            if src.name != "all.ndjson":
                shutil.copyfile(src, self.dir / src.name)

    # -- reading -----------------------------------------------------------------------------

    def _path(self, node: str) -> Path:
        return self.dir / f"{node}.ndjson"

    def lines(self, node: str) -> list[str]:
        return self._path(node).read_text().splitlines()

    def events(self, node: str) -> list[Event]:
        return [json.loads(line) for line in self.lines(node)]

    def nodes(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.ndjson"))

    def find(self, node: str, pred: Callable[[Event], bool], nth: int = 0) -> int:
        """The 1-based line of the nth event of `node` that `pred` selects."""
        hits = [n for n, e in enumerate(self.events(node), 1) if pred(e)]
        if len(hits) <= nth:
            raise AssertionError(f"{self.scenario}/{node}: no event #{nth} selected")
        return hits[nth]

    def event(self, node: str, line: int) -> Event:
        return self.events(node)[line - 1]

    def sent(self, pred: Callable[[str, dict[str, Any], Event], bool], nth: int = 0) -> tuple[str, dict[str, Any], Event]:
        """(id, message, sending event) of the nth send, over all nodes in clock order, that
        `pred(to, msg, event)` selects."""
        sends = []
        for node in self.nodes():
            for e in self.events(node):
                for s in e["sent"]:
                    sends.append((e["lc"], node, s, e))
        sends.sort(key=lambda t: (t[0], t[1]))
        hits = [(s["id"], s["msg"], e) for _, _, s, e in sends if pred(s["to"], s["msg"], e)]
        if len(hits) <= nth:
            raise AssertionError(f"{self.scenario}: no send #{nth} selected")
        return hits[nth]

    def received(self) -> set[str]:
        return {e["recv"] for node in self.nodes() for e in self.events(node) if e["recv"]}

    def fresh_id(self, node: str) -> str:
        """The id the node's tracer would give its next message."""
        used = [int(s["id"].split(":")[1]) for e in self.events(node) for s in e["sent"]]
        return f"{node}:{max(used, default=0) + 1}"

    # -- writing -----------------------------------------------------------------------------

    def _write(self, node: str, lines: list[str]) -> None:
        self._path(node).write_text("".join(line + "\n" for line in lines))

    def replace(self, node: str, line: int, event: Event) -> int:
        lines = self.lines(node)
        lines[line - 1] = dumps(event)
        self._write(node, lines)
        return line

    def insert(self, node: str, after: int, event: Event) -> int:
        """Insert `event` after line `after` (0: first); return its line."""
        lines = self.lines(node)
        lines.insert(after, dumps(event))
        self._write(node, lines)
        return after + 1

    def append(self, node: str, event: Event) -> int:
        return self.insert(node, len(self.lines(node)), event)

    def delete(self, node: str, line: int) -> None:
        lines = self.lines(node)
        del lines[line - 1]
        self._write(node, lines)


# ---------------------------------------------------------------------------------------------
# The cases: each edits a Run and returns (node, line, edit description).
# ---------------------------------------------------------------------------------------------

CASES: dict[str, tuple[str, str, Callable[[Run], tuple[str, int, str]]]] = {}


def case(name: str, scenario: str, why: str):
    def register(fn: Callable[[Run], tuple[str, int, str]]):
        CASES[name] = (scenario, " ".join(why.split()), fn)
        return fn
    return register


def _is(action: str, **state: Any) -> Callable[[Event], bool]:
    return lambda e: e["action"] == action and all(e["state"].get(k) == v for k, v in state.items())


def _vote_copy(vote: Event, lc: int, recv: str, msg_id: str, to: str) -> Event:
    forged = copy.deepcopy(vote)
    forged["lc"] = lc
    forged["recv"] = recv
    forged["sent"][0]["id"] = msg_id
    forged["sent"][0]["to"] = to
    forged["sent"][0]["msg"]["to"] = to
    return forged


@case("vote-twice-in-term", "split-vote", """
    Vote(a, m) is guarded by VoteAllowed(a, m.term) == m.term > acc_term[a]: an acceptor gives
    at most one vote per term, only to a term above every term it has seen.  a1 has voted for
    p1 in term 1 (acc_term = 1); the forged event has it vote for p2 in term 1 as well, so
    m.term = 1 is not > acc_term[a1] = 1 (the VoteTwiceAllowed mutant, under which p1 and p2
    could both win term 1).""")
def _(run: Run):
    request, _, sender = run.sent(lambda to, m, e: e["node"] == "p2" and to == "a1" and m["type"] == "VoteRequest" and m["term"] == 1)
    line = run.find("a1", _is("Vote", acc_term=1))
    vote = run.event("a1", line)
    lc = max(vote["lc"], sender["lc"]) + 1
    assert lc < run.event("a1", line + 1)["lc"]
    forged = _vote_copy(vote, lc, request, run.fresh_id("a1"), "p2")
    at = run.insert("a1", line, forged)
    return "a1", at, (
        f"forged a1.ndjson:{at}: a copy of a1's term-1 Vote (line {line}) that consumes p2's VoteRequest "
        f"{request} (term 1) and sends a VoteResponse to p2 (id {forged['sent'][0]['id']}), lc {lc}")


@case("vote-for-lower-term", "split-vote", """
    Vote(a, m) is guarded by VoteAllowed(a, m.term) == m.term > acc_term[a]: an acceptor never
    votes for a term older than a promise it made.  a1 has voted for p1 in term 2 (acc_term = 2)
    and follows it as leader; the forged event, at the end of its trace, has it answer p2's stale
    VoteRequest of term 1 with a vote (and go back to acc_term = 1), though 1 > 2 is false.""")
def _(run: Run):
    request, _, _ = run.sent(lambda to, m, e: e["node"] == "p2" and to == "a1" and m["type"] == "VoteRequest" and m["term"] == 1)
    last = run.events("a1")[-1]
    assert last["state"]["acc_term"] == 2
    vote = run.event("a1", run.find("a1", _is("Vote", acc_term=1)))
    forged = _vote_copy(vote, last["lc"] + 1, request, run.fresh_id("a1"), "p2")
    forged["state"] = dict(last["state"], acc_term=1)
    msg = forged["sent"][0]["msg"]
    msg["history"] = [h for h in last["state"]["acc_history"] if h["lsn"] <= last["state"]["acc_flush"]]
    msg["flush"] = last["state"]["acc_flush"]
    at = run.append("a1", forged)
    return "a1", at, (
        f"forged a1.ndjson:{at} (lc {forged['lc']}, after a1's last event, in term 2): a Vote that consumes "
        f"p2's term-1 VoteRequest {request}, logs acc_term 1 and sends a term-1 VoteResponse to p2")


@case("commit-without-quorum", "election", """
    CollectAck(p, m) sets commit_lsn to c == Min(QuorumFlush(acks), Len(prop_wal[p]) + 1), where
    QuorumFlush is the highest LSN acknowledged by a quorum (IsQuorum: more than half of
    Acceptors).  When p1 counts a1's ack of flush 6, only a1 has acknowledged the five entries
    (acks a1:6, a2:1, a3:1), so QuorumFlush is 1 and commit_lsn stays 1; the edited event logs
    prop_commit = 6, a commit on one acceptor of three.""")
def _(run: Run):
    line = run.find("p1", lambda e: e["action"] == "CollectAck" and e["state"]["prop_acks"] == {"a1": 6, "a2": 1, "a3": 1})
    e = run.event("p1", line)
    assert e["state"]["prop_commit"] == 1
    e["state"]["prop_commit"] = 6
    run.replace("p1", line, e)
    return "p1", line, f"p1.ndjson:{line} (CollectAck of a1's ack flush=6, acks a1:6,a2:1,a3:1): prop_commit 1 -> 6"


@case("commit-below-term-start", "figure8", """
    CollectAck(p, m) advances commit_lsn only if CommitAllowed(p, c) == c >= PropStartLsn(p): a
    leader counts acks only at or above the start of its own term (Raft figure 8).  p3 leads
    term 3 with history [0@1,1@1,3@3]; when a2 acks flush=2, x is on a quorum (a1:3, a2:2) and
    QuorumFlush is 2, but 2 < 3, the start of term 3, so commit stays 1.  The edited event logs
    prop_commit = 2 (the CommitIgnoringTermStart mutant): a2's flushed history still ends in
    term 1, a3's in term 2, so an election won by a2 and a3 would pick a3 and cut x.""")
def _(run: Run):
    line = run.find("p3", lambda e: e["action"] == "CollectAck" and e["state"]["prop_acks"].get("a2") == 2)
    e = run.event("p3", line)
    assert e["state"]["prop_commit"] == 1 and e["state"]["prop_history"][-1] == {"term": 3, "lsn": 3}
    e["state"]["prop_commit"] = 2
    run.replace("p3", line, e)
    return "p3", line, f"p3.ndjson:{line} (CollectAck of a2's ack flush=2 in term 3): prop_commit 1 -> 2"


@case("append-before-elected", "figure8", """
    AcceptAppend(a, m) is guarded by Streaming(a) == acc_term[a] > 0 /\\ LastLogTerm(acc_history[a])
    = acc_term[a]: an acceptor takes WAL only once it has processed the ProposerElected of its
    current term.  a2 voted for p2 in term 2 but p2's ProposerElected never reached it, so its
    history still ends with term 1; the forged event has a2 take p2's term-2 entry at position 1
    anyway (the StreamingBeforeElected mutant), writing a term-2 entry its history does not
    describe.""")
def _(run: Run):
    request, msg, sender = run.sent(lambda to, m, e: m["type"] == "AppendRequest" and m["term"] == 2 and m["entries"])
    events = run.events("a2")
    line = max(n for n, e in enumerate(events, 1) if e["state"]["acc_term"] == 2 and e["lc"] < sender["lc"] + 1)
    before, after = events[line - 1], events[line]
    assert before["state"]["acc_history"][-1]["term"] == 1 and after["action"] == "Vote"
    lc = max(before["lc"], sender["lc"]) + 1
    assert lc < after["lc"]
    forged = {"lc": lc, "node": "a2", "action": "AcceptAppend", "args": {},
              "state": dict(before["state"], acc_wal=msg["entries"]), "sent": [], "recv": request}
    at = run.insert("a2", line, forged)
    to = next(s["to"] for s in sender["sent"] if s["id"] == request)
    return "a2", at, (
        f"forged a2.ndjson:{at} (lc {lc}, a2 in term 2 with history ending in term 1): an AcceptAppend of "
        f"p2's term-2 AppendRequest {request} (p2's copy to {to}; the spec's requests have no addressee) "
        f"logging acc_wal [[2,1]]")


@case("truncation-below-commit", "truncation", """
    AcceptElected(a, m) cuts the WAL at start == TruncationPoint(a, m.history), the highest
    common point of the leader's history and a's flushed history, and is guarded by start >=
    acc_commit[a]: truncation never goes below commit_lsn.  a1 holds [1,1,1,1] flushed to 5 with
    commit 3; p2's history [0@1,1@1,2@3] gives the point 3, cutting only the uncommitted cd.
    The edited event logs a cut at term 1's start (acc_wal [], acc_flush 1, the
    TruncateAtCommonTermStart mutant), below acc_commit = 3: the committed ab is gone.""")
def _(run: Run):
    line = run.find("a1", _is("AcceptElected", acc_term=2))
    e = run.event("a1", line)
    assert e["state"]["acc_commit"] == 3 and e["state"]["acc_flush"] == 3
    e["state"]["acc_wal"] = []
    e["state"]["acc_flush"] = 1
    run.replace("a1", line, e)
    return "a1", line, f"a1.ndjson:{line} (AcceptElected of p2's term 2): acc_wal [[1,2]] -> [], acc_flush 3 -> 1 (acc_commit stays 3)"


@case("restart-loses-flushed-wal", "crash-loses-unflushed", """
    RestartAcceptor(a) keeps the flushed WAL and any prefix of the rest: acc_wal' =
    SubSeq(acc_wal[a], 1, k - 1) and acc_flush' = k for some k \in acc_flush[a]..(Len(acc_wal[a])
    + 1) (term, history and flushed WAL are durable).  a1 crashes with "ab" flushed (acc_flush
    3) and "cd" only written; it must come back with wal [1,1] and flush 3 (or more of "cd").
    The edited event logs wal [1] and flush 2: a flushed (and committed) entry lost in the
    crash.""")
def _(run: Run):
    line = run.find("a1", _is("RestartAcceptor"))
    e = run.event("a1", line)
    assert e["state"]["acc_wal"] == [[1, 2]] and e["state"]["acc_flush"] == 3
    e["state"]["acc_wal"] = [[1, 1]]
    e["state"]["acc_flush"] = 2
    run.replace("a1", line, e)
    return "a1", line, f"a1.ndjson:{line} (RestartAcceptor): acc_wal [[1,2]] -> [[1,1]], acc_flush 3 -> 2"


@case("wrong-term-history", "figure8", """
    AcceptElected(a, m) adopts the leader's history: acc_history' = m.history.  p3's
    ProposerElected of term 3 carries [0@1,1@1,3@3] (term 1 up to position 3, the recovered x,y);
    the edited event has a2 store [0@1,1@1,3@1] instead, a history under which x and y would be
    term-3 entries: LogMatchesHistory, recovery (WalFromHistory) and truncation would all read
    a2's WAL wrong.""")
def _(run: Run):
    line = run.find("a2", _is("AcceptElected", acc_term=3))
    e = run.event("a2", line)
    assert e["state"]["acc_history"][-1] == {"term": 3, "lsn": 3}
    e["state"]["acc_history"][-1]["lsn"] = 1
    run.replace("a2", line, e)
    return "a2", line, f"a2.ndjson:{line} (AcceptElected of p3's term 3): logged acc_history's last switch 3@3 -> 3@1"


@case("ack-before-flush", "crash-loses-unflushed", """
    AcceptAppend(a, m) only writes: its network effect is AckOnWrite(a, wal) == msgs, no reply;
    the AppendResponse comes from Flush, once the entries are fsync'd.  a1 writes "cd" (acc_wal
    [1,1,1,1], acc_flush 3) and crashes before the fsync; the edited event acknowledges flush=5
    at the write (the AckOnWriteBeforeFlush mutant), so p1 could count two entries that the
    crash then erases.""")
def _(run: Run):
    line = run.find("a1", lambda e: e["action"] == "AcceptAppend" and e["state"]["acc_wal"] == [[1, 4]] and e["state"]["acc_flush"] == 3)
    e = run.event("a1", line)
    assert run.event("a1", line + 1)["action"] == "RestartAcceptor"
    msg_id = run.fresh_id("a1")
    e["sent"] = [{"id": msg_id, "to": "p1", "msg": {"type": "AppendResponse", "from": "a1", "term": 1, "flush": 5}}]
    run.replace("a1", line, e)
    return "a1", line, f"a1.ndjson:{line} (AcceptAppend of \"cd\", acc_flush 3): sent [] -> an AppendResponse to p1 with flush=5 (id {msg_id})"


@case("recv-never-sent", "election", """
    CollectVote(p, m) is an action of Next only for m \\in msgs: a proposer collects a vote some
    acceptor sent.  The edited event has p1 collect message a3:9, which no event of the run
    sends (a3 sends four messages), so no step of the spec explains it.""")
def _(run: Run):
    line = run.find("p1", _is("CollectVote"))
    e = run.event("p1", line)
    ghost = "a3:9"
    assert ghost not in {s["id"] for node in run.nodes() for x in run.events(node) for s in x["sent"]}
    e["recv"] = ghost
    run.replace("p1", line, e)
    return "p1", line, f"p1.ndjson:{line} (p1's first CollectVote): recv a1:2 -> {ghost}, an id no event sends"


@case("reply-to-previous-incarnation", "figure8", """
    RestartProposer(p) drops the replies in flight to the old incarnation: msgs' = {m \\in msgs :
    ~AddressedTo(m, p)} \\cup {Greeting}, as its connections are.  a3's GreetingResponse to p1
    (term 0) was sent before p1 restarted and never delivered; the edited event has the
    restarted p1 collect it (CollectTerm), a message no longer in the spec's network.  (Stale
    greeting replies are how a restarted proposer could pick its old term again and win it
    twice.)""")
def _(run: Run):
    restart = run.find("p1", _is("RestartProposer"), nth=1)
    restart_lc = run.event("p1", restart)["lc"]
    stale, _, _ = run.sent(lambda to, m, e: to == "p1" and m["type"] == "GreetingResponse" and m["from"] == "a3" and e["lc"] < restart_lc)
    assert stale not in run.received()
    line = run.find("p1", lambda e: e["action"] == "CollectTerm" and e["lc"] > restart_lc and e["recv"].startswith("a3:"))
    e = run.event("p1", line)
    old = e["recv"]
    e["recv"] = stale
    run.replace("p1", line, e)
    return "p1", line, (
        f"p1.ndjson:{line} (CollectTerm after p1's restart at p1.ndjson:{restart}): recv {old} -> {stale}, "
        f"a3's GreetingResponse to p1's previous incarnation")


@case("vote-of-another-term-collected", "proposer-crash-mid-recovery", """
    CollectVote(p, m) is guarded by m.term = prop_term[p]: a vote of an older campaign says
    nothing about this one.  p1, campaigning for term 3, is made to collect a2's term-1 vote,
    given to p1's first campaign.  A proposer campaigns once per incarnation, so a vote of
    another term can only be a reply to an earlier incarnation, and RestartProposer dropped it
    (~AddressedTo(m, p)): the checker rejects the event because the message is not in the
    spec's network, before the term guard is evaluated.""")
def _(run: Run):
    line = run.find("p1", lambda e: e["action"] == "CollectVote" and e["state"]["prop_term"] == 3 and e["recv"].startswith("a2:"))
    old_vote, _, _ = run.sent(lambda to, m, e: to == "p1" and m["type"] == "VoteResponse" and m["from"] == "a2" and m["term"] == 1)
    e = run.event("p1", line)
    old = e["recv"]
    e["recv"] = old_vote
    run.replace("p1", line, e)
    return "p1", line, f"p1.ndjson:{line} (CollectVote in p1's term-3 campaign): recv {old} -> {old_vote}, a2's term-1 VoteResponse"


@case("ack-of-another-term-collected", "figure8", """
    CollectAck(p, m) is guarded by prop_phase[p] = "leader" /\\ m.term = prop_term[p]: only an ack
    of p's own term comes from an acceptor that processed p's ProposerElected, whose flushed WAL
    is then a prefix of p's.  p1, leading term 4, is made to count a1's AppendResponse of term 1
    (acknowledging p1's first term, long superseded); AppendResponses have no addressee, so the
    message is still in the spec's network, and the term guard rejects it.""")
def _(run: Run):
    line = run.find("p1", lambda e: e["action"] == "CollectAck" and e["state"]["prop_term"] == 4)
    stale, _, _ = run.sent(lambda to, m, e: m["type"] == "AppendResponse" and m["from"] == "a1" and m["term"] == 1)
    e = run.event("p1", line)
    old = e["recv"]
    e["recv"] = stale
    run.replace("p1", line, e)
    return "p1", line, f"p1.ndjson:{line} (p1's first CollectAck in term 4): recv {old} -> {stale}, a1's AppendResponse of term 1"


@case("leader-without-quorum", "election", """
    BecomeLeader(p) is guarded by IsQuorum(prop_heard[p]) (more than half of Acceptors voted):
    then no other proposer can win the term, and the donor's WAL holds every committed entry.
    With p1's second CollectVote deleted, p1 has heard one vote (a1) of three when it becomes
    leader of term 1.""")
def _(run: Run):
    line = run.find("p1", _is("CollectVote"), nth=1)
    assert run.event("p1", line + 1)["action"] == "BecomeLeader"
    run.delete("p1", line)
    return "p1", line, f"deleted p1.ndjson:{line} (p1's second CollectVote, of a2's vote); BecomeLeader moves up to line {line}"


@case("two-leaders-in-term", "vote-replay-after-crash", """
    ElectionSafety: at most one leader per term, ever.  It rests on BecomeLeader(p)'s guard
    IsQuorum(prop_heard[p]) and on VoteAllowed (each acceptor votes once per term), so that
    quorums of the same term intersect.  p1 wins term 1 with a2 and a3; p2, campaigning for the
    same term, got no vote (prop_heard = {}), yet the forged event makes it leader of term 1
    too.""")
def _(run: Run):
    last = run.events("p2")[-1]
    assert last["state"]["prop_phase"] == "campaign" and last["state"]["prop_term"] == 1
    history = [{"term": 0, "lsn": 1}, {"term": 1, "lsn": 1}]
    ids = iter(range(int(run.fresh_id("p2").split(":")[1]), 10**6))
    forged = {
        "lc": last["lc"] + 1, "node": "p2", "action": "BecomeLeader", "args": {},
        "state": dict(last["state"], prop_phase="leader", prop_history=history),
        "sent": [{"id": f"p2:{next(ids)}", "to": a, "msg": {"type": "ProposerElected", "term": 1, "history": history}}
                 for a in ("a1", "a2", "a3")],
        "recv": None,
    }
    at = run.append("p2", forged)
    return "p2", at, (
        f"forged p2.ndjson:{at} (lc {forged['lc']}): p2, campaigning in term 1 with no vote, becomes leader of "
        f"term 1 (history [0@1,1@1]) and sends ProposerElected to a1..a3")


@case("leader-with-half-the-votes", "split-vote", """
    BecomeLeader(p) is guarded by IsQuorum(prop_heard[p]), IsQuorum(S) ==
    Cardinality(S) * 2 > Cardinality(Acceptors): a strict majority, so any two quorums intersect.  Of four acceptors, p2 holds the
    votes of a3 and a4 for term 1 and p1 those of a1 and a2; the edited event has p2 become
    leader with 2 of 4 (the BadQuorum mutant, n div 2), after which p1 could do the same:
    two leaders of term 1.""")
def _(run: Run):
    line = run.find("p2", _is("RestartProposer"), nth=1)
    before = run.event("p2", line - 1)
    assert before["state"]["prop_heard"] == ["a3", "a4"] and before["state"]["prop_term"] == 1
    e = run.event("p2", line)
    history = [{"term": 0, "lsn": 1}, {"term": 1, "lsn": 1}]
    e["action"] = "BecomeLeader"
    e["state"] = dict(before["state"], prop_phase="leader", prop_history=history)
    for s in e["sent"]:
        s["msg"] = {"type": "ProposerElected", "term": 1, "history": history}
    run.replace("p2", line, e)
    return "p2", line, (
        f"p2.ndjson:{line} (the RestartProposer when p2's election timer fires, heard {{a3,a4}} of 4): "
        f"made a BecomeLeader of term 1 (state leader, history [0@1,1@1]; its four Greetings made ProposerElected of term 1)")


@case("commit-goes-back", "commit-propagation", """
    CollectAck(p, m) changes commit_lsn only IF c > prop_commit[p]: commit_lsn only grows
    (CommitLsnMonotonic: prop_phase'[p] = "leader" => prop_commit'[p] >= prop_commit[p]).  p1
    has committed "abc" (commit 4) when a1's ack of flush=4 is delivered again; the edited
    event logs prop_commit = 3, a leader taking back a commit it may already have reported.""")
def _(run: Run):
    first = run.find("p1", _is("CollectAck", prop_commit=4))
    line = run.find("p1", lambda e: e["action"] == "CollectAck" and e["state"]["prop_commit"] == 4 and e["recv"].startswith("a1:"), nth=1)
    assert line > first
    e = run.event("p1", line)
    e["state"]["prop_commit"] = 3
    run.replace("p1", line, e)
    return "p1", line, f"p1.ndjson:{line} (a CollectAck of a1's ack flush=4, redelivered, after commit reached 4): prop_commit 4 -> 3"


@case("unknown-action", "election", """
    Every event must be a step of Next, named as the spec's action.  The edited event calls a2's
    fsync completion "Fsync"; the spec's action is Flush(a), and no action named Fsync exists,
    so the event is no step of the spec.""")
def _(run: Run):
    line = run.find("a2", _is("Flush"))
    e = run.event("a2", line)
    e["action"] = "Fsync"
    run.replace("a2", line, e)
    return "a2", line, f"a2.ndjson:{line}: action \"Flush\" -> \"Fsync\""


@case("duplicated-flush", "election", """
    Flush(a) is guarded by acc_flush[a] <= Len(acc_wal[a]): something is written and not yet
    flushed.  a3's Flush of the five entries is logged twice (same line, same clock, same ack
    id); after the first, acc_flush = 6 = Len(acc_wal) + 1, nothing is left to fsync, and the
    second is no step of the spec.""")
def _(run: Run):
    line = run.find("a3", _is("Flush"))
    run.insert("a3", line, run.event("a3", line))
    return "a3", line + 1, f"a3.ndjson:{line} (a3's Flush, acc_flush 1 -> 6) duplicated as line {line + 1}"


@case("donor-by-flush", "donor-choice", """
    CollectVote(p, m) replaces the donor if BetterDonor(m.history, m.flush, prop_history[p],
    Len(prop_wal[p]) + 1): a higher last_log_term wins, the longer WAL only among equals.  p3
    holds a1's vote ([0@1,1@1], flush 4: "aaa" of term 1) when a2's arrives ([0@1,1@1,2@1],
    flush 2: the committed "b" of term 2); last_log_term 2 > 1, so a2 must become the donor.
    The edited event keeps a1 (the BetterDonorByFlush mutant), and p3 would lead with "aaa" and
    cut the committed "b".""")
def _(run: Run):
    line = run.find("p3", _is("CollectVote"), nth=1)
    before, e = run.event("p3", line - 1), run.event("p3", line)
    assert before["state"]["prop_wal"] == [[1, 3]] and e["state"]["prop_wal"] == [[2, 1]]
    e["state"]["prop_history"] = before["state"]["prop_history"]
    e["state"]["prop_wal"] = before["state"]["prop_wal"]
    run.replace("p3", line, e)
    return "p3", line, (
        f"p3.ndjson:{line} (p3's CollectVote of a2's vote): prop_history [0@1,1@1,2@1] -> [0@1,1@1] and "
        f"prop_wal [[2,1]] -> [[1,3]], a1's (the previous donor's)")


@case("term-forgotten-on-restart", "vote-replay-after-crash", """
    RestartAcceptor(a) keeps the term: acc_term' = TermAfterRestart(a) == acc_term[a] (the term is
    persisted before any reply).  a1 voted for p1 in term 1 and crashed; the edited event has it
    come back with acc_term 0, the term of its last persisted history (the
    TermForgottenOnRestart mutant), free to vote in term 1 again, e.g. for p2.""")
def _(run: Run):
    line = run.find("a1", _is("RestartAcceptor"))
    e = run.event("a1", line)
    assert e["state"]["acc_term"] == 1
    e["state"]["acc_term"] = 0
    run.replace("a1", line, e)
    return "a1", line, f"a1.ndjson:{line} (RestartAcceptor after a1's term-1 vote): acc_term 1 -> 0"


@case("acceptor-commit-above-flush", "commit-propagation", """
    AcceptAppend(a, m) sets acc_commit' = Max(acc_commit[a], Min(m.commit, acc_flush[a])): an
    acceptor takes the leader's commit_lsn capped by its own flush_lsn, the part of its WAL known
    to match the leader's.  a3 writes "abc" from a request carrying commit=4 while its flush is
    still 1, so its commit stays 1; the edited event logs acc_commit = 4, claiming committed
    entries it has not flushed.""")
def _(run: Run):
    line = run.find("a3", lambda e: e["action"] == "AcceptAppend" and e["state"]["acc_wal"] == [[1, 3]] and e["state"]["acc_flush"] == 1)
    e = run.event("a3", line)
    assert e["state"]["acc_commit"] == 1
    e["state"]["acc_commit"] = 4
    run.replace("a3", line, e)
    return "a3", line, f"a3.ndjson:{line} (a3's AcceptAppend of \"abc\" with commit=4, acc_flush 1): acc_commit 1 -> 4"


# ---------------------------------------------------------------------------------------------


def write_reason(name: str, node: str, line: int, why: str, edit: str, scenario: str) -> None:
    text = f"expect: {node}.ndjson:{line}\nwhy: {why}\nedit: {edit} (relative to traces/accepted/scenarios/{scenario}/)\n"
    (OUT / f"{name}.reason").write_text(text)


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from conformance.replay import check_run

    OUT.mkdir(parents=True, exist_ok=True)
    for stale in OUT.iterdir():
        if stale.name.removesuffix(".reason") not in CASES:
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    failures = 0
    for name, (scenario, why, fn) in CASES.items():
        run = Run(scenario, name)
        node, line, edit = fn(run)
        write_reason(name, node, line, why, edit, scenario)
        result = check_run([run.dir])
        d = result.divergence
        got = (Path(d.event.file).name, d.event.line) if d else None
        ok = result.verdict == "rejected" and got == (f"{node}.ndjson", line)
        failures += not ok
        where = f"{got[0]}:{got[1]}" if got else "-"
        print(f"{'ok  ' if ok else 'FAIL'} {name:32} {result.verdict:8} {where:14} {d.reason if d else ''}"
              + (f" [{d.guard}]" if d and d.guard else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
