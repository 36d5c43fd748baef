"""The storage interface an acceptor needs: a WAL and a control file.

Theory of operation:

1. The acceptor core never touches storage; it returns effects (``WriteWal``, ``Flush``,
   ``TruncateWal``, ``PersistControl``) and its shell runs them against the two protocols
   below. The trio shell uses the file implementations (``impl/wal.py``, ``impl/control.py``)
   and runs their blocking calls in ``trio.to_thread``; the deterministic simulator swaps in
   a virtual disk that drops unflushed writes on a crash. So these protocols are synchronous
   and name only what the core's effects need, nothing more.
2. Damage found on disk raises ``CorruptStorage``. The node must refuse to start on it: a
   guessed acceptor state can vote twice or lose acknowledged WAL, which a stopped node cannot.
3. A caller bug (a WAL write that leaves a gap, a read outside the WAL) is a ``ValueError``,
   never ``CorruptStorage``: the disk is fine, the caller is wrong.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import crc32c

if TYPE_CHECKING:
    # control.py imports CorruptStorage from here, so the state type is for annotations only.
    from impl.control import ControlState

__all__ = ["ControlStorage", "CorruptStorage", "WalStorage"]


class CorruptStorage(Exception):
    """On-disk state is damaged; the node must not start on it.

    The message names the file and the problem, e.g. ``"control file /d/control: CRC
    mismatch (stored 0x1234abcd, computed 0x0badf00d)"`` or ``"WAL segment
    /d/0000000000001000: completed segment has 17 bytes, expected 4096"``.
    """


@runtime_checkable
class WalStorage(Protocol):
    """An append-only byte log addressed by LSN, with explicit durability.

    LSNs are byte offsets. The log holds bytes in ``[start_lsn, write_lsn)``; those below
    ``flush_lsn`` survive a crash. Invariant: ``start_lsn <= flush_lsn <= write_lsn``. Bytes
    are opaque: record boundaries are the proposer's business.
    """

    @property
    def start_lsn(self) -> int:
        """The first LSN the log holds (where it was created, until old segments are
        removed after offload: ``FileWal.remove_below``)."""
        ...

    @property
    def write_lsn(self) -> int:
        """End of the bytes written so far (flushed or not)."""
        ...

    @property
    def flush_lsn(self) -> int:
        """End of the bytes known to be durable."""
        ...

    def write(self, lsn: int, data: bytes) -> None:
        """Append ``data`` at ``lsn``, which must equal ``write_lsn``.

        Raises:
            ValueError: ``lsn != write_lsn`` (a gap or a rewrite: a caller bug).
        """
        ...

    def flush(self) -> int:
        """Make everything written durable.

        Returns:
            The new ``flush_lsn`` (equal to ``write_lsn``).
        """
        ...

    def truncate(self, lsn: int) -> None:
        """Drop every byte at and after ``lsn``, written or flushed; crash-safe.

        On return ``write_lsn == flush_lsn == lsn`` and the bytes below ``lsn`` are durable.

        Raises:
            ValueError: ``lsn`` outside ``[start_lsn, write_lsn]``.
        """
        ...

    def read(self, begin: int, end: int) -> bytes:
        """The bytes in ``[begin, end)``, written or flushed.

        Raises:
            ValueError: the range is not inside ``[start_lsn, write_lsn]``.
        """
        ...


@runtime_checkable
class ControlStorage(Protocol):
    """The acceptor's small persistent state, replaced atomically as a whole."""

    def load(self) -> ControlState | None:
        """The last stored state, or None for a fresh node that never stored one.

        Raises:
            CorruptStorage: the stored state is damaged.
        """
        ...

    def store(self, state: ControlState) -> None:
        """Replace the stored state durably and atomically: after a crash ``load`` returns
        either the old state or the new one, never a mix."""
        ...


def fsync_dir(directory: Path) -> None:
    """fsync a directory, making the creations, renames and removals in it durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves the old file or the whole new one.

    The bytes go to ``<path>.tmp``, are fsynced, renamed over `path`, and the directory is
    fsynced.  The fsync comes before the rename, or the rename could reach the disk before
    the data and a crash leave `path` empty or torn; the directory fsync makes the rename
    itself durable, so a crash cannot resurrect the old file after the caller acted on the
    new one (e.g. voted).  A leftover ``.tmp`` is a crash's trace: readers remove or ignore it.

    Raises:
        OSError: a write or an fsync failed; the old file may still be the stored one.
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


# A sealed file: magic, format version and body length, the body, then a CRC32C of all before.
_SEAL_HEADER = struct.Struct(">4sHI")
_SEAL_CRC = struct.Struct(">I")


def seal(magic: bytes, version: int, body: bytes) -> bytes:
    """`body` framed as a small durable file (control file, horizons, timeline metadata)."""
    head = _SEAL_HEADER.pack(magic, version, len(body)) + body
    return head + _SEAL_CRC.pack(crc32c.crc32c(head))


def unseal(raw: bytes, magic: bytes, version: int) -> bytes:
    """The body of a sealed file, or ValueError saying what is wrong (the caller adds the path).

    Checks run outside-in, so the message names the first thing that is wrong: a file of
    another kind (magic), a newer writer (version: its layout may differ, so neither length
    nor CRC can be trusted yet), a torn or padded file (length), flipped bits (CRC).
    """
    if len(raw) < _SEAL_HEADER.size:
        raise ValueError(f"truncated: {len(raw)} bytes, the header alone needs {_SEAL_HEADER.size}")
    found_magic, found_version, length = _SEAL_HEADER.unpack_from(raw)
    if found_magic != magic:
        raise ValueError(f"wrong magic {found_magic!r}, expected {magic!r}")
    if found_version != version:
        raise ValueError(f"unknown format version {found_version} (this build reads {version})")
    expected = _SEAL_HEADER.size + length + _SEAL_CRC.size
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "trailing bytes"
        raise ValueError(f"{kind}: {len(raw)} bytes, header says {expected}")
    (stored,) = _SEAL_CRC.unpack_from(raw, expected - _SEAL_CRC.size)
    computed = crc32c.crc32c(raw[: expected - _SEAL_CRC.size])
    if stored != computed:
        raise ValueError(f"CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")
    return raw[_SEAL_HEADER.size : _SEAL_HEADER.size + length]
