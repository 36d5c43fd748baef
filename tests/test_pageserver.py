"""Tests of the pageserver (impl/pageserver.py, impl/walreceiver.py) and the acceptor's side of
WAL streaming (impl/acceptor_server.py rule 9).

Two set-ups, both on 127.0.0.1 only and bounded in time:

* a real cluster (`paxwal cluster up`: acceptor processes and a pageserver process), written to
  by an in-process proposer; GetPage@LSN at three LSNs, a branch at the middle one, and a
  restart of the pageserver from object storage alone after its directory is deleted;
* everything in one trio run (acceptors, proposer, pageserver), for the error replies, a
  malformed frame, GC, and an acceptor killed and restarted under streaming.

Both replay the acceptors' and proposer's traces with the conformance checker afterwards: the
pageserver's handling emits no trace event, so the traces stay a behaviour of the spec.
"""

from __future__ import annotations

import functools
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest
import trio

from conformance.corpus import find_runs
from impl.acceptor_server import STREAM_CHUNK, STREAM_FRAMES
from impl.cluster import PAGESERVER, Cluster
from impl.offload import OffloadConfig
from impl.pagewal import PAGE_SIZE, RecordBuilder, encode_record
from impl.pageclient import PageClient
from impl.pageserver import serve_pageserver
from impl.proposer_client import Proposer, ProposerConfig, serve_proposer
from impl.remote import RemoteStorage
from impl.remote_timeline import RemoteRepository
from impl.timeline import TimelineConfig
from impl.walreceiver import choose_acceptor
from impl.wire import (
    BranchCreate,
    BranchCreated,
    BranchList,
    BranchListData,
    DbSize,
    DbSizeData,
    Gc,
    GcDone,
    GetPage,
    PageImageData,
    PageserverError,
    PageserverStatus,
    PageserverStatusRequest,
    FrameDecoder,
    Greeting,
    PageserverFeedback,
    StatusRequest,
    StatusResponse,
    StreamWal,
    WalChunk,
    encode,
)

from local_cluster import ACCEPTORS, DEADLINE, FAST, Local, assert_traces_accepted, run_local, wait_for

REPO = Path(__file__).resolve().parent.parent
COMMAND_TIMEOUT = 120


def paxwal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "impl.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT)


def page(tag: int, version: int) -> bytes:
    """A page whose bytes say which page and version it is."""
    head = f"page {tag} version {version} ".encode()
    return (head * (PAGE_SIZE // len(head) + 1))[:PAGE_SIZE]


class Writer:
    """Writes page records through a proposer (the compute's part, without SQLite)."""

    def __init__(self, proposer: Proposer) -> None:
        self.proposer = proposer
        self.builder = RecordBuilder(0)

    async def commit(self, dirty: dict[int, bytes], db_size: int) -> int:
        record = self.builder.build(dirty, db_size, time.time_ns() // 1000)
        assert record is not None
        try:
            lsn = await self.proposer.append(encode_record(record))
        except BaseException:
            self.builder.abort()
            raise
        self.builder.commit()
        return lsn


async def write_three(writer: Writer) -> tuple[list[int], list[dict[int, bytes]]]:
    """Three transactions; returns their LSNs and the database (page -> bytes) after each."""
    states: list[dict[int, bytes]] = []
    lsns = [await writer.commit({0: page(0, 1), 1: page(1, 1)}, 2)]
    states.append({0: page(0, 1), 1: page(1, 1)})
    changed = bytearray(page(0, 1))
    changed[100:110] = b"0123456789"  # a delta
    lsns.append(await writer.commit({0: bytes(changed)}, 2))
    states.append({0: bytes(changed), 1: page(1, 1)})
    lsns.append(await writer.commit({1: page(1, 3), 2: page(2, 3)}, 3))
    states.append({0: bytes(changed), 1: page(1, 3), 2: page(2, 3)})
    return lsns, states


async def assert_pages(client: PageClient, timeline: str, lsn: int, state: dict[int, bytes]) -> None:
    for number, expected in state.items():
        reply = await client.request(GetPage(timeline=timeline, page=number, lsn=lsn))
        assert isinstance(reply, PageImageData), reply
        assert reply.image == expected, (timeline, number, lsn)
    size = await client.request(DbSize(timeline=timeline, lsn=lsn))
    assert size == DbSizeData(lsn=lsn, db_size=len(state))


# ---------------------------------------------------------------------------------------------
# A real cluster, with the pageserver as a process
# ---------------------------------------------------------------------------------------------


async def write_three_on(cluster: Cluster, nursery: trio.Nursery) -> tuple[list[int], list[dict[int, bytes]]]:
    """`write_three` through proposer c1 of the running `cluster`'s main (run in `nursery`)."""
    config = cluster.load()
    cluster.add_proposer("c1")
    addresses = {a: ("127.0.0.1", p) for a, p in config.acceptors.items()}
    proposer = await nursery.start(serve_proposer, "c1", addresses, ProposerConfig(), config.wal_start,
                                   cluster.timeline_run_dir("main") / "c1.ndjson")
    await proposer.wait_leader()
    return await write_three(Writer(proposer))


@pytest.fixture
def cluster_dir(tmp_path: Path):
    directory = tmp_path / "cluster"
    yield directory
    cluster = Cluster(directory)
    for pid_file in (directory / "pids").glob("*.pid"):
        cluster.stop(pid_file.stem)
    for run in find_runs([cluster.run_dir]) if list(cluster.run_dir.rglob("*.ndjson")) else []:
        assert_traces_accepted(run)  # each timeline's run on its own


def test_getpage_branch_and_restore_from_object_storage(cluster_dir: Path) -> None:
    up = paxwal("cluster", "up", "--dir", str(cluster_dir))
    assert up.returncode == 0, up.stderr
    assert "pageserver  port" in up.stdout
    cluster = Cluster(cluster_dir)
    config = cluster.load()
    assert config.pageserver_port is not None

    async def write_and_read() -> tuple[list[int], list[dict[int, bytes]]]:
        with trio.fail_after(DEADLINE):
            addresses = {a: ("127.0.0.1", p) for a, p in config.acceptors.items()}
            async with trio.open_nursery() as nursery:
                lsns, states = await write_three_on(cluster, nursery)
                async with await PageClient.connect(config.pageserver_port) as client:
                    for lsn, state in zip(lsns, states):
                        await assert_pages(client, "main", lsn, state)
                    created = await client.request(BranchCreate(name="mid", ancestor="main", lsn=lsns[1]))
                    assert created == BranchCreated(name="mid", ancestor="main", lsn=lsns[1])
                    await assert_pages(client, "mid", lsns[1], states[1])
                    # The branch has a WAL of its own, from its branch LSN, on the same
                    # acceptors; its pageserver receiver ingests it beside main's.
                    cluster.add_proposer("b1", timeline="mid", wal_start=lsns[1])
                    branch = await nursery.start(functools.partial(
                        serve_proposer, "b1", addresses, ProposerConfig(), lsns[1],
                        cluster.timeline_run_dir("mid") / "b1.ndjson", timeline="mid"))
                    await branch.wait_leader()
                    mid_lsn = await Writer(branch).commit({0: page(0, 9), 3: page(3, 9)}, 4)
                    mid_state = {**states[1], 0: page(0, 9), 2: bytes(PAGE_SIZE), 3: page(3, 9)}  # 2: a hole
                    await assert_pages(client, "mid", mid_lsn, mid_state)
                    await assert_pages(client, "mid", lsns[1], states[1])
                    await assert_pages(client, "main", lsns[2], states[2])  # main did not see it
                    unknown = await client.request(GetPage(timeline="nope", page=0, lsn=lsns[0]))
                    assert isinstance(unknown, PageserverError) and unknown.code == "unknown-timeline"
                    await assert_pages(client, "main", lsns[2], states[2])  # the connection survived
                nursery.cancel_scope.cancel()
        return lsns, states, mid_lsn, mid_state

    lsns, states, mid_lsn, mid_state = trio.run(write_and_read)

    status = paxwal("pageserver", "status", "--dir", str(cluster_dir))
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("main: last_record ") and "streaming from a" in status.stdout
    listing = paxwal("branch", "list", "--dir", str(cluster_dir))
    assert listing.returncode == 0 and "mid: " in listing.stdout and "branch of main@" in listing.stdout, listing
    again = paxwal("branch", "create", "mid", "--from", "main", "--dir", str(cluster_dir))
    assert again.returncode == 2 and "timeline-exists" in again.stderr, again.stderr
    cstatus = paxwal("cluster", "status", "--dir", str(cluster_dir))
    assert cstatus.returncode == 0 and "pageserver: main last_record" in cstatus.stdout, cstatus.stdout

    down = paxwal("cluster", "down", "--dir", str(cluster_dir))
    assert down.returncode == 0 and "pageserver  stopped" in down.stdout, down.stdout
    shutil.rmtree(cluster_dir / "pageserver")
    up = paxwal("cluster", "up", "--dir", str(cluster_dir))
    assert up.returncode == 0, up.stderr

    async def read_again() -> PageserverStatus:
        with trio.fail_after(DEADLINE):
            async with await PageClient.connect(config.pageserver_port) as client:
                status = await client.request(PageserverStatusRequest(timeline="main"))
                names = await client.request(BranchList())
                for lsn, state in zip(lsns, states):
                    await assert_pages(client, "main", lsn, state)
                await assert_pages(client, "mid", lsns[1], states[1])
                await assert_pages(client, "mid", mid_lsn, mid_state)
        assert names == BranchListData(names=("main", "mid"))
        assert isinstance(status, PageserverStatus)
        return status

    restored = trio.run(read_again)
    gc = paxwal("pageserver", "gc", "--dir", str(cluster_dir))
    assert gc.returncode == 0 and gc.stdout.startswith("gc: removed "), gc
    # Restored from object storage alone: the final upload at `down` covered every record.
    assert restored.disk_consistent_lsn >= lsns[2] and restored.remote_consistent_lsn >= lsns[2], restored
    assert "restored main, mid from object storage" in cluster.log_file("pageserver").read_text()
    down = paxwal("cluster", "down", "--dir", str(cluster_dir))
    assert down.returncode == 0


def test_a_pageserver_killed_with_its_directory_lost_serves_the_same_pages_again(cluster_dir: Path) -> None:
    up = paxwal("cluster", "up", "--dir", str(cluster_dir))
    assert up.returncode == 0, up.stderr
    cluster = Cluster(cluster_dir)
    config = cluster.load()
    assert config.pageserver_port is not None

    async def write() -> tuple[list[int], list[dict[int, bytes]]]:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                lsns, states = await write_three_on(cluster, nursery)
                async with await PageClient.connect(config.pageserver_port) as client:
                    await assert_pages(client, "main", lsns[2], states[2])
                nursery.cancel_scope.cancel()
        return lsns, states

    lsns, states = trio.run(write)
    pid = cluster.pid(PAGESERVER)
    assert pid is not None
    cluster.signal(PAGESERVER, signal.SIGKILL)  # no final checkpoint, no upload
    deadline = time.monotonic() + 30
    while cluster.pid(PAGESERVER) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    shutil.rmtree(cluster_dir / "pageserver")
    again = paxwal("cluster", "up", "--dir", str(cluster_dir))
    assert again.returncode == 0 and again.stdout.count("already running") == 3, again.stdout

    async def read() -> None:
        with trio.fail_after(DEADLINE):
            async with await PageClient.connect(config.pageserver_port) as client:
                for lsn, state in zip(lsns, states):
                    await assert_pages(client, "main", lsn, state)

    trio.run(read)  # what object storage lacked, the acceptors streamed again
    assert paxwal("cluster", "down", "--dir", str(cluster_dir)).returncode == 0


# ---------------------------------------------------------------------------------------------
# Everything in one trio run
# ---------------------------------------------------------------------------------------------

def test_errors_are_clean_replies_and_a_bad_frame_closes_only_its_connection(tmp_path: Path) -> None:
    async def body(local: Local) -> None:
        proposer = await local.start_proposer()
        pageserver = await local.start_pageserver(FAST)
        await proposer.wait_leader()
        lsns, states = await write_three(Writer(proposer))
        async with await PageClient.connect(pageserver.port) as client:
            await assert_pages(client, "main", lsns[2], states[2])
            start = trio.current_time()
            never = await client.request(GetPage(timeline="main", page=0, lsn=lsns[2] + 10**9))
            assert isinstance(never, PageserverError) and never.code == "lsn-timeout", never
            assert 0.9 <= trio.current_time() - start < 5
            assert (await client.request(GetPage(timeline="x", page=0, lsn=0))).code == "unknown-timeline"
            beyond = await client.request(GetPage(timeline="main", page=7, lsn=lsns[2]))
            assert isinstance(beyond, PageserverError) and beyond.code == "page-beyond-end"
            refused = await client.request(StatusRequest(timeline="main"))
            assert isinstance(refused, PageserverError) and refused.code == "bad-request"

            # A malformed frame closes its own connection, and only it.
            bad = await trio.open_tcp_stream("127.0.0.1", pageserver.port)
            await bad.send_all(b"\x00\x00\x00\x05\x04garbage")
            with trio.fail_after(5):
                assert await bad.receive_some(100) == b""
            await bad.aclose()
            await assert_pages(client, "main", lsns[1], states[1])

            # GC with no window: the cutoff moves to the last record; older reads are refused.
            await pageserver.freeze_and_flush(force=True)
            done = await client.request(Gc())
            assert isinstance(done, GcDone)
            status = await client.request(PageserverStatusRequest(timeline="main"))
            assert isinstance(status, PageserverStatus) and status.gc_cutoff == lsns[2], status
            old = await client.request(GetPage(timeline="main", page=0, lsn=lsns[0]))
            assert isinstance(old, PageserverError) and old.code == "lsn-below-gc-cutoff", old
            below = await client.request(BranchCreate(name="old", ancestor="main", lsn=lsns[0]))
            assert isinstance(below, PageserverError) and below.code == "branch-below-gc-cutoff"
            await assert_pages(client, "main", lsns[2], states[2])

        # The uploaded horizon reaches every acceptor, not only the one streamed from.
        with trio.fail_after(10):
            while any(server.timelines["main"].remote_consistent_lsn < lsns[2] for server in local.acceptors.values()):
                await trio.sleep(0.05)
        assert len({server.timelines["main"].remote_consistent_lsn for server in local.acceptors.values()}) == 1

    local = run_local(tmp_path, body)
    local.check_traces()


def test_restart_from_object_storage_alone_serves_the_same_pages(tmp_path: Path, store: RemoteStorage) -> None:
    async def body(local: Local) -> None:
        proposer = await local.start_proposer()
        pageserver = await local.start_pageserver(FAST)
        await proposer.wait_leader()
        lsns, states = await write_three(Writer(proposer))
        async with await PageClient.connect(pageserver.port) as client:
            await assert_pages(client, "main", lsns[2], states[2])
            assert await client.request(BranchCreate(name="mid", ancestor="main", lsn=lsns[1])) == BranchCreated(
                name="mid", ancestor="main", lsn=lsns[1])
        await pageserver.shutdown()  # the final checkpoint and upload (SIGTERM's)
        await local.stop("pageserver")
        shutil.rmtree(local.tmp / "pageserver")
        restored = await local.start_pageserver(FAST)
        assert restored.repo.list() == ["main", "mid"]
        assert restored.main.disk_consistent_lsn >= lsns[2]
        async with await PageClient.connect(restored.port) as client:
            for lsn, state in zip(lsns, states):
                await assert_pages(client, "main", lsn, state)
            await assert_pages(client, "mid", lsns[1], states[1])

    local = run_local(tmp_path, body, store=store)
    local.check_traces()


def test_a_superseded_pageserver_stops_uploading_and_the_newer_one_serves(tmp_path: Path) -> None:
    async def body(local: Local) -> None:
        proposer = await local.start_proposer()
        old = await local.start_pageserver(FAST)
        await proposer.wait_leader()
        writer = Writer(proposer)
        lsns, states = await write_three(writer)
        await wait_for(lambda: old.main.last_record_lsn >= lsns[2])
        await old.freeze_and_flush(force=True)
        await wait_for(lambda: old.remote_consistent_lsns.get("main", 0) >= lsns[2])
        # A second pageserver attaches to the same objects (a move, or a zombie left behind).
        new = await local.start_pageserver(FAST, name="new")
        assert new.remote is not None and old.remote is not None and new.remote.generation > old.remote.generation
        last = await writer.commit({1: page(1, 4)}, 3)
        await wait_for(lambda: old.superseded)
        await wait_for(lambda: new.main.last_record_lsn >= last)
        await new.freeze_and_flush(force=True)
        await wait_for(lambda: new.remote_consistent_lsns.get("main", 0) >= last)
        assert old.remote_consistent_lsns["main"] < last  # nothing of the zombie's after the attach
        index = RemoteRepository(local.store).newest_index("main")
        assert index is not None and index.generation == new.remote.generation
        async with await PageClient.connect(new.port) as client:
            await assert_pages(client, "main", last, {**states[2], 1: page(1, 4)})
            await assert_pages(client, "main", lsns[0], states[0])

    local = run_local(tmp_path, body)
    local.check_traces()


def test_background_tasks_freeze_compact_and_gc_on_their_own(tmp_path: Path) -> None:
    config = attrs.evolve(FAST, timelines=TimelineConfig(checkpoint_distance=1, image_threshold=2, pitr_bytes=0,
                                                         pitr_seconds=0),
                          compaction_interval=0.3, gc_interval=0.3)

    async def body(local: Local) -> None:
        proposer = await local.start_proposer()
        pageserver = await local.start_pageserver(config)
        await proposer.wait_leader()
        writer = Writer(proposer)
        lsns = []
        for version in range(1, 7):
            lsns.append(await writer.commit({0: page(0, version)}, 1))
            await wait_for(lambda: pageserver.main.disk_consistent_lsn >= lsns[-1])  # frozen and flushed
        # Compaction writes an image; GC then removes what it covers, and the cutoff moves up.
        await wait_for(lambda: pageserver.main.gc_cutoff == lsns[-1] and len(pageserver.main.layer_files()) <= 2)
        async with await PageClient.connect(pageserver.port) as client:
            await assert_pages(client, "main", lsns[-1], {0: page(0, 6)})
            old = await client.request(GetPage(timeline="main", page=0, lsn=lsns[0]))
            assert isinstance(old, PageserverError) and old.code == "lsn-below-gc-cutoff"

    local = run_local(tmp_path, body)
    local.check_traces()


def test_acceptor_killed_under_streaming_is_switched_away_from(tmp_path: Path) -> None:
    async def body(local: Local) -> None:
        proposer = await local.start_proposer()
        pageserver = await local.start_pageserver(FAST)
        await proposer.wait_leader()
        writer = Writer(proposer)
        lsns, states = await write_three(writer)
        async with await PageClient.connect(pageserver.port) as client:
            await assert_pages(client, "main", lsns[2], states[2])
            first = pageserver.receivers["main"].streaming_from
            assert first in ACCEPTORS
            await local.stop(first)
            lsn = await writer.commit({0: page(0, 4)}, 3)
            reply = await client.request(GetPage(timeline="main", page=0, lsn=lsn))
            assert isinstance(reply, PageImageData) and reply.image == page(0, 4)
            assert pageserver.receivers["main"].streaming_from not in (None, first)
            assert pageserver.receivers["main"].switches[-1][0] == first
            await local.start_acceptor(first)  # back on its port and directory
            lsn = await writer.commit({1: page(1, 5)}, 3)
            reply = await client.request(GetPage(timeline="main", page=1, lsn=lsn))
            assert isinstance(reply, PageImageData) and reply.image == page(1, 5)
            # The acceptors take the pageserver's remote_consistent_lsn (after a flush and an
            # upload) as their WAL removal horizon.
            await pageserver.freeze_and_flush(force=True)
            with trio.fail_after(10):
                while not any(a.timelines["main"].remote_consistent_lsn >= lsn for a in local.acceptors.values()):
                    await trio.sleep(0.1)

    local = run_local(tmp_path, body)
    local.check_traces()


async def serve_silent_acceptor(commit_lsn: int, task_status: trio.TaskStatus[int]) -> None:
    """A fake acceptor that claims `commit_lsn` in its status but never streams a byte."""

    async def handle(stream: trio.SocketStream) -> None:
        raw = RawStream(stream)
        while (msg := await raw.receive()) is not None:
            if isinstance(msg, StatusRequest):
                await raw.send(StatusResponse(acceptor="f1", timeline="main", term=1, flush_lsn=commit_lsn, commit_lsn=commit_lsn,
                                              wal_start=0, leader="", leader_term=0, proposers=()))

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(listeners[0].socket.getsockname()[1])


def test_a_silent_acceptor_is_left_and_one_far_ahead_is_tried_again(tmp_path: Path) -> None:
    async def body(local: Local) -> None:
        fake = await local._start("f1", serve_silent_acceptor, 2**40)
        proposer = await local.start_proposer()
        config = attrs.evolve(FAST, receiver=attrs.evolve(FAST.receiver, silence_timeout=0.5, retry_first=0.4,
                                                          retry_max=0.4))
        pageserver = await local._start("pageserver", serve_pageserver, local.tmp / "pageserver",
                                        {**local.ports, "f1": fake}, remote=local.store, config=config)
        await proposer.wait_leader()
        lsns, states = await write_three(Writer(proposer))
        async with await PageClient.connect(pageserver.port) as client:
            await assert_pages(client, "main", lsns[2], states[2])
            with trio.fail_after(10):
                while True:
                    reasons = [(old, why.split(":")[0]) for old, _, why in pageserver.receivers["main"].switches]
                    if ("f1", "silent for 0.5 s") in reasons and any(
                            why == "lagging" and new == "f1" for (_, why), (_, new, _) in
                            zip(reasons[1:], pageserver.receivers["main"].switches[1:])):
                        break
                    await trio.sleep(0.1)
            lsn = await Writer(proposer).commit({0: page(0, 9)}, 3)
            reply = await client.request(GetPage(timeline="main", page=0, lsn=lsn))
            assert isinstance(reply, PageImageData) and reply.image == page(0, 9)

    local = run_local(tmp_path, body)
    local.check_traces()


class RawStream:
    """A hand-driven acceptor connection, for the acceptor's side of streaming (rule 9)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()

    async def send(self, msg: object) -> None:
        await self.stream.send_all(encode(msg))  # type: ignore[arg-type]

    async def receive(self) -> object:
        """The next message, or None once the acceptor closed the connection."""
        while (frame := self.decoder.next_frame()) is None:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.decoder.feed(data)
        return frame.message


def test_acceptor_streams_committed_wal_with_keepalives_and_refuses_mixed_connections(tmp_path: Path) -> None:
    async def body(local: Local) -> None:
        proposer = await local.start_proposer()
        await proposer.wait_leader()
        records = [bytes([i]) * 70_000 for i in range(1, 5)]  # more than one STREAM_CHUNK in all
        ends = [await proposer.append(r) for r in records]
        wal = b"".join(records)
        port = local.ports["a1"]
        while local.acceptors["a1"].timelines["main"].core.commit_lsn < ends[-1]:  # commit_lsn reaches it with a heartbeat
            await trio.sleep(0.05)

        raw = RawStream(await trio.open_tcp_stream("127.0.0.1", port))
        await raw.send(StreamWal(pageserver="ps", timeline="main", start_lsn=ends[0]))
        got = b""
        while len(got) < ends[-1] - ends[0]:
            chunk = await raw.receive()
            assert isinstance(chunk, WalChunk) and chunk.begin_lsn == ends[0] + len(got), chunk
            assert len(chunk.wal) <= STREAM_CHUNK and chunk.commit_lsn >= chunk.end_lsn
            got += chunk.wal
        assert got == wal[ends[0]:]
        keepalive = await raw.receive()  # nothing new: commit_lsn alone, within STREAM_KEEPALIVE
        assert isinstance(keepalive, WalChunk) and keepalive.wal == b"" and keepalive.commit_lsn == ends[-1]
        await raw.send(PageserverFeedback(timeline="main", last_record_lsn=ends[-1], disk_consistent_lsn=ends[-1],
                                          remote_consistent_lsn=ends[1]))
        with trio.fail_after(5):
            while local.acceptors["a1"].timelines["main"].remote_consistent_lsn != ends[1]:
                await trio.sleep(0.02)
        await raw.send(Greeting(proposer="c9"))  # a proposer message on the pageserver's connection
        while (msg := await raw.receive()) is not None:
            assert isinstance(msg, WalChunk)
        await raw.stream.aclose()

        # Feedback on an anonymous connection (the pageserver's status polls) sets the horizon
        # of a timeline held, ignores one not held, and binds nothing.
        polled = RawStream(await trio.open_tcp_stream("127.0.0.1", local.ports["a2"]))
        for timeline in ("main", "other"):
            await polled.send(PageserverFeedback(timeline=timeline, last_record_lsn=ends[2],
                                                 disk_consistent_lsn=ends[2], remote_consistent_lsn=ends[2]))
        await polled.send(StatusRequest(timeline="main"))
        status = await polled.receive()
        assert isinstance(status, StatusResponse) and status.commit_lsn >= ends[-1]
        assert local.acceptors["a2"].timelines["main"].remote_consistent_lsn == ends[2]
        assert "other" not in local.acceptors["a2"].timelines
        await polled.stream.aclose()

    local = run_local(tmp_path, body)
    local.check_traces()


def test_a_pageserver_that_stops_reading_costs_a_bounded_buffer(tmp_path: Path) -> None:
    async def body(local: Local) -> None:
        proposer = await local.start_proposer()
        await proposer.wait_leader()
        slow = RawStream(await trio.open_tcp_stream("127.0.0.1", local.ports["a1"]))
        await slow.send(StreamWal(pageserver="ps", timeline="main", start_lsn=0))
        records = [bytes([i % 250 + 1]) * 100_000 for i in range(60)]  # 6 MB, more than TCP buffers hold
        ends = [await proposer.append(r) for r in records]
        a1 = local.acceptors["a1"].timelines["main"]
        await trio.sleep(1)  # the streamer runs into the full socket and outbox
        (name, streamed, frames), = a1.wal_streams
        assert name == "ps" and streamed < ends[-1] and frames <= STREAM_FRAMES, a1.wal_streams
        got = b""
        with trio.fail_after(20):
            while len(got) < ends[-1]:
                chunk = await slow.receive()
                assert isinstance(chunk, WalChunk), chunk
                got += chunk.wal
        assert got == b"".join(records)  # nothing lost, nothing closed
        await slow.stream.aclose()

    local = run_local(tmp_path, body)
    local.check_traces()


def test_wal_removed_locally_is_streamed_from_object_storage(tmp_path: Path) -> None:
    async def body(local: Local) -> None:
        proposer = await local.start_proposer()
        await proposer.wait_leader()
        records = [bytes([i]) * 3000 for i in range(1, 11)]  # 30 kB: seven 4 KiB segments
        ends = [await proposer.append(r) for r in records]
        a1 = local.acceptors["a1"].timelines["main"]
        with trio.fail_after(20):
            for server in local.acceptors.values():  # the pageserver's horizon allows removal
                await server.timelines["main"].set_remote_consistent_lsn(ends[-1])
            while a1.local_start_lsn < 3 * 4096:
                await trio.sleep(0.05)
        raw = RawStream(await trio.open_tcp_stream("127.0.0.1", local.ports["a1"]))
        await raw.send(StreamWal(pageserver="ps", timeline="main", start_lsn=0))
        got = b""
        with trio.fail_after(10):
            while len(got) < ends[-1]:
                chunk = await raw.receive()
                assert isinstance(chunk, WalChunk), chunk
                got += chunk.wal
        assert got == b"".join(records)
        assert a1.fallback_reads >= 1
        await raw.stream.aclose()

    offload = OffloadConfig(heartbeat=0.05, lease=0.5, poll=0.05)
    local = run_local(tmp_path, body, segment_size=4096, offload=offload)
    local.check_traces()


def test_choose_acceptor_follows_neons_rules() -> None:
    commits = {"a1": 100, "a2": 300, "a3": 300}
    assert choose_acceptor(commits, None, 0, set(), 1000) == ("a2", "no connection")
    assert choose_acceptor(commits, None, 0, {"a2"}, 1000) == ("a3", "no connection")
    assert choose_acceptor(commits, "a1", 100, set(), 1000) == ("a1", None)  # behind, but not by max_lag
    assert choose_acceptor(commits, "a1", 100, set(), 200) == ("a2", "lagging")
    assert choose_acceptor({}, None, 0, set(), 1) == (None, None)
    assert choose_acceptor({"a1": 5}, None, 0, {"a1"}, 1) == (None, None)


def test_cli_refuses_a_busy_port_and_missing_arguments_with_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = paxwal("pageserver", "--dir", str(tmp_path / "ps"), "--port", str(port), "--acceptors", "a1=1")
    assert result.returncode == 2, result
    assert result.stderr.splitlines()[-1].startswith("paxwal: error: pageserver cannot start on 127.0.0.1:")
    missing = paxwal("pageserver", "--dir", str(tmp_path / "ps"))
    assert missing.returncode == 2 and "--port and --acceptors required" in missing.stderr
    bad = paxwal("pageserver", "--dir", str(tmp_path / "ps"), "--port", "1", "--acceptors", "a1")
    assert bad.returncode == 2 and "expected a1=PORT" in bad.stderr
