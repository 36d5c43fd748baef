"""pgbench against a compute, beside PostgreSQL 15 alone and with two synchronous standbys.

The systems, each in turn, each on the same machine, data in one temporary directory:

* ``paxwal``: a fresh cluster (`paxwal cluster up`: three acceptor processes and a
  pageserver) and one compute (`paxwal compute start`), both run as this checkout's CLI;
  `paxwal cluster down` at the end, however the run ends.
* ``postgres``: one PostgreSQL 15 server (`initdb`, `pg_ctl start`) with its default, durable
  settings (fsync on, synchronous_commit on, full_page_writes on), on 127.0.0.1.
* ``postgres_2sync``: a PostgreSQL 15 primary with two streaming standbys made by
  `pg_basebackup -R` (application names s1 and s2) and ``synchronous_standby_names = 'ANY 1
  (s1, s2)'``: each commit waits for its own fsync and one standby's, which is what a
  paxwal commit waits for (two of three acceptors).  pgbench runs against the primary.

Postgres refuses to run as root.  When this process is root the servers run as the
``postgres`` system user if there is one, else ``nobody`` (`runuser -u USER --`), in a
directory that user owns; `pg_ctl stop` ends each, or SIGKILL to its postmaster if that
fails.  Without the PostgreSQL 15 server binaries (`PG_BIN`) both baselines are skipped
and the figures say so.

Each system gets the same tables, ``kv(k integer primary key, v text)`` with `ROWS` rows and
an empty ``history(k integer, v text)``, filled through impl/pgclient.py, and the same two
pgbench scripts (`SCRIPTS`), run with ``-M simple -n`` (the compute speaks the simple query
protocol only) at 1 and 16 clients (``-c 16 -j 2``) for `seconds_per_run(seconds)` each:

* ``update``: one autocommit UPDATE of a random row to a random new value, so every
  transaction writes (a WAL record on each system);
* ``txn``: BEGIN; UPDATE a random row; SELECT another; INSERT into history; END (pgbench's
  tpcb-like shape on these tables).

Figures per system, script and clients: tps (pgbench's, "without initial connection time")
and the latency's p50/p99 in ms, from pgbench's per-transaction logs (``-l``; field 3 is
the latency in microseconds); then the ratio of paxwal's tps to each baseline's.

The machine's 1-minute load average at the start and the end is printed too: the systems run
one after the other, so other work on the machine during the run skews the ratios.

Goal (issue 9, this 2-core machine): at 16 clients, the update script, paxwal's tps at least
that of PostgreSQL with two synchronous standbys.  The figures say whether it is met; tests
never assert it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from bench.cluster import percentile
from impl.cluster import Cluster, free_ports
from impl.pgclient import PgConnection

__all__ = ["NAME", "connect", "paxwal", "paxwal_cluster", "pgbench", "postgres", "run", "seconds_per_run"]

NAME = "sql"

# Where Debian's PostgreSQL 15 server binaries live; pgbench is the client on PATH.
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PGBENCH = shutil.which("pgbench") or str(PG_BIN / "pgbench")

ROWS = 10_000
CLIENTS = (1, 16)
THREADS = 2  # pgbench -j at 16 clients: one per core
SCRIPTS = {
    "update": (
        f"\\set k random(1, {ROWS})\n"
        "\\set r random(1, 1000000000)\n"
        "UPDATE kv SET v = 'v' || :r WHERE k = :k;\n"
    ),
    "txn": (
        f"\\set k random(1, {ROWS})\n"
        f"\\set k2 random(1, {ROWS})\n"
        "\\set r random(1, 1000000000)\n"
        "BEGIN;\n"
        "UPDATE kv SET v = 'v' || :r WHERE k = :k;\n"
        "SELECT v FROM kv WHERE k = :k2;\n"
        "INSERT INTO history (k, v) VALUES (:k, 'v' || :r);\n"
        "END;\n"
    ),
}
SYSTEMS = ("paxwal", "postgres", "postgres_2sync")
BASELINES = {"postgres": 0, "postgres_2sync": 2}  # system -> its synchronous standbys

GOAL = ("update", 16)  # the script and clients of the goal: paxwal tps >= postgres_2sync tps

# Bounds of the commands (a slow, shared machine): the CLI's cluster up/down and compute
# start, a Postgres command (initdb, pg_ctl, pg_basebackup), and pgbench beyond its -T.
CLI_TIMEOUT = 120.0
PG_TIMEOUT = 120.0
PGBENCH_SLACK = 60.0
# How long the standbys may take to stream and be counted as synchronous.
STANDBY_TIMEOUT = 60.0

_REPO = Path(__file__).resolve().parent.parent
_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)


def seconds_per_run(seconds: float) -> int:
    """pgbench's -T for each of the twelve runs (3 systems x 2 scripts x 2 client counts)."""
    return max(2, int(seconds / 8))


# -- paxwal --------------------------------------------------------------------------------


def paxwal(*args: str, timeout: float = CLI_TIMEOUT) -> str:
    """Run `paxwal ARGS` (this checkout's CLI) and return its stdout; RuntimeError if it fails."""
    try:
        done = subprocess.run([sys.executable, "-m", "impl.cli", *args], cwd=_REPO, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"`paxwal {' '.join(args)}` did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        raise RuntimeError(f"`paxwal {' '.join(args)}` exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


@contextlib.contextmanager
def paxwal_cluster(directory: Path) -> Iterator[Cluster]:
    """`paxwal cluster up --dir DIRECTORY` for the block, `paxwal cluster down` after it
    (also on errors; if down fails, every process with a pid file there is killed)."""
    try:
        paxwal("cluster", "up", "--dir", str(directory))
        yield Cluster(directory)
    finally:
        try:
            if (directory / "cluster.json").exists():
                paxwal("cluster", "down", "--dir", str(directory))
        except RuntimeError:
            _kill_pid_files(directory)
            raise


def _kill_pid_files(directory: Path) -> None:
    cluster = Cluster(directory)
    for pid_file in sorted((directory / "pids").glob("*.pid")):
        if (pid := cluster.pid(pid_file.stem)) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- PostgreSQL ------------------------------------------------------------------------------


def _pg_user() -> str | None:
    """The user the servers run as: None (ourselves) unless we are root (Postgres refuses)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and there is no postgres or nobody user to run PostgreSQL as")


def _pg(user: str | None, *command: str, log: Path) -> None:
    """Run a PostgreSQL command as `user`, its output appended to `log`; RuntimeError if it fails."""
    argv = [*(["runuser", "-u", user, "--"] if user else []), *command]
    with log.open("ab") as out:
        try:
            code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=PG_TIMEOUT).returncode
        except subprocess.TimeoutExpired:
            code = None
    if code != 0:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
        raise RuntimeError(f"{' '.join(command[:2])} {'timed out' if code is None else f'exited with {code}'}: {tail}")


class _Postgres:
    """The servers of one baseline, all under `root` (owned by `user`)."""

    def __init__(self, root: Path, user: str | None) -> None:
        self.root = root
        self.user = user
        self.log = root / "commands.log"
        self.data_dirs: list[Path] = []

    def start(self, data: Path, port: int) -> None:
        self.data_dirs.append(data)
        _pg(self.user, str(PG_BIN / "pg_ctl"), "start", "-D", str(data), "-w", "-t", str(int(PG_TIMEOUT)),
            "-l", str(data.with_suffix(".log")),
            "-o", f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root}", log=self.log)

    def stop_all(self) -> None:
        """Stop every server started (standbys first): pg_ctl stop, else SIGKILL its postmaster."""
        for data in reversed(self.data_dirs):
            try:
                _pg(self.user, str(PG_BIN / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w",
                    "-t", "30", log=self.log)
            except RuntimeError:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    pid = int((data / "postmaster.pid").read_text().split()[0])
                    os.kill(pid, signal.SIGKILL)


def _query(port: int, sql: str) -> list[list[str | None]]:
    with connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout=30) as pg:
        return pg.query(sql)


@contextlib.contextmanager
def postgres(root: Path, standbys: int) -> Iterator[str]:
    """A PostgreSQL 15 primary with `standbys` synchronous standbys (0 or 2) for the block.

    Yields:
        The primary's connection URI.
    """
    user = _pg_user()
    root.mkdir()
    if user is not None:
        shutil.chown(root, user, user)
    servers = _Postgres(root, user)
    try:
        port, *standby_ports = free_ports(1 + standbys)
        primary = root / "primary"
        _pg(user, str(PG_BIN / "initdb"), "-D", str(primary), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--locale=C", log=servers.log)
        servers.start(primary, port)
        names = [f"s{i}" for i in range(1, standbys + 1)]
        for name, standby_port in zip(names, standby_ports):
            data = root / name
            _pg(user, str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                "-D", str(data), "-R", "-X", "stream", "-c", "fast", log=servers.log)
            with (data / "postgresql.auto.conf").open("a") as conf:  # the later setting wins
                conf.write(f"primary_conninfo = 'host=127.0.0.1 port={port} user=postgres application_name={name}'\n")
            servers.start(data, standby_port)
        if names:
            _query(port, f"ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 ({', '.join(names)})'")
            _query(port, "SELECT pg_reload_conf()")
            deadline = time.monotonic() + STANDBY_TIMEOUT
            while True:
                rows = _query(port, "SELECT application_name FROM pg_stat_replication"
                                    " WHERE state = 'streaming' AND sync_state = 'quorum'")
                if sorted(row[0] or "" for row in rows) == names:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the standbys {names} are not synchronous after {STANDBY_TIMEOUT:g} s:"
                                       f" pg_stat_replication says {rows}")
                time.sleep(0.1)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        servers.stop_all()


def _postgres_version() -> str:
    done = subprocess.run([str(PG_BIN / "postgres"), "--version"], capture_output=True, text=True, timeout=30)
    return done.stdout.strip()


# -- pgbench ---------------------------------------------------------------------------------


@attrs.frozen
class PgbenchRun:
    """One pgbench run's figures."""

    tps: float
    p50_ms: float
    p99_ms: float
    transactions: int
    failed: int


def connect(uri: str, timeout: float = 60.0) -> PgConnection:
    """A pgclient connection to ``postgresql://USER[:PASSWORD]@127.0.0.1:PORT/DATABASE``."""
    parts = urlsplit(uri)
    assert parts.port is not None and parts.username is not None, uri
    return PgConnection(parts.port, parts.username, parts.password or "", parts.path.lstrip("/"), timeout=timeout)


def fill(uri: str) -> None:
    """Create ``kv`` with `ROWS` rows and an empty ``history`` (the same SQL on every system)."""
    with connect(uri) as pg:
        pg.query("CREATE TABLE kv (k integer primary key, v text)")
        pg.query("CREATE TABLE history (k integer, v text)")
        pg.query("INSERT INTO kv (k, v) VALUES " + ", ".join(f"({k}, 'v{k}')" for k in range(1, ROWS + 1)))
        (count,), = pg.query("SELECT count(*) FROM kv")
        if count != str(ROWS):
            raise RuntimeError(f"kv holds {count} rows after the fill, not {ROWS}")


def pgbench(uri: str, script: Path, clients: int, seconds: int, log_prefix: Path) -> PgbenchRun:
    """Run pgbench -M simple -n with `script` for `seconds` and read its output and logs.

    Raises:
        RuntimeError: pgbench failed (a client aborted: exit 2), or printed no tps.
    """
    threads = min(clients, THREADS)
    argv = [PGBENCH, "-M", "simple", "-n", "-f", str(script), "-c", str(clients), "-j", str(threads),
            "-T", str(seconds), "-l", f"--log-prefix={log_prefix}", uri]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=seconds + PGBENCH_SLACK, cwd=log_prefix.parent)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"pgbench {script.name} -c {clients} did not finish within {seconds + PGBENCH_SLACK:g} s") from None
    tps = _TPS.search(done.stdout)
    if done.returncode != 0 or tps is None:
        raise RuntimeError(f"pgbench {script.name} -c {clients} on {uri.split('@')[-1]} exited with {done.returncode}:"
                           f" {(done.stdout + done.stderr).strip()[-2000:]}")
    latencies, failed = [], 0
    for log in sorted(log_prefix.parent.glob(log_prefix.name + ".*")):
        for line in log.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                latencies.append(int(fields[2]))
            elif len(fields) >= 3:
                failed += 1  # "failed" (or "skipped", which -R alone would give)
        log.unlink()
    if not latencies:
        raise RuntimeError(f"pgbench {script.name} -c {clients}: no transaction in its logs")
    reported_failed = int(m.group(1)) if (m := _FAILED.search(done.stdout)) else failed
    return PgbenchRun(
        tps=float(tps.group(1)), p50_ms=round(percentile(latencies, 0.5) / 1000, 3),
        p99_ms=round(percentile(latencies, 0.99) / 1000, 3), transactions=len(latencies),
        failed=max(failed, reported_failed),
    )


def _bench_system(uri: str, work: Path, seconds: int) -> dict[tuple[str, int], PgbenchRun]:
    fill(uri)
    results = {}
    for script_name, text in SCRIPTS.items():
        script = work / f"{script_name}.sql"
        script.write_text(text)
        for clients in CLIENTS:
            results[script_name, clients] = pgbench(uri, script, clients, seconds, work / f"log-{script_name}-{clients}")
    return results


# -- the benchmark ---------------------------------------------------------------------------


def _label(clients: int) -> str:
    return "1_client" if clients == 1 else f"{clients}_clients"


def run(seconds: float = 20.0) -> dict[str, Any]:
    """Every system in turn, each pgbench run `seconds_per_run(seconds)` long (the twelve runs
    take about `seconds` when it is 16 or more, plus about 15 s of set-up)."""
    if not Path(PGBENCH).exists():
        raise RuntimeError(f"pgbench (PostgreSQL 15 client) not found: {PGBENCH}")
    per_run = seconds_per_run(seconds)
    missing = [str(PG_BIN / b) for b in ("initdb", "pg_ctl", "postgres", "pg_basebackup") if not (PG_BIN / b).exists()]
    skipped = f"skipped: {', '.join(missing)} not found" if missing else None
    results: dict[str, dict[tuple[str, int], PgbenchRun]] = {}
    load_at_start = round(os.getloadavg()[0], 2)
    figures: dict[str, Any] = {"seconds_per_run": per_run}
    with tempfile.TemporaryDirectory(prefix="paxwal-bench-sql-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o711)  # the Postgres user must reach its directory inside
        work = root / "pgbench"
        work.mkdir()
        with paxwal_cluster(root / "cluster") as cluster:
            uri = paxwal("compute", "start", "--dir", str(cluster.dir), "--name", "c1").strip().splitlines()[-1]
            results["paxwal"] = _bench_system(uri, work, per_run)
        if skipped is None:
            figures["postgres_version"] = _postgres_version()
            for system, standbys in BASELINES.items():
                with postgres(root / system, standbys) as uri:
                    results[system] = _bench_system(uri, work, per_run)
        else:
            figures["baseline_postgres"] = skipped
            figures["baseline_postgres_2sync"] = skipped
    figures["load_average_1m_at_start"] = load_at_start
    figures["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    for system, runs in results.items():
        for (script, clients), result in runs.items():
            prefix = f"{system}_{script}_{_label(clients)}"
            figures[f"{prefix}_tps"] = round(result.tps)
            figures[f"{prefix}_p50_ms"] = result.p50_ms
            figures[f"{prefix}_p99_ms"] = result.p99_ms
            if result.failed:
                figures[f"{prefix}_failed_transactions"] = result.failed
    for (script, clients), result in results["paxwal"].items():
        for system in BASELINES:
            if system in results:
                ratio = result.tps / results[system][script, clients].tps
                figures[f"ratio_{script}_{_label(clients)}_to_{system}"] = round(ratio, 3)
    script, clients = GOAL
    goal = f"goal_{script}_{_label(clients)}_tps_at_least_postgres_2sync"
    if "postgres_2sync" in results:
        met = results["paxwal"][GOAL].tps >= results["postgres_2sync"][GOAL].tps
        figures[goal] = "yes" if met else "no"
    else:
        figures[goal] = "unknown (baseline skipped)"
    return figures
