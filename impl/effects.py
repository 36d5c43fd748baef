"""The outputs of the sans-IO cores: what the shell must do, in the order given.

A core method returns a tuple of these.  The shell (trio, or the simulator) runs them in
order; a `PersistControl` or `Flush` is followed, once it is durable, by the matching
completion call on the core (`on_persisted()`, `on_flushed()`).  Nothing else is reported
back: a `WriteWal` or `TruncateWal` is done before the shell runs the next effect.

Every effect is a frozen attrs class, so tests compare them by value and `describe` renders
them for scenario transcripts.
"""

from __future__ import annotations

from typing import TypeAlias

import attrs

from impl.control import ControlState
# MsgMeta travels in frames, so it lives with the wire format; re-exported for the cores.
from impl.wire import Message, MsgMeta, describe as describe_message, format_lsn

__all__ = [
    "Close",
    "Committed",
    "Effect",
    "Effects",
    "Flush",
    "MsgMeta",
    "PersistControl",
    "ResetConnections",
    "Send",
    "SendWal",
    "SetTimer",
    "TruncateWal",
    "WriteWal",
    "describe",
]


@attrs.frozen
class Send:
    """Send `msg` to peer `to` (a node id) on the connection to it, if there is one."""

    to: str
    msg: Message
    meta: MsgMeta | None = None


@attrs.frozen
class Close:
    """Close the connection to `peer`: a message it sent was refused (a ProtocolError).

    A core raises ProtocolError from the `receive` that got the bad message; this effect is
    for a message it had queued and could only judge later, inside a completion call whose
    other effects must not be lost.
    """

    peer: str
    reason: str


@attrs.frozen
class SendWal:
    """Read WAL [begin_lsn, end_lsn) and send it to `to` as a WalData of `term`.

    The acceptor decides; the shell reads, because the core never touches storage.
    """

    to: str
    term: int
    begin_lsn: int
    end_lsn: int


@attrs.frozen
class WriteWal:
    """Write `data` at `lsn` (= the WAL's write_lsn); not durable until a Flush."""

    lsn: int
    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")


@attrs.frozen
class Flush:
    """fsync the WAL up to `upto` (all that is written); then call `on_flushed()`."""

    upto: int


@attrs.frozen
class TruncateWal:
    """Drop the WAL at and after `lsn`, crash-safely."""

    lsn: int


@attrs.frozen
class PersistControl:
    """Store `state` as the control file, atomically; then call `on_persisted()`."""

    state: ControlState


@attrs.frozen
class SetTimer:
    """(Re)arm timer `name` to fire `on_timer(name)` after `delay` ms (shell may add jitter)."""

    name: str
    delay: int


@attrs.frozen
class Committed:
    """The proposer's commit_lsn advanced: appends ending at or below it are durable."""

    commit_lsn: int


@attrs.frozen
class ResetConnections:
    """The proposer restarted: close every connection, open new ones after `backoff` ms.

    Replies in flight to the old incarnation die with its connections (the spec's
    RestartProposer drops messages addressed to it); the shell then calls
    `on_connected(acceptor)` for each new connection.  The shell adds random jitter to the
    backoff, so that competing proposers stop deposing each other.
    """

    backoff: int = 0


Effect: TypeAlias = (
    Send | Close | SendWal | WriteWal | Flush | TruncateWal | PersistControl | SetTimer | Committed
    | ResetConnections
)


# What every core input returns: effects, in the order the shell must run them.
Effects: TypeAlias = tuple[Effect, ...]


def describe(effect: Effect) -> str:
    """One stable line per effect, for scenario transcripts and logs."""
    match effect:
        case Send(to=to, msg=msg):
            return f"send {to}: {describe_message(msg)}"
        case Close(peer=peer, reason=reason):
            return f"close {peer}: {reason}"
        case SendWal(to=to, term=term, begin_lsn=begin, end_lsn=end):
            return f"send-wal {to}: term={term} lsn={format_lsn(begin)}..{format_lsn(end)}"
        case WriteWal(lsn=lsn, data=data):
            return f"write-wal {format_lsn(lsn)} ({len(data)} B)"
        case Flush(upto=upto):
            return f"flush {format_lsn(upto)}"
        case TruncateWal(lsn=lsn):
            return f"truncate-wal {format_lsn(lsn)}"
        case PersistControl(state=s):
            history = ",".join(f"{t}@{format_lsn(lsn)}" for t, lsn in s.term_history)
            pending = s.truncate_pending_lsn
            return (
                f"persist-control term={s.term} history=[{history}]"
                f" commit={format_lsn(s.commit_lsn)}"
                + (f" truncate-pending={format_lsn(pending)}" if pending is not None else "")
            )
        case SetTimer(name=name, delay=delay):
            return f"set-timer {name} {delay}ms"
        case Committed(commit_lsn=lsn):
            return f"committed {format_lsn(lsn)}"
        case ResetConnections(backoff=backoff):
            return f"reset-connections backoff={backoff}ms"
    raise TypeError(f"not an effect: {type(effect).__name__}")
