"""Tests of impl/timeline.py: GetPage@LSN across open, frozen and historic layers and the
ancestor; record semantics (db_size, truncation, zeros); freeze/flush and the LSNs; restarts
and crash leftovers; compaction; branches (metadata only); each GC rule; leases; PITR by time;
every user error; what the uploader needs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from impl.layers import FileLayer, CorruptLayer, LayerName, layer_name, parse_layer_name
from impl.pagewal import PageDelta, PageImage, PageRecord
from impl.storage import CorruptStorage
from impl.timeline import (
    BadTimelineName,
    BranchAboveLastRecord,
    BranchBelowGcCutoff,
    IngestError,
    LeaseBelowGcCutoff,
    LsnBelowGcCutoff,
    LsnNotIngested,
    PageBeyondEnd,
    Repository,
    Timeline,
    TimelineConfig,
    TimelineExists,
    UnknownTimeline,
    decode_metadata,
)

P = 512
T0 = 1_700_000_000_000_000  # commit times: microseconds since the epoch
S = 1_000_000  # one second in microseconds
ZERO = bytes(P)

# Small partitions so that images and footprints are exercised; a window of nothing, so GC
# is limited by the rules under test alone; no automatic freezing.
CONFIG = TimelineConfig(
    partition_pages=4,
    image_threshold=2,
    pitr_bytes=0,
    pitr_seconds=0,
    checkpoint_distance=10**12,
    checkpoint_timeout_us=10**15,
)


def fill(n: int) -> bytes:
    return bytes([n % 251 + 1]) * P


def record(db_size: int, t: int = T0, images: dict[int, int] | None = None, deltas: dict[int, bytes] | None = None) -> PageRecord:
    """A record: `images` page -> fill byte, `deltas` page -> bytes written at offset 0."""
    entries: list[PageImage | PageDelta] = [PageImage(p, fill(n)) for p, n in (images or {}).items()]
    entries += [PageDelta(p, ((0, data),)) for p, data in (deltas or {}).items()]
    return PageRecord(P, db_size, t, tuple(sorted(entries, key=lambda e: e.page)))


def patched(page: bytes, data: bytes) -> bytes:
    return data + page[len(data) :]


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    repository = Repository.open(tmp_path / "repo", CONFIG)
    yield repository
    repository.close()


def reopen(repo: Repository, config: TimelineConfig = CONFIG) -> Repository:
    repo.close()
    return Repository.open(repo.root, config)


def main(repo: Repository) -> Timeline:
    return repo.create_timeline("main", page_size=P)


# ---------------------------------------------------------------------------------------------
# GetPage@LSN and record semantics
# ---------------------------------------------------------------------------------------------


def test_a_delta_chain_across_historic_frozen_and_open_layers(repo: Repository) -> None:
    tl = main(repo)
    tl.ingest(100, record(2, images={0: 1, 1: 2}))
    tl.ingest(200, record(2, deltas={0: b"a"}))
    tl.checkpoint()  # historic: [101, 201)
    tl.ingest(300, record(2, deltas={0: b"bb"}))
    tl.freeze()  # frozen, in memory
    tl.ingest(400, record(2, deltas={0: b"c"}))  # open
    assert tl.frozen_layers == 1 and len(tl.layer_files()) == 1
    expected = {
        100: fill(1),
        150: fill(1),
        200: patched(fill(1), b"a"),
        300: patched(fill(1), b"bb"),
        399: patched(fill(1), b"bb"),
        400: patched(fill(1), b"cb"),
    }
    for lsn, page in expected.items():
        assert tl.get_page(0, lsn) == page, lsn
        assert tl.get_page(1, lsn) == fill(2)
    tl.checkpoint()
    for lsn, page in expected.items():
        assert tl.get_page(0, lsn) == page, lsn


def test_a_record_is_seen_at_its_end_lsn_and_not_before(repo: Repository) -> None:
    tl = main(repo)
    tl.ingest(100, record(1, images={0: 1}))
    tl.ingest(200, record(1, images={0: 2}))
    assert tl.get_page(0, 199) == fill(1)
    assert tl.get_page(0, 200) == fill(2)
    with pytest.raises(LsnNotIngested, match=r"read at 0/C9, but only WAL up to 0/C8 is ingested") as info:
        tl.get_page(0, 201)
    assert (info.value.lsn, info.value.last_record_lsn) == (201, 200)
    with pytest.raises(PageBeyondEnd, match="page 0 at 0/63 is past the end of the database \\(0 pages\\)"):
        tl.get_page(0, 99)


def test_db_size_truncation_and_zeros(repo: Repository) -> None:
    tl = main(repo)
    tl.ingest(10, record(4, images={0: 1, 2: 2, 3: 3}))
    assert tl.get_page(1, 10) == ZERO  # below db_size, never written
    tl.ingest(20, record(2))  # shrink: pages 2 and 3 are gone
    tl.checkpoint()
    tl.ingest(30, record(5, images={4: 4}))  # grow again: 2 and 3 read as zeros

    def check(t: Timeline) -> None:
        assert [t.db_size(lsn) for lsn in (10, 19, 20, 30)] == [4, 4, 2, 5]
        assert t.get_page(2, 10) == fill(2)
        with pytest.raises(PageBeyondEnd):
            t.get_page(2, 20)
        assert t.get_page(2, 30) == ZERO
        assert t.get_page(3, 30) == ZERO
        assert t.get_page(4, 30) == fill(4)
        assert t.get_page(0, 30) == fill(1)

    check(tl)
    check(reopen_and_catch_up(repo, tl, [(30, record(5, images={4: 4}))]))


def reopen_and_catch_up(repo: Repository, tl: Timeline, wal: list[tuple[int, PageRecord]]) -> Timeline:
    """Restart the repository and re-ingest, as the service would, the WAL past disk_consistent_lsn."""
    reopened = reopen(repo)
    fresh = reopened.timeline(tl.name)
    for lsn, rec in wal:
        if lsn > fresh.last_record_lsn:
            fresh.ingest(lsn, rec)
    repo._timelines = reopened._timelines  # the fixture closes what the test ends with
    return fresh


def test_ingest_errors(repo: Repository) -> None:
    tl = main(repo)
    tl.ingest(10, record(1, images={0: 1}))
    with pytest.raises(IngestError, match="not after the last ingested record"):
        tl.ingest(10, record(1, images={0: 1}))
    with pytest.raises(IngestError, match="page size 4096"):
        tl.ingest(20, PageRecord(4096, 1, T0, (PageImage(0, bytes(4096)),)))


# ---------------------------------------------------------------------------------------------
# Freeze, flush, restart
# ---------------------------------------------------------------------------------------------


def test_freeze_by_distance_and_by_age(tmp_path: Path) -> None:
    config = attrs.evolve(CONFIG, checkpoint_distance=250, checkpoint_timeout_us=60 * S)
    repo = Repository.open(tmp_path, config)
    tl = repo.create_timeline("main", page_size=P)
    assert not tl.freeze_if_due(T0)  # nothing to freeze
    tl.ingest(100, record(1, t=T0, images={0: 1}))
    assert not tl.freeze_if_due(T0 + 59 * S)
    assert tl.freeze_if_due(T0 + 60 * S)  # by age of its first record
    tl.ingest(200, record(1, t=T0 + 61 * S, images={0: 2}))
    assert not tl.freeze_if_due(T0 + 62 * S)
    tl.ingest(350, record(1, t=T0 + 62 * S, images={0: 3}))  # spans [101, 351): 250 bytes
    assert tl.freeze_if_due(T0 + 62 * S)
    assert tl.flush() == 2 and tl.disk_consistent_lsn == 350
    repo.close()


def test_disk_consistent_lsn_and_restart(repo: Repository) -> None:
    tl = main(repo)
    wal = [(lsn, record(1, t=T0 + lsn, images={0: lsn})) for lsn in (10, 20, 30, 40)]
    for lsn, rec in wal[:2]:
        tl.ingest(lsn, rec)
    tl.checkpoint()
    for lsn, rec in wal[2:]:
        tl.ingest(lsn, rec)
    tl.freeze()  # frozen but not flushed: lost on restart
    assert (tl.last_record_lsn, tl.disk_consistent_lsn) == (40, 20)
    assert decode_metadata((tl.directory / "metadata").read_bytes()).disk_consistent_lsn == 20
    repo = reopen(repo)
    tl = repo.timeline("main")
    assert (tl.last_record_lsn, tl.disk_consistent_lsn) == (20, 20)
    assert tl.get_page(0, 20) == fill(20)
    with pytest.raises(LsnNotIngested):
        tl.get_page(0, 30)
    for lsn, rec in wal[2:]:
        tl.ingest(lsn, rec)
    assert tl.get_page(0, 40) == fill(40)
    assert tl.lsn_at(T0 + 25) == 20
    repo.close()


def test_restart_deletes_future_layers_and_temp_files(repo: Repository) -> None:
    tl = main(repo)
    tl.ingest(10, record(1, images={0: 1}))
    tl.checkpoint()
    tl.ingest(20, record(1, images={0: 2}))
    tl.freeze()
    # A flush that crashed after writing its layer file but before the metadata.
    original_store = Timeline._store
    Timeline._store = lambda self, meta: (_ for _ in ()).throw(OSError("crash"))  # type: ignore[assignment]
    try:
        with pytest.raises(OSError, match="crash"):
            tl.flush()
    finally:
        Timeline._store = original_store  # type: ignore[assignment]
    future = tl.directory / layer_name(LayerName(False, 0, 2**32, 11, 21))
    assert future.exists()
    (tl.directory / "junk.tmp").write_bytes(b"half")
    (repo.root / "timelines" / "half-created").mkdir()  # a creation that crashed
    repo = reopen(repo)
    tl = repo.timeline("main")
    assert not future.exists() and not (tl.directory / "junk.tmp").exists()
    assert repo.list() == ["main"]
    assert tl.last_record_lsn == 10 and tl.get_page(0, 10) == fill(1)
    tl.ingest(20, record(1, images={0: 2}))
    tl.checkpoint()
    assert tl.get_page(0, 20) == fill(2)
    repo.close()


def test_damaged_files_stop_the_open_with_the_file_named(repo: Repository) -> None:
    tl = main(repo)
    tl.ingest(10, record(1, images={0: 1}))
    tl.checkpoint()
    layer = tl.directory / tl.layer_files()[0].name
    repo.close()
    data = bytearray(layer.read_bytes())
    data[70] ^= 1  # in the index
    layer.write_bytes(bytes(data))
    with pytest.raises(CorruptLayer, match=f"layer file {layer}: index CRC mismatch"):
        Repository.open(repo.root, CONFIG)
    meta = tl.directory / "metadata"
    meta.write_bytes(meta.read_bytes()[:-1])
    with pytest.raises(CorruptStorage, match=f"timeline metadata {meta}: truncated"):
        Repository.open(repo.root, CONFIG)


# ---------------------------------------------------------------------------------------------
# Compaction
# ---------------------------------------------------------------------------------------------


def _count_layer_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    visited: list[str] = []
    original = FileLayer.versions

    def versions(self: FileLayer, key: int, upto: int, floor: int = -1) -> Iterator:
        visited.append(self.path.name)
        return original(self, key, upto, floor)

    monkeypatch.setattr(FileLayer, "versions", versions)
    return visited


def test_compaction_images_long_chains_and_bounds_reads(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    tl = main(repo)
    tl.ingest(10, record(8, images={p: p for p in range(8)}))
    tl.checkpoint()
    expected = {p: fill(p) for p in range(8)}
    for i in range(1, 6):  # page 1 changes in five layers; page 5 in one
        tl.ingest(10 + 10 * i, record(8, deltas={1: bytes([i]) * i}))
        tl.checkpoint()
        expected[1] = patched(expected[1], bytes([i]) * i)
    tl.ingest(70, record(8, deltas={5: b"x"}))
    tl.checkpoint()
    expected[5] = patched(expected[5], b"x")
    created = tl.compact()
    # Partition 0 (pages 0-3) has 7 delta layers over no image; partition 1 (4-7) has 2; and the
    # META key's partition is in every layer.
    assert sorted(created) == sorted(
        layer_name(LayerName(True, s, min(s + 4, 2**32), 70, 71)) for s in (0, 4, 2**32 - 4)
    )
    assert tl.compact(force=True) == []  # nothing above the new images
    visited = _count_layer_reads(monkeypatch)
    for p, page in expected.items():
        assert tl.get_page(p, 70) == page
    # Each read visits its partition's image only: no delta layer lies above it.
    assert all(parse_layer_name(name).image for name in visited)  # type: ignore[union-attr]
    assert len(visited) == 8
    # A cold partition is not slowed by flushes that never touch it: reading page 5 visits
    # its image alone, though five delta layers (of page 1) now lie above that image.
    for i in range(5):
        tl.ingest(71 + i, record(8, deltas={2: bytes([9 + i])}))
        tl.checkpoint()
    visited.clear()
    assert tl.get_page(5, 75) == expected[5]
    assert len(visited) == 1 and parse_layer_name(visited[0]).image  # type: ignore[union-attr]
    expected[2] = patched(expected[2], bytes([13]))
    assert tl.compact() and tl.get_page(2, 75) == expected[2]
    # Below the threshold: one more layer over the images creates nothing unless forced.
    tl.ingest(80, record(8, deltas={1: b"y"}))
    tl.checkpoint()
    assert tl.compact() == []
    assert len(tl.compact(force=True)) == 2  # partition 0 and META's
    assert tl.get_page(1, 80) == patched(expected[1], b"y")
    assert tl.get_page(2, 80) == expected[2]
    assert tl.get_page(1, 50) == patched(fill(1), b"\x04\x04\x04\x04")


def test_image_layers_keep_truncation(repo: Repository) -> None:
    tl = main(repo)
    tl.ingest(10, record(4, images={0: 1, 1: 1, 2: 2, 3: 3}))
    tl.ingest(20, record(1))
    tl.ingest(30, record(4))
    tl.checkpoint()
    tl.compact(force=True)
    tl.ingest(40, record(4, images={0: 9}))
    assert [tl.get_page(p, 40) for p in range(4)] == [fill(9), ZERO, ZERO, ZERO]
    assert tl.db_size(35) == 4


# ---------------------------------------------------------------------------------------------
# Branches
# ---------------------------------------------------------------------------------------------


def test_branch_reads_fall_through_to_the_ancestor(repo: Repository) -> None:
    tl = main(repo)
    tl.ingest(10, record(3, images={0: 1, 1: 1, 2: 1}))
    tl.checkpoint()
    tl.ingest(20, record(3, deltas={0: b"p"}))  # in the parent's open layer
    child = repo.create_branch("child", "main", 20)
    tl.ingest(30, record(3, images={1: 3}))  # after the branch point: not the child's
    child.ingest(25, record(2, deltas={0: b"cc"}))  # the child's own WAL starts at 20
    assert child.get_page(0, 20) == patched(fill(1), b"p")
    assert child.get_page(0, 25) == patched(fill(1), b"cc")
    assert child.get_page(1, 25) == fill(1)
    assert tl.get_page(1, 30) == fill(3)
    assert tl.get_page(2, 30) == fill(1)
    with pytest.raises(PageBeyondEnd):
        child.get_page(2, 25)
    assert (child.db_size(20), child.db_size(25)) == (3, 2)
    with pytest.raises(LsnBelowGcCutoff, match="before the timeline's start 0/14"):
        child.get_page(0, 10)
    # A branch of the branch, and after a restart (the parent re-ingests first).
    grandchild = repo.create_branch("grandchild", "child", 25)
    assert grandchild.get_page(0, 25) == patched(fill(1), b"cc")
    repo = reopen(repo)
    with pytest.raises(LsnNotIngested, match="timeline 'child': branch point at 0/19, but only WAL up to 0/14"):
        repo.timeline("grandchild").get_page(0, 25)
    repo.timeline("main").ingest(20, record(3, deltas={0: b"p"}))
    repo.timeline("child").ingest(25, record(2, deltas={0: b"cc"}))
    assert repo.timeline("grandchild").get_page(0, 25) == patched(fill(1), b"cc")
    assert repo.list() == ["child", "grandchild", "main"]
    repo.close()


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for directory, _, files in os.walk(root):
        for name in files:
            stat = (Path(directory) / name).stat()
            out[os.path.relpath(Path(directory) / name, root)] = (stat.st_size, stat.st_mtime_ns)
    return out


@pytest.mark.parametrize("layers", [1, 40])
def test_branch_creation_writes_metadata_only(tmp_path: Path, layers: int) -> None:
    """O(1): the files a branch writes are the same, and as large, whatever the parent holds."""
    repo = Repository.open(tmp_path, CONFIG)
    tl = repo.create_timeline("main", page_size=P)
    for i in range(layers):
        tl.ingest(10 * (i + 1), record(16, images={p: i for p in range(16)}))
        tl.checkpoint()
    before = _snapshot(tmp_path)
    repo.create_branch("child", "main", tl.last_record_lsn)
    after = _snapshot(tmp_path)
    changed = {name: after[name] for name in after if before.get(name) != after[name]}
    assert list(changed) == [os.path.join("timelines", "child", "metadata")]
    assert changed[os.path.join("timelines", "child", "metadata")][0] < 200
    assert all(name in after for name in before)
    repo.close()


def test_branch_errors(repo: Repository) -> None:
    tl = main(repo)
    tl.ingest(10, record(1, images={0: 1}))
    tl.ingest(20, record(1, images={0: 2}))
    tl.checkpoint()
    tl.compact(force=True)
    with pytest.raises(BranchAboveLastRecord, match="cannot branch 'b' from 'main' at 0/15: the parent"):
        repo.create_branch("b", "main", 21)
    repo.gc(T0)  # window 0: the cutoff moves to last_record_lsn
    assert tl.gc_cutoff == 20
    with pytest.raises(BranchBelowGcCutoff, match="below the parent's GC cutoff 0/14"):
        repo.create_branch("b", "main", 19)
    with pytest.raises(UnknownTimeline, match="no timeline 'nope'"):
        repo.create_branch("b", "nope", 1)
    with pytest.raises(BadTimelineName):
        repo.create_branch("../x", "main", 20)
    with pytest.raises(BadTimelineName):
        repo.timeline("")
    repo.create_branch("b", "main", 20)
    with pytest.raises(TimelineExists):
        repo.create_branch("b", "main", 20)
    with pytest.raises(TimelineExists):
        repo.create_timeline("main")


# ---------------------------------------------------------------------------------------------
# GC, rule by rule
# ---------------------------------------------------------------------------------------------


def _history(tl: Timeline, n: int, step: int = S, *, images: bool = False, first: int = 1) -> None:
    """Records at LSNs 100 * first ... 100 * n, committed `step` apart; page 0 = fill(i); a
    delta layer each, and image layers at each LSN too if `images`."""
    for i in range(first, n + 1):
        tl.ingest(100 * i, record(1, t=T0 + i * step, deltas={0: bytes([i])}) if i > 1 else record(1, t=T0 + step, images={0: 1}))
        tl.checkpoint()
        if images:
            tl.compact(force=True)


def value(i: int) -> bytes:
    """Page 0 after record i of `_history`."""
    return patched(fill(1), bytes([i])) if i > 1 else fill(1)


def _images(tl: Timeline) -> list[int]:
    names = [parse_layer_name(info.name) for info in tl.layer_files()]
    return sorted({n.lsn for n in names if n is not None and n.image})


def _deltas(tl: Timeline) -> list[tuple[int, int]]:
    names = [parse_layer_name(info.name) for info in tl.layer_files()]
    return sorted((n.lsn_start, n.lsn_end) for n in names if n is not None and not n.image)


def test_gc_deletes_only_what_newer_images_cover(repo: Repository) -> None:
    tl = main(repo)
    _history(tl, 4)
    result = repo.gc(T0 + 100 * S)[0]
    assert result.gc_cutoff == 400 and result.removed == ()  # no images: nothing covered
    assert len(_deltas(tl)) == 4
    tl.compact(force=True)  # images at 400
    removed = repo.gc(T0 + 100 * S)[0].removed
    # Even [301, 401): the image at 400 holds all it says for reads at 400 and above.
    assert _deltas(tl) == [] and len(removed) == 4
    assert tl.get_page(0, 400) == value(4)
    with pytest.raises(LsnBelowGcCutoff, match="below its GC cutoff 0/190: that history is gone"):
        tl.get_page(0, 399)


def test_gc_window_by_bytes(tmp_path: Path) -> None:
    repo = Repository.open(tmp_path, attrs.evolve(CONFIG, pitr_bytes=250))
    tl = repo.create_timeline("main", page_size=P)
    _history(tl, 5, images=True)
    assert repo.gc(T0 + 100 * S)[0].gc_cutoff == 250  # 500 - 250
    assert [tl.get_page(0, lsn) for lsn in (250, 300, 500)] == [value(2), value(3), value(5)]
    # Layers holding versions above 250 stay; the image at 200 covers those below, and is
    # itself the newest image at or below the cutoff.
    assert _deltas(tl) == [(201, 301), (301, 401), (401, 501)]
    assert _images(tl) == [200, 300, 400, 500]
    repo.close()


def test_gc_window_by_time(tmp_path: Path) -> None:
    repo = Repository.open(tmp_path, attrs.evolve(CONFIG, pitr_seconds=10))
    tl = repo.create_timeline("main", page_size=P)
    _history(tl, 5, step=5 * S, images=True)  # commits at T0 + 5, 10, 15, 20, 25 s
    # now = T0 + 22 s: keep every LSN committed at or after T0 + 12 s; the state at 12 s is LSN 200.
    assert tl.lsn_at(T0 + 12 * S) == 200
    assert repo.gc(T0 + 22 * S)[0].gc_cutoff == 200
    assert tl.get_page(0, 200) == value(2)
    assert _deltas(tl) == [(201, 301), (301, 401), (401, 501)]
    # Time passes: the window slides.
    assert repo.gc(T0 + 34 * S)[0].gc_cutoff == 400
    assert _deltas(tl) == [(401, 501)]
    assert tl.lsn_at(T0) == 0 and tl.lsn_at(T0 + 100 * S) == 500
    repo.close()


def test_gc_keeps_branch_points(repo: Repository) -> None:
    tl = main(repo)
    _history(tl, 3)
    repo.create_branch("child", "main", 150)  # inside the second layer
    _history(tl, 6, first=4)
    tl.compact(force=True)
    repo.gc(T0 + 100 * S)
    assert tl.gc_cutoff == 600
    assert repo.timeline("child").get_page(0, 150) == value(1)
    # [1, 101) and [101, 201) hold what reads at 150 need; everything above is imaged at 600.
    assert _deltas(tl) == [(1, 101), (101, 201)]
    repo.timeline("child").ingest(160, record(1, images={0: 77}))
    assert repo.timeline("child").get_page(0, 160) == fill(77)
    assert repo.timeline("child").get_page(0, 150) == value(1)


def test_gc_images_below_a_branch_point_shadow_older_layers(repo: Repository) -> None:
    """Unlike Neon's rule (keep every layer starting at or below a retain LSN), a layer an
    image between it and the branch point shadows goes."""
    tl = main(repo)
    _history(tl, 3, images=True)
    repo.create_branch("child", "main", 250)
    _history(tl, 5, first=4, images=True)
    repo.gc(T0 + 100 * S)
    assert tl.gc_cutoff == 500
    # Reads at 250 need the image at 200 and the versions in (200, 250]: [201, 301).
    assert _deltas(tl) == [(201, 301)]
    assert _images(tl) == [200, 500]
    assert repo.timeline("child").get_page(0, 250) == value(2)
    assert repo.timeline("child").db_size(250) == 1


def test_gc_keeps_leased_lsns_until_they_expire(repo: Repository) -> None:
    tl = main(repo)
    _history(tl, 2)
    tl.lease(100, until=T0 + 50 * S)
    _history(tl, 4, first=3)
    tl.compact(force=True)
    repo.gc(T0 + 10 * S)
    assert tl.gc_cutoff == 400 and tl.leases == {100: T0 + 50 * S}
    assert tl.get_page(0, 100) == value(1)  # leased: readable below the cutoff
    with pytest.raises(LsnBelowGcCutoff):
        tl.get_page(0, 200)
    assert _deltas(tl) == [(1, 101)]
    repo = reopen(repo)  # leases are persisted
    tl = repo.timeline("main")
    assert tl.get_page(0, 100) == value(1)
    repo.gc(T0 + 50 * S)  # expired
    assert tl.leases == {}
    assert _deltas(tl) == []
    with pytest.raises(LsnBelowGcCutoff):
        tl.get_page(0, 100)
    with pytest.raises(LeaseBelowGcCutoff, match="lease at 0/64 is below the GC cutoff 0/190"):
        tl.lease(100, until=T0 + 100 * S)
    with pytest.raises(LsnNotIngested):
        tl.lease(401, until=T0 + 100 * S)
    repo.close()


def test_gc_cutoff_only_moves_forward(tmp_path: Path) -> None:
    repo = Repository.open(tmp_path, attrs.evolve(CONFIG, pitr_bytes=100))
    tl = repo.create_timeline("main", page_size=P)
    _history(tl, 4)
    assert repo.gc(T0 + 100 * S)[0].gc_cutoff == 300
    repo.close()
    repo = Repository.open(tmp_path, attrs.evolve(CONFIG, pitr_bytes=10**9))  # a wider window
    assert repo.gc(T0 + 100 * S)[0].gc_cutoff == 300
    assert repo.timeline("main").gc_cutoff == 300
    repo.close()


# ---------------------------------------------------------------------------------------------
# What the uploader needs (issue 8 §4)
# ---------------------------------------------------------------------------------------------


def test_rebuild_from_layer_files_and_metadata(repo: Repository, tmp_path: Path) -> None:
    tl = main(repo)
    _history(tl, 3)
    tl.compact(force=True)
    child = repo.create_branch("child", "main", 200)
    child.ingest(250, record(2, images={1: 9}))
    child.checkpoint()
    # "Upload": the layer files listed and the metadata bytes; "download" into a fresh root.
    fresh = tmp_path / "downloaded"
    for timeline in (tl, child):
        target = fresh / "timelines" / timeline.name
        target.mkdir(parents=True)
        (target / "metadata").write_bytes(timeline.metadata_bytes())
        for info in timeline.layer_files():
            shutil.copyfile(timeline.directory / info.name, target / info.name)
            assert (target / info.name).stat().st_size == info.size
    rebuilt = Repository.open(fresh, CONFIG)
    assert rebuilt.timeline("main").get_page(0, 300) == value(3)
    assert rebuilt.timeline("child").get_page(0, 250) == value(2)
    assert rebuilt.timeline("child").get_page(1, 250) == fill(9)
    rebuilt.close()
