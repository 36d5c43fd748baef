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

Every variable a node owns is logged after each of its actions, so replay is deterministic:
the verdict is "accepted" or "rejected"; a trace that leaves a choice open (none of ours
does yet) would be "ambiguous", never silently accepted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from conformance import machine as M
from conformance.seq import Terms
from conformance.tlc import Record

__all__ = ["Divergence", "ReplayResult", "TraceError", "check_run", "load_events", "replay"]

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


def load_events(paths: Sequence[Path]) -> tuple[list[Event], dict[str, Any] | None]:
    """Read traces: run directories (their per-node files and run.json) or ndjson files.

    Returns:
        The events merged in happens-before order, and run.json's content if there was one.

    Raises:
        TraceError: a path is missing or a line is not a valid event.
    """
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
    events: list[Event] = []
    for file in files:
        for number, text in enumerate(file.read_text().splitlines(), 1):
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise TraceError(f"{file}:{number}: not JSON ({exc})") from None
            missing = {"lc", "node", "action", "args", "state", "sent", "recv"} - set(data)
            if missing:
                raise TraceError(f"{file}:{number}: event lacks {sorted(missing)}")
            events.append(Event(data, str(file), number))
    events.sort(key=lambda e: (e.data["lc"], e.node))
    return events, run


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


class _Replayer:
    def __init__(self, model: M.Model) -> None:
        self.model = model
        s = M.init(model)
        self.network: set[Record] = set(s.msgs)
        self.state = s.with_(msgs=frozenset())  # the network lives in self.network (speed)
        self.by_id: dict[str, dict[str, Any]] = {}
        self.to: dict[str, str] = {}  # message id -> the node it was sent to
        self.clock: dict[str, int] = {}  # node -> Lamport clock of its last event

    def _step(self, action: str, *args: Any) -> None:
        result = M.ACTIONS[action](self.model, self.state, *args)
        if isinstance(result, M.Disabled):
            raise _Reject(f"{action} is not enabled", result.conjunct)
        self.network |= result.msgs
        self.state = result.with_(msgs=frozenset())

    def _received(self, event: Event) -> list[Record]:
        recv = event.data["recv"]
        if recv is None:
            raise _Reject(f"{event.action} must consume a message, and recv is null")
        if recv not in self.by_id:
            raise _Reject(f"it consumes message {recv}, which no earlier event sent")
        if self.to[recv] != event.node:
            raise _Reject(f"it consumes message {recv}, which was sent to {self.to[recv]}")
        messages = spec_messages(self.by_id[recv])
        for m in messages:
            if m not in self.network:
                raise _Reject(f"message {recv} ({m['type']}) is not in the spec's network (dropped by a RestartProposer?)")
        return messages

    def apply(self, event: Event) -> None:
        node, action, args = event.node, event.action, event.data["args"]
        # The trace format (impl/trace.py): a node's clock grows with each of its events, and
        # message ids are unique; the merge order relies on both.
        if event.data["lc"] <= self.clock.get(node, 0):
            raise _Reject(f"its Lamport clock {event.data['lc']} does not exceed {node}'s previous {self.clock[node]}")
        self.clock[node] = event.data["lc"]
        for sent in event.data["sent"]:
            if sent["id"] in self.by_id:
                raise _Reject(f"it sends message id {sent['id']}, which an earlier event used")
        if action not in M.ACTIONS:
            raise _Reject(f"{action!r} is not an action of the spec")
        if action == "RestartProposer":
            self.state = M.RestartProposer(self.model, self.state.with_(msgs=frozenset(self.network)), node)
            self.network = set(self.state.msgs)
            self.state = self.state.with_(msgs=frozenset())
        elif action in ("StartCampaign", "BecomeLeader", "Flush"):
            self._step(action, node)
        elif action == "NewEntry":
            for _ in range(args.get("entries", 1)):
                self._step(action, node)
        elif action == "SendAppend":
            count = args.get("entries", 1)
            for i in range(max(count, 1)):
                self._step(action, node, args["l"] + i)
        elif action in ("CollectTerm", "CollectVote", "CollectAck", "Vote", "AcceptElected"):
            (m,) = self._received(event)
            self._step(action, node, m)
        elif action == "AcceptAppend":
            for m in self._received(event):
                self._step(action, node, m)
        elif action == "AnswerGreeting":
            if event.data["recv"] is None:  # the answer to a stale request: p's Greeting
                m = Record(type="Greeting", **{"from": args["from"]})
                if m not in self.network:
                    raise _Reject(f"no Greeting from {args['from']} in the spec's network")
            else:
                (m,) = self._received(event)
            self._step(action, node, m)
        elif action == "RestartAcceptor":
            self._step(action, node, event.data["state"].get("acc_commit", 1))
        for sent in event.data["sent"]:
            self.by_id[sent["id"]] = sent["msg"]
            self.to[sent["id"]] = sent["to"]
            for m in spec_messages(sent["msg"]):
                if m not in self.network:
                    raise _Reject(f"it logs sending {sent['id']} ({m['type']}), which the spec's {action} does not send")

    def expected(self, event: Event) -> dict[str, Any]:
        names = _PROPOSER_VARS if event.node in self.model.proposers else _ACCEPTOR_VARS
        return _node_state(self.state, event.node, names)


def replay(events: Sequence[Event], run: dict[str, Any] | None = None) -> ReplayResult:
    """Replay merged events; the verdict and, on rejection, the divergence."""
    model = _model(events, run)
    r = _Replayer(model)
    counts: dict[str, int] = {}
    lost = 0
    accepted = 0
    for index, event in enumerate(events):
        if event.action == "LoseMessage":
            lost += 1
            accepted += 1
            continue
        known = event.node in model.proposers or event.node in model.acceptors
        before = r.expected(event) if known else {}
        try:
            if not known:
                raise _Reject(f"node {event.node!r} is not in the cluster {model}")
            committed = r.state.committed_log
            r.apply(event)
            expected = r.expected(event)
            logged = {k: _logged_value(k, v) for k, v in event.data["state"].items()}
            if logged != expected:
                bad = sorted(k for k in expected if logged.get(k) != expected[k])
                raise _Reject(f"the logged state differs from the spec's successor in {', '.join(bad)}")
            violated = M.invariants(model, r.state)
            if violated:
                raise _Reject(f"the spec's invariants fail after it: {', '.join(violated)}")
            if not M.refines(r.state.with_(committed_log=committed), r.state):
                raise _Reject("the committed log shrank or changed (refinement of AbstractLog)")
        except _Reject as exc:
            divergence = Divergence(
                event=event,
                accepted=accepted,
                reason=exc.reason,
                guard=exc.guard,
                state_before=before,
                expected=r.expected(event) if known else None,
                window=tuple(events[max(0, index - WINDOW) : index]),
            )
            return ReplayResult("rejected", len(events), lost, counts, divergence)
        counts[event.action] = counts.get(event.action, 0) + 1
        accepted += 1
    return ReplayResult("accepted", len(events), lost, counts)


def check_run(paths: Sequence[Path]) -> ReplayResult:
    """Load and replay; see the module docstring.

    Raises:
        TraceError: unreadable input.
    """
    events, run = load_events(paths)
    return replay(events, run)
