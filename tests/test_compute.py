"""The compute (impl/compute.py): SQLite on the pageserver and the replicated WAL, with psql as
its client, in one trio run with acceptors and a pageserver (tests/local_cluster.py).

Every run's proposer traces (the computes' proposers) are replayed by the conformance checker.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import trio

from impl.compute import Compute
from impl.pageclient import PageClient
from impl.proposer_client import ProposerConfig
from impl.wire import BranchCreate, BranchCreated, format_lsn
from local_cluster import COMPUTE_PASSWORD, FAST, Local, run_local, wait_for

PSQL_TIMEOUT = 30


def uri(compute: Compute) -> str:
    return f"postgresql://paxwal:{COMPUTE_PASSWORD}@127.0.0.1:{compute.port}/paxwal"


async def psql(compute: Compute, *commands: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run psql against `compute` with each command as its own -c; unaligned, tuples only."""
    args = ["psql", uri(compute), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    for command in commands:
        args += ["-c", command]
    result = await trio.to_thread.run_sync(lambda: subprocess.run(
        args, capture_output=True, text=True, timeout=PSQL_TIMEOUT, env={"PGCONNECT_TIMEOUT": "5"}))
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_a_compute_serves_sql_and_its_successor_carries_on_at_the_same_lsn(tmp_path: Path) -> None:
    async def body(local: Local) -> None:
        await local.start_pageserver(FAST)
        c1 = await local.start_compute("c1")
        assert c1.term >= 1 and c1.lsn == c1.start_lsn == 0
        await psql(c1, "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)",
                   "INSERT INTO kv VALUES (1, 'one'), (2, 'two')", "UPDATE kv SET v = 'uno' WHERE k = 1")
        lsn = (await psql(c1, "SELECT pg_current_wal_lsn()")).stdout.strip()
        assert lsn == format_lsn(c1.lsn) and c1.lsn > 0
        await local.stop("c1")
        c2 = await local.start_compute("c2")
        assert c2.term > c1.term and c2.start_lsn == c1.lsn
        assert (await psql(c2, "SELECT pg_current_wal_lsn()")).stdout.strip() == lsn
        assert (await psql(c2, "SELECT k, v FROM kv ORDER BY k")).stdout.split() == ["1|uno", "2|two"]
        await psql(c2, "INSERT INTO kv VALUES (3, 'three')")
        assert (await psql(c2, "SELECT count(*) FROM kv")).stdout.strip() == "3"
        assert c2.lsn > c1.lsn

    local = run_local(tmp_path, body)
    local.check_traces()


async def psql_in_background(nursery: trio.Nursery, compute: Compute, command: str) -> dict[str, object]:
    """Start psql -c `command`; the returned dict gets "result" when it ends."""
    box: dict[str, object] = {}

    async def run() -> None:
        box["result"] = await psql(compute, command, check=False)

    nursery.start_soon(run)
    return box


def test_no_reply_leaves_before_its_commit_and_reads_wait_for_what_they_saw(tmp_path: Path) -> None:
    async def body(local: Local) -> None:
        await local.start_pageserver(FAST)
        c1 = await local.start_compute("c1", proposer=ProposerConfig(stall_ticks=200))
        await psql(c1, "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)")
        before = c1.lsn
        for acceptor in ("a2", "a3"):  # no quorum: nothing commits
            await local.stop(acceptor)
        async with trio.open_nursery() as nursery:
            insert = await psql_in_background(nursery, c1, "INSERT INTO kv VALUES (1, 'in flight')")
            await trio.sleep(1.0)
            # SQLite has applied the insert, so a reader would see it: its reply waits too.
            select = await psql_in_background(nursery, c1, "SELECT v FROM kv")
            await trio.sleep(1.0)
            assert insert == {} and select == {} and c1.lsn == before
            for acceptor in ("a2", "a3"):
                await local.start_acceptor(acceptor)
        assert insert["result"].returncode == 0 and select["result"].stdout.strip() == "in flight"
        assert c1.lsn > before and c1.fenced is None

    local = run_local(tmp_path, body)
    local.check_traces()


def test_a_commit_that_cannot_be_made_fails_its_reply_and_stops_the_compute(tmp_path: Path) -> None:
    async def body(local: Local) -> None:
        await local.start_pageserver(FAST)
        c1 = await local.start_compute("c1")
        await psql(c1, "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)", "INSERT INTO kv VALUES (1, 'kept')")
        for acceptor in ("a2", "a3"):
            await local.stop(acceptor)
        # The proposer gives up after stall_ticks heartbeats: the record's outcome is unknown.
        failed = await psql(c1, "INSERT INTO kv VALUES (2, 'unknown')", check=False)
        assert failed.returncode != 0 and "outcome is unknown" in failed.stderr, failed.stderr
        assert c1.fenced is not None
        later = await psql(c1, "SELECT count(*) FROM kv", check=False)
        assert later.returncode != 0 and "has stopped" in later.stderr
        for acceptor in ("a2", "a3"):
            await local.start_acceptor(acceptor)
        c2 = await local.start_compute("c2")
        rows = (await psql(c2, "SELECT k FROM kv ORDER BY k")).stdout.split()
        assert rows in (["1"], ["1", "2"])  # the unknown one is there or not, never half

    local = run_local(tmp_path, body)
    local.check_traces()


def test_a_compute_that_lost_its_term_stops_and_nothing_it_wrote_after_is_visible(tmp_path: Path) -> None:
    async def body(local: Local) -> None:
        await local.start_pageserver(FAST)
        c1 = await local.start_compute("c1")
        await psql(c1, "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)", "INSERT INTO kv VALUES (1, 'c1')")
        c2 = await local.start_compute("c2")  # takes the branch over while c1 still runs
        await wait_for(lambda: c1.fenced is not None)
        refused = await psql(c1, "INSERT INTO kv VALUES (2, 'c1 after losing')", check=False)
        assert refused.returncode != 0 and "lost term" in refused.stderr, refused.stderr
        await psql(c2, "INSERT INTO kv VALUES (3, 'c2')")
        assert (await psql(c2, "SELECT k, v FROM kv ORDER BY k")).stdout.split() == ["1|c1", "3|c2"]

    local = run_local(tmp_path, body)
    local.check_traces()


def test_a_static_compute_reads_the_past_and_refuses_writes(tmp_path: Path) -> None:
    async def body(local: Local) -> None:
        await local.start_pageserver(FAST)
        c1 = await local.start_compute("c1")
        await psql(c1, "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)", "INSERT INTO kv VALUES (1, 'old')")
        then = c1.lsn
        await psql(c1, "UPDATE kv SET v = 'new' WHERE k = 1", "INSERT INTO kv VALUES (2, 'later')")
        past = await local.start_compute("past", lsn=then)
        assert (await psql(past, "SELECT k, v FROM kv")).stdout.split() == ["1|old"]
        assert (await psql(past, "SELECT pg_current_wal_lsn()")).stdout.strip() == format_lsn(then)
        refused = await psql(past, "INSERT INTO kv VALUES (3, 'no')", check=False)
        assert refused.returncode != 0 and "static snapshot" in refused.stderr, refused.stderr
        assert (await psql(c1, "SELECT k, v FROM kv ORDER BY k")).stdout.split() == ["1|new", "2|later"]

    local = run_local(tmp_path, body)
    local.check_traces()


def test_a_branch_sees_its_parent_at_the_branch_lsn_and_writes_on_its_own(tmp_path: Path) -> None:
    async def body(local: Local) -> None:
        pageserver = await local.start_pageserver(FAST)
        c1 = await local.start_compute("c1")
        await psql(c1, "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)", "INSERT INTO kv VALUES (1, 'main')")
        at = c1.lsn
        await psql(c1, "INSERT INTO kv VALUES (2, 'main later')")
        async with await PageClient.connect(pageserver.port) as client:
            assert await client.request(BranchCreate(name="dev", ancestor="main", lsn=at)) == BranchCreated(
                name="dev", ancestor="main", lsn=at)
        d1 = await local.start_compute("d1", timeline="dev", wal_start=at)
        assert d1.start_lsn == at
        assert (await psql(d1, "SELECT k FROM kv")).stdout.split() == ["1"]
        await psql(d1, "INSERT INTO kv VALUES (10, 'dev')", "UPDATE kv SET v = 'changed on dev' WHERE k = 1")
        assert (await psql(d1, "SELECT k, v FROM kv ORDER BY k")).stdout.split("\n")[:2] == ["1|changed on dev", "10|dev"]
        assert (await psql(c1, "SELECT k, v FROM kv ORDER BY k")).stdout.split("\n")[:2] == ["1|main", "2|main later"]
        await local.stop("d1")
        d2 = await local.start_compute("d2", timeline="dev", wal_start=at)
        assert (await psql(d2, "SELECT k FROM kv ORDER BY k")).stdout.split() == ["1", "10"]

    local = run_local(tmp_path, body)
    local.check_traces()


def test_a_replica_follows_the_primary_and_refuses_writes(tmp_path: Path) -> None:
    async def body(local: Local) -> None:
        await local.start_pageserver(FAST)
        c1 = await local.start_compute("c1")
        await psql(c1, "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)", "INSERT INTO kv VALUES (1, 'one')")
        r1 = await local.start_compute("r1", replica=True)

        async def replica_shows(rows: list[str]) -> None:
            # The acceptors learn a commit with the proposer's next message: a replica lags.
            with trio.fail_after(20):
                while (await psql(r1, "SELECT k, v FROM kv ORDER BY k")).stdout.split() != rows:
                    await trio.sleep(0.05)

        await replica_shows(["1|one"])
        await psql(c1, "UPDATE kv SET v = 'uno' WHERE k = 1", "INSERT INTO kv VALUES (2, 'two')")
        await replica_shows(["1|uno", "2|two"])
        assert r1.lsn == c1.lsn
        refused = await psql(r1, "INSERT INTO kv VALUES (3, 'no')", check=False)
        assert refused.returncode != 0 and "read replica" in refused.stderr, refused.stderr

    local = run_local(tmp_path, body)
    local.check_traces()
