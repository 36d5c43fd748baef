"""The SQL workload of the compute chaos run (impl/chaos.py), its client history, and the check
of that history against the tables a new compute reads back.

Theory of operation
===================

`run_sqlload` runs `clients` threads, each a loop of transactions sent to a compute's Postgres
port with impl/pgclient.py, one Query at a time, and writes every transaction to a history
file (jsonl, as impl/load.py's, one line per operation, each line one `os.write` on an
O_APPEND descriptor, before and after the Query):

    {"op": "invoke", "key": "9f3a1c2e/0/17", "t": ...}
    {"op": "ack",    "key": "9f3a1c2e/0/17", "term": 3, "port": 41234, "t": ...}   committed
    {"op": "fail",   "key": "9f3a1c2e/0/17", "definite": false, "sqlstate": "08006",
     "error": "...", "port": 41234, "t": ...}                                      unknown

A key names the workload's incarnation (a random tag per process, so a restarted workload
never reuses one), the client and a sequence number.  Each transaction is one Query that
writes three rows (`transaction_sql`):

    INSERT INTO a VALUES (key, client, seq, pad_a);
    INSERT INTO b VALUES (key, client, seq, pad_b);
    INSERT INTO counts VALUES (client, 1) ON CONFLICT (client) DO UPDATE SET n = n + 1;
    SELECT paxwal_term();

inside ``BEGIN; ... COMMIT;`` for odd sequence numbers and as Postgres' implicit transaction
of a multi-statement Query for even ones (impl/sql.py rule 1), so both paths are exercised.
The pads are a function of the key and the table, of varying length, so a row read back can
be checked and the tables' B-trees split pages as they grow.

Rules:

1. An outcome is what the client was told.  A reply without error is an ack (the compute
   replies only after the commit: impl/compute.py rule 4).  Any error, reply or broken
   connection, is *outcome unknown* (``definite: false``): the client cannot tell from a
   broken connection or an 08007 whether the record reached the log, and taking no SQLSTATE
   as proof that nothing was written keeps the check independent of the compute's reasons.  The SQLSTATE is kept,
   and `verify_sql` reports how the unknowns resolved, per SQLSTATE.
2. After any error the client drops its connection and connects again (a failed explicit
   block, a fenced compute, a pageserver failure: a new session is the simple cure), trying
   each given port in turn, starting with the one that last answered; a new compute may
   listen on either (impl/chaos.py).  Each new connection creates the tables if they are
   missing (`SCHEMA`, idempotent); nothing is logged for a connection attempt.
3. A kill -9 of the workload leaves at most an invoke without its outcome (unknown) and a
   torn last line; a new incarnation first ends that line, and `read_sql_history` skips
   lines that are not JSON.  A torn line is never a write the database could hold that the
   history does not name: the invoke is written before the Query is sent.
4. The check (`verify_sql`), on the tables read back from a compute started after the
   workload stopped: every acked key is in both a and b (else *lost*); no key is in only one
   of them (*half-applied*, acked or not); no key present was never invoked (*phantom*);
   every row is as written (*corrupt*); each client's `counts.n` equals the number of its
   keys present (a lost or doubled update).  Unknown keys may be present or absent.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from impl.cluster import COMPUTE_DATABASE, COMPUTE_USER
from impl.load import percentile
from impl.pgclient import PgConnection, PgError
from impl.storage import CorruptStorage

__all__ = [
    "SCHEMA",
    "SQL_HISTORY",
    "SqlLoadSummary",
    "SqlVerdict",
    "Tables",
    "pad",
    "read_sql_history",
    "read_tables",
    "run_sqlload",
    "transaction_sql",
    "verify_sql",
]

log = logging.getLogger("paxwal.sqlload")

# The history's file name in the cluster's run directory of main (beside load's history.jsonl).
SQL_HISTORY = "sql-history.jsonl"
# The tables (rule 4); created by every new connection if missing (rule 2).
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS a (id TEXT PRIMARY KEY, client TEXT NOT NULL, seq INTEGER NOT NULL, pad TEXT NOT NULL);"
    " CREATE TABLE IF NOT EXISTS b (id TEXT PRIMARY KEY, client TEXT NOT NULL, seq INTEGER NOT NULL, pad TEXT NOT NULL);"
    " CREATE TABLE IF NOT EXISTS counts (client TEXT PRIMARY KEY, n INTEGER NOT NULL)"
)
# A Query that takes longer fails with outcome unknown (the socket timeout of every
# operation): long enough for a compute to ride out a pause or an acceptor restart.
QUERY_TIMEOUT = 20.0
# After an error, or when no port answers, a client waits this long (a compute is starting).
RETRY_PAUSE = 0.1
# The outcome of an invoke the history has no outcome for (the workload was killed).
NO_OUTCOME = "no outcome (workload killed)"


def pad(table: str, key: str) -> str:
    """The `pad` column of `key`'s row in `table`: 16 to 303 characters made from both."""
    digest = hashlib.sha256(f"{table}:{key}".encode()).hexdigest()
    return (digest * 5)[: 16 + int(digest[:4], 16) % 288]


def transaction_sql(client: str, seq: int) -> str:
    """The Query of transaction `seq` of `client` (module docstring); its last row is the
    term of the compute that ran it."""
    key = f"{client}/{seq}"
    body = (
        f"INSERT INTO a VALUES ('{key}', '{client}', {seq}, '{pad('a', key)}');"
        f" INSERT INTO b VALUES ('{key}', '{client}', {seq}, '{pad('b', key)}');"
        f" INSERT INTO counts VALUES ('{client}', 1) ON CONFLICT (client) DO UPDATE SET n = n + 1;"
        " SELECT paxwal_term();"
    )
    return f"BEGIN; {body} COMMIT;" if seq % 2 else body


# ---------------------------------------------------------------------------------------
# The workload
# ---------------------------------------------------------------------------------------


@attrs.define
class SqlLoadSummary:
    """What one `run_sqlload` did (counters updated by its client threads)."""

    incarnation: str
    acked: int = 0
    unknown: int = 0
    connects: int = 0
    latencies: list[float] = attrs.field(factory=list, repr=False)

    def percentile(self, q: float) -> float | None:
        return percentile(self.latencies, q)


class _History:
    """The history file: one `os.write` per line on an O_APPEND descriptor (rule 3), so the
    client threads' lines never interleave and a kill tears at most the last one."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        size = os.fstat(self.fd).st_size
        if size:
            with open(path, "rb") as file:
                file.seek(size - 1)
                if file.read(1) != b"\n":  # the last incarnation was killed mid-line
                    os.write(self.fd, b"\n")

    def write(self, op: str, key: str, **fields: Any) -> None:
        line = json.dumps({"op": op, "key": key, "t": round(time.time(), 6), **fields}) + "\n"
        os.write(self.fd, line.encode())

    def close(self) -> None:
        os.close(self.fd)


class _Client:
    """One client thread's loop (rules 1 and 2)."""

    def __init__(self, number: int, ports: Sequence[int], password: str, history: _History,
                 summary: SqlLoadSummary, stop: threading.Event) -> None:
        self.name = f"{summary.incarnation}/{number}"
        self.ports = list(ports)
        self.password = password
        self.history = history
        self.summary = summary
        self.stop = stop

    def _connect(self) -> tuple[PgConnection, int] | None:
        for port in list(self.ports):
            try:
                pg = PgConnection(port, COMPUTE_USER, self.password, COMPUTE_DATABASE, timeout=QUERY_TIMEOUT)
            except PgError:
                continue
            try:
                pg.query(SCHEMA)
            except PgError:
                pg.close()
                continue
            self.ports.remove(port)
            self.ports.insert(0, port)  # try it first next time
            self.summary.connects += 1
            return pg, port
        return None

    def run(self) -> None:
        connection: tuple[PgConnection, int] | None = None
        seq = 0
        try:
            while not self.stop.is_set():
                if connection is None:
                    connection = self._connect()
                    if connection is None:
                        self.stop.wait(RETRY_PAUSE)
                        continue
                pg, port = connection
                key = f"{self.name}/{seq}"
                self.history.write("invoke", key)
                began = time.monotonic()
                try:
                    rows = pg.query(transaction_sql(self.name, seq))
                except Exception as exc:  # any failure: outcome unknown (rule 1)
                    sqlstate = exc.sqlstate if isinstance(exc, PgError) else type(exc).__name__
                    self.history.write("fail", key, definite=False, sqlstate=sqlstate, error=str(exc)[:300], port=port)
                    self.summary.unknown += 1
                    pg.close()
                    connection = None
                    self.stop.wait(RETRY_PAUSE)
                else:
                    term = int(rows[0][0]) if rows and rows[0] and rows[0][0] is not None else None
                    self.history.write("ack", key, term=term, port=port)
                    self.summary.acked += 1
                    self.summary.latencies.append(time.monotonic() - began)
                seq += 1
        finally:
            if connection is not None:
                connection[0].close()


def run_sqlload(ports: Sequence[int], password: str, history_path: Path, clients: int, seconds: float,
                stop: threading.Event | None = None,
                progress: Callable[[SqlLoadSummary, float], None] | None = None) -> SqlLoadSummary:
    """Run the workload against the computes on `ports` (127.0.0.1) for `seconds` (math.inf:
    until `stop` is set), appending to the history at `history_path` (module docstring).

    Args:
        ports: where a compute may listen; each client tries them in turn (rule 2).
        password: the cluster's compute password.
        history_path: the history file, appended to (created if missing).
        clients: concurrent clients, each a thread with one Query outstanding.
        seconds: how long.
        stop: set it to stop early; each client stops after its current Query.
        progress: called about once a second with the summary and the seconds elapsed.

    Returns:
        The summary, once every client stopped (or QUERY_TIMEOUT after the end, for a client
        stuck in a Query: its thread is a daemon and dies with the process).
    """
    stop = stop if stop is not None else threading.Event()
    summary = SqlLoadSummary(secrets.token_hex(4))
    history = _History(history_path)
    threads = [threading.Thread(target=_Client(n, ports, password, history, summary, stop).run,
                                name=f"sqlload-{n}", daemon=True) for n in range(clients)]
    started = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        while not stop.is_set() and time.monotonic() - started < seconds:
            stop.wait(min(1.0, max(0.0, seconds - (time.monotonic() - started))))
            if progress is not None:
                progress(summary, time.monotonic() - started)
    finally:
        stop.set()
        deadline = time.monotonic() + QUERY_TIMEOUT + 5
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        history.close()
    return summary


# ---------------------------------------------------------------------------------------
# Reading back and checking (rule 4)
# ---------------------------------------------------------------------------------------


@attrs.frozen
class Tables:
    """The workload's tables as a compute returned them.

    Attributes:
        a, b: key -> (client, seq, pad) of each row.
        counts: client -> n.
        lsn: the compute's pg_current_wal_lsn() when it read them.
        term: its term.
    """

    a: dict[str, tuple[str, int, str]]
    b: dict[str, tuple[str, int, str]]
    counts: dict[str, int]
    lsn: str
    term: int


def read_tables(port: int, password: str, timeout: float = 120.0) -> Tables:
    """Read tables a, b and counts from the compute on `port` (a missing table reads empty).

    Raises:
        PgError: the compute failed or is not there.
    """
    with PgConnection(port, COMPUTE_USER, password, COMPUTE_DATABASE, timeout=timeout) as pg:
        pg.query(SCHEMA)  # a run that never got to create them reads them empty
        tables = {}
        for table in ("a", "b"):
            tables[table] = {key: (client, int(seq), text)  # type: ignore[arg-type]
                             for key, client, seq, text in pg.query(f"SELECT id, client, seq, pad FROM {table}")}
        counts = {client: int(n) for client, n in pg.query("SELECT client, n FROM counts")}  # type: ignore[arg-type]
        ((lsn, term),) = pg.query("SELECT pg_current_wal_lsn(), paxwal_term()")
    return Tables(tables["a"], tables["b"], counts, str(lsn), int(term))  # type: ignore[arg-type]


def read_sql_history(path: Path) -> Iterator[dict[str, Any]]:
    """The history's operations; torn lines (a kill mid-write, rule 3) are skipped."""
    with open(path) as file:
        for line in file:
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


@attrs.frozen
class SqlVerdict:
    """What `verify_sql` found (rule 4).

    Attributes:
        invoked: transactions invoked.
        acked: transactions acknowledged.
        lost: acked keys in neither table: must be empty.
        half_applied: keys in exactly one of a and b: must be empty.
        phantom: keys present that were never invoked, or failed definitely: must be empty.
        corrupt: keys whose row is not as written: must be empty.
        counters_off: (client, counts.n, keys of it present) that disagree: must be empty.
        unknown: per outcome (SQLSTATE, or NO_OUTCOME), [present, absent] of the
            transactions whose outcome the client never learned.
        rows: rows in a.
    """

    invoked: int
    acked: int
    lost: list[str]
    half_applied: list[str]
    phantom: list[str]
    corrupt: list[str]
    counters_off: list[tuple[str, int, int]]
    unknown: dict[str, list[int]]
    rows: int

    @property
    def ok(self) -> bool:
        return not (self.lost or self.half_applied or self.phantom or self.corrupt or self.counters_off)

    @property
    def unknown_present(self) -> int:
        return sum(present for present, _ in self.unknown.values())

    @property
    def unknown_absent(self) -> int:
        return sum(absent for _, absent in self.unknown.values())


def verify_sql(operations: Sequence[dict[str, Any]], tables: Tables) -> SqlVerdict:
    """Check a history against the tables read back after the workload stopped (rule 4)."""
    invoked: set[str] = set()
    outcome: dict[str, dict[str, Any]] = {}
    for op in operations:
        if op["op"] == "invoke":
            invoked.add(op["key"])
        elif op["key"] not in invoked:
            raise CorruptStorage(f"the history has an outcome of {op['key']} before its invoke: {op}")
        else:
            outcome[op["key"]] = op
    present_a, present_b = set(tables.a), set(tables.b)
    acked = {key for key, op in outcome.items() if op["op"] == "ack"}
    refused = {key for key, op in outcome.items() if op["op"] == "fail" and op.get("definite")}
    lost = sorted(key for key in acked if key not in present_a and key not in present_b)
    half = sorted(present_a ^ present_b)
    present = present_a | present_b
    phantom = sorted((present - invoked) | (present & refused))
    corrupt = []
    for table, rows in (("a", tables.a), ("b", tables.b)):
        for key, row in rows.items():
            client, _, seq = key.rpartition("/")
            if row != (client, int(seq) if seq.isdigit() else -1, pad(table, key)):
                corrupt.append(key)
    per_client = collections.Counter(key.rpartition("/")[0] for key in present_a)
    counters_off = sorted((client, tables.counts.get(client, 0), per_client.get(client, 0))
                          for client in set(per_client) | set(tables.counts)
                          if tables.counts.get(client, 0) != per_client.get(client, 0))
    unknown: dict[str, list[int]] = {}
    for key in invoked - acked - refused:
        op = outcome.get(key)
        reason = NO_OUTCOME if op is None else op.get("sqlstate") or "?"
        entry = unknown.setdefault(reason, [0, 0])
        entry[0 if key in present else 1] += 1
    return SqlVerdict(len(invoked), len(acked), lost, half, phantom, sorted(set(corrupt)), counters_off, unknown,
                      len(tables.a))
