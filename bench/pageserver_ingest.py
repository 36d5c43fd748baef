"""Pageserver ingest of page WAL, MiB/s: decode, ingest, and the freezes and flushes it causes.

The WAL: `WAL_BYTES` of encoded page records (impl/pagewal.py), made in memory before
measuring by a `RecordBuilder` the way a compute makes them, from a workload shaped like
SQLite's under small write transactions: a database of `DB_PAGES` pages of 4 KiB; each
transaction bumps the file change counter on page 0 (4 bytes) and rewrites a `ROW`-byte row
on `ROWS` random other pages.  The builder turns that into its usual mix: a delta of the
changed bytes per page, an image for a page's first version and for every `IMAGE_EVERY`-th
(``image_share_of_bytes`` says how much of the WAL is images).

Ingest, in this process, as the service's WAL receiver does it (impl/pageserver.py): the WAL
arrives in `FEED`-byte chunks (the acceptors' stream chunk); `RecordReader` decodes records,
`Timeline.ingest` applies each, and after each chunk the timeline is frozen when due
(`freeze_if_due`, the default `TimelineConfig`: 64 MiB checkpoint distance) and frozen
layers are flushed to layer files (fsynced).  The phase runs `seconds`, going through the WAL
as often as it takes (each pass a fresh reader at the last LSN: every pass is a valid WAL,
starting with images), then checkpoints: the time includes making everything ingested
durable in layer files, so ``seconds_measured`` may pass `seconds` by one flush of up to
a checkpoint distance.  The rate is of WAL bytes ingested.

Baselines, in the same run, `seconds` each: decoding alone (the same `RecordReader` loop with
no ingest), and raw sequential writes on the same disk of 1 MiB of the WAL at a time, each
followed by an fsync (`bench.cluster.sequential_write`, 16 MiB files).
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cluster import sequential_write
from impl.pagewal import PAGE_SIZE, PageImage, RecordBuilder, RecordReader, encode_record
from impl.timeline import Repository, TimelineConfig

NAME = "pageserver-ingest"

WAL_BYTES = 32 * 1024 * 1024
DB_PAGES = 1024
ROWS = 3
ROW = 100
FEED = 128 * 1024  # impl/acceptor_server.py STREAM_CHUNK
CONFIG = TimelineConfig()
TIMELINE = "main"
MIB = 1024 * 1024
_COMMIT_TIME = 1_700_000_000_000_000
_CHANGE_COUNTER = slice(24, 28)  # SQLite's file change counter, in the database header


def page_wal(size: int, db_pages: int = DB_PAGES, seed: int = 0) -> tuple[bytes, dict[str, int]]:
    """About `size` bytes of encoded records of the workload above, and counts of its mix:
    records, images, deltas, image_bytes (the images' page bytes)."""
    rng = random.Random(seed)
    pages = [bytearray(rng.randbytes(PAGE_SIZE)) for _ in range(db_pages)]
    builder = RecordBuilder()
    wal = bytearray()
    counts = {"records": 0, "images": 0, "deltas": 0, "image_bytes": 0}
    counter = 0
    while len(wal) < size:
        counter += 1
        pages[0][_CHANGE_COUNTER] = counter.to_bytes(4, "big")
        dirty = {0: bytes(pages[0])}
        for _ in range(ROWS):
            number = rng.randrange(1, db_pages)
            offset = rng.randrange(100, PAGE_SIZE - ROW)
            pages[number][offset : offset + ROW] = rng.randbytes(ROW)
            dirty[number] = bytes(pages[number])
        record = builder.build(dirty, db_pages, _COMMIT_TIME + counter * 1000)
        assert record is not None
        builder.commit()
        wal += encode_record(record)
        counts["records"] += 1
        for entry in record.pages:
            if type(entry) is PageImage:
                counts["images"] += 1
                counts["image_bytes"] += PAGE_SIZE
            else:
                counts["deltas"] += 1
    return bytes(wal), counts


def decode_rate(wal: bytes, seconds: float) -> tuple[int, float]:
    """(bytes decoded, seconds): `RecordReader` over the WAL, pass after pass, for `seconds`."""
    view = memoryview(wal)
    clock = time.perf_counter
    start = clock()
    stop_at = start + seconds
    decoded = 0
    while True:
        reader = RecordReader(decoded)
        for offset in range(0, len(wal), FEED):
            reader.feed(view[offset : offset + FEED])
            while reader.next_record() is not None:
                pass
            if clock() >= stop_at:
                return reader.lsn, clock() - start
        decoded = reader.lsn


def ingest_rate(directory: Path, wal: bytes, seconds: float) -> tuple[int, int, float, int]:
    """(bytes ingested, records ingested, seconds, layer files flushed): the ingest described
    above, into a new repository in `directory`."""
    view = memoryview(wal)
    repo = Repository.open(directory, CONFIG)
    try:
        timeline = repo.create_timeline(TIMELINE)
        clock = time.perf_counter
        flushed = records = 0
        now = _COMMIT_TIME
        start = clock()
        stop_at = start + seconds
        while clock() < stop_at:
            reader = RecordReader(timeline.last_record_lsn)
            for offset in range(0, len(wal), FEED):
                reader.feed(view[offset : offset + FEED])
                while (item := reader.next_record()) is not None:
                    lsn, record = item
                    timeline.ingest(lsn, record)
                    now = record.commit_time
                    records += 1
                timeline.freeze_if_due(now)
                flushed += timeline.flush()
                if clock() >= stop_at:
                    break
        timeline.freeze()  # the checkpoint: everything ingested into layer files
        flushed += timeline.flush()
        elapsed = clock() - start
        return timeline.last_record_lsn - timeline.start_lsn, records, elapsed, flushed
    finally:
        repo.close()


def run(seconds: float = 20.0) -> dict[str, Any]:
    """Make the WAL, then the two baselines and the ingest, `seconds` each."""
    wal, counts = page_wal(WAL_BYTES)
    decoded, decode_s = decode_rate(wal, seconds)
    with tempfile.TemporaryDirectory(prefix="paxwal-bench-pageserver-ingest-") as tmp:
        written, write_s = sequential_write(Path(tmp), wal[:MIB], MIB, seconds, 16 * MIB)
        ingested, records, ingest_s, flushed = ingest_rate(Path(tmp) / "pageserver", wal, seconds)
    decode, write, rate = decoded / decode_s / MIB, written / write_s / MIB, ingested / ingest_s / MIB
    return {
        "wal_mib": round(len(wal) / MIB, 1),
        "wal_records": counts["records"],
        "wal_images": counts["images"],
        "wal_deltas": counts["deltas"],
        "image_share_of_bytes": round(counts["image_bytes"] / len(wal), 3),
        "baseline_decode_mib_per_second": round(decode, 1),
        "baseline_write_fsync_mib_per_second": round(write, 1),
        "ingest_mib_per_second": round(rate, 1),
        "ingest_records_per_second": round(records / ingest_s),
        "ratio_ingest_to_decode": round(rate / decode, 3),
        "ratio_ingest_to_write_fsync": round(rate / write, 3),
        "mib_ingested": round(ingested / MIB, 1),
        "layer_files_flushed": flushed,
        "seconds_measured": round(ingest_s, 2),
    }
