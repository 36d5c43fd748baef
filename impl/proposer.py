"""The walproposer: a sans-IO proposer core (the trio client shell comes with the cluster).

Theory of operation
===================

`ProposerCore` is the proposer of spec/ProposerAcceptor.tla as a synchronous state machine.
Every transition of a proposer lives in this file; the core holds no socket and reads no
clock.  Inputs are method calls, outputs tuples of effects (impl/effects.py).  A proposer has
no disk: a crashed one is replaced by a new core, and `start()` is its RestartProposer.

==========================  ===============  ==================================================
input                       spec action      trace `action`
==========================  ===============  ==================================================
start, or a give-up below   RestartProposer  RestartProposer
receive(GreetingResponse)   CollectTerm      CollectTerm, then StartCampaign on a quorum
receive(VoteResponse)       CollectVote      CollectVote, then BecomeLeader on a quorum (after
                                             reading the donor's WAL, WalRead/WalData)
new_entry(record)           NewEntry         NewEntry (k bytes: k steps), then SendAppend
receive(AppendResponse)     CollectAck       CollectAck, then SendAppend for what it unblocks
on_timer("heartbeat")       SendAppend       SendAppend (retransmissions, heartbeats)
==========================  ===============  ==================================================

Phases (a table, as h11 keeps its states; `_enter` refuses any other move):

    greeting --StartCampaign--> campaign --quorum of votes--> recovering --WAL read--> leader
                                (an empty donor WAL passes through recovering at once)
    any phase --RestartProposer--> greeting

`recovering` is the implementation's part of the spec's campaign phase: the spec hands the
donor's WAL over with its vote, we read it from the donor afterwards (impl/trace.py, line 4).

Rules:

1. Safety never depends on timing.  Timers only make the proposer give up (restart, which
   the spec allows at any time) or resend.
2. Everything a proposer sends to "every acceptor" (Greeting, VoteRequest, ProposerElected)
   is built once per acceptor when the action takes effect, and sent again, as the same
   message with the same trace id, whenever the connection to that acceptor is (re)made or
   a heartbeat finds the acceptor silent.  In the spec those messages stay in the network.
3. Streaming: an acceptor gets WAL only after it acknowledged ProposerElected in this term
   (its ack says where its WAL ends, after its own truncation).  From there WAL flows in
   chunks of at most `max_send` bytes, at most `window` bytes beyond its last ack.  A
   heartbeat that finds an acceptor's ack unchanged rewinds it to the ack and resends.
4. Giving up: a proposer that is not leader when the election timer fires, that learns of
   a higher term (a GreetingResponse, which acceptors send to stale requests), or whose
   commit_lsn has not moved for `stall_ticks` heartbeats while WAL waits, restarts.
5. commit_lsn is the highest LSN flushed on a quorum, counting only acks in this term, and
   only at or above the start of this term (CommitAllowed; Raft's figure 8).
"""

from __future__ import annotations

from typing import Any

import attrs

from impl.effects import Committed, Effects, MsgMeta, ResetConnections, Send, SetTimer
from impl.termhistory import TermHistory, better_donor
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
    WalData,
    WalRead,
)

__all__ = ["NotLeader", "ProposerConfig", "ProposerCore"]

# Allowed phase changes (rule: a missing pair is a bug, named by `_enter`).
TRANSITIONS: dict[str, frozenset[str]] = {
    "greeting": frozenset({"campaign", "greeting"}),
    "campaign": frozenset({"recovering", "greeting"}),
    "recovering": frozenset({"leader", "greeting"}),
    "leader": frozenset({"greeting"}),
}


class NotLeader(Exception):
    """`new_entry` on a proposer that is not (or no longer) the leader."""


@attrs.frozen(kw_only=True)
class ProposerConfig:
    """Tuning of a proposer; none of it matters for safety (rule 1).

    Attributes:
        max_send: most WAL bytes in one AppendRequest.
        window: most bytes in flight to one acceptor beyond its last ack; also the most
            bytes one WalRead asks for.
        election_timeout: ms to become leader before giving up.
        heartbeat: ms between heartbeats of a leader.
        stall_ticks: heartbeats without commit progress (with WAL waiting) before giving up.
    """

    max_send: int = 128 * 1024
    window: int = 4 * 1024 * 1024
    election_timeout: int = 2000
    heartbeat: int = 100
    stall_ticks: int = 20


class ProposerCore:
    """One proposer incarnation.  Build it, then call `start()`.

    Attributes (read-only for shells and tests):
        node, acceptors: ids.
        phase: "greeting" | "campaign" | "recovering" | "leader".
        term: highest term heard while greeting; then the term campaigned for / won.
        history: the donor's term history while campaigning; the leader's own afterwards.
        wal_end: where the WAL ends (the donor's flush_lsn while campaigning).
        commit_lsn: the leader's commit_lsn.
        acks: per acceptor, the highest flush_lsn it acknowledged in this term.
    """

    def __init__(
        self,
        node: str,
        acceptors: tuple[str, ...],
        wal_start: int,
        config: ProposerConfig = ProposerConfig(),
        tracer: Tracer | None = None,
    ) -> None:
        if not acceptors:
            raise ValueError("a proposer needs at least one acceptor")
        self.node = node
        self.acceptors = tuple(sorted(acceptors))
        self.wal_start = wal_start
        self.config = config
        self._tracer = tracer
        self._connected: set[str] = set()
        # Attempts since this process last committed as leader; survives restart_proposer
        # (it is about the process, not the incarnation) and sets the backoff (rule 4).
        self._failures = 0
        self.phase = "greeting"
        self._reset()

    def _reset(self) -> None:
        """Forget everything but the phase: the spec's RestartProposer (its state part)."""
        self.term = 0
        self.heard: set[str] = set()
        self.history: TermHistory = ()
        self._donor: str | None = None
        self.wal_end = self.wal_start
        self._wal = bytearray()  # the bytes [wal_start, wal_start + len) this proposer holds
        self.acks: dict[str, int] = {}
        self.commit_lsn = self.wal_start
        self._next: dict[str, int] = {}  # rule 3: where to stream to each acked acceptor
        self._broadcast: dict[str, list[Send]] = {a: [] for a in self.acceptors}  # rule 2
        self._acks_at_tick: dict[str, int] = {}
        self._commit_at_tick = self.commit_lsn
        self._stalled_ticks = 0

    @property
    def quorum(self) -> int:
        """The smallest majority of the acceptors."""
        return len(self.acceptors) // 2 + 1

    # -----------------------------------------------------------------------------------
    # Inputs
    # -----------------------------------------------------------------------------------

    def start(self) -> Effects:
        """Start with no state.  Spec: RestartProposer.

        Effects: ResetConnections (the shell closes every connection and reports each new
        one with `on_connected`), the election timer.
        """
        return self._restart(backoff=0)

    def on_connected(self, acceptor: str) -> Effects:
        """A connection to `acceptor` is up: send it what it may have missed (rule 2)."""
        if acceptor not in self.acceptors:
            raise ValueError(f"proposer {self.node}: {acceptor} is not one of its acceptors")
        self._connected.add(acceptor)
        self._next.pop(acceptor, None)  # it may have lost unflushed WAL; wait for its ack
        return tuple(self._broadcast[acceptor])

    def on_disconnected(self, acceptor: str) -> Effects:
        """The connection to `acceptor` broke."""
        self._connected.discard(acceptor)
        self._next.pop(acceptor, None)
        if self.phase == "recovering" and acceptor == self._donor:
            return self.restart_proposer()  # the donor's WAL is out of reach for now
        return ()

    def receive(self, acceptor: str, msg: Message, meta: MsgMeta | None = None) -> Effects:
        """A message arrived from `acceptor`.

        Raises:
            ProtocolError: a message only acceptors receive, or one naming another node.
        """
        if acceptor not in self.acceptors:
            raise ProtocolError(f"proposer {self.node}: message from unknown acceptor {acceptor}")
        match msg:
            case GreetingResponse():
                return self.collect_term(acceptor, msg, meta)
            case VoteResponse():
                return self.collect_vote(acceptor, msg, meta)
            case AppendResponse():
                return self.collect_ack(acceptor, msg, meta)
            case WalData():
                return self._recover(acceptor, msg)
        raise ProtocolError(f"proposer {self.node} got {type(msg).__name__}, which only acceptors receive")

    def on_timer(self, name: str) -> Effects:
        """Timer `name` fired."""
        if name == "election":
            return self.restart_proposer() if self.phase != "leader" else ()
        if name == "heartbeat":
            return self._heartbeat() if self.phase == "leader" else ()
        raise ValueError(f"proposer {self.node}: unknown timer {name!r}")

    def new_entry(self, record: bytes) -> tuple[int, Effects]:
        """Append a record to the WAL and stream it.  Spec: NewEntry (one step per byte).

        Returns:
            The LSN where the record ends (it is committed once commit_lsn reaches it), and
            the effects.

        Raises:
            NotLeader: this proposer is not the leader.
            ValueError: an empty record.
        """
        if self.phase != "leader":
            raise NotLeader(f"proposer {self.node} is not the leader (phase {self.phase}, term {self.term})")
        if not record:
            raise ValueError("an empty record")
        self._wal += record
        self.wal_end += len(record)
        effects = self._emit("NewEntry", args={"entries": len(record)})
        for acceptor in self.acceptors:
            effects += self._pump(acceptor)
        return self.wal_end, effects

    # -----------------------------------------------------------------------------------
    # Spec actions
    # -----------------------------------------------------------------------------------

    def restart_proposer(self) -> Effects:
        """Give up: forget everything and greet every acceptor again.  Spec: RestartProposer.

        The reconnection waits an election timeout, doubling with each failure in a row up
        to 8 times: two proposers deposing each other then leave each other room to commit.
        """
        self._failures += 1
        return self._restart(self.config.election_timeout << min(self._failures - 1, 3))

    def _restart(self, backoff: int) -> Effects:
        self._enter("greeting")
        self._reset()
        self._connected.clear()
        sends = self._emit("RestartProposer", self._to_all(Greeting(proposer=self.node)))
        self._remember(sends)
        return (ResetConnections(backoff), SetTimer("election", backoff + self.config.election_timeout))

    def collect_term(self, acceptor: str, msg: GreetingResponse, meta: MsgMeta | None) -> Effects:
        """Hear an acceptor's term.  Spec: CollectTerm; on a quorum, StartCampaign."""
        if self.phase != "greeting":
            if msg.term > self.term:  # a higher term exists: we cannot win or lead (rule 4)
                return self.restart_proposer()
            return ()
        self.heard.add(acceptor)
        self.term = max(self.term, msg.term)
        effects = self._emit("CollectTerm", recv=meta)
        if len(self.heard) >= self.quorum:
            effects += self.start_campaign()
        return effects

    def start_campaign(self) -> Effects:
        """Ask every acceptor to vote for the term above all heard.  Spec: StartCampaign."""
        self._enter("campaign")
        self.term += 1
        self.heard = set()
        sends = self._emit("StartCampaign", self._to_all(VoteRequest(proposer=self.node, term=self.term)))
        return self._remember(sends)

    def collect_vote(self, acceptor: str, msg: VoteResponse, meta: MsgMeta | None) -> Effects:
        """Record a vote, keeping the best donor.  Spec: CollectVote; on a quorum, recovery."""
        if self.phase != "campaign" or msg.term != self.term or acceptor in self.heard:
            return ()
        if msg.acceptor != acceptor or msg.proposer != self.node:
            raise ProtocolError(f"proposer {self.node}: vote from {acceptor} names {msg.acceptor}->{msg.proposer}")
        if msg.term_history[0].lsn != self.wal_start:
            raise ProtocolError(f"proposer {self.node}: vote from {acceptor} describes a WAL that does not start at {self.wal_start}")
        if not self.heard or better_donor(msg.term_history, msg.flush_lsn, self.history, self.wal_end):
            self._donor = acceptor
            self.history = msg.term_history
            self.wal_end = msg.flush_lsn
        self.heard.add(acceptor)
        effects = self._emit("CollectVote", recv=meta)
        if len(self.heard) >= self.quorum:
            self._enter("recovering")
            effects += self._read_donor()
        return effects

    def become_leader(self) -> Effects:
        """Lead this term: the donor's history plus our own term.  Spec: BecomeLeader."""
        self._enter("leader")
        self.history = self.history + (TermSwitch(term=self.term, lsn=self.wal_end),)
        elected = ProposerElected(proposer=self.node, term=self.term, term_history=self.history)
        sends = self._emit("BecomeLeader", self._to_all(elected))
        return self._remember(sends) + (SetTimer("heartbeat", self.config.heartbeat),)

    def send_append(self, acceptor: str, begin: int, end: int) -> Effects:
        """Send WAL [begin, end) and commit_lsn to `acceptor`.  Spec: SendAppend.

        An empty range at the WAL's end is the spec's heartbeat.
        """
        msg = AppendRequest(
            proposer=self.node,
            term=self.term,
            begin_lsn=begin,
            end_lsn=end,
            commit_lsn=self.commit_lsn,
            wal=bytes(self._wal[begin - self.wal_start : end - self.wal_start]),
        )
        args = {"l": position(begin, self.wal_start), "entries": end - begin}
        return self._emit("SendAppend", (Send(acceptor, msg),), args=args)

    def collect_ack(self, acceptor: str, msg: AppendResponse, meta: MsgMeta | None) -> Effects:
        """Count an acceptor's ack; advance commit_lsn on a quorum.  Spec: CollectAck."""
        if self.phase != "leader" or msg.term != self.term:
            return ()
        if msg.acceptor != acceptor or msg.flush_lsn > self.wal_end:
            raise ProtocolError(
                f"proposer {self.node}: ack from {acceptor} names {msg.acceptor} or acks"
                f" {msg.flush_lsn} beyond our WAL's end {self.wal_end}"
            )
        self.acks[acceptor] = max(self.acks.get(acceptor, 0), msg.flush_lsn)
        effects: Effects = ()
        commit = min(self._quorum_flush(), self.wal_end)
        if commit > self.commit_lsn and commit >= self.history[-1].lsn:  # CommitAllowed (rule 5)
            self.commit_lsn = commit
            self._failures = 0
            effects = (Committed(commit),)
        effects = self._emit("CollectAck", recv=meta) + effects
        if acceptor in self._connected:
            self._next[acceptor] = max(self._next.get(acceptor, 0), msg.flush_lsn)
            effects += self._pump(acceptor)
        return effects

    # -----------------------------------------------------------------------------------
    # Recovery, streaming, timers
    # -----------------------------------------------------------------------------------

    def _read_donor(self) -> Effects:
        """Ask the donor for the next chunk of its WAL, or lead if we hold all of it."""
        have = self.wal_start + len(self._wal)
        if have == self.wal_end:
            return self.become_leader()
        # Reads are not paced by acks like the stream, so they take a window at a time; the
        # election timer restarts with each chunk, as a long recovery is no failure.
        end = min(have + self.config.window, self.wal_end)
        assert self._donor is not None
        read = WalRead(proposer=self.node, term=self.term, begin_lsn=have, end_lsn=end)
        return (Send(self._donor, read), SetTimer("election", self.config.election_timeout))

    def _recover(self, acceptor: str, msg: WalData) -> Effects:
        have = self.wal_start + len(self._wal)
        if self.phase != "recovering" or acceptor != self._donor or msg.term != self.term or msg.begin_lsn != have:
            return ()
        if msg.acceptor != acceptor or msg.end_lsn > self.wal_end:
            raise ProtocolError(
                f"proposer {self.node}: WalData from {acceptor} names {msg.acceptor} or ends"
                f" at {msg.end_lsn}, beyond its vote's flush_lsn {self.wal_end}"
            )
        self._wal += msg.wal
        return self._read_donor()

    def _pump(self, acceptor: str) -> Effects:
        """Stream what `acceptor` lacks, within the window (rule 3)."""
        if acceptor not in self._next or acceptor not in self._connected:
            return ()
        effects: Effects = ()
        limit = min(self.acks.get(acceptor, self.wal_start) + self.config.window, self.wal_end)
        while self._next[acceptor] < limit:
            begin = self._next[acceptor]
            end = min(begin + self.config.max_send, limit)
            effects += self.send_append(acceptor, begin, end)
            self._next[acceptor] = end
        return effects

    def _heartbeat(self) -> Effects:
        """Resend what seems lost, send commit_lsn to caught-up acceptors, detect stalls."""
        effects: Effects = ()
        for acceptor in sorted(self._connected):
            if acceptor not in self._next:  # no ack in this term yet: repeat our election
                effects += tuple(s for s in self._broadcast[acceptor] if type(s.msg) is not Greeting)
                continue
            acked = self.acks.get(acceptor, self.wal_start)
            if self._next[acceptor] > acked and self._acks_at_tick.get(acceptor) == acked:
                self._next[acceptor] = acked  # nothing acked since the last tick: resend
            if self._next[acceptor] == self.wal_end:
                effects += self.send_append(acceptor, self.wal_end, self.wal_end)
            else:
                effects += self._pump(acceptor)
        self._acks_at_tick = dict(self.acks)
        if self.commit_lsn < self.wal_end and self._commit_at_tick == self.commit_lsn:
            self._stalled_ticks += 1
            if self._stalled_ticks >= self.config.stall_ticks:
                return self.restart_proposer()
        else:
            self._stalled_ticks = 0
        self._commit_at_tick = self.commit_lsn
        return effects + (SetTimer("heartbeat", self.config.heartbeat),)

    # -----------------------------------------------------------------------------------
    # Helpers
    # -----------------------------------------------------------------------------------

    def wal_bytes(self, begin: int, end: int) -> bytes:
        """The WAL bytes [begin, end) this proposer holds (for checks and tests)."""
        return bytes(self._wal[begin - self.wal_start : end - self.wal_start])

    def _quorum_flush(self) -> int:
        """The highest LSN acknowledged by a quorum in this term (wal_start if none)."""
        acked = sorted(self.acks.values(), reverse=True)
        return acked[self.quorum - 1] if len(acked) >= self.quorum else self.wal_start

    def _enter(self, phase: str) -> None:
        if phase not in TRANSITIONS[self.phase]:
            raise AssertionError(f"proposer {self.node}: no transition {self.phase} -> {phase}")
        self.phase = phase

    def _to_all(self, msg: Message) -> tuple[Send, ...]:
        return tuple(Send(a, msg) for a in self.acceptors)

    def _remember(self, sends: tuple[Send, ...]) -> Effects:
        """Keep each broadcast for resending (rule 2); send it where connected now."""
        for send in sends:
            self._broadcast[send.to].append(send)
        return tuple(send for send in sends if send.to in self._connected)

    def _emit(
        self,
        action: str,
        sends: tuple[Send, ...] = (),
        recv: MsgMeta | None = None,
        args: dict[str, Any] | None = None,
    ) -> tuple[Send, ...]:
        if self._tracer is not None:
            sends = tuple(self._tracer.event(action, self.spec_state(), sends, recv, args, self.history))
        return sends

    def spec_state(self) -> dict[str, Any]:
        """This proposer's spec variables (impl/trace.py's abstraction function)."""
        start = self.wal_start
        return {
            "prop_phase": "campaign" if self.phase == "recovering" else self.phase,
            "prop_term": self.term,
            "prop_heard": sorted(self.heard),
            "prop_history": history_view(self.history) if self.history else [],
            "prop_wal": wal_terms(self.history, start, self.wal_end) if self.history else [],
            "prop_acks": {a: position(self.acks[a], start) if a in self.acks else 0 for a in self.acceptors},
            "prop_commit": position(self.commit_lsn, start),
        }
