"""Timelines and branches: ingest, GetPage@LSN, freeze/flush, compaction, GC; a repository.

Theory of operation
===================

A timeline is one branch of the database's history: every page version at every LSN from
its start (neon-protocol.md §8.2-§8.7, DESIGN.md §7).  This file turns committed page
records (impl/pagewal.py) into layers (impl/layers.py), finds them again (impl/layermap.py),
and decides what may be deleted.  Rules of this file:

1. Synchronous and clockless.  No trio, no sockets, no clock: a record brings its commit
   time, and freeze-by-age, leases and GC take ``now`` (microseconds since the epoch, the
   compute's commit_time clock).  File IO is limited to layer files and the metadata file,
   each written crash-safely (`impl.storage.write_file_atomic`).  The trio service (issue 8
   §3) calls these methods from one task; the blocking ones (`flush`, `compact`, `gc`,
   `Repository.open`) it may run in ``trio.to_thread`` as long as no other method of the
   same repository runs meanwhile.
2. LSNs (DESIGN.md §7): ``last_record_lsn`` is the end LSN of the last ingested record;
   ``disk_consistent_lsn`` the last one whose versions are all in layer files *and* recorded
   in the metadata file.  The metadata is written after the layer file it vouches for, so a
   restart (`Repository.open`) deletes layers past ``disk_consistent_lsn`` ("future" layers
   of a crashed flush) and comes back with ``last_record_lsn = disk_consistent_lsn``: the
   service re-streams the WAL after it from the acceptors.  Nothing half-written is
   trusted: temporary files are deleted, a damaged file raises `CorruptStorage`.
3. What a record means is pagewal's "What a record means".  Ingest stores, at the record's
   LSN, each page's image or delta, a tombstone for every page a shrink removed, and the
   `META_KEY` value ``(db_size, commit_time)``.  So a page with no version (never written,
   or tombstoned) below ``db_size`` reads as zeros, a page at or past ``db_size`` raises
   `PageBeyondEnd`, and ``db_size(lsn)`` and ``lsn_at(time)`` come from the layers alone.
4. GetPage@LSN (§8.4) walks the open and frozen in-memory layers, then the historic layers
   through the layer map, then the ancestor at the branch point, collecting deltas newest
   first down to an image or tombstone, and redoes them (`impl.pagewal.redo`).
5. Branches (§8.2) are metadata only: a child records its ancestor and ``ancestor_lsn``; its
   reads at or below that LSN fall through to the ancestor.  Its ``gc_cutoff`` starts at the
   branch point, so reads before the branch are refused like reads below a GC cutoff.
6. GC (§8.7).  ``gc_cutoff = max(old, min(last_record_lsn - pitr_bytes, lsn_at(now -
   pitr_seconds)))``: it only moves forward, and is persisted before any file is deleted.
   Reads below it raise `LsnBelowGcCutoff` (except at a leased LSN), branches below it
   `BranchBelowGcCutoff`.  The LSNs that must stay readable are ``[gc_cutoff, ...)`` and each
   *retain* LSN: children's branch points and unexpired leases.  A historic layer holding
   versions up to LSN ``e`` is deleted only if, for each of those LSNs ``h >= its start``,
   every partition it touches has an image in ``[e, h]`` (the newer image shadows it), and
   ``e <= gc_cutoff``.  Unlike Neon's rule, a layer below a branch point may go when images
   between it and the branch point shadow it.
7. Compaction writes image layers (§8.6): for each key partition whose delta layers stacked
   above its newest image reach ``image_threshold``, the partition's pages at
   ``disk_consistent_lsn``.  That bounds both redo chains and the layers a read visits.
   (No L0 -> L1 re-partitioning of deltas: with images bounding the walk it buys little here.)

Errors, settings (`TimelineConfig`), the metadata record and its file codec live in
impl/timeline_meta.py and are re-exported here.

For issue 8 §4 (object storage as the source of truth): every layer file is immutable and
named by its ranges (`Timeline.layer_files` lists names and sizes), the metadata's bytes are
`Timeline.metadata_bytes`, and `Repository.open` on a directory laid out as below (filled from
remote) rebuilds everything::

    <root>/timelines/<name>/metadata        this file's `encode_metadata`
    <root>/timelines/<name>/<layer name>    layer files

Public API
----------
================================================  ==============================================
`Repository.open(root, config)`                    open or create; restart = open again
`Repository.create_timeline(name, start_lsn=0)`    an empty root timeline
`Repository.create_branch(name, from_, lsn)`       a child: metadata only, O(1)
`Repository.timeline(name)`, `.list()`, `.gc(now)`
`Timeline.ingest(lsn, record)`                     one committed record, by its end LSN
`Timeline.freeze()`, `.freeze_if_due(now)`         open layer -> frozen
`Timeline.flush()`, `.checkpoint()`                frozen layers -> delta files; dcl advances
`Timeline.compact(force=False)`                    image layers where chains are long
`Timeline.get_page(page, lsn)`, `.db_size(lsn)`    GetPage@LSN; the database size at an LSN
`Timeline.lsn_at(time)`                            PITR by time
`Timeline.lease(lsn, until)`                       keep an LSN readable until a time
`Timeline.gc(now, retain_lsns)`                    what `Repository.gc` runs per timeline
`Timeline.layer_files()`, `.metadata_bytes()`      for the uploader
================================================  ==============================================
"""

from __future__ import annotations

import bisect
import os
import shutil
from array import array
from collections.abc import Iterable
from pathlib import Path

import attrs

from impl.layermap import LayerMap, partition_range
from impl.layers import (
    DELTA,
    IMAGE,
    META,
    META_KEY,
    TOMBSTONE,
    CorruptLayer,
    FileLayer,
    InMemoryLayer,
    Value,
    is_temp_file,
    layer_name,
    parse_layer_name,
    write_delta_layer,
    write_image_layer,
)
from impl.pagewal import PAGE_SIZE, PageDelta, PageImage, PageRecord, RedoError, redo
from impl.storage import CorruptStorage, fsync_dir, write_file_atomic
from impl.timeline_meta import (
    BadTimelineName,
    BranchAboveLastRecord,
    BranchBelowGcCutoff,
    GcResult,
    IngestError,
    LayerFileInfo,
    LeaseBelowGcCutoff,
    LsnBelowGcCutoff,
    LsnNotIngested,
    PageBeyondEnd,
    TimelineConfig,
    TimelineError,
    TimelineExists,
    TimelineMetadata,
    UnknownTimeline,
    check_name,
    decode_metadata,
    encode_metadata,
)
from impl.wire import format_lsn

__all__ = [
    "BadTimelineName",
    "BranchAboveLastRecord",
    "BranchBelowGcCutoff",
    "GcResult",
    "IngestError",
    "LayerFileInfo",
    "LeaseBelowGcCutoff",
    "LsnBelowGcCutoff",
    "LsnNotIngested",
    "PageBeyondEnd",
    "Repository",
    "Timeline",
    "TimelineConfig",
    "TimelineError",
    "TimelineExists",
    "TimelineMetadata",
    "UnknownTimeline",
    "check_name",
    "decode_metadata",
    "encode_metadata",
]

_US = 1_000_000  # microseconds in a second

METADATA_NAME = "metadata"
TIMELINES_DIR = "timelines"


# ---------------------------------------------------------------------------------------------
# The (lsn -> db_size, commit_time) history
# ---------------------------------------------------------------------------------------------


class _History:
    """One entry per record (or image) LSN: the database size and commit time there.

    A cache of the META_KEY values in the layers, rebuilt from them on open; arrays keep it
    at 32 bytes an entry.  ``max_times`` is the running maximum of commit times, so that
    "the newest LSN committed by time T" is a bisect even if a compute's clock stepped back.
    """

    def __init__(self) -> None:
        self.lsns = array("Q")
        self.sizes = array("Q")
        self.times = array("Q")
        self.max_times = array("Q")

    def append(self, lsn: int, db_size: int, commit_time: int) -> None:
        if self.lsns and lsn <= self.lsns[-1]:
            return  # an image's entry at an LSN a record already gave
        self.lsns.append(lsn)
        self.sizes.append(db_size)
        self.times.append(commit_time)
        self.max_times.append(max(commit_time, self.max_times[-1]) if self.max_times else commit_time)

    def at(self, lsn: int) -> int:
        """Index of the newest entry at or below `lsn`, or -1."""
        return bisect.bisect_right(self.lsns, lsn) - 1

    def by_time(self, time: int) -> int:
        """Index of the newest entry with every commit up to it at or before `time`, or -1."""
        return bisect.bisect_right(self.max_times, time) - 1


# ---------------------------------------------------------------------------------------------
# The timeline
# ---------------------------------------------------------------------------------------------


class Timeline:
    """One timeline: its metadata, layers and in-memory state.  Built by `Repository`."""

    def __init__(
        self, directory: Path, meta: TimelineMetadata, ancestor: Timeline | None, config: TimelineConfig
    ) -> None:
        self.directory = directory
        self.config = config
        self.name = meta.name
        self.ancestor = ancestor
        self.ancestor_lsn = meta.ancestor_lsn
        self.start_lsn = meta.start_lsn
        self.page_size = meta.page_size
        self.partition_pages = meta.partition_pages
        self.disk_consistent_lsn = meta.disk_consistent_lsn
        self.last_record_lsn = meta.disk_consistent_lsn
        self.gc_cutoff = meta.gc_cutoff
        self._leases: dict[int, int] = dict(meta.leases)
        self._map = LayerMap(self.partition_pages)
        self._open: InMemoryLayer | None = None
        self._open_since = 0  # commit time of the open layer's first record
        self._frozen: list[InMemoryLayer] = []
        self._history = _History()
        self._zeros = bytes(self.page_size)

    def __repr__(self) -> str:
        return (
            f"Timeline({self.name!r}, last_record={format_lsn(self.last_record_lsn)},"
            f" disk_consistent={format_lsn(self.disk_consistent_lsn)}, gc_cutoff={format_lsn(self.gc_cutoff)})"
        )

    # -- loading -----------------------------------------------------------------------------

    def _load_layers(self) -> None:
        """Open every layer file; delete temporary files and future layers (rule 2)."""
        removed = False
        entries: list[tuple[int, int, int]] = []
        for entry in sorted(os.listdir(self.directory)):
            path = self.directory / entry
            if is_temp_file(entry):
                path.unlink()
                removed = True
                continue
            if entry == METADATA_NAME:
                continue
            name = parse_layer_name(entry)
            if name is None:
                raise CorruptStorage(f"timeline {self.directory}: unexpected file {entry!r}")
            if name.lsn_end - 1 > self.disk_consistent_lsn:
                # Written by a flush that crashed before its metadata: the WAL re-streams it.
                path.unlink()
                removed = True
                continue
            layer = FileLayer.open(path, self.page_size)
            try:
                self._map.add(layer)
            except ValueError as exc:
                layer.close()
                raise CorruptLayer(path, str(exc)) from None
            for lsn, (_kind, (db_size, commit_time)) in layer.all_versions(META_KEY):  # type: ignore[misc]
                entries.append((lsn, db_size, commit_time))
        for lsn, db_size, commit_time in sorted(entries):
            self._history.append(lsn, db_size, commit_time)
        if removed:
            fsync_dir(self.directory)

    def close(self) -> None:
        for layer in self._map.layers():
            layer.close()

    # -- metadata ----------------------------------------------------------------------------

    def metadata(self) -> TimelineMetadata:
        """The metadata as it is (and, between mutating calls, as it is stored)."""
        return TimelineMetadata(
            name=self.name,
            ancestor=None if self.ancestor is None else self.ancestor.name,
            ancestor_lsn=self.ancestor_lsn,
            start_lsn=self.start_lsn,
            page_size=self.page_size,
            partition_pages=self.partition_pages,
            disk_consistent_lsn=self.disk_consistent_lsn,
            gc_cutoff=self.gc_cutoff,
            leases=tuple(sorted(self._leases.items())),
        )

    def metadata_bytes(self) -> bytes:
        """The metadata file's bytes (for the uploader: upload after the layers it vouches for)."""
        return encode_metadata(self.metadata())

    def _store(self, meta: TimelineMetadata) -> None:
        write_file_atomic(self.directory / METADATA_NAME, encode_metadata(meta))

    def layer_files(self) -> list[LayerFileInfo]:
        """Every layer file of this timeline (not its ancestors'), sorted by name."""
        return sorted((LayerFileInfo(layer_name(l.name), l.file_size) for l in self._map.layers()), key=lambda i: i.name)

    # -- ingest ------------------------------------------------------------------------------

    def ingest(self, lsn: int, record: PageRecord) -> None:
        """Apply one committed record.

        Args:
            lsn: the record's end LSN (pagewal rule 3), above ``last_record_lsn``.
            record: the decoded record.

        Raises:
            IngestError: `lsn` is not above ``last_record_lsn``, or the page size differs.
            LsnNotIngested: a branch whose ancestor has not yet re-ingested up to the branch
                point after a restart (its size there is unknown until it has).
        """
        if type(lsn) is not int or lsn <= self.last_record_lsn:
            raise IngestError(
                f"timeline {self.name!r}: record at {format_lsn(lsn)} is not after the last"
                f" ingested record ({format_lsn(self.last_record_lsn)})"
            )
        if record.page_size != self.page_size:
            raise IngestError(
                f"timeline {self.name!r}: record of page size {record.page_size}, the timeline's"
                f" is {self.page_size}"
            )
        previous = self._db_size_at(self.last_record_lsn)
        if self._open is None:
            self._open = InMemoryLayer(self.last_record_lsn + 1)
            self._open_since = record.commit_time
        layer = self._open
        # A shrink removes every page at or past the new size (pagewal "What a record means").
        for page in range(record.db_size, previous):
            layer.put(page, lsn, (TOMBSTONE, None))
        for entry in record.pages:
            if type(entry) is PageImage:
                layer.put(entry.page, lsn, (IMAGE, entry.image))
            else:
                layer.put(entry.page, lsn, (DELTA, entry))
        layer.put(META_KEY, lsn, (META, (record.db_size, record.commit_time)))
        self._history.append(lsn, record.db_size, record.commit_time)
        self.last_record_lsn = lsn

    def freeze(self) -> bool:
        """Freeze the open layer (if it holds anything): the next record opens a new one.

        Returns:
            Whether a layer was frozen.
        """
        if self._open is None or self._open.empty:
            return False
        self._open.frozen = True
        self._frozen.append(self._open)
        self._open = None
        return True

    def freeze_if_due(self, now: int) -> bool:
        """Freeze if the open layer spans ``checkpoint_distance`` LSN bytes or its first
        record committed ``checkpoint_timeout_us`` before `now` (Neon's checkpoint rules)."""
        layer = self._open
        if layer is None or layer.empty:
            return False
        if (
            self.last_record_lsn - layer.start_lsn + 1 >= self.config.checkpoint_distance
            or now - self._open_since >= self.config.checkpoint_timeout_us
        ):
            return self.freeze()
        return False

    @property
    def frozen_layers(self) -> int:
        return len(self._frozen)

    @property
    def open_layer_size(self) -> int:
        return 0 if self._open is None else self._open.size

    def flush_one(self) -> bool:
        """Write the oldest frozen layer as a delta layer file, then advance
        ``disk_consistent_lsn`` in the metadata (in that order: rule 2).

        Returns:
            Whether there was a frozen layer.
        """
        if not self._frozen:
            return False
        memory = self._frozen[0]
        path = write_delta_layer(self.directory, memory, self.page_size)
        layer = FileLayer.open(path, self.page_size)
        meta = attrs.evolve(self.metadata(), disk_consistent_lsn=memory.end_lsn - 1)
        self._map.add(layer)
        self._frozen.pop(0)
        self._store(meta)
        self.disk_consistent_lsn = meta.disk_consistent_lsn
        return True

    def flush(self) -> int:
        """Flush every frozen layer; returns how many."""
        count = 0
        while self.flush_one():
            count += 1
        return count

    def checkpoint(self) -> None:
        """Freeze and flush everything: ``disk_consistent_lsn == last_record_lsn`` after."""
        self.freeze()
        self.flush()

    # -- reads -------------------------------------------------------------------------------

    def _check_read(self, lsn: int, what: str = "read") -> None:
        if type(lsn) is not int or lsn < 0:
            raise TypeError(f"lsn must be an int >= 0, got {lsn!r}")
        if lsn > self.last_record_lsn:
            raise LsnNotIngested(self.name, lsn, self.last_record_lsn, what)
        if lsn < self.gc_cutoff and lsn not in self._leases:
            if lsn < self.start_lsn:
                reason = f"before the timeline's start {format_lsn(self.start_lsn)}"
            else:
                reason = f"below its GC cutoff {format_lsn(self.gc_cutoff)}: that history is gone"
            raise LsnBelowGcCutoff(f"timeline {self.name!r}: {what} at {format_lsn(lsn)} is {reason}")

    def _ancestor_at_branch(self) -> Timeline:
        ancestor = self.ancestor
        assert ancestor is not None
        if ancestor.last_record_lsn < self.ancestor_lsn:
            raise LsnNotIngested(ancestor.name, self.ancestor_lsn, ancestor.last_record_lsn, "branch point")
        return ancestor

    def _db_size_at(self, lsn: int) -> int:
        i = self._history.at(lsn)
        if i >= 0:
            return self._history.sizes[i]
        if self.ancestor is None:
            return 0
        return self._ancestor_at_branch()._db_size_at(self.ancestor_lsn)

    def _commit_time_at(self, lsn: int) -> int:
        i = self._history.at(lsn)
        if i >= 0:
            return self._history.times[i]
        if self.ancestor is None:
            return 0
        return self._ancestor_at_branch()._commit_time_at(self.ancestor_lsn)

    def db_size(self, lsn: int) -> int:
        """The database's size in pages at `lsn` (what a compute starting there needs).

        Raises:
            LsnNotIngested, LsnBelowGcCutoff: as for `get_page`.
        """
        self._check_read(lsn, "db_size")
        return self._db_size_at(lsn)

    def lsn_at(self, time: int) -> int:
        """PITR by time: the newest LSN whose records (and all before) committed at or before
        `time` (microseconds); the timeline's start (or the ancestor's answer, capped at the
        branch point) if none did.  It may be below ``gc_cutoff``: reading there then fails."""
        i = self._history.by_time(time)
        if i >= 0:
            return self._history.lsns[i]
        if self.ancestor is None:
            return self.start_lsn
        return min(self.ancestor.lsn_at(time), self.ancestor_lsn)

    def _memory_layers(self) -> list[InMemoryLayer]:
        layers = [] if self._open is None else [self._open]
        layers.extend(reversed(self._frozen))
        return layers

    def _lookup(self, key: int, lsn: int) -> tuple[Value | None, list[PageDelta]]:
        """Walk for `key` at `lsn` (rule 4): ``(base, deltas newest first)``; base None means
        no initialising version at all (never written)."""
        deltas: list[PageDelta] = []
        timeline, x = self, lsn
        while True:
            for memory in timeline._memory_layers():
                if memory.start_lsn > x:
                    continue
                for _, value in memory.versions(key, x):
                    if value[0] != DELTA:
                        return value, deltas
                    deltas.append(value[1])  # type: ignore[arg-type]
            image = timeline._map.newest_image(key, x)
            floor = -1 if image is None else image.name.lsn
            for layer in timeline._map.deltas_between(floor, x, key):
                for _, value in layer.versions(key, x, floor):
                    if value[0] != DELTA:
                        return value, deltas
                    deltas.append(value[1])  # type: ignore[arg-type]
            if image is not None:
                for _, value in image.versions(key, x):
                    return value, deltas
                return (TOMBSTONE, None), deltas  # absent from an image: no version there
            if timeline.ancestor is None:
                return None, deltas
            timeline, x = timeline._ancestor_at_branch(), timeline.ancestor_lsn

    def _page_at(self, page: int, lsn: int) -> bytes | None:
        """The page at `lsn`, or None if it has no version (unchecked: internal)."""
        base, deltas = self._lookup(page, lsn)
        if base is None or base[0] == TOMBSTONE:
            if deltas:
                raise RedoError(
                    f"timeline {self.name!r}: page {page} at {format_lsn(lsn)} has"
                    f" {len(deltas)} delta(s) over no version"
                )
            return None
        assert base[0] == IMAGE
        return redo(base[1], deltas[::-1])  # type: ignore[arg-type]

    def get_page(self, page: int, lsn: int) -> bytes:
        """GetPage@LSN: `page` as of `lsn` (every record with end LSN <= lsn applied).

        Returns:
            The page's bytes; zeros for a page below ``db_size`` with no version.

        Raises:
            LsnNotIngested: `lsn` is past ``last_record_lsn`` (wait and retry).
            LsnBelowGcCutoff: `lsn` is below the GC cutoff (or the start) and not leased.
            PageBeyondEnd: `page` is at or past the database's size at `lsn`.
        """
        self._check_read(lsn)
        size = self._db_size_at(lsn)
        if type(page) is not int or not 0 <= page < size:
            raise PageBeyondEnd(
                f"timeline {self.name!r}: page {page} at {format_lsn(lsn)} is past the end of the"
                f" database ({size} pages)"
            )
        image = self._page_at(page, lsn)
        return self._zeros if image is None else image

    # -- leases ------------------------------------------------------------------------------

    def lease(self, lsn: int, until: int) -> None:
        """Keep `lsn` readable (and its history from GC) until `until` (microseconds).

        A lease on the same LSN extends to the later time.  Persisted before returning.

        Raises:
            LeaseBelowGcCutoff: `lsn` is below the GC cutoff and not already leased.
            LsnNotIngested: `lsn` is past ``last_record_lsn``.
        """
        if lsn > self.last_record_lsn:
            raise LsnNotIngested(self.name, lsn, self.last_record_lsn, "lease")
        if lsn < self.gc_cutoff and lsn not in self._leases:
            raise LeaseBelowGcCutoff(
                f"timeline {self.name!r}: lease at {format_lsn(lsn)} is below the GC cutoff"
                f" {format_lsn(self.gc_cutoff)}"
            )
        leases = dict(self._leases)
        leases[lsn] = max(until, leases.get(lsn, until))
        meta = attrs.evolve(self.metadata(), leases=tuple(sorted(leases.items())))
        self._store(meta)
        self._leases = leases

    @property
    def leases(self) -> dict[int, int]:
        return dict(self._leases)

    # -- compaction --------------------------------------------------------------------------

    def compact(self, force: bool = False) -> list[str]:
        """Write image layers at ``disk_consistent_lsn`` for each partition with at least
        ``image_threshold`` delta layers above its newest image (any, if `force`).

        Returns:
            The names of the image layers written.
        """
        lsn = self.disk_consistent_lsn
        threshold = 1 if force else self.config.image_threshold
        partitions: set[int] = set()
        for layer in self._map.deltas:
            partitions |= self._map.footprint(layer)
        written = []
        for partition in sorted(partitions):
            images = self._map.image_lsns(partition)
            newest = images[-1] if images else -1
            if newest >= lsn or self._map.deltas_above(partition, newest) < threshold:
                continue
            path = self._write_image(partition, lsn)
            self._map.add(FileLayer.open(path, self.page_size))
            written.append(path.name)
        return written

    def _write_image(self, partition: int, lsn: int) -> Path:
        start, end = partition_range(partition, self.partition_pages)
        size = self._db_size_at(lsn)
        entries: list[tuple[int, Value]] = []
        for page in range(start, min(end, size)):
            image = self._page_at(page, lsn)
            if image is not None:
                entries.append((page, (IMAGE, image)))
        if start <= META_KEY < end:
            entries.append((META_KEY, (META, (size, self._commit_time_at(lsn)))))
        return write_image_layer(self.directory, start, end, lsn, self.page_size, entries)

    # -- GC ----------------------------------------------------------------------------------

    def gc(self, now: int, retain_lsns: Iterable[int] = ()) -> GcResult:
        """Advance the GC cutoff and delete the layers nothing needs (rule 6).

        Args:
            now: microseconds since the epoch; leases that end at or before it expire.
            retain_lsns: LSNs that must stay readable besides the window (children's branch
                points; `Repository.gc` passes them).

        Returns:
            The new cutoff and the deleted layer files.
        """
        window = self.config.pitr_bytes
        space = max(0, self.last_record_lsn - window)
        by_time = self.lsn_at(now - self.config.pitr_seconds * _US)
        cutoff = max(self.gc_cutoff, min(space, by_time))
        leases = {lsn: until for lsn, until in self._leases.items() if until > now}
        meta = attrs.evolve(self.metadata(), gc_cutoff=cutoff, leases=tuple(sorted(leases.items())))
        if meta != self.metadata():
            self._store(meta)  # before any deletion: reads below the cutoff are refused from here
            self.gc_cutoff = cutoff
            self._leases = leases
        retain = sorted(set(retain_lsns) | set(leases))
        doomed = [layer for layer in self._map.layers() if self._deletable(layer, cutoff, retain)]
        for layer in doomed:
            self._map.remove(layer)
            layer.close()
            layer.path.unlink()
        if doomed:
            fsync_dir(self.directory)
        return GcResult(self.name, cutoff, tuple(layer_name(l.name) for l in doomed), len(self._map.layers()))

    def _deletable(self, layer: FileLayer, cutoff: int, retain: list[int]) -> bool:
        top = layer.name.lsn_end - 1  # the newest LSN it may hold a version at
        if top > cutoff or not self._map.covered(layer, top, cutoff):
            return False
        return all(r < layer.name.lsn_start or self._map.covered(layer, top, r) for r in retain)


# ---------------------------------------------------------------------------------------------
# The repository
# ---------------------------------------------------------------------------------------------


class Repository:
    """The timelines in one directory (Neon's Tenant).  Use `Repository.open`."""

    def __init__(self, root: Path, config: TimelineConfig) -> None:
        self.root = root
        self.config = config
        self._timelines: dict[str, Timeline] = {}

    @classmethod
    def open(cls, root: Path | str, config: TimelineConfig | None = None) -> Repository:
        """Open the repository in `root`, creating it if absent; also how a restart recovers.

        Each timeline comes back at ``last_record_lsn = disk_consistent_lsn`` (rule 2).  A
        timeline directory without metadata (a creation that crashed) is removed.

        Raises:
            CorruptStorage: damaged metadata or layer files, or a timeline whose ancestor is
                missing.
        """
        root = Path(root)
        repo = cls(root, config or TimelineConfig())
        base = root / TIMELINES_DIR
        if not base.is_dir():
            base.mkdir(parents=True)
            fsync_dir(base.parent)
        metas: dict[str, TimelineMetadata] = {}
        for entry in sorted(os.listdir(base)):
            directory = base / entry
            path = directory / METADATA_NAME
            if not path.exists():
                shutil.rmtree(directory)
                fsync_dir(base)
                continue
            try:
                meta = decode_metadata(path.read_bytes())
            except ValueError as exc:
                raise CorruptStorage(f"timeline metadata {path}: {exc}") from None
            if meta.name != entry:
                raise CorruptStorage(f"timeline metadata {path}: names timeline {meta.name!r}")
            metas[entry] = meta
        try:
            while len(repo._timelines) < len(metas):
                ready = [
                    m for n, m in metas.items()
                    if n not in repo._timelines and (m.ancestor is None or m.ancestor in repo._timelines)
                ]
                if not ready:
                    missing = sorted(n for n in metas if n not in repo._timelines)
                    raise CorruptStorage(f"repository {root}: timelines {missing} have missing ancestors")
                for meta in ready:
                    ancestor = None if meta.ancestor is None else repo._timelines[meta.ancestor]
                    timeline = Timeline(base / meta.name, meta, ancestor, repo.config)
                    repo._timelines[meta.name] = timeline
                    timeline._load_layers()
        except BaseException:
            repo.close()
            raise
        return repo

    def close(self) -> None:
        """Close layer files.  In-memory data is dropped: it is past disk_consistent_lsn."""
        for timeline in self._timelines.values():
            timeline.close()
        self._timelines.clear()

    def timeline(self, name: str) -> Timeline:
        """Raises UnknownTimeline (or BadTimelineName)."""
        check_name(name)
        try:
            return self._timelines[name]
        except KeyError:
            raise UnknownTimeline(f"no timeline {name!r}") from None

    def list(self) -> list[str]:
        return sorted(self._timelines)

    def children(self, name: str) -> list[Timeline]:
        return [t for t in self._timelines.values() if t.ancestor is not None and t.ancestor.name == name]

    def _create(self, meta: TimelineMetadata, ancestor: Timeline | None) -> Timeline:
        directory = self.root / TIMELINES_DIR / meta.name
        directory.mkdir()
        fsync_dir(directory.parent)
        write_file_atomic(directory / METADATA_NAME, encode_metadata(meta))
        timeline = Timeline(directory, meta, ancestor, self.config)
        self._timelines[meta.name] = timeline
        return timeline

    def _check_new(self, name: str) -> None:
        check_name(name)
        if name in self._timelines:
            raise TimelineExists(f"timeline {name!r} already exists")

    def create_timeline(
        self, name: str, start_lsn: int = 0, *, page_size: int = PAGE_SIZE, partition_pages: int | None = None
    ) -> Timeline:
        """A new, empty root timeline whose WAL starts at `start_lsn`.

        Raises:
            BadTimelineName, TimelineExists.
        """
        self._check_new(name)
        meta = TimelineMetadata(
            name=name, ancestor=None, ancestor_lsn=0, start_lsn=start_lsn, page_size=page_size,
            partition_pages=partition_pages or self.config.partition_pages,
            disk_consistent_lsn=start_lsn, gc_cutoff=start_lsn,
        )
        return self._create(meta, None)

    def create_branch(self, name: str, from_timeline: str, lsn: int) -> Timeline:
        """A child of `from_timeline` at `lsn`: writes its metadata only (O(1), copy-on-write).

        The child's WAL starts at `lsn`; its reads at or below `lsn` fall through to the parent,
        whose GC keeps `lsn` readable from now on.

        Raises:
            BadTimelineName, TimelineExists, UnknownTimeline.
            BranchAboveLastRecord: `lsn` is past the parent's ``last_record_lsn``.
            BranchBelowGcCutoff: `lsn` is below the parent's GC cutoff (or start).
        """
        self._check_new(name)
        parent = self.timeline(from_timeline)
        if lsn > parent.last_record_lsn:
            raise BranchAboveLastRecord(
                f"cannot branch {name!r} from {from_timeline!r} at {format_lsn(lsn)}: the parent has"
                f" ingested WAL only up to {format_lsn(parent.last_record_lsn)}"
            )
        if lsn < parent.gc_cutoff:
            raise BranchBelowGcCutoff(
                f"cannot branch {name!r} from {from_timeline!r} at {format_lsn(lsn)}: below the"
                f" parent's GC cutoff {format_lsn(parent.gc_cutoff)}, that history may be gone"
            )
        meta = TimelineMetadata(
            name=name, ancestor=parent.name, ancestor_lsn=lsn, start_lsn=lsn, page_size=parent.page_size,
            partition_pages=parent.partition_pages, disk_consistent_lsn=lsn, gc_cutoff=lsn,
        )
        return self._create(meta, parent)

    def gc(self, now: int) -> list[GcResult]:
        """GC every timeline, each keeping its children's branch points (rule 6)."""
        results = []
        for name in self.list():
            retain = [child.ancestor_lsn for child in self.children(name)]
            results.append(self._timelines[name].gc(now, retain))
        return results
