"""Benchmarks: each prints its figures beside a baseline measured in the same run.

A benchmark is a module here with ``NAME`` (what ``paxwal bench NAME`` calls it) and
``run(seconds) -> dict`` returning named figures, among them the baseline and the ratios to
it; `REGISTRY` names its module and says in one line what it measures.  Modules are imported
only when run (`load`): some pull in boto3 or a whole pageserver, and every `paxwal` command
builds the bench parser.  Timing is never asserted in tests (figures vary by machine); tests
only run each benchmark briefly to show it works.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["REGISTRY", "load"]

# Benchmark name -> (its module, one line for --help), in the order `make bench` runs them.
REGISTRY: dict[str, tuple[str, str]] = {
    "sim": ("bench.sim", "simulated runs per minute (default options per seed), tracing off vs on"),
    "trace": ("bench.trace", "cost of trace emission in the cores: stripped vs off vs on, per committed append"),
    "replay": ("bench.replay", "trace replay (paxwal check) events/s on a long fault-free run, vs json.loads "
                              "of its ndjson"),
    "commit": ("bench.commit", "replicated 1 KiB commits/s and p50/p99 with 3 acceptor processes, 1 and 16 "
                              "clients, vs a local fsync loop"),
    "ingest": ("bench.ingest", "128 KiB appends to one acceptor process, durable MiB/s, vs sequential writes "
                              "with an fsync per 1 MiB"),
    "getpage": ("bench.getpage", "GetPage@LSN/s, cached and reconstructed (10 deltas), in-process and over "
                                "the socket, vs a dict lookup"),
    "branch": ("bench.branch", "branch creation time on parents of 1k and 100k pages (must not grow), vs an "
                              "atomic small-file write"),
    "pageserver-ingest": ("bench.pageserver_ingest", "pageserver ingest MiB/s of page WAL (decode, ingest, "
                                                    "freeze/flush), vs decoding alone and write+fsync"),
    "sql": ("bench.sql", "pgbench -M simple (an UPDATE; BEGIN/UPDATE/SELECT/INSERT/END) at 1 and 16 clients "
                        "on a compute, vs PostgreSQL 15 alone and with two synchronous standbys"),
    "failover": ("bench.failover", "kill -9 of the compute under load, a new one on the same port: time to "
                                  "its first answer, and no acknowledged commit lost; vs a start with nothing failed"),
}


def load(name: str) -> ModuleType:
    """The module of benchmark `name` (a KeyError if there is none)."""
    return importlib.import_module(REGISTRY[name][0])
