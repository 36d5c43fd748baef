"""The pageserver's WAL receiver: committed WAL from the best acceptor into the timeline.

Theory of operation
===================

Neon's walreceiver (neon-protocol.md §8.9) keeps one streaming connection per timeline, to the
safekeeper with the highest commit_lsn, and switches when that one dies, goes silent or falls
behind.  This file does the same for one timeline (the pageserver runs one per timeline), with
StatusRequest instead of the broker.
Rules of this file:

1. Choosing (`choose_acceptor`, pure): each acceptor's status (StatusRequest, answered beside
   its core) is polled every `status_interval`; the candidate is the answering acceptor with
   the greatest commit_lsn not in retry back-off, ties to the lowest id, among those whose
   commit_lsn is at least the timeline's last record LSN (an acceptor that does not hold the
   timeline answers 0: a branch no compute has written to yet streams from nobody).  Switch reasons, as
   Neon's ``ReconnectReason``: no connection; ``silent`` (no frame, not even a keepalive, for
   `silence_timeout`: Neon's NoKeepAlives); ``lagging`` (another acceptor's commit_lsn ahead
   of ours by at least `max_lag`: Neon's LaggingWal); ``failed`` (the connection broke, or
   sent something invalid).  A failed or silent acceptor is skipped for a back-off that
   doubles up to `retry_max`, reset by a stream that delivered WAL.
2. Streaming: `StreamWal(start_lsn)` with start_lsn the timeline's ``last_record_lsn`` at
   connect time, always a record boundary, so a restart mid-record (ours, the acceptor's, or a
   switch) simply decodes that record again from its start.  Chunks must follow each other
   exactly (``begin_lsn`` = the end of the previous one); an empty chunk is a keepalive.
   Records go to `ingest` in LSN order, each exactly once per connection; `ingest` is the
   service's (it owns the repository).  Committed WAL is the same on every acceptor, so
   switching never changes what is ingested, only who sends it.
3. Feedback: every `feedback_interval` the stream carries `PageserverFeedback` (the service's
   LSNs); the acceptor takes its remote_consistent_lsn as the WAL removal horizon.  Every
   status poll carries it too, to every acceptor: each removes WAL by its own horizon, and
   one the pageserver never streams from must learn it as well (Neon spreads it through the
   broker).
4. Bad WAL (`PageWalError`) is never skipped: the connection is dropped and the acceptor
   backed off; since every acceptor holds the same committed WAL, ingest stops there (logged)
   rather than guessing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import attrs
import trio

from impl.framing import READ_SIZE
from impl.pagewal import PAGE_SIZE, PageRecord, PageWalError, RecordReader
from impl.wire import (
    FrameDecoder,
    PageserverFeedback,
    ProtocolError,
    StatusRequest,
    StatusResponse,
    StreamWal,
    WalChunk,
    encode,
    format_lsn,
)

__all__ = ["ReceiverConfig", "WalReceiver", "choose_acceptor", "fetch_status"]

log = logging.getLogger("paxwal.walreceiver")


@attrs.frozen(kw_only=True)
class ReceiverConfig:
    """Tuning of the WAL receiver (Neon's defaults are in brackets where they differ).

    Attributes:
        node: the pageserver's id, sent in StreamWal.
        timeline: the timeline streamed.
        status_interval: seconds between status polls of every acceptor.
        status_timeout: seconds a status query may take.
        silence_timeout: seconds without any frame before switching [10].
        max_lag: bytes of commit_lsn another acceptor must be ahead by to switch [1 GiB].
        retry_first, retry_max: back-off of a failed acceptor, doubling.
        feedback_interval: seconds between PageserverFeedback messages.
    """

    node: str = "pageserver"
    timeline: str = "main"
    status_interval: float = 0.5
    status_timeout: float = 2.0
    silence_timeout: float = 5.0
    max_lag: int = 16 * 1024 * 1024
    retry_first: float = 0.5
    retry_max: float = 10.0
    feedback_interval: float = 0.5


async def fetch_status(port: int, timeout: float = 2.0, host: str = "127.0.0.1", timeline: str = "main",
                       feedback: PageserverFeedback | None = None) -> StatusResponse:
    """Ask the acceptor on host:port for its state of `timeline` (trio's twin of
    impl.cluster.query_status; a timeline it does not hold answers an empty status), telling
    it `feedback` first if given (rule 3).

    Raises:
        OSError, trio.BrokenResourceError: no connection; trio.TooSlowError: no answer in time;
        ProtocolError: the answer is not a StatusResponse.
    """
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            told = b"" if feedback is None else encode(feedback)
            await stream.send_all(told + encode(StatusRequest(timeline=timeline)))
            decoder = FrameDecoder()
            while data := await stream.receive_some(READ_SIZE):
                decoder.feed(data)
                frame = decoder.next_frame()
                if frame is not None:
                    if not isinstance(frame.message, StatusResponse):
                        raise ProtocolError(f"expected a StatusResponse, got {type(frame.message).__name__}")
                    return frame.message
            raise OSError("connection closed before the status arrived")


def choose_acceptor(
    commits: Mapping[str, int], current: str | None, current_commit: int, backed_off: set[str], max_lag: int
) -> tuple[str | None, str | None]:
    """Which acceptor to stream from (rule 1), and why to switch to it.

    Args:
        commits: acceptor -> commit_lsn, for those that answered.
        current: the acceptor streamed from now, or None.
        current_commit: the best commit_lsn we know of `current` (its chunks or its status).
        backed_off: acceptors not to connect to now.
        max_lag: the lag that makes us switch.

    Returns:
        ``(acceptor, reason)``: the acceptor to stream from and, if that is a change, the reason
        (``"no connection"`` or ``"lagging"``); ``(current, None)`` to stay; ``(None, None)``
        when there is no candidate.
    """
    candidates = [(-lsn, name) for name, lsn in commits.items() if name not in backed_off or name == current]
    if not candidates:
        return current, None
    best_lsn, best = min(candidates)
    best_lsn = -best_lsn
    if current is None:
        return best, "no connection"
    if best != current and best_lsn - current_commit >= max_lag:
        return best, "lagging"
    return current, None


class _Switch(Exception):
    """End the current stream: `reason`, and whether the acceptor is backed off."""

    def __init__(self, reason: str, failed: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.failed = failed


def _first(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class WalReceiver:
    """One timeline's receiver (see the module docstring); run with `run`.

    Args:
        acceptors: acceptor id -> TCP port on 127.0.0.1.
        config: tuning.
        start_lsn: the timeline's last_record_lsn now (read at each connect).
        ingest: takes decoded records ``[(end_lsn, record), ...]`` in order.
        feedback: the PageserverFeedback to send now.
        page_size: the timeline's page size.

    Attributes (read-only):
        streaming_from: the acceptor streamed from, or None.
        commit_lsns: the newest commit_lsn heard of each acceptor.
        switches: ``(from, to, reason)`` of every change of acceptor, oldest first.
    """

    def __init__(
        self,
        acceptors: Mapping[str, int],
        config: ReceiverConfig,
        start_lsn: Callable[[], int],
        ingest: Callable[[list[tuple[int, PageRecord]]], Awaitable[None]],
        feedback: Callable[[], PageserverFeedback],
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.acceptors = dict(acceptors)
        self.config = config
        self._start_lsn = start_lsn
        self._ingest = ingest
        self._feedback = feedback
        self._page_size = page_size
        self.streaming_from: str | None = None
        self.commit_lsns: dict[str, int] = {}
        self.switches: list[tuple[str | None, str | None, str]] = []
        self._backoff_until: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._last: str | None = None  # the acceptor streamed from last, and why we left it
        self._reason = "no connection"

    async def poll(self) -> dict[str, int]:
        """The commit_lsn of every answering acceptor that holds the timeline's WAL from our
        last record on (rule 1), telling each our feedback (rule 3); updates `commit_lsns`."""
        answers: dict[str, int] = {}

        async def one(name: str, port: int) -> None:
            try:
                status = await fetch_status(port, self.config.status_timeout, timeline=self.config.timeline,
                                            feedback=feedback)
            except (OSError, trio.BrokenResourceError, trio.TooSlowError, ProtocolError):
                return
            if status.commit_lsn >= start:
                answers[name] = status.commit_lsn

        feedback, start = self._feedback(), self._start_lsn()
        async with trio.open_nursery() as nursery:
            for name, port in self.acceptors.items():
                nursery.start_soon(one, name, port)
        for name, lsn in answers.items():
            self.commit_lsns[name] = max(self.commit_lsns.get(name, 0), lsn)
        return answers

    def _backed_off(self) -> set[str]:
        now = trio.current_time()
        return {name for name, until in self._backoff_until.items() if until > now}

    def _fail(self, name: str) -> None:
        delay = min(self.config.retry_max, self._backoff.get(name, self.config.retry_first / 2) * 2)
        self._backoff[name] = delay
        self._backoff_until[name] = trio.current_time() + delay

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Stream until cancelled, switching acceptors by rule 1."""
        task_status.started()
        while True:
            answers = await self.poll()
            name, _ = choose_acceptor(answers, None, 0, self._backed_off(), self.config.max_lag)
            if name is None:
                await trio.sleep(self.config.status_interval)
                continue
            self.switches.append((self._last, name, "no connection" if self._last is None else self._reason))
            self._last = name
            try:
                await self._stream(name)
            except _Switch as switch:
                self._reason = switch.reason
                log.info("walreceiver: leaving %s: %s", name, switch.reason)
                if switch.failed:
                    self._fail(name)
            finally:
                self.streaming_from = None

    async def _stream(self, name: str) -> None:
        """Stream from acceptor `name` until a _Switch (rules 2, 3)."""
        start = self._start_lsn()
        try:
            with trio.fail_after(self.config.status_timeout):
                stream = await trio.open_tcp_stream("127.0.0.1", self.acceptors[name])
        except (OSError, trio.TooSlowError) as exc:
            raise _Switch(f"cannot connect: {exc}", failed=True) from None
        async with stream:
            try:
                await stream.send_all(encode(StreamWal(pageserver=self.config.node, timeline=self.config.timeline,
                                                       start_lsn=start)))
            except (OSError, trio.BrokenResourceError) as exc:
                raise _Switch(f"cannot send StreamWal: {exc}", failed=True) from None
            self.streaming_from = name
            log.info("walreceiver: streaming %s from %s at %s", self.config.timeline, name, format_lsn(start))
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_feedback, stream)
                    nursery.start_soon(self._watch_lag, name)
                    await self._receive(name, stream, start)
            except BaseExceptionGroup as group:  # trio's nurseries wrap: unwrap our own reason
                switch, rest = group.split(_Switch)
                if rest is not None or switch is None:
                    raise
                raise _first(switch) from None

    async def _receive(self, name: str, stream: trio.SocketStream, start: int) -> None:
        reader = RecordReader(start, page_size=self._page_size)
        decoder = FrameDecoder()
        expected = start
        delivered = False
        while True:
            with trio.move_on_after(self.config.silence_timeout) as silence:
                try:
                    data = await stream.receive_some(READ_SIZE)
                except (OSError, trio.BrokenResourceError) as exc:
                    raise _Switch(f"read failed: {exc}", failed=True) from None
            if silence.cancelled_caught:
                raise _Switch(f"silent for {self.config.silence_timeout} s", failed=True)
            if not data:
                raise _Switch("closed by the acceptor", failed=True)
            records: list[tuple[int, PageRecord]] = []
            try:
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    chunk = frame.message
                    if not isinstance(chunk, WalChunk):
                        raise ProtocolError(f"expected a WalChunk, got {type(chunk).__name__}")
                    self.commit_lsns[name] = max(self.commit_lsns.get(name, 0), chunk.commit_lsn)
                    if not chunk.wal:
                        continue  # a keepalive
                    if chunk.begin_lsn != expected:
                        raise ProtocolError(f"WalChunk at {format_lsn(chunk.begin_lsn)}, expected {format_lsn(expected)}")
                    expected = chunk.end_lsn
                    reader.feed(chunk.wal)
                    while (record := reader.next_record()) is not None:
                        records.append(record)
            except ProtocolError as exc:
                raise _Switch(f"protocol error: {exc}", failed=True) from None
            except PageWalError as exc:
                if records:
                    await self._ingest(records)
                log.error("walreceiver: the committed WAL from %s is not valid: %s", name, exc)
                raise _Switch(f"invalid WAL: {exc}", failed=True) from None
            if records:
                await self._ingest(records)
                if not delivered:
                    delivered = True
                    self._backoff.pop(name, None)

    async def _send_feedback(self, stream: trio.SocketStream) -> None:
        while True:
            try:
                await stream.send_all(encode(self._feedback()))
            except (OSError, trio.BrokenResourceError):
                return  # the reader sees the connection end
            await trio.sleep(self.config.feedback_interval)

    async def _watch_lag(self, name: str) -> None:
        while True:
            await trio.sleep(self.config.status_interval)
            answers = await self.poll()
            best, reason = choose_acceptor(answers, name, self.commit_lsns.get(name, 0), self._backed_off(),
                                           self.config.max_lag)
            if reason is not None:
                raise _Switch(f"{reason}: {best} is at {format_lsn(answers[best])}, {name} at"
                              f" {format_lsn(self.commit_lsns.get(name, 0))}", failed=False)
