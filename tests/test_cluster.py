"""Tests of the local cluster (impl/cluster.py), the load generator and its history check
(impl/load.py) and the chaos runner (impl/chaos.py), through the `paxwal` command as a user
runs it: each command a separate process, as from another shell.

The `cluster_dir` fixture stops whatever nodes a test left running, even when it fails, and
then replays the run's traces with the conformance checker, which must accept them; the
chaos runner checks its own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conformance.corpus import find_runs
from conformance.replay import check_run
from impl.cluster import Cluster, ClusterConfig, ClusterError, query_status
from impl.load import LOAD_PAGES, load_record, verify_history
from impl.pagewal import PAGE_SIZE, RecordReader
from impl.remote import LocalFs
from impl.wal import segment_name

REPO = Path(__file__).resolve().parent.parent
# Each command is bounded; a cluster command waits at most 15 s for a node.
COMMAND_TIMEOUT = 120


def paxwal(*args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "impl.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def cluster_dir(tmp_path: Path):
    directory = tmp_path / "cluster"
    yield directory
    cluster = Cluster(directory)
    for pid_file in (directory / "pids").glob("*.pid"):  # whatever state the test left
        cluster.stop(pid_file.stem)
    if list(cluster.run_dir.rglob("*.ndjson")):  # every run's traces are checked (DESIGN §5)
        assert_traces_accepted(directory)


def assert_traces_accepted(directory: Path) -> None:
    """Each timeline's run directory (DIR/run/<timeline>) passes the replay on its own."""
    for run in find_runs([directory / "run"]):
        result = check_run([run])
        assert result.verdict == "accepted", result.divergence.report() if result.divergence else result


def test_up_status_load_down_and_up_again(cluster_dir: Path) -> None:
    up = paxwal("cluster", "up", "--dir", str(cluster_dir), "--segment-size", "65536")
    assert up.returncode == 0, up.stderr
    config = Cluster(cluster_dir).load()
    assert list(config.acceptors) == ["a1", "a2", "a3"]
    assert all(f"{node}  port {port}" in up.stdout for node, port in config.acceptors.items())

    status = paxwal("cluster", "status", "--dir", str(cluster_dir))
    assert status.returncode == 0, status.stderr
    assert "3 of 3 acceptors answering" in status.stdout and "leader: none elected" in status.stdout

    load = paxwal("load", "--dir", str(cluster_dir), "--seconds", "3", "--clients", "2")
    assert load.returncode == 0, load.stderr
    acked = int(load.stdout.split("acked ")[1].split()[0].replace(",", ""))
    assert acked > 0

    status = paxwal("cluster", "status", "--dir", str(cluster_dir))
    assert "leader: p1 in term 1" in status.stdout, status.stdout
    states = {n: query_status(port) for n, port in config.acceptors.items()}
    assert all(s.term == 1 for s in states.values())
    # Every record acknowledged is below the commit LSN a majority reports.
    commits = sorted(s.commit_lsn for s in states.values())
    assert commits[1] >= PAGE_SIZE * acked
    flushed = {n: s.flush_lsn for n, s in states.items()}

    down = paxwal("cluster", "down", "--dir", str(cluster_dir))
    assert down.returncode == 0 and down.stdout.count("stopped") == 4, down.stdout  # and the pageserver
    status = paxwal("cluster", "status", "--dir", str(cluster_dir))
    assert status.returncode == 1 and status.stdout.count("not running") == 4, status.stdout

    # The same cluster comes back on its ports with its data.
    up = paxwal("cluster", "up", "--dir", str(cluster_dir))
    assert up.returncode == 0, up.stderr
    assert Cluster(cluster_dir).load() == config
    assert {n: query_status(port).flush_lsn for n, port in config.acceptors.items()} == flushed
    assert paxwal("cluster", "up", "--dir", str(cluster_dir)).stdout.count("already running") == 4
    paxwal("cluster", "down", "--dir", str(cluster_dir))

    verdict = verify_history(Cluster(cluster_dir))
    assert verdict.ok and verdict.acked == acked
    # Completed, committed segments were offloaded to the cluster's object store (DIR/remote).
    offloaded = LocalFs(cluster_dir / "remote").list("timelines/main/wal/")
    # (the offloader uploads one segment at a time, so those are a prefix of the WAL).
    assert offloaded == [f"timelines/main/wal/{segment_name(s * 65536, False)}" for s in range(len(offloaded))]
    assert len(offloaded) > 0


def test_load_on_a_second_timeline_is_its_own_run(cluster_dir: Path) -> None:
    cluster = Cluster(cluster_dir)
    cluster.up(3, segment_size=65536)
    for timeline, start in (("main", "0"), ("br", "131072")):
        load = paxwal("load", "--dir", str(cluster_dir), "--seconds", "1", "--clients", "2",
                      "--timeline", timeline, "--wal-start", start, "--name", f"p-{timeline}")
        assert load.returncode == 0, load.stderr
    states = {t: query_status(cluster.load().acceptors["a1"], timeline=t) for t in ("main", "br", "none")}
    assert (states["main"].wal_start, states["br"].wal_start) == (0, 131072)
    assert states["none"].term == 0 and states["none"].flush_lsn == 0  # not held: an empty status
    cluster.down()
    for timeline in ("main", "br"):
        verdict = verify_history(cluster, timeline)
        assert verdict.ok and verdict.acked > 0
    assert min(op["lsn"] - op["size"] for op in _acks(cluster, "br")) == 131072
    assert json.loads((cluster.timeline_run_dir("br") / "run.json").read_text())["cluster"] == {
        "proposers": ["p-br"], "acceptors": ["a1", "a2", "a3"], "wal_start": 131072}
    # The checker takes DIR/run as two runs (the fixture replays each).
    assert [run.name for run in find_runs([cluster.run_dir])] == ["br", "main"]


def test_commands_without_a_cluster_fail_with_one_line(tmp_path: Path) -> None:
    for command in (["cluster", "status"], ["cluster", "down"], ["load", "--seconds", "1"]):
        result = paxwal(*command, "--dir", str(tmp_path / "none"))
        assert result.returncode == 2
        assert result.stderr.startswith("paxwal: error: no cluster in") and result.stderr.count("\n") == 1


def test_up_refuses_another_shape_and_a_broken_config(cluster_dir: Path) -> None:
    Cluster(cluster_dir).create(3)
    result = paxwal("cluster", "up", "--dir", str(cluster_dir), "--acceptors", "5")
    assert result.returncode == 2 and "has 3 acceptors, not 5" in result.stderr
    (cluster_dir / "cluster.json").write_text('{"version": 1, "acceptors": {"a1": "x"}}')
    result = paxwal("cluster", "status", "--dir", str(cluster_dir))
    assert result.returncode == 2 and "is not a paxwal cluster configuration" in result.stderr


def test_a_node_that_cannot_start_is_reported_and_nothing_is_left_running(cluster_dir: Path) -> None:
    cluster = Cluster(cluster_dir)
    config = cluster.create(3)
    (cluster_dir / "a2" / "timelines" / "main").mkdir(parents=True)
    (cluster_dir / "a2" / "timelines" / "main" / "control").write_bytes(b"garbage, not a control file")
    result = paxwal("cluster", "up", "--dir", str(cluster_dir))
    assert result.returncode == 2
    assert "a2 exited with status 2 while starting" in result.stderr and "control" in result.stderr
    assert all(cluster.pid(node) is None for node in config.acceptors)


def test_a_stale_pid_file_is_never_signalled(cluster_dir: Path) -> None:
    cluster = Cluster(cluster_dir)
    cluster.create(1, pageserver=False)
    # A pid that is alive but not our node (this test's own process), as after a pid reuse.
    cluster.pid_file("a1").write_text(f"{os.getpid()}\n")
    assert cluster.pid("a1") is None
    assert cluster.down() == {"a1": "not running"}
    assert not cluster.pid_file("a1").exists()


def test_down_kills_a_node_that_ignores_sigterm(cluster_dir: Path) -> None:
    cluster = Cluster(cluster_dir)
    config, _ = cluster.up(1)
    cluster.signal("a1", signal.SIGSTOP)  # stopped, it cannot act on SIGTERM until SIGCONT
    began = time.monotonic()
    assert cluster.stop("a1", timeout=60) == "stopped"  # down sends SIGCONT after SIGTERM
    assert time.monotonic() - began < 30
    with pytest.raises(OSError):
        query_status(config.acceptors["a1"], timeout=1)


# ---------------------------------------------------------------------------------------------
# The history check can fail
# ---------------------------------------------------------------------------------------------


def _loaded_cluster(directory: Path, seconds: str = "2") -> tuple[Cluster, ClusterConfig]:
    cluster = Cluster(directory)
    config, _ = cluster.up(3)
    load = paxwal("load", "--dir", str(directory), "--seconds", seconds, "--clients", "2")
    assert load.returncode == 0, load.stderr
    cluster.down()
    return cluster, config


def _acks(cluster: Cluster, timeline: str = "main") -> list[dict]:
    return [json.loads(line) for line in cluster.history_path(timeline).read_text().splitlines() if '"ack"' in line]


def test_verify_history_finds_a_record_changed_on_a_majority(cluster_dir: Path) -> None:
    cluster, config = _loaded_cluster(cluster_dir)
    assert verify_history(cluster).ok
    victim = _acks(cluster)[3]
    begin = victim["lsn"] - victim["size"]
    for node in ("a1", "a2"):  # one copy changed still leaves a majority; two do not
        segment = _segment_holding(cluster_dir / node / "timelines" / "main", begin, config.segment_size)
        with open(segment, "r+b") as file:
            file.seek(begin % config.segment_size)
            file.write(b"X")
        if node == "a1":
            assert verify_history(cluster).ok
    verdict = verify_history(cluster)
    assert not verdict.ok and [key for key, _, _ in verdict.lost] == [victim["key"]]
    assert verdict.lost[0][2] == ["a3"]


def test_verify_history_finds_two_records_at_one_lsn(cluster_dir: Path) -> None:
    cluster, _ = _loaded_cluster(cluster_dir, seconds="1")
    first = _acks(cluster)[0]
    forged = {**first, "key": first["key"] + "-forged"}
    with cluster.history_file.open("a") as file:
        file.write(json.dumps(forged) + "\n")
    verdict = verify_history(cluster)
    assert [sorted(pair) for pair in verdict.overlapping] == [sorted([first["key"], forged["key"]])]
    assert [key for key, _, _ in verdict.lost] == [forged["key"]]  # its bytes are not there either


def _segment_holding(directory: Path, lsn: int, segment_size: int) -> Path:
    start = lsn - lsn % segment_size
    (segment,) = [directory / segment_name(start, partial) for partial in (False, True)
                  if (directory / segment_name(start, partial)).exists()]
    return segment


def test_load_records_are_page_records_and_a_function_of_key_and_time() -> None:
    record = load_record("p1/ab/0/7", 1_700_000_000_000_000)
    assert record == load_record("p1/ab/0/7", 1_700_000_000_000_000)
    assert record not in (load_record("p1/ab/0/8", 1_700_000_000_000_000), load_record("p1/ab/0/7", 1))
    reader = RecordReader(0)
    reader.feed(record)
    end, decoded = reader.next_record()
    assert end == len(record) and decoded.db_size == LOAD_PAGES and decoded.commit_time == 1_700_000_000_000_000
    (image,) = decoded.pages
    assert image.image.startswith(b"p1/ab/0/7.p1/ab/0/7.") and len(image.image) == PAGE_SIZE


def test_cluster_errors_are_one_line() -> None:
    with pytest.raises(ClusterError):
        ClusterConfig.from_json("[]", Path("x"))


# ---------------------------------------------------------------------------------------------
# Chaos: the smoke run (`make soak` runs it for 10 minutes)
# ---------------------------------------------------------------------------------------------

CHAOS_SMOKE_SECONDS = 40


def test_chaos_smoke_loses_nothing_and_its_traces_are_accepted(tmp_path: Path) -> None:
    result = paxwal("chaos", "--seconds", str(CHAOS_SMOKE_SECONDS), "--seed", "1", "--dir", str(tmp_path / "chaos"),
                    timeout=CHAOS_SMOKE_SECONDS + 240)
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    out = result.stdout
    assert "lost 0 (must be 0)" in out and "sharing an LSN 0" in out and "traces: accepted" in out
    faults = out.split("faults: ")[1].split(";")[0]
    assert "kill" in faults
    acked = re.search(r"records acknowledged ([\d,]+), lost", out)
    assert acked is not None and int(acked.group(1).replace(",", "")) > 0
