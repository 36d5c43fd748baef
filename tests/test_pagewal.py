"""Tests of impl/pagewal.py: round trips, redo of any version history, the streaming reader
under any chunking, every kind of damage refused with the LSN, strict decoding rule by rule,
record sizes, and the compute's builder against a model pageserver."""

from __future__ import annotations

import random
import struct

import cbor2
import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from impl.pagewal import (
    FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    MAX_RECORD,
    MERGE_GAP,
    PAGE_SIZE,
    PageDelta,
    PageImage,
    PageRecord,
    PageWalError,
    RecordBuilder,
    RecordReader,
    RedoError,
    decode_record,
    describe,
    encode_record,
    make_delta,
    redo,
)
from impl.wire import format_lsn

# Moderate example counts keep the whole file within a few seconds.
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Properties mostly run on SQLite's smallest page: the code does not depend on the size, and
# hypothesis draws and shrinks 512 bytes much faster than 4096.
SMALL = 512
T0 = 1_700_000_000_000_000  # a commit_time: microseconds since the epoch, late 2023


# ---------------------------------------------------------------------------------------------
# Helpers: records built by hand, bypassing encode_record's guarantees.
# ---------------------------------------------------------------------------------------------


def frame(
    body: bytes, *, magic: bytes = MAGIC, version: int = FORMAT_VERSION, length: int | None = None
) -> bytes:
    """A record around `body`, with valid CRCs over whatever header fields are given."""
    head = struct.pack(">4sBII", magic, version, len(body) if length is None else length, crc32c.crc32c(body))
    return head + struct.pack(">I", crc32c.crc32c(head)) + body


def frame_of(item: object) -> bytes:
    return frame(cbor2.dumps(item))


def read_all(
    data: bytes, start_lsn: int = 0, cuts: list[int] | None = None, page_size: int = SMALL
) -> list[tuple[int, PageRecord]]:
    """Feed `data` cut at the given positions, draining after each chunk."""
    reader = RecordReader(start_lsn, page_size=page_size)
    out = []
    bounds = [0, *sorted(set(c for c in cuts or [] if 0 < c < len(data))), len(data)]
    for a, b in zip(bounds, bounds[1:]):
        reader.feed(data[a:b])
        while (got := reader.next_record()) is not None:
            out.append(got)
    return out


def apply(pages: dict[int, bytes], record: PageRecord) -> None:
    """A model pageserver: apply one committed record to the latest version of every page."""
    for page in [p for p in pages if p >= record.db_size]:
        del pages[page]
    for entry in record.pages:
        if type(entry) is PageImage:
            pages[entry.page] = entry.image
        else:
            pages[entry.page] = redo(pages.get(entry.page), [entry])


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------


@st.composite
def deltas(draw: st.DrawFn, page: int, page_size: int) -> PageDelta:
    ranges, pos = [], draw(st.integers(0, page_size - 1))
    while pos < page_size:
        length = draw(st.integers(1, min(40, page_size - pos)))
        ranges.append((pos, draw(st.binary(min_size=length, max_size=length))))
        pos += length + draw(st.integers(0, page_size))
        if draw(st.booleans()):
            break
    return PageDelta(page, tuple(ranges))


@st.composite
def records(draw: st.DrawFn, page_size: int = SMALL) -> PageRecord:
    db_size = draw(st.integers(0, 2**32 - 1) | st.integers(0, 20))
    pages = sorted(draw(st.sets(st.integers(0, max(0, db_size - 1)), max_size=4))) if db_size else []
    entries = []
    for page in pages:
        if draw(st.booleans()):
            entries.append(PageImage(page, draw(st.binary(min_size=page_size, max_size=page_size))))
        else:
            entries.append(draw(deltas(page, page_size)))
    commit_time = draw(st.integers(0, 2**64 - 1) | st.just(T0))
    return PageRecord(page_size, db_size, commit_time, tuple(entries))


@st.composite
def edit(draw: st.DrawFn, page: bytes) -> bytes:
    """A next version of `page`: a few small edits (what a B-tree page sees), or anything."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=len(page), max_size=len(page)))
    out = bytearray(page)
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(page) - 1))
        data = draw(st.binary(min_size=1, max_size=min(24, len(page) - at)))
        out[at : at + len(data)] = data
    return bytes(out)


@st.composite
def histories(draw: st.DrawFn, page_size: int = SMALL) -> list[bytes]:
    versions = [draw(st.binary(min_size=page_size, max_size=page_size))]
    for _ in range(draw(st.integers(0, 20))):
        versions.append(draw(edit(versions[-1])))
    return versions


# ---------------------------------------------------------------------------------------------
# Round trips and redo
# ---------------------------------------------------------------------------------------------


@FAST
@given(records())
def test_encode_decode_round_trip(record: PageRecord) -> None:
    data = encode_record(record)
    assert decode_record(data, page_size=SMALL) == record
    assert read_all(data, start_lsn=100) == [(100 + len(data), record)]


def test_round_trip_at_every_sqlite_page_size() -> None:
    for page_size in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536):
        image = PageImage(0, bytes(range(256)) * (page_size // 256))
        record = PageRecord(page_size, 3, T0, (image, PageDelta(2, ((page_size - 1, b"x"),))))
        assert decode_record(encode_record(record), page_size=page_size) == record


@FAST
@given(histories())
def test_redo_of_deltas_gives_back_every_version(versions: list[bytes]) -> None:
    """Any sequence of versions, each logged as a delta against the one before, is rebuilt
    exactly from the first version and the deltas up to it."""
    chain: list[PageDelta] = []
    for i, version in enumerate(versions):
        assert redo(versions[0], chain) == version, f"version {i}"
        if i + 1 < len(versions):
            delta = make_delta(7, version, versions[i + 1])
            if delta is None:
                assert versions[i + 1] == version
            else:
                chain.append(delta)


@FAST
@given(histories(), st.integers(1, 5))
def test_builder_records_rebuild_every_version(versions: list[bytes], image_every: int) -> None:
    """The same through the whole path: the builder's records, encoded, read back and redone
    by a model pageserver from the newest image, give every version; images come exactly
    every image_every versions, so no chain is longer than image_every - 1 deltas."""
    builder = RecordBuilder(0, page_size=SMALL, image_every=image_every)
    stream, expected = b"", []
    for i, version in enumerate(versions):
        record = builder.build({0: version}, 1, T0 + i)
        if record is None:  # unchanged: nothing logged, nothing pending
            assert version == expected[-1]
            continue
        builder.commit()
        expected.append(version)
        stream += encode_record(record)
    chain: list[PageRecord] = [rec for _lsn, rec in read_all(stream, cuts=[len(stream) // 3])]
    assert len(chain) == len(expected)
    since_image = 0
    for n, record in enumerate(chain):
        (entry,) = record.pages
        since_image = 0 if type(entry) is PageImage else since_image + 1
        assert since_image < image_every
        base_at = n - since_image
        base = chain[base_at].pages[0]
        assert type(base) is PageImage
        assert redo(base.image, [r.pages[0] for r in chain[base_at + 1 : n + 1]]) == expected[n]


def test_make_delta() -> None:
    old = bytes(64)
    assert make_delta(1, old, old) is None
    new = bytearray(old)
    new[3] = 1
    new[3 + 1 + MERGE_GAP] = 2  # a gap of MERGE_GAP: merged
    new[40] = 3  # a gap of more: separate
    delta = make_delta(1, old, bytes(new))
    assert delta == PageDelta(1, ((3, bytes(new[3 : 5 + MERGE_GAP])), (40, b"\x03")))
    unmerged = make_delta(1, old, bytes(new), merge_gap=0)
    assert unmerged.ranges == ((3, b"\x01"), (4 + MERGE_GAP, b"\x02"), (40, b"\x03"))
    assert make_delta(1, old, bytes(range(64))).ranges == ((1, bytes(range(1, 64))),)
    with pytest.raises(ValueError, match="versions of 64 and 63 bytes"):
        make_delta(1, old, old[:-1])


def test_redo_refuses_what_cannot_make_a_page() -> None:
    delta = PageDelta(5, ((10, b"ab"),))
    assert redo(bytes(12), []) == bytes(12)
    assert redo(bytes(12), [delta]) == bytes(10) + b"ab"
    with pytest.raises(RedoError, match="1 delta\\(s\\) for page 5 but no base image"):
        redo(None, [delta])
    with pytest.raises(RedoError, match="no versions but no base image"):
        redo(None, [])
    with pytest.raises(RedoError, match="page 5: deltas\\[0\\] writes up to byte 12 of a 11-byte base"):
        redo(bytes(11), [delta])
    with pytest.raises(RedoError, match="deltas\\[1\\] is for page 6, deltas\\[0\\] for page 5"):
        redo(bytes(12), [delta, PageDelta(6, ((0, b"x"),))])


def test_merge_gap_is_measured() -> None:
    """MERGE_GAP minimises the encoded size of realistic deltas (a few clustered edits per
    page, seeded): within 1% of the best gap from 0 to 9, and far better than no merging."""
    rnd = random.Random(8)
    pairs = []
    for _ in range(150):
        old = rnd.randbytes(PAGE_SIZE)
        new = bytearray(old)
        for _ in range(rnd.randrange(1, 12)):
            at, length = rnd.randrange(4000), rnd.choice([1, 1, 2, 4, 8, 30])
            new[at : at + length] = rnd.randbytes(length)
            for _ in range(rnd.randrange(4)):  # scattered bytes nearby: a cell's header fields
                near = at + length + rnd.randrange(1, 12)
                new[near] = rnd.randrange(256)
        pairs.append((old, bytes(new)))

    def size(gap: int) -> int:
        total = 0
        for old, new in pairs:
            delta = make_delta(0, old, new, merge_gap=gap)
            if delta is not None:
                total += len(cbor2.dumps([[o, d] for o, d in delta.ranges]))
        return total

    sizes = {gap: size(gap) for gap in range(10)}
    assert sizes[MERGE_GAP] <= min(sizes.values()) * 1.01, sizes
    assert sizes[MERGE_GAP] < sizes[0] * 0.93, sizes


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------


def test_a_one_byte_change_costs_tens_of_bytes() -> None:
    rnd = random.Random(1)
    old = rnd.randbytes(PAGE_SIZE)
    new = bytearray(old)
    new[3000] ^= 0xFF
    builder = RecordBuilder(0)
    first = builder.build({17: old}, 100_000, T0)
    builder.commit()
    second = builder.build({17: bytes(new)}, 100_000, T0 + 1)
    builder.commit()
    assert type(first.pages[0]) is PageImage and type(second.pages[0]) is PageDelta
    # Header 17 + body: [4096, 100000, T0, [[17, [[3000, b"?"]]]]] in 25 bytes.
    assert len(encode_record(second)) <= 48
    # An image costs the page plus the same few dozen bytes.
    assert PAGE_SIZE < len(encode_record(first)) <= PAGE_SIZE + 48
    # A truncation alone is smaller still.
    assert len(encode_record(PageRecord(PAGE_SIZE, 5, T0, ()))) <= 40


# ---------------------------------------------------------------------------------------------
# The streaming reader
# ---------------------------------------------------------------------------------------------


@FAST
@given(st.lists(records(), min_size=1, max_size=5), st.integers(0, 2**40), st.data())
def test_reader_returns_the_same_records_whatever_the_chunking(
    recs: list[PageRecord], start: int, data: st.DataObject
) -> None:
    encoded = [encode_record(r) for r in recs]
    stream = b"".join(encoded)
    expected, lsn = [], start
    for rec, raw in zip(recs, encoded):
        lsn += len(raw)
        expected.append((lsn, rec))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    assert read_all(stream, start, cuts) == expected
    # Byte by byte too, on a small stream (it is the slowest chunking).
    if len(stream) < 2000:
        assert read_all(stream, start, list(range(len(stream)))) == expected


def test_reader_lsn_buffered_and_partial_records() -> None:
    rec = PageRecord(SMALL, 2, T0, (PageDelta(1, ((0, b"a"),)),))
    raw = encode_record(rec)
    reader = RecordReader(0x1000, page_size=SMALL)
    reader.feed(raw + raw[:5])
    assert reader.next_record() == (0x1000 + len(raw), rec)
    assert reader.next_record() is None  # a partial header: wait
    assert (reader.lsn, reader.buffered) == (0x1000 + len(raw), 5)
    reader.feed(raw[5:])
    assert reader.next_record() == (0x1000 + 2 * len(raw), rec)
    assert (reader.lsn, reader.buffered) == (0x1000 + 2 * len(raw), 0)
    assert reader.next_record() is None


def test_reader_hands_out_good_records_before_the_bad_one_and_stays_failed() -> None:
    rec = PageRecord(SMALL, 2, T0, ())
    raw = encode_record(rec)
    bad = bytearray(raw)
    bad[-1] ^= 1
    reader = RecordReader(0, page_size=SMALL)
    reader.feed(raw + bytes(bad) + raw)
    assert reader.next_record() == (len(raw), rec)
    at = format_lsn(len(raw))
    with pytest.raises(PageWalError, match=f"^page WAL record at {at}: body CRC mismatch") as info:
        reader.next_record()
    assert info.value.lsn == len(raw)
    with pytest.raises(PageWalError, match="reader already failed: body CRC mismatch"):
        reader.next_record()
    with pytest.raises(PageWalError, match="reader already failed"):
        reader.feed(raw)


def test_reader_refuses_a_bad_header_before_the_body_arrives() -> None:
    # An oversize length, with a valid header CRC: refused on the 17th byte, not after 101.
    reader = RecordReader(0, page_size=SMALL, max_record=100)
    reader.feed(frame(bytes(101))[:HEADER_SIZE])
    with pytest.raises(PageWalError, match="body length 101 is outside 1..100"):
        reader.next_record()
    # A wrong first byte: refused at once.
    reader = RecordReader(0x20, page_size=SMALL)
    reader.feed(b"{")
    with pytest.raises(PageWalError, match=r"^page WAL record at 0/20: bad magic b'\{'"):
        reader.next_record()
    # A newer writer: refused on the 5th byte.
    reader = RecordReader(0, page_size=SMALL)
    reader.feed(MAGIC + bytes([FORMAT_VERSION + 1]))
    with pytest.raises(PageWalError, match=f"unknown format version {FORMAT_VERSION + 1}"):
        reader.next_record()


def test_reader_refuses_another_page_size() -> None:
    raw = encode_record(PageRecord(PAGE_SIZE, 1, T0, ()))
    with pytest.raises(PageWalError, match="page size 4096, but this database's pages are 512 bytes"):
        read_all(raw, page_size=SMALL)


# ---------------------------------------------------------------------------------------------
# Damage: every flipped byte, truncation and extension is refused, naming the LSN.
# ---------------------------------------------------------------------------------------------


@FAST
@given(st.lists(records(), min_size=1, max_size=3), st.data())
def test_any_flipped_byte_is_refused_with_the_lsn(recs: list[PageRecord], data: st.DataObject) -> None:
    """No undetectable flip exists: bytes 0..12 are under the header CRC (and 0..4 are also
    the magic and version, checked first), 13..16 are that CRC itself, and the body is under
    the body CRC.  CRC32C detects every error confined to 32 consecutive bits, so any change
    within one byte is caught with certainty, not merely with probability 1 - 2**-32."""
    start = 0x1_0000_0000
    encoded = [encode_record(r) for r in recs]
    victim = data.draw(st.integers(0, len(recs) - 1))
    pos = data.draw(st.integers(0, len(encoded[victim]) - 1))
    damaged = bytearray(encoded[victim])
    damaged[pos] ^= data.draw(st.integers(1, 255))
    victim_lsn = start + sum(len(e) for e in encoded[:victim])
    with pytest.raises(PageWalError) as info:
        decode_record(bytes(damaged), victim_lsn, page_size=SMALL)
    assert info.value.lsn == victim_lsn
    assert str(info.value).startswith(f"page WAL record at {format_lsn(victim_lsn)}: ")
    # In a stream: the records before it come out intact, then the error, nothing after.
    stream = b"".join(encoded[:victim]) + bytes(damaged) + b"".join(encoded[victim + 1 :])
    reader = RecordReader(start, page_size=SMALL)
    reader.feed(stream)
    for i in range(victim):
        assert reader.next_record()[1] == recs[i]
    try:
        got = reader.next_record()
    except PageWalError as exc:
        assert exc.lsn == victim_lsn
    else:
        # Only a length flipped upwards past the end of the stream can make the reader wait
        # instead, and the header CRC refuses that before any wait.
        pytest.fail(f"a damaged record was read or awaited: {got!r}")


@FAST
@given(records(), st.data())
def test_truncated_or_extended_records_are_refused(record: PageRecord, data: st.DataObject) -> None:
    raw = encode_record(record)
    lsn = data.draw(st.integers(0, 2**63))
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(PageWalError, match="^page WAL record at .*: truncated") as info:
        decode_record(raw[:cut], lsn, page_size=SMALL)
    assert info.value.lsn == lsn
    extra = data.draw(st.binary(min_size=1, max_size=20))
    with pytest.raises(PageWalError, match="^page WAL record at .*: trailing bytes") as info:
        decode_record(raw + extra, lsn, page_size=SMALL)
    assert info.value.lsn == lsn
    # In a stream a truncated record runs into the next ones, whose bytes are not its body:
    # refused once the bytes its header promises are in (a bad header at once).  Until
    # then the reader waits, as it must for a record that is still arriving.
    nxt = encode_record(PageRecord(SMALL, 1, T0, (PageImage(0, bytes(SMALL)),)))
    following = nxt * (len(raw) // len(nxt) + 1)
    if cut:
        with pytest.raises(PageWalError) as info:
            read_all(raw[:cut] + following, lsn)
        assert info.value.lsn == lsn
    # And bytes appended to a record are garbage where the next record should start.
    with pytest.raises(PageWalError) as info:
        read_all(raw + extra + nxt, lsn)
    assert info.value.lsn == lsn + len(raw)


# ---------------------------------------------------------------------------------------------
# Strict decoding, rule by rule
# ---------------------------------------------------------------------------------------------

IMG = b"\x07" * SMALL
GOOD = [SMALL, 4, T0, [[0, IMG], [2, [[0, b"a"], [5, b"bc"]]]]]


def body(**changes: object) -> list[object]:
    """GOOD with some of its four fields replaced."""
    names = ["page_size", "db_size", "commit_time", "pages"]
    return [changes.get(name, value) for name, value in zip(names, GOOD)]


def delta_body(ranges: object) -> list[object]:
    return body(pages=[[1, ranges]])


FIELD_CASES = [
    # (body item, message fragment)
    ("not a list", "body: expected [page_size, db_size, commit_time, pages], got str"),
    (GOOD[:3], "body: expected [page_size, db_size, commit_time, pages], got list of 3 items"),
    ([*GOOD, 0], "got list of 5 items"),
    (body(page_size=4095), "page_size: 4095 is not one of SQLite's"),
    (body(page_size=b"x"), "page_size: expected an integer, got bytes of 1 bytes"),
    (body(db_size=True), "db_size: expected an integer, got bool"),
    (body(db_size=-1), "db_size: int -1 is outside 0..4294967295"),
    (body(db_size=2**32), "db_size: int 4294967296 is outside 0..4294967295"),
    (body(commit_time=-5), "commit_time: int -5 is outside"),
    (body(commit_time="now"), "commit_time: expected an integer, got str"),
    (body(pages={"0": IMG}), "pages: expected a list, got dict"),
    (body(pages=b"pages"), "pages: expected a list, got bytes"),
    (body(pages=[[0]]), "pages[0]: expected [page, image] or [page, ranges], got list of 1 items"),
    (body(pages=[[0, IMG, 1]]), "pages[0]: expected [page, image] or [page, ranges], got list of 3"),
    (body(pages=[[0, "img"]]), "pages[0]: expected an image (bytes) or ranges (a list), got str"),
    (body(pages=[[None, IMG]]), "pages[0].page: expected an integer, got NoneType"),
    (body(pages=[[0, IMG[:-1]]]), f"pages[0].image: {SMALL - 1} bytes, the page size is {SMALL}"),
    (body(pages=[[0, IMG + b"x"]]), f"pages[0].image: {SMALL + 1} bytes"),
    (body(pages=[[2, IMG], [1, IMG]]), "pages[1]: page 1 after page 2; pages are sorted"),
    (body(pages=[[1, IMG], [1, IMG]]), "pages[1]: page 1 after page 1; pages are sorted and each"),
    (body(pages=[[4, IMG]]), "pages[0]: page 4 is not below db_size 4"),
    (body(db_size=0, pages=[[0, [[0, b"a"]]]]), "pages[0]: page 0 is not below db_size 0"),
    (delta_body([]), "pages[0].ranges: a delta changes at least one byte"),
    (delta_body([[0, b"a", 1]]), "pages[0].ranges[0]: expected [offset, bytes], got list of 3 items"),
    (delta_body([b"a"]), "pages[0].ranges[0]: expected [offset, bytes], got bytes"),
    (delta_body([[-1, b"a"]]), "pages[0].ranges[0].offset: int -1 is outside"),
    (delta_body([[0.0, b"a"]]), "pages[0].ranges[0].offset: expected an integer, got float"),
    (delta_body([[0, "a"]]), "pages[0].ranges[0].bytes: expected bytes, got str"),
    (delta_body([[0, b""]]), "pages[0].ranges[0].bytes: empty"),
    (delta_body([[5, b"ab"], [6, b"c"]]), "ranges[1]: offset 6 is before the end of the previous range (7)"),
    (delta_body([[5, b"a"], [2, b"c"]]), "pages[0].ranges[1]: offset 2 is before the end"),
    (delta_body([[SMALL - 1, b"ab"]]), f"pages[0].ranges[0]: ends at {SMALL + 1}, past the page size"),
]


@pytest.mark.parametrize(("item", "fragment"), FIELD_CASES, ids=[c[1][:40] for c in FIELD_CASES])
def test_strict_field_validation(item: object, fragment: str) -> None:
    with pytest.raises(PageWalError, match="^page WAL record at 0/1A0: ") as info:
        decode_record(frame_of(item), 0x1A0, page_size=SMALL)
    assert fragment in str(info.value)
    assert info.value.lsn == 0x1A0


def test_the_good_body_is_good() -> None:
    """The base of FIELD_CASES decodes, so each case fails for its own change alone."""
    record = decode_record(frame_of(GOOD), page_size=SMALL)
    assert record == PageRecord(SMALL, 4, T0, (PageImage(0, IMG), PageDelta(2, ((0, b"a"), (5, b"bc")))))
    # Touching ranges do not overlap: valid (make_delta merges them, others need not).
    decode_record(frame_of(delta_body([[0, b"a"], [1, b"b"]])), page_size=SMALL)


def test_strict_cbor() -> None:
    good = cbor2.dumps(GOOD)
    cases = [
        (b"\xff", "body is not valid CBOR"),
        (good + b"\x00", "body has 1 trailing bytes after its CBOR item"),
        (good[:-1], "body is not valid CBOR"),
        (cbor2.dumps(cbor2.CBORTag(1, 0)), "body is not valid CBOR"),  # a datetime tag
        (cbor2.dumps(cbor2.CBORTag(6000, GOOD)), "body is not valid CBOR"),  # an unknown tag
        (cbor2.dumps(body(commit_time=2**64)), "body is not valid CBOR"),  # a bignum is tag 2
        (b"\x9f" + good[1:] + b"\xff", "body is not valid CBOR"),  # indefinite-length array
        (cbor2.dumps(body(db_size=4.0)), "db_size: expected an integer, got float"),
        (cbor2.dumps([[[[[[[1]]]]]]]), "body is not valid CBOR"),  # deeper than a record goes
    ]
    for raw_body, fragment in cases:
        with pytest.raises(PageWalError) as info:
            decode_record(frame(raw_body), 0x10, page_size=SMALL)
        assert fragment in str(info.value), (raw_body[:20], str(info.value))
        assert info.value.lsn == 0x10


def test_strict_header() -> None:
    good = frame_of(GOOD)
    wrong_crc = bytearray(good)
    wrong_crc[13] ^= 0x80
    cases = [
        (b"PXWC" + good[4:], "bad magic b'PXWC', expected b'PXPG'"),
        (frame(cbor2.dumps(GOOD), version=0), "unknown format version 0"),
        (bytes(wrong_crc), "header CRC mismatch"),
        (frame(b""), "body length 0 is outside 1..67108864"),
        (frame(b"x", length=MAX_RECORD + 1)[:HEADER_SIZE], f"body length {MAX_RECORD + 1} is outside"),
        (good[:HEADER_SIZE - 1], f"truncated: {HEADER_SIZE - 1} bytes, the header alone is {HEADER_SIZE}"),
        (good[:-1], f"truncated: {len(good) - 1} bytes, the header says {len(good)}"),
        (good[:-1] + bytes([good[-1] ^ 1]), "body CRC mismatch"),
    ]
    for raw, fragment in cases:
        with pytest.raises(PageWalError) as info:
            decode_record(raw, 0x10, page_size=SMALL)
        assert fragment in str(info.value), (raw[:20], str(info.value))


def test_local_construction_is_checked_too() -> None:
    """The constructors are the validation: a record built locally obeys the same rules."""
    with pytest.raises(ValueError, match="page 3 is not below db_size 3"):
        PageRecord(SMALL, 3, T0, (PageImage(3, IMG),))
    with pytest.raises(ValueError, match="image: expected bytes, got bytearray"):
        PageImage(0, bytearray(IMG))
    with pytest.raises(ValueError, match="ranges: a delta changes at least one byte"):
        PageDelta(0, ())
    assert PageDelta(0, [(1, b"x")]).ranges == ((1, b"x"),)  # a list is taken as a tuple
    with pytest.raises(TypeError, match="not a PageRecord"):
        encode_record(PageImage(0, IMG))


# ---------------------------------------------------------------------------------------------
# The builder
# ---------------------------------------------------------------------------------------------


def page(fill: int, size: int = SMALL) -> bytes:
    return bytes([fill]) * size


def test_builder_images_deltas_and_skips() -> None:
    b = RecordBuilder(0, page_size=SMALL, image_every=3)
    rec = b.build({0: page(1), 1: page(2)}, 2, T0)
    assert describe(rec) == f"db_size=2 t={T0} pages=[0:image 1:image]"
    b.commit()
    versions = []
    for n in range(5):
        v = bytearray(page(1))
        v[10] = n + 2
        rec = b.build({0: bytes(v), 1: page(2)}, 2, T0 + n)  # page 1 unchanged: skipped
        b.commit()
        versions.append(describe(rec).split("pages=")[1])
    # Every third version of page 0 is an image; chains hold at most two deltas.
    assert versions == [
        "[0:delta(1 ranges, 1 B)]",
        "[0:delta(1 ranges, 1 B)]",
        "[0:image]",
        "[0:delta(1 ranges, 1 B)]",
        "[0:delta(1 ranges, 1 B)]",
    ]
    # Nothing changed: nothing to log.
    assert b.build({1: page(2)}, 2, T0) is None
    assert b.pending is None


def test_builder_logs_an_image_when_a_delta_would_be_no_smaller() -> None:
    b = RecordBuilder(0, page_size=SMALL)
    b.build({0: page(0)}, 1, T0)
    b.commit()
    almost = bytearray(page(1))
    rec = b.build({0: bytes(almost)}, 1, T0)
    assert type(rec.pages[0]) is PageImage


def test_builder_truncation() -> None:
    b = RecordBuilder(0, page_size=SMALL)
    b.build({0: page(1), 1: page(2), 2: page(3)}, 3, T0)
    b.commit()
    rec = b.build({}, 1, T0)  # VACUUM: a truncation alone is a record
    assert rec == PageRecord(SMALL, 1, T0, ())
    b.commit()
    assert b.base(0) == page(1) and b.base(1) is None and b.base(2) is None
    # Regrown: page 1 is logged whole, never as a delta against its removed version.
    rec = b.build({1: page(2)}, 2, T0)
    assert type(rec.pages[0]) is PageImage
    b.commit()
    with pytest.raises(ValueError, match="page 2 is dirty but not below db_size 2"):
        b.build({2: page(0)}, 2, T0)


def test_builder_misuse() -> None:
    b = RecordBuilder(0, page_size=SMALL)
    with pytest.raises(RuntimeError, match="commit\\(\\) without a pending record"):
        b.commit()
    with pytest.raises(RuntimeError, match="abort\\(\\) without a pending record"):
        b.abort()
    with pytest.raises(ValueError, match="page 0: 511 bytes, the page size is 512"):
        b.build({0: bytes(511)}, 1, T0)
    b.build({0: page(1)}, 1, T0)
    with pytest.raises(RuntimeError, match="a record is pending"):
        b.build({0: page(2)}, 1, T0)
    with pytest.raises(ValueError, match="image_every must be an int >= 1"):
        RecordBuilder(image_every=0)


def test_builder_abort_forgets_what_the_record_touched() -> None:
    b = RecordBuilder(0, page_size=SMALL)
    b.build({0: page(1), 1: page(1), 2: page(1), 3: page(1)}, 4, T0)
    b.commit()
    b.build({0: page(2)}, 2, T0)  # changes page 0, truncates 2 and 3
    b.abort()
    assert b.db_size is None
    assert [b.base(p) for p in range(4)] == [None, page(1), None, None]
    # With the size unknown, even a transaction that changed no page is logged.
    assert b.build({1: page(1)}, 4, T0) == PageRecord(SMALL, 4, T0, ())


def test_builder_capacity_forgets_the_least_recently_logged() -> None:
    b = RecordBuilder(0, page_size=SMALL, capacity=2)
    for p in range(3):
        b.build({p: page(p)}, 3, T0)
        b.commit()
    assert [b.base(p) is not None for p in range(3)] == [False, True, True]
    b.build({1: page(9)}, 3, T0)
    b.commit()
    b.build({0: page(0)}, 3, T0)
    b.commit()
    assert [b.base(p) is not None for p in range(3)] == [True, True, False]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_builder_against_a_model_pageserver(data: st.DataObject) -> None:
    """Transactions that commit, fail before being written, or fail with an unknown outcome
    that was in fact committed.  Invariant: every base the builder would delta against is the
    page the pageserver holds, so every record applied yields exactly the transaction's pages.
    After a failure the compute rereads what it cannot trust (issue 9): the model takes the
    pageserver's pages as its view, which is what a reread returns."""
    image_every = data.draw(st.integers(1, 4))
    capacity = data.draw(st.integers(0, 6))
    builder = RecordBuilder(0, page_size=SMALL, image_every=image_every, capacity=capacity)
    server: dict[int, bytes] = {}  # the model pageserver's latest versions
    view: dict[int, bytes] = {}  # the compute's database: what SQLite reads
    size = 0
    for step in range(data.draw(st.integers(1, 12))):
        new_size = data.draw(st.integers(0, 8))
        dirty = {}
        for p in range(new_size):
            # A grown file's new pages are always written; others sometimes, maybe unchanged.
            if p >= size or data.draw(st.integers(0, 2)) == 0:
                fresh = st.binary(min_size=SMALL, max_size=SMALL)
                dirty[p] = data.draw(edit(view[p]) if p in view else fresh)
        record = builder.build(dirty, new_size, T0 + step)
        after = {p: v for p, v in view.items() if p < new_size} | dirty
        if record is None:
            assert after == view and new_size == size
            continue
        outcome = data.draw(st.sampled_from(["commit", "not written", "unknown, committed"]))
        if outcome != "not written":
            apply(server, decode_record(encode_record(record), page_size=SMALL))
            assert server == after, outcome
            view, size = after, new_size
        if outcome == "commit":
            builder.commit()
        else:
            builder.abort()
        assert server == view
        for p in range(9):
            base = builder.base(p)
            assert base is None or base == server.get(p), f"step {step}: stale base for page {p}"
