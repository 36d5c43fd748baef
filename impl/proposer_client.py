"""The proposer's trio shell: a `ProposerCore` connected to its acceptors over TCP (DESIGN §4).

Theory of operation
===================

Rules of this file:

1. The core decides, the shell only runs effects.  One task, the driver, owns the core:
   every call to it (`receive`, `on_connected`, `on_disconnected`, `on_timer`, `new_entry`)
   happens there, in the order the driver takes events from one memory channel, the inbox.
   Connection tasks only decode frames into the inbox and write frames out of their outbox;
   `append` puts its record in the inbox and waits for the driver's answer.
2. Effects run as the simulator runs them (impl/sim.py `_proposer_effects`), in order and
   without a checkpoint: `Send` queues a frame on that acceptor's connection (none: the
   message is lost, as the network may lose it), `SetTimer` sets a deadline the driver waits
   on beside the inbox, `Committed` answers the appends it covers, `ResetConnections` closes
   every connection and lets them reconnect after the backoff.  Since nothing awaits
   between a core call and its last effect, each input is atomic for every other task.
3. A dead or slow acceptor blocks nobody.  Each acceptor has its own connection task, which
   reconnects after a failure with a growing delay.  A `Send` never waits: a connection
   whose bounded outbox is full is closed (the acceptor stopped reading) and the core told;
   it streams again from that acceptor's ack once it reconnects (impl/proposer.py rule 3).
4. Nothing owed to one incarnation reaches the next.  A restart (`ResetConnections`) closes
   every connection, and frames of a closed connection still in the inbox are dropped, so
   the new incarnation never collects a reply sent to the old one: the spec's
   RestartProposer drops those.  A connection opened before a restart but reported after it
   is closed unused.
5. Appends are pipelined and told their fate.  `append` returns the record's end LSN once
   commit_lsn covers it.  At most a window (`ProposerConfig.window`) of bytes is
   uncommitted at once; later appends wait in order for room, which is the back-pressure.
   Appends that wait together (queued in the inbox, or for room) enter the core as one
   `new_entry` of their records concatenated, as many as the window holds: the WAL is a
   byte stream, so this is the same WAL, sent in fewer AppendRequests and acked by fewer
   fsyncs, and each append still gets its own record's end LSN.
   A restart fails the appends the core took with `AppendFailed` (outcome unknown: the
   record may be committed by the next leader or lost), and those still waiting for room
   with `NotLeader` (never written).
6. Traces are written before their sends leave.  The core's tracer writes an event (a
   line-buffered ndjson line) inside the core call whose effects carry the stamped sends,
   and received frames hand their trace meta to the core, so the replay pairs sends and
   receives across processes.  A restarted proposer resumes its trace's clock and ids.
7. A connection speaks for one timeline.  Its first frame, before anything the core sends, is
   `OpenTimeline(node, timeline, wal_start)` (impl/acceptor_server.py rule 10): the acceptor
   creates the timeline with that WAL start if it holds none, and refuses the connection if
   its timeline starts elsewhere; the refusal is a closed connection, retried like any other.
   The core does not know timelines: each timeline has its own proposers, cores and traces.
8. A compute leads once.  A proposer that restarts after having led sets `deposed`: its
   records in flight failed (outcome unknown) and what its client built on them may be lost.
   With `lead_once` (a compute's) it then never reconnects, so it cannot campaign again and
   depose the compute that replaced it; its client stops (impl/compute.py).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import random
from pathlib import Path

import attrs
import trio

from impl.effects import Committed, Effects, ResetConnections, Send, SetTimer
from impl.proposer import NotLeader, ProposerConfig, ProposerCore
from impl.trace import open_trace
from impl.framing import Lost, Received, run_connection
from impl.wire import Frame, OpenTimeline, ProtocolError, check_timeline_id, encode, format_lsn

# NotLeader and ProposerConfig are re-exported: callers of `append` and `serve_proposer` need them.
__all__ = ["AppendFailed", "NotLeader", "PendingAppend", "Proposer", "ProposerConfig", "serve_proposer"]

log = logging.getLogger("paxwal.proposer")

# Frames one connection may have waiting to be written.  The window bounds the bytes in
# flight to an acceptor, but not the frames: with 1 KiB records a 1 MiB window is 1024
# AppendRequests, plus heartbeats.  Only an acceptor that stopped reading fills this.
OUTBOX_FRAMES = 4096

# Events waiting for the driver: frames from all connections, appends, connection changes.
# A full inbox stops the readers, which pushes back on the acceptors through TCP.
INBOX_EVENTS = 256


# Reconnecting to an acceptor that is down: the first retry after RETRY_FIRST seconds,
# doubling up to RETRY_MAX, so a restarted acceptor is found again within a second.
RETRY_FIRST = 0.05
RETRY_MAX = 1.0

# A connect that takes this long is a failure (an acceptor host that drops SYNs).
CONNECT_TIMEOUT = 2.0


class AppendFailed(Exception):
    """The proposer lost its term or restarted before the record was committed.

    The outcome is unknown: the record reached some acceptors, and the next leader may
    commit it (at the LSN it was given) or truncate it.  Read it back to know.
    """


@attrs.define(eq=False)
class _Connection:
    acceptor: str
    stream: trio.SocketStream
    outbox: trio.MemorySendChannel[bytes]
    generation: int  # the restarts counted when it was opened (rule 4)
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    closed: bool = False


@attrs.define(eq=False)
class PendingAppend:
    """One record handed to the proposer (`submit`), and its fate once the driver knows it.

    Its record bytes are dropped once the core holds them (they are in the WAL then)."""

    record: bytes
    done: trio.Event = attrs.field(factory=trio.Event)
    end_lsn: int | None = None
    error: Exception | None = None

    async def result(self) -> int:
        """Wait for the record's fate: its end LSN once committed.

        Raises:
            NotLeader: it was never written.
            AppendFailed: written, and whether it is committed is unknown.
        """
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.end_lsn is not None
        return self.end_lsn

    def succeed(self, end_lsn: int) -> None:
        self.end_lsn = end_lsn
        self.done.set()

    def fail(self, error: Exception) -> None:
        self.error = error
        self.done.set()


@attrs.frozen
class _Connected:
    conn: _Connection


class Proposer:
    """One running proposer: its core, its connections and the appends in flight.

    Built and run by `serve_proposer`, which hands it to the caller through
    `task_status.started`.

    Attributes (read-only):
        core: the ProposerCore (read its state between awaits only).
        node: the proposer's id.
        timeline: the timeline it writes (rule 7).
        deposed: set once it restarts after having led (another proposer's higher term, or
            a stall): a compute must not trust its own state past that point (rule 8).
    """

    def __init__(
        self,
        core: ProposerCore,
        addresses: dict[str, tuple[str, int]],
        rng: random.Random,
        timeline: str = "main",
        lead_once: bool = False,
    ) -> None:
        self.core = core
        self.node = core.node
        self.timeline = timeline
        self._open = encode(OpenTimeline(proposer=core.node, timeline=timeline, wal_start=core.wal_start))
        self._addresses = addresses
        self._rng = rng
        self._inbox_send, self._inbox = trio.open_memory_channel[_Connected | Received | Lost | PendingAppend](INBOX_EVENTS)
        self._conns: dict[str, _Connection] = {}
        self._generation = 0
        self._reconnect_at = -math.inf  # trio time before which no connection opens (rule 4)
        self._timers: dict[str, float] = {}  # timer name -> trio deadline
        self._pending: collections.deque[tuple[int, PendingAppend]] = collections.deque()  # taken, by end LSN
        self._waiting: collections.deque[PendingAppend] = collections.deque()  # waiting for room (rule 5)
        self._leader = trio.Event()
        self._stopped = False
        self._lead_once = lead_once
        self._led = False
        self.deposed = trio.Event()
        self._commit_moved = trio.Event()

    # -----------------------------------------------------------------------------------
    # The client API
    # -----------------------------------------------------------------------------------

    async def append(self, record: bytes) -> int:
        """Append `record` to the WAL and wait until it is committed (rule 5).

        Returns:
            The LSN where the record ends; it begins `len(record)` bytes before.

        Raises:
            NotLeader: this proposer is not the leader (see `wait_leader`), or lost the
                lead while the record waited for room; the record was not written.
            AppendFailed: the proposer restarted or stopped after writing the record and
                before it was committed; whether it is committed is unknown.
            ValueError: an empty record.

        Cancelling the call does not withdraw the record: once written it is streamed and
        may be committed all the same.
        """
        return await (await self.submit(record)).result()

    async def submit(self, record: bytes) -> PendingAppend:
        """Hand `record` to the proposer without waiting for its commit (rule 5).

        Records enter the WAL in the order of the `submit` calls that returned, so a caller
        that submits one after another pipelines them, and a record committed implies every
        record submitted before it is.  `PendingAppend.result` tells each one's fate.

        Raises:
            NotLeader: the proposer has stopped.
            ValueError: an empty record.
        """
        if not record:
            raise ValueError("an empty record")
        if self._stopped:
            raise NotLeader(f"proposer {self.node} has stopped")
        op = PendingAppend(record)
        try:
            await self._inbox_send.send(op)
        except trio.ClosedResourceError:  # it stopped while we waited for the inbox
            raise NotLeader(f"proposer {self.node} has stopped") from None
        return op

    async def wait_leader(self) -> int:
        """Wait until this proposer leads; returns its term."""
        while self.core.phase != "leader":
            await self._leader.wait()
        return self.core.term

    async def wait_committed(self, lsn: int) -> None:
        """Wait until this proposer's commit_lsn reaches `lsn` (a new leader's is its WAL
        start until a quorum has flushed its WAL in its term)."""
        while self.core.commit_lsn < lsn:
            await self._commit_moved.wait()

    # -----------------------------------------------------------------------------------
    # The driver (rules 1 and 2)
    # -----------------------------------------------------------------------------------

    async def _drive(self) -> None:
        while True:
            event = None
            with trio.move_on_at(min(self._timers.values(), default=math.inf)):
                event = await self._inbox.receive()
            if event is None:
                self._fire_timers()
            while event is not None:
                event = self._handle(event)

    def _handle(self, event: _Connected | Received | Lost | PendingAppend) -> _Connected | Received | Lost | PendingAppend | None:
        """Handle one inbox event; an append takes those queued behind it along (rule 5).

        Returns:
            The event taken from the inbox after such a batch, to be handled next, or None.
        """
        match event:
            case Received(conn=conn, frame=frame):
                if not conn.closed:  # else the core has forgotten that connection (rule 4)
                    self._receive(conn, frame)
            case _Connected(conn=conn):
                self._connected(conn)
            case Lost(conn=conn, reason=reason):
                self._drop(conn, reason)
            case PendingAppend():
                batch = [event]
                while True:
                    try:
                        event = self._inbox.receive_nowait()
                    except trio.WouldBlock:
                        event = None
                    if not isinstance(event, PendingAppend):
                        break
                    batch.append(event)
                self._admit(batch)
                return event
        return None

    def _apply(self, effects: Effects) -> None:
        """Run a core call's effects, then note whether it leads now."""
        self._run(effects)
        if self.core.phase == "leader":
            self._led = True
            self._leader.set()
        elif self._leader.is_set():
            self._leader = trio.Event()

    def _receive(self, conn: _Connection, frame: Frame) -> None:
        try:
            effects = self.core.receive(conn.acceptor, frame.message, frame.meta)
        except ProtocolError as exc:
            self._drop(conn, f"protocol error: {exc}")
            return
        self._apply(effects)

    def _connected(self, conn: _Connection) -> None:
        if conn.generation != self._generation:
            self._close(conn, "opened before a restart")
            return
        assert conn.acceptor not in self._conns, f"two connections to {conn.acceptor}"
        self._conns[conn.acceptor] = conn
        log.info("proposer %s connected to %s", self.node, conn.acceptor)
        self._apply(self.core.on_connected(conn.acceptor))

    def _drop(self, conn: _Connection, reason: str) -> None:
        """Close `conn` (once) and tell the core, if it still counted on it."""
        if conn.closed:
            return
        self._close(conn, reason)
        if self._conns.get(conn.acceptor) is conn:
            del self._conns[conn.acceptor]
            self._apply(self.core.on_disconnected(conn.acceptor))

    def _close(self, conn: _Connection, reason: str) -> None:
        conn.closed = True
        log.info("proposer %s: connection to %s closed: %s", self.node, conn.acceptor, reason)
        conn.scope.cancel()
        conn.outbox.close()

    def _fire_timers(self) -> None:
        now = trio.current_time()
        for name, deadline in sorted(self._timers.items(), key=lambda item: item[1]):
            if deadline <= now and self._timers.get(name) == deadline:  # not re-armed meanwhile
                del self._timers[name]
                self._apply(self.core.on_timer(name))

    def _admit(self, ops: list[PendingAppend]) -> None:
        """Take `ops` into the WAL, behind others waiting for room, as room allows (rule 5)."""
        if self.core.phase != "leader":
            for op in ops:
                op.fail(NotLeader(f"proposer {self.node} is not the leader (phase {self.core.phase})"))
            return
        self._waiting.extend(ops)
        self._take_waiting()

    def _take_waiting(self) -> None:
        """Move the appends waiting for room into the WAL, as many as the window holds, as
        one entry (rule 5).  A record larger than the window goes alone, once nothing else
        is uncommitted."""
        if not self._waiting or self.core.phase != "leader":
            return
        uncommitted = self.core.wal_end - self.core.commit_lsn
        window = self.core.config.window
        batch: list[PendingAppend] = []
        while self._waiting and (
            uncommitted == 0 or uncommitted + len(self._waiting[0].record) <= window
        ):
            op = self._waiting.popleft()
            batch.append(op)
            uncommitted += len(op.record)
        if not batch:
            return
        record = batch[0].record if len(batch) == 1 else b"".join(op.record for op in batch)
        end, effects = self.core.new_entry(record)
        op_end = end - len(record)
        for op in batch:  # each append learns its own record's end
            op_end += len(op.record)
            op.record = b""  # the core holds it now
            self._pending.append((op_end, op))
        self._apply(effects)

    # -----------------------------------------------------------------------------------
    # Effects (rule 2)
    # -----------------------------------------------------------------------------------

    def _run(self, effects: Effects) -> None:
        for effect in effects:
            match effect:
                case Send(to=to, msg=msg, meta=meta):
                    self._send(to, encode(msg, meta))
                case SetTimer(name=name, delay=delay):
                    if name == "election":  # jitter separates competing proposers (as impl/sim.py)
                        delay += self._rng.randint(0, delay)
                    self._timers[name] = trio.current_time() + delay / 1000
                case Committed(commit_lsn=lsn):
                    self._committed(lsn)
                case ResetConnections(backoff=backoff):
                    self._reset(backoff)
                case _:
                    raise AssertionError(f"unexpected proposer effect {effect!r}")

    def _send(self, acceptor: str, frame: bytes) -> None:
        conn = self._conns.get(acceptor)
        if conn is None:
            return  # no connection: the message is lost, as the network may lose it
        try:
            conn.outbox.send_nowait(frame)
        except trio.WouldBlock:
            self._drop(conn, f"outbox full ({OUTBOX_FRAMES} frames): the acceptor is not reading")

    def _committed(self, commit_lsn: int) -> None:
        self._commit_moved.set()
        self._commit_moved = trio.Event()
        while self._pending and self._pending[0][0] <= commit_lsn:
            end, op = self._pending.popleft()
            op.succeed(end)
        self._take_waiting()

    def _reset(self, backoff: int) -> None:
        """The core restarted: close every connection, fail the appends in flight (rules 4, 5)."""
        self._fail_appends(f"proposer {self.node} restarted")
        for conn in list(self._conns.values()):
            self._close(conn, "the proposer restarted")
        self._conns.clear()
        self._generation += 1
        # Jitter on the backoff, so that competing proposers stop deposing each other.
        self._reconnect_at = trio.current_time() + backoff * self._rng.uniform(1, 1.5) / 1000
        if self._led:
            self.deposed.set()
            if self._lead_once:  # rule 8: never campaign again
                self._reconnect_at = math.inf

    def _fail_appends(self, why: str) -> None:
        while self._pending:
            end, op = self._pending.popleft()
            op.fail(AppendFailed(
                f"{why} before the record ending at {format_lsn(end)} was committed: it may or"
                f" may not be committed"
            ))
        while self._waiting:
            self._waiting.popleft().fail(NotLeader(f"{why}; the record was not written"))

    # -----------------------------------------------------------------------------------
    # Connections (rule 3)
    # -----------------------------------------------------------------------------------

    async def _connect_loop(self, acceptor: str) -> None:
        """Keep one connection to `acceptor` open, reconnecting after failures."""
        host, port = self._addresses[acceptor]
        failures = 0
        while True:
            await trio.sleep_until(self._reconnect_at)
            generation = self._generation
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    stream = await trio.open_tcp_stream(host, port)
            except (OSError, trio.TooSlowError) as exc:
                failures += 1
                if failures == 1:
                    log.info("proposer %s cannot connect to %s at %s:%d: %r", self.node, acceptor, host, port, exc)
                await trio.sleep(min(RETRY_MAX, RETRY_FIRST * 2 ** (failures - 1)))
                continue
            failures = 0
            await self._serve_connection(acceptor, stream, generation)
            await trio.sleep(RETRY_FIRST)  # an acceptor that closes at once is not hammered

    async def _serve_connection(self, acceptor: str, stream: trio.SocketStream, generation: int) -> None:
        outbox, outgoing = trio.open_memory_channel[bytes](OUTBOX_FRAMES)
        outbox.send_nowait(self._open)  # before anything the core sends (rule 7)
        conn = _Connection(acceptor, stream, outbox, generation)
        try:
            with conn.scope:
                await self._inbox_send.send(_Connected(conn))
                await run_connection(conn, stream, outgoing, self._inbox_send, "acceptor")
        finally:
            await trio.aclose_forcefully(stream)

    def _stop(self) -> None:
        """The proposer stops: nothing in flight will be answered any more."""
        self._stopped = True
        self._fail_appends(f"proposer {self.node} stopped")
        self._inbox_send.close()  # an append blocked on a full inbox gives up too
        while True:
            try:
                event = self._inbox.receive_nowait()
            except trio.EndOfChannel:  # empty, and closed above
                return
            if isinstance(event, PendingAppend):
                event.fail(NotLeader(f"proposer {self.node} has stopped"))


async def serve_proposer(
    node: str,
    acceptors: dict[str, tuple[str, int]],
    config: ProposerConfig = ProposerConfig(),
    wal_start: int = 0,
    trace_path: str | os.PathLike[str] | None = None,
    *,
    timeline: str = "main",
    seed: int | None = None,
    lead_once: bool = False,
    task_status: trio.TaskStatus[Proposer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run proposer `node` of timeline `timeline` against `acceptors` until cancelled.

    Args:
        node: the proposer's id.
        acceptors: acceptor id -> (host, port) of its server.
        config: the core's tuning.
        wal_start: where the timeline's WAL starts (0, or a branch's branch LSN); an
            acceptor whose timeline starts elsewhere refuses every connection (rule 7).
        trace_path: append the node's trace here (ndjson), or None for no trace; by
            convention ``<run>/<timeline>/<node>.ndjson``, beside the acceptors' traces of
            the same timeline.
        timeline: the timeline it writes (rule 7); acceptors create it if they hold none.
        seed: seeds the jitter of timers and backoffs (None: from the OS).
        lead_once: stop campaigning for good once deposed (rule 8; a compute's).
        task_status: `started(proposer)` once it runs (use with `nursery.start`); it then
            greets every acceptor and campaigns, see `Proposer.wait_leader`.

    Resource handling:
        Runs until cancelled; then every connection and the trace file are closed, and the
        appends in flight fail (`AppendFailed`, or `NotLeader` for those not yet written).

    Error handling:
        An acceptor that is down, slow or sends garbage costs only its connection, which is
        retried (see the module docstring).  An exception from the core other than a peer's
        ProtocolError is a bug and propagates.
    """
    check_timeline_id(timeline)
    with contextlib.ExitStack() as stack:
        tracer = None if trace_path is None else open_trace(node, wal_start, Path(trace_path), stack)
        core = ProposerCore(node, tuple(acceptors), wal_start, config, tracer)
        proposer = Proposer(core, dict(acceptors), random.Random(seed), timeline, lead_once)
        try:
            async with trio.open_nursery() as nursery:
                proposer._apply(core.start())
                nursery.start_soon(proposer._drive)
                for acceptor in core.acceptors:
                    nursery.start_soon(proposer._connect_loop, acceptor)
                log.info("proposer %s of timeline %s started with acceptors %s", node, timeline, ", ".join(core.acceptors))
                task_status.started(proposer)
        finally:
            proposer._stop()

