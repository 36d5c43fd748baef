"""Object storage: a flat store of immutable-ish byte objects named by '/'-separated keys.

Theory of operation:

1. Object storage is where old WAL segments and the pageserver's layers and index end up
   (DESIGN.md §6, §7). ``RemoteStorage`` names only what those uses need: whole-object
   put/get, ranged get, listing by key prefix, idempotent delete, ``stat`` and two
   conditional puts. Two implementations: ``LocalFs`` (a directory, the embedded default)
   and ``S3`` (boto3, against AWS or any S3-compatible server). Both are synchronous and
   blocking; a trio shell calls them in ``trio.to_thread``.
2. Conditional puts are the only compare-and-swap: ``put_if_absent`` creates a key only if
   no object has it, ``put_if_match`` replaces an object only if its etag is the one the
   caller read. Both return False when they lose, and never overwrite in that case. The
   read side of a compare-and-swap is ``stat`` *then* ``get``, using the etag from
   ``stat``: if the object changes in between, that etag is stale and the swap fails;
   reading in the other order could pair old content with a new etag and lose an update.
3. An etag is an opaque string that changes whenever the content does. ``LocalFs``
   computes it from the content (MD5 hex, which is also what S3 gives a single-part
   upload); ``S3`` passes the server's through, without its quotes.
4. Keys are checked before any I/O (``check_key``): non-empty '/'-separated parts, none of
   them '.' or '..', no leading '/', printable, at most 1024 bytes (S3's limit) with parts
   of at most 255 bytes (a file name's limit). So a key maps to a path inside ``LocalFs``'s
   root and cannot escape it, and a key valid on one implementation is valid on the other.
5. Errors are split by blame, as in ``impl/storage.py``: a bad key or range is the caller's
   bug (``ValueError``); a missing object is ``NotFound``; anything else the store or the
   network did is ``RemoteError``, whose message names the implementation, the operation
   and the key. After a ``RemoteError`` from a put or delete the outcome is unknown: the
   caller re-reads before relying on either.
6. Where the two differ: ``LocalFs`` cannot hold both ``a`` and ``a/b`` (``a`` would be a
   file and a directory); putting the second raises ``RemoteError``.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

import attrs
import boto3
import botocore.config
import botocore.exceptions

from impl.storage import fsync_dir

__all__ = ["LocalFs", "NotFound", "ObjectInfo", "RemoteError", "RemoteStorage", "S3", "check_key", "open_remote"]

# S3's limit on a key's UTF-8 length, and a file name's on Linux file systems.
MAX_KEY_BYTES = 1024
MAX_PART_BYTES = 255


class NotFound(KeyError):
    """No object has the key. The message names the key."""

    def __str__(self) -> str:
        # KeyError's str() is the repr of its argument, which would quote a whole message.
        return str(self.args[0])


class RemoteError(Exception):
    """Object storage failed for a reason other than a missing key, e.g. ``"S3 put 'a/b' in
    bucket 'wal': the server refused the credentials (access key 'k'): SignatureDoesNotMatch
    ..."``. The outcome of a failed put or delete is unknown."""


@attrs.frozen
class ObjectInfo:
    """What ``stat`` tells about an object: its size in bytes and its etag."""

    size: int
    etag: str


@runtime_checkable
class RemoteStorage(Protocol):
    """Objects named by keys (see ``check_key``). Every method raises ``ValueError`` for a bad
    key and ``RemoteError`` for a failure of the store."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any object; atomic: readers see the old
        object or the new one, never a part."""
        ...

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` only if no object has that key.

        Returns:
            True if this call created the object; False if an object was there (it is left
            as it was).
        """
        ...

    def put_if_match(self, key: str, data: bytes, etag: str) -> bool:
        """Replace the object under ``key`` only if its etag is still ``etag``.

        Returns:
            True if this call replaced it; False if the object changed or is gone (nothing is
            written then).
        """
        ...

    def get(self, key: str) -> bytes:
        """The object's content.

        Raises:
            NotFound: no object has the key.
        """
        ...

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """The object's bytes in ``[start, end)``.

        Raises:
            NotFound: no object has the key.
            ValueError: not ``0 <= start <= end <= size``; S3 would silently shorten a range
                that runs past the end, so both implementations refuse it instead.
        """
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """The object's size and etag, or None if no object has the key."""
        ...

    def list(self, prefix: str = "") -> builtins.list[str]:
        """Every key that starts with ``prefix`` (a plain string prefix, as in S3), sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is not an error."""
        ...


# ---------------------------------------------------------------------------------------
# Keys and ranges
# ---------------------------------------------------------------------------------------


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid object key (rule 4 of the module docstring).

    Raises:
        ValueError: naming the key and what is wrong with it.
    """
    if not isinstance(key, str):
        raise ValueError(f"bad object key {key!r}: not a string")
    problem = _key_problem(key)
    if problem:
        raise ValueError(f"bad object key {key!r}: {problem}")
    return key


def _key_problem(key: str) -> str:
    if not key.isprintable():
        return "it has unprintable characters"
    if key.startswith("/"):
        return "it starts with '/'"
    if len(key.encode()) > MAX_KEY_BYTES:
        return f"it is longer than {MAX_KEY_BYTES} bytes"
    for part in key.split("/"):
        if part in ("", ".", ".."):
            return f"it has a part {part!r} (empty, '.' and '..' are refused)"
        if len(part.encode()) > MAX_PART_BYTES:
            return f"it has a part longer than {MAX_PART_BYTES} bytes"
    return ""


def _check_prefix(prefix: str) -> str:
    """A listing prefix is a key's start: its complete parts must be valid, and its last part
    may be partial or empty ('a/' lists the keys under a/)."""
    if not isinstance(prefix, str) or prefix.startswith("/"):
        raise ValueError(f"bad object key prefix {prefix!r}: it must be the start of a valid key")
    head, _, last = prefix.rpartition("/")
    if not last.isprintable() or (head and _key_problem(head)):
        raise ValueError(f"bad object key prefix {prefix!r}: it must be the start of a valid key")
    return prefix


def _check_range(key: str, start: int, end: int) -> None:
    if not 0 <= start <= end:
        raise ValueError(f"bad range [{start}, {end}) of object {key!r}: need 0 <= start <= end")


def _past_end(key: str, start: int, end: int, size: int) -> ValueError:
    return ValueError(f"range [{start}, {end}) runs past the end of object {key!r} ({size} bytes)")


def _md5_hex(data: bytes) -> str:
    # An identifier of content, not a security measure (hence usedforsecurity=False).
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# ---------------------------------------------------------------------------------------
# LocalFs
# ---------------------------------------------------------------------------------------


@attrs.define
class LocalFs:
    """Object storage in the directory ``root`` (created if missing). Implements
    ``RemoteStorage``; several processes on one machine may share a root.

    Layout: the object ``a/b`` is the file ``root/objects/a/b``; puts write a temporary file
    in ``root/tmp`` first; ``root/lock`` serialises the changes of names in ``objects``.

    Durability and atomicity: a put writes and fsyncs its temporary file, then renames it
    into place and fsyncs the directory (the recipe of ``impl/control.py``), so a crash
    leaves the old object or the new one, and a put that returned survives a crash. A crash
    before the rename leaves a file in ``root/tmp``, never a visible object; such leftovers
    are not cleaned up automatically.

    Races: every change of a name in ``objects`` (rename in, unlink, prune an empty
    directory) happens under an exclusive ``flock`` of ``root/lock``, taken on a fresh file
    descriptor so it excludes threads of one process as well as other processes. So a
    conditional put's check and its rename are one step for every other writer. The slow
    part of a put (writing and syncing the temporary file) happens outside the lock.
    """

    root: Path = attrs.field(converter=Path)

    def __attrs_post_init__(self) -> None:
        _make_dirs(self._objects)
        _make_dirs(self._tmp)

    @property
    def _objects(self) -> Path:
        return self.root / "objects"

    @property
    def _tmp(self) -> Path:
        return self.root / "tmp"

    def put(self, key: str, data: bytes) -> None:
        """See ``RemoteStorage.put``."""
        self._commit("put", key, data, lambda path: True)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """See ``RemoteStorage.put_if_absent``."""
        return self._commit("put_if_absent", key, data, lambda path: not path.is_file())

    def put_if_match(self, key: str, data: bytes, etag: str) -> bool:
        """See ``RemoteStorage.put_if_match``."""

        def matches(path: Path) -> bool:
            try:
                return _md5_hex(path.read_bytes()) == etag
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return False

        return self._commit("put_if_match", key, data, matches)

    def get(self, key: str) -> bytes:
        """See ``RemoteStorage.get``."""
        with self._file(key, "get") as file:
            return file.read()

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """See ``RemoteStorage.get_range``."""
        _check_range(key, start, end)
        with self._file(key, "get_range") as file:
            size = os.fstat(file.fileno()).st_size
            if end > size:
                raise _past_end(key, start, end, size)
            file.seek(start)
            return file.read(end - start)

    def stat(self, key: str) -> ObjectInfo | None:
        """See ``RemoteStorage.stat``."""
        try:
            data = self.get(key)
        except NotFound:
            return None
        return ObjectInfo(size=len(data), etag=_md5_hex(data))

    def list(self, prefix: str = "") -> builtins.list[str]:
        """See ``RemoteStorage.list``."""
        _check_prefix(prefix)
        # Walk only the directory the prefix's complete parts name; its last part filters.
        start = self._objects / prefix.rpartition("/")[0]
        keys = []
        for directory, _, files in os.walk(start):
            relative = Path(directory).relative_to(self._objects)
            for name in files:
                key = (relative / name).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        """See ``RemoteStorage.delete``."""
        path = self._objects / check_key(key)
        try:
            with self._lock():
                try:
                    path.unlink()
                except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                    return
                fsync_dir(path.parent)
                # Empty directories would pile up under deleted keys (every offloaded WAL
                # segment is deleted some day). Pruning needs no fsync: an empty directory
                # that a crash brings back is harmless.
                for directory in path.relative_to(self._objects).parents[:-1]:
                    try:
                        (self._objects / directory).rmdir()
                    except OSError:
                        break
        except OSError as exc:
            raise RemoteError(f"LocalFs delete {key!r} under {self.root}: {exc}") from exc

    def _commit(self, operation: str, key: str, data: bytes, allowed: Callable[[Path], bool]) -> bool:
        """Write ``data`` to a temporary file, then, under the lock and only if
        ``allowed(path)``, rename it to ``key``'s path. Returns whether it did."""
        path = self._objects / check_key(key)
        try:
            fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix=f"{os.getpid()}-")
            tmp = Path(tmp_name)
            try:
                with open(fd, "wb") as file:
                    file.write(data)
                    file.flush()
                    # Before the rename: otherwise the rename could reach the disk before the
                    # data, and a crash would leave the key naming a torn file.
                    os.fsync(file.fileno())
                with self._lock():
                    if not allowed(path):
                        return False
                    _make_dirs(path.parent)
                    os.replace(tmp, path)
                    # The rename lives in the directory: until it is synced a crash may undo
                    # a put the caller was told is done.
                    fsync_dir(path.parent)
                    return True
            finally:
                tmp.unlink(missing_ok=True)
        except (FileExistsError, IsADirectoryError, NotADirectoryError) as exc:
            raise RemoteError(
                f"LocalFs {operation} {key!r} under {self.root}: a key cannot be both an object"
                f" and a prefix of another object's key here ({exc})"
            ) from exc
        except OSError as exc:
            raise RemoteError(f"LocalFs {operation} {key!r} under {self.root}: {exc}") from exc

    @contextlib.contextmanager
    def _file(self, key: str, operation: str) -> Iterator[BinaryIO]:
        path = self._objects / check_key(key)
        try:
            file = open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"LocalFs {operation}: no object {key!r} under {self.root}") from None
        except OSError as exc:
            raise RemoteError(f"LocalFs {operation} {key!r} under {self.root}: {exc}") from exc
        with file:
            try:
                yield file
            except OSError as exc:
                raise RemoteError(f"LocalFs {operation} {key!r} under {self.root}: {exc}") from exc

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock


def _make_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents durably: each new directory's entry is
    in its parent, so the parent is fsynced after the creation."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        new.mkdir(exist_ok=True)  # exist_ok: another process may create it concurrently
        fsync_dir(new.parent)


# ---------------------------------------------------------------------------------------
# S3
# ---------------------------------------------------------------------------------------

# Error codes meaning "no such object"; a HEAD answer has no body, so only its status.
_NOT_FOUND = frozenset({"NoSuchKey", "NotFound", "404"})
# A conditional put that lost: its precondition failed (412), AWS saw a concurrent
# conditional write to the key (409), or If-Match met a missing key (AWS says NoSuchKey).
_LOST = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}) | _NOT_FOUND
# The server did not accept who we are or what we may do.
_REFUSED = frozenset(
    {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "ExpiredToken", "InvalidToken", "403"}
)
_UNREACHABLE = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
)
# Transient failures (throttling, 5xx, resets) are retried by botocore a few times with
# backoff; more would only hide an outage from the caller, which has its own retry policy.
RETRY_ATTEMPTS = 3
CONNECT_TIMEOUT = 5.0
# Per socket read, not per request: a large object may take longer in total.
READ_TIMEOUT = 60.0


def _check_s3_prefix(instance: object, attribute: attrs.Attribute, prefix: str) -> None:
    if prefix and not (prefix.endswith("/") and not _key_problem(prefix[:-1])):
        raise ValueError(f"bad S3 key prefix {prefix!r}: it must be empty or a valid key and '/'")


@attrs.define
class S3:
    """Object storage in an S3 bucket, through boto3. Implements ``RemoteStorage``.

    Attributes:
        bucket: the bucket, which must exist.
        endpoint_url: e.g. ``"http://127.0.0.1:8333"`` for an S3-compatible server; None
            means boto3's resolution (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, config
            files, then AWS itself).
        region: None means boto3's resolution (``AWS_REGION``, ``AWS_DEFAULT_REGION``,
            config files), then ``us-east-1``.
        access_key, secret_key: None means boto3's credential chain (``AWS_ACCESS_KEY_ID``
            and ``AWS_SECRET_ACCESS_KEY``, then config files and the rest).
        prefix: prepended to every key, so several stores can share a bucket; empty, or a
            valid key followed by '/'. Keys given and listed are without it.
        page_size: keys per list request (S3 answers at most 1000).

    Addressing is path-style (``endpoint/bucket/key``), which S3-compatible servers on
    loopback need: virtual-host style would put the bucket in the host name.

    Conditional puts are sent exactly once, through a client with botocore's retries off: a
    retry of a put whose answer was lost would fail its own precondition and report a lost
    race for a put that won. A failure is a ``RemoteError`` instead, and the caller
    re-reads. The other requests are idempotent and are retried (``RETRY_ATTEMPTS``).

    A missing bucket is a ``RemoteError`` naming ``NoSuchBucket``, except from ``stat``,
    which answers None: S3 answers a HEAD with a bare 404 either way.
    """

    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = attrs.field(default=None, repr=False)
    prefix: str = attrs.field(default="", validator=_check_s3_prefix)
    page_size: int = 1000
    _client: Any = attrs.field(init=False, repr=False)
    _once: Any = attrs.field(init=False, repr=False)
    _key_id: str | None = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        session = boto3.session.Session(
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )
        region = session.region_name or "us-east-1"
        self._client = self._make_client(session, region, RETRY_ATTEMPTS)
        self._once = self._make_client(session, region, 1)
        credentials = session.get_credentials()
        self._key_id = credentials.access_key if credentials else None

    def _make_client(self, session: boto3.session.Session, region: str, attempts: int) -> Any:
        config = botocore.config.Config(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": attempts},
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            # Since botocore 1.36 every upload carries a CRC checksum by default, which many
            # S3-compatible servers refuse; send and check one only where the API needs it.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return session.client("s3", endpoint_url=self.endpoint_url, region_name=region, config=config)

    def put(self, key: str, data: bytes) -> None:
        """See ``RemoteStorage.put``."""
        name = self._name(key)
        self._call("put", key, lambda: self._client.put_object(Bucket=self.bucket, Key=name, Body=data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """See ``RemoteStorage.put_if_absent``."""
        return self._conditional("put_if_absent", key, data, IfNoneMatch="*")

    def put_if_match(self, key: str, data: bytes, etag: str) -> bool:
        """See ``RemoteStorage.put_if_match``."""
        return self._conditional("put_if_match", key, data, IfMatch=f'"{etag}"')

    def get(self, key: str) -> bytes:
        """See ``RemoteStorage.get``."""
        name = self._name(key)
        return self._call(
            "get", key, lambda: self._client.get_object(Bucket=self.bucket, Key=name)["Body"].read()
        )

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """See ``RemoteStorage.get_range``."""
        _check_range(key, start, end)
        data = b""
        # HTTP cannot ask for an empty range: then only the bounds are checked, below.
        if start < end:
            data = self._call("get_range", key, lambda: self._ranged(key, start, end))
        if start == end or len(data) < end - start:
            # S3 shortens a range that runs past the end, and refuses one that starts there.
            info = self.stat(key)
            if info is None:
                raise NotFound(f"{self._where('get_range', key)}: no such object")
            if end > info.size:
                raise _past_end(key, start, end, info.size)
            if len(data) < end - start:
                raise RemoteError(f"{self._where('get_range', key)}: the object changed during the read")
        return data

    def stat(self, key: str) -> ObjectInfo | None:
        """See ``RemoteStorage.stat``."""
        name = self._name(key)
        try:
            head = self._call("stat", key, lambda: self._client.head_object(Bucket=self.bucket, Key=name))
        except NotFound:
            return None
        return ObjectInfo(size=head["ContentLength"], etag=head["ETag"].strip('"'))

    def list(self, prefix: str = "") -> builtins.list[str]:
        """See ``RemoteStorage.list``."""
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket,
            Prefix=self.prefix + _check_prefix(prefix),
            PaginationConfig={"PageSize": self.page_size},
        )
        names = self._call(
            "list", prefix, lambda: [item["Key"] for page in pages for item in page.get("Contents", ())]
        )
        return sorted(name[len(self.prefix) :] for name in names)

    def delete(self, key: str) -> None:
        """See ``RemoteStorage.delete``."""
        name = self._name(key)
        with contextlib.suppress(NotFound):
            self._call("delete", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=name))

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _ranged(self, key: str, start: int, end: int) -> bytes:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._name(key), Range=f"bytes={start}-{end - 1}")
        except botocore.exceptions.ClientError as exc:
            if _code(exc) == "InvalidRange":
                return b""
            raise
        return response["Body"].read()

    def _conditional(self, operation: str, key: str, data: bytes, **condition: str) -> bool:
        name = self._name(key)
        try:
            self._once.put_object(Bucket=self.bucket, Key=name, Body=data, **condition)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _LOST:
                return False
            raise self._error(operation, key, exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(operation, key, exc) from exc
        return True

    def _call(self, operation: str, key: str, request: Callable[[], Any]) -> Any:
        try:
            return request()
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._error(operation, key, exc) from exc

    def _where(self, operation: str, key: str) -> str:
        return f"S3 {operation} {key!r} in bucket {self.bucket!r}"

    def _error(self, operation: str, key: str, exc: Exception) -> Exception:
        where = self._where(operation, key)
        if isinstance(exc, botocore.exceptions.ClientError):
            code = _code(exc)
            message = exc.response.get("Error", {}).get("Message", "")
            if code in _NOT_FOUND:
                return NotFound(f"{where}: no such object")
            if code in _REFUSED:
                return RemoteError(
                    f"{where}: the server refused the credentials (access key {self._key_id!r})"
                    f" or what they may do: {code} {message}"
                )
            return RemoteError(f"{where}: {code} {message}")
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return RemoteError(
                f"{where}: no credentials: pass access_key and secret_key, or set"
                " AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        if isinstance(exc, _UNREACHABLE):
            return RemoteError(f"{where}: cannot reach the endpoint {self._client.meta.endpoint_url}: {exc}")
        return RemoteError(f"{where}: {exc}")


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def open_remote(location: str) -> RemoteStorage:
    """The object store a command line or cluster configuration names.

    ``s3://BUCKET[/PREFIX]`` is an S3 bucket (the endpoint, region and credentials come from
    boto3's usual ``AWS_*`` variables, e.g. ``AWS_ENDPOINT_URL`` for a server on loopback);
    anything else is a directory for ``LocalFs`` (a ``file://`` prefix is allowed).

    Raises:
        ValueError: an ``s3://`` location without a bucket, or with a bad prefix.
    """
    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://"):].partition("/")
        if not bucket:
            raise ValueError(f"object store {location!r} names no bucket (s3://BUCKET[/PREFIX])")
        prefix = prefix.strip("/")
        return S3(bucket, prefix=prefix + "/" if prefix else "")
    return LocalFs(Path(location.removeprefix("file://")))
