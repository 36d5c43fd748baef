"""The Postgres protocol server: a thin trio shell around impl/pgwire.py and SQL sessions.

Theory of operation
===================

The compute's clients (`psql`, `pgbench -M simple`) connect here (DESIGN.md §7).  What their
bytes mean is decided by the sans-IO `PgConnection` (impl/pgwire.py); what their SQL does, by
a session (impl/sql.py).  This file only reads, feeds, writes and waits.  Rules:

1. One task per connection (`trio.serve_listeners`), on 127.0.0.1 unless told otherwise.
   The socket is read only when the machine answers `NEED_DATA`.
2. Start-up: SSLRequest and GSSENCRequest are refused with 'N' (the client goes on in the
   clear); a CancelRequest closes its connection silently (we cancel nothing); a
   StartupMessage is answered with AuthenticationCleartextPassword.  A wrong user or password
   is refused with FATAL 28P01 "password authentication failed for user ...", the same words
   for both, as in Postgres, so a client cannot probe which users exist; a wrong database
   with FATAL 3D000.  Then AuthenticationOk, ParameterStatus (`SERVER_PARAMETERS`, and
   application_name echoed), BackendKeyData and ReadyForQuery.
3. Queries: each Query goes to `session.execute`; its results become RowDescription,
   DataRow... and CommandComplete, EmptyQueryResponse or ErrorResponse, then ReadyForQuery
   with the session's transaction status, written with one send.  Nothing is sent before
   `execute` returns, so a session that must hold a reply back (until its commit is durable)
   simply returns later.  An extended-query message is answered with ErrorResponse 0A000
   ("use simple query"); the machine then discards up to the Sync, answered ReadyForQuery.
4. Sessions come from `session_factory(startup)`: any `AsyncSession`.  `ThreadedSession`
   adapts a synchronous `impl.sql.Session`: each call runs in a worker thread
   (`trio.to_thread.run_sync`, never abandoned, so SQLite is never left mid-call), one call
   at a time per session (a `trio.Lock`).  Each session has its own CapacityLimiter(1)
   instead of trio's shared one of 40 threads: a session waiting for another's transaction
   block blocks its thread (sql.py rule 2), and 40 waiters must not leave the block's owner
   without a thread to COMMIT in.
5. The end: Terminate, EOF, a ProtocolViolation or the server's cancellation closes the
   session (an open block rolls back), shielded from cancellation, then the socket.  A
   ProtocolViolation is logged with its reason (logger "paxwal.pgwire") and answered with one
   FATAL ErrorResponse carrying its SQLSTATE; an unexpected exception is logged with its
   traceback.  Either closes that connection only; the server keeps serving the others.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Protocol

import attrs
import trio

from impl.framing import READ_SIZE
from impl.pgwire import (
    MAX_MESSAGE,
    NEED_DATA,
    SERVER_PARAMETERS,
    AuthenticationCleartextPassword,
    AuthenticationOk,
    BackendKeyData,
    BackendMessage,
    CancelRequest,
    CommandComplete,
    ConnectionClosed,
    DataRow,
    EmptyQueryResponse,
    EncryptionRefused,
    ErrorResponse,
    Event,
    ExtendedMessage,
    Field,
    GssEncRequest,
    ParameterStatus,
    PasswordMessage,
    PgConnection,
    ProtocolViolation,
    Query,
    ReadyForQuery,
    RowDescription,
    SslRequest,
    Startup,
    Terminate,
)
from impl.sql import CommandResult, Database, EmptyQuery, Session, SqlError, StatementResult

__all__ = ["EXTENDED_REFUSED", "AsyncSession", "ThreadedSession", "serve_pg", "threaded_sessions"]

log = logging.getLogger("paxwal.pgwire")

# The answer to the extended query protocol (pgwire.py rule 6), naming the way out.
EXTENDED_REFUSED = "extended query protocol is not supported; use simple query (psql, pgbench -M simple)"

# How long the FATAL goodbye after a violation may take: the client may not be reading.
_GOODBYE_TIMEOUT = 1.0


class AsyncSession(Protocol):
    """What the server needs of a session (rule 4)."""

    @property
    def transaction_status(self) -> str:
        """ReadyForQuery's status: 'I', 'T' or 'E'."""

    async def execute(self, sql: str) -> list[StatementResult]:
        """Run one Query's text; see `impl.sql.Session.execute`."""

    async def close(self) -> None:
        """End the session, rolling back an open block."""


class ThreadedSession:
    """An `AsyncSession` running a synchronous `impl.sql.Session` in a thread (rule 4).

    Attributes (read-only):
        session: the synchronous session.
    """

    def __init__(self, session: Session) -> None:
        """Args:
            session: the session to run; only this object may call it from now on.
        """
        self.session = session
        self._lock = trio.Lock()
        self._limiter = trio.CapacityLimiter(1)

    @property
    def transaction_status(self) -> str:
        """The session's ReadyForQuery status ('I', 'T' or 'E')."""
        return self.session.transaction_status

    async def execute(self, sql: str) -> list[StatementResult]:
        """Run `Session.execute` in a worker thread.

        Args:
            sql: the Query's text.

        Returns:
            Its results (see `impl.sql.Session.execute`).

        Raises:
            RuntimeError: the session is closed.
        """
        async with self._lock:
            return await trio.to_thread.run_sync(self.session.execute, sql, limiter=self._limiter)

    async def close(self) -> None:
        """Run `Session.close` in a worker thread (an open block rolls back)."""
        async with self._lock:
            await trio.to_thread.run_sync(self.session.close, limiter=self._limiter)


def threaded_sessions(database: Database, *, read_only_reason: str | None = None) -> Callable[[Startup], ThreadedSession]:
    """A `session_factory` for `serve_pg`: a new Session on `database` per connection.

    Args:
        database: the shared connection every session borrows (sql.py rule 2).
        read_only_reason: passed to every Session (sql.py rule 3).

    Returns:
        The factory; its sessions report the client's application_name in SHOW.
    """

    def factory(startup: Startup) -> ThreadedSession:
        settings = {"application_name": startup.params.get("application_name", "")}
        return ThreadedSession(Session(database, read_only_reason=read_only_reason, settings=settings))

    return factory


@attrs.frozen(kw_only=True)
class _Config:
    session_factory: Callable[[Startup], AsyncSession]
    user: str
    password: str = attrs.field(repr=False)
    database: str
    max_message: int


class _Client:
    """One connection: its stream and its protocol machine (rule 1)."""

    def __init__(self, stream: trio.SocketStream, max_message: int) -> None:
        self.stream = stream
        self.wire = PgConnection(max_message=max_message)
        try:
            host, port = stream.socket.getpeername()[:2]
            self.peer = f"{host}:{port}"
        except OSError:
            self.peer = "?"

    async def next_event(self) -> Event:
        while (event := self.wire.next_event()) is NEED_DATA:
            self.wire.receive_data(await self.stream.receive_some(READ_SIZE))
        return event

    async def send(self, *messages: BackendMessage) -> None:
        await self.stream.send_all(b"".join(self.wire.send(m) for m in messages))


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _replies(results: list[StatementResult]) -> Iterator[BackendMessage]:
    for result in results:
        match result:
            case CommandResult(tag=tag, columns=columns, rows=rows):
                if columns is not None:
                    yield RowDescription([Field(c.name, c.type_oid) for c in columns])
                for row in rows:
                    yield DataRow(row)
                yield CommandComplete(tag)
            case EmptyQuery():
                yield EmptyQueryResponse()
            case SqlError(sqlstate=sqlstate, message=message):
                yield ErrorResponse(sqlstate, message)


async def _start(client: _Client) -> Startup | None:
    """Up to the StartupMessage (rule 2); None if the connection ends before it."""
    while True:
        match await client.next_event():
            case SslRequest() | GssEncRequest():
                await client.send(EncryptionRefused())
            case Startup() as startup:
                return startup
            case CancelRequest() | ConnectionClosed():
                return None


async def _authenticate(client: _Client, startup: Startup, config: _Config) -> bool:
    """The password exchange (rule 2); True if the client may go on."""
    await client.send(AuthenticationCleartextPassword())
    event = await client.next_event()
    if isinstance(event, ConnectionClosed):
        return False  # psql does this when it has no password yet: it asks, then reconnects
    assert isinstance(event, PasswordMessage), event  # the machine's PASSWORD phase admits no other
    # `&`, not `and`: both are compared, so the time taken does not tell which was wrong.
    if not (_equal(startup.user, config.user) & _equal(event.password, config.password)):
        log.info("pgwire: %s: password authentication failed for user %r", client.peer, startup.user)
        await client.send(
            ErrorResponse("28P01", f'password authentication failed for user "{startup.user}"', severity="FATAL")
        )
        return False
    if startup.database != config.database:
        await client.send(ErrorResponse("3D000", f'database "{startup.database}" does not exist', severity="FATAL"))
        return False
    return True


async def _serve_queries(client: _Client, session: AsyncSession, startup: Startup) -> None:
    """From AuthenticationOk to Terminate or EOF (rules 2 and 3)."""
    parameters = dict(SERVER_PARAMETERS) | {"application_name": startup.params.get("application_name", "")}
    await client.send(
        AuthenticationOk(),
        *(ParameterStatus(name, value) for name, value in parameters.items()),
        BackendKeyData(secrets.randbits(31), secrets.randbits(31)),
        ReadyForQuery(session.transaction_status),
    )
    while True:
        match await client.next_event():
            case Query(sql=sql):
                results = await session.execute(sql)
                await client.send(*_replies(results), ReadyForQuery(session.transaction_status))
            case ExtendedMessage(kind="Sync"):
                await client.send(ReadyForQuery(session.transaction_status))
            case ExtendedMessage():
                await client.send(ErrorResponse("0A000", EXTENDED_REFUSED))
            case Terminate() | ConnectionClosed():
                return


async def _serve_connection(stream: trio.SocketStream, config: _Config) -> None:
    client = _Client(stream, config.max_message)
    try:
        startup = await _start(client)
        if startup is None or not await _authenticate(client, startup, config):
            return
        session = config.session_factory(startup)
        try:
            await _serve_queries(client, session, startup)
        finally:
            with trio.CancelScope(shield=True):
                await session.close()
    except ProtocolViolation as exc:
        log.info("pgwire: %s: closed: protocol violation: %s", client.peer, exc)
        with trio.move_on_after(_GOODBYE_TIMEOUT):
            try:
                await client.send(ErrorResponse(exc.sqlstate, str(exc), severity="FATAL"))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.debug("pgwire: %s: connection lost: %s", client.peer, exc)
    except Exception:  # noqa: BLE001 - a bug in one connection must not stop the others (rule 5)
        log.exception("pgwire: %s: internal error; connection closed", client.peer)
    finally:
        await trio.aclose_forcefully(stream)


async def serve_pg(
    session_factory: Callable[[Startup], AsyncSession],
    *,
    port: int = 0,
    host: str = "127.0.0.1",
    user: str,
    password: str,
    database: str,
    max_message: int = MAX_MESSAGE,
    listeners: list[trio.SocketListener] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the Postgres protocol until cancelled (see the module docstring).

    Args:
        session_factory: makes the session of each authenticated connection from its
            StartupMessage (`threaded_sessions(database)` for SQLite sessions).
        port, host: where to listen (port 0: any free port, reported to `task_status`).
        user, password, database: the one account clients must name (rule 2).
        max_message: the largest message body a client may send (pgwire.py rule 4).
        listeners: sockets bound already (then `port` and `host` are not used): a caller
            that must know the port is its own before a slow start-up binds first.
        task_status: `started(port)` once listening.

    Resource handling:
        Each connection's session is closed when its connection ends, also on cancellation.

    Error handling:
        OSError if the port cannot be bound.  Errors of one connection (protocol violations,
        broken sockets, bugs) are logged and close that connection only (rule 5).
    """
    config = _Config(
        session_factory=session_factory, user=user, password=password, database=database, max_message=max_message
    )
    if listeners is None:
        listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("pgwire: listening on %s:%d for user %r, database %r", host, bound, user, database)

    async def handler(stream: trio.SocketStream) -> None:
        await _serve_connection(stream, config)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(bound)
