"""Layers: the pageserver's page versions, in memory and in immutable files.

Theory of operation
===================

The pageserver keeps every version of every page (neon-protocol.md §8.1, §8.3).  A version
is a *value* at a *key* and an *LSN*; this file defines the values, the open in-memory layer
that ingest appends to, and the immutable layer files that frozen layers become.  Rules:

1. Keys are pages, plus one metadata key.  A key is a u32: page numbers are below
   ``db_size <= 2**32 - 1``, so the top value ``META_KEY = 2**32 - 1`` can never be a page;
   it holds, at each record's LSN, ``Meta(db_size, commit_time)``.  So a layer alone says how
   big the database was and when each record committed, and reconstruction from layers is
   exact (Neon keeps relation sizes as keys in the same way).
2. Values (Neon's ``Value``): ``IMAGE`` (a whole page), ``DELTA`` (the previous version with
   byte ranges overwritten: pagewal's `PageDelta`), ``TOMBSTONE`` (a truncation removed the
   page: no version from here on) and ``META``.  All but ``DELTA`` *initialise* the key
   (Neon's ``will_init``): reconstruction stops there.
3. Layers are immutable once written, and their file names encode their ranges, so a
   directory listing alone rebuilds the layer map (`parse_layer_name`), and a file can be
   uploaded to object storage as is.  Delta layers hold versions with LSN in
   ``[lsn_start, lsn_end)`` over keys ``[key_start, key_end)``; image layers hold the state
   of keys ``[key_start, key_end)`` at one LSN: a key in range but absent from the image has
   no version at that LSN (never written, or truncated).
4. Writes are crash-safe (`impl.storage.write_file_atomic`: temp file, fsync, rename, directory fsync), so
   a file with a layer's name is a complete file; a leftover ``*.tmp`` is a crash's trace and
   is removed on open.  Damage is refused, never guessed around: `CorruptLayer` names the file
   and the first thing wrong.

File format (all integers big-endian)
-------------------------------------
::

    offset  size    field
    0       4       magic b"PXLY"
    4       2       format version (FORMAT_VERSION)
    6       1       kind: 0 delta, 1 image
    7       1       reserved, 0
    8       4       page size
    12      8       key_start      (inclusive)
    20      8       key_end        (exclusive, <= 2**32)
    28      8       lsn_start      (inclusive; an image's LSN)
    36      8       lsn_end        (exclusive; an image's LSN + 1)
    44      4       count: index entries
    48      4       CRC32C of the index
    52      8       values size in bytes
    60      4       CRC32C of bytes 0..59
    64      29*n    index, sorted by (key, lsn), strictly:
                      key u32, lsn u64, value kind u8, offset u64 (from the values' start),
                      length u32, CRC32C of the value u32
    ...     v       values, in index order, contiguous (entry i starts where i-1 ends)

Every byte is covered by a checksum: the header by its CRC, the index by the index CRC, each
value by its own CRC in the index.  Opening a layer checks the header and the index (and that
the offsets tile the values exactly, so no value byte is outside a CRC); reading a value
checks that value; `FileLayer.verify` checks every value (a downloaded file, a test).  The
index is kept in memory as compact arrays; values are read on demand with ``pread`` (a
layer's versions of one key are contiguous, so a chain costs one read per layer).

Value encodings (varint = unsigned LEB128): IMAGE the page bytes; DELTA varint count, then
per range varint offset, varint length, bytes; TOMBSTONE nothing; META varint db_size, varint
commit_time.

Public API
----------
=========================  ================================================================
`Value`, `IMAGE` ...       a version: (kind, payload)
`InMemoryLayer`            the open layer ingest appends to; frozen, it is flushed to a file
`write_delta_layer`        a frozen in-memory layer -> a delta layer file (crash-safe)
`write_image_layer`        (key, value) pairs at one LSN -> an image layer file
`FileLayer.open`           a layer file -> its checked index; `versions`, `get`, `verify`
`layer_name`,              the file name of a layer's ranges, and back
`parse_layer_name`
`CorruptLayer`             a damaged layer file (names it)
=========================  ================================================================
"""

from __future__ import annotations

import bisect
import os
import re
import struct
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeAlias

import attrs
import crc32c

from impl.pagewal import PageDelta
from impl.storage import CorruptStorage, write_file_atomic

__all__ = [
    "DELTA",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "IMAGE",
    "INDEX_ENTRY_SIZE",
    "KEY_END",
    "MAGIC",
    "META",
    "META_KEY",
    "TOMBSTONE",
    "CorruptLayer",
    "FileLayer",
    "InMemoryLayer",
    "LayerName",
    "Value",
    "decode_value",
    "encode_value",
    "layer_name",
    "parse_layer_name",
    "write_delta_layer",
    "write_image_layer",
]

MAGIC = b"PXLY"
# Bump on any change to the header, the index or a value encoding; a reader refuses others.
FORMAT_VERSION = 1

# The key space: pages 0 .. 2**32 - 2 and the metadata key.  KEY_END is exclusive.
META_KEY = 2**32 - 1
KEY_END = 2**32

# Value kinds, as stored in the index.
IMAGE = 0
DELTA = 1
TOMBSTONE = 2
META = 3
_KIND_NAMES = {IMAGE: "image", DELTA: "delta", TOMBSTONE: "tombstone", META: "meta"}

# A version: (kind, payload).  payload: bytes (IMAGE), PageDelta (DELTA), None (TOMBSTONE),
# (db_size, commit_time) (META).  Plain tuples: millions live in memory layers.
Value: TypeAlias = tuple[int, object]

_KIND_DELTA_FILE = 0
_KIND_IMAGE_FILE = 1

_HEAD = struct.Struct(">4sHBBIQQQQIIQ")
_HEADER_CRC = struct.Struct(">I")
HEADER_SIZE = _HEAD.size + _HEADER_CRC.size  # 64
_ENTRY = struct.Struct(">IQBQII")
INDEX_ENTRY_SIZE = _ENTRY.size  # 29

_TMP_SUFFIX = ".tmp"


class CorruptLayer(CorruptStorage):
    """A layer file is damaged or is not what its name says.

    The message is ``layer file <path>: <problem>``; `path` is also an attribute.
    """

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"layer file {path}: {problem}")
        self.path = Path(path)
        self.problem = problem


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class LayerName:
    """A layer's ranges, as its file name spells them.

    ``image`` layers have ``lsn_end == lsn_start + 1`` (their LSN is ``lsn_start``).
    """

    image: bool
    key_start: int
    key_end: int
    lsn_start: int
    lsn_end: int

    @property
    def lsn(self) -> int:
        """An image layer's LSN (``lsn_start``)."""
        return self.lsn_start

    def __str__(self) -> str:
        return layer_name(self)


_NAME_RE = re.compile(r"^([0-9A-F]{9})-([0-9A-F]{9})__([0-9A-F]{16})(?:-([0-9A-F]{16}))?$")


def layer_name(name: LayerName) -> str:
    """The file name: ``<key_start>-<key_end>__<lsn_start>-<lsn_end>`` for a delta layer,
    ``<key_start>-<key_end>__<lsn>`` for an image layer (Neon's shape), fixed-width hex so
    that names sort by key, then LSN."""
    keys = f"{name.key_start:09X}-{name.key_end:09X}"
    if name.image:
        return f"{keys}__{name.lsn_start:016X}"
    return f"{keys}__{name.lsn_start:016X}-{name.lsn_end:016X}"


def parse_layer_name(text: str) -> LayerName | None:
    """The ranges a file name encodes, or None if it is not a layer's name."""
    match = _NAME_RE.match(text)
    if match is None:
        return None
    key_start, key_end, lsn_start = (int(match.group(i), 16) for i in (1, 2, 3))
    if match.group(4) is None:
        name = LayerName(True, key_start, key_end, lsn_start, lsn_start + 1)
    else:
        name = LayerName(False, key_start, key_end, lsn_start, int(match.group(4), 16))
    if not (key_start < key_end <= KEY_END and name.lsn_start < name.lsn_end):
        return None
    return name


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


def _put_varint(out: bytearray, n: int) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _get_varint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("bad varint")
        byte = buf[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return n, pos
        shift += 7


def encode_value(value: Value) -> bytes:
    """A value's bytes in a layer file (see "Value encodings")."""
    kind, payload = value
    if kind == IMAGE:
        assert type(payload) is bytes
        return payload
    out = bytearray()
    if kind == DELTA:
        assert type(payload) is PageDelta
        _put_varint(out, len(payload.ranges))
        for offset, data in payload.ranges:
            _put_varint(out, offset)
            _put_varint(out, len(data))
            out += data
    elif kind == META:
        db_size, commit_time = payload  # type: ignore[misc]
        _put_varint(out, db_size)
        _put_varint(out, commit_time)
    elif kind != TOMBSTONE:
        raise ValueError(f"unknown value kind {kind}")
    return bytes(out)


def decode_value(key: int, kind: int, data: bytes, page_size: int) -> Value:
    """The value `encode_value` wrote; ValueError if the bytes are not one."""
    if kind == IMAGE:
        if len(data) != page_size:
            raise ValueError(f"image of key {key}: {len(data)} bytes, the page size is {page_size}")
        return (IMAGE, data)
    if kind == TOMBSTONE:
        if data:
            raise ValueError(f"tombstone of key {key} has {len(data)} bytes")
        return (TOMBSTONE, None)
    if kind == META:
        db_size, pos = _get_varint(data, 0)
        commit_time, pos = _get_varint(data, pos)
        if pos != len(data):
            raise ValueError(f"meta value: {len(data) - pos} trailing bytes")
        return (META, (db_size, commit_time))
    if kind == DELTA:
        count, pos = _get_varint(data, 0)
        ranges = []
        for _ in range(count):
            offset, pos = _get_varint(data, pos)
            length, pos = _get_varint(data, pos)
            if pos + length > len(data):
                raise ValueError(f"delta of key {key}: a range runs past the value")
            ranges.append((offset, data[pos : pos + length]))
            pos += length
        if pos != len(data):
            raise ValueError(f"delta of key {key}: {len(data) - pos} trailing bytes")
        if ranges and ranges[-1][0] + len(ranges[-1][1]) > page_size:
            raise ValueError(f"delta of key {key}: a range ends past the page size {page_size}")
        return (DELTA, PageDelta(key, tuple(ranges)))
    raise ValueError(f"unknown value kind {kind}")


def _value_size(value: Value) -> int:
    """About what a value costs in memory and on disk: for the freeze threshold."""
    kind, payload = value
    if kind == IMAGE:
        return len(payload)  # type: ignore[arg-type]
    if kind == DELTA:
        return sum(len(d) + 4 for _, d in payload.ranges)  # type: ignore[union-attr]
    return 8


# ---------------------------------------------------------------------------------------------
# The in-memory layer
# ---------------------------------------------------------------------------------------------


class InMemoryLayer:
    """The open layer (Neon's ``InMemoryLayer``): versions at LSNs ``>= start_lsn``.

    Ingest appends in LSN order; `freeze` makes it read-only (a new open layer takes the
    LSNs after it) and `write_delta_layer` turns a frozen one into a file.  Lookups bisect a
    per-key list of LSNs.
    """

    def __init__(self, start_lsn: int) -> None:
        self.start_lsn = start_lsn
        # Exclusive end: the last LSN put + 1 (start_lsn while empty).
        self.end_lsn = start_lsn
        self.frozen = False
        self.size = 0  # approximate bytes held
        self._lsns: dict[int, list[int]] = {}
        self._values: dict[int, list[Value]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._lsns.values())

    @property
    def empty(self) -> bool:
        return self.end_lsn == self.start_lsn

    def put(self, key: int, lsn: int, value: Value) -> None:
        """Add a version.  LSNs arrive in order: `lsn` is at least the last one put."""
        if self.frozen:
            raise RuntimeError("put() into a frozen in-memory layer")
        if lsn < self.start_lsn or lsn + 1 < self.end_lsn:
            raise ValueError(f"lsn {lsn} out of order (layer holds [{self.start_lsn}, {self.end_lsn}))")
        lsns = self._lsns.get(key)
        if lsns is None:
            self._lsns[key] = [lsn]
            self._values[key] = [value]
        else:
            if lsns[-1] == lsn:
                raise ValueError(f"key {key} already has a version at lsn {lsn}")
            lsns.append(lsn)
            self._values[key].append(value)
        self.end_lsn = lsn + 1
        self.size += _value_size(value) + 24

    def advance(self, lsn: int) -> None:
        """Extend the layer's range to include `lsn` even if nothing was put there."""
        if lsn + 1 > self.end_lsn:
            self.end_lsn = lsn + 1

    def versions(self, key: int, upto: int, floor: int = -1) -> Iterator[tuple[int, Value]]:
        """The versions of `key` with ``floor < lsn <= upto``, newest first."""
        lsns = self._lsns.get(key)
        if lsns is None:
            return
        values = self._values[key]
        i = bisect.bisect_right(lsns, upto)
        while i > 0:
            i -= 1
            if lsns[i] <= floor:
                return
            yield lsns[i], values[i]

    def keys(self) -> Iterable[int]:
        return self._lsns.keys()

    def items(self) -> Iterator[tuple[int, int, Value]]:
        """Every version as ``(key, lsn, value)``, sorted by key then LSN."""
        for key in sorted(self._lsns):
            yield from ((key, lsn, value) for lsn, value in zip(self._lsns[key], self._values[key]))


# ---------------------------------------------------------------------------------------------
# File IO: small functions, safe to run in a thread
# ---------------------------------------------------------------------------------------------


def is_temp_file(name: str) -> bool:
    """Whether `name` is a write that crashed before its rename (see `write_file_atomic`)."""
    return name.endswith(_TMP_SUFFIX)


def _encode_layer(
    name: LayerName, page_size: int, entries: Iterable[tuple[int, int, Value]]
) -> bytes:
    index = bytearray()
    values = bytearray()
    count = 0
    for key, lsn, value in entries:
        data = encode_value(value)
        index += _ENTRY.pack(key, lsn, value[0], len(values), len(data), crc32c.crc32c(data))
        values += data
        count += 1
    head = _HEAD.pack(
        MAGIC,
        FORMAT_VERSION,
        _KIND_IMAGE_FILE if name.image else _KIND_DELTA_FILE,
        0,
        page_size,
        name.key_start,
        name.key_end,
        name.lsn_start,
        name.lsn_end,
        count,
        crc32c.crc32c(index),
        len(values),
    )
    return b"".join((head, _HEADER_CRC.pack(crc32c.crc32c(head)), index, values))


def write_delta_layer(directory: Path, layer: InMemoryLayer, page_size: int) -> Path:
    """Write a frozen in-memory layer as a delta layer file in `directory`.

    The key range is the layer's smallest to largest key; the LSN range is the layer's.
    Blocking (fsyncs): the service runs it in a thread; the layer is frozen, so concurrent
    reads of it are safe.

    Returns:
        The new file's path (its name is `layer_name` of its ranges).
    """
    if not layer.frozen or layer.empty:
        raise RuntimeError("write_delta_layer() takes a frozen, non-empty layer")
    keys = list(layer.keys())
    name = LayerName(False, min(keys), max(keys) + 1, layer.start_lsn, layer.end_lsn)
    path = directory / layer_name(name)
    write_file_atomic(path, _encode_layer(name, page_size, layer.items()))
    return path


def write_image_layer(
    directory: Path,
    key_start: int,
    key_end: int,
    lsn: int,
    page_size: int,
    entries: Iterable[tuple[int, Value]],
) -> Path:
    """Write an image layer: the values of keys in ``[key_start, key_end)`` at `lsn`.

    Args:
        entries: ``(key, value)`` sorted by key, values IMAGE or META only; a key of the
            range that is absent has no version at `lsn`.

    Returns:
        The new file's path.
    """
    name = LayerName(True, key_start, key_end, lsn, lsn + 1)
    items = []
    for key, value in entries:
        if value[0] not in (IMAGE, META) or not key_start <= key < key_end:
            raise ValueError(f"image layer entry: key {key}, kind {value[0]}")
        items.append((key, lsn, value))
    path = directory / layer_name(name)
    write_file_atomic(path, _encode_layer(name, page_size, items))
    return path


# ---------------------------------------------------------------------------------------------
# Reading a layer file
# ---------------------------------------------------------------------------------------------


class FileLayer:
    """A layer file, opened: its header and index checked and held in memory.

    Thread-safety: after `open`, reads use ``os.pread`` on one descriptor and touch no
    mutable state, so the service may read from threads.
    """

    def __init__(
        self,
        fd: int,
        path: Path,
        name: LayerName,
        page_size: int,
        keys: array,
        lsns: array,
        kinds: bytes,
        offsets: array,
        lengths: array,
        crcs: array,
        file_size: int,
    ) -> None:
        self.path = path
        self.name = name
        self.page_size = page_size
        self.file_size = file_size
        self._keys = keys
        self._lsns = lsns
        self._kinds = kinds
        self._offsets = offsets
        self._lengths = lengths
        self._crcs = crcs
        self._values_start = HEADER_SIZE + INDEX_ENTRY_SIZE * len(keys)
        self._fd: int | None = fd

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, page_size: int | None = None) -> FileLayer:
        """Open and check a layer file: header, index, and agreement with its name.

        Args:
            path: the file; its name must be a layer name.
            page_size: the page size the timeline expects (None: whatever the file says).

        Raises:
            CorruptLayer: the file is damaged, truncated, or not what its name says.
        """
        name = parse_layer_name(path.name)
        if name is None:
            raise CorruptLayer(path, "the name is not a layer name")
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                head = os.pread(fd, HEADER_SIZE, 0)
                count, index_crc, values_size = _check_header(head, name, page_size)
            except ValueError as exc:
                raise CorruptLayer(path, str(exc)) from None
            # The size check comes before reading the index, so that the read is bounded.
            file_size = os.fstat(fd).st_size
            expected = HEADER_SIZE + INDEX_ENTRY_SIZE * count + values_size
            if file_size != expected:
                kind = "truncated" if file_size < expected else "trailing bytes"
                raise CorruptLayer(path, f"{kind}: {file_size} bytes, the header says {expected}")
            index = os.pread(fd, INDEX_ENTRY_SIZE * count, HEADER_SIZE)
            layer = cls._from_fd(fd, path, name, head, index, count, index_crc, values_size, file_size)
        except BaseException:
            os.close(fd)
            raise
        return layer

    @classmethod
    def _from_fd(
        cls, fd: int, path: Path, name: LayerName, head: bytes, index: bytes, count: int,
        index_crc: int, values_size: int, file_size: int,
    ) -> FileLayer:
        computed = crc32c.crc32c(index)
        if computed != index_crc:
            raise CorruptLayer(path, f"index CRC mismatch (stored {index_crc:#010x}, computed {computed:#010x})")
        _head, _version, _kind, _reserved, file_page_size = _HEAD.unpack_from(head)[:5]
        try:
            arrays = _parse_index(index, count, name, values_size)
        except ValueError as exc:
            raise CorruptLayer(path, f"index: {exc}") from None
        return cls(fd, path, name, file_page_size, *arrays, file_size)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __repr__(self) -> str:
        return f"FileLayer({layer_name(self.name)})"

    # -- reading -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._keys)

    def key_set(self) -> Iterator[int]:
        """The distinct keys, ascending."""
        previous = -1
        for key in self._keys:
            if key != previous:
                yield key
                previous = key

    def _read(self, first: int, last: int) -> list[Value]:
        """Values of index entries first..last (inclusive, contiguous in the file), checked."""
        if self._fd is None:
            raise RuntimeError(f"layer {self.path} is closed")
        start = self._offsets[first]
        end = self._offsets[last] + self._lengths[last]
        data = os.pread(self._fd, end - start, self._values_start + start)
        if len(data) != end - start:
            raise CorruptLayer(self.path, f"short read: {len(data)} of {end - start} bytes at {start}")
        out = []
        for i in range(first, last + 1):
            piece = data[self._offsets[i] - start : self._offsets[i] - start + self._lengths[i]]
            computed = crc32c.crc32c(piece)
            if computed != self._crcs[i]:
                raise CorruptLayer(
                    self.path,
                    f"value CRC mismatch for key {self._keys[i]} at lsn {self._lsns[i]}"
                    f" (stored {self._crcs[i]:#010x}, computed {computed:#010x})",
                )
            try:
                out.append(decode_value(self._keys[i], self._kinds[i], piece, self.page_size))
            except ValueError as exc:
                raise CorruptLayer(self.path, f"value at lsn {self._lsns[i]}: {exc}") from None
        return out

    def versions(self, key: int, upto: int, floor: int = -1) -> Iterator[tuple[int, Value]]:
        """The versions of `key` with ``floor < lsn <= upto``, newest first.

        Reads only down to the newest initialising value (image, tombstone, meta), in one
        ``pread``: a chain never needs what lies below it.
        """
        if not self.name.key_start <= key < self.name.key_end:
            return
        lo = bisect.bisect_left(self._keys, key)
        hi = bisect.bisect_right(self._keys, key, lo)
        if lo == hi:
            return
        hi = bisect.bisect_right(self._lsns, upto, lo, hi)
        lo = bisect.bisect_right(self._lsns, floor, lo, hi)
        if lo == hi:
            return
        first = hi - 1
        while first > lo and self._kinds[first] == DELTA:
            first -= 1
        values = self._read(first, hi - 1)
        for i in range(hi - 1, first - 1, -1):
            yield self._lsns[i], values[i - first]

    def all_versions(self, key: int) -> list[tuple[int, Value]]:
        """Every version of `key`, oldest first."""
        lo = bisect.bisect_left(self._keys, key)
        hi = bisect.bisect_right(self._keys, key, lo)
        if lo == hi:
            return []
        return list(zip(self._lsns[lo:hi], self._read(lo, hi - 1)))

    def verify(self) -> None:
        """Read and check every value.

        Raises:
            CorruptLayer: a value's CRC or encoding is wrong.
        """
        n = len(self._keys)
        step = 1024
        for first in range(0, n, step):
            self._read(first, min(n, first + step) - 1)


def _check_header(head: bytes, name: LayerName, page_size: int | None) -> tuple[int, int, int]:
    """Check the header against itself and the file name; return (count, index CRC, values size)."""
    if len(head) < HEADER_SIZE:
        raise ValueError(f"truncated: {len(head)} bytes, the header alone needs {HEADER_SIZE}")
    magic, version, kind, reserved, file_page_size, ks, ke, ls, le, count, index_crc, values_size = (
        _HEAD.unpack_from(head)
    )
    if magic != MAGIC:
        raise ValueError(f"wrong magic {magic!r}, expected {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise ValueError(f"unknown format version {version} (this build reads {FORMAT_VERSION})")
    (stored,) = _HEADER_CRC.unpack_from(head, _HEAD.size)
    computed = crc32c.crc32c(head[: _HEAD.size])
    if stored != computed:
        raise ValueError(f"header CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")
    if kind not in (_KIND_DELTA_FILE, _KIND_IMAGE_FILE) or reserved != 0:
        raise ValueError(f"bad kind {kind} / reserved {reserved}")
    file_name = LayerName(kind == _KIND_IMAGE_FILE, ks, ke, ls, le)
    if file_name != name:
        raise ValueError(f"the header says {layer_name(file_name)}, the name says {layer_name(name)}")
    if page_size is not None and file_page_size != page_size:
        raise ValueError(f"page size {file_page_size}, the timeline's is {page_size}")
    return count, index_crc, values_size


def _parse_index(index: bytes, count: int, name: LayerName, values_size: int) -> tuple:
    keys = array("I")
    lsns = array("Q")
    kinds = bytearray()
    offsets = array("Q")
    lengths = array("I")
    crcs = array("I")
    for key, lsn, kind, offset, length, crc in _ENTRY.iter_unpack(index):
        keys.append(key)
        lsns.append(lsn)
        kinds.append(kind)
        offsets.append(offset)
        lengths.append(length)
        crcs.append(crc)
    end = 0
    previous = (-1, -1)
    allowed = (IMAGE, META) if name.image else (IMAGE, DELTA, TOMBSTONE, META)
    for i in range(count):
        key, lsn = keys[i], lsns[i]
        if (key, lsn) <= previous:
            raise ValueError(f"entry {i} (key {key}, lsn {lsn}) is not after entry {i - 1}")
        previous = (key, lsn)
        if not name.key_start <= key < name.key_end or not name.lsn_start <= lsn < name.lsn_end:
            raise ValueError(f"entry {i} (key {key}, lsn {lsn}) is outside the layer's ranges")
        if kinds[i] not in allowed:
            raise ValueError(f"entry {i}: value kind {kinds[i]} in a {'image' if name.image else 'delta'} layer")
        if (key == META_KEY) != (kinds[i] == META):
            raise ValueError(f"entry {i}: a {_KIND_NAMES.get(kinds[i], kinds[i])} value at key {key}")
        if offsets[i] != end:
            raise ValueError(f"entry {i}: value at offset {offsets[i]}, expected {end}")
        end += lengths[i]
    if end != values_size:
        raise ValueError(f"values end at {end}, the header says {values_size} bytes")
    return keys, lsns, bytes(kinds), offsets, lengths, crcs
