"""WAL segments on disk (impl/wal.py): writes, reads, truncation, reopening, damage, crashes.

The stateful test at the end checks FileWal against a plain bytearray (hypothesis' model
pattern); the crash tests interrupt truncation before each of its disk operations.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import impl.wal
from impl.storage import CorruptStorage, WalStorage
from impl.wal import FileWal, segment_name

SEG = 4096


def _data(lsn: int, size: int, salt: int = 0) -> bytes:
    """Bytes that differ by position and salt, so misplaced or stale bytes show up."""
    return random.Random(lsn * 1_000_003 + salt).randbytes(size)


def _files(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(directory.iterdir())}


def _expected_files(start: int, end: int) -> dict[str, int]:
    """The layout of a WAL [start, end) in the steady state: full segments, then a .partial."""
    tail = end - end % SEG
    files = {segment_name(s, False): SEG for s in range(start, tail, SEG)}
    files[segment_name(tail, True)] = end - tail
    return files


@pytest.fixture
def wal(tmp_path):
    with FileWal(tmp_path, SEG) as w:
        yield w


def _fill(wal: FileWal, sizes: list[int]) -> bytes:
    written = b""
    for size in sizes:
        data = _data(wal.write_lsn, size)
        wal.write(wal.write_lsn, data)
        written += data
    return written


# -- Creating -------------------------------------------------------------------------------


def test_new_wal(tmp_path, wal):
    assert isinstance(wal, WalStorage)
    assert (wal.start_lsn, wal.write_lsn, wal.flush_lsn) == (0, 0, 0)
    assert _files(tmp_path) == {"0000000000000000.partial": 0}
    assert wal.read(0, 0) == b""


def test_new_wal_at_later_start(tmp_path):
    with FileWal(tmp_path, SEG, start_lsn=3 * SEG) as wal:
        wal.write(3 * SEG, b"abc")
        wal.flush()
    with FileWal.open(tmp_path, SEG) as wal:
        assert (wal.start_lsn, wal.write_lsn) == (3 * SEG, 3 * SEG + 3)
        assert wal.read(3 * SEG, 3 * SEG + 3) == b"abc"
        with pytest.raises(ValueError):
            wal.read(0, 3 * SEG)


def test_new_wal_inside_a_segment_starts_behind_zeros(tmp_path):
    # A branch's WAL starts at its branch LSN, anywhere: the first segment is whole on disk,
    # zeros up to the start, so reopening, completing and removing stay per segment.
    start = 2 * SEG + 100
    with FileWal(tmp_path, SEG, start_lsn=start) as wal:
        assert (wal.start_lsn, wal.write_lsn, wal.flush_lsn) == (2 * SEG, start, start)
        assert _files(tmp_path) == {segment_name(2 * SEG, True): 100}
        data = _data(start, SEG)
        wal.write(start, data)
        wal.flush()
    assert (tmp_path / segment_name(2 * SEG, False)).read_bytes()[:100] == bytes(100)
    (tmp_path / "first-segment.tmp").write_bytes(b"left by a crash before its rename")
    with FileWal.open(tmp_path, SEG) as wal:
        assert (wal.start_lsn, wal.write_lsn) == (2 * SEG, start + SEG)
        assert wal.read(start, start + SEG) == data
        assert wal.remove_below(start + SEG) == 3 * SEG
        assert wal.read(3 * SEG, start + SEG) == data[SEG - 100:]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"segment_size": 2048},
        {"segment_size": 6000},
        {"segment_size": SEG, "start_lsn": -SEG},
    ],
)
def test_bad_parameters(tmp_path, kwargs):
    with pytest.raises(ValueError):
        FileWal(tmp_path, **kwargs)


def test_create_refuses_existing_wal(tmp_path, wal):
    with pytest.raises(FileExistsError):
        FileWal(tmp_path, SEG)


def test_default_segment_size(tmp_path):
    with FileWal(tmp_path) as wal:
        wal.write(0, b"x" * 10_000)
        assert _files(tmp_path) == {"0000000000000000.partial": 10_000}


# -- Writing and reading --------------------------------------------------------------------


def test_writes_across_segments_read_back_any_range(tmp_path, wal):
    written = _fill(wal, [1, 4095, 4096, 5000, 10_000, 3, 0, 2 * SEG])
    end = len(written)
    assert wal.write_lsn == end and wal.flush_lsn == 0
    assert _files(tmp_path) == _expected_files(0, end)
    rng = random.Random(7)
    points = sorted({0, end, SEG - 1, SEG, SEG + 1, *(rng.randrange(end + 1) for _ in range(30))})
    for begin in points:
        for stop in points:
            if begin <= stop:
                assert wal.read(begin, stop) == written[begin:stop], (begin, stop)


def test_filling_a_segment_completes_it(tmp_path, wal):
    wal.write(0, b"a" * SEG)
    assert _files(tmp_path) == {"0000000000000000": SEG, "0000000000001000.partial": 0}
    wal.write(SEG, b"b" * (3 * SEG + 5))
    assert _files(tmp_path) == _expected_files(0, 4 * SEG + 5)


def test_flush(wal):
    _fill(wal, [100, SEG])
    assert wal.flush_lsn == 0
    assert wal.flush() == SEG + 100
    assert wal.flush_lsn == SEG + 100
    assert wal.flush() == SEG + 100  # nothing new: still fine


@pytest.mark.parametrize("lsn, kind", [(11, "gap"), (5000, "gap"), (9, "rewrite"), (0, "rewrite")])
def test_gap_and_rewrite_refused(wal, lsn, kind):
    wal.write(0, b"0123456789")
    with pytest.raises(ValueError, match=f"LSN {lsn} but write_lsn is 10 \\(a {kind}\\)"):
        wal.write(lsn, b"x")
    assert wal.write_lsn == 10
    assert wal.read(0, 10) == b"0123456789"


@pytest.mark.parametrize("begin, end", [(-1, 5), (0, 11), (5, 4), (11, 11)])
def test_read_outside_refused(wal, begin, end):
    wal.write(0, b"0123456789")
    with pytest.raises(ValueError, match="outside"):
        wal.read(begin, end)


# -- Truncating -----------------------------------------------------------------------------

TRUNCATE_POINTS = [0, 1, 100, SEG - 1, SEG, SEG + 1, 2 * SEG, 3 * SEG - 7, 3 * SEG, 3 * SEG + 50]


@pytest.mark.parametrize("lsn", TRUNCATE_POINTS)
def test_truncate_then_continue(tmp_path, wal, lsn):
    written = _fill(wal, [3 * SEG + 50])
    wal.flush()
    wal.truncate(lsn)
    assert (wal.write_lsn, wal.flush_lsn) == (lsn, lsn)
    assert _files(tmp_path) == _expected_files(0, lsn)
    assert wal.read(0, lsn) == written[:lsn]
    more = _data(lsn, 2 * SEG + 3, salt=1)
    wal.write(lsn, more)
    expected = written[:lsn] + more
    assert wal.read(0, len(expected)) == expected
    assert _files(tmp_path) == _expected_files(0, len(expected))
    wal.close()
    with FileWal.open(tmp_path, SEG) as reopened:
        assert reopened.read(0, len(expected)) == expected


def test_truncate_drops_unflushed_and_makes_the_rest_durable(wal):
    _fill(wal, [2 * SEG + 10])
    wal.truncate(SEG + 3)
    assert (wal.write_lsn, wal.flush_lsn) == (SEG + 3, SEG + 3)


@pytest.mark.parametrize("lsn", [-1, 11])
def test_truncate_outside_refused(wal, lsn):
    wal.write(0, b"0123456789")
    with pytest.raises(ValueError, match="outside"):
        wal.truncate(lsn)


def test_truncate_below_start_refused(tmp_path):
    with FileWal(tmp_path, SEG, start_lsn=SEG) as wal:
        wal.truncate(SEG)
        with pytest.raises(ValueError):
            wal.truncate(SEG - 1)


# -- Reopening ------------------------------------------------------------------------------


def test_reopen_after_write_flush_truncate(tmp_path, wal):
    written = _fill(wal, [5000, 7000])
    wal.flush()
    written += _fill(wal, [300])  # written, not flushed: the OS still has it
    wal.close()
    with FileWal.open(tmp_path, SEG) as w:
        assert (w.start_lsn, w.write_lsn, w.flush_lsn) == (0, len(written), len(written))
        assert w.read(0, len(written)) == written
        w.truncate(6000)
    with FileWal.open(tmp_path, SEG) as w:
        assert w.write_lsn == 6000
        assert w.read(0, 6000) == written[:6000]


def test_reopen_fsyncs_what_it_finds_before_counting_it_flushed(tmp_path, wal, monkeypatch, caplog):
    # Written, never fsynced: a kill -9 leaves it in the page cache.  open makes it durable
    # (the open segment and the directory) before it reports it as flushed, since the
    # acceptor may acknowledge it at once (spec RestartAcceptor keeps it as flushed).
    written = _fill(wal, [SEG + 10])
    wal.flush()
    written += _fill(wal, [20])
    wal.close()
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    caplog.set_level("INFO", logger="paxwal.wal")
    with FileWal.open(tmp_path, SEG, recorded_flush_lsn=SEG + 10) as w:
        assert (w.write_lsn, w.flush_lsn) == (SEG + 30, SEG + 30)
        assert w.read(0, SEG + 30) == written
    assert synced == [str(tmp_path / "0000000000001000.partial"), str(tmp_path)]
    (record,) = caplog.records
    assert record.levelname == "INFO" and "found 20 bytes beyond the flush_lsn 0/100A" in record.getMessage()
    caplog.clear()
    with FileWal.open(tmp_path, SEG, recorded_flush_lsn=SEG + 30):
        pass  # nothing beyond what the control file recorded: nothing to say
    assert caplog.records == []


def test_reopen_ignores_unrelated_files(tmp_path, wal):
    _fill(wal, [SEG + 1])
    wal.close()
    for name in ("control", "control.tmp", "notes.txt", ".hidden"):
        (tmp_path / name).write_bytes(b"not wal")
    (tmp_path / "subdir").mkdir()
    with FileWal.open(tmp_path, SEG) as w:
        assert w.write_lsn == SEG + 1


def test_reopen_recovers_crash_states_of_completion(tmp_path, wal):
    # A crash while completing segment 0 can leave it full but still .partial, or renamed
    # with the next .partial not created yet. Both are WALs ending at SEG; writing goes on.
    wal.write(0, b"a" * (SEG - 1))
    wal.close()
    with open(tmp_path / "0000000000000000.partial", "ab") as f:
        f.write(b"a")
    with FileWal.open(tmp_path, SEG) as w:
        assert w.write_lsn == SEG
        w.write(SEG, b"b")
    assert _files(tmp_path) == _expected_files(0, SEG + 1)
    (tmp_path / "0000000000001000.partial").unlink()
    with FileWal.open(tmp_path, SEG) as w:
        assert w.write_lsn == SEG
        w.truncate(SEG)  # nothing to drop: the segment at SEG does not exist yet
        w.write(SEG, b"c")
        assert w.read(0, SEG + 1) == b"a" * SEG + b"c"
    with FileWal.open(tmp_path, SEG) as w:
        w.truncate(10)
    assert _files(tmp_path) == _expected_files(0, 10)


# -- Damage ---------------------------------------------------------------------------------


def _make(directory: Path, files: dict[str, int]) -> None:
    for name, size in files.items():
        (directory / name).write_bytes(b"w" * size)


def _assert_corrupt(directory: Path, culprit: str, problem: str) -> None:
    with pytest.raises(CorruptStorage) as info:
        FileWal.open(directory, SEG)
    message = str(info.value)
    assert message.startswith(f"WAL segment {directory / culprit}: "), message
    assert problem in message, message


def test_missing_middle_segment(tmp_path):
    _make(tmp_path, {"0000000000000000": SEG, "0000000000002000.partial": 5})
    _assert_corrupt(tmp_path, "0000000000002000.partial", "segment 0000000000001000 is missing")


@pytest.mark.parametrize("size", [0, SEG - 1, SEG + 1])
def test_completed_segment_of_wrong_size(tmp_path, size):
    _make(tmp_path, {"0000000000000000": size, "0000000000001000.partial": 5})
    _assert_corrupt(tmp_path, "0000000000000000", f"completed segment has {size} bytes")


def test_last_completed_segment_of_wrong_size(tmp_path):
    _make(tmp_path, {"0000000000000000": SEG, "0000000000001000": 17})
    _assert_corrupt(tmp_path, "0000000000001000", "completed segment has 17 bytes")


def test_oversized_partial(tmp_path):
    _make(tmp_path, {"0000000000000000.partial": SEG + 1})
    _assert_corrupt(tmp_path, "0000000000000000.partial", "more than the segment size")


def test_two_partials(tmp_path):
    _make(tmp_path, {"0000000000000000.partial": SEG, "0000000000001000.partial": 5})
    _assert_corrupt(tmp_path, "0000000000000000.partial", "not the last")


def test_partial_not_last(tmp_path):
    _make(tmp_path, {"0000000000000000.partial": SEG, "0000000000001000": SEG})
    _assert_corrupt(tmp_path, "0000000000000000.partial", "not the last")


def test_segment_under_both_names(tmp_path):
    _make(tmp_path, {"0000000000000000": SEG, "0000000000000000.partial": 5})
    _assert_corrupt(tmp_path, "0000000000000000.partial", "also exists as 0000000000000000")


def test_misaligned_name(tmp_path):
    _make(tmp_path, {"0000000000000000": SEG, "0000000000001800.partial": 5})
    _assert_corrupt(tmp_path, "0000000000001800.partial", "not a multiple of the segment size")


@pytest.mark.parametrize(
    "name",
    [
        "000000000000a000",
        "00000000000010000",
        "1000",
        "0000000000001000.tmp",
        "junk.partial",
        "0000000000001000.partial.partial",
    ],
)
def test_name_that_looks_like_a_segment_but_does_not_parse(tmp_path, name):
    _make(tmp_path, {"0000000000000000.partial": 5, name: 1})
    _assert_corrupt(tmp_path, name, "name is not 16 uppercase hex digits")


def test_segment_that_is_a_directory(tmp_path):
    _make(tmp_path, {"0000000000000000": SEG})
    (tmp_path / "0000000000001000.partial").mkdir()
    _assert_corrupt(tmp_path, "0000000000001000.partial", "not a regular file")


def test_no_segments(tmp_path):
    (tmp_path / "control").write_bytes(b"x")
    with pytest.raises(CorruptStorage, match=f"WAL directory {tmp_path}: no segment files"):
        FileWal.open(tmp_path, SEG)


def test_opened_with_the_wrong_segment_size(tmp_path, wal):
    _fill(wal, [3 * SEG])
    wal.close()
    with pytest.raises(CorruptStorage, match="is not a multiple of the segment size 0x2000"):
        FileWal.open(tmp_path, 2 * SEG)


# -- Crashes during truncation --------------------------------------------------------------


class _Crash(Exception):
    """The power went out before this disk operation."""


class _CrashingOs:
    """``os`` for impl.wal, except that the n-th state-changing call crashes instead."""

    STEPS = ("unlink", "rename", "ftruncate", "fsync")

    def __init__(self, crash_at: int) -> None:
        self.crash_at = crash_at
        self.calls = 0

    def __getattr__(self, name):
        real = getattr(os, name)
        if name not in self.STEPS:
            return real

        def step(*args):
            self.calls += 1
            if self.calls == self.crash_at:
                raise _Crash(name)
            return real(*args)

        return step


@pytest.mark.parametrize("truncate_to", [0, 10, SEG, SEG + 10, 2 * SEG, 3 * SEG + 1])
def test_crash_at_every_step_of_truncate(tmp_path, monkeypatch, truncate_to):
    # Every step is made durable before the next, so "crash before step k" covers every
    # state a real crash could leave (module docstring, point 5).
    crash_at = 1
    while True:
        directory = tmp_path / f"crash{crash_at}"
        directory.mkdir()
        wal = FileWal(directory, SEG)
        written = _fill(wal, [4 * SEG + 20])  # unflushed: truncation must flush what it keeps
        fake = _CrashingOs(crash_at)
        monkeypatch.setattr(impl.wal, "os", fake)
        try:
            wal.truncate(truncate_to)
            crashed = False
        except _Crash:
            crashed = True
        finally:
            monkeypatch.setattr(impl.wal, "os", os)
            wal.close()
        with FileWal.open(directory, SEG) as reopened:  # always a consistent WAL ...
            assert reopened.write_lsn >= truncate_to  # ... ending at or after lsn
            assert reopened.read(0, reopened.write_lsn) == written[: reopened.write_lsn]
            reopened.truncate(truncate_to)  # and truncate_pending_lsn finishes the job
        with FileWal.open(directory, SEG) as final:
            assert final.write_lsn == truncate_to
            assert final.read(0, truncate_to) == written[:truncate_to]
        assert _files(directory) == _expected_files(0, truncate_to)
        if not crashed:
            break
        crash_at += 1
    assert crash_at > 2  # the injection did reach the truncation's steps


# -- Stateful: FileWal against a bytearray --------------------------------------------------


class WalMachine(RuleBasedStateMachine):
    """FileWal against a plain bytearray through write/flush/truncate/reopen/read."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="paxwal-wal-"))
        self.wal: FileWal | None = None

    @initialize(start_segment=st.integers(0, 3))
    def create(self, start_segment):
        self.start = start_segment * SEG
        self.wal = FileWal(self.directory, SEG, start_lsn=self.start)
        self.model = bytearray()
        self.flushed = self.start
        self.salt = 0

    @property
    def end(self) -> int:
        return self.start + len(self.model)

    @rule(size=st.one_of(st.integers(0, 64), st.integers(0, 3 * SEG)))
    def write(self, size):
        self.salt += 1
        data = _data(self.end, size, self.salt)
        self.wal.write(self.end, data)
        self.model += data

    @rule(delta=st.integers(1, 2 * SEG), ahead=st.booleans())
    def bad_write(self, delta, ahead):
        lsn = self.end + delta if ahead else self.end - delta
        with pytest.raises(ValueError):
            self.wal.write(lsn, b"x")

    @rule()
    def flush(self):
        assert self.wal.flush() == self.end
        self.flushed = self.end

    @rule(data=st.data())
    def truncate(self, data):
        lsn = data.draw(st.integers(self.start, self.end), label="lsn")
        self.wal.truncate(lsn)
        del self.model[lsn - self.start :]
        self.flushed = lsn

    @rule()
    def reopen(self):
        self.wal.close()
        self.wal = FileWal.open(self.directory, SEG)
        self.flushed = self.end  # what is found on open counts as flushed

    @rule(data=st.data())
    def read(self, data):
        begin = data.draw(st.integers(self.start, self.end), label="begin")
        end = data.draw(st.integers(begin, self.end), label="end")
        assert self.wal.read(begin, end) == self.model[begin - self.start : end - self.start]

    @invariant()
    def agrees_with_model(self):
        if self.wal is None:
            return
        assert (self.wal.start_lsn, self.wal.write_lsn, self.wal.flush_lsn) == (
            self.start, self.end, self.flushed)
        assert self.wal.read(self.start, self.end) == self.model
        assert _files(self.directory) == _expected_files(self.start, self.end)

    @precondition(lambda self: self.wal is not None)
    @rule()
    def still_opens(self):
        # Another process's view of the directory: a valid WAL with the same bytes.
        with FileWal.open(self.directory, SEG) as other:
            assert other.read(self.start, other.write_lsn) == self.model

    def teardown(self):
        if self.wal is not None:
            self.wal.close()
        shutil.rmtree(self.directory, ignore_errors=True)


TestWalMachine = WalMachine.TestCase
TestWalMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
