"""The compute: a stateless SQL database on the replicated WAL and the pageserver (issue 9).

Theory of operation
===================

A compute holds nothing durable (DESIGN.md §7).  SQLite runs on `impl/pagevfs.py`'s VFS:
its page reads are GetPage@LSN calls to the pageserver, its commits are page WAL records
(`impl/pagewal.py`) appended through an embedded proposer (`impl/proposer_client.py`); the
Postgres protocol (`impl/pgserver.py`, `impl/sql.py`) is how clients reach it.  Kill it, start
another on the same branch, and the new one carries on at the same LSN with every
acknowledged commit.  This file wires those parts; rules:

1. Start-up of a primary is the proposer's election (Neon's sync-safekeepers step).  The
   embedded proposer wins a term from a quorum of acceptors and recovers the most advanced
   WAL; the *start LSN* is where its term begins (its last term switch, the end of the
   recovered WAL), and the compute waits until that much is committed in its own term and
   until the pageserver has ingested it, and only then opens SQLite: every commit
   acknowledged by an earlier compute is below the start LSN, so the new one sees it.
2. Reads: a page this compute never wrote is read at the start LSN (nobody else writes the
   branch since: rule 7); a page it wrote is read at the LSN of the record that last wrote
   it (`_written`), once that record is committed (GetPage waits, bounded, for ingest).  The
   VFS keeps committed pages in its cache, so the pageserver is asked mostly for pages not
   yet seen.
3. Commits are pipelined.  SQLite's sync queues the transaction's record for the proposer
   and returns at once (a submitter task hands the queue to `Proposer.submit` in order), so
   the next transaction runs while this one is in flight; a record's versions become the base of the next record's deltas
   as soon as it is handed over (`RecordBuilder.commit`), which is right because the log
   commits a prefix: a later record committed means every earlier one is.
4. No reply leaves before its commit.  A client's reply (a COMMIT, an autocommit statement,
   and a read) is released only when the last record handed to the proposer before the reply
   was made is committed: whatever the reply's transaction wrote or read is in that prefix.
   So a crash loses only work no client was told about.  `pg_current_wal_lsn()` is the end of
   the last record this compute knows committed.
5. A record that can never commit stops the compute.  If the proposer loses its term (another
   compute took over: `Proposer.deposed`) or a record fails (`AppendFailed`: outcome unknown;
   `NotLeader`: never written), the compute is *fenced*: every reply waiting and every later
   statement fail with a clear error (SQLSTATE 08007 for the replies whose commit is unknown,
   57P01 after), SQLite is never used again, and `serve_compute` returns.  Its local state
   may hold records the log will not, so it must die; the new compute has the truth.  Its
   proposer leads once (`lead_once`): it never campaigns again.
6. A static compute (`lsn` given) has no proposer: it reads the branch at that LSN through a
   read-only VFS and refuses writes (25006).  A replica (`replica`) has none either: it reads
   the branch at its commit LSN (the highest its acceptors report), and moves its snapshot there
   whenever a session takes the SQLite connection with no transaction open (the VFS's
   `reset_cache`: SQLite's and the VFS's caches are dropped), so every Query reads a
   committed, recent state and the primary never waits for it.
7. One writer per branch.  Two computes on one branch cannot both commit: the acceptors
   refuse the lower term (the spec's election safety), and rule 5 stops the loser.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path

import attrs
import trio

from impl.pagevfs import DEFAULT_CACHE_PAGES, PageVfs
from impl.pageclient import PageClient
from impl.pagewal import RecordBuilder, encode_record
from impl.pgserver import ThreadedSession, serve_pg
from impl.pgwire import Startup
from impl.proposer_client import AppendFailed, NotLeader, PendingAppend, Proposer, ProposerConfig, serve_proposer
from impl.sql import Database, Session, SqlError, StatementResult
from impl.walreceiver import fetch_status
from impl.wire import (
    DbSize,
    DbSizeData,
    GetPage,
    Message,
    PageImageData,
    PageserverError,
    ProtocolError,
    format_lsn,
)

__all__ = ["Compute", "ComputeConfig", "ComputeError", "serve_compute"]

log = logging.getLogger("paxwal.compute")

# How often a compute retries a pageserver that is not up to its start LSN yet.
START_RETRY = 0.2
# How long a replica waits for an acceptor's status.
STATUS_TIMEOUT = 2.0


@attrs.define(eq=False)
class _Handed:
    """A record SQLite's sync handed over (rule 3): queued, then submitted to the proposer."""

    record: bytes
    submitted: trio.Event = attrs.field(factory=trio.Event)
    pending: PendingAppend | None = None
    failure: NotLeader | None = None


class ComputeError(Exception):
    """A failure a client is told about, with the SQLSTATE it is told (impl/sql.py rule 4)."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@attrs.frozen(kw_only=True)
class ComputeConfig:
    """What a compute needs to know.

    Attributes:
        name: its id, which is also its proposer's (in traces and run.json).
        timeline: the branch it serves.
        wal_start: where the branch's WAL starts (0 for main, a branch's branch LSN).
        acceptors: acceptor id -> TCP port on 127.0.0.1.
        pageserver_port: the page service's port on 127.0.0.1.
        port: where clients connect (0: any free port, see `Compute.port`).
        user, password, database: the one account clients name.
        lsn: a static compute's LSN (rule 6); None for a primary or a replica.
        replica: a read replica following the branch (rule 6).
        trace_path: the proposer's trace, or None.
        proposer: the proposer's tuning.
        cache_pages: the VFS page cache's capacity.
        start_timeout: how long start-up may take (election, catch-up) before it fails.
        page_timeout: how long one pageserver request may take.
    """

    name: str
    timeline: str = "main"
    wal_start: int = 0
    acceptors: Mapping[str, int] = attrs.field(factory=dict)
    pageserver_port: int
    port: int = 0
    user: str = "paxwal"
    password: str = attrs.field(repr=False)
    database: str = "paxwal"
    lsn: int | None = None
    replica: bool = False
    trace_path: Path | None = None
    proposer: ProposerConfig = ProposerConfig()
    cache_pages: int = DEFAULT_CACHE_PAGES
    start_timeout: float = 60.0
    page_timeout: float = 30.0

    @property
    def mode(self) -> str:
        return "replica" if self.replica else "primary" if self.lsn is None else "static"


class Compute:
    """A running compute (see the module docstring); built by `serve_compute`.

    Attributes (read-only):
        config: its configuration.
        port: the Postgres port clients connect to.
        term: the primary's term (0 for a static compute).
        start_lsn: the LSN it started at (rule 1), or its static LSN.
        snapshot_lsn: where pages it did not write are read: its start LSN, or a replica's
            current snapshot.
        lsn: the end of the last record known committed (`pg_current_wal_lsn()`).
        fenced: why it stopped (rule 5), or None while it serves.
    """

    def __init__(self, config: ComputeConfig, nursery: trio.Nursery) -> None:
        self.config = config
        self.port = 0
        self.term = 0
        self.start_lsn = 0
        self.snapshot_lsn = 0
        self.lsn = 0
        self.fenced: str | None = None
        self._nursery = nursery
        self._proposer: Proposer | None = None
        self._builder: RecordBuilder | None = None
        self._page_client: PageClient | None = None
        self._page_lock = trio.Lock()
        self._written: dict[int, _Handed | int] = {}  # page -> its last record (rule 2)
        self._last: _Handed | None = None  # the last record handed over (rule 4)
        self._token = trio.lowlevel.current_trio_token()
        self._handed_send, self._handed_receive = trio.open_memory_channel[_Handed](math.inf)
        self._stopped = trio.Event()

    # -- the pageserver (rule 2) ----------------------------------------------------------

    async def _page_request(self, msg: Message) -> Message:
        """One page-service request, on one connection kept open (reopened once if broken)."""
        async with self._page_lock:
            for attempt in (1, 2):
                try:
                    if self._page_client is None:
                        self._page_client = await PageClient.connect(self.config.pageserver_port)
                    with trio.fail_after(self.config.page_timeout):
                        return await self._page_client.request(msg)
                except (OSError, trio.BrokenResourceError, ProtocolError, trio.TooSlowError) as exc:
                    if self._page_client is not None:
                        await self._page_client.stream.aclose()
                        self._page_client = None
                    if attempt == 2:
                        raise ComputeError("58030", f"compute {self.config.name}: the pageserver on port"
                                                    f" {self.config.pageserver_port} failed: {exc!r}") from None
        raise AssertionError("unreachable")

    async def _read_lsn(self, page: int) -> int:
        entry = self._written.get(page)
        if entry is None:
            return self.snapshot_lsn
        if isinstance(entry, int):
            return entry
        lsn = await self._settled(entry)
        self._written[page] = lsn
        return lsn

    async def get_page(self, page: int) -> bytes:
        """Page `page` as this compute must see it (rule 2)."""
        lsn = await self._read_lsn(page)
        reply = await self._page_request(GetPage(timeline=self.config.timeline, page=page, lsn=lsn))
        if not isinstance(reply, PageImageData):
            raise ComputeError("58030", f"GetPage {page}@{format_lsn(lsn)} on {self.config.timeline}: {reply}")
        return reply.image

    async def latest_lsn(self) -> int:
        """The branch's commit LSN, the highest its acceptors report (a replica's next snapshot)."""
        answers: list[int] = []

        async def ask(port: int) -> None:
            with contextlib.suppress(OSError, trio.BrokenResourceError, trio.TooSlowError, ProtocolError):
                answers.append((await fetch_status(port, STATUS_TIMEOUT, timeline=self.config.timeline)).commit_lsn)

        async with trio.open_nursery() as nursery:
            for port in self.config.acceptors.values():
                nursery.start_soon(ask, port)
        if not answers:
            raise ComputeError("58030", f"compute {self.config.name}: no acceptor of {self.config.timeline} answers")
        return max(max(answers), self.snapshot_lsn)

    def follow_in_thread(self, vfs: PageVfs) -> None:
        """A replica's Database.on_acquire, in SQLite's thread: move to the newest snapshot."""
        latest = trio.from_thread.run(self.latest_lsn)
        if latest > self.snapshot_lsn:
            self.snapshot_lsn = self.lsn = latest
            vfs.reset_cache(None)

    async def db_size(self, lsn: int) -> int:
        """The branch's size in pages at `lsn`, waiting until the pageserver has it (rule 1)."""
        while True:
            reply = await self._page_request(DbSize(timeline=self.config.timeline, lsn=lsn))
            if isinstance(reply, DbSizeData):
                return reply.db_size
            if not (isinstance(reply, PageserverError) and reply.code == "lsn-timeout"):
                raise ComputeError("58030", f"DbSize@{format_lsn(lsn)} on {self.config.timeline}: {reply}")
            log.info("compute %s: the pageserver is not at %s yet; waiting", self.config.name, format_lsn(lsn))
            await trio.sleep(START_RETRY)

    # -- commits (rules 3-5) --------------------------------------------------------------

    def commit_in_thread(self, dirty: dict[int, bytes], db_size: int) -> None:
        """The VFS's CommitSink, in SQLite's thread: hand the transaction's record over (rule 3).

        Raises:
            ComputeError: the compute is fenced (rule 5); SQLite rolls the transaction back.
        """
        self._check_serving()
        assert self._builder is not None
        record = self._builder.build(dirty, db_size, time.time_ns() // 1000)
        if record is None:
            return
        self._builder.commit()
        handed = _Handed(encode_record(record))
        # No round trip to trio while SQLite is held: the record is queued in commit order
        # (the connection's owner is the only writer) and the submitter takes it from there.
        self._token.run_sync_soon(self._handed_send.send_nowait, handed)
        self._last = handed
        for page in dirty:
            self._written[page] = handed

    async def _submit(self) -> None:
        """Hand the queued records to the proposer in order (rule 3), and learn their fates."""
        assert self._proposer is not None
        async for handed in self._handed_receive:
            try:
                handed.pending = await self._proposer.submit(handed.record)
            except NotLeader as exc:
                handed.failure = exc
                self._fence(f"its proposer stopped: {exc}")
            handed.record = b""
            handed.submitted.set()
            self._nursery.start_soon(self._track, handed)

    async def _track(self, handed: _Handed) -> None:
        """Learn every record's fate, waited for or not: a failure fences at once (rule 5)."""
        with contextlib.suppress(ComputeError):
            await self._settled(handed)

    async def _settled(self, handed: _Handed) -> int:
        """The record's end LSN once committed; fences the compute if it cannot be (rule 5)."""
        await handed.submitted.wait()
        try:
            if handed.pending is None:
                raise handed.failure or NotLeader("not submitted")
            lsn = await handed.pending.result()
        except (AppendFailed, NotLeader) as exc:
            self._fence(f"a commit failed: {exc}")
            raise ComputeError("08007", f"compute {self.config.name}: the commit's outcome is unknown and this"
                                        f" compute has stopped: {exc}") from None
        self.lsn = max(self.lsn, lsn)
        return lsn

    async def durable(self) -> None:
        """Wait until every record handed over so far is committed (rule 4).

        Raises:
            ComputeError: one of them cannot be (rule 5).
        """
        last = self._last
        if last is not None:
            await self._settled(last)  # committed: the reply stands, even if fenced since

    def _check_serving(self) -> None:
        if self.fenced is not None:
            raise ComputeError("57P01", f"compute {self.config.name} has stopped: {self.fenced}; connect to the"
                                        " compute that replaced it")

    def _fence(self, why: str) -> None:
        if self.fenced is None:
            self.fenced = why
            log.error("compute %s stops: %s", self.config.name, why)
            self._stopped.set()

    async def _watch_term(self, proposer: Proposer) -> None:
        await proposer.deposed.wait()
        self._fence(f"its proposer lost term {self.term} on {self.config.timeline}: another compute took the branch"
                    " over, or no quorum answered in time")


class _ComputeSession:
    """A client's session: its SQL in SQLite's thread, its replies held until durable (rule 4)."""

    def __init__(self, compute: Compute, session: ThreadedSession) -> None:
        self._compute = compute
        self._session = session

    @property
    def transaction_status(self) -> str:
        return self._session.transaction_status

    async def execute(self, sql: str) -> list[StatementResult]:
        try:
            self._compute._check_serving()
            results = await self._session.execute(sql)
            await self._compute.durable()
        except ComputeError as exc:
            return [SqlError(exc.sqlstate, str(exc))]  # nothing of the Query's results leaves
        return results

    async def close(self) -> None:
        await self._session.close()


class _Source:
    """The VFS's PageSource, in SQLite's thread: the compute's reads, through trio (rule 2)."""

    def __init__(self, compute: Compute) -> None:
        self._compute = compute

    def get_page(self, page: int) -> bytes:
        return trio.from_thread.run(self._compute.get_page, page)

    def db_size(self) -> int:
        return trio.from_thread.run(self._compute.db_size, self._compute.snapshot_lsn)


class _Sink:
    """The VFS's CommitSink (rule 3)."""

    def __init__(self, compute: Compute) -> None:
        self._compute = compute

    def commit(self, dirty: dict[int, bytes], db_size: int) -> None:
        self._compute.commit_in_thread(dirty, db_size)


async def _start_primary(compute: Compute, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Win a term and reach the start LSN (rule 1); runs the proposer until cancelled."""
    config = compute.config
    addresses = {a: ("127.0.0.1", p) for a, p in config.acceptors.items()}
    async with trio.open_nursery() as nursery:
        proposer = await nursery.start(functools.partial(
            serve_proposer, config.name, addresses, config.proposer, config.wal_start, config.trace_path,
            timeline=config.timeline, lead_once=True))
        compute.term = await proposer.wait_leader()
        compute.start_lsn = proposer.core.history[-1].lsn
        await proposer.wait_committed(compute.start_lsn)
        compute._proposer = proposer
        nursery.start_soon(compute._watch_term, proposer)
        nursery.start_soon(compute._submit)
        task_status.started()


async def serve_compute(config: ComputeConfig, task_status: trio.TaskStatus[Compute] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a compute until cancelled or fenced (rule 5).

    Args:
        config: what it serves and where.
        task_status: `started(compute)` once it accepts connections.

    Error handling:
        Raises before it serves: OSError (the port is busy: checked first, before the
        election), trio.TooSlowError (no term, or the pageserver not at the start LSN, within
        `start_timeout`), ComputeError (the pageserver refused), the latter two inside an
        ExceptionGroup.  Returns when fenced, with `Compute.fenced` saying why.
    """
    # The port first: a busy one fails before the election could depose a serving compute.
    listeners = await trio.open_tcp_listeners(config.port, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        compute = Compute(config, nursery)
        with trio.fail_after(config.start_timeout):
            if config.replica:
                compute.start_lsn = await compute.latest_lsn()
            elif config.lsn is None:
                await nursery.start(_start_primary, compute)
            else:
                compute.start_lsn = config.lsn
            compute.lsn = compute.snapshot_lsn = compute.start_lsn
            db_size = await compute.db_size(compute.start_lsn)
        read_only = config.mode != "primary"
        if not read_only:
            compute._builder = RecordBuilder(db_size)
        vfs = PageVfs(_Source(compute), None if read_only else _Sink(compute), read_only=read_only,
                      cache_pages=config.cache_pages)
        connection = await trio.to_thread.run_sync(vfs.connect, config.database)
        connection.create_scalar_function("paxwal_term", lambda: compute.term, 0)
        follow = functools.partial(compute.follow_in_thread, vfs) if config.replica else None
        database = Database(connection, current_lsn=lambda: compute.lsn, on_acquire=follow)
        reason = {
            "primary": None,
            "static": f"compute {config.name} is a static snapshot of {config.timeline} at"
                      f" {format_lsn(compute.start_lsn)}: it takes no writes",
            "replica": f"compute {config.name} is a read replica of {config.timeline}: it takes no writes",
        }[config.mode]

        def sessions(startup: Startup) -> _ComputeSession:
            settings = {"application_name": startup.params.get("application_name", "")}
            return _ComputeSession(compute, ThreadedSession(Session(database, read_only_reason=reason, settings=settings)))

        compute.port = await nursery.start(functools.partial(
            serve_pg, sessions, user=config.user, password=config.password, database=config.database,
            listeners=listeners))
        log.info("compute %s (%s) of %s serving on 127.0.0.1:%d: term %d, start LSN %s", config.name, config.mode,
                 config.timeline, compute.port, compute.term, format_lsn(compute.start_lsn))
        task_status.started(compute)
        await compute._stopped.wait()
        await trio.sleep(1.0)  # the replies failing with the reason go out first
        nursery.cancel_scope.cancel()
