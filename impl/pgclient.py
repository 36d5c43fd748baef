"""A minimal blocking Postgres client: enough of protocol v3 for paxwal's own tools.

`paxwal compute list`, the demo, the SQL chaos workload and the benchmarks talk to computes
with it (psql and pgbench remain the clients the tests and the demo show to users).  Simple
query only, cleartext password only (what impl/pgserver.py offers), text results.  Every
message the server sends is length-checked; anything unexpected is a `PgError` and the
connection is closed.
"""

from __future__ import annotations

import socket
import struct
from types import TracebackType

__all__ = ["PgError", "PgConnection"]

PROTOCOL_V3 = 196608
MAX_MESSAGE = 64 * 1024 * 1024


class PgError(Exception):
    """An ErrorResponse (its SQLSTATE and message), or a broken conversation ("08006")."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(f"{sqlstate}: {message}")
        self.sqlstate = sqlstate
        self.message = message


class PgConnection:
    """One session: ``with PgConnection(port, user, password, database) as pg: pg.query(sql)``."""

    def __init__(self, port: int, user: str, password: str, database: str, *, host: str = "127.0.0.1",
                 timeout: float = 30.0) -> None:
        """Connect and log in.

        Raises:
            PgError: refused (wrong password: 28P01), or the conversation broke (08006).
        """
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise PgError("08006", f"cannot connect to {host}:{port}: {exc}") from None
        self._buffer = b""
        try:
            params = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in
                              (("user", user), ("database", database), ("application_name", "paxwal")))
            body = struct.pack("!I", PROTOCOL_V3) + params + b"\0"
            self._sock.sendall(struct.pack("!I", len(body) + 4) + body)
            while True:
                kind, payload = self._receive()
                if kind == b"R" and struct.unpack("!I", payload[:4])[0] == 3:  # cleartext password
                    self._send(b"p", password.encode() + b"\0")
                elif kind == b"Z":
                    return
                elif kind == b"E":
                    raise _error(payload)
                elif kind not in (b"R", b"S", b"K", b"N"):
                    raise PgError("08P01", f"unexpected message {kind!r} during login")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> PgConnection:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._send(b"X", b"")
        except (OSError, PgError):
            pass
        self._sock.close()

    def query(self, sql: str) -> list[list[str | None]]:
        """Run a simple Query; the rows of its last statement that returned rows.

        Raises:
            PgError: the server's first ErrorResponse for the Query (after its ReadyForQuery,
                so the session goes on), or a broken conversation (08006).
        """
        self._send(b"Q", sql.encode() + b"\0")
        rows: list[list[str | None]] = []
        error: PgError | None = None
        while True:
            kind, payload = self._receive()
            if kind == b"T":
                rows = []
            elif kind == b"D":
                rows.append(_data_row(payload))
            elif kind == b"E" and error is None:
                error = _error(payload)
            elif kind == b"Z":
                if error is not None:
                    raise error
                return rows

    def _send(self, kind: bytes, body: bytes) -> None:
        try:
            self._sock.sendall(kind + struct.pack("!I", len(body) + 4) + body)
        except OSError as exc:
            raise PgError("08006", f"connection broken: {exc}") from None

    def _receive(self) -> tuple[bytes, bytes]:
        while True:
            if len(self._buffer) >= 5:
                kind, length = self._buffer[:1], struct.unpack("!I", self._buffer[1:5])[0]
                if not 4 <= length <= MAX_MESSAGE:
                    raise PgError("08P01", f"message {kind!r} of length {length}")
                if len(self._buffer) >= 1 + length:
                    payload, self._buffer = self._buffer[5 : 1 + length], self._buffer[1 + length :]
                    return kind, payload
            try:
                data = self._sock.recv(65536)
            except OSError as exc:
                raise PgError("08006", f"connection broken: {exc}") from None
            if not data:
                raise PgError("08006", "the server closed the connection")
            self._buffer += data


def _data_row(payload: bytes) -> list[str | None]:
    (count,) = struct.unpack("!H", payload[:2])
    values: list[str | None] = []
    pos = 2
    for _ in range(count):
        (length,) = struct.unpack("!i", payload[pos : pos + 4])
        pos += 4
        if length < 0:
            values.append(None)
        else:
            values.append(payload[pos : pos + length].decode())
            pos += length
    return values


def _error(payload: bytes) -> PgError:
    fields = {part[:1]: part[1:].decode(errors="replace") for part in payload.split(b"\0") if part}
    return PgError(fields.get(b"C", "XX000"), fields.get(b"M", "(no message)"))
