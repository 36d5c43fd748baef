"""The SQL benchmarks (bench/sql.py, bench/failover.py): each runs briefly, through the CLI,
and returns sane figures; the failover benchmark checks every round's durability and fails
loudly on a lost commit; no process (cluster node, compute, PostgreSQL server) or temporary
directory outlives a run.  Timing is never asserted (figures vary by machine)."""

from __future__ import annotations

import json

import pytest

from bench import failover, load, sql
from impl.cli import main
from test_bench import leftovers, processes_mentioning


def run_bench(name: str, seconds: float, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    prefix = f"paxwal-bench-{name}-"
    before = leftovers(prefix)
    assert main(["bench", name, "--seconds", str(seconds), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures.pop("benchmark") == name
    assert processes_mentioning(prefix) == [], "a process outlived the benchmark"
    assert leftovers(prefix) == before, "the benchmark left its temporary directory"
    return figures


def test_both_are_registered():
    assert load("sql") is sql and load("failover") is failover


def test_budgets_scale_with_seconds():
    assert sql.seconds_per_run(4) == 2 and sql.seconds_per_run(80) == 10
    assert failover.rounds_for(1) == 3 and failover.rounds_for(60) == 20 and failover.rounds_for(1000) == 20


def test_sql_figures_are_positive_and_ratios_match(capsys):
    figures = run_bench("sql", 4, capsys)
    assert figures["seconds_per_run"] == 2
    baselines = "postgres_version" in figures
    systems = sql.SYSTEMS if baselines else ("paxwal",)
    if not baselines:
        assert str(figures["baseline_postgres"]).startswith("skipped")
    for script in sql.SCRIPTS:
        for label in ("1_client", "16_clients"):
            for system in systems:
                prefix = f"{system}_{script}_{label}"
                assert figures[f"{prefix}_tps"] > 0, prefix
                assert 0 < figures[f"{prefix}_p50_ms"] <= figures[f"{prefix}_p99_ms"], prefix
            for system in systems[1:]:
                ratio = figures[f"paxwal_{script}_{label}_tps"] / figures[f"{system}_{script}_{label}_tps"]
                # Ratios are of unrounded tps: allow for the rounding of the printed ones.
                assert figures[f"ratio_{script}_{label}_to_{system}"] == pytest.approx(ratio, rel=0.05, abs=0.002)
    goal = figures["goal_update_16_clients_tps_at_least_postgres_2sync"]
    if baselines:
        paxwal, postgres_2sync = figures["paxwal_update_16_clients_tps"], figures["postgres_2sync_update_16_clients_tps"]
        assert goal in ("yes", "no")
        if abs(paxwal - postgres_2sync) > 1:  # not a tie hidden by the rounding
            assert goal == ("yes" if paxwal > postgres_2sync else "no")
    else:
        assert goal.startswith("unknown")


def test_failover_checks_every_round_and_times_it(capsys):
    figures = run_bench("failover", 6, capsys)
    assert figures["rounds"] == 3
    assert figures["durability_checks_passed"] == figures["rounds"]
    assert figures["load_commits"] > 0
    for prefix in ("failover", "baseline_start"):
        assert 0 < figures[f"{prefix}_p50_ms"] <= figures[f"{prefix}_p99_ms"] <= figures[f"{prefix}_max_ms"]
        assert figures[f"{prefix}_process_p50_ms"] > 0 and figures[f"{prefix}_election_p50_ms"] >= 0
    ratio = figures["failover_p50_ms"] / figures["baseline_start_p50_ms"]
    assert figures["ratio_failover_p50_to_baseline"] == pytest.approx(ratio, rel=0.02, abs=0.002)
    assert figures["goal_p50_under_1_s"] == ("yes" if figures["failover_p50_ms"] < 1000 else "no")


def test_failover_fails_loudly_on_a_lost_commit_and_cleans_up(monkeypatch):
    """A new compute that does not show the last acknowledged UPDATE (here: a read that says
    the row is still 0) stops the benchmark with LOST COMMIT; its cluster is still taken down."""
    prefix = "paxwal-bench-failover-"
    before = leftovers(prefix)
    monkeypatch.setattr(failover, "_row_value", lambda port, password, key: 0)
    with pytest.raises(RuntimeError, match="LOST COMMIT"):
        failover.run(1)
    assert processes_mentioning(prefix) == []
    assert leftovers(prefix) == before
