"""Page WAL records: what a compute writes into the replicated WAL, one per transaction.

Theory of operation
===================

The WAL is the database (DESIGN.md §7).  The compute (issue 9) turns each committed SQLite
transaction into one record; the pageserver (issue 8) reads the committed WAL back and keeps
every page version at every LSN.  This file is the contract between the two: the record, its
bytes, and the redo that turns a base image and deltas into a page.  Rules of this file:

1. Pure and synchronous.  No I/O, no clock: the compute passes its commit time in, the
   pageserver passes WAL bytes in.  `redo` is the one definition of what a delta means: the
   compute's deltas are tested against it, and the pageserver rebuilds pages with it, so a
   rebuilt page is byte for byte the page the compute wrote.
2. A decoded record is a valid record, or `PageWalError` names the LSN where the record starts
   and what is wrong.  Never a wrong page: every byte is covered by a CRC32C, and the body is
   checked field by field by the same constructors that check a record built locally.
3. A record's LSN is its *end* LSN, like Postgres' commit LSN: the pageserver has ingested a
   record when its last byte is in, and GetPage@LSN at that LSN sees the transaction.

What a record means
-------------------
`PageRecord(page_size, db_size, commit_time, pages)`: after this transaction

* the database is `db_size` pages long (pages are numbered from 0: SQLite's page number
  minus one);
* each page in `pages` has a new version: a `PageImage` is the whole page, a `PageDelta` is
  the previous version of that page with some byte ranges overwritten (`redo`);
* pages not in `pages` keep their versions, except that a shrink (VACUUM truncating the file)
  removes every page at or beyond `db_size`: from this LSN on they have no version;
* a page below `db_size` with no version (never written, or not since a truncation) reads as
  zeros, like a hole in a file.  The builder never writes a delta against such a page: it
  logs an image instead (see `RecordBuilder`), so a redo chain never crosses a truncation.

This is Neon's data model (neon-protocol.md §8.1) with SQLite's single file instead of
relations: a `PageImage` is Neon's ``Value::Image``, a `PageDelta` a ``WalRecord`` that does
not ``will_init``, and reconstruction walks back to the newest image and replays the deltas
oldest first (§8.4).  Unlike Postgres' WAL, a delta is not an operation to re-execute but the
changed bytes themselves, so redo is a dozen lines here instead of a ``postgres --wal-redo``
process (§8.5).  Images come every `image_every` versions of a page, bounding every redo chain,
and for the first version of a page a compute logs, as Postgres' full_page_writes logs a whole
page the first time it changes after a checkpoint.

Framing
-------
The replicated WAL is a byte stream: the compute appends each record through the proposer, and
the pageserver receives committed bytes in arbitrary chunks (commit_lsn may land inside a
record: the proposer streams WAL in chunks of at most `max_send` bytes, and a quorum may have
flushed part of a record).  Each record is framed, all
integers big-endian::

    offset  size  field
    0       4     magic b"PXPG"
    4       1     format version (FORMAT_VERSION)
    5       4     body length, 1 .. MAX_RECORD
    9       4     CRC32C of the body
    13      4     CRC32C of bytes 0..12 (the header so far)
    17      n     body: one CBOR item

The header has its own CRC so that a damaged length is refused as soon as the header arrives,
rather than trusted: with only a body CRC, a length bit flipped upwards would make the reader
wait, silently and forever, for bytes that will never come.  The magic and version are
checked before the header CRC only to give a clearer message (a misaligned start LSN or
another writer's bytes; a newer writer whose header may differ).  The record does not hold its
own LSN (Postgres' ``xl_prev``): the compute does not know where the proposer will place its
bytes (`Proposer.append` returns only the end), and the reader's LSN arithmetic is exact.

Body, positional (it lives in the WAL, hence in the database's history, forever, so the field
names of a CBOR map would cost more than the change they describe)::

    [page_size, db_size, commit_time, [entry, ...]]
    entry = [page, image]                      image: a byte string of page_size bytes
          | [page, [[offset, bytes], ...]]     a delta: its ranges

Entries are sorted by page, each page at most once, every page < db_size; ranges are sorted,
non-empty, do not overlap and end within the page.  Only unsigned integers, byte strings and
definite-length arrays appear: no maps, tags, floats or indefinite lengths.  Version rule, as
in impl/wire.py: any change to the header or the body bumps FORMAT_VERSION, and a reader
refuses a version it does not know.

Blame, as in impl/wire.py: `PageWalError` is bad data (a record in the WAL that is not valid),
`RedoError` a chain of versions that cannot make a page; misuse by our own code (an invalid
record built locally, a page of the wrong size handed to the builder) raises ValueError or
TypeError, and `RuntimeError` for a call out of turn.

Public API
----------
=========================  ================================================================
`encode_record`            a record's bytes: header and body, ready to append
`decode_record`            exactly one record's bytes -> PageRecord (checks everything)
`RecordReader`             committed WAL bytes in any chunks -> (end LSN, PageRecord), ...
`make_delta`, `redo`       the diff and its inverse; redo is what GetPage@LSN runs
`RecordBuilder`            the compute's side: dirty pages -> PageRecord, commit()/abort()
`describe`                 one stable line per record, for logs and tests
=========================  ================================================================
"""

from __future__ import annotations

import functools
import io
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import NoReturn, TypeAlias

import attrs
import cbor2
import crc32c

from impl.wire import format_lsn

__all__ = [
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "IMAGE_EVERY",
    "MAGIC",
    "MAX_RECORD",
    "MERGE_GAP",
    "PAGE_SIZE",
    "PageDelta",
    "PageEntry",
    "PageImage",
    "PageRecord",
    "PageWalError",
    "RecordBuilder",
    "RecordReader",
    "RedoError",
    "decode_record",
    "describe",
    "encode_record",
    "make_delta",
    "redo",
]

MAGIC = b"PXPG"
# Bump on any change to the header or the body (see "Version rule").
FORMAT_VERSION = 1

# SQLite's default page size.  A database has one page size for life; every record carries it
# so that a reader configured for another size refuses the WAL instead of misplacing bytes.
PAGE_SIZE = 4096
# The page sizes SQLite allows: powers of two from 512 to 65536.
_PAGE_SIZES = frozenset(1 << n for n in range(9, 17))

# Upper bound on a record's body: one transaction's dirty pages (about 16000 pages of 4 KiB).
# It bounds what a reader buffers for one record; the compute's SQLite holds the same
# transaction in its memory journal, so a larger one would strain the compute first.
MAX_RECORD = 64 * 1024 * 1024

# Every image_every-th version of a page is logged whole, so a redo chain holds at most
# image_every - 1 deltas wherever GetPage@LSN looks, even before the pageserver compacts.  The
# price is WAL volume: a page that changes by a few bytes per transaction averages about
# page_size / 16 = 256 bytes per version instead of about 40.  Neon logs no such images (its
# compaction creates image layers on the pageserver); once ours does, this can grow.
IMAGE_EVERY = 16

# make_delta merges two changed runs separated by at most this many unchanged bytes.  A separate
# range costs its CBOR array head (1 byte), its offset (3 bytes from offset 256 up, 2 from 24)
# and its byte-string head (1 byte below 24 bytes): about 5 bytes, so a gap of up to 4 costs
# no more inline than a range does, and gives redo fewer slices to copy.  Measured in
# tests/test_pagewal.py (test_merge_gap_is_measured).
MERGE_GAP = 4

# Encoded overhead of one range, for the builder's "would an image be no bigger?" test: the
# worst case of the heads above (1 + 3 + 3).
_RANGE_OVERHEAD = 7

_U32_LIMIT = 2**32  # page numbers and db_size: SQLite counts pages in 32 bits
_U64_LIMIT = 2**64  # commit_time in microseconds

_HEADER_HEAD = struct.Struct(">4sBII")  # magic, version, body length, body CRC
_HEADER = struct.Struct(">4sBIII")  # ... and the CRC of the head above
HEADER_SIZE = _HEADER.size  # 17

# body list > pages list > entry list > ranges list > range list: five levels.  Deeper is
# garbage, and refusing it bounds the CBOR decoder's recursion.
_MAX_CBOR_DEPTH = 5

# The tags cbor2 6.x decodes by itself, bypassing tag_hook (the probe behind impl/wire.py's
# identical list).  None belongs in a record; each is refused before its decoder runs.
_CBOR2_SEMANTIC_TAGS = (
    0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261, 1004,
    43000, 55799,
)


class PageWalError(Exception):
    """A record in the WAL is not valid: the pageserver must stop ingesting at `lsn`.

    The message is ``page WAL record at <lsn>: <problem>``, where `lsn` (also an attribute,
    with `problem`) is where the bad record starts: the end of the last good one.
    """

    def __init__(self, lsn: int, problem: str) -> None:
        super().__init__(f"page WAL record at {format_lsn(lsn)}: {problem}")
        self.lsn = lsn
        self.problem = problem


class RedoError(Exception):
    """The base image and deltas given to `redo` cannot make a page.

    A delta without a base means the history lacks an image (or lost one); a range past the
    base's end means the versions belong to databases of different page sizes.  Either is a
    bug upstream of redo, and guessing (a zero base, clipping) would hand out a wrong page.
    """


# ---------------------------------------------------------------------------------------------
# Field checks.  Constructors raise ValueError; decoding wraps it as PageWalError with the LSN.
# ---------------------------------------------------------------------------------------------


def _show(value: object) -> str:
    """A bad value, briefly: it may come from the WAL, megabytes long or a huge integer."""
    if type(value) is int:
        return f"int {value}" if value.bit_length() <= 64 else f"int of {value.bit_length()} bits"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{type(value).__name__} of {len(value)} bytes"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)} items"
    return type(value).__name__


def _check_int(field: str, value: object, limit: int) -> None:
    # `type(...) is int`, not isinstance: True is no page number.
    if type(value) is not int:
        raise ValueError(f"{field}: expected an integer, got {_show(value)}")
    if not 0 <= value < limit:
        raise ValueError(f"{field}: {_show(value)} is outside 0..{limit - 1}")


def _u32(name: str) -> Callable[[object, attrs.Attribute, object], None]:
    def check(_instance: object, _attribute: attrs.Attribute, value: object) -> None:
        _check_int(name, value, _U32_LIMIT)

    return check


def _check_image(_instance: object, _attribute: attrs.Attribute, value: object) -> None:
    # Exactly bytes: a record is immutable, and a bytearray would let its page change later.
    if type(value) is not bytes:
        raise ValueError(f"image: expected bytes, got {_show(value)}")


def _check_ranges(_instance: object, _attribute: attrs.Attribute, value: object) -> None:
    if type(value) is not tuple:
        raise ValueError(f"ranges: expected a tuple of (offset, bytes), got {_show(value)}")
    if not value:
        raise ValueError("ranges: a delta changes at least one byte (an unchanged page is skipped)")
    end = 0
    for i, pair in enumerate(value):
        if type(pair) is not tuple or len(pair) != 2:
            raise ValueError(f"ranges[{i}]: expected an (offset, bytes) pair, got {_show(pair)}")
        offset, data = pair
        _check_int(f"ranges[{i}].offset", offset, _U32_LIMIT)
        if type(data) is not bytes:
            raise ValueError(f"ranges[{i}].bytes: expected bytes, got {_show(data)}")
        if not data:
            raise ValueError(f"ranges[{i}].bytes: empty (a range changes at least one byte)")
        if offset < end:
            raise ValueError(
                f"ranges[{i}]: offset {offset} is before the end of the previous range ({end});"
                " ranges are sorted and do not overlap"
            )
        end = offset + len(data)


def _list_to_tuple(value: object) -> object:
    # A convenience for local callers; anything else goes to the validator as is.
    return tuple(value) if type(value) is list else value


@attrs.frozen
class PageImage:
    """A whole new version of `page` (Neon's ``Value::Image``): redo can start from it."""

    page: int = attrs.field(validator=_u32("page"))
    image: bytes = attrs.field(validator=_check_image, repr=lambda b: f"<{len(b)} bytes>")


@attrs.frozen
class PageDelta:
    """A new version of `page`: the previous version with `ranges` overwritten.

    `ranges` are ``(offset, bytes)`` pairs, sorted, non-empty, not overlapping.  That they end
    within the page is checked by the record, which knows the page size.
    """

    page: int = attrs.field(validator=_u32("page"))
    ranges: tuple[tuple[int, bytes], ...] = attrs.field(
        converter=_list_to_tuple,
        validator=_check_ranges,
        repr=lambda r: f"<{len(r)} ranges, {sum(len(d) for _, d in r)} bytes>",
    )


PageEntry: TypeAlias = PageImage | PageDelta


def _check_page_size(_instance: object, _attribute: attrs.Attribute, value: object) -> None:
    _check_int("page_size", value, _U32_LIMIT)
    if value not in _PAGE_SIZES:
        raise ValueError(f"page_size: {value} is not one of SQLite's (a power of two, 512..65536)")


def _check_commit_time(_instance: object, _attribute: attrs.Attribute, value: object) -> None:
    _check_int("commit_time", value, _U64_LIMIT)


def _check_pages(_instance: object, _attribute: attrs.Attribute, value: object) -> None:
    if type(value) is not tuple:
        raise ValueError(f"pages: expected a tuple of PageImage/PageDelta, got {_show(value)}")
    for i, entry in enumerate(value):
        if type(entry) not in (PageImage, PageDelta):
            raise ValueError(f"pages[{i}]: expected a PageImage or a PageDelta, got {_show(entry)}")


@attrs.frozen
class PageRecord:
    """One transaction's page changes, as logged in the WAL (see "What a record means").

    Attributes:
        page_size: the database's page size in bytes; every image is exactly this long.
        db_size: the database's size in pages after the transaction.  It may shrink (VACUUM
            truncates); every page in `pages` is below it.
        commit_time: microseconds since the Unix epoch, from the compute's clock.  The
            pageserver maps times to LSNs with it (PITR by time), so it should not go back;
            as in Postgres and Neon it is a hint, and nothing breaks if a clock steps back.
        pages: PageImage/PageDelta entries sorted by page, each page at most once.  Empty is
            valid: a truncation changes the size alone.
    """

    page_size: int = attrs.field(validator=_check_page_size)
    db_size: int = attrs.field(validator=_u32("db_size"))
    commit_time: int = attrs.field(validator=_check_commit_time)
    pages: tuple[PageEntry, ...] = attrs.field(converter=_list_to_tuple, validator=_check_pages)

    def __attrs_post_init__(self) -> None:
        previous = -1
        for i, entry in enumerate(self.pages):
            if entry.page <= previous:
                raise ValueError(
                    f"pages[{i}]: page {entry.page} after page {previous};"
                    " pages are sorted and each appears at most once"
                )
            previous = entry.page
            # A page at or past db_size does not exist once the transaction commits: logging
            # it would give the pageserver a version of a page the same record removes.
            if entry.page >= self.db_size:
                raise ValueError(f"pages[{i}]: page {entry.page} is not below db_size {self.db_size}")
            if type(entry) is PageImage:
                if len(entry.image) != self.page_size:
                    raise ValueError(
                        f"pages[{i}].image: {len(entry.image)} bytes, the page size is {self.page_size}"
                    )
            else:
                offset, data = entry.ranges[-1]
                if offset + len(data) > self.page_size:
                    raise ValueError(
                        f"pages[{i}].ranges[{len(entry.ranges) - 1}]: ends at {offset + len(data)},"
                        f" past the page size {self.page_size}"
                    )


# ---------------------------------------------------------------------------------------------
# Deltas and redo
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _changed_runs(merge_gap: int) -> re.Pattern[bytes]:
    """Runs of changed bytes (non-zero in old XOR new), extended over gaps of at most
    `merge_gap` unchanged bytes when another changed run follows.  The two byte classes are
    disjoint, so the nested repetition cannot backtrack badly."""
    if merge_gap == 0:
        return re.compile(rb"[^\x00]+")
    return re.compile(rb"[^\x00]+(?:\x00{1,%d}[^\x00]+)*" % merge_gap)


def make_delta(page: int, old: bytes, new: bytes, *, merge_gap: int = MERGE_GAP) -> PageDelta | None:
    """The delta that turns `old` into `new`: the changed byte ranges of `page`.

    Changed runs separated by at most `merge_gap` unchanged bytes become one range (cheaper to
    encode; see MERGE_GAP).  The diff runs at C speed: the XOR of the two pages as integers
    is zero exactly where the bytes agree, and a regular expression finds the other runs
    (about 60 us for a 4 KiB page).

    Args:
        page: the page number the delta is for.
        old: the previous version of the page.
        new: the new version, as long as `old`.
        merge_gap: the largest unchanged gap merged over (0: ranges hold changed bytes only).

    Returns:
        A PageDelta with ``redo(old, [delta]) == new``, or None if the pages are identical.

    Raises:
        ValueError: the versions differ in length, or a negative `merge_gap` (bugs in the
            caller).
    """
    if len(old) != len(new):
        raise ValueError(f"page {page}: versions of {len(old)} and {len(new)} bytes")
    if type(merge_gap) is not int or merge_gap < 0:
        raise ValueError(f"merge_gap must be an int >= 0, got {merge_gap!r}")
    if old == new:
        return None
    size = len(new)
    xor = (int.from_bytes(old, "big") ^ int.from_bytes(new, "big")).to_bytes(size, "big")
    new = bytes(new)
    ranges = tuple((m.start(), new[m.start() : m.end()]) for m in _changed_runs(merge_gap).finditer(xor))
    return PageDelta(page, ranges)


def redo(base_image: bytes | None, deltas: Sequence[PageDelta]) -> bytes:
    """Rebuild a page: apply `deltas` to `base_image`, oldest first.  Pure.

    This is GetPage@LSN's reconstruction (neon-protocol.md §8.4) for our deltas: the base is
    the page's newest image at or below the LSN, the deltas are its later versions up to it.

    Args:
        base_image: the base version (a PageImage's image), or None if the history holds none.
        deltas: the versions after it, oldest first, all for one page; may be empty.

    Returns:
        The page after the last delta (the base itself if there are none).

    Raises:
        RedoError: there are deltas but no base (a delta does not say what the rest of the
            page holds: the history lacks an image), a range ends past the base, or the deltas
            are for different pages.  Also a missing base with no deltas: there is no page.
    """
    if base_image is None:
        what = f"{len(deltas)} delta(s) for page {deltas[0].page}" if deltas else "no versions"
        raise RedoError(f"{what} but no base image to apply them to")
    if type(base_image) is not bytes:
        raise TypeError(f"base_image must be bytes, not {type(base_image).__name__}")
    if not deltas:
        return base_image
    page = deltas[0].page
    buf = bytearray(base_image)
    for i, delta in enumerate(deltas):
        if type(delta) is not PageDelta:
            raise TypeError(f"deltas[{i}] must be a PageDelta, not {type(delta).__name__}")
        if delta.page != page:
            raise RedoError(f"deltas[{i}] is for page {delta.page}, deltas[0] for page {page}")
        offset, data = delta.ranges[-1]
        if offset + len(data) > len(buf):
            raise RedoError(
                f"page {page}: deltas[{i}] writes up to byte {offset + len(data)}"
                f" of a {len(buf)}-byte base image"
            )
        for offset, data in delta.ranges:
            buf[offset : offset + len(data)] = data
    return bytes(buf)


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def _entry_to_wire(entry: PageEntry) -> list[object]:
    if type(entry) is PageImage:
        return [entry.page, entry.image]
    return [entry.page, [[offset, data] for offset, data in entry.ranges]]


def encode_record(record: PageRecord) -> bytes:
    """A record's bytes in the WAL: header and CBOR body (see "Framing").

    Args:
        record: the record (valid: its constructor checked it).

    Returns:
        The bytes to append through the proposer, as they are.

    Raises:
        TypeError: `record` is not a PageRecord.
        ValueError: the body would exceed MAX_RECORD (a transaction too large to log);
            every reader would refuse it, so it is refused here.
    """
    if type(record) is not PageRecord:
        raise TypeError(f"not a PageRecord: {type(record).__name__}")
    body = cbor2.dumps(
        [record.page_size, record.db_size, record.commit_time, [_entry_to_wire(e) for e in record.pages]]
    )
    if len(body) > MAX_RECORD:
        raise ValueError(
            f"record body of {len(body)} bytes exceeds MAX_RECORD ({MAX_RECORD}):"
            " the transaction changed too many pages"
        )
    head = _HEADER_HEAD.pack(MAGIC, FORMAT_VERSION, len(body), crc32c.crc32c(body))
    return head + struct.pack(">I", crc32c.crc32c(head)) + body


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def _reject_tag(*_args: object) -> NoReturn:
    raise ValueError("CBOR tags are not part of the record format")


_REJECT_SEMANTIC_TAGS: Mapping[int, Callable[..., NoReturn]] = MappingProxyType(
    {tag: _reject_tag for tag in _CBOR2_SEMANTIC_TAGS}
)


def _check_header_start(data: bytes | bytearray, start: int, available: int, lsn: int) -> None:
    """Check whatever of the magic and version has arrived (`available` bytes at `start`)."""
    magic = bytes(data[start : start + min(available, 4)])
    # A wrong first byte is refused at once, without waiting for the other three.
    if not MAGIC.startswith(magic):
        raise PageWalError(
            lsn,
            f"bad magic {magic!r}, expected {MAGIC!r} (not a page record: a start LSN"
            " inside a record, or another writer's WAL)",
        )
    if available >= 5 and data[start + 4] != FORMAT_VERSION:
        raise PageWalError(
            lsn, f"unknown format version {data[start + 4]} (this build reads {FORMAT_VERSION})"
        )


def _parse_header(data: bytes | bytearray, start: int, lsn: int, max_record: int) -> tuple[int, int]:
    """Check a whole header at `start`; return (body length, body CRC)."""
    _check_header_start(data, start, HEADER_SIZE, lsn)
    _magic, _version, length, body_crc, header_crc = _HEADER.unpack_from(data, start)
    computed = crc32c.crc32c(bytes(data[start : start + _HEADER_HEAD.size]))
    if header_crc != computed:
        raise PageWalError(lsn, f"header CRC mismatch (stored {header_crc:#010x}, computed {computed:#010x})")
    # The header CRC matched, so the length is what the writer wrote; still bound it, as a
    # writer that broke MAX_RECORD (or a reader configured tighter) must not make us buffer.
    if not 1 <= length <= max_record:
        raise PageWalError(lsn, f"body length {length} is outside 1..{max_record}")
    return length, body_crc


def _load_body(body: bytes, lsn: int) -> object:
    """Parse the CBOR body, strictly, and insist that it is exactly one item."""
    stream = io.BytesIO(body)
    decoder = cbor2.CBORDecoder(
        stream,
        tag_hook=_reject_tag,
        semantic_decoders=dict(_REJECT_SEMANTIC_TAGS),
        max_depth=_MAX_CBOR_DEPTH,
        allow_indefinite=False,  # the encoder never writes them: one spelling per record
        strict_hashable_types=True,
    )
    try:
        item = decoder.decode()
    # Deliberately broad: a third-party parser on bytes from the WAL.  cbor2's own errors,
    # its hooks' and RecursionError/OverflowError/MemoryError all mean a bad record.
    except Exception as exc:
        raise PageWalError(lsn, f"body is not valid CBOR: {str(exc)[:200]}") from exc
    extra = len(body) - stream.tell()
    if extra:
        raise PageWalError(lsn, f"body has {extra} trailing bytes after its CBOR item")
    return item


def _entry_from_wire(i: int, item: object) -> PageEntry:
    if type(item) is not list or len(item) != 2:
        raise ValueError(f"pages[{i}]: expected [page, image] or [page, ranges], got {_show(item)}")
    page, payload = item
    try:
        if type(payload) is bytes:
            return PageImage(page, payload)
        if type(payload) is list:
            ranges = []
            for j, pair in enumerate(payload):
                if type(pair) is not list or len(pair) != 2:
                    raise ValueError(f"ranges[{j}]: expected [offset, bytes], got {_show(pair)}")
                ranges.append(tuple(pair))
            return PageDelta(page, tuple(ranges))
    except ValueError as exc:
        raise ValueError(f"pages[{i}].{exc}") from None
    raise ValueError(f"pages[{i}]: expected an image (bytes) or ranges (a list), got {_show(payload)}")


def _record_from_body(item: object, lsn: int, page_size: int) -> PageRecord:
    """Check the body's shape, then let the classes' constructors check the values."""
    try:
        if type(item) is not list or len(item) != 4:
            raise ValueError(f"body: expected [page_size, db_size, commit_time, pages], got {_show(item)}")
        size, db_size, commit_time, pages = item
        if type(pages) is not list:
            raise ValueError(f"pages: expected a list, got {_show(pages)}")
        entries = tuple(_entry_from_wire(i, entry) for i, entry in enumerate(pages))
        record = PageRecord(size, db_size, commit_time, entries)
    except ValueError as exc:
        raise PageWalError(lsn, f"field {exc}") from None
    if record.page_size != page_size:
        raise PageWalError(
            lsn, f"page size {record.page_size}, but this database's pages are {page_size} bytes"
        )
    return record


def _decode_body(body: bytes, crc: int, lsn: int, page_size: int) -> PageRecord:
    computed = crc32c.crc32c(body)
    if crc != computed:
        raise PageWalError(lsn, f"body CRC mismatch (stored {crc:#010x}, computed {computed:#010x})")
    return _record_from_body(_load_body(body, lsn), lsn, page_size)


def decode_record(
    data: bytes, lsn: int = 0, *, page_size: int = PAGE_SIZE, max_record: int = MAX_RECORD
) -> PageRecord:
    """Decode exactly one record, as `encode_record` produced it.

    Args:
        data: the record's bytes, nothing more.
        lsn: where it starts in the WAL, for error messages.
        page_size: the database's page size; a record of another is refused.
        max_record: the largest body accepted.

    Returns:
        The record, fully validated.

    Raises:
        PageWalError: the bytes are not one valid record; the message names `lsn` and the
            first thing wrong, checked outside in: magic, version, header CRC, length,
            truncation or trailing bytes, body CRC, CBOR, then fields.
    """
    _check_header_start(data, 0, len(data), lsn)
    if len(data) < HEADER_SIZE:
        raise PageWalError(lsn, f"truncated: {len(data)} bytes, the header alone is {HEADER_SIZE}")
    length, crc = _parse_header(data, 0, lsn, max_record)
    total = HEADER_SIZE + length
    if len(data) != total:
        kind = "truncated" if len(data) < total else "trailing bytes"
        raise PageWalError(lsn, f"{kind}: {len(data)} bytes, the header says {total}")
    return _decode_body(bytes(data[HEADER_SIZE:]), crc, lsn, page_size)


class RecordReader:
    """Turns committed WAL bytes, in any chunks, into records and their end LSNs.  Sans-IO.

    Usage (the pageserver's ingest): `feed` each chunk of committed WAL as it arrives, then
    call `next_record` until it returns None.  Records come out one at a time, rather than as
    a list from `feed`, so that when record N is bad, records before it in the same chunk are
    still handed out (they are committed and valid) before the error is raised.

    `lsn` is the end of the last record handed out: where ingest has reached, and where a
    restarted reader resumes.  Any error is sticky, as in impl/wire.py's FrameDecoder: the
    stream cannot be resynchronised past a bad record, and guessing would risk a wrong page.

    Memory: the reader holds what was fed and not yet handed out.  A header claiming more
    than `max_record` is refused as soon as its 17 bytes arrive, so a caller that drains
    after each feed holds at most one record plus one chunk.
    """

    def __init__(self, start_lsn: int, *, page_size: int = PAGE_SIZE, max_record: int = MAX_RECORD) -> None:
        """Args:
            start_lsn: where the first record starts (the end of the last ingested one).
            page_size: the database's page size; records of another are refused.
            max_record: the largest record body accepted.
        """
        _check_int("start_lsn", start_lsn, _U64_LIMIT)
        if page_size not in _PAGE_SIZES:
            raise ValueError(f"page_size {page_size} is not one of SQLite's")
        self._lsn = start_lsn
        self._page_size = page_size
        self._max_record = max_record
        self._buf = bytearray()
        self._pos = 0  # bytes of _buf already handed out; dropped lazily
        self._error: PageWalError | None = None

    @property
    def lsn(self) -> int:
        """The end of the last record handed out (`start_lsn` before the first)."""
        return self._lsn

    @property
    def buffered(self) -> int:
        """Bytes fed past `lsn`: the start of a record still arriving, or records not taken."""
        return len(self._buf) - self._pos

    def _fail(self, error: PageWalError) -> NoReturn:
        self._error = error
        self._buf.clear()
        self._pos = 0
        raise error

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer committed WAL bytes, the ones that follow what was fed before.

        Raises:
            PageWalError: the reader already failed.
            TypeError: `data` is not bytes-like.
        """
        if self._error is not None:
            raise PageWalError(self._error.lsn, f"reader already failed: {self._error.problem}")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"feed() takes bytes, not {type(data).__name__}")
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_record(self) -> tuple[int, PageRecord] | None:
        """Take the next whole record.

        Returns:
            ``(end_lsn, record)``, the record fully validated and `end_lsn` the LSN where it
            ends (its commit LSN); or None if no whole record is buffered yet (feed more).
            The bytes buffered so far are checked as far as they go: a bad magic, version or
            header raises now, without waiting for the body.

        Raises:
            PageWalError: the record starting at `lsn` is invalid (the message says why), or
                the reader already failed.
        """
        if self._error is not None:
            raise PageWalError(self._error.lsn, f"reader already failed: {self._error.problem}")
        start, available = self._pos, len(self._buf) - self._pos
        try:
            if available < HEADER_SIZE:
                _check_header_start(self._buf, start, available, self._lsn)
                return None
            length, crc = _parse_header(self._buf, start, self._lsn, self._max_record)
            if available < HEADER_SIZE + length:
                return None
            body = bytes(self._buf[start + HEADER_SIZE : start + HEADER_SIZE + length])
            record = _decode_body(body, crc, self._lsn, self._page_size)
        except PageWalError as exc:
            self._fail(exc)
        self._pos += HEADER_SIZE + length
        self._lsn += HEADER_SIZE + length
        return self._lsn, record


# ---------------------------------------------------------------------------------------------
# The compute's side
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class _Logged:
    """What the builder knows of a page: its last logged version and deltas since an image."""

    image: bytes
    deltas: int


class RecordBuilder:
    """The compute's record maker: dirty pages in, one PageRecord per transaction out.

    It remembers, per page, the last version it logged: the base the pageserver will apply
    the next delta to.  That base must be a version that is in the WAL, so the builder learns
    a record's fate before it builds the next one::

        record = builder.build(dirty, db_size, commit_time)
        if record is not None:
            try:
                lsn = await proposer.append(encode_record(record))
            except BaseException:
                builder.abort()   # not written, or outcome unknown: both are safe
                raise
            builder.commit()

    `abort` forgets every page the record would have changed (and those it truncated, and the
    db_size): their next versions are logged as images, correct whichever way the record went.
    So an append whose outcome is unknown (`AppendFailed`: written, maybe committed) needs no
    separate path.  (The compute itself must still not trust its own view of those pages after
    such a failure: that is issue 9's concern, not the log's.)

    A page the builder knows nothing of is logged as an image: the first write after the
    compute starts (Postgres' full_page_writes after a checkpoint does the same), after an
    abort, and after a truncation removed the page.  Every `image_every`-th version is an image
    too, and so is any version whose delta would be no smaller than the page.  The builder keeps
    at most `capacity` pages, forgetting the least recently logged: memory stays bounded, at
    the price of an image for a forgotten page's next version.

    One record is in flight at a time (the compute's SQLite writes one transaction at a time);
    `build` while one is pending is a RuntimeError.
    """

    def __init__(
        self,
        db_size: int | None = None,
        *,
        page_size: int = PAGE_SIZE,
        image_every: int = IMAGE_EVERY,
        capacity: int = 4096,
    ) -> None:
        """Args:
            db_size: the database's size in pages at the compute's start LSN, if known; used
                only to tell whether a transaction that changed no page changed the size.
            page_size: the database's page size.
            image_every: log every image_every-th version of a page whole (1: always).
            capacity: how many pages' last versions to remember (4096: 16 MiB of 4 KiB pages).
        """
        if db_size is not None:
            _check_int("db_size", db_size, _U32_LIMIT)
        if page_size not in _PAGE_SIZES:
            raise ValueError(f"page_size {page_size} is not one of SQLite's")
        if type(image_every) is not int or image_every < 1:
            raise ValueError(f"image_every must be an int >= 1, got {image_every!r}")
        if type(capacity) is not int or capacity < 0:
            raise ValueError(f"capacity must be an int >= 0, got {capacity!r}")
        self.page_size = page_size
        self.image_every = image_every
        self.capacity = capacity
        self._db_size = db_size
        # Insertion order is recency: a page logged again moves to the end.
        self._logged: dict[int, _Logged] = {}
        self._pending: tuple[PageRecord, dict[int, _Logged]] | None = None

    @property
    def db_size(self) -> int | None:
        """The size of the last committed record (or the initial one); None after an abort."""
        return self._db_size

    @property
    def pending(self) -> PageRecord | None:
        """The record built and not yet committed or aborted."""
        return None if self._pending is None else self._pending[0]

    def base(self, page: int) -> bytes | None:
        """The version the next delta of `page` would be against; None: the next is an image."""
        logged = self._logged.get(page)
        return None if logged is None else logged.image

    def build(self, dirty: Mapping[int, bytes], db_size: int, commit_time: int) -> PageRecord | None:
        """The record of one transaction.

        Args:
            dirty: page number -> its full new contents, for every page the transaction wrote
                (pages written back unchanged are skipped).  All below `db_size`: pages a
                truncation removed must be dropped by the caller first.
            db_size: the database's size in pages after the transaction.
            commit_time: microseconds since the Unix epoch.

        Returns:
            The record to append, now pending until `commit` or `abort`; or None if the
            transaction changed nothing the builder can tell (no page, same db_size): there
            is nothing to log, and nothing to commit or abort.

        Raises:
            RuntimeError: a record is already pending.
            ValueError, TypeError: a page number at or past db_size, a page of the wrong size
                or type, an out-of-range db_size or commit_time (bugs in the caller).
        """
        if self._pending is not None:
            raise RuntimeError("a record is pending: commit() or abort() it before building another")
        _check_int("db_size", db_size, _U32_LIMIT)
        _check_int("commit_time", commit_time, _U64_LIMIT)
        entries: list[PageEntry] = []
        updates: dict[int, _Logged] = {}
        for page in sorted(dirty):
            new = dirty[page]
            _check_int("page", page, _U32_LIMIT)
            if page >= db_size:
                raise ValueError(
                    f"page {page} is dirty but not below db_size {db_size}: drop the pages a"
                    " truncation removed before building"
                )
            if not isinstance(new, (bytes, bytearray, memoryview)):
                raise TypeError(f"page {page}: expected bytes, got {type(new).__name__}")
            new = bytes(new)  # our own copy: the caller's buffer may change after we return
            if len(new) != self.page_size:
                raise ValueError(f"page {page}: {len(new)} bytes, the page size is {self.page_size}")
            entry, logged = self._version(page, new)
            if entry is not None:
                entries.append(entry)
                updates[page] = logged
        if not entries and db_size == self._db_size:
            return None
        record = PageRecord(self.page_size, db_size, commit_time, tuple(entries))
        self._pending = (record, updates)
        return record

    def _version(self, page: int, new: bytes) -> tuple[PageEntry | None, _Logged]:
        """How to log `new` as the next version of `page`: (entry or None if unchanged, state)."""
        known = self._logged.get(page)
        if known is not None:
            if known.image == new:
                return None, known
            delta = make_delta(page, known.image, new)
            assert delta is not None
            cost = sum(len(data) + _RANGE_OVERHEAD for _, data in delta.ranges)
            # Image when the chain is due for one, or when the delta is no smaller anyway.
            if known.deltas + 1 < self.image_every and cost < self.page_size:
                return delta, _Logged(new, known.deltas + 1)
        return PageImage(page, new), _Logged(new, 0)

    def commit(self) -> None:
        """The pending record is committed: its versions become the bases of the next deltas.

        Raises:
            RuntimeError: no record is pending.
        """
        if self._pending is None:
            raise RuntimeError("commit() without a pending record")
        record, updates = self._pending
        self._pending = None
        self._forget_from(record.db_size)
        for page, logged in updates.items():
            self._logged.pop(page, None)  # re-insert: most recently logged goes last
            self._logged[page] = logged
        self._db_size = record.db_size
        while len(self._logged) > self.capacity:
            del self._logged[next(iter(self._logged))]

    def abort(self) -> None:
        """The pending record failed: not written, or whether it committed is unknown.

        Forgets every page it would have changed or truncated, and the db_size, so that what
        comes next is right whichever way the record went.

        Raises:
            RuntimeError: no record is pending.
        """
        if self._pending is None:
            raise RuntimeError("abort() without a pending record")
        record, updates = self._pending
        self._pending = None
        for page in updates:
            self._logged.pop(page, None)
        self._forget_from(record.db_size)
        self._db_size = None

    def _forget_from(self, db_size: int) -> None:
        """Forget pages at or past `db_size`: a truncation removed their versions."""
        if self._db_size is not None and db_size >= self._db_size:
            # Pages we know are below the old size (see below), so none is affected.
            return
        for page in [p for p in self._logged if p >= db_size]:
            del self._logged[page]


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def describe(record: PageRecord) -> str:
    """One stable line for logs and test expectations.

    Example: ``db_size=5 t=1700000000000000 pages=[0:image 3:delta(2 ranges, 9 B)]``.
    """
    parts = []
    for entry in record.pages:
        if type(entry) is PageImage:
            parts.append(f"{entry.page}:image")
        else:
            size = sum(len(data) for _, data in entry.ranges)
            parts.append(f"{entry.page}:delta({len(entry.ranges)} ranges, {size} B)")
    return f"db_size={record.db_size} t={record.commit_time} pages=[{' '.join(parts)}]"
