"""The compute's SQLite VFS: page reads from a page source, one commit per transaction.

Theory of operation
===================

The compute runs SQLite (through apsw) on this VFS, our equivalent of Neon's smgr hook in
Postgres (DESIGN.md §7).  SQLite's page reads become GetPage@LSN calls to a `PageSource` (the
pageserver pinned at the compute's LSN), through a local page cache; its page writes are
buffered until the transaction syncs, and the sync hands every page written since the last
sync to a `CommitSink` (which builds one `impl/pagewal.py` record and appends it through the
proposer).  The VFS does not know the network: the integrator passes both objects in.  Pages
are numbered from 0 (SQLite's page number minus one) and are `PAGE_SIZE` bytes, as in
pagewal.  Rules of this file:

1. Only the main database file exists.  The pragmas in `PRAGMAS` keep every other file in
   memory; should SQLite still ask for one, `xOpen` refuses it with an error naming the file
   and the pragma that should have prevented it, and the pragmas are guarded (`xFileControl`)
   so that a client's ``PRAGMA synchronous=OFF`` (SQLite would never sync: commits would be
   lost) or ``journal_mode=WAL`` (SQLite would never write the main file) is refused too.
   Nothing is ever written to local disk.
2. One sync, one commit.  `xSync` calls `CommitSink.commit(dirty, db_size)` with the pages
   written since the last sync and the size after them, and returns only when the sink has
   returned: SQLite's COMMIT succeeds only if the record is committed.  A sync that changed
   nothing (no page differs, same size) makes no call.
3. The cache holds committed versions only.  A page written joins it when its sync succeeds;
   until then it lives in the dirty buffer, which reads consult first.  So a failed sync
   leaves nothing to undo but the buffer, which is dropped, and the size, which returns to
   the committed one: the VFS is back at the last committed state, as SQLite is after it
   rolls back (see "Failed commits").
4. A write whose bytes equal the page's committed version is no change.  SQLite already skips
   unchanged pages, so this matters after a failed sync, when SQLite writes its rollback
   through `xWrite`: those writes restore committed versions, are checked against them (from
   the source if the cache lacks the page), and vanish; the rollback's own sync then has
   nothing to commit and makes no call.
5. A truncation after a sync is its own commit.  VACUUM truncates the file after its sync
   (measured below), and no sync follows, so `xTruncate` with no write since the last sync
   calls `commit({}, new_size)` at once: the VACUUM statement succeeds only once the shrink is
   logged, and a compute that stops after it loses nothing.  A truncation between writes and
   their sync belongs to that transaction and is logged at its sync.
6. A read-only VFS (a snapshot or a replica) refuses `xWrite`, `xSync` and `xTruncate`, and
   its connection uses ``query_only``.  A replica moves on with `PageVfs.reset_cache` between
   read transactions (see "Replicas").

Each VFS method below says in its first line which SQLite behaviour it relies on.  Versions,
deltas and redo are pagewal's (the sink's) business, not this file's.

What SQLite does on this VFS (measured with a tracing VFS, SQLite 3.54.1, apsw 3.54.1.0)
---------------------------------------------------------------------------------------
* Opening a connection reads 100 bytes at offset 0 (the header; a short read on an empty
  file is fine).  ``PRAGMA journal_mode`` takes a shared lock, asks `xAccess` about
  ``<name>-journal`` and ``<name>-wal`` and calls `xFileSize`.  A fresh database is 0 bytes:
  the first transaction (CREATE TABLE) writes pages 0 and 1 and syncs.
* Under EXCLUSIVE locking, page 1 is read once, at the first transaction, and SQLite keeps
  its page cache for the connection's life; the change counter (header bytes 24..27) moves
  at the first commit only.  Each commit is the changed pages' `xWrite` (whole, aligned
  pages, in page order) then one `xSync(SQLITE_SYNC_NORMAL)`: never two syncs per commit.
  An autocommit UPDATE of one row is exactly one page write and one sync.  A statement that
  changes nothing (an UPDATE to the same value, or matching no row) writes nothing and does
  not sync.  ROLLBACK writes nothing.  (With ``cache_spill=ON`` and a small cache, a large
  transaction writes pages before its COMMIT, and its ROLLBACK writes the originals back and
  truncates: ``cache_spill=OFF`` is what keeps uncommitted pages out of the file.)
* VACUUM writes its pages, syncs, then calls `xFileSize` and `xTruncate`: no sync follows
  the truncation (hence rule 5).
* When `xSync` raises, SQLite rolls the transaction back from its memory journal, through
  the file: `xFileSize`, the original versions of the journalled pages (not those past the
  old size) through `xWrite`, then `xSync`.  It truncates only if `xFileSize` still reports
  the grown size; the VFS already reports the committed one.  The connection is then out of
  any transaction (an explicit BEGIN..COMMIT included: the COMMIT fails and the transaction
  is gone) and its cache holds the pre-transaction pages; it commits normally afterwards,
  and its first commit writes page 1 again (the change counter moves once more).
* The sink's exception surfaces to the caller: apsw raises from the statement the exception
  `xSync` raised, a `CommitFailedError` (an ``apsw.IOError``) whose message carries the
  sink's and whose ``__cause__`` is the sink's exception itself.
* Under NORMAL locking (read-only connections), each read transaction takes a shared lock,
  asks `xAccess` about the journal and the WAL, reads 16 bytes at offset 24 (change counter,
  size in pages, freelist head and count) and calls `xFileSize`; SQLite keeps its page cache
  if those 16 bytes did not change, and unlocks when the transaction ends.

Failed commits
--------------
`CommitSink.commit` raising means "this transaction is not committed".  The VFS drops the
buffer and the grown size (rule 3) and raises `CommitFailedError` from `xSync`; SQLite rolls
back (above), its rollback writes vanish (rule 4), and the connection, its SQLite cache and
this VFS all hold the last committed state again.  A sink whose append's outcome is unknown
(written, maybe committed: the proposer's ``AppendFailed``) must not pretend it failed cleanly:
the compute's state may then lag the WAL, and the integrator must close this connection and
open a new one once the pageserver has caught up (the compute's restart path).  A failed
truncation (rule 5) raises the same error from VACUUM: the VACUUM's pages are committed but
the file keeps its old size, which SQLite reads past harmlessly (the header holds the size).

Replicas
--------
Under EXCLUSIVE locking SQLite never rereads a page it has cached, and even under NORMAL
locking it keeps its cache while header bytes 24..39 stay put.  A writer under EXCLUSIVE
locking does not move the change counter, so those bytes change only with the size or the
freelist: after an update in place a replica would keep serving the old row.  So a read-only
connection runs under NORMAL locking, and `PageVfs.reset_cache` (between read transactions,
after the integrator moved its source to a newer LSN) drops the VFS's cached pages and bumps
an epoch that the VFS adds to the change counter (and to its "version valid for" copy at
bytes 92..95, so SQLite still trusts the header's size) in the page 1 it shows SQLite.
SQLite sees the counter move, drops its own cache and rereads what it needs.  The pages
passed must include every page that changed between the two LSNs (None drops them all): a
cached page left stale corrupts what SQLite reads.

Public API
----------
========================  ===================================================================
`PageSource`              what the VFS reads: get_page(page), db_size(); the integrator's
`CommitSink`              what the VFS commits to: commit(dirty, db_size); the integrator's
`CommitFailedError`       a sync whose commit failed (what the client sees; chains the cause)
`PageVfs`                 the VFS: connect(name), reset_cache(pages) for replicas
`open_database`           a PageVfs and its one connection, the pragmas applied
`PRAGMAS`                 the pragmas every connection runs under, and why
========================  ===================================================================

The VFS is not thread-safe: SQLite calls it from the connection's thread, and `reset_cache`
belongs to that thread too.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol

import apsw

from impl.pagewal import PAGE_SIZE

__all__ = [
    "DEFAULT_CACHE_PAGES",
    "PRAGMAS",
    "CommitFailedError",
    "CommitSink",
    "PageSource",
    "PageVfs",
    "open_database",
]

# The local page cache's default capacity: 32 MiB of 4 KiB pages.  SQLite's own cache (2000
# KiB by default) sits in front of it; this one spares a GetPage@LSN round trip when SQLite
# evicts a page and wants it back.
DEFAULT_CACHE_PAGES = 8192

# The pragmas every connection runs under, in the order they are applied; the value is what
# SQLite must answer when asked back.  Each keeps a file out of the VFS or makes a sync mean a
# commit.  page_size first: it only takes effect before the database has a page.  locking_mode
# before journal_mode: otherwise changing the journal mode deletes the journal file (xDelete).
PRAGMAS: tuple[tuple[str, str], ...] = (
    ("page_size", str(PAGE_SIZE)),  # pagewal's page size; fixed for the database's life
    ("locking_mode", "exclusive"),  # one writer per branch (the proposer's term): no
                                    # relocking, and SQLite keeps its cache across commits
    ("journal_mode", "memory"),     # the rollback journal never reaches a file (WAL mode
                                    # would never write the main file at all)
    ("cache_spill", "off"),         # no uncommitted page reaches xWrite before COMMIT
    ("temp_store", "memory"),       # temporary tables, indices and statement journals
    ("synchronous", "normal"),      # exactly one xSync per commit (OFF: none, no commit)
)

# A read-only connection rereads the change counter at each read transaction (see "Replicas"):
# it runs under PRAGMAS with this locking mode instead.
_READ_ONLY_LOCKING = "normal"

# Other spellings SQLite accepts for the values in PRAGMAS (what it answers when asked back
# for temp_store and synchronous, and cache_spill's booleans).
_SPELLINGS: dict[str, frozenset[str]] = {
    "cache_spill": frozenset({"0", "false", "no"}),
    "temp_store": frozenset({"2"}),
    "synchronous": frozenset({"1"}),
}

# The files SQLite may ask for besides the main database, by their open flag: what each is
# and which pragma keeps it in memory.  xOpen refuses them all with this in the message.
_OTHER_FILES: tuple[tuple[int, str, str], ...] = (
    (apsw.SQLITE_OPEN_MAIN_JOURNAL, "a rollback journal", "journal_mode=MEMORY"),
    (apsw.SQLITE_OPEN_WAL, "a write-ahead log", "journal_mode=MEMORY (WAL mode cannot be used)"),
    (apsw.SQLITE_OPEN_TEMP_DB, "a temporary database", "temp_store=MEMORY"),
    (apsw.SQLITE_OPEN_TEMP_JOURNAL, "a temporary database's journal", "temp_store=MEMORY"),
    (apsw.SQLITE_OPEN_TRANSIENT_DB, "a transient database", "temp_store=MEMORY"),
    (apsw.SQLITE_OPEN_SUBJOURNAL, "a statement journal", "temp_store=MEMORY"),
    (apsw.SQLITE_OPEN_SUPER_JOURNAL, "a super-journal", "one database per compute: no ATTACH"),
)

_ZERO_PAGE = bytes(PAGE_SIZE)
_U32 = 2**32
# Page 1's header fields the replica epoch is added to: the change counter and its copy.
_CHANGE_COUNTER = 24
_VERSION_VALID_FOR = 92

# Unique VFS names: SQLite's registry is process-wide, and a name registered again replaces
# the earlier VFS, which may still serve a connection.
_vfs_numbers = itertools.count(1)


class PageSource(Protocol):
    """The pageserver, pinned at the compute's current LSN (the integrator's object).

    Calls block: the VFS runs in SQLite's thread and waits for the answer.  For a writer,
    "current" moves with each commit: once `CommitSink.commit` has returned, reads must see
    that commit (GetPage@LSN at its commit LSN, waiting for ingest), because the VFS may
    evict a page it wrote and read it back.  A read-only VFS's LSN moves only with
    `PageVfs.reset_cache`.
    """

    def get_page(self, page: int) -> bytes:
        """Page `page` (0-based) at the pinned LSN: PAGE_SIZE bytes, zeros for a hole."""
        ...

    def db_size(self) -> int:
        """The database's size in pages at the pinned LSN (0: a fresh database)."""
        ...


class CommitSink(Protocol):
    """Where a transaction's pages go: one record appended and committed (the integrator's).

    Called synchronously inside `xSync`; returning means committed.  Raising means not
    committed: the VFS turns it into `CommitFailedError` and SQLite rolls back.
    """

    def commit(self, dirty: dict[int, bytes], db_size: int) -> None:
        """Commit one transaction.

        Args:
            dirty: every page written since the last sync, 0-based page -> full new bytes
                (all below `db_size`); empty for a truncation alone.
            db_size: the database's size in pages after the transaction.
        """
        ...


class CommitFailedError(apsw.IOError):
    """A transaction's commit failed, so SQLite rolled it back (an SQLITE_IOERR).

    Raised from `xSync` (or from `xTruncate` for VACUUM's shrink); apsw re-raises it from the
    statement that committed.  The message says what failed and carries the sink's message;
    ``__cause__`` is the sink's exception.  `extendedresult` is SQLITE_IOERR_FSYNC for a failed
    commit and SQLITE_IOERR_TRUNCATE for a failed truncation (apsw hands it to SQLite).
    """

    def __init__(self, message: str, extendedresult: int) -> None:
        super().__init__(message)
        self.result = apsw.SQLITE_IOERR
        self.extendedresult = extendedresult


class _PageCache:
    """Committed page versions, least recently used first, at most `capacity` pages."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._pages: OrderedDict[int, bytes] = OrderedDict()

    def get(self, page: int) -> bytes | None:
        data = self._pages.get(page)
        if data is not None:
            self._pages.move_to_end(page)
        return data

    def put(self, page: int, data: bytes) -> None:
        self._pages[page] = data
        self._pages.move_to_end(page)
        while len(self._pages) > self.capacity:
            self._pages.popitem(last=False)

    def drop(self, pages: Iterable[int] | None) -> None:
        """Forget `pages`, or every page if None."""
        if pages is None:
            self._pages.clear()
            return
        for page in pages:
            self._pages.pop(page, None)

    def drop_from(self, size: int) -> None:
        """Forget the pages a truncation to `size` pages removed."""
        self.drop([page for page in self._pages if page >= size])


def _is_value(pragma: str, spelling: str, value: str) -> bool:
    """Whether `spelling` (as a client or SQLite wrote it) means `value` for `pragma`."""
    spelling = spelling.strip("'\"").lower()
    return spelling == value or spelling in _SPELLINGS.get(pragma, frozenset())


def _describe_file(flags: int) -> tuple[str, str]:
    """(what the file is, the pragma that keeps it in memory) for a refused open."""
    for flag, what, pragma in _OTHER_FILES:
        if flags & flag:
            return what, pragma
    return f"a file with open flags {flags:#x}", "the pragmas in impl.pagevfs.PRAGMAS"


class _MainFile:
    """The main database file: SQLite's reads, writes, syncs and truncations of it.

    The file's contents are, page by page: the dirty buffer, else (below the committed size)
    the committed version from the cache or the source, else zeros (a hole).
    """

    def __init__(self, vfs: PageVfs, name: str) -> None:
        self._vfs = vfs
        self._name = name
        self._source = vfs.source
        self._sink = vfs.sink
        self._read_only = vfs.read_only
        self._cache = vfs.cache
        self._committed_size = self._source.db_size()
        self._size = self._committed_size  # pages, as SQLite sees the file
        self._dirty: dict[int, bytes] = {}
        self._synced = True  # no write since the last sync (rule 5)
        self._after_failure = False  # a sync failed; SQLite's rollback writes may follow
        self._lock = apsw.SQLITE_LOCK_NONE
        self._epoch = 0  # replica: added to page 1's change counter (see "Replicas")
        self._pragmas = dict(vfs.pragmas)

    # -- reads --------------------------------------------------------------------------------

    def _committed(self, page: int) -> bytes:
        """The committed version of `page` (below the committed size), cached."""
        data = self._cache.get(page)
        if data is None:
            data = self._source.get_page(page)
            if type(data) is not bytes or len(data) != PAGE_SIZE:
                got = f"{len(data)} bytes" if type(data) is bytes else type(data).__name__
                raise apsw.IOError(
                    f"page source returned {got} for page {page} of {self._name!r}; pages are"
                    f" {PAGE_SIZE} bytes"
                )
            self._cache.put(page, data)
        return data

    def _page(self, page: int) -> bytes:
        """The page as SQLite must see it: dirty, committed, or a hole."""
        data = self._dirty.get(page)
        if data is None:
            data = self._committed(page) if page < self._committed_size else _ZERO_PAGE
        if page == 0 and self._epoch:
            data = self._with_epoch(data)
        return data

    def _with_epoch(self, page0: bytes) -> bytes:
        """Page 1 with the replica epoch added to the change counter and its copy."""
        patched = bytearray(page0)
        for offset in (_CHANGE_COUNTER, _VERSION_VALID_FOR):
            counter = int.from_bytes(patched[offset : offset + 4], "big")
            patched[offset : offset + 4] = ((counter + self._epoch) % _U32).to_bytes(4, "big")
        return bytes(patched)

    def xRead(self, amount: int, offset: int) -> bytes:
        """Whole pages, plus the header's 100 bytes at open and 16 at offset 24 per read
        transaction (NORMAL locking).  Short past the end: apsw zero-fills the rest and SQLite
        takes the short read as zeros (a fresh database's header read)."""
        end = min(offset + amount, self._size * PAGE_SIZE)
        parts = []
        while offset < end:
            page, start = divmod(offset, PAGE_SIZE)
            take = min(PAGE_SIZE - start, end - offset)
            parts.append(self._page(page)[start : start + take])
            offset += take
        return b"".join(parts)

    def xFileSize(self) -> int:
        """The size SQLite has made the file, uncommitted growth included."""
        return self._size * PAGE_SIZE

    # -- writes -------------------------------------------------------------------------------

    def _refuse_if_read_only(self, what: str) -> None:
        if self._read_only:
            raise apsw.ReadOnlyError(
                f"{what} of {self._name!r} refused: this compute is read-only (a snapshot or a"
                " replica)"
            )

    def _whole_pages(self, what: str, size: int) -> int:
        if size % PAGE_SIZE:
            raise apsw.IOError(
                f"{what} of {self._name!r} at {size} bytes is not page-aligned: the page size"
                f" must be {PAGE_SIZE} (PRAGMA page_size)"
            )
        return size // PAGE_SIZE

    def xWrite(self, data: bytes, offset: int) -> None:
        """Whole, aligned pages (the page size is fixed); buffered until the sync (rule 3)."""
        self._refuse_if_read_only("write")
        page = self._whole_pages("write", offset)
        if len(data) != PAGE_SIZE:
            raise apsw.IOError(
                f"write of {len(data)} bytes to page {page} of {self._name!r}: the page size"
                f" must be {PAGE_SIZE} (PRAGMA page_size)"
            )
        data = bytes(data)  # our copy: SQLite reuses its buffer
        self._synced = False
        self._size = max(self._size, page + 1)
        if page < self._committed_size:
            # Rule 4: compare with the committed version when it is at hand, and after a
            # failed sync (SQLite's rollback) even when it has to be fetched.
            committed = self._committed(page) if self._after_failure else self._cache.get(page)
            if committed == data:
                self._dirty.pop(page, None)
                return
        self._dirty[page] = data

    def xTruncate(self, newsize: int) -> None:
        """VACUUM's shrink, after its sync (measured): then a commit of its own (rule 5)."""
        self._refuse_if_read_only("truncate")
        size = self._whole_pages("truncate", newsize)
        for page in [p for p in self._dirty if p >= size]:
            del self._dirty[page]
        self._size = size
        if self._synced:
            # Measured: SQLite does not roll back when this raises; the VACUUM's pages stay
            # committed and the file its old size, which is what the VFS is back at.
            self._commit(
                f"truncation of {self._name!r} to {size} pages failed (its pages are"
                " committed, the file keeps its size)",
                apsw.SQLITE_IOERR_TRUNCATE,
            )

    def xSync(self, flags: int) -> None:
        """Once per commit, after its writes (synchronous=NORMAL): the commit (rule 2)."""
        self._refuse_if_read_only("sync")
        self._synced = True
        try:
            self._commit(
                f"commit of {len(self._dirty)} pages of {self._name!r} (db_size {self._size})"
                " failed, the transaction is rolled back",
                apsw.SQLITE_IOERR_FSYNC,
            )
        except BaseException:
            self._after_failure = True  # SQLite's rollback writes come next (rule 4)
            raise
        self._after_failure = False  # this sync ended any rollback's writes

    def _commit(self, failure: str, code: int) -> None:
        """Hand the changes since the last commit to the sink; on failure, forget them.

        Args:
            failure: what failed, for the error's message.
            code: the error's SQLite extended result code.

        Raises:
            CommitFailedError: the sink raised; the VFS is back at the committed state.
        """
        if not self._dirty and self._size == self._committed_size:
            return
        dirty, self._dirty = self._dirty, {}
        try:
            self._sink.commit(dict(dirty), self._size)
        except BaseException as exc:
            self._size = self._committed_size
            if not isinstance(exc, Exception):
                raise
            raise CommitFailedError(f"{failure}: {type(exc).__name__}: {exc}", code) from exc
        self._cache.drop_from(self._size)
        for page, data in dirty.items():
            self._cache.put(page, data)
        self._committed_size = self._size

    # -- locks, replicas, the rest ------------------------------------------------------------

    def xLock(self, level: int) -> None:
        """No other process shares this file: locks only track whether a transaction is open."""
        self._lock = level

    def xUnlock(self, level: int) -> None:
        """Down to SHARED or NONE; NONE ends a read transaction (NORMAL locking)."""
        self._lock = level

    def xCheckReservedLock(self) -> bool:
        """No other connection can hold a lock on this file: its journal is never hot."""
        return False

    def reset(self, pages: Iterable[int] | None) -> None:
        """A replica moves on: see `PageVfs.reset_cache`."""
        if self._lock != apsw.SQLITE_LOCK_NONE:
            raise RuntimeError(
                f"reset_cache while a read transaction on {self._name!r} is open: finish (or"
                " reset) its statements first, or SQLite would mix pages of two LSNs"
            )
        self._cache.drop(pages)
        self._committed_size = self._size = self._source.db_size()
        self._epoch += 1

    def xFileControl(self, op: int, ptr: int) -> bool:
        """Every PRAGMA passes here first (SQLITE_FCNTL_PRAGMA): refuse changing a fixed one."""
        if op != apsw.SQLITE_FCNTL_PRAGMA:
            return False
        pragma = apsw.VFSFcntlPragma(ptr)
        name = pragma.name.lower()
        if pragma.value is None or name not in self._pragmas:
            return False  # a query, or a pragma we do not guard: SQLite handles it
        if _is_value(name, pragma.value, self._pragmas[name]):
            return False
        raise apsw.SQLError(
            f"PRAGMA {name}={pragma.value} refused: the compute runs with"
            f" {name}={self._pragmas[name]} (impl/pagevfs.py, PRAGMAS)"
        )

    def xSectorSize(self) -> int:
        """Only the in-memory journal pads to sectors: say a page."""
        return PAGE_SIZE

    def xDeviceCharacteristics(self) -> int:
        """No atomic-write or safe-append promises: SQLite's default behaviour."""
        return 0

    def xClose(self) -> None:
        """The connection is closing: the VFS may open its database again."""
        self._vfs._forget_file(self)


class PageVfs(apsw.VFS):
    """The VFS of one compute: one main database over `source`, committing to `sink`.

    Registered under a unique name (`vfsname`) for as long as the object or a connection
    using it lives.  Everything but opening files is inherited from SQLite's default VFS
    (randomness, time, sleep, extension loading), and no call here touches local disk.
    """

    def __init__(
        self,
        source: PageSource,
        sink: CommitSink | None = None,
        *,
        read_only: bool = False,
        cache_pages: int = DEFAULT_CACHE_PAGES,
    ) -> None:
        """Args:
            source: the pageserver pinned at the compute's LSN.
            sink: where commits go; None only for a read-only VFS.
            read_only: a snapshot or a replica: writes are refused (rule 6).
            cache_pages: the local page cache's capacity, in pages (0: no cache).

        Raises:
            ValueError: a writable VFS without a sink, or a bad `cache_pages`.
        """
        if sink is None and not read_only:
            raise ValueError("a writable PageVfs needs a CommitSink")
        if type(cache_pages) is not int or cache_pages < 0:
            raise ValueError(f"cache_pages must be an int >= 0, got {cache_pages!r}")
        self.source = source
        self.sink = sink
        self.read_only = read_only
        self.cache = _PageCache(cache_pages)
        self.pragmas = tuple(
            (pragma, _READ_ONLY_LOCKING if read_only and pragma == "locking_mode" else value)
            for pragma, value in PRAGMAS
        )
        self.vfsname = f"paxwal-pagevfs-{next(_vfs_numbers)}"
        self._file: _MainFile | None = None
        super().__init__(self.vfsname, base="")

    def connect(self, name: str) -> apsw.Connection:
        """Open the connection to this VFS's database and apply `PRAGMAS`.

        Args:
            name: the database's name as SQLite sees it (it appears in error messages).

        Returns:
            The connection: read-write, or read-only with ``query_only`` for a read-only VFS.

        Raises:
            RuntimeError: a connection to this VFS is already open.
            ValueError: the database has another page size than PAGE_SIZE, or SQLite did not
                take a pragma.
        """
        if self._file is not None:
            raise RuntimeError(f"{self.vfsname} already serves a connection: one per compute")
        if self.read_only:
            flags = apsw.SQLITE_OPEN_READONLY
        else:
            flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
        connection = apsw.Connection(name, flags=flags, vfs=self.vfsname)
        try:
            for pragma, value in self.pragmas:
                connection.execute(f"PRAGMA {pragma}={value}").fetchall()
                answer = str(connection.execute(f"PRAGMA {pragma}").fetchone()[0])
                if not _is_value(pragma, answer, value):
                    raise ValueError(
                        f"PRAGMA {pragma} of {name!r} is {answer}, the compute needs {value}"
                        + (" (the database was created with another page size)"
                           if pragma == "page_size" else "")
                    )
            if self.read_only:
                connection.execute("PRAGMA query_only=1")
        except BaseException:
            connection.close()
            raise
        return connection

    def reset_cache(self, changed_pages: Iterable[int] | None = None) -> None:
        """A replica's source moved to a newer LSN: forget what may have changed.

        Call it between read transactions, after moving the source.  Drops the VFS's cached
        versions of `changed_pages` (None: all) and rereads the size; SQLite drops its own
        cache at its next read transaction, seeing page 1's change counter move.

        Args:
            changed_pages: 0-based pages written between the old LSN and the new, or None.

        Raises:
            RuntimeError: the VFS is writable (its cache is the truth: there is nothing newer
                to see), or a read transaction is open on its connection.
        """
        if not self.read_only:
            raise RuntimeError("reset_cache is for read-only computes; a writer's cache is current")
        if self._file is None:
            self.cache.drop(changed_pages)
            return
        self._file.reset(changed_pages)

    def _forget_file(self, file: _MainFile) -> None:
        """`file` was closed (its xClose)."""
        if self._file is file:
            self._file = None

    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> _MainFile:
        """The main database (SQLITE_OPEN_MAIN_DB), once; anything else is refused (rule 1)."""
        filename = name.filename() if isinstance(name, apsw.URIFilename) else name
        if not flags[0] & apsw.SQLITE_OPEN_MAIN_DB:
            what, pragma = _describe_file(flags[0])
            shown = "an unnamed file" if filename is None else repr(filename)
            raise apsw.CantOpenError(
                f"SQLite asked the paxwal compute to open {shown}, {what}: refused, the compute"
                f" keeps no local files ({pragma} should have prevented it)"
            )
        if self._file is not None:
            raise apsw.CantOpenError(
                f"SQLite asked {self.vfsname} to open {filename!r} as a second database: one"
                " database per compute (no ATTACH, no VACUUM INTO)"
            )
        self._file = _MainFile(self, filename)
        flags[1] = flags[0]
        if self.read_only:
            # Told so, SQLite refuses writes itself ("attempt to write a readonly database").
            flags[1] = flags[1] & ~(apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
            flags[1] |= apsw.SQLITE_OPEN_READONLY
        return self._file

    def xAccess(self, pathname: str, flags: int) -> bool:
        """SQLite asks about its journal and WAL files: no file but the main one exists."""
        return False

    def xDelete(self, filename: str, syncdir: bool) -> None:
        """Nothing to delete (rule 1): report the file missing, which SQLite accepts."""
        error = apsw.IOError(f"{filename!r} does not exist: the paxwal compute keeps no files")
        error.extendedresult = apsw.SQLITE_IOERR_DELETE_NOENT
        raise error

    def xFullPathname(self, name: str) -> str:
        """Names are not paths here: the default VFS would prefix the working directory."""
        return name


def open_database(
    name: str,
    source: PageSource,
    sink: CommitSink | None = None,
    *,
    cache_pages: int = DEFAULT_CACHE_PAGES,
    read_only: bool = False,
) -> apsw.Connection:
    """Open a compute's database: a new `PageVfs` and its one connection.

    Args:
        name: the database's name as SQLite sees it.
        source: the pageserver pinned at the compute's LSN.
        sink: where commits go; None only with `read_only`.
        cache_pages: the local page cache's capacity, in pages.
        read_only: a snapshot (pinned LSN) or a replica; a replica needs the VFS for
            `reset_cache`, so build it with ``PageVfs(...).connect(name)`` instead.

    Returns:
        The connection, pragmas applied.  It keeps its VFS alive.

    Raises:
        ValueError: see `PageVfs` and `PageVfs.connect`.
    """
    return PageVfs(source, sink, read_only=read_only, cache_pages=cache_pages).connect(name)
