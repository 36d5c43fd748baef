"""impl/offload.py, the WAL removal it drives (impl/wal.py's remove_below and read_segment),
and its integration in impl/acceptor_server.py.

Pure pieces first (the offloader's choice, liveness, the object and file formats), then
FileWal's removal, then offload against both object stores (``LocalFs`` in tmp_path and
``S3`` against the session's ``weed mini``, tests/s3server.py, each test under its own key
prefix), driven round by round with a hand-moved clock.  Last, acceptor servers: restart
after removal, refusal without the WAL, and a three-acceptor cluster whose new proposer
recovers WAL its donor removed, with the traces replayed.

FileWal's two new methods are tested here rather than in tests/test_wal.py, which another
change is editing at the same time; they can move there.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from impl.acceptor import open_acceptor
from impl.acceptor_server import AcceptorServer, AcceptorTimeline, serve_acceptor
from impl.control import ControlState
from impl.offload import (
    HORIZONS_NAME,
    HORIZONS_TMP_NAME,
    HorizonState,
    Liveness,
    LocalHorizons,
    OffloadConfig,
    OffloadError,
    Offloader,
    PeerStatus,
    Positions,
    RemoteWal,
    check_wal_available,
    choose_offloader,
    decode_segment,
    encode_segment,
)
from impl.remote import LocalFs, NotFound, RemoteError, RemoteStorage
from impl.storage import CorruptStorage
from impl.wal import MIN_SEGMENT_SIZE, FileWal, segment_name
from test_proposer_client import ACCEPTORS, Cluster, record, wait_until

SEG = MIN_SEGMENT_SIZE
# Bounds every trio test; the cluster test makes a few hundred fsyncs on each acceptor.
DEADLINE = 60






def wal_bytes(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def make_wal(directory: Path, data: bytes, segment_size: int = SEG, start: int = 0) -> FileWal:
    """A flushed WAL at `start` holding `data`."""
    directory.mkdir(parents=True, exist_ok=True)
    wal = FileWal(directory, segment_size=segment_size, start_lsn=start)
    wal.write(start, data)
    wal.flush()
    return wal


def status(node: str, commit: int, local_start: int = 0, counter: int = 1) -> PeerStatus:
    return PeerStatus(node, 7, counter, commit, commit, local_start)


def run(body: Callable[[], Awaitable[None]], deadline: float = DEADLINE) -> None:
    async def main() -> None:
        with trio.fail_after(deadline):
            await body()

    trio.run(main)


# ---------------------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------------------


def test_the_offloader_is_the_lowest_live_id_that_can_upload_the_next_segment() -> None:
    views = {"a1": status("a1", 2 * SEG), "a2": status("a2", 2 * SEG), "a3": status("a3", 3 * SEG)}
    everyone = {"a1", "a2", "a3"}
    assert choose_offloader(views, everyone, SEG, SEG) == "a1"
    assert choose_offloader(views, {"a2", "a3"}, SEG, SEG) == "a2"  # a1 is dead
    assert choose_offloader(views, everyone, 2 * SEG, SEG) == "a3"  # only a3 committed [2, 3)
    assert choose_offloader(views, everyone, 3 * SEG, SEG) is None  # nobody has [3, 4) committed
    # a1 removed the segment already (it cannot upload what it no longer holds).
    views["a1"] = status("a1", 2 * SEG, local_start=2 * SEG)
    assert choose_offloader(views, everyone, SEG, SEG) == "a2"
    # Every observer with the same objects and the same liveness agrees, whatever the order.
    shuffled = dict(reversed(list(views.items())))
    assert choose_offloader(shuffled, everyone, SEG, SEG) == "a2"


def test_liveness_follows_changes_on_the_observers_clock() -> None:
    live = Liveness(lease=5.0)
    live.observe({"a1": status("a1", 0, counter=1), "a2": status("a2", 0, counter=1)}, now=100.0)
    assert live.live(100.0) == {"a1", "a2"}  # a first sighting counts as a change
    live.observe({"a1": status("a1", 0, counter=2), "a2": status("a2", 0, counter=1)}, now=103.0)
    assert live.live(104.9) == {"a1", "a2"}
    assert live.live(105.0) == {"a1"}  # a2's counter stood still for a whole lease
    restarted = PeerStatus("a2", 8, 1, 0, 0, 0)  # another incarnation, counter from 1 again
    live.observe({"a1": status("a1", 0, counter=2), "a2": restarted}, now=106.0)
    assert live.live(106.0) == {"a1", "a2"}
    live.observe({"a2": restarted}, now=107.0)  # a1's object vanished: forgotten
    assert live.live(107.0) == {"a2"}


def test_offload_config_is_checked() -> None:
    with pytest.raises(ValueError, match="lease"):
        OffloadConfig(heartbeat=2.0, lease=1.0)
    with pytest.raises(ValueError, match="poll"):
        OffloadConfig(poll=0)


def test_a_segment_object_carries_its_checksum() -> None:
    data = wal_bytes(SEG)
    obj = encode_segment(3 * SEG, data)
    assert obj[:SEG] == data  # offsets in the object are offsets in the segment
    assert decode_segment(obj, 3 * SEG, SEG) == data
    flipped = bytearray(obj)
    flipped[100] ^= 1
    with pytest.raises(ValueError, match="CRC32C mismatch"):
        decode_segment(bytes(flipped), 3 * SEG, SEG)
    with pytest.raises(ValueError, match="names segment"):
        decode_segment(obj, 2 * SEG, SEG)
    with pytest.raises(ValueError, match="bytes, expected"):
        decode_segment(obj[:-1], 3 * SEG, SEG)


def test_peer_status_round_trips_and_refuses_junk() -> None:
    s = PeerStatus("a1", 5, 9, 100, 90, 0)
    assert PeerStatus.decode(s.encode()) == s
    for junk in (b"\xff", b"\x01", PeerStatus("a1", 5, 9, 100, 90, 0).encode()[:-1]):
        with pytest.raises(ValueError):
            PeerStatus.decode(junk)


def test_local_horizons_only_move_forward_and_survive_reopening(tmp_path: Path) -> None:
    async def body() -> None:
        horizons = LocalHorizons.load(tmp_path)
        assert horizons.state == HorizonState(0, 0)
        assert await horizons.advance(remote_consistent_lsn=500) == HorizonState(0, 500)
        assert await horizons.advance(offloaded_lsn=SEG, remote_consistent_lsn=100) == HorizonState(SEG, 500)
        assert LocalHorizons.load(tmp_path).state == HorizonState(SEG, 500)

    run(body)
    (tmp_path / HORIZONS_TMP_NAME).write_bytes(b"torn")  # a crash before the rename
    assert LocalHorizons.load(tmp_path).state == HorizonState(SEG, 500)
    assert not (tmp_path / HORIZONS_TMP_NAME).exists()
    raw = bytearray((tmp_path / HORIZONS_NAME).read_bytes())
    raw[-1] ^= 1
    (tmp_path / HORIZONS_NAME).write_bytes(bytes(raw))
    with pytest.raises(CorruptStorage, match=r"horizons file .*CRC mismatch"):
        LocalHorizons.load(tmp_path)


# ---------------------------------------------------------------------------------------
# FileWal: removal and completed-segment reads
# ---------------------------------------------------------------------------------------


def test_remove_below_removes_whole_completed_segments_below_the_limit(tmp_path: Path) -> None:
    data = wal_bytes(4 * SEG + 100)
    with make_wal(tmp_path, data) as wal:
        assert wal.remove_below(SEG - 1) == 0  # no whole segment below it
        assert wal.remove_below(2 * SEG + 5) == 2 * SEG
        assert wal.start_lsn == 2 * SEG
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            segment_name(2 * SEG, False), segment_name(3 * SEG, False), segment_name(4 * SEG, True)
        ]
        with pytest.raises(ValueError, match="outside"):
            wal.read(SEG, 3 * SEG)  # removed: the caller goes to object storage
        assert wal.read(2 * SEG, 4 * SEG + 100) == data[2 * SEG :]
        # Never the open segment, never beyond flush_lsn.
        assert wal.remove_below(10 * SEG) == 4 * SEG
        assert wal.read(4 * SEG, 4 * SEG + 100) == data[4 * SEG :]
        wal.write(wal.write_lsn, b"x" * SEG)  # completes segment 4, not yet flushed
        assert wal.remove_below(10 * SEG) == 4 * SEG
        wal.flush()
        assert wal.remove_below(10 * SEG) == 5 * SEG
    with FileWal.open(tmp_path, segment_size=SEG) as wal:  # the suffix left is a WAL
        assert (wal.start_lsn, wal.flush_lsn) == (5 * SEG, 5 * SEG + 100)


def test_remove_below_keeps_the_last_file_even_when_it_is_completed(tmp_path: Path) -> None:
    with make_wal(tmp_path, wal_bytes(2 * SEG)) as wal:
        assert wal.start_lsn == 0
    # A crash between completing a segment and creating the next leaves no .partial.
    (tmp_path / segment_name(2 * SEG, True)).unlink()
    with FileWal.open(tmp_path, segment_size=SEG) as wal:
        assert wal.remove_below(2 * SEG) == SEG  # segment 1 is the last file: it stays
        assert wal.read_segment(SEG) == wal_bytes(2 * SEG)[SEG:]


def test_a_crash_during_removal_leaves_a_suffix_that_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import impl.wal

    data = wal_bytes(4 * SEG + 10)
    wal = make_wal(tmp_path, data)
    unlinks = []

    def unlink_then_crash(path: object) -> None:
        if unlinks:
            raise OSError("crash")
        unlinks.append(path)
        original(path)

    original = impl.wal.os.unlink
    monkeypatch.setattr(impl.wal.os, "unlink", unlink_then_crash)
    with pytest.raises(OSError, match="crash"):
        wal.remove_below(3 * SEG)
    with pytest.raises(RuntimeError, match="unusable"):
        wal.read(3 * SEG, 3 * SEG + 1)  # sticky, as after any failed storage step
    wal.close()
    monkeypatch.undo()
    with FileWal.open(tmp_path, segment_size=SEG) as wal:
        assert wal.start_lsn == SEG and wal.read(SEG, wal.flush_lsn) == data[SEG:]


def test_read_segment_reads_completed_segments_only(tmp_path: Path) -> None:
    data = wal_bytes(2 * SEG + 10)
    with make_wal(tmp_path, data) as wal:
        assert wal.read_segment(SEG) == data[SEG : 2 * SEG]
        for bad in (2 * SEG, 3 * SEG, SEG + 1):  # the open one, beyond, unaligned
            with pytest.raises(ValueError, match="not a completed segment"):
                wal.read_segment(bad)
        wal.remove_below(SEG)
        with pytest.raises(ValueError, match="not a completed segment"):
            wal.read_segment(0)


# ---------------------------------------------------------------------------------------
# Offload against both stores, round by round
# ---------------------------------------------------------------------------------------


class Node:
    """One acceptor's side of offload without a server: its WAL, LSNs and Offloader."""

    def __init__(self, name: str, directory: Path, data: bytes, remote_wal: RemoteWal,
                 clock: Callable[[], float], config: OffloadConfig = OffloadConfig(lease=5.0), start: int = 0) -> None:
        self.name = name
        self.wal = make_wal(directory, data, start=start)
        self.commit_lsn = start + len(data)
        self.horizons = LocalHorizons.load(directory)
        self.offloader = Offloader(
            name, self.wal, remote_wal, self.horizons, config, wal_start=start,
            positions=self.positions, remove_below=self.remove_below, clock=clock,
        )

    def positions(self) -> Positions:
        return Positions(self.wal.flush_lsn, self.commit_lsn, self.wal.start_lsn)

    async def remove_below(self, limit: int) -> int:
        return await trio.to_thread.run_sync(self.wal.remove_below, limit)

    def append(self, data: bytes) -> None:
        self.wal.write(self.wal.write_lsn, data)
        self.wal.flush()
        self.commit_lsn = self.wal.flush_lsn


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def nodes(tmp_path: Path, store: RemoteStorage, data: bytes, names: tuple[str, ...] = ACCEPTORS,
          clock: Callable[[], float] = lambda: 0.0, prefix: str = "wal") -> tuple[RemoteWal, dict[str, Node]]:
    remote_wal = RemoteWal(store, prefix, SEG)
    return remote_wal, {n: Node(n, tmp_path / n, data, remote_wal, clock) for n in names}


def test_one_offloader_uploads_identical_segments_and_another_takes_over_when_it_dies(
    tmp_path: Path, store: RemoteStorage
) -> None:
    data = wal_bytes(3 * SEG + 50)
    clock = Clock()

    async def body() -> None:
        remote_wal, cluster = nodes(tmp_path, store, data, clock=clock)
        for node in cluster.values():
            await node.offloader.heartbeat()
        for name in ("a3", "a2"):  # they agree a1 is the offloader, and leave it to a1
            await cluster[name].offloader.step()
            assert cluster[name].offloader.offloader == "a1"
        await cluster["a1"].offloader.step()
        assert cluster["a1"].offloader.offloader is None  # all it could upload, it did
        assert [n.offloader.uploads for n in cluster.values()] == [3, 0, 0]
        for name in ("a3", "a2"):
            await cluster[name].offloader.step()
        assert all(n.offloader.offloaded_lsn == 3 * SEG for n in cluster.values())
        assert await trio.to_thread.run_sync(remote_wal.missing, 0, 3 * SEG) == []
        for start in range(0, 3 * SEG, SEG):
            uploaded = store.get(remote_wal.segment_key(start))
            assert decode_segment(uploaded, start, SEG) == data[start : start + SEG]
            assert all(n.wal.read_segment(start) == data[start : start + SEG] for n in cluster.values())

        # A fourth segment completes everywhere; a1 says so once, then dies (no heartbeats).
        for node in cluster.values():
            node.append(wal_bytes(SEG, seed=2))
        await cluster["a1"].offloader.heartbeat()
        clock.now += 3.0
        for name in ("a2", "a3"):
            await cluster[name].offloader.heartbeat()
            await cluster[name].offloader.step()
            # Within the lease, a1 is still the offloader: a2 and a3 wait.
            assert cluster[name].offloader.offloader == "a1" and cluster[name].offloader.uploads == 0
        # a2 and a3 saw a1's last change at their previous step, a lease ago (rule 1: the
        # observer's clock times the change it saw, not the writer's).
        clock.now += 5.0
        for name in ("a2", "a3"):
            await cluster[name].offloader.heartbeat()
        await cluster["a3"].offloader.step()
        assert cluster["a3"].offloader.offloader == "a2"
        await cluster["a2"].offloader.step()
        assert (cluster["a2"].offloader.uploads, cluster["a3"].offloader.uploads) == (1, 0)
        assert decode_segment(store.get(remote_wal.segment_key(3 * SEG)), 3 * SEG, SEG) == cluster["a2"].wal.read_segment(3 * SEG)
        # The horizon is cached locally too.
        assert LocalHorizons.load(tmp_path / "a2").offloaded_lsn == 4 * SEG

    run(body)


def test_nothing_uncommitted_is_uploaded(tmp_path: Path, store: RemoteStorage) -> None:
    async def body() -> None:
        remote_wal, cluster = nodes(tmp_path, store, wal_bytes(3 * SEG), names=("a1",))
        cluster["a1"].commit_lsn = 2 * SEG - 1  # flushed but not known committed
        await cluster["a1"].offloader.step()
        assert cluster["a1"].offloader.offloaded_lsn == SEG
        assert await trio.to_thread.run_sync(remote_wal.missing, 0, 3 * SEG) == [SEG, 2 * SEG]

    run(body)


def test_concurrent_offloaders_never_move_the_horizon_back(tmp_path: Path, store: RemoteStorage) -> None:
    segments = 8
    data = wal_bytes(segments * SEG)
    seen: list[int] = []

    async def body() -> None:
        remote_wal, cluster = nodes(tmp_path, store, data, names=("a1", "a2"))
        done = trio.Event()

        async def offload(node: Node) -> None:
            # Both believe they are the offloader (overlap, rule 2): they race every step.
            while node.offloader.offloaded_lsn < segments * SEG:
                await node.offloader.offload_next()

        async def watch() -> None:
            while not done.is_set():
                found, _ = await trio.to_thread.run_sync(remote_wal.horizon)
                if found is not None:
                    seen.append(found.lsn)
                    # Never names a segment that is not uploaded (upload first, then advance).
                    missing = await trio.to_thread.run_sync(remote_wal.missing, 0, found.lsn)
                    assert missing == [], f"horizon {found.lsn} names missing segments {missing}"
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            async with trio.open_nursery() as racers:
                racers.start_soon(offload, cluster["a1"])
                racers.start_soon(offload, cluster["a2"])
            done.set()
        assert cluster["a1"].offloader.uploads + cluster["a2"].offloader.uploads == segments
        assert await trio.to_thread.run_sync(remote_wal.read, 0, segments * SEG) == data

    run(body)
    assert seen == sorted(seen) and seen, seen


def test_removal_waits_for_every_horizon(tmp_path: Path, store: RemoteStorage) -> None:
    data = wal_bytes(6 * SEG + 10)

    async def body() -> None:
        _, cluster = nodes(tmp_path, store, data, names=("a1",))
        node = cluster["a1"]
        node.commit_lsn = 4 * SEG
        await node.offloader.step()  # uploads [0, 4); the pageserver has reported nothing
        assert node.offloader.offloaded_lsn == 4 * SEG and node.wal.start_lsn == 0
        await node.horizons.advance(remote_consistent_lsn=SEG + 10)
        assert await node.offloader.remove() == SEG  # remote_consistent_lsn bounds it
        await node.horizons.advance(remote_consistent_lsn=100 * SEG)
        assert await node.offloader.remove() == 4 * SEG  # now the offloaded horizon does
        node.offloader.offloaded_lsn = 100 * SEG  # as if an upload raced ahead: commit bounds it
        node.commit_lsn = 5 * SEG
        assert await node.offloader.remove() == 5 * SEG
        assert node.wal.read(5 * SEG, 6 * SEG + 10) == data[5 * SEG :]

    run(body)


def test_removed_wal_is_read_back_from_object_storage(tmp_path: Path, store: RemoteStorage) -> None:
    data = wal_bytes(4 * SEG + 10)

    async def body() -> None:
        remote_wal, cluster = nodes(tmp_path, store, data, names=("a1",))
        await cluster["a1"].horizons.advance(remote_consistent_lsn=len(data))
        await cluster["a1"].offloader.step()
        assert cluster["a1"].wal.start_lsn == 4 * SEG
        fresh = RemoteWal(store, "wal", SEG)  # no cache: every byte from the store
        for begin, end in ((0, 4 * SEG), (10, 20), (SEG - 5, 3 * SEG + 7), (2 * SEG, 2 * SEG)):
            assert await trio.to_thread.run_sync(fresh.read, begin, end) == data[begin:end]
        with pytest.raises(NotFound):
            await trio.to_thread.run_sync(fresh.read, 4 * SEG, 4 * SEG + 1)  # never uploaded
        damaged = bytearray(store.get(fresh.segment_key(SEG)))
        damaged[7] ^= 0xFF
        store.put(fresh.segment_key(SEG), bytes(damaged))
        with pytest.raises(OffloadError, match="damaged"):
            await trio.to_thread.run_sync(RemoteWal(store, "wal", SEG).read, SEG, SEG + 1)

    run(body)


def test_a_wal_starting_inside_a_segment_is_offloaded_from_that_segment(tmp_path: Path, store: RemoteStorage) -> None:
    # A branch's WAL starts at its branch LSN: the horizon starts at its segment, whose
    # bytes before the branch LSN are zeros nobody reads.
    start = 2 * SEG + 100
    data = wal_bytes(3 * SEG)

    async def body() -> None:
        remote_wal = RemoteWal(store, "wal", SEG)
        node = Node("a1", tmp_path / "a1", data, remote_wal, lambda: 0.0, start=start)
        await node.horizons.advance(remote_consistent_lsn=start + len(data))
        await node.offloader.step()
        assert node.offloader.offloaded_lsn == 5 * SEG and node.wal.start_lsn == 5 * SEG
        fresh = RemoteWal(store, "wal", SEG)
        assert await trio.to_thread.run_sync(fresh.read, start, 5 * SEG) == data[: 3 * SEG - 100]
        check_wal_available("a1", start, node.wal.start_lsn, fresh)

    run(body)


def test_a_diverging_segment_stops_the_horizon(tmp_path: Path, store: RemoteStorage) -> None:
    async def body() -> None:
        remote_wal, cluster = nodes(tmp_path, store, wal_bytes(2 * SEG), names=("a1",))
        store.put(remote_wal.segment_key(0), encode_segment(0, wal_bytes(SEG, seed=9)))
        with pytest.raises(OffloadError, match="safety violation"):
            await cluster["a1"].offloader.offload_next()
        found, _ = await trio.to_thread.run_sync(remote_wal.horizon)
        assert found is not None and found.lsn == 0

    run(body)


class Flaky:
    """A store that fails its first `failures` calls, then works."""

    def __init__(self, inner: RemoteStorage, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    def __getattr__(self, name: str) -> object:
        method = getattr(self.inner, name)

        def call(*args: object) -> object:
            if self.failures > 0:
                self.failures -= 1
                raise RemoteError(f"Flaky {name}: injected failure")
            return method(*args)

        return call


def test_store_errors_are_logged_and_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "paxwal.offload")
    config = OffloadConfig(heartbeat=0.01, lease=1.0, poll=0.01, backoff_min=0.001, backoff_max=0.02)

    async def body() -> None:
        flaky = Flaky(LocalFs(tmp_path / "store"), failures=12)
        remote_wal = RemoteWal(flaky, "wal", SEG)  # type: ignore[arg-type]
        node = Node("a1", tmp_path / "a1", wal_bytes(3 * SEG), remote_wal, trio.current_time, config)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.offloader.run)
            await wait_until(lambda: node.offloader.offloaded_lsn == 3 * SEG)
            nursery.cancel_scope.cancel()
        assert node.offloader.errors > 0 and flaky.failures == 0

    run(body, deadline=20)
    assert "injected failure" in caplog.text


# ---------------------------------------------------------------------------------------
# Acceptor servers: restart after removal, refusal without the WAL
# ---------------------------------------------------------------------------------------


def acceptor_dir_with_removed_wal(directory: Path, store: RemoteStorage, prefix: str) -> bytes:
    """An acceptor directory whose timeline main is of term 1 with 4 segments of committed
    WAL, the first 3 offloaded to `store` (under `prefix`/main) and removed from disk.
    Returns the WAL."""
    directory = directory / "timelines" / "main"
    directory.mkdir(parents=True)
    core, _, wal, control = open_acceptor(directory, "a1", 0, None, SEG)
    data = wal_bytes(4 * SEG + 10)
    wal.write(0, data)
    wal.flush()
    remote_wal = RemoteWal(store, f"{prefix}/main", SEG)
    for start in range(0, 3 * SEG, SEG):
        remote_wal.upload(start, wal.read_segment(start))
    wal.remove_below(3 * SEG)
    wal.close()
    control.store(ControlState(node_id="a1", term=1, term_history=((0, 0), (1, 0)), flush_lsn=len(data),
                               commit_lsn=len(data), truncate_pending_lsn=None))
    return data


def test_an_acceptor_restarts_after_removal_and_serves_the_removed_range(tmp_path: Path, store: RemoteStorage) -> None:
    data = acceptor_dir_with_removed_wal(tmp_path / "a1", store, "wal")

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(functools.partial(
                serve_acceptor, "a1", tmp_path / "a1", segment_size=SEG, remote=store, remote_prefix="wal",
            ))
            assert isinstance(server, AcceptorServer)
            main = server.timelines["main"]
            assert (main.core.wal_start, main.local_start_lsn, main.core.flush_lsn) == (0, 3 * SEG, len(data))
            assert main._remote_wal is not None
            assert await trio.to_thread.run_sync(main._remote_wal.read, 0, 3 * SEG) == data[: 3 * SEG]
            nursery.cancel_scope.cancel()

    run(body)


def test_an_acceptor_refuses_to_start_without_wal_it_removed(tmp_path: Path, store: RemoteStorage) -> None:
    acceptor_dir_with_removed_wal(tmp_path / "a1", store, "wal")

    def refusal(**kwargs: object) -> str:
        refused: list[CorruptStorage] = []

        async def start() -> None:
            async with trio.open_nursery() as nursery:
                try:
                    await nursery.start(functools.partial(
                        serve_acceptor, "a1", tmp_path / "a1", segment_size=SEG, **kwargs))
                except CorruptStorage as exc:
                    refused.append(exc)
                nursery.cancel_scope.cancel()

        run(start)
        assert refused, "it started"
        return str(refused[0])

    assert "WAL [0/0, 0/3000) is not on disk (removed after offload) and no object storage" in refusal()
    assert "object storage lacks 3 of its segments (other/main/wal/0000000000000000, " in refusal(
        remote=store, remote_prefix="other")
    store.delete(RemoteWal(store, "wal/main", SEG).segment_key(SEG))
    assert "lacks 1 of its segments (wal/main/wal/0000000000001000)" in refusal(remote=store, remote_prefix="wal")


def test_the_startup_check_lets_an_unreachable_store_pass(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    flaky = Flaky(LocalFs(tmp_path / "store"), failures=1)
    check_wal_available("a1", 0, SEG, RemoteWal(flaky, "wal", SEG))  # type: ignore[arg-type]
    assert "unreachable" in caplog.text
    check_wal_available("a1", 0, 0, None)  # nothing removed: nothing to check


# ---------------------------------------------------------------------------------------
# A cluster: offload, removal, and a new proposer recovering through the fallback
# ---------------------------------------------------------------------------------------

CLUSTER_SEGMENT = 64 * 1024
FAST = OffloadConfig(heartbeat=0.05, lease=2.0, poll=0.05, backoff_min=0.01, backoff_max=0.2)


class OffloadCluster(Cluster):
    def __init__(self, nursery: trio.Nursery, tmp: Path, store: RemoteStorage) -> None:
        super().__init__(nursery, tmp)
        self.store = store

    async def start_acceptor(self, name: str) -> AcceptorServer:
        serve = functools.partial(
            serve_acceptor, segment_size=CLUSTER_SEGMENT, remote=self.store, remote_prefix="cluster", offload=FAST
        )
        server = await self._start(name, serve, name, self.tmp / name, "127.0.0.1", self.ports.get(name, 0), self.run_dir)
        assert isinstance(server, AcceptorServer)
        self.ports[name] = server.port
        self.servers[name] = server
        return server


def mains(cluster: OffloadCluster) -> list[AcceptorTimeline]:
    """Every acceptor's timeline main."""
    return [s.timelines["main"] for s in cluster.servers.values()]


def test_a_cluster_offloads_removes_and_recovers_through_object_storage(tmp_path: Path, store: RemoteStorage) -> None:
    acked: dict[int, bytes] = {}
    remote_wal = RemoteWal(store, "cluster/main", CLUSTER_SEGMENT)
    clusters: list[OffloadCluster] = []

    async def body(cluster: OffloadCluster) -> None:
        p1 = await cluster.start_proposer("p1")
        await p1.wait_leader()

        async def worker(w: int) -> None:
            for i in range(40):
                data = record(f"w{w}", i)
                acked[await p1.append(data)] = data

        async with trio.open_nursery() as nursery:  # 320 KiB: five segments, the last open
            for w in range(8):
                nursery.start_soon(worker, w)
        wal = b"".join(acked[end] for end in sorted(acked))
        assert len(wal) == 320 * 1024 == p1.core.commit_lsn

        # Completed, committed segments appear in object storage, identical to every copy.
        await wait_until(lambda: all(s.offloader and s.offloader.offloaded_lsn == 5 * CLUSTER_SEGMENT
                                     for s in mains(cluster)))
        for start in range(0, 5 * CLUSTER_SEGMENT, CLUSTER_SEGMENT):
            segment = await trio.to_thread.run_sync(remote_wal.segment, start)
            assert segment == wal[start : start + CLUSTER_SEGMENT]
        assert sum(s.offloader.uploads for s in mains(cluster) if s.offloader) == 5
        assert all(s.local_start_lsn == 0 for s in mains(cluster))  # no report yet

        # The pageserver reports; everything below min(offloaded, it) goes.
        for server in mains(cluster):
            assert await server.set_remote_consistent_lsn(3 * CLUSTER_SEGMENT + 100) == 3 * CLUSTER_SEGMENT + 100
        await wait_until(lambda: all(s.local_start_lsn == 3 * CLUSTER_SEGMENT for s in mains(cluster)))

        # An acceptor restarts on what is left.
        await cluster.stop("a3")
        a3 = (await cluster.start_acceptor("a3")).timelines["main"]
        assert (a3.local_start_lsn, a3.core.flush_lsn, a3.remote_consistent_lsn) == (
            3 * CLUSTER_SEGMENT, len(wal), 3 * CLUSTER_SEGMENT + 100)

        # A new proposer reads its donor's WAL from wal_start: the first three segments
        # from object storage, the rest from the donor's disk.
        await cluster.stop("p1")
        p2 = await cluster.start_proposer("p2")
        await p2.wait_leader()
        assert p2.core.wal_bytes(0, len(wal)) == wal
        assert sum(s.fallback_reads for s in mains(cluster)) >= 1
        for i in range(10):
            data = record("p2", i)
            acked[await p2.append(data)] = data
        assert p2.core.commit_lsn == len(wal) + 10 * 1024

        # A second timeline offloads under its own prefix: its WAL starts at its branch LSN.
        b1 = await cluster.start_proposer("b1", timeline="br", wal_start=CLUSTER_SEGMENT)
        await b1.wait_leader()
        for i in range(80):  # [64 KiB, 144 KiB): one completed segment
            await b1.append(record("b1", i))
        await wait_until(lambda: all(s.timelines["br"].offloader.offloaded_lsn == 2 * CLUSTER_SEGMENT
                                     for s in cluster.servers.values()))
        br_wal = RemoteWal(store, "cluster/br", CLUSTER_SEGMENT)
        assert await trio.to_thread.run_sync(br_wal.segment, CLUSTER_SEGMENT) == b1.core.wal_bytes(
            CLUSTER_SEGMENT, 2 * CLUSTER_SEGMENT)
        keys = await trio.to_thread.run_sync(store.list, "cluster/br/wal/")
        assert [k.rsplit("/", 1)[1] for k in keys] == [segment_name(CLUSTER_SEGMENT, False)]

    async def main() -> None:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                cluster = OffloadCluster(nursery, tmp_path, store)
                clusters.append(cluster)
                for a in ACCEPTORS:
                    await cluster.start_acceptor(a)
                await body(cluster)
                await cluster.stop_all()
                nursery.cancel_scope.cancel()

    trio.run(main)
    clusters[0].check_traces()
    clusters[0].check_traces("br", CLUSTER_SEGMENT)
