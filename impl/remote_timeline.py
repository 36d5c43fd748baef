"""Remote timelines: layer files and an index in object storage, fenced by generations.

Theory of operation
===================

Object storage is the pageserver's source of truth (DESIGN.md §7, neon-protocol.md §8.8,
spec/Horizons.tla): a timeline *is* what its newest uploaded index names.  This file uploads
a `Repository`'s timelines (impl/timeline.py) through a `RemoteStorage` (impl/remote.py) and
rebuilds a local directory from object storage alone.  Rules of this file:

1. The index is a barrier (Horizons ``IndexUploadAllowed``).  A sync uploads every layer
   file the index will name, *then* the index; a layer object not named by the newest index
   is not part of the timeline.  So a crash between any two operations leaves the newest
   index naming only objects that exist (``IndexNamesExistingLayers``): before the index
   upload the old index still holds, after it the new one does, and leftovers of either
   side are unnamed objects, harmless until a later sync deletes them.
2. A layer object is deleted only after an index that does not name it is uploaded, *and*
   the generation is validated after that upload (Horizons ``DeletionAllowed``; Neon's
   deletion queue validates with the storage controller).  Why validation: a pageserver
   that attached meanwhile may have downloaded the previous index, which named the layer.
   If the validation passes, any later attacher downloads an index at least as new as ours,
   which does not name it.
3. Generations (Neon RFC 025).  Each process attaches once (`RemoteRepository.attach`): a
   compare-and-swap on the object ``<prefix>/generation`` (remote.py rule 2: `stat`, `get`,
   then `put_if_match` with that etag) bumps a counter and returns it.  Every object key the
   pageserver writes carries its generation (``-<gen as 8 hex>``), so a stale ("zombie")
   pageserver never overwrites a newer one's objects, and the index a reader trusts is the
   one with the highest generation.  A sync first checks the counter and refuses
   (`Superseded`, sticky) once a newer generation exists.  That check alone is racy, so the
   zombie's last index may still be written under its own key, but it is never the newest
   once the newer pageserver uploads, and the zombie deletes nothing (rule 2).
4. ``remote_consistent_lsn`` (Neon's ``visible_remote_consistent_lsn``) is the
   ``disk_consistent_lsn`` of the last index we uploaded *and then validated*.  Acceptors
   delete WAL below it, so it is a deletion in disguise: it advances only under the same
   validation as rule 2, and never moves back (a local timeline behind the newest remote
   index is refused: `RemoteAhead`).
5. Deletion is careful about other generations: a sync deletes only objects under its
   timeline's prefix that (a) its newest uploaded and validated index does not name, and
   (b) are layer objects of its generation or older, or indexes of an older generation.  A
   newer generation's object is never touched, and nothing of a name this file does not
   parse is ever deleted.  The objects a sync knows of come from one listing at its first
   sync (so a crashed predecessor's leftovers are cleaned) plus its own uploads.
6. Download (`RemoteRepository.download`) makes ``<root>/timelines/<name>`` mirror the newest
   index of each timeline asked for (plus their ancestors), in the layout `Repository.open`
   reads.  Each object is checked against the size and CRC32C the index records, the index
   against its own checksum; a missing or damaged object raises `CorruptRemote` naming its
   key.  Per timeline the local metadata file is removed first and written last, so a crash
   mid-download leaves a directory `Repository.open` discards; ancestors come first, and a
   local timeline that changes loses its metadata only after all its local descendants did
   (else a crash could leave a child whose ancestor `Repository.open` discards).  A timeline
   that already matches its index is not touched; in one that does not, files that match
   (same name, size and CRC) are kept, others are replaced or removed: object storage wins.
7. Synchronous, one caller at a time, no clock.  `RemoteTimeline.prepare` reads the timeline
   (no object-storage IO; it opens the layer files still to upload, so a GC that deletes
   them locally meanwhile is harmless); `RemoteTimeline.upload` does the blocking IO.  The
   trio service (issue 8 §3) runs ``prepare`` on the timeline's task and ``upload`` in
   ``trio.to_thread``; `sync` is the two in a row.  Errors of the store (`RemoteError`)
   propagate and leave the state retryable: call `sync` again.

Remote layout, under a key prefix ``P`` (one per repository, Neon's tenant)::

    P/generation                                 {"generation": N}: the attach counter
    P/timelines/<name>/<layer name>-<gen:08x>    a layer file's bytes, as written locally
    P/timelines/<name>/index_part.json-<gen:08x> the index: JSON, see `encode_index`

Public API
----------
=================================================  =========================================
`RemoteRepository(store, prefix)`                   the remote side of one repository
`RemoteRepository.attach() -> int`                  take the next generation (once per process)
`RemoteRepository.validate()`                       raise `Superseded` if no longer current
`RemoteRepository.timeline(name) -> RemoteTimeline` the uploader of one timeline
`RemoteRepository.sync(repo) -> dict[str, int]`     sync every timeline, ancestors first
`RemoteRepository.download(root, names=None)`       rebuild a local directory from the store
`RemoteRepository.newest_index(name)`               the index a reader trusts, or None
`RemoteRepository.list_timelines()`                 timelines with an index
`RemoteTimeline.prepare(timeline) -> SyncSnapshot`  what to upload (no remote IO)
`RemoteTimeline.upload(snapshot) -> int`            layers, index, validate, deletions
`RemoteTimeline.sync(timeline) -> int`              both; returns remote_consistent_lsn
`encode_index`, `decode_index`, `IndexPart`         the index object and its codec
=================================================  =========================================

Deliberate differences from Neon: one index per timeline per generation (Neon's key also has
a shard suffix); layer uploads and deletions are sequential, not a parallel queue; orphans a
zombie uploads after our first listing are left for a later process's listing (Neon leaves
them to its scrubber).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs
import crc32c

from impl.layers import is_temp_file, parse_layer_name
from impl.remote import NotFound, RemoteStorage, check_key
from impl.storage import CorruptStorage, fsync_dir, write_file_atomic
from impl.timeline import (
    METADATA_NAME,
    TIMELINES_DIR,
    Repository,
    Timeline,
    TimelineMetadata,
    check_name,
    decode_metadata,
    encode_metadata,
)
from impl.timeline_meta import BadTimelineName
from impl.wire import format_lsn

__all__ = [
    "INDEX_NAME",
    "INDEX_VERSION",
    "CorruptRemote",
    "IndexPart",
    "LayerEntry",
    "NotAttached",
    "RemoteAhead",
    "RemoteRepository",
    "RemoteTimeline",
    "RemoteTimelineError",
    "Superseded",
    "SyncSnapshot",
    "decode_index",
    "encode_index",
]

# Neon's name for the index object; the generation suffix follows it.
INDEX_NAME = "index_part.json"
# Bump on any change to the index's fields.
INDEX_VERSION = 1
GENERATION_NAME = "generation"
# Generations are u32 (Neon's), spelled as 8 hex digits in keys.
MAX_GENERATION = 2**32 - 1
_GEN_SUFFIX = re.compile(r"^(.+)-([0-9a-f]{8})$")
# Compare-and-swap rounds `attach` tries before giving up: losing one means another process
# attached in between, which happens a handful of times at most.
ATTACH_ATTEMPTS = 100
# Bytes read at a time when checksumming a local file.
_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class RemoteTimelineError(Exception):
    """Base of this module's errors (store failures stay `impl.remote.RemoteError`)."""


class NotAttached(RemoteTimelineError):
    """An upload before `RemoteRepository.attach`: a pageserver writes only with a generation."""


class Superseded(RemoteTimelineError):
    """A newer generation attached: this pageserver must stop uploading (sticky).

    Attributes: ``generation`` (ours), ``current`` (the newer one found).
    """

    def __init__(self, generation: int, current: int) -> None:
        super().__init__(
            f"pageserver generation {generation} was superseded by generation {current}: it"
            " stops uploading (another pageserver owns this repository now)"
        )
        self.generation = generation
        self.current = current


class RemoteAhead(RemoteTimelineError):
    """The local timeline is behind the newest remote index (another pageserver advanced it):
    uploading would move remote_consistent_lsn back.  Download first."""


class CorruptRemote(RemoteTimelineError, CorruptStorage):
    """An object the index names is missing or damaged, or an index is.  Names the key.

    Attributes: ``key``, ``problem``.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"remote object {key!r}: {problem}")
        self.key = key
        self.problem = problem


# ---------------------------------------------------------------------------------------------
# The index
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class LayerEntry:
    """A layer the index names: its file name, size, CRC32C of its bytes, and the generation
    whose object holds it (Neon's ``layer_metadata``: file_size, generation)."""

    name: str
    size: int
    crc32c: int
    generation: int


@attrs.frozen
class IndexPart:
    """An index (Neon's ``IndexPart``): the timeline's metadata and every layer it has.

    ``metadata`` carries ``disk_consistent_lsn`` (remote_consistent_lsn once uploaded),
    ``gc_cutoff``, the ancestor and ``ancestor_lsn``, and the leases.  ``layers`` is sorted
    by name.  ``generation`` is the generation of the pageserver that wrote it.
    """

    generation: int
    metadata: TimelineMetadata
    layers: tuple[LayerEntry, ...]

    @property
    def timeline(self) -> str:
        return self.metadata.name

    @property
    def disk_consistent_lsn(self) -> int:
        return self.metadata.disk_consistent_lsn

    def layer_map(self) -> dict[str, LayerEntry]:
        return {entry.name: entry for entry in self.layers}

    def same_state(self, other: IndexPart | None) -> bool:
        """Whether `other` describes the same timeline state (whoever wrote it)."""
        return other is not None and (self.metadata, self.layers) == (other.metadata, other.layers)


def _canonical(body: Mapping[str, object]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def encode_index(index: IndexPart) -> bytes:
    """The index object: a JSON map, readable, with a CRC32C of its canonical form::

        {"version": 1, "generation": G, "timeline": NAME,
         "metadata": {name, ancestor, ancestor_lsn, start_lsn, page_size, partition_pages,
                      disk_consistent_lsn, gc_cutoff, leases: [[lsn, until], ...]},
         "layers": {LAYER NAME: {"size": N, "crc32c": C, "generation": G}, ...},
         "checksum": CRC32C of the canonical JSON (sorted keys, no spaces) of all the rest}
    """
    metadata = attrs.asdict(index.metadata)
    metadata["leases"] = [list(pair) for pair in index.metadata.leases]
    body: dict[str, object] = {
        "version": INDEX_VERSION,
        "generation": index.generation,
        "timeline": index.metadata.name,
        "metadata": metadata,
        "layers": {e.name: {"size": e.size, "crc32c": e.crc32c, "generation": e.generation} for e in index.layers},
    }
    body["checksum"] = crc32c.crc32c(_canonical(body))
    return json.dumps(body, sort_keys=True, indent=1).encode() + b"\n"


def decode_index(raw: bytes) -> IndexPart:
    """Parse an index object; ValueError says what is wrong (the caller adds the key)."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(body, dict) or "checksum" not in body:
        raise ValueError("not an index: no checksum field")
    stored = body.pop("checksum")
    computed = crc32c.crc32c(_canonical(body))
    if stored != computed:
        raise ValueError(f"checksum mismatch (stored {stored!r}, computed {computed:#010x})")
    if body.get("version") != INDEX_VERSION:
        raise ValueError(f"unknown index version {body.get('version')!r} (this build reads {INDEX_VERSION})")
    try:
        fields = {a.name for a in attrs.fields(TimelineMetadata)}
        metadata = dict(body["metadata"])
        if set(metadata) != fields:
            raise ValueError(f"metadata fields {sorted(metadata)}, expected {sorted(fields)}")
        metadata["leases"] = tuple(tuple(pair) for pair in metadata["leases"])
        meta = TimelineMetadata(**metadata)
        if body["timeline"] != meta.name:
            raise ValueError(f"timeline {body['timeline']!r} but metadata of {meta.name!r}")
        layers = []
        for name, entry in sorted(body["layers"].items()):
            if parse_layer_name(name) is None:
                raise ValueError(f"{name!r} is not a layer name")
            layers.append(LayerEntry(name, _u(entry["size"]), _u(entry["crc32c"]), _gen(entry["generation"])))
        return IndexPart(_gen(body["generation"]), meta, tuple(layers))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"bad index body: {exc!r}") from None


def _u(value: object) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"expected an int >= 0, got {value!r}")
    return value


def _gen(value: object) -> int:
    if type(value) is not int or not 1 <= value <= MAX_GENERATION:
        raise ValueError(f"expected a generation 1..{MAX_GENERATION}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------


def _timeline_prefix(prefix: str, name: str) -> str:
    return f"{prefix}/timelines/{name}/"


def _object_key(prefix: str, timeline: str, base: str, generation: int) -> str:
    return f"{_timeline_prefix(prefix, timeline)}{base}-{generation:08x}"


def _parse_object(base: str) -> tuple[str, str, int] | None:
    """``(kind, name, generation)`` of an object's last key part: kind "index" or "layer";
    None for anything else (never deleted: rule 5)."""
    match = _GEN_SUFFIX.match(base)
    if match is None:
        return None
    name, generation = match.group(1), int(match.group(2), 16)
    if generation < 1:
        return None
    if name == INDEX_NAME:
        return "index", name, generation
    if parse_layer_name(name) is not None:
        return "layer", name, generation
    return None


def _file_crc(fd: int) -> tuple[bytes, int]:
    """The whole file behind `fd` (read from offset 0) and its CRC32C."""
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, _CHUNK, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    data = b"".join(chunks)
    return data, crc32c.crc32c(data)


# ---------------------------------------------------------------------------------------------
# One timeline's uploader
# ---------------------------------------------------------------------------------------------


@attrs.define
class SyncSnapshot:
    """A timeline's state as `RemoteTimeline.prepare` read it: the metadata and layer files
    at one instant, and open descriptors of the files still to upload (closed by `upload`,
    or by `close` if it is never run)."""

    metadata: TimelineMetadata
    layers: tuple[tuple[str, int], ...]  # (name, size), sorted by name
    files: dict[str, int]  # layer name -> open fd, for the layers not known to be uploaded

    def close(self) -> None:
        for fd in self.files.values():
            os.close(fd)
        self.files.clear()


class RemoteTimeline:
    """The uploader of one timeline.  Built by `RemoteRepository.timeline`.

    State (all of it a cache of object storage, rebuilt by the first sync of a process):
    ``index`` is the last index this process uploaded and validated (or downloaded);
    ``remote_consistent_lsn`` its disk_consistent_lsn; ``_entries`` the layers known to be in
    the store with their CRCs; ``_objects`` every key under the timeline's prefix that may
    exist (listed once, plus our uploads), the candidates for deletion (rule 5).
    """

    def __init__(self, remote: RemoteRepository, name: str) -> None:
        self.remote = remote
        self.name = check_name(name)
        self.index: IndexPart | None = None
        self.remote_consistent_lsn: int | None = None
        self._entries: dict[str, LayerEntry] = {}
        self._objects: set[str] = set()
        self._loaded = False
        self._own_index_uploaded = False

    def __repr__(self) -> str:
        rcl = "none" if self.remote_consistent_lsn is None else format_lsn(self.remote_consistent_lsn)
        return f"RemoteTimeline({self.name!r}, generation={self.remote.generation}, remote_consistent={rcl})"

    @property
    def _prefix(self) -> str:
        return _timeline_prefix(self.remote.prefix, self.name)

    def sync(self, timeline: Timeline) -> int:
        """Upload the timeline's new layers, then its index, then delete what the index no
        longer names (rules 1, 2, 5).  Idempotent; safe to repeat after any failure.

        Returns:
            The new remote_consistent_lsn (the uploaded index's disk_consistent_lsn).

        Raises:
            NotAttached, Superseded, RemoteAhead, CorruptRemote (a damaged index met on the
            first sync), impl.remote.RemoteError (retry).
        """
        return self.upload(self.prepare(timeline))

    def prepare(self, timeline: Timeline) -> SyncSnapshot:
        """Read what to upload: no object-storage IO (rule 7).  Opens the layer files not yet
        known to be uploaded; the snapshot must go to `upload` (or be closed)."""
        if timeline.name != self.name:
            raise ValueError(f"RemoteTimeline {self.name!r} given timeline {timeline.name!r}")
        meta = timeline.metadata()
        layers = tuple((info.name, info.size) for info in timeline.layer_files())
        files: dict[str, int] = {}
        try:
            for name, size in layers:
                known = self._entries.get(name)
                if known is None or known.size != size or not self._loaded:
                    files[name] = os.open(timeline.directory / name, os.O_RDONLY)
        except BaseException:
            for fd in files.values():
                os.close(fd)
            raise
        return SyncSnapshot(meta, layers, files)

    def upload(self, snapshot: SyncSnapshot) -> int:
        """The blocking part of `sync`: every step in the order rules 1-5 require.

        1. validate the generation (refuse if superseded); on the first sync of this process,
           list the timeline's objects and read the newest index;
        2. upload each layer not already in the store (under our generation);
        3. upload the index, if it says something new or no index of ours exists yet;
        4. validate the generation again; only then advance remote_consistent_lsn;
        5. delete the objects no index of ours or a newer generation names.
        """
        try:
            generation = self.remote._require_generation()
            self.remote.validate()
            if not self._loaded:
                self._load()
            meta = snapshot.metadata
            if self.index is not None:
                self._check_not_behind(meta, self.index)
            # 2. Layers first: the index will name them (rule 1).
            entries: list[LayerEntry] = []
            for name, size in snapshot.layers:
                entries.append(self._ensure_uploaded(name, size, snapshot.files.get(name), generation))
        finally:
            snapshot.close()
        index = IndexPart(generation, meta, tuple(entries))
        unchanged = self._own_index_uploaded and index.same_state(self.index)
        if unchanged and not self._doomed(index, generation):
            # Nothing new, nothing to delete: the check in step 1 was the whole sync.
            return meta.disk_consistent_lsn
        # 3. The index: the barrier.
        if not unchanged:
            key = _object_key(self.remote.prefix, self.name, INDEX_NAME, generation)
            self._objects.add(key)
            self.remote.store.put(key, encode_index(index))
        # 4. Validate before anything acts on the new index: deletions, and acceptors deleting
        # WAL below remote_consistent_lsn (rules 2 and 4).
        self.remote.validate()
        self.index = index
        self._own_index_uploaded = True
        self.remote_consistent_lsn = meta.disk_consistent_lsn
        # 5. Deletions: old indexes first, so every index left in the store names only
        # existing objects.
        for key in self._doomed(index, generation):
            self.remote.store.delete(key)
            self._objects.discard(key)
        current = index.layer_map()
        self._entries = {n: e for n, e in self._entries.items() if n in current}
        return meta.disk_consistent_lsn

    # -- steps -------------------------------------------------------------------------------

    def _load(self) -> None:
        """First sync of this process: what the store holds (rule 5) and the newest index."""
        keys = self.remote.store.list(self._prefix)
        newest = self.remote._newest_index_key(self.name, keys)
        self._objects = {k for k in keys if _parse_object(k[len(self._prefix):]) is not None}
        self.index = None if newest is None else self.remote._read_index(self.name, newest)
        self._entries = {} if self.index is None else self.index.layer_map()
        self._loaded = True

    def _check_not_behind(self, meta: TimelineMetadata, index: IndexPart) -> None:
        if meta.disk_consistent_lsn < index.disk_consistent_lsn or meta.gc_cutoff < index.metadata.gc_cutoff:
            raise RemoteAhead(
                f"timeline {self.name!r}: local disk_consistent_lsn {format_lsn(meta.disk_consistent_lsn)}"
                f" (gc_cutoff {format_lsn(meta.gc_cutoff)}) is behind the remote index of generation"
                f" {index.generation} ({format_lsn(index.disk_consistent_lsn)}, gc_cutoff"
                f" {format_lsn(index.metadata.gc_cutoff)}): download it first"
            )

    def _ensure_uploaded(self, name: str, size: int, fd: int | None, generation: int) -> LayerEntry:
        known = self._entries.get(name)
        if fd is None:
            assert known is not None and known.size == size, (name, size, known)
            return known
        data, crc = _file_crc(fd)
        if len(data) != size:
            raise RemoteTimelineError(
                f"timeline {self.name!r}: layer file {name} has {len(data)} bytes, the timeline"
                f" listed {size}: layer files are immutable"
            )
        if known is not None and known.size == size and known.crc32c == crc:
            return known  # already in the store (uploaded earlier, by us or a predecessor)
        if known is not None and known.generation == generation:
            raise RemoteTimelineError(
                f"timeline {self.name!r}: layer {name} changed content after it was uploaded"
                f" (size {known.size} -> {size}, crc {known.crc32c:#010x} -> {crc:#010x}):"
                " layer files are immutable"
            )
        key = _object_key(self.remote.prefix, self.name, name, generation)
        # Known before the put: a put whose outcome is unknown leaves a candidate for cleanup.
        self._objects.add(key)
        self.remote.store.put(key, data)
        entry = LayerEntry(name, size, crc, generation)
        self._entries[name] = entry
        return entry

    def _doomed(self, index: IndexPart, generation: int) -> list[str]:
        """The keys to delete once `index` is uploaded and validated (rule 5), old indexes
        first: everything known under the timeline's prefix that it does not name, except
        our own index and any newer generation's object."""
        named = {_object_key(self.remote.prefix, self.name, INDEX_NAME, generation)}
        named |= {_object_key(self.remote.prefix, self.name, e.name, e.generation) for e in index.layers}
        doomed = []
        for key in self._objects - named:
            parsed = _parse_object(key[len(self._prefix):])
            assert parsed is not None, key
            kind, _name, object_generation = parsed
            if object_generation > generation or (kind == "index" and object_generation == generation):
                continue  # never a newer generation's object (rule 5)
            doomed.append((kind != "index", key))
        return [key for _is_layer, key in sorted(doomed)]


# ---------------------------------------------------------------------------------------------
# The repository's remote side
# ---------------------------------------------------------------------------------------------


class RemoteRepository:
    """One repository's objects in `store` under `prefix` (Neon's tenant), and this
    process's generation.

    Args:
        store: the object store (LocalFs, S3).
        prefix: a valid key (impl.remote.check_key) under which every object lives.
    """

    def __init__(self, store: RemoteStorage, prefix: str = "pageserver") -> None:
        self.store = store
        self.prefix = check_key(prefix)
        self.generation: int | None = None
        self._superseded_by: int | None = None
        self._timelines: dict[str, RemoteTimeline] = {}

    def __repr__(self) -> str:
        return f"RemoteRepository({self.store!r}, {self.prefix!r}, generation={self.generation})"

    @property
    def _generation_key(self) -> str:
        return f"{self.prefix}/{GENERATION_NAME}"

    # -- generations -------------------------------------------------------------------------

    def attach(self) -> int:
        """Take the next generation (the control plane's job, done by compare-and-swap on
        ``P/generation``); every later upload carries it.  Once per process.

        Returns:
            The new generation (1 for the first attach ever).

        Raises:
            RemoteTimelineError: attached already, or the compare-and-swap kept losing.
            CorruptRemote: the generation object is damaged.
            impl.remote.RemoteError: the store failed (retry).
        """
        if self.generation is not None:
            raise RemoteTimelineError(f"already attached with generation {self.generation}")
        key = self._generation_key
        for _ in range(ATTACH_ATTEMPTS):
            info = self.store.stat(key)  # stat, then get: remote.py rule 2
            if info is None:
                if self.store.put_if_absent(key, _encode_generation(1)):
                    self.generation = 1
                    return 1
                continue
            try:
                current = _decode_generation(key, self.store.get(key))
            except NotFound:
                continue
            if current >= MAX_GENERATION:
                raise RemoteTimelineError(f"{key!r}: generations exhausted at {current}")
            if self.store.put_if_match(key, _encode_generation(current + 1), info.etag):
                self.generation = current + 1
                return current + 1
        raise RemoteTimelineError(f"{key!r}: lost {ATTACH_ATTEMPTS} compare-and-swap rounds in a row")

    def current_generation(self) -> int | None:
        """The newest generation any pageserver attached with, or None if none ever did."""
        try:
            return _decode_generation(self._generation_key, self.store.get(self._generation_key))
        except NotFound:
            return None

    def validate(self) -> None:
        """Raise `Superseded` if a newer generation attached (then always, without IO).

        Raises:
            NotAttached, Superseded, CorruptRemote (the generation object is missing or
            damaged), impl.remote.RemoteError.
        """
        generation = self._require_generation()
        if self._superseded_by is not None:
            raise Superseded(generation, self._superseded_by)
        current = self.current_generation()
        if current is None:
            raise CorruptRemote(self._generation_key, f"missing, but generation {generation} attached")
        if current != generation:
            if current < generation:
                raise CorruptRemote(self._generation_key, f"went back from {generation} to {current}")
            self._superseded_by = current
            raise Superseded(generation, current)

    def _require_generation(self) -> int:
        if self.generation is None:
            raise NotAttached("upload before attach: a pageserver writes only with a generation")
        return self.generation

    # -- timelines ---------------------------------------------------------------------------

    def timeline(self, name: str) -> RemoteTimeline:
        """The uploader of timeline `name` (one per name, kept)."""
        remote = self._timelines.get(name)
        if remote is None:
            remote = self._timelines[name] = RemoteTimeline(self, name)
        return remote

    def remote_consistent_lsn(self, name: str) -> int | None:
        """What acceptors of timeline `name` may delete WAL below (rule 4); None before the
        first sync or download of this process."""
        remote = self._timelines.get(name)
        return None if remote is None else remote.remote_consistent_lsn

    def sync(self, repo: Repository) -> dict[str, int]:
        """Sync every timeline of `repo`, each ancestor before its children (a child's index
        must never be the only one of its family in the store).

        Returns:
            Each timeline's remote_consistent_lsn.
        """
        done: dict[str, int] = {}
        for timeline in _ancestors_first(repo.timeline(n) for n in repo.list()):
            done[timeline.name] = self.timeline(timeline.name).sync(timeline)
        return done

    def list_timelines(self) -> list[str]:
        """The timelines with at least one index in the store."""
        return self._indexed(self._group(self.store.list(f"{self.prefix}/timelines/")))

    def _group(self, listing: Iterable[str]) -> dict[str, list[str]]:
        """Keys under ``P/timelines/`` by timeline name."""
        by_timeline: dict[str, list[str]] = {}
        for key in listing:
            parts = key[len(self.prefix) + 1 :].split("/")
            if len(parts) == 3:
                by_timeline.setdefault(parts[1], []).append(key)
        return by_timeline

    def _indexed(self, by_timeline: Mapping[str, list[str]]) -> list[str]:
        return sorted(
            name for name, keys in by_timeline.items()
            if any((_parse_object(k.rpartition("/")[2]) or ("",))[0] == "index" for k in keys)
        )

    def newest_index(self, name: str) -> IndexPart | None:
        """The index a reader trusts: the highest generation's (rule 3); None if none.

        Raises:
            Superseded: (attached) an index of a newer generation exists.
            CorruptRemote: that index is damaged.
        """
        prefix = _timeline_prefix(self.prefix, name)
        key = self._newest_index_key(name, self.store.list(prefix))
        return None if key is None else self._read_index(name, key)

    def _newest_index_key(self, name: str, keys: Iterable[str]) -> str | None:
        prefix = _timeline_prefix(self.prefix, name)
        best: tuple[int, str] | None = None
        for key in keys:
            parsed = _parse_object(key[len(prefix):])
            if parsed is not None and parsed[0] == "index" and (best is None or parsed[2] > best[0]):
                best = (parsed[2], key)
        if best is None:
            return None
        if self.generation is not None and best[0] > self.generation:
            self._superseded_by = max(best[0], self._superseded_by or 0)
            raise Superseded(self.generation, best[0])
        return best[1]

    def _read_index(self, name: str, key: str) -> IndexPart:
        try:
            raw = self.store.get(key)
        except NotFound:
            raise CorruptRemote(key, "listed but gone (deleted meanwhile?)") from None
        try:
            index = decode_index(raw)
        except ValueError as exc:
            raise CorruptRemote(key, f"damaged index: {exc}") from None
        suffix = _parse_object(key.rpartition("/")[2])
        if index.timeline != name or suffix is None or suffix[2] != index.generation:
            raise CorruptRemote(
                key, f"index of timeline {index.timeline!r}, generation {index.generation}: not this key's"
            )
        return index

    # -- download ----------------------------------------------------------------------------

    def download(self, root: Path | str, names: Iterable[str] | None = None) -> dict[str, IndexPart]:
        """Make ``root/timelines/<name>`` mirror the newest index of each timeline in `names`
        (all timelines if None) and of their ancestors (rule 6), for `Repository.open`.

        If attached, the uploaders of these timelines start from the downloaded indexes (no
        re-listing, no re-reading of the files just verified).

        Returns:
            The indexes used, by timeline name.

        Raises:
            CorruptRemote: a missing or damaged index or layer object (named), or a timeline
                whose ancestor has no index.
            Superseded: (attached) a newer generation's index exists.
            impl.remote.RemoteError: the store failed (retry: verified local files are kept).
        """
        root = Path(root)
        by_timeline = self._group(self.store.list(f"{self.prefix}/timelines/"))
        wanted = self._indexed(by_timeline) if names is None else list(names)
        indexes: dict[str, IndexPart] = {}
        while wanted:
            name = wanted.pop()
            if name in indexes:
                continue
            try:
                check_name(name)
            except BadTimelineName:
                raise CorruptRemote(f"{self.prefix}/timelines/{name}", "not a timeline name") from None
            key = self._newest_index_key(name, by_timeline.get(name, ()))
            if key is None:
                raise CorruptRemote(_timeline_prefix(self.prefix, name), f"no index of timeline {name!r}")
            indexes[name] = index = self._read_index(name, key)
            if index.metadata.ancestor is not None:
                wanted.append(index.metadata.ancestor)
        base = root / TIMELINES_DIR
        base.mkdir(parents=True, exist_ok=True)
        fsync_dir(base.parent)
        order = _names_ancestors_first(indexes)
        # Which local timelines change, and so lose their metadata until rebuilt: those that
        # differ from their index, and every local descendant of one (a child must never
        # outlive a half-rebuilt ancestor: Repository.open would refuse the directory).
        local = _local_ancestors(base)
        changing = {name for name in order if not _timeline_matches(base / name, indexes[name])}
        grew = True
        while grew:
            more = {child for child, ancestor in local.items() if ancestor in changing} - changing
            changing |= more
            grew = bool(more)
        stranded = sorted(changing - set(indexes))
        if stranded:
            raise RemoteTimelineError(
                f"download into {root}: local timelines {stranded} descend from timelines the"
                " download replaces; include them in `names` or remove them first"
            )
        for name in reversed(order):  # descendants first
            metadata = base / name / METADATA_NAME
            if name in changing and metadata.exists():
                metadata.unlink()
                fsync_dir(metadata.parent)
        for name in order:
            if name in changing:
                self._download_timeline(base / name, indexes[name])
            if self.generation is not None:
                remote = self.timeline(name)
                remote.index = indexes[name]
                remote.remote_consistent_lsn = indexes[name].disk_consistent_lsn
                remote._entries = indexes[name].layer_map()
                prefix = _timeline_prefix(self.prefix, name)
                remote._objects = {k for k in by_timeline.get(name, ()) if _parse_object(k[len(prefix):])}
                remote._loaded = True
        return indexes

    def _download_timeline(self, directory: Path, index: IndexPart) -> None:
        """Rebuild one timeline's directory; its metadata is already gone (written last)."""
        directory.mkdir(exist_ok=True)
        fsync_dir(directory.parent)
        metadata = directory / METADATA_NAME
        wanted = index.layer_map()
        for entry in os.listdir(directory):
            path = directory / entry
            if entry in wanted and not is_temp_file(entry) and _matches(path, wanted[entry]):
                del wanted[entry]
                continue
            path.unlink()
        fsync_dir(directory)
        for entry in wanted.values():
            key = _object_key(self.prefix, index.timeline, entry.name, entry.generation)
            try:
                data = self.store.get(key)
            except NotFound:
                raise CorruptRemote(key, f"missing, but the index of generation {index.generation} names it") from None
            if len(data) != entry.size:
                raise CorruptRemote(key, f"{len(data)} bytes, the index says {entry.size}")
            crc = crc32c.crc32c(data)
            if crc != entry.crc32c:
                raise CorruptRemote(key, f"CRC32C {crc:#010x}, the index says {entry.crc32c:#010x}")
            write_file_atomic(directory / entry.name, data)
        write_file_atomic(metadata, encode_metadata(index.metadata))


def _local_ancestors(base: Path) -> dict[str, str | None]:
    """Each local timeline with metadata -> its ancestor (an unreadable one counts as a root:
    it is replaced if the download names it, and Repository.open refuses it otherwise)."""
    out: dict[str, str | None] = {}
    for entry in sorted(os.listdir(base)):
        try:
            out[entry] = decode_metadata((base / entry / METADATA_NAME).read_bytes()).ancestor
        except (OSError, ValueError):
            continue
    return out


def _timeline_matches(directory: Path, index: IndexPart) -> bool:
    """Whether a local timeline directory is exactly what `index` describes: its metadata
    bytes, and the same layer files (by size and CRC32C), nothing else."""
    try:
        if (directory / METADATA_NAME).read_bytes() != encode_metadata(index.metadata):
            return False
        entries = set(os.listdir(directory)) - {METADATA_NAME}
    except OSError:
        return False
    wanted = index.layer_map()
    return entries == set(wanted) and all(_matches(directory / n, e) for n, e in wanted.items())


def _matches(path: Path, entry: LayerEntry) -> bool:
    """Whether a local file is the layer the index names (size, then CRC32C)."""
    try:
        if path.stat().st_size != entry.size:
            return False
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return _file_crc(fd)[1] == entry.crc32c
    finally:
        os.close(fd)


def _ancestors_first(timelines: Iterable[Timeline]) -> list[Timeline]:
    def depth(timeline: Timeline) -> int:
        n = 0
        while timeline.ancestor is not None:
            timeline, n = timeline.ancestor, n + 1
        return n

    return sorted(timelines, key=lambda t: (depth(t), t.name))


def _names_ancestors_first(indexes: Mapping[str, IndexPart]) -> list[str]:
    def depth(name: str) -> int:
        n, seen = 0, {name}
        while (ancestor := indexes[name].metadata.ancestor) is not None:
            if ancestor in seen:
                raise CorruptRemote(f"timelines/{name}", f"ancestor cycle through {sorted(seen)}")
            seen.add(ancestor)
            name, n = ancestor, n + 1
        return n

    return sorted(indexes, key=lambda n: (depth(n), n))


def _encode_generation(generation: int) -> bytes:
    return json.dumps({"generation": generation}).encode() + b"\n"


def _decode_generation(key: str, raw: bytes) -> int:
    try:
        body = json.loads(raw)
        return _gen(body["generation"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptRemote(key, f"damaged generation object: {exc!r}") from None
