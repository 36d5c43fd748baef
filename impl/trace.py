"""Trace events: what the cores did, in the spec's language (DESIGN §5).

Theory of operation
===================

A core emits one event where a spec action takes effect, named as the action.  One event is
one JSON object on one line (ndjson), one file per node per run (`<run>/<node>.ndjson`)::

    {"lc": 12, "node": "a1", "action": "Vote", "args": {},
     "state": {"acc_term": 2, "acc_history": [...], ...},
     "sent": [{"id": "a1:7", "to": "p1", "msg": {"type": "VoteResponse", ...}}],
     "recv": "p1:3"}

- `lc` is the node's Lamport clock after the event; `recv` the id of the message the event
  consumed (null if none); `sent` the messages it sent, each with a run-unique id
  (`<node>:<n>`).  A checker pairs receives with sends and rebuilds the network.
- `state` holds exactly the spec variables the node owns (SPEC_VARIABLES), after the event.
- Nothing is free text: every value is a number, a node id, a spec constant or a list/map
  of those.

The abstraction function
------------------------
The implementation differs from the spec in representation only where this function says
so; the conformance checker (issue [3 of 4]) relies on exactly these lines:

1. One WAL byte is one spec entry.  A byte LSN `lsn` is the spec position
   `lsn - wal_start + 1` (`position`), where `wal_start` is the LSN at which every node's WAL
   begins (the history sentinel's LSN).  So flush_lsn, commit_lsn, acks and switch points
   map one to one, and the spec's "1 means nothing" is the WAL's start.
2. An entry's term is the term of the leader that wrote the byte, i.e. `term_at` of the
   holder's term history.  The spec's LogMatchesHistory makes a WAL a function of its
   history and its length, so a WAL is written as its terms run-length encoded
   (`[[term, count], ...]`, `wal_terms`), and so are the `entries` of an AppendRequest.
3. An impl action that moves k bytes stands for k spec actions of the same name, applied
   one after the other: NewEntry appending a k-byte record (args `{"entries": k}`),
   SendAppend of k bytes from position l (args `{"l": l, "entries": k}`; the message stands
   for the k spec messages, one per position, each carrying the same commit), and
   AcceptAppend of such a message.  A message with no bytes is the spec's heartbeat,
   SendAppend one past the WAL.
4. The proposer's recovery phase (reading the donor's WAL with WalRead/WalData) is the spec's
   "campaign" phase: the spec hands the donor's WAL over with the vote, the implementation
   reads it afterwards, and neither step changes a spec variable, so neither is an event.
   Late votes that arrive while it reads are not collected (not received, in the spec).
5. prop_acks has 0 for an acceptor that has not acknowledged in this term, as in NoAcks.

Cost when off: a core holds `tracer=None` and every emission site is one `is not None`
test; nothing is built.  `paxwal bench trace` measures it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import attrs

from impl.effects import MsgMeta, Send
from impl.storage import CorruptStorage
from impl.termhistory import TermHistory
from impl.wire import (
    AppendRequest,
    AppendResponse,
    Greeting,
    GreetingResponse,
    Message,
    ProposerElected,
    VoteRequest,
    VoteResponse,
)

__all__ = [
    "SPEC_VARIABLES",
    "Tracer",
    "open_trace",
    "resume_tracer",
    "history_view",
    "message_view",
    "position",
    "wal_terms",
]

# Spec variable -> the core attribute it abstracts (and how).  tests/test_trace.py checks it
# covers every variable a node owns in spec/ProposerAcceptor.tla.
SPEC_VARIABLES: dict[str, str] = {
    "prop_phase": "ProposerCore.phase (recovering is reported as campaign)",
    "prop_term": "ProposerCore.term",
    "prop_heard": "ProposerCore.heard, sorted",
    "prop_history": "ProposerCore.history (the donor's while campaigning), as positions",
    "prop_wal": "wal_terms(ProposerCore.history, ProposerCore.wal_end)",
    "prop_acks": "ProposerCore.acks as positions, 0 for none",
    "prop_commit": "position(ProposerCore.commit_lsn)",
    "acc_term": "AcceptorCore.term",
    "acc_history": "AcceptorCore.history, as positions",
    "acc_wal": "wal_terms(AcceptorCore.history, AcceptorCore.write_lsn)",
    "acc_flush": "position(AcceptorCore.flush_lsn)",
    "acc_commit": "position(AcceptorCore.commit_lsn)",
}


def position(lsn: int, wal_start: int) -> int:
    """The spec position of byte LSN `lsn` (abstraction line 1)."""
    return lsn - wal_start + 1


def history_view(history: TermHistory) -> list[dict[str, int]]:
    """A term history as the spec's sequence of [term, lsn] records, LSNs as positions."""
    start = history[0].lsn
    return [{"term": s.term, "lsn": position(s.lsn, start)} for s in history]


def wal_terms(history: TermHistory, begin: int, end: int) -> list[list[int]]:
    """The terms of the WAL bytes [begin, end), run-length encoded (abstraction line 2)."""
    runs: list[list[int]] = []
    for i, switch in enumerate(history):
        lo = max(switch.lsn, begin)
        hi = min(history[i + 1].lsn if i + 1 < len(history) else end, end)
        if hi > lo:
            if runs and runs[-1][0] == switch.term:
                runs[-1][1] += hi - lo
            else:
                runs.append([switch.term, hi - lo])
    return runs


def message_view(msg: Message, wal_start: int, history: TermHistory | None = None) -> dict[str, Any]:
    """The message as the spec models it (`type` and the spec's fields only).

    Args:
        msg: a spec message (not WalRead/WalData).
        wal_start: the WAL's first LSN.
        history: the sender's term history; needed for an AppendRequest, whose entries'
            terms it gives (abstraction line 2).
    """
    pos = lambda lsn: position(lsn, wal_start)  # noqa: E731
    match msg:
        case Greeting():
            return {"type": "Greeting", "from": msg.proposer}
        case GreetingResponse():
            return {"type": "GreetingResponse", "from": msg.acceptor, "to": msg.proposer, "term": msg.term}
        case VoteRequest():
            return {"type": "VoteRequest", "from": msg.proposer, "term": msg.term}
        case VoteResponse():
            return {
                "type": "VoteResponse", "from": msg.acceptor, "to": msg.proposer, "term": msg.term,
                "history": history_view(msg.term_history), "flush": pos(msg.flush_lsn),
            }
        case ProposerElected():
            return {"type": "ProposerElected", "term": msg.term, "history": history_view(msg.term_history)}
        case AppendRequest():
            assert history is not None, "an AppendRequest's view needs the sender's history"
            return {
                "type": "AppendRequest", "term": msg.term, "lsn": pos(msg.begin_lsn),
                "entries": wal_terms(history, msg.begin_lsn, msg.end_lsn), "commit": pos(msg.commit_lsn),
            }
        case AppendResponse():
            return {"type": "AppendResponse", "from": msg.acceptor, "term": msg.term, "flush": pos(msg.flush_lsn)}
    raise TypeError(f"{type(msg).__name__} is not a spec message")


@attrs.define
class Tracer:
    """One node's trace: its Lamport clock, its message counter and where events go.

    It outlives the node's cores: a restarted node keeps its clock and its ids stay unique.

    Attributes:
        node: the node id, as in the spec's Proposers/Acceptors.
        wal_start: the WAL's first LSN (abstraction line 1).
        write: called with each event (a dict); `JsonlWriter` or a list's append.
    """

    node: str
    wal_start: int
    write: Callable[[dict[str, Any]], None]
    lc: int = 0
    _sent: int = 0

    def event(
        self,
        action: str,
        state: dict[str, Any],
        sends: Sequence[Send] = (),
        recv: MsgMeta | None = None,
        args: dict[str, Any] | None = None,
        history: TermHistory | None = None,
    ) -> list[Send]:
        """Record one action; return `sends` stamped with their ids and this event's clock.

        Args:
            action: the spec action's name.
            state: the node's spec variables after the action.
            sends: the messages the action sends (their meta is filled in here).
            recv: the meta of the message the action consumed.
            args: the action's arguments besides the node and the message.
            history: the sender's history, for the view of an AppendRequest.
        """
        self.lc = max(self.lc, recv.lc if recv is not None else 0) + 1
        stamped = []
        sent = []
        for send in sends:
            self._sent += 1
            meta = MsgMeta(f"{self.node}:{self._sent}", self.lc)
            stamped.append(attrs.evolve(send, meta=meta))
            sent.append({"id": meta.id, "to": send.to, "msg": message_view(send.msg, self.wal_start, history)})
        self.write({
            "lc": self.lc, "node": self.node, "action": action, "args": args or {},
            "state": state, "sent": sent, "recv": recv.id if recv is not None else None,
        })
        return stamped


def dumps(event: dict[str, Any]) -> str:
    """One event as one ndjson line (without the newline): compact, key order as built."""
    return json.dumps(event, separators=(",", ":"))


class JsonlWriter:
    """Writes events to a text stream, one line each."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        self._stream.write(dumps(event) + "\n")


def read_events(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Parse ndjson lines (blank lines skipped)."""
    return [json.loads(line) for line in lines if line.strip()]


def resume_tracer(node: str, wal_start: int, path: Path, stream: IO[str]) -> Tracer:
    """A tracer writing to `stream` that continues the clock and ids of `path`'s events, so
    that a restarted node's events follow its earlier ones and its message ids stay unique.

    A node's file is in clock order and its ids increase, so only its tail is read: the last
    event holds the clock, the last event that sent anything the highest id.  A restart
    costs the same after a minute or after a day of tracing.

    Raises:
        CorruptStorage: a line read is not JSON (the node must not start on a trace it
            cannot continue).
    """
    lc = sent = None
    for number, line in _lines_backwards(path):
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorruptStorage(f"trace file {path}: line {number} from the end is not JSON: {exc.msg}") from None
        lc = event["lc"] if lc is None else lc
        if event["sent"]:
            sent = max(int(m["id"].rpartition(":")[2]) for m in event["sent"])
            break
    return Tracer(node, wal_start, JsonlWriter(stream), lc=lc or 0, sent=sent or 0)


def _lines_backwards(path: Path, chunk: int = 1 << 16) -> Iterator[tuple[int, str]]:
    """The non-blank lines of `path`, last first, each with its number counted from the end."""
    with path.open("rb") as file:
        end = file.seek(0, 2)
        tail = b""
        number = 0
        while end > 0:
            start = max(0, end - chunk)
            file.seek(start)
            block = file.read(end - start) + tail
            end = start
            lines = block.split(b"\n")
            tail = lines.pop(0) if end > 0 else b""  # may continue in the previous block
            for raw in reversed(lines):
                if raw.strip():
                    number += 1
                    yield number, raw.decode("utf-8", errors="replace")


def open_trace(node: str, wal_start: int, path: Path, stack: contextlib.ExitStack) -> Tracer:
    """A node's trace file, opened for appending (closed with `stack`), continuing its events.

    Line-buffered: each event reaches the kernel inside the core call that made it, before
    the shell sends what the event says was sent, so a kill -9 never leaves a receiver with a
    message id whose send is missing from the trace.
    """
    stream = stack.enter_context(path.open("a", buffering=1, encoding="utf-8"))
    return resume_tracer(node, wal_start, path, stream)
