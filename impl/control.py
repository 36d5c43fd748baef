"""The acceptor's control file: its small persistent state, replaced atomically.

Theory of operation:

1. ``ControlState`` is what an acceptor must remember across a crash besides its WAL: the
   term it promised (``term``), the term history of the WAL it holds, and a few LSNs. It
   checks its own shape when built, so a state read back from disk that passes the CRC but
   is still nonsense (a negative LSN, an unordered history) is refused like any damage.
2. The file is ``control`` in the node's directory (the WAL may share it; ``impl/wal.py``
   ignores these names). Layout, all integers big-endian::

       b"PXWC" | version: u16 | body length: u32 | body: CBOR map | CRC32C of all before: u32

   Like Neon's ``safekeeper.control`` (magic, version, body, CRC32C), but the body is CBOR,
   so a field is added by name, with a version bump, rather than by bincode position.
3. ``store`` is the atomic-rename recipe: write ``control.tmp``, fsync it, rename it over
   ``control``, fsync the directory. A crash at any point leaves the old file or the new
   one; a leftover ``control.tmp`` is the trace of a crash before the rename and is removed
   by the next ``load``.
4. ``load`` never guesses: any damage raises ``CorruptStorage("control file <path>: ...")``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import attrs
import cbor2

from impl.storage import CorruptStorage, seal, unseal, write_file_atomic

__all__ = [
    "CONTROL_NAME",
    "CONTROL_TMP_NAME",
    "FORMAT_VERSION",
    "MAGIC",
    "ControlState",
    "FileControlStorage",
    "decode_control",
    "encode_control",
]

MAGIC = b"PXWC"
# Bump on any change to the body's fields; load refuses versions it does not know rather
# than misread a newer node's state.
FORMAT_VERSION = 1
CONTROL_NAME = "control"
# Written first and renamed over CONTROL_NAME, so a torn write never carries the real name.
CONTROL_TMP_NAME = "control.tmp"



# ---------------------------------------------------------------------------------------
# The state
# ---------------------------------------------------------------------------------------


def _lsn(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    # `type(...) is int` rather than isinstance: CBOR's true would otherwise pass as 1.
    if type(value) is not int:
        raise TypeError(f"{attribute.name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


def _optional_lsn(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None:
        _lsn(instance, attribute, value)


def _term_history(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if type(value) is not tuple or not value:
        raise TypeError(f"term_history must be a non-empty tuple, got {value!r}")
    for entry in value:
        if type(entry) is not tuple or len(entry) != 2 or any(type(x) is not int for x in entry):
            raise TypeError(f"term_history entries must be (term, lsn) int pairs, got {entry!r}")
        if entry[0] < 0 or entry[1] < 0:
            raise ValueError(f"term_history entry {entry!r} is negative")
    if value[0][0] != 0:
        # Neon starts every history with (INITIAL_TERM, start_lsn) so that a proposer always
        # finds a common point with this acceptor (neon-protocol.md §4.1).
        raise ValueError(f"term_history must start with term 0, got {value[0]!r}")
    for (t1, l1), (t2, l2) in zip(value, value[1:]):
        if not (t1 < t2 and l1 <= l2):
            raise ValueError(f"term_history out of order: {(t1, l1)!r} then {(t2, l2)!r}")


@attrs.frozen(kw_only=True)
class ControlState:
    """What an acceptor keeps in its control file.

    Attributes:
        node_id: the acceptor's name ("a1"); guards against mounting another node's disk.
        term: the highest term this acceptor promised (spec ``term``).
        term_history: ``(term, start_lsn)`` pairs of the WAL it holds, oldest first, starting
            with ``(0, start_lsn)``, i.e. ``(0, 0)`` for a WAL that starts at 0 (spec
            ``termHistory``). Terms strictly increase, LSNs never decrease.
        flush_lsn: a hint only, stored lazily: the WAL files are authoritative. A WAL that
            ends below it means flushed WAL was lost, which the acceptor refuses.
        commit_lsn: the highest LSN this acceptor knows to be committed.
        truncate_pending_lsn: set (and stored) before a WAL truncation starts and cleared
            after it completes; a node that starts with it set must finish the truncation
            before anything else.
        backup_lsn: end of the WAL offloaded to object storage.
    """

    node_id: str = attrs.field(validator=attrs.validators.instance_of(str))
    term: int = attrs.field(validator=_lsn)
    term_history: tuple[tuple[int, int], ...] = attrs.field(validator=_term_history)
    flush_lsn: int = attrs.field(validator=_lsn)
    commit_lsn: int = attrs.field(validator=_lsn)
    truncate_pending_lsn: int | None = attrs.field(validator=_optional_lsn)
    backup_lsn: int = attrs.field(default=0, validator=_lsn)

    def __attrs_post_init__(self) -> None:
        # An acceptor accepts a term history only in its current term (ProposerElected), so
        # its history can never run ahead of its promise.
        if self.term_history[-1][0] > self.term:
            raise ValueError(
                f"term_history's last term {self.term_history[-1][0]} exceeds term {self.term}"
            )


# ---------------------------------------------------------------------------------------
# The file format
# ---------------------------------------------------------------------------------------

_FIELDS = tuple(a.name for a in attrs.fields(ControlState))


def encode_control(state: ControlState) -> bytes:
    """The control file's bytes for ``state``.

    Args:
        state: the state to encode.

    Returns:
        Header, CBOR body and CRC32C, ready to write.
    """
    # Tuples encode as CBOR arrays and decode as lists; _state_from_body turns them back.
    body = attrs.asdict(state)
    # canonical=True: the same state always gives the same bytes (stable tests and diffs).
    return seal(MAGIC, FORMAT_VERSION, cbor2.dumps(body, canonical=True))


def decode_control(raw: bytes) -> ControlState:
    """Parse and validate control file bytes.

    Args:
        raw: the whole file.

    Returns:
        The state it holds.

    Raises:
        ValueError: the bytes are damaged; the message says how (the caller adds the path).
    """
    return _state_from_body(unseal(raw, MAGIC, FORMAT_VERSION))


def _state_from_body(encoded: bytes) -> ControlState:
    """Decode the CBOR body into a ControlState, or raise ValueError saying what is wrong."""
    stream = io.BytesIO(encoded)
    try:
        body = cbor2.CBORDecoder(stream).decode()
    except Exception as exc:  # noqa: BLE001 - any decoder failure on bytes we did not write
        # The CRC matched, so these bytes were written by someone; still, a decoder fed
        # arbitrary bytes may raise more than CBORDecodeError (tags build arbitrary objects).
        raise ValueError(f"bad CBOR body: {exc}") from exc
    if stream.tell() != len(encoded):
        raise ValueError(f"bad CBOR body: {len(encoded) - stream.tell()} bytes after the map")
    if not isinstance(body, dict):
        raise ValueError(f"body is a CBOR {type(body).__name__}, expected a map")
    for name in _FIELDS:
        if name not in body:
            raise ValueError(f"missing field {name!r}")
    unexpected = sorted(repr(k) for k in body if k not in _FIELDS)
    if unexpected:
        raise ValueError(f"unexpected field(s) {', '.join(unexpected)}")
    fields = dict(body)
    history = fields["term_history"]
    if type(history) is not list or any(type(e) is not list for e in history):
        raise ValueError(f"bad field: term_history must be a list of pairs, got {history!r}")
    fields["term_history"] = tuple(tuple(e) for e in history)
    try:
        return ControlState(**fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad field: {exc}") from exc


# ---------------------------------------------------------------------------------------
# The file
# ---------------------------------------------------------------------------------------


@attrs.frozen
class FileControlStorage:
    """The control file in ``directory`` (which must exist). Implements ``ControlStorage``.

    Blocking: the trio shell calls it in ``trio.to_thread``.
    """

    directory: Path = attrs.field(converter=Path)

    @property
    def path(self) -> Path:
        """The control file."""
        return self.directory / CONTROL_NAME

    @property
    def tmp_path(self) -> Path:
        """Where ``store`` writes before renaming."""
        return self.directory / CONTROL_TMP_NAME

    def load(self) -> ControlState | None:
        """Read the stored state.

        A leftover ``control.tmp`` is removed first: it is a store that crashed before its
        rename, so nothing was ever acted on because of it.

        Returns:
            The state, or None if no control file exists (a fresh node).

        Raises:
            CorruptStorage: the control file is damaged.
            FileNotFoundError: ``directory`` does not exist (a missing directory must not
                pass for a fresh node).
        """
        if not self.directory.is_dir():
            raise FileNotFoundError(f"control file directory {self.directory} does not exist")
        # No directory fsync after the unlink: if it is undone by a crash, the next load
        # removes the file again.
        self.tmp_path.unlink(missing_ok=True)
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return decode_control(raw)
        except ValueError as exc:
            raise CorruptStorage(f"control file {self.path}: {exc}") from None

    def store(self, state: ControlState) -> None:
        """Replace the stored state durably and atomically.

        Args:
            state: the new state.

        Raises:
            OSError: the write or an fsync failed; the old state may still be the stored
                one, so the caller must not act as if ``state`` were durable.
        """
        write_file_atomic(self.path, encode_control(state))
