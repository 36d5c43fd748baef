"""The safekeeper: a sans-IO acceptor core (the trio server shell comes with the cluster).

Theory of operation
===================

`AcceptorCore` is the acceptor of spec/ProposerAcceptor.tla as a synchronous state machine.
Every transition of an acceptor lives in this file, and the core cannot tell the simulator
from a real server: it holds no socket, reads no clock and touches no file.  Inputs are
method calls; outputs are tuples of effects (impl/effects.py) that the shell runs in order.

=============================  ==================  ============================================
input                          spec action         trace `action` (emitted when it takes effect)
=============================  ==================  ============================================
restart_acceptor (classmethod) RestartAcceptor     RestartAcceptor
receive(Greeting)              AnswerGreeting      AnswerGreeting
receive(VoteRequest)           Vote                Vote, at on_persisted (the term is durable)
receive(ProposerElected)       AcceptElected       AcceptElected, at on_persisted
receive(AppendRequest)         AcceptAppend        AcceptAppend
on_flushed                     Flush               Flush (with the AppendResponse)
receive(WalRead)               (none: a read)      none
on_disconnected                (none)              none
=============================  ==================  ============================================

Rules:

1. Durable before visible.  A vote and the adoption of a term history are stored
   (`PersistControl`) before anything depends on them; the reply comes out of
   `on_persisted()`, never in the same output as the write, so a shell (or the simulator)
   can crash the node in between and the reply is simply never sent.  An ack comes out of
   `on_flushed()` the same way.  This is where the TermForgottenOnRestart and
   AckOnWriteBeforeFlush mutants of the spec would live.
2. One durable operation at a time.  While a persist or a flush is outstanding the core is
   *busy*: it queues every message and handles the queue when the completion arrives.  Each
   spec action is then atomic, a second VoteRequest can never see a half-made promise, and
   the WAL written while an fsync runs is exactly what it covers (the spec's Flush makes
   everything written durable).  The queue is group commit: the appends that arrive during
   one fsync are all written when it completes, and one Flush covers them (an AcceptAppend
   event per append, then one Flush event).  Any other queued message waits for that
   Flush, so it never sees written but unflushed WAL (which a ProposerElected would cut).
3. A message that is out of turn is not an error: the network duplicates, delays and
   reorders, so a message the spec's guard rejects is ignored (not received, in the
   spec's terms).  A request of an older term gets the acceptor's term back in a
   GreetingResponse, the spec's AnswerGreeting of that proposer's Greeting (which the spec
   keeps in the network), so a deposed leader learns it at once.  A message that can come
   from no correct proposer (a reply type, a history from another WAL) raises
   `ProtocolError`: the shell closes that connection.  A queued message (rule 2) can only
   be judged inside a later completion call, so there its refusal is a `Close` effect
   instead, and the completion's other effects stand.
4. Acks and votes are retransmitted as the same message.  A caught-up acceptor answers a
   duplicate append or a heartbeat by sending its last ack again, and a repeated VoteRequest
   of the proposer it voted for by sending its vote again, with the same trace id: in the
   spec that message is still in the network, and redelivering it is no new action.

Deviations from the spec, each covered by impl/trace.py's abstraction function: byte LSNs
(line 1); one AppendRequest of k bytes is k AcceptAppend steps (line 3); WalRead is not a
spec message (line 4).  The truncation in AcceptElected is stored in two steps (new history
with a pending truncation point, then the cut, then the flag cleared); a node restarted
between them finishes the cut before anything else, so it is the spec's single step.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from collections.abc import Callable
from typing import Any

from impl.control import ControlState, FileControlStorage
from impl.effects import (
    Close,
    Effects,
    Flush,
    MsgMeta,
    PersistControl,
    Send,
    SendWal,
    TruncateWal,
    WriteWal,
)
from impl.storage import CorruptStorage
from impl.wal import DEFAULT_SEGMENT_SIZE, FileWal, has_segments
from impl.termhistory import (
    TermHistory,
    flushed_history,
    highest_common_point,
    last_log_term,
)
from impl.trace import Tracer, history_view, position, wal_terms
from impl.wire import (
    AppendRequest,
    AppendResponse,
    Greeting,
    GreetingResponse,
    Message,
    ProposerElected,
    ProtocolError,
    TermSwitch,
    VoteRequest,
    VoteResponse,
    WalRead,
    format_lsn,
)

__all__ = ["AcceptorCore", "CoreMisuse", "open_acceptor"]


# The messages an acceptor takes; anything else is refused at once, even while busy.
_RECEIVED = frozenset({Greeting, VoteRequest, ProposerElected, AppendRequest, WalRead})


class CoreMisuse(RuntimeError):
    """The shell called the core out of turn (a completion nobody asked for): a bug."""


def _history_from_control(pairs: tuple[tuple[int, int], ...]) -> TermHistory:
    return tuple(TermSwitch(term=t, lsn=lsn) for t, lsn in pairs)


class AcceptorCore:
    """One acceptor's protocol state.  Build it with `fresh` or `restart_acceptor`.

    Attributes (read-only for shells and tests):
        node: the acceptor's id.
        term: the highest term promised (spec acc_term); durable.
        history: the term history of its WAL (acc_history); durable.
        write_lsn: end of the WAL written (Len(acc_wal) + 1, as a byte LSN).
        flush_lsn: end of the WAL fsync'd (acc_flush).
        commit_lsn: highest LSN known committed (acc_commit); stored lazily.
    """

    def __init__(
        self,
        node: str,
        term: int,
        history: TermHistory,
        flush_lsn: int,
        commit_lsn: int,
        tracer: Tracer | None,
    ) -> None:
        self.node = node
        self.term = term
        self.history = history
        self.write_lsn = flush_lsn
        self.flush_lsn = flush_lsn
        self.commit_lsn = commit_lsn
        self.wal_start = history[0].lsn
        self._tracer = tracer
        # The proposer whose connection carries this term's stream: acks go there.
        self._leader: str | None = None
        # The last ack and the vote sent in this term, resent as they are (rule 4).
        self._last_ack: Send | None = None
        self._last_vote: Send | None = None
        # Rule 2: the continuation of the outstanding durable operation, and the queue.
        self._awaiting: str | None = None  # "persist" | "flush" | None
        self._then: Callable[[], Effects] = lambda: ()
        self._backlog: deque[tuple[str, Message, MsgMeta | None]] = deque()

    # -----------------------------------------------------------------------------------
    # Construction
    # -----------------------------------------------------------------------------------

    @classmethod
    def fresh(cls, node: str, wal_start: int, tracer: Tracer | None = None) -> AcceptorCore:
        """A new acceptor with an empty WAL at `wal_start` (the spec's Init)."""
        history = (TermSwitch(term=0, lsn=wal_start),)
        return cls(node, 0, history, wal_start, wal_start, tracer)

    @classmethod
    def restart_acceptor(
        cls, control: ControlState, wal_end: int, tracer: Tracer | None = None
    ) -> tuple[AcceptorCore, Effects]:
        """An acceptor coming back from its disk.  Spec: RestartAcceptor.

        Everything the WAL holds is flushed from now on: flush_lsn = wal_end.  A crash may
        keep bytes that were written and never fsynced (kill -9 leaves them in the page
        cache, a power loss any prefix the disk got); the spec's RestartAcceptor keeps any
        prefix of the written WAL at least as long as the flushed one, and that prefix is
        the flushed WAL from then on.  The shell must make it durable first (FileWal.open
        fsyncs what it finds), since the core may acknowledge it at once.  What survives
        matches `history`: WAL is written only while the history it belongs to is durable
        (accept_elected persists the history, and finishes its cut, before any WAL of the
        new term; the cut itself is fsynced before the pending flag is cleared).

        Args:
            control: the control file as loaded.
            wal_end: where the WAL found on disk ends, all of it durable (everything before
                it survived).

        Returns:
            The core and the effects to run first: finishing a truncation that a crash
            interrupted (the core is busy until its `on_persisted`).

        Raises:
            CorruptStorage: the WAL ends before the flush_lsn the control file recorded
                (acknowledged WAL is gone), or before a pending truncation point.
        """
        history = _history_from_control(control.term_history)
        if wal_end < control.flush_lsn:
            raise CorruptStorage(
                f"acceptor {control.node_id}: WAL ends at {format_lsn(wal_end)}, before the"
                f" flush_lsn {format_lsn(control.flush_lsn)} its control file recorded:"
                " flushed WAL is missing"
            )
        pending = control.truncate_pending_lsn
        if pending is not None and wal_end < pending:
            raise CorruptStorage(
                f"acceptor {control.node_id}: WAL ends at {format_lsn(wal_end)}, before its"
                f" pending truncation point {format_lsn(pending)}"
            )
        flush = pending if pending is not None else wal_end
        core = cls(
            control.node_id, control.term, history, flush, min(control.commit_lsn, flush), tracer
        )
        core._emit("RestartAcceptor")
        if pending is None:
            return core, ()
        return core, (TruncateWal(pending), core._persist(lambda: ()))

    # -----------------------------------------------------------------------------------
    # Inputs
    # -----------------------------------------------------------------------------------

    def receive(self, peer: str, msg: Message, meta: MsgMeta | None = None) -> Effects:
        """A message arrived from proposer `peer`.

        Raises:
            ProtocolError: the message cannot come from a correct proposer (rule 3).
        """
        if type(msg) not in _RECEIVED:
            raise ProtocolError(f"acceptor {self.node} got {type(msg).__name__}, which only proposers receive")
        if self._awaiting is not None:
            self._backlog.append((peer, msg, meta))
            return ()
        return self._flush_written(self._dispatch(peer, msg, meta))

    def on_persisted(self) -> Effects:
        """The last PersistControl is durable."""
        return self._complete("persist")

    def on_flushed(self) -> Effects:
        """The last Flush is durable.  Spec: Flush."""
        return self._complete("flush")

    def on_disconnected(self, peer: str) -> Effects:
        """The connection to proposer `peer` closed.

        What was owed to that connection is void: its queued messages are dropped, and the
        vote it got is not resent to whatever connects under the same name next (a restarted
        proposer must not collect a vote its previous incarnation got: the spec's
        RestartProposer drops such replies).  The acks it would get go nowhere until a
        leader's message arrives on a connection again.
        """
        self._backlog = deque(item for item in self._backlog if item[0] != peer)
        if self._last_vote is not None and self._last_vote.to == peer:
            self._last_vote = None
        if self._leader == peer:
            self._leader = None
        return ()

    @property
    def busy(self) -> bool:
        """Whether a persist or flush is outstanding (messages are queued meanwhile)."""
        return self._awaiting is not None

    # -----------------------------------------------------------------------------------
    # Spec actions
    # -----------------------------------------------------------------------------------

    def _dispatch(self, peer: str, msg: Message, meta: MsgMeta | None) -> Effects:
        match msg:
            case Greeting():
                return self.answer_greeting(peer, meta)
            case VoteRequest():
                return self.vote(peer, msg, meta)
            case ProposerElected():
                return self.accept_elected(peer, msg, meta)
            case AppendRequest():
                return self.accept_append(peer, msg, meta)
            case WalRead():
                return self._serve_wal(peer, msg)
        raise AssertionError(f"unreachable: {type(msg).__name__} passed receive()")

    def answer_greeting(self, peer: str, meta: MsgMeta | None) -> Effects:
        """Tell proposer `peer` our term.  Spec: AnswerGreeting.

        Also the answer to a request of an older term (rule 3); then `meta` is None.
        """
        reply = Send(peer, GreetingResponse(acceptor=self.node, proposer=peer, term=self.term))
        return self._emit("AnswerGreeting", (reply,), meta, args={"from": peer})

    def vote(self, peer: str, msg: VoteRequest, meta: MsgMeta | None) -> Effects:
        """Vote for `peer` in msg.term, once the promise is durable.  Spec: Vote."""
        if not msg.term > self.term:  # VoteAllowed: one vote per term, none for older terms
            vote = self._last_vote
            if msg.term == self.term and vote is not None and vote.to == peer:
                return (vote,)  # the request again: our vote may have been lost (rule 4)
            return self._refuse_stale(peer, msg.term)
        self.term = msg.term
        self._leader = self._last_ack = self._last_vote = None

        def voted() -> Effects:
            reply = VoteResponse(
                acceptor=self.node,
                proposer=peer,
                term=msg.term,
                term_history=flushed_history(self.history, self.flush_lsn),
                flush_lsn=self.flush_lsn,
                commit_lsn=self.commit_lsn,
            )
            sends = self._emit("Vote", (Send(peer, reply),), meta)
            self._last_vote = sends[0]
            return sends

        return (self._persist(voted),)

    def accept_elected(self, peer: str, msg: ProposerElected, meta: MsgMeta | None) -> Effects:
        """Adopt the leader's history, cutting our WAL where it diverges.  Spec: AcceptElected.

        Raises:
            ProtocolError: the history describes another WAL (its sentinel is elsewhere), or
                the cut would remove committed WAL, which no correct leader can ask for.
        """
        if msg.term != self.term:  # of our term only: older leaders are deposed, newer unvoted
            return self._refuse_stale(peer, msg.term)
        if msg.term_history[0].lsn != self.wal_start:
            raise ProtocolError(
                f"ProposerElected: history starts at {format_lsn(msg.term_history[0].lsn)},"
                f" this WAL at {format_lsn(self.wal_start)}"
            )
        start = highest_common_point(
            msg.term_history, flushed_history(self.history, self.flush_lsn), self.flush_lsn
        )
        if start < self.commit_lsn:  # never truncate committed WAL
            raise ProtocolError(
                f"acceptor {self.node}: ProposerElected term {msg.term} from {peer} would cut"
                f" the WAL at {format_lsn(start)}, below commit_lsn {format_lsn(self.commit_lsn)};"
                f" refused (leader history {[(s.term, s.lsn) for s in msg.term_history]},"
                f" ours {[(s.term, s.lsn) for s in self.history]}, flush {format_lsn(self.flush_lsn)})"
            )
        cut = start < self.write_lsn
        self.history = msg.term_history
        self.write_lsn = self.flush_lsn = start
        self._leader = peer
        # Order (RestartAcceptor keeps WAL written but never fsynced, so it relies on it):
        # nothing is written between here and the end of the cut, since the core is busy
        # (rule 2) and was not before (rule 2 again: no unflushed WAL at a ProposerElected).
        # First the new history is durable, with the cut point pending; then the cut, which
        # FileWal.truncate fsyncs; then the flag is cleared.  Only then can WAL of the new
        # term be written, so any WAL a crash leaves matches the durable history, and none
        # that the cut removed comes back.

        def elected() -> Effects:
            effects = self._emit("AcceptElected", (self._ack(peer),), meta)
            self._last_ack = effects[0]
            if not cut:
                return effects
            # The new history and the cut point are durable: finish the cut, then clear
            # the flag (rule 2 keeps us busy until then).
            return (TruncateWal(start), self._persist(lambda: ())) + effects

        return (self._persist(elected, truncate_pending=start if cut else None),)

    def accept_append(self, peer: str, msg: AppendRequest, meta: MsgMeta | None) -> Effects:
        """Write the leader's WAL and learn its commit_lsn.  Spec: AcceptAppend."""
        if msg.term < self.term:
            return self._refuse_stale(peer, msg.term)
        if (
            msg.term != self.term
            or last_log_term(self.history) != self.term  # Streaming: ProposerElected processed
            or msg.begin_lsn > self.write_lsn  # no gap
            or msg.begin_lsn < self.wal_start
        ):
            return ()
        # Bytes we hold already are the leader's (our WAL is a prefix of its WAL once we
        # process its ProposerElected), so only the new suffix is written.
        new = msg.wal[self.write_lsn - msg.begin_lsn :] if msg.end_lsn > self.write_lsn else b""
        write = (WriteWal(self.write_lsn, new),) if new else ()
        self.write_lsn += len(new)
        self.commit_lsn = max(self.commit_lsn, min(msg.commit_lsn, self.flush_lsn))
        self._leader = peer
        effects = write + self._emit("AcceptAppend", (), meta)
        # New bytes are flushed once the messages at hand are handled (_flush_written).
        if not new and self._last_ack is not None:  # a duplicate or a heartbeat: repeat the last ack
            effects += (self._last_ack,)
        return effects

    def _flushed(self) -> Effects:
        """Spec: Flush.  Everything written is durable; ack it to this term's leader."""
        self.flush_lsn = self.write_lsn
        streaming = self.term > 0 and last_log_term(self.history) == self.term
        leader = self._leader if streaming else None
        sends = self._emit("Flush", (self._ack(leader),) if leader is not None else ())
        if sends:
            self._last_ack = sends[0]
        return sends

    # -----------------------------------------------------------------------------------
    # Helpers
    # -----------------------------------------------------------------------------------

    def _ack(self, to: str) -> Send:
        msg = AppendResponse(
            acceptor=self.node, term=self.term, flush_lsn=self.flush_lsn, commit_lsn=self.commit_lsn
        )
        return Send(to, msg)

    def _refuse_stale(self, peer: str, term: int) -> Effects:
        """Rule 3: tell the proposer of an older term ours; ignore anything else."""
        return self.answer_greeting(peer, None) if term < self.term else ()

    def _serve_wal(self, peer: str, msg: WalRead) -> Effects:
        """Send a new leader the WAL it voted with, if we still hold it unchanged.

        While our term is the request's, no ProposerElected of a later term has cut our
        WAL, and a crash loses only unflushed bytes: the range below flush_lsn is the one
        our vote described.
        """
        if msg.term != self.term or msg.begin_lsn < self.wal_start or msg.end_lsn > self.flush_lsn:
            return ()
        return (SendWal(peer, msg.term, msg.begin_lsn, msg.end_lsn),)

    def _persist(self, then: Callable[[], Effects], truncate_pending: int | None = None) -> PersistControl:
        """Store the durable state; `then` runs at on_persisted (rule 1)."""
        self._awaiting = "persist"
        self._then = then
        return PersistControl(
            ControlState(
                node_id=self.node,
                term=self.term,
                term_history=tuple((s.term, s.lsn) for s in self.history),
                flush_lsn=self.flush_lsn,
                commit_lsn=self.commit_lsn,
                truncate_pending_lsn=truncate_pending,
            )
        )

    def _complete(self, what: str) -> Effects:
        if self._awaiting != what:
            raise CoreMisuse(f"acceptor {self.node}: {what} completed, but awaiting {self._awaiting}")
        self._awaiting = None
        then, self._then = self._then, lambda: ()
        effects = then()
        while self._awaiting is None and self._backlog:
            peer, msg, meta = self._backlog[0]
            if self.write_lsn > self.flush_lsn and type(msg) is not AppendRequest:
                break  # only appends share an fsync; anything else sees its WAL flushed
            self._backlog.popleft()
            try:
                effects += self._dispatch(peer, msg, meta)
            except ProtocolError as exc:  # its receive() has returned long ago
                effects += (Close(peer, str(exc)),)
        return self._flush_written(effects)

    def _flush_written(self, effects: Effects) -> Effects:
        """Rule 2's group commit: once the messages at hand are handled (one, or the queue
        that built up during the last durable operation), one Flush covers all they wrote."""
        if self._awaiting is None and self.write_lsn > self.flush_lsn:
            self._awaiting = "flush"
            self._then = self._flushed
            return effects + (Flush(self.write_lsn),)
        return effects

    def _emit(
        self,
        action: str,
        sends: tuple[Send, ...] = (),
        recv: MsgMeta | None = None,
        args: dict[str, Any] | None = None,
    ) -> Effects:
        """Trace the action that just took effect; return its sends, stamped if traced."""
        if self._tracer is not None:
            sends = tuple(self._tracer.event(action, self.spec_state(), sends, recv, args))
        return sends

    def spec_state(self) -> dict[str, Any]:
        """This acceptor's spec variables (impl/trace.py's abstraction function)."""
        start = self.wal_start
        return {
            "acc_term": self.term,
            "acc_history": history_view(self.history),
            "acc_wal": wal_terms(self.history, start, self.write_lsn),
            "acc_flush": position(self.flush_lsn, start),
            "acc_commit": position(self.commit_lsn, start),
        }


def open_acceptor(
    directory: str | os.PathLike[str],
    node: str,
    wal_start: int = 0,
    tracer: Tracer | None = None,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> tuple[AcceptorCore, Effects, FileWal, FileControlStorage]:
    """Start an acceptor from its directory: control file and WAL segments.

    A directory with neither is a fresh acceptor: a new WAL is created at `wal_start`, then
    Init's control file is stored (so the acceptor restarts even before its first vote).
    `segment_size` must be the one the WAL was created with (the cluster's configuration).

    Returns:
        The core, the effects to run first (finishing an interrupted truncation), the WAL
        and the control storage, for the shell to run effects against.

    Raises:
        CorruptStorage: the control file or a WAL segment is damaged, the control file
            belongs to another node, one of the two is missing, or the WAL lost flushed
            bytes.  The message names the file and the problem; the node must not start.
    """
    directory = Path(directory)
    control_storage = FileControlStorage(directory)
    control = control_storage.load()
    has_wal = has_segments(directory)
    if control is None:
        # A fresh acceptor: its empty WAL, then Init's control file, so that it can restart.
        # Empty segments without a control file are a fresh start that stopped in between.
        wal = FileWal.open(directory, segment_size=segment_size) if has_wal else FileWal(
            directory, segment_size=segment_size, start_lsn=wal_start
        )
        if wal.write_lsn != wal_start:
            wal.close()
            raise CorruptStorage(
                f"acceptor {node}: {directory} holds WAL segments ending at {format_lsn(wal.write_lsn)} but no"
                f" control file ({control_storage.path}); refusing to start on a guessed term"
            )
        core = AcceptorCore.fresh(node, wal_start, tracer)
        control_storage.store(
            ControlState(
                node_id=node, term=0, term_history=((0, wal_start),), flush_lsn=wal_start,
                commit_lsn=wal_start, truncate_pending_lsn=None,
            )
        )
        return core, (), wal, control_storage
    if control.node_id != node:
        raise CorruptStorage(
            f"control file {control_storage.path}: belongs to acceptor {control.node_id!r}, not {node!r}"
        )
    if not has_wal:
        raise CorruptStorage(f"acceptor {node}: control file {control_storage.path} exists but {directory} has no WAL segments")
    # The WAL found is fsynced there, so all of it counts as flushed (RestartAcceptor).
    wal = FileWal.open(directory, segment_size=segment_size, recorded_flush_lsn=control.flush_lsn)
    try:
        core, effects = AcceptorCore.restart_acceptor(control, wal.flush_lsn, tracer)
    except CorruptStorage:
        wal.close()
        raise
    return core, effects, wal, control_storage
