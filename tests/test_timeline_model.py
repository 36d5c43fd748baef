"""The reference model (STYLE.md §15): timelines against a plain dict.

A hypothesis rule-based state machine drives impl/timeline.py through random ingest (into
roots and branches), freeze, flush, compaction, GC with a window in bytes and in time,
branch creation (valid or refused), leases, restarts (reopen from disk, then re-ingest the
WAL past disk_consistent_lsn from the model's log, as the service re-streams it) and reads at
random (timeline, page, lsn).  The model is the obvious one: after every record, a snapshot of
the whole database as ``{page: bytes}`` with its size, so that
``model(timeline, page, lsn)`` is a dict lookup in the newest snapshot at or below ``lsn``
(for a branch, its first snapshot is its parent's at the branch point).

Every read inside the window (at or above the GC cutoff, or at a leased LSN) must equal the
model; every read below it must raise LsnBelowGcCutoff, never return a page; the GC cutoff
must be exactly ``max(old, min(last - pitr_bytes, lsn_at(now - pitr_seconds)))``, computed
here from the model, so GC can neither eat into the window nor idle.
"""

from __future__ import annotations

import bisect
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from impl.pagewal import PageDelta, PageImage, PageRecord, redo
from impl.timeline import (
    BranchAboveLastRecord,
    BranchBelowGcCutoff,
    LeaseBelowGcCutoff,
    LsnBelowGcCutoff,
    LsnNotIngested,
    PageBeyondEnd,
    Repository,
    TimelineConfig,
)

P = 512
MAX_PAGES = 9  # pages 0..8: three partitions of 4, plus the META key's
MAX_TIMELINES = 4
T0 = 1_700_000_000_000_000
S = 1_000_000

CONFIG = TimelineConfig(
    partition_pages=4,
    image_threshold=2,
    pitr_bytes=250,
    pitr_seconds=2,
    checkpoint_distance=300,
    checkpoint_timeout_us=4 * S,
)

# Bounded so that the whole file stays within CI's budget; derandomized so that a run is
# the same run everywhere.
MODEL_SETTINGS = settings(
    max_examples=100,
    stateful_step_count=70,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class _Snapshot:
    """The database after one record: its LSN, size, pages (a dict, never mutated) and time."""

    __slots__ = ("lsn", "db_size", "pages", "time")

    def __init__(self, lsn: int, db_size: int, pages: dict[int, bytes], time: int) -> None:
        self.lsn, self.db_size, self.pages, self.time = lsn, db_size, pages, time


class _ModelTimeline:
    def __init__(self, name: str, parent: str | None, start: _Snapshot) -> None:
        self.name = name
        self.parent = parent
        self.start_lsn = start.lsn
        self.snapshots = [start]  # [0] is inherited (or empty), then one per own record
        self.lsns = [start.lsn]
        self.wal: list[tuple[int, PageRecord]] = []
        self.gc_cutoff = start.lsn
        self.leases: dict[int, int] = {}

    @property
    def last(self) -> int:
        return self.lsns[-1]

    def at(self, lsn: int) -> _Snapshot:
        return self.snapshots[bisect.bisect_right(self.lsns, lsn) - 1]


class TimelineMachine(RuleBasedStateMachine):
    @initialize(count=st.integers(0, 20), data=st.data())
    def setup(self, count: int, data: st.DataObject) -> None:
        """A repository with "main" and a starting history, so that every run has layers."""
        self.root = Path(tempfile.mkdtemp(prefix="paxwal-model-"))
        self.repo = Repository.open(self.root, CONFIG)
        self.now = T0
        self.model: dict[str, _ModelTimeline] = {}
        self.order: list[str] = []  # creation order: parents before children
        self.repo.create_timeline("main", page_size=P)
        self._add(_ModelTimeline("main", None, _Snapshot(0, 0, {}, 0)))
        self.ingest(0, count, data)

    def teardown(self) -> None:
        if hasattr(self, "repo"):
            try:
                for name in self.order:
                    self._check_all(name)
            finally:
                self.repo.close()
                shutil.rmtree(self.root, ignore_errors=True)

    def _add(self, timeline: _ModelTimeline) -> None:
        self.model[timeline.name] = timeline
        self.order.append(timeline.name)

    def _pick(self, i: int) -> _ModelTimeline:
        return self.model[self.order[i % len(self.order)]]

    # -- the model's answers --------------------------------------------------------------------

    def _lsn_at(self, timeline: _ModelTimeline, time: int) -> int:
        """The newest record LSN with every commit up to it at or before `time`."""
        best = None
        latest = 0
        for snap in timeline.snapshots[1:]:
            latest = max(latest, snap.time)
            if latest > time:
                break
            best = snap.lsn
        if best is not None:
            return best
        if timeline.parent is None:
            return timeline.start_lsn
        return min(self._lsn_at(self.model[timeline.parent], time), timeline.start_lsn)

    def _readable(self, timeline: _ModelTimeline, lsn: int) -> bool:
        return lsn >= timeline.gc_cutoff or lsn in timeline.leases

    # -- rules ----------------------------------------------------------------------------------

    @rule(i=st.integers(0, 7), count=st.integers(1, 8), data=st.data())
    def ingest(self, i: int, count: int, data: st.DataObject) -> None:
        """A few records (several per step, so that runs reach GC-worthy histories)."""
        timeline = self._pick(i)
        impl = self.repo.timeline(timeline.name)
        for _ in range(count):
            self._ingest_one(timeline, data)
            # What the service does after each record: freeze by size or age, flush some time.
            impl.freeze_if_due(self.now)
            if data.draw(st.booleans(), "flush"):
                impl.flush()

    def _ingest_one(self, timeline: _ModelTimeline, data: st.DataObject) -> None:
        current = timeline.snapshots[-1]
        # Mostly growing, sometimes shrinking (a VACUUM), by up to three pages.
        low, high = max(0, current.db_size - 3), min(MAX_PAGES, current.db_size + 3)
        db_size = data.draw(st.integers(max(low, min(high, current.db_size)), high) | st.integers(low, high), "db_size")
        written = data.draw(st.sets(st.integers(0, max(0, db_size - 1)), max_size=3), "pages") if db_size else set()
        pages = {p: v for p, v in current.pages.items() if p < db_size}
        entries: list[PageImage | PageDelta] = []
        for page in sorted(written):
            if page in pages and data.draw(st.booleans(), "delta"):
                offset = data.draw(st.integers(0, P - 8), "offset")
                chunk = bytes(data.draw(st.lists(st.integers(1, 255), min_size=1, max_size=8), "bytes"))
                delta = PageDelta(page, ((offset, chunk),))
                entries.append(delta)
                pages[page] = redo(pages[page], [delta])
            else:
                image = bytes([data.draw(st.integers(0, 255), "fill")]) * (P // 2) + bytes([page]) * (P // 2)
                entries.append(PageImage(page, image))
                pages[page] = image
        self.now += data.draw(st.integers(0, 2 * S), "elapsed")
        lsn = timeline.last + data.draw(st.integers(1, 200), "length")
        record = PageRecord(P, db_size, self.now, tuple(entries))
        self.repo.timeline(timeline.name).ingest(lsn, record)
        timeline.wal.append((lsn, record))
        timeline.snapshots.append(_Snapshot(lsn, db_size, pages, self.now))
        timeline.lsns.append(lsn)

    @rule(i=st.integers(0, 7))
    def background(self, i: int) -> None:
        """The service's background loop: freeze when due, flush, compact where chains grew."""
        impl = self.repo.timeline(self._pick(i).name)
        impl.freeze_if_due(self.now)
        impl.flush()
        impl.compact()

    @rule(i=st.integers(0, 7))
    def checkpoint(self, i: int) -> None:
        self.repo.timeline(self._pick(i).name).checkpoint()

    @rule(i=st.integers(0, 7), force=st.booleans())
    def compact(self, i: int, force: bool) -> None:
        self.repo.timeline(self._pick(i).name).compact(force=force)

    @rule(elapsed=st.integers(0, 8 * S))
    def gc(self, elapsed: int) -> None:
        self.now += elapsed
        expected = {}
        for name in self.order:
            timeline = self.model[name]
            timeline.leases = {lsn: until for lsn, until in timeline.leases.items() if until > self.now}
            space = max(0, timeline.last - CONFIG.pitr_bytes)
            by_time = self._lsn_at(timeline, self.now - CONFIG.pitr_seconds * S)
            expected[name] = max(timeline.gc_cutoff, min(space, by_time))
        results = {result.timeline: result.gc_cutoff for result in self.repo.gc(self.now)}
        assert results == expected
        for name, cutoff in expected.items():
            self.model[name].gc_cutoff = cutoff

    @precondition(lambda self: len(self.order) < MAX_TIMELINES)
    @rule(i=st.integers(0, 7), data=st.data())
    def branch(self, i: int, data: st.DataObject) -> None:
        parent = self._pick(i)
        choices = st.sampled_from(parent.lsns) | st.integers(max(0, parent.start_lsn - 50), parent.last + 50)
        lsn = data.draw(choices, "branch lsn")
        name = f"b{len(self.order)}"
        if lsn > parent.last:
            with pytest.raises(BranchAboveLastRecord):
                self.repo.create_branch(name, parent.name, lsn)
        elif lsn < parent.gc_cutoff:
            with pytest.raises(BranchBelowGcCutoff):
                self.repo.create_branch(name, parent.name, lsn)
        else:
            self.repo.create_branch(name, parent.name, lsn)
            start = parent.at(lsn)
            self._add(_ModelTimeline(name, parent.name, _Snapshot(lsn, start.db_size, start.pages, start.time)))

    @rule(i=st.integers(0, 7), data=st.data(), duration=st.integers(1, 20 * S))
    def lease(self, i: int, data: st.DataObject, duration: int) -> None:
        timeline = self._pick(i)
        lsn = data.draw(st.sampled_from(timeline.lsns) | st.integers(timeline.start_lsn, timeline.last + 10), "lease lsn")
        until = self.now + duration
        impl = self.repo.timeline(timeline.name)
        if lsn > timeline.last:
            with pytest.raises(LsnNotIngested):
                impl.lease(lsn, until)
        elif lsn < timeline.gc_cutoff and lsn not in timeline.leases:
            with pytest.raises(LeaseBelowGcCutoff):
                impl.lease(lsn, until)
        else:
            impl.lease(lsn, until)
            timeline.leases[lsn] = max(until, timeline.leases.get(lsn, until))

    @rule()
    def restart(self) -> None:
        self.repo.close()
        self.repo = Repository.open(self.root, CONFIG)
        for name in self.order:  # parents first: a child's size at its start needs its parent
            impl = self.repo.timeline(name)
            assert impl.last_record_lsn == impl.disk_consistent_lsn
            for lsn, record in self.model[name].wal:
                if lsn > impl.last_record_lsn:
                    impl.ingest(lsn, record)

    @rule(i=st.integers(0, 7), page=st.integers(0, MAX_PAGES), data=st.data())
    def read(self, i: int, page: int, data: st.DataObject) -> None:
        timeline = self._pick(i)
        lsn = data.draw(st.sampled_from(timeline.lsns) | st.integers(max(0, timeline.start_lsn - 20), timeline.last + 20), "lsn")
        self._check_read(timeline, page, lsn)

    @rule(i=st.integers(0, 7))
    def read_everything(self, i: int) -> None:
        self._check_all(self._pick(i).name)

    # -- checks ---------------------------------------------------------------------------------

    def _check_read(self, timeline: _ModelTimeline, page: int, lsn: int) -> None:
        impl = self.repo.timeline(timeline.name)
        if lsn > timeline.last:
            with pytest.raises(LsnNotIngested):
                impl.get_page(page, lsn)
            return
        if not self._readable(timeline, lsn):
            with pytest.raises(LsnBelowGcCutoff):
                impl.get_page(page, lsn)
            with pytest.raises(LsnBelowGcCutoff):
                impl.db_size(lsn)
            return
        snap = timeline.at(lsn)
        assert impl.db_size(lsn) == snap.db_size
        if page >= snap.db_size:
            with pytest.raises(PageBeyondEnd):
                impl.get_page(page, lsn)
            return
        expected = snap.pages.get(page, bytes(P))
        assert impl.get_page(page, lsn) == expected, (timeline.name, page, lsn)

    def _check_all(self, name: str) -> None:
        """Every page at every record LSN of the timeline (and just below each), in the window
        or refused."""
        timeline = self.model[name]
        for lsn in sorted(set(timeline.lsns) | {x - 1 for x in timeline.lsns if x > 0} | set(timeline.leases)):
            for page in range(MAX_PAGES + 1):
                self._check_read(timeline, page, lsn)

    @invariant()
    def lsns_agree(self) -> None:
        if not hasattr(self, "repo"):
            return
        for name in self.order:
            impl, timeline = self.repo.timeline(name), self.model[name]
            assert impl.last_record_lsn == timeline.last
            assert timeline.start_lsn <= impl.gc_cutoff == timeline.gc_cutoff
            assert impl.disk_consistent_lsn <= impl.last_record_lsn
            assert impl.leases == timeline.leases


def test_timelines_against_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # The model restarts the process, not the machine: what fsync adds (durability across a
    # power cut) is not observable here, and without it the run is several times faster.
    # test_timeline.py covers crash leftovers (future layers, temp files) on real fsyncs.
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    run_state_machine_as_test(TimelineMachine, settings=MODEL_SETTINGS)
