"""The compute (impl/compute.py): SQLite on the pageserver and the replicated WAL, with psql as
its client, in one trio run with acceptors and a pageserver (tests/local_cluster.py).

Every run's proposer traces (the computes' proposers) are replayed by the conformance checker.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import trio

from impl.compute import Compute
from impl.wire import format_lsn
from local_cluster import COMPUTE_PASSWORD, FAST, Local, run_local

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
