"""The naive twin of conformance/replay.py: the replay as it was before it was made fast.

Every event that moved k bytes is k single steps of the machine's action, every
AppendRequest of k entries is k Records in a set, and every invariant is evaluated on the
whole state after every event.  It is slow (quadratic in a run's bytes) and obviously the
spec; tests/test_replay.py checks that the fast replay reaches the same verdict, at the same
event, for the same reason, on every trace of the corpus and on edited ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from conformance import machine as M
from conformance.replay import _ACCEPTOR_VARS, _PROPOSER_VARS, Event, _logged_value, _model, spec_messages
from conformance.tlc import Record


class _Reject(Exception):
    def __init__(self, reason: str, guard: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.guard = guard


class _Replayer:
    def __init__(self, model: M.Model) -> None:
        self.model = model
        s = M.init(model)
        self.network: set[Record] = set(s.msgs)
        self.state = s.with_(msgs=frozenset())
        self.by_id: dict[str, dict[str, Any]] = {}
        self.to: dict[str, str] = {}
        self.clock: dict[str, int] = {}

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
            k = args.get("entries", 1)
            if type(k) is not int or k < 1:  # an event is at least one step (as TLC's trace module)
                raise _Reject(f"NewEntry's entries must be a positive integer, not {k!r}")
            for _ in range(k):
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
            if event.data["recv"] is None:
                m = Record(type="Greeting", **{"from": args["from"]})
                if m not in self.network:
                    raise _Reject(f"no Greeting from {args['from']} in the spec's network")
            else:
                (m,) = self._received(event)
            self._step(action, node, m)
        elif action == "RestartAcceptor":
            state = event.data["state"]
            self._step(action, node, state.get("acc_flush", 1), state.get("acc_commit", 1))
        for sent in event.data["sent"]:
            self.by_id[sent["id"]] = sent["msg"]
            self.to[sent["id"]] = sent["to"]
            for m in spec_messages(sent["msg"]):
                if m not in self.network:
                    raise _Reject(f"it logs sending {sent['id']} ({m['type']}), which the spec's {action} does not send")

    def expected(self, event: Event) -> dict[str, Any]:
        names = _PROPOSER_VARS if event.node in self.model.proposers else _ACCEPTOR_VARS
        return {name: getattr(self.state, name)[event.node] for name in names}


def naive_replay(events: Sequence[Event], run: dict[str, Any] | None = None) -> tuple[Any, ...]:
    """(verdict, file, line, reason, guard) of the first divergence; (verdict,) if accepted."""
    model = _model(events, run)
    r = _Replayer(model)
    for event in events:
        if event.action == "LoseMessage":
            continue
        known = event.node in model.proposers or event.node in model.acceptors
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
            return ("rejected", event.file, event.line, exc.reason, exc.guard)
    return ("accepted",)
