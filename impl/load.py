"""A load generator and its client history: what the chaos check holds the cluster to.

Theory of operation
===================

`run_load` runs one proposer (a compute, without the SQL) against a cluster's acceptors and
`clients` tasks that append records through it, one outstanding append per client, and
writes every client operation to its timeline's history file (DIR/run/<timeline>/history.jsonl), one
JSON line each, as Jepsen histories do:

    {"op": "invoke", "key": "p1/3f2a/0/17", "commit_time": ..., "size": 4113, "t": ...}
    {"op": "ack",    "key": "p1/3f2a/0/17", "commit_time": ..., "size": 4113, "lsn": 18432, "t": ...}
                                                                     committed, ends at lsn
    {"op": "fail",   "key": "p1/3f2a/0/17", "definite": true, ...}    never written
    {"op": "fail",   "key": "p1/3f2a/0/17", "definite": false, ...}   outcome unknown

A record is a page WAL record (impl/pagewal.py), so the pageserver ingests what the load
writes: one transaction that overwrites one page of a small database (`LOAD_PAGES` pages)
with bytes made from the key.  Its bytes are a function of its key and commit time
(`load_record`), so the history alone says what every acknowledged LSN range must hold;
`verify_history` checks that against the acceptors' WAL.  The key names the proposer, its incarnation (a random tag per process, so a
restarted load never reuses a key), the client and a sequence number.

Lines are written unbuffered before and after each operation, so a kill -9 of the load
process leaves at most an invoke without its outcome (outcome unknown), never an ack of
something that was not acknowledged.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import secrets
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import attrs
import trio

from impl.cluster import Cluster
from impl.acceptor_server import TIMELINES_DIR
from impl.offload import OffloadError, RemoteWal
from impl.pagewal import PAGE_SIZE, PageImage, PageRecord, encode_record
from impl.remote import NotFound, open_remote
from impl.proposer_client import AppendFailed, NotLeader, ProposerConfig, serve_proposer
from impl.storage import CorruptStorage
from impl.wal import FileWal

__all__ = ["LOAD_PAGES", "LoadSummary", "Verdict", "load_record", "run_load", "verify_history"]

log = logging.getLogger("paxwal.load")

# The database the load writes: every record overwrites one of these pages.
LOAD_PAGES = 64
# After a failed append a client waits this long before the next (the proposer is between
# terms: hammering it only fills the log).
RETRY_PAUSE = 0.05


def load_record(key: str, commit_time: int) -> bytes:
    """The record a client appends under `key` at `commit_time` (microseconds since the
    epoch): deterministic, so a history can be checked."""
    filler = (key.encode() + b".") * (PAGE_SIZE // (len(key) + 1) + 1)
    image = PageImage(zlib.crc32(key.encode()) % LOAD_PAGES, filler[:PAGE_SIZE])
    return encode_record(PageRecord(PAGE_SIZE, LOAD_PAGES, commit_time, (image,)))


@attrs.define
class LoadSummary:
    """What one `run_load` did."""

    proposer: str
    incarnation: str
    acked: int = 0
    failed_definite: int = 0
    failed_unknown: int = 0
    first_lsn: int | None = None
    last_lsn: int | None = None
    latencies: list[float] = attrs.field(factory=list, repr=False)

    def percentile(self, q: float) -> float | None:
        return percentile(self.latencies, q)


def percentile(values: list[float], q: float) -> float | None:
    """The `q` quantile (0..1) of `values` (nearest rank), or None if there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _History:
    """The history file, appended one line per operation (see the module docstring)."""

    def __init__(self, file: IO[str]) -> None:
        self.file = file

    def write(self, op: str, key: str, **fields: Any) -> None:
        self.file.write(json.dumps({"op": op, "key": key, "t": round(time.time(), 6), **fields}) + "\n")


async def run_load(
    cluster: Cluster,
    clients: int,
    seconds: float,
    name: str = "p1",
    config: ProposerConfig = ProposerConfig(),
    progress: Callable[[LoadSummary, float], None] | None = None,
    *,
    timeline: str = "main",
    wal_start: int | None = None,
) -> LoadSummary:
    """Append records from `clients` clients for `seconds` (math.inf: until cancelled)
    through proposer `name` of `timeline`, whose WAL starts at `wal_start` (None:
    the cluster's); record the history in `cluster.history_path(timeline)` (module docstring).

    `progress(summary, elapsed)` is called about once a second.
    """
    cfg = cluster.load()
    start = cfg.wal_start if wal_start is None else wal_start
    cluster.add_proposer(name, timeline, start)
    summary = LoadSummary(name, secrets.token_hex(4))
    addresses = {node: ("127.0.0.1", port) for node, port in cfg.acceptors.items()}
    started = time.monotonic()
    with open(cluster.history_path(timeline), "a", buffering=1) as file:
        history = _History(file)
        async with trio.open_nursery() as nursery:
            proposer = await nursery.start(functools.partial(
                serve_proposer, name, addresses, config, start, cluster.timeline_run_dir(timeline) / f"{name}.ndjson",
                timeline=timeline,
            ))
            with trio.move_on_after(seconds):
                async with trio.open_nursery() as clients_nursery:
                    for client in range(clients):
                        clients_nursery.start_soon(_client, proposer, history, summary, client)
                    if progress is not None:
                        clients_nursery.start_soon(_report, summary, started, progress)
            nursery.cancel_scope.cancel()
    return summary


async def _report(summary: LoadSummary, started: float, progress: Callable[[LoadSummary, float], None]) -> None:
    while True:
        await trio.sleep(1)
        progress(summary, time.monotonic() - started)


async def _client(proposer: Any, history: _History, summary: LoadSummary, client: int) -> None:
    for seq in range(2**62):
        await proposer.wait_leader()  # an append now would fail at once: not worth a history line
        key = f"{summary.proposer}/{summary.incarnation}/{client}/{seq}"
        commit_time = time.time_ns() // 1000
        record = load_record(key, commit_time)
        history.write("invoke", key, commit_time=commit_time, size=len(record))
        began = time.monotonic()
        try:
            lsn = await proposer.append(record)
        except NotLeader as exc:
            history.write("fail", key, definite=True, error=str(exc))
            summary.failed_definite += 1
            await trio.sleep(RETRY_PAUSE)
            continue
        except AppendFailed as exc:
            history.write("fail", key, definite=False, error=str(exc))
            summary.failed_unknown += 1
            await trio.sleep(RETRY_PAUSE)
            continue
        summary.latencies.append(time.monotonic() - began)
        history.write("ack", key, commit_time=commit_time, size=len(record), lsn=lsn)
        summary.acked += 1
        summary.first_lsn = lsn if summary.first_lsn is None else summary.first_lsn
        summary.last_lsn = lsn


# ---------------------------------------------------------------------------------------
# Checking a history against the acceptors' WAL
# ---------------------------------------------------------------------------------------


@attrs.frozen
class Verdict:
    """What `verify_history` found.

    Attributes:
        acked: acknowledged records in the history.
        lost: acknowledged records not present, byte for byte, at their LSN on a quorum
            (each with the acceptors that hold it): must be empty.
        overlapping: pairs of acknowledged records whose LSN ranges overlap (two records
            at one LSN): must be empty.
        unknown: operations whose outcome the client never learned (killed, or failed
            with outcome unknown).
        failed: operations that failed before being written.
    """

    acked: int
    lost: list[tuple[str, int, list[str]]]
    overlapping: list[tuple[str, str]]
    unknown: int
    failed: int

    @property
    def ok(self) -> bool:
        return not self.lost and not self.overlapping


def read_history(path: Path) -> Iterator[dict[str, Any]]:
    """The history's operations; a torn last line (a kill mid-write) is skipped."""
    with open(path) as file:
        for number, line in enumerate(file, 1):
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                if line.endswith("\n"):
                    raise CorruptStorage(f"{path}:{number}: not a history line: {line[:80]!r}") from None


def verify_history(cluster: Cluster, timeline: str = "main") -> Verdict:
    """Check every acknowledged record of `timeline` against the acceptors' WAL of it (their
    processes stopped).

    Each acknowledged record must be present, unchanged, at its LSN on a majority of the
    acceptors, and no two acknowledged records may share an LSN.  An acceptor holds what it
    removed after offload (impl/offload.py) if the object store holds it: that part is read
    from there, as the acceptor would read it to serve it.
    """
    cfg = cluster.load()
    path = cluster.history_path(timeline)
    operations = list(read_history(path)) if path.exists() else []
    acks = {op["key"]: op for op in operations if op["op"] == "ack"}
    outcomes = {op["key"] for op in operations if op["op"] in ("ack", "fail")}
    failed = sum(1 for op in operations if op["op"] == "fail" and op["definite"])
    unknown = sum(1 for op in operations if op["op"] == "invoke" and op["key"] not in outcomes)
    unknown += sum(1 for op in operations if op["op"] == "fail" and not op["definite"])
    ranges = sorted((op["lsn"] - op["size"], op["lsn"], key) for key, op in acks.items())
    overlapping = [(a[2], b[2]) for a, b in zip(ranges, ranges[1:]) if b[0] < a[1]]
    quorum = len(cfg.acceptors) // 2 + 1
    lost = []
    offloaded = RemoteWal(open_remote(cluster.remote_location(cfg)), f"{cfg.remote_prefix}/{timeline}", cfg.segment_size)
    with contextlib.ExitStack() as stack:
        wals = {node: stack.enter_context(_open_wal(cluster.dir / node / TIMELINES_DIR / timeline, cfg.segment_size)) for node in cfg.acceptors}
        for begin, end, key in ranges:
            expected = load_record(key, acks[key]["commit_time"])
            holders = [node for node, wal in wals.items() if _holds(wal, offloaded, begin, end, expected)]
            if len(holders) < quorum:
                lost.append((key, end, holders))
    return Verdict(len(acks), lost, overlapping, unknown, failed)


@contextlib.contextmanager
def _open_wal(directory: Path, segment_size: int) -> Iterator[FileWal | None]:
    try:
        wal = FileWal.open(directory, segment_size=segment_size)
    except FileNotFoundError:
        yield None
        return
    with wal:
        yield wal


def _holds(wal: FileWal | None, offloaded: RemoteWal, begin: int, end: int, expected: bytes) -> bool:
    if wal is None or end > wal.flush_lsn:
        return False
    local = max(begin, wal.start_lsn)  # [begin, local) was removed after offload
    try:
        removed = offloaded.read(begin, min(local, end)) if begin < local else b""
    except (NotFound, OffloadError):
        return False
    return removed + (wal.read(local, end) if local < end else b"") == expected

