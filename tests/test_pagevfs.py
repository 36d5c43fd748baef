"""Tests of impl/pagevfs.py: SQLite on the compute's VFS, against a fake pageserver.

The fake does to each commit what the real path does (DESIGN.md §7): a `RecordBuilder` makes
the record, its bytes are encoded, decoded and redone into a new version of the pages, and a
source pinned at a version serves GetPage@LSN.  So every test also checks that what the VFS
hands to the sink makes records from which a fresh compute rebuilds the same database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from impl.pagevfs import PRAGMAS, CommitFailedError, PageVfs, open_database
from impl.pagewal import (
    PAGE_SIZE,
    PageDelta,
    PageImage,
    PageRecord,
    RecordBuilder,
    decode_record,
    encode_record,
    redo,
)

T0 = 1_700_000_000_000_000  # a commit_time: microseconds since the epoch, late 2023
ZERO_PAGE = bytes(PAGE_SIZE)
Statement = tuple[str, tuple[object, ...]]  # SQL and its parameters
SCHEMA = "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v TEXT)"
# A statement that grows the database by about 27 pages: 50 rows of 2000 bytes.
BULK = (
    "INSERT INTO t(k, v) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s"
    " WHERE i < 50) SELECT i, hex(zeroblob(1000)) FROM s"
)


# ---------------------------------------------------------------------------------------------
# The fake pageserver and the compute's commit path
# ---------------------------------------------------------------------------------------------


class InjectedFailure(Exception):
    """A commit the fake refused on a test's orders (a lost quorum, say)."""


class FakePageserver:
    """Every version of the database, one per record, each rebuilt from the record's bytes."""

    def __init__(self) -> None:
        # versions[i]: (page -> bytes, db_size) after i records; a missing page is a hole.
        self.versions: list[tuple[dict[int, bytes], int]] = [({}, 0)]
        self.records: list[PageRecord] = []

    @property
    def db_size(self) -> int:
        return self.versions[-1][1]

    def ingest(self, data: bytes) -> None:
        """Apply one record's bytes, as GetPage@LSN would see them (pagewal's redo)."""
        record = decode_record(data)
        last, _ = self.versions[-1]
        pages = {page: image for page, image in last.items() if page < record.db_size}
        for entry in record.pages:
            if type(entry) is PageImage:
                pages[entry.page] = entry.image
            else:
                pages[entry.page] = redo(pages.get(entry.page), [entry])
        self.versions.append((pages, record.db_size))
        self.records.append(record)

    def source(self, version: int | None = None) -> Source:
        """A source pinned at `version`, or following the newest if None (a writer's)."""
        return Source(self, version)


class Source:
    """The fake pageserver at one version (an LSN): the VFS's PageSource.  Counts reads."""

    def __init__(self, server: FakePageserver, version: int | None) -> None:
        self.server = server
        self.version = version
        self.reads: list[int] = []

    def _version(self) -> tuple[dict[int, bytes], int]:
        return self.server.versions[-1 if self.version is None else self.version]

    def get_page(self, page: int) -> bytes:
        pages, size = self._version()
        assert page < size, f"read of page {page} past db_size {size}"
        self.reads.append(page)
        return pages.get(page, ZERO_PAGE)

    def db_size(self) -> int:
        return self._version()[1]

    def advance(self) -> list[int]:
        """Move to the newest version; return the pages that differ (a replica's feed)."""
        old, _ = self._version()
        self.version = len(self.server.versions) - 1
        new, _ = self._version()
        return sorted(page for page in old.keys() | new.keys() if old.get(page) != new.get(page))


class Sink:
    """A compute's commit path: its RecordBuilder, then the record's bytes to the pageserver.

    `fail_calls` holds the (1-based) numbers of the calls to refuse: the record is built, the
    append "fails", the builder aborts and InjectedFailure is raised.
    """

    def __init__(self, server: FakePageserver) -> None:
        self.server = server
        self.builder = RecordBuilder(server.db_size)
        self.calls: list[tuple[list[int], int]] = []
        self.fail_calls: set[int] = set()

    def commit(self, dirty: dict[int, bytes], db_size: int) -> None:
        self.calls.append((sorted(dirty), db_size))
        record = self.builder.build(dirty, db_size, T0 + len(self.calls))
        if record is None:
            return
        if len(self.calls) in self.fail_calls:
            self.builder.abort()
            raise InjectedFailure(f"quorum lost at commit call {len(self.calls)}")
        self.server.ingest(encode_record(record))
        self.builder.commit()

    def fail_next(self, calls_ahead: int = 1) -> None:
        """Refuse the call `calls_ahead` calls from now."""
        self.fail_calls.add(len(self.calls) + calls_ahead)


def writer(server: FakePageserver, **kwargs: object) -> tuple[apsw.Connection, Sink, Source]:
    """A compute over `server`: its connection, sink and source (following the newest)."""
    sink, source = Sink(server), server.source()
    return open_database("db", source, sink, **kwargs), sink, source


def reader(server: FakePageserver, version: int | None = None) -> apsw.Connection:
    """A fresh read-only compute over `server`, on a new VFS: the compute's restart."""
    return open_database("db", server.source(version), read_only=True)


def rows(conn: apsw.Connection | sqlite3.Connection) -> list[tuple[object, ...]]:
    return conn.execute("SELECT id, k, v FROM t ORDER BY id").fetchall()


def state(conn: apsw.Connection | sqlite3.Connection) -> tuple[object, ...]:
    """What queries see: the schema, and every table's rows."""
    schema = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    tables = [name for kind, name, _ in schema if kind == "table"]
    contents = (conn.execute(f"SELECT * FROM {name} ORDER BY rowid").fetchall() for name in tables)
    return (schema, *contents)


def check_integrity(conn: apsw.Connection) -> None:
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


# ---------------------------------------------------------------------------------------------
# Commits: one sink call per transaction
# ---------------------------------------------------------------------------------------------


def test_fresh_database_one_commit_per_transaction() -> None:
    server = FakePageserver()
    conn, sink, source = writer(server)
    assert sink.calls == []  # opening and the pragmas write nothing
    conn.execute(SCHEMA)
    # A fresh database is 0 pages; its first transaction creates page 1 (0) and t's root (1).
    assert sink.calls == [([0, 1], 2)]
    assert [type(e) for e in server.records[0].pages] == [PageImage, PageImage]
    conn.execute("INSERT INTO t(k, v) VALUES (1, 'one')")
    conn.execute("INSERT INTO t(k, v) VALUES (2, 'two')")
    conn.execute("UPDATE t SET v = 'uno' WHERE k = 1")
    conn.execute("DELETE FROM t WHERE k = 2")
    assert len(sink.calls) == 5
    with conn:  # apsw's `with` is a SAVEPOINT, here the whole transaction: one call
        for k in range(3, 10):
            conn.execute("INSERT INTO t(k, v) VALUES (?, 'x')", (k,))
    assert len(sink.calls) == 6
    conn.execute(BULK)
    assert len(sink.calls) == 7 and sink.calls[-1][1] > 20
    assert len(server.records) == 7 and server.db_size == sink.calls[-1][1]
    # Every page the writer reads it wrote itself: the source was never asked.
    assert source.reads == []
    check_integrity(conn)


def test_autocommit_update_is_one_page_delta() -> None:
    server = FakePageserver()
    conn, sink, _ = writer(server)
    conn.execute(SCHEMA)
    conn.execute("INSERT INTO t(k, v) VALUES (1, 'one')")
    conn.execute("UPDATE t SET v = 'ONE' WHERE k = 1")
    # One row, one leaf page: one page written, one record holding one small delta.
    assert sink.calls[-1] == ([1], 2)
    (entry,) = server.records[-1].pages
    assert type(entry) is PageDelta and sum(len(data) for _, data in entry.ranges) < 16


def test_statements_that_change_nothing_commit_nothing() -> None:
    server = FakePageserver()
    conn, sink, _ = writer(server)
    conn.execute(SCHEMA)
    conn.execute("INSERT INTO t(k, v) VALUES (1, 'one')")
    calls = len(sink.calls)
    conn.execute("UPDATE t SET v = 'one' WHERE k = 1")  # the same value
    conn.execute("UPDATE t SET v = 'two' WHERE k = 99")  # no row
    conn.execute("DELETE FROM t WHERE k = 99")
    conn.execute("BEGIN; INSERT INTO t(k, v) VALUES (2, 'two'); ROLLBACK")
    conn.execute("BEGIN; COMMIT")
    assert rows(conn) == [(1, 1, "one")]
    assert len(sink.calls) == calls


def test_restart_on_a_new_vfs_sees_every_commit() -> None:
    server = FakePageserver()
    conn, _, _ = writer(server)
    conn.execute(SCHEMA)
    conn.execute(BULK)
    conn.execute("CREATE INDEX t_k ON t(k)")
    conn.execute("UPDATE t SET v = 'short' WHERE k % 3 = 0")
    expected = state(conn)
    conn.close()
    # The compute restarts: a new VFS, a new builder, the same pageserver.
    again, sink, _ = writer(server)
    assert state(again) == expected
    check_integrity(again)
    again.execute("INSERT INTO t(k, v) VALUES (100, 'after the restart')")
    assert sink.calls and state(reader(server)) == state(again)


# ---------------------------------------------------------------------------------------------
# Failed commits
# ---------------------------------------------------------------------------------------------


def test_failed_commit_rolls_back_and_leaves_no_trace() -> None:
    server = FakePageserver()
    conn, sink, _ = writer(server)
    conn.execute(SCHEMA)
    conn.execute("INSERT INTO t(k, v) VALUES (1, 'one')")
    before, versions, calls = state(conn), len(server.versions), len(sink.calls)

    sink.fail_next()
    with pytest.raises(CommitFailedError) as failed:
        conn.execute(
            "BEGIN; INSERT INTO t(k, v) VALUES (2, 'two'); UPDATE t SET v = 'uno' WHERE k = 1;"
            " CREATE TABLE u(x); COMMIT"
        )
    # What the client sees: the sink's message, its exception chained, an fsync I/O error.
    assert "quorum lost" in str(failed.value) and "rolled back" in str(failed.value)
    assert type(failed.value.__cause__) is InjectedFailure
    assert isinstance(failed.value, apsw.IOError)
    assert failed.value.extendedresult == apsw.SQLITE_IOERR_FSYNC
    # No trace in the pageserver, and SQLite's rollback (it writes the old pages back through
    # xWrite, then syncs) made no second call.
    assert len(server.versions) == versions and len(sink.calls) == calls + 1
    # The connection is out of the transaction and sees the pre-transaction state.
    assert not conn.in_transaction
    assert state(conn) == before
    check_integrity(conn)

    # It commits again; the builder forgot the failed record's pages (abort), so their next
    # versions are images, and deltas after those redo right.
    conn.execute("UPDATE t SET v = 'uno' WHERE k = 1")
    # Page 0 too: SQLite moves the change counter again at the first commit after a rollback.
    assert sink.calls[-1] == ([0, 1], 2)
    assert [type(e) for e in server.records[-1].pages] == [PageImage, PageImage]
    conn.execute("UPDATE t SET v = 'eins' WHERE k = 1")
    assert [type(e) for e in server.records[-1].pages] == [PageDelta]
    assert state(reader(server)) == state(conn) == (before[0], [(1, 1, "eins")])


def test_failed_autocommit_growing_the_file() -> None:
    server = FakePageserver()
    conn, sink, _ = writer(server, cache_pages=0)  # no cache: the rollback's pages are fetched
    conn.execute(SCHEMA)
    conn.execute("INSERT INTO t(k, v) VALUES (1, 'one')")
    size, versions, calls = server.db_size, len(server.versions), len(sink.calls)
    sink.fail_next()
    with pytest.raises(CommitFailedError, match="quorum lost"):
        conn.execute(BULK)
    # SQLite's rollback writes pages the VFS no longer caches: fetched, found unchanged, and
    # not committed again.
    assert len(server.versions) == versions and len(sink.calls) == calls + 1
    assert server.db_size == size
    assert conn.execute("PRAGMA page_count").fetchone() == (size,)
    assert rows(conn) == [(1, 1, "one")]
    conn.execute(BULK)
    assert len(rows(conn)) == 51 and state(reader(server)) == state(conn)
    check_integrity(conn)


# ---------------------------------------------------------------------------------------------
# Truncation (VACUUM)
# ---------------------------------------------------------------------------------------------


def test_vacuum_shrink_is_its_own_commit() -> None:
    server = FakePageserver()
    conn, sink, _ = writer(server)
    conn.execute(SCHEMA)
    conn.execute(BULK)
    conn.execute("DELETE FROM t WHERE k > 2")
    big = server.db_size
    calls = len(sink.calls)
    conn.execute("VACUUM")
    # VACUUM syncs its pages at the old size, then truncates: a second call, pages none.
    (pages, size), (no_pages, small) = sink.calls[calls:]
    assert pages and size == big and no_pages == [] and small < big
    assert server.db_size == small
    fresh = reader(server)
    assert fresh.execute("PRAGMA page_count").fetchone() == (small,)
    assert state(fresh) == state(conn)
    check_integrity(fresh)


def test_failed_vacuum_truncation_keeps_the_size() -> None:
    server = FakePageserver()
    conn, sink, _ = writer(server)
    conn.execute(SCHEMA)
    conn.execute(BULK)
    conn.execute("DELETE FROM t WHERE k > 2")
    big = server.db_size
    sink.fail_next(2)
    with pytest.raises(CommitFailedError, match="truncation .* failed") as failed:
        conn.execute("VACUUM")
    assert failed.value.extendedresult == apsw.SQLITE_IOERR_TRUNCATE
    # SQLite does not roll back a failed truncation: the VACUUM's pages are committed, the
    # file keeps its size, and SQLite and a fresh reader agree on the rows.
    assert server.db_size == big and not conn.in_transaction
    assert state(reader(server)) == state(conn)
    conn.execute("INSERT INTO t(k, v) VALUES (7, 'seven')")
    conn.execute("VACUUM")
    assert server.db_size < big and state(reader(server)) == state(conn)
    check_integrity(conn)


# ---------------------------------------------------------------------------------------------
# The page cache
# ---------------------------------------------------------------------------------------------


def test_a_page_is_read_from_the_source_once() -> None:
    server = FakePageserver()
    conn, _, _ = writer(server)
    conn.execute(SCHEMA)
    conn.execute(BULK)
    source = server.source()
    vfs = PageVfs(source, read_only=True)
    replica = vfs.connect("db")
    expected = state(replica)
    assert sorted(set(source.reads)) == list(range(server.db_size))
    assert len(source.reads) == len(set(source.reads))
    # Nothing changed, but SQLite drops its cache: every page comes from the VFS's cache.
    vfs.reset_cache([])
    assert state(replica) == expected
    assert len(source.reads) == server.db_size


def test_without_a_cache_pages_come_from_the_source_again() -> None:
    server = FakePageserver()
    conn, _, _ = writer(server)
    conn.execute(SCHEMA)
    conn.execute(BULK)
    source = server.source()
    vfs = PageVfs(source, read_only=True, cache_pages=0)
    replica = vfs.connect("db")
    expected = state(replica)
    first = len(source.reads)
    vfs.reset_cache()
    assert state(replica) == expected
    assert set(source.reads[first:]) == set(range(server.db_size))


def test_bad_page_from_the_source_is_an_io_error() -> None:
    server = FakePageserver()
    conn, _, _ = writer(server)
    conn.execute(SCHEMA)
    source = server.source()
    source.get_page = lambda page: b"short"  # type: ignore[method-assign]
    with pytest.raises(apsw.IOError, match="5 bytes for page 0"):
        open_database("db", source, read_only=True).execute("SELECT * FROM t").fetchall()


# ---------------------------------------------------------------------------------------------
# Read-only computes: snapshots and replicas
# ---------------------------------------------------------------------------------------------


def test_snapshot_sees_its_lsn_and_refuses_writes() -> None:
    server = FakePageserver()
    conn, _, _ = writer(server)
    conn.execute(SCHEMA)
    conn.execute("INSERT INTO t(k, v) VALUES (1, 'then')")
    then = len(server.versions) - 1
    conn.execute("UPDATE t SET v = 'now' WHERE k = 1")
    snapshot = reader(server, then)
    assert rows(snapshot) == [(1, 1, "then")]
    with pytest.raises(apsw.ReadOnlyError):
        snapshot.execute("INSERT INTO t(k, v) VALUES (2, 'two')")
    assert snapshot.execute("PRAGMA query_only").fetchone() == (1,)
    # Even a connection opened without query_only cannot write: the VFS says the file is
    # read-only, and its write methods refuse if SQLite asked anyway.
    vfs = PageVfs(server.source(then), read_only=True)
    raw = apsw.Connection("db", vfs=vfs.vfsname)
    with pytest.raises(apsw.ReadOnlyError):
        raw.execute("INSERT INTO t(k, v) VALUES (2, 'two')")
    raw.close()
    file = vfs.xOpen("db", [apsw.SQLITE_OPEN_MAIN_DB | apsw.SQLITE_OPEN_READONLY, 0])
    with pytest.raises(apsw.ReadOnlyError, match="write of 'db' refused: this compute is read"):
        file.xWrite(ZERO_PAGE, 0)
    with pytest.raises(apsw.ReadOnlyError, match="sync of 'db' refused"):
        file.xSync(apsw.SQLITE_SYNC_NORMAL)
    with pytest.raises(apsw.ReadOnlyError, match="truncate of 'db' refused"):
        file.xTruncate(0)
    file.xClose()
    assert rows(reader(server, then)) == [(1, 1, "then")]


def test_replica_sees_newer_data_after_reset() -> None:
    server = FakePageserver()
    conn, _, _ = writer(server)
    conn.execute(SCHEMA)
    conn.execute("INSERT INTO t(k, v) VALUES (1, 'one')")
    source = server.source(len(server.versions) - 1)
    vfs = PageVfs(source, read_only=True)
    replica = vfs.connect("db")
    assert rows(replica) == [(1, 1, "one")]

    # An update in place: page 1's bytes 24..39 (change counter, size, freelist) stay put, so
    # SQLite keeps its cache, even with the source moved on, until the reset moves the counter.
    conn.execute("UPDATE t SET v = 'uno' WHERE k = 1")
    changed = source.advance()
    assert changed == [1]
    assert rows(replica) == [(1, 1, "one")]
    vfs.reset_cache(changed)
    assert rows(replica) == [(1, 1, "uno")]

    conn.execute("INSERT INTO t(k, v) VALUES (2, 'two')")
    conn.execute(BULK)
    conn.execute("CREATE TABLE u(x)")
    vfs.reset_cache(source.advance())
    assert state(replica) == state(conn)

    # A shrink too (VACUUM), with only the changed pages dropped.
    conn.execute("DELETE FROM t WHERE k > 2")
    conn.execute("VACUUM")
    vfs.reset_cache(source.advance())
    assert state(replica) == state(conn)
    assert replica.execute("PRAGMA page_count").fetchone() == (server.db_size,)
    check_integrity(replica)


def test_reset_cache_refusals() -> None:
    server = FakePageserver()
    conn, _, _ = writer(server)
    conn.execute(SCHEMA)
    conn.execute(BULK)
    with pytest.raises(RuntimeError, match="read-only"):
        PageVfs(server.source(), Sink(server)).reset_cache()
    vfs = PageVfs(server.source(), read_only=True)
    replica = vfs.connect("db")
    cursor = replica.execute("SELECT * FROM t")
    next(cursor)
    with pytest.raises(RuntimeError, match="read transaction .* is open"):
        vfs.reset_cache()
    cursor.close()
    vfs.reset_cache()
    assert len(rows(replica)) == 50


# ---------------------------------------------------------------------------------------------
# No local files, fixed pragmas
# ---------------------------------------------------------------------------------------------


def test_other_files_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    server = FakePageserver()
    # A connection opened on the VFS without the pragmas: SQLite wants a journal file.
    vfs = PageVfs(server.source(), Sink(server))
    raw = apsw.Connection("db", vfs=vfs.vfsname)
    refused = r"'db-journal', a rollback journal: refused.*\(journal_mode=MEMORY should have"
    with pytest.raises(apsw.CantOpenError, match=refused):
        raw.execute(SCHEMA)
    raw.close()
    conn, _, _ = writer(server)
    conn.execute(SCHEMA)
    for sql in ("ATTACH 'other' AS o", "VACUUM INTO 'copy'"):
        with pytest.raises(apsw.CantOpenError, match="second database: one database per compute"):
            conn.execute(sql)
    assert list(tmp_path.iterdir()) == []  # nothing reached the disk


@pytest.mark.parametrize(
    "pragma",
    [
        "synchronous=OFF",
        "synchronous=0",
        "journal_mode=WAL",
        "journal_mode=DELETE",
        "locking_mode=NORMAL",
        "cache_spill=ON",
        "temp_store=FILE",
        "page_size=8192",
    ],
)
def test_pragmas_that_would_break_commits_are_refused(pragma: str) -> None:
    conn, sink, _ = writer(FakePageserver())
    conn.execute(SCHEMA)
    name = pragma.split("=")[0]
    refused = f"PRAGMA {pragma} refused: the compute runs with {name}="
    with pytest.raises(apsw.SQLError, match=refused):
        conn.execute(f"PRAGMA {pragma}")
    # The same values in other spellings, and queries, pass.
    for value in dict(PRAGMAS)[name], dict(PRAGMAS)[name].upper():
        conn.execute(f"PRAGMA {name}={value}").fetchall()
    conn.execute(f"PRAGMA {name}").fetchall()
    conn.execute("INSERT INTO t(k, v) VALUES (1, 'still committing')")
    assert len(sink.calls) == 2


def test_database_of_another_page_size_is_refused() -> None:
    other = sqlite3.connect(":memory:")
    other.execute("PRAGMA page_size=1024")
    other.execute("CREATE TABLE x(a)")
    image = other.serialize()
    server = FakePageserver()
    pages = {
        i // PAGE_SIZE: image[i : i + PAGE_SIZE].ljust(PAGE_SIZE, b"\0")
        for i in range(0, len(image), PAGE_SIZE)
    }
    server.versions.append((pages, len(pages)))
    with pytest.raises(ValueError, match="page_size of 'db' is 1024, the compute needs 4096"):
        writer(server)


def test_constructor_errors() -> None:
    source = FakePageserver().source()
    with pytest.raises(ValueError, match="needs a CommitSink"):
        PageVfs(source)
    with pytest.raises(ValueError, match="cache_pages"):
        PageVfs(source, read_only=True, cache_pages=-1)
    vfs = PageVfs(source, read_only=True)
    first = vfs.connect("db")
    with pytest.raises(RuntimeError, match="already serves a connection"):
        vfs.connect("db")
    first.close()
    vfs.connect("db").close()  # closing the connection frees the VFS for another


# ---------------------------------------------------------------------------------------------
# The property: the VFS-backed database is SQLite, failures and all
# ---------------------------------------------------------------------------------------------

KEYS = st.integers(0, 20)
# Text up to 3000 bytes: rows spanning pages and overflow pages.
VALUES = st.builds(lambda char, n: char * n, st.sampled_from("abc"), st.integers(0, 3000))
STATEMENTS = st.one_of(
    st.tuples(st.just("INSERT INTO t(k, v) VALUES (?, ?)"), st.tuples(KEYS, VALUES)),
    st.tuples(
        st.just(
            "INSERT INTO t(k, v) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s"
            " WHERE i < ?) SELECT i % 21, hex(zeroblob(?)) FROM s"
        ),
        st.tuples(st.integers(1, 40), st.integers(0, 2000)),
    ),
    st.tuples(st.just("UPDATE t SET v = ? WHERE k BETWEEN ? AND ?"), st.tuples(VALUES, KEYS, KEYS)),
    st.tuples(st.just("UPDATE t SET v = v WHERE k = ?"), st.tuples(KEYS)),
    st.tuples(st.just("DELETE FROM t WHERE k BETWEEN ? AND ?"), st.tuples(KEYS, KEYS)),
    st.tuples(st.just("CREATE INDEX IF NOT EXISTS t_k ON t(k)"), st.just(())),
    st.tuples(st.just("DROP INDEX IF EXISTS t_k"), st.just(())),
    st.tuples(
        st.just("CREATE TABLE IF NOT EXISTS u AS SELECT * FROM t WHERE k < ?"), st.tuples(KEYS)
    ),
    st.tuples(st.just("DROP TABLE IF EXISTS u"), st.just(())),
)
# Deletions then VACUUM: a shrink, so a truncation to refuse.
PURGE = [("DELETE FROM t WHERE k % 2 = 0", ()), ("VACUUM", ())]
# A step: autocommit statements, or one transaction (BEGIN .. COMMIT/ROLLBACK), and which of
# its sink calls to refuse (PURGE: 1 the deletion, 2 the VACUUM's pages, 3 its truncation).
STEPS = st.tuples(
    st.one_of(
        st.lists(STATEMENTS, min_size=1, max_size=1),
        st.just([("VACUUM", ())]),
        st.just(PURGE),
        st.builds(
            lambda body, end: [("BEGIN", ()), *body, (end, ())],
            st.lists(STATEMENTS, min_size=1, max_size=4),
            st.sampled_from(["COMMIT", "COMMIT", "ROLLBACK"]),
        ),
    ),
    st.sampled_from([None, None, None, None, None, None, 1, 2, 3]),
)


def run(conn: apsw.Connection | sqlite3.Connection, statements: Iterable[Statement]) -> None:
    for sql, params in statements:
        conn.execute(sql, params)


def run_refusable(conn: apsw.Connection, statements: list[Statement]) -> list[Statement]:
    """Run a step on the VFS; return the statements whose effects a query can see."""
    done = []
    try:
        for sql, params in statements:
            conn.execute(sql, params)
            done.append((sql, params))
    except CommitFailedError as exc:
        assert type(exc.__cause__) is InjectedFailure
        assert not conn.in_transaction
        # A refused commit is rolled back: a whole transaction, or the one statement.  A
        # refused truncation leaves a VACUUM done, which no query tells from one not done.
        if statements[0][0] == "BEGIN":
            return []
    return done


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(STEPS, min_size=5, max_size=30),
    cache_pages=st.sampled_from([0, 3, 8192]),
    sqlite_cache=st.sampled_from([10, 2000]),
)
def test_vfs_database_matches_plain_sqlite(
    steps: list[tuple[list[Statement], int | None]], cache_pages: int, sqlite_cache: int
) -> None:
    """Random statements, some commits refused, on the VFS and on an in-memory SQLite.

    A small SQLite cache and a small VFS cache make the writer read back pages it committed
    (from the source, at the newest version), and SQLite's rollback after a refused commit
    fetch the committed versions it compares with.
    """
    server = FakePageserver()
    conn, sink, _ = writer(server, cache_pages=cache_pages)
    conn.execute(f"PRAGMA cache_size={sqlite_cache}")
    model = sqlite3.connect(":memory:", isolation_level=None)
    for db in conn, model:
        db.execute(SCHEMA)
    for statements, fail in steps:
        if fail is not None:
            sink.fail_next(fail)
        done = run_refusable(conn, statements)
        sink.fail_calls.clear()
        run(model, done)
        assert state(conn) == state(model)
    check_integrity(conn)
    # A fresh compute over the pageserver's records rebuilds the same database.
    fresh = reader(server)
    assert state(fresh) == state(model)
    check_integrity(fresh)
    assert server.db_size >= conn.execute("PRAGMA page_count").fetchone()[0]
