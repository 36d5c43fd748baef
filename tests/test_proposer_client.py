"""Tests of impl/proposer_client.py: proposers and acceptor servers on 127.0.0.1, in-process.

Each test runs three acceptor servers (impl/acceptor_server.py) on ephemeral ports and their
own directories, and one or two proposers, under trio in one process.  Every node traces into
one run directory, and each test ends by replaying it with the conformance checker, which
must accept it.  Every test is bounded by `trio.fail_after` and stops its nodes itself.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import socket
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from conformance.replay import check_run
from impl.acceptor_server import AcceptorServer, serve_acceptor
from impl.proposer_client import AppendFailed, NotLeader, Proposer, ProposerConfig, serve_proposer
from impl.control import FileControlStorage
from impl.wal import DEFAULT_SEGMENT_SIZE, FileWal
from wire_client import WireClient

# Generous: a test makes a few hundred fsyncs on each acceptor.
DEADLINE = 60

ACCEPTORS = ("a1", "a2", "a3")
RECORD = 1024

# A long election timeout for a proposer that must not campaign again during a test (its
# backoff after losing its term is at least this).
PATIENT = ProposerConfig(election_timeout=10_000)


def record(tag: str, i: int) -> bytes:
    """A distinct 1 KiB record."""
    return f"{tag} record {i:04d} ".encode().ljust(RECORD, b".")


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll `condition` until it holds (the test's fail_after bounds the wait)."""
    while not condition():
        await trio.sleep(0.01)


class Cluster:
    """Nodes of one test, each in its own cancel scope so a test can stop and restart it.

    Traces go to `run_dir/<timeline>/<node>.ndjson`; data to `tmp/<acceptor>/timelines/<timeline>`.
    """

    def __init__(self, nursery: trio.Nursery, tmp: Path) -> None:
        self.nursery = nursery
        self.tmp = tmp
        self.run_dir = tmp / "run"
        self.run_dir.mkdir()
        self.ports: dict[str, int] = {}
        self.servers: dict[str, AcceptorServer] = {}
        self._stops: dict[str, tuple[trio.CancelScope, trio.Event]] = {}
        self.proposers: dict[str, set[str]] = {}  # timeline -> its proposers

    async def _run(self, serve: Callable[..., Awaitable[None]], scope: trio.CancelScope,
                   stopped: trio.Event, *args: object, task_status: trio.TaskStatus[object]) -> None:
        try:
            with scope:
                await serve(*args, task_status=task_status)
        finally:
            stopped.set()

    async def _start(self, name: str, serve: Callable[..., Awaitable[None]], *args: object) -> object:
        scope, stopped = trio.CancelScope(), trio.Event()
        self._stops[name] = (scope, stopped)
        return await self.nursery.start(self._run, serve, scope, stopped, *args)

    async def start_acceptor(self, name: str) -> AcceptorServer:
        """Start (or restart) acceptor `name` on its directory, on the port it had, if any."""
        server = await self._start(
            name, serve_acceptor, name, self.tmp / name, "127.0.0.1", self.ports.get(name, 0), self.run_dir,
        )
        assert isinstance(server, AcceptorServer)
        self.ports[name] = server.port
        self.servers[name] = server
        return server

    async def start_proposer(
        self, name: str, config: ProposerConfig = ProposerConfig(), via: dict[str, int] | None = None,
        timeline: str = "main", wal_start: int = 0,
    ) -> Proposer:
        """Start proposer `name` of `timeline`, connecting to the acceptors' ports (or those in `via`)."""
        ports = {**self.ports, **(via or {})}
        addresses = {a: ("127.0.0.1", ports[a]) for a in ACCEPTORS}
        self.proposers.setdefault(timeline, set()).add(name)
        (self.run_dir / timeline).mkdir(exist_ok=True)
        serve = functools.partial(serve_proposer, timeline=timeline)
        proposer = await self._start(name, serve, name, addresses, config, wal_start, self.run_dir / timeline / f"{name}.ndjson")
        assert isinstance(proposer, Proposer)
        return proposer

    async def stop(self, name: str, then: Callable[[], object] | None = None) -> None:
        """Stop node `name` (calling `then` once it is told) and wait until it has closed
        its files and sockets."""
        scope, stopped = self._stops.pop(name)
        scope.cancel()
        if then is not None:
            then()
        await stopped.wait()

    async def stop_all(self) -> None:
        for name in list(self._stops):
            await self.stop(name)

    def check_traces(self, timeline: str = "main", wal_start: int = 0) -> None:
        """The timeline's run directory, with run.json naming the cluster, passes the replay."""
        run = self.run_dir / timeline
        cluster = {"proposers": sorted(self.proposers[timeline]), "acceptors": list(ACCEPTORS), "wal_start": wal_start}
        (run / "run.json").write_text(json.dumps({"cluster": cluster}) + "\n")
        result = check_run([run])
        assert result.verdict == "accepted", result.divergence.report() if result.divergence else result
        assert result.actions.get("CollectAck", 0) > 0 and result.actions.get("AcceptAppend", 0) > 0

    def holders(self, begin: int, data: bytes, timeline: str = "main") -> list[str]:
        """The acceptors whose WAL of `timeline` on disk holds `data` at `begin` (nodes stopped)."""
        found = []
        for a in ACCEPTORS:
            if not (self.tmp / a / "timelines" / timeline).exists():
                continue  # the acceptor never heard of the timeline
            with FileWal.open(self.tmp / a / "timelines" / timeline) as wal:
                if wal.write_lsn >= begin + len(data) and wal.read(begin, begin + len(data)) == data:
                    found.append(a)
        return found


def run_cluster(tmp_path: Path, body: Callable[[Cluster], Awaitable[None]]) -> Cluster:
    """Start the three acceptors, run `body`, stop every node; return the cluster."""
    clusters = []

    async def main() -> None:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                cluster = Cluster(nursery, tmp_path)
                clusters.append(cluster)
                for a in ACCEPTORS:
                    await cluster.start_acceptor(a)
                await body(cluster)
                await cluster.stop_all()
                nursery.cancel_scope.cancel()  # helpers a test started there (gates)

    trio.run(main)
    return clusters[0]


def assert_on_quorum(cluster: Cluster, acked: dict[int, bytes]) -> None:
    """Every acknowledged record (end LSN -> record) is on disk on a quorum, at its LSN."""
    for end, data in acked.items():
        holders = cluster.holders(end - len(data), data)
        assert len(holders) >= 2, f"the record ending at {end} is only on {holders}"


class Gate:
    """A TCP relay to an acceptor that can hold the traffic both ways (a pause, not a loss)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.opened = trio.Event()
        self.opened.set()

    def hold(self) -> None:
        self.opened = trio.Event()

    def open(self) -> None:
        self.opened.set()

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._relay, listeners, task_status=task_status)

    async def _relay(self, client: trio.SocketStream) -> None:
        async with client:
            try:
                server = await trio.open_tcp_stream("127.0.0.1", self.target)
            except OSError:
                return  # the acceptor is down: so is this connection
            async with server, trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
                nursery.start_soon(self._pump, server, client, nursery.cancel_scope)

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, both: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(65536):
                await self.opened.wait()
                await dst.send_all(data)
        except trio.BrokenResourceError:
            pass
        both.cancel()  # one side closed: close the other


# ---------------------------------------------------------------------------------------
# Election and pipelined appends
# ---------------------------------------------------------------------------------------


def test_concurrent_appends_commit_at_disjoint_lsns_on_a_quorum(tmp_path):
    acked: dict[int, bytes] = {}

    async def body(cluster: Cluster) -> None:
        proposer = await cluster.start_proposer("p1")
        with pytest.raises(NotLeader):  # before the election is won (it takes messages)
            await proposer.append(b"too early")
        assert await proposer.wait_leader() == 1

        async def one(i: int) -> None:
            data = record("p1", i)
            acked[await proposer.append(data)] = data

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, i)
        assert proposer.core.commit_lsn >= 200 * RECORD

    cluster = run_cluster(tmp_path, body)
    # 200 disjoint ranges tiling the WAL from its start: no record overlaps or is skipped.
    assert sorted(acked) == [RECORD * (k + 1) for k in range(200)]
    assert len(set(acked.values())) == 200
    assert_on_quorum(cluster, acked)
    cluster.check_traces()


def test_a_full_window_makes_appends_wait_not_fail(tmp_path):
    # A window of four records: most of the 50 appends wait for room, and all commit.
    config = ProposerConfig(window=4 * RECORD, max_send=RECORD)
    acked: dict[int, bytes] = {}

    async def body(cluster: Cluster) -> None:
        proposer = await cluster.start_proposer("p1", config)
        await proposer.wait_leader()
        uncommitted = []

        async def one(i: int) -> None:
            data = record("p1", i)
            acked[await proposer.append(data)] = data
            # Sampled right after a commit let the waiting appends in: the most in flight.
            uncommitted.append(proposer.core.wal_end - proposer.core.commit_lsn)

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(one, i)
        assert 0 < max(uncommitted) <= 4 * RECORD

    cluster = run_cluster(tmp_path, body)
    assert sorted(acked) == [RECORD * (k + 1) for k in range(50)]
    assert_on_quorum(cluster, acked)
    cluster.check_traces()


# ---------------------------------------------------------------------------------------
# A dead acceptor blocks nobody, and catches up when it returns
# ---------------------------------------------------------------------------------------


def test_appends_commit_with_an_acceptor_down_and_it_catches_up(tmp_path):
    acked: dict[int, bytes] = {}
    workers, each = 8, 25

    async def body(cluster: Cluster) -> None:
        proposer = await cluster.start_proposer("p1")
        await proposer.wait_leader()
        quarter, a3_down = trio.Event(), trio.Event()

        async def worker(w: int) -> None:
            last = 0
            for i in range(each):
                if quarter.is_set():
                    await a3_down.wait()  # the other three quarters go to a1 and a2 alone
                data = record(f"w{w}", i)
                end = await proposer.append(data)
                assert end > last  # one client's appends get increasing LSNs
                last = end
                acked[end] = data
                if len(acked) == workers * each // 4:
                    quarter.set()

        async with trio.open_nursery() as nursery:
            for w in range(workers):
                nursery.start_soon(worker, w)
            await quarter.wait()
            # Stopped while appends are in flight, possibly between a WAL write and its
            # fsync: its restart keeps what it finds (spec RestartAcceptor).
            await cluster.stop("a3")
            stopped_at = proposer.core.wal_end
            a3_down.set()
        assert proposer.core.commit_lsn == proposer.core.wal_end == workers * each * RECORD
        assert stopped_at < proposer.core.wal_end

        server = await cluster.start_acceptor("a3")
        assert server.timelines["main"].core.flush_lsn <= stopped_at
        await wait_until(lambda: server.timelines["main"].core.flush_lsn == proposer.core.wal_end)

    cluster = run_cluster(tmp_path, body)
    assert sorted(acked) == [RECORD * (k + 1) for k in range(workers * each)]
    for end, data in acked.items():  # a3 caught up: every record is on every acceptor
        assert cluster.holders(end - RECORD, data) == list(ACCEPTORS)
    cluster.check_traces()


def test_an_acceptor_stopped_between_write_and_fsync_restarts_traced_right(tmp_path, monkeypatch):
    # a3's next WAL write completes, then waits until the test has stopped a3: the
    # Flush that follows it is cancelled before its fsync, as a kill after write() is.
    # The restart finds the written bytes, fsyncs them (FileWal.open) and counts them as
    # flushed, as the spec's RestartAcceptor allows (any prefix of the written WAL at
    # least as long as the flushed one survives), so the trace is accepted.
    armed, reached, release = [False], trio.Event(), threading.Event()
    write = FileWal.write

    def write_then_wait(wal: FileWal, lsn: int, data: bytes) -> None:
        write(wal, lsn, data)
        if armed[0] and wal.directory.parent.parent.name == "a3":
            armed[0] = False
            trio.from_thread.run_sync(reached.set)
            release.wait()

    monkeypatch.setattr(FileWal, "write", write_then_wait)

    async def body(cluster: Cluster) -> None:
        proposer = await cluster.start_proposer("p1")
        await proposer.wait_leader()
        await proposer.append(record("p1", 0))
        armed[0] = True
        await proposer.append(record("p1", 1))  # a1 and a2 commit it
        await reached.wait()
        await cluster.stop("a3", then=release.set)
        server = await cluster.start_acceptor("a3")
        assert server.timelines["main"].core.flush_lsn == 2 * RECORD  # the unflushed write came back as flushed
        await proposer.append(record("p1", 2))

    cluster = run_cluster(tmp_path, body)
    cluster.check_traces()


async def garbage_acceptor(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """A server that answers every connection with bytes that are no frame."""

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")  # a 1.2 GB length
                while await stream.receive_some(65536):
                    pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(answer, listeners)


def free_port() -> int:
    """A port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("a3", ["down", "garbage"])
def test_an_acceptor_down_or_sending_garbage_costs_only_its_connection(tmp_path, caplog, a3):
    caplog.set_level(logging.INFO, logger="paxwal.proposer")
    acked: dict[int, bytes] = {}

    async def body(cluster: Cluster) -> None:
        await cluster.stop("a3")
        port = free_port() if a3 == "down" else await cluster.nursery.start(garbage_acceptor)
        proposer = await cluster.start_proposer("p1", via={"a3": port})
        await proposer.wait_leader()
        for i in range(20):
            data = record("p1", i)
            acked[await proposer.append(data)] = data

    cluster = run_cluster(tmp_path, body)
    assert sorted(acked) == [RECORD * (k + 1) for k in range(20)]
    assert_on_quorum(cluster, acked)
    logged = [r.getMessage() for r in caplog.records]
    if a3 == "down":
        assert any("cannot connect to a3" in line for line in logged)
    else:
        assert any("connection to a3 closed: protocol error" in line for line in logged)
    cluster.check_traces()


# ---------------------------------------------------------------------------------------
# A second proposer takes over
# ---------------------------------------------------------------------------------------


def test_a_new_leader_fails_the_old_leaders_appends_in_flight(tmp_path):
    acked: dict[int, bytes] = {}
    outcomes: list[Exception] = []

    async def body(cluster: Cluster) -> None:
        # p1 reaches a2 and a3 through gates, so that its appends can be kept uncommitted.
        gates = {a: Gate(cluster.ports[a]) for a in ("a2", "a3")}
        for gate in gates.values():
            await cluster.nursery.start(gate.serve)
        p1 = await cluster.start_proposer("p1", PATIENT, via={a: g.port for a, g in gates.items()})
        await p1.wait_leader()
        for i in range(10):
            data = record("p1", i)
            acked[await p1.append(data)] = data

        for gate in gates.values():
            gate.hold()  # a1 alone acks now: not a quorum

        async def in_flight(i: int) -> None:
            try:
                await p1.append(record("p1", 10 + i))
            except Exception as exc:  # noqa: BLE001 - the test asserts which
                outcomes.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(in_flight, i)
            await wait_until(lambda: p1.core.wal_end == 20 * RECORD)  # all ten in the WAL
            p2 = await cluster.start_proposer("p2")
            assert await p2.wait_leader() == 2
        await cluster.stop("p1")

        for i in range(10):
            data = record("p2", i)
            acked[await p2.append(data)] = data
        # p2 took over p1's WAL: p1's acknowledged records are in it, at their LSNs.
        for end, data in acked.items():
            assert p2.core.wal_bytes(end - len(data), end) == data

    cluster = run_cluster(tmp_path, body)
    assert len(outcomes) == 10 and all(isinstance(exc, AppendFailed) for exc in outcomes), outcomes
    assert "may or may not be committed" in str(outcomes[0])
    assert_on_quorum(cluster, acked)
    cluster.check_traces()


def test_stopping_a_proposer_fails_its_appends_in_flight(tmp_path):
    outcomes: list[Exception] = []

    async def body(cluster: Cluster) -> None:
        gates = {a: Gate(cluster.ports[a]) for a in ("a2", "a3")}
        for gate in gates.values():
            await cluster.nursery.start(gate.serve)
        proposer = await cluster.start_proposer("p1", via={a: g.port for a, g in gates.items()})
        await proposer.wait_leader()
        await proposer.append(record("p1", 0))
        for gate in gates.values():
            gate.hold()  # nothing commits from now on

        async def in_flight(i: int) -> None:
            try:
                await proposer.append(record("p1", i))
            except Exception as exc:  # noqa: BLE001 - the test asserts which
                outcomes.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(1, 6):
                nursery.start_soon(in_flight, i)
            await wait_until(lambda: proposer.core.wal_end == 6 * RECORD)
            await cluster.stop("p1")
        with pytest.raises(NotLeader, match="has stopped"):
            await proposer.append(b"late")

    cluster = run_cluster(tmp_path, body)
    assert len(outcomes) == 5 and all(isinstance(exc, AppendFailed) for exc in outcomes), outcomes
    assert "p1 stopped" in str(outcomes[0])
    cluster.check_traces()


def test_appends_waiting_together_enter_the_wal_as_one_entry(tmp_path):
    """Rule 5: appends queued together become one entry, each still told its own end LSN."""
    acked: dict[int, bytes] = {}
    new_entries = []

    async def body(cluster) -> None:
        proposer = await cluster.start_proposer("p1")
        await proposer.wait_leader()
        take = proposer.core.new_entry

        def counting(data: bytes):
            new_entries.append(len(data))
            return take(data)

        proposer.core.new_entry = counting

        async def one(i: int) -> None:
            data = record("p1", i)
            acked[await proposer.append(data)] = data

        async with trio.open_nursery() as nursery:
            for i in range(64):
                nursery.start_soon(one, i)

    cluster = run_cluster(tmp_path, body)
    assert sorted(acked) == [RECORD * (k + 1) for k in range(64)]  # each its own end LSN
    assert sum(new_entries) == 64 * RECORD and len(new_entries) < 64  # batched
    assert_on_quorum(cluster, acked)
    cluster.check_traces()


# ---------------------------------------------------------------------------------------
# Timelines: one WAL and one consensus each, on the same acceptors (issue 8 §3)
# ---------------------------------------------------------------------------------------

# A branch's WAL starts at its branch LSN, anywhere in a segment (behind zeros on disk).
BRANCH_LSN = DEFAULT_SEGMENT_SIZE + 12_345


def test_two_timelines_on_the_same_acceptors_are_independent(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="paxwal.acceptor")
    acked: dict[str, dict[int, bytes]] = {"main": {}, "br": {}}

    async def body(cluster: Cluster) -> None:
        p1 = await cluster.start_proposer("p1")
        b1 = await cluster.start_proposer("b1", timeline="br", wal_start=BRANCH_LSN)
        assert await p1.wait_leader() == 1 and await b1.wait_leader() == 1
        for i in range(5):
            for tl, proposer in (("main", p1), ("br", b1)):
                data = record(proposer.node, i)
                acked[tl][await proposer.append(data)] = data
        # A takeover on main does not disturb br: its term and its leader stay.
        p2 = await cluster.start_proposer("p2")
        assert await p2.wait_leader() >= 2
        data = record("p2", 0)
        acked["main"][await p2.append(data)] = data
        for name in ACCEPTORS:
            timelines = cluster.servers[name].timelines
            assert timelines["main"].core.term >= 2 and timelines["br"].core.term == 1
        # An OpenTimeline with another WAL start is refused: only that connection closes.
        stray = await WireClient.connect(cluster.ports["a1"], "x1", timeline="br", wal_start=0)
        await stray.wait_closed()
        data = record("b1", 5)
        acked["br"][await b1.append(data)] = data
        assert b1.core.term == 1
        # A restart reopens every timeline.
        await cluster.stop("a1")
        server = await cluster.start_acceptor("a1")
        assert sorted(server.timelines) == ["br", "main"]
        assert server.timelines["br"].core.wal_start == BRANCH_LSN
        data = record("b1", 6)
        acked["br"][await b1.append(data)] = data
        await wait_until(lambda: server.timelines["br"].core.flush_lsn == b1.core.wal_end)

    cluster = run_cluster(tmp_path, body)
    assert sorted(acked["br"]) == [BRANCH_LSN + RECORD * (k + 1) for k in range(7)]
    assert min(acked["main"]) == RECORD
    for timeline, records in acked.items():
        for end, data in records.items():
            assert len(cluster.holders(end - len(data), data, timeline)) >= 2
    for a in ACCEPTORS:  # one directory, WAL and control file per timeline
        for timeline, start in (("main", 0), ("br", BRANCH_LSN)):
            directory = tmp_path / a / "timelines" / timeline
            assert FileControlStorage(directory).load().term_history[0] == (0, start)
            with FileWal.open(directory) as wal:
                assert wal.start_lsn == start - start % DEFAULT_SEGMENT_SIZE
                assert wal.read(start, start + RECORD) == (record("p1", 0) if timeline == "main" else record("b1", 0))
    logged = [r.getMessage() for r in caplog.records]
    assert any("OpenTimeline of x1 refused" in line and "not at 0/0" in line for line in logged)
    cluster.check_traces("main")
    cluster.check_traces("br", BRANCH_LSN)
