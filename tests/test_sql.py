"""Tests of the SQL session (impl/sql.py): Postgres' simple-query semantics over SQLite.

The cases follow the PostgreSQL 15 documentation, 55.2.2.1 "Multiple Statements in a Simple
Query", whose examples appear here nearly verbatim.  Everything runs on real apsw connections
(in memory, or a file for the storage-failure cases, whose VFS fails xSync on demand the way
the compute's storage will when it loses its term).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from impl.pgwire import BYTEA_OID, FLOAT8_OID, INT8_OID, TEXT_OID
from impl.sql import Column, CommandResult, Database, EmptyQuery, Session, SqlError, split_statements

LSN = 0x2_016B_3748


@pytest.fixture
def connection() -> Iterator[apsw.Connection]:
    conn = apsw.Connection(":memory:")
    yield conn
    conn.close()


@pytest.fixture
def database(connection: apsw.Connection) -> Database:
    return Database(connection, current_lsn=lambda: LSN, lock_timeout=5.0)


@pytest.fixture
def session(database: Database) -> Session:
    s = Session(database)
    assert tags(s.execute("create table t(a integer primary key, b text)")) == ["CREATE TABLE"]
    return s


def tags(results: list) -> list[str]:
    """Each result as one string: its tag, its SQLSTATE, or EMPTY."""
    out = []
    for r in results:
        if isinstance(r, CommandResult):
            out.append(r.tag)
        elif isinstance(r, SqlError):
            out.append(r.sqlstate)
        else:
            assert isinstance(r, EmptyQuery)
            out.append("EMPTY")
    return out


def value(s: Session, sql: str) -> str | None:
    """The single value of a one-row, one-column query."""
    [result] = s.execute(sql)
    assert isinstance(result, CommandResult), result
    [[v]] = result.rows
    return v


def count(s: Session) -> int:
    return int(value(s, "select count(*) from t"))


# ---------------------------------------------------------------------------------------------
# Splitting
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql, statements",
    [
        ("select 1; select 2", ["select 1;", " select 2"]),
        ("select 1", ["select 1"]),
        ("select ';'; select 2;", ["select ';';", " select 2;"]),
        ("select 1 -- ; not here\n; select 2", ["select 1 -- ; not here\n;", " select 2"]),
        ("/* ; */ select 1", ["/* ; */ select 1"]),
        ('select "a;b", [c;d], `e;f` from t; select 2', ['select "a;b", [c;d], `e;f` from t;', " select 2"]),
        (
            "create trigger tr after insert on t begin select 1; select 2; end; select 3",
            ["create trigger tr after insert on t begin select 1; select 2; end;", " select 3"],
        ),
        ("select 'it''s;'; select 2", ["select 'it''s;';", " select 2"]),
        ("select 'unterminated ; select 2", ["select 'unterminated ; select 2"]),
        ("select 1;; ;select 2", ["select 1;", "select 2"]),
        ("", []),
        ("   \n", []),
        (";", []),
        ("-- just a comment", []),
        ("/* c */ ; -- d", []),
    ],
)
def test_split_statements(sql: str, statements: list[str]) -> None:
    assert split_statements(sql) == statements


@pytest.mark.parametrize("sql", ["", "  ", ";", "-- only a comment", "/* c */ ;", ";;"])
def test_a_query_without_statements_is_empty(session: Session, sql: str) -> None:
    assert session.execute(sql) == [EmptyQuery()]


# ---------------------------------------------------------------------------------------------
# Transactions (55.2.2.1)
# ---------------------------------------------------------------------------------------------


def test_statements_of_one_query_form_one_implicit_transaction(session: Session) -> None:
    # "the failure ... will force rollback of the first INSERT"
    assert tags(session.execute("insert into t values (1, 'x'); insert into t values (1, 'dup'); insert into t values (2, 'y')")) == [
        "INSERT 0 1",
        "23505",
    ]
    assert session.transaction_status == "I"
    assert count(session) == 0


def test_a_single_statement_error_rolls_back_only_itself(session: Session) -> None:
    assert tags(session.execute("insert into t values (1, 'x')")) == ["INSERT 0 1"]
    assert tags(session.execute("insert into t values (1, 'dup')")) == ["23505"]
    assert count(session) == 1


def test_commit_inside_a_query_ends_the_first_transaction(session: Session) -> None:
    # "the first INSERT is committed by the explicit COMMIT ... the divide-by-zero failure will
    # roll back the second INSERT, but not the first one" (SQLite's failure: a missing table).
    results = session.execute(
        "begin; insert into t values (1, 'x'); commit; insert into t values (2, 'y'); select * from nope"
    )
    assert tags(results) == ["BEGIN", "INSERT 0 1", "COMMIT", "INSERT 0 1", "42P01"]
    assert session.transaction_status == "I"
    assert value(session, "select group_concat(a) from t") == "1"


def test_begin_takes_the_implicit_transaction_along(session: Session) -> None:
    # "those statements are not immediately committed; in effect, they are retroactively
    # included into the new regular transaction block"
    assert tags(session.execute("insert into t values (1, 'x'); begin; insert into t values (2, 'y')")) == [
        "INSERT 0 1", "BEGIN", "INSERT 0 1",
    ]
    assert session.transaction_status == "T"
    assert tags(session.execute("rollback")) == ["ROLLBACK"]
    assert count(session) == 0


def test_an_error_after_begin_in_one_query_leaves_a_failed_block(session: Session) -> None:
    # "the session will be left inside a failed regular transaction block, since the ROLLBACK
    # is not reached"
    assert tags(session.execute("begin; select * from nope; rollback")) == ["BEGIN", "42P01"]
    assert session.transaction_status == "E"
    assert session.in_transaction
    assert tags(session.execute("rollback")) == ["ROLLBACK"]
    assert session.transaction_status == "I"


def test_failed_block_refuses_everything_until_it_ends_and_commit_rolls_back(session: Session) -> None:
    assert tags(session.execute("begin")) == ["BEGIN"]
    assert tags(session.execute("insert into t values (1, 'x')")) == ["INSERT 0 1"]
    assert session.transaction_status == "T"
    assert tags(session.execute("insert into t values (1, 'dup')")) == ["23505"]
    assert session.transaction_status == "E"
    [refused] = session.execute("select 1")
    assert refused == SqlError(
        "25P02", "current transaction is aborted, commands ignored until end of transaction block"
    )
    assert tags(session.execute("show server_version")) == ["25P02"]
    assert tags(session.execute("commit")) == ["ROLLBACK"]
    assert session.transaction_status == "I"
    assert count(session) == 0


@pytest.mark.parametrize(
    "sql, tag, status",
    [
        ("begin", "BEGIN", "T"),
        ("BEGIN TRANSACTION", "BEGIN", "T"),
        ("begin isolation level read committed", "BEGIN", "T"),
        ("start transaction isolation level serializable, read write", "START TRANSACTION", "T"),
        ("begin immediate", "BEGIN", "T"),
        ("commit", "COMMIT", "I"),
        ("end", "COMMIT", "I"),
        ("rollback work", "ROLLBACK", "I"),
        ("abort", "ROLLBACK", "I"),
    ],
)
def test_transaction_commands_and_their_tags(session: Session, sql: str, tag: str, status: str) -> None:
    assert tags(session.execute(sql)) == [tag]
    assert session.transaction_status == status


def test_begin_inside_a_block_and_commit_outside_are_harmless(session: Session) -> None:
    assert tags(session.execute("begin; insert into t values (1, 'x'); begin")) == ["BEGIN", "INSERT 0 1", "BEGIN"]
    assert tags(session.execute("commit; commit")) == ["COMMIT", "COMMIT"]
    assert session.transaction_status == "I"
    assert count(session) == 1


@pytest.mark.parametrize("sql", ["commit now", "rollback work please", "end transaction x", "begin 5"])
def test_junk_after_a_transaction_command_is_a_syntax_error(session: Session, sql: str) -> None:
    [error] = session.execute(sql)
    assert isinstance(error, SqlError) and error.sqlstate == "42601", error
    assert session.transaction_status == "I"


def test_savepoints_work_inside_a_block_only(session: Session) -> None:
    assert tags(session.execute("savepoint a")) == ["25P01"]
    assert tags(session.execute("insert into t values (1, 'x'); release a")) == ["INSERT 0 1", "25P01"]
    assert count(session) == 0  # the implicit block rolled back
    results = session.execute(
        "begin; insert into t values (1, 'x'); savepoint a; insert into t values (2, 'y');"
        " rollback to a; release a; commit"
    )
    assert tags(results) == ["BEGIN", "INSERT 0 1", "SAVEPOINT", "INSERT 0 1", "ROLLBACK", "RELEASE", "COMMIT"]
    assert value(session, "select group_concat(a) from t") == "1"


def test_vacuum_runs_alone_but_not_inside_a_transaction(session: Session) -> None:
    assert tags(session.execute("vacuum")) == ["VACUUM"]
    assert tags(session.execute("select 1; vacuum")) == ["SELECT 1", "25001"]


def test_closing_rolls_back_an_open_block(database: Database, session: Session) -> None:
    session.execute("begin; insert into t values (1, 'x')")
    session.close()
    session.close()  # idempotent
    assert count(Session(database)) == 0
    with pytest.raises(RuntimeError, match="closed"):
        session.execute("select 1")


# ---------------------------------------------------------------------------------------------
# Tags and values
# ---------------------------------------------------------------------------------------------


def test_command_tags(session: Session) -> None:
    statements = {
        "insert into t values (1, 'x'), (2, 'y'), (3, 'z')": "INSERT 0 3",
        "replace into t values (3, 'zz')": "INSERT 0 1",
        "update t set b = b || '!' where a < 3": "UPDATE 2",
        "update t set b = 'none' where a > 100": "UPDATE 0",
        "delete from t where a = 3": "DELETE 1",
        "select * from t": "SELECT 2",
        "values (1), (2), (3)": "SELECT 3",
        "with s(n) as (select 7) select n from s": "SELECT 1",
        "with s(n) as (select 8) insert into t select n, 'w' from s": "INSERT 0 1",
        "create unique index i on t(b)": "CREATE INDEX",
        "create view v as select a from t": "CREATE VIEW",
        "create temp table tt(x)": "CREATE TABLE",
        "create table if not exists t(x)": "CREATE TABLE",
        "create trigger tr after insert on t begin select 1; end": "CREATE TRIGGER",
        "alter table t add column c integer": "ALTER TABLE",
        "drop trigger tr": "DROP TRIGGER",
        "drop view v": "DROP VIEW",
        "drop index i": "DROP INDEX",
        "drop table tt": "DROP TABLE",
        "analyze": "ANALYZE",
        "pragma user_version = 3": "PRAGMA",
        "set search_path to public": "SET",
        "reset all": "RESET",
    }
    assert tags(session.execute("; ".join(statements))) == list(statements.values())


def test_rows_are_text_and_null_stays_null(session: Session) -> None:
    session.execute("insert into t values (1, 'x'), (2, null)")
    [result] = session.execute("select a, b from t order by a")
    assert result == CommandResult(
        "SELECT 2", (Column("a", INT8_OID), Column("b", TEXT_OID)), (("1", "x"), ("2", None))
    )


def test_empty_result_still_has_its_columns(session: Session) -> None:
    [result] = session.execute("select a, b from t")
    assert result == CommandResult("SELECT 0", (Column("a", INT8_OID), Column("b", TEXT_OID)), ())


def test_statements_without_rows_have_no_columns(session: Session) -> None:
    [result] = session.execute("insert into t values (1, 'x')")
    assert result.columns is None and result.rows == ()
    [returning] = session.execute("insert into t values (2, 'y') returning a")
    assert returning == CommandResult("INSERT 0 1", (Column("a", INT8_OID),), (("2",),))


@pytest.mark.parametrize(
    "expression, text, oid",
    [
        ("42", "42", INT8_OID),
        ("-9223372036854775808", "-9223372036854775808", INT8_OID),
        ("1.5", "1.5", FLOAT8_OID),
        ("1.0", "1", FLOAT8_OID),
        ("0.1 + 0.2", "0.30000000000000004", FLOAT8_OID),
        ("100.0", "100", FLOAT8_OID),
        ("123456789012345.6", "123456789012345.6", FLOAT8_OID),
        ("1e15", "1e+15", FLOAT8_OID),
        ("2.5e16", "2.5e+16", FLOAT8_OID),
        ("0.0001", "0.0001", FLOAT8_OID),
        ("0.00001", "1e-05", FLOAT8_OID),
        ("-1.5e-7", "-1.5e-07", FLOAT8_OID),
        ("9e999", "Infinity", FLOAT8_OID),
        ("-9e999", "-Infinity", FLOAT8_OID),
        ("'héllo'", "héllo", TEXT_OID),
        ("x'00ff10'", "\\x00ff10", BYTEA_OID),
        ("x''", "\\x", BYTEA_OID),
        ("null", None, TEXT_OID),
    ],
)
def test_values_print_as_postgres_prints_them(session: Session, expression: str, text: str | None, oid: int) -> None:
    [result] = session.execute(f"select {expression} as v")
    assert result == CommandResult("SELECT 1", (Column("v", oid),), ((text,),))


@pytest.mark.parametrize(
    "query, oid",
    [
        ("select 1 union all select 2.5", FLOAT8_OID),
        ("select 1 union all select 'a'", TEXT_OID),
        ("select x'01' union all select 'a'", TEXT_OID),
        ("select null union all select 3", INT8_OID),
        ("select i from z", INT8_OID),
        ("select r from z", FLOAT8_OID),
        ("select bl from z", BYTEA_OID),
        ("select tx from z", TEXT_OID),
        ("select nu from z", TEXT_OID),
    ],
)
def test_column_types_come_from_values_else_declarations(session: Session, query: str, oid: int) -> None:
    session.execute("create table z(i integer, r real, bl blob, tx varchar(10), nu numeric)")
    session.execute("insert into z values (null, null, null, null, null)")
    [result] = session.execute(query)
    assert [c.type_oid for c in result.columns] == [oid]


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql, sqlstate, message",
    [
        ("insert into k values (1, 'x', 1, null)", "23505", "UNIQUE constraint failed: k.a"),
        ("insert into k(a) values (5)", "23502", "NOT NULL constraint failed: k.b"),
        ("insert into k values (5, 'x', 0, null)", "23514", "CHECK constraint failed: c > 0"),
        ("insert into k values (5, 'x', 1, 99)", "23503", "FOREIGN KEY constraint failed"),
        ("selec 1", "42601", 'near "selec": syntax error'),
        ("select 1 +", "42601", "incomplete input"),
        ("select 'abc", "42601", "unrecognized token: \"'abc\""),
        ("select * from nope", "42P01", "no such table: nope"),
        ("select nope from k", "42703", "no such column: nope"),
        ("create table k(x)", "42P07", "table k already exists"),
        ("select nofunc(1)", "42883", "no such function: nofunc"),
        ("select $$dollar quoted$$", "42P02", "the statement has parameters (?, :name, @name or $name), which a simple query cannot bind"),
        ("show nope", "42704", 'unrecognized configuration parameter "nope"'),
        ("pragma journal_mode = delete", "42501", "PRAGMA journal_mode is managed by the server"),
        ("select abs(-9223372036854775807 - 1)", "XX000", "integer overflow"),
    ],
)
def test_sqlite_errors_become_sqlstates(database: Database, sql: str, sqlstate: str, message: str) -> None:
    s = Session(database)
    s.execute("pragma foreign_keys = on")  # alone: inside a transaction it is a no-op
    s.execute(
        "create table p(id integer primary key);"
        " create table k(a integer primary key, b text not null, c integer check (c > 0), d integer references p(id));"
        " insert into k values (1, 'x', 1, null)"
    )
    [error] = s.execute(sql)
    assert isinstance(error, SqlError), error
    assert (error.sqlstate, error.message) == (sqlstate, message)
    assert tags(s.execute("select count(*) from k")) == ["SELECT 1"]  # the session goes on


# ---------------------------------------------------------------------------------------------
# Read-only sessions (rule 3)
# ---------------------------------------------------------------------------------------------

REASON = "this compute is read-only: pinned at 0/16B3748"


@pytest.mark.parametrize(
    "sql",
    [
        "insert into t values (1, 'x')",
        "update t set b = 'y'",
        "create table u(x)",
        "create temp table u(x)",
        "drop table t",
        "pragma user_version = 7",
    ],
)
def test_read_only_session_refuses_writes(database: Database, session: Session, sql: str) -> None:
    reader = Session(database, read_only_reason=REASON)
    assert reader.execute(sql) == [SqlError("25006", REASON)]
    assert reader.transaction_status == "I"
    assert tags(reader.execute("select * from t")) == ["SELECT 0"]


def test_read_only_session_cannot_lift_its_guard(database: Database, session: Session) -> None:
    reader = Session(database, read_only_reason=REASON)
    assert tags(reader.execute("pragma query_only = 0")) == ["42501"]
    assert tags(reader.execute("PRAGMA main.Query_Only=OFF; insert into t values (1, 'x')")) == ["42501"]
    assert tags(reader.execute("insert into t values (1, 'x')")) == ["25006"]
    assert value(reader, "pragma query_only") == "1"


def test_read_only_and_writing_sessions_share_a_database(database: Database, session: Session) -> None:
    reader = Session(database, read_only_reason=REASON)
    insert = "insert into t values (1, 'x')"
    assert tags(session.execute(insert)) == ["INSERT 0 1"]  # prepared and cached by SQLite/apsw
    assert tags(session.execute("delete from t")) == ["DELETE 1"]
    assert reader.execute(insert) == [SqlError("25006", REASON)]  # the cached statement too
    assert tags(session.execute(insert)) == ["INSERT 0 1"]
    assert count(reader) == 1


# ---------------------------------------------------------------------------------------------
# Postgres-isms
# ---------------------------------------------------------------------------------------------


def test_pg_current_wal_lsn_is_the_current_lsn_in_postgres_form(connection: apsw.Connection) -> None:
    lsns = iter([0x2_016B_3748, 0xAB, 0xFFFF_FFFF_0000_0001])
    s = Session(Database(connection, current_lsn=lambda: next(lsns)))
    assert [value(s, "select pg_current_wal_lsn()") for _ in range(3)] == ["2/16B3748", "0/AB", "FFFFFFFF/1"]


def test_version_and_show(database: Database) -> None:
    s = Session(database, settings={"application_name": "pgbench"})
    assert value(s, "select version()").startswith("PostgreSQL 15.0 (paxwal) on SQLite ")
    assert value(s, "show server_version") == "15.0 (paxwal)"
    assert value(s, "SHOW application_name") == "pgbench"
    assert value(s, "show time zone") == "UTC"
    assert value(s, "show transaction isolation level") == "serializable"
    [one] = s.execute("show datestyle")
    assert one == CommandResult("SHOW", (Column("DateStyle", TEXT_OID),), (("ISO, MDY",),))
    [everything] = s.execute("show all")
    assert ("server_encoding", "UTF8", "") in everything.rows
    assert tags(s.execute("set application_name = 'x'; set time zone 'Europe/Paris'")) == ["SET", "SET"]
    assert value(s, "show application_name") == "pgbench"  # SET is ignored


# ---------------------------------------------------------------------------------------------
# Sharing one connection (rule 2)
# ---------------------------------------------------------------------------------------------


def in_thread(s: Session, sql: str) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(s.execute(sql)), daemon=True)
    thread.start()
    return thread, out


@pytest.mark.parametrize(
    "sql, tag, rows",
    [("select count(*) from t", "SELECT 1", 1), ("begin", "BEGIN", 1), ("insert into t values (2, 'y')", "INSERT 0 1", 2)],
)
def test_other_sessions_wait_for_an_open_block(database: Database, session: Session, sql: str, tag: str, rows: int) -> None:
    other = Session(database)
    session.execute("begin; insert into t values (1, 'x')")
    thread, out = in_thread(other, sql)
    thread.join(0.3)
    # Without the wait, the other session would run inside this block and see its row.
    assert thread.is_alive() and out == []
    session.execute("commit")
    thread.join(5)
    assert not thread.is_alive()
    assert tags(out[0]) == [tag]
    other.execute("commit")
    assert count(session) == rows


def test_waiting_is_bounded_by_lock_timeout(connection: apsw.Connection) -> None:
    database = Database(connection, current_lsn=lambda: 0, lock_timeout=0.2)
    owner, other = Session(database), Session(database)
    owner.execute("create table t(a); begin; insert into t values (1)")
    started = time.monotonic()
    [error] = other.execute("insert into t values (2)")
    assert time.monotonic() - started >= 0.2
    assert error == SqlError("55P03", "could not obtain lock: another session's transaction block stayed open for 0.2 s")
    assert other.transaction_status == "I"
    assert tags(owner.execute("commit")) == ["COMMIT"]
    assert tags(other.execute("insert into t values (2)")) == ["INSERT 0 1"]


def test_a_failed_block_holds_nothing(connection: apsw.Connection) -> None:
    database = Database(connection, current_lsn=lambda: 0, lock_timeout=0.2)
    owner, other = Session(database), Session(database)
    owner.execute("create table t(a)")
    owner.execute("begin; insert into t values (1); select * from nope")
    assert owner.transaction_status == "E"
    assert tags(other.execute("select count(*) from t")) == ["SELECT 1"]
    assert value(other, "select count(*) from t") == "0"
    assert tags(owner.execute("rollback")) == ["ROLLBACK"]


# ---------------------------------------------------------------------------------------------
# Storage failures at commit (rule 4)
# ---------------------------------------------------------------------------------------------


class Fenced(Exception):
    """A storage error that names its own SQLSTATE."""

    sqlstate = "57P05"


class SyncFails(apsw.VFS):
    """The default VFS, except that xSync raises `self.failure` when it is set: the way the
    compute's storage refuses a commit it could not make durable."""

    def __init__(self, name: str) -> None:
        super().__init__(name, "")
        self.failure: Exception | None = None

    def xOpen(self, name: object, flags: list[int]) -> apsw.VFSFile:
        vfs = self

        class File(apsw.VFSFile):
            def xSync(self, flags: int) -> None:
                if vfs.failure is not None:
                    raise vfs.failure
                super().xSync(flags)

        return File("", name, flags)


@pytest.fixture
def failing(tmp_path: Path) -> Iterator[tuple[SyncFails, Session]]:
    name = f"syncfails-{id(tmp_path)}"
    vfs = SyncFails(name)
    connection = apsw.Connection(str(tmp_path / "db"), vfs=name)
    s = Session(Database(connection, current_lsn=lambda: 0))
    s.execute("create table t(a integer primary key, b text)")
    yield vfs, s
    connection.close()
    vfs.unregister()


@pytest.mark.parametrize(
    "failure, sqlstate, message",
    [
        (RuntimeError("lost the term: term 7 superseded by 8"), "58030", "lost the term: term 7 superseded by 8"),
        (Fenced("fenced by a newer compute"), "57P05", "fenced by a newer compute"),
    ],
)
@pytest.mark.parametrize(
    "sql, before",
    [
        ("insert into t values (1, 'x')", []),  # autocommit
        ("insert into t values (1, 'x'); insert into t values (2, 'y')", ["INSERT 0 1", "INSERT 0 1"]),  # implicit
        ("begin; insert into t values (1, 'x'); commit", ["BEGIN", "INSERT 0 1"]),  # explicit
    ],
)
def test_a_failed_commit_reports_the_storage_error(
    failing: tuple[SyncFails, Session], failure: Exception, sqlstate: str, message: str, sql: str, before: list[str]
) -> None:
    vfs, s = failing
    vfs.failure = failure
    results = s.execute(sql)
    assert tags(results[:-1]) == before
    assert results[-1] == SqlError(sqlstate, message)
    assert s.transaction_status == "I"
    assert not s.database.connection.in_transaction
    vfs.failure = None
    assert count(s) == 0
    assert tags(s.execute("insert into t values (3, 'z')")) == ["INSERT 0 1"]
    assert count(s) == 1


def test_a_sqlstate_on_the_cause_is_used(failing: tuple[SyncFails, Session]) -> None:
    vfs, s = failing
    try:
        raise Fenced("term 9 is newer")
    except Fenced as cause:
        wrapped = RuntimeError("commit refused")
        wrapped.__cause__ = cause
    vfs.failure = wrapped
    assert s.execute("insert into t values (1, 'x')") == [SqlError("57P05", "term 9 is newer")]
