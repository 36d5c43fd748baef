"""What the network benchmarks (bench/commit.py, bench/ingest.py) share: acceptor processes,
appending clients, the local fsync baselines and the arithmetic of their figures.

Acceptors run as real `paxwal acceptor` processes (`python -m impl.cli acceptor`), one per
acceptor, on 127.0.0.1 with ports they pick themselves (``--port 0``; each log says where it
listens), their data under one directory, traces off.  The proposer runs in the
benchmark's own process, so the figures are what a compute linking the proposer would see.

Resource handling: `acceptor_processes` is a context manager.  However its block ends
(an error, Ctrl-C), every process it started is sent SIGTERM, waited for, and killed if it
does not exit within `STOP_TIMEOUT`; each is also asked (Linux: PR_SET_PDEATHSIG) to get
SIGTERM should the benchmark itself die without cleaning up.  The processes run in their
own session, so a Ctrl-C in the terminal reaches the benchmark only, which stops them in
order.  Their directory is the caller's (a temporary directory).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import trio

from impl.proposer_client import Proposer

__all__ = [
    "STARTUP_TIMEOUT",
    "acceptor_processes",
    "append_loop",
    "fsync_loop",
    "ms",
    "percentile",
    "run_trio",
    "sequential_write",
    "warm_up_seconds",
]

# A `paxwal acceptor` imports trio and opens its storage before it listens: well under a
# second here, but a loaded CI machine may take several.
STARTUP_TIMEOUT = 30.0

# SIGTERM to exit: a storage operation in progress finishes first, then it closes.
STOP_TIMEOUT = 10.0

T = TypeVar("T")

# Where `python -m impl.cli` finds this checkout's code.
_REPO = Path(__file__).resolve().parent.parent

_LISTENING = re.compile(rb"listening on 127\.0\.0\.1:(\d+)")

# Linux's prctl(PR_SET_PDEATHSIG): a signal the child gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def warm_up_seconds(seconds: float) -> float:
    """The unmeasured run before each measured phase of `seconds`: a fifth, 0.1 s to 2 s."""
    return min(2.0, max(0.1, seconds / 5))


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A `preexec_fn` that asks for SIGTERM when the parent dies (Linux), or None.

    prctl is looked up here, in the parent: the child, between fork and exec, only calls it.
    """
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:  # pragma: no cover (runs in the child, before exec)
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


def _log_tail(log: Path, lines: int = 5) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def _wait_listening(name: str, process: subprocess.Popen[bytes], log: Path, deadline: float) -> int:
    """The port acceptor `name` says it listens on (its log's line), or RuntimeError."""
    while True:
        with contextlib.suppress(OSError):
            if match := _LISTENING.search(log.read_bytes()):
                return int(match.group(1))
        if process.poll() is not None:
            raise RuntimeError(f"acceptor {name} exited with {process.returncode} before listening: {_log_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"acceptor {name} did not listen within {STARTUP_TIMEOUT} s: {_log_tail(log)}")
        time.sleep(0.02)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM all, then wait for each; kill what is still running after STOP_TIMEOUT."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def acceptor_processes(names: tuple[str, ...], root: Path) -> Iterator[dict[str, tuple[str, int]]]:
    """Run one `paxwal acceptor` process per name, data in `root/<name>`, log in `root/<name>.log`.

    Yields:
        acceptor id -> ("127.0.0.1", port), once every one listens.

    Raises:
        RuntimeError: an acceptor exited or did not listen in time (the message quotes the
            end of its log).
    """
    processes: list[subprocess.Popen[bytes]] = []
    die_with_parent = _die_with_parent_hook()
    try:
        logs = {}
        for name in names:
            logs[name] = root / f"{name}.log"
            with logs[name].open("wb") as log:
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "impl.cli", "acceptor", "--node", name,
                     "--dir", str(root / name), "--port", "0"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                    start_new_session=True, preexec_fn=die_with_parent, cwd=_REPO,
                ))
        deadline = time.monotonic() + STARTUP_TIMEOUT
        yield {
            name: ("127.0.0.1", _wait_listening(name, process, logs[name], deadline))
            for name, process in zip(names, processes)
        }
    finally:
        _stop(processes)


async def append_loop(
    proposer: Proposer, clients: int, record: bytes, seconds: float, max_appends: int | None = None
) -> tuple[list[float], float]:
    """`clients` tasks, each appending `record` in a loop (one append outstanding each)
    until `seconds` have passed, or `max_appends` appends were started.

    Returns:
        (the latency of every append, in seconds; the elapsed seconds, until the last
        append in flight at the deadline returned).
    """
    latencies: list[float] = []
    clock = time.perf_counter
    start = clock()
    stop_at = start + seconds
    left = math.inf if max_appends is None else max_appends

    async def client() -> None:
        nonlocal left
        while (begin := clock()) < stop_at and left > 0:
            left -= 1
            await proposer.append(record)
            latencies.append(clock() - begin)

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client)
    return latencies, clock() - start


def run_trio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """`trio.run(fn, *args)`, with a nursery's lone error (or a Ctrl-C) out of its groups."""
    try:
        return trio.run(fn, *args)
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            raise KeyboardInterrupt from group
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def fsync_loop(directory: Path, record: bytes, seconds: float) -> tuple[list[float], float]:
    """Append `record` to a new file in `directory` and fsync it, in a loop, for `seconds`
    (as the acceptor's WAL does: os.pwrite at the end, then os.fsync).

    Returns:
        (the latency of every write + fsync, in seconds; the elapsed seconds).
    """
    latencies: list[float] = []
    clock = time.perf_counter
    path = directory / "baseline-fsync"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        offset = 0
        start = clock()
        stop_at = start + seconds
        while (begin := clock()) < stop_at:
            os.pwrite(fd, record, offset)
            os.fsync(fd)
            offset += len(record)
            latencies.append(clock() - begin)
        return latencies, clock() - start
    finally:
        os.close(fd)
        path.unlink()


def sequential_write(
    directory: Path, chunk: bytes, sync_every: int, seconds: float, file_size: int
) -> tuple[int, float]:
    """Write `chunk` after `chunk` for `seconds`, fsync after every `sync_every` bytes, into
    files of `file_size` bytes (as the WAL's segments: a new file when one is full, fsynced
    first; the one before it is deleted, to bound the disk used).

    Returns:
        (bytes written and fsynced, elapsed seconds).
    """
    clock = time.perf_counter
    written = 0
    files: list[Path] = []
    fd = -1
    try:
        start = clock()
        stop_at = start + seconds
        while clock() < stop_at:
            if fd < 0 or written % file_size == 0:
                if fd >= 0:
                    os.fsync(fd)
                    os.close(fd)
                    fd = -1
                if len(files) >= 2:
                    files.pop(0).unlink()
                files.append(directory / f"baseline-{len(files)}-{written}")
                fd = os.open(files[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            for _ in range(sync_every // len(chunk)):
                os.pwrite(fd, chunk, written % file_size)
                written += len(chunk)
            os.fsync(fd)
        return written, clock() - start
    finally:
        if fd >= 0:
            os.close(fd)
        for path in files:
            path.unlink(missing_ok=True)


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank `q`-quantile (0 < q <= 1) of non-empty `values`."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ms(seconds: float) -> float:
    """Seconds as milliseconds, rounded for printing."""
    return round(seconds * 1000, 3)
