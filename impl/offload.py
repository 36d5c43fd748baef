"""WAL offload: completed segments go to object storage, and old local WAL goes away.

Theory of operation
===================

An acceptor's WAL grows forever unless old segments leave its disk.  A segment may leave
once two other copies make it unnecessary: object storage holds it, so a proposer that
recovers from this acceptor can still read it, and the pageserver has made the pages it
produces durable in object storage (its remote_consistent_lsn, issue 8).  This module does
the upload, decides what may be removed, and reads removed WAL back.  The acceptor server
runs it in tasks of its own beside the core (impl/acceptor_server.py, rule 8).

Objects, under a key prefix `P` that the acceptors of one WAL share:

    P/acceptors/<node>  its status, cbor: node, incarnation, counter, flush_lsn, commit_lsn,
                        local_start_lsn
    P/wal/<segment>     an uploaded completed segment (named as impl/wal.py names it): its
                        bytes, then a trailer: magic, start LSN, size, CRC32C of the bytes
    P/offloaded         the uploaded horizon, cbor: lsn, segment_size, by.  Every segment
                        in [wal_start, lsn) is in P/wal/.

Rules:

1. Acceptors never talk to each other; object storage is the only place they share.  Every
   `heartbeat` seconds each acceptor rewrites its status with a counter it increases.  An
   observer deems a peer live while that object changed (counter or incarnation) within the
   last `lease` seconds of the observer's own monotonic clock: no clocks are compared across
   processes.  A first sighting counts as a change, so a restarted observer trusts a dead
   peer for one lease (offload waits) rather than doubting a live one (two offloaders).
2. The offloader is the live acceptor with the lowest id among those that can upload the
   next segment [H, H + segment_size) now: their commit_lsn reaches its end, and they still
   hold it (local_start_lsn <= H).  commit_lsn, not flush_lsn: an acceptor whose
   flush_lsn passed the segment with uncommitted WAL of an old term could not upload it
   (rule 3), and as the lowest id it would stall offload.  Each acceptor computes the
   choice from the same objects, counting itself with its current LSNs.  Views differ for
   a moment when an acceptor dies or its LSNs move, so there may briefly be two
   offloaders, or none: rules 3 and 4 make both harmless.
3. Only committed bytes are uploaded: a whole segment below the uploader's commit_lsn.
   Committed bytes are the same on every acceptor (the spec's LogSafety), so two uploads of
   one segment are one object.  The upload is `put_if_absent`; if it loses, the object found
   is read back and must be byte-identical, trailer (checksum) included.  Otherwise the
   horizon stops there and the divergence is logged as the safety violation it would be.
4. The horizon moves only forward, by compare-and-swap (`stat`, `get`, then `put_if_match`
   with the etag of that read), from H to H + segment_size, and only after that segment is
   uploaded.  So it never names a segment that is not in object storage and never moves
   back; the loser of a race reads it again.
5. Removal: the whole local segments below min(horizon, remote_consistent_lsn, flush_lsn,
   commit_lsn) are deleted (`FileWal.remove_below`, which the server runs on its disk task,
   in order with every other storage operation).  The horizon and remote_consistent_lsn are
   persisted locally (`LocalHorizons`, a small file written atomically), and only move
   forward.  The commit_lsn term is beyond issue 6's formula, on purpose: an acceptor left
   behind in an old term may hold uncommitted bytes below the horizon, which the next
   leader's ProposerElected cuts off; they must still be on disk to be cut.  It is the
   core's commit_lsn in memory (the core stores it only with votes and elections, so
   after a restart it is lower, which only delays removal); no later leader cuts below
   it (the spec's LogSafety, and the core refuses such a cut), so no truncation ever
   reaches a removed segment.
6. Reads fall back to object storage.  A recovering proposer reads its donor's WAL (WalRead,
   which becomes the SendWal effect); when part of the range was removed locally, the server
   reads that part with `RemoteWal.read` (each segment object checked against its trailer)
   and the rest from disk.  On start, an acceptor whose local WAL begins after its wal_start
   refuses to run unless object storage holds every segment in between
   (`check_wal_available`): it could not answer such a read otherwise.
7. Object storage failing costs time, never the node.  Every error is logged and retried
   with exponential backoff, `backoff_min` doubling to `backoff_max` (Neon: 10 ms to 5 s).
   Nothing here calls the core or stands on the commit path: the tasks read the core's LSNs
   between awaits, read completed segments in threads of their own (their own thread
   limiter, so the disk task never waits for a thread), and queue removals on the disk task.

Why an acceptor never fetches missing WAL into its own log.  Neon's safekeepers recover from
a peer by themselves (safekeeper/src/recovery.rs: a self-issued vote, then streaming from a
donor into their own WAL).  Here the proposer does that job: it holds the whole WAL from
wal_start in memory (read from its donor at election, through rule 6 if the donor removed
some), and streams every acceptor what it lacks past its ack.  An acceptor that wrote WAL
into its own log outside the protocol would change its flush_lsn without a spec action to
account for it: its trace would be rejected, and rightly, since a later vote would describe
WAL that no leader sent it.  So a lagging acceptor gets missing WAL "from object storage or
from a peer" through the proposer: from its donor (a peer), which reads removed ranges from
object storage.
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import attrs
import cbor2
import crc32c
import trio

from impl.remote import NotFound, RemoteError, RemoteStorage, check_key
from impl.storage import CorruptStorage, seal, unseal, write_file_atomic
from impl.wal import FileWal, segment_name
from impl.wire import format_lsn

__all__ = [
    "HORIZONS_NAME",
    "Horizon",
    "HorizonState",
    "Liveness",
    "LocalHorizons",
    "OffloadConfig",
    "OffloadError",
    "Offloader",
    "PeerStatus",
    "Positions",
    "REMOTE_THREADS",
    "RemoteWal",
    "check_wal_available",
    "choose_offloader",
    "decode_segment",
    "encode_segment",
]

log = logging.getLogger("paxwal.offload")

# The local horizons file, in the acceptor's directory; impl/wal.py ignores both names
# (their stems are not hex).
HORIZONS_NAME = "horizons"
HORIZONS_TMP_NAME = "horizons.tmp"
_HORIZONS_MAGIC = b"PXWH"
_CRC = struct.Struct(">I")

# The trailer of an uploaded segment: at the end, so byte offsets in the object are offsets
# in the segment.
_SEGMENT_TRAILER = struct.Struct(">4sHQII")  # magic, version, start LSN, size, CRC32C
_SEGMENT_MAGIC = b"PXWS"

FORMAT_VERSION = 1

# Threads the offload tasks and fallback reads may use at once: a heartbeat, an upload and
# a few reads.  A limiter of their own, so they never take the disk task's threads.
REMOTE_THREADS = 4

# Verified segment objects a RemoteWal keeps: a recovering proposer reads a removed range
# in windows, so consecutive reads mostly hit the same segment.
CACHED_SEGMENTS = 2


class OffloadError(Exception):
    """Object storage holds something offload cannot accept: a damaged or diverging segment,
    a horizon of another configuration.  Logged and retried (rule 7), never acted upon."""


# ---------------------------------------------------------------------------------------
# Configuration and values
# ---------------------------------------------------------------------------------------


def _positive(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not value > 0:
        raise ValueError(f"OffloadConfig.{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class OffloadConfig:
    """Tuning of offload; none of it matters for safety (rules 2-4).

    Attributes:
        heartbeat: seconds between status writes.
        lease: seconds without a status change after which a peer counts as dead; more
            than `heartbeat` (Neon's heartbeat_timeout is 5 s).
        poll: seconds between offload rounds (read statuses and horizon, upload, remove).
        backoff_min, backoff_max: the retry delay after an error, doubling from min to max.
        segments_per_round: most segments one round uploads before it looks at the
            statuses again.
    """

    heartbeat: float = attrs.field(default=1.0, validator=_positive)
    lease: float = attrs.field(default=5.0, validator=_positive)
    poll: float = attrs.field(default=1.0, validator=_positive)
    backoff_min: float = attrs.field(default=0.01, validator=_positive)
    backoff_max: float = attrs.field(default=5.0, validator=_positive)
    segments_per_round: int = attrs.field(default=16, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.lease <= self.heartbeat:
            raise ValueError(f"OffloadConfig: lease {self.lease} must exceed heartbeat {self.heartbeat}")
        if self.backoff_max < self.backoff_min:
            raise ValueError(f"OffloadConfig: backoff_max {self.backoff_max} < backoff_min {self.backoff_min}")


@attrs.frozen
class Positions:
    """An acceptor's LSNs as offload needs them (read from the core between awaits)."""

    flush_lsn: int
    commit_lsn: int
    local_start_lsn: int  # the first LSN still on disk (FileWal.start_lsn)


def _cbor_fields(raw: bytes, cls: type) -> dict[str, Any]:
    """The cbor map in `raw`, whose keys must be exactly `cls`'s attrs fields; ValueError if not."""
    try:
        body = cbor2.loads(raw)
    except Exception as exc:  # noqa: BLE001 - any decoder failure on bytes from the store or disk
        raise ValueError(f"bad CBOR: {exc}") from exc
    names = sorted(a.name for a in attrs.fields(cls))
    if not isinstance(body, dict) or sorted(body) != names:
        raise ValueError(f"not a {cls.__name__} map with fields {names}: {body!r:.200}")
    return body


def _int(value: Any, name: str) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"field {name!r} must be an int >= 0, got {value!r}")
    return value


@attrs.frozen
class PeerStatus:
    """What an acceptor's status object says (rule 1)."""

    node: str
    incarnation: int  # random per process start: a restarted peer is a change too
    counter: int  # increases with every heartbeat of one incarnation
    flush_lsn: int
    commit_lsn: int
    local_start_lsn: int

    def encode(self) -> bytes:
        return cbor2.dumps(attrs.asdict(self), canonical=True)

    @classmethod
    def decode(cls, raw: bytes) -> PeerStatus:
        """Raises ValueError on anything but a status this module wrote."""
        body = _cbor_fields(raw, cls)
        names = [a.name for a in attrs.fields(cls)]
        if not isinstance(body["node"], str):
            raise ValueError(f"field 'node' must be a string, got {body['node']!r}")
        return cls(body["node"], *(_int(body[n], n) for n in names[1:]))


@attrs.frozen
class Horizon:
    """The uploaded horizon object (rule 4)."""

    lsn: int
    segment_size: int
    by: str  # the acceptor that last advanced it (for people reading the store)

    def encode(self) -> bytes:
        return cbor2.dumps(attrs.asdict(self), canonical=True)

    @classmethod
    def decode(cls, raw: bytes) -> Horizon:
        body = _cbor_fields(raw, cls)
        return cls(_int(body["lsn"], "lsn"), _int(body["segment_size"], "segment_size"), str(body["by"]))


# ---------------------------------------------------------------------------------------
# The choice of the offloader (rules 1 and 2): pure, clock passed in
# ---------------------------------------------------------------------------------------


class Liveness:
    """Which peers changed their status object within the lease (rule 1).

    `observe` takes every status read at once (peers whose object vanished are forgotten);
    `live` answers from the observer's clock only.
    """

    def __init__(self, lease: float) -> None:
        self._lease = lease
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}  # node -> (stamp, changed at)

    def observe(self, statuses: Mapping[str, PeerStatus], now: float) -> None:
        seen = {}
        for node, status in statuses.items():
            stamp = (status.incarnation, status.counter)
            previous = self._seen.get(node)
            seen[node] = previous if previous is not None and previous[0] == stamp else (stamp, now)
        self._seen = seen

    def live(self, now: float) -> frozenset[str]:
        return frozenset(node for node, (_, changed) in self._seen.items() if now - changed < self._lease)


def choose_offloader(
    statuses: Mapping[str, PeerStatus], live: Collection[str], horizon: int, segment_size: int
) -> str | None:
    """The offloader of segment [horizon, horizon + segment_size) (rule 2), or None.

    Args:
        statuses: each acceptor's status (the observer's own with its current LSNs).
        live: the acceptors deemed live (the observer counts itself).
        horizon: the uploaded horizon: the next segment to upload starts there.
        segment_size: the WAL's segment size.

    Returns:
        The lowest id among the live acceptors whose commit_lsn reaches the segment's end
        and which still hold it; None if there is none (nothing to upload yet).
    """
    end = horizon + segment_size
    able = [
        node for node, s in statuses.items()
        if node in live and s.commit_lsn >= end and s.local_start_lsn <= horizon
    ]
    return min(able) if able else None


# ---------------------------------------------------------------------------------------
# Segment objects
# ---------------------------------------------------------------------------------------


def encode_segment(start: int, data: bytes) -> bytes:
    """The object for the segment starting at `start`: its bytes, then the trailer."""
    return data + _SEGMENT_TRAILER.pack(_SEGMENT_MAGIC, FORMAT_VERSION, start, len(data), crc32c.crc32c(data))


def decode_segment(raw: bytes, start: int, segment_size: int) -> bytes:
    """The segment bytes of an object written by `encode_segment`, checked.

    Raises:
        ValueError: the object is not the segment at `start` of that size, or its bytes do
            not match its checksum; the message says which.
    """
    if len(raw) != segment_size + _SEGMENT_TRAILER.size:
        raise ValueError(f"{len(raw)} bytes, expected {segment_size} and a {_SEGMENT_TRAILER.size}-byte trailer")
    magic, version, lsn, size, crc = _SEGMENT_TRAILER.unpack_from(raw, segment_size)
    if magic != _SEGMENT_MAGIC or version != FORMAT_VERSION:
        raise ValueError(f"trailer has magic {magic!r} version {version}, expected {_SEGMENT_MAGIC!r} {FORMAT_VERSION}")
    if lsn != start or size != segment_size:
        raise ValueError(f"trailer names segment {lsn:#x} of {size} bytes, expected {start:#x} of {segment_size}")
    data = raw[:segment_size]
    computed = crc32c.crc32c(data)
    if computed != crc:
        raise ValueError(f"CRC32C mismatch (stored {crc:#010x}, computed {computed:#010x})")
    return data


# ---------------------------------------------------------------------------------------
# The WAL in object storage (blocking: call it in trio.to_thread)
# ---------------------------------------------------------------------------------------


class RemoteWal:
    """The objects of one WAL under `prefix` (see the module docstring).  Blocking.

    Raises, from every method: RemoteError when the store fails (rule 7: the caller retries),
    OffloadError when an object is damaged or of another configuration.
    """

    def __init__(self, remote: RemoteStorage, prefix: str, segment_size: int) -> None:
        check_key(prefix)
        self.remote = remote
        self.prefix = prefix
        self.segment_size = segment_size
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_lock = threading.Lock()  # reads run in several threads

    # -- keys --

    def segment_key(self, start: int) -> str:
        return f"{self.prefix}/wal/{segment_name(start, False)}"

    @property
    def horizon_key(self) -> str:
        return f"{self.prefix}/offloaded"

    def status_key(self, node: str) -> str:
        return f"{self.prefix}/acceptors/{node}"

    # -- statuses (rule 1) --

    def put_status(self, status: PeerStatus) -> None:
        self.remote.put(self.status_key(status.node), status.encode())

    def statuses(self) -> dict[str, PeerStatus]:
        """Every readable status; a damaged one is logged and left out (that peer cannot
        be chosen until it writes a good one)."""
        found = {}
        for key in self.remote.list(f"{self.prefix}/acceptors/"):
            try:
                status = PeerStatus.decode(self.remote.get(key))
            except NotFound:
                continue  # deleted since the listing
            except ValueError as exc:
                log.warning("offload: status object %r is unreadable: %s", key, exc)
                continue
            if key != self.status_key(status.node):
                log.warning("offload: status object %r names node %r", key, status.node)
                continue
            found[status.node] = status
        return found

    # -- the horizon (rule 4) --

    def horizon(self) -> tuple[Horizon | None, str]:
        """The horizon object and the etag to swap it with, or (None, "") if absent.

        Reads stat then get (impl/remote.py, rule 2): a change in between makes the etag
        stale, so the swap fails instead of pairing old content with a new etag.
        """
        info = self.remote.stat(self.horizon_key)
        if info is None:
            return None, ""
        try:
            raw = self.remote.get(self.horizon_key)
        except NotFound:
            return None, ""
        try:
            found = Horizon.decode(raw)
        except ValueError as exc:
            raise OffloadError(f"horizon object {self.horizon_key!r} is damaged: {exc}") from None
        if found.segment_size != self.segment_size:
            raise OffloadError(
                f"horizon object {self.horizon_key!r} is for segments of {found.segment_size} bytes,"
                f" this WAL's are {self.segment_size}: another WAL shares the prefix {self.prefix!r}"
            )
        return found, info.etag

    def create_horizon(self, wal_start: int, by: str) -> bool:
        """Create the horizon at `wal_start` if absent; whether this call did."""
        return self.remote.put_if_absent(self.horizon_key, Horizon(wal_start, self.segment_size, by).encode())

    def advance(self, etag: str, lsn: int, by: str) -> bool:
        """Move the horizon to `lsn` iff it is still the object of `etag`; whether it moved."""
        return self.remote.put_if_match(self.horizon_key, Horizon(lsn, self.segment_size, by).encode(), etag)

    # -- segments (rules 3 and 6) --

    def upload(self, start: int, data: bytes) -> bool:
        """Upload the completed segment at `start`; idempotent (rule 3).

        Returns:
            True if this call created the object, False if the same object was there.

        Raises:
            OffloadError: an object with other content is there (damaged, or diverging WAL).
        """
        key = self.segment_key(start)
        obj = encode_segment(start, data)
        if self.remote.put_if_absent(key, obj):
            return True
        try:
            existing = self.remote.get(key)
        except NotFound:
            raise RemoteError(f"offload: {key!r} existed for put_if_absent, then vanished") from None
        if existing == obj:
            return False
        try:
            decode_segment(existing, start, self.segment_size)
        except ValueError as exc:
            raise OffloadError(f"segment object {key!r} is damaged: {exc}") from None
        raise OffloadError(
            f"segment object {key!r} holds other bytes than this acceptor's committed segment"
            " (committed WAL differs between acceptors: a safety violation); the horizon stays"
        )

    def segment(self, start: int) -> bytes:
        """The segment at `start` from object storage, checked against its trailer.

        Raises:
            NotFound: it was never uploaded (or was deleted).
            OffloadError: the object is damaged.
        """
        with self._cache_lock:
            if start in self._cache:
                self._cache.move_to_end(start)
                return self._cache[start]
        key = self.segment_key(start)
        try:
            data = decode_segment(self.remote.get(key), start, self.segment_size)
        except ValueError as exc:
            raise OffloadError(f"segment object {key!r} is damaged: {exc}") from None
        with self._cache_lock:
            self._cache[start] = data
            while len(self._cache) > CACHED_SEGMENTS:
                self._cache.popitem(last=False)
        return data

    def read(self, begin: int, end: int) -> bytes:
        """The WAL bytes [begin, end) from the uploaded segments.

        Raises:
            NotFound: a segment of the range is not in object storage.
            OffloadError: one is damaged.
        """
        parts = []
        pos = begin
        while pos < end:
            start = pos - pos % self.segment_size
            stop = min(end, start + self.segment_size)
            parts.append(self.segment(start)[pos - start : stop - start])
            pos = stop
        return b"".join(parts)

    def missing(self, begin: int, end: int) -> list[int]:
        """The starts of the segments of [begin, end) that are not in object storage."""
        present = set(self.remote.list(f"{self.prefix}/wal/"))
        first = begin - begin % self.segment_size
        return [s for s in range(first, end, self.segment_size) if self.segment_key(s) not in present]


def check_wal_available(node: str, wal_start: int, local_start: int, remote_wal: RemoteWal | None) -> None:
    """Refuse to start an acceptor that lost WAL it may have to serve (rule 6).  Blocking.

    Args:
        node: the acceptor, for the message.
        wal_start: where its WAL starts (its term history's first entry).
        local_start: the first LSN still on disk (FileWal.start_lsn).
        remote_wal: where removed WAL was offloaded, or None if offload is off.

    Raises:
        CorruptStorage: [wal_start, local_start) is not on disk and not (entirely) in
            object storage; the message names the range and the missing segments.

    An unreachable store is logged and not held against the node: its WAL was removed only
    after the upload was confirmed, and a fallback read that fails later only delays one
    proposer's election, whereas refusing to start costs an acceptor for the whole outage.
    """
    if local_start <= wal_start:
        return
    where = f"acceptor {node}: WAL [{format_lsn(wal_start)}, {format_lsn(local_start)}) is not on disk"
    if remote_wal is None:
        raise CorruptStorage(
            f"{where} (removed after offload) and no object storage is configured to read it"
            " from; start it with the object storage (remote) and prefix it offloaded to"
        )
    try:
        missing = remote_wal.missing(wal_start, local_start)
    except RemoteError as exc:
        log.warning("%s; object storage is unreachable to check that it holds it: %s", where, exc)
        return
    if missing:
        names = ", ".join(remote_wal.segment_key(s) for s in missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise CorruptStorage(
            f"{where}, and object storage lacks {len(missing)} of its segments ({names});"
            " refusing to start without WAL a recovering proposer may need"
        )


# ---------------------------------------------------------------------------------------
# The local horizons file (rule 5)
# ---------------------------------------------------------------------------------------


@attrs.frozen
class HorizonState:
    """The horizons an acceptor persists: both only move forward."""

    offloaded_lsn: int = 0  # the uploaded horizon as last seen (a cache of P/offloaded)
    remote_consistent_lsn: int = 0  # the pageserver's, as last reported (issue 8)


def _encode_horizons(state: HorizonState) -> bytes:
    return seal(_HORIZONS_MAGIC, FORMAT_VERSION, cbor2.dumps(attrs.asdict(state), canonical=True))


def _decode_horizons(raw: bytes) -> HorizonState:
    body = _cbor_fields(unseal(raw, _HORIZONS_MAGIC, FORMAT_VERSION), HorizonState)
    return HorizonState(**{n: _int(value, n) for n, value in body.items()})


class LocalHorizons:
    """The horizons file in an acceptor's directory, and the values it holds.

    `load` reads it (zeros if absent); `advance` raises values and stores them with the
    recipe of impl/control.py: write the temp file, fsync, rename, fsync the directory.  A
    crash leaves the old file or the new one.  Values only move forward.
    """

    def __init__(self, directory: str | os.PathLike[str], state: HorizonState) -> None:
        self.directory = Path(directory)
        self._state = state
        self._lock = trio.Lock()  # one store at a time: the offload task and the server's method

    @property
    def path(self) -> Path:
        return self.directory / HORIZONS_NAME

    @property
    def state(self) -> HorizonState:
        return self._state

    @property
    def offloaded_lsn(self) -> int:
        return self._state.offloaded_lsn

    @property
    def remote_consistent_lsn(self) -> int:
        return self._state.remote_consistent_lsn

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> LocalHorizons:
        """Read the file (blocking; a leftover temp file from a crash is removed).

        Raises:
            CorruptStorage: the file is damaged (the node must not start on it).
        """
        directory = Path(directory)
        (directory / HORIZONS_TMP_NAME).unlink(missing_ok=True)
        try:
            raw = (directory / HORIZONS_NAME).read_bytes()
        except FileNotFoundError:
            return cls(directory, HorizonState())
        try:
            return cls(directory, _decode_horizons(raw))
        except ValueError as exc:
            raise CorruptStorage(f"horizons file {directory / HORIZONS_NAME}: {exc}") from None

    async def advance(self, *, offloaded_lsn: int = 0, remote_consistent_lsn: int = 0) -> HorizonState:
        """Raise the stored horizons to at least these values (a lower one is ignored).

        Returns:
            The state now stored.

        Raises:
            OSError: the store failed; the file holds the old state or the new one, and the
                values in memory stay the old ones.
        """
        async with self._lock:
            new = HorizonState(
                max(self._state.offloaded_lsn, offloaded_lsn),
                max(self._state.remote_consistent_lsn, remote_consistent_lsn),
            )
            if new != self._state:
                await trio.to_thread.run_sync(self._store, new)
                self._state = new
            return self._state

    def _store(self, state: HorizonState) -> None:
        write_file_atomic(self.path, _encode_horizons(state))


# ---------------------------------------------------------------------------------------
# The offloader: two trio tasks (rule 7)
# ---------------------------------------------------------------------------------------

# Errors offload expects from a store or a disk, logged without a traceback.
_EXPECTED = (RemoteError, NotFound, OffloadError, OSError, ValueError, CorruptStorage)


class Offloader:
    """One acceptor's side of offload: its heartbeat, the uploads it makes when it is the
    offloader, and the removals its horizons allow.  `run` runs it until cancelled.

    Attributes (read-only, for the server's status and tests):
        offloaded_lsn: the uploaded horizon as last read (the cached one before that).
        offloader: the offloader this acceptor chose in its last round (None: nobody yet).
        uploads: horizon advances this acceptor made.
        errors: errors logged and retried.
    """

    def __init__(
        self,
        node: str,
        wal: FileWal,
        remote_wal: RemoteWal,
        horizons: LocalHorizons,
        config: OffloadConfig,
        *,
        wal_start: int,
        positions: Callable[[], Positions],
        remove_below: Callable[[int], Awaitable[int]],
        clock: Callable[[], float] = trio.current_time,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        """
        Args:
            node: the acceptor's id.
            wal: its WAL, read only through `read_segment` (completed segments).
            remote_wal: the WAL's objects.
            horizons: its persisted horizons.
            config: the tuning.
            wal_start: where the WAL starts; the horizon starts at the start of its segment
                (a branch's WAL may start mid-segment, behind zeros: impl/wal.py point 1).
            positions: the acceptor's LSNs now (called between awaits, on the trio thread).
            remove_below: runs `FileWal.remove_below` in order with the other storage
                operations and returns the new local start.
            clock: the observer's monotonic clock, in seconds (rule 1).
            limiter: the threads for object storage calls (default: a new one).
        """
        self.node = node
        self._wal = wal
        self._remote = remote_wal
        self._horizons = horizons
        self._config = config
        self._wal_start = wal_start - wal_start % remote_wal.segment_size
        self._positions = positions
        self._remove_below = remove_below
        self._clock = clock
        self._limiter = limiter if limiter is not None else trio.CapacityLimiter(REMOTE_THREADS)
        self._incarnation = secrets.randbits(63)
        self._counter = 0
        self._liveness = Liveness(config.lease)
        self._wake = trio.Event()
        self.offloaded_lsn = max(horizons.offloaded_lsn, self._wal_start)
        self.offloader: str | None = None
        self.uploads = 0
        self.errors = 0

    @property
    def segment_size(self) -> int:
        return self._remote.segment_size

    def wake(self) -> None:
        """Start the next round now (a horizon moved)."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat and offload until cancelled; errors are logged and retried (rule 7)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._loop, "heartbeat", self.heartbeat, self._config.heartbeat)
            nursery.start_soon(self._loop, "offload", self.step, self._config.poll)
            task_status.started()

    async def heartbeat(self) -> None:
        """Write this acceptor's status with the next counter (rule 1)."""
        self._counter += 1
        await self._call(self._remote.put_status, self._status(self._positions()))

    async def step(self) -> None:
        """One round: read the statuses, upload while this acceptor is the offloader, then
        remove what the horizons allow."""
        statuses = await self._call(self._remote.statuses, read=True)
        now = self._clock()
        self._liveness.observe(statuses, now)
        live = self._liveness.live(now) | {self.node}
        for _ in range(self._config.segments_per_round):
            horizon, etag = await self._read_horizon()
            positions = self._positions()
            views = {**statuses, self.node: self._status(positions)}
            self.offloader = choose_offloader(views, live, horizon, self.segment_size)
            if self.offloader != self.node:
                break
            await self._offload(horizon, etag, positions)
        await self.remove()

    async def offload_next(self) -> bool:
        """Upload the segment at the horizon and advance the horizon, if this acceptor can
        (rules 3-4), whatever the election says.  Returns whether this call advanced it."""
        horizon, etag = await self._read_horizon()
        return await self._offload(horizon, etag, self._positions())

    async def remove(self) -> int:
        """Remove the local segments below the horizons (rule 5); returns the local start."""
        positions = self._positions()
        limit = min(
            self.offloaded_lsn, self._horizons.remote_consistent_lsn, positions.flush_lsn, positions.commit_lsn
        )
        if limit < positions.local_start_lsn + self.segment_size:
            return positions.local_start_lsn
        start = await self._remove_below(limit)
        if start > positions.local_start_lsn:
            log.info(
                "acceptor %s: removed WAL [%s, %s) (below offloaded %s, remote consistent %s, commit %s)",
                self.node, format_lsn(positions.local_start_lsn), format_lsn(start), format_lsn(self.offloaded_lsn),
                format_lsn(self._horizons.remote_consistent_lsn), format_lsn(positions.commit_lsn),
            )
        return start

    # -- helpers --

    def _status(self, positions: Positions) -> PeerStatus:
        return PeerStatus(
            self.node, self._incarnation, self._counter,
            positions.flush_lsn, positions.commit_lsn, positions.local_start_lsn,
        )

    async def _read_horizon(self) -> tuple[int, str]:
        """The horizon and its etag, creating it at wal_start if absent."""
        for _ in range(2):
            found, etag = await self._call(self._remote.horizon, read=True)
            if found is None:
                await self._call(self._remote.create_horizon, self._wal_start, self.node)
                continue
            if found.lsn < self._wal_start or (found.lsn - self._wal_start) % self.segment_size:
                raise OffloadError(
                    f"horizon object {self._remote.horizon_key!r} is at {format_lsn(found.lsn)}, not a"
                    f" segment boundary at or after this WAL's start {format_lsn(self._wal_start)}"
                )
            await self._note(found.lsn)
            return found.lsn, etag
        raise RemoteError(f"offload: horizon object {self._remote.horizon_key!r} vanished after its creation")

    async def _note(self, lsn: int) -> None:
        if lsn < self.offloaded_lsn:
            log.warning(
                "acceptor %s: object storage's horizon %s is below the one seen before, %s:"
                " was the store reset? Removal follows the store from now on",
                self.node, format_lsn(lsn), format_lsn(self.offloaded_lsn),
            )
        self.offloaded_lsn = lsn
        await self._horizons.advance(offloaded_lsn=lsn)

    async def _offload(self, horizon: int, etag: str, positions: Positions) -> bool:
        end = horizon + self.segment_size
        if positions.commit_lsn < end or positions.local_start_lsn > horizon:
            return False  # not committed here yet, or removed here already
        data = await self._call(self._wal.read_segment, horizon)
        created = await self._call(self._remote.upload, horizon, data)
        if not await self._call(self._remote.advance, etag, end, self.node):
            log.info("acceptor %s: lost the race to advance the horizon from %s", self.node, format_lsn(horizon))
            return False
        self.uploads += 1
        log.info(
            "acceptor %s: offloaded segment %s%s; horizon now %s", self.node, segment_name(horizon, False),
            "" if created else " (it was uploaded already)", format_lsn(end),
        )
        await self._note(end)
        return True

    async def _call(self, fn: Callable[..., Any], *args: Any, read: bool = False) -> Any:
        # A read has no side effect, so a cancelled one may be abandoned; a write finishes.
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter, abandon_on_cancel=read)

    async def _loop(self, what: str, once: Callable[[], Awaitable[Any]], interval: float) -> None:
        delay = self._config.backoff_min
        while True:
            try:
                await once()
            except _EXPECTED as exc:
                self.errors += 1
                log.warning("acceptor %s: %s failed, retrying in %.3gs: %s", self.node, what, delay, exc)
            except Exception:  # rule 7: never crash the node
                self.errors += 1
                log.exception("acceptor %s: %s failed unexpectedly, retrying in %.3gs", self.node, what, delay)
            else:
                delay = self._config.backoff_min
                if what == "offload":
                    with trio.move_on_after(interval):
                        await self._wake.wait()
                    self._wake = trio.Event()
                else:
                    await trio.sleep(interval)
                continue
            if what == "offload":
                # The store is out of reach, the cached horizon is not: removal may go on.
                try:
                    await self.remove()
                except _EXPECTED as exc:
                    log.warning("acceptor %s: removal failed: %s", self.node, exc)
            await trio.sleep(delay)
            delay = min(delay * 2, self._config.backoff_max)
