"""The acceptor's trio shell: one `AcceptorCore` per timeline behind a TCP listener (DESIGN §4).

Theory of operation
===================

One acceptor process serves many timelines (Neon's safekeeper keeps per-timeline state:
reference/neon-protocol.md §1, §4).  Each timeline is an `AcceptorTimeline`: its own core,
WAL, control file, horizons, offloader, driver, disk task and connections, in
``<data_dir>/timelines/<timeline>/``, tracing to ``<trace_dir>/<timeline>/<node>.ndjson``;
its core does not know the others.  Rules 1 to 9 are those of one timeline; rule 10 says how
a connection finds its timeline.

Rules of this file:

1. The core decides, the shell only runs effects.  One task, the driver, owns the core: every
   call to it (`receive`, `on_flushed`, `on_persisted`, `on_disconnected`) happens there, in
   the order the driver takes events from one memory channel, the inbox.  Connection tasks
   only decode frames into the inbox and write frames out of their outbox.
2. Effects run as the simulator runs them (impl/sim.py `_acceptor_effects`): sends at once,
   storage operations in order on one disk task, in `trio.to_thread.run_sync` (never
   abandoned on cancel: a started fsync finishes).  The completion of a `Flush` or
   `PersistControl` comes back to the driver through the inbox, as the simulator's delayed
   completion does, so the driver keeps handing the core what arrives meanwhile: the core
   queues it, and writes it all under the next single fsync (group commit).  A reply that
   needs durability comes out of that completion, so it is never sent before its fsync.
3. A slow or dead peer blocks nobody.  A `Send` is put in that connection's bounded outbox
   without waiting; a connection whose outbox is full is closed (its proposer stopped
   reading; it will reconnect and be re-sent what it needs).  Readers block on the bounded
   inbox, which pushes back on fast writers through TCP and nothing else.
4. A bad peer costs only its connection.  A `ProtocolError` (a malformed frame from the
   decoder, a refused message from the core) and a `Close` effect close that connection with
   the reason logged; the core is told with `on_disconnected`.  Frames still in its outbox
   are dropped with it: waiting to deliver them to a peer we refuse could wait forever.
5. Peer ids are proposer ids.  A connection is anonymous until its first message names its
   proposer (every message an acceptor takes has a `proposer` field); from then on the
   connection is that proposer's, and a message naming another proposer is a ProtocolError.
   A second connection naming the same proposer replaces the first (a restarted proposer is
   quicker than our EOF on its old socket): the old one is closed and the core told it is
   gone before the new one is bound, so nothing owed to the old incarnation reaches the new.
6. Traces are written before their sends leave.  The core's tracer writes an event (a
   line-buffered ndjson line) when the action takes effect, inside the core call whose
   effects carry the stamped sends, so a kill -9 never leaves a receiver holding a message
   id whose send is missing from the trace.  A restarted acceptor resumes its Lamport clock
   and message counter from its trace file, so ids stay unique across restarts.

7. Operators are answered beside the core.  A StatusRequest (not a spec message) is answered
   at once from the fields of the core of the timeline it names, on whatever connection
   asked, which stays anonymous: no core call, no trace event, no state change.  A timeline
   this acceptor does not hold is answered with an empty status (term 0, every LSN 0, no
   leader): it promised nothing for it, and creating it on a question would be a side effect.

8. Offload runs beside the core, never in its way (impl/offload.py).  With object storage
   configured (`remote`), an `Offloader` runs in tasks of its own: it reads the core's LSNs
   between awaits and never calls the core, reads only completed segments below
   commit_lsn in threads of its own (a separate thread limiter), and logs and retries
   every error of the store.  Its one storage change, removing old segments
   (`FileWal.remove_below`), is queued on the disk task like any storage operation, so no
   other operation ever sees a segment vanish mid-way.  A `SendWal` whose range begins
   below the local WAL's start is read in two parts: the local part on the disk task at
   its turn, the removed part from object storage by a task of its own, which then sends
   the whole through the driver; if the store fails the reply is lost, as the network may
   lose it, and the proposer's election timer retries.  `set_remote_consistent_lsn` takes
   the pageserver's horizon and persists it; removal waits for it.

9. The pageserver is served beside the core, like an operator (rule 7).  A connection whose
   first message is a `StreamWal` is the pageserver's: it stays anonymous (never a proposer's,
   rule 5), and any proposer message on it, or a StreamWal or PageserverFeedback on a
   proposer's, is a ProtocolError.  A streamer task of the connection's own sends committed
   WAL from `start_lsn` in `WalChunk`s of at most `STREAM_CHUNK` bytes, only below
   ``min(commit_lsn, flush_lsn)`` of the core (committed WAL is never truncated, so what it
   sent stays true), read on the disk task in order with every other storage operation;
   ranges removed locally come from object storage (rule 8).  With no new WAL it sends an
   empty chunk carrying commit_lsn every `STREAM_KEEPALIVE` seconds, so the pageserver sees
   the acceptor alive.  Flow control: the streamer sends only while the connection's outbox
   holds fewer than `STREAM_FRAMES` frames, so a slow pageserver costs at most about
   STREAM_FRAMES * STREAM_CHUNK bytes here, never an unbounded buffer and never the outbox-full
   close.  A `PageserverFeedback` goes to `set_remote_consistent_lsn` in a task of the
   connection's own (the driver never waits for its file write).  No core call, no trace
   event, no consensus state change: the only state it moves is the horizons file.  The
   pageserver also sends its feedback to every acceptor it polls, on the anonymous status
   connection (rule 7): a PageserverFeedback before any binding frame sets that timeline's
   horizon (a timeline not held ignores it) and binds nothing, so every acceptor, not only
   the one streamed from, may remove WAL the pageserver has uploaded.

10. A connection belongs to one timeline, named by its first frame, and its frames go to that
   timeline's inbox only.  A proposer's first frame is `OpenTimeline(proposer, timeline,
   wal_start)`: a timeline held already is bound if its WAL starts at `wal_start`, and
   refused otherwise (the reason logged, that connection closed, nothing else touched); one
   not held is created fresh with that WAL start (a branch's WAL starts at its branch LSN),
   its directory written before the connection is bound.  A pageserver's first frame is its
   StreamWal, which names its timeline; a timeline not held refuses it.  A StatusRequest
   or an anonymous PageserverFeedback binds nothing (rules 7, 9).  Any other first frame is a ProtocolError.  At start every
   timeline directory holding a control file is opened (its WAL start is the first switch of
   its term history), so a restart reopens them all before anyone connects.

Group commit: a `Flush` covers every `WriteWal` run since the previous one; `stats` counts
fsyncs and how many writes each covered.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from impl.acceptor import AcceptorCore, open_acceptor
from impl.control import FileControlStorage
from impl.effects import (
    Close,
    Effects,
    Flush,
    PersistControl,
    Send,
    SendWal,
    TruncateWal,
    WriteWal,
)
from impl.offload import (
    REMOTE_THREADS,
    LocalHorizons,
    OffloadConfig,
    Offloader,
    Positions,
    RemoteWal,
    check_wal_available,
)
from impl.remote import RemoteStorage, check_key
from impl.storage import CorruptStorage, fsync_dir
from impl.trace import open_trace
from impl.wal import DEFAULT_SEGMENT_SIZE, FileWal
from impl.framing import Lost, Received, read_frames, write_frames
from impl.termhistory import last_log_term
from impl.wire import (
    AppendRequest,
    Frame,
    OpenTimeline,
    PageserverFeedback,
    ProposerElected,
    ProtocolError,
    StatusRequest,
    StatusResponse,
    StreamWal,
    WalChunk,
    WalData,
    check_timeline_id,
    encode,
    format_lsn,
)

__all__ = ["AcceptorServer", "AcceptorTimeline", "GroupCommitStats", "serve_acceptor"]

log = logging.getLogger("paxwal.acceptor")

# Frames one connection may have waiting to be written.  Acks are small and a proposer
# reads continuously, so only a peer that stopped reading fills this; it is then closed.
OUTBOX_FRAMES = 1024

# Decoded frames waiting for the driver, from all connections.  While the driver waits for
# an fsync they queue here (then in the core's backlog), and a full inbox stops the readers.
INBOX_EVENTS = 256

# Rule 9: WAL bytes in one WalChunk to the pageserver (Neon's walsender sends 128 KiB too),
# frames of a pageserver connection's outbox the streamer fills at most, how long it waits
# when the outbox is that full, and how often it sends commit_lsn with no new WAL.
STREAM_CHUNK = 128 * 1024
STREAM_FRAMES = 4
STREAM_POLL = 0.005
STREAM_KEEPALIVE = 1.0


@attrs.define
class GroupCommitStats:
    """What the fsyncs covered, for tests and benchmarks.

    Attributes:
        fsyncs: WAL flushes run.
        writes: WAL writes run (one per AppendRequest that brought new bytes).
        writes_per_fsync: histogram: writes covered by one fsync -> number of such fsyncs.
    """

    fsyncs: int = 0
    writes: int = 0
    writes_per_fsync: collections.Counter[int] = attrs.field(factory=collections.Counter)


@attrs.define(eq=False)
class _Connection:
    name: str  # the peer's address, for logs
    stream: trio.SocketStream
    outbox: trio.MemorySendChannel[bytes]
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    peer: str | None = None  # the proposer it speaks for, once it said so (rule 5)
    closed: bool = False
    nursery: trio.Nursery | None = None  # the connection's tasks (its streamer, rule 9)
    pageserver: str | None = None  # the pageserver it serves, after its StreamWal (rule 9)
    feedback_lsn: int = 0  # the highest remote_consistent_lsn it reported
    stream_lsn: int = 0  # where its streamer is: the end of the WAL queued for it
    feedback: trio.Event = attrs.field(factory=trio.Event)
    timeline: AcceptorTimeline | None = None  # the timeline it is bound to (rule 10)


@attrs.frozen
class _Done:
    """A storage operation finished: the driver runs `then` (it calls the core)."""

    then: Callable[[], Awaitable[None]]


@attrs.define(eq=False)
class _ReadWal:
    """A storage operation of a streamer (rule 9): read [begin, end) of the local WAL, from
    `local` = max(begin, the local start) on; the older part, if any, is the caller's."""

    begin: int
    end: int
    done: trio.Event = attrs.field(factory=trio.Event)
    local: int = 0
    data: bytes = b""
    error: BaseException | None = None


@attrs.frozen(eq=False)
class _RemoveWal:
    """A storage operation of the offloader's (rule 8): FileWal.remove_below(limit)."""

    limit: int
    done: trio.Event


class AcceptorTimeline:
    """One timeline of a running acceptor: its core, its storage and its connections.

    Built and started by `AcceptorServer` (rule 10).

    Attributes (read-only):
        name: the timeline id.
        core: the AcceptorCore (read its state from the driver's side only: between awaits).
        stats: group-commit counters.
        offloader: the Offloader (rule 8), or None without object storage.
        fallback_reads: WalData replies and WalChunks read partly from object storage (rules 8, 9).
    """

    def __init__(
        self,
        name: str,
        core: AcceptorCore,
        wal: FileWal,
        control: FileControlStorage,
        *,
        horizons: LocalHorizons | None = None,
        remote_wal: RemoteWal | None = None,
        offload: OffloadConfig = OffloadConfig(),
    ) -> None:
        self.name = name
        self.core = core
        self.stats = GroupCommitStats()
        self._wal = wal
        self._control = control
        self._peers: dict[str, _Connection] = {}
        self._unflushed_writes = 0
        self._inbox_send, self._inbox = trio.open_memory_channel[Received | Lost | _Done](INBOX_EVENTS)
        # Storage operations, in the core's order.  Unbounded, so the driver never waits on
        # the disk task while the disk task waits on the inbox; the core bounds it anyway
        # (one durable operation at a time, plus the writes it covers).
        self._disk_send, self._disk = trio.open_memory_channel[Any](math.inf)
        self._settled = trio.Event()  # set when a completion leaves the core idle
        # Rule 9: set (and replaced) whenever min(commit_lsn, flush_lsn) moves.
        self._streamable = 0
        self._wal_moved = trio.Event()
        self._streams: set[_Connection] = set()
        # The proposer the core last followed, and its term (status only).
        self._leader: tuple[str, int] = ("", 0)
        # Rule 8: horizons, object storage and the tasks that use it.
        self._horizons = horizons if horizons is not None else LocalHorizons.load(wal.directory)
        self._remote_wal = remote_wal
        self._remote_threads = trio.CapacityLimiter(REMOTE_THREADS)
        self._nursery: trio.Nursery | None = None
        self.offloader: Offloader | None = None
        self.fallback_reads = 0
        if remote_wal is not None:
            self.offloader = Offloader(
                core.node, wal, remote_wal, self._horizons, offload, wal_start=core.wal_start,
                positions=self._positions, remove_below=self._remove_below, limiter=self._remote_threads,
            )

    # -----------------------------------------------------------------------------------
    # The driver (rule 1)
    # -----------------------------------------------------------------------------------

    async def _drive(self) -> None:
        async for event in self._inbox:
            match event:
                case Received(conn=conn, frame=frame):
                    await self._received(conn, frame)
                case Lost(conn=conn, reason=reason):
                    await self._drop(conn, reason)
                case _Done(then=then):
                    await then()
                    if not self.core.busy:
                        self._settled.set()
            streamable = min(self.core.commit_lsn, self.core.flush_lsn)
            if streamable != self._streamable:
                self._streamable = streamable
                self._wal_moved.set()
                self._wal_moved = trio.Event()

    async def _received(self, conn: _Connection, frame: Frame) -> None:
        if conn.closed:
            return  # decoded before we closed it: the core has forgotten this connection
        msg = frame.message
        if isinstance(msg, OpenTimeline):
            await self._drop(conn, f"protocol error: a second OpenTimeline ({msg.timeline}) on a connection of {self.name}")
            return
        if isinstance(msg, (StreamWal, PageserverFeedback)) or conn.pageserver is not None:
            await self._pageserver_message(conn, msg)
            return
        try:
            peer = await self._bind(conn, getattr(msg, "proposer", None), type(msg).__name__)
            effects = self.core.receive(peer, msg, frame.meta)
        except ProtocolError as exc:
            await self._drop(conn, f"protocol error: {exc}")
            return
        if isinstance(msg, (ProposerElected, AppendRequest)) and last_log_term(self.core.history) == msg.term:
            self._leader = (msg.proposer, msg.term)  # the core follows it (status only)
        await self._run(effects)

    def status(self) -> StatusResponse:
        """The answer to a StatusRequest for this timeline, from the core's fields (rule 7)."""
        leader, leader_term = self._leader
        return StatusResponse(
            acceptor=self.core.node, timeline=self.name, term=self.core.term, flush_lsn=self.core.flush_lsn,
            commit_lsn=self.core.commit_lsn, wal_start=self.core.wal_start, leader=leader,
            leader_term=leader_term, proposers=tuple(sorted(self._peers)),
        )

    async def _run_tasks(self, startup: Effects, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The timeline's driver, disk task and offloader, until cancelled; `started()` once
        an interrupted truncation is finished (rule 10: before anyone talks)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._drive)
            nursery.start_soon(self._storage)
            await self._run(startup)
            if self.core.busy:
                await self._settled.wait()
            if self.offloader is not None:
                await nursery.start(self.offloader.run)
            task_status.started()

    # -----------------------------------------------------------------------------------
    # The pageserver (rule 9)
    # -----------------------------------------------------------------------------------

    async def _pageserver_message(self, conn: _Connection, msg: object) -> None:
        kind = type(msg).__name__
        if conn.peer is not None:
            await self._drop(conn, f"protocol error: {kind} on the connection of proposer {conn.peer}")
        elif isinstance(msg, StreamWal):
            if conn.pageserver is not None:
                await self._drop(conn, f"protocol error: a second StreamWal from {msg.pageserver}")
            elif msg.start_lsn < self.core.wal_start:
                await self._drop(conn, f"StreamWal from {format_lsn(msg.start_lsn)}: the WAL starts at"
                                       f" {format_lsn(self.core.wal_start)}")
            else:
                assert conn.nursery is not None
                conn.pageserver = msg.pageserver
                log.info("connection %s: pageserver %s streams timeline %s from %s", conn.name, msg.pageserver,
                         msg.timeline, format_lsn(msg.start_lsn))
                conn.nursery.start_soon(self._stream_wal, conn, msg.start_lsn)
                conn.nursery.start_soon(self._take_feedback, conn)
        elif isinstance(msg, PageserverFeedback):
            if conn.pageserver is None:
                await self._drop(conn, "protocol error: PageserverFeedback before StreamWal")
            elif msg.remote_consistent_lsn > conn.feedback_lsn:
                conn.feedback_lsn = msg.remote_consistent_lsn
                conn.feedback.set()
        else:
            await self._drop(conn, f"protocol error: {kind} on the connection of pageserver {conn.pageserver}")

    @property
    def wal_streams(self) -> list[tuple[str, int, int]]:
        """Each pageserver streamed to now: (its id, the LSN streamed up to, frames in its outbox)."""
        return sorted((c.pageserver or "", c.stream_lsn, c.outbox.statistics().current_buffer_used) for c in self._streams)

    async def _stream_wal(self, conn: _Connection, start: int) -> None:
        """The streamer of one pageserver connection (rule 9); cancelled with it."""
        self._streams.add(conn)
        try:
            await self._stream_from(conn, start)
        finally:
            self._streams.discard(conn)

    async def _stream_from(self, conn: _Connection, start: int) -> None:
        position = conn.stream_lsn = start
        while True:
            limit = min(self.core.commit_lsn, self.core.flush_lsn)
            moved = self._wal_moved
            if position >= limit:
                with trio.move_on_after(STREAM_KEEPALIVE):
                    await moved.wait()
                if min(self.core.commit_lsn, self.core.flush_lsn) <= position:
                    # A keepalive: no bytes, at an LSN its commit_lsn covers (a lagging
                    # acceptor may be behind the pageserver's position).
                    at = min(position, self.core.commit_lsn)
                    await self._stream_send(conn, WalChunk(acceptor=self.core.node, begin_lsn=at, end_lsn=at,
                                                           commit_lsn=self.core.commit_lsn, wal=b""))
                continue
            end = min(limit, position + STREAM_CHUNK)
            wal = await self._read_committed(position, end)
            if wal is None:
                await self._drop(conn, f"WAL [{format_lsn(position)}, {format_lsn(end)}) for pageserver"
                                       f" {conn.pageserver} is not readable (see the log)")
                return
            await self._stream_send(conn, WalChunk(acceptor=self.core.node, begin_lsn=position, end_lsn=end,
                                                   commit_lsn=max(self.core.commit_lsn, end), wal=wal))
            position = conn.stream_lsn = end

    async def _stream_send(self, conn: _Connection, chunk: WalChunk) -> None:
        """Queue a chunk once the outbox holds fewer than STREAM_FRAMES frames (flow control)."""
        while conn.outbox.statistics().current_buffer_used >= STREAM_FRAMES:
            await trio.sleep(STREAM_POLL)
        try:
            conn.outbox.send_nowait(encode(chunk))
        except (trio.WouldBlock, trio.ClosedResourceError):
            await trio.sleep_forever()  # closed meanwhile: the connection's cancellation is coming

    async def _read_committed(self, begin: int, end: int) -> bytes | None:
        """[begin, end) of committed WAL: the local part on the disk task, any removed part
        from object storage (rule 8); None if unreadable (logged)."""
        read = _ReadWal(begin, end)
        self._disk_send.send_nowait(read)
        await read.done.wait()
        if read.error is not None:
            log.error("acceptor %s: reading WAL [%s, %s) for the pageserver failed: %s", self.core.node,
                      format_lsn(begin), format_lsn(end), read.error)
            return None
        if begin >= read.local:
            return read.data
        if self._remote_wal is None:
            log.error("acceptor %s: WAL [%s, %s) for the pageserver was removed and no object storage is configured",
                      self.core.node, format_lsn(begin), format_lsn(read.local))
            return None
        try:
            older = await trio.to_thread.run_sync(
                self._remote_wal.read, begin, read.local, limiter=self._remote_threads, abandon_on_cancel=True
            )
        except Exception as exc:  # noqa: BLE001 - the pageserver reconnects and asks again
            log.warning("acceptor %s: WAL [%s, %s) for the pageserver is not on disk and object storage failed: %s",
                        self.core.node, format_lsn(begin), format_lsn(read.local), exc)
            return None
        self.fallback_reads += 1
        return older + read.data

    async def _take_feedback(self, conn: _Connection) -> None:
        """Persist the pageserver's remote_consistent_lsn as it reports it (rule 9)."""
        while True:
            await conn.feedback.wait()
            conn.feedback = trio.Event()
            lsn = conn.feedback_lsn
            if lsn > self.remote_consistent_lsn:
                try:
                    await self.set_remote_consistent_lsn(lsn)
                except OSError as exc:
                    log.error("acceptor %s: storing remote_consistent_lsn %s failed: %s", self.core.node,
                              format_lsn(lsn), exc)

    async def _bind(self, conn: _Connection, claimed: str | None, kind: str) -> str:
        """The proposer id this connection speaks for (rule 5)."""
        if claimed is None:
            if conn.peer is None:
                raise ProtocolError(f"{kind} names no proposer; an acceptor takes only proposer messages")
            return conn.peer  # the core refuses it by its type
        if conn.peer is not None:
            if claimed != conn.peer:
                raise ProtocolError(f"{kind} of proposer {claimed} on the connection of {conn.peer}")
            return claimed
        previous = self._peers.get(claimed)
        if previous is not None:
            await self._drop(previous, f"replaced by a new connection of {claimed} from {conn.name}")
        conn.peer = claimed
        self._peers[claimed] = conn
        return claimed

    async def _drop(self, conn: _Connection, reason: str) -> None:
        """Close `conn` (once) and tell the core its proposer is gone (rule 4)."""
        if conn.closed:
            return
        conn.closed = True
        log.info("connection %s (%s) closed: %s", conn.name, conn.peer or "unnamed", reason)
        conn.scope.cancel()
        conn.outbox.close()
        if conn.peer is not None and self._peers.get(conn.peer) is conn:
            del self._peers[conn.peer]
            await self._run(self.core.on_disconnected(conn.peer))

    # -----------------------------------------------------------------------------------
    # Effects (rule 2)
    # -----------------------------------------------------------------------------------

    async def _run(self, effects: Effects) -> None:
        for effect in effects:
            match effect:
                case Send(to=to, msg=msg, meta=meta):
                    await self._send(to, encode(msg, meta))
                case Close(peer=peer, reason=reason):
                    conn = self._peers.get(peer)
                    if conn is not None:
                        await self._drop(conn, f"refused: {reason}")
                case WriteWal() | TruncateWal() | Flush() | PersistControl() | SendWal():
                    self._disk_send.send_nowait(effect)
                case _:
                    raise AssertionError(f"unexpected acceptor effect {effect!r}")

    async def _run_completion(self, completion: Callable[[], Effects]) -> None:
        await self._run(completion())

    async def _storage(self) -> None:
        """The disk task: storage operations in order, each completion back to the driver.

        The WAL writes queued one after the other, and the Flush right behind them if it is
        queued too, run in one thread call: a thread round trip costs about as much as
        writing a 1 KiB record, and the core asks for them together.
        """
        async for effect in self._disk:
            writes: list[WriteWal] = []
            while isinstance(effect, WriteWal):
                writes.append(effect)
                try:
                    effect = self._disk.receive_nowait()
                except trio.WouldBlock:
                    effect = None
            if writes:
                flush = isinstance(effect, Flush)
                await trio.to_thread.run_sync(self._write_run, writes, flush)
                self.stats.writes += len(writes)
                self._unflushed_writes += len(writes)
                if flush:
                    effect = None
                    await self._inbox_send.send(_Done(self._flushed()))
            done = None if effect is None else await self._store(effect)
            if done is not None:
                await self._inbox_send.send(_Done(done))

    def _write_run(self, writes: list[WriteWal], flush: bool) -> None:
        """In a worker thread: the writes in order, then an fsync if asked."""
        for write in writes:
            self._wal.write(write.lsn, write.data)
        if flush:
            self._wal.flush()

    def _flushed(self) -> Callable[[], Awaitable[None]]:
        """Count a finished Flush; the driver's part of its completion."""
        self.stats.fsyncs += 1
        self.stats.writes_per_fsync[self._unflushed_writes] += 1
        self._unflushed_writes = 0
        return lambda: self._run_completion(self.core.on_flushed)

    async def _store(self, effect: Any) -> Callable[[], Awaitable[None]] | None:
        """Run one storage operation other than a WAL write; what the driver must do after
        it, if anything."""
        match effect:
            case TruncateWal(lsn=lsn):
                await trio.to_thread.run_sync(self._wal.truncate, lsn)
            case Flush():
                await trio.to_thread.run_sync(self._wal.flush)
                return self._flushed()
            case PersistControl(state=state):
                await trio.to_thread.run_sync(self._control.store, state)
                return lambda: self._run_completion(self.core.on_persisted)
            case SendWal(to=to, term=term, begin_lsn=begin, end_lsn=end):
                local = max(begin, self._wal.start_lsn)
                wal = await trio.to_thread.run_sync(self._wal.read, local, end) if local < end else b""
                if begin < local:  # removed here: the older part comes from object storage (rule 8)
                    assert self._nursery is not None
                    self._nursery.start_soon(self._send_offloaded, effect, min(local, end), wal)
                    return None
                data = WalData(acceptor=self.core.node, term=term, begin_lsn=begin, end_lsn=end, wal=wal)
                return lambda: self._send(to, encode(data))
            case _RemoveWal(limit=limit, done=done):
                await trio.to_thread.run_sync(self._wal.remove_below, limit)
                done.set()
            case _ReadWal(begin=begin, end=end):
                effect.local = local = min(max(begin, self._wal.start_lsn), end)
                try:
                    if local < end:
                        effect.data = await trio.to_thread.run_sync(self._wal.read, local, end)
                except Exception as exc:  # noqa: BLE001 - the streamer reports it; the disk task goes on
                    effect.error = exc
                effect.done.set()
        return None

    # -----------------------------------------------------------------------------------
    # Offload (rule 8)
    # -----------------------------------------------------------------------------------

    @property
    def local_start_lsn(self) -> int:
        """The first LSN still on disk (above the WAL's start once old segments are removed)."""
        return self._wal.start_lsn

    @property
    def remote_consistent_lsn(self) -> int:
        """The pageserver's remote_consistent_lsn as last reported (persisted)."""
        return self._horizons.remote_consistent_lsn

    async def set_remote_consistent_lsn(self, lsn: int) -> int:
        """Take the pageserver's remote_consistent_lsn (issue 8): the WAL below it is in the
        pageserver's uploaded layers, so the acceptor may remove it once it is offloaded too.

        Persisted (atomically, in the data directory's `horizons` file) before it returns;
        it only moves forward: a lower value is ignored.

        Args:
            lsn: the pageserver's remote_consistent_lsn.

        Returns:
            The remote_consistent_lsn now stored.

        Raises:
            ValueError: `lsn` is not an int >= 0.
            OSError: storing it failed (the old value stays in force).
        """
        if type(lsn) is not int or lsn < 0:
            raise ValueError(f"remote_consistent_lsn must be an int >= 0, got {lsn!r}")
        state = await self._horizons.advance(remote_consistent_lsn=lsn)
        if self.offloader is not None:
            self.offloader.wake()
        return state.remote_consistent_lsn

    def _positions(self) -> Positions:
        return Positions(self.core.flush_lsn, self.core.commit_lsn, self._wal.start_lsn)

    async def _remove_below(self, limit: int) -> int:
        """FileWal.remove_below(limit), on the disk task in order; the new local start."""
        done = trio.Event()
        self._disk_send.send_nowait(_RemoveWal(limit, done))
        await done.wait()
        return self._wal.start_lsn

    async def _send_offloaded(self, effect: SendWal, split: int, local: bytes) -> None:
        """Finish a SendWal whose [begin, split) was removed here: read it from object
        storage, then send it with the `local` part through the driver."""
        if self._remote_wal is None:
            log.error("acceptor %s: WAL [%s, %s) for %s was removed and no object storage is configured",
                      self.core.node, format_lsn(effect.begin_lsn), format_lsn(split), effect.to)
            return
        try:
            older = await trio.to_thread.run_sync(
                self._remote_wal.read, effect.begin_lsn, split, limiter=self._remote_threads, abandon_on_cancel=True
            )
        except Exception as exc:  # noqa: BLE001 - whatever the store did, the reply is lost (rule 8)
            log.warning("acceptor %s: WAL [%s, %s) for %s is not on disk and object storage failed: %s",
                        self.core.node, format_lsn(effect.begin_lsn), format_lsn(split), effect.to, exc)
            return
        data = WalData(acceptor=self.core.node, term=effect.term, begin_lsn=effect.begin_lsn,
                       end_lsn=effect.end_lsn, wal=older + local)
        self.fallback_reads += 1
        await self._inbox_send.send(_Done(lambda: self._send(effect.to, encode(data))))

    async def _send(self, peer: str, frame: bytes) -> None:
        """Queue `frame` for `peer`'s connection without waiting (rule 3)."""
        conn = self._peers.get(peer)
        if conn is None:
            return  # no connection: the message is lost, as the network may lose it
        try:
            conn.outbox.send_nowait(frame)
        except trio.WouldBlock:
            await self._drop(conn, f"outbox full ({OUTBOX_FRAMES} frames): the peer is not reading")


# The directory under the data directory that holds one directory per timeline (rule 10).
TIMELINES_DIR = "timelines"


class AcceptorServer:
    """One running acceptor: its timelines and the connections not yet bound to one.

    Built and run by `serve_acceptor`, which hands it to the caller through
    `task_status.started`.

    Attributes (read-only):
        node: the acceptor's id.
        port: the TCP port it listens on.
        data_dir: its data directory (one ``timelines/<timeline>/`` per timeline).
        timelines: timeline id -> its AcceptorTimeline, for every timeline open now.
    """

    def __init__(
        self,
        node: str,
        data_dir: Path,
        port: int,
        trace_dir: Path | None,
        *,
        segment_size: int,
        remote: RemoteStorage | None,
        remote_prefix: str,
        offload: OffloadConfig,
        stack: contextlib.ExitStack,
    ) -> None:
        self.node = node
        self.data_dir = data_dir
        self.port = port
        self.timelines: dict[str, AcceptorTimeline] = {}
        self._trace_dir = trace_dir
        self._segment_size = segment_size
        self._remote = remote
        self._remote_prefix = remote_prefix
        self._offload = offload
        self._stack = stack
        self._opening = trio.Lock()  # one timeline created at a time (rule 10)
        self._nursery: trio.Nursery | None = None

    def timeline_dir(self, timeline: str) -> Path:
        """Where timeline `timeline`'s control file, WAL segments and horizons live."""
        return self.data_dir / TIMELINES_DIR / check_timeline_id(timeline)

    # -----------------------------------------------------------------------------------
    # Opening timelines (rule 10)
    # -----------------------------------------------------------------------------------

    def held_timelines(self) -> list[str]:
        """The timelines on disk: directories of `timelines/` holding a control file."""
        root = self.data_dir / TIMELINES_DIR
        if not root.is_dir():
            return []
        held = []
        for entry in sorted(root.iterdir()):
            try:
                check_timeline_id(entry.name)
            except ValueError:
                log.warning("acceptor %s: %s is not a timeline directory (not a timeline id); ignored", self.node, entry)
                continue
            if entry.is_dir() and FileControlStorage(entry).path.exists():
                held.append(entry.name)
        return held

    async def open_timeline(self, timeline: str, wal_start: int | None) -> AcceptorTimeline:
        """The running timeline `timeline`, opened from disk or created with `wal_start`.

        Args:
            timeline: the timeline id.
            wal_start: where its WAL must start; None to open one on disk as it is.

        Raises:
            CorruptStorage: the timeline's WAL starts elsewhere, or its directory is damaged
                (the message says why); nothing was opened.
            OSError: its directory or trace cannot be written.
        """
        async with self._opening:
            held = self.timelines.get(timeline)
            if held is None:
                held = await self._start_timeline(timeline, wal_start)
            if wal_start is not None and held.core.wal_start != wal_start:
                raise CorruptStorage(
                    f"acceptor {self.node}: timeline {timeline} holds a WAL starting at"
                    f" {format_lsn(held.core.wal_start)}, not at {format_lsn(wal_start)}"
                )
            return held

    async def _start_timeline(self, timeline: str, wal_start: int | None) -> AcceptorTimeline:
        directory = self.timeline_dir(timeline)
        fresh = not FileControlStorage(directory).path.exists()
        if wal_start is None or not fresh:
            control = FileControlStorage(directory).load()
            if control is None:
                raise CorruptStorage(f"acceptor {self.node}: timeline {timeline} has no control file in {directory}")
            held_start = control.term_history[0][1]
            if wal_start is not None and held_start != wal_start:
                raise CorruptStorage(
                    f"acceptor {self.node}: timeline {timeline} holds a WAL starting at"
                    f" {format_lsn(held_start)}, not at {format_lsn(wal_start)}"
                )
            wal_start = held_start
        stack = contextlib.ExitStack()
        try:
            tracer = None
            if self._trace_dir is not None:
                (self._trace_dir / timeline).mkdir(parents=True, exist_ok=True)
                tracer = open_trace(self.node, wal_start, self._trace_dir / timeline / f"{self.node}.ndjson", stack)
            directory.mkdir(parents=True, exist_ok=True)
            core, startup, wal, control_storage = await trio.to_thread.run_sync(
                open_acceptor, directory, self.node, wal_start, tracer, self._segment_size
            )
            stack.callback(wal.close)
            if fresh:
                await trio.to_thread.run_sync(fsync_dir, directory.parent)
            if core.wal_start != wal_start:
                raise CorruptStorage(
                    f"acceptor {self.node}: {directory} holds a WAL starting at {format_lsn(core.wal_start)},"
                    f" not at {format_lsn(wal_start)}"
                )
            horizons = LocalHorizons.load(directory)
            remote_wal = None
            if self._remote is not None:
                remote_wal = RemoteWal(self._remote, check_key(f"{self._remote_prefix}/{timeline}"), self._segment_size)
            await trio.to_thread.run_sync(check_wal_available, self.node, core.wal_start, wal.start_lsn, remote_wal)
            held = AcceptorTimeline(timeline, core, wal, control_storage, horizons=horizons, remote_wal=remote_wal,
                                    offload=self._offload)
            assert self._nursery is not None
            await self._nursery.start(held._run_tasks, startup)
        except BaseException:
            stack.close()
            raise
        self._stack.push(stack)
        self.timelines[timeline] = held
        log.info("acceptor %s: timeline %s %s (WAL from %s, term %d, flush %s)", self.node, timeline,
                 "created" if fresh else "opened", format_lsn(core.wal_start), core.term, format_lsn(core.flush_lsn))
        return held

    # -----------------------------------------------------------------------------------
    # Connections (rules 7 and 10)
    # -----------------------------------------------------------------------------------

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        host, port, *_ = stream.socket.getpeername()
        outbox, outgoing = trio.open_memory_channel[bytes](OUTBOX_FRAMES)
        conn = _Connection(f"{host}:{port}", stream, outbox)
        log.info("connection %s opened", conn.name)

        async def received(frame: Frame) -> None:
            await self._route(conn, frame)

        async def lost(reason: str) -> None:
            if conn.timeline is not None:
                await conn.timeline._inbox_send.send(Lost(conn, reason))
            else:
                self._close(conn, reason)

        try:
            with conn.scope:
                async with trio.open_nursery() as nursery:
                    conn.nursery = nursery
                    nursery.start_soon(read_frames, stream, received, lost, "peer")
                    nursery.start_soon(write_frames, stream, outgoing, lost)
        finally:
            await trio.aclose_forcefully(stream)

    async def _route(self, conn: _Connection, frame: Frame) -> None:
        """A frame of `conn`: to its timeline's inbox, or, before it has one, bind it (rule 10)."""
        if conn.closed:
            return
        msg = frame.message
        if isinstance(msg, StatusRequest):
            held = self.timelines.get(msg.timeline)
            status = held.status() if held is not None else StatusResponse(
                acceptor=self.node, timeline=msg.timeline, term=0, flush_lsn=0, commit_lsn=0, wal_start=0,
                leader="", leader_term=0, proposers=(),
            )
            try:
                conn.outbox.send_nowait(encode(status))
            except trio.WouldBlock:
                self._close(conn, f"outbox full ({OUTBOX_FRAMES} frames): the peer is not reading")
            return
        if conn.timeline is not None:
            await conn.timeline._inbox_send.send(Received(conn, frame))
            return
        if isinstance(msg, PageserverFeedback):
            # The horizon reaches acceptors the pageserver does not stream from (rule 9).
            held = self.timelines.get(msg.timeline)
            if held is not None and msg.remote_consistent_lsn > held.remote_consistent_lsn:
                try:
                    await held.set_remote_consistent_lsn(msg.remote_consistent_lsn)
                except OSError as exc:
                    log.error("acceptor %s: storing remote_consistent_lsn %s of %s failed: %s", self.node,
                              format_lsn(msg.remote_consistent_lsn), msg.timeline, exc)
            return
        if isinstance(msg, OpenTimeline):
            try:
                conn.timeline = await self.open_timeline(msg.timeline, msg.wal_start)
            except (CorruptStorage, ValueError, OSError) as exc:  # a damaged or mismatched timeline, a full disk
                self._close(conn, f"OpenTimeline of {msg.proposer} refused: {exc}")
            return
        if isinstance(msg, StreamWal):
            held = self.timelines.get(msg.timeline)
            if held is None:
                self._close(conn, f"StreamWal from {msg.pageserver}: acceptor {self.node} holds no timeline {msg.timeline}")
                return
            conn.timeline = held
            await held._inbox_send.send(Received(conn, frame))
            return
        self._close(conn, f"protocol error: {type(msg).__name__} before OpenTimeline or StreamWal")

    def _close(self, conn: _Connection, reason: str) -> None:
        """Close `conn`, bound to no timeline, once (rule 4)."""
        if conn.closed:
            return
        conn.closed = True
        log.info("connection %s (%s) closed: %s", conn.name, conn.peer or "unnamed", reason)
        conn.scope.cancel()
        conn.outbox.close()


async def serve_acceptor(
    node: str,
    data_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 0,
    trace_dir: str | os.PathLike[str] | None = None,
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    remote: RemoteStorage | None = None,
    remote_prefix: str = "timelines",
    offload: OffloadConfig = OffloadConfig(),
    task_status: trio.TaskStatus[AcceptorServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run acceptor `node` on `data_dir`, serving proposers on `host`:`port`, until cancelled.

    Args:
        node: the acceptor's id.
        data_dir: its timelines, one directory each under ``timelines/`` (created as
            proposers open them, module docstring rule 10).
        host, port: where to listen; port 0 picks a free one (see `AcceptorServer.port`).
        trace_dir: append each timeline's trace to ``<trace_dir>/<timeline>/<node>.ndjson``,
            or None for no trace.
        segment_size: the WAL segment size of every timeline (the cluster's configuration).
        remote: object storage to offload completed WAL segments to (module docstring,
            rule 8), or None for no offload (then no WAL is ever removed).
        remote_prefix: the key prefix of the WALs' objects: timeline T's are under
            ``<remote_prefix>/<T>``; the same for every acceptor of the cluster, and
            different for every cluster sharing the store.
        offload: the offload tuning (heartbeat, lease, poll, backoff).
        task_status: `started(server)` once it listens (use with `nursery.start`).

    Resource handling:
        Runs until cancelled.  A storage operation in progress at cancellation finishes
        first; then every connection is closed and the WALs and trace files with them.

    Error handling:
        Raises CorruptStorage before listening if a timeline's directory is damaged (the
        message names the file and the problem), or if WAL was removed locally and object
        storage does not hold it (impl/offload.py, rule 6); ValueError for a bad
        `remote_prefix`; OSError if the port cannot be bound.  Object storage failing later
        is logged and retried by the offloader; it never stops the acceptor.  A bad or
        vanished peer, or an OpenTimeline the acceptor refuses, closes only its connection,
        logged (see the module docstring).
    """
    check_key(remote_prefix)
    with contextlib.ExitStack() as stack:
        data = Path(data_dir)
        (data / TIMELINES_DIR).mkdir(parents=True, exist_ok=True)
        server = AcceptorServer(
            node, data, 0, None if trace_dir is None else Path(trace_dir),
            segment_size=segment_size, remote=remote, remote_prefix=remote_prefix, offload=offload, stack=stack,
        )
        failure: Exception | None = None  # raised as itself, not in the nursery's group
        async with trio.open_nursery() as nursery:
            server._nursery = nursery
            try:
                for timeline in server.held_timelines():  # every timeline reopened before anyone talks (rule 10)
                    await server.open_timeline(timeline, None)
                listeners = await trio.open_tcp_listeners(port, host=host)
            except (CorruptStorage, ValueError, OSError) as exc:
                failure = exc
                nursery.cancel_scope.cancel()
            else:
                server.port = listeners[0].socket.getsockname()[1]
                await nursery.start(trio.serve_listeners, server._serve_connection, listeners)
                log.info("acceptor %s listening on %s:%d (timelines: %s)", node, host, server.port,
                         ", ".join(server.timelines) or "none yet")
                task_status.started(server)
        if failure is not None:
            raise failure
