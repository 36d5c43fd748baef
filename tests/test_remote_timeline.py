"""Tests of impl/remote_timeline.py, each against ``LocalFs`` (in tmp_path) and ``S3`` (the
session's ``weed mini``, tests/s3server.py, each test under a key prefix of its own).

Every store the uploader touches is wrapped in `Recorder`, which logs each operation, can
"crash the process" before the N-th one, and checks after every change the invariant the
design rests on (spec/Horizons.tla ``IndexNamesExistingLayers``): the newest index of each
timeline names only objects that exist.  Tests: a wiped pageserver restores the same page
bytes at every LSN it served (and re-ingests WAL above remote_consistent_lsn); the order of
operations (layers, index, validation, deletions); a crash before every single operation of
a sync; generations (a zombie's sync fails and never overwrites the newer index, also when
it loses the race inside a sync); branches; damaged and missing objects; the codec.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from impl import remote_timeline
from impl.layers import parse_layer_name
from impl.pagewal import PageDelta, PageImage, PageRecord
from impl.remote import ObjectInfo, RemoteStorage
from impl.remote_timeline import (
    INDEX_NAME,
    CorruptRemote,
    IndexPart,
    LayerEntry,
    NotAttached,
    RemoteAhead,
    RemoteRepository,
    RemoteTimelineError,
    Superseded,
    decode_index,
    encode_index,
)
from impl.timeline import LsnBelowGcCutoff, Repository, Timeline, TimelineConfig, TimelineMetadata

P = 512
T0 = 1_700_000_000_000_000
S = 1_000_000
STEP = 100  # LSN bytes per record
FAR = T0 + 10**6 * S  # GC's "now": the time window never holds anything back
# Small partitions and an eager image threshold, so compaction and GC delete layers; the
# PITR window keeps the last 8 records; no automatic freezing.
CONFIG = TimelineConfig(
    partition_pages=4,
    image_threshold=2,
    pitr_bytes=8 * STEP,
    pitr_seconds=0,
    checkpoint_distance=10**12,
    checkpoint_timeout_us=10**15,
)
# Every test is bounded (no pytest-timeout here): SIGALRM raises in the test's thread.
TEST_SECONDS = 40


@pytest.fixture(autouse=True)
def bounded() -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"test ran over {TEST_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, TEST_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)






# ---------------------------------------------------------------------------------------------
# The recording store
# ---------------------------------------------------------------------------------------------


class Crash(Exception):
    """The process "dies" before an operation: nothing of it reaches the store."""


class Recorder:
    """A RemoteStorage that logs ``(op, key)``, may crash before op number `crash_at`, runs
    `before(op, key)` hooks, and keeps a shadow of the store to check after each change that
    the newest index of every timeline names only existing objects."""

    def __init__(self, inner: RemoteStorage, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix
        self.ops: list[tuple[str, str]] = []
        self.crash_at: int | None = None
        self.before: Callable[[str, str], None] | None = None
        self.shadow: dict[str, bytes] = {}

    def _op(self, op: str, key: str) -> None:
        if self.crash_at is not None and len(self.ops) >= self.crash_at:
            raise Crash(f"crash before {op} {key}")
        self.ops.append((op, key))
        if self.before is not None:
            self.before(op, key)

    def _changed(self) -> None:
        newest: dict[str, tuple[int, str]] = {}
        for key in self.shadow:
            parts = key.split("/")
            if len(parts) == 4 and parts[3].startswith(INDEX_NAME + "-"):
                generation = int(parts[3].rpartition("-")[2], 16)
                if generation > newest.get(parts[2], (0, ""))[0]:
                    newest[parts[2]] = (generation, key)
        for timeline, (_, key) in newest.items():
            index = decode_index(self.shadow[key])
            for entry in index.layers:
                layer = f"{self.prefix}/timelines/{timeline}/{entry.name}-{entry.generation:08x}"
                assert layer in self.shadow, f"the newest index {key} names {layer}, which is gone"

    def put(self, key: str, data: bytes) -> None:
        self._op("put", key)
        self.inner.put(key, data)
        self.shadow[key] = data
        self._changed()

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self._op("put_if_absent", key)
        done = self.inner.put_if_absent(key, data)
        if done:
            self.shadow[key] = data
        return done

    def put_if_match(self, key: str, data: bytes, etag: str) -> bool:
        self._op("put_if_match", key)
        done = self.inner.put_if_match(key, data, etag)
        if done:
            self.shadow[key] = data
        return done

    def delete(self, key: str) -> None:
        self._op("delete", key)
        self.inner.delete(key)
        self.shadow.pop(key, None)
        self._changed()

    def get(self, key: str) -> bytes:
        self._op("get", key)
        return self.inner.get(key)

    def get_range(self, key: str, start: int, end: int) -> bytes:
        self._op("get_range", key)
        return self.inner.get_range(key, start, end)

    def stat(self, key: str) -> ObjectInfo | None:
        self._op("stat", key)
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> list[str]:
        self._op("list", prefix)
        return self.inner.list(prefix)


def fresh(store: RemoteStorage) -> Recorder:
    return Recorder(store, f"ps-{uuid.uuid4().hex[:8]}")


def named_keys(prefix: str, index: IndexPart) -> set[str]:
    base = f"{prefix}/timelines/{index.timeline}/"
    return {f"{base}{INDEX_NAME}-{index.generation:08x}"} | {
        f"{base}{e.name}-{e.generation:08x}" for e in index.layers
    }


# ---------------------------------------------------------------------------------------------
# A workload: random records over a dozen pages
# ---------------------------------------------------------------------------------------------


class Workload:
    """Deterministic records: images, deltas of pages that have a version, growth, shrinks.
    Keeps every record (the WAL the acceptors would hold) and the LSNs it wrote."""

    def __init__(self, seed: int, start_lsn: int = 0, db_size: int = 0, have: set[int] | None = None) -> None:
        self.rng = random.Random(seed)
        self.lsn = start_lsn
        self.db_size = db_size
        self.have = set(have or ())
        self.records: list[tuple[int, PageRecord]] = []

    def step(self, timeline: Timeline, n: int) -> None:
        rng = self.rng
        for _ in range(n):
            size = max(1, min(12, self.db_size + rng.choice((0, 0, 1, 2, -1))))
            self.have = {p for p in self.have if p < size}
            entries: list[PageImage | PageDelta] = []
            for page in sorted(rng.sample(range(size), min(size, rng.randint(1, 3)))):
                if page in self.have and rng.random() < 0.7:
                    offset = rng.randrange(P - 16)
                    entries.append(PageDelta(page, ((offset, rng.randbytes(rng.randint(1, 16))),)))
                else:
                    entries.append(PageImage(page, rng.randbytes(P)))
                    self.have.add(page)
            self.lsn += STEP
            record = PageRecord(P, size, T0 + self.lsn, tuple(entries))
            self.records.append((self.lsn, record))
            self.db_size = size
            timeline.ingest(self.lsn, record)

    @property
    def lsns(self) -> list[int]:
        return [lsn for lsn, _ in self.records]


def read_all(timeline: Timeline, lsns: list[int]) -> dict[int, tuple[bytes, ...]]:
    """Every page at each LSN the timeline can serve (below its GC cutoff: skipped)."""
    out = {}
    for lsn in lsns:
        if lsn > timeline.last_record_lsn:
            continue
        try:
            size = timeline.db_size(lsn)
        except LsnBelowGcCutoff:
            continue
        out[lsn] = tuple(timeline.get_page(page, lsn) for page in range(size))
    return out


def restore(store: RemoteStorage, prefix: str, root: Path) -> tuple[RemoteRepository, Repository]:
    """A new pageserver process whose disk was wiped: attach, download everything, open."""
    shutil.rmtree(root, ignore_errors=True)
    remote = RemoteRepository(store, prefix)
    remote.attach()
    remote.download(root)
    return remote, Repository.open(root, CONFIG)


def round_of_work(repo: Repository, tl: Timeline, w: Workload, n: int) -> None:
    w.step(tl, n)
    tl.checkpoint()
    tl.compact()


# ---------------------------------------------------------------------------------------------
# Restore from object storage alone
# ---------------------------------------------------------------------------------------------


def test_a_wiped_pageserver_serves_the_same_pages_from_object_storage(store: RemoteStorage, tmp_path: Path) -> None:
    rec = fresh(store)
    remote = RemoteRepository(rec, rec.prefix)
    assert remote.attach() == 1
    repo = Repository.open(tmp_path / "ps", CONFIG)
    tl = repo.create_timeline("main", page_size=P)
    w = Workload(1)
    reference: dict[int, tuple[bytes, ...]] = {}
    removed = 0
    for _ in range(4):
        round_of_work(repo, tl, w, 6)
        reference.update(read_all(tl, w.lsns))
        removed += len(repo.gc(FAR)[0].removed)
        assert remote.sync(repo) == {"main": tl.disk_consistent_lsn}
    assert removed > 0, "GC deleted nothing: the test would not exercise remote deletion"
    # Records past the last sync: only the acceptors hold them (above remote_consistent_lsn).
    w.step(tl, 5)
    tl.freeze()
    tl.flush()
    reference.update(read_all(tl, w.lsns))
    rcl, cutoff = remote.remote_consistent_lsn("main"), tl.gc_cutoff
    assert rcl is not None and rcl < tl.last_record_lsn
    repo.close()

    remote2, repo2 = restore(rec, rec.prefix, tmp_path / "ps")
    assert remote2.generation == 2
    tl2 = repo2.timeline("main")
    assert (tl2.disk_consistent_lsn, tl2.last_record_lsn, tl2.gc_cutoff) == (rcl, rcl, cutoff)
    served = [lsn for lsn in w.lsns if cutoff <= lsn <= rcl]
    assert len(served) >= 8
    assert read_all(tl2, served) == {lsn: reference[lsn] for lsn in served}
    # The WAL above remote_consistent_lsn re-streams from the acceptors: then every LSN.
    for lsn, record in w.records:
        if lsn > rcl:
            tl2.ingest(lsn, record)
    every = [lsn for lsn in w.lsns if lsn >= cutoff]
    assert read_all(tl2, every) == {lsn: reference[lsn] for lsn in every}
    # The new generation's first sync writes its own index and cleans the old generation's.
    tl2.checkpoint()
    assert remote2.sync(repo2) == {"main": w.lsn}
    index = remote2.newest_index("main")
    assert index is not None and index.generation == 2
    assert set(rec.list(f"{rec.prefix}/timelines/")) == named_keys(rec.prefix, index)
    repo2.close()


def test_restart_with_its_disk_reuses_uploaded_layers(store: RemoteStorage, tmp_path: Path) -> None:
    rec = fresh(store)
    remote = RemoteRepository(rec, rec.prefix)
    remote.attach()
    repo = Repository.open(tmp_path / "ps", CONFIG)
    tl = repo.create_timeline("main", page_size=P)
    round_of_work(repo, tl, Workload(2), 10)
    remote.sync(repo)
    repo.close()
    # A restart that kept its disk: new generation, local files; nothing is uploaded again.
    repo = Repository.open(tmp_path / "ps", CONFIG)
    remote = RemoteRepository(rec, rec.prefix)
    assert remote.attach() == 2
    start = len(rec.ops)
    assert remote.sync(repo) == {"main": repo.timeline("main").disk_consistent_lsn}
    puts = [key for op, key in rec.ops[start:] if op == "put"]
    assert puts == [f"{rec.prefix}/timelines/main/{INDEX_NAME}-00000002"]
    deletes = [key for op, key in rec.ops[start:] if op == "delete"]
    assert deletes == [f"{rec.prefix}/timelines/main/{INDEX_NAME}-00000001"]
    index = remote.newest_index("main")
    assert index is not None and {e.generation for e in index.layers} == {1}
    repo.close()


# ---------------------------------------------------------------------------------------------
# Ordering: layers, index, validation, deletions
# ---------------------------------------------------------------------------------------------


def test_layers_before_index_and_deletions_after_an_index_without_them(store: RemoteStorage, tmp_path: Path) -> None:
    rec = fresh(store)
    remote = RemoteRepository(rec, rec.prefix)
    remote.attach()
    repo = Repository.open(tmp_path / "ps", CONFIG)
    tl = repo.create_timeline("main", page_size=P)
    w = Workload(3)
    generation_key = f"{rec.prefix}/generation"
    deleted_layers = 0
    indexed: set[str] = set()
    for _ in range(4):
        round_of_work(repo, tl, w, 6)
        gone = set(repo.gc(FAR)[0].removed)
        start = len(rec.ops)
        remote.sync(repo)
        ops = rec.ops[start:]
        index_at = [i for i, (op, key) in enumerate(ops) if op == "put" and INDEX_NAME in key]
        assert len(index_at) == 1
        i = index_at[0]
        index = remote.newest_index("main")
        assert index is not None
        # Every layer put comes before the index put; the index names every local layer.
        assert all(i > n for n, (op, key) in enumerate(ops) if op == "put" and INDEX_NAME not in key)
        assert {e.name for e in index.layers} == {info.name for info in tl.layer_files()}
        # The generation is checked first and again after the index, before any deletion.
        assert ops[0] == ("get", generation_key)
        assert ("get", generation_key) in ops[i + 1 :]
        validation = i + 1 + ops[i + 1 :].index(("get", generation_key))
        deletes = [(n, key) for n, (op, key) in enumerate(ops) if op == "delete"]
        assert all(n > validation for n, _ in deletes)
        # Exactly the layers GC removed that an earlier index named leave the store (those
        # never uploaded have nothing to delete), and none the new index names.
        deleted = {key.rpartition("/")[2].rpartition("-")[0] for _, key in deletes}
        assert deleted == gone & indexed and not deleted & {e.name for e in index.layers}
        indexed = {e.name for e in index.layers}
        deleted_layers += len(deleted)
    assert deleted_layers > 0
    # Nothing new: a sync is a generation check and nothing else.
    start = len(rec.ops)
    remote.sync(repo)
    assert rec.ops[start:] == [("get", generation_key)]
    repo.close()


def test_gc_between_prepare_and_upload_is_harmless(store: RemoteStorage, tmp_path: Path) -> None:
    rec = fresh(store)
    remote = RemoteRepository(rec, rec.prefix)
    remote.attach()
    repo = Repository.open(tmp_path / "ps", CONFIG)
    tl = repo.create_timeline("main", page_size=P)
    w = Workload(4)
    for _ in range(4):
        round_of_work(repo, tl, w, 6)
    uploader = remote.timeline("main")
    local_files = {i.name for i in tl.layer_files()}
    snapshot = uploader.prepare(tl)  # on the service's task; the upload runs in a thread
    assert repo.gc(FAR)[0].removed  # meanwhile GC deletes local files the snapshot lists
    assert uploader.upload(snapshot) == tl.disk_consistent_lsn
    assert uploader.sync(tl) == tl.disk_consistent_lsn  # the next sync drops them remotely
    repo.close()
    _, repo2 = restore(rec, rec.prefix, tmp_path / "ps")
    restored = {i.name for i in repo2.timeline("main").layer_files()}
    assert restored == {i.name for i in tl.layer_files()} and restored < local_files
    repo2.close()


# ---------------------------------------------------------------------------------------------
# A crash before every operation of a sync
# ---------------------------------------------------------------------------------------------


def _crash_run(store: RemoteStorage, tmp_path: Path, crash_at: int | None) -> tuple[Recorder, int, int]:
    """Sync once, do more work and GC, then sync again with a crash before op `crash_at` of
    that sync (None: no crash); restore into a wiped directory and check the pages.

    Returns:
        The recorder, the ops the second sync ran (before the crash), the restored rcl.
    """
    rec = fresh(store)
    root = tmp_path / rec.prefix
    remote = RemoteRepository(rec, rec.prefix)
    remote.attach()
    repo = Repository.open(root, CONFIG)
    tl = repo.create_timeline("main", page_size=P)
    w = Workload(5)
    round_of_work(repo, tl, w, 8)
    tl.compact(force=True)
    rcl1 = remote.sync(repo)["main"]
    round_of_work(repo, tl, w, 8)
    tl.compact(force=True)
    reference = read_all(tl, w.lsns)
    assert repo.gc(FAR)[0].removed
    start = len(rec.ops)
    rec.crash_at = None if crash_at is None else start + crash_at
    try:
        rcl2 = remote.sync(repo)["main"]
    except Crash:
        rcl2 = None
    ran = len(rec.ops) - start
    rec.crash_at = None
    repo.close()
    # The next process, from object storage alone.
    remote2, repo2 = restore(rec, rec.prefix, root)
    tl2 = repo2.timeline("main")
    rcl = tl2.disk_consistent_lsn
    assert rcl in (rcl1, tl.disk_consistent_lsn) and (rcl2 is None or rcl == rcl2)
    served = [lsn for lsn in w.lsns if tl2.gc_cutoff <= lsn <= rcl]
    assert served and read_all(tl2, served) == {lsn: reference[lsn] for lsn in served}
    # Its first sync removes whatever the crash left behind.
    remote2.sync(repo2)
    index = remote2.newest_index("main")
    assert index is not None
    assert set(rec.list(f"{rec.prefix}/timelines/")) == named_keys(rec.prefix, index)
    repo2.close()
    return rec, ran, rcl


def test_a_crash_before_any_operation_of_a_sync_leaves_a_consistent_store(store: RemoteStorage, tmp_path: Path) -> None:
    _, total, rcl_full = _crash_run(store, tmp_path, None)
    assert total >= 6  # two validations, layer puts, the index, deletions
    outcomes = set()
    for crash_at in range(total):
        _, ran, rcl = _crash_run(store, tmp_path, crash_at)
        assert ran == crash_at
        outcomes.add(rcl)
    assert len(outcomes) == 2 and rcl_full in outcomes  # old index before the put, new after


# ---------------------------------------------------------------------------------------------
# Generations
# ---------------------------------------------------------------------------------------------


def test_attach_takes_distinct_generations_under_concurrency(store: RemoteStorage) -> None:
    prefix = f"ps-{uuid.uuid4().hex[:8]}"
    got: list[int] = []
    errors: list[BaseException] = []

    def attach() -> None:
        try:
            got.append(RemoteRepository(store, prefix).attach())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=attach) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not errors and sorted(got) == [1, 2, 3, 4, 5]
    assert RemoteRepository(store, prefix).current_generation() == 5


def test_a_stale_pageserver_stops_and_never_overwrites_the_newer_index(store: RemoteStorage, tmp_path: Path) -> None:
    rec = fresh(store)
    old = RemoteRepository(rec, rec.prefix)
    with pytest.raises(NotAttached):
        old.validate()
    assert old.attach() == 1
    repo_a = Repository.open(tmp_path / "a", CONFIG)
    tl_a = repo_a.create_timeline("main", page_size=P)
    w = Workload(6)
    round_of_work(repo_a, tl_a, w, 8)
    old.sync(repo_a)
    # A new pageserver attaches (the old one is a zombie: partitioned, not dead).
    new, repo_b = restore(rec, rec.prefix, tmp_path / "b")
    assert new.generation == 2
    tl_b = repo_b.timeline("main")
    w_b = Workload(60, start_lsn=w.lsn, db_size=w.db_size, have=w.have)
    round_of_work(repo_b, tl_b, w_b, 4)
    new.sync(repo_b)
    new_key = f"{rec.prefix}/timelines/main/{INDEX_NAME}-00000002"
    new_index = rec.get(new_key)
    # The zombie keeps working and tries to sync: refused, before it writes anything.
    round_of_work(repo_a, tl_a, w, 8)
    repo_a.gc(FAR)
    start = len(rec.ops)
    with pytest.raises(Superseded, match="generation 1 was superseded by generation 2") as info:
        old.sync(repo_a)
    assert (info.value.generation, info.value.current) == (1, 2)
    assert [op for op, _ in rec.ops[start:]] == ["get"]
    start = len(rec.ops)
    with pytest.raises(Superseded):
        old.sync(repo_a)  # sticky: no IO at all
    assert rec.ops[start:] == []
    assert rec.get(new_key) == new_index
    # A reader trusts generation 2's index.
    index = RemoteRepository(rec, rec.prefix).newest_index("main")
    assert index is not None and index.generation == 2 and index.disk_consistent_lsn == tl_b.disk_consistent_lsn
    repo_a.close()
    repo_b.close()


def test_a_zombie_that_loses_the_race_inside_a_sync_deletes_nothing(store: RemoteStorage, tmp_path: Path) -> None:
    rec = fresh(store)
    old = RemoteRepository(rec, rec.prefix)
    old.attach()
    repo = Repository.open(tmp_path / "a", CONFIG)
    tl = repo.create_timeline("main", page_size=P)
    w = Workload(7)
    round_of_work(repo, tl, w, 8)
    tl.compact(force=True)
    rcl1 = old.sync(repo)["main"]
    round_of_work(repo, tl, w, 8)
    tl.compact(force=True)
    reference = read_all(tl, w.lsns)
    assert repo.gc(FAR)[0].removed
    # The new pageserver attaches right when the zombie uploads its index: after its check.
    new = RemoteRepository(rec, rec.prefix)

    def attach_now(op: str, key: str) -> None:
        if op == "put" and INDEX_NAME in key and new.generation is None:
            new.attach()

    rec.before = attach_now
    start = len(rec.ops)
    with pytest.raises(Superseded):
        old.sync(repo)
    rec.before = None
    assert not [key for op, key in rec.ops[start:] if op == "delete"]
    assert old.remote_consistent_lsn("main") == rcl1  # never advertised: not validated
    # The new pageserver downloads: the zombie's last index is the newest, and complete.
    new.download(tmp_path / "b")
    repo_b = Repository.open(tmp_path / "b", CONFIG)
    tl_b = repo_b.timeline("main")
    assert tl_b.disk_consistent_lsn == tl.disk_consistent_lsn
    served = [lsn for lsn in w.lsns if tl_b.gc_cutoff <= lsn]
    assert served and read_all(tl_b, served) == {lsn: reference[lsn] for lsn in served}
    new.sync(repo_b)
    index = new.newest_index("main")
    assert index is not None and set(rec.list(f"{rec.prefix}/timelines/")) == named_keys(rec.prefix, index)
    repo.close()
    repo_b.close()


def test_a_local_timeline_behind_the_remote_index_is_refused(store: RemoteStorage, tmp_path: Path) -> None:
    rec = fresh(store)
    first = RemoteRepository(rec, rec.prefix)
    first.attach()
    repo = Repository.open(tmp_path / "a", CONFIG)
    tl = repo.create_timeline("main", page_size=P)
    w = Workload(8)
    round_of_work(repo, tl, w, 4)
    first.sync(repo)
    shutil.copytree(tmp_path / "a", tmp_path / "stale")
    round_of_work(repo, tl, w, 4)
    first.sync(repo)
    repo.close()
    stale = Repository.open(tmp_path / "stale", CONFIG)
    second = RemoteRepository(rec, rec.prefix)
    second.attach()
    with pytest.raises(RemoteAhead, match="behind the remote index of generation 1"):
        second.sync(stale)
    stale.close()


# ---------------------------------------------------------------------------------------------
# Branches
# ---------------------------------------------------------------------------------------------


def test_branches_are_restored_with_their_ancestors(store: RemoteStorage, tmp_path: Path) -> None:
    rec = fresh(store)
    remote = RemoteRepository(rec, rec.prefix)
    remote.attach()
    repo = Repository.open(tmp_path / "ps", CONFIG)
    main = repo.create_timeline("main", page_size=P)
    w = Workload(9)
    round_of_work(repo, main, w, 8)
    point = w.lsns[5]
    child = repo.create_branch("child", "main", point)
    w_child = Workload(90, start_lsn=point, db_size=main.db_size(point))
    round_of_work(repo, child, w_child, 6)
    grandchild = repo.create_branch("grandchild", "child", w_child.lsn)
    round_of_work(repo, main, w, 8)
    repo.gc(FAR)
    reference = {
        "main": read_all(main, w.lsns),
        "child": read_all(child, w_child.lsns),
        "grandchild": read_all(grandchild, [w_child.lsn]),
    }
    assert reference["child"]
    start = len(rec.ops)
    assert remote.sync(repo) == {"main": main.disk_consistent_lsn, "child": w_child.lsn, "grandchild": w_child.lsn}
    index_puts = [key.split("/")[2] for op, key in rec.ops[start:] if op == "put" and INDEX_NAME in key]
    assert index_puts == ["main", "child", "grandchild"]  # ancestors first
    repo.close()
    # Asking for the grandchild alone brings its ancestors.
    shutil.rmtree(tmp_path / "ps")
    indexes = RemoteRepository(rec, rec.prefix).download(tmp_path / "ps", ["grandchild"])
    assert sorted(indexes) == ["child", "grandchild", "main"]
    assert indexes["child"].metadata.ancestor == "main" and indexes["child"].metadata.ancestor_lsn == point
    repo2 = Repository.open(tmp_path / "ps", CONFIG)
    for name, pages in reference.items():
        assert read_all(repo2.timeline(name), list(pages)) == pages, name
    repo2.close()


def test_a_crash_during_download_leaves_what_repository_open_accepts(
    store: RemoteStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = fresh(store)
    remote = RemoteRepository(rec, rec.prefix)
    remote.attach()
    repo = Repository.open(tmp_path / "ps", CONFIG)
    main = repo.create_timeline("main", page_size=P)
    w = Workload(11)
    round_of_work(repo, main, w, 8)
    child = repo.create_branch("child", "main", w.lsns[4])
    w_child = Workload(110, start_lsn=w.lsns[4], db_size=main.db_size(w.lsns[4]))
    round_of_work(repo, child, w_child, 4)
    remote.sync(repo)
    RemoteRepository(rec, rec.prefix).download(tmp_path / "old")  # a local copy, soon stale
    round_of_work(repo, main, w, 6)  # the parent changes, the child does not
    reference = {"main": read_all(main, w.lsns), "child": read_all(child, w_child.lsns)}
    newest = remote.sync(repo)
    repo.close()
    # Crash points between local steps too: each fsync and atomic write is an "op".
    for local in ("fsync_dir", "write_file_atomic"):
        real = getattr(remote_timeline, local)

        def counted(*args: object, _real: Callable[..., None] = real, _name: str = local) -> None:
            rec._op(_name, str(args[0]))
            _real(*args)

        monkeypatch.setattr(remote_timeline, local, counted)
    start = len(rec.ops)
    RemoteRepository(rec, rec.prefix).download(tmp_path / "full")
    total = len(rec.ops) - start
    start = len(rec.ops)
    RemoteRepository(rec, rec.prefix).download(tmp_path / "full")  # matching: no layer read
    assert [op for op, _ in rec.ops[start:] if op in ("list", "get")] == ["list", "get", "get"]  # indexes
    for crash_at in range(total):
        # Into an empty directory, and over a stale copy of both timelines (fewer reads).
        for root, stale in ((tmp_path / f"empty{crash_at}", None), (tmp_path / f"stale{crash_at}", tmp_path / "old")):
            if stale is not None:
                shutil.copytree(stale, root)
            rec.crash_at = len(rec.ops) + crash_at
            try:
                RemoteRepository(rec, rec.prefix).download(root)
            except Crash:
                pass
            else:
                assert stale is not None  # a stale copy needs fewer reads than `total`
            rec.crash_at = None
            # Whatever is left opens, and holds only whole timelines (ancestors first).
            partial = Repository.open(root, CONFIG)
            assert partial.list() in ([], ["main"], ["child", "main"])
            for name in partial.list():
                served = read_all(partial.timeline(name), list(reference[name]))
                assert served and served == {lsn: reference[name][lsn] for lsn in served}
            partial.close()
            # Downloading again completes it.
            RemoteRepository(rec, rec.prefix).download(root)
            again = Repository.open(root, CONFIG)
            for name, pages in reference.items():
                assert again.timeline(name).disk_consistent_lsn == newest[name]
                assert read_all(again.timeline(name), list(pages)) == pages
            again.close()


def test_download_refuses_to_strand_a_local_child(store: RemoteStorage, tmp_path: Path) -> None:
    rec = fresh(store)
    remote = RemoteRepository(rec, rec.prefix)
    remote.attach()
    repo = Repository.open(tmp_path / "ps", CONFIG)
    main = repo.create_timeline("main", page_size=P)
    w = Workload(12)
    round_of_work(repo, main, w, 4)
    remote.sync(repo)
    round_of_work(repo, main, w, 4)  # local main is now ahead of its index
    repo.create_branch("local-only", "main", w.lsn)  # never uploaded
    repo.close()
    with pytest.raises(RemoteTimelineError, match=r"local timelines \['local-only'\] descend from"):
        RemoteRepository(rec, rec.prefix).download(tmp_path / "ps")
    reopened = Repository.open(tmp_path / "ps", CONFIG)  # untouched
    assert reopened.list() == ["local-only", "main"] and reopened.timeline("main").disk_consistent_lsn == w.lsn
    reopened.close()


# ---------------------------------------------------------------------------------------------
# Damage
# ---------------------------------------------------------------------------------------------


def _uploaded(store: RemoteStorage, tmp_path: Path) -> tuple[Recorder, IndexPart]:
    rec = fresh(store)
    remote = RemoteRepository(rec, rec.prefix)
    remote.attach()
    repo = Repository.open(tmp_path / "ps", CONFIG)
    tl = repo.create_timeline("main", page_size=P)
    round_of_work(repo, tl, Workload(10), 6)
    remote.sync(repo)
    repo.close()
    index = remote.newest_index("main")
    assert index is not None and index.layers
    return rec, index


def test_a_damaged_or_missing_layer_object_is_named(store: RemoteStorage, tmp_path: Path) -> None:
    rec, index = _uploaded(store, tmp_path)
    entry = index.layers[-1]
    key = f"{rec.prefix}/timelines/main/{entry.name}-{entry.generation:08x}"
    data = rec.get(key)
    rec.inner.put(key, data[:100] + bytes([data[100] ^ 1]) + data[101:])
    reader = RemoteRepository(rec, rec.prefix)
    with pytest.raises(CorruptRemote, match=rf"remote object '{key}': CRC32C 0x[0-9a-f]+, the index says"):
        reader.download(tmp_path / "dl")
    rec.inner.put(key, data[:-1])
    with pytest.raises(CorruptRemote, match=rf"'{key}': {len(data) - 1} bytes, the index says {len(data)}"):
        reader.download(tmp_path / "dl")
    rec.inner.delete(key)
    with pytest.raises(CorruptRemote, match=rf"'{key}': missing, but the index of generation 1 names it") as info:
        reader.download(tmp_path / "dl")
    assert info.value.key == key
    # Repaired, the same download completes (verified files already there are kept).
    rec.inner.put(key, data)
    reader.download(tmp_path / "dl")
    repo = Repository.open(tmp_path / "dl", CONFIG)
    assert {i.name for i in repo.timeline("main").layer_files()} == {e.name for e in index.layers}
    repo.close()


def test_a_damaged_index_or_missing_ancestor_is_named(store: RemoteStorage, tmp_path: Path) -> None:
    rec, index = _uploaded(store, tmp_path)
    key = f"{rec.prefix}/timelines/main/{INDEX_NAME}-00000001"
    raw = rec.get(key)
    body = json.loads(raw)
    body["metadata"]["disk_consistent_lsn"] += 1  # a changed field: the checksum catches it
    rec.inner.put(key, json.dumps(body).encode())
    reader = RemoteRepository(rec, rec.prefix)
    with pytest.raises(CorruptRemote, match=rf"remote object '{key}': damaged index: checksum mismatch"):
        reader.download(tmp_path / "dl")
    rec.inner.put(key, raw[: len(raw) // 2])
    with pytest.raises(CorruptRemote, match=rf"'{key}': damaged index: not JSON"):
        reader.newest_index("main")
    rec.inner.put(key, raw)
    # A child whose ancestor has no index.
    meta = TimelineMetadata(
        name="orphan", ancestor="gone", ancestor_lsn=100, start_lsn=100, page_size=P, partition_pages=4,
        disk_consistent_lsn=100, gc_cutoff=100,
    )
    rec.inner.put(f"{rec.prefix}/timelines/orphan/{INDEX_NAME}-00000001", encode_index(IndexPart(1, meta, ())))
    with pytest.raises(CorruptRemote, match="no index of timeline 'gone'"):
        reader.download(tmp_path / "dl2", ["orphan"])
    assert reader.download(tmp_path / "dl3", ["main"]).keys() == {"main"}


# ---------------------------------------------------------------------------------------------
# The index codec
# ---------------------------------------------------------------------------------------------


def test_index_round_trip_and_refusals() -> None:
    meta = TimelineMetadata(
        name="main", ancestor=None, ancestor_lsn=0, start_lsn=0, page_size=P, partition_pages=4,
        disk_consistent_lsn=900, gc_cutoff=100, leases=((200, T0),),
    )
    name = "000000000-000000004__0000000000000065-0000000000000385"
    assert parse_layer_name(name) is not None
    index = IndexPart(3, meta, (LayerEntry(name, 1234, 0xDEADBEEF, 2),))
    raw = encode_index(index)
    assert decode_index(raw) == index
    body = json.loads(raw)
    assert body["layers"][name] == {"size": 1234, "crc32c": 0xDEADBEEF, "generation": 2}
    assert body["metadata"]["disk_consistent_lsn"] == 900 and body["generation"] == 3
    for damage, message in [
        (raw.replace(b'"generation": 2', b'"generation": 4'), "checksum mismatch"),
        (raw[:-10], "not JSON"),
        (b"[]", "no checksum"),
    ]:
        with pytest.raises(ValueError, match=message):
            decode_index(damage)
