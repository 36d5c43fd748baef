"""Derived steps: several spec steps in one, for the replay's speed.

Theory of operation
===================

An implementation event that moves k bytes stands for k steps of one spec action
(impl/trace.py, abstraction line 3).  Replaying them one by one through conformance/machine.py
is quadratic in a run's bytes, so the replay (conformance/replay.py) applies each such event
as one derived step on the node's own variables: `new_entries`, `send_appends`,
`accept_appends`, and the machine's `Flush` and `CollectAck` rewritten to touch one node.
Each is proved equal to the machine's single steps, the state and the first false guard
conjunct alike, by property tests (tests/test_replay.py); the machine stays the spec.

An AppendRequest of k entries is one `AppendRange` (k one-entry spec messages, maybe a
heartbeat), and the AppendRequests in the spec's network are kept as intervals
(`AppendNet`): nothing ever removes an AppendRequest from the network, so they only grow.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any, NamedTuple

from conformance import machine as M
from conformance.seq import Terms
from conformance.tlc import Record

__all__ = [
    "AppendNet",
    "AppendRange",
    "accept_appends",
    "append_range",
    "collect_ack",
    "flush",
    "logs",
    "new_entries",
    "quorum_flush",
    "send_appends",
]


def _concat(w: Terms, more: Terms) -> Terms:
    return w + more


class AppendRange(NamedTuple):
    """k one-entry AppendRequests (and maybe a heartbeat), as one value.

    It stands for the spec messages [type |-> "AppendRequest", term |-> term, lsn |-> lsn + i,
    entries |-> <<terms[i]>>, commit |-> commit] for each i, and, if `heartbeat`, the one with
    lsn |-> lsn + Len(terms) and entries |-> <<>>.
    """

    term: Any
    lsn: Any
    terms: Terms
    commit: Any
    heartbeat: bool

    def records(self) -> list[Record]:
        """The spec messages themselves (for the machine's own actions and for tests)."""
        ms = [
            Record(type="AppendRequest", term=self.term, lsn=self.lsn + i, entries=(t,), commit=self.commit)
            for i, t in enumerate(self.terms)
        ]
        if self.heartbeat:
            ms.append(Record(type="AppendRequest", term=self.term, lsn=self.lsn + len(self.terms), entries=(), commit=self.commit))
        return ms


_APPEND_FIELDS = frozenset({"type", "term", "lsn", "entries", "commit"})


def append_range(msg: dict[str, Any]) -> AppendRange | None:
    """The AppendRange a logged AppendRequest stands for (as `spec_messages` expands it), or
    None if it has other fields than the spec's or runs that are not [term, integer count]:
    such a message stands for no message the spec sends."""
    if msg.keys() != _APPEND_FIELDS or msg["type"] != "AppendRequest" or type(msg["entries"]) is not list:
        return None
    for run in msg["entries"]:
        if type(run) is not list or len(run) != 2 or type(run[1]) is not int:
            return None
    lsn = msg["lsn"]
    if type(lsn) is not int:
        return None
    terms = Terms.from_runs(msg["entries"])
    return AppendRange(msg["term"], lsn, terms, msg["commit"], not terms.runs)


def logs(msg: Any, m: Record | AppendRange) -> bool:
    """Whether a logged message is `m` itself, field for field as impl/trace.py writes it: a
    quick test that implies `spec_messages(msg) == [m]` (or `append_range(msg) == m`)."""
    if type(m) is Record:
        return m == msg  # (a history would differ: the spec's is a tuple of Records)
    if not (
        type(msg) is dict and msg.keys() == _APPEND_FIELDS and msg["type"] == "AppendRequest"
        and type(msg["lsn"]) is int and msg["lsn"] == m.lsn and msg["term"] == m.term and msg["commit"] == m.commit
        and m.heartbeat is not bool(m.terms.runs)  # append_range's heartbeat: no entries
    ):
        return False
    entries, runs = msg["entries"], m.terms.runs
    if type(entries) is not list or len(entries) != len(runs):
        return False
    for run, (term, count) in zip(entries, runs):
        # the runs as they are (merged, none empty), counts that append_range accepts
        if type(run) is not list or len(run) != 2 or run[0] != term or type(run[1]) is not int or run[1] != count:
            return False
    return True


def new_entries(phase: str, term: int, wal: Terms, k: int) -> Terms | M.Disabled:
    """k NewEntry steps of one proposer: its prop_wal after them.  (Zero steps for k <= 0.)"""
    if k <= 0:
        return wal
    if phase != "leader":
        return M.Disabled("NewEntry", 'prop_phase[p] = "leader"')
    return _concat(wal, Terms.from_runs(((term, k),)))


def send_appends(phase: str, term: int, wal: Terms, commit: int, l: int, k: int) -> AppendRange | M.Disabled:
    """SendAppend(p, l), SendAppend(p, l + 1), ..., max(k, 1) steps: the messages they send."""
    n = max(k, 1)
    if phase != "leader":
        return M.Disabled("SendAppend", 'prop_phase[p] = "leader"')
    last, end = l + n - 1, len(wal) + 1  # the last message's l, and the WAL's end
    if not (1 <= l and last <= end):
        return M.Disabled("SendAppend", "l \\in 1..(Len(prop_wal[p]) + 1)")
    return AppendRange(term, l, wal.segment(l - 1, min(last, end - 1)), commit, last == end)


def accept_appends(
    acc_term: int, history: tuple, wal: Terms, flush: int, commit: int, m: AppendRange
) -> tuple[Terms, int] | M.Disabled:
    """AcceptAppend of each message `m` stands for, in order: (acc_wal, acc_commit) after them.

    The term and Streaming conjuncts read variables no AcceptAppend changes, and so does the
    new commit (max(acc_commit, min(m.commit, acc_flush)), the same for every message); a
    message inside the WAL must match it and changes nothing, and each one past it appends.
    """
    if m.term != acc_term:
        return M.Disabled("AcceptAppend", "m.term = acc_term[a]")
    if not (acc_term > 0 and history[-1]["term"] == acc_term):
        return M.Disabled("AcceptAppend", "Streaming(a)")
    lsn, size = m.lsn, len(wal)
    if not lsn <= size + 1:
        return M.Disabled("AcceptAppend", "m.lsn <= Len(acc_wal[a]) + 1")
    overlap = min(len(m.terms), size - lsn + 1)
    if overlap <= 0:  # all past the WAL (the usual case): each message appends its entry
        return wal + m.terms, max(commit, min(m.commit, flush))
    if wal.segment(lsn - 1, lsn - 1 + overlap) != m.terms.segment(0, overlap):
        return M.Disabled("AcceptAppend", "m.entries # <<>> /\\ m.lsn <= Len(acc_wal[a]) => acc_wal[a][m.lsn] = m.entries[1]")
    new = wal + m.terms.segment(overlap, len(m.terms))
    return new, max(commit, min(m.commit, flush))


def flush(a: Any, acc_term: int, history: tuple, wal: Terms, acc_flush: int) -> tuple[int, Record | None] | M.Disabled:
    """Flush(a): the new acc_flush and the ack it sends (None if a is not streaming)."""
    if not acc_flush <= len(wal):
        return M.Disabled("Flush", "acc_flush[a] <= Len(acc_wal[a])")
    f = len(wal) + 1
    if acc_term > 0 and history[-1]["term"] == acc_term:
        return f, Record(type="AppendResponse", term=acc_term, flush=f, **{"from": a})
    return f, None


def quorum_flush(acks: Iterable[int]) -> int:
    """QuorumFlush: the highest ack a quorum has reached, i.e. the q-th highest of the n acks
    for a quorum of q = n // 2 + 1 (every ack is reached by all acks at or above it, so the
    q-th highest is reached by q; any higher ack by fewer)."""
    ordered = sorted(acks, reverse=True)
    return ordered[len(ordered) // 2]


def collect_ack(
    model: M.Model, phase: str, term: int, history: tuple, wal: Terms, acks: dict[Any, int], commit: int,
    committed_log: Terms, m: Record,
) -> tuple[dict[Any, int], int, Terms] | M.Disabled:
    """CollectAck(p, m): prop_acks[p], prop_commit[p] and committed_log after it."""
    if m["type"] != "AppendResponse":
        return M.Disabled("CollectAck", 'm.type = "AppendResponse"')
    if not (phase == "leader" and m["term"] == term):
        return M.Disabled("CollectAck", 'prop_phase[p] = "leader" /\\ m.term = prop_term[p]')
    new_acks = dict(acks)
    new_acks[m["from"]] = max(acks[m["from"]], m["flush"])
    c = min(quorum_flush(new_acks.values()), len(wal) + 1)
    if c > commit and c >= history[-1]["lsn"]:  # CommitAllowed(p, c)
        # committed_log' = IF IsPrefix(wal[: c - 1], committed_log) THEN committed_log ELSE wal[: c - 1]
        return new_acks, c, committed_log if committed_log.starts_with(wal, c - 1) else wal[: c - 1]
    return new_acks, commit, committed_log


class AppendNet:
    """The AppendRequests in the spec's network, as merged position intervals.

    No action removes an AppendRequest (RestartProposer drops messages with a `to`, and these
    have none; losses are not replayed), so sent ones only accumulate.  The one-entry
    messages of one (term, commit, entry term) are the positions in a set of disjoint,
    non-adjacent intervals; heartbeats are (term, lsn, commit) triples.
    """

    def __init__(self) -> None:
        self.heartbeats: set[tuple[Any, Any, Any]] = set()
        self.spans: dict[tuple[Any, Any, Any], tuple[list[int], list[int]]] = {}

    def add(self, m: AppendRange) -> None:
        pos = m.lsn
        for t, n in m.terms.runs:
            starts, ends = self.spans.setdefault((m.term, m.commit, t), ([], []))
            lo, hi = pos, pos + n
            i = bisect.bisect_left(ends, lo)  # first interval ending at or after lo
            j = bisect.bisect_right(starts, hi)  # past the last starting at or before hi
            if i < j:
                lo, hi = min(lo, starts[i]), max(hi, ends[j - 1])
            starts[i:j] = [lo]
            ends[i:j] = [hi]
            pos += n
        if m.heartbeat:
            self.heartbeats.add((m.term, pos, m.commit))

    def __contains__(self, m: AppendRange) -> bool:
        pos = m.lsn
        for t, n in m.terms.runs:
            span = self.spans.get((m.term, m.commit, t))
            if span is None:
                return False
            starts, ends = span
            i = bisect.bisect_right(starts, pos) - 1
            if i < 0 or ends[i] < pos + n:
                return False
            pos += n
        return not m.heartbeat or (m.term, pos, m.commit) in self.heartbeats
