"""Trace replay: is a run of the implementation a behaviour of the spec?

Theory of operation
===================

`check_run(paths)` reads the per-node ndjson traces of a run (impl/trace.py's format), merges
them in an order consistent with happens-before, and replays every event on the spec's
state machine (`conformance/machine.py`):

1. the event names an action; its arguments are the node, the message it consumed (`recv`,
   looked up by id among the messages sent earlier) and its `args`;
2. the message must be in the spec's network (sent before, and not dropped by a
   RestartProposer of its addressee), and the action's guard must hold;
3. the machine's state after the action, restricted to the node's variables, must equal the
   logged `state`, and every message the event says it sent must be in the network after it;
4. the spec's invariants hold, and the committed log only grows (the refinement to
   AbstractLog).

The first event that fails any of these rejects the run, with a report (`Divergence`).

Merge order: events sort by (Lamport clock, node).  A node's clock grows with each of its
events and a receive's clock exceeds its send's, so the order extends happens-before; events
it orders arbitrarily are concurrent, and touch disjoint variables.

The abstraction (impl/trace.py) is undone here, and only here: an event that moved k bytes
(NewEntry, SendAppend, AcceptAppend with k entries) is k steps of its action; an
AppendRequest with k entries stands for the k one-entry messages of the spec; a WAL written
as `[[term, count], ...]` is expanded to its sequence of terms.  `LoseMessage` events (node
`net`) are copies the network dropped: the spec's message stays available as long as it may
still be delivered, and since delivery does not consume a message, no behaviour needs a loss
to be explained; they are counted, not replayed.

Speed (the target is 100k events/s; `paxwal bench replay` measures it)
-----------------------------------------------------------------------
Replay does the same checks as a naive one would (tests/test_replay.py runs both on the
corpus and compares verdicts), in time linear in the events and independent of the bytes
they move:

1. k steps are one derived step (`new_entries`, `send_appends`, `accept_appends` in
   conformance/derived.py, not in the machine): each equals k single steps of the machine's action,
   state and first false guard conjunct alike, and runs on WALs as runs of terms.  `flush`
   and `collect_ack` are the machine's Flush and CollectAck on one node's variables.
   Tests check all five against the machine with generated states.
2. The k one-entry AppendRequests of a SendAppend are one `AppendRange`; the network keeps
   them as intervals of positions (`AppendNet`), which answer "are these k messages all in
   the network" as a set of Records would.  A logged message that is, field for field, the
   one the derived step just sent (`logs`) is that message, in the network by then.
3. Invariants are checked incrementally: the state before the event satisfied them, and a
   derived step changes only its node's variables and committed_log, so only the terms
   that read those are re-evaluated (`_Replayer.check_incremental`); other actions are
   checked on the whole state.
4. The logged state is compared with the spec's kept in logged form (each variable
   converted again when it changes), and converted (`_logged_value`) only when that quick
   comparison fails; the slow comparison decides.  The refinement check compares the
   committed logs run by run (`_extends`).
5. A run directory with run.json is merged as a stream (each node's file is in clock
   order), parsed with orjson when it is installed; nothing holds all events at once, and
   the cyclic garbage collector is paused while replaying.

Every variable a node owns is logged after each of its actions, so replay is deterministic:
the verdict is "accepted" or "rejected"; a trace that leaves a choice open (none of ours
does yet) would be "ambiguous", never silently accepted.
"""

from __future__ import annotations

import gc
import heapq
import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from conformance import machine as M
from conformance.derived import (
    AppendNet,
    AppendRange,
    accept_appends,
    append_range,
    collect_ack,
    flush,
    logs,
    new_entries,
    send_appends,
)
from conformance.seq import Terms
from conformance.tlc import Record

try:  # about three times faster than json, and the replay reads a line per event
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson is a dependency; json gives the same values
    from json import loads as _loads

__all__ = ["Divergence", "ReplayResult", "TraceError", "check_run", "events_in_memory", "load_events", "replay"]

# Events shown before a divergence.
WINDOW = 8

_PROPOSER_VARS = ("prop_phase", "prop_term", "prop_heard", "prop_history", "prop_wal", "prop_acks", "prop_commit")
_ACCEPTOR_VARS = ("acc_term", "acc_history", "acc_wal", "acc_flush", "acc_commit")


class TraceError(Exception):
    """The input is not a readable trace (missing file, bad JSON, missing fields)."""


@attrs.frozen
class Event:
    """One logged event and where it came from."""

    data: dict[str, Any]
    file: str
    line: int

    @property
    def node(self) -> str:
        return self.data["node"]

    @property
    def action(self) -> str:
        return self.data["action"]

    def describe(self) -> str:
        sent = ", ".join(f"{s['id']}:{s['msg']['type']}->{s['to']}" for s in self.data["sent"])
        recv = self.data["recv"]
        return (
            f"{self.node} {self.action}{_args(self.data['args'])}"
            + (f" recv {recv}" if recv else "")
            + (f" sent {sent}" if sent else "")
        )


def _args(args: dict[str, Any]) -> str:
    return "".join(f" {k}={v}" for k, v in args.items())


@attrs.frozen
class Divergence:
    """The first event the spec does not allow, and why."""

    event: Event
    accepted: int
    reason: str
    guard: str | None
    state_before: dict[str, Any]
    expected: dict[str, Any] | None
    window: tuple[Event, ...]

    def report(self) -> str:
        lines = [
            f"REJECTED at {self.event.file}:{self.event.line} (after {self.accepted:,} accepted events)",
            f"  event: {self.event.describe()}",
            f"  why:   {self.reason}",
        ]
        if self.guard:
            lines.append(f"  guard: {self.guard}")
        lines.append(f"  state of {self.event.node} before:")
        lines += [f"    {k} = {_show(v)}" for k, v in self.state_before.items()]
        if self.expected is not None:
            logged = self.event.data["state"]
            logged = {k: _logged_value(k, v) for k, v in logged.items()}
            diff = [k for k in self.expected if self.expected[k] != logged.get(k)]
            if diff:
                spec = "the spec's state (no step possible)" if self.guard else "the spec's successor"
                lines.append(f"  logged state vs {spec}:")
                for k in diff:
                    lines.append(f"    {k}: logged {_show(logged.get(k))}, spec {_show(self.expected[k])}")
        lines.append("  events before it:")
        lines += [f"    {e.file}:{e.line}  {e.describe()}" for e in self.window]
        lines.append(f"  >> {self.event.file}:{self.event.line}  {self.event.describe()}")
        from conformance.diagram import text  # imported here: diagram.py reads this module's Event

        lines.append("  sequence diagram:")
        lines += [f"  {row}" for row in text(self.window, self.event, width=118).splitlines()]
        return "\n".join(lines)


@attrs.frozen
class ReplayResult:
    verdict: str  # "accepted" | "rejected"
    events: int
    lost: int
    actions: dict[str, int]
    divergence: Divergence | None = None


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

_FIELDS = frozenset({"lc", "node", "action", "args", "state", "sent", "recv"})


class _Unsorted(Exception):
    """A trace file is not in (lc, node) order, so it cannot be merged as a stream."""


def _inputs(paths: Sequence[Path]) -> tuple[list[Path], dict[str, Any] | None]:
    """The trace files the paths name, and run.json's content if there was one."""
    files: list[Path] = []
    run: dict[str, Any] | None = None
    for path in paths:
        if path.is_dir():
            node_files = sorted(p for p in path.glob("*.ndjson") if p.name != "all.ndjson")
            if not node_files:
                raise TraceError(f"{path}: no per-node *.ndjson trace files")
            files += node_files
            if (path / "run.json").exists():
                try:
                    run = json.loads((path / "run.json").read_text())
                except json.JSONDecodeError as exc:
                    raise TraceError(f"{path / 'run.json'}: {exc}") from None
        elif path.is_file():
            files.append(path)
        else:
            raise TraceError(f"{path}: no such file or directory")
    return files, run


def _event(name: str, number: int, text: bytes) -> dict[str, Any]:
    """The event on a (not blank) line of a trace file."""
    try:
        data = _loads(text)
    except ValueError as exc:  # json's and orjson's decode errors are ValueErrors
        raise TraceError(f"{name}:{number}: not JSON ({exc})") from None
    if type(data) is not dict or not _FIELDS <= data.keys():
        missing = _FIELDS - set(data) if type(data) is dict else _FIELDS
        raise TraceError(f"{name}:{number}: event lacks {sorted(missing)}")
    return data


def _parse(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """A file's events, with their line numbers; blank lines skipped."""
    name = str(file)
    with file.open("rb") as stream:
        for number, text in enumerate(stream, 1):
            if not text.isspace():
                yield number, _event(name, number, text)


def load_events(paths: Sequence[Path]) -> tuple[list[Event], dict[str, Any] | None]:
    """Read traces: run directories (their per-node files and run.json) or ndjson files.

    Returns:
        The events merged in happens-before order, and run.json's content if there was one.

    Raises:
        TraceError: a path is missing or a line is not a valid event.
    """
    files, run = _inputs(paths)
    return _merge([Event(data, str(file), number) for file in files for number, data in _parse(file)]), run


def _merge(events: list[Event]) -> list[Event]:
    """Happens-before order (see the module docstring): by Lamport clock, then node."""
    events.sort(key=lambda e: (e.data["lc"], e.node))
    return events


def events_in_memory(node_events: Mapping[str, Sequence[dict[str, Any]]]) -> list[Event]:
    """A run's traces still in memory (node -> its events, as a simulator keeps them), merged;
    each event's file is `<node>.ndjson`, as if written to a run directory."""
    return _merge([
        Event(data, f"{node}.ndjson", line) for node, events in node_events.items() for line, data in enumerate(events, 1)
    ])


def _merged(files: Sequence[Path]) -> Iterator[tuple[dict[str, Any], str, int]]:
    """The files' events in load_events' order, read as they are needed; raises _Unsorted if
    a file is not in (lc, node) order.

    Each file must be in that order (a node's own file is: its clock grows); then a merge of
    the files, ties broken by file and line, is the order of load_events' stable sort.  The
    heap holds each file's next event under that key (heapq.merge by hand, which saves a
    generator per event)."""
    heap = []
    for index, file in enumerate(files):
        events = _parse(file)
        for number, data in events:  # its first event
            heap.append((data["lc"], data["node"], index, number, data, str(file), events))
            break
    heapq.heapify(heap)
    while heap:
        lc, node, index, number, data, name, events = heap[0]
        yield data, name, number
        for number, data in events:  # the file's next event
            if (data["lc"], data["node"]) < (lc, node):
                raise _Unsorted(name)
            heapq.heapreplace(heap, (data["lc"], data["node"], index, number, data, name, events))
            break
        else:
            heapq.heappop(heap)


# ---------------------------------------------------------------------------------------------
# The abstraction, undone
# ---------------------------------------------------------------------------------------------


def _expand(runs: Iterable[Sequence[int]]) -> tuple[int, ...]:
    return tuple(term for term, count in runs for _ in range(count))


def _history(h: Iterable[dict[str, int]]) -> tuple[Record, ...]:
    return tuple(Record(term=e["term"], lsn=e["lsn"]) for e in h)


def spec_messages(msg: dict[str, Any]) -> list[Record]:
    """The spec messages a logged message stands for (k for an AppendRequest of k entries)."""
    fields = dict(msg)
    if "history" in fields:
        fields["history"] = _history(fields["history"])
    if fields["type"] == "AppendRequest":
        entries = _expand(fields["entries"])
        if not entries:
            return [Record(dict(fields, entries=()))]
        return [Record(dict(fields, lsn=fields["lsn"] + i, entries=(t,))) for i, t in enumerate(entries)]
    return [Record(fields)]


def _logged_value(name: str, value: Any) -> Any:
    if name.endswith("_history"):
        return _history(value)
    if name.endswith("_wal"):
        return Terms.from_runs(value)
    if name == "prop_heard":
        return frozenset(value)
    if name == "prop_acks":
        return Record(value)
    return value


# Equal to no logged value.
_UNLOGGED = object()


def _wal_form(wal: Terms) -> list[list[int]]:
    return [[t, n] for t, n in wal.runs]


def _history_form(history: tuple) -> Any:
    form = [{"term": r["term"], "lsn": r["lsn"]} for r in history]
    return form if _history(form) == history else _UNLOGGED


def _heard_form(heard: frozenset) -> list[Any]:
    return sorted(heard, key=str)


# Per variable of a node, the function giving the spec value's logged form (see same_state),
# None for the value itself (integers, strings, and prop_acks, a dict as logged).  A logged
# value equal to the form stands for the spec value (`_logged_value` of it equals it).
_PROPOSER_FORMS = tuple(zip(_PROPOSER_VARS, (None, None, _heard_form, _history_form, _wal_form, None, None)))
_ACCEPTOR_FORMS = tuple(zip(_ACCEPTOR_VARS, (None, _history_form, _wal_form, None, None)))


def _node_state(s: M.State, node: str, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(s, name)[node] for name in names}


def _runs(terms: Sequence[int]) -> str:
    runs: list[list[int]] = []
    for t in terms:
        if runs and runs[-1][0] == t:
            runs[-1][1] += 1
        else:
            runs.append([t, 1])
    return "[" + ",".join(f"{t}*{n}" for t, n in runs) + "]"


def _show(value: Any) -> str:
    """A value for a report: WALs as term runs ([2*3] = three entries of term 2)."""
    if isinstance(value, Terms):
        return "[" + ",".join(f"{t}*{n}" for t, n in value.runs) + "]"
    if isinstance(value, tuple) and all(type(v) is int for v in value):
        return _runs(value)
    if isinstance(value, list) and all(isinstance(v, list) and len(v) == 2 for v in value):
        return _runs(_expand(value))
    if isinstance(value, frozenset):
        return "{" + ", ".join(sorted(map(str, value))) + "}"
    if isinstance(value, tuple) and value and isinstance(value[0], Record):
        return "<<" + ", ".join(f"[{r['term']}@{r['lsn']}]" for r in value) + ">>"
    if isinstance(value, Record):
        return "(" + ", ".join(f"{k}: {value[k]}" for k in sorted(value, key=str)) + ")"
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return "<<" + ", ".join(f"[{r['term']}@{r['lsn']}]" for r in value) + ">>"
    return str(value)


# ---------------------------------------------------------------------------------------------
# Replay
# ---------------------------------------------------------------------------------------------


class _Reject(Exception):
    def __init__(self, reason: str, guard: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.guard = guard


def _model(events: Sequence[Event], run: dict[str, Any] | None) -> M.Model:
    if run is not None and "cluster" in run:
        return M.Model(tuple(sorted(run["cluster"]["proposers"])), tuple(sorted(run["cluster"]["acceptors"])))
    proposers = sorted({e.node for e in events if "prop_phase" in e.data["state"]})
    acceptors = sorted({e.node for e in events if "acc_term" in e.data["state"]})
    for e in events:  # a proposer's acks name every acceptor, even ones that never acted
        acceptors = sorted(set(acceptors) | set(e.data["state"].get("prop_acks", {})))
    return M.Model(tuple(proposers), tuple(acceptors))


# Indices into a node's variable list.
_P_PHASE, _P_TERM, _P_HEARD, _P_HISTORY, _P_WAL, _P_ACKS, _P_COMMIT = range(7)
_A_TERM, _A_HISTORY, _A_WAL, _A_FLUSH, _A_COMMIT = range(5)
_SINGLE = ("CollectTerm", "CollectVote", "CollectAck", "Vote", "AcceptElected")


# Longer than any WAL: the length of a history's WAL without end (_matches_history).
_UNBOUNDED = 2**62


class _Replayer:
    """The spec's state, kept for speed as one mutable list of variables per node.

    `state()` assembles the machine's `State` from it; the frequent actions (NewEntry,
    SendAppend, AcceptAppend, Flush, CollectAck) run as the derived steps above on the lists,
    the others as the machine's own actions on `state()`.  AppendRequests live in an
    `AppendNet`, every other message as a Record in `network`.

    Invariants are checked incrementally (`_check_incremental`): the previous state satisfied
    them all, so after a derived step only the parts that read a changed variable can fail.
    `paranoid=True` also checks them on the whole state after every event and fails loudly if
    the two verdicts differ (tests run the corpus that way).
    """

    def __init__(self, model: M.Model, paranoid: bool = False) -> None:
        self.model = model
        self.paranoid = paranoid
        s = M.init(model)
        self.proposers = frozenset(model.proposers)
        self.acceptors = frozenset(model.acceptors)
        self.vars: dict[Any, list[Any]] = {}
        for p in model.proposers:
            self.vars[p] = [getattr(s, name)[p] for name in _PROPOSER_VARS]
            self.vars[p][_P_ACKS] = dict(self.vars[p][_P_ACKS].items())
        for a in model.acceptors:
            self.vars[a] = [getattr(s, name)[a] for name in _ACCEPTOR_VARS]
        self.committed_log: Terms = s.committed_log
        self.elections: frozenset[Record] = s.elections
        self.network: set[Record] = set(s.msgs)  # every message but AppendRequests
        self.addressed: dict[Any, set[Record]] = {}  # node -> the messages in network with `to` it
        self.appends = AppendNet()
        self.by_id: dict[str, tuple[Any, Record | AppendRange | None]] = {}  # id -> (to, spec form)
        self.clock: dict[str, int] = {}  # node -> Lamport clock of its last event
        # CommittedNeverLost: whether each acceptor's flushed WAL holds the committed log.
        self.holders = {a: True for a in model.acceptors}
        # History -> (history, its unbounded WAL or None), for LogMatchesHistory.
        self._history_wals: dict[int, tuple[tuple, Terms | None]] = {}
        # Each node's variables in logged form (same_state): node -> (the values converted, form).
        self._logged_forms: dict[Any, tuple[list[Any], dict[str, Any]]] = {
            node: ([_UNLOGGED] * len(vals), {}) for node, vals in self.vars.items()
        }

    # -- the machine's State, and back ---------------------------------------------------------

    def state(self) -> M.State:
        P, A = self.model.proposers, self.model.acceptors
        fields: dict[str, Any] = {}
        for i, name in enumerate(_PROPOSER_VARS):
            fields[name] = Record((p, self.vars[p][i]) for p in P)
        fields["prop_acks"] = Record((p, Record(self.vars[p][_P_ACKS])) for p in P)
        for i, name in enumerate(_ACCEPTOR_VARS):
            fields[name] = Record((a, self.vars[a][i]) for a in A)
        return M.State(msgs=frozenset(), committed_log=self.committed_log, elections=self.elections, **fields)

    def _absorb(self, s: M.State) -> None:
        for p in self.model.proposers:
            self.vars[p] = [getattr(s, name)[p] for name in _PROPOSER_VARS]
            self.vars[p][_P_ACKS] = dict(self.vars[p][_P_ACKS].items())
        for a in self.model.acceptors:
            self.vars[a] = [getattr(s, name)[a] for name in _ACCEPTOR_VARS]
        self.committed_log = s.committed_log
        self.elections = s.elections
        for m in s.msgs:
            self._send(m)

    def _send(self, m: Record) -> None:
        if m not in self.network:
            self.network.add(m)
            if "to" in m:
                self.addressed.setdefault(m["to"], set()).add(m)

    def _machine_step(self, action: str, *args: Any) -> None:
        """One step of the machine's own action."""
        result = M.ACTIONS[action](self.model, self.state(), *args)
        if isinstance(result, M.Disabled):
            raise _Reject(f"{action} is not enabled", result.conjunct)
        self._absorb(result)

    def expected(self, node: Any) -> dict[str, Any]:
        """The node's variables, as the machine's State has them."""
        vals = self.vars[node]
        if node in self.proposers:
            named = dict(zip(_PROPOSER_VARS, vals))
            named["prop_acks"] = Record(vals[_P_ACKS])
            return named
        return dict(zip(_ACCEPTOR_VARS, vals))

    # -- messages ------------------------------------------------------------------------------

    def _spec_form(self, msg: dict[str, Any]) -> Record | AppendRange | None:
        """What a logged message stands for; None for an AppendRequest no spec step sends."""
        if msg["type"] == "AppendRequest":
            return append_range(msg)
        (m,) = spec_messages(msg)
        return m

    def _in_network(self, form: Record | AppendRange | None) -> bool:
        if type(form) is AppendRange:
            return form in self.appends
        return form is not None and form in self.network

    def _received(self, data: dict[str, Any]) -> Record | AppendRange:
        recv = data["recv"]
        if recv is None:
            raise _Reject(f"{data['action']} must consume a message, and recv is null")
        sent = self.by_id.get(recv)
        if sent is None:
            raise _Reject(f"it consumes message {recv}, which no earlier event sent")
        to, form = sent
        if to != data["node"]:
            raise _Reject(f"it consumes message {recv}, which was sent to {to}")
        if not self._in_network(form):
            kind = form["type"] if type(form) is Record else "AppendRequest"
            raise _Reject(f"message {recv} ({kind}) is not in the spec's network (dropped by a RestartProposer?)")
        return form

    # -- one event -----------------------------------------------------------------------------

    def apply(self, data: dict[str, Any]) -> bool:
        """Apply an event's action; True if it was a derived step (see check_incremental)."""
        node, action, args, lc, sents = data["node"], data["action"], data["args"], data["lc"], data["sent"]
        # The trace format (impl/trace.py): a node's clock grows with each of its events, and
        # message ids are unique; the merge order relies on both.
        previous = self.clock.get(node, 0)
        if lc <= previous:
            raise _Reject(f"its Lamport clock {lc} does not exceed {node}'s previous {previous}")
        self.clock[node] = lc
        for sent in sents:
            if sent["id"] in self.by_id:
                raise _Reject(f"it sends message id {sent['id']}, which an earlier event used")
        if action not in M.ACTIONS:
            raise _Reject(f"{action!r} is not an action of the spec")
        vals = self.vars[node]
        derived = True
        added: Record | AppendRange | None = None  # what a derived step sent
        if action == "NewEntry":
            k = args.get("entries", 1)
            if type(k) is not int or k < 1:  # as TLC's trace module: an event is at least one step
                raise _Reject(f"NewEntry's entries must be a positive integer, not {k!r}")
            result = new_entries(vals[_P_PHASE], vals[_P_TERM], vals[_P_WAL], k)
            if type(result) is M.Disabled:
                raise _Reject("NewEntry is not enabled", result.conjunct)
            vals[_P_WAL] = result
        elif action == "SendAppend":
            k, l = args.get("entries", 1), args["l"]
            if type(k) is not int or type(l) is not int:
                raise _Reject(f"SendAppend's l and entries must be integers, not {l!r}, {k!r}")
            added = send_appends(vals[_P_PHASE], vals[_P_TERM], vals[_P_WAL], vals[_P_COMMIT], l, k)
            if type(added) is M.Disabled:
                raise _Reject("SendAppend is not enabled", added.conjunct)
            self.appends.add(added)
        elif action == "Flush":
            result = flush(node, vals[_A_TERM], vals[_A_HISTORY], vals[_A_WAL], vals[_A_FLUSH])
            if type(result) is M.Disabled:
                raise _Reject("Flush is not enabled", result.conjunct)
            vals[_A_FLUSH], added = result
            if added is not None:
                self._send(added)
        elif action == "AcceptAppend" and type(m := self._received(data)) is AppendRange:
            result = accept_appends(vals[_A_TERM], vals[_A_HISTORY], vals[_A_WAL], vals[_A_FLUSH], vals[_A_COMMIT], m)
            if type(result) is M.Disabled:
                raise _Reject("AcceptAppend is not enabled", result.conjunct)
            vals[_A_WAL], vals[_A_COMMIT] = result
        elif action == "CollectAck" and type(m := self._received(data)) is Record:
            result = collect_ack(
                self.model, vals[_P_PHASE], vals[_P_TERM], vals[_P_HISTORY], vals[_P_WAL], vals[_P_ACKS],
                vals[_P_COMMIT], self.committed_log, m,
            )
            if type(result) is M.Disabled:
                raise _Reject("CollectAck is not enabled", result.conjunct)
            vals[_P_ACKS], vals[_P_COMMIT], self.committed_log = result
        else:
            derived = False
            self._machine_action(data)
        for sent in sents:
            if added is not None and logs(sent["msg"], added):
                # The very message the step sent (and already hashed), so in the network.
                self.by_id[sent["id"]] = (sent["to"], added)
                continue
            form = self._spec_form(sent["msg"])
            self.by_id[sent["id"]] = (sent["to"], form)
            if not self._in_network(form):
                raise _Reject(f"it logs sending {sent['id']} ({sent['msg']['type']}), which the spec's {action} does not send")
        return derived

    def _machine_action(self, data: dict[str, Any]) -> None:
        """The actions replayed as the machine's own steps (rare in a long run)."""
        node, action, args = data["node"], data["action"], data["args"]
        if action == "RestartProposer":
            dropped = self.addressed.pop(node, set())
            self.network -= dropped
            s = M.RestartProposer(self.model, self.state()._replace(msgs=frozenset(dropped)), node)
            self._absorb(s)
        elif action in ("StartCampaign", "BecomeLeader"):
            self._machine_step(action, node)
        elif action in _SINGLE or action == "AcceptAppend" or (action == "AnswerGreeting" and data["recv"] is not None):
            m = self._received(data)
            ms = m.records() if type(m) is AppendRange else [m]
            if action != "AcceptAppend":
                ms = ms[:1]  # an AppendRequest: the action's type conjunct fails on the first
            for one in ms:
                self._machine_step(action, node, one)
        elif action == "AnswerGreeting":  # with recv null: the answer to a stale request, p's Greeting
            m = Record(type="Greeting", **{"from": args["from"]})
            if m not in self.network:
                raise _Reject(f"no Greeting from {args['from']} in the spec's network")
            self._machine_step(action, node, m)
        elif action == "RestartAcceptor":  # the WAL kept (now flushed) and commit_lsn: as logged
            state = data["state"]
            self._machine_step(action, node, state.get("acc_flush", 1), state.get("acc_commit", 1))

    # -- the logged state ----------------------------------------------------------------------

    def same_state(self, node: Any, logged: dict[str, Any]) -> bool:
        """Whether the logged state equals the spec's; quick when it does.  (False means
        "compare the slow way", which decides.)

        The node's variables are kept in logged form too, each converted again only when
        its value is no longer the one converted (most events change one or two), so the
        comparison is one of two JSON values."""
        vals = self.vars[node]
        converted, form = self._logged_forms[node]
        forms = _PROPOSER_FORMS if node in self.proposers else _ACCEPTOR_FORMS
        for i, value in enumerate(vals):
            if value is not converted[i]:
                converted[i] = value
                name, convert = forms[i]
                form[name] = value if convert is None else convert(value)
        return logged == form

    # -- invariants ----------------------------------------------------------------------------

    def _holds(self, a: Any) -> bool:
        """CommittedNeverLost's term for a: IsPrefix(committed_log, FlushedWal(a))."""
        vals, log = self.vars[a], self.committed_log
        # IsPrefix(log, wal[: flush - 1]), without building the slice
        return len(log) <= vals[_A_FLUSH] - 1 and vals[_A_WAL].starts_with(log)

    def _matches_history(self, history: tuple, wal: Terms) -> bool:
        """LogMatchesHistory's term for one acceptor: wal = WalFromHistory(history, Len(wal) + 1).

        When the switch points start at 1 and are in order (as in every history the spec
        builds), that WAL is the prefix of length Len(wal) of the history's unbounded WAL (its
        last term without end), kept per history: one prefix test instead of building the WAL
        each time."""
        cached = self._history_wals.get(id(history))
        if cached is None or cached[0] is not history:
            lsns = [e["lsn"] for e in history]
            in_order = lsns[:1] == [1] and lsns == sorted(lsns)
            unbounded = M.WalFromHistory(history, _UNBOUNDED) if in_order else None
            cached = self._history_wals[id(history)] = (history, unbounded)
        if cached[1] is None:
            return wal == M.WalFromHistory(history, len(wal) + 1)
        return cached[1].starts_with(wal)

    def check_full(self) -> list[str]:
        """The machine's invariants on the whole state (after a machine step)."""
        violated = M.invariants(self.model, self.state())
        self.holders = {a: self._holds(a) for a in self.model.acceptors}
        return violated

    def check_incremental(self, node: Any, before: list[Any], committed_before: Terms) -> list[str]:
        """The machine's invariants after a derived step of `node`, which changed at most the
        node's variables and committed_log (not elections).  Each invariant is a conjunction
        over nodes (or a count of them); the terms of unchanged nodes held before and still do,
        except that LogSafety's and CommittedNeverLost's read committed_log: if it changed,
        LogSafety's still hold when it grew by extension (a prefix of the old log is one of
        the new), and CommittedNeverLost's are all recomputed.  A variable changed if it is
        no longer the very value it was (the steps replace what they change)."""
        vals = self.vars[node]
        log = self.committed_log
        same_log = log is committed_before
        if not same_log and not _extends(committed_before, log):
            return self.check_full()
        violated = []
        # ElectionSafety: elections unchanged.
        if node in self.acceptors:
            wal, history, commit = vals[_A_WAL], vals[_A_HISTORY], vals[_A_COMMIT]
            wal_changed = wal is not before[_A_WAL]
            if wal_changed and not _monotonic(wal):
                violated.append("LogIsMonotonic")
            if (wal_changed or history is not before[_A_HISTORY]) and not self._matches_history(history, wal):
                violated.append("LogMatchesHistory")
            safe = not (wal_changed or commit is not before[_A_COMMIT]) or log.starts_with(wal, commit - 1)
            recount = wal_changed or vals[_A_FLUSH] is not before[_A_FLUSH]
            if recount and same_log:
                self.holders[node] = self._holds(node)
        else:
            wal, commit = vals[_P_WAL], vals[_P_COMMIT]
            wal_changed = wal is not before[_P_WAL]
            if wal_changed and not _monotonic(wal):
                violated.append("LogIsMonotonic")
            safe = not (wal_changed or commit is not before[_P_COMMIT]) or log.starts_with(wal, commit - 1)
            recount = False
        if not safe:
            violated.append("LogSafety")
        if not same_log:
            recount = True
            for a in self.model.acceptors:
                self.holders[a] = self._holds(a)
        # CommittedNeverLost held before, so only a recomputed term can break it.
        if recount and sum(self.holders.values()) * 2 <= len(self.model.acceptors):
            violated.append("CommittedNeverLost")
        return violated


def _extends(old: Terms, new: Terms) -> bool:
    """M.refines on committed logs: the log is unchanged or grew by extension (IsPrefix)."""
    return new.starts_with(old)


def _monotonic(w: Terms) -> bool:
    """LogIsMonotonic's term for one WAL (as M.LogIsMonotonic writes it)."""
    r = w.runs
    return len(r) < 2 or all(r1[0] <= r2[0] for r1, r2 in zip(r, r[1:]))


def _replay(
    model: M.Model,
    stream: Iterable[tuple[dict[str, Any], str, int]],
    paranoid: bool = False,
    visit: Callable[[M.State], None] | None = None,
) -> ReplayResult:
    """Replay events (data, file, line) in merge order; see the module docstring.

    The cyclic garbage collector is paused meanwhile: the replay makes no reference cycles,
    and otherwise its passes over the messages kept by id would grow with the run (a long
    replay ran 20% slower, and slower as it went)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        return _replay_events(model, stream, paranoid, visit)
    finally:
        if paused:
            gc.enable()


def _replay_events(
    model: M.Model,
    stream: Iterable[tuple[dict[str, Any], str, int]],
    paranoid: bool,
    visit: Callable[[M.State], None] | None,
) -> ReplayResult:
    r = _Replayer(model, paranoid)
    counts: dict[str, int] = {}
    lost = 0
    accepted = 0
    window: deque[tuple[dict[str, Any], str, int]] = deque(maxlen=WINDOW)
    events = iter(stream)
    for item in events:
        data = item[0]
        action = data["action"]
        if action == "LoseMessage":
            lost += 1
            accepted += 1
            window.append(item)
            continue
        node = data["node"]
        known = node in r.vars
        before = list(r.vars[node]) if known else []
        try:
            if not known:
                raise _Reject(f"node {node!r} is not in the cluster {model}")
            committed = r.committed_log
            derived = r.apply(data)
            state = data["state"]
            if not r.same_state(node, state):
                expected = r.expected(node)
                logged = {k: _logged_value(k, v) for k, v in state.items()}
                if logged != expected:
                    bad = sorted(k for k in expected if logged.get(k) != expected[k])
                    raise _Reject(f"the logged state differs from the spec's successor in {', '.join(bad)}")
            violated = r.check_incremental(node, before, committed) if derived else r.check_full()
            if paranoid:
                full = M.invariants(model, r.state())
                assert violated == full, f"incremental invariants {violated} != full {full} at {item[1]}:{item[2]}"
            if violated:
                raise _Reject(f"the spec's invariants fail after it: {', '.join(violated)}")
            if r.committed_log is not committed and not _extends(committed, r.committed_log):
                raise _Reject("the committed log shrank or changed (refinement of AbstractLog)")
        except _Reject as exc:
            if known:
                names = _PROPOSER_VARS if node in r.proposers else _ACCEPTOR_VARS
                state_before = dict(zip(names, before))
                if node in r.proposers:
                    state_before["prop_acks"] = Record(before[_P_ACKS])
            divergence = Divergence(
                event=Event(*item),
                accepted=accepted,
                reason=exc.reason,
                guard=exc.guard,
                state_before=state_before if known else {},
                expected=r.expected(node) if known else None,
                window=tuple(Event(*w) for w in window),
            )
            rest = sum(1 for _ in events)  # the count, and a stream reads (and checks) every line
            return ReplayResult("rejected", accepted + 1 + rest, lost, counts, divergence)
        window.append(item)
        counts[action] = counts.get(action, 0) + 1
        accepted += 1
        if visit is not None:
            visit(r.state())
    return ReplayResult("accepted", accepted, lost, counts)


def replay(
    events: Sequence[Event],
    run: dict[str, Any] | None = None,
    paranoid: bool = False,
    visit: Callable[[M.State], None] | None = None,
) -> ReplayResult:
    """Replay merged events; the verdict and, on rejection, the divergence.

    Args:
        events: in merge order (as load_events returns them).
        run: run.json's content, for the cluster; without it the nodes come from the events.
        paranoid: also check the invariants on the whole state after every event, and raise
            AssertionError if that verdict differs from the incremental one (for tests).
        visit: called with the spec's state (its network left empty) after each accepted
            event (conformance/coverage.py); costly, so None outside coverage.
    """
    return _replay(_model(events, run), ((e.data, e.file, e.line) for e in events), paranoid, visit)


def check_run(paths: Sequence[Path], paranoid: bool = False) -> ReplayResult:
    """Load and replay; see the module docstring.

    A run directory with run.json (which names the cluster) is read as a stream, merging the
    per-node files as it goes; anything else (or a file out of clock order) is read whole and
    sorted first.  The verdict is the same either way.

    Raises:
        TraceError: unreadable input.
    """
    files, run = _inputs(paths)
    if run is not None and "cluster" in run:
        try:
            return _replay(_model([], run), _merged(files), paranoid)
        except (_Unsorted, TraceError):
            pass  # read whole: the sort orders it, or load_events names the first bad line
    events, run = load_events(paths)
    return replay(events, run, paranoid)
