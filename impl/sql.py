"""The SQL session: Postgres' simple-query semantics over one shared SQLite (apsw) connection.

Theory of operation
===================

The compute speaks Postgres (impl/pgwire.py, impl/pgserver.py) but runs SQLite (DESIGN.md §7):
the dialect is SQLite's, the conversation is Postgres'.  This file is that conversation: a
`Session` per client connection turns one Query's text into one reply per statement.  It is
synchronous and does no I/O besides SQLite's; the trio shell runs it in a thread.  Rules:

1. A Query is run as Postgres runs it (PostgreSQL 15 docs, 55.2.2.1 "Multiple Statements in a
   Simple Query").  Its statements, split by SQLite's own `sqlite3_complete` (`apsw.complete`,
   so a trigger body's semicolons stay inside), run in order and stop at the first error.
   Outside an explicit block they form one implicit transaction: committed at the end of the
   Query, rolled back on an error.  BEGIN (also ``START TRANSACTION``, with any modes) opens an
   explicit block, taking along the statements of the implicit one before it; COMMIT (END)
   and ROLLBACK (ABORT) close it, and statements after them start a new implicit block.  An
   error inside an explicit block leaves the session in the failed state 'E': every statement
   answers 25P02 until COMMIT or ROLLBACK, and both answer ``ROLLBACK``.  A Query with no
   statement (blank, comments, a lone ``;``) answers EmptyQueryResponse.  A Query of one
   statement runs in SQLite's autocommit mode, which is the same transaction; that lets
   statements SQLite refuses or ignores inside a transaction (VACUUM, PRAGMA foreign_keys)
   work when sent alone, as VACUUM does in Postgres.
2. Sessions share one apsw connection serially (`Database`).  In the compute there is one
   SQLite connection (locking_mode=EXCLUSIVE) for all clients, so a transaction is the
   connection's, not a client's.  A session must own the `Database` to run SQL: it takes
   ownership for a Query's first SQLite statement and gives it back at the end of the Query,
   unless it is then inside an explicit block, which it owns until COMMIT or ROLLBACK.  Any
   other session's statement, a BEGIN or an autocommit SELECT alike, waits for the owner,
   bounded by `Database.lock_timeout` (10 s); then it answers 55P03 "could not obtain lock".
   A waiter blocks its own thread only.  A failed block ('E') has already been rolled back in
   SQLite and owns nothing, so a client that never ends it delays nobody.
3. Read-only sessions (`read_only_reason`): SQLite's ``PRAGMA query_only`` refuses every write
   at execution time, cached statements included, whatever the statement (INSERT, DDL,
   PRAGMA user_version, temp tables).  It is set to the owner's need whenever ownership
   passes, and an authorizer refuses any client statement that sets `query_only`,
   `journal_mode` or `locking_mode` (42501), which the server manages; our own PRAGMA bypasses
   the statement cache, so a client's identical text is always authorized afresh.
4. Errors become SQLSTATEs (`_sql_error` holds the whole table): constraints
   23505/23502/23503/23514, syntax 42601, unknown table/column/function 42P01/42703/42883,
   existing table 42P07, read-only 25006 with the session's reason, a managed PRAGMA 42501,
   unbindable parameters 42P02, anything else from SQLite XX000.  An exception that is not
   SQLite's comes from a callback: the storage VFS's commit (xSync) surfaces as an error of
   the COMMIT or autocommit statement, so it is the storage's failure, 58030 (io_error), with
   its own message.  If the exception, or its __cause__ or __context__, has a `sqlstate`
   attribute, that SQLSTATE is used instead.  After any error, a transaction still open in
   SQLite is rolled back; the session goes on.
5. Values are sent as text, typed per column from the values (SQLite is dynamically typed):
   all integers int8, integers and reals float8, blobs bytea, anything else text; a column
   with no non-NULL value takes its declared type's affinity.  Floats print as Postgres
   prints float8 (shortest round-trip digits, d.ddde-XX below 1e-4 and from 1e15, 'Infinity'),
   blobs as ``\\x`` hex, NULL as NULL.  Command tags are Postgres': ``INSERT 0 n``,
   ``UPDATE n``, ``DELETE n``, ``SELECT n`` (rows returned), ``CREATE TABLE``,
   ``DROP INDEX``..., else the first keyword.  CREATE TABLE AS answers ``CREATE TABLE``, not
   Postgres' ``SELECT n``: SQLite does not count the rows it copies.
6. Postgres-isms clients send: SET and RESET are accepted and ignored; SHOW answers
   `SERVER_PARAMETERS` (impl/pgwire.py), application_name and transaction_isolation;
   ``pg_current_wal_lsn()`` is the database's `current_lsn()` as ``X/YYYYYYYY``;
   ``version()`` is Postgres-like.  BEGIN's modes (ISOLATION LEVEL, READ ONLY, SQLite's
   IMMEDIATE) are accepted and ignored: SQLite is serializable, and a read-only block would
   need its own guard.  SAVEPOINT, RELEASE and ROLLBACK TO work inside an
   explicit block only (25P01 elsewhere, as in Postgres), since in SQLite a SAVEPOINT
   outside a transaction would open one behind the session's back.
7. Threads: a Session is used by one thread at a time (the shell's `ThreadedSession` makes
   sure); different sessions may run on different threads, because every SQLite call happens
   under ownership (rule 2).
"""

from __future__ import annotations

import decimal
import logging
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import apsw
import attrs

from impl.pgwire import BYTEA_OID, FLOAT8_OID, INT8_OID, SERVER_PARAMETERS, TEXT_OID
from impl.wire import format_lsn

__all__ = [
    "LOCK_TIMEOUT",
    "VERSION",
    "Column",
    "CommandResult",
    "Database",
    "EmptyQuery",
    "Session",
    "SqlError",
    "StatementResult",
    "split_statements",
]

log = logging.getLogger("paxwal.sql")

# How long a statement waits for another session's transaction block (rule 2).  Postgres
# waits forever by default; a bound turns a client that forgot COMMIT into a clear error.
LOCK_TIMEOUT = 10.0

# What `version()` answers: drivers parse "PostgreSQL <version>" from its start.
VERSION = f"PostgreSQL {SERVER_PARAMETERS['server_version']} on SQLite {apsw.sqlite_lib_version()}"

# PRAGMAs the server manages and clients may not set (rule 3): query_only is the read-only
# guard; the compute's storage relies on the journal and locking modes it opened with.
_MANAGED_PRAGMAS = frozenset({"query_only", "journal_mode", "locking_mode"})

_ABORTED = "current transaction is aborted, commands ignored until end of transaction block"


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class Column:
    """A result column: its name and Postgres type OID (rule 5)."""

    name: str
    type_oid: int


@attrs.frozen
class CommandResult:
    """A statement that succeeded.

    Attributes:
        tag: the CommandComplete tag (rule 5).
        columns: the columns, or None for a statement that returns none (then no
            RowDescription is sent).
        rows: the rows, each value text or None (NULL).
    """

    tag: str
    columns: tuple[Column, ...] | None = None
    rows: tuple[tuple[str | None, ...], ...] = ()


@attrs.frozen
class EmptyQuery:
    """The Query held no statement."""


@attrs.frozen
class SqlError:
    """A statement that failed; the Query's later statements were skipped (rule 1).

    Attributes:
        sqlstate: Postgres' five-character error code (rule 4).
        message: the text for the client (psql prints ``ERROR:  <message>``).
    """

    sqlstate: str
    message: str


StatementResult: TypeAlias = CommandResult | EmptyQuery | SqlError


class _Failed(Exception):
    """A statement failed; carries the reply.  Raised and caught inside this file only."""

    def __init__(self, error: SqlError) -> None:
        super().__init__(error.message)
        self.error = error


# ---------------------------------------------------------------------------------------------
# Splitting and tokens
# ---------------------------------------------------------------------------------------------

# What may hide a ';' from the splitter, as SQLite lexes it (tokenize.c): strings, quoted
# identifiers ("x", `x`, [x]) and comments, each running to the end if unterminated.
_HIDING = re.compile(
    r"""'[^']*(?:''[^']*)*'?|"[^"]*(?:""[^"]*)*"?|`[^`]*(?:``[^`]*)*`?|\[[^\]]*\]?"""
    r"""|--[^\n]*|/\*.*?(?:\*/|\Z)|;""",
    re.S,
)

# Significant tokens, for classifying statements.  Blanks and comments are skipped.
_TOKEN = re.compile(
    r"""\s+|--[^\n]*|/\*.*?(?:\*/|\Z)
    |(?P<string>'[^']*(?:''[^']*)*'?)
    |(?P<quoted>"[^"]*(?:""[^"]*)*"?|`[^`]*(?:``[^`]*)*`?|\[[^\]]*\]?)
    |(?P<word>[^\W\d]\w*)
    |(?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)
    |(?P<other>.)""",
    re.S | re.X,
)


@attrs.frozen
class _Token:
    kind: str  # word, string, quoted, number or other
    text: str

    @property
    def word(self) -> str | None:
        """The keyword, uppercased, if this is a bare word."""
        return self.text.upper() if self.kind == "word" else None


def _tokens(text: str) -> list[_Token]:
    tokens = [_Token(m.lastgroup, m.group()) for m in _TOKEN.finditer(text) if m.lastgroup]
    while tokens and tokens[-1].text == ";":
        tokens.pop()
    return tokens


def split_statements(sql: str) -> list[str]:
    """Split a Query's text into statements, as SQLite would run them (rule 1).

    A statement ends at a ';' that SQLite's `sqlite3_complete` accepts as its end, so the ';'
    inside a string, a comment or a CREATE TRIGGER body does not split.  Pieces holding no
    statement (blanks, comments, lone ';') are dropped.

    Args:
        sql: the Query's text.

    Returns:
        The statements, in order, each with its own ';' if it had one.
    """
    pieces: list[str] = []
    start = 0
    for match in _HIDING.finditer(sql):
        if match.group() == ";" and apsw.complete(sql[start : match.end()]):
            pieces.append(sql[start : match.end()])
            start = match.end()
    pieces.append(sql[start:])
    return [piece for piece in pieces if _tokens(piece)]


# The kinds of statement the session handles itself (rules 1 and 6); the rest go to SQLite.
_BEGIN, _COMMIT, _ROLLBACK, _SAVEPOINT, _SET, _SHOW, _SQL = "begin", "commit", "rollback", "savepoint", "set", "show", "sql"


def _kind(words: Sequence[str | None]) -> str:
    first = words[0]
    if first == "BEGIN" or (first == "START" and words[1:2] == ["TRANSACTION"]):
        return _BEGIN
    if first in ("COMMIT", "END"):
        return _COMMIT
    if first in ("ROLLBACK", "ABORT"):
        return _SAVEPOINT if "TO" in words else _ROLLBACK
    if first in ("SAVEPOINT", "RELEASE"):
        return _SAVEPOINT
    if first in ("SET", "RESET"):
        return _SET
    if first == "SHOW":
        return _SHOW
    return _SQL


def _syntax_error(token: _Token) -> _Failed:
    return _Failed(SqlError("42601", f'syntax error at or near "{token.text}"'))


def _check_control_tail(tokens: list[_Token], kind: str) -> None:
    """Refuse what Postgres' grammar refuses after BEGIN/COMMIT/ROLLBACK, so a typo is not
    taken for a transaction command.  BEGIN may carry modes (ISOLATION LEVEL ..., READ WRITE,
    SQLite's DEFERRED/IMMEDIATE ...), which change nothing: SQLite is serializable."""
    tail = tokens[2:] if tokens[0].word == "START" else tokens[1:]
    if kind == _BEGIN:
        for token in tail:
            if token.kind != "word" and token.text != ",":
                raise _syntax_error(token)
    else:
        allowed = 1 if tail and tail[0].word in ("WORK", "TRANSACTION") else 0
        if len(tail) > allowed:
            raise _syntax_error(tail[allowed])


def _main_verb(tokens: list[_Token]) -> str:
    """The statement's verb; for WITH, the verb after the common table expressions."""
    verb = tokens[0].word or ""
    if verb != "WITH":
        return verb
    depth = 0
    for token in tokens[1:]:
        if token.text == "(":
            depth += 1
        elif token.text == ")":
            depth -= 1
        elif depth == 0 and token.word in ("SELECT", "VALUES", "INSERT", "REPLACE", "UPDATE", "DELETE"):
            return token.word
    return verb


def _tag(tokens: list[_Token], rows: int, changes: int) -> str:
    """Postgres' CommandComplete tag for a statement SQLite ran (rule 5)."""
    verb = _main_verb(tokens)
    if verb in ("SELECT", "VALUES"):
        return f"SELECT {rows}"
    if verb in ("INSERT", "REPLACE"):
        return f"INSERT 0 {changes}"
    if verb in ("UPDATE", "DELETE"):
        return f"{verb} {changes}"
    words = [t.word for t in tokens]
    if verb == "CREATE":
        rest = [w for w in words[1:] if w not in ("TEMP", "TEMPORARY", "UNIQUE", "VIRTUAL")]
        return f"CREATE {rest[0] or ''}".rstrip() if rest else verb
    if verb in ("DROP", "ALTER"):
        return f"{verb} {words[1] or ''}".rstrip()
    return verb


# ---------------------------------------------------------------------------------------------
# Values (rule 5)
# ---------------------------------------------------------------------------------------------


def _format_float(value: float) -> str:
    """float8 as Postgres 15 prints it (float8out, extra_float_digits 1: the shortest digits
    that round-trip, printf-%g-like layout: fixed for exponents -4..14, else d.ddde+XX)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    sign, digits, exponent = decimal.Decimal(repr(value)).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    # exponent of the first digit: repr gave digits * 10**exponent.
    point = len(digits) + exponent - 1 if text != "0" else 0
    minus = "-" if sign else ""
    if -4 <= point < 15:
        if point < 0:
            return f"{minus}0.{'0' * (-point - 1)}{text}"
        whole, fraction = text[: point + 1].ljust(point + 1, "0"), text[point + 1 :]
        return f"{minus}{whole}.{fraction}" if fraction else f"{minus}{whole}"
    mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
    return f"{minus}{mantissa}e{'-' if point < 0 else '+'}{abs(point):02d}"


def _render(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _format_float(value)
    return "\\x" + bytes(value).hex()


def _declared_oid(decltype: str | None) -> int:
    # SQLite's affinity rules (datatype3.html §3.1), for a column with no value to look at.
    declared = (decltype or "").upper()
    if "INT" in declared:
        return INT8_OID
    if any(s in declared for s in ("CHAR", "CLOB", "TEXT")) or not declared:
        return TEXT_OID
    if "BLOB" in declared:
        return BYTEA_OID
    if any(s in declared for s in ("REAL", "FLOA", "DOUB")):
        return FLOAT8_OID
    return TEXT_OID


def _column_oid(values: list[Any], decltype: str | None) -> int:
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return _declared_oid(decltype)
    if kinds == {int}:
        return INT8_OID
    if kinds <= {int, float}:
        return FLOAT8_OID
    if kinds == {bytes}:
        return BYTEA_OID
    return TEXT_OID


def _rows_result(tag: str, description: tuple[tuple[Any, ...], ...], rows: list[tuple[Any, ...]]) -> CommandResult:
    if not description:
        return CommandResult(tag)
    columns = tuple(
        Column(entry[0], _column_oid([row[i] for row in rows], entry[1])) for i, entry in enumerate(description)
    )
    return CommandResult(tag, columns, tuple(tuple(_render(v) for v in row) for row in rows))


# ---------------------------------------------------------------------------------------------
# Errors (rule 4)
# ---------------------------------------------------------------------------------------------

_CONSTRAINT_SQLSTATES: Mapping[int, str] = {
    apsw.SQLITE_CONSTRAINT_UNIQUE: "23505",
    apsw.SQLITE_CONSTRAINT_PRIMARYKEY: "23505",
    apsw.SQLITE_CONSTRAINT_NOTNULL: "23502",
    apsw.SQLITE_CONSTRAINT_FOREIGNKEY: "23503",
    apsw.SQLITE_CONSTRAINT_CHECK: "23514",
}

# SQLITE_ERROR says little; its message says which.  First match wins.
_MESSAGE_SQLSTATES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), sqlstate)
    for pattern, sqlstate in (
        (r"^near .*: syntax error$|^incomplete input$|^unrecognized token", "42601"),
        (r"^no such table", "42P01"),
        (r"^no such column", "42703"),
        (r"^no such function|^wrong number of arguments to function", "42883"),
        (r"^(table|index|view) .* already exists$", "42P07"),
        (r"^cannot VACUUM from within a transaction", "25001"),
    )
)

_CLASS_SQLSTATES: tuple[tuple[type[Exception], str], ...] = (
    (apsw.ConstraintError, "23000"),
    (apsw.IOError, "58030"),
    (apsw.CantOpenError, "58030"),
    (apsw.FullError, "53100"),
    (apsw.CorruptError, "XX001"),
    (apsw.NotADBError, "XX001"),
    (apsw.InterruptError, "57014"),
    (apsw.TooBigError, "54000"),
)


def _carried_sqlstate(exc: BaseException) -> tuple[str, BaseException] | None:
    for candidate in (exc, exc.__cause__, exc.__context__):
        sqlstate = getattr(candidate, "sqlstate", None)
        if candidate is not None and isinstance(sqlstate, str) and re.fullmatch(r"[0-9A-Z]{5}", sqlstate):
            return sqlstate, candidate
    return None


def _message(exc: BaseException) -> str:
    # ErrorResponse strings are NUL-terminated: a NUL in a message would cut it.
    return (str(exc) or type(exc).__name__).replace("\0", "\\0")


def _sql_error(exc: Exception, read_only_reason: str | None, denied: str | None) -> SqlError:
    """The reply for an exception out of SQLite or one of its callbacks (rule 4)."""
    carried = _carried_sqlstate(exc)
    if carried is not None:
        return SqlError(carried[0], _message(carried[1]))
    message = _message(exc)
    if not isinstance(exc, apsw.Error):
        log.warning("sql: storage or callback failure: %s: %s", type(exc).__name__, message)
        return SqlError("58030", message)
    if isinstance(exc, apsw.ReadOnlyError):
        return SqlError("25006", read_only_reason or message)
    if isinstance(exc, apsw.AuthError):
        return SqlError("42501", denied or message)
    if isinstance(exc, apsw.BindingsError):
        # SQLite's parameters (?, :name, @name, $name; also Postgres' $$ quoting, which it
        # reads as one) have no values in a simple Query.
        return SqlError("42P02", "the statement has parameters (?, :name, @name or $name), which a simple query cannot bind")
    if isinstance(exc, apsw.ConstraintError):
        return SqlError(_CONSTRAINT_SQLSTATES.get(getattr(exc, "extendedresult", 0), "23000"), message)
    if isinstance(exc, apsw.SQLError):
        sqlstate = next((s for pattern, s in _MESSAGE_SQLSTATES if pattern.search(message)), "XX000")
        return SqlError(sqlstate, message)
    sqlstate = next((s for cls, s in _CLASS_SQLSTATES if isinstance(exc, cls)), "XX000")
    return SqlError(sqlstate, message)


# ---------------------------------------------------------------------------------------------
# The shared connection (rule 2)
# ---------------------------------------------------------------------------------------------


class Database:
    """One apsw Connection, shared serially by Sessions (rules 2 and 3).

    It registers ``pg_current_wal_lsn()`` and ``version()`` on the connection and installs
    its authorizer; nothing else may set the connection's authorizer.

    Attributes (read-only):
        connection: the apsw Connection.
        lock_timeout: seconds a statement waits for another session's block (rule 2).
    """

    def __init__(
        self, connection: apsw.Connection, *, current_lsn: Callable[[], int], lock_timeout: float = LOCK_TIMEOUT,
        on_acquire: Callable[[], None] | None = None,
    ) -> None:
        """Args:
            connection: the SQLite connection, outside any transaction.
            current_lsn: returns the compute's commit LSN, for ``pg_current_wal_lsn()``.
            lock_timeout: see the attribute.
            on_acquire: called in the acquiring thread whenever a session takes ownership
                with no transaction open (a replica moves its snapshot forward there); an
                exception from it fails the statement (rule 4) and releases ownership.

        Raises:
            ValueError: `lock_timeout` is negative, or `connection` is inside a transaction.
        """
        if lock_timeout < 0:
            raise ValueError(f"lock_timeout must be >= 0, not {lock_timeout!r}")
        if connection.in_transaction:
            raise ValueError("the connection is inside a transaction")
        self.connection = connection
        self.lock_timeout = lock_timeout
        self._owner: Session | None = None
        self._on_acquire = on_acquire
        self._changed = threading.Condition()
        self._query_only = bool(connection.execute("PRAGMA query_only").get)
        self._internal = False
        # Why the authorizer refused the last statement, for its error (rule 3).
        self._denied: str | None = None
        connection.authorizer = self._authorize
        connection.create_scalar_function("pg_current_wal_lsn", lambda: format_lsn(current_lsn()), 0)
        connection.create_scalar_function("version", lambda: VERSION, 0)

    def _authorize(self, operation: int, name: str | None, value: str | None, _db: str | None, _via: str | None) -> int:
        if (
            operation == apsw.SQLITE_PRAGMA and value is not None and not self._internal
            and (name or "").lower() in _MANAGED_PRAGMAS
        ):
            self._denied = f"PRAGMA {name.lower()} is managed by the server"
            return apsw.SQLITE_DENY
        return apsw.SQLITE_OK

    def acquire(self, session: Session) -> bool:
        """Make `session` the owner, waiting up to `lock_timeout` for the current one.

        Args:
            session: the session about to run SQL.

        Returns:
            True once `session` owns the connection (at once if it already did); False if
            another session kept it for `lock_timeout` seconds.

        Raises:
            apsw.Error: switching ``PRAGMA query_only`` failed (ownership is then released).
            Exception: from `on_acquire` (ownership is then released).
        """
        with self._changed:
            if not self._changed.wait_for(lambda: self._owner in (None, session), timeout=self.lock_timeout):
                return False
            fresh, self._owner = self._owner is None, session
        if fresh and self._on_acquire is not None and not self.connection.in_transaction:
            try:
                self._on_acquire()
            except BaseException:
                self.release(session)
                raise
        read_only = session.read_only_reason is not None
        if read_only != self._query_only:
            self._internal = True
            try:
                # can_cache=False: a cached, pre-authorized copy would let a client's identical
                # text skip the authorizer (rule 3).
                self.connection.cursor().execute(f"PRAGMA query_only={int(read_only)}", can_cache=False)
                self._query_only = read_only
            except BaseException:
                self.release(session)
                raise
            finally:
                self._internal = False
        return True

    def release(self, session: Session) -> None:
        """Give up ownership if `session` holds it, waking the waiters.

        Args:
            session: the session that is done with the connection for now.
        """
        with self._changed:
            if self._owner is session:
                self._owner = None
                self._changed.notify_all()

    def owned_by(self, session: Session) -> bool:
        """Whether `session` owns the connection now.

        Args:
            session: any session of this database.

        Returns:
            True if it does.
        """
        return self._owner is session


# ---------------------------------------------------------------------------------------------
# The session
# ---------------------------------------------------------------------------------------------


class Session:
    """One client's SQL session on a shared `Database` (see the module docstring).

    Attributes (read-only):
        database: the Database it borrows.
        read_only_reason: why writes are refused (the 25006 message), or None.
    """

    def __init__(
        self, database: Database, *, read_only_reason: str | None = None, settings: Mapping[str, str] | None = None
    ) -> None:
        """Args:
            database: the shared connection.
            read_only_reason: if given, every write is refused with SQLSTATE 25006 and this
                message (rule 3).
            settings: values `SHOW` reports besides `SERVER_PARAMETERS`, e.g. the client's
                application_name.
        """
        self.database = database
        self.read_only_reason = read_only_reason
        self._status = "I"  # I idle, T in a block, E failed block (ReadyForQuery's letters)
        self._implicit = False  # an implicit transaction is open in SQLite (rule 1)
        self._closed = False
        shown = dict(SERVER_PARAMETERS) | {"application_name": "", "transaction_isolation": "serializable"}
        shown |= settings or {}
        self._settings = {name.lower(): (name, value) for name, value in shown.items()}

    @property
    def transaction_status(self) -> str:
        """ReadyForQuery's status: 'I' idle, 'T' in a transaction block, 'E' in a failed one."""
        return self._status

    @property
    def in_transaction(self) -> bool:
        """Whether an explicit transaction block is open (failed or not)."""
        return self._status != "I"

    def execute(self, sql: str) -> list[StatementResult]:
        """Run one Query's text (rule 1).

        Args:
            sql: the Query's text: zero or more statements.

        Returns:
            One result per statement run, in order: `CommandResult`s, then an `SqlError` if a
            statement failed (the rest were skipped); or ``[EmptyQuery()]``.  A failing
            implicit commit appends its `SqlError` after the statements' results.  The shell
            sends them, then ReadyForQuery with `transaction_status`.

        Raises:
            RuntimeError: the session is closed.
        """
        if self._closed:
            raise RuntimeError("execute() on a closed Session")
        statements = split_statements(sql)
        if not statements:
            return [EmptyQuery()]
        results: list[StatementResult] = []
        try:
            for text in statements:
                try:
                    results.append(self._run(text, multi=len(statements) > 1))
                except _Failed as failed:
                    results.append(failed.error)
                    self._abort()
                    break
            else:
                if self._implicit:
                    self._implicit = False
                    try:
                        self._control("COMMIT")
                    except _Failed as failed:
                        results.append(failed.error)
                        self._abort()
        finally:
            if self._implicit:  # only if an exception escaped: nothing may stay open
                self._abort()
            if self._status != "T":
                self.database.release(self)
        return results

    def close(self) -> None:
        """End the session: roll back its open block, if any, and give up the connection.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._abort()
        self._status = "I"
        self.database.release(self)

    # -- statements ----------------------------------------------------------------------------

    def _run(self, text: str, multi: bool) -> CommandResult:
        tokens = _tokens(text)
        kind = _kind([t.word for t in tokens])
        if self._status == "E":
            if kind in (_COMMIT, _ROLLBACK):
                self._status = "I"
                return CommandResult("ROLLBACK")
            raise _Failed(SqlError("25P02", _ABORTED))
        if kind == _BEGIN:
            _check_control_tail(tokens, kind)
            return self._begin(tokens)
        if kind in (_COMMIT, _ROLLBACK):
            _check_control_tail(tokens, kind)
            return self._end("COMMIT" if kind == _COMMIT else "ROLLBACK")
        if kind == _SET:
            return CommandResult(tokens[0].word or "SET")
        if kind == _SHOW:
            return self._show(tokens)
        if kind == _SAVEPOINT and self._status != "T":
            what = {"SAVEPOINT": "SAVEPOINT", "RELEASE": "RELEASE SAVEPOINT"}.get(tokens[0].word or "", "ROLLBACK TO SAVEPOINT")
            raise _Failed(SqlError("25P01", f"{what} can only be used in transaction blocks"))
        if self._status == "I" and not self._implicit:
            self._acquire()
            if multi:
                self._control("BEGIN")
                self._implicit = True
        description, rows = self._sqlite(text)
        return _rows_result(_tag(tokens, len(rows), self.database.connection.changes()), description, rows)

    def _begin(self, tokens: list[_Token]) -> CommandResult:
        tag = "START TRANSACTION" if tokens[0].word == "START" else "BEGIN"
        if self._status == "T":
            return CommandResult(tag)  # Postgres warns "there is already a transaction in progress"
        if self._implicit:
            self._implicit = False  # the implicit block becomes the explicit one (rule 1)
        else:
            self._acquire()
            self._control("BEGIN")
        self._status = "T"
        return CommandResult(tag)

    def _end(self, verb: str) -> CommandResult:
        if self._status == "T" or self._implicit:
            # Closed before SQLite answers: if COMMIT fails, the error path must not take the
            # session for still inside the block.
            self._status, self._implicit = "I", False
            self._control(verb)
        # else Postgres warns "there is no transaction in progress" and does nothing
        return CommandResult(verb)

    def _show(self, tokens: list[_Token]) -> CommandResult:
        words = [t.word or t.text.lower() for t in tokens[1:]]
        if words == ["ALL"]:
            rows = tuple((name, value, "") for name, value in sorted(self._settings.values()))
            columns = tuple(Column(n, TEXT_OID) for n in ("name", "setting", "description"))
            return CommandResult("SHOW", columns, rows)
        wanted = {"TIME ZONE": "timezone", "TRANSACTION ISOLATION LEVEL": "transaction_isolation"}.get(
            " ".join(w.upper() for w in words), "".join(t.text for t in tokens[1:]).strip('"').lower()
        )
        if wanted not in self._settings:
            raise _Failed(SqlError("42704", f'unrecognized configuration parameter "{wanted}"'))
        name, value = self._settings[wanted]
        return CommandResult("SHOW", (Column(name, TEXT_OID),), ((value,),))

    # -- SQLite --------------------------------------------------------------------------------

    def _acquire(self) -> None:
        try:
            acquired = self.database.acquire(self)
        except Exception as exc:  # noqa: BLE001 - SQLite's, or on_acquire's (rule 4 maps both)
            raise _Failed(self._error(exc)) from exc
        if not acquired:
            raise _Failed(SqlError(
                "55P03",
                f"could not obtain lock: another session's transaction block stayed open for"
                f" {self.database.lock_timeout:g} s",
            ))

    def _sqlite(self, text: str) -> tuple[tuple[tuple[Any, ...], ...], list[tuple[Any, ...]]]:
        """Run one statement; returns its description (name, decltype, ...) and rows."""
        descriptions: list[tuple[tuple[Any, ...], ...]] = []

        def trace(cursor: apsw.Cursor, _sql: str, _bindings: object) -> bool:
            # The description exists only while the statement runs: a SELECT of no rows is
            # complete when execute() returns, and must still announce its columns.
            descriptions.append(cursor.description)
            return True

        self.database._denied = None
        cursor = self.database.connection.cursor()
        cursor.exec_trace = trace
        try:
            rows = list(cursor.execute(text))
        except Exception as exc:  # noqa: BLE001 - SQLite's or a callback's (rule 4)
            raise _Failed(self._error(exc)) from exc
        return (descriptions[-1] if descriptions else ()), rows

    def _control(self, verb: str) -> None:
        """BEGIN, COMMIT or ROLLBACK in SQLite (a COMMIT may fail in storage, rule 4)."""
        try:
            self.database.connection.execute(verb)
        except Exception as exc:  # noqa: BLE001 - SQLite's or the VFS's
            raise _Failed(self._error(exc)) from exc

    def _error(self, exc: Exception) -> SqlError:
        return _sql_error(exc, self.read_only_reason, self.database._denied)

    def _abort(self) -> None:
        """After an error (rule 1): a block becomes failed, and whatever this session still
        has open in SQLite is rolled back, whether it said BEGIN or SQLite kept it open."""
        if self._status == "T":
            self._status = "E"
        self._implicit = False
        connection = self.database.connection
        if self.database.owned_by(self) and connection.in_transaction:
            try:
                connection.execute("ROLLBACK")
            except Exception as exc:  # noqa: BLE001 - nothing to answer; the next BEGIN will say
                log.warning("sql: rollback after an error failed: %s: %s", type(exc).__name__, _message(exc))
