"""GetPage@LSN per second, cached and reconstructed, in-process and over the socket, vs a dict.

The repository: a temporary directory with one timeline, ``main``, holding `PAGES` pages of
4 KiB written as images (records of `PAGES_PER_RECORD` pages) and checkpointed into a layer
file; then `CHAIN` records, each changing one page (the last one) by a delta of a few
bytes, checkpointed into a second layer file.  No in-memory layer is left: every read hits
layer files (their values are read with ``pread``, so from the OS page cache here).  Two
kinds of read, both at the last LSN:

* cached: a page whose newest version is an image: found, read, no redo.  The reads go
  through every other page in a shuffled order (the same order for every phase);
* reconstructed: the chained page: its image and `CHAIN` deltas, replayed by
  `impl.pagewal.redo` (the walk visits both layer files).

Phases, each `seconds` long after a short unmeasured warm-up:

* in-process: `Timeline.get_page` in a loop (what the page service calls under its lock);
* over the socket: the page service of `serve_pageserver`, run in this process under trio on
  127.0.0.1, with no acceptors and its background tasks off, over the same directory; one
  `PageClient` with one request outstanding (cached, then reconstructed), then `CLIENTS`
  clients at once (cached).  Each request crosses the loopback socket twice and a worker
  thread (the service runs reads in ``trio.to_thread`` under its lock).

Baseline: looking up the same pages' bytes in a Python dict (page -> bytes), in the same loop
shape, in the same run: the least a read of a page held in memory costs in Python.  Each rate
is printed with its ratio to the baseline (3 significant digits: the ratios are small).

Every page read is checked once against the bytes written (the reconstructed one against
`redo` of its chain) before its phase, so the figures are of correct reads.
"""

from __future__ import annotations

import functools
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from bench.cluster import run_trio
from impl.pagewal import PAGE_SIZE, PageDelta, PageImage, PageRecord, redo
from impl.pageclient import PageClient
from impl.pageserver import PageserverConfig, serve_pageserver
from impl.timeline import Repository
from impl.wire import GetPage, PageImageData

NAME = "getpage"

PAGES = 10_000
PAGES_PER_RECORD = 256
CHAIN = 10
CLIENTS = 4
TIMELINE = "main"
# Reads between two looks at the clock in the in-process loops: the clock costs more than a
# dict lookup, so it is read once per batch.
BATCH = 100
# Unmeasured reads before each phase (connections made, the worker thread started).
WARM_UP_READS = 200
# Microseconds since the epoch: the records' commit time (it only needs to be plausible).
_COMMIT_TIME = 1_700_000_000_000_000
# The page service with nothing but the page service: no acceptors (its WAL receiver only
# polls an empty set) and no background freeze, compaction, sync or GC.
_SERVICE_CONFIG = PageserverConfig(freeze_interval=0, compaction_interval=0, sync_interval=0, gc_interval=0)


def _page(number: int) -> bytes:
    """A page whose bytes say which page it is."""
    head = f"page {number} ".encode()
    return (head * (PAGE_SIZE // len(head) + 1))[:PAGE_SIZE]


def build_repository(directory: Path, pages: int) -> tuple[dict[int, bytes], int, bytes, int]:
    """Write the repository described above into `directory`.

    Returns:
        (page -> bytes of every cached page, the chained page's number, its bytes at the last
        LSN, the last LSN).
    """
    table = {number: _page(number) for number in range(pages)}
    chained = pages - 1
    repo = Repository.open(directory)
    try:
        timeline = repo.create_timeline(TIMELINE)
        lsn = 0
        for first in range(0, pages, PAGES_PER_RECORD):
            images = tuple(PageImage(n, table[n]) for n in range(first, min(pages, first + PAGES_PER_RECORD)))
            lsn += PAGE_SIZE * len(images)  # about the record's bytes: LSNs only need to grow
            timeline.ingest(lsn, PageRecord(PAGE_SIZE, pages, _COMMIT_TIME, images))
        timeline.checkpoint()
        deltas = []
        for version in range(1, CHAIN + 1):
            delta = PageDelta(chained, ((version * 64, f"version {version}".encode()),))
            deltas.append(delta)
            lsn += 64
            timeline.ingest(lsn, PageRecord(PAGE_SIZE, pages, _COMMIT_TIME + version, (delta,)))
        timeline.checkpoint()
    finally:
        repo.close()
    expected = redo(table.pop(chained), deltas)
    return table, chained, expected, lsn


def _in_process_rate(read: Callable[[int], object], order: list[int], seconds: float) -> tuple[int, float]:
    """(reads, seconds) of `read(page)` for the pages of `order`, cyclically, for `seconds`."""
    batches = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
    for page in order[:WARM_UP_READS]:
        read(page)
    clock = time.perf_counter
    reads = 0
    start = clock()
    stop_at = start + seconds
    while True:
        for batch in batches:
            for page in batch:
                read(page)
            reads += len(batch)
            if clock() >= stop_at:
                return reads, clock() - start


def _dict_rate(table: dict[int, bytes], order: list[int], seconds: float) -> tuple[int, float]:
    """The baseline: `_in_process_rate`'s loop with the read inlined as a dict lookup."""
    batches = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
    clock = time.perf_counter
    reads = 0
    start = clock()
    stop_at = start + seconds
    while True:
        for batch in batches:
            for page in batch:
                table[page]
            reads += len(batch)
            if clock() >= stop_at:
                return reads, clock() - start


async def _clients(port: int, clients: int, order: list[int], lsn: int, seconds: float) -> tuple[int, float]:
    """`clients` connections, each requesting the pages of `order` (from its own offset)
    one at a time for `seconds` after a warm-up; (replies, elapsed seconds)."""
    replies = 0
    clock = time.perf_counter
    ready = trio.Event()
    connected = 0
    start = stop_at = 0.0

    async def client(offset: int) -> None:
        nonlocal replies, connected, start, stop_at
        async with await PageClient.connect(port) as connection:

            async def get(page: int) -> None:
                reply = await connection.request(GetPage(timeline=TIMELINE, page=page, lsn=lsn))
                if type(reply) is not PageImageData:
                    raise RuntimeError(f"GetPage of page {page} at {lsn} was refused: {reply}")

            for i in range(WARM_UP_READS // clients + 1):
                await get(order[(offset + i) % len(order)])
            connected += 1
            if connected == clients:
                start = clock()
                stop_at = start + seconds
                ready.set()
            await ready.wait()
            i = offset
            while clock() < stop_at:
                await get(order[i % len(order)])
                replies += 1
                i += 1

    async with trio.open_nursery() as nursery:
        for n in range(clients):
            nursery.start_soon(client, n * len(order) // clients)
    return replies, clock() - start


async def _check_over_socket(port: int, lsn: int, expected: dict[int, bytes]) -> None:
    async with await PageClient.connect(port) as connection:
        for page, image in expected.items():
            reply = await connection.request(GetPage(timeline=TIMELINE, page=page, lsn=lsn))
            if type(reply) is not PageImageData or reply.image != image:
                raise RuntimeError(f"the page service returned a wrong page {page} at {lsn}: {reply}")


async def _socket_phases(
    directory: Path, order: list[int], chained: int, lsn: int, expected: dict[int, bytes], seconds: float
) -> dict[str, tuple[int, float]]:
    results = {}
    async with trio.open_nursery() as nursery:
        server = await nursery.start(functools.partial(serve_pageserver, directory, {}, config=_SERVICE_CONFIG))
        await _check_over_socket(server.port, lsn, expected)
        results["socket_cached"] = await _clients(server.port, 1, order, lsn, seconds)
        results["socket_reconstructed"] = await _clients(server.port, 1, [chained], lsn, seconds)
        results[f"socket_cached_{CLIENTS}_clients"] = await _clients(server.port, CLIENTS, order, lsn, seconds)
        nursery.cancel_scope.cancel()
    return results


def _ratio(value: float) -> float:
    """A ratio to 3 significant digits (they span orders of magnitude here)."""
    return float(f"{value:.3g}")


def run(seconds: float = 20.0) -> dict[str, Any]:
    """The baseline, then each phase (two in-process, three over the socket), `seconds` each."""
    with tempfile.TemporaryDirectory(prefix="paxwal-bench-getpage-") as tmp:
        directory = Path(tmp) / "pageserver"
        table, chained, reconstructed, lsn = build_repository(directory, PAGES)
        order = sorted(table)
        random.Random(0).shuffle(order)
        checks = {order[0]: table[order[0]], order[-1]: table[order[-1]], chained: reconstructed}
        phases: dict[str, tuple[int, float]] = {"baseline_dict": _dict_rate(table, order, seconds)}
        repo = Repository.open(directory)
        try:
            timeline = repo.timeline(TIMELINE)
            for page, image in checks.items():
                if timeline.get_page(page, lsn) != image:
                    raise RuntimeError(f"Timeline.get_page returned a wrong page {page} at {lsn}")
            get_page = timeline.get_page
            phases["inprocess_cached"] = _in_process_rate(lambda page: get_page(page, lsn), order, seconds)
            phases["inprocess_reconstructed"] = _in_process_rate(lambda page: get_page(page, lsn), [chained], seconds)
        finally:
            repo.close()
        phases.update(run_trio(_socket_phases, directory, order, chained, lsn, checks, seconds))
    rates = {name: reads / elapsed for name, (reads, elapsed) in phases.items()}
    base = rates.pop("baseline_dict")
    figures: dict[str, Any] = {
        "pages": PAGES,
        "chain_deltas": CHAIN,
        "baseline_dict_lookups_per_second": round(base),
    }
    for name, rate in rates.items():
        figures[f"{name}_per_second"] = round(rate)
    for name, rate in rates.items():
        figures[f"ratio_{name}_to_baseline"] = _ratio(rate / base)
    figures["ratio_inprocess_reconstructed_to_cached"] = _ratio(
        rates["inprocess_reconstructed"] / rates["inprocess_cached"]
    )
    return figures
