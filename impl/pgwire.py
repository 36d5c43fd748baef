"""The Postgres wire protocol v3, backend side: a sans-IO state machine, like h11.

Theory of operation
===================

A compute serves the Postgres protocol so that `psql` and `pgbench -M simple` are its clients
(DESIGN.md §7).  This file turns a client's bytes into frozen events and backend messages into
bytes; impl/pgserver.py is the trio shell around it, impl/sql.py the SQL behind it.  Message
layouts follow the PostgreSQL 15 documentation, chapter 55 "Frontend/Backend Protocol",
section 55.7 "Message Formats"; each class below names its message there.  Rules:

1. No I/O.  `PgConnection.receive_data` only buffers (``b""`` means EOF), `next_event`
   returns one event or `NEED_DATA`, and `send` returns the bytes of a backend message for the
   caller to write.  Every rule about which message may come when lives in this file: in the
   two phase tables `_RECEIVE` and `_SEND`, and for start-up packets in `_startup_packet`.
2. Phases.  A connection starts in `STARTUP` (untyped packets: SSLRequest, GSSENCRequest,
   CancelRequest, StartupMessage), passes `ENCRYPTION` (we owe the one-byte 'N' refusal;
   we never encrypt) and `AUTHENTICATION` (we owe an authentication request or AuthenticationOk),
   `PASSWORD` (the client owes a PasswordMessage), then `CONNECTED` (typed messages, Query
   above all).  `SKIPPING` follows a refused extended-query message, `CLOSED` a Terminate,
   CancelRequest or EOF, and `ERROR` any ProtocolViolation: it is sticky, so a stream that
   was misframed once is never read again.  A message outside its phase's table is a
   violation naming both; a message we owe outside `_SEND` is a RuntimeError (our bug).
3. Blame is split as in h11 and impl/wire.py.  `ProtocolViolation` means the peer sent
   something invalid: the shell logs it, answers one FATAL ErrorResponse with its `sqlstate`
   and closes that connection only.  Misuse by our own code (a backend message with a NUL in
   a string, `send` in the wrong phase, `receive_data` after EOF) raises a builtin error.
4. Limits, checked as soon as a header is buffered, before its body is: a startup packet is
   8 to 10000 bytes (Postgres' MAX_STARTUP_PACKET_LENGTH); a typed message's body is at most
   `max_message` bytes (default `MAX_MESSAGE`, 1 MiB).  Every string is NUL-terminated UTF-8
   with nothing after the NUL; a body with missing or extra bytes is a violation.
5. Only protocol 3.0 is served; any other version is a violation with SQLSTATE 0A000 and
   Postgres' own wording.
6. The extended query protocol is refused, not implemented.  The first Parse, Bind,
   Describe, Execute, Close or Flush becomes `ExtendedMessage(kind)` (the shell answers one
   ErrorResponse); then, as Postgres does after an error in extended mode, every message up to
   the next Sync is discarded (a Terminate still ends the connection), and that Sync becomes
   `ExtendedMessage("Sync")` (the shell answers ReadyForQuery).  A Sync outside that is
   answered the same way.
7. Everything is text format: RowDescription announces format 0 for every column.  Type OIDs
   are Postgres' (`INT8_OID`, `FLOAT8_OID`, `TEXT_OID`, `BYTEA_OID`); the session picks them.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TypeAlias

import attrs

__all__ = [
    "AUTHENTICATION",
    "CLOSED",
    "CONNECTED",
    "ENCRYPTION",
    "ERROR",
    "PASSWORD",
    "SKIPPING",
    "STARTUP",
    "BYTEA_OID",
    "FLOAT8_OID",
    "INT8_OID",
    "MAX_MESSAGE",
    "MAX_STARTUP_PACKET",
    "NEED_DATA",
    "SERVER_PARAMETERS",
    "TEXT_OID",
    "AuthenticationCleartextPassword",
    "AuthenticationOk",
    "BackendKeyData",
    "BackendMessage",
    "CancelRequest",
    "CommandComplete",
    "ConnectionClosed",
    "DataRow",
    "EmptyQueryResponse",
    "EncryptionRefused",
    "ErrorResponse",
    "Event",
    "ExtendedMessage",
    "Field",
    "GssEncRequest",
    "ParameterStatus",
    "PasswordMessage",
    "PgConnection",
    "ProtocolViolation",
    "Query",
    "ReadyForQuery",
    "RowDescription",
    "SslRequest",
    "Startup",
    "Terminate",
    "encode",
]

# Postgres' bound on a startup packet (src/include/libpq/pqcomm.h): a client cannot make us
# buffer more than this before it has even authenticated.
MAX_STARTUP_PACKET = 10000

# Default bound on a typed message's body.  It bounds the memory one connection can make us
# buffer; a Query of psql -f is one statement, pgbench's are one line, so 1 MiB is ample.
MAX_MESSAGE = 1024 * 1024

# Type OIDs (src/include/catalog/pg_type.dat).
INT8_OID = 20
FLOAT8_OID = 701
TEXT_OID = 25
BYTEA_OID = 17

# What we tell clients we are, in ParameterStatus at start-up (and `SHOW`, impl/sql.py).
# libpq parses server_version into PQserverVersion (150000); psql and pgbench read
# client_encoding and standard_conforming_strings to quote correctly.
SERVER_PARAMETERS: Mapping[str, str] = MappingProxyType(
    {
        "server_version": "15.0 (paxwal)",
        "server_encoding": "UTF8",
        "client_encoding": "UTF8",
        "DateStyle": "ISO, MDY",
        "integer_datetimes": "on",
        "standard_conforming_strings": "on",
        "TimeZone": "UTC",
    }
)

# Startup packet request codes (55.7: SSLRequest, GSSENCRequest, CancelRequest): the
# "protocol version" 1234.5679 and neighbours, which no real version will ever use.
_SSL_CODE = 80877103
_GSSENC_CODE = 80877104
_CANCEL_CODE = 80877102
_PROTOCOL_3_0 = 3 << 16

# A typed message's header: its type byte and a length that counts itself but not the type.
_HEADER = struct.Struct("!cI")
_INT32 = struct.Struct("!I")


class ProtocolViolation(Exception):
    """The client sent something invalid; the shell logs it, answers and closes (rule 3).

    Attributes:
        sqlstate: the SQLSTATE of the FATAL ErrorResponse the shell sends before closing:
            08P01 (protocol_violation) unless a more precise one applies.
    """

    def __init__(self, message: str, sqlstate: str = "08P01") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class _Sentinel:
    """A named constant that prints as its name (h11's sentinels)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# `next_event` found no complete message: read more and `receive_data` it.
NEED_DATA = _Sentinel("NEED_DATA")

# Phases (rule 2).
STARTUP = _Sentinel("STARTUP")
ENCRYPTION = _Sentinel("ENCRYPTION")
AUTHENTICATION = _Sentinel("AUTHENTICATION")
PASSWORD = _Sentinel("PASSWORD")
CONNECTED = _Sentinel("CONNECTED")
SKIPPING = _Sentinel("SKIPPING")
CLOSED = _Sentinel("CLOSED")
ERROR = _Sentinel("ERROR")


# ---------------------------------------------------------------------------------------------
# Events: what the client sent (55.7, frontend messages)
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class SslRequest:
    """SSLRequest: the client asks for TLS; answer `EncryptionRefused` and it continues in
    the clear with a StartupMessage on the same connection."""


@attrs.frozen
class GssEncRequest:
    """GSSENCRequest: the client asks for GSSAPI encryption; answered like SslRequest."""


@attrs.frozen
class CancelRequest:
    """CancelRequest, on a connection of its own: cancel the query of the backend whose
    BackendKeyData matches (we do not cancel; the connection just ends)."""

    process_id: int
    secret_key: int


@attrs.frozen
class Startup:
    """StartupMessage of protocol 3.0.

    Attributes:
        user: the "user" parameter (required).
        database: the "database" parameter, defaulting to `user` as in Postgres.
        params: every parameter as sent (user, database, application_name, client_encoding,
            options, ...).
    """

    user: str
    database: str
    params: Mapping[str, str]


@attrs.frozen
class PasswordMessage:
    """PasswordMessage: the answer to AuthenticationCleartextPassword."""

    password: str = attrs.field(repr=False)


@attrs.frozen
class Query:
    """Query: one simple-query string, possibly several statements."""

    sql: str


@attrs.frozen
class Terminate:
    """Terminate: the client is closing the connection."""


@attrs.frozen
class ExtendedMessage:
    """An extended-query message (rule 6): "Parse", "Bind", "Describe", "Execute", "Close",
    "Flush" (answer an ErrorResponse) or "Sync" (answer ReadyForQuery)."""

    kind: str


@attrs.frozen
class ConnectionClosed:
    """The client closed its end (EOF) between messages, or after Terminate."""


Event: TypeAlias = (
    SslRequest | GssEncRequest | CancelRequest | Startup | PasswordMessage | Query | Terminate
    | ExtendedMessage | ConnectionClosed
)


# ---------------------------------------------------------------------------------------------
# Backend messages: what we send (55.7).  Constructors check what would corrupt the framing
# or mislead the client; a failure there is a bug in the caller (ValueError, rule 3).
# ---------------------------------------------------------------------------------------------


def _no_nul(_instance: object, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be str, not {type(value).__name__}")
    if "\0" in value:
        raise ValueError(f"{attribute.name} contains a NUL byte, which would end it early")


def _int32(_instance: object, attribute: attrs.Attribute, value: int) -> None:
    if type(value) is not int or not -(2**31) <= value < 2**31:
        raise ValueError(f"{attribute.name} must be a signed 32-bit int, not {value!r}")


def _sqlstate(_instance: object, _attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9A-Z]{5}", value):
        raise ValueError(f"not a SQLSTATE (five digits or capitals): {value!r}")


@attrs.frozen
class EncryptionRefused:
    """The single byte 'N' that refuses an SSLRequest or GSSENCRequest (55.2.10, 55.2.11)."""


@attrs.frozen
class AuthenticationCleartextPassword:
    """AuthenticationCleartextPassword ('R', 3): send the password in a PasswordMessage."""


@attrs.frozen
class AuthenticationOk:
    """AuthenticationOk ('R', 0)."""


@attrs.frozen
class ParameterStatus:
    """ParameterStatus ('S'): a run-time parameter's value, e.g. server_version."""

    name: str = attrs.field(validator=_no_nul)
    value: str = attrs.field(validator=_no_nul)


@attrs.frozen
class BackendKeyData:
    """BackendKeyData ('K'): what a CancelRequest for this connection would quote."""

    process_id: int = attrs.field(validator=_int32)
    secret_key: int = attrs.field(validator=_int32)


@attrs.frozen
class ReadyForQuery:
    """ReadyForQuery ('Z'): status 'I' idle, 'T' in a transaction block, 'E' in a failed one."""

    status: str = attrs.field(validator=attrs.validators.in_(("I", "T", "E")))


# Type sizes (pg_type.typlen) of the OIDs we announce; -1 is variable length.
_TYPE_SIZES: Mapping[int, int] = MappingProxyType({INT8_OID: 8, FLOAT8_OID: 8, TEXT_OID: -1, BYTEA_OID: -1})


@attrs.frozen
class Field:
    """One column of a RowDescription: its name and type OID (one of `_TYPE_SIZES`)."""

    name: str = attrs.field(validator=_no_nul)
    type_oid: int = attrs.field(validator=attrs.validators.in_(tuple(_TYPE_SIZES)))


@attrs.frozen
class RowDescription:
    """RowDescription ('T'): the columns of the rows that follow, all in text format."""

    fields: tuple[Field, ...] = attrs.field(converter=tuple)


@attrs.frozen
class DataRow:
    """DataRow ('D'): one row, each value text or None (SQL NULL)."""

    values: tuple[str | None, ...] = attrs.field(converter=tuple)


@attrs.frozen
class CommandComplete:
    """CommandComplete ('C'): a statement's tag, e.g. ``INSERT 0 1`` or ``SELECT 3``."""

    tag: str = attrs.field(validator=_no_nul)


@attrs.frozen
class EmptyQueryResponse:
    """EmptyQueryResponse ('I'): the Query held no statement."""


@attrs.frozen
class ErrorResponse:
    """ErrorResponse ('E').

    Attributes:
        sqlstate: field C.
        message: field M, the one line psql prints after ``ERROR:  ``.
        detail: field D, or None.
        severity: fields S and V: "ERROR" (the statement failed, the connection stays) or
            "FATAL" (the connection is about to close).
    """

    sqlstate: str = attrs.field(validator=_sqlstate)
    message: str = attrs.field(validator=_no_nul)
    detail: str | None = attrs.field(default=None, validator=attrs.validators.optional(_no_nul))
    severity: str = attrs.field(default="ERROR", validator=attrs.validators.in_(("ERROR", "FATAL")))


BackendMessage: TypeAlias = (
    EncryptionRefused | AuthenticationCleartextPassword | AuthenticationOk | ParameterStatus
    | BackendKeyData | ReadyForQuery | RowDescription | DataRow | CommandComplete
    | EmptyQueryResponse | ErrorResponse
)


def _message(kind: bytes, body: bytes) -> bytes:
    return _HEADER.pack(kind, 4 + len(body)) + body


def _cstring(text: str) -> bytes:
    return text.encode() + b"\0"


def _encode_row_description(message: RowDescription) -> bytes:
    parts = [struct.pack("!H", len(message.fields))]
    for field in message.fields:
        # table OID 0 and column 0 (not a table column), then type OID, size, modifier -1
        # (none) and format 0 (text).
        parts.append(_cstring(field.name))
        parts.append(struct.pack("!IhIhih", 0, 0, field.type_oid, _TYPE_SIZES[field.type_oid], -1, 0))
    return _message(b"T", b"".join(parts))


def _encode_data_row(message: DataRow) -> bytes:
    parts = [struct.pack("!H", len(message.values))]
    for value in message.values:
        if value is None:
            parts.append(b"\xff\xff\xff\xff")  # length -1: NULL
        else:
            data = value.encode()
            parts.append(_INT32.pack(len(data)))
            parts.append(data)
    return _message(b"D", b"".join(parts))


def _encode_error(message: ErrorResponse) -> bytes:
    fields = [(b"S", message.severity), (b"V", message.severity), (b"C", message.sqlstate), (b"M", message.message)]
    if message.detail is not None:
        fields.append((b"D", message.detail))
    return _message(b"E", b"".join(code + _cstring(text) for code, text in fields) + b"\0")


_ENCODERS: Mapping[type, Callable[..., bytes]] = MappingProxyType(
    {
        EncryptionRefused: lambda m: b"N",
        AuthenticationCleartextPassword: lambda m: _message(b"R", _INT32.pack(3)),
        AuthenticationOk: lambda m: _message(b"R", _INT32.pack(0)),
        ParameterStatus: lambda m: _message(b"S", _cstring(m.name) + _cstring(m.value)),
        BackendKeyData: lambda m: _message(b"K", struct.pack("!ii", m.process_id, m.secret_key)),
        ReadyForQuery: lambda m: _message(b"Z", m.status.encode()),
        RowDescription: _encode_row_description,
        DataRow: _encode_data_row,
        CommandComplete: lambda m: _message(b"C", _cstring(m.tag)),
        EmptyQueryResponse: lambda m: _message(b"I", b""),
        ErrorResponse: _encode_error,
    }
)


def encode(message: BackendMessage) -> bytes:
    """The bytes of one backend message, without any phase check (see `PgConnection.send`).

    Args:
        message: a backend message.

    Returns:
        Its encoding (55.7).

    Raises:
        TypeError: `message` is not a backend message (a bug in the caller).
    """
    encoder = _ENCODERS.get(type(message))
    if encoder is None:
        raise TypeError(f"not a backend message: {type(message).__name__}")
    return encoder(message)


# ---------------------------------------------------------------------------------------------
# The phase tables (rule 2)
# ---------------------------------------------------------------------------------------------

# Typed frontend messages by type byte (55.7).  Types we never accept are named anyway, so a
# violation says what the client tried ("FunctionCall"), not just a byte.
_FRONTEND_TYPES: Mapping[bytes, str] = MappingProxyType(
    {
        b"Q": "Query", b"p": "PasswordMessage", b"X": "Terminate",
        b"P": "Parse", b"B": "Bind", b"D": "Describe", b"E": "Execute", b"C": "Close",
        b"H": "Flush", b"S": "Sync",
        b"F": "FunctionCall", b"d": "CopyData", b"c": "CopyDone", b"f": "CopyFail",
    }
)

_EXTENDED = ("Parse", "Bind", "Describe", "Execute", "Close", "Flush")

# phase -> typed message -> next phase.  A message missing from its phase's row is a
# violation, except in SKIPPING, which discards it (rule 6).
_RECEIVE: Mapping[_Sentinel, Mapping[str, _Sentinel]] = MappingProxyType(
    {
        PASSWORD: {"PasswordMessage": AUTHENTICATION},
        CONNECTED: {"Query": CONNECTED, "Terminate": CLOSED, "Sync": CONNECTED} | {k: SKIPPING for k in _EXTENDED},
        SKIPPING: {"Sync": CONNECTED, "Terminate": CLOSED},
    }
)

_ANSWERS = (
    ParameterStatus, BackendKeyData, ReadyForQuery, RowDescription, DataRow, CommandComplete,
    EmptyQueryResponse, ErrorResponse,
)

# phase -> backend message type -> next phase.  ErrorResponse in STARTUP or AUTHENTICATION
# ends the connection (FATAL); in ERROR it is the goodbye after a violation.
_SEND: Mapping[_Sentinel, Mapping[type, _Sentinel]] = MappingProxyType(
    {
        STARTUP: {ErrorResponse: CLOSED},
        ENCRYPTION: {EncryptionRefused: STARTUP},
        AUTHENTICATION: {AuthenticationCleartextPassword: PASSWORD, AuthenticationOk: CONNECTED, ErrorResponse: CLOSED},
        CONNECTED: {t: CONNECTED for t in _ANSWERS},
        SKIPPING: {t: SKIPPING for t in _ANSWERS},
        ERROR: {ErrorResponse: ERROR},
    }
)

# Phases in which the client must wait for us: reading then is a bug of the shell.
_OUR_TURN = (ENCRYPTION, AUTHENTICATION)


def _cstring_body(name: str, body: bytes) -> str:
    """The one NUL-terminated UTF-8 string that must be exactly `body` (rule 4)."""
    end = body.find(b"\0")
    if end < 0:
        raise ProtocolViolation(f"{name} message: string has no NUL terminator")
    if end != len(body) - 1:
        raise ProtocolViolation(f"{name} message: {len(body) - end - 1} bytes after its string's NUL terminator")
    return _utf8(name, body[:end])


def _utf8(name: str, data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise ProtocolViolation(f"{name}: invalid UTF-8 at byte {exc.start}", "22021") from None


def _startup_params(body: bytes) -> dict[str, str]:
    """The name/value pairs of a StartupMessage after its version (55.7 StartupMessage):
    ``name\\0value\\0 ... \\0``, the last byte a lone terminator."""
    pieces = body.split(b"\0")
    # b"user\0u\0\0" splits into [b"user", b"u", b"", b""]: a well-formed body ends in two
    # empty pieces (the terminator), and only there may a name be empty.
    if len(pieces) < 2 or pieces[-2:] != [b"", b""]:
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    pairs = pieces[:-2]
    if len(pairs) % 2:
        raise ProtocolViolation("invalid startup packet layout: a parameter has no value")
    params: dict[str, str] = {}
    for i in range(0, len(pairs), 2):
        name = _utf8("StartupMessage", pairs[i])
        if not name:
            raise ProtocolViolation("invalid startup packet layout: empty parameter name before the end")
        params[name] = _utf8("StartupMessage", pairs[i + 1])
    return params


class PgConnection:
    """One client connection, server side, sans-IO (see the module docstring).

    Usage: the shell reads the socket and calls `receive_data(data)`, then `next_event()`
    until it returns `NEED_DATA` (read more) and answers each event with `send(...)`, writing
    the bytes it returns.  After a ProtocolViolation it may `send` one ErrorResponse, then it
    closes the connection.

    Attributes (read-only):
        phase: the current phase (rule 2).
    """

    def __init__(self, *, max_message: int = MAX_MESSAGE) -> None:
        """Args:
            max_message: the largest typed message body accepted, in bytes (rule 4).

        Raises:
            ValueError: `max_message` is not a positive int.
        """
        if type(max_message) is not int or max_message <= 0:
            raise ValueError(f"max_message must be a positive int, not {max_message!r}")
        self.phase = STARTUP
        self._max_message = max_message
        self._buf = bytearray()
        self._eof = False
        self._error: ProtocolViolation | None = None
        # Each of SSLRequest and GSSENCRequest may come once (libpq tries GSS, then SSL).
        self._asked: set[type] = set()

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the client; ``b""`` means the client closed (EOF).

        Args:
            data: the bytes read (bytes, bytearray or memoryview).

        Raises:
            RuntimeError: data after EOF (a bug in the caller).
            TypeError: `data` is not bytes-like.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"receive_data() takes bytes, not {type(data).__name__}")
        if self._eof:
            raise RuntimeError("receive_data() after EOF")
        if data:
            self._buf += data
        else:
            self._eof = True

    def next_event(self) -> Event | _Sentinel:
        """Take the next client message out of the buffer.

        Returns:
            An event, or `NEED_DATA` if no complete message is buffered yet (read more).  After
            Terminate, CancelRequest or EOF it returns `ConnectionClosed` for good.

        Raises:
            ProtocolViolation: the client broke the protocol (rules 2, 4, 5); sticky, so the
                shell must close the connection.
            RuntimeError: it is our turn to send (phase ENCRYPTION or AUTHENTICATION).
        """
        if self._error is not None:
            raise ProtocolViolation(f"connection already failed: {self._error}", self._error.sqlstate)
        if self.phase in _OUR_TURN:
            raise RuntimeError(f"next_event() in phase {self.phase!r}: the server must send first")
        try:
            return self._next_event()
        except ProtocolViolation as exc:
            self._error = exc
            self.phase = ERROR
            self._buf.clear()
            raise

    def send(self, message: BackendMessage) -> bytes:
        """The bytes of `message`, after checking that the phase allows it (rule 2).

        Args:
            message: the backend message to send.

        Returns:
            Its encoding, for the caller to write.

        Raises:
            RuntimeError: the phase does not allow this message (a bug in the caller).
            TypeError: `message` is not a backend message.
        """
        data = encode(message)
        following = _SEND.get(self.phase, {}).get(type(message))
        if following is None:
            raise RuntimeError(f"cannot send {type(message).__name__} in phase {self.phase!r}")
        self.phase = following
        return data

    # -- parsing -------------------------------------------------------------------------------

    def _next_event(self) -> Event | _Sentinel:
        if self.phase is CLOSED:
            return ConnectionClosed()
        while True:
            if self.phase is STARTUP:
                event = self._startup_packet()
            else:
                event = self._typed_message()
            if event is not NEED_DATA:
                return event
            if not self._eof:
                return NEED_DATA
            if self._buf:
                raise ProtocolViolation(f"connection closed mid-message ({len(self._buf)} bytes of it buffered)")
            self.phase = CLOSED
            return ConnectionClosed()

    def _take(self, total: int) -> bytes | None:
        if len(self._buf) < total:
            return None
        data = bytes(self._buf[:total])
        del self._buf[:total]
        return data

    def _startup_packet(self) -> Event | _Sentinel:
        # 55.7 StartupMessage, SSLRequest, GSSENCRequest, CancelRequest: Int32 length
        # (counting itself), Int32 code, then the code's body.
        if len(self._buf) < 4:
            return NEED_DATA
        (length,) = _INT32.unpack_from(self._buf)
        if not 8 <= length <= MAX_STARTUP_PACKET:
            raise ProtocolViolation(f"invalid length of startup packet: {length} (must be 8 to {MAX_STARTUP_PACKET})")
        packet = self._take(length)
        if packet is None:
            return NEED_DATA
        (code,) = _INT32.unpack_from(packet, 4)
        if code in (_SSL_CODE, _GSSENC_CODE):
            kind, name = (SslRequest, "SSLRequest") if code == _SSL_CODE else (GssEncRequest, "GSSENCRequest")
            if length != 8:
                raise ProtocolViolation(f"{name} of {length} bytes (must be 8)")
            if kind in self._asked:
                raise ProtocolViolation(f"{name} sent twice")
            self._asked.add(kind)
            self.phase = ENCRYPTION
            return kind()
        if code == _CANCEL_CODE:
            if length != 16:
                raise ProtocolViolation(f"CancelRequest of {length} bytes (must be 16)")
            self.phase = CLOSED
            return CancelRequest(*struct.unpack_from("!ii", packet, 8))
        if code != _PROTOCOL_3_0:
            raise ProtocolViolation(
                f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports 3.0 to 3.0", "0A000"
            )
        params = _startup_params(packet[8:])
        user = params.get("user", "")
        if not user:
            raise ProtocolViolation("no PostgreSQL user name specified in startup packet", "28000")
        self.phase = AUTHENTICATION
        return Startup(user=user, database=params.get("database") or user, params=MappingProxyType(params))

    def _typed_message(self) -> Event | _Sentinel:
        # Every message after start-up: Byte1 type, Int32 length (counting itself), body.
        while len(self._buf) >= 1:
            kind = _FRONTEND_TYPES.get(bytes(self._buf[:1]))
            if kind is None:
                raise ProtocolViolation(f"invalid frontend message type {self._buf[0]} ({bytes(self._buf[:1])!r})")
            allowed = _RECEIVE[self.phase]
            if kind not in allowed and self.phase is not SKIPPING:
                raise ProtocolViolation(f"unexpected {kind} message in phase {self.phase!r}")
            if len(self._buf) < _HEADER.size:
                return NEED_DATA
            _, length = _HEADER.unpack_from(self._buf)
            if length < 4:
                raise ProtocolViolation(f"invalid {kind} message length {length} (less than 4)")
            if length - 4 > self._max_message:
                raise ProtocolViolation(
                    f"{kind} message of {length - 4} bytes exceeds the limit of {self._max_message} bytes", "54000"
                )
            message = self._take(1 + length)
            if message is None:
                return NEED_DATA
            if kind not in allowed:
                continue  # SKIPPING: discarded until Sync (rule 6)
            body = message[_HEADER.size :]
            event = _typed_event(kind, body)
            self.phase = allowed[kind]
            return event
        return NEED_DATA


def _typed_event(kind: str, body: bytes) -> Event:
    """The event of one whole typed message (its body's layout checked, rule 4)."""
    if kind == "Query":
        return Query(_cstring_body(kind, body))
    if kind == "PasswordMessage":
        return PasswordMessage(_cstring_body(kind, body))
    if kind in ("Terminate", "Sync", "Flush") and body:
        raise ProtocolViolation(f"{kind} message has a body of {len(body)} bytes (must be empty)")
    if kind == "Terminate":
        return Terminate()
    # The extended-query messages are refused (rule 6), so their bodies are never read.
    return ExtendedMessage(kind)

