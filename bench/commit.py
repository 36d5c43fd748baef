"""Replicated commits of 1 KiB records: 3 acceptor processes, the proposer in this one.

The cluster: three `paxwal acceptor` processes on 127.0.0.1 (bench/cluster.py), data in a
temporary directory, traces off; the proposer runs here, under trio, with its default
config.  Each phase runs `clients` tasks, each appending a 1 KiB record in a loop with one
append outstanding (`Proposer.append` returns once a quorum, two of three, flushed it),
first unmeasured for a warm-up, then for `seconds`: commits/s and the latency's p50/p99.

Baseline: a bare local write + fsync loop of the same record on the same disk (the temporary
directory), in the same run: what one durable local commit costs here.  The ratios compare
commits/s (replicated / local) and p50 (replicated / one fsync).

Goals (issue 6 §6, this 2-core machine): 16 clients >= 5,000 commits/s; 1 client p50 <= 1 ms.
The figures say whether each is met; tests never assert them.
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
    fsync_loop,
    ms,
    percentile,
    run_trio,
    warm_up_seconds,
)
from impl.proposer_client import serve_proposer

NAME = "commit"

ACCEPTORS = ("a1", "a2", "a3")
RECORD = 1024
CLIENTS = (1, 16)

GOAL_COMMITS_PER_SECOND_16 = 5_000
GOAL_P50_MS_1 = 1.0


async def _measure(acceptors: dict[str, tuple[str, int]], seconds: float) -> dict[int, tuple[list[float], float]]:
    """clients -> (latencies, elapsed) of each measured phase, with one proposer."""
    record = bytes(range(256)) * (RECORD // 256)
    results = {}
    async with trio.open_nursery() as nursery:
        proposer = await nursery.start(serve_proposer, "p1", acceptors)
        with trio.fail_after(STARTUP_TIMEOUT):
            await proposer.wait_leader()
        for clients in CLIENTS:
            await append_loop(proposer, clients, record, warm_up_seconds(seconds))
            results[clients] = await append_loop(proposer, clients, record, seconds)
        nursery.cancel_scope.cancel()
    return results


def run(seconds: float = 20.0) -> dict[str, Any]:
    """Each phase (the baseline, 1 client, 16 clients) runs `seconds` after its warm-up."""
    record = bytes(RECORD)
    with tempfile.TemporaryDirectory(prefix="paxwal-bench-commit-") as tmp:
        fsync_loop(Path(tmp), record, warm_up_seconds(seconds))
        base, base_s = fsync_loop(Path(tmp), record, seconds)
        with acceptor_processes(ACCEPTORS, Path(tmp)) as acceptors:
            phases = run_trio(_measure, acceptors, seconds)
    base_rate, base_p50 = len(base) / base_s, percentile(base, 0.5)
    figures: dict[str, Any] = {
        "baseline_fsync_commits_per_second": round(base_rate),
        "baseline_fsync_p50_ms": ms(base_p50),
        "baseline_fsync_p99_ms": ms(percentile(base, 0.99)),
    }
    for clients, (latencies, elapsed) in phases.items():
        label = "1_client" if clients == 1 else f"{clients}_clients"
        rate, p50 = len(latencies) / elapsed, percentile(latencies, 0.5)
        figures[f"commits_per_second_{label}"] = round(rate)
        figures[f"p50_ms_{label}"] = ms(p50)
        figures[f"p99_ms_{label}"] = ms(percentile(latencies, 0.99))
        figures[f"ratio_commits_{label}_to_baseline"] = round(rate / base_rate, 3)
        figures[f"ratio_p50_{label}_to_baseline"] = round(p50 / base_p50, 3)
    figures["goal_16_clients_5000_commits_per_second"] = (
        "met" if figures["commits_per_second_16_clients"] >= GOAL_COMMITS_PER_SECOND_16 else "missed"
    )
    figures["goal_1_client_p50_1_ms"] = "met" if figures["p50_ms_1_client"] <= GOAL_P50_MS_1 else "missed"
    return figures
