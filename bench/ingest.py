"""Bulk WAL ingest: 128 KiB appends to one acceptor process (a quorum of one), MiB/s.

The cluster: one `paxwal acceptor` process on 127.0.0.1 (bench/cluster.py), data in a
temporary directory, traces off; the proposer runs here, under trio, with its default
config.  Appends are pipelined as a compute streams WAL: `APPENDERS` tasks each append a
128 KiB record in a loop, enough to keep the proposer's window (1 MiB by default) full, so
the acceptor's group commit can cover a window per fsync.  A record counts once it is
committed, so the rate is of durable bytes.  A warm-up precedes the measured `seconds`.

Baseline: sequential writes of the same 128 KiB chunks on the same disk (the temporary
directory), with an fsync after every 1 MiB, into 16 MiB files as the WAL's segments: the
most a disk-bound writer that syncs each window could do here.  Goal (issue 6 §6): ingest
>= 50% of the baseline; the figures say whether it is met, tests never assert it.

Resource note: the proposer keeps its whole WAL in memory (impl/proposer.py `_wal`), so
this process grows by the bytes ingested; `MAX_BYTES` ends the run early, before it grows
past what a small machine has.  `seconds_measured` says how long the measured phase ran.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import trio

from bench.cluster import (
    STARTUP_TIMEOUT,
    acceptor_processes,
    append_loop,
    run_trio,
    sequential_write,
    warm_up_seconds,
)
from impl.proposer_client import ProposerConfig, serve_proposer
from impl.wal import DEFAULT_SEGMENT_SIZE

NAME = "ingest"

RECORD = 128 * 1024
SYNC_EVERY = 1024 * 1024
# Two windows' worth: a window in flight, and as much again waiting for room.
APPENDERS = 2 * ProposerConfig().window // RECORD
# The most bytes a run ingests, warm-up included: the proposer holds them all in memory.
MAX_BYTES = 2 * 1024**3
GOAL_RATIO = 0.5

MIB = 1024 * 1024


async def _ingest(acceptors: dict[str, tuple[str, int]], seconds: float) -> tuple[int, float]:
    """(bytes committed, elapsed seconds) of the measured phase."""
    record = bytes(range(256)) * (RECORD // 256)
    async with trio.open_nursery() as nursery:
        proposer = await nursery.start(serve_proposer, "p1", acceptors)
        with trio.fail_after(STARTUP_TIMEOUT):
            await proposer.wait_leader()
        warm, _ = await append_loop(proposer, APPENDERS, record, warm_up_seconds(seconds), MAX_BYTES // RECORD // 4)
        left = MAX_BYTES // RECORD - len(warm)
        latencies, elapsed = await append_loop(proposer, APPENDERS, record, seconds, left)
        nursery.cancel_scope.cancel()
    return len(latencies) * RECORD, elapsed


def run(seconds: float = 20.0) -> dict[str, Any]:
    """The baseline, then the ingest, each `seconds` after its warm-up."""
    chunk = bytes(range(256)) * (RECORD // 256)
    with tempfile.TemporaryDirectory(prefix="paxwal-bench-ingest-") as tmp:
        sequential_write(Path(tmp), chunk, SYNC_EVERY, warm_up_seconds(seconds), DEFAULT_SEGMENT_SIZE)
        base_bytes, base_s = sequential_write(Path(tmp), chunk, SYNC_EVERY, seconds, DEFAULT_SEGMENT_SIZE)
        with acceptor_processes(("a1",), Path(tmp)) as acceptors:
            ingested, ingest_s = run_trio(_ingest, acceptors, seconds)
    base_rate, rate = base_bytes / base_s / MIB, ingested / ingest_s / MIB
    return {
        "baseline_mib_per_second": round(base_rate, 1),
        "ingest_mib_per_second": round(rate, 1),
        "ratio_ingest_to_baseline": round(rate / base_rate, 3),
        "goal_50_percent_of_baseline": "met" if rate / base_rate >= GOAL_RATIO else "missed",
        "appends_per_second": round(ingested / RECORD / ingest_s),
        "mib_ingested": round(ingested / MIB, 1),
        "seconds_measured": round(ingest_s, 2),
        "appenders": APPENDERS,
    }
