"""spec/ProposerAcceptor.tla transcribed: the spec as a Python state machine.

Theory of operation
===================

This module is the spec, not the implementation: it imports nothing from `impl/`, and each
TLA+ operator has a Python twin of the same name, in the same order as the spec, so a reader
can hold the two side by side.  It serves two checkers: the trace replay
(`conformance/replay.py`), which asks whether each logged event is a step of the spec, and the
breadth-first search that tests compare with TLC's state count (`tests/test_machine.py`), which
ties this transcription to the TLA+ text.

===================  ==========================  ============================================
TLA+                 Python                      notes
===================  ==========================  ============================================
a state              `State` (frozen, hashable)  fields named as the spec's variables
a record, function   `Record` (conformance/tlc)  one type for both, as in TLA+
a sequence           tuple
a set                frozenset
Init                 `init(model)`
each action A(x, y)  `a(model, s, x, y)`         returns the next State, or `Disabled`
                                                 naming the first false guard conjunct
Next                 `successors(model, s)`      every (action, args, next state)
each invariant       `invariants(model, s)`      the names of the invariants that fail
===================  ==========================  ============================================

Positions are the spec's (1 means "nothing"); node ids are whatever the model names them:
strings for traces, `ModelValue`s for TLC's states (`conformance/mc.py` builds its models
with those; a `ModelValue` does not equal the string of its name).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import attrs

from conformance.seq import Terms
from conformance.tlc import Record

__all__ = [
    "ACTIONS",
    "Disabled",
    "Model",
    "State",
    "init",
    "invariants",
    "successors",
]

Msg = Record  # a message is a record; its `type` field says which


@attrs.frozen
class Model:
    """The constants: Proposers and Acceptors (sorted tuples of node ids)."""

    proposers: tuple[Any, ...]
    acceptors: tuple[Any, ...]


@attrs.frozen
class Disabled:
    """An action's guard is false; `conjunct` names the first false conjunct as in the spec."""

    action: str
    conjunct: str

    def __bool__(self) -> bool:
        return False


class State(NamedTuple):
    """One state of the spec: its variables, by name.  (A NamedTuple: replay makes one per
    step, and `_replace` is several times cheaper than attrs.evolve.)"""

    prop_phase: Record
    prop_term: Record
    prop_heard: Record
    prop_history: Record
    prop_wal: Record
    prop_acks: Record
    prop_commit: Record
    acc_term: Record
    acc_history: Record
    acc_wal: Record
    acc_flush: Record
    acc_commit: Record
    msgs: frozenset[Msg]
    committed_log: Terms
    elections: frozenset[Record]

    def with_(self, **changes: Any) -> State:
        return self._replace(**changes)


def _set(f: Record, key: Any, value: Any) -> Record:
    """[f EXCEPT ![key] = value]."""
    items = dict(f.items())
    items[key] = value
    return Record(items)


# ---------------------------------------------------------------------------------------------
# Helpers (same order as the spec)
# ---------------------------------------------------------------------------------------------


def AddressedTo(m: Msg, p: Any) -> bool:
    return "to" in m and m["to"] == p


def IsPrefix(s: tuple, t: tuple) -> bool:
    return len(s) <= len(t) and t[: len(s)] == s


def IsQuorum(model: Model, S: frozenset | set) -> bool:
    return len(S) * 2 > len(model.acceptors)


def _rec(term: int, lsn: int) -> Record:
    return Record(term=term, lsn=lsn)


InitHistory = (_rec(0, 1),)


def LastLogTerm(h: tuple) -> int:
    return h[-1]["term"]


def TermAt(h: tuple, l: int) -> int:
    term = h[0]["term"]
    for switch in h:
        if switch["lsn"] > l:
            break
        term = switch["term"]
    return term


def WalFromHistory(h: tuple, f: int) -> Terms:
    r"""[l \in 1..(f - 1) |-> TermAt(h, l)], built run by run."""
    return Terms.from_runs(
        (e["term"], min(h[i + 1]["lsn"] if i + 1 < len(h) else f, f) - e["lsn"]) for i, e in enumerate(h)
    )


def FlushedHistory(s: State, a: Any) -> tuple:
    return tuple(e for e in s.acc_history[a] if e["lsn"] <= s.acc_flush[a])


def CommonPrefixLen(h1: tuple, h2: tuple) -> int:
    n = 0
    for e1, e2 in zip(h1, h2):
        if e1["term"] != e2["term"]:
            break
        n += 1
    return n


def HighestCommonPoint(ph: tuple, ah: tuple, f: int) -> int:
    i = CommonPrefixLen(ph, ah)
    acc_end = ah[i]["lsn"] if i < len(ah) else f
    return f if i == len(ph) else min(ph[i]["lsn"], acc_end)


def TruncationPoint(s: State, a: Any, h: tuple) -> int:
    return HighestCommonPoint(h, FlushedHistory(s, a), s.acc_flush[a])


def BetterDonor(h1: tuple, f1: int, h2: tuple, f2: int) -> bool:
    return LastLogTerm(h1) > LastLogTerm(h2) or (LastLogTerm(h1) == LastLogTerm(h2) and f1 > f2)


def VoteAllowed(s: State, a: Any, t: int) -> bool:
    return t > s.acc_term[a]


def Streaming(s: State, a: Any) -> bool:
    return s.acc_term[a] > 0 and LastLogTerm(s.acc_history[a]) == s.acc_term[a]


def PropStartLsn(s: State, p: Any) -> int:
    return s.prop_history[p][-1]["lsn"]


def CommitAllowed(s: State, p: Any, c: int) -> bool:
    return c >= PropStartLsn(s, p)


def QuorumFlush(model: Model, acks: Record) -> int:
    ok = {l for l in (acks[a] for a in model.acceptors) if IsQuorum(model, {b for b in model.acceptors if acks[b] >= l})}
    return max(ok) if ok else 0


def NoAcks(model: Model) -> Record:
    return Record((a, 0) for a in model.acceptors)


# ---------------------------------------------------------------------------------------------
# Init
# ---------------------------------------------------------------------------------------------


def init(model: Model) -> State:
    P, A = model.proposers, model.acceptors
    return State(
        prop_phase=Record((p, "greeting") for p in P),
        prop_term=Record((p, 0) for p in P),
        prop_heard=Record((p, frozenset()) for p in P),
        prop_history=Record((p, ()) for p in P),
        prop_wal=Record((p, Terms()) for p in P),
        prop_acks=Record((p, NoAcks(model)) for p in P),
        prop_commit=Record((p, 1) for p in P),
        acc_term=Record((a, 0) for a in A),
        acc_history=Record((a, InitHistory) for a in A),
        acc_wal=Record((a, Terms()) for a in A),
        acc_flush=Record((a, 1) for a in A),
        acc_commit=Record((a, 1) for a in A),
        msgs=frozenset(Record(type="Greeting", **{"from": p}) for p in P),
        committed_log=Terms(),
        elections=frozenset(),
    )


# ---------------------------------------------------------------------------------------------
# Proposer actions
# ---------------------------------------------------------------------------------------------



def RestartProposer(model: Model, s: State, p: Any) -> State:
    return s.with_(
        prop_phase=_set(s.prop_phase, p, "greeting"),
        prop_term=_set(s.prop_term, p, 0),
        prop_heard=_set(s.prop_heard, p, frozenset()),
        prop_history=_set(s.prop_history, p, ()),
        prop_wal=_set(s.prop_wal, p, Terms()),
        prop_acks=_set(s.prop_acks, p, NoAcks(model)),
        prop_commit=_set(s.prop_commit, p, 1),
        msgs=frozenset(m for m in s.msgs if not AddressedTo(m, p)) | {Record(type="Greeting", **{"from": p})},
    )


def CollectTerm(model: Model, s: State, p: Any, m: Msg) -> State | Disabled:
    if not (m["type"] == "GreetingResponse" and m["to"] == p):
        return Disabled("CollectTerm", 'm.type = "GreetingResponse" /\\ m.to = p')
    if s.prop_phase[p] != "greeting":
        return Disabled("CollectTerm", 'prop_phase[p] = "greeting"')
    return s.with_(
        prop_heard=_set(s.prop_heard, p, s.prop_heard[p] | {m["from"]}),
        prop_term=_set(s.prop_term, p, max(s.prop_term[p], m["term"])),
    )


def StartCampaign(model: Model, s: State, p: Any) -> State | Disabled:
    if s.prop_phase[p] != "greeting":
        return Disabled("StartCampaign", 'prop_phase[p] = "greeting"')
    if not IsQuorum(model, s.prop_heard[p]):
        return Disabled("StartCampaign", "IsQuorum(prop_heard[p])")
    term = s.prop_term[p] + 1
    return s.with_(
        prop_phase=_set(s.prop_phase, p, "campaign"),
        prop_term=_set(s.prop_term, p, term),
        prop_heard=_set(s.prop_heard, p, frozenset()),
        msgs=s.msgs | {Record(type="VoteRequest", term=term, **{"from": p})},
    )


def CollectVote(model: Model, s: State, p: Any, m: Msg) -> State | Disabled:
    if not (m["type"] == "VoteResponse" and m["to"] == p):
        return Disabled("CollectVote", 'm.type = "VoteResponse" /\\ m.to = p')
    if not (s.prop_phase[p] == "campaign" and m["term"] == s.prop_term[p]):
        return Disabled("CollectVote", 'prop_phase[p] = "campaign" /\\ m.term = prop_term[p]')
    s2 = s.with_(prop_heard=_set(s.prop_heard, p, s.prop_heard[p] | {m["from"]}))
    if not s.prop_heard[p] or BetterDonor(m["history"], m["flush"], s.prop_history[p], len(s.prop_wal[p]) + 1):
        s2 = s2.with_(
            prop_history=_set(s.prop_history, p, m["history"]),
            prop_wal=_set(s.prop_wal, p, WalFromHistory(m["history"], m["flush"])),
        )
    return s2


def BecomeLeader(model: Model, s: State, p: Any) -> State | Disabled:
    if s.prop_phase[p] != "campaign":
        return Disabled("BecomeLeader", 'prop_phase[p] = "campaign"')
    if not IsQuorum(model, s.prop_heard[p]):
        return Disabled("BecomeLeader", "IsQuorum(prop_heard[p])")
    h = s.prop_history[p] + (_rec(s.prop_term[p], len(s.prop_wal[p]) + 1),)
    return s.with_(
        prop_phase=_set(s.prop_phase, p, "leader"),
        prop_history=_set(s.prop_history, p, h),
        msgs=s.msgs | {Record(type="ProposerElected", term=s.prop_term[p], history=h)},
        elections=s.elections | {Record(term=s.prop_term[p], leader=p, history=h)},
    )


def NewEntry(model: Model, s: State, p: Any) -> State | Disabled:
    if s.prop_phase[p] != "leader":
        return Disabled("NewEntry", 'prop_phase[p] = "leader"')
    return s.with_(prop_wal=_set(s.prop_wal, p, s.prop_wal[p] + (s.prop_term[p],)))


def SendAppend(model: Model, s: State, p: Any, l: int) -> State | Disabled:
    if s.prop_phase[p] != "leader":
        return Disabled("SendAppend", 'prop_phase[p] = "leader"')
    wal = s.prop_wal[p]
    if not 1 <= l <= len(wal) + 1:
        return Disabled("SendAppend", "l \\in 1..(Len(prop_wal[p]) + 1)")
    entries = (wal[l - 1],) if l <= len(wal) else ()
    m = Record(type="AppendRequest", term=s.prop_term[p], lsn=l, entries=entries, commit=s.prop_commit[p])
    return s.with_(msgs=s.msgs | {m})


def CollectAck(model: Model, s: State, p: Any, m: Msg) -> State | Disabled:
    if m["type"] != "AppendResponse":
        return Disabled("CollectAck", 'm.type = "AppendResponse"')
    if not (s.prop_phase[p] == "leader" and m["term"] == s.prop_term[p]):
        return Disabled("CollectAck", 'prop_phase[p] = "leader" /\\ m.term = prop_term[p]')
    acks = _set(s.prop_acks[p], m["from"], max(s.prop_acks[p][m["from"]], m["flush"]))
    c = min(QuorumFlush(model, acks), len(s.prop_wal[p]) + 1)
    s2 = s.with_(prop_acks=_set(s.prop_acks, p, acks))
    if c > s.prop_commit[p] and CommitAllowed(s, p, c):
        prefix = s.prop_wal[p][: c - 1]
        s2 = s2.with_(
            prop_commit=_set(s.prop_commit, p, c),
            committed_log=s.committed_log if IsPrefix(prefix, s.committed_log) else prefix,
        )
    return s2


# ---------------------------------------------------------------------------------------------
# Acceptor actions
# ---------------------------------------------------------------------------------------------


def RestartAcceptor(model: Model, s: State, a: Any, k: int, c: int) -> State | Disabled:
    """The spec's `\\E k \\in acc_flush[a]..(Len(acc_wal[a]) + 1)` (the WAL that survives,
    which is flushed from then on) and `\\E c \\in 1..acc_commit[a]` are the parameters."""
    if not s.acc_flush[a] <= k <= len(s.acc_wal[a]) + 1:
        return Disabled("RestartAcceptor", "k \\in acc_flush[a]..(Len(acc_wal[a]) + 1)")
    if not 1 <= c <= s.acc_commit[a]:
        return Disabled("RestartAcceptor", "c \\in 1..acc_commit[a]")
    return s.with_(
        acc_wal=_set(s.acc_wal, a, s.acc_wal[a][: k - 1]),
        acc_flush=_set(s.acc_flush, a, k),
        acc_term=_set(s.acc_term, a, s.acc_term[a]),  # TermAfterRestart
        acc_commit=_set(s.acc_commit, a, c),
    )


def AnswerGreeting(model: Model, s: State, a: Any, m: Msg) -> State | Disabled:
    if m["type"] != "Greeting":
        return Disabled("AnswerGreeting", 'm.type = "Greeting"')
    reply = Record(type="GreetingResponse", to=m["from"], term=s.acc_term[a], **{"from": a})
    return s.with_(msgs=s.msgs | {reply})


def Vote(model: Model, s: State, a: Any, m: Msg) -> State | Disabled:
    if m["type"] != "VoteRequest":
        return Disabled("Vote", 'm.type = "VoteRequest"')
    if not VoteAllowed(s, a, m["term"]):
        return Disabled("Vote", "VoteAllowed(a, m.term)")
    reply = Record(
        type="VoteResponse", to=m["from"], term=m["term"], history=FlushedHistory(s, a),
        flush=s.acc_flush[a], **{"from": a},
    )
    return s.with_(acc_term=_set(s.acc_term, a, m["term"]), msgs=s.msgs | {reply})


def AcceptElected(model: Model, s: State, a: Any, m: Msg) -> State | Disabled:
    if m["type"] != "ProposerElected":
        return Disabled("AcceptElected", 'm.type = "ProposerElected"')
    if m["term"] != s.acc_term[a]:
        return Disabled("AcceptElected", "m.term = acc_term[a]")
    start = TruncationPoint(s, a, m["history"])
    if not start >= s.acc_commit[a]:
        return Disabled("AcceptElected", "start >= acc_commit[a]")
    ack = Record(type="AppendResponse", term=s.acc_term[a], flush=start, **{"from": a})
    return s.with_(
        acc_wal=_set(s.acc_wal, a, s.acc_wal[a][: start - 1]),
        acc_flush=_set(s.acc_flush, a, start),
        acc_history=_set(s.acc_history, a, m["history"]),
        msgs=s.msgs | {ack},
    )


def AcceptAppend(model: Model, s: State, a: Any, m: Msg) -> State | Disabled:
    if m["type"] != "AppendRequest":
        return Disabled("AcceptAppend", 'm.type = "AppendRequest"')
    if m["term"] != s.acc_term[a]:
        return Disabled("AcceptAppend", "m.term = acc_term[a]")
    if not Streaming(s, a):
        return Disabled("AcceptAppend", "Streaming(a)")
    wal = s.acc_wal[a]
    if not m["lsn"] <= len(wal) + 1:
        return Disabled("AcceptAppend", "m.lsn <= Len(acc_wal[a]) + 1")
    if m["entries"] and m["lsn"] <= len(wal) and wal[m["lsn"] - 1] != m["entries"][0]:
        return Disabled("AcceptAppend", "m.entries # <<>> /\\ m.lsn <= Len(acc_wal[a]) => acc_wal[a][m.lsn] = m.entries[1]")
    new = wal + (m["entries"][0],) if m["entries"] and m["lsn"] == len(wal) + 1 else wal
    return s.with_(
        acc_wal=_set(s.acc_wal, a, new),
        acc_commit=_set(s.acc_commit, a, max(s.acc_commit[a], min(m["commit"], s.acc_flush[a]))),
    )


def Flush(model: Model, s: State, a: Any) -> State | Disabled:
    if not s.acc_flush[a] <= len(s.acc_wal[a]):
        return Disabled("Flush", "acc_flush[a] <= Len(acc_wal[a])")
    flush = len(s.acc_wal[a]) + 1
    s2 = s.with_(acc_flush=_set(s.acc_flush, a, flush))
    if Streaming(s, a):
        ack = Record(type="AppendResponse", term=s.acc_term[a], flush=flush, **{"from": a})
        s2 = s2.with_(msgs=s.msgs | {ack})
    return s2


def LoseMessage(model: Model, s: State, m: Msg) -> State | Disabled:
    if m not in s.msgs:
        return Disabled("LoseMessage", "m \\in msgs")
    return s.with_(msgs=s.msgs - {m})


# The actions, by name, as the spec's Next lists them.
ACTIONS: dict[str, Callable[..., State | Disabled]] = {
    f.__name__: f
    for f in (
        RestartProposer, StartCampaign, BecomeLeader, NewEntry, SendAppend, CollectTerm,
        CollectVote, CollectAck, RestartAcceptor, Flush, AnswerGreeting, Vote, AcceptElected,
        AcceptAppend, LoseMessage,
    )
}


def successors(model: Model, s: State) -> Iterator[tuple[str, tuple[Any, ...], State]]:
    """Next: every enabled (action, arguments, next state), in the spec's order."""
    for p in model.proposers:
        yield "RestartProposer", (p,), RestartProposer(model, s, p)
        for name, f in (("StartCampaign", StartCampaign), ("BecomeLeader", BecomeLeader), ("NewEntry", NewEntry)):
            t = f(model, s, p)
            if t:
                yield name, (p,), t
        for l in range(1, len(s.prop_wal[p]) + 2):
            t = SendAppend(model, s, p, l)
            if t:
                yield "SendAppend", (p, l), t
        for m in s.msgs:
            for name, f in (("CollectTerm", CollectTerm), ("CollectVote", CollectVote), ("CollectAck", CollectAck)):
                if m["type"] in _RECEIVES[name]:
                    t = f(model, s, p, m)
                    if t:
                        yield name, (p, m), t
    for a in model.acceptors:
        for k in range(s.acc_flush[a], len(s.acc_wal[a]) + 2):
            for c in range(1, s.acc_commit[a] + 1):
                yield "RestartAcceptor", (a, k, c), RestartAcceptor(model, s, a, k, c)
        t = Flush(model, s, a)
        if t:
            yield "Flush", (a,), t
        for m in s.msgs:
            for name, f in (("AnswerGreeting", AnswerGreeting), ("Vote", Vote), ("AcceptElected", AcceptElected), ("AcceptAppend", AcceptAppend)):
                if m["type"] in _RECEIVES[name]:
                    t = f(model, s, a, m)
                    if t:
                        yield name, (a, m), t
    for m in s.msgs:
        yield "LoseMessage", (m,), LoseMessage(model, s, m)


_RECEIVES = {
    "CollectTerm": {"GreetingResponse"},
    "CollectVote": {"VoteResponse"},
    "CollectAck": {"AppendResponse"},
    "AnswerGreeting": {"Greeting"},
    "Vote": {"VoteRequest"},
    "AcceptElected": {"ProposerElected"},
    "AcceptAppend": {"AppendRequest"},
}


# ---------------------------------------------------------------------------------------------
# Invariants
# ---------------------------------------------------------------------------------------------


def FlushedWal(s: State, a: Any) -> tuple[int, ...]:
    return s.acc_wal[a][: s.acc_flush[a] - 1]


def ElectionSafety(model: Model, s: State) -> bool:
    by_term: dict[int, Record] = {}
    for e in s.elections:
        if by_term.setdefault(e["term"], e) != e:
            return False
    return True


def LogIsMonotonic(model: Model, s: State) -> bool:
    """Terms never decrease along a WAL: along its runs, which is the same thing."""
    wals = [s.acc_wal[a] for a in model.acceptors] + [s.prop_wal[p] for p in model.proposers]
    runs = [(w if isinstance(w, Terms) else Terms(w)).runs for w in wals]
    return all(all(r1[0] <= r2[0] for r1, r2 in zip(r, r[1:])) for r in runs)


def LogMatchesHistory(model: Model, s: State) -> bool:
    """acc_wal[a][l] = TermAt(acc_history[a], l) for every l: the WAL is the history's."""
    return all(
        s.acc_wal[a] == WalFromHistory(s.acc_history[a], len(s.acc_wal[a]) + 1) for a in model.acceptors
    )


def LogSafety(model: Model, s: State) -> bool:
    return all(IsPrefix(s.prop_wal[p][: s.prop_commit[p] - 1], s.committed_log) for p in model.proposers) and all(
        IsPrefix(s.acc_wal[a][: s.acc_commit[a] - 1], s.committed_log) for a in model.acceptors
    )


def CommittedNeverLost(model: Model, s: State) -> bool:
    holders = sum(IsPrefix(s.committed_log, FlushedWal(s, a)) for a in model.acceptors)
    return holders * 2 > len(model.acceptors)


INVARIANTS: dict[str, Callable[[Model, State], bool]] = {
    f.__name__: f for f in (ElectionSafety, LogIsMonotonic, LogMatchesHistory, LogSafety, CommittedNeverLost)
}


def invariants(model: Model, s: State) -> list[str]:
    """The names of the invariants `s` violates (empty if none)."""
    return [name for name, f in INVARIANTS.items() if not f(model, s)]


def refines(before: State, after: State) -> bool:
    """AbstractLog's step or a stutter: the committed log is unchanged or grows by extension."""
    old, new = before.committed_log, after.committed_log
    return new == old or (len(new) > len(old) and new[: len(old)] == old)
