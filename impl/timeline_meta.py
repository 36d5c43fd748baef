"""Timeline metadata, settings, results and the errors a user can cause (impl/timeline.py).

Split from impl/timeline.py to keep each file readable; impl/timeline.py re-exports every
name here, so callers import from there.  Nothing here does IO.

Metadata file layout (impl/control.py's)::

    b"PXTM" | version: u16 | body length: u32 | body: canonical CBOR map | CRC32C of all before: u32
"""

from __future__ import annotations

import re
import struct

import attrs
import cbor2

from impl.storage import seal, unseal
from impl.wire import format_lsn

__all__ = [
    "BadTimelineName",
    "BranchAboveLastRecord",
    "BranchBelowGcCutoff",
    "GcResult",
    "IngestError",
    "LayerFileInfo",
    "LeaseBelowGcCutoff",
    "LsnBelowGcCutoff",
    "LsnNotIngested",
    "PageBeyondEnd",
    "TimelineConfig",
    "TimelineError",
    "TimelineExists",
    "TimelineMetadata",
    "UnknownTimeline",
    "check_name",
    "decode_metadata",
    "encode_metadata",
]

_MAGIC = b"PXTM"
# Bump on any change to the metadata's fields.
METADATA_VERSION = 1
_HEADER = struct.Struct(">4sHI")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_US = 1_000_000


# ---------------------------------------------------------------------------------------------
# Errors a user can cause: each its own type, each message says what and why
# ---------------------------------------------------------------------------------------------


class TimelineError(Exception):
    """Base of the errors a request can cause (never a bug, never damage)."""


class BadTimelineName(TimelineError, ValueError):
    """A timeline name that is not 1-63 letters, digits, '_' or '-' (starting alnum)."""


class UnknownTimeline(TimelineError):
    """No timeline has that name."""


class TimelineExists(TimelineError):
    """A timeline with that name already exists."""


class BranchBelowGcCutoff(TimelineError):
    """A branch point below the parent's GC cutoff: its history may be gone."""


class BranchAboveLastRecord(TimelineError):
    """A branch point past what the parent has ingested."""


class LsnBelowGcCutoff(TimelineError):
    """A read below the timeline's GC cutoff (or before its start), not at a leased LSN."""


class LeaseBelowGcCutoff(TimelineError):
    """A lease on an LSN below the GC cutoff: it may already be unreadable."""


class LsnNotIngested(TimelineError):
    """An LSN past ``last_record_lsn``: the service waits (bounded) and retries.

    Attributes: ``timeline``, ``lsn``, ``last_record_lsn``.
    """

    def __init__(self, timeline: str, lsn: int, last_record_lsn: int, what: str = "read") -> None:
        super().__init__(
            f"timeline {timeline!r}: {what} at {format_lsn(lsn)}, but only WAL up to"
            f" {format_lsn(last_record_lsn)} is ingested"
        )
        self.timeline = timeline
        self.lsn = lsn
        self.last_record_lsn = last_record_lsn


class PageBeyondEnd(TimelineError):
    """A page at or past the database's size at that LSN."""


class IngestError(TimelineError):
    """A record the timeline cannot take: out of LSN order, or of another page size."""


# ---------------------------------------------------------------------------------------------
# Configuration and metadata
# ---------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class TimelineConfig:
    """Runtime settings (not persisted: the service passes them at every open).

    Attributes:
        checkpoint_distance: freeze the open layer when it spans this many LSN bytes
            (Neon's ``checkpoint_distance``).
        checkpoint_timeout_us: ... or when its first record is this old.
        image_threshold: compaction images a partition once this many delta layers stack
            above its newest image (Neon's ``image_creation_threshold``).
        partition_pages: keys per image-layer partition for new root timelines (children
            inherit their parent's): 4096 pages of 4 KiB = 16 MiB, like Neon's stripes.
        pitr_bytes: GC keeps at least this many LSN bytes below ``last_record_lsn``.
        pitr_seconds: ... and every LSN committed within this many seconds before ``now``.
    """

    checkpoint_distance: int = 64 * 1024 * 1024
    checkpoint_timeout_us: int = 600 * _US
    image_threshold: int = 3
    partition_pages: int = 4096
    pitr_bytes: int = 64 * 1024 * 1024
    pitr_seconds: int = 7 * 24 * 3600


def _non_negative(_instance: object, attribute: attrs.Attribute, value: object) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"{attribute.name} must be an int >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class TimelineMetadata:
    """What a timeline persists (Neon's ``TimelineMetadata``), replaced atomically.

    ``leases`` are ``(lsn, until)`` pairs sorted by LSN.  Retain LSNs of child branches are
    not stored: they are the children's ``ancestor_lsn``, read from the children's metadata,
    so the two can never disagree.
    """

    name: str
    ancestor: str | None
    ancestor_lsn: int = attrs.field(validator=_non_negative)
    start_lsn: int = attrs.field(validator=_non_negative)
    page_size: int = attrs.field(validator=_non_negative)
    partition_pages: int = attrs.field(validator=_non_negative)
    disk_consistent_lsn: int = attrs.field(validator=_non_negative)
    gc_cutoff: int = attrs.field(validator=_non_negative)
    leases: tuple[tuple[int, int], ...] = ()

    def __attrs_post_init__(self) -> None:
        if not (self.start_lsn <= self.gc_cutoff and self.start_lsn <= self.disk_consistent_lsn):
            raise ValueError("start_lsn must be <= gc_cutoff and <= disk_consistent_lsn")
        if self.partition_pages < 1:
            raise ValueError("partition_pages must be >= 1")


def encode_metadata(meta: TimelineMetadata) -> bytes:
    """``b"PXTM" | version u16 | body length u32 | CBOR map | CRC32C u32`` (impl/control.py's
    layout), canonical CBOR so equal metadata gives equal bytes."""
    body = attrs.asdict(meta)
    body["leases"] = [list(pair) for pair in meta.leases]
    return seal(_MAGIC, METADATA_VERSION, cbor2.dumps(body, canonical=True))


def decode_metadata(raw: bytes) -> TimelineMetadata:
    """Parse metadata bytes; ValueError says what is wrong (the caller adds the path)."""
    encoded = unseal(raw, _MAGIC, METADATA_VERSION)
    try:
        body = cbor2.loads(encoded)
        fields = {a.name for a in attrs.fields(TimelineMetadata)}
        if not isinstance(body, dict) or set(body) != fields:
            raise ValueError(f"expected a map of {sorted(fields)}")
        body["leases"] = tuple(tuple(pair) for pair in body["leases"])
        return TimelineMetadata(**body)
    except Exception as exc:  # noqa: BLE001 - any failure on bytes that passed the CRC
        raise ValueError(f"bad body: {exc}") from None


@attrs.frozen
class LayerFileInfo:
    """A layer file, as the uploader needs it: its name (the object key's last part) and size."""

    name: str
    size: int


@attrs.frozen
class GcResult:
    """What one timeline's GC did: the new cutoff and the layer files it deleted."""

    timeline: str
    gc_cutoff: int
    removed: tuple[str, ...]
    kept: int


def check_name(name: object) -> str:
    """Raise BadTimelineName unless `name` is a valid timeline name."""
    if type(name) is not str or not _NAME_RE.match(name):
        raise BadTimelineName(
            f"bad timeline name {name!r}: use 1-63 letters, digits, '_' or '-', starting with a"
            " letter or digit"
        )
    return name
