"""The pageserver: a trio service around a `Repository` (issue 8 §3, DESIGN.md §7).

Theory of operation
===================

The pageserver turns committed WAL into page versions at every LSN and serves them.  This file
is its trio shell: it owns the repository (impl/timeline.py), its remote mirror
(impl/remote_timeline.py), a WAL receiver per timeline (impl/walreceiver.py) and a page
service.  Rules:

1. One owner.  Only one thread touches the repository at a time (timeline.py rule 1): every
   repository call, in the trio thread (`Timeline.ingest`) or in ``trio.to_thread`` (flush,
   compaction, GC, reads), runs under one `trio.Lock`, `_repo_lock`.  The remote sync's
   `prepare` runs under it too; its `upload` (object-storage IO on files it opened) does not,
   so an upload never stalls ingest or reads.  Syncs never overlap (`_sync_lock`).
2. Start-up: attach a new generation (remote_timeline rule 3); if the local directory holds
   no timeline, download the newest indexes first (rule 6 there), then `Repository.open`.  A
   timeline comes back at ``last_record_lsn = disk_consistent_lsn`` and the receiver
   re-streams the WAL after it.  With nothing local or remote, the timeline is created empty
   at the cluster's WAL start.  Every timeline gets a WAL receiver, at start and when a
   branch is created: a branch's WAL starts at its branch LSN on the acceptors (a compute on
   the branch writes it), and until one exists the branch's receiver streams from nobody.
3. Background tasks, each on its interval: freeze every timeline's open layer by age or size
   (`Timeline.freeze_if_due`, Neon's checkpoint_timeout/distance) and flush frozen layers;
   compaction; the remote sync (its result is the remote_consistent_lsn fed back to the
   acceptors, the only horizon that lets them delete WAL); GC.  An error of object storage
   is logged and retried at the next interval; `Superseded` (a newer pageserver attached)
   stops syncing for good, as a zombie must.
4. The page service speaks wire frames (impl/wire.py) on 127.0.0.1, one request at a time
   per connection, each answered in order (GetPage@LSN, DbSize@LSN, LsnAtTime for PITR by
   time, branch create and list, GC, status).  GetPage@LSN waits, bounded by
   `wait_lsn_timeout` (a cancel scope), until the timeline's ingest reaches the LSN.  Every
   refusal (unknown timeline, an LSN below the GC cutoff or never arriving, a page past the
   end, a bad branch) is a `PageserverError(code, text)` reply and the connection stays
   open: never a wrong page.  A malformed frame closes that connection only.
5. Shutdown (`Pageserver.shutdown`, the CLI's SIGTERM): checkpoint every timeline and sync
   once more, bounded, so a restart from object storage alone loses nothing
   ingested; a kill -9 loses only what the acceptors still hold and re-stream.

Error codes of `PageserverError`: ``unknown-timeline``, ``bad-timeline-name``,
``lsn-below-gc-cutoff``, ``lsn-timeout`` (waited `wait_lsn_timeout`), ``page-beyond-end``, ``timeline-exists``,
``branch-above-last-record``, ``branch-below-gc-cutoff``, ``refused`` (another
TimelineError), ``bad-request`` (a message the page service does not take), ``internal``.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

from impl.framing import READ_SIZE
from impl.pagewal import PageRecord
from impl.remote import RemoteError, RemoteStorage
from impl.remote_timeline import RemoteRepository, RemoteTimelineError, Superseded
from impl.timeline import (
    TIMELINES_DIR,
    BadTimelineName,
    BranchAboveLastRecord,
    BranchBelowGcCutoff,
    LsnBelowGcCutoff,
    LsnNotIngested,
    PageBeyondEnd,
    Repository,
    Timeline,
    TimelineConfig,
    TimelineError,
    TimelineExists,
    UnknownTimeline,
)
from impl.walreceiver import ReceiverConfig, WalReceiver
from impl.wire import (
    BranchCreate,
    BranchCreated,
    BranchList,
    BranchListData,
    DbSize,
    DbSizeData,
    FrameDecoder,
    Gc,
    GcDone,
    GetPage,
    LsnAtTime,
    LsnAtTimeData,
    Message,
    PageImageData,
    PageserverError,
    PageserverFeedback,
    PageserverStatus,
    PageserverStatusRequest,
    ProtocolError,
    encode,
    format_lsn,
)

__all__ = ["Pageserver", "PageserverConfig", "serve_pageserver"]

log = logging.getLogger("paxwal.pageserver")

_T = TypeVar("_T")

# Error types -> PageserverError codes (rule 4); the first match wins.
_CODES: tuple[tuple[type[Exception], str], ...] = (
    (UnknownTimeline, "unknown-timeline"),
    (BadTimelineName, "bad-timeline-name"),
    (LsnBelowGcCutoff, "lsn-below-gc-cutoff"),
    (LsnNotIngested, "lsn-timeout"),  # _wait_lsn comes first; this is its race with shutdown
    (PageBeyondEnd, "page-beyond-end"),
    (TimelineExists, "timeline-exists"),
    (BranchAboveLastRecord, "branch-above-last-record"),
    (BranchBelowGcCutoff, "branch-below-gc-cutoff"),
    (TimelineError, "refused"),
)


@attrs.frozen(kw_only=True)
class PageserverConfig:
    """The service's settings.

    Attributes:
        receiver: the WAL receivers' (its `timeline` is the one created when nothing local
            or remote exists; each timeline's receiver gets its own name there).
        timelines: the repository's (checkpoint distance/timeout, GC window, ...).
        wal_start: where the cluster's WAL starts (a new timeline starts there).
        freeze_interval, compaction_interval, sync_interval, gc_interval: seconds between
            runs of each background task (rule 3); gc_interval 0 disables periodic GC.
        wait_lsn_timeout: how long GetPage@LSN waits for ingest (rule 4).
        shutdown_timeout: how long the final checkpoint and sync may take (rule 5).
    """

    receiver: ReceiverConfig = ReceiverConfig()
    timelines: TimelineConfig = TimelineConfig()
    wal_start: int = 0
    freeze_interval: float = 1.0
    compaction_interval: float = 10.0
    sync_interval: float = 2.0
    gc_interval: float = 60.0
    wait_lsn_timeout: float = 10.0
    shutdown_timeout: float = 8.0


class _Refused(Exception):
    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


def _now_us() -> int:
    return time.time_ns() // 1000


def _one_line(text: str) -> str:
    text = "".join(c if " " <= c <= "~" else "?" for c in text.replace("\n", " "))
    return text if len(text) <= 1000 else text[:997] + "..."


class Pageserver:
    """A running pageserver (see the module docstring); built by `serve_pageserver`.

    Attributes (read-only):
        repo: the Repository (touch it only under `_repo_lock`: rule 1).
        remote: the RemoteRepository, or None without object storage.
        receivers: timeline -> its WalReceiver.
        port: the page service's TCP port.
        remote_consistent_lsns: timeline -> remote_consistent_lsn of its last sync.
    """

    def __init__(self, repo: Repository, remote: RemoteRepository | None, acceptors: dict[str, int],
                 config: PageserverConfig) -> None:
        self.repo = repo
        self.remote = remote
        self.config = config
        self.port = 0
        self.timeline_name = config.receiver.timeline
        self._repo_lock = trio.Lock()
        self._sync_lock = trio.Lock()
        self._acceptors = dict(acceptors)
        self._ingested: dict[str, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self.receivers: dict[str, WalReceiver] = {}
        self._superseded = False
        self.remote_consistent_lsns: dict[str, int] = {}
        if remote is not None:
            for name in repo.list():
                lsn = remote.remote_consistent_lsn(name)
                if lsn is not None:
                    self.remote_consistent_lsns[name] = lsn

    @property
    def superseded(self) -> bool:
        """Whether a newer pageserver attached to our objects, so we upload no more (rule 3)."""
        return self._superseded

    @property
    def main(self) -> Timeline:
        return self.repo.timeline(self.timeline_name)

    async def _start_receiver(self, name: str) -> None:
        """Run timeline `name`'s WAL receiver in the service's nursery (rule 2)."""
        timeline = self.repo.timeline(name)
        config = attrs.evolve(self.config.receiver, timeline=name)
        receiver = WalReceiver(self._acceptors, config, lambda: timeline.last_record_lsn,
                               functools.partial(self._ingest, timeline), functools.partial(self._feedback, timeline),
                               timeline.page_size)
        self.receivers[name] = receiver
        self._ingested[name] = trio.Event()
        assert self._nursery is not None
        await self._nursery.start(receiver.run)

    # -- the repository, one caller at a time (rule 1) ----------------------------------

    async def _locked(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking repository call in a thread, under the lock."""
        async with self._repo_lock:
            return await trio.to_thread.run_sync(fn, *args)

    async def _ingest(self, timeline: Timeline, records: list[tuple[int, PageRecord]]) -> None:
        async with self._repo_lock:
            for lsn, record in records:
                if lsn > timeline.last_record_lsn:  # a switch may re-deliver what a crash lost
                    timeline.ingest(lsn, record)
        self._ingested[timeline.name].set()
        self._ingested[timeline.name] = trio.Event()

    def _feedback(self, timeline: Timeline) -> PageserverFeedback:
        return PageserverFeedback(
            timeline=timeline.name, last_record_lsn=timeline.last_record_lsn,
            disk_consistent_lsn=timeline.disk_consistent_lsn,
            remote_consistent_lsn=self.remote_consistent_lsns.get(timeline.name, 0),
        )

    # -- background tasks (rule 3) -------------------------------------------------------

    async def _every(self, interval: float, job: Callable[[], Any], what: str) -> None:
        if interval <= 0:
            return
        while True:
            await trio.sleep(interval)
            try:
                await job()
            except (OSError, RemoteError, RemoteTimelineError) as exc:
                log.warning("pageserver: %s failed (retried in %.1f s): %s", what, interval, exc)

    async def freeze_and_flush(self, force: bool = False) -> None:
        """Freeze each timeline's open layer if due (any, if `force`), then flush every
        frozen layer to a delta layer file."""
        async with self._repo_lock:
            for name in self.repo.list():
                timeline = self.repo.timeline(name)
                if force:
                    timeline.freeze()
                else:
                    timeline.freeze_if_due(_now_us())
                if timeline.frozen_layers:
                    await trio.to_thread.run_sync(timeline.flush)

    async def compact(self) -> None:
        def run() -> None:
            for name in self.repo.list():
                self.repo.timeline(name).compact()
        await self._locked(run)

    async def gc(self) -> tuple[int, int]:
        """GC every timeline now; returns (layer files removed, kept)."""
        results = await self._locked(self.repo.gc, _now_us())
        return sum(len(r.removed) for r in results), sum(r.kept for r in results)

    async def sync(self) -> None:
        """Upload every timeline, ancestors first (rule 1: prepare locked, upload not)."""
        if self.remote is None or self._superseded:
            return
        async with self._sync_lock:
            async with self._repo_lock:
                order = sorted((self.repo.timeline(n) for n in self.repo.list()), key=_depth)
                snapshots = [(t.name, self.remote.timeline(t.name), self.remote.timeline(t.name).prepare(t)) for t in order]
            try:
                while snapshots:
                    name, uploader, snapshot = snapshots.pop(0)
                    lsn = await trio.to_thread.run_sync(uploader.upload, snapshot)
                    self.remote_consistent_lsns[name] = lsn
            except Superseded as exc:
                self._superseded = True
                log.error("pageserver: superseded, no more uploads: %s", exc)
            finally:
                for _, _, snapshot in snapshots:
                    snapshot.close()

    async def shutdown(self) -> None:
        """Checkpoint every timeline and sync, bounded (rule 5)."""
        with trio.move_on_after(self.config.shutdown_timeout):
            try:
                await self.freeze_and_flush(force=True)
                await self.sync()
            except (OSError, RemoteError, RemoteTimelineError) as exc:
                log.warning("pageserver: final sync failed: %s", exc)

    # -- the page service (rule 4) --------------------------------------------------------

    async def _wait_lsn(self, timeline: Timeline, lsn: int) -> None:
        if timeline.last_record_lsn >= lsn:
            return
        with trio.move_on_after(self.config.wait_lsn_timeout):
            while timeline.last_record_lsn < lsn:
                await self._ingested[timeline.name].wait()
        if timeline.last_record_lsn < lsn:
            raise _Refused("lsn-timeout", f"timeline {timeline.name!r}: {format_lsn(lsn)} not ingested within"
                                          f" {self.config.wait_lsn_timeout:g} s (last record at"
                                          f" {format_lsn(timeline.last_record_lsn)})")

    async def answer(self, msg: Message) -> Message:
        """The reply to one page-service request (a PageserverError if refused)."""
        try:
            return await self._answer(msg)
        except _Refused as exc:
            return PageserverError(code=exc.code, text=_one_line(str(exc)))
        except TimelineError as exc:
            code = next(code for cls, code in _CODES if isinstance(exc, cls))
            return PageserverError(code=code, text=_one_line(str(exc)))
        except Exception as exc:  # noqa: BLE001 - damage or a bug: the client learns, we log
            log.exception("pageserver: %s failed", type(msg).__name__)
            return PageserverError(code="internal", text=_one_line(f"{type(exc).__name__}: {exc}"))

    async def _answer(self, msg: Message) -> Message:
        match msg:
            case GetPage(timeline=name, page=page, lsn=lsn):
                timeline = self.repo.timeline(name)
                await self._wait_lsn(timeline, lsn)
                image = await self._locked(timeline.get_page, page, lsn)
                return PageImageData(page=page, lsn=lsn, image=image)
            case DbSize(timeline=name, lsn=lsn):
                timeline = self.repo.timeline(name)
                await self._wait_lsn(timeline, lsn)
                return DbSizeData(lsn=lsn, db_size=await self._locked(timeline.db_size, lsn))
            case LsnAtTime(timeline=name, time=at):
                # A time maps to an LSN once every record committed by then is ingested: wait
                # for the commit_lsn the acceptors reported, as GetPage waits for its LSN.
                timeline = self.repo.timeline(name)
                await self._wait_lsn(timeline, max(self.receivers[name].commit_lsns.values(), default=0))
                return LsnAtTimeData(lsn=await self._locked(timeline.lsn_at, at))
            case BranchCreate(name=name, ancestor=ancestor, lsn=lsn):
                await self._wait_lsn(self.repo.timeline(ancestor), lsn)
                await self._locked(self.repo.create_branch, name, ancestor, lsn)
                await self._start_receiver(name)
                log.info("pageserver: branch %s created from %s at %s", name, ancestor, format_lsn(lsn))
                return BranchCreated(name=name, ancestor=ancestor, lsn=lsn)
            case BranchList():
                return BranchListData(names=tuple(self.repo.list()))
            case Gc():
                removed, kept = await self.gc()
                return GcDone(removed=removed, kept=kept)
            case PageserverStatusRequest(timeline=name):
                t = self.repo.timeline(name)
                layers = await self._locked(lambda: len(t.layer_files()))
                streaming = self.receivers[name].streaming_from
                return PageserverStatus(
                    timeline=name, ancestor="" if t.ancestor is None else t.ancestor.name, ancestor_lsn=t.ancestor_lsn,
                    last_record_lsn=t.last_record_lsn, disk_consistent_lsn=t.disk_consistent_lsn,
                    remote_consistent_lsn=self.remote_consistent_lsns.get(name, 0), gc_cutoff=t.gc_cutoff,
                    layers=layers, streaming_from=streaming or "",
                )
        raise _Refused("bad-request", f"the page service does not take {type(msg).__name__}")

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        decoder = FrameDecoder()
        try:
            while data := await stream.receive_some(READ_SIZE):
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    await stream.send_all(encode(await self.answer(frame.message)))
        except ProtocolError as exc:
            log.info("pageserver: client closed: protocol error: %s", exc)
        except (OSError, trio.BrokenResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


def _depth(timeline: Timeline) -> int:
    depth = 0
    while timeline.ancestor is not None:
        timeline, depth = timeline.ancestor, depth + 1
    return depth


def open_repository(directory: Path, remote: RemoteRepository | None, config: PageserverConfig) -> Repository:
    """Start-up, blocking (rule 2): attach, download if the directory is empty, open."""
    directory.mkdir(parents=True, exist_ok=True)
    base = directory / TIMELINES_DIR
    empty = not base.is_dir() or not os.listdir(base)
    if remote is not None:
        generation = remote.attach()
        log.info("pageserver: attached %s with generation %d", remote.prefix, generation)
        if empty and remote.list_timelines():
            indexes = remote.download(directory)
            log.info("pageserver: restored %s from object storage (%s)", ", ".join(sorted(indexes)),
                     ", ".join(f"{n} at {format_lsn(i.disk_consistent_lsn)}" for n, i in sorted(indexes.items())))
    repo = Repository.open(directory, config.timelines)
    if config.receiver.timeline not in repo.list():
        repo.create_timeline(config.receiver.timeline, config.wal_start)
    return repo


async def serve_pageserver(
    directory: str | os.PathLike[str],
    acceptors: dict[str, int],
    *,
    port: int = 0,
    host: str = "127.0.0.1",
    remote: RemoteStorage | None = None,
    remote_prefix: str = "pageserver",
    config: PageserverConfig = PageserverConfig(),
    task_status: trio.TaskStatus[Pageserver] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a pageserver on `directory` until cancelled.

    Args:
        directory: its local data (created if absent).
        acceptors: acceptor id -> TCP port on 127.0.0.1.
        port, host: where the page service listens (port 0: any free one, see `Pageserver.port`).
        remote: object storage (the source of truth), or None for none (no restore, no upload,
            remote_consistent_lsn stays 0 so the acceptors keep all WAL).
        remote_prefix: the repository's key prefix in it.
        config: settings.
        task_status: `started(pageserver)` once it listens.

    Error handling:
        Raises before listening: CorruptStorage (damaged local data, named), CorruptRemote,
        RemoteError (object storage unreachable at start-up), OSError (the port is busy).
        Later errors of object storage are logged and retried (rule 3).
    """
    remote_repo = None if remote is None else RemoteRepository(remote, remote_prefix)
    repo = await trio.to_thread.run_sync(open_repository, Path(directory), remote_repo, config)
    try:
        server = Pageserver(repo, remote_repo, acceptors, config)
    except BaseException:
        repo.close()
        raise
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
        server.port = listeners[0].socket.getsockname()[1]
        main = server.main
        log.info("pageserver listening on %s:%d; %s from %s (disk_consistent %s)", host, server.port, main.name,
                 format_lsn(main.last_record_lsn), format_lsn(main.disk_consistent_lsn))
        async with trio.open_nursery() as nursery:
            server._nursery = nursery
            for name in repo.list():
                await server._start_receiver(name)
            await nursery.start(trio.serve_listeners, server._serve_client, listeners)
            nursery.start_soon(server._every, config.freeze_interval, server.freeze_and_flush, "flush")
            nursery.start_soon(server._every, config.compaction_interval, server.compact, "compaction")
            nursery.start_soon(server._every, config.sync_interval, server.sync, "remote sync")
            nursery.start_soon(server._every, config.gc_interval, server.gc, "gc")
            task_status.started(server)
    finally:
        with trio.CancelScope(shield=True):
            async with server._repo_lock:  # a thread still running finishes first (rule 1)
                repo.close()
