"""Computes as processes of a running `paxwal cluster up`, driven from the command line, with
the machine's psql and pgbench as their clients (issue 9 §2-3)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conformance.corpus import find_runs
from conformance.replay import check_run
from impl.cluster import Cluster

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 120


def paxwal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "impl.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=TIMEOUT)


def psql(uri: str, *commands: str) -> subprocess.CompletedProcess[str]:
    args = ["psql", uri, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    for command in commands:
        args += ["-c", command]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env={**os.environ, "PGCONNECT_TIMEOUT": "5"})


@pytest.fixture
def cluster_dir(tmp_path: Path):
    directory = tmp_path / "cluster"
    up = paxwal("cluster", "up", "--dir", str(directory))
    assert up.returncode == 0, up.stderr
    yield directory
    paxwal("cluster", "down", "--dir", str(directory))
    for run in find_runs([directory / "run"]):
        result = check_run([run])
        assert result.verdict == "accepted", result.divergence.report() if result.divergence else result


def start(directory: Path, *args: str) -> str:
    """`paxwal compute start`; returns the URI it prints last."""
    started = paxwal("compute", "start", "--dir", str(directory), *args)
    assert started.returncode == 0, started.stderr
    uri = started.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"postgresql://paxwal:[^@]+@127\.0\.0\.1:\d+/paxwal", uri), uri
    return uri


def test_psql_and_pgbench_against_a_compute_and_its_successor(cluster_dir: Path, tmp_path: Path) -> None:
    uri = start(cluster_dir, "--name", "c1")
    made = psql(uri, "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)",
                "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 100)"
                " INSERT INTO kv SELECT x, 'v' FROM s")
    assert made.returncode == 0, made.stderr
    script = tmp_path / "update.sql"
    script.write_text("\\set k random(1, 100)\n\\set r random(1, 1000000000)\nUPDATE kv SET v = 'v' || :r WHERE k = :k;\n")
    bench = subprocess.run(["pgbench", "-M", "simple", "-n", "-f", str(script), "-c", "4", "-t", "50", uri],
                           capture_output=True, text=True, timeout=120)
    assert bench.returncode == 0, bench.stderr
    assert "number of transactions actually processed: 200/200" in bench.stdout, bench.stdout
    lsn = psql(uri, "SELECT pg_current_wal_lsn()").stdout.strip()
    assert re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", lsn)
    rows = psql(uri, "SELECT k, v FROM kv ORDER BY k").stdout

    # kill -9, then a new compute: the same LSN and the same rows.
    killed = paxwal("compute", "stop", "c1", "--kill", "--dir", str(cluster_dir))
    assert killed.returncode == 0 and "killed" in killed.stdout
    uri2 = start(cluster_dir, "--name", "c2")
    assert psql(uri2, "SELECT pg_current_wal_lsn()").stdout.strip() == lsn
    assert psql(uri2, "SELECT k, v FROM kv ORDER BY k").stdout == rows
    listing = paxwal("compute", "list", "--dir", str(cluster_dir))
    assert listing.returncode == 0
    c1, c2 = (line.split() for line in listing.stdout.splitlines()[1:])
    assert c1[:3] == ["c1", "main", "primary"] and "not running" in " ".join(c1)
    assert c2[:3] == ["c2", "main", "primary"] and c2[-1] == lsn and int(c2[-2]) >= 2


def test_wrong_password_and_bad_input_are_refused(cluster_dir: Path) -> None:
    uri = start(cluster_dir)
    wrong = re.sub(r":[^:@]+@", ":not-the-password@", uri)
    refused = psql(wrong, "SELECT 1")
    assert refused.returncode == 2 and "password authentication failed" in refused.stderr
    failed = psql(uri, "CREATE TABLE t (a INTEGER PRIMARY KEY)", "INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (1)")
    assert failed.returncode != 0 and "UNIQUE constraint failed" in failed.stderr
    assert psql(uri, "SELECT count(*) FROM t").stdout.strip() == "1"  # the compute goes on
    assert paxwal("compute", "start", "--dir", str(cluster_dir), "--name", "a1").returncode == 2  # a node's name
    # A busy port fails the start before any election: the serving compute keeps its term.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        taken = paxwal("compute", "start", "--dir", str(cluster_dir), "--name", "c9", "--port", port)
    assert taken.returncode == 2 and "Address already in use" in taken.stderr, taken.stderr
    assert psql(uri, "INSERT INTO t VALUES (2)").returncode == 0
    missing = paxwal("compute", "start", "--dir", str(cluster_dir), "--branch", "nope")
    assert missing.returncode == 2 and "nope" in missing.stderr


def test_two_computes_on_one_branch_only_the_newer_commits(cluster_dir: Path) -> None:
    uri1 = start(cluster_dir, "--name", "c1")
    assert psql(uri1, "CREATE TABLE t (a INTEGER)", "INSERT INTO t VALUES (1)").returncode == 0
    uri2 = start(cluster_dir, "--name", "c2")  # c1 still runs: c2's term deposes it
    cluster = Cluster(cluster_dir)
    deadline = time.monotonic() + 30
    while cluster.pid("c1") is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cluster.pid("c1") is None, "the deposed compute must stop"
    assert "lost term" in cluster.log_file("c1").read_text()
    assert psql(uri1, "INSERT INTO t VALUES (2)").returncode != 0
    assert psql(uri2, "INSERT INTO t VALUES (3)").returncode == 0
    assert psql(uri2, "SELECT a FROM t ORDER BY a").stdout.split() == ["1", "3"]


def test_a_branch_compute_and_a_static_compute_read_the_past(cluster_dir: Path) -> None:
    uri = start(cluster_dir, "--name", "c1")
    assert psql(uri, "CREATE TABLE t (a INTEGER)", "INSERT INTO t VALUES (1)").returncode == 0
    then = psql(uri, "SELECT pg_current_wal_lsn()").stdout.strip()
    assert psql(uri, "INSERT INTO t VALUES (2)").returncode == 0
    created = paxwal("branch", "create", "dev", "--from", f"main@{then}", "--dir", str(cluster_dir))
    assert created.returncode == 0, created.stderr
    dev = start(cluster_dir, "--branch", "dev", "--name", "d1")
    assert psql(dev, "SELECT a FROM t").stdout.split() == ["1"]
    assert psql(dev, "INSERT INTO t VALUES (10)").returncode == 0
    static = start(cluster_dir, "--lsn", then, "--name", "past")
    assert psql(static, "SELECT a FROM t").stdout.split() == ["1"]
    refused = psql(static, "INSERT INTO t VALUES (3)")
    assert refused.returncode != 0 and "static snapshot" in refused.stderr
    assert psql(uri, "SELECT a FROM t ORDER BY a").stdout.split() == ["1", "2"]
    assert psql(dev, "SELECT a FROM t ORDER BY a").stdout.split() == ["1", "10"]
    replica = start(cluster_dir, "--replica", "--name", "r1")
    assert psql(uri, "INSERT INTO t VALUES (3)").returncode == 0
    deadline = time.monotonic() + 20  # a replica lags by the acceptors' news of the commit
    while psql(replica, "SELECT count(*) FROM t").stdout.strip() != "3" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert psql(replica, "SELECT a FROM t ORDER BY a").stdout.split() == ["1", "2", "3"]
    assert "read replica" in psql(replica, "DELETE FROM t").stderr
    listing = paxwal("compute", "list", "--dir", str(cluster_dir)).stdout
    assert re.search(r"past +main +static", listing) and re.search(r"d1 +dev +primary", listing), listing
    assert re.search(r"r1 +main +replica", listing), listing


def test_a_static_compute_at_a_time(cluster_dir: Path) -> None:
    uri = start(cluster_dir, "--name", "c1")
    assert psql(uri, "CREATE TABLE t (a INTEGER)", "INSERT INTO t VALUES (1)").returncode == 0
    time.sleep(0.5)
    moment = time.time()
    time.sleep(0.5)
    assert psql(uri, "INSERT INTO t VALUES (2)").returncode == 0
    then = start(cluster_dir, "--at", f"{moment:.3f}", "--name", "then")
    assert psql(then, "SELECT a FROM t").stdout.split() == ["1"]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment + 1.5))  # after both inserts
    later = start(cluster_dir, "--at", iso, "--name", "later")
    assert psql(later, "SELECT a FROM t ORDER BY a").stdout.split() == ["1", "2"]
    bad = paxwal("compute", "start", "--dir", str(cluster_dir), "--at", "yesterday")
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr
