"""Tests of the Postgres wire protocol: the sans-IO machine (impl/pgwire.py) and its trio
shell (impl/pgserver.py) with the real clients.

* The machine replays byte captures of real psql 15 and pgbench 15 sessions, whole, byte by
  byte and in random pieces, and must see the same events each way.
* Malformed input, from a table, raises ProtocolViolation, whatever the chunking.
* Encoders produce the layouts of the PostgreSQL 15 docs, 55.7 "Message Formats".
* End to end: a server on 127.0.0.1 over an apsw database (no paxwal storage), driven by
  psql, pgbench and raw sockets, each run bounded by `trio.fail_after`.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import apsw
import pytest
import trio

from impl.pgserver import EXTENDED_REFUSED, serve_pg, threaded_sessions
from impl.pgwire import (
    INT8_OID,
    MAX_MESSAGE,
    NEED_DATA,
    AuthenticationCleartextPassword,
    AuthenticationOk,
    BackendKeyData,
    CancelRequest,
    CommandComplete,
    ConnectionClosed,
    DataRow,
    EmptyQueryResponse,
    EncryptionRefused,
    ErrorResponse,
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
    encode,
)
from impl.sql import Database

# ---------------------------------------------------------------------------------------------
# Captures: what the clients sent, recorded through a TCP proxy in front of this server
# ---------------------------------------------------------------------------------------------

# psql -X "postgresql://u:secret@127.0.0.1:PORT/db" -c "select a, b from t; select 2":
# SSLRequest (sslmode=prefer), StartupMessage, PasswordMessage, one Query, Terminate.
PSQL_C = (
    b"\x00\x00\x00\x08\x04\xd2\x16/"
    b"\x00\x00\x002\x00\x03\x00\x00user\x00u\x00database\x00db\x00application_name\x00psql\x00\x00"
    b"p\x00\x00\x00\x0bsecret\x00"
    b"Q\x00\x00\x00!select a, b from t; select 2\x00"
    b"X\x00\x00\x00\x04"
)

# psql -f of "select 1;", ";" and an INSERT: one Query per statement, the lone ';' included.
PSQL_F = (
    b"\x00\x00\x00\x08\x04\xd2\x16/"
    b"\x00\x00\x002\x00\x03\x00\x00user\x00u\x00database\x00db\x00application_name\x00psql\x00\x00"
    b"p\x00\x00\x00\x0bsecret\x00"
    b"Q\x00\x00\x00\x0eselect 1;\x00Q\x00\x00\x00\x06;\x00Q\x00\x00\x00%insert into t values (5, $$q$$);\x00"
    b"X\x00\x00\x00\x04"
)

# pgbench -M extended -t 1 (a one-line UPDATE): Parse, Bind, Describe, Execute, Sync; it gives
# up after our ErrorResponse and ReadyForQuery.
PGBENCH_EXTENDED = (
    b"\x00\x00\x00\x08\x04\xd2\x16/"
    b"\x00\x00\x005\x00\x03\x00\x00user\x00u\x00database\x00db\x00application_name\x00pgbench\x00\x00"
    b"p\x00\x00\x00\x0bsecret\x00"
    b"P\x00\x00\x00-\x00UPDATE kv SET v = v + 1 WHERE k = $1;\x00\x00\x00"
    b"B\x00\x00\x00\x15\x00\x00\x00\x00\x00\x01\x00\x00\x00\x03213\x00\x01\x00\x00"
    b"D\x00\x00\x00\x06P\x00"
    b"E\x00\x00\x00\t\x00\x00\x00\x00\x00"
    b"S\x00\x00\x00\x04"
    b"X\x00\x00\x00\x04"
)


def packet(code: int, body: bytes = b"") -> bytes:
    """An untyped start-up packet: length, code, body."""
    return struct.pack("!II", 8 + len(body), code) + body


def startup(**params: str) -> bytes:
    return packet(3 << 16, b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0")


def message(kind: bytes, body: bytes = b"") -> bytes:
    """A typed frontend message."""
    return kind + struct.pack("!I", 4 + len(body)) + body


SSL_REQUEST = packet(80877103)
GSSENC_REQUEST = packet(80877104)
LOGGED_IN = startup(user="u", database="db") + message(b"p", b"secret\0")


# The server's side of the start-up, as the shell plays it.
ANSWERS = {
    SslRequest: EncryptionRefused(),
    GssEncRequest: EncryptionRefused(),
    Startup: AuthenticationCleartextPassword(),
    PasswordMessage: AuthenticationOk(),
}


def replay(chunks: list[bytes], *, max_message: int = MAX_MESSAGE) -> list[object]:
    """Feed `chunks` then EOF to a PgConnection, answering as the shell does; its events."""
    conn = PgConnection(max_message=max_message)
    events: list[object] = []
    for chunk in [*chunks, b""]:
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, (Terminate, ConnectionClosed, CancelRequest)):
                return events
            if type(event) in ANSWERS:
                conn.send(ANSWERS[type(event)])
            elif isinstance(event, ExtendedMessage) and event.kind != "Sync":
                conn.send(ErrorResponse("0A000", EXTENDED_REFUSED))
    return events


def chunkings(data: bytes) -> dict[str, list[bytes]]:
    rng = random.Random(len(data))
    pieces, at = [], 0
    while at < len(data):
        step = rng.randint(1, 9)
        pieces.append(data[at : at + step])
        at += step
    return {"whole": [data], "bytes": [data[i : i + 1] for i in range(len(data))], "random": pieces}


# ---------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------

PSQL_STARTUP = Startup(user="u", database="db", params={"user": "u", "database": "db", "application_name": "psql"})


@pytest.mark.parametrize(
    "capture, expected",
    [
        (PSQL_C, [SslRequest(), PSQL_STARTUP, PasswordMessage("secret"), Query("select a, b from t; select 2"), Terminate()]),
        (
            PSQL_F,
            [
                SslRequest(), PSQL_STARTUP, PasswordMessage("secret"),
                Query("select 1;"), Query(";"), Query("insert into t values (5, $$q$$);"), Terminate(),
            ],
        ),
        (
            PGBENCH_EXTENDED,
            [
                SslRequest(),
                Startup(user="u", database="db", params={"user": "u", "database": "db", "application_name": "pgbench"}),
                PasswordMessage("secret"),
                ExtendedMessage("Parse"),  # Bind, Describe and Execute are discarded up to Sync
                ExtendedMessage("Sync"),
                Terminate(),
            ],
        ),
    ],
    ids=["psql -c", "psql -f", "pgbench -M extended"],
)
@pytest.mark.parametrize("chunking", ["whole", "bytes", "random"])
def test_captures_give_the_same_events_however_chunked(capture: bytes, expected: list[object], chunking: str) -> None:
    assert replay(chunkings(capture)[chunking]) == expected


def test_gssenc_then_ssl_then_startup() -> None:
    # libpq's order when it may try both: GSSENCRequest, then SSLRequest, then in the clear.
    events = replay([GSSENC_REQUEST + SSL_REQUEST + startup(user="ann") + message(b"p", b"pw\0")])
    assert events == [
        GssEncRequest(), SslRequest(), Startup(user="ann", database="ann", params={"user": "ann"}), PasswordMessage("pw"),
        ConnectionClosed(),
    ]


def test_cancel_request_ends_the_connection() -> None:
    assert replay([packet(80877102, struct.pack("!ii", 7, -9))]) == [CancelRequest(7, -9)]


def test_extended_messages_are_discarded_up_to_sync() -> None:
    events = replay([
        LOGGED_IN
        + message(b"P", b"\0select 1\0\0\0") + message(b"B", b"junk") + message(b"Q", b"select 'dropped'\0")
        + message(b"H") + message(b"S")
        + message(b"Q", b"select 2\0") + message(b"S") + message(b"H") + message(b"S") + message(b"X")
    ])
    assert events[2:] == [
        ExtendedMessage("Parse"), ExtendedMessage("Sync"),
        Query("select 2"), ExtendedMessage("Sync"),
        ExtendedMessage("Flush"), ExtendedMessage("Sync"), Terminate(),
    ]


def test_eof_between_messages_is_connection_closed() -> None:
    conn = PgConnection()
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert conn.next_event() == ConnectionClosed()


# (id, bytes, words of the violation, its SQLSTATE, max_message)
VIOLATIONS = [
    ("startup length below 8", struct.pack("!II", 4, 196608), "invalid length of startup packet: 4", "08P01"),
    ("startup length above 10000", struct.pack("!I", 10001), "invalid length of startup packet: 10001", "08P01"),
    ("http request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "invalid length of startup packet", "08P01"),
    ("protocol 2.0", packet(2 << 16, b"user\0u\0\0"), "unsupported frontend protocol 2.0: server supports 3.0 to 3.0", "0A000"),
    ("protocol 3.1", packet((3 << 16) | 1, b"user\0u\0\0"), "unsupported frontend protocol 3.1", "0A000"),
    ("startup without terminator", packet(3 << 16, b"user\0u\0"), "expected terminator as last byte", "08P01"),
    ("parameter without value", packet(3 << 16, b"user\0u\0database\0\0"), "a parameter has no value", "08P01"),
    ("empty parameter name", packet(3 << 16, b"user\0u\0\0x\0\0"), "empty parameter name", "08P01"),
    ("parameter not UTF-8", packet(3 << 16, b"user\0\xff\0\0"), "StartupMessage: invalid UTF-8 at byte 0", "22021"),
    ("no user", startup(database="db"), "no PostgreSQL user name specified in startup packet", "28000"),
    ("SSLRequest of 12 bytes", packet(80877103, b"\0\0\0\0"), "SSLRequest of 12 bytes", "08P01"),
    ("SSLRequest twice", SSL_REQUEST + SSL_REQUEST, "SSLRequest sent twice", "08P01"),
    ("CancelRequest of 12 bytes", packet(80877102, b"\0\0\0\0"), "CancelRequest of 12 bytes", "08P01"),
    ("Query before the password", startup(user="u") + message(b"Q", b"select 1\0"), "unexpected Query message in phase PASSWORD", "08P01"),
    ("unknown message type", LOGGED_IN + message(b"Z"), "invalid frontend message type 90", "08P01"),
    ("FunctionCall", LOGGED_IN + message(b"F", b"\0\0\0\1"), "unexpected FunctionCall message in phase CONNECTED", "08P01"),
    ("CopyData outside COPY", LOGGED_IN + message(b"d", b"x"), "unexpected CopyData message", "08P01"),
    ("message length below 4", LOGGED_IN + b"Q\0\0\0\3", "invalid Query message length 3", "08P01"),
    ("oversize message", LOGGED_IN + b"Q" + struct.pack("!I", 4 + MAX_MESSAGE + 1), f"Query message of {MAX_MESSAGE + 1} bytes exceeds the limit of {MAX_MESSAGE} bytes", "54000"),
    ("Query without NUL", LOGGED_IN + message(b"Q", b"select 1"), "Query message: string has no NUL terminator", "08P01"),
    ("bytes after the NUL", LOGGED_IN + message(b"Q", b"select 1\0;"), "Query message: 1 bytes after its string's NUL terminator", "08P01"),
    ("Query not UTF-8", LOGGED_IN + message(b"Q", b"select '\xe9'\0"), "Query: invalid UTF-8 at byte 8", "22021"),
    ("password without NUL", startup(user="u") + message(b"p", b"secret"), "PasswordMessage message: string has no NUL terminator", "08P01"),
    ("Terminate with a body", LOGGED_IN + message(b"X", b"!"), "Terminate message has a body of 1 bytes", "08P01"),
    ("Sync with a body", LOGGED_IN + message(b"S", b"!"), "Sync message has a body of 1 bytes", "08P01"),
    ("EOF mid-startup", startup(user="u")[:-3], "connection closed mid-message", "08P01"),
    ("EOF mid-message", LOGGED_IN + b"Q\0\0\0\x10sel", "connection closed mid-message (8 bytes of it buffered)", "08P01"),
]


@pytest.mark.parametrize("data, words, sqlstate", [v[1:] for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS])
@pytest.mark.parametrize("chunking", ["whole", "bytes"])
def test_malformed_input_is_a_protocol_violation(data: bytes, words: str, sqlstate: str, chunking: str) -> None:
    with pytest.raises(ProtocolViolation, match=words.replace("(", r"\(").replace(")", r"\)")) as caught:
        replay(chunkings(data)[chunking])
    assert caught.value.sqlstate == sqlstate


def test_a_violation_is_sticky_and_allows_one_goodbye() -> None:
    conn = PgConnection()
    conn.receive_data(b"GET / HTTP/1.1\r\n")
    with pytest.raises(ProtocolViolation):
        conn.next_event()
    with pytest.raises(ProtocolViolation, match="connection already failed: invalid length"):
        conn.next_event()
    assert conn.send(ErrorResponse("08P01", "bye", severity="FATAL")).startswith(b"E")
    with pytest.raises(RuntimeError, match="cannot send ReadyForQuery in phase ERROR"):
        conn.send(ReadyForQuery("I"))


def test_an_oversize_message_is_refused_from_its_header() -> None:
    conn = PgConnection(max_message=100)
    conn.receive_data(startup(user="u"))
    assert isinstance(conn.next_event(), Startup)
    conn.send(AuthenticationOk())
    conn.receive_data(b"Q" + struct.pack("!I", 4 + 101))  # the header only: no body yet
    with pytest.raises(ProtocolViolation, match="Query message of 101 bytes exceeds the limit of 100 bytes"):
        conn.next_event()


def test_a_message_at_the_limit_is_accepted() -> None:
    conn = PgConnection(max_message=10)
    conn.receive_data(startup(user="u") + message(b"Q", b"select 1;\0"))
    assert isinstance(conn.next_event(), Startup)
    conn.send(AuthenticationOk())
    assert conn.next_event() == Query("select 1;")


# ---------------------------------------------------------------------------------------------
# Encoders (55.7) and misuse by our own code
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend, data",
    [
        (EncryptionRefused(), b"N"),
        (AuthenticationCleartextPassword(), b"R\0\0\0\x08\0\0\0\x03"),
        (AuthenticationOk(), b"R\0\0\0\x08\0\0\0\0"),
        (ParameterStatus("TimeZone", "UTC"), b"S\0\0\0\x11TimeZone\0UTC\0"),
        (BackendKeyData(1, -2), b"K\0\0\0\x0c\0\0\0\x01\xff\xff\xff\xfe"),
        (ReadyForQuery("E"), b"Z\0\0\0\x05E"),
        (
            RowDescription([Field("a", INT8_OID), Field("b", 25)]),
            b"T\0\0\0\x2e\0\x02"
            b"a\0\0\0\0\0\0\0\0\0\0\x14\0\x08\xff\xff\xff\xff\0\0"
            b"b\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
        ),
        (DataRow(["1", None, "é"]), b"D\0\0\0\x15\0\x03\0\0\0\x011\xff\xff\xff\xff\0\0\0\x02\xc3\xa9"),
        (CommandComplete("INSERT 0 1"), b"C\0\0\0\x0fINSERT 0 1\0"),
        (EmptyQueryResponse(), b"I\0\0\0\x04"),
        (ErrorResponse("23505", "dup"), b"E\0\0\0\x1fSERROR\0VERROR\0C23505\0Mdup\0\0"),
        (ErrorResponse("XX000", "m", detail="d", severity="FATAL"), b"E\0\0\0\x20SFATAL\0VFATAL\0CXX000\0Mm\0Dd\0\0"),
    ],
)
def test_encoders(backend: object, data: bytes) -> None:
    assert encode(backend) == data


@pytest.mark.parametrize(
    "build, error",
    [
        (lambda: CommandComplete("a\0b"), ValueError),
        (lambda: ErrorResponse("2350", "m"), ValueError),
        (lambda: ErrorResponse("23505", "m", severity="PANIC"), ValueError),
        (lambda: ReadyForQuery("X"), ValueError),
        (lambda: Field("a", 23), ValueError),
        (lambda: BackendKeyData(2**31, 0), ValueError),
        (lambda: ParameterStatus("a", 1), TypeError),
        (lambda: encode(Query("select 1")), TypeError),
    ],
)
def test_bad_backend_messages_are_our_bugs(build: Callable[[], object], error: type[Exception]) -> None:
    with pytest.raises(error):
        build()


def test_phase_misuse_is_our_bug() -> None:
    conn = PgConnection()
    with pytest.raises(RuntimeError, match="cannot send DataRow in phase STARTUP"):
        conn.send(DataRow(["1"]))
    conn.receive_data(SSL_REQUEST)
    assert conn.next_event() == SslRequest()
    with pytest.raises(RuntimeError, match="the server must send first"):
        conn.next_event()
    conn.receive_data(b"")
    with pytest.raises(RuntimeError, match="after EOF"):
        conn.receive_data(b"x")
    with pytest.raises(ValueError):
        PgConnection(max_message=0)


# ---------------------------------------------------------------------------------------------
# End to end: psql, pgbench and raw sockets against the server
# ---------------------------------------------------------------------------------------------

DEADLINE = 60  # seconds one server run may take
CLIENT_TIMEOUT = 30  # seconds one psql or pgbench run may take
LSN = 0x2_016B_3748
# Without the caller's PG* variables (a PGSERVICE or PGSSLMODE would change the conversation).
ENV = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"PGCONNECT_TIMEOUT": "5"}


def with_server(scenario: Callable[[int], Awaitable[None]], path: str = ":memory:", lock_timeout: float = 10.0) -> None:
    """Run `scenario(port)` against a server over a fresh apsw database, then stop it."""
    connection = apsw.Connection(path)
    database = Database(connection, current_lsn=lambda: LSN, lock_timeout=lock_timeout)

    async def main() -> None:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                serve = functools.partial(serve_pg, threaded_sessions(database), user="u", password="secret", database="db")
                port = await nursery.start(serve)
                await scenario(port)
                nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        connection.close()


async def client(argv: list[str], **env: str) -> trio.CompletedProcess:
    with trio.fail_after(CLIENT_TIMEOUT):
        return await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False, env=ENV | env)


async def psql(
    port: int, *args: str, user: str = "u", password: str = "secret", database: str = "db"
) -> trio.CompletedProcess:
    return await client(["psql", "-X", f"postgresql://{user}:{password}@127.0.0.1:{port}/{database}", *args])


def test_psql_creates_inserts_and_selects() -> None:
    async def scenario(port: int) -> None:
        done = await psql(
            port, "-c", "create table t(a integer primary key, b text)", "-c", "insert into t values (1,'x')",
            "-c", "select * from t",
        )
        assert (done.returncode, done.stderr) == (0, b"")
        assert done.stdout.decode() == "CREATE TABLE\nINSERT 0 1\n a | b \n---+---\n 1 | x\n(1 row)\n\n"

    with_server(scenario)


def test_psql_runs_a_file_and_stops_at_the_first_error(tmp_path: Path) -> None:
    script = tmp_path / "script.sql"
    script.write_text(
        "create table t(a integer primary key, b text);\n"
        "-- a comment, then an empty statement\n;\n"
        "insert into t values (1, 'one'), (2, NULL);\n"
        "select a, b is null as missing from t order by a;\n"
        "insert into t values (1, 'again');\n"
        "insert into t values (3, 'never');\n"
    )

    async def scenario(port: int) -> None:
        done = await psql(port, "-v", "ON_ERROR_STOP=1", "-f", str(script))
        assert done.returncode == 3
        assert done.stdout.decode() == (
            "CREATE TABLE\nINSERT 0 2\n a | missing \n---+---------\n 1 |       0\n 2 |       1\n(2 rows)\n\n"
        )
        assert done.stderr.decode() == f"psql:{script}:6: ERROR:  UNIQUE constraint failed: t.a\n"
        counted = await psql(port, "-At", "-c", "select count(*) from t")
        assert counted.stdout == b"2\n"

    with_server(scenario)


def test_psql_continues_after_a_unique_violation() -> None:
    async def scenario(port: int) -> None:
        done = await psql(
            port, "-c", "create table t(a integer primary key)", "-c", "insert into t values (1)",
            "-c", "insert into t values (1)", "-c", "select count(*) as n from t",
        )
        assert done.returncode == 0
        assert done.stderr == b"ERROR:  UNIQUE constraint failed: t.a\n"
        assert done.stdout.decode().endswith(" n \n---\n 1\n(1 row)\n\n")

    with_server(scenario)


@pytest.mark.parametrize(
    "user, password, database, words",
    [
        ("u", "wrong", "db", 'FATAL:  password authentication failed for user "u"'),
        ("eve", "secret", "db", 'FATAL:  password authentication failed for user "eve"'),
        ("u", "secret", "other", 'FATAL:  database "other" does not exist'),
    ],
)
def test_psql_is_refused_with_a_wrong_user_password_or_database(user: str, password: str, database: str, words: str) -> None:
    async def scenario(port: int) -> None:
        done = await psql(port, "-c", "select 1", user=user, password=password, database=database)
        assert done.returncode == 2
        assert words in done.stderr.decode()
        assert done.stdout == b""

    with_server(scenario)


def test_psql_shows_the_current_wal_lsn() -> None:
    async def scenario(port: int) -> None:
        done = await psql(port, "-At", "-c", "select pg_current_wal_lsn()")
        assert (done.returncode, done.stdout, done.stderr) == (0, b"2/16B3748\n", b"")

    with_server(scenario)


BENCH_SCRIPT = "\\set k random(1, 1000)\nUPDATE kv SET v = v + 1 WHERE k = :k;\nSELECT v FROM kv WHERE k = :k;\n"


def pgbench(port: int, script: Path, *args: str) -> list[str]:
    return ["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "u", "-n", "-f", str(script), *args, "db"]


def test_pgbench_simple_protocol(tmp_path: Path) -> None:
    script = tmp_path / "bench.sql"
    script.write_text(BENCH_SCRIPT)

    async def scenario(port: int) -> None:
        setup = await psql(
            port, "-c", "create table kv(k integer primary key, v integer not null)",
            "-c", "with recursive n(i) as (select 1 union all select i + 1 from n where i < 1000) insert into kv select i, 0 from n",
        )
        assert setup.stdout == b"CREATE TABLE\nINSERT 0 1000\n"
        done = await client(pgbench(port, script, "-M", "simple", "-t", "200", "-c", "4"), PGPASSWORD="secret")
        assert done.returncode == 0, done.stderr.decode()
        output = done.stdout.decode()
        assert "query mode: simple" in output
        assert "number of transactions actually processed: 800/800" in output
        assert "number of failed transactions: 0 (0.000%)" in output
        total = await psql(port, "-At", "-c", "select sum(v) from kv")
        assert total.stdout == b"800\n"

    with_server(scenario)


def test_pgbench_extended_protocol_is_refused_clearly(tmp_path: Path) -> None:
    script = tmp_path / "bench.sql"
    script.write_text(BENCH_SCRIPT)

    async def scenario(port: int) -> None:
        done = await client(pgbench(port, script, "-M", "extended", "-t", "5", "-c", "1"), PGPASSWORD="secret")
        assert done.returncode == 2
        assert f"ERROR:  {EXTENDED_REFUSED}" in done.stderr.decode()
        assert "number of transactions actually processed: 0/5" in done.stdout.decode()
        still = await psql(port, "-At", "-c", "select 1")
        assert still.stdout == b"1\n"

    with_server(scenario)


class RawClient:
    """A hand-driven protocol client on a trio stream: enough to log in and run queries."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def receive(self) -> tuple[bytes, bytes] | None:
        """The next backend message as (type, body); None at EOF."""
        while len(self.buffer) < 5 or len(self.buffer) < 1 + struct.unpack_from("!I", self.buffer, 1)[0]:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.buffer += data
        end = 1 + struct.unpack_from("!I", self.buffer, 1)[0]
        kind, body, self.buffer = self.buffer[:1], self.buffer[5:end], self.buffer[end:]
        return kind, body

    async def until_ready(self) -> list[tuple[bytes, bytes]]:
        """Messages up to and including ReadyForQuery."""
        received = []
        while (item := await self.receive()) is not None:
            received.append(item)
            if item[0] == b"Z":
                return received
        raise AssertionError(f"connection closed before ReadyForQuery, after {received}")

    async def login(self) -> None:
        await self.stream.send_all(startup(user="u", database="db"))
        assert await self.receive() == (b"R", b"\0\0\0\x03")
        await self.stream.send_all(message(b"p", b"secret\0"))
        assert (await self.until_ready())[-1] == (b"Z", b"I")

    async def query(self, sql: str) -> list[tuple[bytes, bytes]]:
        await self.stream.send_all(message(b"Q", sql.encode() + b"\0"))
        return await self.until_ready()

    async def goodbye(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        rest = self.buffer
        while data := await self.stream.receive_some(65536):
            rest += data
        return rest


def test_garbage_and_oversize_messages_close_only_their_connections(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="paxwal.pgwire")

    async def scenario(port: int) -> None:
        good = await RawClient.connect(port)
        await good.login()

        garbage = await RawClient.connect(port)
        await garbage.stream.send_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        reply = await garbage.goodbye()
        assert reply.startswith(b"E") and b"SFATAL\0" in reply and b"invalid length of startup packet" in reply

        oversize = await RawClient.connect(port)
        await oversize.login()
        await oversize.stream.send_all(b"Q" + struct.pack("!I", 4 + MAX_MESSAGE + 1) + b"select ")
        reply = await oversize.goodbye()
        assert b"C54000\0" in reply and b"exceeds the limit" in reply

        answer = await good.query("select 41 + 1")
        assert (b"D", b"\0\x01\0\0\0\x0242") in answer
        assert answer[-1] == (b"Z", b"I")
        assert (await psql(port, "-At", "-c", "select 'still serving'")).stdout == b"still serving\n"
        await good.stream.aclose()

    with_server(scenario)
    reasons = [r.getMessage() for r in caplog.records if "protocol violation" in r.getMessage()]
    assert len(reasons) == 2
    assert "invalid length of startup packet" in reasons[0]
    assert "exceeds the limit" in reasons[1]


def test_ssl_is_refused_and_a_cancel_request_closes_silently() -> None:
    async def scenario(port: int) -> None:
        ssl = await RawClient.connect(port)
        await ssl.stream.send_all(SSL_REQUEST)
        assert await ssl.stream.receive_some(1) == b"N"
        await ssl.stream.send_all(GSSENC_REQUEST)
        assert await ssl.stream.receive_some(1) == b"N"
        await ssl.login()  # in the clear, on the same connection
        assert (b"C", b"SELECT 1\0") in await ssl.query("select 1")
        cancel = await RawClient.connect(port)
        await cancel.stream.send_all(packet(80877102, struct.pack("!ii", 1, 2)))
        assert await cancel.goodbye() == b""
        await ssl.stream.aclose()

    with_server(scenario)


def test_a_transaction_block_holds_off_other_connections() -> None:
    async def scenario(port: int) -> None:
        owner, other = await RawClient.connect(port), await RawClient.connect(port)
        await owner.login()
        await other.login()
        await owner.query("create table t(a integer)")
        assert (await owner.query("begin; insert into t values (1)"))[-1] == (b"Z", b"T")
        order = []

        async def count() -> None:
            answer = await other.query("select count(*) from t")
            order.append(("counted", [body for kind, body in answer if kind == b"D"]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(count)
            await trio.sleep(0.3)
            order.append(("commit sent", None))
            assert (await owner.query("commit"))[-1] == (b"Z", b"I")
        # Not answered before the COMMIT: inside the block the count would have come at once
        # (and seen the uncommitted row, on the shared connection).
        assert order == [("commit sent", None), ("counted", [b"\0\x01\0\0\0\x011"])]

    with_server(scenario)


def test_waiting_sessions_do_not_starve_the_owner_of_threads() -> None:
    # trio's shared thread limiter is lowered to 2; three sessions waiting for the owner's
    # block then hold more threads than it has.  With that shared limiter the owner's COMMIT
    # could not get a thread until the waiters gave up (55P03); each session has its own.
    async def scenario(port: int) -> None:
        trio.to_thread.current_default_thread_limiter().total_tokens = 2
        owner = await RawClient.connect(port)
        await owner.login()
        await owner.query("create table t(a integer); begin; insert into t values (1)")
        waiters = [await RawClient.connect(port) for _ in range(3)]
        answers: list[list[tuple[bytes, bytes]]] = []

        async def insert(waiter: RawClient) -> None:
            answers.append(await waiter.query("insert into t values (2)"))

        async with trio.open_nursery() as nursery:
            for waiter in waiters:
                await waiter.login()
                nursery.start_soon(insert, waiter)
            await trio.sleep(0.3)
            assert (await owner.query("commit"))[-1] == (b"Z", b"I")
        assert [a[0] for a in answers] == [(b"C", b"INSERT 0 1\0")] * 3

    with_server(scenario, lock_timeout=5.0)
