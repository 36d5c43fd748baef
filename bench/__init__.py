"""Benchmarks: each prints its figures beside a baseline measured in the same run.

A benchmark is a module here with ``NAME`` (what ``paxwal bench NAME`` calls it), ``ABOUT``
(one line for ``--help``) and ``run(seconds) -> dict`` returning named figures, among them
the baseline and the ratios to it.  Timing is never asserted in tests (figures vary by
machine); tests only run each benchmark briefly to show it works.
"""

from __future__ import annotations

from types import ModuleType

from bench import branch, commit, failover, getpage, ingest, pageserver_ingest, replay, sim, sql, trace

BENCHMARKS: dict[str, ModuleType] = {
    module.NAME: module
    for module in (sim, trace, replay, commit, ingest, getpage, branch, pageserver_ingest, sql, failover)
}

__all__ = ["BENCHMARKS"]
