"""The network benchmarks (bench/commit.py, bench/ingest.py) and their acceptor processes
(bench/cluster.py): each runs briefly and returns sane figures, and no acceptor process or
temporary directory outlives it.  Timing is never asserted (figures vary by machine)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from bench import load
from bench.cluster import acceptor_processes, percentile, sequential_write
from impl.cli import main


def processes_mentioning(text: str) -> list[int]:
    """Pids of the processes whose command line contains `text`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue  # gone meanwhile
            if text.encode() in cmdline:
                pids.append(int(proc.name))
    return pids


def leftovers(prefix: str) -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob(f"{prefix}*"))


def run_bench(name: str, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    before = leftovers(f"paxwal-bench-{name}-")
    assert main(["bench", name, "--seconds", "0.5", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures.pop("benchmark") == name
    assert processes_mentioning(f"paxwal-bench-{name}-") == [], "an acceptor process outlived the benchmark"
    assert leftovers(f"paxwal-bench-{name}-") == before, "the benchmark left its temporary directory"
    return figures


def test_both_are_registered():
    assert load("commit").NAME == "commit" and load("ingest").NAME == "ingest"


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc to find processes")
def test_commit_figures_are_positive_and_ratios_match(capsys):
    figures = run_bench("commit", capsys)
    assert figures["baseline_fsync_commits_per_second"] > 0
    assert 0 < figures["baseline_fsync_p50_ms"] <= figures["baseline_fsync_p99_ms"]
    base_rate, base_p50 = figures["baseline_fsync_commits_per_second"], figures["baseline_fsync_p50_ms"]
    for label in ("1_client", "16_clients"):
        rate, p50 = figures[f"commits_per_second_{label}"], figures[f"p50_ms_{label}"]
        assert rate > 0 and 0 < p50 <= figures[f"p99_ms_{label}"]
        # Ratios are of unrounded figures: allow for the rounding of the printed ones.
        assert figures[f"ratio_commits_{label}_to_baseline"] == pytest.approx(rate / base_rate, rel=0.02, abs=0.002)
        assert figures[f"ratio_p50_{label}_to_baseline"] == pytest.approx(p50 / base_p50, rel=0.02, abs=0.002)
    assert figures["goal_16_clients_5000_commits_per_second"] in ("met", "missed")
    assert figures["goal_1_client_p50_1_ms"] in ("met", "missed")


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc to find processes")
def test_ingest_figures_are_positive_and_ratio_matches(capsys):
    figures = run_bench("ingest", capsys)
    assert figures["baseline_mib_per_second"] > 0 and figures["ingest_mib_per_second"] > 0
    ratio = figures["ingest_mib_per_second"] / figures["baseline_mib_per_second"]
    assert figures["ratio_ingest_to_baseline"] == pytest.approx(ratio, rel=0.02, abs=0.002)
    assert figures["goal_50_percent_of_baseline"] == ("met" if figures["ratio_ingest_to_baseline"] >= 0.5 else "missed")
    assert figures["mib_ingested"] > 0 and figures["seconds_measured"] >= 0.5


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc to find processes")
def test_acceptor_processes_are_stopped_when_the_block_fails(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with acceptor_processes(("a1", "a2"), tmp_path) as acceptors:
            assert sorted(acceptors) == ["a1", "a2"]
            assert all(host == "127.0.0.1" and port > 0 for host, port in acceptors.values())
            assert len(processes_mentioning(str(tmp_path))) == 2
            raise KeyboardInterrupt  # as a Ctrl-C would
    assert processes_mentioning(str(tmp_path)) == []
    assert "stopping on SIGTERM" in (tmp_path / "a1.log").read_text()


def test_an_acceptor_that_cannot_start_is_reported_with_its_log(tmp_path):
    (tmp_path / "a1").write_text("a file where the acceptor's directory should be")
    with pytest.raises(RuntimeError, match=r"acceptor a1 exited with 2 before listening: .*a1"):
        with acceptor_processes(("a1",), tmp_path):
            pass  # pragma: no cover


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50 and percentile(values, 0.99) == 99 and percentile(values, 1) == 100
    assert percentile([3.0], 0.5) == 3.0


def test_sequential_write_rotates_files_and_leaves_none(tmp_path):
    written, elapsed = sequential_write(tmp_path, bytes(4096), 16384, 0.2, 65536)
    assert written > 0 and written % 16384 == 0 and elapsed >= 0.2
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# The pageserver's benchmarks (bench/getpage.py, bench/branch.py, bench/pageserver_ingest.py),
# at small sizes: the figures are sane and their ratios are those of the figures.
# ---------------------------------------------------------------------------------------------


def test_pageserver_benchmarks_are_registered():
    assert [load(name).NAME for name in ("getpage", "branch", "pageserver-ingest")] == [
        "getpage", "branch", "pageserver-ingest"]


def test_getpage_figures_are_positive_and_ratios_match(capsys, monkeypatch):
    from bench import getpage

    monkeypatch.setattr(getpage, "PAGES", 300)
    figures = run_bench("getpage", capsys)
    assert figures["pages"] == 300 and figures["chain_deltas"] == 10
    base = figures["baseline_dict_lookups_per_second"]
    assert base > 0
    phases = ["inprocess_cached", "inprocess_reconstructed", "socket_cached", "socket_reconstructed",
              f"socket_cached_{getpage.CLIENTS}_clients"]
    for phase in phases:
        rate = figures[f"{phase}_per_second"]
        assert rate > 0
        # Ratios are of unrounded rates, to 3 significant digits.
        assert figures[f"ratio_{phase}_to_baseline"] == pytest.approx(rate / base, rel=0.01)
    ratio = figures["inprocess_reconstructed_per_second"] / figures["inprocess_cached_per_second"]
    assert figures["ratio_inprocess_reconstructed_to_cached"] == pytest.approx(ratio, rel=0.01)


def test_getpage_stops_the_page_service_and_cleans_up_on_ctrl_c(monkeypatch):
    from bench import getpage

    async def interrupted(*_args):
        raise KeyboardInterrupt  # as a Ctrl-C would, with the page service running

    monkeypatch.setattr(getpage, "PAGES", 50)
    monkeypatch.setattr(getpage, "_clients", interrupted)
    before = leftovers("paxwal-bench-getpage-")
    with pytest.raises(KeyboardInterrupt):
        getpage.run(0.05)
    assert leftovers("paxwal-bench-getpage-") == before


def test_branch_figures_are_positive_and_ratios_match(capsys, monkeypatch):
    from bench import branch

    monkeypatch.setattr(branch, "SIZES", (50, 1000))
    figures = run_bench("branch", capsys)
    assert figures["parent_pages_small"] == 50 and figures["parent_pages_large"] == 1000
    assert figures["baseline_atomic_write_ms_median"] > 0 and figures["rounds"] >= branch.MIN_ROUNDS
    base = figures["baseline_atomic_write_ms_median"]
    for label in ("small", "large"):
        median = figures[f"branch_ms_median_{label}"]
        assert 0 < median <= figures[f"branch_ms_p99_{label}"]
        assert figures[f"parent_layer_files_{label}"] >= 1
        assert figures[f"ratio_branch_{label}_to_baseline"] == pytest.approx(median / base, rel=0.02, abs=0.002)
    ratio = figures["branch_ms_median_large"] / figures["branch_ms_median_small"]
    assert figures["ratio_large_to_small"] == pytest.approx(ratio, rel=0.02, abs=0.002)
    goal = "met" if figures["ratio_large_to_small"] <= branch.GOAL_RATIO else "missed"
    assert figures["goal_does_not_grow"] == goal


def test_branch_cleans_up_on_ctrl_c(monkeypatch):
    from bench import branch

    def interrupted(*_args):
        raise KeyboardInterrupt  # as a Ctrl-C would, with both parents open

    monkeypatch.setattr(branch, "SIZES", (10, 20))
    monkeypatch.setattr(branch, "interleaved_times", interrupted)
    before = leftovers("paxwal-bench-branch-")
    with pytest.raises(KeyboardInterrupt):
        branch.run(0.05)
    assert leftovers("paxwal-bench-branch-") == before


def test_pageserver_ingest_figures_are_positive_and_ratios_match(capsys, monkeypatch):
    from bench import pageserver_ingest
    from impl.timeline import TimelineConfig

    monkeypatch.setattr(pageserver_ingest, "WAL_BYTES", 256 * 1024)
    monkeypatch.setattr(pageserver_ingest, "DB_PAGES", 32)
    # A small checkpoint distance, so the ingest freezes and flushes as it goes.
    monkeypatch.setattr(pageserver_ingest, "CONFIG", TimelineConfig(checkpoint_distance=1024 * 1024))
    figures = run_bench("pageserver-ingest", capsys)
    assert figures["wal_records"] > 0 and figures["wal_images"] > 0 and figures["wal_deltas"] > 0
    assert 0 < figures["image_share_of_bytes"] < 1
    rate = figures["ingest_mib_per_second"]
    assert rate > 0 and figures["ingest_records_per_second"] > 0
    for base in ("decode", "write_fsync"):
        baseline = figures[f"baseline_{base}_mib_per_second"]
        assert baseline > 0
        assert figures[f"ratio_ingest_to_{base}"] == pytest.approx(rate / baseline, rel=0.02, abs=0.002)
    assert figures["mib_ingested"] > 0 and figures["seconds_measured"] >= 0.5
    assert figures["layer_files_flushed"] >= 2


def test_page_wal_is_valid_and_mixes_images_and_deltas():
    from bench.pageserver_ingest import page_wal
    from impl.pagewal import PageDelta, PageImage, RecordReader

    wal, counts = page_wal(64 * 1024, db_pages=16)
    reader = RecordReader(0)
    reader.feed(wal)
    kinds = {PageImage: 0, PageDelta: 0}
    records = 0
    while (item := reader.next_record()) is not None:
        records += 1
        for entry in item[1].pages:
            kinds[type(entry)] += 1
    assert reader.lsn == len(wal) and records == counts["records"]
    assert kinds == {PageImage: counts["images"], PageDelta: counts["deltas"]}
