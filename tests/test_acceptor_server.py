"""Tests of impl/acceptor_server.py: the acceptor on real sockets and files (127.0.0.1 only).

Each test runs the server in-process under trio on an ephemeral port and talks to it with
the scripted proposer of tests/wire_client.py.  Every test is bounded by `trio.fail_after`
and stops the server itself.
"""

from __future__ import annotations

import logging
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from conformance.replay import load_events
from impl import acceptor_server
from impl.acceptor_server import AcceptorServer, serve_acceptor
from impl.control import FileControlStorage
from impl.storage import CorruptStorage
from impl.wal import FileWal
from impl.wire import (
    StatusRequest,
    StatusResponse,
    AppendRequest,
    AppendResponse,
    Greeting,
    GreetingResponse,
    ProposerElected,
    TermSwitch,
    VoteRequest,
    VoteResponse,
    encode,
)
from wire_client import WireClient

# Generous: each test does a handful of fsyncs on loopback.
DEADLINE = 20


def run_with_server(
    directory: Path, body: Callable[[AcceptorServer], Awaitable[None]], trace_dir: Path | None = None
) -> None:
    """Start acceptor a1 on `directory` (traces in `trace_dir`), run `body(server)`, then stop the server."""

    async def main() -> None:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                server = await nursery.start(serve_acceptor, "a1", directory, "127.0.0.1", 0, trace_dir)
                await body(server)
                nursery.cancel_scope.cancel()

    trio.run(main)


async def never_started(server: AcceptorServer) -> None:
    raise AssertionError("the server started")


def history(*pairs: tuple[int, int]) -> tuple[TermSwitch, ...]:
    return tuple(TermSwitch(term=t, lsn=lsn) for t, lsn in pairs)


def append(proposer: str, term: int, begin: int, wal: bytes, commit: int = 0) -> AppendRequest:
    return AppendRequest(
        proposer=proposer, term=term, begin_lsn=begin, end_lsn=begin + len(wal), commit_lsn=commit, wal=wal
    )


async def elect(client: WireClient, term: int = 1) -> None:
    """Greeting, vote and ProposerElected of `term` on a fresh acceptor: streaming from 0."""
    p = client.node
    await client.send(Greeting(proposer=p))
    assert await client.receive_message() == GreetingResponse(acceptor="a1", proposer=p, term=term - 1)
    await client.send(VoteRequest(proposer=p, term=term))
    vote = await client.receive_message()
    assert vote == VoteResponse(
        acceptor="a1", proposer=p, term=term, term_history=history((0, 0)), flush_lsn=0, commit_lsn=0
    )
    await client.send(ProposerElected(proposer=p, term=term, term_history=history((0, 0), (term, 0))))
    assert await client.receive_message() == AppendResponse(acceptor="a1", term=term, flush_lsn=0, commit_lsn=0)


# ---------------------------------------------------------------------------------------
# Election, append, ack, restart
# ---------------------------------------------------------------------------------------


def test_election_append_and_acks_survive_a_restart(tmp_path):
    data = tmp_path / "a1"
    trace_dir = tmp_path / "run"
    trace = trace_dir / "main" / "a1.ndjson"
    clients: list[WireClient] = []

    async def first(server: AcceptorServer) -> None:
        client = await WireClient.connect(server.port)
        clients.append(client)
        await elect(client)
        await client.send(append("p1", 1, 0, b"hello"))
        assert await client.receive_message() == AppendResponse(acceptor="a1", term=1, flush_lsn=5, commit_lsn=0)
        # The next append carries commit 5: the acceptor learns it, capped by its flush.
        await client.send(append("p1", 1, 5, b" world", commit=5))
        assert await client.receive_message() == AppendResponse(acceptor="a1", term=1, flush_lsn=11, commit_lsn=5)
        await client.aclose()

    async def second(server: AcceptorServer) -> None:
        assert (server.timelines["main"].core.term, server.timelines["main"].core.flush_lsn) == (1, 11)
        assert server.timelines["main"].core.history == history((0, 0), (1, 0))
        client = await WireClient.connect(server.port, "p2")
        clients.append(client)
        await client.send(Greeting(proposer="p2"))
        assert await client.receive_message() == GreetingResponse(acceptor="a1", proposer="p2", term=1)
        await client.aclose()

    run_with_server(data, first, trace_dir)
    run_with_server(data, second, trace_dir)
    with FileWal.open(data / "timelines" / "main") as wal:
        assert wal.read(0, 11) == b"hello world"

    # The trace: the replay's reader takes it, every receive names a message the client
    # sent (with a later clock, as Lamport clocks go) and every reply the clients got is
    # a send in the trace with its id and clock; ids stay unique across the restart.
    events, _ = load_events([trace])
    assert [e.data["action"] for e in events] == [
        "AnswerGreeting", "Vote", "AcceptElected", "AcceptAppend", "Flush", "AcceptAppend", "Flush",
        "RestartAcceptor", "AnswerGreeting",
    ]
    client_sent = {meta.id: meta.lc for client in clients for meta in client.sent}
    for event in events:
        recv = event.data["recv"]
        if recv is not None:
            assert event.data["lc"] > client_sent.pop(recv)
    assert not client_sent  # every message the clients sent was received by one event
    trace_sent = {m["id"]: e.data["lc"] for e in events for m in e.data["sent"]}
    assert len(trace_sent) == sum(len(e.data["sent"]) for e in events)  # unique
    got = {f.meta.id: f.meta.lc for client in clients for f in client.received}
    assert got == trace_sent


def test_a_fresh_acceptor_restarts_before_any_vote(tmp_path):
    data = tmp_path / "a1"

    async def create(server: AcceptorServer) -> None:
        assert server.timelines == {}  # a timeline exists once a proposer opens it
        main = await server.open_timeline("main", 0)
        assert (main.core.term, main.core.flush_lsn) == (0, 0)

    async def idle(server: AcceptorServer) -> None:
        main = server.timelines["main"]
        assert (main.core.term, main.core.flush_lsn) == (0, 0)

    run_with_server(data, create)
    run_with_server(data, idle)


def test_corrupt_storage_refuses_to_start(tmp_path):
    data = tmp_path / "a1"

    async def vote(server: AcceptorServer) -> None:
        client = await WireClient.connect(server.port)
        await client.send(VoteRequest(proposer="p1", term=1))
        assert (await client.receive_message()).term == 1

    run_with_server(data, vote)
    FileControlStorage(data / "timelines" / "main").path.write_bytes(b"garbage")
    with pytest.RaisesGroup(pytest.RaisesExc(CorruptStorage, match=r"control file .*a1/timelines/main/control: truncated")):
        run_with_server(data, never_started)


# ---------------------------------------------------------------------------------------
# Timelines (rule 10)
# ---------------------------------------------------------------------------------------


def test_a_connection_is_bound_to_a_timeline_first_and_status_names_one(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="paxwal.acceptor")

    async def body(server: AcceptorServer) -> None:
        # A proposer message before OpenTimeline is refused; the acceptor holds nothing yet.
        unbound = await WireClient.connect(server.port, "p1", timeline=None)
        await unbound.send(Greeting(proposer="p1"))
        await unbound.wait_closed()
        # Two timelines, each its own consensus: a vote in one is no vote in the other.
        main = await WireClient.connect(server.port, "p1")
        await main.send(VoteRequest(proposer="p1", term=1))
        assert (await main.receive_message()).term == 1
        branch = await WireClient.connect(server.port, "b1", timeline="br", wal_start=0)
        await branch.send(Greeting(proposer="b1"))
        assert await branch.receive_message() == GreetingResponse(acceptor="a1", proposer="b1", term=0)
        asker = await WireClient.connect(server.port, timeline=None)
        for timeline, term in (("main", 1), ("br", 0), ("none", 0)):
            await asker.send(StatusRequest(timeline=timeline))
            status = await asker.receive_message()
            assert isinstance(status, StatusResponse) and (status.timeline, status.term) == (timeline, term)
        assert sorted(server.timelines) == ["br", "main"]

    run_with_server(tmp_path / "a1", body, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "a1" / "timelines").iterdir()) == ["br", "main"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["br", "main"]
    assert any("Greeting before OpenTimeline" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------
# Bad and dead peers cost only their own connection
# ---------------------------------------------------------------------------------------


def test_malformed_frame_closes_only_that_connection(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="paxwal.acceptor")

    async def body(server: AcceptorServer) -> None:
        good = await WireClient.connect(server.port, "p1")
        await elect(good)
        bad = await WireClient.connect(server.port, "p2")
        await bad.stream.send_all(b"GET / HTTP/1.1\r\n\r\n")  # "GET " read as a length: 1.2 GB
        await bad.wait_closed()
        await good.send(append("p1", 1, 0, b"abc"))
        assert await good.receive_message() == AppendResponse(acceptor="a1", term=1, flush_lsn=3, commit_lsn=0)

    run_with_server(tmp_path / "a1", body)
    closes = [r.getMessage() for r in caplog.records if "closed:" in r.getMessage()]
    assert len(closes) == 1 and "protocol error: frame length" in closes[0] and "exceeds MAX_FRAME" in closes[0]


def test_message_of_another_proposer_on_a_named_connection_is_refused(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="paxwal.acceptor")

    async def body(server: AcceptorServer) -> None:
        client = await WireClient.connect(server.port, "p1")
        await client.send(Greeting(proposer="p1"))
        assert (await client.receive_message()).term == 0
        await client.send(Greeting(proposer="p9"))
        await client.wait_closed()

    run_with_server(tmp_path / "a1", body)
    assert any("Greeting of proposer p9 on the connection of p1" in r.getMessage() for r in caplog.records)


def test_a_silent_half_frame_client_does_not_block_another(tmp_path):
    async def body(server: AcceptorServer) -> None:
        silent = await WireClient.connect(server.port, "p2")
        frame = encode(VoteRequest(proposer="p2", term=7))
        await silent.stream.send_all(frame[: len(frame) // 2])  # and then nothing, ever
        good = await WireClient.connect(server.port, "p1")
        await elect(good)
        await good.send(append("p1", 1, 0, b"x" * 100))
        assert (await good.receive_message()).flush_lsn == 100

    run_with_server(tmp_path / "a1", body)


def test_a_peer_that_stops_reading_is_closed_not_waited_for(tmp_path, caplog, monkeypatch):
    # A tiny outbox makes the point without filling megabytes of socket buffers first.
    monkeypatch.setattr(acceptor_server, "OUTBOX_FRAMES", 2)
    caplog.set_level(logging.INFO, logger="paxwal.acceptor")

    def outbox_full() -> bool:
        return any("outbox full" in r.getMessage() for r in caplog.records)

    async def body(server: AcceptorServer) -> None:
        good = await WireClient.connect(server.port, "p1")
        await elect(good)
        deaf = await WireClient.connect(server.port, "p2")
        # Greetings are answered at once; p2 never reads the answers.
        try:
            while not outbox_full():
                await deaf.send(*[Greeting(proposer="p2")] * 500)
                await trio.sleep(0)  # let the server run
        except trio.BrokenResourceError:
            pass  # the server closed it under our feet
        await good.send(append("p1", 1, 0, b"still here"))
        assert (await good.receive_message()).flush_lsn == 10

    run_with_server(tmp_path / "a1", body)
    assert outbox_full()


# ---------------------------------------------------------------------------------------
# Group commit
# ---------------------------------------------------------------------------------------


def test_appends_in_flight_share_fsyncs(tmp_path):
    appends = 50

    async def body(server: AcceptorServer) -> None:
        client = await WireClient.connect(server.port, "p1")
        await elect(client)
        await client.send(*(append("p1", 1, 10 * i, b"r" * 10) for i in range(appends)))
        flush = 0
        while flush < 10 * appends:
            flush = (await client.receive_message()).flush_lsn
        stats = server.timelines["main"].stats
        assert stats.writes == appends
        assert sum(n * count for n, count in stats.writes_per_fsync.items()) == appends
        assert stats.fsyncs < appends

    run_with_server(tmp_path / "a1", body)


def test_each_fsync_is_counted_with_the_writes_it_covered(tmp_path):
    async def body(server: AcceptorServer) -> None:
        client = await WireClient.connect(server.port, "p1")
        await elect(client)
        await client.send(*(append("p1", 1, 10 * i, b"r" * 10) for i in range(5)))
        flush = 0
        while flush < 50:
            flush = (await client.receive_message()).flush_lsn
        stats = server.timelines["main"].stats
        assert stats.writes == 5
        assert sum(n * count for n, count in stats.writes_per_fsync.items()) == 5
        assert stats.fsyncs == sum(stats.writes_per_fsync.values())

    run_with_server(tmp_path / "a1", body)


# ---------------------------------------------------------------------------------------
# paxwal acceptor
# ---------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def paxwal(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "impl.cli", *args], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )


def test_cli_serves_until_sigterm_and_exits_0(tmp_path):
    proc = paxwal("acceptor", "--node", "a1", "--dir", str(tmp_path / "a1"), "--port", "0",
                  "--trace-dir", str(tmp_path / "run"))
    try:
        for line in proc.stderr:  # the log says where it listens once it does
            if match := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                break
        assert match, "the acceptor never said it listens"

        async def greet() -> None:
            with trio.fail_after(DEADLINE):
                client = await WireClient.connect(int(match.group(1)))
                await client.send(VoteRequest(proposer="p1", term=3))
                assert (await client.receive_message()).term == 3

        trio.run(greet)
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=DEADLINE)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "stopping on SIGTERM" in rest
    events, _ = load_events([tmp_path / "run" / "main" / "a1.ndjson"])
    assert [e.data["action"] for e in events] == ["Vote"]


def test_cli_refuses_corrupt_storage_with_exit_2(tmp_path):
    data = tmp_path / "a1"
    (data / "timelines" / "main").mkdir(parents=True)
    FileControlStorage(data / "timelines" / "main").path.write_bytes(b"garbage")
    proc = paxwal("acceptor", "--node", "a1", "--dir", str(data), "--port", "0")
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 2
    assert err.splitlines() == [f"paxwal: error: control file {data}/timelines/main/control: truncated: 7 bytes, the header alone needs 10"]


def test_cli_refuses_a_busy_port_with_exit_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = paxwal("acceptor", "--node", "a1", "--dir", str(tmp_path / "a1"), "--port", str(port))
        _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 2
    (line,) = err.splitlines()
    assert line.startswith(f"paxwal: error: acceptor a1 cannot start on 127.0.0.1:{port}") and "in use" in line
