"""The acceptor's WAL on disk: fixed-size segment files, crash-safe truncation.

Theory of operation:

1. LSNs are byte offsets and the bytes are opaque: record boundaries are the proposer's
   business, so there is no framing and no per-segment header. The WAL's files cover
   ``[start_lsn, write_lsn)``; ``start_lsn`` is a multiple of the segment size.  A WAL
   created at an LSN inside a segment (a branch's WAL starts at its branch LSN) gets a first
   segment that is zero-filled up to that LSN: the zeros are never WAL (nobody reads below
   the acceptor's wal_start), they only keep every segment whole, so that names, layout
   checks, removal and offload stay per segment.  Neon's safekeeper does the same behind a
   synthetic page header.
2. Layout: one file per ``segment_size`` bytes (a power of two, at least 4 KiB), named by
   its start LSN as 16 uppercase hex digits. Every segment but the last is *completed*: it
   has exactly ``segment_size`` bytes and no suffix. The last is ``.partial`` while it is
   being filled (as in Neon, unlike Postgres). Names carry everything, so ``open`` rebuilds
   the WAL from the directory listing and file sizes alone.
3. Writes append with ``pwrite``. A write that fills the open segment completes it: fsync,
   rename without ``.partial``, fsync the directory, and only then create the next
   ``.partial``. Because each completion is durable before the next segment exists, a crash
   can only lose the tail: every state ``open`` may find after a crash is a gap-free run of
   completed segments, then at most one ``.partial`` (possibly empty, possibly full, or
   missing when the crash hit between a completion and the next creation).
4. ``flush`` fsyncs the open segment and, if a segment was created since, the directory.
5. ``truncate(lsn)`` runs these steps (S = the segment containing lsn):
     0. flush, so every byte below lsn is durable before anything is removed;
     1. unlink the segments after S, newest first, fsyncing the directory after each;
     2. if S is completed, rename it to ``S.partial`` and fsync the directory;
     3. cut ``S.partial`` to ``lsn - S`` bytes and fsync it.
   After step 0 the WAL on disk reaches at least lsn. Step 1 removes from the end and makes
   each removal durable before the next, so the survivors are always a prefix. Step 2 comes
   before step 3 because a completed segment cut short is exactly what ``open`` refuses,
   while a full-size ``.partial`` at the end is a legal state. Step 3 changes only the last
   file's size. So a crash at any step leaves a consistent WAL ending at or after lsn; the
   acceptor's ``truncate_pending_lsn`` (control file) makes it truncate again on restart.
6. Any OSError makes the object unusable (sticky): after a failed fsync the kernel may have
   dropped the dirty pages, so a retry could "succeed" with the data lost (PostgreSQL's
   2018 fsync bug), and the in-memory LSNs may no longer match the files. The caller must
   close it and reopen, which rescans the directory.

7. ``open`` makes what it finds durable (fsyncs the open segment and the directory) before
   reporting it as flushed. Bytes written but never fsynced may survive a crash (a kill -9
   leaves them in the page cache; a power loss keeps whatever prefix reached the disk), and
   the acceptor counts all it finds as flushed (spec/ProposerAcceptor.tla, RestartAcceptor:
   any prefix of the written WAL at least as long as the flushed one survives, and is the
   flushed WAL from then on): it may acknowledge them, so they must be durable first.
   Completed segments need no fsync: each was fsynced before its rename (point 3).
8. ``remove_below(lsn)`` deletes old completed segments once they are offloaded
   (``impl/offload.py`` decides when), oldest first, fsyncing the directory after each
   unlink: the survivors are always a gap-free suffix, so after a crash ``open`` finds a
   WAL that starts later, ``start_lsn`` moves up, and ``read`` refuses the removed range
   with ``ValueError`` (the caller reads it from object storage). It never removes the last
   file. ``read_segment`` reads one completed segment by name, for the uploader's thread.

Known limit: without framing or checksums, ``open`` cannot tell an unflushed tail the file
system kept as zeros (size grown, data lost) from real data; it reports what it finds as
flushed. The acceptor cross-checks the control file's ``flush_lsn`` hint and its term history.

Blocking and synchronous: the trio shell runs it in ``trio.to_thread``; the simulator
replaces it with a virtual disk behind the same ``WalStorage`` protocol (``impl/storage.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import string
from collections.abc import Iterator
from pathlib import Path

import attrs

from impl.storage import CorruptStorage, fsync_dir
from impl.wire import format_lsn

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "MIN_SEGMENT_SIZE",
    "PARTIAL_SUFFIX",
    "has_segments",
    "FileWal",
    "segment_name",
]

# Postgres' and Neon's segment size; fine for production, far too big for tests.
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
# One page: smaller segments only multiply files and fsyncs.
MIN_SEGMENT_SIZE = 4096
PARTIAL_SUFFIX = ".partial"

log = logging.getLogger("paxwal.wal")

_SEGMENT_NAME = re.compile(r"([0-9A-F]{16})((?:\.partial)?)")


def segment_name(start_lsn: int, partial: bool) -> str:
    """The file name of the segment starting at ``start_lsn``.

    Args:
        start_lsn: the segment's first LSN.
        partial: whether it is the open (last) segment.

    Returns:
        E.g. ``"0000000001000000.partial"``.
    """
    return f"{start_lsn:016X}{PARTIAL_SUFFIX if partial else ''}"


def _looks_like_segment(name: str) -> bool:
    """Whether a name that failed to parse was meant as a segment (then it is refused).

    Unrelated files (``control``, ``control.tmp``) are ignored; a ``.partial`` or a hex stem
    (``1000``, ``0000000000001000.tmp``) is a damaged or foreign segment and is not.
    """
    stem = name.split(".", 1)[0]
    hex_stem = stem != "" and all(c in string.hexdigits for c in stem)
    return name.endswith(PARTIAL_SUFFIX) or hex_stem


def has_segments(directory: Path) -> bool:
    """Whether `directory` holds anything that is, or was meant to be, a WAL segment."""
    return any(_looks_like_segment(entry.name) for entry in directory.iterdir())


def _check_segment_size(segment_size: int) -> None:
    if type(segment_size) is not int or segment_size < MIN_SEGMENT_SIZE:
        raise ValueError(f"segment_size must be an int >= {MIN_SEGMENT_SIZE}, got {segment_size!r}")
    if segment_size & (segment_size - 1):
        raise ValueError(f"segment_size must be a power of two, got {segment_size}")


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes at ``offset``; fewer only if the file ends first."""
    parts = []
    while size:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        parts.append(chunk)
        size, offset = size - len(chunk), offset + len(chunk)
    return b"".join(parts)


@attrs.frozen
class _Segment:
    """A segment file found by ``open``."""

    start: int
    partial: bool
    path: Path
    size: int


def _scan(directory: Path, segment_size: int) -> list[_Segment]:
    """The segment files in ``directory``, sorted, each checked on its own.

    Raises:
        CorruptStorage: a name that looks like a segment but does not parse, a misaligned
            start, a segment that is not a regular file, or one segment under two names.
    """
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            path = directory / entry.name
            match = _SEGMENT_NAME.fullmatch(entry.name)
            if match is None:
                if _looks_like_segment(entry.name):
                    raise CorruptStorage(
                        f"WAL segment {path}: name is not 16 uppercase hex digits"
                        f" with an optional {PARTIAL_SUFFIX} suffix"
                    )
                continue
            if not entry.is_file(follow_symlinks=False):
                raise CorruptStorage(f"WAL segment {path}: not a regular file")
            start = int(match[1], 16)
            if start % segment_size:
                raise CorruptStorage(
                    f"WAL segment {path}: start LSN {start:#x} is not a multiple"
                    f" of the segment size {segment_size:#x}"
                )
            size = entry.stat(follow_symlinks=False).st_size
            found.append(_Segment(start, bool(match[2]), path, size))
    found.sort(key=lambda s: (s.start, s.partial))
    for prev, seg in zip(found, found[1:]):
        if seg.start == prev.start:
            raise CorruptStorage(
                f"WAL segment {seg.path}: the same segment also exists as {prev.path.name}"
            )
    return found


def _check_layout(segments: list[_Segment], segment_size: int) -> None:
    """Check the segments form one WAL: no gaps, only the last partial, right sizes.

    Raises:
        CorruptStorage: naming the first offending segment.
    """
    for prev, seg in zip(segments, segments[1:]):
        if prev.partial:
            raise CorruptStorage(
                f"WAL segment {prev.path}: {PARTIAL_SUFFIX} segment is not the last"
            )
        if seg.start != prev.start + segment_size:
            missing = segment_name(prev.start + segment_size, False)
            raise CorruptStorage(
                f"WAL segment {seg.path}: gap before it, segment {missing} is missing"
            )
    for seg in segments:
        if not seg.partial and seg.size != segment_size:
            raise CorruptStorage(
                f"WAL segment {seg.path}: completed segment has {seg.size} bytes,"
                f" expected {segment_size}"
            )
        if seg.partial and seg.size > segment_size:
            raise CorruptStorage(
                f"WAL segment {seg.path}: partial segment has {seg.size} bytes,"
                f" more than the segment size {segment_size}"
            )


class FileWal:
    """A WAL in a directory of segment files. Implements ``WalStorage``.

    ``FileWal(directory, ...)`` creates a new, empty WAL; ``FileWal.open(directory, ...)``
    reopens an existing one. Close it with ``close()`` (or use it as a context manager).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        start_lsn: int = 0,
    ) -> None:
        """Create a new, empty WAL starting at ``start_lsn``.

        Its first segment is created and made durable at once, holding zeros from its start
        up to ``start_lsn`` (module docstring, point 1): the file's name and size are what
        record where the WAL begins for ``open``.  The WAL's ``start_lsn`` property is that
        segment's start; ``write_lsn == flush_lsn ==`` the ``start_lsn`` given.

        Args:
            directory: an existing directory holding no segment files.
            segment_size: bytes per segment, a power of two >= ``MIN_SEGMENT_SIZE``.
            start_lsn: where the WAL's data begins.

        Raises:
            ValueError: a bad ``segment_size`` or ``start_lsn``.
            FileExistsError: ``directory`` already holds segments (use ``open``).
            CorruptStorage: ``directory`` holds a damaged segment name.
        """
        _check_segment_size(segment_size)
        if type(start_lsn) is not int or start_lsn < 0:
            raise ValueError(f"start_lsn must be an int >= 0, got {start_lsn!r}")
        directory = Path(directory)
        if _scan(directory, segment_size):
            raise FileExistsError(
                f"WAL directory {directory} already holds segments (use FileWal.open)"
            )
        first = start_lsn - start_lsn % segment_size
        self._attach(directory, segment_size, first, tail=first, tail_partial=True, end=start_lsn)
        # Zeros first, under a name open ignores, then the rename: a crash never leaves a
        # first segment shorter than the prefix, which open would take as a WAL ending early.
        temporary = directory / "first-segment.tmp"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _pwrite_all(fd, memoryview(bytes(start_lsn - first)), 0)
            os.fsync(fd)
            os.rename(temporary, self._tail_path())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        fsync_dir(directory)

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        recorded_flush_lsn: int | None = None,
    ) -> FileWal:
        """Reopen an existing WAL, validating every segment file.

        Files that do not look like segments (``control``) are ignored. Everything found is
        made durable, then taken as flushed (module docstring, point 7): the open segment
        and the directory are fsynced, and ``write_lsn == flush_lsn ==`` the end of the data
        found. Nothing else is changed on disk; a state a crash left mid-completion (a full
        ``.partial``, or no ``.partial``) is finished by the next write.

        Args:
            directory: the WAL's directory.
            segment_size: the size it was created with.
            recorded_flush_lsn: where the control file says the flushed WAL ends, if known;
                bytes found beyond it (flushed since the control file was stored, or
                written and never fsynced before a crash) are logged at INFO.

        Returns:
            The WAL, ready to write at its end.

        Raises:
            CorruptStorage: no segments, a name that looks like a segment but does not
                parse or is misaligned, a gap, a ``.partial`` that is not last, or a
                segment of the wrong size. The message names the file.
            ValueError: a bad ``segment_size``.
            OSError: an fsync failed (nothing found may be counted as flushed then).
        """
        _check_segment_size(segment_size)
        directory = Path(directory)
        segments = _scan(directory, segment_size)
        if not segments:
            raise CorruptStorage(f"WAL directory {directory}: no segment files")
        _check_layout(segments, segment_size)
        last = segments[-1]
        wal = cls.__new__(cls)
        wal._attach(
            directory,
            segment_size,
            segments[0].start,
            tail=last.start,
            tail_partial=last.partial,
            end=last.start + last.size,
        )
        if last.partial:
            wal._fd = os.open(last.path, os.O_RDWR)
        try:
            # Point 7: durable before it counts as flushed.
            if wal._fd is not None:
                os.fsync(wal._fd)
            fsync_dir(directory)
        except OSError:
            wal._close_fd()
            raise
        end = wal._write_lsn
        if recorded_flush_lsn is not None and end > recorded_flush_lsn:
            log.info(
                "WAL %s: found %d bytes beyond the flush_lsn %s the control file recorded"
                " (flushed since, or written and not fsynced before a crash); fsynced,"
                " the WAL ends at %s",
                directory, end - recorded_flush_lsn, format_lsn(recorded_flush_lsn), format_lsn(end),
            )
        return wal

    def _attach(
        self,
        directory: Path,
        segment_size: int,
        start_lsn: int,
        *,
        tail: int,
        tail_partial: bool,
        end: int,
    ) -> None:
        """Set the in-memory state; shared by ``__init__`` and ``open``."""
        self._directory = directory
        self._segment_size = segment_size
        self._start_lsn = start_lsn
        self._write_lsn = end
        self._flush_lsn = end
        # The last segment file: its start and whether it is still .partial. Every segment
        # from start_lsn up to it exists and is completed.
        self._tail = tail
        self._tail_partial = tail_partial
        # Open on the tail exactly when it is .partial (the only file ever written).
        self._fd: int | None = None
        # The tail has writes not yet fsynced / a segment was created since the last
        # directory fsync: what the next flush must do.
        self._tail_dirty = False
        self._dir_dirty = False
        # Set by the first OSError; see the module docstring, point 6.
        self._broken: str | None = None

    # -- WalStorage ------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        """The WAL's directory."""
        return self._directory

    @property
    def segment_size(self) -> int:
        """Bytes per segment."""
        return self._segment_size

    @property
    def start_lsn(self) -> int:
        """The first LSN the WAL holds."""
        return self._start_lsn

    @property
    def write_lsn(self) -> int:
        """End of the bytes written so far (flushed or not)."""
        return self._write_lsn

    @property
    def flush_lsn(self) -> int:
        """End of the bytes known to be durable."""
        return self._flush_lsn

    def write(self, lsn: int, data: bytes) -> None:
        """Append ``data`` at ``lsn``, completing and opening segments as it goes.

        Not durable until ``flush`` (a completed segment is fsynced on completion, but
        ``flush_lsn`` moves only in ``flush``).

        Args:
            lsn: must equal ``write_lsn``.
            data: the bytes; may cross any number of segment boundaries.

        Raises:
            ValueError: ``lsn != write_lsn``: the core decides what to send, so a gap or a
                rewrite is a caller bug.
            OSError: the write failed; the WAL is now unusable (reopen it).
        """
        self._check_usable()
        if lsn != self._write_lsn:
            kind = "gap" if lsn > self._write_lsn else "rewrite"
            raise ValueError(
                f"WAL write at LSN {lsn} but write_lsn is {self._write_lsn} (a {kind})"
            )
        view = memoryview(data).cast("B")
        with self._sticky_errors():
            while view:
                self._roll_if_full()
                assert self._fd is not None
                offset = self._write_lsn - self._tail
                size = min(len(view), self._segment_size - offset)
                _pwrite_all(self._fd, view[:size], offset)
                self._write_lsn += size
                self._tail_dirty = True
                view = view[size:]
            # Complete a segment as soon as it is full, as Neon does, so a full segment is
            # never left waiting as .partial for the next write.
            self._roll_if_full()

    def flush(self) -> int:
        """fsync what was written since the last flush.

        Returns:
            The new ``flush_lsn`` (equal to ``write_lsn``).

        Raises:
            OSError: an fsync failed; the WAL is now unusable (reopen it).
        """
        self._check_usable()
        with self._sticky_errors():
            self._sync()
        self._flush_lsn = self._write_lsn
        return self._flush_lsn

    def truncate(self, lsn: int) -> None:
        """Drop every byte at and after ``lsn``; crash-safe (module docstring, point 5).

        On return ``write_lsn == flush_lsn == lsn`` and the bytes below ``lsn`` are durable.

        Args:
            lsn: the new end of the WAL.

        Raises:
            ValueError: ``lsn`` outside ``[start_lsn, write_lsn]``.
            OSError: a step failed; the WAL is now unusable (reopen it, then truncate again).
        """
        self._check_usable()
        if not self._start_lsn <= lsn <= self._write_lsn:
            raise ValueError(
                f"WAL truncate to LSN {lsn} outside [{self._start_lsn}, {self._write_lsn}]"
            )
        keep = lsn - lsn % self._segment_size
        with self._sticky_errors():
            # Step 0: everything below lsn durable, so no crash below leaves the WAL short.
            self._sync()
            # Step 1: later segments, newest first, each removal durable before the next,
            # so a crash leaves a gap-free prefix.
            while self._tail > keep:
                self._close_fd()
                os.unlink(self._tail_path())
                fsync_dir(self._directory)
                self._tail -= self._segment_size
                self._tail_partial = False  # every segment before the last is completed
            if self._tail == keep:
                # Step 2: rename before cutting; a short completed segment would be refused
                # by open, a full .partial at the end is legal.
                if not self._tail_partial:
                    completed = self._tail_path()
                    self._tail_partial = True
                    os.rename(completed, self._tail_path())
                    fsync_dir(self._directory)
                    self._fd = os.open(self._tail_path(), os.O_RDWR)
                # Step 3: cut; only the last file's size changes.
                assert self._fd is not None
                os.ftruncate(self._fd, lsn - keep)
                os.fsync(self._fd)
            # else lsn == write_lsn is the end of a full tail segment: nothing to drop.
        self._write_lsn = self._flush_lsn = lsn

    def read(self, begin: int, end: int) -> bytes:
        """The bytes in ``[begin, end)``, across segments, flushed or not.

        Args:
            begin: first LSN, at least ``start_lsn``.
            end: LSN after the last, at most ``write_lsn``.

        Returns:
            ``end - begin`` bytes.

        Raises:
            ValueError: the range is not inside ``[start_lsn, write_lsn]``.
            CorruptStorage: a segment is shorter than the WAL's state says (changed under
                us).
        """
        self._check_usable()
        if not self._start_lsn <= begin <= end <= self._write_lsn:
            raise ValueError(
                f"WAL read [{begin}, {end}) outside [{self._start_lsn}, {self._write_lsn}]"
            )
        parts = []
        pos = begin
        while pos < end:
            start = pos - pos % self._segment_size
            size = min(end, start + self._segment_size) - pos
            partial = start == self._tail and self._tail_partial
            path = self._directory / segment_name(start, partial)
            if partial and self._fd is not None:
                chunk = _pread_exact(self._fd, size, pos - start)
            else:
                fd = os.open(path, os.O_RDONLY)
                try:
                    chunk = _pread_exact(fd, size, pos - start)
                finally:
                    os.close(fd)
            if len(chunk) != size:
                raise CorruptStorage(
                    f"WAL segment {path}: {len(chunk)} bytes at offset {pos - start},"
                    f" expected {size}"
                )
            parts.append(chunk)
            pos += size
        return b"".join(parts)

    def read_segment(self, start: int) -> bytes:
        """The whole completed segment starting at ``start`` (module docstring, point 8).

        Unlike ``read``, safe to call from another thread while the disk thread writes,
        flushes or truncates, as long as the segment lies below the acceptor's commit_lsn
        (no truncation reaches it) and nobody removes it meanwhile: it reads only a
        completed file, by name, never the open segment's descriptor.

        Args:
            start: a segment start in ``[start_lsn, ...)`` whose segment is completed.

        Returns:
            ``segment_size`` bytes.

        Raises:
            ValueError: ``start`` is not a segment start, lies below ``start_lsn`` (removed),
                or its segment is not completed yet (the open one, or beyond the WAL).
            CorruptStorage: the file is shorter than a completed segment.
            OSError: reading failed (the WAL stays usable: nothing was written).
        """
        self._check_usable()
        # Read the tail before its flag: a roll sets the flag after moving the tail, so a
        # stale pair errs towards "not completed".
        tail, tail_partial = self._tail, self._tail_partial
        completed = start < tail or (start == tail and not tail_partial)
        if start % self._segment_size or start < self._start_lsn or not completed:
            raise ValueError(
                f"WAL read of segment {start:#x}: not a completed segment of"
                f" [{self._start_lsn:#x}, {self._write_lsn:#x}) (segment size {self._segment_size:#x})"
            )
        path = self._directory / segment_name(start, False)
        fd = os.open(path, os.O_RDONLY)
        try:
            data = _pread_exact(fd, self._segment_size, 0)
        finally:
            os.close(fd)
        if len(data) != self._segment_size:
            raise CorruptStorage(
                f"WAL segment {path}: {len(data)} bytes, a completed segment has {self._segment_size}"
            )
        return data

    def remove_below(self, lsn: int) -> int:
        """Delete the segments entirely below ``lsn``; crash-safe (module docstring, point 8).

        Only completed segments go, oldest first, each removal durable (directory fsync)
        before the next, so a crash leaves a gap-free suffix that ``open`` takes as the WAL.
        The last segment file is never removed (the WAL must keep one to reopen), nor
        anything at or above ``min(lsn, flush_lsn)``.

        Args:
            lsn: the removal limit; a segment ``[S, S + segment_size)`` goes iff
                ``S + segment_size <= min(lsn, flush_lsn)`` and it is not the last file.

        Returns:
            The new ``start_lsn``: reads below it raise ``ValueError``.

        Raises:
            OSError: an unlink or fsync failed; the WAL is now unusable (reopen it).
        """
        self._check_usable()
        limit = min(lsn, self._flush_lsn)
        with self._sticky_errors():
            while self._start_lsn + self._segment_size <= limit and self._start_lsn < self._tail:
                os.unlink(self._directory / segment_name(self._start_lsn, False))
                fsync_dir(self._directory)
                self._start_lsn += self._segment_size
        return self._start_lsn

    # -- Lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the open segment. Unflushed writes stay in the OS cache, not durable."""
        self._close_fd()

    def __enter__(self) -> FileWal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"FileWal({str(self._directory)!r}, segment_size={self._segment_size},"
            f" start_lsn={self._start_lsn}, write_lsn={self._write_lsn},"
            f" flush_lsn={self._flush_lsn})"
        )

    # -- Helpers ---------------------------------------------------------------------------

    def _tail_path(self) -> Path:
        return self._directory / segment_name(self._tail, self._tail_partial)

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise RuntimeError(
                f"WAL {self._directory} unusable after an I/O error ({self._broken}); reopen it"
            )

    @contextlib.contextmanager
    def _sticky_errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            self._broken = f"{type(exc).__name__}: {exc}"
            raise

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _sync(self) -> None:
        """fsync the tail's pending writes and the directory's pending creations."""
        if self._tail_dirty:
            assert self._fd is not None
            os.fsync(self._fd)
            self._tail_dirty = False
        if self._dir_dirty:
            fsync_dir(self._directory)
            self._dir_dirty = False

    def _roll_if_full(self) -> None:
        """If the tail segment is full, complete it (if needed) and create the next one."""
        if self._write_lsn < self._tail + self._segment_size:
            return
        if self._tail_partial:
            assert self._fd is not None
            # fsync before the rename: a completed name promises segment_size durable bytes.
            os.fsync(self._fd)
            self._close_fd()
            partial = self._tail_path()
            self._tail_partial = False
            os.rename(partial, self._tail_path())
            # Make the rename durable before the next segment exists; otherwise a crash
            # could keep the new .partial but lose the rename: two .partial files.
            fsync_dir(self._directory)
            self._tail_dirty = self._dir_dirty = False
        self._tail += self._segment_size
        self._tail_partial = True
        self._fd = os.open(self._tail_path(), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self._dir_dirty = True
